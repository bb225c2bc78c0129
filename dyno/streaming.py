"""Streaming: moving a range's keys to its new owner while a node joins, leaves
(decommission) or replaces a dead node; and dropping, afterwards, the keys a node
no longer owns (cleanup). (Not dyno.stream, which drives a connection's writes.)

What it owns: which Redis a range is copied from and to (``plan_transfer``, pure,
from the ring with pending owners of dyno.ownership); one copy job (``Transfer``:
SCAN the source, keep the keys whose pending owners include a target, FETCH them
with their versions and absolute expiries, install them on the target with
``STREAM_RESTORE``); the cleanup job; and the node-side service (``Mover``) that
runs a join or a replacement at start, a decommission on request, declaring the
node's state through gossip at each step.

What it must never do: make a target older, or drop a key a node still owns.
``STREAM_RESTORE`` installs a copy only where the target's version is not newer:
writes reach a pending owner during the copy (dyno.planner), and the newest wins;
on the same version the source's copy wins, since a write a pending owner got
before the key was copied (an HSET on a hash it did not have yet) made it a
partial value of the version the source holds whole. A key the target holds
newer is looked at again after the pass (``recheck``): the source may not have
applied that write yet. Cleanup drops a key only when this node is neither its
owner in its rack nor a pending owner, and only while nothing moves in its rack.

Theory of operation. A join: the node gossips JOINING from its start; every
coordinator then sends it the writes of its new ranges (pending owner). It waits
``settle`` seconds (a few gossip rounds) for every node to know it, copies each
range from that range's owner in its rack (or, if that one is down, from an owner
in another rack: every rack holds a full copy), rechecks, and declares NORMAL:
from then on it owns its ranges, and the old owners drop them (cleanup, ``settle``
seconds later, so coordinators that still route by the old ring find the keys).
A replacement is a join that takes a dead node's tokens (REPLACING), copying from
the other racks. A decommission: the node declares DECOMMISSIONING (its ranges'
next owners in its rack become pending owners), copies its keys to them, and
declares LEFT: it leaves every ring and view, and may be stopped.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import hiredis
import trio

from dyno.repair import Call, ReplicaUnavailable, scan_steps
from dyno.ring import Ring, RingNode
from dyno.versions import DEFAULT_DB, FETCH

__all__ = ["CHUNK", "STREAM_RESTORE", "Cleanup", "Mover", "Transfer", "TransferPlan", "plan_transfer"]

log = logging.getLogger("dyno.streaming")

SCAN_COUNT = 1000   # keys asked of a source per SCAN step
CHUNK = 500         # keys per FETCH and per batch of installs
PARALLEL = 2        # SCAN steps copied at once (one is copied while the next is scanned)

#: KEYS[1]: a key. ARGV: version ('' if none), versions_db, absolute expiry in ms
#: (0: none), DUMP payload. Installs it unless the target's version is newer (the
#: same version: the source's copy wins, module docstring); records the version.
#: Returns 1 if installed, 0 if the target is newer, -1 if the source had no key.
STREAM_RESTORE = b"""
if ARGV[4] == '' then return -1 end
local v = ARGV[1]
redis.call('SELECT', ARGV[2])
local cur = redis.call('GET', KEYS[1]) or ''
if cur > v then redis.call('SELECT', 0) return 0 end
redis.call('SELECT', 0)
local at = tonumber(ARGV[3])
if at > 0 then
  redis.call('RESTORE', KEYS[1], at, ARGV[4], 'REPLACE', 'ABSTTL')
else
  redis.call('RESTORE', KEYS[1], 0, ARGV[4], 'REPLACE')
end
if v ~= '' then
  redis.call('SELECT', ARGV[2])
  redis.call('SET', KEYS[1], v)
  redis.call('SELECT', 0)
end
return 1
"""
STREAM_RESTORE_SHA = hashlib.sha1(STREAM_RESTORE).hexdigest().encode()

#: KEYS: keys this node no longer owns. ARGV[1]: versions_db. Drops each key and
#: its version (a tombstone of a key it does not own would only mislead repair).
DROP = b"""
local n = 0
for i = 1, #KEYS do n = n + redis.call('DEL', KEYS[i]) end
redis.call('SELECT', ARGV[1])
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('SELECT', 0)
return n
"""


#: A node that completed its join or replacement records it in its own Redis (in
#: versions_db, under a name no client key has and with a value that is not a
#: version, so the tombstone sweep leaves it): restarted with the same config, it
#: must not become a pending owner again (the old owners dropped its ranges).
MOVED_IN = b"\x00dyno:moved-in"
SET_MARK = b"redis.call('SELECT', ARGV[1]) if ARGV[2] == '' then redis.call('DEL', KEYS[1]) " \
           b"else redis.call('SET', KEYS[1], ARGV[2]) end return 1"


def mark_value(tokens: Sequence[int]) -> bytes:
    return b"moved in with tokens " + ",".join(map(str, sorted(tokens))).encode()


async def moved_in_before(host: str, port: int, password: str | None, db: int, tokens: Sequence[int],
                          timeout: float = 5.0) -> bool:
    """Whether the Redis at host:port holds this node's mark of a completed join or
    replacement with ``tokens`` (read at start, before the node declares anything).
    A Redis that cannot be read counts as no mark (the node then joins again, which
    copies again what it holds: slower, never wrong)."""
    from dyno import resp
    commands = ([[b"AUTH", password.encode()]] if password is not None else []) + [
        [b"SELECT", b"%d" % db], [b"GET", MOVED_IN]]
    reader = hiredis.Reader()
    replies: list = []
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(b"".join(resp.encode_command(c) for c in commands))
                while len(replies) < len(commands):
                    data = await stream.receive_some(4096)
                    if not data:
                        return False
                    reader.feed(data)
                    while (reply := reader.gets()) is not False:
                        replies.append(reply)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError):
        return False
    return replies[-1] == mark_value(tokens)


# -- the plan, pure --------------------------------------------------------------------


class TransferPlan:
    """Which Redis to scan (``sources``, in order) and, for each, the targets whose
    pending ranges it holds. A key found on a source goes to each of those targets
    that is a pending owner of it."""

    def __init__(self, kind: str, sources: list[tuple[RingNode, tuple[RingNode, ...]]], missing: list[str]):
        self.kind = kind
        self.sources = sources
        self.missing = missing  # why some ranges have no source (every owner down)

    def describe(self) -> dict:
        return {"kind": self.kind,
                "sources": {source.name: [t.name for t in targets] for source, targets in self.sources},
                "missing": self.missing}


def plan_transfer(ring: Ring, me: str, kind: str, available: Callable[[RingNode], bool]) -> TransferPlan:
    """The copies node ``me`` makes for its move ``kind``: "join" and "replace"
    bring its pending ranges to it, from each range's owner in its rack or, when
    that one is unavailable (a replaced node is down), from the first available
    owner in another rack; "decommission" sends its own keys to the nodes of its
    rack that are pending owners of its ranges."""
    local = ring.node(me)
    place = (local.dc, local.rack)
    wanted: dict[str, tuple[RingNode, dict[str, RingNode]]] = {}
    missing: list[str] = []
    for start, end, group in ring.stretches():
        pending = getattr(group, "pending", ())
        if not pending:
            continue
        if kind == "decommission":
            if not any(n.name == me for n in group):
                continue
            targets = [n for n in pending if (n.dc, n.rack) == place]
            source = local
        else:
            if not any(n.name == me for n in pending):
                continue
            targets = [local]
            rack_owner = next((n for n in group if (n.dc, n.rack) == place), None)
            source = rack_owner if rack_owner is not None and available(rack_owner) else next(
                (n for n in group if available(n)), None)
            if source is None:
                missing.append(f"({start}, {end}]: no owner of it is up")
                continue
        if targets:
            entry = wanted.setdefault(source.name, (source, {}))
            for target in targets:
                entry[1][target.name] = target
    sources = [(source, tuple(targets[name] for name in sorted(targets)))
               for source, targets in (wanted[name] for name in sorted(wanted))]
    return TransferPlan(kind, sources, missing)


# -- a copy job ------------------------------------------------------------------------


class Transfer:
    """One move's copies (``plan``); ``run`` once, read ``status`` any time.
    ``rate``: keys copied per second at most (0: as fast as the Redis answer)."""

    def __init__(self, plan: TransferPlan, ring: Callable[[], Ring], call: Call, *, db: int = DEFAULT_DB,
                 rate: float = 0.0, clock: Callable[[], float] = trio.current_time):
        self.plan = plan
        self.ring = ring
        self.call = call
        self.db = b"%d" % db
        self.rate = rate
        self.clock = clock
        self.phase = "starting"
        self.error: str | None = None
        self.scanned = 0
        self.copied = 0
        self.newer = 0      # keys the target held newer (rechecked after the pass)
        self.bytes = 0
        self.total: int | None = None   # keys held by the sources (DBSIZE), for the progress
        self.source: str | None = None
        self.started = self.finished = None
        self.started_at = time.time()
        self._recheck: list[tuple[RingNode, RingNode, bytes]] = []

    async def run(self) -> "Transfer":
        self.started = self.clock()
        try:
            self.phase = "sizing"
            total = 0
            for source, _ in self.plan.sources:
                [size] = await self.call(source, [[b"DBSIZE"]])
                total += size if isinstance(size, int) else 0
            self.total = total
            self.phase = "copying"
            for source, targets in self.plan.sources:
                self.source = source.name
                await self._copy_from(source, targets)
            self.source = None
            self.phase = "rechecking"
            recheck, self._recheck = self._recheck, []
            for start in range(0, len(recheck), CHUNK):
                chunk = recheck[start:start + CHUNK]
                by_pair: dict[tuple[str, str], tuple[RingNode, RingNode, list[bytes]]] = {}
                for source, target, key in chunk:
                    by_pair.setdefault((source.name, target.name), (source, target, []))[2].append(key)
                for source, target, keys in by_pair.values():
                    await self._copy_keys(source, {target.name: (target, keys)}, again=False)
            self.phase = "done"
        except ReplicaUnavailable as failure:
            self.phase = "failed"
            self.error = str(failure)
        except Exception as error:  # a bug: end this job, never the node
            self.phase = "failed"
            self.error = f"internal error: {error!r} (see the node's log)"
            log.exception("streaming failed")
        except BaseException:
            self.phase = "cancelled"
            self.error = "stopped (the node is shutting down)"
            raise
        finally:
            self.finished = self.clock()
        return self

    async def _copy_from(self, source: RingNode, targets: tuple[RingNode, ...]) -> None:
        """SCAN ``source``; each step's keys for the targets are copied while the
        next step is scanned (``PARALLEL`` steps at a time, as repair does)."""
        names = {target.name: target for target in targets}

        def step_for(keys: list[bytes]) -> Callable[[], Awaitable[None]] | None:
            self.scanned += len(keys)
            if not keys:
                return None
            ring = self.ring()
            wanted: dict[str, tuple[RingNode, list[bytes]]] = {}
            for key, token in zip(keys, ring.tokens_of(keys)):
                for node in ring.pending(token):
                    if node.name in names:
                        wanted.setdefault(node.name, (names[node.name], []))[1].append(key)
            return functools.partial(self._copy_keys, source, wanted) if wanted else None

        def scan_failed(reply: object) -> None:
            # unlike repair, a copy cannot skip a source: the move fails
            raise ReplicaUnavailable(source.name, f"SCAN answered {reply!r:.80}")

        await scan_steps(self.call, source, step_for, count=b"%d" % SCAN_COUNT, parallel=PARALLEL,
                         bad_reply=scan_failed)

    async def _copy_keys(self, source: RingNode, wanted: dict[str, tuple[RingNode, list[bytes]]],
                         again: bool = True) -> None:
        """FETCH the keys of every target from ``source`` once; install each
        target's on it."""
        keys = list(dict.fromkeys(key for _, its in wanted.values() for key in its))
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start:start + CHUNK]
            [rows] = await self.call(source, [[b"EVAL", FETCH, b"%d" % len(chunk), *chunk, self.db]])
            if not isinstance(rows, list) or len(rows) != len(chunk):
                raise ReplicaUnavailable(source.name, f"FETCH answered {str(rows)[:80]!r}")
            state = dict(zip(chunk, rows))
            for target, its in wanted.values():
                its_chunk = [key for key in its if key in state]
                installs = []
                for key in its_chunk:
                    version, expire_at, dump = state[key]
                    installs.append([b"EVALSHA", STREAM_RESTORE_SHA, b"1", key, version, self.db,
                                     b"%d" % expire_at if expire_at > 0 else b"0", dump])
                if not installs:
                    continue
                replies = await self.call(target, [[b"SCRIPT", b"LOAD", STREAM_RESTORE], *installs])
                for key, argv, installed in zip(its_chunk, installs, replies[1:]):
                    if installed == 1:
                        self.copied += 1
                        self.bytes += len(key) + len(argv[7])
                    elif installed == 0:
                        self.newer += 1
                        if again:
                            self._recheck.append((source, target, key))
                    elif isinstance(installed, hiredis.ReplyError):
                        raise ReplicaUnavailable(target.name, f"STREAM_RESTORE failed: {installed}")
            await self._throttle()

    async def _throttle(self) -> None:
        if self.rate and self.started is not None:
            ahead = self.started + self.copied / self.rate - self.clock()
            if ahead > 0:
                await trio.sleep(ahead)

    @property
    def running(self) -> bool:
        return self.phase in ("starting", "sizing", "copying", "rechecking")

    def status(self) -> dict:
        end = self.finished if self.finished is not None else self.clock()
        elapsed = end - self.started if self.started is not None else 0.0
        return {
            **self.plan.describe(), "phase": self.phase, "error": self.error, "source": self.source,
            "scanned": self.scanned, "total": self.total, "copied": self.copied, "newer": self.newer,
            "bytes": self.bytes, "elapsed": round(elapsed, 3),
            "keys_per_second": round(self.copied / elapsed, 1) if elapsed > 0 else 0.0,
            "rate": self.rate, "started_at": self.started_at,
        }


# -- cleanup ---------------------------------------------------------------------------


def not_owned(ring: Ring, me: str, keys: Sequence[bytes]) -> list[bytes]:
    """The keys of ``keys`` that node ``me`` neither owns in its rack nor is a
    pending owner of, by ``ring``."""
    local = ring.node(me)
    place = (local.dc, local.rack)
    dropped = []
    for key, token in zip(keys, ring.tokens_of(list(keys))):
        group = ring.replicas(token)
        if any(n.name == me for n in group) or any(n.name == me for n in getattr(group, "pending", ())):
            continue
        if any((n.dc, n.rack) == place for n in group):  # (a rack with no owner keeps its keys)
            dropped.append(key)
    return dropped


class Cleanup:
    """Drop from this node's Redis the keys it no longer owns (after a join took
    some of its ranges); ``rate`` keys scanned per second at most."""

    def __init__(self, me: RingNode, ring: Callable[[], Ring], call: Call, *, db: int = DEFAULT_DB,
                 rate: float = 0.0, clock: Callable[[], float] = trio.current_time):
        self.me = me
        self.ring = ring
        self.call = call
        self.db = b"%d" % db
        self.rate = rate
        self.clock = clock
        self.scanned = 0
        self.dropped = 0
        self.phase = "running"

    async def run(self) -> None:
        started = self.clock()
        cursor = b"0"
        while True:
            [reply] = await self.call(self.me, [[b"SCAN", cursor, b"COUNT", b"%d" % SCAN_COUNT]])
            if not isinstance(reply, list):
                raise ReplicaUnavailable(self.me.name, f"SCAN answered {reply!r:.80}")
            cursor, keys = reply
            self.scanned += len(keys)
            drop = not_owned(self.ring(), self.me.name, keys)
            if drop:
                [count] = await self.call(self.me, [[b"EVAL", DROP, b"%d" % len(drop), *drop, self.db]])
                self.dropped += count if isinstance(count, int) else 0
            if cursor == b"0":
                break
            if self.rate:
                ahead = started + self.scanned / self.rate - self.clock()
                if ahead > 0:
                    await trio.sleep(ahead)
        self.phase = "done"


# -- the node's side -------------------------------------------------------------------


class Mover:
    """This node's range movements. Built by the node with the few callables it
    needs: ``ring()``, ``call`` (dyno.repair.node_call), ``available(node)``,
    ``declare(state)`` (gossip this node's state: JOINING, NORMAL, DECOMMISSIONING,
    LEFT...), and ``settle``: seconds to let every node learn a declared state
    before acting on it (a few gossip rounds)."""

    def __init__(self, name: str, ring: Callable[[], Ring], call: Call, *, available: Callable[[RingNode], bool],
                 declare: Callable[[str], None], settle: float, db: int = DEFAULT_DB, rate: float = 0.0,
                 ready: Callable[[], bool] = lambda: True):
        self.name = name
        self.ring = ring
        self.call = call
        self.available = available
        self.declare = declare
        self.settle = settle
        self.db = db
        self.rate = rate
        self.ready = ready
        self.transfer: Transfer | None = None
        self.cleanup: Cleanup | None = None
        self.kind: str | None = None
        self.state = "idle"
        self._nursery: trio.Nursery | None = None
        self._cleanup_wanted = trio.Event()

    async def serve(self, moving_in: str | None = None) -> None:
        """Run until cancelled; with ``moving_in`` ("join" or "replace") first bring
        this node's ranges to it, then declare NORMAL."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._cleanups)
            if moving_in is not None:
                nursery.start_soon(self._move, moving_in)
            await trio.sleep_forever()

    def decommission(self) -> dict:
        """Start streaming this node's ranges away (DECOMMISSIONING, then LEFT)."""
        if self._nursery is None:
            raise RuntimeError("the node is not serving yet")
        if self.transfer is not None and self.transfer.running or self.state in ("settling", "streaming"):
            raise RuntimeError(f"a {self.kind} is running already on this node ({self.state})")
        if self.state == "left":
            raise RuntimeError("this node has left the ring already; stop it")
        ring = self.ring()
        if ring.local_pending or all(node.name != self.name for node in ring.nodes):
            raise RuntimeError("this node owns no range (it is joining, or replacing a node); "
                               "let its move end first")
        local = ring.local
        if len(ring.rack_nodes(local.dc, local.rack)) < 2:
            raise RuntimeError(f"this node is the last of rack {local.rack} of {local.dc}: its keys would have "
                               "no other owner in the rack (the cluster would keep one copy fewer); add a node "
                               "to the rack first")
        self._nursery.start_soon(self._move, "decommission")
        self.kind, self.state = "decommission", "settling"
        return self.status()

    async def _move(self, kind: str) -> None:
        self.kind = kind
        self.state = "settling"
        if kind == "decommission":
            self.declare("DECOMMISSIONING")
        # Let gossip tell every node (they then send this move's writes to its new
        # owners), and for a joining node, let it learn the ring first.
        await trio.sleep(self.settle)
        with trio.move_on_after(max(10 * self.settle, 30.0)) as waited:
            while not self.ready():
                await trio.sleep(self.settle / 4)
        if waited.cancelled_caught:
            log.warning("%s of %s: some nodes of its dyn_seeds were never heard from; going on with the "
                        "ring it knows", kind, self.name)
        while True:
            ring = self.ring()
            plan = plan_transfer(ring, self.name, kind, self.available)
            if plan.missing:
                self.state = "waiting"
                log.warning("%s of %s waits: %s", kind, self.name, "; ".join(plan.missing[:3]))
                await trio.sleep(self.settle)
                continue
            self.state = "streaming"
            transfer = self.transfer = Transfer(plan, self.ring, self.call, db=self.db, rate=self.rate)
            log.info("%s of %s: streaming from %s", kind, self.name,
                     ", ".join(f"{s.name} to {', '.join(t.name for t in ts)}" for s, ts in plan.sources) or "nobody")
            await transfer.run()
            if transfer.phase == "done":
                break
            log.warning("%s of %s: streaming failed (%s); trying again in %g s", kind, self.name,
                        transfer.error, self.settle)
            await trio.sleep(self.settle)
        status = transfer.status()
        log.info("%s of %s done: %d keys (%d bytes) copied in %.1f s", kind, self.name, status["copied"],
                 status["bytes"], status["elapsed"])
        me = self.ring().node(self.name)
        mark = b"" if kind == "decommission" else mark_value(me.tokens)
        await self.call(me, [[b"EVAL", SET_MARK, b"1", MOVED_IN, b"%d" % self.db, mark]])
        # (the state first: declaring NORMAL gives this node a new ring, after which it
        # drops what it copied but does not own, a range another concurrent join took)
        self.state = "left" if kind == "decommission" else "done"
        self.declare("LEFT" if kind == "decommission" else "NORMAL")

    def ring_changed(self, old: Ring, new: Ring) -> None:
        """A new ring: if a move in this node's rack completed and this node still
        owns something, drop what it no longer owns (after ``settle``)."""
        if self.state in ("settling", "streaming", "waiting") or new.local_pending:
            return
        local = new.local
        if not any(n.name == local.name for n in new.nodes):
            return
        place = (local.dc, local.rack)
        before = {n.name for n in old.pending_nodes if (n.dc, n.rack) == place}
        after = {n.name for n in new.pending_nodes if (n.dc, n.rack) == place}
        if before - after:
            self._cleanup_wanted.set()

    async def _cleanups(self) -> None:
        while True:
            await self._cleanup_wanted.wait()
            self._cleanup_wanted = trio.Event()
            await trio.sleep(self.settle)
            ring = self.ring()
            local = ring.local
            if ring.local_pending or any(n.rack == local.rack and n.dc == local.dc for n in ring.pending_nodes):
                continue  # a move in this rack is still running: wait for it to end
            cleanup = self.cleanup = Cleanup(local, self.ring, self.call, db=self.db, rate=self.rate)
            try:
                await cleanup.run()
                log.info("cleanup of %s: %d keys it no longer owns dropped (%d scanned)", self.name,
                         cleanup.dropped, cleanup.scanned)
            except ReplicaUnavailable as failure:
                cleanup.phase = "failed"
                log.warning("cleanup of %s failed: %s", self.name, failure)

    def status(self) -> dict:
        out: dict = {"kind": self.kind, "state": self.state}
        if self.transfer is not None:
            out["transfer"] = self.transfer.status()
        if self.cleanup is not None:
            out["cleanup"] = {"phase": self.cleanup.phase, "scanned": self.cleanup.scanned,
                              "dropped": self.cleanup.dropped}
        return out
