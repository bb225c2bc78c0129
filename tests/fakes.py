"""A real Coordinator over fake targets, for pure tests of how batches are run.

Each node's Redis is a dict; every call the coordinator makes (to the local
datastore or to a peer link) is queued and runs later, when the test drains the
queue: each target's calls in the order it got them, the targets interleaved as
the test's random generator chooses, replies delivered in chunks as a real
connection's reads might cut them. A target can be told to fail its next calls
after they were sent (``Target.faults``): with an error before running them, by
timing out after running them, or by dropping the connection half-way through
the replies - the three ways a replica fails after dispatch.
"""

from __future__ import annotations

import random
from collections import deque

from dyno import resp
from dyno.coordinator import Coordinator
from dyno.metrics import Metrics
from dyno.metrics import Stats
from dyno.peer import COORDINATE
from dyno.ring import Ring, RingNode

Q = 2**30
# Each rack cuts the ring differently, so keys fall into many replica sets.
TOKENS = {"r1": ((0,), (2 * Q,), (3 * Q,)), "r2": ((Q,), (3 * Q,), (Q // 2,)),
          "r3": ((Q // 2,), (2 * Q + Q // 2,), (Q,))}
WRONGTYPE = resp.error("WRONGTYPE Operation against a key holding the wrong kind of value")

# How a target fails the call it is told to (Target.faults):
ERROR = "error"            # refuses it before running it (a FAILED frame, Redis down)
TIMEOUT = "timeout"        # runs it, but its reply never comes back
DISCONNECT = "disconnect"  # runs it, sends part of the replies, then the connection drops
REFUSE = "refuse"          # fails it at once, as it is sent (its connection had just gone)
FAULTS = (ERROR, TIMEOUT, DISCONNECT, REFUSE)


def ring(dcs: int = 1, racks: int = 3, nodes_per_rack: int = 2, local: int = 0) -> Ring:
    nodes = []
    for dc in range(1, dcs + 1):
        for rack, tokens in list(TOKENS.items())[:racks]:
            for token in tokens[:nodes_per_rack]:
                port = 8101 + len(nodes)
                nodes.append(RingNode(f"127.0.0.1:{port}", "127.0.0.1", port, f"dc{dc}", rack, token))
    return Ring(nodes, nodes[local])


def run(store: dict, argv: list[bytes]) -> bytes:
    """The few commands these tests send, as Redis answers them."""
    name = argv[0].upper()
    key = argv[1] if len(argv) > 1 else b""
    if name == b"SET":
        store[key] = argv[2]
        return resp.OK
    if name == b"APPEND":
        store[key] = store.get(key, b"") + argv[2]
        return resp.integer(len(store[key]))
    if name == b"INCR":
        value = store.get(key, b"0")
        if not value.lstrip(b"-").isdigit():
            return resp.error("ERR value is not an integer or out of range")
        store[key] = b"%d" % (int(value) + 1)
        return resp.integer(int(store[key]))
    if name == b"GET":
        return resp.bulk(store.get(key))
    if name == b"STRLEN":
        return resp.integer(len(store.get(key, b"")))
    if name in (b"HGETALL", b"SMEMBERS"):  # the store holds strings
        return WRONGTYPE if key in store else b"*0\r\n"
    if name == b"MGET":
        return b"*%d\r\n" % (len(argv) - 1) + b"".join(resp.bulk(store.get(k)) for k in argv[1:])
    if name == b"MSET":
        store.update(zip(argv[1::2], argv[2::2]))
        return resp.OK
    if name == b"DEL":
        return resp.integer(sum(store.pop(k, None) is not None for k in argv[1:]))
    if name == b"EXISTS":
        return resp.integer(sum(k in store for k in argv[1:]))
    raise AssertionError(f"unexpected command {argv!r}")


class Target:
    """A node's Redis as a dict; what it is sent runs when the test says so."""

    def __init__(self, node: RingNode, jobs: deque, chunks: random.Random):
        self.node = node
        self.name = node.name
        self.store: dict[bytes, bytes] = {}
        self.jobs = jobs  # (target, job) in call order
        self.chunks = chunks
        self.calls: list[tuple[str, int]] = []  # (method, requests) of the current batch
        self.faults: list[str] = []  # how to fail the next calls, one each
        self.coordinator: Coordinator | None = None

    def _queue(self, method: str, payload: bytes, answer, fail) -> None:
        assert getattr(self, "up", True) and getattr(self, "usable", True), f"{method} to {self.name}, which is down"
        requests = resp.RequestParser().feed(payload)
        self.calls.append((method, len(requests)))
        fault = self.faults.pop(0) if self.faults else None
        if fault == REFUSE:
            fail(resp.error(f"ERR dyno: {self.name} is unavailable"), 0, len(requests))
            return

        def job():
            if fault == ERROR:
                fail(resp.error(f"ERR dyno: datastore of {self.name} is unavailable"), 0, len(requests))
                return
            replies = [run(self.store, argv) for argv in requests]
            if fault is None:
                answer(replies)
            elif fault == TIMEOUT:
                fail(resp.error(f"ERR dyno: peer {self.name} timed out"), 0, len(requests))
            else:  # DISCONNECT: some replies made it before the connection dropped
                sent = self.chunks.randint(0, len(replies) - 1)
                fail(resp.error(f"ERR dyno: connection to {self.name} lost"), sent, len(requests), replies[:sent])

        self.jobs.append((self, job))

    def _pieces(self, replies: list[bytes]):
        """The replies as the reads of a real connection might cut them."""
        start = 0
        while start < len(replies):
            end = start + self.chunks.randint(1, len(replies) - start)
            yield replies[start:end]
            start = end


class Datastore(Target):
    """The local Redis, delivering and failing as dyno.datastore's reader does."""

    up = True

    def send_run(self, payload, sink, count, affinity=0):
        def answer(replies):
            for piece in self._pieces(replies):
                deliver(piece)

        def deliver(piece):
            if sink.split:
                sink.deliver_parts(list(piece))
            elif len(piece) == 1 and not sink.runs:
                sink.deliver(piece[0])
            else:
                sink.deliver_run(b"".join(piece), len(piece))

        def fail(error, sent, total, replies=()):
            if replies:
                deliver(replies)
            for _ in range(total - sent):  # the reader fails each request it could not answer
                sink.fail(error)

        self._queue("send_run", payload, answer, fail)

    def send(self, payload, sink, affinity=0):
        self.send_run(payload, sink, 1, affinity)


class Echo:
    """A background write's echo (as dyno.peer._Frame keeps one): its replies."""

    def __init__(self):
        self.outcome = None  # (ok, data)
        self.watchers = []

    def settle(self, ok: bool, data: bytes) -> None:
        self.outcome = ok, data
        for watcher, index in self.watchers:
            watcher.echoed(index, ok, data)

    def watch(self, watcher, index, offset, count):
        if self.outcome is None:
            self.watchers.append((watcher, index))
        else:
            watcher.echoed(index, *self.outcome)


class Link(Target):
    """A peer link, delivering and failing as dyno.peer.PeerLink does."""

    usable = True
    up = True
    coordinated = 0  # requests sent to be coordinated in the peer's datacenter

    def send_batch(self, payload, sink, flags=0, count=None):
        count = sink.count if count is None else count

        def answer(replies):
            assert len(replies) == count
            if len(replies) == 1:
                sink.deliver(replies[0])
            else:
                sink.deliver_each(replies)

        def fail(error, sent, total, replies=()):
            sink.fail(error)  # a frame fails whole

        self._queue("send_batch", payload, answer, fail)

    def send_background(self, payload, count, flags=0):
        # A COORDINATE request (writes for another datacenter) runs here only:
        # test_writes_from_another_datacenter_* checks what the receiver does.
        self.coordinated += count if flags & COORDINATE else 0
        echo = Echo()

        def fail(error, sent, total, replies=()):
            self.coordinator.write_failed(self.node, payload, count, error)
            echo.settle(False, error)

        self._queue("send_background", payload, lambda replies: echo.settle(True, b"".join(replies)), fail)
        return echo, 0


class Client:
    def __init__(self):
        self.id = 1
        self.protocol = 2
        self.consistency_override: dict[str, str] = {}
        self.transaction = None
        self.session = None
        self.blocked = None
        self.subscriber = False
        self.held = None
        self.closing = False
        self.dead = False
        self.replies: deque = deque()
        self.queued = False
        self.ready: list = []
        self.holding = 0

    def hold(self, size: int) -> None:  # ClientConnection counts what it holds for the limits
        self.holding += size

    def release(self, size: int) -> None:
        self.holding -= size

    def take(self) -> bytes:
        """The replies in order, as far as they have landed."""
        out = []
        while self.replies and self.replies[0].data is not None:
            out.append(self.replies.popleft().data)
        return b"".join(out)


class Cluster:
    """A Coordinator for the ring's local node, over fake targets."""

    def __init__(self, the_ring: Ring, level: str, seed: int = 0):
        self.ring = the_ring
        self.jobs: deque = deque()
        self.chunks = random.Random(seed)
        self.order = random.Random(seed + 1)
        self.datastore = Datastore(the_ring.local, self.jobs, self.chunks)
        self.links = {n.name: Link(n, self.jobs, self.chunks) for n in the_ring.nodes if not n.local}
        self.coordinator = Coordinator(
            the_ring, datastore=self.datastore, datastore3=self.datastore, link_of=self.links.get,
            admin_down=set(), stats=Stats(), metrics=Metrics(), run_local=None,
            read_consistency=level, write_consistency=level,
        )
        self.targets = [self.datastore, *self.links.values()]
        self.reported: list[tuple[str, bytes, int, bytes]] = []  # write_failed calls
        failed = self.coordinator.write_failed

        def write_failed(node, payload, count, error, flags=0):
            self.reported.append((node.name, payload, count, error))
            failed(node, payload, count, error, flags)

        self.coordinator.write_failed = write_failed
        for target in self.targets:
            target.coordinator = self.coordinator

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)

    def drain(self) -> None:
        drain(self.jobs, self.order)


def drain(jobs: deque, order: random.Random) -> None:
    """Run every queued call: each target's in the order it got them, the
    targets interleaved at random."""
    while jobs:
        targets = list(dict.fromkeys(target for target, _ in jobs))
        target = order.choice(targets)
        for index, (owner, job) in enumerate(jobs):
            if owner is target:
                del jobs[index]
                job()
                break
