"""Anti-entropy repair: make a node's replicas agree, key by key (``dyno repair``).

What it owns: deciding, for one key, which replica holds the newest state and which
replicas must receive it (``decide``, pure); fetching and copying the keys of a
chunk between replicas (``repair_keys``, which read repair reuses); a repair job
over the token ranges a node owns (``Repair``, planned by ``plan_repair``) and the
SCAN loop it runs its steps in (``scan_steps``, which dyno.streaming's copies share); the
node-side glue the admin port drives (``RepairService``); and the two ways to reach
a replica's Redis (``node_call``: through the node's datastore and peer links;
``RedisCall``: straight to each Redis, for tests, benchmarks and tools).

What it must never do: make a replica older. Every copy goes through the Lua script
``versions.RESTORE_IF_NEWER``, which installs it only where the replica's version is
older, so a write landing during repair is never overwritten by what repair read
before it. It never writes to a replica outside the job's rack filter, and it never
raises a traceback at an operator: an unreachable replica ends the job with a line
naming it. Its commands share the node's Redis connections with clients: each
EVAL holds a Redis for about a millisecond (``CHUNK`` keys), and ``rate`` bounds
how many keys a second a job compares.

Theory of operation. A key's *state* on a replica is what ``versions.FETCH`` reads
there in one atomic step: its version (``b""`` if none), its absolute expiry, and
its DUMP (or the DUMP's sha1). States are ranked by version (bytes; no version is
older than any); a replica without the key whose versions database still holds a
version has a *tombstone*, and a tombstone newer than a value wins (the delete is
copied); but replicas that all lack a key agree when every tombstone of it is older
than ``tombstone_grace``, which each replica drops in its own time (dyno.tombstones),
so repair does not copy back what a sweep dropped. Two states of the same version (one write applied twice, or a copy) are
ranked by their *content digest* (``versions.DIGEST``: a function of the value, not
of its DUMP, whose bytes differ between Redis processes for equal sets and hashes),
then by expiry (none counts as latest). That order is total and the same in Python
and in the Lua that installs copies, so repeated repairs converge.

A job scans db 0 of every replica of its ranges in turn (SCAN, ``SCAN_COUNT`` keys
a step), keeps the keys whose token this node owns in its rack (and that fall in
the requested token range), and repairs each step's keys against all their
replicas at once, in chunks, ``PARALLEL`` steps at a time. Memory is a few steps'
keys, whatever the size of the data. A key held by a replica scanned earlier was
compared during that replica's pass, so later passes skip the keys an earlier
replica holds now (one EXISTS each): in a healthy cluster each key is fetched
once, not once per replica holding it; a key present only on later replicas (a
flushed replica, a lost write) is compared in the first pass that finds it.
``repair_keys`` is idempotent, so a key compared twice costs time, never
correctness.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import hiredis
import trio

from dyno.datastore import Sink
from dyno.ring import MAX_TOKEN, Ring, RingError, RingNode
from dyno.tombstones import horizon_now
from dyno.versions import DEFAULT_DB, DIGEST, FETCH, RESTORE_IF_NEWER

if TYPE_CHECKING:
    from dyno.datastore import Datastore
    from dyno.peer import PeerLink

__all__ = [
    "CHUNK", "PARALLEL", "PRESENT", "RESTORE_SHA", "SCAN_COUNT", "Call", "Decision", "KeyRepairResult",
    "KeyState", "NodeCall", "RedisCall", "Repair", "RepairPlan", "RepairRunning", "RepairService",
    "RepairUnavailable", "ReplicaUnavailable", "TokenRange", "decide", "node_call", "parse_range",
    "plan_repair", "repair_keys", "scan_steps",
]

log = logging.getLogger("dyno.repair")

SCAN_COUNT = 1000   # SCAN's COUNT: keys asked of a replica per step
CHUNK = 500         # keys per FETCH: one EVAL holds its Redis for about a millisecond
PARALLEL = 2        # SCAN steps repaired at once by a job
MAX_MESSAGES = 5    # error messages a result keeps (the count keeps counting)
NO_EXPIRY_RANK = 1 << 62  # "no expiry" ranks after every deadline
# Copies run RESTORE_IF_NEWER by its sha1 (EVALSHA), after one SCRIPT LOAD per call:
# one EVAL per copy would send the script's 1.6 kB with every key.
RESTORE_SHA = hashlib.sha1(RESTORE_IF_NEWER).hexdigest().encode()
_LOAD_RESTORE = [b"SCRIPT", b"LOAD", RESTORE_IF_NEWER]

#: ``call(replica, argvs)``: send the commands ``argvs`` to ``replica``'s Redis (its
#: database 0) and return their replies as hiredis parses them (a Redis error is a
#: ``hiredis.ReplyError`` in the list, not raised). Raises ``ReplicaUnavailable``
#: when the replica cannot be reached or does not answer.
Call = Callable[[RingNode, list[list[bytes]]], Awaitable[list]]


class ReplicaUnavailable(Exception):
    """A replica's Redis could not be reached, or did not answer in time."""

    def __init__(self, node: str, reason: str):
        super().__init__(f"replica {node} is unreachable: {reason}")
        self.node = node
        self.reason = reason


class RepairRunning(Exception):
    """A repair job is running already on this node (one at a time)."""


class RepairUnavailable(Exception):
    """This node cannot run a repair now (its repair service is not serving)."""


# -- the decision, pure --------------------------------------------------------------


class KeyState(NamedTuple):
    """One key on one replica, as ``versions.FETCH`` reads it."""

    version: bytes          # b"": none (older than any version)
    expire_at: int          # absolute ms; -1: no expiry; -2: no key
    value: bytes            # the DUMP, or its sha1 (FETCH's hashed mode); b"": no key
    digest: bytes | None = None  # versions.DIGEST of the value, when it was asked for

    @property
    def present(self) -> bool:
        return self.expire_at != -2


class Decision(NamedTuple):
    """What to do with one key. ``winner`` is the index of a replica holding the
    newest state, ``targets`` the indexes of those that must receive it (empty when
    all agree). ``needs_digests``: the decision cannot be made until the states at
    these indexes carry their content digest (``winner`` is None then)."""

    winner: int | None
    targets: tuple[int, ...]
    needs_digests: tuple[int, ...] = ()
    tie: bool = False       # the copies need the winner's digest (RESTORE_IF_NEWER's ARGV[5])


def _expiry_rank(state: KeyState) -> int:
    return NO_EXPIRY_RANK if state.expire_at == -1 else state.expire_at


def _digest(state: KeyState) -> bytes | None:
    return state.digest if state.present else b""


def decide(states: Sequence[KeyState], horizon: bytes = b"") -> Decision:
    """Which of ``states`` (one key on each replica) wins, and which replicas must
    receive it.

    The newest version wins; a tombstone (no key, a version) is a state like any
    other, so a delete newer than a value wins. Among the states of the newest
    version, identical ones (same value and expiry) agree; if they differ, they are
    ranked by content digest, then by expiry (none latest), and equal ranks agree
    (the same value dumped differently). The result does not depend on the order of
    ``states``; a replica that received the winner's state is never a target again.

    ``horizon`` (``tombstones.horizon``; ``b""``: none): when no replica holds the
    key and every version is older than it, the replicas agree, whoever still has a
    tombstone: one that its replica may drop any time (dyno.tombstones) is not
    copied back to a replica that dropped it first. A tombstone still deletes a
    value, however old: that is what it is kept for.
    """
    newest = max(state.version for state in states)
    if newest < horizon and not any(state.present for state in states):
        return Decision(next(i for i, state in enumerate(states) if state.version == newest), ())
    tied = [index for index, state in enumerate(states) if state.version == newest]
    first = states[tied[0]]
    if all(states[i].value == first.value and states[i].expire_at == first.expire_at for i in tied):
        targets = tuple(index for index, state in enumerate(states) if state.version != newest)
        return Decision(tied[0], targets)
    missing = tuple(i for i in tied if _digest(states[i]) is None)
    if missing:
        return Decision(None, (), missing)

    def rank(state: KeyState) -> tuple[bytes, int]:
        return _digest(state), _expiry_rank(state)

    # Among equal ranks the largest value is the winner, so that the state copied
    # does not depend on the order of the replicas.
    winner = max(tied, key=lambda i: (*rank(states[i]), states[i].value))
    best = rank(states[winner])
    targets = tuple(
        index for index, state in enumerate(states)
        if state.version != newest or rank(state) < best
    )
    return Decision(winner, targets, tie=True)


# -- repairing keys ------------------------------------------------------------------


class KeyRepairResult:
    """What ``repair_keys`` did: plain counters, and the first few error messages."""

    __slots__ = ("compared", "repaired", "deleted", "skipped", "changed", "errors", "messages")

    def __init__(self) -> None:
        self.compared = 0   # keys whose states were compared
        self.repaired = 0   # values copied to a replica (installed)
        self.deleted = 0    # tombstones copied to a replica (installed)
        self.skipped = 0    # copies a replica refused: it had a newer version by then
        self.changed = 0    # keys left alone: the winner changed between two reads
        self.errors = 0     # Redis errors (a FETCH, a RESTORE)
        self.messages: list[str] = []

    def error(self, message: str, count: int = 1) -> None:
        self.errors += count
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)

    def add(self, other: "KeyRepairResult") -> None:
        self.compared += other.compared
        self.repaired += other.repaired
        self.deleted += other.deleted
        self.skipped += other.skipped
        self.changed += other.changed
        self.errors += other.errors
        room = MAX_MESSAGES - len(self.messages)
        if room > 0:
            self.messages.extend(other.messages[:room])

    @property
    def copies(self) -> int:
        return self.repaired + self.deleted

    def __repr__(self) -> str:
        return (f"<KeyRepairResult compared={self.compared} repaired={self.repaired} "
                f"deleted={self.deleted} skipped={self.skipped} changed={self.changed} "
                f"errors={self.errors}>")


async def _gather(call: Call, jobs: Sequence[tuple[RingNode, list[list[bytes]]]]) -> list[list]:
    """The replies of every ``(replica, argvs)`` of ``jobs``, the replicas asked at
    once; the first ``ReplicaUnavailable`` is raised once all have answered."""
    if len(jobs) == 1:
        node, argvs = jobs[0]
        return [await call(node, argvs)]
    replies: list = [None] * len(jobs)
    failures: list[ReplicaUnavailable] = []

    async def ask(index: int, node: RingNode, argvs: list[list[bytes]]) -> None:
        try:
            replies[index] = await call(node, argvs)
        except ReplicaUnavailable as failure:
            failures.append(failure)

    async with trio.open_nursery() as nursery:
        for index, (node, argvs) in enumerate(jobs):
            nursery.start_soon(ask, index, node, argvs)
    if failures:
        raise failures[0]
    return replies


async def scan_steps(call: Call, node: RingNode,
                     step_for: Callable[[list[bytes]], Callable[[], Awaitable[None]] | None], *,
                     count: bytes, parallel: int, bad_reply: Callable[[object], None]) -> None:
    """SCAN db 0 of ``node`` to its end (``count`` keys a step) and run the work of
    each step, up to ``parallel`` steps at a time, so that the node answers the next
    SCAN while earlier steps' keys are worked on; memory stays a few steps' keys.

    ``step_for(keys)`` is called with every step's keys, in SCAN order, before the
    next SCAN: it returns the work to run for them (an async callable), or None.
    A SCAN reply that is not a list (a Redis error) goes to ``bad_reply`` and ends
    the scan, the steps started finishing first; ``bad_reply`` may instead raise
    ``ReplicaUnavailable``. The first ``ReplicaUnavailable``, from a SCAN, a step
    or ``bad_reply``, cancels the steps still running and is raised.
    (Used by repair's passes and by dyno.streaming's copies.)"""
    failures: list[ReplicaUnavailable] = []
    slots = trio.Semaphore(parallel)

    async def run(work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except ReplicaUnavailable as failure:
            failures.append(failure)
            nursery.cancel_scope.cancel()
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        cursor = b"0"
        try:
            while True:
                [reply] = await call(node, [[b"SCAN", cursor, b"COUNT", count]])
                if not isinstance(reply, list):  # (a hiredis.ReplyError, or worse)
                    bad_reply(reply)
                    break
                cursor, keys = reply
                work = step_for(keys)
                if work is not None:
                    await slots.acquire()
                    nursery.start_soon(run, work)
                if cursor == b"0":
                    break
        except ReplicaUnavailable as failure:
            failures.append(failure)
            nursery.cancel_scope.cancel()
    if failures:
        raise failures[0]


def _eval(script: bytes, keys: Sequence[bytes], *args: bytes) -> list[bytes]:
    return [b"EVAL", script, b"%d" % len(keys), *keys, *args]


def _rows(reply, count: int, what: str, node: RingNode, result: KeyRepairResult) -> list | None:
    """An EVAL's list of ``count`` results, or None (and an error counted) if the
    replica answered an error or something else."""
    if isinstance(reply, hiredis.ReplyError):
        result.error(f"{node.name}: {what} failed: {reply}")
        return None
    if not isinstance(reply, list) or len(reply) != count:
        result.error(f"{node.name}: {what} answered {str(reply)[:60]!r}, not {count} results")
        return None
    return reply


async def repair_keys(keys: Sequence[bytes], replicas: Sequence[RingNode], call: Call,
                      db: int = DEFAULT_DB, *, writable: Callable[[RingNode], bool] | None = None,
                      ties: bool = True, horizon: bytes = b"") -> KeyRepairResult:
    """Compare ``keys`` on every replica of ``replicas`` and copy the newest state of
    each over the stale ones (only to those ``writable`` allows; default all).
    ``ties=False`` (read repair): only over replicas holding an *older* version;
    values that differ under one version (changed behind dyno's back) are left to
    ``dyno repair``, and the read that saw them is not answered with either.
    ``horizon``: tombstones older than it, of keys no replica holds, are not copied
    (``decide``; dyno.tombstones).

    One FETCH (hashed: DUMPs' sha1) per replica for all the keys; one DIGEST per
    replica whose same-version states must be ranked; one full FETCH per winning
    replica for the values to copy; one RESTORE_IF_NEWER per copy, all of a
    replica's in one call. A winner whose state changed between the two FETCHes is
    left alone (``changed``). A replica answering an error is left out of this
    chunk (counted in ``errors``); an unreachable one raises ``ReplicaUnavailable``.
    """
    result = KeyRepairResult()
    if not keys:
        return result
    count = len(keys)
    db_arg = b"%d" % db
    fetch = _eval(FETCH, keys, db_arg, b"sha1")
    replies = await _gather(call, [(node, [fetch]) for node in replicas])
    readable: list[int] = []   # indexes into replicas
    columns: list[list] = []   # per readable replica, a row per key
    for index, node in enumerate(replicas):
        rows = _rows(replies[index][0], count, "FETCH", node, result)
        if rows is not None:
            readable.append(index)
            columns.append(rows)
    if not readable:
        return result
    result.compared = count

    # key index -> (states, decision) for every key whose replicas disagree
    undecided: dict[int, list[KeyState]] = {}
    decided: dict[int, tuple[list[KeyState], Decision]] = {}
    for k in range(count):
        first = columns[0][k]
        if all(column[k] == first for column in columns[1:]):
            continue
        states = [KeyState(*column[k]) for column in columns]
        decision = decide(states, horizon)
        if decision.needs_digests:
            if ties:
                undecided[k] = states
        elif decision.targets:
            decided[k] = (states, decision)

    if undecided:
        await _add_digests(undecided, decided, keys, replicas, readable, call, result)

    # key indexes by the (position of the) replica holding their winning value
    by_winner: dict[int, list[int]] = {}
    copies: dict[int, list[list[bytes]]] = {}    # position -> RESTORE_IF_NEWER argvs
    kinds: dict[int, list[bool]] = {}             # position -> per copy: a tombstone?
    for k, (states, decision) in decided.items():
        targets = [t for t in decision.targets
                   if (writable is None or writable(replicas[readable[t]]))
                   and (ties or states[t].version < states[decision.winner].version)]
        if not targets:
            continue
        decided[k] = (states, decision._replace(targets=tuple(targets)))
        if states[decision.winner].present:
            by_winner.setdefault(decision.winner, []).append(k)
        else:
            _queue_copies(copies, kinds, keys[k], states[decision.winner], decision, db_arg, b"")

    if by_winner:
        positions = list(by_winner)
        full = await _gather(call, [
            (replicas[readable[p]], [_eval(FETCH, [keys[k] for k in by_winner[p]], db_arg)])
            for p in positions
        ])
        for p, reply in zip(positions, full):
            wanted = by_winner[p]
            rows = _rows(reply[0], len(wanted), "FETCH", replicas[readable[p]], result)
            if rows is None:
                continue
            for k, (version, expire_at, dump) in zip(wanted, rows):
                states, decision = decided[k]
                seen = states[decision.winner]
                if (version != seen.version or expire_at != seen.expire_at or not dump
                        or hashlib.sha1(dump).hexdigest().encode() != seen.value):
                    result.changed += 1   # written since: the write path carries it
                    continue
                _queue_copies(copies, kinds, keys[k], seen, decision, db_arg, dump)

    if copies:
        positions = list(copies)
        answers = await _gather(call, [(replicas[readable[p]], [_LOAD_RESTORE, *copies[p]])
                                       for p in positions])
        for p, reply in zip(positions, answers):
            node = replicas[readable[p]]
            for installed, tombstone in zip(reply[1:], kinds[p]):
                if installed == 1:
                    if tombstone:
                        result.deleted += 1
                    else:
                        result.repaired += 1
                elif installed == 0:
                    result.skipped += 1
                else:
                    result.error(f"{node.name}: RESTORE_IF_NEWER failed: {installed}")
    return result


def _queue_copies(copies: dict[int, list[list[bytes]]], kinds: dict[int, list[bool]], key: bytes,
                  winner: KeyState, decision: Decision, db_arg: bytes, payload: bytes) -> None:
    expire = b"%d" % winner.expire_at if winner.expire_at >= 0 else b"0"
    argv = [b"EVALSHA", RESTORE_SHA, b"1", key, winner.version, db_arg, expire, payload]
    if decision.tie:
        argv.append(_digest(winner))
    for target in decision.targets:
        copies.setdefault(target, []).append(argv)
        kinds.setdefault(target, []).append(not payload)


async def _add_digests(undecided: dict[int, list[KeyState]], decided: dict, keys: Sequence[bytes],
                       replicas: Sequence[RingNode], readable: list[int], call: Call,
                       result: KeyRepairResult) -> None:
    """Ask DIGEST where ``decide`` needs it, then decide those keys again."""
    wanted: dict[int, list[int]] = {}  # position -> key indexes
    for k, states in undecided.items():
        for position in decide(states).needs_digests:
            wanted.setdefault(position, []).append(k)
    positions = list(wanted)
    replies = await _gather(call, [
        (replicas[readable[p]], [_eval(DIGEST, [keys[k] for k in wanted[p]])]) for p in positions
    ])
    for p, reply in zip(positions, replies):
        ks = wanted[p]
        rows = _rows(reply[0], len(ks), "DIGEST", replicas[readable[p]], result)
        if rows is None:
            continue
        for k, digest in zip(ks, rows):
            states = undecided[k]
            states[p] = states[p]._replace(digest=digest)
    for k, states in undecided.items():
        decision = decide(states)
        if decision.needs_digests:
            continue  # a DIGEST failed: the error is counted, the key waits for the next repair
        if decision.targets:
            decided[k] = (states, decision)


# -- what a job repairs --------------------------------------------------------------


class TokenRange(NamedTuple):
    """The tokens ``t`` with ``start < t <= end`` (a node owns ``(previous token,
    its token]``); when ``start > end`` the range wraps past ``MAX_TOKEN`` to 0."""

    start: int
    end: int

    def __contains__(self, token: object) -> bool:
        if self.start < self.end:
            return self.start < token <= self.end  # type: ignore[operator]
        return token > self.start or token <= self.end  # type: ignore[operator]

    def __str__(self) -> str:
        return f"{self.start}:{self.end}"


def parse_range(text: str) -> TokenRange:
    """``"A:B"`` -> TokenRange(A, B); ValueError naming what is wrong."""
    start, colon, end = text.partition(":")
    try:
        if not colon:
            raise ValueError
        first, last = int(start), int(end)
    except ValueError:
        raise ValueError(f"range {text!r} is not START:END (two tokens, e.g. 0:1073741824)") from None
    for token in (first, last):
        if not 0 <= token <= MAX_TOKEN:
            raise ValueError(f"range {text!r}: token {token} is not from 0 to {MAX_TOKEN}")
    if first == last:
        raise ValueError(f"range {text!r} is empty: START and END must differ (it covers "
                         "START < token <= END, wrapping past the largest token when START > END)")
    return TokenRange(first, last)


def _pieces(start: int, end: int) -> list[tuple[int, int]]:
    """``(start, end]`` on the ring as intervals ``(lo, hi]`` of the integers that
    do not wrap (start == end: the whole ring)."""
    if start < end:
        return [(start, end)]
    return [(start, MAX_TOKEN), (-1, end)]


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> bool:
    return any(max(lo1, lo2) < min(hi1, hi2) for lo1, hi1 in a for lo2, hi2 in b)


class RepairPlan:
    """What a job repairs: the keys whose token ``node`` owns in its rack (and that
    fall in ``token_range``, if given), compared across their owners in every rack
    of ``node``'s datacenter. ``scan`` is every replica involved, in ring order;
    copies go only to replicas of ``rack`` (all, without it). Pure."""

    def __init__(self, ring: Ring, node: RingNode, rack: str | None = None,
                 token_range: TokenRange | None = None):
        self.ring = ring
        self.node = node
        self.rack = rack
        self.token_range = token_range
        self._cache: dict[int, tuple[RingNode, ...] | None] = {}
        dc = node.dc
        boundaries = sorted({t for member in ring.nodes if member.dc == dc for t in member.tokens})
        involved: set[RingNode] = set()
        wanted = _pieces(token_range.start, token_range.end) if token_range else None
        previous = boundaries[-1]
        for boundary in boundaries:
            replicas = self._in_dc(ring.replicas(boundary))
            if node in replicas and (wanted is None or _overlap(_pieces(previous, boundary), wanted)):
                involved.update(replicas)
            previous = boundary
        self.scan: tuple[RingNode, ...] = tuple(member for member in ring.nodes if member in involved)
        self.writable = frozenset(member.name for member in self.scan
                                  if rack is None or member.rack == rack)

    def _in_dc(self, replicas: tuple[RingNode, ...]) -> tuple[RingNode, ...]:
        dc = self.node.dc
        return tuple(member for member in replicas if member.dc == dc)

    def replicas_of(self, token: int) -> tuple[RingNode, ...] | None:
        """The replicas to compare a key of ``token`` on, or None if it is not this
        job's key."""
        if self.token_range is not None and token not in self.token_range:
            return None
        replicas = self.ring.replicas(token)
        # The ring's replica tuples are interned and live as long as the ring: their
        # identity is a cheap key (a tuple of nodes hashes every node's fields).
        mine = self._cache.get(id(replicas), False)
        if mine is False:
            ours = self._in_dc(replicas)
            mine = self._cache[id(replicas)] = ours if self.node in ours else None
        return mine

    def may_write(self, replica: RingNode) -> bool:
        return replica.name in self.writable

    def describe(self) -> dict:
        return {
            "node": self.node.name, "dc": self.node.dc, "rack": self.rack,
            "range": str(self.token_range) if self.token_range else None,
            "replicas": [member.name for member in self.scan],
            "writable": [member.name for member in self.scan if member.name in self.writable],
        }


def plan_repair(ring: Ring, node: RingNode | str | None = None, rack: str | None = None,
                token_range: TokenRange | str | None = None) -> RepairPlan:
    """The plan of a repair of ``node``'s ranges (default: the ring's local node);
    ValueError naming a rack or range that is not one."""
    if node is None:
        node = ring.local
    elif isinstance(node, str):
        node = ring.node(node)
    if isinstance(token_range, str):
        token_range = parse_range(token_range)
    if rack is not None:
        racks = ring.racks(node.dc)
        if rack not in racks:
            raise ValueError(f"no rack {rack!r} in datacenter {node.dc}; its racks are: "
                             f"{', '.join(racks)}")
    return RepairPlan(ring, node, rack, token_range)


# -- a job ---------------------------------------------------------------------------

#: KEYS: keys. For each, 1 if it exists in database 0, else 0.
PRESENT = b"""
redis.call('SELECT', 0)
local out = {}
for i = 1, #KEYS do out[i] = redis.call('EXISTS', KEYS[i]) end
return out
"""

RUNNING_PHASES = ("starting", "sizing", "scanning")


class Repair:
    """A repair job over a plan's ranges; ``run`` once. Its ``progress`` is read
    while it runs (``status``). ``rate``: keys compared per second (0: as fast as
    the replicas answer); ``clock``: seconds, for rates and the throttle;
    ``tombstone_grace``: seconds after which a tombstone may be dropped
    (dyno.tombstones; None: never), so not copied back where it was."""

    def __init__(self, plan: RepairPlan, call: Call, *, db: int = DEFAULT_DB, rate: float = 0.0,
                 clock: Callable[[], float] = trio.current_time, job_id: int = 1,
                 chunk: int = CHUNK, scan_count: int = SCAN_COUNT, parallel: int = PARALLEL,
                 tombstone_grace: float | None = None):
        if rate < 0:
            raise ValueError(f"rate {rate} is negative: give keys per second, or 0 for no limit")
        self.plan = plan
        self.call = call
        self.db = db
        self.rate = rate
        self.clock = clock
        self.tombstone_grace = tombstone_grace
        self.chunk = chunk
        self.parallel = parallel
        self.scan_count = b"%d" % scan_count
        self.id = job_id
        self.result = KeyRepairResult()
        self.phase = "starting"
        self.error: str | None = None
        self.scanned = 0
        self.total: int | None = None   # DBSIZE of the replicas scanned, summed
        self.scanning: str | None = None
        self.passes_done = 0
        self.started_at = time.time()
        self.started: float | None = None
        self.finished: float | None = None

    @property
    def running(self) -> bool:
        return self.phase in RUNNING_PHASES

    async def run(self) -> "Repair":
        """Run the job to its end. An unreachable replica ends it with ``phase``
        "failed" and ``error`` naming it; it never raises for that."""
        self.started = self.clock()
        call = self.call
        scan = self.plan.scan
        try:
            self.phase = "sizing"
            sizes = await _gather(call, [(node, [[b"DBSIZE"]]) for node in scan])
            self.total = sum(reply[0] for reply in sizes if isinstance(reply[0], int))
            self.phase = "scanning"
            for index, replica in enumerate(scan):
                self.scanning = replica.name
                await self._scan(replica, scan[:index])
                self.passes_done = index + 1
            self.scanning = None
            self.phase = "done"
        except ReplicaUnavailable as failure:
            self.phase = "failed"
            self.error = str(failure)
            log.warning("repair %d of %s failed: %s", self.id, self.plan.node.name, failure)
        except Exception as error:  # a bug: end this job, never the node
            self.phase = "failed"
            self.error = f"internal error: {error!r} (see the node's log)"
            log.exception("repair %d of %s failed", self.id, self.plan.node.name)
        except BaseException:
            self.phase = "cancelled"
            self.error = "the repair was stopped (the node is shutting down)"
            raise
        finally:
            self.finished = self.clock()
        if self.phase == "done":
            log.info("repair %d of %s done: %s", self.id, self.plan.node.name, self.summary())
        return self

    async def _scan(self, replica: RingNode, earlier: Sequence[RingNode]) -> None:
        """One pass: SCAN ``replica`` and repair each step's keys, up to ``parallel``
        steps at a time (a replica answers one step while another's are decided)."""

        def step_for(keys: list[bytes]) -> Callable[[], Awaitable[None]] | None:
            self.scanned += len(keys)
            return functools.partial(self._repair_step, keys, earlier) if keys else None

        def scan_failed(reply: object) -> None:
            # this replica's keys are left for the next repair; the job goes on
            self.result.error(f"{replica.name}: SCAN failed: {reply}")

        await scan_steps(self.call, replica, step_for, count=self.scan_count, parallel=self.parallel,
                         bad_reply=scan_failed)

    async def _repair_step(self, keys: list[bytes], earlier: Sequence[RingNode]) -> None:
        plan = self.plan
        groups: dict[int, tuple[tuple[RingNode, ...], list[bytes]]] = {}
        for key, token in zip(keys, plan.ring.tokens_of(keys)):
            replicas = plan.replicas_of(token)
            if replicas is not None:
                group = groups.get(id(replicas))
                if group is None:
                    group = groups[id(replicas)] = (replicas, [])
                group[1].append(key)
        grace = self.tombstone_grace
        cutoff = horizon_now(grace) if grace is not None else b""
        for replicas, mine in groups.values():
            if earlier:
                mine = await self._not_seen(mine, earlier)
            for start in range(0, len(mine), self.chunk):
                chunk = mine[start:start + self.chunk]
                self.result.add(await repair_keys(chunk, replicas, self.call, self.db,
                                                  writable=plan.may_write, horizon=cutoff))
                await self._throttle()

    async def _not_seen(self, keys: list[bytes], earlier: Sequence[RingNode]) -> list[bytes]:
        """The keys no replica scanned earlier holds (those were compared in its pass)."""
        replies = await _gather(self.call, [(node, [_eval(PRESENT, keys)]) for node in earlier])
        seen = [False] * len(keys)
        for node, [reply] in zip(earlier, replies):
            rows = _rows(reply, len(keys), "EXISTS", node, self.result)
            if rows is None:
                continue  # compare them all again: a repeat is harmless
            seen = [was or bool(now) for was, now in zip(seen, rows)]
        return [key for key, was in zip(keys, seen) if not was]

    async def _throttle(self) -> None:
        if self.rate and self.started is not None:
            ahead = self.started + self.result.compared / self.rate - self.clock()
            if ahead > 0:
                await trio.sleep(ahead)

    # -- progress --------------------------------------------------------------------

    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        end = self.finished if self.finished is not None else self.clock()
        return max(0.0, end - self.started)

    def status(self) -> dict:
        """The job's progress as plain data (the admin port's JSON)."""
        result = self.result
        elapsed = self.elapsed()
        eta = None
        if not self.running:
            eta = 0.0
        elif self.total == 0:
            eta = 0.0
        elif self.total and self.scanned:
            done = min(self.scanned / self.total, 0.99)
            eta = round(elapsed * (1 - done) / done, 1)
        return {
            "id": self.id, **self.plan.describe(), "phase": self.phase, "running": self.running,
            "rate_limit": self.rate, "scanning": self.scanning,
            "passes": len(self.plan.scan), "passes_done": self.passes_done,
            "keys_total": self.total, "keys_scanned": self.scanned,
            "compared": result.compared, "repaired": result.repaired, "deleted": result.deleted,
            "skipped": result.skipped, "changed": result.changed, "errors": result.errors,
            "error_samples": list(result.messages), "error": self.error,
            "started": self.started_at, "elapsed": round(elapsed, 3),
            "rate": round(result.compared / elapsed, 1) if elapsed else 0.0, "eta": eta,
        }

    def summary(self) -> str:
        result = self.result
        return (f"{result.compared} keys compared, {result.repaired} values and {result.deleted} "
                f"deletes copied, {result.skipped} refused as older, {result.errors} errors, "
                f"in {self.elapsed():.1f} s")


# -- the node's side: one job at a time, driven by the admin port --------------------


class RepairService:
    """Holds this node's current (or last) repair job and runs it in its own
    nursery (``serve``, which the node starts). ``ring()`` is the ring as the node
    sees it now; ``call`` reaches a replica's Redis (``node_call``)."""

    def __init__(self, ring: Callable[[], Ring], call: Call, *, db: int = DEFAULT_DB,
                 rate: float = 0.0, clock: Callable[[], float] = trio.current_time,
                 tombstone_grace: float | None = None):
        self.ring = ring
        self.call = call
        self.db = db
        self.rate = rate
        self.tombstone_grace = tombstone_grace
        self.clock = clock
        self.job: Repair | None = None
        self._jobs = 0
        self._nursery: trio.Nursery | None = None

    async def serve(self) -> None:
        """Run jobs until cancelled (the node stops)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def start(self, rack: str | None = None, token_range: str | None = None,
              rate: float | None = None) -> dict:
        """Start a job; its status. ValueError for a bad rack, range or rate;
        RepairRunning if one runs already; RepairUnavailable if the service is not
        serving."""
        job = self.job
        if job is not None and job.running:
            raise RepairRunning(f"repair {job.id} is running already on {job.plan.node.name} "
                                f"(phase {job.phase}, {job.result.compared} keys compared)")
        if self._nursery is None:
            raise RepairUnavailable("the repair service is not running (the node is starting or stopping)")
        try:
            plan = plan_repair(self.ring(), None, rack or None, token_range or None)
        except RingError as error:
            raise ValueError(str(error)) from None
        self._jobs += 1
        job = self.job = Repair(plan, self.call, db=self.db, rate=self.rate if rate is None else rate,
                                clock=self.clock, job_id=self._jobs, tombstone_grace=self.tombstone_grace)
        self._nursery.start_soon(job.run)
        log.info("repair %d of %s started: rack %s, range %s, replicas %s", job.id, plan.node.name,
                 rack or "all", token_range or "all", ", ".join(m.name for m in plan.scan))
        return job.status()

    def status(self) -> dict | None:
        return self.job.status() if self.job is not None else None


# -- reaching a replica's Redis ------------------------------------------------------


def _pack(argvs: list[list[bytes]]) -> bytes:
    return b"".join([hiredis.pack_command(tuple(argv)) for argv in argvs])


def _parse(data: bytes, count: int) -> list:
    reader = hiredis.Reader()
    reader.feed(data)
    replies = []
    for _ in range(count):
        reply = reader.gets()
        if reply is False:
            raise hiredis.ProtocolError("fewer replies than requests")
        replies.append(reply)
    return replies


class _Replies(Sink):
    """Collects the replies of one call through the datastore or a peer link."""

    __slots__ = ("left", "parts", "error", "done")
    runs = True
    split = True

    def __init__(self, count: int):
        self.left = count
        self.parts: list[bytes] = []
        self.error: bytes | None = None
        self.done = trio.Event()

    def deliver(self, reply: bytes) -> None:
        self._got([reply], 1)

    def deliver_run(self, replies: bytes, n: int) -> None:
        self._got([replies], n)

    def deliver_parts(self, replies: list[bytes]) -> None:
        self._got(replies, len(replies))

    def deliver_each(self, replies: list[bytes]) -> None:
        self._got(replies, len(replies))

    def _got(self, parts: list[bytes], n: int) -> None:
        self.parts.extend(parts)
        self.left -= n
        if self.left <= 0:
            self.done.set()

    def fail(self, error: bytes) -> None:
        if self.error is None:
            self.error = error
        self.done.set()


class NodeCall:
    """The ``Call`` a node gives repair: its own Redis through its datastore, a
    peer's Redis through the peer link (the peer runs the commands on its own
    datastore). The datastore's and the link's time-outs bound each call; ``timeout``
    is a last guard."""

    def __init__(self, local: str, datastore: "Datastore",
                 link_of: Callable[[str], "PeerLink | None"], timeout: float = 30.0):
        self.local = local
        self.datastore = datastore
        self.link_of = link_of
        self.timeout = timeout

    async def __call__(self, node: RingNode, argvs: list[list[bytes]]) -> list:
        count = len(argvs)
        sink = _Replies(count)
        payload = _pack(argvs)
        if node.name == self.local:
            self.datastore.send_run(payload, sink, count)
        else:
            link = self.link_of(node.name)
            if link is None:
                raise ReplicaUnavailable(node.name, "no peer link to it")
            link.send_batch(payload, sink, count=count)
        with trio.move_on_after(self.timeout):
            await sink.done.wait()
        if not sink.done.is_set():
            raise ReplicaUnavailable(node.name, f"no answer in {self.timeout:g} s")
        if sink.error is not None:
            reason = sink.error.decode("utf-8", "replace").strip().lstrip("-")
            raise ReplicaUnavailable(node.name, reason)
        try:
            return _parse(b"".join(sink.parts), count)
        except hiredis.ProtocolError as error:
            raise ReplicaUnavailable(node.name, f"unreadable answer: {error}") from None


def node_call(local: str, datastore: "Datastore", link_of: Callable[[str], "PeerLink | None"],
              timeout: float = 30.0) -> Call:
    return NodeCall(local, datastore, link_of, timeout)


class _Connection:
    __slots__ = ("stream", "reader", "lock")

    def __init__(self) -> None:
        self.stream: trio.SocketStream | None = None
        self.reader = hiredis.Reader()
        self.lock = trio.Lock()


class RedisCall:
    """A ``Call`` straight to each replica's Redis (``addresses``: node name ->
    (host, port)), one connection per replica, commands pipelined: for tests,
    benchmarks and tools that reach every Redis themselves."""

    def __init__(self, addresses: Mapping[str, tuple[str, int]], timeout: float = 10.0):
        self.addresses = dict(addresses)
        self.timeout = timeout
        self._connections: dict[str, _Connection] = {}

    async def __call__(self, node: RingNode, argvs: list[list[bytes]]) -> list:
        try:
            host, port = self.addresses[node.name]
        except KeyError:
            raise ReplicaUnavailable(node.name, "no Redis address known for it") from None
        connection = self._connections.get(node.name)
        if connection is None:
            connection = self._connections[node.name] = _Connection()
        try:
            with trio.fail_after(self.timeout):
                async with connection.lock:
                    if connection.stream is None:
                        connection.stream = await trio.open_tcp_stream(host, port)
                    await connection.stream.send_all(_pack(argvs))
                    return await self._replies(connection, len(argvs))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                hiredis.ProtocolError) as error:
            await self._drop(node.name, connection)
            reason = ("timed out" if isinstance(error, trio.TooSlowError)
                      else str(error) or type(error).__name__)
            raise ReplicaUnavailable(node.name, f"{host}:{port}: {reason}") from None

    @staticmethod
    async def _replies(connection: _Connection, count: int) -> list:
        reader = connection.reader
        replies = []
        while len(replies) < count:
            reply = reader.gets()
            if reply is False:
                data = await connection.stream.receive_some(256 * 1024)
                if not data:
                    raise trio.BrokenResourceError("connection closed by Redis")
                reader.feed(data)
                continue
            replies.append(reply)
        return replies

    async def _drop(self, name: str, connection: _Connection) -> None:
        if self._connections.get(name) is connection:
            del self._connections[name]
        stream, connection.stream = connection.stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def aclose(self) -> None:
        for name, connection in list(self._connections.items()):
            await self._drop(name, connection)
