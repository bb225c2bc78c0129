"""WATCH: optimistic locking, on this node's replica, over a connection of the client's own.

Redis's WATCH belongs to a connection: EXEC fails (nil) if a watched key was modified
since, by anyone. dyno's nodes share their Redis connections among clients, so a
client that WATCHes gets a *session*: a Redis connection of its own on the *watch
replica* of its keys (``watch_replica``: one of their replicas, the same whichever
node the client is on), here (``Session``) or on a peer (``RemoteSession``, whose
requests the peer runs on a ``Session`` of its own). WATCH runs there, and at EXEC
the transaction runs there first: ``MULTI``, the commands, the versions stamp,
``EXEC``. Every write to those keys, through any node, reaches that replica's Redis,
and every watched transaction on them runs there first, so a watched key modified
anywhere makes EXEC return nil, and then nothing ran anywhere. If it committed, the same block goes to the other replicas (as
SPOP's effect does: they get what this replica did) and the client gets this
replica's EXEC reply. A session ends at EXEC, DISCARD, UNWATCH, RESET, QUIT, or when
its client leaves; its connection is closed.

Limits: at most ``MAX_SESSIONS`` clients of a node WATCH at once; one more gets an
error naming the limit (each holds a Redis connection, and Redis's own ``maxclients``
is 10,000 for every node's pool and sessions together).

This module owns the session (one trio task per session, started with ``spawn``);
what to send and what the replies mean is the coordinator's.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable

import trio

from dyno import resp

__all__ = ["MAX_SESSIONS", "RemoteSession", "Session", "split_array", "watch_replica"]

log = logging.getLogger("dyno.watch")

MAX_SESSIONS = 1000
#: What a peer may send on a session besides what any peer request may (dyno.peer).
SESSION_ONLY = frozenset({b"watch", b"blpop", b"brpop", b"blmove", b"brpoplpush", b"bzpopmin", b"bzpopmax",
                          b"blmpop", b"bzmpop", b"time"})  # (TIME: after a consumer group's read, dyno.groups)
CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 30.0

#: ``done(replies)``: the raw replies to one request, or (a failure) one error line.
Done = Callable[["list[bytes] | bytes"], None]


class Session:
    """A client's own connection to this node's Redis while it WATCHes."""

    __slots__ = ("auth", "closed", "group", "hello", "host", "port", "replica", "_receive", "_scope", "_send")

    def __init__(self, host: str, port: int, *, auth: bytes | None, protocol: int, group: tuple,
                 replica=None):
        self.host = host
        self.port = port
        self.auth = auth  # AUTH for datastore_password, as the pool sends it
        self.hello = resp.encode_command([b"HELLO", b"3"]) if protocol == 3 else None
        self.group = group  # the replica set of the keys watched
        self.replica = replica  # the ring node this is (the node's own), for the coordinator
        self._send, self._receive = trio.open_memory_channel(math.inf)
        self._scope = trio.CancelScope()
        self.closed = False

    def request(self, payload: bytes, count: int, done: Done, timeout: float | None = REPLY_TIMEOUT) -> None:
        """Send ``payload`` (``count`` commands) on the session; ``done`` gets the
        replies, in the order requests were made. ``timeout``: seconds to wait for
        them (None: as long as it takes, for a blocking pop)."""
        if self.closed:
            done(resp.error("ERR dyno: the session is closed"))
            return
        self._send.send_nowait((payload, count, done, timeout))

    def close(self) -> None:
        """End the session once what is queued ran; then the connection closes."""
        if not self.closed:
            self.closed = True
            self._send.close()

    def abort(self) -> None:
        """End it now (its client left): a blocked command is given up, since
        closing the connection is what makes Redis forget it."""
        self.close()
        self._scope.cancel()

    async def run(self) -> None:
        """The session's task: connect, then send each request and read its replies."""
        with self._scope:
            await self._run()

    async def _run(self) -> None:
        stream = None
        pending: list = []
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(self.host, self.port)
                buffer = bytearray()
                for command in (self.auth, self.hello):
                    if command is not None:
                        await stream.send_all(command)
                        (reply,) = await _read(stream, buffer, 1)
                        if reply[:1] == b"-":
                            raise OSError(reply[1:-2].decode(errors="replace"))
            async for request in self._receive:
                pending = [request]
                payload, count, done, timeout = request
                await stream.send_all(payload)
                with trio.fail_after(math.inf if timeout is None else timeout):
                    replies = await _read(stream, buffer, count)
                pending = []
                done(replies)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            error = resp.error(f"ERR dyno: the WATCH session's connection to this node's Redis failed: "
                               f"{exc or type(exc).__name__}")
            log.info("WATCH session to %s:%d ended: %s", self.host, self.port, exc or type(exc).__name__)
            self.closed = True
            for _, _, done, _ in pending:
                done(error)
            while True:
                try:
                    _, _, done, _ = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                done(error)
        finally:
            self.closed = True
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()


async def _read(stream: trio.SocketStream, buffer: bytearray, count: int) -> list[bytes]:
    """``count`` whole replies from ``stream`` (what is left over stays in ``buffer``)."""
    replies: list[bytes] = []
    pos = 0
    while len(replies) < count:
        end = resp.scan_reply(buffer, pos) if pos < len(buffer) else -1
        if end < 0:
            data = await stream.receive_some(65536)
            if not data:
                raise OSError("Redis closed the connection")
            buffer += data
            continue
        replies.append(bytes(buffer[pos:end]))
        pos = end
    del buffer[:pos]
    return replies


class RemoteSession:
    """A client's session on another node: the replica its keys are watched on is a
    peer's. Requests travel as SESSION frames on the link to it (``PeerLink.
    send_session``), which runs them on a ``Session`` of its own; ``close`` ends it
    there. Same face as ``Session``."""

    __slots__ = ("closed", "flags", "group", "id", "link", "replica")

    _ids = itertools.count(1)

    def __init__(self, link, *, group: tuple, replica, flags: int = 0):
        self.link = link
        self.group = group
        self.replica = replica  # the peer (ring node) the keys are watched on
        self.flags = flags  # RESP3 for a client that said HELLO 3
        self.id = next(RemoteSession._ids)
        self.closed = False

    def request(self, payload: bytes, count: int, done: Done, timeout: float | None = REPLY_TIMEOUT) -> None:
        if self.closed:
            done(resp.error("ERR dyno: the session is closed"))
            return
        self.link.send_session(self.id, payload, count, _Replies(done, count), self.flags,
                               wait=math.inf if timeout is None else timeout)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.link.send_session(self.id, b"", 0, None)

    abort = close  # the peer closes its connection, which ends a blocked command


class _Replies:
    """What a peer answered to a session request, to ``done`` as a list."""

    __slots__ = ("count", "done")

    def __init__(self, done: Done, count: int):
        self.done = done
        self.count = count

    def deliver(self, reply) -> None:
        self.done([reply] if self.count == 1 else list(reply))

    def fail(self, error: bytes) -> None:
        self.done(error)


def watch_replica(group: tuple, available: Callable) -> object:
    """The replica a transaction on ``group``'s keys is WATCHed and run first on: the
    same for every node of the cluster (the first by datacenter, rack and name that
    is available), so that two clients' watched transactions on the same keys, through
    any nodes, meet on one Redis and one of them sees the other's change."""
    ordered = sorted(group, key=lambda node: (node.dc, node.rack, node.name))
    return next((node for node in ordered if available(node)), ordered[0])


def split_array(reply: bytes) -> list[bytes] | None:
    """The elements of an array reply (raw), or None if it is not a non-null array."""
    if reply[:1] != b"*" or reply[:3] == b"*-1":
        return None
    newline = reply.index(b"\r\n")
    pos = newline + 2
    items = []
    for _ in range(int(reply[1:newline])):
        end = resp.scan_reply(reply, pos)
        items.append(reply[pos:end])
        pos = end
    return items
