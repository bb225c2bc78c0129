"""Peer links: how dyno nodes talk to each other (DESIGN.md §6).

Frames are msgpack arrays ``[kind, id, ...]`` written back to back on a TCP
connection. msgpack is self-delimiting, so a reader feeds what it received to one
``msgpack.Unpacker`` and gets every complete frame of the batch in one C call; the
Unpacker's buffer limits stop a peer that sends garbage from making us buffer
without bound. (DESIGN.md suggested a length prefix; it would cost a Python-level
loop per frame and buys nothing msgpack does not already give.)

    HELLO    [0, 0, {cluster, node, version, dc, rack, admin}]   first frame each way
                                       (admin: the node's admin HTTP address, for dyno status)
    REQUEST  [1, id, flags, payload, n]  payload: n canonical RESP requests (a client's
                                       pipelined read travels as one frame)
    REPLY    [2, id, replies]          Redis's reply, relayed verbatim (bytes) when n is 1;
                                       a list of its n replies when n > 1 (the receiver
                                       scanned them already; the sender need not);
                                       for a QUIET request (writes nobody waits for): b""
                                       if every reply was +OK, else the replies joined
    REFUSED  [3, 0, reason]            a HELLO was refused; the connection closes
    GOSSIP   [4, 0, message]           membership (dyno.membership), both ways
    FAILED   [5, id, error]            the receiver could not run the request (its
                                       Redis is down, ...): a failure, not a reply
    AUTH     [6, 0, {nonce?, proof?}]  with ``cluster_secret``: after the HELLOs, each
                                       side proves it knows the secret (below)

With a ``cluster_secret`` the handshake proves both sides know it, without sending
it and without a replay being accepted: the connecting side sends HELLO and AUTH
{nonce: Nc}; the accepting side answers HELLO and AUTH {nonce: Ns, proof:
HMAC(secret, "server" Nc Ns)}; the connecting side checks it and sends AUTH {proof:
HMAC(secret, "client" Ns Nc)}, which the accepting side checks before it takes any
other frame. Fresh nonces each way make a recorded exchange worthless.

With ``secure_server_option`` (dyno.peer_tls says which links), a connection is TLS
from its first byte: the connecting side starts the handshake (both sides verify the
other's certificate against the cluster CA), then the frames above travel inside it,
cluster_secret included if set. The accepting side tells the two apart by the first
byte (0x16 starts a TLS handshake; a HELLO starts 0x93) and takes a plaintext peer
only where its HELLO's datacenter and rack allow one; else REFUSED, logged.

A REQUEST is run on the receiving node's own Redis, unless ``flags`` has
``COORDINATE``: then the receiver coordinates it for its own datacenter (a write
that crossed to a remote DC fans out there: 2 hops, as Dynomite does). A
COORDINATE request of n > 1 writes (a client's pipelined writes, a part per
replica set) is QUIET (answered once all n ran here), or, when its sender waits
for the replies (a hint replay), answered with their list.

Outgoing side: one ``PeerLink`` per peer; requests are pipelined and multiplexed by
id, each with a deadline; a peer that does not answer in ``timeout`` fails those
requests, not the node. Incoming side: ``PeerServer`` checks the HELLO (cluster
name and protocol version; a mismatch is refused with a log line on both sides).

Neither side knows the node (STYLE.md §9): ``dyno.node`` hands each the values and
callables it needs (the HELLO to send, the datastores, "coordinate this", "deliver
this gossip", "this peer is unreachable", "these background requests failed"),
bound once, so the request path costs what it would with the node's attributes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import logging
import math
import os
import socket
from typing import TYPE_CHECKING, Callable

import msgpack
import trio

from dyno import resp, watch
from dyno.datastore import Sink
from dyno.commands import peer_refusal
from dyno.resp import whole_requests
from dyno.stream import ConnectionLost, Listener, Receiver, connect, write_loop
from dyno.tlsstream import TLS_HANDSHAKE, TLSHandshakeError, TLSReceiver, TLSSession
from dyno.tlsstream import write_loop as tls_write_loop
from dyno.wakeup import Idle, Wakeup

if TYPE_CHECKING:
    from dyno.datastore import Datastore
    from dyno.peer_tls import PeerTLS
    from dyno.ring import RingNode

# What a link reports when writes nobody waited for (``send_background``) failed,
# or may have: the peer, their payload, how many requests it holds, the error, and
# the request's flags (COORDINATE: the peer was to coordinate them).
WriteFailed = Callable[["RingNode", bytes, int, bytes, int], None]
# Coordinates ``count`` writes from a node of another datacenter for this one
# (``payload, sink, flags, count``): a COORDINATE request.
Coordinate = Callable[[bytes, Sink, int, int], None]

log = logging.getLogger("dyno.peer")

# 2: a REPLY to n > 1 requests is a list; 3: COORDINATE batches; 4: a QUIET REPLY
# is b"" only when every reply was +OK, else the replies joined (echoes); 5: AUTH;
# 6: SESSION requests (WATCH), PUBLISH frames and QUERY requests (pub/sub).
PROTOCOL_VERSION = 6
HELLO, REQUEST, REPLY, REFUSED, GOSSIP, FAILED, AUTH, PUBLISH = 0, 1, 2, 3, 4, 5, 6, 7
NONCE_BYTES = 16
CHALLENGE_WAIT = 1.0  # for the AUTH challenge a HELLO comes with (same write)
COORDINATE = 1  # REQUEST flag: coordinate for the receiver's datacenter
RESP3 = 2       # REQUEST flag: run it on a RESP3 connection (the client said HELLO 3)
QUIET = 4       # REQUEST flag: no one waits for the replies; answer REPLY b"" once all ran
SESSION = 8     # REQUEST flag: run it on the client's own connection (dyno.watch); frame + session id
QUERY = 16      # REQUEST flag: the node answers it itself (PUBSUB's counts, dyno.pubsub), msgpack

RECV_SIZE = 256 * 1024
# Back-pressure: past HIGH_WATER unanswered requests a link makes the node stop
# reading client requests until it is back under LOW_WATER (or its requests time
# out). Clients slow down; no replica write is ever dropped for want of room.
HIGH_WATER = 20_000
# Requests queued since the link's writer last ran travel in one frame; past this
# many requests the frame is sealed at once.
MAX_FRAME_REQUESTS = 2_000
LOW_WATER = 10_000
MAX_FRAME = 600 * 1024 * 1024  # a request can carry a 512 MB value
MAX_REQUESTS = 1024 * 1024  # per frame (Redis's own limit on a multibulk's length)
HELLO_TIMEOUT = 5.0
HELLO_BYTES = 64 * 1024  # what a connection may send before its HELLO is whole
# Answers queued to a peer that does not read them, past which its connection is
# closed: far beyond what a peer that reads ever has pending (its link stops at
# HIGH_WATER unanswered requests), and a bound on what one that never reads costs.
MAX_UNSENT = 1024 * 1024 * 1024
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


_BYTES = {bytes}
_affinities = itertools.count()


def _unpacker() -> msgpack.Unpacker:
    return msgpack.Unpacker(
        max_buffer_size=MAX_FRAME, raw=False, strict_map_key=True,
        max_array_len=MAX_REQUESTS, max_map_len=64,
    )


class PeerError(Exception):
    """A peer broke the protocol."""


def hello_frame(cluster: str, name: str, dc: str, rack: str, admin: str) -> bytes:
    """The HELLO frame of node ``name`` (both sides send one first)."""
    return msgpack.packb(
        [HELLO, 0, {
            "cluster": cluster, "node": name, "version": PROTOCOL_VERSION,
            "dc": dc, "rack": rack, "admin": admin,
        }]
    )


def check_hello(cluster: str, frame) -> str | None:
    """The reason to refuse a HELLO frame (a peer must belong to ``cluster``), or
    None if it is acceptable."""
    if not (isinstance(frame, list) and len(frame) == 3 and frame[0] == HELLO and isinstance(frame[2], dict)):
        return "expected a HELLO frame"
    hello = frame[2]
    if hello.get("version") != PROTOCOL_VERSION:
        return f"protocol version {hello.get('version')!r}, this node speaks {PROTOCOL_VERSION}"
    if hello.get("cluster") != cluster:
        return f"cluster {hello.get('cluster')!r}, this node belongs to {cluster!r}"
    return None


def _decode(unpacker: msgpack.Unpacker, data: bytes) -> list:
    """The complete frames ``data`` finished (maybe none)."""
    try:
        unpacker.feed(data)
        return list(unpacker)
    except (msgpack.UnpackException, ValueError) as exc:
        raise PeerError(f"undecodable frame ({exc.__class__.__name__}: {exc})") from None


async def _read_frames(receiver: Receiver, unpacker: msgpack.Unpacker) -> list:
    """Wait for data and return the complete frames it finished."""
    while True:
        frames = _decode(unpacker, await receiver.receive())
        if frames:
            return frames


async def _read_hello(receiver: Receiver, unpacker: msgpack.Unpacker) -> list:
    """The first frames of an incoming connection: at most HELLO_BYTES before a
    whole frame (a HELLO is a few hundred bytes), so a connection that has not said
    who it is cannot make the node buffer a frame's worth (MAX_FRAME)."""
    received = 0
    while True:
        data = await receiver.receive()
        received += len(data)
        frames = _decode(unpacker, data)
        if frames:
            return frames
        if received > HELLO_BYTES:
            raise PeerError(f"{received} bytes and no complete HELLO frame")


async def _first_byte(sock: socket.socket) -> int | None:
    """The first byte a connection sent, left unread (None: it closed at once)."""
    while True:
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        return data[0] if data else None


def proof(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    """What a side sends to prove it knows ``cluster_secret`` (module docstring)."""
    return hmac.new(secret, role + first + second, hashlib.sha256).digest()


def _auth_field(frame, field: str) -> bytes | None:
    """An AUTH frame's ``field`` (bytes), or None if ``frame`` is not one with it."""
    if not (frame.__class__ is list and len(frame) == 3 and frame[0] == AUTH and isinstance(frame[2], dict)):
        return None
    value = frame[2].get(field)
    return value if isinstance(value, bytes) and 0 < len(value) <= 64 else None


async def _next_frame(receiver: Receiver, unpacker: msgpack.Unpacker, frames: list):
    """The first of ``frames`` (what was read already) or of what comes next; and the rest."""
    if not frames:
        frames = await _read_frames(receiver, unpacker)
    return frames[0], frames[1:]


class Congestion:
    """The peer links that have too many unanswered requests. While any has,
    clients are not read from (``wait_clear``), so a slow replica slows writers
    down instead of making the node queue without bound."""

    def __init__(self) -> None:
        # Changed in place, never replaced: each client reads it directly (truthy
        # while any link is congested), with no call to __bool__ per read.
        self.links: set = set()
        self._lot = trio.lowlevel.ParkingLot()

    def __bool__(self) -> bool:
        return bool(self.links)

    def add(self, link) -> None:
        self.links.add(link)

    def remove(self, link) -> None:
        self.links.discard(link)
        if not self.links:
            self._lot.unpark_all()

    async def wait_clear(self) -> None:
        while self.links:
            await self._lot.park()


class PeerLink:
    """The outgoing connection to one peer.

    What the node hands it: ``cluster``, the cluster name a peer's HELLO must
    carry; ``hello()``, the HELLO frame to send (asked once per connection: the
    admin port is known once bound); ``timeout`` in seconds per request;
    ``congestion``, joined while too many requests are unanswered;
    ``after_batch()``, called once a batch of replies was handed out (clients
    send what is ready); ``on_unreachable(name)`` when it cannot connect or lost
    its connection; ``on_hello(name, admin_address)`` with what the peer's HELLO
    said; ``on_write_failed(peer, payload, count, error)`` when writes nobody
    waited for (``send_background``) failed; ``tls``, the node's peer TLS (None:
    plaintext), which says whether the link to this peer is TLS.
    """

    def __init__(
        self, peer: "RingNode", *, cluster: str, hello: Callable[[], bytes], timeout: float,
        congestion: Congestion, after_batch: Callable[[], None],
        on_unreachable: Callable[[str], None], on_hello: Callable[[str, object], None],
        on_write_failed: WriteFailed, secret: bytes | None = None, tls: "PeerTLS | None" = None,
    ):
        self.peer = peer
        self.cluster = cluster
        self.hello = hello
        self.secret = secret  # cluster_secret: the handshake proves both sides know it
        self.tls = tls
        self.congestion = congestion
        self.after_batch = after_batch
        self.on_unreachable = on_unreachable
        self.on_hello = on_hello
        self.on_write_failed = on_write_failed
        self.up = False
        self._out: list[bytes] = []
        self._pending: dict[int, tuple[Sink, float]] = {}
        self._waiting: dict[int, tuple] = {}  # blocking pops' requests: no deadline here
        self._ids = itertools.count(1)
        self.last_id = 0  # the last request framed (mark)
        self._wakeup = Wakeup()
        self._watchdog_idle = Idle()  # the watchdog, while nothing is pending
        self.timeout = timeout
        address = f"{peer.host}:{peer.port}"
        self.down_error = resp.error(f"ERR dyno: peer {peer.name} is unavailable")
        self.broken = resp.error(
            f"ERR dyno: connection to peer {peer.name} lost; the request may or may not have been applied"
        )
        self.timed_out = resp.error(
            f"ERR dyno: peer {peer.name} timed out; the request may or may not have been applied"
        )
        self.address = address
        self.sent = 0
        self.failed = 0
        self.congested = False
        self.queued = 0  # requests (not frames) sent and not yet answered
        # Set by gossip when this peer is judged down or declared LEAVING/STANDBY:
        # requests fail at once instead of waiting for the link to notice.
        self.judged_down = False
        # The wait before the next connection attempt: doubled after each failed
        # one (up to BACKOFF_MAX), back to BACKOFF_MIN once connected or when the
        # peer is seen up (reconnect_now, which also ends the wait in progress).
        self.backoff = BACKOFF_MIN
        self._backing_off: trio.CancelScope | None = None  # the wait in progress
        self._slow_logged = False  # "retrying every BACKOFF_MAX" said for this outage
        self._early_gossip: list[bytes] = []  # gossip to send once connected
        # The requests held for the writer's next turn (_send), which will travel
        # in one frame: None until one is held.
        self._turn: _Frame | None = None

    @property
    def has_unsent(self) -> bool:
        return bool(self._out or self._turn)

    @property
    def usable(self) -> bool:
        return self.up and not self.judged_down

    def send_gossip(self, message) -> int:
        """Queue a GOSSIP frame; returns its size. Before the link is up the last
        few wait for the connection (gossip tolerates loss; it must not pile up)."""
        frame = msgpack.packb([GOSSIP, 0, message])
        if self.up:
            self._out.append(frame)
            self._wakeup.set()
        else:
            self._early_gossip = self._early_gossip[-3:] + [frame]
        return len(frame)

    def send_publish(self, kind: bytes, channel: bytes, message: bytes) -> None:
        """Relay a PUBLISH (dyno.pubsub) to this peer; lost if the link is down, as a
        message is for a subscriber that is not connected."""
        if self.up:
            self._out.append(msgpack.packb([PUBLISH, 0, [kind, channel, message]]))
            self._wakeup.set()

    def query(self, payload: bytes, sink: Sink) -> None:
        """Ask the peer something it answers itself (PUBSUB ...); ``sink`` gets its
        msgpack reply, or fails."""
        if not self.up or self.judged_down:
            sink.fail(self.down_error)
            return
        self._seal()
        self._frame(payload, sink, 1, QUERY, False)

    @property
    def in_flight(self) -> int:
        """Requests sent to this peer and not yet answered."""
        return self.queued

    def send(self, payload: bytes, sink: Sink, flags: int = 0) -> None:
        """One request; its reply goes to ``sink``."""
        self._send(payload, sink, 1, flags)

    def send_batch(self, payload: bytes, sink: Sink, flags: int = 0, count: int | None = None) -> None:
        """``count`` requests (``sink.count`` if not given); ``sink`` gets their
        replies together (or one failure for all)."""
        self._send(payload, sink, sink.count if count is None else count, flags)

    def send_background(self, payload: bytes, count: int, flags: int = 0) -> tuple:
        """``count`` writes whose replies nobody waits for now (replica writes at
        DC_ONE, writes for another datacenter). Returns their *echo*, ``(frame,
        offset)``: ``frame.watch`` tells what they did, if someone asks later. A
        failure is reported to ``on_write_failed`` with the payload."""
        return self._send(payload, None, count, flags)

    def _send(self, payload: bytes, sink: Sink | None, count: int, flags: int):
        """Requests are held until the writer's next turn and go in one frame with
        every other request held by then (one frame per turn, not one per client
        batch: the peer reads, runs and answers them in one go); the order on the
        link is the order of the calls."""
        if not self.up or self.judged_down:
            self.failed += count
            if sink is not None:
                sink.fail(self.down_error)
                return None
            self.on_write_failed(self.peer, payload, count, self.down_error, flags)
            return _Failed(self.down_error), 0
        if flags & COORDINATE and sink is not None:
            # The peer coordinates it and answers it alone: a frame of its own. (Held
            # COORDINATE writes that nobody waits for travel together, QUIET.)
            self._seal()
            self._frame(payload, sink, count, flags, count > 1)
            return None
        turn = self._turn
        if turn is None or flags != turn.flags:
            if turn is not None:
                self._seal()
            turn = self._turn = _Frame(self, flags)
        offset = turn.count
        turn.payloads.append(payload)
        turn.sinks.append(sink)
        turn.counts.append(count)
        turn.count = offset + count
        self.queued += count
        self._wakeup.set()
        if turn.count >= MAX_FRAME_REQUESTS:
            self._seal()
        elif self.queued > HIGH_WATER and not self.congested:
            self._congested()
        return turn, offset

    def send_session(self, session_id: int, payload: bytes, count: int, sink: Sink | None,
                     flags: int = 0, wait: float | None = None) -> None:
        """A WATCH session's requests (dyno.watch): run on the peer on a Redis
        connection of that session's own, in order. ``count`` 0 (no sink) ends the
        session there. A frame of its own, after what is held."""
        if not self.up or self.judged_down:
            if sink is not None:
                sink.fail(self.down_error)
            return
        self._seal()
        request_id = next(self._ids)
        if sink is not None and wait is not None and wait > self.timeout:
            # A blocking pop waits as long as its client asked: kept apart from the
            # requests the watchdog times out (in deadline order), and not counted
            # as load on the link.
            self._waiting[request_id] = (sink, math.inf, count, count > 1)
        elif sink is not None:
            deadline = trio.current_time() + (self.timeout if wait is None else wait)
            self._pending[request_id] = (sink, deadline, count, count > 1)
            self.queued += count
            if self._watchdog_idle.parked:
                self._watchdog_idle.wake()
        self._out.append(msgpack.packb([REQUEST, request_id, flags | SESSION, payload, count, session_id]))
        self._wakeup.set()

    def _seal(self) -> None:
        """Frame the requests held so far (the writer's turn, or a frame that must
        follow them)."""
        turn = self._turn
        if turn is None:
            return
        self._turn = None
        count = turn.count
        self.queued -= count  # _frame counts them again
        flags = turn.flags
        payloads, sinks = turn.payloads, turn.sinks
        payload = b"".join(payloads) if len(payloads) > 1 else payloads[0]
        if all(sink is None for sink in sinks):
            turn.quiet = True  # answered once all ran: b"" if every reply was +OK
            self._frame(payload, turn, count, flags | QUIET, False)
        elif count == 1:
            self._frame(payload, sinks[0], 1, flags, False)
        else:  # the reply is a list: the frame hands each caller its part
            self._frame(payload, turn, count, flags, True)

    def mark(self) -> tuple[int, int]:
        """Where the link is now (WAIT): what was sent so far, framed; ``acked`` says
        when the peer has answered all of it."""
        self._seal()
        return self.last_id, self.failed

    def acked(self, mark: tuple[int, int]) -> bool:
        """Whether every request sent before ``mark`` was answered, none failed since
        (a failure may be one of them), and the link is usable."""
        last, failed = mark
        if not self.usable or self.failed != failed:
            return False
        first = next(iter(self._pending), None)
        return first is None or first > last

    def _frame(self, payload: bytes, sink: Sink, count: int, flags: int, listed: bool) -> None:
        """``listed``: the peer answers with a list of ``count`` replies."""
        request_id = self.last_id = next(self._ids)
        self._pending[request_id] = (sink, trio.current_time() + self.timeout, count, listed)
        self._out.append(msgpack.packb([REQUEST, request_id, flags, payload, count]))
        self.sent += count
        self.queued += count
        self._wakeup.set()
        if self._watchdog_idle.parked:
            self._watchdog_idle.wake()
        if self.queued > HIGH_WATER and not self.congested:
            self._congested()

    def _congested(self) -> None:
        self.congested = True
        self.congestion.add(self)
        log.warning("peer %s: %d requests unanswered; slowing clients down", self.peer.name, self.queued)

    def _check_drained(self) -> None:
        if self.congested and self.queued < LOW_WATER:
            self.congested = False
            self.congestion.remove(self)

    async def run(self) -> None:
        logged_down = False
        while True:
            try:
                sock = await connect(self.peer.host, self.peer.port)
            except OSError as exc:
                if not logged_down:
                    log.warning("peer %s unreachable: %s", self.peer.name, exc.strerror or exc)
                    logged_down = True
                self.on_unreachable(self.peer.name)
                await self._back_off()
                continue
            reason = self.broken
            session = None  # the TLS session, if this link is TLS
            if self.tls is not None and self.tls.required(self.peer.dc, self.peer.rack):
                session = TLSSession(sock, self.tls.client, server_side=False)
                receiver = TLSReceiver(session, RECV_SIZE, self.broken)
            else:
                receiver = Receiver(sock, RECV_SIZE, self.broken)
            try:
                unpacker = _unpacker()
                if session is not None:
                    try:
                        await session.handshake(HELLO_TIMEOUT)
                    except TLSHandshakeError as exc:
                        raise PeerError(f"TLS handshake failed: {exc}") from None
                await self._handshake(sock if session is None else session, receiver, unpacker)
                self.backoff = BACKOFF_MIN
                self._slow_logged = logged_down = False
                log.info("peer %s connected%s", self.peer.name, "" if session is None else " (TLS)")
                self.up = True
                if self._early_gossip:
                    self._out.extend(self._early_gossip)
                    self._early_gossip = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, receiver, unpacker)
                    if session is None:
                        nursery.start_soon(write_loop, sock, self._out, self._wakeup, self.broken, self._seal)
                    else:
                        nursery.start_soon(
                            tls_write_loop, session, self._out, self._wakeup, self.broken, self._seal
                        )
                    nursery.start_soon(self._watchdog)
            except* ConnectionLost as group:  # raised alone or wrapped by the nursery
                lost = group.exceptions[0]
                reason = lost.reply
                log.warning("peer %s: %s", self.peer.name, lost)
            except* PeerError as group:
                log.error("peer %s: %s; disconnecting", self.peer.name, group.exceptions[0])
            except* Exception as group:  # a bug: it costs this link a reconnect, not the node
                log.error("peer %s: unexpected error; reconnecting", self.peer.name,
                          exc_info=group.exceptions[0])
            finally:
                was_up, self.up = self.up, False
                receiver.close()
                sock.close()
                self._fail_all(reason)
                if was_up:
                    self.on_unreachable(self.peer.name)
            await self._back_off()

    async def _back_off(self) -> None:
        """Wait ``backoff`` before the next connection attempt (and double it), or
        less if ``reconnect_now`` ends the wait."""
        delay = self.backoff
        self.backoff = min(delay * 2, BACKOFF_MAX)
        if delay == BACKOFF_MAX and not self._slow_logged:
            self._slow_logged = True
            log.info("peer %s: still unreachable; retrying every %g s", self.peer.name, delay)
        with trio.move_on_after(delay) as scope:
            self._backing_off = scope
            await trio.sleep_forever()
        self._backing_off = None

    def reconnect_now(self) -> None:
        """The peer was seen up (gossip judged it up again): a link waiting out its
        back-off connects now instead of failing every request to it for up to
        BACKOFF_MAX more, and backs off from BACKOFF_MIN again if that fails."""
        self.backoff = BACKOFF_MIN
        if self._backing_off is not None:
            self._backing_off.cancel()

    async def _handshake(self, sock: "socket.socket | TLSSession", receiver: Receiver,
                         unpacker: msgpack.Unpacker) -> None:
        secret = self.secret
        nonce = os.urandom(NONCE_BYTES)
        sock.send(self.hello() if secret is None else self.hello() + msgpack.packb([AUTH, 0, {"nonce": nonce}]))
        with trio.move_on_after(HELLO_TIMEOUT) as scope:
            frame, frames = await _next_frame(receiver, unpacker, [])
            if isinstance(frame, list) and len(frame) == 3 and frame[0] == REFUSED:
                raise PeerError(f"refused our HELLO: {frame[2]}")
            reason = check_hello(self.cluster, frame)
            if reason:
                raise PeerError(f"bad HELLO reply: {reason}")
            if secret is not None:
                challenge, frames = await _next_frame(receiver, unpacker, frames)
                theirs, given = _auth_field(challenge, "nonce"), _auth_field(challenge, "proof")
                if theirs is None or given is None or not hmac.compare_digest(
                        given, proof(secret, b"server", nonce, theirs)):
                    raise PeerError("it did not prove it knows the cluster_secret; not using it")
                sock.send(msgpack.packb([AUTH, 0, {"proof": proof(secret, b"client", theirs, nonce)}]))
        if scope.cancelled_caught:
            raise PeerError("no HELLO reply" if secret is None else "no HELLO and proof of the cluster_secret")
        if frames:
            raise PeerError("frames before the handshake completed")
        self.on_hello(self.peer.name, frame[2].get("admin"))

    async def _reader(self, receiver: Receiver, unpacker: msgpack.Unpacker) -> None:
        pending = self._pending
        waiting = self._waiting
        after_batch = self.after_batch

        def on_data(data: bytes) -> None:
            for frame in _decode(unpacker, data):
                try:
                    kind, request_id, reply = frame
                except (TypeError, ValueError):
                    raise PeerError(f"malformed frame {frame!r:.80}") from None
                if (kind != REPLY and kind != FAILED) or request_id.__class__ is not int:
                    raise PeerError(f"unexpected frame {frame!r:.80}")
                entry = pending.get(request_id)
                if entry is None:
                    entry = waiting.pop(request_id, None)  # a blocking pop's
                    if entry is None:  # it timed out already
                        continue
                    pending[request_id] = entry  # (taken out again below, with the others)
                    self.queued += entry[2]
                sink, _, count, listed = entry
                if (
                    (kind == FAILED or not listed) and reply.__class__ is not bytes
                    or kind == REPLY and listed and (
                        reply.__class__ is not list or len(reply) != count
                        or set(map(type, reply)) != _BYTES
                    )
                ):  # the request stays pending: losing the link fails it
                    raise PeerError(f"unexpected frame {frame!r:.80} for {count} request(s)")
                del pending[request_id]
                self.queued -= count
                if kind == REPLY:
                    sink.deliver(reply)
                else:
                    self.failed += count
                    sink.fail(reply)
            if self.congested:
                self._check_drained()
            after_batch()

        await receiver.serve(on_data)

    async def _watchdog(self) -> None:
        """Fail requests past their deadline; the link itself stays up. With nothing
        pending it waits for the next request (an idle link runs no timer)."""
        pending = self._pending
        while True:
            if not pending:
                await self._watchdog_idle.wait()
            await trio.sleep(self.timeout / 4)
            now = trio.current_time()
            expired = []
            for request_id, entry in pending.items():
                deadline = entry[1]
                if deadline > now:
                    break  # ids are in send order, so deadlines are too
                expired.append(request_id)
            for request_id in expired:
                sink, _, count, _ = pending.pop(request_id)
                self.failed += count
                self.queued -= count
                sink.fail(self.timed_out)
            if expired:
                log.warning("peer %s: %d request(s) timed out", self.peer.name, len(expired))
                self._check_drained()
                self.after_batch()

    def _fail_all(self, reply: bytes) -> None:
        self._out.clear()
        turn = self._turn
        if turn is not None:
            self._turn = None
            self.queued -= turn.count
            self.failed += turn.count
            turn.fail(reply)
        pending, self._pending = self._pending, {}
        waiting = list(self._waiting.values())
        self._waiting.clear()
        self.queued = 0
        for sink, _, count, _ in [*pending.values(), *waiting]:
            self.failed += count
            sink.fail(reply)
        self._check_drained()
        self.after_batch()


class _Frame(Sink):
    """The requests of one writer turn, which travel in one frame, and that frame's
    sink. It hands each caller its replies (``counts[i]`` of them for
    ``sinks[i]``: ``deliver`` with one, ``deliver_each`` with more), or the
    frame's failure. A None sink is a background write: its failure is reported
    with its payload (``write_failed``), and its replies are kept as its *echo*,
    for a caller that asks later (``watch``).

    A frame made only of background writes is QUIET: the peer answers b"" once
    all ran if every reply was +OK, else with the replies joined."""

    __slots__ = ("link", "flags", "payloads", "sinks", "counts", "count", "quiet", "replies",
                 "error", "watchers")

    def __init__(self, link: "PeerLink", flags: int):
        self.link = link
        self.flags = flags
        self.payloads: list[bytes] = []
        self.sinks: list[Sink | None] = []
        self.counts: list[int] = []
        self.count = 0
        self.quiet = False
        self.replies = None  # once answered: b"" (all +OK), joined bytes, or a list
        self.error: bytes | None = None
        self.watchers: list | None = None

    def deliver(self, replies) -> None:
        self.replies = replies
        if not self.quiet:
            if len(replies) != self.count:  # the link checked; a defence in depth
                self.fail(resp.error("ERR dyno: a peer answered the wrong number of requests"))
                return
            pos = 0
            for sink, count in zip(self.sinks, self.counts):
                if sink is not None:
                    if count == 1:
                        sink.deliver(replies[pos])
                    else:
                        sink.deliver_each(replies[pos : pos + count])
                pos += count
        if self.watchers:
            self._tell()

    def fail(self, error: bytes) -> None:
        self.error = error
        failed = self.link.on_write_failed
        peer = self.link.peer
        flags = self.flags
        for payload, sink, count in zip(self.payloads, self.sinks, self.counts):
            if sink is None:
                failed(peer, payload, count, error, flags)
            else:
                sink.fail(error)
        if self.watchers:
            self._tell()

    def watch(self, watcher, index: int, offset: int, count: int) -> None:
        """Tell ``watcher.echoed(index, ok, data)`` what the ``count`` requests at
        ``offset`` did, now if known, else once it is."""
        if self.watchers is None:
            self.watchers = []
        self.watchers.append((watcher, index, offset, count))
        if self.replies is not None or self.error is not None:
            self._tell()

    def _tell(self) -> None:
        watchers, self.watchers = self.watchers, []
        for watcher, index, offset, count in watchers:
            if self.error is not None:
                watcher.echoed(index, False, self.error)
                continue
            replies = self.replies
            if replies.__class__ is list:
                watcher.echoed(index, True, b"".join(replies[offset : offset + count]))
            elif not replies:
                watcher.echoed(index, True, resp.OK * count)
            else:
                parts = resp.split_replies(replies, self.count)
                if parts is None:
                    watcher.echoed(index, False, resp.error("ERR dyno: a peer's replies could not be split"))
                else:
                    watcher.echoed(index, True, b"".join(parts[offset : offset + count]))


class _Failed:
    """The echo of a background write that could not be sent."""

    __slots__ = ("error",)

    def __init__(self, error: bytes):
        self.error = error

    def watch(self, watcher, index: int, offset: int, count: int) -> None:
        watcher.echoed(index, False, self.error)


class _PeerAck(Sink):
    """A QUIET request's sink: once its ``count`` replies are in, says so with a
    REPLY (or FAILED, if one could not run): b"" when every reply was +OK (a run
    of writes, the common case), else the replies joined - the sender keeps them
    as the writes' echo, in case the replica that answered its client failed."""

    __slots__ = ("conn", "request_id", "left", "error", "parts", "plain")
    runs = True

    def __init__(self, conn: "PeerConnection", request_id: int, count: int):
        self.conn = conn
        self.request_id = request_id
        self.left = count
        self.error: bytes | None = None
        self.parts: list[bytes] = []
        self.plain = True  # every reply so far was +OK

    def deliver(self, reply: bytes) -> None:
        self.deliver_run(reply, 1)

    def deliver_run(self, replies: bytes, n: int) -> None:
        self.left -= n
        self.parts.append(replies)
        if self.plain and (len(replies) != 5 * n or replies.count(resp.OK) != n):
            self.plain = False
        if not self.left:
            self.conn.answer(self.request_id, b"" if self.plain else b"".join(self.parts), self.error)

    def fail(self, error: bytes) -> None:
        if self.error is None:
            self.error = error
        self.deliver_run(b"", 1)


class _PeerReply(Sink):
    """Sends a reply back to the peer that asked."""

    __slots__ = ("conn", "request_id")

    def __init__(self, conn: "PeerConnection", request_id: int):
        self.conn = conn
        self.request_id = request_id

    def deliver(self, reply: bytes) -> None:
        self.conn.answer(self.request_id, reply)

    def fail(self, error: bytes) -> None:
        self.conn.answer(self.request_id, None, error)


class _PeerBatchReply(Sink):
    """Collects the replies of a batch frame and sends them back in one frame. The
    datastore delivers them in order; if any request of the batch could not run,
    the whole batch is reported FAILED (its requests may or may not have run)."""

    __slots__ = ("conn", "request_id", "replies", "count", "error")
    runs = True
    split = True  # the datastore hands the replies over as a list (deliver_parts)

    def __init__(self, conn: "PeerConnection", request_id: int, count: int):
        self.conn = conn
        self.request_id = request_id
        self.replies: list[bytes] = []
        self.count = count
        self.error: bytes | None = None

    def deliver(self, reply: bytes) -> None:
        self.deliver_parts([reply])

    def deliver_run(self, replies: bytes, n: int) -> None:  # queued with send_many
        self.deliver_parts(resp.split_replies(replies, n))

    def deliver_parts(self, replies: list[bytes]) -> None:
        collected = self.replies
        if collected:
            collected.extend(replies)
        else:
            self.replies = collected = replies
        if len(collected) == self.count:
            self.conn.answer(self.request_id, collected, self.error)

    def fail(self, error: bytes) -> None:
        if self.error is None:
            self.error = error
        self.deliver(b"")


class PeerConnection:
    """One incoming connection from a peer; what it is given is ``PeerServer``'s."""

    def __init__(
        self, sock: socket.socket, address, *, cluster: str, hello: Callable[[], bytes],
        datastore: "Datastore", datastore3: "Datastore", coordinate: Coordinate,
        on_gossip: Callable[[str, object], None], on_hello: Callable[[str, object], None],
        flush_enabled: bool = True, secret: bytes | None = None, tls: "PeerTLS | None" = None,
        on_publish: Callable[[bytes, bytes, bytes], None] = lambda *message: None,
        on_query: Callable[[list, Callable[[bytes], None]], None] = lambda argv, answer: answer(b""),
    ):
        self.on_publish = on_publish
        self.on_query = on_query
        self.cluster = cluster
        self.flush_enabled = flush_enabled
        self.secret = secret
        self.tls = tls
        self.hello = hello
        self.datastore = datastore
        self.datastore3 = datastore3
        self.coordinate = coordinate
        self.on_gossip = on_gossip
        self.on_hello = on_hello
        self.sock = sock
        self.address = f"{address[0]}:{address[1]}"
        self.out: list[bytes] = []
        # Bytes appended to ``out`` since it was last measured: at least what it holds.
        self.out_bytes = 0
        self.wakeup = Wakeup()
        self.closed = False
        self._scope: trio.CancelScope | None = None
        self.peer_name = "?"
        # Every request of this connection goes to one Redis connection of the pool,
        # so a peer's writes run in the order it sent them.
        self.affinity = next(_affinities)
        self.sessions: dict[int, watch.Session] = {}  # the peer's clients' WATCH sessions
        self._nursery: trio.Nursery | None = None

    def answer(self, request_id: int, reply, error: bytes | None = None) -> None:
        """Queue the answer to request ``request_id``: REPLY ``reply`` (bytes, or a
        list for several requests), or FAILED ``error`` if that is not None."""
        if not self.closed:
            frame = [REPLY, request_id, reply] if error is None else [FAILED, request_id, error]
            packed = msgpack.packb(frame)
            self.out.append(packed)
            self.out_bytes += len(packed)
            if self.out_bytes > MAX_UNSENT:  # maybe: the writer sent some since; measure
                self.out_bytes = sum(map(len, self.out))
                if self.out_bytes > MAX_UNSENT:
                    self._overflow()
                    return
            self.wakeup.set()

    def _overflow(self) -> None:
        log.error("peer %s (%s): %d bytes of answers it does not read; disconnecting",
                  self.peer_name, self.address, self.out_bytes)
        self.closed = True
        self.out.clear()
        self.out_bytes = 0
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        sock = self.sock
        unpacker = _unpacker()
        broken = b""
        receiver = None
        try:
            with trio.move_on_after(HELLO_TIMEOUT) as scope:
                session, refusal = await self._secure(sock)
                if refusal is not None:
                    log.error("refusing peer connection from %s: %s", self.address, refusal)
                    return
                if session is None:
                    receiver = Receiver(sock, RECV_SIZE, broken)
                else:
                    sock = session  # every frame goes through TLS from now on
                    receiver = TLSReceiver(session, RECV_SIZE, broken)
                frames = await _read_hello(receiver, unpacker)
            if scope.cancelled_caught:
                raise PeerError("no HELLO within %.0f s" % HELLO_TIMEOUT)
            reason = check_hello(self.cluster, frames[0]) or self._plaintext_refusal(session, frames[0][2])
            if reason:
                log.error("refusing peer connection from %s: %s", self.address, reason)
                try:
                    sock.send(msgpack.packb([REFUSED, 0, reason]))
                except OSError:
                    pass
                return
            self.peer_name = frames[0][2].get("node", "?")
            rest = frames[1:]
            if self.secret is not None:
                rest = await self._prove(sock, receiver, unpacker, rest)
                if rest is None:
                    return
            self.on_hello(self.peer_name, frames[0][2].get("admin"))
            if self.secret is None:
                sock.send(self.hello())
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self._nursery = nursery
                if session is None:
                    nursery.start_soon(write_loop, sock, self.out, self.wakeup, broken)
                else:
                    nursery.start_soon(tls_write_loop, session, self.out, self.wakeup, broken)
                self._handle(rest)
                handle = self._handle
                await receiver.serve(lambda data: handle(_decode(unpacker, data)))
        except* PeerError as group:  # raised alone or wrapped by the nursery
            log.error(
                "peer %s (%s): %s; disconnecting", self.peer_name, self.address, group.exceptions[0]
            )
        except* ConnectionLost:
            pass
        except* OSError as group:
            log.warning("peer %s (%s): %s", self.peer_name, self.address, group.exceptions[0])
        except* Exception as group:  # a bug: it costs this connection, not the node
            log.error("peer %s (%s): unexpected error; disconnecting", self.peer_name, self.address,
                      exc_info=group.exceptions[0])
        finally:
            self.closed = True
            for watched in self.sessions.values():
                watched.abort()
            self.sessions.clear()
            if receiver is not None:
                receiver.close()
            self.sock.close()

    async def _secure(self, sock: socket.socket) -> tuple[TLSSession | None, str | None]:
        """A connection that starts with a TLS handshake gets one, before its HELLO:
        (the session, None); a plaintext one (None, None), its HELLO decides whether
        it may be (``_plaintext_refusal``); or (None, why it is refused)."""
        if await _first_byte(sock) != TLS_HANDSHAKE:
            return None, None
        if self.tls is None:
            return None, ("it starts a TLS handshake, and this node's peer links are plaintext "
                          "(secure_server_option none)")
        session = TLSSession(sock, self.tls.server, server_side=True)
        try:
            await session.handshake(HELLO_TIMEOUT)
        except TLSHandshakeError as exc:
            return None, f"TLS handshake failed: {exc}"
        return session, None

    def _plaintext_refusal(self, session: TLSSession | None, hello: dict) -> str | None:
        """Why a plaintext peer that sent ``hello`` may not use this node (TLS is
        required between the two places, dyno.peer_tls), or None."""
        tls = self.tls
        if session is not None or tls is None or not tls.required(hello.get("dc"), hello.get("rack")):
            return None
        return (f"plaintext from a peer in {hello.get('dc')!s:.40}/{hello.get('rack')!s:.40}; "
                f"secure_server_option {tls.option} requires TLS between it and this node "
                f"({tls.dc}/{tls.rack})")

    async def _prove(self, sock: "socket.socket | TLSSession", receiver: Receiver, unpacker: msgpack.Unpacker,
                     frames: list) -> list | None:
        """cluster_secret: the peer's AUTH nonce, our HELLO and challenge, its proof
        (module docstring). The frames after it, or None (refused, logged)."""
        secret = self.secret
        theirs = None
        # The challenge comes with the HELLO (one write): a node without a secret sends none.
        with trio.move_on_after(CHALLENGE_WAIT):
            first, frames = await _next_frame(receiver, unpacker, frames)
            theirs = _auth_field(first, "nonce")
        if theirs is None:
            log.error("refusing peer %s (%s): it sent no cluster_secret challenge (is its "
                      "cluster_secret set?)", self.peer_name, self.address)
            sock.send(msgpack.packb([REFUSED, 0, "this cluster needs its cluster_secret"]))
            return None
        with trio.move_on_after(HELLO_TIMEOUT):
            ours = os.urandom(NONCE_BYTES)
            sock.send(self.hello() + msgpack.packb(
                [AUTH, 0, {"nonce": ours, "proof": proof(secret, b"server", theirs, ours)}]))
            answer, frames = await _next_frame(receiver, unpacker, frames)
            given = _auth_field(answer, "proof")
            if given is not None and hmac.compare_digest(given, proof(secret, b"client", ours, theirs)):
                return frames
            log.error("refusing peer %s (%s): wrong proof of the cluster_secret (a wrong secret, or a "
                      "replayed handshake)", self.peer_name, self.address)
            return None
        log.error("refusing peer %s (%s): no proof of the cluster_secret within %.0f s",
                  self.peer_name, self.address, HELLO_TIMEOUT)
        return None

    def _handle(self, frames: list) -> None:
        plain, resp3 = self.datastore, self.datastore3
        for frame in frames:
            if frame.__class__ is list and len(frame) == 3 and frame[0] == GOSSIP:
                self.on_gossip(self.peer_name, frame[2])
                continue
            if frame.__class__ is list and len(frame) == 3 and frame[0] == PUBLISH:
                body = frame[2]
                if body.__class__ is not list or len(body) != 3 or set(map(type, body)) != _BYTES:
                    raise PeerError(f"malformed frame {frame!r:.80}")
                self.on_publish(*body)
                continue
            if frame.__class__ is list and len(frame) == 6:
                self._session_request(frame)
                continue
            try:
                kind, request_id, flags, payload, count = frame
            except (TypeError, ValueError):
                raise PeerError(f"malformed frame {frame!r:.80}") from None
            if (
                kind != REQUEST or payload.__class__ is not bytes or request_id.__class__ is not int
                or flags.__class__ is not int or count.__class__ is not int or count < 1
            ):
                raise PeerError(f"unexpected frame {frame!r:.80}")
            # The payload goes to a Redis connection other clients share: it must be
            # exactly `count` whole, canonical commands, or replies would fall out of step.
            requests = whole_requests(payload, count) if count <= MAX_REQUESTS else None
            if requests is None:
                raise PeerError(f"request {request_id} is not {count} well-formed command(s)")
            if flags & QUERY:  # answered by this node (dyno.pubsub), never by its Redis
                # (at once, or later: a node's workers are asked first, dyno.workers)
                self.on_query(requests[0], functools.partial(self.answer, request_id))
                continue
            refused = peer_refusal(requests, self.flush_enabled)
            if refused is not None:  # never on a shared Redis connection: refused, logged
                name = refused.decode(errors="replace")[:40]
                log.warning("peer %s (%s): refused a request to run %s, which peers never send",
                            self.peer_name, self.address, name)
                self.answer(request_id, None, resp.error(f"ERR dyno: peers may not run '{name}'"))
                continue
            datastore = resp3 if flags & RESP3 else plain
            if flags & COORDINATE:
                if flags & QUIET:
                    sink = _PeerAck(self, request_id, count)
                elif count == 1:
                    sink = _PeerReply(self, request_id)
                else:  # someone waits for them all (a hint replay): a list, in order
                    sink = _PeerBatchReply(self, request_id, count)
                self.coordinate(payload, sink, flags, count)
            elif flags & QUIET:
                ack = _PeerAck(self, request_id, count)
                datastore.send_run(payload, ack, count, self.affinity)
            elif count == 1:
                datastore.send(payload, _PeerReply(self, request_id), self.affinity)
            else:
                collector = _PeerBatchReply(self, request_id, count)
                datastore.send_run(payload, collector, count, self.affinity)


    def _session_request(self, frame: list) -> None:
        """[REQUEST, id, flags | SESSION, payload, count, session id]: a WATCH session's
        requests, on that session's own Redis connection (made at its first request);
        count 0 ends it. What a session may run: what any peer request may, and WATCH."""
        kind, request_id, flags, payload, count, session_id = frame
        if (
            kind != REQUEST or not flags & SESSION or payload.__class__ is not bytes
            or request_id.__class__ is not int or session_id.__class__ is not int
            or count.__class__ is not int or count < 0 or flags.__class__ is not int
        ):
            raise PeerError(f"unexpected frame {frame!r:.80}")
        sessions = self.sessions
        if count == 0:
            session = sessions.pop(session_id, None)
            if session is not None:
                session.abort()
            return
        requests = whole_requests(payload, count) if count <= MAX_REQUESTS else None
        if requests is None:
            raise PeerError(f"request {request_id} is not {count} well-formed command(s)")
        refused = peer_refusal([argv for argv in requests if argv[0].lower() not in watch.SESSION_ONLY],
                               self.flush_enabled)
        if refused is not None:
            name = refused.decode(errors="replace")[:40]
            log.warning("peer %s (%s): refused a session request to run %s", self.peer_name, self.address, name)
            self.answer(request_id, None, resp.error(f"ERR dyno: peers may not run '{name}'"))
            return
        session = sessions.get(session_id)
        if session is None:
            if len(sessions) >= watch.MAX_SESSIONS or self._nursery is None:
                self.answer(request_id, None, resp.error(
                    f"ERR dyno: {watch.MAX_SESSIONS} WATCH sessions on this node already"))
                return
            datastore = self.datastore
            session = sessions[session_id] = watch.Session(
                datastore.host, datastore.port, auth=datastore.auth, protocol=3 if flags & RESP3 else 2,
                group=())
            self._nursery.start_soon(session.run)

        def done(replies) -> None:
            if replies.__class__ is bytes:
                self.answer(request_id, None, replies)
            else:
                self.answer(request_id, replies[0] if count == 1 else replies)

        session.request(payload, count, done, timeout=None)  # the requesting node keeps the time


class PeerServer(Listener):
    """Accepts peers' connections on ``dyn_listen``, each in its own task.

    What the node hands it, for every connection: ``cluster``, the cluster name a
    peer's HELLO must carry; ``hello()``, the HELLO frame to answer with;
    ``datastore`` and ``datastore3``, the node's Redis pools (RESP2, and RESP3
    for requests flagged RESP3); ``coordinate(payload, sink, flags, count)`` for
    COORDINATE requests (writes from another datacenter); ``on_gossip(sender,
    message)``; ``on_hello(name, admin_address)`` with what a peer's HELLO said;
    ``tls``, the node's peer TLS (None: plaintext only).
    """

    def __init__(
        self, host: str, port: int, *, cluster: str, hello: Callable[[], bytes],
        datastore: "Datastore", datastore3: "Datastore", coordinate: Coordinate,
        on_gossip: Callable[[str, object], None], on_hello: Callable[[str, object], None],
        flush_enabled: bool = True, secret: bytes | None = None, tls: "PeerTLS | None" = None,
        on_publish: Callable[[bytes, bytes, bytes], None] = lambda *message: None,
        on_query: Callable[[list, Callable[[bytes], None]], None] = lambda argv, answer: answer(b""),
    ):
        super().__init__(host, port)
        self.given = dict(
            cluster=cluster, hello=hello, datastore=datastore, datastore3=datastore3,
            coordinate=coordinate, on_gossip=on_gossip, on_hello=on_hello, flush_enabled=flush_enabled,
            secret=secret, tls=tls, on_publish=on_publish, on_query=on_query,
        )
        self.connections: set[PeerConnection] = set()

    async def serve(self, nursery: trio.Nursery) -> None:
        given = self.given

        def on_connection(conn: socket.socket, address) -> None:
            peer = PeerConnection(conn, address, **given)
            self.connections.add(peer)

            async def run() -> None:
                try:
                    await peer.run()
                finally:
                    self.connections.discard(peer)

            nursery.start_soon(run)

        await super().serve(on_connection, log)
