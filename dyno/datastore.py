"""The node's own Redis: a small pool of pipelined connections shared by every client.

A request handed to ``Datastore.send`` is queued on one connection: its bytes go to
that connection's write queue and its *sink* (anything with ``deliver(reply)``) to
the connection's FIFO. Redis answers in order, so the reader pops one sink per reply
and hands it the reply's raw bytes; a sink queued for a run of n requests
(``send_run``) is one FIFO entry and gets the run's replies together. One writer
task per connection sends everything queued since its last turn in one ``send``
(DESIGN.md §10), made by the poller's task when it can (dyno.wakeup).

Failure rules, which the client-facing side relies on:
* While a connection is down, requests fail at once with
  ``-ERR dyno: datastore HOST:PORT is unavailable``; it reconnects with back-off.
* If Redis stops answering for ``timeout`` while requests are waiting, the connection
  is dropped and every waiting request gets a time-out error: no request hangs.
* A request whose connection breaks gets an error, never silence; whether a write
  that was in flight was applied is unknown, and the error says so.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from typing import Callable

import trio

from dyno import resp
from dyno.stream import ConnectionLost, Receiver, connect, write_loop
from dyno.wakeup import Idle, Wakeup

log = logging.getLogger("dyno.datastore")

RECV_SIZE = 256 * 1024
# Batches (a client's read, a peer's frame) sent to a connection and not answered yet,
# past which clients are not read from until it is down to LOW_WATER: when Redis
# takes requests slower than clients send them, what waits for it stays bounded
# (each batch is at most one read of a client, 64 KB, or one peer frame).
HIGH_WATER = 4096
LOW_WATER = HIGH_WATER // 2
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class Sink:
    """Where a reply goes. The client slot, a quorum tracker and a peer reply all
    implement ``deliver``; it must not block and must not raise. ``fail`` is called
    instead when the target could not answer (down, timed out, connection lost);
    for a client slot the error line is the reply."""

    __slots__ = ()
    # True for a sink that stands for several consecutive requests and takes their
    # replies joined: ``deliver_run(replies, n)`` with n of them at once.
    runs = False
    # True for such a sink that wants them apart instead: ``deliver_parts(replies)``
    # with a list (the reader has found where each ends; no one scans them again).
    split = False

    def deliver(self, reply: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def fail(self, error: bytes) -> None:
        self.deliver(error)

    def deliver_each(self, replies: list[bytes]) -> None:
        """The replies of a batch of requests this sink stands for (a peer sends
        them as a list); by default they are delivered joined."""
        self.deliver(b"".join(replies))


class Connection:
    """One pipelined connection to Redis, with its reader, writer and watchdog."""

    def __init__(self, store: "Datastore", index: int):
        self.store = store
        self.index = index
        self.sock: socket.socket | None = None
        self.up = False
        self._out: list[bytes] = []
        self._sinks: deque[Sink | _Run] = deque()
        self._writer_wakeup = Wakeup()
        self._last_progress = 0.0
        self._watchdog_idle = Idle()  # the watchdog, while nothing is unanswered
        self.congested = False  # more than HIGH_WATER batches unanswered: clients wait (Congestion)

    def send(self, payload: bytes, sink: Sink) -> None:
        if not self._sinks:
            self._last_progress = trio.current_time()
            if self._watchdog_idle.parked:
                self._watchdog_idle.wake()
        self._out.append(payload)
        self._sinks.append(sink)
        self._writer_wakeup.set()
        if len(self._sinks) > HIGH_WATER and not self.congested:
            self._congested()

    def send_many(self, payload: bytes, sinks: list[Sink]) -> None:
        if not self._sinks:
            self._last_progress = trio.current_time()
            if self._watchdog_idle.parked:
                self._watchdog_idle.wake()
        self._out.append(payload)
        self._sinks.extend(sinks)
        self._writer_wakeup.set()
        if len(self._sinks) > HIGH_WATER and not self.congested:
            self._congested()

    def send_run(self, payload: bytes, sink: Sink, count: int) -> None:
        if not self._sinks:
            self._last_progress = trio.current_time()
            if self._watchdog_idle.parked:
                self._watchdog_idle.wake()
        self._out.append(payload)
        self._sinks.append(_Run(sink, count) if count > 1 else sink)
        self._writer_wakeup.set()
        if len(self._sinks) > HIGH_WATER and not self.congested:
            self._congested()

    def _congested(self) -> None:
        """Redis takes requests slower than clients send them: no client is read from
        until it has caught up (LOW_WATER), so what waits for it stays bounded."""
        self.congested = True
        congestion = self.store.congestion
        if congestion is not None:
            congestion.add(self)

    def _check_drained(self) -> None:
        if self.congested and len(self._sinks) <= LOW_WATER:
            self.congested = False
            congestion = self.store.congestion
            if congestion is not None:
                congestion.remove(self)

    async def run(self) -> None:
        """Connect, serve until the connection breaks, fail what was waiting,
        reconnect with back-off; forever."""
        store = self.store
        backoff = BACKOFF_MIN
        was_up = True  # so the first failure is logged
        while True:
            try:
                self.sock = await connect(store.host, store.port)
            except OSError as exc:
                if was_up:
                    log.warning("datastore %s unavailable: %s", store.address, exc.strerror or exc)
                    was_up = False
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            if not was_up:
                log.info("datastore %s reachable again", store.address)
            was_up = True
            if store.auth is not None:  # datastore_password: before anything else
                self._last_progress = trio.current_time()
                self._out.append(store.auth)
                self._sinks.append(_AuthReply(store))
                self._writer_wakeup.set()
            if store.protocol == 3:  # its replies are relayed to RESP3 clients as they are
                self._last_progress = trio.current_time()
                self._out.append(_HELLO3)
                self._sinks.append(_DISCARD)
                self._writer_wakeup.set()
            self.up = True
            store.connection_changed()
            reason = store.unavailable
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._reader)
                    nursery.start_soon(
                        write_loop, self.sock, self._out, self._writer_wakeup, store.broken
                    )
                    nursery.start_soon(self._watchdog)
            except* ConnectionLost as group:  # a nursery wraps it in an ExceptionGroup
                lost = group.exceptions[0]
                reason = lost.reply
                log.warning("datastore %s connection %d lost: %s", store.address, self.index, lost)
            except* Exception as group:  # a bug: it costs this connection a reconnect, not the node
                reason = store.broken
                log.error("datastore %s connection %d: unexpected error; reconnecting", store.address,
                          self.index, exc_info=group.exceptions[0])
            finally:
                self.up = False
                store.connection_changed()
                self.sock.close()
                self.sock = None
                self._fail_all(reason)

    def _fail_all(self, reply: bytes) -> None:
        self._out.clear()
        sinks, self._sinks = self._sinks, deque()
        self._check_drained()
        for sink in sinks:
            if sink.__class__ is _Run:
                for _ in range(sink.left):
                    sink.sink.fail(reply)
            else:
                sink.fail(reply)
        self.store.after_batch()

    async def _reader(self) -> None:
        sinks = self._sinks
        scan = resp.scan_reply
        after_batch = self.store.after_batch
        broken = self.store.broken
        pending: bytearray | None = None

        def on_data(data: bytes) -> None:
            nonlocal pending
            self._last_progress = trio.current_time()
            if pending is not None:
                pending += data
                # A reply larger than one read: rescan only once the socket is
                # drained, so a huge reply is scanned a few times, not per read.
                if len(data) == RECV_SIZE:
                    return
                buffer = bytes(pending)
            else:
                buffer = data
            pos = 0
            size = len(buffer)
            while pos < size:
                if sinks and sinks[0].__class__ is _Run:
                    # One sink for the next `left` replies: hand it all of them that
                    # this buffer holds, in one call. A run of writes is often all
                    # '+OK': one comparison then stands for every scan.
                    run = sinks[0]
                    left = run.left
                    sink = run.sink
                    start = pos
                    n = 0
                    if buffer[pos] == 0x2B:  # '+'
                        n = min(left, (size - pos) // 5)
                        if n and buffer[pos : pos + 5 * n] == OK * n:
                            pos += 5 * n
                        else:
                            n = 0
                    # A split sink wants each reply on its own (a peer's answer).
                    parts = [OK] * n if sink.split else None
                    while n < left and pos < size:
                        end = scan(buffer, pos)
                        if end < 0:
                            break
                        if parts is not None:
                            parts.append(buffer[pos:end])
                        pos = end
                        n += 1
                    if not n:
                        break
                    if n == left:
                        sinks.popleft()
                    else:
                        run.left = left - n
                    if parts is not None:
                        sink.deliver_parts(parts)
                    else:
                        sink.deliver_run(buffer[start:pos] if start or pos != size else buffer, n)
                    continue
                end = scan(buffer, pos)
                if end < 0:
                    break
                if not sinks:
                    raise ConnectionLost(broken, "reply without a request")
                sink = sinks.popleft()
                if sink.runs and sinks and sinks[0] is sink:
                    # The same sink stands for the next requests too (a pipelined
                    # read): hand it every reply of the run in this buffer at once.
                    start, count = pos, 1
                    pos = end
                    while pos < size and sinks and sinks[0] is sink:
                        end = scan(buffer, pos)
                        if end < 0:
                            break
                        sinks.popleft()
                        count += 1
                        pos = end
                    sink.deliver_run(buffer[start:pos] if start or pos != size else buffer, count)
                    continue
                sink.deliver(buffer[pos:end] if pos or end != size else buffer)
                pos = end
            pending = bytearray(buffer[pos:]) if pos < size else None
            if self.congested:
                self._check_drained()
            after_batch()

        receiver = Receiver(self.sock, RECV_SIZE, broken, "closed by Redis")
        try:
            await receiver.serve(on_data)
        finally:
            receiver.close()

    async def _watchdog(self) -> None:
        """Fail the connection when Redis has answered nothing for ``timeout`` with
        requests unanswered. With none it waits for the next (no timer running)."""
        timeout = self.store.timeout
        while True:
            if not self._sinks:
                await self._watchdog_idle.wait()
            await trio.sleep(timeout / 4)
            if self._sinks and trio.current_time() - self._last_progress > timeout:
                raise ConnectionLost(
                    self.store.timed_out, f"no reply for {timeout * 1000:.0f} ms"
                )


class _Run:
    """A sink standing for ``left`` more consecutive requests of one connection
    (``send_run``): one FIFO entry for all of them. The sink takes their replies
    as many at a time as a read holds: joined (``deliver_run``) or, if it is a
    ``split`` sink, as a list (``deliver_parts``)."""

    __slots__ = ("sink", "left")

    def __init__(self, sink: Sink, left: int):
        self.sink = sink
        self.left = left


OK = resp.OK


class _Discard(Sink):
    __slots__ = ()

    def deliver(self, reply: bytes) -> None:
        pass


_DISCARD = _Discard()
_HELLO3 = resp.encode_command([b"HELLO", b"3"])


class _AuthReply(Sink):
    """The reply to the AUTH a connection starts with: an error is logged (the
    password changed on the Redis side; the start-up check catches a wrong one)."""

    __slots__ = ("store",)

    def __init__(self, store: "Datastore"):
        self.store = store

    def deliver(self, reply: bytes) -> None:
        if reply[:1] == b"-":
            log.error("datastore %s refused datastore_password: %s", self.store.address,
                      reply[1:-2].decode(errors="replace"))


class DatastoreAuthError(Exception):
    """The node's Redis refuses the configured password, or wants one (one line)."""


async def check_auth(host: str, port: int, password: str | None, timeout: float = 2.0) -> None:
    """At start: does the node's Redis take ``password`` (datastore_password), or
    need one when none is set? DatastoreAuthError if not; a Redis that cannot be
    reached yet is not an error (the pool keeps trying)."""
    command = resp.encode_command([b"AUTH", password.encode()] if password is not None else [b"PING"])
    try:
        with trio.fail_after(timeout):
            sock = await connect(host, port)
            try:
                sock.send(command)  # a few bytes into an empty socket buffer
                reply = b""
                while b"\r\n" not in reply:
                    await trio.lowlevel.wait_readable(sock)
                    data = sock.recv(4096)
                    if not data:
                        return
                    reply += data
            finally:
                sock.close()
    except (OSError, trio.TooSlowError, trio.BrokenResourceError):
        return
    line = reply.split(b"\r\n", 1)[0].decode(errors="replace")
    if line.startswith("-"):
        hint = ("set datastore_password" if password is None else "check datastore_password")
        raise DatastoreAuthError(f"datastore {host}:{port}: {line[1:]} ({hint})")


class Datastore:
    """The pool. ``after_batch`` is called after each batch of replies has been
    delivered, so that whoever collects replies (clients) sends them in one go."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connections: int = 1,
        congestion=None,
        timeout: float = 5.0,
        after_batch: Callable[[], None] = lambda: None,
        protocol: int = 2,
        password: str | None = None,
    ):
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.protocol = protocol  # 3: the pool RESP3 clients' requests go to
        # datastore_password: AUTH is the first command of every (re)connection.
        self.auth = None if password is None else resp.encode_command([b"AUTH", password.encode()])
        self.timeout = timeout
        self.after_batch = after_batch
        self.congestion = congestion  # the node's (dyno.peer.Congestion): a connection far behind joins it
        self.unavailable = resp.error(f"ERR dyno: datastore {self.address} is unavailable")
        self.broken = resp.error(
            f"ERR dyno: datastore {self.address} connection lost; the request may or may not have been applied"
        )
        self.timed_out = resp.error(
            f"ERR dyno: datastore {self.address} timed out; the request may or may not have been applied"
        )
        self.connections = [Connection(self, i) for i in range(max(1, connections))]
        self.up = False  # a connection to Redis is up (connection_changed)

    def connection_changed(self) -> None:
        """A connection came up or went down: ``up`` is asked per batch, so it is
        kept as a plain attribute rather than found by a loop each time."""
        self.up = any(conn.up for conn in self.connections)

    def _connection(self, affinity: int) -> Connection | None:
        connections = self.connections
        conn = connections[affinity % len(connections)]
        if conn.up:
            return conn
        for conn in connections:
            if conn.up:
                return conn
        return None

    def send(self, payload: bytes, sink: Sink, affinity: int = 0) -> None:
        """Queue one encoded request; its reply (or an error) reaches ``sink``.
        ``affinity`` picks the connection, so one client's requests share one."""
        conn = self._connection(affinity)
        if conn is None:
            sink.fail(self.unavailable)
        else:
            conn.send(payload, sink)

    def send_many(self, payload: bytes, sinks: list[Sink], affinity: int = 0) -> None:
        """Queue encoded requests whose replies go to ``sinks``, in order."""
        conn = self._connection(affinity)
        if conn is None:
            for sink in sinks:
                sink.fail(self.unavailable)
        else:
            conn.send_many(payload, sinks)

    def send_run(self, payload: bytes, sink: Sink, count: int, affinity: int = 0) -> None:
        """Queue ``count`` encoded requests whose replies all go to ``sink``
        (``runs``: it takes them with ``deliver_run``, several at a time), or its
        ``count`` failures."""
        conn = self._connection(affinity)
        if conn is None:
            for _ in range(count):
                sink.fail(self.unavailable)
        else:
            conn.send_run(payload, sink, count)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for conn in self.connections:
                nursery.start_soon(conn.run)
