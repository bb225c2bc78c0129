"""The planner: what a client's batch of requests becomes before anything is sent.

Pure. Given the parsed requests of one read, the ring as this node sees it (and
which nodes are available), the consistency levels and the time, ``Planner.plan``
returns a ``Plan``: the *parts* to send - for each, the replicas it goes to and the
bytes it carries - and, for every request, how its reply is decided. No I/O, no
trio, no clock but the ``now_ms`` function passed in. The coordinator (dyno.coordinator)
executes plans; it is the only place that sends.

A part is one replica set's share of a batch: requests whose keys have the same
replicas everywhere (the ring interns replica sets, so they are told apart by
identity), of one class (reads or writes), decided one way. Its requests travel
together as one payload to each target, and each target answers all of them or
fails all of them. How a part is decided (``Part.kind``):

* ONE (DC_ONE): ``asked[0]`` answers. A read that it fails goes to the next of
  ``reserve`` (failover); a write goes to every replica in ``asked`` at once and,
  if ``asked[0]`` fails, another replica's outcome answers (consistency Rule 1).
* QUORUM (DC_QUORUM, DC_SAFE_QUORUM): a ``consistency.Quorum`` over this
  datacenter's replicas, ``asked`` and then ``reserve``: a read asks Q replicas
  first and the rest only if those cannot decide it; a write asks them all.
* EACH (DC_EACH_SAFE_QUORUM): every replica of every datacenter, each datacenter
  a quorum of its own.

Writes also go to one replica per other datacenter (``coordinate``), which
coordinates them there (2 hops, as Dynomite does); nobody waits for those.

Every kind of request is a part or parts: key commands; multi-key commands cut
into a sub-command per replica set (``Merge``); DBSIZE/KEYS/SCAN/RANDOMKEY over the
nodes of this rack and FLUSHALL over every node (a part per node, merged); SPOP and
XADD, which run on one replica and whose effect is then replicated (``effect``);
SSCAN/HSCAN/ZSCAN, answered by the replica their cursor names (``transform``).
What the node answers itself (PING, INFO, HELLO ...) is ``LOCAL``; what is refused,
an error now. A command that changes how the requests after it are served (HELLO,
RESET, QUIT, DYNO_CONFIG) ends the plan: ``Plan.size`` says how many requests it
covers, and the coordinator plans the rest after running it.

Relative expiries are made absolute here (``dyno.rewrite``), so that every replica
holds the same deadline.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import NamedTuple

from dyno import commands, groups, merge, resp, rewrite, versions
from dyno.commands import Merge as MergeKind
from dyno.commands import Route
from dyno.ring import Ring, RingNode

__all__ = [
    "BATCHABLE", "EACH", "LOCAL", "ONE", "QUORUM", "RANDOM_READS", "UNORDERED_REPLIES",
    "Merge", "Part", "Plan", "Planner",
]

ONE, QUORUM, EACH = "ONE", "QUORUM", "EACH"
DC_ONE = "DC_ONE"
DC_EACH_SAFE_QUORUM = "DC_EACH_SAFE_QUORUM"
_KEY, _MULTI_KEY, _ONE_REPLICA, _ALL_REPLICAS, _LOCAL = (
    Route.KEY, Route.MULTI_KEY, Route.ONE_REPLICA, Route.ALL_REPLICAS, Route.LOCAL,
)


class _Local:
    """A request the node answers itself (``Plan.sources``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LOCAL"


LOCAL = _Local()

# Replies whose order Redis does not define: a set kept in a hashtable iterates in an
# order that depends on a per-process seed, so replicas holding the same set answer
# SMEMBERS with different bytes. A quorum compares them in a canonical (sorted) form.
UNORDERED_REPLIES = frozenset({
    b"smembers", b"sinter", b"sunion", b"sdiff", b"hgetall", b"hkeys", b"hvals",
})
# Reads whose answer is random by design: replicas can never agree, any one is right.
RANDOM_READS = frozenset({b"srandmember", b"hrandfield", b"zrandmember"})
# Reads whose bytes depend on each Redis's own hash order while the value is the same: a
# DUMP of a set or hash kept in a hashtable. No two replicas' can be compared byte for
# byte, so any one answers (a quorum would only ever report that they disagree).
# So are reads that show each Redis's clock: a consumer group's idle times (XPENDING's
# extended form, XINFO CONSUMERS, XINFO STREAM FULL), never quite the same on two replicas.
ANY_REPLICA_READS = RANDOM_READS | {b"dump", b"xpending", b"xinfo|consumers", b"xinfo|stream"}
# Cursor reads of one collection: each replica's hashtable iterates in its own order,
# so a cursor is only meaningful on the replica that made it (rewrite.cursor_*).
CURSOR_READS = frozenset({b"sscan", b"hscan", b"zscan"})
# Writes whose effect is chosen by the replica that runs them (a random member, a
# time-based ID): run once, then replicate what they did, so replicas stay identical.
REPLICATE_EFFECT = {b"spop": rewrite.spop_effect, b"xadd": rewrite.xadd_effect}
# Commands after which the rest of a batch is served differently (protocol, levels,
# or not at all): a plan ends with them.
_ENDS_PLAN = frozenset({b"hello", b"reset", b"quit", b"multi", b"watch", b"subscribe", b"psubscribe",
                        b"ssubscribe", b"blpop", b"brpop", b"blmove", b"brpoplpush", b"bzpopmin",
                        b"bzpopmax", b"blmpop", b"bzmpop"})
_BRACKETS = frozenset({b"multi", b"exec"})
_MULTI = resp.encode_command([b"MULTI"])
_EXEC = resp.encode_command([b"EXEC"])

# Plain key commands: one key at argv[1], replies that compare as bytes, an effect
# every replica computes alike. A batch made only of these (the common case) is
# planned without looking at anything else.
BATCHABLE = frozenset(
    spec.name
    for top in commands.COMMANDS.values()
    for spec in (top, *(top.subcommands or {}).values())
    if spec.route is _KEY and spec.fixed_keys == (1,) and spec.name not in UNORDERED_REPLIES
    and spec.name not in ANY_REPLICA_READS and spec.name not in REPLICATE_EFFECT
    and spec.name not in CURSOR_READS and spec.name != b"pfcount" and spec.name not in groups.ON_WATCH_REPLICA
    and (spec.name not in rewrite.EXPIRY_COMMANDS or spec.name in (b"set", b"getex"))
)

# Reads of one key whose replies may differ in bytes from replica to replica (and
# so cannot be compared by a quorum as they are): plain at DC_ONE only.
_AT_ONE = UNORDERED_REPLIES | ANY_REPLICA_READS
# Multi-key commands that travel whole when all their keys have one replica set
# (always, in a ring of one node per rack): Redis's reply is then the merged one.
_WHOLE_IF_TOGETHER = frozenset(spec.name for spec in commands.COMMANDS.values() if spec.route is _MULTI_KEY)

def _specs(names) -> list:
    return [spec for top in commands.COMMANDS.values() for spec in (top, *(top.subcommands or {}).values())
            if spec.name in names]


_PLAIN_SPECS = _specs(BATCHABLE)
_AT_ONE_SPECS = _specs(_AT_ONE)
_TOGETHER_SPECS = _specs(_WHOLE_IF_TOGETHER)

# SET and GETEX carry a relative expiry only with more arguments than these: plain
# ones need no rewriting and stay on the common path.
_EXPIRY_OPTIONS = {commands.COMMANDS[b"set"]: 3, commands.COMMANDS[b"getex"]: 2}

_NOT_FROM_A_PEER = resp.error("ERR dyno: only writes may be coordinated for another datacenter")

CROSSSLOT_HINT_TAGGED = "put the common part of the keys in a hash tag, e.g. {user1}:a and {user1}:b)"
CROSSSLOT_HINT_UNTAGGED = "set hash_tag: '{}' in the config and put the common part of the keys in {...})"


class Part:
    """One replica set's share of a batch (module docstring): plan data, compared
    and printed by the tests."""

    __slots__ = ("kind", "level", "write", "asked", "reserve", "coordinate", "payload", "count",
                 "positions", "calls", "version", "extra", "pending")

    # What few parts have (a ``Special`` part sets them; the others read these):
    #: Replies compared sorted (UNORDERED_REPLIES at a quorum level).
    canonical = False
    #: (SPOP, XADD) argv, reply -> the argv to send ``others`` (run once, replicate).
    effect: Callable | None = None
    others: tuple = ()
    #: reply -> the reply the client gets (a cursor read's cursor).
    transform: Callable | None = None

    def __init__(self, kind: str, level: str, write: bool, asked: tuple, reserve: tuple,
                 coordinate: tuple, payload: bytes, count: int, positions: list[int] | None):
        self.kind = kind
        self.level = level
        self.write = write
        #: Replicas the part goes to at once; ``asked[0]`` answers a ONE part.
        self.asked = asked
        #: Replicas asked later, in order: a quorum read's widening; a ONE read's
        #: failover (there, those asked already are skipped).
        self.reserve = reserve
        #: One replica per other datacenter, which coordinates the writes there.
        self.coordinate = coordinate
        #: The requests it carries, canonically encoded (as received, when they were):
        #: what a failed target left is cut from it again. (Not the parsed requests:
        #: kept alive until the replies came, they cost the cyclic GC.)
        self.payload = payload
        self.count = count
        #: Where its replies go in the batch (``Plan.sources``); None: 0..count-1.
        self.positions = positions
        #: A part that is a whole plan (Planner.plan): the command table rows of
        #: its requests (one standing for all, or a list), for the metrics.
        self.calls = None
        #: A stamped write's version (dyno.versions): ``payload`` ends with the
        #: stamp, ``extra`` (STAMP_REPLIES) more replies than ``count`` come back,
        #: and the executor drops them. None and 0 for everything else.
        self.version = None
        self.extra = 0
        #: A write's pending owners in this datacenter while its range moves
        #: (dyno.ownership): they get the writes too, nobody waits for them.
        self.pending = ()

    def describe(self) -> tuple:
        """What the part is, as plain values (tests compare these)."""
        return (self.kind, self.level, self.write, tuple(n.name for n in self.asked),
                tuple(n.name for n in self.reserve), tuple(n.name for n in self.coordinate),
                self.count, self.positions, self.canonical, self.effect is not None,
                tuple(n.name for n in self.others), self.transform is not None)

    def __repr__(self) -> str:
        return f"<Part {self.describe()!r} {self.payload[:60]!r}>"


class Special(Part):
    """A part with one of the fields few parts have (``canonical``, ``effect``,
    ``transform``): kept off the common part, which is made for every batch."""

    __slots__ = ("canonical", "effect", "others", "transform", "argv")

    def __init__(self, *args, canonical: bool = False, effect: Callable | None = None,
                 others: tuple = (), transform: Callable | None = None, argv: list | None = None):
        super().__init__(*args)
        self.canonical = canonical
        self.effect = effect
        self.others = others
        self.transform = transform
        self.argv = argv  # the one request of an ``effect`` part


class Merge(NamedTuple):
    """A request whose reply is made of the replies of sub-requests, which the
    parts carry at the ``sources`` positions ``parts``."""

    combine: Callable[[list[bytes]], bytes]
    parts: list[int]


class Plan:
    """A batch planned (module docstring).

    ``sources[i]`` says how request i's reply is decided: None, by the part that
    carries it (``Part.positions``); ``LOCAL``, by the node itself; bytes, that
    reply now; a ``Merge``, by combining sub-requests' replies, which the parts
    carry at positions ``size`` and up. (A batch that one part answers whole, in
    order - the common case - is planned as that Part alone, not as a Plan.)"""

    __slots__ = ("parts", "size", "sources", "width", "refused", "calls")

    def __init__(self, parts: list[Part], size: int, sources: list | None = None, width: int = 0,
                 refused: list[bytes] | None = None, calls=None):
        self.parts = parts
        self.size = size  # requests of the batch this plan covers (a prefix)
        self.sources = sources
        self.width = width or size  # positions in all, sub-requests included
        self.refused = refused or ()  # command names refused (metrics)
        #: The command table rows of the requests planned (metrics): one row
        #: standing for all ``size`` requests, or a list.
        self.calls = calls

    def __repr__(self) -> str:
        return f"<Plan size={self.size} sources={self.sources!r} parts={self.parts!r}>"


class Planner:
    """Plans batches for one ring. Built again when the ring changes;
    ``available(node)`` says whether a node can be sent to now."""

    def __init__(self, ring: Ring, available: Callable[[RingNode], bool], *,
                 flush_enabled: bool = False, hash_tag: bool = False,
                 now_ms: Callable[[], int] | None = None, refuse: Callable | None = None,
                 version: Callable[[], bytes] | None = None, versions_db: int = versions.DEFAULT_DB):
        self.ring = ring
        self.available = available
        #: A new version for a batch's writes (versions.HLC.now), or None: writes
        #: are not stamped (a key of one replica has nothing to be reconciled with).
        self.version = version if len(ring.replicas(0)) > 1 else None
        self.versions_db = versions_db
        #: The clock (wall milliseconds), asked only to make a relative expiry absolute.
        self.now_ms = now_ms
        #: ``refuse(spec, write)``: an error line for a request the node's state
        #: refuses (STANDBY, WRITES_ONLY), or None; None when it refuses nothing.
        self.refuse = refuse
        self.flush_enabled = flush_enabled
        # one node: nothing is replicated (unless a node is joining it: its writes go there too)
        self.solo = len(ring.nodes) == 1 and not ring.moving
        self.single_dc = len(ring.dcs) == 1
        # Every rack of every datacenter has one node: every key has the same
        # replicas, so a batch needs no hashing to know where it goes.
        #: A range is moving (dyno.ownership): some keys' writes also go to pending owners.
        self.moving = ring.moving
        self._pending_here: dict[int, tuple] = {}
        if ring.moving:
            self.part = self._moving_part
        self.uniform = not ring.moving and all(
            len(ring.rack_nodes(dc, rack)) == 1 for dc in ring.dcs for rack in ring.racks(dc))
        self.uniform_group = ring.replicas(0) if self.uniform else None
        # Plain requests (Planner.plain): spec -> the most arguments it may have
        # and stay plain (SET and GETEX carry a relative expiry only with more, and
        # nothing is rewritten in a ring of one node).
        unlimited = 1 << 30
        plain = {spec: unlimited if self.solo else _EXPIRY_OPTIONS.get(spec, unlimited)
                 for spec in _PLAIN_SPECS}
        if self.uniform:  # every key has the same replicas: these go whole
            plain.update(dict.fromkeys(_TOGETHER_SPECS, unlimited))
        self._plain_specs = plain
        self._plain_at_one = {**plain, **dict.fromkeys(_AT_ONE_SPECS, unlimited)}
        local_dc = ring.local.dc
        self.local_dc = local_dc
        self.local_racks = len(ring.racks(local_dc))
        # A quorum read's first peer is the next rack round from this node's, so that
        # with clients on every node each peer carries its share (replica sets list
        # this rack first, then the others sorted).
        self.read_turn = sorted(ring.racks(local_dc)).index(ring.local.rack)
        self.crossslot = resp.error(
            "CROSSSLOT Keys in request don't hash to the same slot (dyno: they have different owners; "
            + (CROSSSLOT_HINT_TAGGED if hash_tag else CROSSSLOT_HINT_UNTAGGED)
        )

    # -- the plan ---------------------------------------------------------------------

    def plan(self, requests: list[list[bytes]], raw: bytes | None, read_level: str, write_level: str,
             now_ms: Callable[[], int] | None = None, here_only: bool = False,
             rng: random.Random | None = None, version: bytes | None = None) -> Plan | Part | tuple:
        """The plan for ``requests`` (or for the prefix of them up to a command that
        ends a plan): a Plan, or, when one part answers the whole batch in order
        (the common case), that Part, or for a ring of one node ``(raw, count,
        calls)``, or for a DC_ONE read this node's Redis answers ``(raw, count,
        calls, reserve)`` (``plain``). ``raw``: their canonical encoding as received, or None.
        ``now_ms()``: the time (the planner's clock if not given).
        ``here_only``: writes another datacenter hands over, for this one's replicas
        only (nothing is coordinated further; only writes are accepted), stamped
        with their coordinator's ``version`` if it sent one (else not stamped)."""
        if self.solo:  # one replica: every level is decided by its reply
            read_level = write_level = DC_ONE
        if raw is not None and self.refuse is None:
            plan = self.plain(requests, raw, read_level, write_level, here_only, version)
            if plan is not None:
                return plan
        return _General(self, requests, raw, read_level, write_level, now_ms or self.now_ms,
                        self.refuse, here_only, rng, version).plan()

    def plain(self, requests, raw: bytes, read_level: str, write_level: str, here_only: bool = False,
              version: bytes | None = None):
        """The common case of ``plan``: every request a plain one (BATCHABLE;
        unordered and random reads at DC_ONE; multi-key commands in a uniform
        ring), all reads or all writes, no relative expiry to rewrite, sent as read
        (``raw``), and nothing refused. Its plan, or None if the batch is not that
        (``plan`` then plans it request by request). One replica set: the Part
        alone is the plan. A ring of one node: the plan is ``(raw, count, calls)``,
        all of it to that node, as read (no Part to make: the old one-node path
        cost that little, and the bench holds dyno to it). A DC_ONE read whose
        first replica is this node, available: ``(raw, count, calls, reserve)``,
        the same, with the replicas to fail over to (the ONE Part it stands for:
        asked ``reserve[0]``, this node). The executor asks this
        first for a canonical read, the same answer ``plan`` would give."""
        if self.solo:
            read_level = write_level = DC_ONE
        resolve = commands.resolve
        plain = self._plain_at_one if read_level == DC_ONE else self._plain_specs
        write = None
        first = None
        mixed = False
        for argv in requests:
            spec = resolve(argv)
            limit = plain.get(spec)  # (an error line is not in it either)
            if limit is None or len(argv) > limit:
                return None
            if spec is not first:
                if first is None:
                    first = spec
                    write = spec.write
                elif spec.write is not write:
                    return None
                else:
                    mixed = True
        if here_only and not write:
            return None
        level = write_level if write else read_level
        calls = list(map(resolve, requests)) if mixed else first
        group = self.uniform_group
        if group is None:
            groups = self._groups(requests)
            group = groups[0]
            for other in groups:
                if other is not group:
                    return self._plain_parts(requests, raw, groups, write, level, here_only, calls, version)
        if self.solo:  # it all goes, as read, to the one node
            return (raw, len(requests), calls)
        if not write and level == DC_ONE and group[0].local and self.available(group[0]):
            # A DC_ONE read this node's own Redis answers: the Part would be ONE,
            # asked (group[0],), reserve group. Said as (raw, count, calls, group), the
            # executor sends it as read, as for a ring of one node, and makes the
            # Part only if that Redis fails it (the failover is the Part's).
            return (raw, len(requests), calls, group)
        if write:
            if not here_only:  # (batch_version, without the call)
                version = self.version() if self.version is not None else None
            if version is not None:
                # (the common case, one command of one key at argv[1], without a second look)
                keys = ([argv[1] for argv in requests] if not mixed and first.fixed_keys == (1,)
                        else _write_keys(requests))
                return self.stamped(self.part(group, True, level, raw, len(requests), None, here_only),
                                    keys, version, calls)
        part = self.part(group, write, level, raw, len(requests), None, here_only)
        part.calls = calls
        return part

    def transaction(self, queued: list[list[bytes]], read_level: str, write_level: str, *,
                    now_ms: Callable[[], int] | None = None, here_only: bool = False,
                    version: bytes | None = None, positions: list[int] | None = None) -> Part | bytes:
        """The part that runs a transaction (dyno.transactions) as one ``MULTI`` ...
        ``EXEC`` block on every replica of its keys, at ``write_level`` if it writes,
        else ``read_level``: its ``count`` replies are MULTI's, one ``+QUEUED`` per
        command and EXEC's. Or the error line the client gets instead, when the keys
        no longer share one replica set (the ring changed since they were queued),
        or when a reply replicas order each their own way would have a quorum
        compare it."""
        ring = self.ring
        block, keys, write_keys, unordered = self.transaction_block(queued, now_ms)
        write = bool(write_keys)
        block = [_MULTI, *block, _EXEC]
        group = self.uniform_group
        if group is None:
            groups = list(map(ring.replicas, ring.tokens_of(keys)))
            group = groups[0]
            if any(other is not group for other in groups):
                return resp.error("ERR dyno: the transaction's keys no longer have the same replicas (the "
                                  "ring changed while it was queued); nothing of it ran")
        level = DC_ONE if self.solo else write_level if write else read_level
        if unordered is not None and level != DC_ONE:
            return resp.error(f"ERR dyno: {unordered.decode().upper()} in a transaction at {level}: each replica "
                              "orders its reply its own way, so a quorum cannot compare them; nothing of it ran "
                              "(DYNO_CONFIG:CONN_CONSISTENCY DC_ONE allows it)")
        part = self.part(group, write, level, b"".join(block), len(queued) + 2, positions, here_only)
        if write:
            if not here_only:  # (batch_version, without the call)
                version = self.version() if self.version is not None else None
            if version is not None:
                self.stamped(part, write_keys, version)
        return part

    def transaction_block(self, queued: list[list[bytes]], now_ms: Callable[[], int] | None = None
                          ) -> tuple[list[bytes], list[bytes], list[bytes], bytes | None]:
        """A transaction's commands as every replica runs them (relative expiries made
        absolute): ``(encoded commands, every key, the keys written, the name of a
        read whose reply replicas order their own way, or None)``."""
        keys: list[bytes] = []
        write_keys: list[bytes] = []
        block = []
        now = None
        unordered = None
        for argv in queued:
            spec = commands.resolve(argv)
            its_keys = commands.keys(spec, argv)
            keys += its_keys
            if commands.is_write(spec, argv):
                write_keys += its_keys
                if not self.solo and spec.name in rewrite.EXPIRY_COMMANDS:
                    now = now if now is not None else (now_ms or self.now_ms)()
                    argv = rewrite.absolute_expiry(argv, now) or argv
            elif spec.name in UNORDERED_REPLIES:
                unordered = spec.name
            block.append(resp.encode_command(argv))
        return block, keys, write_keys, unordered

    def batch_version(self, here_only: bool, version: bytes | None) -> bytes | None:
        """The version a batch's writes are stamped with: a new one, or for writes
        another datacenter hands over, the one their coordinator gave them."""
        if here_only:
            return version
        make = self.version
        return make() if make is not None else None

    def stamped(self, part: Part, keys: list[bytes], version: bytes, calls=None) -> Part:
        """``part`` with its writes' version stamped after them (dyno.versions)."""
        part.payload += versions.stamp(keys, version, self.versions_db)
        part.version = version
        part.extra = versions.STAMP_REPLIES
        part.calls = calls
        return part

    def _groups(self, requests) -> list[tuple]:
        """Each request's replica set (its key is argv[1]), the keys hashed together."""
        ring = self.ring
        table = ring.slot_table
        if table is not None:  # hash slot: a CRC16 and an index a key
            if len(requests) == 1:  # (request/response: no lists to build)
                return [table[ring.slot_of(requests[0][1])]]
            return [table[slot] for slot in ring.slots_of([argv[1] for argv in requests])]
        replicas = ring.replicas
        return [replicas(token) for token in ring.tokens_of([argv[1] for argv in requests])]

    def _plain_parts(self, requests, raw: bytes, groups: list, write: bool, level: str, here_only: bool,
                     calls, version: bytes | None = None) -> Plan:
        """A plain batch whose keys have several replica sets (racks of several
        nodes): a part per replica set, its requests' bytes cut from the read."""
        offsets = [0]
        end = 0
        for length in map(resp.encoded_length, requests):
            end += length
            offsets.append(end)
        members: dict[int, tuple] = {}
        for position, group in enumerate(groups):
            entry = members.get(id(group))
            if entry is None:
                members[id(group)] = (group, [position])
            else:
                entry[1].append(position)
        parts = []
        version = self.batch_version(here_only, version) if write else None
        for group, positions in members.values():
            payload = b"".join([raw[offsets[i] : offsets[i + 1]] for i in positions])
            part = self.part(group, write, level, payload, len(positions), positions, here_only)
            if version is not None:
                self.stamped(part, _write_keys([requests[i] for i in positions]), version)
            parts.append(part)
        size = len(requests)
        return Plan(parts, size, [None] * size, size, None, calls)

    # -- parts ------------------------------------------------------------------------

    def part(self, group: tuple, write: bool, level: str, payload: bytes, count: int,
             positions: list[int] | None, here_only: bool = False, canonical: bool = False) -> Part:
        """A part for replica set ``group`` (local datacenter first) at ``level``.
        A part sent to a replica that is not available fails with its reason."""
        if canonical:
            plain = self.part(group, write, level, payload, count, positions, here_only)
            return Special(plain.kind, plain.level, plain.write, plain.asked, plain.reserve,
                           plain.coordinate, payload, count, positions, canonical=True)
        available = self.available
        if level == DC_ONE:  # the commonest first
            if not write:
                # A read: the first available replica here, else in another
                # datacenter; the others, in that order, if it fails.
                first = group[0]
                if not available(first):
                    first = _first_available(group, available)
                return Part(ONE, level, False, (first,), group, (), payload, count, positions)
            if self.single_dc:
                local, coordinate = group, ()
            else:
                local = group[: self.local_racks]
                coordinate = () if here_only else self._representatives(group)
            first = local[0]
            if not available(first):
                first = _first_available(local, available)
                if first is not local[0]:
                    local = (first, *(n for n in local if n is not first))
            return Part(ONE, level, True, local, (), coordinate, payload, count, positions)
        local = group[: self.local_racks]
        if level == DC_EACH_SAFE_QUORUM and not here_only:
            return Part(EACH, level, write, group, (), (), payload, count, positions)
        if here_only:
            group = local
        coordinate = self._representatives(group) if write and len(group) > len(local) else ()
        if write or len(local) < 3:
            return Part(QUORUM, level, write, local, (), coordinate, payload, count, positions)
        picks, rest = self._read_quorum(local)
        return Part(QUORUM, level, write, picks, rest, (), payload, count, positions)

    def _moving_part(self, group: tuple, write: bool, level: str, payload: bytes, count: int,
                     positions: list[int] | None, here_only: bool = False, canonical: bool = False) -> Part:
        """``part`` while a range moves (it replaces it on the instance then, so a
        ring where nothing moves pays nothing): a write's pending owners in this
        datacenter get it too."""
        part = Planner.part(self, group, write, level, payload, count, positions, here_only, canonical)
        if write and group.__class__ is not tuple:
            part.pending = self.pending_here(group)
        return part

    def pending_here(self, group: tuple) -> tuple:
        """``group``'s pending owners in this datacenter (the other datacenters'
        get the writes from the node that coordinates them there)."""
        pending = self._pending_here.get(id(group))
        if pending is None:
            pending = self._pending_here[id(group)] = tuple(
                node for node in getattr(group, "pending", ()) if node.dc == self.local_dc)
        return pending

    def _read_quorum(self, local: tuple) -> tuple[tuple, tuple]:
        """Which Q of the local replicas a quorum read asks first, and the others:
        this node's own Redis if it is one (no hop), then available peers from the
        rack after this node's own round, then any others (they fail at once and the
        read widens)."""
        needed = len(local) // 2 + 1
        first = 1 if local[0].local else 0
        picks = [local[0]] if first else []
        rest = []
        peers = len(local) - first
        available = self.available
        turn = self.read_turn
        for step in range(peers):
            node = local[first + (turn + step) % peers]
            if len(picks) < needed and available(node):
                picks.append(node)
            else:
                rest.append(node)
        if len(picks) < needed:  # too few up: ask some that are not, they fail at once
            short = needed - len(picks)
            picks += rest[:short]
            rest = rest[short:]
        return tuple(picks), tuple(rest)

    def _representatives(self, group: tuple) -> tuple:
        """For each other datacenter, the first available of ``group``'s replicas there."""
        chosen = []
        available = self.available
        dc = None
        candidates: list = []
        for node in group[self.local_racks:]:
            if node.dc != dc:
                if candidates:
                    chosen.append(_first_available(candidates, available))
                dc, candidates = node.dc, []
            candidates.append(node)
        if candidates:
            chosen.append(_first_available(candidates, available))
        return tuple(chosen)


def _first_available(nodes: Sequence[RingNode], available) -> RingNode:
    for node in nodes:
        if available(node):
            return node
    return nodes[0]  # none: it fails with its reason


class _General:
    """Plans any batch, request by request (Planner.plan)."""

    def __init__(self, planner: Planner, requests, raw, read_level, write_level, now_ms, refuse,
                 here_only, rng, version=None):
        self.planner = planner
        self.here_only = here_only
        self.given_version = version
        self.version: bytes | None = None  # the batch's writes', once one is made (_version)
        self.calls: list = []
        self.ring = planner.ring
        self.requests = requests
        self.raw = raw
        self.read_level = read_level
        self.write_level = write_level
        self.now_ms = now_ms
        self.refuse = refuse
        self.rng = rng or random
        self.sources: list = []
        self.refused: list[bytes] = []
        # Open parts, by (replica set, class): a request joins the open part of its
        # replica set when it is of the same class, else the set's part is closed
        # and a new one opened (so that a set's requests keep their order).
        self.open: dict[int, list] = {}
        self.pieces: list[list] = []  # [group, write, level, canonical, [(position, argv, bytes)]]
        self.specials: list[tuple[int, Part]] = []  # parts planned whole, by creation order
        self.order: list = []  # pieces and special parts in the order they were opened
        self.width = 0
        self.offsets: list[int] | None = None
        self.tokens: dict[bytes, int] | None = None  # the batch's keys, hashed (_replicas_of)
        self.specs: list = []  # each request's row of the command table

    def _replicas_of(self, key: bytes) -> tuple:
        """A key's replica set. The batch's keys are hashed together the first time
        one is asked for (Ring.tokens_of); in a ring where every key has the same
        replicas, nothing is hashed."""
        group = self.planner.uniform_group
        if group is not None:
            return group
        token = self._tokens().get(key)
        if token is None:
            token = self.ring.token_of(key)
        return self.ring.replicas(token)

    def _tokens(self) -> dict[bytes, int]:
        """The batch's keys and their tokens, hashed together (once)."""
        tokens = self.tokens
        if tokens is None:
            keys = self._keys()
            tokens = self.tokens = dict(zip(keys, self.ring.tokens_of(keys)))
        return tokens

    def _keys(self) -> list[bytes]:
        """Every key of the batch's key and multi-key commands (as their specs say)."""
        keys: list[bytes] = []
        for argv, spec in zip(self.requests, self.specs):
            if spec.__class__ is bytes:
                continue
            if spec.route is _KEY:
                keys += [argv[index] for index in commands.key_positions(spec, argv)]
            elif spec.route is _MULTI_KEY:
                keys += argv[1 :: 2 if spec.merge is MergeKind.MSET else 1]
        return keys

    def plan(self) -> Plan:
        requests = self.requests
        size = len(requests)
        self.width = size
        rewriting = not self.planner.solo
        self.specs = specs = list(map(commands.resolve, requests))
        if self.here_only and requests[0][0].lower() == b"multi":
            block = self._transaction_block()
            if block is not None:
                return block
        for position, argv in enumerate(requests):
            spec = specs[position]
            if spec.__class__ is bytes:
                if argv[0][:12].upper() == b"DYNO_CONFIG:" and not self.here_only:
                    self.sources.append(LOCAL)
                    size = position + 1
                    break
                self.sources.append(spec)
                self.refused.append(_refused_name(argv))
                continue
            route = spec.route
            if route is _LOCAL and not self.here_only:
                self.sources.append(LOCAL)
                self.calls.append(spec)
                if spec.name in _ENDS_PLAN:
                    size = position + 1
                    break
                continue
            if not self.here_only and (groups.on_watch_replica(spec.name, argv)
                                       or spec.name == b"xread" and commands.blocks(argv)):
                # XREAD BLOCK waits in Redis, as a blocking pop does (dyno.blocking); a
                # consumer group's reads and claims run there too (dyno.groups)
                self.sources.append(LOCAL)
                self.calls.append(spec)
                size = position + 1
                break
            write = commands.is_write(spec, argv)
            if self.here_only and spec.name in _BRACKETS:  # a transaction run unbracketed here
                self.sources.append(resp.OK)
                continue
            if self.here_only and not write:
                self.sources.append(_NOT_FROM_A_PEER)
                self.refused.append(spec.name)
                continue
            if self.refuse is not None:
                refusal = self.refuse(spec, write)
                if refusal is not None:
                    self.sources.append(refusal)
                    self.refused.append(spec.name)
                    continue
            self.calls.append(spec)
            if route is _KEY:
                self._key(position, spec, argv, write, rewriting)
            elif route is _MULTI_KEY:
                self._multi_key(position, spec, argv, write)
            elif route is _ONE_REPLICA:
                self.open.clear()  # it reads every key: what came before goes first
                self._one_replica(position, spec, argv)
                self.open.clear()  # and what comes after, after
            elif route is _ALL_REPLICAS:
                self.open.clear()
                self._all_replicas(position, spec, argv)
                self.open.clear()
            else:  # pragma: no cover - the table has no other route
                self.sources.append(resp.error(f"ERR dyno: '{spec.name.decode()}' cannot be routed"))
        parts = self._parts()
        sources = self.sources
        if (len(parts) == 1 and len(sources) == size and parts[0].positions == list(range(size))
                and self.width == size and all(source is None for source in sources)):
            part = parts[0]  # one part answers the batch, in order: it is the plan
            part.positions = None
            part.calls = self.calls
            return part
        return Plan(parts, size, sources, self.width, self.refused, self.calls)

    def _transaction_block(self) -> Plan | None:
        """A transaction another datacenter's coordinator sent (MULTI ... EXEC,
        stamped): one part, the block whole, to this datacenter's replicas. None if
        its keys have several replica sets here (this datacenter's ring is laid out
        otherwise): then its commands are planned one by one, MULTI and EXEC answered
        here."""
        requests = self.requests
        end = next((i for i, argv in enumerate(requests) if argv[0].lower() == b"exec"), None)
        if end is None:
            return None
        part = self.planner.transaction(requests[1:end], DC_ONE, DC_ONE, now_ms=self.now_ms, here_only=True,
                                        version=self.given_version, positions=list(range(end + 1)))
        if part.__class__ is bytes:
            return None
        return Plan([part], end + 1, [None] * (end + 1), end + 1, None, self.specs[: end + 1])

    # -- request kinds ----------------------------------------------------------------

    def _level(self, write: bool) -> str:
        return self.write_level if write else self.read_level

    def _key(self, position: int, spec, argv: list[bytes], write: bool, rewriting: bool) -> None:
        ring = self.ring
        name = spec.name
        keys = commands.key_positions(spec, argv)
        if not keys:  # EVAL with no keys (or argv Redis finds none in): any node answers
            self._single(position, (ring.local,), (), argv)
            return
        replicas_of = self._replicas_of
        group = replicas_of(argv[keys[0]])
        for index in keys[1:]:
            if replicas_of(argv[index]) is not group:
                self.sources.append(self.planner.crossslot)
                self.refused.append(name)
                return
        level = self._level(write)
        if name in ANY_REPLICA_READS:
            level = DC_ONE  # any replica's answer is a right one (a random pick, a DUMP, idle times)
        effect = REPLICATE_EFFECT.get(name)
        if effect is not None:
            self._run_once(position, group, argv, effect)
            return
        if name in CURSOR_READS:
            self._cursor_read(position, group, argv)
            return
        encoded = None
        if write and rewriting and name in rewrite.EXPIRY_COMMANDS:
            absolute = rewrite.absolute_expiry(argv, self.now_ms())
            if absolute is not None:
                argv = absolute
                encoded = resp.encode_command(argv)
        canonical = name in UNORDERED_REPLIES and level != DC_ONE
        self._add(position, group, write, level, canonical, argv, encoded)

    def _multi_key(self, position: int, spec, argv: list[bytes], write: bool) -> None:
        """MGET, MSET, DEL, UNLINK, EXISTS, TOUCH: a sub-command per replica set."""
        kind = spec.merge
        stride = 2 if kind is MergeKind.MSET else 1
        if self.planner.uniform_group is not None:
            groups = [(self.planner.uniform_group, argv, None)]
        else:
            owners = list(map(self.ring.replicas, map(self._tokens().__getitem__, argv[1::stride])))
            groups = merge.split_keys(argv, owners, stride)
        level = self._level(write)
        if len(groups) == 1:
            self._add(position, groups[0][0], write, level, False, argv, None)
            return
        if kind is MergeKind.MGET:
            where = [positions for _, _, positions in groups]
            total = (len(argv) - 1) // stride

            def combine(parts, where=where, total=total):
                return merge.merge_mget(parts, where, total)
        elif kind is MergeKind.SUM:
            combine = merge.merge_sum
        else:
            combine = merge.merge_all_ok
        subs = []
        for group, sub_argv, _ in groups:
            sub = self._virtual()
            subs.append(sub)
            self._add(sub, group, write, level, False, sub_argv, None)
        self.sources.append(Merge(combine, subs))

    def _one_replica(self, position: int, spec, argv: list[bytes]) -> None:
        """DBSIZE, KEYS, SCAN, RANDOMKEY: over the nodes of this rack, which together
        hold one full copy; a node that is down is stood in for by its counterpart in
        another rack of this datacenter (same tokens)."""
        ring = self.ring
        nodes = list(ring.rack_nodes(ring.local.dc, ring.local.rack))
        name = spec.name
        if name == b"scan":
            target = merge.scan_target(argv[1], len(nodes))
            if target is None:
                self.sources.append(resp.error("ERR invalid cursor"))
                return
            index, node_cursor = target
            sub = [argv[0], b"%d" % node_cursor, *argv[2:]]
            count = len(nodes)
            part = self._fixed(nodes[index], sub)
            part.transform = lambda reply, index=index, count=count: merge.scan_reply(reply, index, count)
            self.sources.append(None)
            self._special(position, part)
            return
        if name == b"randomkey":
            self.rng.shuffle(nodes)
            combine = merge.merge_first_non_null
        elif name == b"keys":
            combine = merge.merge_concat
        else:  # dbsize
            combine = merge.merge_sum
        subs = []
        for node in nodes:
            sub = self._virtual()
            subs.append(sub)
            self._special(sub, self._fixed(node, argv))
        self.sources.append(Merge(combine, subs))

    def _fixed(self, node: RingNode, argv: list[bytes]) -> Part:
        """A read of one node's share of the rack (its counterparts stand in)."""
        ring = self.ring
        available = self.planner.available
        order = [node] + [
            other for rack in ring.racks(ring.local.dc)
            if (other := ring.owner(node.tokens[0], ring.local.dc, rack)) is not node
            and other.tokens == node.tokens
        ]
        usable = [n for n in order if available(n)] or [node]
        usable += [n for n in order if n not in usable]
        return Special(ONE, DC_ONE, False, (usable[0],), tuple(usable), (), resp.encode_command(argv), 1, None)

    def _all_replicas(self, position: int, spec, argv: list[bytes]) -> None:
        """FLUSHDB, FLUSHALL, SCRIPT LOAD/FLUSH: every node of every rack and DC."""
        if spec.name in (b"flushdb", b"flushall") and not self.planner.flush_enabled:
            self.sources.append(resp.error(
                f"ERR dyno: {spec.name.decode().upper()} is disabled on this cluster (flush_enabled: false)"))
            self.refused.append(spec.name)
            return
        payload = resp.encode_command(argv)
        subs = []
        for node in self.ring.nodes:
            sub = self._virtual()
            subs.append(sub)
            self._special(sub, Part(ONE, DC_ONE, True, (node,), (), (), payload, 1, None))
        self.sources.append(Merge(merge.merge_all_ok, subs))

    def _single(self, position: int, asked: tuple, reserve: tuple, argv: list[bytes]) -> None:
        part = Part(ONE, DC_ONE, False, asked, reserve, (), resp.encode_command(argv), 1, None)
        self.sources.append(None)
        self._special(position, part)

    def _run_once(self, position: int, group: tuple, argv: list[bytes], effect) -> None:
        """SPOP, XADD: on the first available replica (this rack's first); its reply
        answers the client and what it did is sent to every other replica (with
        the same version)."""
        first = _first_available(group, self.planner.available)
        part = Special(ONE, DC_ONE, True, (first,), (), (), resp.encode_command(argv), 1, None,
                       effect=effect, others=tuple(n for n in group if n is not first), argv=argv)
        version = self._version()
        if version is not None:
            self.planner.stamped(part, [argv[1]], version)
        self.sources.append(None)
        self._special(position, part, group)

    def _cursor_read(self, position: int, group: tuple, argv: list[bytes]) -> None:
        """SSCAN/HSCAN/ZSCAN key cursor ...: the replica the cursor names answers
        (a replica's own cursor means nothing to another), at every level. Cursor 0
        starts on the first available replica."""
        found = rewrite.cursor_target(argv[2], len(group))
        if found is None:
            self.sources.append(resp.error("ERR invalid cursor"))
            return
        index, cursor = found
        if argv[2] == b"0":
            index = group.index(_first_available(group, self.planner.available))
        sub = [argv[0], argv[1], b"%d" % cursor, *argv[3:]]
        part = Special(ONE, DC_ONE, False, (group[index],), (), (), resp.encode_command(sub), 1, None)
        count = len(group)
        part.transform = lambda reply, index=index, count=count: rewrite.cursor_reply(reply, index, count)
        self.sources.append(None)
        self._special(position, part, group)

    # -- grouping ---------------------------------------------------------------------

    def _virtual(self) -> int:
        """A position past the batch's requests, for a sub-request."""
        self.width += 1
        return self.width - 1

    def _add(self, position: int, group: tuple, write: bool, level: str, canonical: bool,
             argv: list[bytes], encoded: bytes | None) -> None:
        if position < len(self.requests):
            self.sources.append(None)
        piece = self.open.get(id(group))
        if piece is None or piece[1] is not write or piece[2] != level or piece[3] is not canonical:
            piece = [group, write, level, canonical, []]
            self.open[id(group)] = piece
            self.order.append(piece)
        piece[4].append((position, argv, encoded))

    def _special(self, position: int, part: Part, group: tuple | None = None) -> None:
        """A part planned whole; it closes its replica set's open part (order)."""
        part.positions = [position]
        if group is not None:
            self.open.pop(id(group), None)
        self.order.append(part)

    def _version(self) -> bytes | None:
        """The version of this batch's writes (one for all), made when first asked."""
        if self.version is None:
            self.version = self.planner.batch_version(self.here_only, self.given_version)
        return self.version

    def _parts(self) -> list[Part]:
        parts = []
        planner = self.planner
        for entry in self.order:
            if isinstance(entry, Part):
                parts.append(entry)
                continue
            group, write, level, canonical, members = entry
            positions = [position for position, _, _ in members]
            payload = b"".join([encoded if encoded is not None else self._bytes(position, argv)
                                for position, argv, encoded in members])
            part = planner.part(group, write, level, payload, len(members), positions,
                                self.here_only, canonical)
            if write:
                version = self._version()
                if version is not None:
                    planner.stamped(part, _write_keys([argv for _, argv, _ in members]), version)
            parts.append(part)
        return parts

    def _bytes(self, position: int, argv: list[bytes]) -> bytes:
        """A request's bytes: cut from the read when it was canonical, else encoded."""
        raw = self.raw
        if raw is None or position >= len(self.requests):
            return resp.encode_command(argv)
        offsets = self.offsets
        if offsets is None:
            offsets = self.offsets = [0]
            end = 0
            for length in map(resp.encoded_length, self.requests):
                end += length
                offsets.append(end)
        return raw[offsets[position] : offsets[position + 1]]


def _write_keys(requests) -> list[bytes]:
    """The keys the write requests of a part write (a version is stamped on each)."""
    keys: list[bytes] = []
    resolve = commands.resolve
    for argv in requests:
        spec = resolve(argv)
        if spec.fixed_keys == (1,):
            keys.append(argv[1])
        else:
            keys += commands.keys(spec, argv)
    return keys


def _refused_name(argv: list[bytes]) -> bytes:
    spec = commands.lookup(argv[0]) if argv else None
    return spec.name if spec is not None else b"unknown"
