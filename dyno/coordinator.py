"""The coordinator: for each client request, decide who answers it and how.

Every batch of requests a client sent in one read goes through ``execute_batch``.
The command table says what each command is (route, keys, read or write); the ring
says which node owns a key in each rack; the consistency level says which replicas
are asked and when the client is answered (DESIGN.md §4):

* reads at DC_ONE go to the first *available* replica, local rack first - if the
  local-rack owner is down another rack answers (Dynomite returns an error);
* writes go to the owner in every rack of the local DC, and to one node per remote
  DC which fans out there (2 hops); at DC_EACH_SAFE_QUORUM straight to every replica;
* a ``QuorumTracker`` decides when the client is answered and with what. Replicas
  the client does not wait for still report to a sink that counts and logs their
  failures: nothing is fire-and-forget.

Multi-key commands are split per owner and merged (``dyno.merge``); commands whose
keys must live together run only when they do (hash tags), else ``-CROSSSLOT``.
A target is anything with ``send(payload, sink)``: the node's own datastore or a
peer link. When a whole read goes to the local datastore and was canonically
encoded, its bytes are forwarded as they came (DESIGN.md §10 rule 4).
This module never touches a socket.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

import trio

from dyno import commands, merge, node_commands, resp
from dyno.client import BatchSlot, ReplySlot
from dyno.commands import Merge, Route
from dyno.consistency import LocalQuorum, QuorumTracker
from dyno.datastore import Sink
from dyno.peer import COORDINATE, RESP3
from dyno.metrics import SAMPLE_EVERY, TimedSink
from dyno.states import STANDBY

if TYPE_CHECKING:
    from dyno.client import ClientConnection
    from dyno.node import Node
    from dyno.ring import RingNode

log = logging.getLogger("dyno.coordinator")

_KEY, _MULTI_KEY, _ONE_REPLICA, _ALL_REPLICAS, _LOCAL = (
    Route.KEY, Route.MULTI_KEY, Route.ONE_REPLICA, Route.ALL_REPLICAS, Route.LOCAL,
)
DC_ONE = "DC_ONE"
DC_EACH_SAFE_QUORUM = "DC_EACH_SAFE_QUORUM"
# A quorum read first goes to Q replicas; the others are asked too if those have not
# decided it after one to two ticks (Coordinator.hedge_reads).
HEDGE_TICK = 0.025


class _Replica(Sink):
    """One replica's part in a replicated request. A reply arriving after the
    request was decided that differs from the decided reply is counted as a
    replica disagreement (dyno.metrics)."""

    __slots__ = ("tracker", "index", "sink", "coordinator", "level")

    def __init__(self, tracker: QuorumTracker, index: int, sink: Sink, coordinator: "Coordinator", level: str):
        self.tracker = tracker
        self.index = index
        self.sink = sink
        self.coordinator = coordinator
        self.level = level

    def deliver(self, reply: bytes) -> None:
        self.coordinator.replica_replied(self.tracker, self.index, reply, self.sink, self.level)

    def fail(self, error: bytes) -> None:
        self.coordinator.replica_could_not(self.tracker, self.index, error, self.sink, self.level)


class _BatchQuorum:
    """A client's read of n requests sent whole to local-DC replicas at DC_QUORUM /
    DC_SAFE_QUORUM, decided whole when it can be.

    Each replica's n replies arrive concatenated. If Q replicas' concatenations are
    byte-identical, every request has Q identical replies: that is the answer, with
    no per-request work (the common case). Otherwise each request is decided by its
    own tracker over the replies split back out, which is the per-request logic
    exactly; it runs only once enough outcomes are in to decide every request.

    The read goes to Q replicas first; the others are held in ``reserve`` and asked
    (``widen``) only if those Q cannot decide it: they disagree, one fails, or they
    are slow (Coordinator.hedge_reads). What the client gets is what asking every
    replica at once would give when the first Q to answer are those asked."""

    __slots__ = (
        "coordinator", "level", "slot", "count", "outcomes", "order", "needed", "done",
        "asked", "reserve", "group", "payload", "datastore", "flags",
    )

    def __init__(self, coordinator: "Coordinator", level: str, slot: Sink, count: int, replicas: int):
        self.coordinator = coordinator
        self.level = level
        self.slot = slot
        self.count = count
        self.outcomes: list[tuple[bool, bytes] | None] = [None] * replicas
        self.order: list[int] = []  # replicas in the order their outcomes came
        self.needed = replicas // 2 + 1
        self.done = False
        self.asked = replicas  # replicas the read has gone to
        self.reserve: list[int] = []  # replicas not asked yet
        # What ``ask`` sends where (set by Coordinator._replicate_batch).
        self.group: list[RingNode] = []
        self.payload = b""
        self.datastore = None
        self.flags = 0

    def ask(self, index: int) -> None:
        """Send the read to replica ``index`` of the group."""
        replica = self.group[index]
        count = self.count
        if replica.local:
            gather = _WholeReplies(self, index, count, whole=False)
            self.datastore.send_run(self.payload, gather, count)
        else:
            gather = _WholeReplies(self, index, count, whole=True)
            self.coordinator.links[replica.name].send_batch(self.payload, gather, self.flags)

    def arrived(self, index: int, replies: bytes) -> None:
        self.outcomes[index] = (True, replies)
        self.order.append(index)
        if self.done:
            if replies != self.slot.data:
                self.coordinator.metrics.disagreements += 1
            return
        same = sum(1 for outcome in self.outcomes if outcome is not None and outcome[1] == replies and outcome[0])
        if same >= self.needed:
            self._decide(replies)
            return
        if same < len(self.order):
            # Some outcome differs from this one: per request, replicas may agree
            # where the whole batches do not. (If all so far are identical, every
            # request has exactly `same` agreeing replies: undecided as a whole.)
            self._try_each()
        if not self.done and self.reserve and len(self.order) == self.asked:
            self.widen()

    def failed(self, index: int, error: bytes) -> None:
        self.coordinator.replica_failed(error, self.count)
        self.outcomes[index] = (False, error)
        self.order.append(index)
        if not self.done:
            self._try_each()
            if not self.done and self.reserve:
                self.widen()

    def widen(self) -> None:
        """Ask the replicas held in reserve: those asked could not decide."""
        reserve = self.reserve
        if self.done or not reserve:
            return
        self.reserve = []
        self.coordinator.quorum_reads.pop(id(self), None)
        self.asked += len(reserve)
        self.coordinator.metrics.widened_reads += 1
        for index in reserve:  # an ask may fail at once and decide the read
            self.ask(index)

    def _try_each(self) -> None:
        """Decide request by request, if the outcomes so far decide them all."""
        replicas = len(self.outcomes)
        trackers = [LocalQuorum(self.level, replicas) for _ in range(self.count)]
        for index in self.order:  # replayed as they came: error texts count them
            ok, data = self.outcomes[index]
            parts = resp.split_replies(data, self.count) if ok else None
            for position, tracker in enumerate(trackers):
                if parts is None:
                    tracker.failure(index, data if not ok else _UNSPLITTABLE)
                else:
                    tracker.reply(index, parts[position])
        if all(tracker.done for tracker in trackers):
            coordinator = self.coordinator
            for tracker in trackers:
                if tracker.result[:1] == b"-":
                    coordinator.decided_error(tracker.result, self.level)
            self._decide(b"".join(tracker.result for tracker in trackers))

    def _decide(self, replies: bytes) -> None:
        self.done = True
        if self.reserve:
            self.coordinator.quorum_reads.pop(id(self), None)
        self.slot.deliver(replies)


_UNSPLITTABLE = resp.error("ERR dyno: a replica's replies could not be split")


class _Gather:
    """The replies of a client's batch that went out in parts (one per replica
    set), put back in the client's order; ``slot`` gets them all once the last
    part is in."""

    __slots__ = ("slot", "replies", "missing")

    def __init__(self, slot: Sink, count: int, parts: int):
        self.slot = slot
        self.replies = [b""] * count
        self.missing = parts


class _GatherPart(Sink):
    """One part of a _Gather: the replies, in order, of the requests at
    ``positions``, as many at a time as the target hands over."""

    __slots__ = ("gather", "positions", "filled")
    runs = True  # a local target's replies come as a read holds them ...
    split = True  # ... and apart, as the datastore reader found them

    def __init__(self, gather: _Gather, positions: list[int]):
        self.gather = gather
        self.positions = positions
        self.filled = 0

    def deliver(self, reply: bytes) -> None:
        self.deliver_parts((reply,))

    def deliver_run(self, replies: bytes, n: int) -> None:
        self.deliver_parts(resp.split_replies(replies, n) or [_UNSPLITTABLE] * n)

    def deliver_parts(self, replies) -> None:
        gather = self.gather
        gathered = gather.replies
        positions = self.positions
        filled = self.filled
        for reply in replies:
            gathered[positions[filled]] = reply
            filled += 1
        self.filled = filled
        if filled == len(positions):
            gather.missing -= 1
            if not gather.missing:
                gather.slot.deliver(b"".join(gathered))


def _split_decided(replies: bytes, count: int) -> list[bytes]:
    """The ``count`` replies a _BatchQuorum decided, joined, cut apart (one error
    that stands for all of them is each one's)."""
    split = resp.split_replies(replies, count)
    if split is None:
        split = [replies if replies[:1] == b"-" else _UNSPLITTABLE] * count
    return split


class _GatheredQuorum(_GatherPart):
    """A _GatherPart that is a _BatchQuorum's slot: the part's replies come
    decided, joined, in one delivery (and ``data`` keeps them: the quorum compares
    late replicas with it)."""

    __slots__ = ("data",)

    def __init__(self, gather: _Gather, positions: list[int]):
        super().__init__(gather, positions)
        self.data: bytes | None = None

    def deliver(self, replies: bytes) -> None:
        self.data = replies
        self.deliver_parts(_split_decided(replies, len(self.positions)))


class _SpreadQuorum(Sink):
    """A _BatchQuorum's slot standing for one slot per request (a client with other
    requests in flight, whose slots the back-pressure limit counts): the decided
    replies, cut apart, one to each."""

    __slots__ = ("slots", "data")

    def __init__(self, slots: list[Sink]):
        self.slots = slots
        self.data: bytes | None = None

    def deliver(self, replies: bytes) -> None:
        self.data = replies
        for slot, reply in zip(self.slots, _split_decided(replies, len(self.slots))):
            slot.deliver(reply)


class _WholeReplies(Sink):
    """One replica's replies to a _BatchQuorum's requests, gathered whole: the local
    datastore delivers them as many at a time as a read holds (``send_run``: one
    FIFO entry for ``count`` requests); a peer sends them in one frame
    (``send_batch`` reads ``count``)."""

    __slots__ = ("quorum", "index", "count", "parts", "error", "whole", "received")
    runs = True  # a local replica's replies (whole=False) come from the datastore

    def __init__(self, quorum: _BatchQuorum, index: int, count: int, whole: bool):
        self.quorum = quorum
        self.index = index
        self.count = count
        self.parts: list[bytes] = []
        self.error: bytes | None = None
        self.whole = whole  # a peer's frame: one delivery holds all the replies
        self.received = 0

    def deliver(self, reply: bytes) -> None:
        if self.whole:
            self.quorum.arrived(self.index, reply)
            return
        self.deliver_run(reply, 1)

    def deliver_run(self, replies: bytes, n: int) -> None:
        self.parts.append(replies)
        self.received += n
        if self.received == self.count:
            if self.error is None:
                self.quorum.arrived(self.index, b"".join(self.parts))
            else:
                self.quorum.failed(self.index, self.error)

    def fail(self, error: bytes) -> None:
        if self.whole:
            self.quorum.failed(self.index, error)
            return
        if self.error is None:
            self.error = error
        self.deliver_run(b"", 1)


# Replies whose order Redis does not define: a set kept in a hashtable iterates in an
# order that depends on a per-process seed, so replicas holding the same set answer
# SMEMBERS with different bytes. Quorum compares them in a canonical (sorted) form.
UNORDERED_REPLIES = frozenset({
    b"smembers", b"sinter", b"sunion", b"sdiff", b"hgetall", b"hkeys", b"hvals",
})
# Reads whose answer is random by design: replicas can never agree, any one is right.
RANDOM_READS = frozenset({b"srandmember", b"hrandfield", b"zrandmember"})


def _spop_effect(argv: list[bytes], reply: bytes) -> list[bytes] | None:
    """SPOP key [count] -> SREM key <the members it popped>."""
    if reply[:1] == b"$":
        if reply == resp.NULL_BULK:
            return None
        members = [reply[reply.index(b"\r\n") + 2 : -2]]
    elif reply[:1] in (b"*", b"~"):
        members = [item[item.index(b"\r\n") + 2 : -2] for item in merge.array_items(reply)]
    else:
        return None
    return [b"SREM", argv[1], *members] if members else None


def _xadd_effect(argv: list[bytes], reply: bytes) -> list[bytes] | None:
    """XADD key ... * field value ... -> the same with the ID the first replica chose."""
    if reply[:1] != b"$" or reply == resp.NULL_BULK:
        return None
    chosen = reply[reply.index(b"\r\n") + 2 : -2]
    position = _xadd_id_position(argv)
    if position is None:
        return None
    return [*argv[:position], chosen, *argv[position + 1 :]]


def _xadd_id_position(argv: list[bytes]) -> int | None:
    """Index of XADD's ID argument (after NOMKSTREAM, MAXLEN/MINID [=|~] n [LIMIT n])."""
    i = 2
    while i < len(argv):
        word = argv[i].upper()
        if word == b"NOMKSTREAM":
            i += 1
        elif word in (b"MAXLEN", b"MINID"):
            i += 2 if i + 1 < len(argv) and argv[i + 1] not in (b"=", b"~") else 3
        elif word == b"LIMIT":
            i += 2
        else:
            return i
    return None


# Writes whose effect is chosen by the replica that runs them (a random member, a
# time-based ID): run once, then replicate what they did, so replicas stay identical.
REPLICATE_EFFECT = {b"spop": _spop_effect, b"xadd": _xadd_effect}

# The commands _replicate_batch may forward as a whole read: one key, routed by it,
# replies that compare as bytes, and an effect every replica computes alike.
BATCHABLE = frozenset(
    spec.name
    for top in commands.COMMANDS.values()
    for spec in (top, *(top.subcommands or {}).values())
    if spec.route is _KEY and spec.fixed_keys == (1,) and spec.name not in UNORDERED_REPLIES
    and spec.name not in RANDOM_READS and spec.name not in REPLICATE_EFFECT
)
# Reads it may forward at DC_ONE only, where one replica's reply is the answer:
# their replicas' replies do not compare as bytes (a quorum could not decide them
# whole).
BATCHABLE_AT_ONE = frozenset(
    spec.name
    for top in commands.COMMANDS.values()
    for spec in (top, *(top.subcommands or {}).values())
    if spec.route is _KEY and spec.fixed_keys == (1,) and not spec.write
    and (spec.name in UNORDERED_REPLIES or spec.name in RANDOM_READS)
)
# Multi-key commands (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH) it may forward whole
# when all their keys have one replica set: Redis's reply is then the merged one.
WHOLE_IF_COLOCATED = frozenset(
    spec.name for spec in commands.COMMANDS.values() if spec.route is _MULTI_KEY
)


def canonical(reply: bytes) -> bytes:
    """An unordered collection reply with its elements (or a map's pairs) sorted."""
    kind = reply[:1]
    if kind in (b"*", b"~"):
        items = merge.array_items(reply)
        return reply[: reply.index(b"\r\n") + 2] + b"".join(sorted(items))
    if kind == b"%":
        newline = reply.index(b"\r\n")
        items = merge.array_items(b"*%d" % (2 * int(reply[1:newline])) + reply[newline:])
        pairs = sorted(zip(items[::2], items[1::2]))
        return reply[: reply.index(b"\r\n") + 2] + b"".join(k + v for k, v in pairs)
    return reply


class _CanonicalReplica(_Replica):
    """A replica of an UNORDERED_REPLIES read: compared sorted, and answered as one
    of the agreeing replicas sent it (HKEYS and HVALS of a small hash keep
    Redis's order, which pairs them up). ``sink`` is the request's _Uncanonical."""

    __slots__ = ()

    def deliver(self, reply: bytes) -> None:
        key = canonical(reply)
        self.sink.originals.setdefault(key, reply)
        _Replica.deliver(self, key)


class _Uncanonical(Sink):
    """Turns the canonical reply a quorum decided back into a replica's own bytes."""

    __slots__ = ("sink", "originals")

    def __init__(self, sink: Sink):
        self.sink = sink
        self.originals: dict[bytes, bytes] = {}

    def deliver(self, reply: bytes) -> None:
        self.sink.deliver(self.originals.get(reply, reply))

    def fail(self, error: bytes) -> None:
        self.sink.fail(error)


class _RunOnceThenReplicate(Sink):
    """The reply of a REPLICATE_EFFECT write run on one replica: answer the client,
    then send the other replicas the deterministic form of what it did."""

    __slots__ = ("coordinator", "argv", "sink", "others", "effect")

    def __init__(self, coordinator, argv, sink, others, effect):
        self.coordinator = coordinator
        self.argv = argv
        self.sink = sink
        self.others = others
        self.effect = effect

    def deliver(self, reply: bytes) -> None:
        self.sink.deliver(reply)
        if reply[:1] == b"-":
            return
        rewritten = self.effect(self.argv, reply)
        if rewritten is None:
            return
        payload = resp.encode_command(rewritten)
        coordinator = self.coordinator
        for replica in self.others:
            coordinator._send(replica, payload, _Background(coordinator))

    def fail(self, error: bytes) -> None:
        self.sink.deliver(error)


class _Background(Sink):
    """A replica write the client does not wait for (a remote DC): its failure is
    still counted and logged (hinted handoff will pick these up)."""

    __slots__ = ("coordinator",)

    def __init__(self, coordinator: "Coordinator"):
        self.coordinator = coordinator

    def deliver(self, reply: bytes) -> None:
        pass

    def fail(self, error: bytes) -> None:
        self.coordinator.replica_failed(error)


class _BatchSplit(Sink):
    """The replies of a batch sent to one peer: hand each to its request's sink
    (a list of them from a peer; joined bytes, split here, for a batch of one)."""

    __slots__ = ("sinks", "count")

    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks
        self.count = len(sinks)

    def deliver(self, replies: bytes) -> None:
        sinks = self.sinks
        scan = resp.scan_reply
        pos = 0
        size = len(replies)
        for index, sink in enumerate(sinks):
            end = scan(replies, pos) if pos < size else -1
            if end < 0:
                error = resp.error(f"ERR dyno: a peer answered {index} of {len(sinks)} requests")
                for rest in sinks[index:]:
                    rest.fail(error)
                return
            sink.deliver(replies[pos:end])
            pos = end

    def fail(self, error: bytes) -> None:
        for sink in self.sinks:
            sink.fail(error)

    def deliver_each(self, replies: list[bytes]) -> None:
        for sink, reply in zip(self.sinks, replies):
            sink.deliver(reply)


def _parts(groups: list) -> list[tuple]:
    """The distinct objects of ``groups``, compared by identity (the ring interns
    replica sets), each with the positions where it occurs, in first-seen order."""
    parts: dict[int, tuple] = {}
    for position, group in enumerate(groups):
        part = parts.get(id(group))
        if part is None:
            parts[id(group)] = (group, [position])
        else:
            part[1].append(position)
    return list(parts.values())


def _cutter(requests: list[list[bytes]], raw: bytes):
    """A function that gives the bytes of the requests at some positions, cut
    from ``raw``, their canonical encoding."""
    offsets = [0]
    end = 0
    for length in map(resp.encoded_length, requests):
        end += length
        offsets.append(end)

    def cut(positions: list[int]) -> bytes:
        return b"".join([raw[offsets[i] : offsets[i + 1]] for i in positions])

    return cut


class Coordinator:
    def __init__(self, node: "Node"):
        self.node = node
        self.config = node.config
        # The datastore pool and peer flags of the client whose batch is being run:
        # RESP3 clients are served by connections that said HELLO 3, so replies are
        # relayed as Redis wrote them in either protocol. Set at the start of every
        # batch; the whole batch is dispatched before anything else runs.
        self.datastore = node.datastore
        self.link_flags = 0
        self.stats = node.stats
        self.ring = node.ring
        self.links = node.peer_links
        self.metrics = node.metrics
        self.calls = node.metrics.calls  # requests per command
        self.admin_down = node.admin_down  # the node's set, changed in place
        # The plain path of execute_batch costs one decrement: when ``countdown``
        # reaches 0 the batch goes to ``_execute_special`` instead, to be timed (one in
        # SAMPLE_EVERY, dyno.metrics) or, while ``refusing``, filtered by node state.
        self.countdown = SAMPLE_EVERY
        # Quorum reads asked of Q replicas and not decided yet, oldest first:
        # id -> (tick asked, _BatchQuorum). A read leaves it when decided or
        # widened, so nothing is kept alive past its answer (objects that outlive
        # a few GC generations made the cyclic GC a tenth of a node's time).
        self.quorum_reads: dict[int, tuple[int, _BatchQuorum]] = {}
        self._hedge_tick = 0
        self._read_turn = 0  # this node's rack's place in its DC: which peer reads ask first
        self.refusing = False  # the node is in STANDBY or WRITES_ONLY (set_refusing)
        self.sampling = False  # the current batch is timed: targets time their part
        self.slot_class = ReplySlot  # a timed subclass while sampling
        self._standby_error = resp.error(
            "ERR dyno: node is in STANDBY (set by an operator on the admin port); it serves "
            "no reads or writes until /state/normal"
        )
        self._writes_only_error = resp.error(
            "ERR dyno: node is in WRITES_ONLY (set by an operator on the admin port); it "
            "accepts writes but serves no reads until /state/normal"
        )
        self.set_ring(node.ring)
        self._last_failure_log = 0.0
        self._failures_since_log = 0
        self.crossslot = resp.error(
            "CROSSSLOT Keys in request don't hash to the same slot "
            "(dyno: they have different owners; "
            + (
                "put the common part of the keys in a hash tag, e.g. {user1}:a and {user1}:b)"
                if self.config.hash_tag
                else "set hash_tag: '{}' in the config and put the common part of the keys in {...})"
            )
        )

    # -- the batch ------------------------------------------------------------------

    def execute_batch(
        self, client: "ClientConnection", requests: list[list[bytes]], raw: bytes | None
    ) -> None:
        """Run ``requests`` for ``client``; each gets a reply slot in the client's
        FIFO, in order. ``raw``, if not None, is their canonical encoding as read."""
        self.stats.commands += len(requests)
        self._use_protocol(client.protocol)
        self.countdown -= 1
        if not self.countdown:
            self._execute_special(client, requests, raw)
            return
        Slot = self.slot_class
        if raw is not None and self.solo and not client.replies and not self.sampling:
            if self._solo_batch(client, requests, raw):
                return
        if raw is not None and not self.solo:
            if self._replicate_batch(client, requests, raw, Slot):
                return
        replies = client.replies
        resolve = commands.resolve
        last = None  # requests per command are counted by runs of one command
        run = 0
        local_only: list[list[bytes]] = []  # requests the local datastore answers alone
        local_slots: list[ReplySlot] = []
        solo = self.solo
        for argv in requests:
            slot = Slot(client)
            replies.append(slot)
            spec = resolve(argv)
            if spec.__class__ is bytes:
                raw = None
                slot.data = self._refused(client, argv, spec)
                continue
            if spec is last:
                run += 1
            else:
                if run:
                    self.calls[last] += run
                last = spec
                run = 1
            route = spec.route
            if solo and (route is _KEY or route is _MULTI_KEY or route is _ONE_REPLICA or route is _ALL_REPLICAS):
                if route is _ALL_REPLICAS and not self._flush_allowed(spec, slot):
                    raw = None
                    continue
                local_only.append(argv)
                local_slots.append(slot)
                continue
            raw = None
            if route is _KEY:
                self._key_command(client, spec, argv, slot)
            elif route is _LOCAL:
                protocol = client.protocol
                reply = node_commands.run(self.node, client, spec, argv, slot)
                if reply is not None:
                    slot.data = reply
                if client.closing:  # QUIT: what follows it is not run
                    break
                if client.protocol != protocol:
                    # HELLO or RESET: the requests after it are served in the
                    # new protocol, those before it in the old one.
                    self._send_local_only(client, local_only, local_slots, None)
                    local_only, local_slots = [], []
                    self._use_protocol(client.protocol)
            elif route is _MULTI_KEY:
                self._multi_key(client, spec, argv, slot)
            elif route is _ONE_REPLICA:
                self._one_replica(client, spec, argv, slot)
            elif route is _ALL_REPLICAS:
                if self._flush_allowed(spec, slot):
                    self._all_replicas(argv, slot)
            else:
                slot.data = resp.error(f"ERR dyno: '{spec.name.decode()}' cannot be routed")
        if run:
            self.calls[last] += run
        self._send_local_only(client, local_only, local_slots, raw)

    def _send_local_only(self, client, requests: list[list[bytes]], slots: list[Sink], raw: bytes | None) -> None:
        """A ring of one node: the batch's requests for Redis, in one go."""
        if not slots:
            return
        if self.sampling:  # the batch's last request stands for its datastore latency
            slots[-1] = TimedSink(slots[-1], self.metrics.datastore_latency)
        if raw is not None:
            self.datastore.send_many(raw, slots, client.id)
        else:
            send = self.datastore.send
            encode = resp.encode_command
            for argv, slot in zip(requests, slots):
                send(encode(argv), slot, client.id)

    def _replicate_batch(self, client, requests: list[list[bytes]], raw: bytes, Slot) -> bool:
        """The fast path (DESIGN.md §10, issue 6): a read made only of key commands
        (BATCHABLE ones, BATCHABLE_AT_ONE ones at DC_ONE, WHOLE_IF_COLOCATED ones)
        that are all reads or all writes. Its bytes go as they came - once to the
        local Redis, once per peer (one frame) - instead of one request at a time;
        when its keys have different replica sets, one part of it per replica set.
        Writes also go, the same way, to one node of each other datacenter, which
        coordinates them there. Returns False, having done nothing, when the batch
        does not qualify."""
        resolve = commands.resolve
        write = None
        first = None  # the batch's command, if it has only one (counted per batch)
        mixed = False
        multi_key = False
        only_at_one = False
        for argv in requests:
            spec = resolve(argv)
            if spec.__class__ is bytes:
                return False
            if spec.name not in BATCHABLE:
                if spec.name in WHOLE_IF_COLOCATED:
                    multi_key = True
                elif spec.name in BATCHABLE_AT_ONE:
                    only_at_one = True
                else:
                    return False
            if write is None:
                write = spec.write
                first = spec
            elif spec.write is not write:
                return False
            elif spec is not first:
                mixed = True
        if multi_key and len(requests) == 1 and not self.uniform:
            return False  # alone, _multi_key splits it with less ado
        level = self._level(client, write)
        if level != DC_ONE and (level == DC_EACH_SAFE_QUORUM or only_at_one or self.sampling):
            # (A timed quorum batch, one in SAMPLE_EVERY: the general path times
            # each replica's part.)
            return False
        remote = write and not self.single_dc
        # Each request's token, unless every key has the same replicas wherever the
        # batch goes (a uniform ring): then nothing is hashed.
        tokens = None
        if not self.uniform or (remote and not self.uniform_everywhere):
            token_of = self.ring.token_of
            tokens = [token_of(argv[1]) for argv in requests]
        # Multi-key requests whose keys have different replica sets: each is cut
        # into one sub-request per replica set (one datacenter only).
        spanning = self._spanning(requests, remote) if multi_key and tokens is not None else {}
        if spanning and not self.single_dc:
            return False
        # Each request's replica set here (interned by the ring: compared with `is`;
        # None for a spanning one), or None when they all have the same one, ``group``.
        owners = None
        if self.uniform:
            group = self.uniform_group
        else:
            owners = list(map(self.ring.local_replicas, tokens))
            for position in spanning:
                owners[position] = None
            group = owners[0]
            for replicas in owners:
                if replicas is not group:
                    break
            else:
                if not spanning:
                    owners = None
        if level == DC_ONE and not write and not self.single_dc:
            # A read with no replica up in this datacenter is for another one: the
            # general path falls back to it request by request.
            available = self.available
            for replicas in (group,) if owners is None else [g for g, _ in _parts(owners)]:
                if not any(map(available, replicas)):
                    return False
        count = len(requests)
        if mixed:
            calls = self.calls
            for argv in requests:
                calls[resolve(argv)] += 1
        else:
            self.calls[first] += count
        self.metrics.by_level[level] += count
        if remote:
            self._coordinate_remote(requests, raw, tokens)
        if owners is not None:
            self._split_batch(client, requests, raw, owners, write, level, Slot, spanning)
            return True
        if level == DC_ONE:
            if count > 1 and not client.replies and not self.sampling:
                # Nothing else in flight for this client (the request/response
                # pattern): one slot takes the batch's replies, as in _solo_batch.
                slot = BatchSlot(client, count)
                client.replies.append(slot)
                slots = [slot] * count
            else:
                slots = [Slot(client) for _ in range(count)]
                client.replies.extend(slots)
            self._send_at_one(group, raw, slots, write)
            return True
        # A quorum of this datacenter's replicas.
        if not client.replies and not self.sampling:
            # Nothing else in flight for this client: decide the read whole.
            slot = ReplySlot(client)
            client.replies.append(slot)
            self._ask_quorum(group, raw, count, write, level, slot)
            return True
        slots = [Slot(client) for _ in range(count)]
        client.replies.extend(slots)
        self._ask_quorum(group, raw, count, write, level, _SpreadQuorum(slots))
        return True

    def _spanning(self, requests: list[list[bytes]], everywhere: bool) -> dict[int, tuple]:
        """A batch's multi-key requests whose keys do not all live together (in
        this datacenter, or ``everywhere``): position -> their _spread."""
        replicas_of = self.ring.replicas if everywhere else self.ring.local_replicas
        resolve = commands.resolve
        spanning = {}
        for position, argv in enumerate(requests):
            if len(argv) > 2:
                spec = resolve(argv)
                if spec.route is _MULTI_KEY:
                    spread = self._spread(argv, replicas_of, spec)
                    if len(spread[0]) > 1:
                        spanning[position] = spread
        return spanning

    def _split_batch(self, client, requests: list[list[bytes]], raw: bytes, owners: list,
                     write: bool, level: str, Slot, spanning: dict | None = None) -> None:
        """_replicate_batch for a batch whose keys have different replica sets (a
        rack of several nodes): one part per replica set, its requests' bytes cut
        from ``raw`` and sent as a whole batch is, with the replies put back in
        the client's order. A ``spanning`` request (its ``owners`` entry is None)
        is cut into a sub-request per replica set (its _spread), merged as
        _multi_key merges."""
        cut = _cutter(requests, raw)
        count = len(requests)
        if not spanning and not client.replies and not self.sampling:
            # Nothing else in flight for this client (the request/response pattern):
            # the client's one slot takes the parts' replies, put back in order.
            parts = _parts(owners)
            slot = ReplySlot(client)
            client.replies.append(slot)
            gather = _Gather(slot, count, len(parts))
            for group, positions in parts:
                if level == DC_ONE:
                    part = _GatherPart(gather, positions)
                    self._send_at_one(group, cut(positions), [part] * len(positions), write)
                else:  # each part decided whole
                    part = _GatheredQuorum(gather, positions)
                    self._ask_quorum(group, cut(positions), len(positions), write, level, part)
            return
        slots = [Slot(client) for _ in range(count)]
        client.replies.extend(slots)
        pieces: list[tuple[tuple, bytes, Sink]] = []  # (replica set, request bytes, sink)
        for position, group in enumerate(owners):
            if group is None:
                spread, combine = spanning[position]
                whole = merge.Gather(len(spread), combine, slots[position])
                pieces += [(sub_group, resp.encode_command(sub_argv), whole.part(index))
                           for index, (sub_group, sub_argv, _) in enumerate(spread)]
            else:
                pieces.append((group, cut((position,)), slots[position]))
        for group, indexes in _parts([piece[0] for piece in pieces]):
            payload = b"".join([pieces[i][1] for i in indexes])
            sinks = [pieces[i][2] for i in indexes]
            if level == DC_ONE:
                self._send_at_one(group, payload, sinks, write)
            else:
                self._ask_quorum(group, payload, len(sinks), write, level, _SpreadQuorum(sinks))

    def _coordinate_remote(self, requests: list[list[bytes]], raw: bytes, tokens: list[int] | None) -> None:
        """A batch of writes, for the other datacenters: each part (keys with the
        same replicas everywhere) goes as one frame to the first available owner in
        each of them, which coordinates it there (COORDINATE: 2 hops, as Dynomite
        does). No client waits for them; a failure is counted."""
        if tokens is None:  # a uniform ring: every key has the same replicas
            parts = [(0, range(len(requests)), raw)]
        else:
            cut = _cutter(requests, raw)
            replicas_of = self.ring.replicas
            parts = [(tokens[positions[0]], positions, cut(positions))
                     for _, positions in _parts(list(map(replicas_of, tokens)))]
        links = self.links
        flags = self.link_flags | COORDINATE
        for token, positions, payload in parts:
            for replica in self._remote_representatives(token):
                links[replica.name].send_background(payload, len(positions), flags)

    def _send_at_one(self, group: tuple, payload: bytes, sinks: list[Sink], write: bool) -> None:
        """A batch for one replica set at DC_ONE: the first available replica (this
        rack's first) answers it; a write goes to every other replica too, in the
        background (a failure is counted)."""
        available = self.available
        target = next((r for r in group if available(r)), group[0])  # else it fails with its reason
        self._send_batch(target, payload, sinks)
        if write:
            count = len(sinks)
            links = self.links
            for replica in group:
                if replica is target:
                    continue
                if replica.local:
                    self._send_batch(replica, payload, [_Background(self)] * count)
                else:
                    links[replica.name].send_background(payload, count, self.link_flags)

    def _ask_quorum(self, group: tuple, payload: bytes, count: int, write: bool, level: str, slot: Sink) -> None:
        """A batch for one replica set at a quorum level, decided whole into
        ``slot``: a write goes to every replica, a read to Q of them first."""
        replicas = len(group)
        quorum = _BatchQuorum(self, level, slot, count, replicas)
        quorum.group = group
        quorum.payload = payload
        quorum.datastore = self.datastore
        quorum.flags = self.link_flags
        if write or replicas == quorum.needed:
            asked = range(replicas)
        else:
            asked = self._read_quorum(group, quorum.needed)
            quorum.asked = len(asked)
            quorum.reserve = [index for index in range(replicas) if index not in asked]
            self.quorum_reads[id(quorum)] = (self._hedge_tick, quorum)
        for index in asked:
            quorum.ask(index)

    def _solo_batch(self, client, requests: list[list[bytes]], raw: bytes) -> bool:
        """A ring of one node, a read of whole requests that all go to the local
        Redis, and nothing else in flight for this client (the request/response
        pattern of most clients): the read is forwarded as it came and one
        BatchSlot takes its replies. Returns False, having done nothing, otherwise
        (a client streaming requests keeps per-request slots, which the
        back-pressure limit counts)."""
        resolve = commands.resolve
        specs = []
        for argv in requests:
            spec = resolve(argv)
            if spec.__class__ is bytes:
                return False
            route = spec.route
            if not (route is _KEY or route is _MULTI_KEY or route is _ONE_REPLICA):
                return False
            specs.append(spec)
        calls = self.calls
        for spec in specs:
            calls[spec] += 1
        count = len(requests)
        slot = BatchSlot(client, count)
        client.replies.append(slot)
        self.datastore.send_run(raw, slot, count, client.id)
        return True

    def _send_batch(self, replica: "RingNode", payload: bytes, sinks: list[Sink]) -> None:
        if replica.local:
            if self.sampling:  # the batch's last request stands for its latency
                sinks = [*sinks[:-1], TimedSink(sinks[-1], self.metrics.datastore_latency)]
            elif len(sinks) > 1 and sinks[0].runs and sinks.count(sinks[0]) == len(sinks):
                self.datastore.send_run(payload, sinks[0], len(sinks))  # a BatchSlot
                return
            self.datastore.send_many(payload, sinks)
        else:
            split = _BatchSplit(sinks)
            if self.sampling:
                split = TimedSink(split, self.metrics.peer_histogram(replica.name), split.count)
            self.links[replica.name].send_batch(payload, split, self.link_flags)

    def _refused(self, client: "ClientConnection", argv: list[bytes], error: bytes) -> bytes:
        if argv[0][:12].upper() == b"DYNO_CONFIG:":
            return node_commands.dyno_config(client, argv)
        self.stats.errors += 1
        spec = commands.lookup(argv[0]) if argv else None
        self.metrics.count_refused(spec.name if spec is not None else b"unknown")
        return error

    def _flush_allowed(self, spec, slot: ReplySlot) -> bool:
        if spec.name in (b"flushdb", b"flushall") and not self.config.flush_enabled:
            slot.data = resp.error(
                f"ERR dyno: {spec.name.decode().upper()} is disabled on this cluster (flush_enabled: false)"
            )
            return False
        return True

    # -- single-key (and co-located) commands ------------------------------------------

    def _key_command(self, client, spec, argv: list[bytes], slot: Sink) -> None:
        keys = commands.keys(spec, argv)
        payload = resp.encode_command(argv)
        write = commands.is_write(spec, argv)
        if not keys:  # e.g. EVAL with no keys: any one node answers
            self._send(self.ring.local, payload, slot)
            return
        ring = self.ring
        token = ring.token_of(keys[0])
        if len(keys) > 1:
            replicas = ring.replicas(token)
            for key in keys[1:]:
                if ring.replicas(ring.token_of(key)) != replicas:
                    self.stats.errors += 1
                    self.metrics.count_refused(spec.name)
                    slot.deliver(self.crossslot)
                    return
        level = self._level(client, write)
        effect = REPLICATE_EFFECT.get(spec.name)
        if effect is not None:
            self.metrics.by_level[level] += 1
            self._run_once_then_replicate(token, argv, payload, slot, effect)
            return
        if spec.name in RANDOM_READS:
            level = DC_ONE  # any replica's random pick is a right answer
        self.metrics.by_level[level] += 1
        self.route(token, payload, write, level, slot, spec.name in UNORDERED_REPLIES)

    def _level(self, client, write: bool) -> str:
        override = client.consistency_override
        if override:
            return override["write" if write else "read"]
        # The node's runtime levels: the admin port's /set_consistency changes them.
        return self.node.write_consistency if write else self.node.read_consistency

    def route(
        self, token: int, payload: bytes, write: bool, level: str, sink: Sink, unordered: bool = False
    ) -> None:
        """Send one request for ``token`` to its replicas at ``level``. ``unordered``:
        the replies are collections in no defined order, compared sorted."""
        ring = self.ring
        if not write and level == DC_ONE:
            for replica in ring.replicas(token):
                if self.available(replica):
                    self._send(replica, payload, sink)
                    return
            self._send(ring.local_replicas(token)[0], payload, sink)  # fails with its reason
            return
        if level == DC_EACH_SAFE_QUORUM:
            targets = ring.replicas(token)
            remote = ()
        else:
            targets = ring.local_replicas(token)
            remote = self._remote_representatives(token) if write else ()
        tracker = QuorumTracker(level, [n.dc for n in targets], ring.local.dc, 0)
        replica_sink = _Replica
        if unordered:
            replica_sink = _CanonicalReplica
            sink = _Uncanonical(sink)
        for index, replica in enumerate(targets):
            self._send(replica, payload, replica_sink(tracker, index, sink, self, level))
        for replica in remote:
            self._send(replica, payload, _Background(self), coordinate=True)

    def _run_once_then_replicate(self, token: int, argv, payload: bytes, sink: Sink, effect) -> None:
        """A REPLICATE_EFFECT write: run it on the first available replica (this
        rack's first), then replicate its effect to every other replica."""
        replicas = self.ring.replicas(token)
        first = next((r for r in replicas if self.available(r)), replicas[0])
        others = [r for r in replicas if r is not first]
        self._send(first, payload, _RunOnceThenReplicate(self, argv, sink, others, effect))

    def _remote_representatives(self, token: int) -> list["RingNode"]:
        """For each remote DC, the first available owner of ``token`` there."""
        ring = self.ring
        chosen = []
        for dc in ring.remote_dcs():
            owners = [ring.owner(token, dc, rack) for rack in ring.racks(dc)]
            chosen.append(next((n for n in owners if self.available(n)), owners[0]))
        return chosen

    def _use_protocol(self, protocol: int) -> None:
        if protocol == 3:
            self.datastore = self.node.datastore3
            self.link_flags = RESP3
        else:
            self.datastore = self.node.datastore
            self.link_flags = 0

    def coordinate_for_dc(self, payload: bytes, sink: Sink, flags: int = 0, count: int = 1) -> None:
        """``count`` writes sent by a node of another DC: replicate them in this DC
        (2nd hop). ``sink`` gets each one's outcome."""
        self._use_protocol(3 if flags & RESP3 else 2)
        parsed = resp.RequestParser().feed(payload)  # the peer server checked: `count` commands
        if count > 1:
            self._coordinate_batch(parsed, payload, sink, flags)
            return
        argv = parsed[0] if len(parsed) == 1 else None
        spec = commands.resolve(argv) if argv else None
        if spec is None or spec.__class__ is bytes:
            sink.fail(resp.error("ERR dyno: bad request from a remote datacenter"))
            return
        keys = commands.keys(spec, argv)
        if not keys:
            self.datastore.send(payload, sink)
            return
        ring = self.ring
        token = ring.token_of(keys[0])
        targets = ring.local_replicas(token)
        tracker = QuorumTracker(DC_ONE, [n.dc for n in targets], ring.local.dc, 0)
        for index, replica in enumerate(targets):
            self._send(replica, payload, _Replica(tracker, index, sink, self, DC_ONE))

    def _coordinate_batch(self, requests: list[list[bytes]], payload: bytes, sink: Sink, flags: int) -> None:
        """Writes a node of another DC sent in one frame (_coordinate_remote): each
        part goes to its replicas here as a DC_ONE write batch does. Anything else
        in such a frame (the sender sends only fast-path writes) goes one by one."""
        tokens = None
        if all(
            spec.__class__ is not bytes and spec.write  # (and so of the right arity)
            and (spec.name in BATCHABLE or spec.name in WHOLE_IF_COLOCATED)
            for spec in map(commands.resolve, requests)
        ):
            if not self.uniform:
                tokens = [self.ring.token_of(argv[1]) for argv in requests]
            ok = tokens is None or not self._spanning(requests, False)
        else:
            ok = False
        if not ok:
            for argv in requests:
                self.coordinate_for_dc(resp.encode_command(argv), sink, flags)
            return
        if tokens is None:
            self._send_at_one(self.uniform_group, payload, [sink] * len(requests), True)
            return
        cut = _cutter(requests, payload)
        for group, positions in _parts(list(map(self.ring.local_replicas, tokens))):
            self._send_at_one(group, cut(positions), [sink] * len(positions), True)

    # -- targets --------------------------------------------------------------------

    def set_ring(self, ring) -> None:
        """Route by ``ring`` from now on (at start, and when gossip changes it)."""
        self.ring = ring
        # A ring of one node: everything is the local datastore's (issue-2 fast path).
        self.solo = len(ring.nodes) == 1
        # This datacenter's racks have one node each: every key has the same
        # replicas here, so a batch needs no hashing to know where it goes.
        self.single_dc = len(ring.dcs) == 1
        self.uniform = all(
            len(ring.rack_nodes(ring.local.dc, rack)) == 1 for rack in ring.racks(ring.local.dc)
        )
        # ... and so have every other datacenter's: a write's remote owners too.
        self.uniform_everywhere = all(
            len(ring.rack_nodes(dc, rack)) == 1 for dc in ring.dcs for rack in ring.racks(dc)
        )
        self.uniform_group = ring.local_replicas(0) if self.uniform else None
        # A key's replicas come this rack first, then the others sorted: starting at
        # this rack's place in the sorted racks, a quorum read's first peer is the
        # next rack round, and each rack's node reads from a different one.
        self._read_turn = sorted(ring.racks(ring.local.dc)).index(ring.local.rack)

    def _read_quorum(self, group: list["RingNode"], needed: int) -> list[int]:
        """Which ``needed`` of a key's local-DC replicas a quorum read asks first:
        this node's own Redis if it is one (no hop; it is first in its group),
        then peers whose link is usable, starting with the rack after this node's
        own (so that with clients on every node each carries its share, and each
        peer link carries whole frames), then any others (they fail at once, and
        the read is widened)."""
        local = group[0].local
        first = 1 if local else 0  # the peers are group[first:]
        peers = len(group) - first
        picks = [0] if local else []
        links = self.links
        for step in range(peers):
            index = first + (self._read_turn + step) % peers
            link = links.get(group[index].name)
            if link is not None and link.usable:
                picks.append(index)
                if len(picks) == needed:
                    return picks
        return (picks + [i for i in range(len(group)) if i not in picks])[:needed]

    async def hedge_reads(self) -> None:
        """Widen the quorum reads whose first replicas have not decided them within
        one to two HEDGE_TICKs (a replica slow, or dead but not yet known to be):
        the read then waits for the fastest Q of all replicas, as if it had gone to
        every one. One sweep per tick over the reads still undecided."""
        reads = self.quorum_reads
        while True:
            await trio.sleep(HEDGE_TICK)
            tick = self._hedge_tick
            self._hedge_tick = tick + 1
            late = []
            for asked_at, quorum in reads.values():  # oldest first
                if asked_at >= tick:
                    break  # asked less than a full tick ago: the next sweep
                late.append(quorum)
            for quorum in late:
                try:
                    quorum.widen()
                except Exception:  # a bug must cost this read, never the node
                    log.exception("widening a quorum read failed")
                    if not quorum.done:
                        quorum.done = True
                        quorum.slot.deliver(resp.error("ERR dyno: internal error widening a quorum read"))

    def available(self, replica: "RingNode") -> bool:
        if replica.local:
            return self.datastore.up
        link = self.links.get(replica.name)
        return link is not None and link.usable and not (self.admin_down and replica.name in self.admin_down)

    def _send(self, replica: "RingNode", payload: bytes, sink: Sink, coordinate: bool = False) -> None:
        if self.sampling:
            sink = TimedSink(sink, self.metrics.datastore_latency if replica.local
                             else self.metrics.peer_histogram(replica.name))
        if replica.local:
            self.datastore.send(payload, sink)
        else:
            self.links[replica.name].send(payload, sink, (COORDINATE if coordinate else 0) | self.link_flags)

    def replica_replied(self, tracker, index: int, reply: bytes, sink: Sink, level: str) -> None:
        """Replica ``index`` answered a replicated request: feed its tracker; answer
        the client if that decided it, else count a late reply that disagrees."""
        result = tracker.reply(index, reply)
        if result is not None:
            if result[:1] == b"-":
                self.decided_error(result, level)
            sink.deliver(result)
        elif tracker.done and reply != tracker.result:
            self.metrics.disagreements += 1

    def replica_could_not(self, tracker, index: int, error: bytes, sink: Sink, level: str) -> None:
        """Replica ``index`` could not answer: count it, feed its tracker, answer
        the client if that decided it."""
        self.replica_failed(error)
        result = tracker.failure(index, error)
        if result is not None:
            if result[:1] == b"-":
                self.decided_error(result, level)
            sink.deliver(result)

    def decided_error(self, result: bytes, level: str) -> None:
        """A replicated request was answered with an error: count quorum failures."""
        if result.startswith(b"-ERR dyno: ") and b" not achieved" in result:
            self.metrics.failures_by_level[level] += 1
            if result.endswith(b"disagree\r\n"):
                self.metrics.disagreements += 1

    def set_refusing(self, refusing: bool) -> None:
        """The node entered (or left) STANDBY or WRITES_ONLY (Node.set_state)."""
        self.refusing = refusing
        self.countdown = 1  # the next batch goes through _execute_special

    def _execute_special(self, client: "ClientConnection", requests: list[list[bytes]], raw: bytes | None) -> None:
        """A batch off the plain path: the node refuses some requests (every batch
        comes here while ``refusing``), or the batch is timed. Either way the work is
        done by execute_batch again, with ``countdown`` set so that it takes the
        plain path; ``stats.commands`` is taken back as it counts them again."""
        self.stats.commands -= len(requests)
        if self.refusing:
            self._execute_restricted(client, requests)
            self.countdown = 1
            return
        self.countdown = SAMPLE_EVERY + 1
        self.slot_class = self.metrics.timed_slot
        self.sampling = True
        try:
            self.execute_batch(client, requests, raw)
        finally:
            self.slot_class = ReplySlot
            self.sampling = False

    def _execute_restricted(self, client: "ClientConnection", requests: list[list[bytes]]) -> None:
        """STANDBY refuses every request but those the node answers itself (PING,
        INFO, QUIT ...); WRITES_ONLY refuses reads. What is allowed runs as usual,
        one request at a time (an operator state is not the fast path)."""
        standby = self.node.state == STANDBY
        refusal = self._standby_error if standby else self._writes_only_error
        for argv in requests:
            spec = commands.resolve(argv)
            if spec.__class__ is bytes or spec.route is _LOCAL or (
                not standby and commands.is_write(spec, argv)
            ):
                self.countdown = 2  # the plain path, not back here
                self.execute_batch(client, [argv], None)
            else:
                self.stats.commands += 1
                self.stats.errors += 1
                self.metrics.state_refusals += 1
                self.metrics.count_refused(spec.name)
                client.replies.append(ReplySlot(client, refusal))
            if client.closing:
                break

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

    # -- split and fan-out ----------------------------------------------------------

    def _multi_key(self, client, spec, argv: list[bytes], slot: Sink) -> None:
        """MGET, MSET, DEL, UNLINK, EXISTS, TOUCH: one sub-request per owner."""
        ring = self.ring
        write = commands.is_write(spec, argv)
        level = self._level(client, write)
        self.metrics.by_level[level] += 1
        pieces, combine = self._spread(argv, ring.replicas, spec)
        gather = merge.Gather(len(pieces), combine, slot)
        for index, (_, sub_argv, token) in enumerate(pieces):
            self.route(token, resp.encode_command(sub_argv), write, level, gather.part(index))

    def _spread(self, argv: list[bytes], replicas_of, spec=None) -> tuple[list[tuple], object]:
        """A multi-key command cut into one sub-command per replica set (as
        ``replicas_of`` a token gives them: interned, so told apart by identity):
        [(replica set, sub-command, its first key's token)], and the function
        that merges their replies."""
        spec = spec or commands.resolve(argv)
        kind = spec.merge
        stride = 2 if kind is Merge.MSET else 1
        token_of = self.ring.token_of
        sets: dict[int, tuple] = {}  # id(replica set) -> (it, the token that found it)

        def owner(key: bytes) -> int:
            token = token_of(key)
            replicas = replicas_of(token)
            if id(replicas) not in sets:
                sets[id(replicas)] = (replicas, token)
            return id(replicas)

        groups = merge.split_keys(argv, owner, stride)
        if kind is Merge.MGET:
            positions = [where for _, where in groups.values()]
            total = (len(argv) - 1) // stride

            def combine(parts):
                return merge.merge_mget(parts, positions, total)
        elif kind is Merge.SUM:
            combine = merge.merge_sum
        else:
            combine = merge.merge_all_ok
        return [(sets[key][0], sub_argv, sets[key][1]) for key, (sub_argv, _) in groups.items()], combine

    def _rack_nodes(self) -> list["RingNode"]:
        ring = self.ring
        return list(ring.rack_nodes(ring.local.dc, ring.local.rack))

    def _one_replica(self, client, spec, argv: list[bytes], slot: Sink) -> None:
        """DBSIZE, KEYS, SCAN, RANDOMKEY: over the nodes of the local rack, which
        together hold one full copy of the data."""
        nodes = self._rack_nodes()
        name = spec.name
        if name == b"scan":
            target = merge.scan_target(argv[1], len(nodes))
            if target is None:
                slot.deliver(resp.error("ERR invalid cursor"))
                return
            index, node_cursor = target
            sub = [argv[0], b"%d" % node_cursor, *argv[2:]]
            gather = merge.Gather(1, lambda parts: merge.scan_reply(parts[0], index, len(nodes)), slot)
            self._send_read(nodes[index], resp.encode_command(sub), gather.part(0))
            return
        if name == b"randomkey":
            random.shuffle(nodes)
            combine = merge.merge_first_non_null
        elif name == b"keys":
            combine = merge.merge_concat
        else:  # dbsize
            combine = merge.merge_sum
        payload = resp.encode_command(argv)
        gather = merge.Gather(len(nodes), combine, slot)
        for index, node in enumerate(nodes):
            self._send_read(node, payload, gather.part(index))

    def _send_read(self, node: "RingNode", payload: bytes, sink: Sink) -> None:
        """A rack-wide read: if ``node`` is down, its counterpart in another rack of
        the DC (same tokens) answers instead."""
        if not self.available(node):
            ring = self.ring
            for rack in ring.racks(ring.local.dc):
                other = ring.owner(node.tokens[0], ring.local.dc, rack)
                if other.tokens == node.tokens and self.available(other):
                    node = other
                    break
        self._send(node, payload, sink)

    def _all_replicas(self, argv: list[bytes], slot: Sink) -> None:
        """FLUSHDB, FLUSHALL, SCRIPT LOAD/FLUSH: every node of every rack and DC."""
        nodes = list(self.ring.nodes)
        payload = resp.encode_command(argv)
        gather = merge.Gather(len(nodes), merge.merge_all_ok, slot)
        for index, node in enumerate(nodes):
            self._send(node, payload, gather.part(index))
