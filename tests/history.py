"""Histories of reads and writes on registers, and the two checks a nemesis test runs on them.

What it owns: recording operations (`History`: an operation is invoked, then completed with
an outcome the caller decides) and checking a finished history (`check_reads`,
`check_final`) against the rules below. It is pure: no sockets, no processes, no sleeping;
the clock is given to `History` (time.monotonic by default), so its own tests drive it with
invented times. It must never guess an outcome: ok, fail and unknown are the caller's word.

The model. Every key is a register (a Redis string). A write's value is unique among the
writes of its key (the nemesis clients write "c<client>-<seq>"), so a value read names the
write it came from, and nil is the value before the first write. All times are readings of
one monotonic clock in one process.

Outcomes. `ok`: acknowledged. `fail`: a definite error reply (quorum not achieved, replicas
disagree, connection refused before anything was sent). `unknown`: the client gave up
(time-out, connection lost after sending) and cannot say whether the write applied. For a
write the checker treats fail like unknown: a write a Dynamo cluster refused for lack of a
quorum may still have reached one replica, and a hint or a repair may spread it later. So
a write that was not acknowledged has no known end: it may take effect at any time after it
was invoked. A read that was not ok returned nothing and is not checked.

Order. Write a is *older* than write b when a was acknowledged before b was invoked
(a.completed < b.invoked, both on the one clock). Only then is their order known; writes
whose intervals overlap may be applied in either order, and a write that was not
acknowledged is never older than anything. Nil is older than every write.

Rule R (reads). A read that returned value v (the value of write wv, or nil) is *stale*
when some acknowledged write w completed before the read was invoked and v is older than w:
the read began after w was acknowledged, so it must see w or something not older. A read
must also return a value some write of that key wrote, invoked before the read completed.

Rule F (final state). What a replica holds at the end, after every client stopped, is
judged like a read invoked after everything: for every key, the value is nil only if no
write of the key was acknowledged, and otherwise the value of a write that is not older than
any acknowledged write. Failed and unknown writes may or may not appear.

These are necessary conditions of linearizability, not the whole of it: two reads that see
concurrent writes in opposite orders are not reported.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping

WRITE, READ = "write", "read"
OK, FAIL, UNKNOWN = "ok", "fail", "unknown"
OUTCOMES = (OK, FAIL, UNKNOWN)

# What a violation is of (Violation.rule).
STALE_READ = "stale read"
READ_UNWRITTEN = "read of a value never written"
READ_BEFORE_WRITE = "read of a value whose write began after the read ended"
LOST_WRITE = "acknowledged write lost"
FINAL_UNWRITTEN = "final value never written"


class HistoryError(ValueError):
    """The history itself is malformed (a value written twice, an op completed twice):
    a bug of the test recording it, not of the system under test."""


@dataclasses.dataclass(slots=True)
class Op:
    """One operation: invoked at `invoked`, completed at `completed` (None while pending).

    `value` is what a write wrote or what an ok read returned (None: nil). `error` says why
    an operation failed or is unknown.
    """

    client: int
    kind: str
    key: str
    value: str | None
    invoked: float
    completed: float | None = None
    outcome: str | None = None
    error: str | None = None

    @property
    def acked(self) -> bool:
        return self.outcome == OK


def write_value(client: int, seq: int) -> str:
    """The value client `client` writes in its `seq`-th write: unique across the history."""
    return f"c{client}-{seq}"


class History:
    """The operations of every client, in invocation order.

    Clients may be threads: `invoke` appends under a lock, and an op is completed only by
    the client that invoked it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()  # the origin of the times in messages
        self.ops: list[Op] = []
        self._lock = threading.Lock()

    def invoke(self, client: int, kind: str, key: str, value: str | None = None) -> Op:
        if kind not in (WRITE, READ):
            raise HistoryError(f"unknown operation kind {kind!r}")
        op = Op(client, kind, key, value if kind == WRITE else None, self.clock())
        with self._lock:
            self.ops.append(op)
        return op

    def complete(self, op: Op, outcome: str, value: str | None = None, error: str | None = None) -> Op:
        """Record `op`'s end; `value` is what an ok read returned (ignored otherwise)."""
        if op.outcome is not None:
            raise HistoryError(f"{describe(op)} completed twice")
        if outcome not in OUTCOMES:
            raise HistoryError(f"unknown outcome {outcome!r}")
        op.completed = self.clock()
        op.outcome = outcome
        op.error = error
        if op.kind == READ:
            op.value = value if outcome == OK else None
        return op

    def ok(self, op: Op, value: str | None = None) -> Op:
        return self.complete(op, OK, value)

    def fail(self, op: Op, error: str) -> Op:
        return self.complete(op, FAIL, error=error)

    def unknown(self, op: Op, error: str) -> Op:
        return self.complete(op, UNKNOWN, error=error)

    def perform(self, client: int, call: Callable, kind: str, key: str, value: str | None = None,
                *extra: str) -> Op:
        """Run and record one operation: ``SET key value *extra`` (a write) or ``GET key``
        through ``call(*argv) -> (outcome, reply)``; a SET answered other than OK fails."""
        op = self.invoke(client, kind, key, value)
        if kind == WRITE:
            outcome, reply = call("SET", key, value, *extra)
            if outcome == OK and reply != "OK":
                outcome, reply = FAIL, f"unexpected reply {reply!r}"
        else:
            outcome, reply = call("GET", key)
        if outcome == OK:
            return self.ok(op, reply if kind == READ else None)
        return self.complete(op, outcome, error=reply)

    def counts(self) -> Counter:
        """How many ops of each (kind, outcome); pending ops count as (kind, None)."""
        return Counter((op.kind, op.outcome) for op in self.ops)


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken rule, with what a person needs to find it in the logs."""

    rule: str
    key: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: key {self.key!r}: {self.detail}"


# --------------------------------------------------------------------------- the checks


def check_reads(ops: Iterable[Op], origin: float | None = None) -> list[Violation]:
    """Rule R for every ok read of the history (times in messages: seconds since `origin`,
    by default the first invocation)."""
    ops = list(ops)
    index = _index(ops)
    origin = _origin(ops) if origin is None else origin
    violations = []
    for read in ops:
        if read.kind != READ or read.outcome != OK:
            continue
        writes = index.get(read.key) or _KeyWrites.empty()
        if read.value is not None:
            source = writes.by_value.get(read.value)
            if source is None:
                violations.append(Violation(READ_UNWRITTEN, read.key, f"{describe(read, origin)} returned "
                                            f"{read.value!r}, which no write of the key wrote"))  # fmt: skip
                continue
            if source.invoked > read.completed:
                violations.append(Violation(READ_BEFORE_WRITE, read.key, f"{describe(read, origin)} returned "
                                            f"{read.value!r} of {describe(source, origin)}"))  # fmt: skip
                continue
        else:
            source = None
        newer = writes.newer_than(source, read.invoked)
        if newer is not None:
            seen = f"{read.value!r} of {describe(source, origin)}" if source is not None else "nil"
            violations.append(Violation(STALE_READ, read.key, (
                f"{describe(read, origin)} returned {seen}, but {describe(newer, origin)} was acknowledged "
                f"before the read began" + (" and began after that value's write was acknowledged"
                                            if source is not None else ""))))  # fmt: skip
    return violations


def check_final(
    ops: Iterable[Op], final: Mapping[str, str | None], where: str = "final state", origin: float | None = None
) -> list[Violation]:
    """Rule F for one replica's content `final` (key -> value, nil as None or absent).

    Every key written in the history is judged, and every key of `final` (a key nobody
    wrote that holds a value is reported). `where` names the replica in the messages.
    """
    ops = list(ops)
    index = _index(ops)
    origin = _origin(ops) if origin is None else origin
    violations = []
    for key in sorted(set(index) | set(final)):
        writes = index.get(key) or _KeyWrites.empty()
        value = final.get(key)
        source = None
        if value is not None:
            source = writes.by_value.get(value)
            if source is None:
                violations.append(Violation(FINAL_UNWRITTEN, key, f"{where} holds {value!r}, "
                                            "which no write of the key wrote"))  # fmt: skip
                continue
        newer = writes.newer_than(source, math.inf)
        if newer is not None:
            held = f"{value!r} of {describe(source, origin)}" if source is not None else "nothing (nil)"
            violations.append(Violation(LOST_WRITE, key, (
                f"{where} holds {held}, but {describe(newer, origin)} was acknowledged" +
                (" and began after that value's write was acknowledged" if source is not None else ""))))  # fmt: skip
    return violations


def check(
    ops: Iterable[Op], finals: Mapping[str, Mapping[str, str | None]] | None = None, origin: float | None = None
) -> list[Violation]:
    """Rule R on the reads, and rule F on each replica's content in `finals` (name -> content)."""
    ops = list(ops)
    violations = check_reads(ops, origin)
    for where, final in (finals or {}).items():
        violations += check_final(ops, final, where, origin)
    return violations


def describe(op: Op, origin: float = 0.0) -> str:
    """`op` for a message: who did what when, times in seconds since `origin`."""
    what = f"write {op.value!r}" if op.kind == WRITE else "read"
    end = f"{op.completed - origin:.3f}" if op.completed is not None else "..."
    outcome = op.outcome or "pending"
    if op.error:
        outcome += f" ({op.error})"
    return f"{what} by client {op.client} during [{op.invoked - origin:.3f}, {end}] s ({outcome})"


def _origin(ops: list[Op]) -> float:
    return min((op.invoked for op in ops), default=0.0)


class _KeyWrites:
    """The writes of one key, arranged to answer "which acknowledged write, completed
    before time t, makes this value stale?" with one bisection."""

    __slots__ = ("by_value", "completions", "latest_invoked")

    def __init__(self, writes: list[Op]):
        self.by_value: dict[str, Op] = {}
        for write in writes:
            if write.value is None:
                raise HistoryError(f"{describe(write)} wrote nil")
            if write.value in self.by_value:
                raise HistoryError(f"value {write.value!r} of key {write.key!r} written twice: "
                                   f"{describe(self.by_value[write.value])} and {describe(write)}")  # fmt: skip
            self.by_value[write.value] = write
        acked = sorted((w for w in writes if w.acked), key=lambda w: w.completed)
        self.completions = [w.completed for w in acked]
        # latest_invoked[i]: of acked[:i + 1], the write invoked last. A value acknowledged at
        # time c is older than some write acknowledged before t exactly when the write invoked
        # last among those acknowledged before t was invoked after c.
        self.latest_invoked: list[Op] = []
        for write in acked:
            if not self.latest_invoked or write.invoked > self.latest_invoked[-1].invoked:
                self.latest_invoked.append(write)
            else:
                self.latest_invoked.append(self.latest_invoked[-1])

    @classmethod
    def empty(cls) -> _KeyWrites:
        return cls([])

    def newer_than(self, source: Op | None, before: float) -> Op | None:
        """An acknowledged write completed before `before` that `source`'s value (None: nil)
        is older than, or None if there is none."""
        count = bisect.bisect_left(self.completions, before)
        if count == 0:
            return None
        latest = self.latest_invoked[count - 1]
        if source is None:
            return latest
        if source.acked and source.completed < latest.invoked:
            return latest
        return None


def _index(ops: list[Op]) -> dict[str, _KeyWrites]:
    writes: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == WRITE:
            writes[op.key].append(op)
    return {key: _KeyWrites(found) for key, found in writes.items()}
