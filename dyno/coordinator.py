"""The coordinator: runs the plans the planner makes. It is the one executor.

Every batch a client sent in one read, and every batch of writes another
datacenter hands over (COORDINATE), goes the same way: ``dyno.planner`` turns it
into parts (which replicas, which bytes, how decided), and this module sends each
part and decides it - failover, hedged quorum reads, latency sampling and metrics
alike for every request. It never touches a socket: a target is the node's own
datastore (``send_run``) or a peer link (``send_batch``, ``send_background``).

How a part is decided (``dyno.planner`` says which):

* a ONE read goes to ``asked[0]``; if that target fails before it answered
  everything, what is left goes to the next available replica of ``reserve``
  (``_Read``);
* a ONE write goes to every replica; ``asked[0]``'s reply answers, and if it
  fails, another replica's outcome does - what the others replied is kept with
  their frames (``echo``) and read only then (``_Write``);
* QUORUM and EACH parts are decided by one ``consistency.Quorum`` over the
  replicas' joined replies; a read asks Q replicas first, the rest when those
  cannot decide it or have not within one or two HEDGE_TICKs (``_Quorum``).

Replica writes leave the node in one place, ``Coordinator.write``, and every
failure of a write - to a replica someone waited for or not, here or in a frame
a peer link holds - is reported in one place, ``Coordinator.write_failed``, with
the target and the payload: the hook hinted handoff hangs on.
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import hiredis
import trio

from dyno import blocking, commands, groups, pubsub, resp, transactions, versions, watch
from dyno.client import BatchSlot, ReplySlot
from dyno.consistency import Quorum
from dyno.datastore import Sink
from dyno.metrics import SAMPLE_EVERY, TimedSink
from dyno.peer import COORDINATE, RESP3
from dyno.planner import EACH, LOCAL, ONE, Merge, Part, Plan, Planner
from dyno.rewrite import canonical as _canonical
from dyno.states import STANDBY, WRITES_ONLY
from dyno.transactions import Transaction
from dyno.wakeup import Idle

if TYPE_CHECKING:
    from dyno.client import ClientConnection
    from dyno.datastore import Datastore
    from dyno.metrics import Metrics
    from dyno.ring import Ring, RingNode

log = logging.getLogger("dyno.coordinator")

DC_ONE = "DC_ONE"
# A quorum read first goes to Q replicas; the others are asked too if those have not
# decided it after one to two ticks (Coordinator.hedge_reads).
HEDGE_TICK = 0.025
# With no quorum read undecided for this many ticks the sweeper parks until the next
# one (an idle node, or one serving DC_ONE only, has no timer firing 40 times a second).
HEDGE_PARK_AFTER = 40
# A client with nothing else in flight gets a batch of up to this many requests
# answered in one slot (the request/response pattern, pipelines of a few). A
# larger batch gets a slot per request, so that its replies go out as they come
# rather than all at once at the end.
WHOLE_BATCH = 128
_UNSPLITTABLE = resp.error("ERR dyno: a replica's replies could not be split")


def _parsed(reply: bytes):
    """A raw reply parsed by hiredis (an error or a bad reply: None)."""
    reader = hiredis.Reader()
    reader.feed(reply)
    try:
        return reader.gets()
    except hiredis.ProtocolError:
        return None


def _split(replies: bytes, count: int) -> list[bytes]:
    """``count`` replies cut apart; an error standing for all of them is each one's."""
    if count == 1:
        return [replies]
    parts = resp.split_replies(replies, count)
    if parts is None:
        return [replies if replies[:1] == b"-" else _UNSPLITTABLE] * count
    return parts


# -- where a part's replies go ----------------------------------------------------------
#
# A destination takes a part's replies in order, as many at a time as they come:
# ``deliver(reply)`` (one), ``deliver_run(replies, n)`` (joined) or
# ``deliver_parts(list)``; ``split`` says which it would rather have. A ReplySlot
# (one request) and a BatchSlot (a client's whole batch, nothing else in flight)
# are destinations as they are.


class _Slots(Sink):
    """One reply slot per request (a client with other requests in flight, whose
    slots the back-pressure limit counts, or a batch too large to answer whole)."""

    split = True  # it takes the replies apart: a target hands them over so

    __slots__ = ("slots", "filled")

    def __init__(self, slots: list[Sink]):
        self.slots = slots
        self.filled = 0

    def deliver(self, reply: bytes) -> None:
        self.slots[self.filled].deliver(reply)
        self.filled += 1

    def deliver_run(self, replies: bytes, n: int) -> None:
        self.deliver_parts(_split(replies, n))

    def deliver_parts(self, replies: list[bytes]) -> None:
        slots = self.slots
        filled = self.filled
        for reply in replies:
            slots[filled].deliver(reply)
            filled += 1
        self.filled = filled

    deliver_each = deliver_parts  # a peer's replies to several


class _Gather:
    """The replies of a plan of several parts (or of local answers, merges...), put
    where ``Plan.sources`` says: into one slot for the whole plan (``slot``, a
    client with nothing else in flight, or a peer's acknowledgement), else into
    the request's own slot as soon as it is known (``slots``)."""

    __slots__ = ("replies", "missing", "slot", "slots", "merges", "size", "left")

    def __init__(self, plan: Plan, slot: Sink | None, slots: list[Sink] | None):
        self.replies: list[bytes | None] = [None] * plan.width
        self.size = plan.size
        self.missing = plan.size
        self.slot = slot
        self.slots = slots
        # sub-request position -> the Merge (and its position) it belongs to
        self.merges: dict[int, tuple[int, object]] = {}
        self.left: dict[int, int] = {}  # a Merge's position -> its sub-requests still out

    def merge(self, position: int, merged) -> None:
        """Request ``position`` is answered by combining the sub-requests of ``merged``."""
        for sub in merged.parts:
            self.merges[sub] = (position, merged)
        self.left[position] = len(merged.parts)

    def place(self, position: int, reply: bytes) -> None:
        replies = self.replies
        if position >= self.size:  # a sub-request of a merge
            if replies[position] is not None:
                return
            replies[position] = reply
            owner, merged = self.merges[position]
            left = self.left[owner] - 1
            self.left[owner] = left
            if not left:
                self.place(owner, merged.combine([replies[sub] for sub in merged.parts]))
            return
        if replies[position] is not None:
            return
        replies[position] = reply
        if self.slots is not None:
            self.slots[position].deliver(reply)
            return
        self.missing -= 1
        if not self.missing:
            self.slot.deliver_run(b"".join(replies[: self.size]), self.size)


class _Placer(Sink):
    """A part's destination inside a _Gather: its replies go to its positions."""

    split = True

    __slots__ = ("gather", "positions", "filled")

    def __init__(self, gather: _Gather, positions: list[int]):
        self.gather = gather
        self.positions = positions
        self.filled = 0

    def deliver(self, reply: bytes) -> None:
        self.gather.place(self.positions[self.filled], reply)
        self.filled += 1

    def deliver_run(self, replies: bytes, n: int) -> None:
        self.deliver_parts(_split(replies, n))

    def deliver_parts(self, replies: list[bytes]) -> None:
        positions = self.positions
        place = self.gather.place
        filled = self.filled
        for reply in replies:
            place(positions[filled], reply)
            filled += 1
        self.filled = filled

    deliver_each = deliver_parts  # a peer's replies to several


class _Position(Sink):
    """The slot of one position of a _Gather (a request the node answers itself)."""

    __slots__ = ("gather", "position")

    def __init__(self, gather: _Gather, position: int):
        self.gather = gather
        self.position = position

    def deliver(self, reply: bytes) -> None:
        self.gather.place(self.position, reply)


class _Transformed(Sink):
    """A part of one request whose reply the client gets rewritten (a cursor)."""

    __slots__ = ("dest", "transform")

    def __init__(self, dest: Sink, transform: Callable[[bytes], bytes]):
        self.dest = dest
        self.transform = transform

    def deliver(self, reply: bytes) -> None:
        self.dest.deliver(self.transform(reply))

    def deliver_run(self, reply: bytes, n: int) -> None:
        self.dest.deliver_run(self.transform(reply), n)

    def deliver_parts(self, replies: list[bytes]) -> None:
        self.dest.deliver_parts([self.transform(reply) for reply in replies])


class _Whole(Sink):
    """A COORDINATE batch's replies, for the peer's acknowledgement (which counts
    them): a write this datacenter could not take (dyno's own failure line, not a
    Redis reply) is reported to it as a failure."""

    __slots__ = ("sink",)

    def __init__(self, sink: Sink):
        self.sink = sink

    def deliver(self, reply: bytes) -> None:
        self.deliver_run(reply, 1)

    def deliver_run(self, replies: bytes, n: int) -> None:
        sink = self.sink
        if replies.find(_DYNO_FAILURE) < 0:
            if n == 1:
                sink.deliver(replies)
            else:
                sink.deliver_run(replies, n)
            return
        self.deliver_parts(_split(replies, n))

    def deliver_parts(self, replies: list[bytes]) -> None:
        sink = self.sink
        for reply in replies:
            if reply.startswith(_DYNO_FAILURE):
                sink.fail(reply)
            else:
                sink.deliver(reply)

    deliver_each = deliver_parts  # a peer's replies to several


_DYNO_FAILURE = b"-ERR dyno: "
_STAMP_OK = resp.OK * versions.STAMP_REPLIES


# -- running a part ------------------------------------------------------------------


class _Run(Sink):
    """What every part's run shares: the coordinator, the part, where its replies
    go, and the client's pool and connection (``affinity``)."""

    __slots__ = ("coordinator", "part", "dest", "affinity", "resp3", "count", "split")
    runs = True  # the local datastore hands over a run of replies at once ...

    def __init__(self, coordinator: "Coordinator", part: Part, dest: Sink, affinity: int, resp3: bool):
        self.coordinator = coordinator
        self.part = part
        self.dest = dest
        self.affinity = affinity
        self.resp3 = resp3
        self.count = part.count  # requests sent to the target (a peer link reads it)
        self.split = dest.split  # ... joined, or apart if that is what ``dest`` takes


class _Read(_Run):
    """A ONE part's answering target (a read; for a write, see _Write). It hands
    the replies on as they come; if the target fails, the requests it has not
    answered go to the next available replica in ``reserve``, or, with none left,
    each gets the failure as its reply."""

    __slots__ = ("received", "reserve", "over")

    def __init__(self, coordinator, part, dest, affinity, resp3, reserve, received: int = 0):
        self.coordinator = coordinator
        self.part = part
        self.dest = dest
        self.affinity = affinity
        self.resp3 = resp3
        self.split = dest.split
        self.received = received  # of the part's requests, those answered (by any target)
        self.count = part.count - received
        self.reserve = reserve  # replicas to fall back on (those asked are skipped)
        self.over = False  # this target failed: what it sends next is not ours

    def deliver_run(self, replies: bytes, n: int) -> None:
        if self.over:
            return
        received = self.received + n
        if received > self.part.count:  # a stamped write's last replies: the stamp's
            replies, n = self.coordinator.unstamp(replies, n, self.part.count - self.received)
            if not n:
                return
            received = self.part.count
        self.received = received
        self.dest.deliver_run(replies, n)

    def deliver(self, reply: bytes) -> None:
        if self.over:
            return
        if self.received >= self.part.count:  # one of a stamp's replies
            self.coordinator.unstamp(reply, 1, 0)
            return
        self.received += 1
        self.dest.deliver(reply)

    def deliver_each(self, replies: list[bytes]) -> None:
        if self.over:
            return
        left = self.part.count - self.received
        if len(replies) > left:  # a stamped write's last replies: the stamp's
            self.coordinator.unstamp(b"".join(replies[left:]), len(replies) - left, 0)
            replies = replies[:left]
            if len(replies) < 2:
                if replies:
                    self.received += 1
                    self.dest.deliver(replies[0])
                return
        self.received += len(replies)
        self.dest.deliver_parts(replies)

    deliver_parts = deliver_each  # the local datastore's, for a ``split`` run

    def fail(self, error: bytes) -> None:
        if self.over:
            return
        self.over = True
        coordinator = self.coordinator
        part = self.part
        left = part.count - self.received
        coordinator.replica_failed(error, left)
        if not left:
            return
        available = coordinator.available
        reserve = self.reserve
        while reserve:
            target, reserve = reserve[0], reserve[1:]
            if target is not part.asked[0] and available(target):
                payload = part.payload
                if self.received:  # what is left: the requests after those answered
                    rest = resp.RequestParser().feed(payload)[self.received:]
                    payload = b"".join(map(resp.encode_command, rest))
                run = _Read(coordinator, part, self.dest, self.affinity, self.resp3, reserve, self.received)
                coordinator.metrics.failovers += 1
                coordinator.send(target, payload, left, run, self.affinity, self.resp3)
                return
        self.dest.deliver_run(error * left, left)


class _LocalRead(Sink):
    """A DC_ONE read sent as read to this node's Redis (``Planner.plain``'s ``(raw,
    count, calls, reserve)``): the ONE Part it stands for, made only if that Redis
    fails it. Until then its replies go to ``dest`` as they come, as a _Read hands
    them on; a failure makes the Part and lets a _Read fail over what is left
    (measured in-process: 2.4 -> 2.0 us a GET, 3 racks; scripts/microbench.py)."""

    __slots__ = ("coordinator", "dest", "payload", "count", "reserve", "affinity", "resp3", "received")
    runs = True  # the local datastore hands over a run of replies at once ...

    def __init__(self, coordinator: "Coordinator", dest: Sink, payload: bytes, count: int, reserve: tuple,
                 affinity: int, resp3: bool):
        self.coordinator = coordinator
        self.dest = dest  # None once it failed: a _Read has the rest
        self.payload = payload
        self.count = count
        self.reserve = reserve
        self.affinity = affinity
        self.resp3 = resp3
        self.received = 0

    @property
    def split(self) -> bool:  # ... joined, or apart if that is what ``dest`` takes
        return self.dest.split

    def part(self) -> Part:
        """The Part this read stands for (Planner.part: ONE, asked this node)."""
        reserve = self.reserve
        return Part(ONE, DC_ONE, False, reserve[:1], reserve, (), self.payload, self.count, None)

    def deliver(self, reply: bytes) -> None:
        dest = self.dest
        if dest is not None:
            self.received += 1
            dest.deliver(reply)

    def deliver_run(self, replies: bytes, n: int) -> None:
        dest = self.dest
        if dest is not None:
            self.received += n
            dest.deliver_run(replies, n)

    def deliver_parts(self, replies: list[bytes]) -> None:
        dest = self.dest
        if dest is not None:
            self.received += len(replies)
            dest.deliver_parts(replies)

    deliver_each = deliver_parts

    def fail(self, error: bytes) -> None:
        dest = self.dest
        if dest is None:
            return
        self.dest = None
        _Read(self.coordinator, self.part(), dest, self.affinity, self.resp3, self.reserve,
              self.received).fail(error)


class _Effect(_Read):
    """A write whose effect the replica chooses (SPOP, XADD), run on one replica:
    its reply answers the client, and the deterministic form of what it did goes
    to every other replica (``Part.effect``, ``Part.others``)."""

    __slots__ = ()

    def deliver(self, reply: bytes) -> None:
        self.deliver_run(reply, 1)

    def deliver_run(self, reply: bytes, n: int) -> None:
        if self.over or self.received:
            return  # (the stamp's replies, after the one that matters)
        if n > 1:
            reply, n = self.coordinator.unstamp(reply, n, 1)
        super().deliver_run(reply, 1)
        if reply[:1] == b"-":
            return
        part = self.part
        rewritten = part.effect(part.argv, reply)
        if rewritten is not None:
            payload = resp.encode_command(rewritten)
            if part.version is not None:  # what it did is the same write: the same version
                payload += versions.stamp([part.argv[1]], part.version, self.coordinator.versions_db)
            self.coordinator.write(part.others, payload, 1 + part.extra, self.affinity, self.resp3)


class _Write(_Read):
    """A ONE write's answering target, ``asked[0]``; the other replicas got the
    write through ``Coordinator.write`` and their outcomes are kept there
    (``echoes``). If the answering target fails, the part is decided by the
    DC_ONE rule over every replica's outcome: the first other replica's reply."""

    __slots__ = ("echoes", "quorum", "pending")

    def __init__(self, coordinator, part, dest, affinity, resp3):
        # (_Read.__init__'s, written out: one per write)
        self.coordinator = coordinator
        self.part = part
        self.dest = dest
        self.affinity = affinity
        self.resp3 = resp3
        self.split = dest.split
        self.received = 0
        self.count = part.count
        self.reserve = ()
        self.over = False
        self.echoes: list = []  # the other replicas' (Coordinator.write)
        self.quorum: Quorum | None = None
        # A failure that came while the write was being sent (the answering target
        # refused it at once), before the other replicas' echoes were all there.
        self.pending: bytes | None = None

    def fail(self, error: bytes) -> None:
        if self.over:
            return
        self.over = True
        part = self.part
        self.coordinator.write_failed(part.asked[0], part.payload, part.count + part.extra, error)
        if len(self.echoes) < len(part.asked) - 1:
            self.pending = error  # decided once all are sent (sent())
            return
        self._fall_back(error)

    def sent(self) -> None:
        """Coordinator.write has sent the write to every replica."""
        if self.pending is not None:
            self._fall_back(self.pending)

    def _fall_back(self, error: bytes) -> None:
        part = self.part
        coordinator = self.coordinator
        left = part.count - self.received
        if not left:
            return
        # The requests it did not answer are decided by the DC_ONE rule over every
        # replica's outcome: the first reply of another.
        quorum = self.quorum = Quorum(DC_ONE, len(part.asked), count=left)
        result = quorum.failure(0, error)
        if result is not None:  # no other replica
            self.dest.deliver_run(result, left)
            return
        coordinator.metrics.failovers += 1
        count = part.count
        for index, (echo, offset) in enumerate(self.echoes, start=1):
            echo.watch(self, index, offset, count)
            if quorum.done:
                break

    def echoed(self, index: int, ok: bool, data: bytes) -> None:
        """Another replica's outcome, once the answering target failed."""
        quorum = self.quorum
        if quorum.done:
            return
        if ok and self.received:  # only the replies the failed target did not give
            parts = resp.split_replies(data, self.part.count)
            if parts is None:
                ok, data = False, _UNSPLITTABLE
            else:
                data = b"".join(parts[self.received:])
        result = quorum.reply(index, data) if ok else quorum.failure(index, data)
        if result is not None:
            self.dest.deliver_run(result, quorum.count)


class _Quorum(_Run):
    """A QUORUM or EACH part: one Quorum over its replicas (``asked``, then
    ``reserve``, numbered in that order), fed each replica's replies joined. A
    read whose first replicas have all answered without deciding it, or one of
    which failed, asks the others (``widen``); so does one they have not decided
    within one or two HEDGE_TICKs (Coordinator.hedge_reads)."""

    __slots__ = ("quorum", "targets", "asked", "outcomes", "listed", "repaired", "seen", "differed")

    def __init__(self, coordinator, part, dest, affinity, resp3, local_dc):
        super().__init__(coordinator, part, dest, affinity, resp3)
        targets = self.targets = part.asked + part.reserve
        dcs = None if part.kind is not EACH else [node.dc for node in targets]
        self.quorum = Quorum(part.level, len(targets), local_dc, dcs, part.count,
                             canonical=_canonical if part.canonical else None)
        self.asked = len(part.asked)
        self.outcomes = 0
        self.listed = False  # in the coordinator's list of reads to hedge
        self.repaired = False  # a read asked again after read repair (not repaired twice)
        self.seen: bytes | None = None  # the first replica's replies
        self.differed = False  # another replica's differed from them: repair, once decided

    def ask(self, index: int) -> None:
        part = self.part
        self.coordinator.send(self.targets[index], part.payload, part.count + part.extra,
                              _Replica(self, index), self.affinity, self.resp3)

    def arrived(self, index: int, replies: bytes) -> None:
        self.outcomes += 1
        part = self.part
        if part.extra:
            replies, _ = self.coordinator.unstamp(replies, part.count + part.extra, part.count)
        quorum = self.quorum
        if quorum.done:
            if replies != quorum.result:
                self.coordinator.metrics.disagreements += 1
                if not part.canonical:  # (unordered replies differ in bytes, not in value)
                    self.coordinator.repair_in_background(part, self.targets)
            return
        if self.seen is None:
            self.seen = replies
        elif replies != self.seen and not part.canonical:
            self.differed = True
        result = quorum.reply(index, replies)
        if result is not None:
            self._decided(result)
        elif self.outcomes == self.asked:
            self.widen()

    def failed(self, index: int, error: bytes) -> None:
        self.outcomes += 1
        part = self.part
        coordinator = self.coordinator
        if part.write:
            coordinator.write_failed(self.targets[index], part.payload, part.count + part.extra, error)
        else:
            coordinator.replica_failed(error, part.count)
        quorum = self.quorum
        if quorum.done:
            return
        result = quorum.failure(index, error)
        if result is not None:
            self._decided(result)
        else:
            self.widen()

    def widen(self) -> None:
        """Ask the replicas held in reserve: those asked could not decide the read."""
        targets = len(self.targets)
        if self.quorum.done or self.asked == targets:
            return
        coordinator = self.coordinator
        if self.listed:
            coordinator.hedged.pop(id(self), None)
            self.listed = False
        first, self.asked = self.asked, targets
        coordinator.metrics.widened_reads += 1
        for index in range(first, targets):  # an ask may fail at once and decide the read
            self.ask(index)

    def _decided(self, result: bytes) -> None:
        coordinator = self.coordinator
        if self.listed:
            coordinator.hedged.pop(id(self), None)
            self.listed = False
        if result[:1] == b"-":
            if (not self.repaired and not self.part.write and result.endswith(b"disagree\r\n")
                    and coordinator.read_repair(self, result)):
                return  # answered once the replicas are repaired and asked again
            coordinator.decided_error(result, self.part)
        elif self.differed:  # decided, but a replica asked answered otherwise: repair it
            coordinator.repair_in_background(self.part, self.targets)
        self.dest.deliver_run(result, self.part.count)


class _Replica(Sink):
    """One replica's replies to a _Quorum's part, gathered whole: the local
    datastore hands them over as a read holds them (and fails each one it could
    not answer), a peer in one frame (or fails the frame). The first failure is
    the replica's outcome; nothing it sends after counts."""

    __slots__ = ("run", "index", "parts", "received", "over")
    runs = True

    def __init__(self, run: _Quorum, index: int):
        self.run = run
        self.index = index
        self.parts: list[bytes] | None = None
        self.received = 0
        self.over = False

    @property
    def count(self) -> int:  # a peer link's send_batch reads it
        part = self.run.part
        return part.count + part.extra

    def deliver_run(self, replies: bytes, n: int) -> None:
        if self.over:
            return
        received = self.received + n
        part = self.run.part
        if received < part.count + part.extra:
            self.received = received
            if self.parts is None:
                self.parts = [replies]
            else:
                self.parts.append(replies)
            return
        self.over = True
        if self.parts is not None:
            self.parts.append(replies)
            replies = b"".join(self.parts)
        self.run.arrived(self.index, replies)

    def deliver(self, reply: bytes) -> None:
        self.deliver_run(reply, 1)

    def deliver_each(self, replies: list[bytes]) -> None:
        self.deliver_run(b"".join(replies), len(replies))

    def fail(self, error: bytes) -> None:
        if not self.over:
            self.over = True
            self.run.failed(self.index, error)


# -- writes nobody waits for -----------------------------------------------------------
#
# ``Coordinator.write`` returns an *echo* of a background write: what the replica
# did, kept until someone asks (``watch``). A ONE write asks only when its
# answering replica failed. A peer link's echo is its frame's (dyno.peer).


class _LocalEcho(Sink):
    """A background write to the node's own Redis: its replies, kept."""

    __slots__ = ("parts", "left", "error", "watcher", "index", "total", "wanted")
    runs = True

    def __init__(self, count: int):
        self.parts: list[bytes] = []
        self.left = self.total = self.wanted = count
        self.error: bytes | None = None
        self.watcher = None
        self.index = 0  # the watcher's number for this replica

    def deliver_run(self, replies: bytes, n: int) -> None:
        self.parts.append(replies)
        self.left -= n
        if not self.left:
            self._tell()

    def deliver(self, reply: bytes) -> None:
        self.deliver_run(reply, 1)

    def fail(self, error: bytes) -> None:
        if self.error is None:
            self.error = error
        self.deliver_run(b"", 1)

    def watch(self, watcher, index: int, offset: int, count: int) -> None:
        self.watcher, self.index = watcher, index
        self.wanted = count  # the writes' replies, without a stamp's after them
        if not self.left:
            self._tell()

    def _tell(self) -> None:
        if self.watcher is not None:
            if self.error is None:
                data = b"".join(self.parts)
                if self.wanted < self.total:
                    parts = resp.split_replies(data, self.total)
                    data = b"".join(parts[: self.wanted]) if parts is not None else data
                self.watcher.echoed(self.index, True, data)
            else:
                self.watcher.echoed(self.index, False, self.error)


class _FailedEcho:
    """A background write that could not even be sent."""

    __slots__ = ("error",)

    def __init__(self, error: bytes):
        self.error = error

    def watch(self, watcher, index: int, offset: int, count: int) -> None:
        watcher.echoed(index, False, self.error)


class Coordinator:
    """Plans every batch (dyno.planner) and runs the plan (module docstring).

    Built by the node with what it needs and nothing more: the ring, the two
    datastore pools (RESP2 and RESP3 clients'), ``link_of(name)`` for peer links,
    ``admin_down`` (peers an operator marked down: read, never changed here), the
    counters, and ``run_local`` for the commands the node answers itself."""

    def __init__(self, ring: "Ring", *, datastore: "Datastore", datastore3: "Datastore",
                 link_of: Callable, admin_down, stats, metrics: "Metrics", run_local: Callable,
                 read_consistency: str, write_consistency: str, flush_enabled: bool = False,
                 hash_tag: bool = False, clock: Callable[[], int] = time.time_ns,
                 version: Callable[[], bytes] | None = None, versions_db: int = versions.DEFAULT_DB,
                 on_write_failed: Callable | None = None):
        self.datastore = datastore
        self.datastore3 = datastore3
        self.link_of = link_of
        self.admin_down = admin_down
        self.stats = stats
        self.metrics = metrics
        self.calls = metrics.calls  # requests per command
        self.by_level = metrics.by_level  # replicated requests per level
        self.run_local = run_local
        self.read_level = read_consistency
        self.write_level = write_consistency
        self.flush_enabled = flush_enabled
        self.hash_tag = hash_tag
        self.clock = clock
        self.version = version  # a new version for a batch of writes (versions.HLC.now)
        self.observe: Callable[[bytes], None] | None = None  # a version made elsewhere (HLC.observe)
        self.versions_db = versions_db
        #: (node, payload, count, flags): writes a replica did not acknowledge (hints).
        self.on_write_failed = on_write_failed
        self._last_stamp_log = 0.0
        #: Read repair (dyno.repair.repair_keys bound by the node: keys, replicas),
        #: and where its tasks run; None until the node is running.
        self.repair_keys: Callable | None = None
        self.spawn: Callable | None = None
        #: Sends the replies clients have ready (the node's): after a delivery made
        #: outside the readers that do it themselves (a WATCH session's).
        self.flush_clients: Callable[[], None] = lambda: None
        self.sessions = 0  # WATCH and blocking-pop sessions open here (dyno.watch)
        # Pop sessions kept between a client's pops, oldest idle first (dyno.blocking)
        self._idle_pops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.read_repair_chance = 0.0
        self._random = random.random
        # One batch in SAMPLE_EVERY is timed: the countdown costs one decrement. It
        # starts at 1 (the first batch is timed) and sample_next() sets it to 1 again.
        self.countdown = 1
        self.sampling = False
        self.refuse: Callable | None = None  # the node's state refuses some requests
        # Quorum reads asked of Q replicas and not decided yet, oldest first:
        # id -> (tick asked, run). A read leaves it when decided or widened, so
        # nothing is kept alive past its answer (objects that outlive a few GC
        # generations made the cyclic GC a tenth of a node's time).
        self.hedged: dict[int, tuple[int, _Quorum]] = {}
        self._hedge_tick = 0
        self._hedger = Idle()
        self._last_failure_log = 0.0
        self._failures_since_log = 0
        self.set_ring(ring)

    # -- settings the node changes ------------------------------------------------------

    def set_ring(self, ring: "Ring") -> None:
        """Route by ``ring`` from now on (at start, and when gossip changes it)."""
        self.ring = ring
        self.local_dc = ring.local.dc
        self.planner = Planner(ring, self.available, flush_enabled=self.flush_enabled,
                               hash_tag=self.hash_tag, now_ms=self.now_ms, refuse=self.refuse,
                               version=self.version,
                               versions_db=self.versions_db)

    def sample_next(self) -> None:
        """Time the next batch (the admin port asks once a second when none was:
        a node with little traffic still has latency figures)."""
        self.countdown = 1

    def set_levels(self, read: str, write: str) -> None:
        """The node's consistency levels (the admin port changes them)."""
        self.read_level = read
        self.write_level = write

    def set_state(self, state: str) -> None:
        """The node's operator state: STANDBY refuses every request but those the
        node answers itself, WRITES_ONLY refuses reads."""
        if state == STANDBY:
            self.refuse = self._refuse_standby
        elif state == WRITES_ONLY:
            self.refuse = self._refuse_reads
        else:
            self.refuse = None
        self.planner.refuse = self.refuse

    _STANDBY = resp.error(
        "ERR dyno: node is in STANDBY (set by an operator on the admin port); it serves "
        "no reads or writes until /state/normal"
    )
    _WRITES_ONLY = resp.error(
        "ERR dyno: node is in WRITES_ONLY (set by an operator on the admin port); it "
        "accepts writes but serves no reads until /state/normal"
    )

    def _refuse_standby(self, spec, write: bool) -> bytes:
        self.metrics.state_refusals += 1
        return self._STANDBY

    def _refuse_reads(self, spec, write: bool) -> bytes | None:
        if write:
            return None
        self.metrics.state_refusals += 1
        return self._WRITES_ONLY

    def available(self, node: "RingNode") -> bool:
        """Whether ``node`` can be sent to now: its Redis (this node) or its link up."""
        if node.local:
            return self.datastore.up
        link = self.link_of(node.name)
        return link is not None and link.usable and node.name not in self.admin_down

    # -- batches --------------------------------------------------------------------

    def now_ms(self) -> int:
        """Wall-clock milliseconds: a relative expiry made absolute is on this clock."""
        return self.clock() // 1_000_000

    def execute_batch(self, client: "ClientConnection", requests: list[list[bytes]], raw: bytes | None) -> None:
        """Run ``requests`` for ``client``; each gets its reply in the client's FIFO,
        in order. ``raw``, if not None, is their canonical encoding as read."""
        self.stats.commands += len(requests)
        if client.subscriber and client.protocol == 2:  # RESP2 after SUBSCRIBE: Redis's rules
            self._subscribed(client, requests)
            return
        if client.held is not None:  # behind a session request (WATCH ...): in order, after it
            client.held.append(requests)
            return
        if client.transaction is not None:  # between MULTI and EXEC: queued
            self._queue(client, requests)
            return
        if client.session is not None:  # after WATCH: its keys are read and written where watched
            self._through_session(client, requests)
            return
        self.countdown -= 1
        if not self.countdown:
            self.countdown = SAMPLE_EVERY
            self.sampling = True
            self.metrics.sampled_batches += 1
            try:
                self._execute(client, requests, raw)
            finally:
                self.sampling = False
            return
        # The common case, written out: one part answers the whole batch.
        override = client.consistency_override
        plan = None
        if raw is not None and self.refuse is None:
            if override:
                plan = self.planner.plain(requests, raw, override["read"], override["write"])
            else:
                plan = self.planner.plain(requests, raw, self.read_level, self.write_level)
        if plan is None or plan.__class__ is Plan:
            self._execute(client, requests, raw, plan)
            return
        if plan.__class__ is tuple:  # to this node's Redis, as read (a ring of one node, a DC_ONE read)
            self._forward(client, *plan)
            return
        calls = plan.calls
        count = plan.count
        if calls.__class__ is list:
            counts = self.calls
            for spec in calls:
                counts[spec] += 1
        else:
            self.calls[calls] += count
        replies = client.replies
        if count == 1:
            dest = ReplySlot(client)
            replies.append(dest)
        elif not replies and count <= WHOLE_BATCH:
            dest = BatchSlot(client, count)
            replies.append(dest)
        else:
            dest = self._slots(client, count)
        self._dispatch(plan, dest, client.id, client.protocol == 3)

    def _forward(self, client: "ClientConnection", payload: bytes, count: int, calls,
                 reserve: tuple | None = None) -> None:
        """A plain batch to this node's Redis as read (Planner.plain): of a ring of one
        node, or a DC_ONE read with ``reserve``, the replicas it fails over to."""
        if calls.__class__ is list:
            counts = self.calls
            for spec in calls:
                counts[spec] += 1
        else:
            self.calls[calls] += count
        replies = client.replies
        sampling = self.sampling
        if sampling:
            if count == 1 or not replies and count <= WHOLE_BATCH:
                dest = self.metrics.timed_slot(client) if count == 1 else self.metrics.timed_batch_slot(client, count)
                replies.append(dest)
            else:
                dest = self._slots(client, count)
        elif count == 1:
            dest = ReplySlot(client)
            replies.append(dest)
        elif not replies and count <= WHOLE_BATCH:
            dest = BatchSlot(client, count)
            replies.append(dest)
        else:
            dest = self._slots(client, count)
        resp3 = client.protocol == 3
        if reserve is not None:
            self.by_level[DC_ONE] += count
            dest = _LocalRead(self, dest, payload, count, reserve, client.id, resp3)
            if self.read_repair_chance and self._random() < self.read_repair_chance:
                self.repair_in_background(dest.part(), reserve)
        if sampling:  # outermost, as ``send`` puts it: around what the datastore hands replies to
            dest = TimedSink(dest, self.metrics.datastore_latency, count)
        (self.datastore3 if resp3 else self.datastore).send_run(payload, dest, count, client.id)

    def _execute(self, client: "ClientConnection", requests: list[list[bytes]], raw: bytes | None,
                 plan: Plan | Part | None = None) -> None:
        """``execute_batch``, for any plan (several parts, requests the node answers,
        a command that ends a plan, a sampled batch)."""
        if client.held is not None:  # behind a session request (dyno.watch): after it
            client.held.append(requests)
            return
        while True:
            if plan is None:
                override = client.consistency_override
                if override:
                    plan = self.planner.plan(requests, raw, override["read"], override["write"])
                else:
                    plan = self.planner.plan(requests, raw, self.read_level, self.write_level)
            if plan.__class__ is tuple:  # to this node's Redis, as read (Planner.plain)
                self._forward(client, *plan)
                return
            if plan.__class__ is not Plan:  # one Part answers the whole batch, in order
                self._run_part_for_client(plan, client)
                return
            self._run_for_client(plan, client, requests)
            if client.held is not None:  # WATCH ended the plan: what follows waits for its reply
                if plan.size < len(requests):
                    client.held.append(requests[plan.size:])
                return
            if client.transaction is not None:  # MULTI ended the plan: what follows is queued
                if plan.size < len(requests):
                    self._queue(client, requests[plan.size:])
                return
            if client.subscriber and client.protocol == 2:  # SUBSCRIBE ended it: Redis's rules now
                if plan.size < len(requests):
                    self._subscribed(client, requests[plan.size:])
                return
            if plan.size == len(requests) or client.closing:
                return
            requests = requests[plan.size:]
            raw = None
            plan = None

    def _subscribed(self, client: "ClientConnection", requests: list[list[bytes]]) -> None:
        """A RESP2 client with a subscription: (P|S)(UN)SUBSCRIBE, PING, QUIT and RESET
        run; anything else gets Redis's error. Once it has none left, as usual."""
        for index, argv in enumerate(requests):
            if not client.subscriber or client.protocol != 2:
                self._execute(client, requests[index:], None)
                return
            name = argv[0].lower() if argv else b""
            if name in pubsub.ALLOWED_SUBSCRIBED:
                self._execute(client, [argv], None)
            else:
                self.stats.errors += 1
                self._reply(client, pubsub.not_allowed(name))

    # -- transactions (dyno.transactions) ---------------------------------------------

    def transaction(self) -> Transaction:
        """A new transaction (MULTI), whose keys' replica sets come from the ring as
        it is when each command is queued."""
        return Transaction(self._replicas_of, self.planner.crossslot)

    def _replicas_of(self, key: bytes) -> tuple:
        planner = self.planner
        group = planner.uniform_group
        if group is not None:
            return group
        ring = planner.ring
        return ring.replicas(ring.token_of(key))

    def _queue(self, client: "ClientConnection", requests: list[list[bytes]]) -> None:
        """Requests a client sent after MULTI: queued (``+QUEUED`` or the error that
        aborts the transaction) until EXEC runs it or DISCARD drops it; RESET and
        QUIT drop it and run as usual. What follows EXEC or DISCARD runs as usual."""
        transaction = client.transaction
        for index, argv in enumerate(requests):
            name = argv[0].lower() if argv else b""
            if name == b"exec" and len(argv) == 1:
                client.transaction = None
                self._exec(client, transaction, argv)
            elif name == b"discard" and len(argv) == 1:
                client.transaction = None
                self.unwatch(client)  # as Redis: DISCARD unwatches
                self._reply(client, resp.OK)
            elif name in (b"reset", b"quit"):
                client.transaction = None
                self._execute(client, requests[index:], None)
                return
            else:
                if name == b"multi":
                    reply = transactions.NESTED
                elif name == b"watch":
                    reply = transactions.WATCH_INSIDE
                else:
                    reply = transaction.add(argv)
                    if transaction.aborted and reply is not transactions.QUEUED:
                        self.stats.errors += 1
                self._reply(client, reply)
                continue
            if index + 1 < len(requests):
                self._execute(client, requests[index + 1:], None)
            return

    def _reply(self, client: "ClientConnection", reply: bytes) -> None:
        slot = ReplySlot(client)
        client.replies.append(slot)
        slot.deliver(reply)

    def _exec(self, client: "ClientConnection", transaction: Transaction, argv: list[bytes]) -> None:
        """EXEC: the queued commands as one block on every replica of their keys
        (Planner.transaction); the client gets EXEC's reply as the level decides."""
        session = client.session
        if session is not None:  # after WATCH: run first where the keys are watched
            client.session = None
            self._exec_watched(client, transaction, session)
            return
        if transaction.aborted:
            self._reply(client, transactions.EXECABORT)
            return
        queued = transaction.queued
        if not queued:
            self._reply(client, b"*0\r\n")
            return
        override = client.consistency_override
        read_level, write_level = (override["read"], override["write"]) if override else (
            self.read_level, self.write_level)
        count = len(queued) + 2
        part = self.planner.transaction(queued, read_level, write_level, positions=list(range(1, count + 1)))
        if part.__class__ is bytes:
            self._reply(client, part)
            return
        self.metrics.transactions += 1
        plan = Plan([part], 1, [Merge(_exec_reply, part.positions)], count + 1, None,
                    [commands.resolve(argv) for argv in queued])
        self._run_for_client(plan, client, [argv])

    # -- WATCH (dyno.watch) -------------------------------------------------------------

    def watch(self, client: "ClientConnection", argv: list[bytes], slot: Sink) -> bytes | None:
        """WATCH keys...: on the client's session, a connection of its own to this
        node's Redis (made at its first WATCH), which must hold a replica of them.
        Returns the error line, or None: the reply comes from that Redis, and until it
        does what the client sends next is held (a write of its own after WATCH must
        find the watch in place)."""
        group = None
        for key in argv[1:]:
            owners = self._replicas_of(key)
            if group is None:
                group = owners
            elif owners is not group:
                return self.planner.crossslot
        session = client.session
        if session is not None and session.group is not group:
            return self.planner.crossslot
        if session is None:
            session = self._open_session(client, group)
            if session.__class__ is bytes:
                return session
            client.session = session
        client.held = []
        session.request(resp.encode_command(argv), 1,
                        lambda replies: self._watched(client, session, slot, replies))
        return None

    def _open_session(self, client: "ClientConnection", group: tuple):
        """A connection of the client's own on ``group``'s watch replica (here, or a
        peer's), or the error line why not."""
        if self.sessions >= watch.MAX_SESSIONS and self._idle_pops:
            # at the limit: the pop session a client kept longest without using it goes
            idle_client, idle = next(iter(self._idle_pops.items()))
            del self._idle_pops[idle_client]
            idle.close()
            if idle_client.blocked is idle:
                idle_client.blocked = None
        elif self.sessions >= watch.MAX_SESSIONS or self.spawn is None:
            return resp.error(f"ERR dyno: {watch.MAX_SESSIONS} clients WATCH or wait in a blocking pop on "
                              "this node already; try again later")
        replica = watch.watch_replica(group, self.available)
        if replica.local:
            datastore = self.datastore
            session = watch.Session(datastore.host, datastore.port, auth=datastore.auth,
                                    protocol=client.protocol, group=group, replica=replica)
            self.sessions += 1
            self.spawn(self._run_session, session)
            return session
        link = self.link_of(replica.name)
        if link is None or not link.usable:
            return resp.error(f"ERR dyno: {replica.name}, which serves these keys' WATCH and blocking "
                              "pops, cannot be reached")
        return watch.RemoteSession(link, group=group, replica=replica, flags=RESP3 if client.protocol == 3 else 0)

    def block(self, client: "ClientConnection", spec, argv: list[bytes], slot: Sink) -> bytes | None:
        """A blocking pop (dyno.blocking), XREAD BLOCK, or a consumer-group command
        (dyno.groups: XREADGROUP, XCLAIM, XAUTOCLAIM): on a session on its keys' watch
        replica; what it did is then done to the other replicas. Returns the error line, or
        None: the reply comes when Redis answers (data, or nil at the timeout), and
        what the client sends meanwhile waits, as a blocked Redis client's would."""
        keys = commands.keys(spec, argv)
        if not keys:
            return resp.error(f"ERR dyno: '{argv[0].decode(errors='replace')}' has no keys")
        group = self._replicas_of(keys[0])
        if any(self._replicas_of(key) is not group for key in keys[1:]):
            return self.planner.crossslot
        session = client.session
        own = session is None
        if own:  # the client's pop session, kept from its last pop if it fits (a worker's loop)
            session = client.blocked
            if session is None or session.closed or session.group is not group:
                if session is not None:
                    session.close()
                session = self._open_session(client, group)
                if session.__class__ is bytes:
                    return session
                client.blocked = session
            self._idle_pops.pop(client, None)
        elif session.group is not group:
            return self.planner.crossslot
        client.held = []
        replica = session.replica
        grouped = groups.on_watch_replica(spec.name, argv)
        followups = groups.followups(argv) if grouped else []

        def done(replies) -> None:
            if replies.__class__ is bytes:
                if own:
                    session.close()
                    if client.blocked is session:
                        client.blocked = None
                slot.deliver(replies)
                self._release(client)
                return
            if own and not session.closed and not client.dead:
                self._idle_pops[client] = session  # kept for its next pop; the first to go at the limit
            reply = replies[0]
            if reply[:1] in (b"-", b"!"):
                effect = []
            else:
                parsed = list(map(_parsed, replies))
                if grouped:
                    effect = groups.effect(argv, parsed)
                else:
                    command = blocking.effect(argv, parsed[0])
                    effect = [] if command is None else [command]
            if not effect:
                slot.deliver(reply)
                self._release(client)
                return
            payload = b"".join(map(resp.encode_command, effect))
            count = len(effect)
            version = self.planner.batch_version(False, None)
            if version is not None:
                keys = groups.written_keys(effect) if grouped else blocking.written_keys(effect[0])
                stamp = versions.stamp(keys, version, self.versions_db)
                session.request(stamp, versions.STAMP_REPLIES, lambda replies: None)  # where it ran
                payload += stamp
                count += versions.STAMP_REPLIES
            others = tuple(node for node in group if node is not replica)
            if others:
                self._replicate_then(slot, reply, others, payload, count, client)
            else:
                slot.deliver(reply)
                self._release(client)

        payload = b"".join(map(resp.encode_command, [argv, *followups]))
        timeout = None if not grouped or groups.blocks(argv) else watch.REPLY_TIMEOUT
        session.request(payload, 1 + len(followups), done, timeout=timeout)
        return None

    async def _run_session(self, session: watch.Session) -> None:
        try:
            await session.run()
        finally:
            self.sessions -= 1

    def _watched(self, client: "ClientConnection", session: watch.Session, slot: Sink, replies) -> None:
        """WATCH's reply came: deliver it and run what the client sent after it."""
        if replies.__class__ is bytes:  # the session failed: no watch in place
            if client.session is session:
                client.session = None
            slot.deliver(replies)
        else:
            slot.deliver(replies[0])
        self._release(client)

    def _release(self, client: "ClientConnection") -> None:
        """A session request the client's next requests waited for is done: run them
        (until one more such request holds the rest again)."""
        held, client.held = client.held, None
        while held and not client.dead:
            requests = held.pop(0)
            if client.transaction is not None:
                self._queue(client, requests)
            elif client.session is not None:
                self._through_session(client, requests)
            else:
                self._execute(client, requests, None)
            if client.held is not None:  # held again: the rest waits behind it
                client.held.extend(held)
                break
        self.flush_clients()

    def _through_session(self, client: "ClientConnection", requests: list[list[bytes]]) -> None:
        """Requests of a client that WATCHes, outside MULTI: those on keys of the
        watched replica set run on the session, in order (a read sees what the watch
        replica has, which is what EXEC will be checked against; a write is applied
        there first, so it touches the watch as in Redis, then sent to the other
        replicas); anything else as usual, one by one, until MULTI, WATCH or the end
        of the session changes how what follows is served."""
        for index, argv in enumerate(requests):
            session = client.session
            if session is None:
                self._execute(client, requests[index:], None)
                return
            if client.transaction is not None:
                self._queue(client, requests[index:])
                return
            if client.held is not None:
                client.held.append(requests[index:])
                return
            spec = commands.resolve(argv)
            keys = () if spec.__class__ is bytes else commands.keys(spec, argv)
            if (not keys or spec.route not in (commands.Route.KEY, commands.Route.MULTI_KEY)
                    or spec.name in transactions.NOT_DETERMINISTIC
                    or not all(self._replicas_of(key) is session.group for key in keys)):
                self._execute(client, [argv], None)
                continue
            self._session_command(client, session, spec, argv)

    def _session_command(self, client: "ClientConnection", session, spec, argv: list[bytes]) -> None:
        """One request on the session; what the client sends next waits for it (so
        that a request of its own that goes elsewhere never overtakes it)."""
        slot = ReplySlot(client)
        client.replies.append(slot)
        self.calls[spec] += 1
        client.held = []
        if not commands.is_write(spec, argv):
            def read(replies) -> None:
                slot.deliver(replies if replies.__class__ is bytes else replies[0])
                self._release(client)
            session.request(resp.encode_command(argv), 1, read)
            return
        planner = self.planner
        (command,), _, keys, _ = planner.transaction_block([argv])
        version = planner.batch_version(False, None)
        payload = command + (versions.stamp(keys, version, self.versions_db) if version is not None else b"")
        count = 1 + (versions.STAMP_REPLIES if version is not None else 0)
        replica = session.replica

        def written(replies) -> None:
            if replies.__class__ is bytes:
                slot.deliver(replies)
            else:
                others = tuple(node for node in session.group if node is not replica)
                if replies[0][:1] not in (b"-", b"!") and others:
                    self._replicate_then(slot, replies[0], others, payload, count, client)
                    return
                slot.deliver(replies[0])
            self._release(client)

        session.request(payload, count, written)

    def _replicate_then(self, slot: Sink, reply: bytes, others: tuple, payload: bytes, count: int,
                        client: "ClientConnection") -> None:
        """What ran on the watch replica goes to the other replicas; the client gets
        ``reply``, and its next requests run, once this node's own replica (if one of
        them) has it too: what it reads through this node next sees its write."""
        affinity, resp3 = client.id, client.protocol == 3
        local = next((node for node in others if node.local), None)
        if local is None:
            slot.deliver(reply)
            self.write(others, payload, count, affinity, resp3)
            self._release(client)
            return
        nodes = (local, *(node for node in others if node is not local))
        then = _ThenDeliver(self, local, payload, count, slot, reply, lambda: self._release(client))
        self.write(nodes, payload, count, affinity, resp3, sink=then)

    def unwatch(self, client: "ClientConnection") -> None:
        """UNWATCH (and DISCARD, RESET, a client that leaves): the session ends."""
        session = client.session
        if session is not None:
            client.session = None
            session.close()

    def _exec_watched(self, client: "ClientConnection", transaction: Transaction, session: watch.Session) -> None:
        """EXEC after WATCH: MULTI, the commands, their versions' stamp and EXEC on the
        session, where the keys are watched. Nil (a watched key changed) or an error:
        that is the reply, and nothing ran anywhere. Committed: the client gets this
        replica's EXEC reply, and the other replicas the same block (what ran here)."""
        if transaction.aborted:
            session.close()
            self._reply(client, transactions.EXECABORT)
            return
        if transaction.group is not None and transaction.group is not session.group:
            session.close()
            self._reply(client, resp.error("ERR dyno: the transaction's keys and the WATCHed keys have "
                                           "different replicas; nothing of it ran"))
            return
        planner = self.planner
        block, _, write_keys, _ = planner.transaction_block(transaction.queued)
        version = planner.batch_version(False, None) if write_keys else None
        stamp = versions.stamp(write_keys, version, self.versions_db) if version is not None else b""
        extra = versions.STAMP_REPLIES if stamp else 0
        commands_ = b"".join(block)
        slot = ReplySlot(client)
        client.replies.append(slot)
        self.metrics.transactions += 1
        replica = session.replica

        def done(replies) -> None:
            session.close()
            if replies.__class__ is bytes:
                slot.deliver(replies)
            else:
                reply = replies[-1]
                items = watch.split_array(reply)
                if items is not None and extra:
                    reply = resp.array(items[: len(items) - extra])
                others = tuple(node for node in session.group if node is not replica)
                if items is not None and others:
                    self._replicate_then(slot, reply, others, _MULTI + commands_ + _EXEC + stamp,
                                         len(block) + 2 + extra, client)
                    return
                slot.deliver(reply)
            self._release(client)

        client.held = []  # what follows EXEC runs once it ran (and reached this node's replica)
        session.request(_MULTI + commands_ + stamp + _EXEC, len(block) + 2 + extra, done)

    def _run_part_for_client(self, part: Part, client: "ClientConnection") -> None:
        self._count_part(part)
        count = part.count
        replies = client.replies
        if count == 1 or not replies and count <= WHOLE_BATCH:
            if self.sampling:
                dest = self.metrics.timed_slot(client) if count == 1 else self.metrics.timed_batch_slot(client, count)
            else:
                dest = ReplySlot(client) if count == 1 else BatchSlot(client, count)
            replies.append(dest)
        else:
            dest = self._slots(client, count)
        self._dispatch(part, dest, client.id, client.protocol == 3)

    def _count_part(self, part: Part) -> None:
        calls = part.calls
        if calls.__class__ is list:
            counts = self.calls
            for spec in calls:
                counts[spec] += 1
        else:
            self.calls[calls] += part.count

    def _slots(self, client: "ClientConnection", count: int) -> "_Slots":
        """A slot per request, in the client's FIFO."""
        Slot = self.metrics.timed_slot if self.sampling else ReplySlot
        slots = [Slot(client) for _ in range(count)]
        client.replies.extend(slots)
        return _Slots(slots)

    def _run_for_client(self, plan: Plan, client: "ClientConnection", requests: list[list[bytes]]) -> None:
        self._count(plan)
        resp3 = client.protocol == 3
        replies = client.replies
        timed = self.sampling
        size = plan.size
        if replies or size == 1 or size > WHOLE_BATCH:
            Slot = self.metrics.timed_slot if timed else ReplySlot
            slots = [Slot(client) for _ in range(size)]
            replies.extend(slots)
            gather = _Gather(plan, None, slots)
        else:
            slot = self.metrics.timed_batch_slot(client, size) if timed else BatchSlot(client, size)
            replies.append(slot)
            gather = _Gather(plan, slot, None)
        self._run(plan, gather, client.id, resp3, client, requests)

    def _run(self, plan: Plan, gather: _Gather, affinity: int, resp3: bool, client, requests) -> None:
        """A plan of several parts, local answers, errors and merges."""
        if plan.refused:
            self.stats.errors += len(plan.refused)
            for name in plan.refused:
                self.metrics.count_refused(name)
        for position, source in enumerate(plan.sources):
            if source is None:
                continue
            if source is LOCAL:
                self._local(client, requests[position], _Position(gather, position))
            elif source.__class__ is bytes:
                gather.place(position, source)
            else:  # a Merge: its sub-requests' replies, combined
                gather.merge(position, source)
        for part in plan.parts:
            self._dispatch(part, _Placer(gather, part.positions), affinity, resp3)

    def _local(self, client, argv: list[bytes], slot: Sink) -> None:
        """A request the node answers itself (PING, INFO, HELLO, DYNO_CONFIG ...)."""
        spec = commands.resolve(argv)
        reply = self.run_local(client, spec, argv, slot)
        if reply is not None:
            slot.deliver(reply)

    def _count(self, plan: Plan) -> None:
        calls = plan.calls
        if calls.__class__ is list:
            counts = self.calls
            for spec in calls:
                counts[spec] += 1
        elif calls is not None:
            self.calls[calls] += plan.size

    def coordinate_for_dc(self, payload: bytes, sink: Sink, flags: int = 0, count: int = 1,
                          affinity: int = 0) -> None:
        """``count`` writes a node of another datacenter sent (COORDINATE): run them
        at DC_ONE over this datacenter's replicas (the second hop). ``sink`` gets
        their replies (a peer's acknowledgement counts them)."""
        requests = resp.RequestParser().feed(payload)  # the peer server checked: `count` commands
        resp3 = bool(flags & RESP3)
        for requests, raw, version in versions.segments(requests, payload):
            if version is not None and self.observe is not None:
                self.observe(version)  # writes made here later order after it (HLC)
            while requests:
                plan = self.planner.plan(requests, raw, DC_ONE, DC_ONE, here_only=True, version=version)
                if plan.__class__ is tuple:  # a ring of one node (no other datacenter: never)
                    (self.datastore3 if resp3 else self.datastore).send_run(plan[0], _Whole(sink), plan[1],
                                                                            affinity)
                    break
                if plan.__class__ is not Plan:  # a Part answering them all
                    self._dispatch(plan, _Whole(sink), affinity, resp3)
                    break
                self._count(plan)
                self._run(plan, _Gather(plan, _Whole(sink), None), affinity, resp3, None, requests)
                requests = requests[plan.size:]
                raw = None
            if version is not None:  # the stamp's own replies: it is re-made for each part here
                sink.deliver_run(_STAMP_OK, versions.STAMP_REPLIES)

    # -- parts ------------------------------------------------------------------------

    def _dispatch(self, part: Part, dest: Sink, affinity: int, resp3: bool) -> None:
        """Send ``part`` and arrange for its decided replies to reach ``dest``."""
        if part.kind is ONE:
            if part.__class__ is not Part:  # a Special part: its transform, its effect
                if part.transform is not None:
                    dest = _Transformed(dest, part.transform)
                if part.effect is not None:
                    self.send(part.asked[0], part.payload, 1 + part.extra,
                              _Effect(self, part, dest, affinity, resp3, ()), affinity, resp3)
                    return
            asked = part.asked
            if part.write:
                if part.pending:
                    self.write(part.pending, part.payload, part.count + part.extra, affinity, resp3)
                if len(asked) > 1 or part.coordinate:
                    self.by_level[DC_ONE] += part.count
                    run = _Write(self, part, dest, affinity, resp3)
                    sent = part.count + part.extra
                    self.write(asked, part.payload, sent, affinity, resp3, run, echoes=run.echoes)
                    if run.pending is not None:
                        run.sent()
                    if part.coordinate:
                        self.write(part.coordinate, part.payload, sent, affinity, resp3, None, COORDINATE)
                    return
            elif len(part.reserve) > 1:
                self.by_level[DC_ONE] += part.count
                self.send(asked[0], part.payload, part.count,
                          _Read(self, part, dest, affinity, resp3, part.reserve), affinity, resp3)
                if self.read_repair_chance and self._random() < self.read_repair_chance:
                    self.repair_in_background(part, part.reserve)
                return
            # Its only replica (a ring of one node, a request without keys): nothing to
            # fall back on, nobody to tell of a failure but the client. (Not stamped:
            # a key of one replica has nothing to be reconciled with.)
            self.send(asked[0], part.payload, part.count, dest, affinity, resp3)
            return
        else:
            self.by_level[part.level] += part.count
            if part.pending:
                self.write(part.pending, part.payload, part.count + part.extra, affinity, resp3)
            run = _Quorum(self, part, dest, affinity, resp3, self.local_dc)
            for index in range(len(part.asked)):
                run.ask(index)
            if part.reserve and not run.quorum.done and run.asked < len(run.targets):
                self.hedge(run)
                run.listed = True
        if part.coordinate:
            self.write(part.coordinate, part.payload, part.count + part.extra, affinity, resp3, None,
                       COORDINATE)

    def send(self, node: "RingNode", payload: bytes, count: int, sink: Sink, affinity: int,
             resp3: bool) -> None:
        """``count`` requests to ``node``; their replies (or failures) reach ``sink``."""
        if node.local and not self.sampling:
            (self.datastore3 if resp3 else self.datastore).send_run(payload, sink, count, affinity)
            return
        if self.sampling:
            sink = TimedSink(sink, self.metrics.datastore_latency if node.local
                             else self.metrics.peer_histogram(node.name), count)
        if node.local:
            (self.datastore3 if resp3 else self.datastore).send_run(payload, sink, count, affinity)
            return
        link = self.link_of(node.name)
        if link is None:
            sink.fail(resp.error(f"ERR dyno: no link to peer {node.name}"))
            return
        link.send_batch(payload, sink, RESP3 if resp3 else 0, count)

    def write(self, nodes: tuple, payload: bytes, count: int, affinity: int, resp3: bool,
              sink: Sink | None = None, flags: int = 0, echoes: list | None = None) -> list:
        """The one place replica writes leave the node: ``count`` writes
        (``payload``) to each of ``nodes``. With ``sink``, ``nodes[0]``'s replies go
        to it; the others' (all of them, without) go in the background, and their
        echoes, ``(echo, offset)``, are returned in order (dyno.peer._Frame). A
        failure reaches ``write_failed``: through the sink, the echo's frame, or
        here. ``flags``: COORDINATE for a node of another datacenter, which
        coordinates the writes there. ``echoes``: the list to add them to."""
        if echoes is None:
            echoes = []
        if resp3:
            flags |= RESP3
        if sink is not None:
            # First, as its reply answers the client (measured: sent after the others,
            # the peers' CPU per write rose a fifth). If it fails at once, _Write waits
            # for the others' echoes below before it falls back on them.
            self.send(nodes[0], payload, count, sink, affinity, resp3)
        for node in nodes[1:] if sink is not None else nodes:
            if node.local:
                echo = _LocalEcho(count)
                self.send(node, payload, count, _Echoing(self, node, payload, count, echo), affinity, resp3)
                echoes.append((echo, 0))
                continue
            link = self.link_of(node.name)
            if link is None:
                error = resp.error(f"ERR dyno: no link to peer {node.name}")
                self.write_failed(node, payload, count, error, flags & COORDINATE)
                echoes.append((_FailedEcho(error), 0))
            else:
                echoes.append(link.send_background(payload, count, flags))
        return echoes

    # -- read repair ----------------------------------------------------------------

    def read_repair(self, run: "_Quorum", result: bytes) -> bool:
        """A quorum read whose replicas disagree (``result``, the error it would
        get): repair its keys on every replica (the newest version wins, dyno.repair)
        and ask them again; the read is answered then. False if read repair is off."""
        if self.repair_keys is None or self.spawn is None:
            return False
        self.spawn(self._repair_and_ask_again, run, result)
        return True

    async def _repair_and_ask_again(self, run: "_Quorum", result: bytes) -> None:
        part = run.part
        try:
            await self.repair_keys(part_keys(part), run.targets)
            self.metrics.read_repairs += 1
        except Exception as exc:  # the replicas could not be repaired: the read fails as it was
            self.metrics.read_repair_failures += 1
            log.warning("read repair failed: %s", exc)
            self.decided_error(result, part)
            run.dest.deliver_run(result, part.count)
            return
        again = _Quorum(self, part, run.dest, run.affinity, run.resp3, self.local_dc)
        again.repaired = True
        for index in range(len(part.asked)):
            again.ask(index)
        again.widen()  # every replica: the newest value is now on all of them

    def repair_in_background(self, part: Part, targets: tuple) -> None:
        """A replica answered differently from the value decided (or a DC_ONE read
        was picked by read_repair_chance): repair the part's keys, nobody waits."""
        if self.repair_keys is None or self.spawn is None:
            return
        self.spawn(self._repair_quietly, part, targets)

    async def _repair_quietly(self, part: Part, targets: tuple) -> None:
        try:
            await self.repair_keys(part_keys(part), targets)
            self.metrics.read_repairs += 1
        except Exception as exc:
            self.metrics.read_repair_failures += 1
            log.warning("background read repair failed: %s", exc)

    async def call(self, node: "RingNode", payload: bytes, count: int, flags: int = 0) -> bytes:
        """Send ``count`` requests to ``node`` (its Redis, or the peer: COORDINATE in
        ``flags`` to have it coordinate them for its datacenter) and wait for their
        replies, joined; a failure of the target comes back as error replies. For
        the node's own work (hint replay, read repair, repair), not clients'."""
        sink = _Awaited(count)
        if node.local:
            self.datastore.send_run(payload, sink, count, 0)
        else:
            link = self.link_of(node.name)
            if link is None:
                return resp.error(f"ERR dyno: no link to peer {node.name}") * count
            link.send_batch(payload, sink, flags, count)
        await sink.event.wait()
        if sink.error is not None:
            return sink.error * count
        return b"".join(sink.parts)

    def write_failed(self, node: "RingNode", payload: bytes, count: int, error: bytes,
                     flags: int = 0) -> None:
        """``count`` writes (``payload``, a stamp included) did not reach ``node``, or
        may not have: the one place such a failure is reported, whoever sent them.
        They are kept as a hint for ``node`` (``on_write_failed``: hinted handoff),
        to be replayed once it is back; ``flags``: COORDINATE if ``node`` was to
        coordinate them for its datacenter."""
        self.metrics.write_failures += count
        self.replica_failed(error, count)
        if self.on_write_failed is not None:
            self.on_write_failed(node, payload, count, flags)

    def unstamp(self, replies: bytes, n: int, keep: int) -> tuple[bytes, int]:
        """The first ``keep`` of ``n`` replies: the rest are a stamp's (dyno.versions),
        +OK unless the versions could not be recorded (counted, logged)."""
        dropped = n - keep
        if replies.endswith(_STAMP_OK[: 5 * dropped]):
            return (replies[: len(replies) - 5 * dropped] if keep else b""), keep
        parts = resp.split_replies(replies, n)
        if parts is None:
            return replies, n  # cannot happen with whole replies; pass them on unchanged
        self.stamp_failed(parts[keep:])
        return b"".join(parts[:keep]), keep

    def stamp_failed(self, replies: list[bytes]) -> None:
        errors = [reply for reply in replies if reply[:1] == b"-"]
        if errors:
            self.metrics.stamp_failures += 1
            now = time.monotonic()
            if now - self._last_stamp_log >= 1.0:
                self._last_stamp_log = now
                log.warning("recording a version failed (versions_db %d): %s", self.versions_db,
                            errors[0][1:-2].decode(errors="replace"))

    def replica_failed(self, error: bytes, count: int = 1) -> None:
        """Count replica requests that could not be answered; log at most once a second."""
        self.stats.replica_failures += count
        self._failures_since_log += count
        now = time.monotonic()
        if now - self._last_failure_log >= 1.0:
            log.warning(
                "%d replica request(s) failed in the last %.0f s, latest: %s",
                self._failures_since_log, now - self._last_failure_log if self._last_failure_log else 0,
                error[1:-2].decode(errors="replace"),
            )
            self._last_failure_log = now
            self._failures_since_log = 0

    def decided_error(self, result: bytes, part: Part) -> None:
        """A replicated request was answered with an error: count quorum failures."""
        if result.startswith(b"-ERR dyno: ") and b" not achieved" in result:
            self.metrics.failures_by_level[part.level] += 1
            if b"disagree\r\n" in result:
                self.metrics.disagreements += 1

    def hedge(self, run) -> None:
        """List quorum read ``run`` for hedge_reads to widen if it is still undecided
        after one to two ticks."""
        self.hedged[id(run)] = (self._hedge_tick, run)
        if self._hedger.parked:
            self._hedger.wake()

    async def hedge_reads(self) -> None:
        """Widen the quorum reads whose first replicas have not decided them within
        one to two HEDGE_TICKs (a replica slow, or dead but not yet known to be):
        the read then waits for the fastest Q of all replicas, as if it had gone to
        every one. One sweep per tick over the reads still undecided; after
        HEDGE_PARK_AFTER ticks with none, parked until ``hedge`` lists one (which the
        next tick but one still widens: the tick count stood still meanwhile)."""
        hedged = self.hedged
        quiet = 0
        while True:
            if hedged:
                quiet = 0
            else:
                quiet += 1
                if quiet > HEDGE_PARK_AFTER:
                    await self._hedger.wait()
                    quiet = 0
            await trio.sleep(HEDGE_TICK)
            tick = self._hedge_tick
            self._hedge_tick = tick + 1
            late = []
            for asked_at, run in hedged.values():  # oldest first
                if asked_at >= tick:
                    break  # asked less than a full tick ago: the next sweep
                late.append(run)
            for run in late:
                try:
                    run.widen()
                except Exception:  # a bug must cost this read, never the node
                    log.exception("widening a quorum read failed")
                    hedged.pop(id(run), None)
                    if not run.quorum.done:
                        run.quorum.done = True
                        error = resp.error("ERR dyno: internal error widening a quorum read")
                        run.dest.deliver_run(error * run.part.count, run.part.count)


class _ThenDeliver(Sink):
    """Delivers a reply decided elsewhere once ``count`` replies of a write to ``node``
    came in (or it failed: then the write is reported, and will be hinted)."""

    __slots__ = ("after", "coordinator", "count", "node", "payload", "reply", "slot", "total")
    runs = True

    def __init__(self, coordinator, node, payload: bytes, count: int, slot: Sink, reply: bytes,
                 after: Callable[[], None]):
        self.after = after
        self.coordinator = coordinator
        self.node = node
        self.payload = payload
        self.count = self.total = count
        self.slot = slot
        self.reply = reply

    def deliver(self, reply: bytes) -> None:
        self.deliver_run(reply, 1)

    def deliver_run(self, replies: bytes, n: int) -> None:
        self.count -= n
        if self.count <= 0 and self.slot is not None:
            self.slot.deliver(self.reply)
            self.slot = None
            self.after()

    def deliver_parts(self, replies: list[bytes]) -> None:
        self.deliver_run(b"", len(replies))

    deliver_each = deliver_parts

    def fail(self, error: bytes) -> None:
        if self.slot is not None:
            self.coordinator.write_failed(self.node, self.payload, self.total, error, 0)
            self.slot.deliver(self.reply)
            self.slot = None
            self.after()


_MULTI = resp.encode_command([b"MULTI"])
_EXEC = resp.encode_command([b"EXEC"])


def _exec_reply(replies: list[bytes]) -> bytes:
    """A transaction's replies (MULTI's, the +QUEUED ones, EXEC's): the client gets EXEC's."""
    return replies[-1]


def part_keys(part: Part) -> list[bytes]:
    """The keys a part's requests name (read repair repairs them)."""
    keys: list[bytes] = []
    for argv in resp.RequestParser().feed(part.payload)[: part.count]:
        spec = commands.resolve(argv)
        if spec.__class__ is not bytes:
            keys += commands.keys(spec, argv)
    return list(dict.fromkeys(keys))


class _Awaited(Sink):
    """Replies someone awaits (Coordinator.call): all ``count`` of them, or a failure."""

    __slots__ = ("event", "parts", "left", "error")
    runs = True

    def __init__(self, count: int):
        self.event = trio.Event()
        self.parts: list[bytes] = []
        self.left = count
        self.error: bytes | None = None

    def deliver_run(self, replies: bytes, n: int) -> None:
        self.parts.append(replies)
        self.left -= n
        if self.left <= 0:
            self.event.set()

    def deliver(self, reply: bytes) -> None:
        self.deliver_run(reply, 1)

    def deliver_each(self, replies: list[bytes]) -> None:
        self.deliver_run(b"".join(replies), len(replies))

    def fail(self, error: bytes) -> None:
        if self.error is None:
            self.error = error
        self.event.set()


class _Echoing(Sink):
    """A background write to the node's own Redis: its replies to the echo, its
    failure reported (once) to ``write_failed``."""

    __slots__ = ("coordinator", "node", "payload", "count", "echo", "reported")
    runs = True

    def __init__(self, coordinator, node, payload, count, echo):
        self.coordinator = coordinator
        self.node = node
        self.payload = payload
        self.count = count
        self.echo = echo
        self.reported = False

    def deliver_run(self, replies: bytes, n: int) -> None:
        self.echo.deliver_run(replies, n)

    def deliver(self, reply: bytes) -> None:
        self.echo.deliver_run(reply, 1)

    def fail(self, error: bytes) -> None:
        if not self.reported:
            self.reported = True
            self.coordinator.write_failed(self.node, self.payload, self.count, error)
        self.echo.fail(error)
