"""Client connections: RESP in, replies out in request order.

One task per client (DESIGN.md §10). It reads with non-blocking stdlib calls, parses
every complete request in what it read, and hands each to the coordinator together
with a ``ReplySlot``: the place its reply will land. Slots sit in a FIFO per client,
so replies go out in request order however the targets answer; whoever fills slots
(the client task for node-made replies, a datastore or peer reader for the rest)
queues the client on the node's ready list, and the client sends every reply that
is ready in one ``send`` when that batch ends.

A connection does not know the node (STYLE.md §9): the listener hands it
``execute_batch`` (the coordinator's), the ready list, the peer links'
congestion, the counters to add its bytes to and ``forget`` for when it ends,
each bound once, so a read costs what it would with the node's attributes.

Back-pressure: a client with more than ``MAX_IN_FLIGHT`` unanswered requests is not
read from until its replies come in, and no client is read from while a peer link is
congested (``dyno.peer.Congestion``). A client that writes before it reads (redis-py
sends a whole pipeline first) is read on as Redis reads it: its replies wait in
``_unsent`` while it sends, up to ``client_output_buffer_limit`` bytes; past that it
is closed with a log line, as Redis closes a client past its output buffer limit.
All clients' unsent replies together are bounded by ``maxmemory_clients`` (Redis 7's
name): past it the clients holding the most are closed (``ClientListener.shed``). An
unfinished request may hold at most ``client_query_buffer_limit`` bytes, and an
argument at most ``proto_max_bulk_len`` (dyno.resp.RequestParser). Nothing is
buffered without bound.
"""

from __future__ import annotations

import itertools
import logging
import socket
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

import trio

from dyno import poller, resp, tls_socket
from dyno.datastore import Sink
from dyno.stream import Listener
from dyno.wakeup import Wakeup

if TYPE_CHECKING:
    import ssl

    from dyno.metrics import Stats
    from dyno.peer import Congestion

log = logging.getLogger("dyno.client")

RECV_SIZE = 64 * 1024
MAX_IN_FLIGHT = 1024
SEND_CHUNK = 1024 * 1024  # bytes of unsent replies joined for one send
CLOSE_GRACE = 5.0  # seconds to deliver the last replies before closing

# The coordinator's: runs a client's parsed requests; the third argument is their
# bytes as read when those are their canonical encoding, else None.
ExecuteBatch = Callable[["ClientConnection", list, "bytes | None"], None]

_client_ids = itertools.count(1)


def number_clients(first: int, step: int) -> None:
    """Client ids from ``first`` by ``step``: a node's workers (dyno.workers) number
    theirs apart, so CLIENT ID is unique across the node."""
    global _client_ids
    _client_ids = itertools.count(first, step)

NO_SUBSCRIPTIONS: frozenset = frozenset()  # dyno.pubsub.NONE: no subscription yet
# What one read of a client's socket came to (ClientConnection._read).
_FULL, _DRAINED, _NOTHING, _CLOSED = "full", "drained", "nothing", "closed"


class ReplySlot(Sink):
    """The place one request's reply lands."""

    __slots__ = ("client", "data")

    def __init__(self, client: "ClientConnection", data: bytes | None = None):
        self.client = client
        self.data = data

    def deliver(self, reply: bytes) -> None:
        self.data = reply
        client = self.client
        if not client.queued:
            client.queued = True
            client.ready.append(client)

    def deliver_run(self, reply: bytes, n: int) -> None:  # a part of one request's reply
        self.data = reply  # (deliver's, without the call)
        client = self.client
        if not client.queued:
            client.queued = True
            client.ready.append(client)


class BatchSlot(ReplySlot):
    """The place the replies of ``count`` requests land when they were forwarded
    together, as one read, to one Redis connection: they arrive in order, and the
    slot is ready when the last one is in (one object and one FIFO entry per read
    instead of per request)."""

    __slots__ = ("parts", "count", "received")
    runs = True

    def __init__(self, client: "ClientConnection", count: int):
        self.client = client
        self.data = None
        self.parts: list[bytes] = []
        self.count = count
        self.received = 0

    def deliver(self, reply: bytes) -> None:
        self.deliver_run(reply, 1)

    def deliver_run(self, replies: bytes, n: int) -> None:
        self.parts.append(replies)
        self.received += n
        if self.received == self.count:
            parts = self.parts
            if len(parts) > 1:  # what it held while it filled is the slot's data now
                self.client.release(sum(map(len, parts)) - len(replies))
                self.data = b"".join(parts)
            else:
                self.data = parts[0]
            client = self.client
            if not client.queued:
                client.queued = True
                client.ready.append(client)
        else:  # a batch of many replies filling up: counted (a client that pipelines a lot)
            self.client.hold(len(replies))

    def deliver_parts(self, replies: list[bytes]) -> None:
        self.deliver_run(b"".join(replies), len(replies))

    deliver_each = deliver_parts  # a peer's replies to several of them


class ClientConnection:
    def __init__(
        self, sock: socket.socket, address: tuple, *, execute_batch: "ExecuteBatch",
        congestion: "Congestion", ready: list["ClientConnection"], stats: "Stats",
        forget: Callable[["ClientConnection"], None], max_bulk: int = resp.MAX_BULK,
        max_query: int = resp.MAX_QUERY_BUFFER, max_output: int = 0,
        shed: Callable[[], None] | None = None, max_total: int = 0,
    ):
        self.execute_batch = execute_batch
        self.congestion = congestion
        self.congested = congestion.links  # the links congested now: a set, truthy while any
        self.stats = stats
        self.forget = forget
        self.sock = sock
        self.watch = poller.watch(sock)
        self.id = next(_client_ids)
        self.address = f"{address[0]}:{address[1]}" if len(address) >= 2 else str(address)
        self.name = b""
        self.protocol = 2  # 3 after HELLO 3
        self.consistency_override: dict[str, str] = {}  # set by DYNO_CONFIG:CONN_CONSISTENCY
        self.authenticated = False  # AUTH (dyno.auth); only read when requirepass is set
        self.transaction = None  # between MULTI and EXEC: its dyno.transactions.Transaction
        self.session = None  # after WATCH: its dyno.watch.Session
        self.blocked = None  # in a blocking pop: the session it waits on (dyno.blocking)
        self.held: list | None = None  # batches read while its WATCH is not answered yet
        # pub/sub (dyno.pubsub): what it subscribed to; subscriber: RESP2 rules apply
        self.channels = self.patterns = self.shard_channels = NO_SUBSCRIPTIONS
        self.subscriber = False
        self.replies: deque[ReplySlot] = deque()
        self.ready = ready  # the node's: clients with replies to send (ReplySlot.deliver)
        self.queued = False
        self.closing = False  # QUIT, a protocol error or EOF: answer what came before, then close
        self.dead = False
        self._unsent: list[bytes] = []
        self._unsent_bytes = 0
        self.holding = 0  # reply bytes held for it: batches filling up, unsent (``hold``)
        self._writer_running = False
        self._nursery: trio.Nursery | None = None
        self._caught_up = Wakeup()
        self._waiting = False
        self.created = trio.current_time()
        self.parser = resp.RequestParser(max_bulk, max_query)
        self.max_output = max_output or sys.maxsize  # unsent reply bytes before closing
        self.max_total = max_total or sys.maxsize  # every client's unsent bytes: ClientListener.shed
        self.shed = shed
        self._eof = False  # the poller's read found the connection closed

    # -- reading ----------------------------------------------------------------------

    async def run(self) -> None:
        congestion = self.congestion
        replies = self.replies
        wait_readable = self.watch.wait
        on_readable = self._on_readable
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                short_read = True
                while not self.closing and not self.dead:
                    if len(replies) > MAX_IN_FLIGHT:
                        await self._catch_up()
                    if congestion:
                        await congestion.wait_clear()
                    if short_read:
                        # While parked, the poller runs _on_readable itself: most
                        # requests are read and dispatched without waking this task.
                        await wait_readable(on_readable)
                        if self._eof or self.closing or self.dead:
                            break
                    else:
                        await trio.lowlevel.checkpoint()
                    outcome = self._read_or_drop()
                    if outcome is _CLOSED:
                        break
                    short_read = outcome is not _FULL
                if self.closing:
                    await self._finish()
                nursery.cancel_scope.cancel()
        finally:
            self.dead = True
            self.replies.clear()
            self._drop_unsent()
            self.watch.close()
            self.sock.close()
            self.forget(self)

    def _read(self):
        """One ``recv``, and the requests it completes dispatched and their ready
        replies sent. Returns _FULL (read again: the read filled the buffer, or
        the client's FIN came with it), _DRAINED, _NOTHING (EAGAIN) or _CLOSED."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return _NOTHING
        except OSError:
            return _CLOSED
        if not data:
            # The client shut its sending side: like Redis, answer what it sent
            # before (the FIN often comes with the last requests), then close.
            self.closing = True
            return _CLOSED
        self.stats.client_bytes_in += len(data)
        parser = self.parser
        requests = parser.feed(data)
        if requests:
            self.execute_batch(self, requests, data if parser.clean else None)
        if parser.error is not None and not self.closing:
            self.replies.append(ReplySlot(self, parser.error))
            self.closing = True
            log.info("client %s: %s", self.address, parser.error[1:-2].decode())
        self.flush()
        # A short read empties the socket, unless the client's FIN came with it.
        return _FULL if len(data) == RECV_SIZE or self.watch.ended else _DRAINED

    def _read_or_drop(self):
        """``_read``, except that a bug (any exception) costs this client, never the
        poller or the node: the connection is dropped and the error logged."""
        try:
            return self._read()
        except Exception:
            log.exception("client %s: unexpected error; closing the connection", self.address)
            self.dead = True
            return _CLOSED

    def _on_readable(self) -> bool:
        """The poller's call while this client's task is parked and its socket
        became readable: handle the read here, in the poller's task, and return
        True; or return False to have the task woken (more to read, back-pressure,
        closing), which then carries on as if it had done the read itself."""
        try:  # (_read_or_drop's, without the call: one per request at -P 1)
            outcome = self._read()
        except Exception:
            log.exception("client %s: unexpected error; closing the connection", self.address)
            self.dead = True
            outcome = _CLOSED
        if outcome is _CLOSED:
            self._eof = True
            return False
        return outcome is not _FULL and not (
            self.closing or self.dead or self.congested
            or len(self.replies) > MAX_IN_FLIGHT
        )

    async def _catch_up(self) -> None:
        """Back-pressure: stop reading until replies are answered."""
        self._waiting = True
        try:
            while not self.dead and len(self.replies) > MAX_IN_FLIGHT // 2:
                await self._caught_up.wait()
        finally:
            self._waiting = False

    async def _finish(self) -> None:
        """Deliver every reply owed before closing (QUIT, protocol error)."""
        self._waiting = True
        with trio.move_on_after(CLOSE_GRACE):
            while not self.dead and (self.replies or self._unsent):
                await self._caught_up.wait()
        self._waiting = False

    # -- writing ----------------------------------------------------------------------

    def push(self, data: bytes) -> None:
        """An out-of-band reply (a pub/sub message): after every reply owed so far."""
        slot = ReplySlot(self)
        self.replies.append(slot)
        slot.deliver(data)

    def flush(self) -> None:
        """Send every reply that is ready, in order, in one write."""
        replies = self.replies
        if self.dead:  # the client is gone: nothing will ever read these replies
            replies.clear()
            self._drop_unsent()
            if self._waiting:
                self._caught_up.set()
            return
        if not replies or replies[0].data is None:
            return
        data = replies.popleft().data
        if replies and replies[0].data is not None:
            parts = [data]
            while replies and replies[0].data is not None:
                parts.append(replies.popleft().data)
            data = b"".join(parts)
        self._send(data)
        if self._waiting:
            self._caught_up.set()

    def _send(self, data: bytes) -> None:
        self.stats.client_bytes_out += len(data)
        if self._unsent:
            self._queue_unsent(data)
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.dead = True
            self.replies.clear()
            return
        if sent < len(data):
            self._queue_unsent(memoryview(data)[sent:])
            if not self._writer_running and self._nursery is not None:
                self._writer_running = True
                self._nursery.start_soon(self._write_unsent)

    def hold(self, size: int) -> None:
        """``size`` bytes of replies are held for the client: the parts of a batch
        slot filling up, or what waits in ``_unsent`` while it does not read (a reply
        sent at once, the common case, is never counted). Past
        ``client_output_buffer_limit`` it is closed; past ``maxmemory_clients`` for all
        clients, the biggest holders are. What was held before these bytes is what
        counts, so one reply larger than the limit still goes to a client that reads."""
        if self.dead:  # gone: what arrives for it now is dropped, never sent
            return
        held = self.holding
        self.holding = held + size
        stats = self.stats
        stats.client_unsent += size
        if held > self.max_output:
            self.overflow("client_output_buffer_limit")
        elif stats.client_unsent > self.max_total and self.shed is not None:
            self.shed()

    def release(self, size: int) -> None:
        """``size`` held bytes left (sent, or became a slot's data)."""
        if self.dead:  # (dropping what it held set it to 0)
            return
        self.holding -= size
        self.stats.client_unsent -= size

    def _queue_unsent(self, data) -> None:
        """Replies the client has not read yet wait here (counted: ``hold``)."""
        self._unsent.append(data)
        self._unsent_bytes += len(data)
        self.hold(len(data))

    def overflow(self, limit: str) -> None:
        """Close the client for holding too many unread replies (``limit`` names the
        setting it passed), dropping them."""
        log.warning("client %s closed: %d bytes of replies it has not read (%s)", self.address,
                    self.holding, limit)
        self.stats.output_limit_closes += 1
        self._drop_unsent()
        self.dead = True
        self.replies.clear()
        if self._nursery is not None:  # wherever its task is parked, it ends now
            self._nursery.cancel_scope.cancel()

    def _drop_unsent(self) -> None:
        """Forget every reply held for it (it is gone, or closed for holding too many)."""
        self.stats.client_unsent -= self.holding
        self.holding = 0
        self._unsent.clear()
        self._unsent_bytes = 0

    async def _write_unsent(self) -> None:
        """Runs only while the client is not keeping up with its replies: sends them
        as the socket takes them, a chunk at a time (joining megabytes on every
        wake-up would cost a slow reader's node a copy of all it holds)."""
        sock = self.sock
        unsent = self._unsent
        try:
            while unsent:
                await trio.lowlevel.wait_writable(sock)
                if len(unsent) > 1 and len(unsent[0]) < SEND_CHUNK:
                    size, count = 0, 0
                    for part in unsent:
                        if size and size + len(part) > SEND_CHUNK:
                            break
                        size += len(part)
                        count += 1
                    unsent[:count] = [b"".join(unsent[:count])]
                data = unsent[0]
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    continue
                except OSError:
                    self.dead = True
                    self._drop_unsent()
                    break
                self._unsent_bytes -= sent
                self.release(sent)
                if sent == len(data):
                    del unsent[0]
                else:
                    unsent[0] = memoryview(data)[sent:]
        finally:
            self._writer_running = False
            if self._waiting:
                self._caught_up.set()


MAX_CLIENTS = b"-ERR max number of clients reached\r\n"
TLS_HANDSHAKE_TIMEOUT = 10.0  # seconds a connecting client has to finish its TLS handshake


class ClientListener(Listener):
    """Accepts clients on ``listen`` and gives each its own task.

    It keeps the open connections in ``clients`` (the node's dict: CLIENT LIST and
    the admin port read it) and hands each the node's ``execute_batch``,
    ``congestion``, ``ready`` list and ``stats``.

    With ``tls`` (an ``ssl.SSLContext``, client_tls_*), the port speaks TLS only, as a
    Redis with ``port 0`` and ``tls-port``: there is no plaintext side door. Each
    connection first gets a task of its own for the handshake (``dyno.tls_socket``),
    with a deadline, so a slow or failed handshake costs that connection only; then
    the same ``ClientConnection`` serves it through a ``TLSSocket``."""

    def __init__(
        self, host: str, port: int, *, clients: dict[int, ClientConnection],
        execute_batch: "ExecuteBatch", congestion: "Congestion",
        ready: list[ClientConnection], stats: "Stats", maxclients: int = 10000,
        max_bulk: int = resp.MAX_BULK, max_query: int = resp.MAX_QUERY_BUFFER, max_output: int = 0,
        max_total: int = 0,
        tls: "ssl.SSLContext | None" = None, handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT,
    ):
        super().__init__(host, port)
        self.clients = clients
        self.maxclients = maxclients  # past it, a new client gets Redis's error and is closed
        self.refused = 0
        self._refusal_logged = 0.0
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.handshaking = 0  # TLS handshakes under way: they count against maxclients
        self.given = dict(
            execute_batch=execute_batch, congestion=congestion, ready=ready, stats=stats,
            forget=self.forget, max_bulk=max_bulk, max_query=max_query, max_output=max_output,
            shed=self.shed, max_total=max_total,
        )
        self.stats = stats
        self.max_total = max_total
        self.on_unsubscribed: Callable[[ClientConnection], None] = lambda client: None  # pub/sub forget
        # A connection ended (closed, refused, or its TLS handshake failed): a worker
        # tells its supervisor, which hands new ones to the worker with the fewest.
        self.on_closed: Callable[[], None] = lambda: None

    def shed(self) -> None:
        """``maxmemory_clients`` passed: close the clients holding the most unread
        replies until what all hold is under it (Redis 7's client eviction)."""
        stats = self.stats
        holding = sorted((c for c in self.clients.values() if c.holding),
                         key=lambda c: c.holding, reverse=True)
        for client in holding:
            if stats.client_unsent <= self.max_total:
                break
            client.overflow("maxmemory_clients")

    def forget(self, client: ClientConnection) -> None:
        self.clients.pop(client.id, None)
        self.on_closed()
        if client.subscriber or client.channels or client.patterns or client.shard_channels:
            self.on_unsubscribed(client)
        for session in (client.session, client.blocked):  # its own Redis connections go too
            if session is not None:
                session.abort()
        client.session = client.blocked = None

    def _refuse(self, conn: socket.socket, tls: bool) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= 10.0:
            self._refusal_logged = now
            log.warning("maxclients (%d) reached: refusing clients (%d so far)",
                        self.maxclients, self.refused)
        if not tls:  # Redis's words, then closed; the node goes on serving the others
            try:
                conn.setblocking(False)
                conn.send(MAX_CLIENTS)
            except OSError:
                pass
        # A TLS client is closed before its handshake: handshaking only to refuse
        # would let a flood of connections cost a handshake each past the limit.
        conn.close()
        self.on_closed()

    async def serve(self, nursery: trio.Nursery) -> None:
        clients, given = self.clients, self.given
        if self.tls is not None:
            await self._serve_tls(nursery)
            return

        def on_connection(conn: socket.socket, address) -> None:
            if len(clients) >= self.maxclients:
                self._refuse(conn, False)
                return
            client = ClientConnection(conn, address, **given)
            clients[client.id] = client
            nursery.start_soon(client.run)

        await super().serve(on_connection, log)

    async def _serve_tls(self, nursery: trio.Nursery) -> None:
        def on_connection(conn: socket.socket, address) -> None:
            if len(self.clients) + self.handshaking >= self.maxclients:
                self._refuse(conn, True)
                return
            self.handshaking += 1
            nursery.start_soon(self._handshake, conn, address)

        await super().serve(on_connection, log)

    async def _handshake(self, conn: socket.socket, address) -> None:
        """One client's TLS handshake; then its connection runs in this same task."""
        try:
            tls_sock = await tls_socket.accept(conn, self.tls, self.handshake_timeout)
        except tls_socket.TLSHandshakeError as exc:
            # A port scanner, a plaintext client or a wrong certificate: that
            # connection's business, not the operator's alarm.
            log.info("client %s: %s; closed", _address(address), exc)
            self.on_closed()
            return
        finally:
            self.handshaking -= 1
        client = ClientConnection(tls_sock, address, **self.given)
        self.clients[client.id] = client
        await client.run()


def _address(address) -> str:
    return f"{address[0]}:{address[1]}" if len(address) >= 2 else str(address)
