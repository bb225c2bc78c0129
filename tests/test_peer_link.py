"""PeerLink against a scripted peer (a socket in this process speaking the peer
protocol): the requests queued in one turn travel in one frame, in call order, and
the joined replies are split back to their callers; background requests' failures
are counted, never lost."""

from __future__ import annotations

import contextlib
import socket

import msgpack
import pytest
import trio
import trio.testing

from dyno import peer, resp
from dyno.peer import Congestion
from dyno.ring import RingNode
from dyno.stream import Receiver, listen_socket


class Failures:
    """What a link reported through ``on_write_failed``."""

    def __init__(self):
        self.count = 0
        self.errors: list[bytes] = []
        self.payloads: list[bytes] = []
        self.peers: list[str] = []

    def __call__(self, peer_node, payload: bytes, count: int, error: bytes, flags: int) -> None:
        self.count += count
        self.flags = flags
        self.errors.append(error)
        self.payloads.append(payload)
        self.peers.append(peer_node.name)


async def wait_answered(link) -> None:
    with trio.fail_after(5):
        while link.in_flight or link.has_unsent:
            await trio.sleep(0.001)


class Collect:
    def __init__(self):
        self.replies: list[bytes] = []

    def deliver(self, reply: bytes) -> None:
        self.replies.append(reply)

    def fail(self, error: bytes) -> None:
        self.replies.append(error)


class BatchCollect(Collect):
    def __init__(self, count: int):
        super().__init__()
        self.count = count

    def deliver_each(self, replies: list[bytes]) -> None:
        self.replies.append(replies)


HELLO = peer.hello_frame("test", "127.0.0.1:1", "dc1", "rack1", "127.0.0.1:2")


def new_link(port: int, failures: Failures, **given) -> peer.PeerLink:
    """A link to 127.0.0.1:``port`` given what a node would give it (or ``given``)."""
    given = {
        "cluster": "test", "hello": lambda: HELLO, "timeout": 5.0, "congestion": Congestion(),
        "after_batch": lambda: None, "on_unreachable": lambda name: None,
        "on_hello": lambda name, address: None, "on_write_failed": failures, **given,
    }
    return peer.PeerLink(RingNode("127.0.0.1:%d" % port, "127.0.0.1", port, "dc1", "rack2", (0,)), **given)


def new_connection(sock, port: int = 1, **given) -> peer.PeerConnection:
    """An incoming peer connection given what a node would give it (or ``given``)."""
    def unused(*args):
        raise AssertionError("not expected in this test")

    given = {
        "cluster": "test", "hello": lambda: HELLO, "datastore": None, "datastore3": None,
        "coordinate": unused, "on_gossip": unused, "on_hello": lambda name, address: None, **given,
    }
    return peer.PeerConnection(sock, ("127.0.0.1", port), **given)


class ScriptedPeer:
    """Accepts the link, answers its HELLO, then records every frame it gets."""

    def __init__(self, numbered: bool = False, bad=None):
        self.numbered = numbered  # reply ":n" to the n-th request of a frame, else "+OK"
        self.bad = bad  # if not None: the reply to every frame of several requests
        self.listener = listen_socket("127.0.0.1", 0)
        self.port = self.listener.getsockname()[1]
        self.frames: list = []
        self.conn = None

    async def serve(self, answer: bool):
        await trio.lowlevel.wait_readable(self.listener)
        conn, _ = self.listener.accept()
        conn.setblocking(False)
        self.conn = conn
        receiver = Receiver(conn, 65536, b"")
        unpacker = msgpack.Unpacker(raw=False)
        try:
            while True:
                unpacker.feed(await receiver.receive())
                for frame in unpacker:
                    if frame[0] == peer.HELLO:
                        conn.send(msgpack.packb([peer.HELLO, 0, {
                            "cluster": "test", "node": "127.0.0.1:9", "version": peer.PROTOCOL_VERSION,
                        }]))
                        continue
                    self.frames.append(frame)
                    if answer:
                        conn.send(msgpack.packb(self.answer(frame)))
        except Exception:
            pass
        finally:
            receiver.close()

    def answer(self, frame: list) -> list:
        """The frame answering REQUEST ``frame``."""
        _, request_id, flags, _, count = frame
        if self.numbered:
            replies = [b":%d\r\n" % n for n in range(1, count + 1)]
        else:
            replies = [b"+OK\r\n"] * count
        if flags & peer.QUIET:
            replies = b""
        elif count == 1:
            replies = replies[0]
        elif self.bad is not None:
            replies = self.bad
        return [peer.REPLY, request_id, replies]


@contextlib.asynccontextmanager
async def linked(scripted: ScriptedPeer, answer: bool = True):
    """A PeerLink connected to ``scripted``, and the failures its node counted;
    both stopped on the way out."""
    failures = Failures()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scripted.serve, answer)
        link = new_link(scripted.port, failures)
        nursery.start_soon(link.run)
        with trio.fail_after(5):
            while not link.up:
                await trio.sleep(0.001)
        yield link, failures
        nursery.cancel_scope.cancel()


def command(*argv: bytes) -> bytes:
    return resp.encode_command(list(argv))


async def test_requests_of_one_turn_travel_in_one_frame_in_order_and_replies_are_split():
    scripted = ScriptedPeer(numbered=True)
    async with linked(scripted) as (link, failures):
        sets = [command(b"SET", b"k%d" % i, b"v") for i in range(5)]
        first, batch, last = Collect(), BatchCollect(2), Collect()
        link.send_background(sets[0], 1)
        link.send(sets[1], first)
        link.send_background(sets[2], 1)
        link.send_batch(sets[3] + sets[4], batch)  # a client batch of two requests
        link.send(command(b"GET", b"k0"), last)
        await wait_answered(link)
        assert [(f[0], f[2], f[3], f[4]) for f in scripted.frames] == [
            (peer.REQUEST, 0, b"".join(sets) + command(b"GET", b"k0"), 6),  # someone waits: not QUIET
        ]
        assert first.replies == [b":2\r\n"]
        assert batch.replies == [[b":4\r\n", b":5\r\n"]]
        assert last.replies == [b":6\r\n"]
        assert failures.count == 0
        link.send_background(sets[0], 1)  # alone in its turn: a frame of its own
        link.send_background(sets[1], 1)
        await wait_answered(link)
        assert scripted.frames[-1][2:] == [peer.QUIET, sets[0] + sets[1], 2]
        assert failures.count == 0


async def test_a_coordinate_request_gets_a_frame_of_its_own_after_those_held():
    scripted = ScriptedPeer()
    async with linked(scripted) as (link, failures):
        a, b, c = (command(b"SET", key, b"1") for key in (b"a", b"b", b"c"))
        link.send_background(a, 1)
        link.send(b, Collect(), peer.COORDINATE)
        link.send_background(c, 1)
        await wait_answered(link)
        assert [(f[2], f[3]) for f in scripted.frames] == [
            (peer.QUIET, a), (peer.COORDINATE, b), (peer.QUIET, c),
        ]


async def test_coordinate_requests_nobody_waits_for_travel_together_quiet():
    """A client's writes for another datacenter (a part per replica set, from
    every client of the turn) go in one COORDINATE frame, between the others."""
    scripted = ScriptedPeer()
    async with linked(scripted) as (link, failures):
        a, b, c, d = (command(b"SET", key, b"1") for key in (b"a", b"b", b"c", b"d"))
        link.send_background(a, 1)
        link.send_background(b, 1, peer.COORDINATE)
        link.send_background(c + d, 2, peer.COORDINATE)
        link.send_background(a, 1)
        await wait_answered(link)
        assert [(f[2], f[3], f[4]) for f in scripted.frames] == [
            (peer.QUIET, a, 1), (peer.COORDINATE | peer.QUIET, b + c + d, 3), (peer.QUIET, a, 1),
        ]
        assert failures.count == 0


async def test_background_requests_with_other_flags_get_their_own_frame():
    scripted = ScriptedPeer()
    async with linked(scripted) as (link, failures):
        link.send_background(command(b"SET", b"a", b"1"), 1, 0)
        link.send_background(command(b"SET", b"b", b"1"), 1, peer.RESP3)
        await wait_answered(link)
        assert [(f[2], f[4]) for f in scripted.frames] == [
            (peer.QUIET, 1), (peer.RESP3 | peer.QUIET, 1),
        ]


async def test_background_requests_lost_with_the_connection_are_reported_with_their_payloads():
    scripted = ScriptedPeer()
    async with linked(scripted, answer=False) as (link, failures):
        a, b, c, d = (command(b"SET", key, b"1") for key in (b"a", b"b", b"c", b"d"))
        link.send_background(a, 1)
        link.send_background(b, 1)
        with trio.fail_after(5):
            while len(scripted.frames) < 1:
                await trio.sleep(0.001)
        link.send_background(c, 1)  # queued, not yet framed
        scripted.conn.close()
        with trio.fail_after(5):
            while failures.count < 3:
                await trio.sleep(0.001)
        assert failures.count == 3 and link.in_flight == 0
        assert not link.up
        link.send_background(d, 1)  # the link is down: fails at once
        assert failures.count == 4
        # Each write of the lost frames (c may have been framed or still held), then
        # the refused one, each with its own payload and the peer it was for.
        assert sorted(failures.payloads[:3]) == [a, b, c] and failures.payloads[3:] == [d]
        assert set(failures.peers) == {link.peer.name}


@pytest.mark.parametrize("bad", [
    [b"+OK\r\n"],  # one reply for three requests
    [b"+OK\r\n"] * 4,  # four
    b"+OK\r\n+OK\r\n+OK\r\n",  # joined bytes, not a list
    [b"+OK\r\n", "+OK\r\n", b"+OK\r\n"],  # a str among them
], ids=["too-few", "too-many", "bytes", "str"])
async def test_a_peer_answering_a_frame_wrongly_is_disconnected_and_every_caller_fails(bad):
    scripted = ScriptedPeer(bad=bad)
    async with linked(scripted) as (link, failures):
        first, second = Collect(), Collect()
        link.send(command(b"GET", b"a"), first)
        link.send(command(b"GET", b"b"), second)
        link.send_background(command(b"SET", b"c", b"1"), 1)
        await wait_answered(link)
        assert first.replies == second.replies == [link.broken]
        assert failures.count == 1 and failures.payloads == [command(b"SET", b"c", b"1")]
        assert link.failed == 3


class RecordingDatastore:
    def __init__(self):
        self.affinities: list[int] = []

    def send(self, payload, sink, affinity=0):
        self.affinities.append(affinity)

    def send_many(self, payload, sinks, affinity=0):
        self.affinities.append(affinity)

    def send_run(self, payload, sink, count, affinity=0):
        self.affinities.append(affinity)


def test_a_peer_connections_requests_all_go_to_one_redis_connection():
    """With datastore_connections > 1, requests of one peer spread over the pool
    (keyed by request id) could run out of the order the peer sent them: a replica
    could end with an older value than the others."""
    store = RecordingDatastore()
    one, other = (new_connection(None, port, datastore=store, datastore3=store) for port in (1, 2))
    write = resp.encode_command([b"SET", b"k", b"v"])
    for request_id in range(1, 7):
        flags, count = [(0, 1), (peer.QUIET, 2), (0, 2)][request_id % 3]
        one._handle([[peer.REQUEST, request_id, flags, write * count, count]])
        other._handle([[peer.REQUEST, request_id, 0, write, 1]])
    assert len(set(store.affinities[0::2])) == 1
    assert len(set(store.affinities[1::2])) == 1
    assert store.affinities[0] != store.affinities[1]


class Raising:
    def deliver(self, reply: bytes) -> None:
        raise RuntimeError("a bug in a sink")

    fail = deliver


async def test_a_sink_that_raises_costs_the_link_a_reconnect_not_the_node(caplog):
    scripted = ScriptedPeer()
    async with linked(scripted) as (link, failures):
        waiting = Collect()
        link.send(command(b"PING"), Raising())
        with trio.fail_after(5):
            while link.up:
                await trio.sleep(0.001)
        link.send(command(b"PING"), waiting)  # refused at once while the link is down
        assert waiting.replies == [link.down_error]
    assert "unexpected error; reconnecting" in caplog.text


async def test_a_bug_handling_a_request_costs_that_peer_connection_not_the_node(caplog):
    class Broken:
        def send(self, payload, sink, affinity=0):
            raise RuntimeError("a bug in the datastore")

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    connection = new_connection(ours, datastore=Broken(), datastore3=Broken())
    theirs.sendall(HELLO + msgpack.packb([peer.REQUEST, 1, 0, command(b"GET", b"k"), 1]))
    with trio.fail_after(5):
        await connection.run()  # returns, rather than raising into the node
    assert "unexpected error; disconnecting" in caplog.text
    assert connection.closed
    theirs.close()


@contextlib.contextmanager
def closed_port():
    """A port nothing listens on (bound, so no one else takes it): connecting is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_a_link_backing_off_reconnects_at_once_when_the_peer_is_seen_up(autojump_clock):
    """Without reconnect_now a link waits out its back-off (up to BACKOFF_MAX) after the
    peer is back, failing every request to it meanwhile. Under a fake clock: every
    attempt is timed by the on_unreachable it causes (a refused connect)."""
    attempts: list[float] = []
    with closed_port() as port:
        link = new_link(port, Failures(), on_unreachable=lambda name: attempts.append(trio.current_time()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            with trio.fail_after(60):
                while len(attempts) < 2 or attempts[-1] - attempts[-2] < peer.BACKOFF_MAX:
                    await trio.sleep(0.01)
            await trio.sleep(peer.BACKOFF_MAX / 4)  # well into a wait of BACKOFF_MAX
            seen, tried = trio.current_time(), len(attempts)
            link.reconnect_now()
            with trio.fail_after(60):
                while len(attempts) < tried + 2:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    assert attempts[tried] - seen < peer.BACKOFF_MIN  # not the BACKOFF_MAX * 3/4 left
    assert attempts[tried + 1] - attempts[tried] == pytest.approx(peer.BACKOFF_MIN)  # back-off reset


async def test_a_connected_link_told_the_peer_is_up_stays_connected():
    scripted = ScriptedPeer()
    async with linked(scripted) as (link, failures):
        link.reconnect_now()
        answer = Collect()
        link.send(command(b"PING"), answer)
        await wait_answered(link)
        assert link.up and answer.replies == [b"+OK\r\n"]


class Watcher:
    """What a coordinator asks of a background write's echo."""

    def __init__(self):
        self.outcomes: list[tuple[int, bool, bytes]] = []

    def echoed(self, index: int, ok: bool, data: bytes) -> None:
        self.outcomes.append((index, ok, data))


class QuietPeer(ScriptedPeer):
    """Answers QUIET frames as dyno does: b"" when every reply would be +OK,
    else the replies joined (``replies``), or FAILED (``fail``)."""

    def __init__(self, replies: bytes | None = None, fail: bytes | None = None):
        super().__init__()
        self.replies, self.fail = replies, fail

    def answer(self, frame: list) -> list:
        if self.fail is not None:
            return [peer.FAILED, frame[1], self.fail]
        return [peer.REPLY, frame[1], self.replies or b""]


@pytest.mark.parametrize("answer, expected", [
    (None, [(1, True, b"+OK\r\n" * 2), (2, True, b"+OK\r\n")]),  # b"": every reply +OK
    (b":5\r\n:6\r\n+OK\r\n", [(1, True, b":5\r\n:6\r\n"), (2, True, b"+OK\r\n")]),
], ids=["all-ok", "replies"])
async def test_background_writes_echo_what_the_peer_answered(answer, expected):
    scripted = QuietPeer(replies=answer)
    async with linked(scripted) as (link, failures):
        first = link.send_background(command(b"INCR", b"a") * 2, 2)
        second = link.send_background(command(b"SET", b"b", b"1"), 1)
        assert first[0] is second[0] and (first[1], second[1]) == (0, 2)  # one frame
        await wait_answered(link)
        watcher = Watcher()
        first[0].watch(watcher, 1, first[1], 2)
        second[0].watch(watcher, 2, second[1], 1)
        assert watcher.outcomes == expected
        assert scripted.frames[0][2] & peer.QUIET
        assert failures.count == 0


async def test_a_background_write_watched_before_its_frame_fails_hears_the_failure_once_reported():
    scripted = QuietPeer(fail=b"-ERR dyno: datastore x is unavailable\r\n")
    async with linked(scripted) as (link, failures):
        frame, offset = link.send_background(command(b"SET", b"a", b"1"), 1)
        watcher = Watcher()
        frame.watch(watcher, 7, offset, 1)  # asked before the answer came
        await wait_answered(link)
        assert watcher.outcomes == [(7, False, b"-ERR dyno: datastore x is unavailable\r\n")]
        assert failures.count == 1 and failures.payloads == [command(b"SET", b"a", b"1")]
