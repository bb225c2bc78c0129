"""Tombstone garbage collection: dropping the versions of keys that are gone.

A key's version outlives the key (dyno.versions): a deleted key keeps its version as
a *tombstone*, and so does a key that expired. Without collection the versions
database holds an entry for every key ever written. As Cassandra does with
``gc_grace_seconds``, a version entry becomes garbage once its key is not in
database 0 and its version is older than ``tombstone_grace`` seconds; each node
drops the garbage of its *own* Redis (``TombstoneSweeper``), and repair does not
copy such a tombstone back to a replica that dropped it first
(``repair.decide(horizon=...)``).

What it owns: the cut-off (``horizon``), the rule (``is_garbage``, pure, and the
same rule in Lua, ``SWEEP``), how often and how fast a node sweeps
(``sweep_period``, ``SWEEP_RATE``), and the sweeper that runs in the node's nursery.

What it must never do: drop the version of a key that exists in database 0, or a
version newer than the horizon, or anything in the versions database that is not a
version; touch database 0; or take Redis for longer than one small step at a time.
The check and the delete are one EVAL, so a write of the same key is either before
the step (the key exists: kept) or after it (its stamp records a new version).

The caveat, as in Cassandra: a replica that missed a delete and is repaired only
after the other replicas dropped the tombstone gets nothing to compare its stale
value with, and repair copies the value back. Run repair on every node more often
than ``tombstone_grace``. Hints cannot bring a key back: ``tombstone_grace`` must be
at least ``max_hint_window`` (dyno.config), and older hints are dropped unreplayed.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable

import trio

from dyno.versions import DEFAULT_DB, VERSION_LENGTH, make_version

__all__ = [
    "DEFAULT_GRACE", "SWEEP", "SWEEP_RATE", "SWEEP_STEP", "TombstoneSweeper", "horizon", "horizon_now",
    "is_garbage", "sweep_period",
]

log = logging.getLogger("dyno.tombstones")

DEFAULT_GRACE = 864_000  # seconds: 10 days, Cassandra's gc_grace_seconds
#: Versions entries examined per EVAL. One step (SCAN, a GET and at most an EXISTS and
#: a DEL per entry) holds Redis for about 0.3 ms (measured: Redis 7.0, 100,000 entries,
#: half of them old tombstones; 0.8 ms at the 99th percentile), so a client's command
#: waits at most that long behind it.
SWEEP_STEP = 100
#: Entries examined per second at most: a step every 10 ms, about 3% of one Redis's
#: time while a pass runs; a pass over 10 million entries takes 17 minutes.
SWEEP_RATE = 10_000
MIN_PERIOD = 1.0
MAX_PERIOD = 3600.0

_VERSION = re.compile(rb"[0-9a-f]{%d}" % VERSION_LENGTH)


# -- the rule, pure ------------------------------------------------------------------


def horizon(now_ms: int, grace: float) -> bytes:
    """The cut-off: a version below it was made more than ``grace`` seconds before
    ``now_ms`` (wall-clock milliseconds). It compares with versions as bytes."""
    return make_version(max(0, now_ms - int(grace * 1000)), 0, 0)


def horizon_now(grace: float) -> bytes:
    return horizon(time.time_ns() // 1_000_000, grace)


def is_garbage(version: bytes, present: bool, cutoff: bytes) -> bool:
    """Whether a versions entry may be dropped: its key is not in database 0 (a
    tombstone, or an expired key's version), it is a version (24 lowercase hex
    digits: anything else was not written by dyno and is left alone), and it is
    older than ``cutoff``. ``SWEEP`` applies the same rule in Redis."""
    return not present and version < cutoff and _VERSION.fullmatch(version) is not None


def sweep_period(grace: float) -> float:
    """Seconds between the end of one pass and the start of the next.

    A tombstone lives at most ``grace`` + period + one pass. A tenth of the grace
    keeps that overstay to 10% (a day for the 10-day default, were it not capped);
    the hour cap bounds it for long graces, and costs little, since a pass is
    throttled (``SWEEP_RATE``) and mostly reads. The floor keeps a tiny grace (tests)
    from turning the sweep into a busy loop."""
    return min(MAX_PERIOD, max(MIN_PERIOD, grace / 10))


# ARGV[1]: versions_db; ARGV[2]: SCAN cursor; ARGV[3]: COUNT; ARGV[4]: the cutoff.
# One SCAN step over the versions database; of the entries it returns, deletes those
# is_garbage() says may go. Returns {next cursor, entries examined, entries deleted}.
# GET is a pcall: a non-string in the versions database is not dyno's and is skipped.
SWEEP = b"""
local db = ARGV[1]
local cutoff = ARGV[4]
redis.call('SELECT', db)
local step = redis.call('SCAN', ARGV[2], 'COUNT', ARGV[3])
local old = {}
for _, key in ipairs(step[2]) do
  local v = redis.pcall('GET', key)
  if type(v) == 'string' and #v == 24 and v < cutoff and not string.find(v, '[^0-9a-f]') then
    old[#old + 1] = key
  end
end
local removed = 0
if #old > 0 then
  redis.call('SELECT', 0)
  local gone = {}
  for _, key in ipairs(old) do
    if redis.call('EXISTS', key) == 0 then gone[#gone + 1] = key end
  end
  redis.call('SELECT', db)
  for _, key in ipairs(gone) do removed = removed + redis.call('DEL', key) end
end
return {step[1], #step[2], removed}
"""


# -- the sweeper: the node's own Redis, in the background ----------------------------

#: ``call(argvs)``: send commands to this node's Redis and return the replies as hiredis
#: parses them (a Redis error is a ``hiredis.ReplyError`` in the list); raises when
#: the Redis cannot be reached (``repair.ReplicaUnavailable``).
LocalCall = Callable[[list[list[bytes]]], Awaitable[list]]


class TombstoneSweeper:
    """Drops this node's garbage versions: a pass over its versions database every
    ``sweep_period(grace)`` seconds, ``step`` entries an EVAL, at most ``rate``
    entries a second. A pass that fails (Redis down) is logged and counted, and the
    next one starts over. ``wall_ms``: the clock versions are made with."""

    def __init__(self, call: LocalCall, *, grace: float = DEFAULT_GRACE, db: int = DEFAULT_DB,
                 step: int = SWEEP_STEP, rate: float = SWEEP_RATE, period: float | None = None,
                 wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000):
        self.call = call
        self.grace = grace
        self.db = b"%d" % db
        self.step = b"%d" % step
        self.rate = rate
        self.period = sweep_period(grace) if period is None else period
        self.wall_ms = wall_ms
        self.removed = 0      # versions dropped since the node started
        self.examined = 0     # versions entries looked at
        self.passes = 0       # passes completed
        self.failures = 0     # passes that ended early (Redis unreachable, an error)
        self.last_pass: float | None = None   # time.time() a pass last completed

    async def run(self) -> None:
        """Sweep every period until cancelled. The first pass waits a period too:
        a node that starts has hints to replay and connections to open first."""
        while True:
            await trio.sleep(self.period)
            try:
                removed = await self.sweep()
            except Exception as error:  # Redis down, or a bug: this pass, never the node
                self.failures += 1
                log.warning("tombstone sweep failed (tried again in %g s): %s", self.period, error)
                continue
            if removed:
                log.info("tombstone sweep: %d versions older than %d s of deleted or expired keys dropped",
                         removed, self.grace)

    async def sweep(self) -> int:
        """One pass over the versions database; how many entries it dropped. The
        cutoff is taken once per pass: an entry that ages past it during the pass
        waits for the next."""
        cutoff = horizon(self.wall_ms(), self.grace)
        started = trio.current_time()
        examined = removed = 0
        cursor = b"0"
        while True:
            [reply] = await self.call([[b"EVAL", SWEEP, b"0", self.db, cursor, self.step, cutoff]])
            if not isinstance(reply, list) or len(reply) != 3:
                raise RuntimeError(f"the sweep script answered {str(reply)[:80]}")
            cursor, seen, dropped = reply
            examined += seen
            removed += dropped
            self.examined += seen
            self.removed += dropped
            if cursor == b"0":
                break
            if self.rate:
                ahead = started + examined / self.rate - trio.current_time()
                if ahead > 0:
                    await trio.sleep(ahead)
        self.passes += 1
        self.last_pass = time.time()
        return removed

    def describe(self) -> dict:
        """Counters for /info and /metrics."""
        return {
            "grace": self.grace, "period": self.period, "removed": self.removed,
            "examined": self.examined, "passes": self.passes, "failures": self.failures,
            "last_pass": None if self.last_pass is None else round(self.last_pass, 3),
        }
