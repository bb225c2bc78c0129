"""dyno.tombstones: the rule (pure, hypothesis), the sweep script against a real
redis-server (exactly the old tombstones go: not recent ones, not the versions of live
keys, not what dyno did not write), its throttle and its failures, and a real cluster
with a tiny tombstone_grace, where a deleted key's and an expired key's versions
disappear from every replica and a live key's stays."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import support
from dyno import versions
from dyno.repair import RedisCall
from dyno.ring import RingNode
from dyno.tombstones import TombstoneSweeper, horizon, is_garbage, sweep_period

DB = versions.DEFAULT_DB
NOW = 1_800_000_000_000   # ms: the sweeper's wall clock in these tests (2027)
GRACE = 3600              # s
CUTOFF_MS = NOW - GRACE * 1000


def at(millis: int, logical: int = 0, node: int = 7) -> bytes:
    return versions.make_version(millis, logical, node)


# -- the rule, pure --------------------------------------------------------------------

millis = st.integers(0, 2**48 - 1)


@given(millis, st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), millis, st.integers(0, 10**9))
def test_a_version_is_below_the_horizon_exactly_when_it_was_made_before_the_grace(
        made, logical, node, now, grace):
    version = at(made, logical, node)
    assert (version < horizon(now, grace)) == (made < max(0, now - grace * 1000))


@given(millis, st.booleans())
def test_only_absent_keys_old_versions_are_garbage(made, present):
    cutoff = horizon(NOW, GRACE)
    assert is_garbage(at(made), present, cutoff) == (not present and made < CUTOFF_MS)


@pytest.mark.parametrize("entry", [b"", b"1", b"0" * 23, b"0" * 25, b"0" * 23 + b"G", b"A" * 24,
                                   b" " * 24, b"hello"])
def test_what_is_not_a_version_is_never_garbage(entry):
    assert not is_garbage(entry, False, horizon(NOW, GRACE))


def test_the_period_is_a_tenth_of_the_grace_within_bounds():
    assert sweep_period(1) == 1.0                 # floor: no busy loop for a tiny grace
    assert sweep_period(600) == 60.0
    assert sweep_period(864_000) == 3600.0        # cap: the 10-day default sweeps hourly


# -- the sweep, on a real Redis ----------------------------------------------------------


def local_call(server) -> tuple[RedisCall, object]:
    """A call to one Redis, as the node gives its sweeper (its own Redis)."""
    me = RingNode("me", *server.addr, "dc", "rack", (0,))
    redis_call = RedisCall({"me": server.addr})
    return redis_call, (lambda argvs: redis_call(me, argvs))


def plant(server) -> tuple[dict[str, bytes], set[str]]:
    """Versions of every kind in ``server``'s versions database; returns them and the
    names of those the sweep must drop."""
    data, kept = server.client(), server.client(db=DB)
    planted: dict[str, bytes] = {}
    garbage: set[str] = set()

    def version(name: str, value: bytes, *, drop: bool) -> None:
        kept.set(name, value)
        planted[name] = value
        if drop:
            garbage.add(name)

    for i in range(250):  # old tombstones, up to one ms before the cutoff: dropped
        version(f"old-tombstone:{i}", at(CUTOFF_MS - 1 - i * 997, i, i), drop=True)
    for i in range(150):  # recent tombstones, from the cutoff on: kept
        version(f"recent-tombstone:{i}", at(CUTOFF_MS + i * 1000, i, i), drop=False)
    version("tombstone-at-cutoff", at(CUTOFF_MS), drop=False)
    for i in range(150):  # old versions of keys that exist: kept, whatever their type
        name = f"live:{i}"
        kind = i % 3
        if kind == 0:
            data.set(name, "v")
        elif kind == 1:
            data.hset(name, mapping={"f": "v"})
        else:
            data.set(name, "v", pxat=NOW * 10)
        version(name, at(CUTOFF_MS - 10**9 - i), drop=False)
    for i in range(20):  # keys whose TTL ran out keep their version too: dropped
        name = f"expired:{i}"
        data.set(name, "v", px=1)
        version(name, at(CUTOFF_MS - 5000), drop=True)
    for name, value in (("uppercase", b"A" * 24), ("short", at(1)[:-1]), ("long", at(1) + b"0"),
                        ("text", b"not a version"), ("empty", b"")):  # not dyno's: kept
        version(f"foreign:{name}", value, drop=False)
    kept.hset("foreign:hash", mapping={"f": "v"})  # not even a string
    for i in range(30):  # data without a version (written behind dyno's back): untouched
        data.set(f"unversioned:{i}", "v")
    support.wait_for(lambda: not any(data.exists(f"expired:{i}") for i in range(20)), 5,
                     "the expiring keys to expire")
    return planted, garbage


async def test_a_sweep_drops_exactly_the_old_tombstones(redis_server):
    planted, garbage = plant(redis_server)
    data, kept = redis_server.client(), redis_server.client(db=DB)
    before = {key: data.dump(key) for key in data.scan_iter()}
    entries = kept.dbsize()
    redis_call, call = local_call(redis_server)
    sweeper = TombstoneSweeper(call, grace=GRACE, db=DB, step=100, rate=0, wall_ms=lambda: NOW)
    try:
        removed = await sweeper.sweep()
        left = {key.decode() for key in kept.scan_iter()}
        assert left == (set(planted) | {"foreign:hash"}) - garbage
        assert removed == sweeper.removed == len(garbage) == 270
        assert sweeper.examined >= entries and sweeper.passes == 1
        # the same rule as the pure one, entry by entry
        cutoff = horizon(NOW, GRACE)
        for name, value in planted.items():
            present = bool(data.exists(name))
            assert (name not in left) == is_garbage(value, present, cutoff) == (name in garbage), name
        for name in left - {"foreign:hash"}:
            assert kept.get(name) == planted[name]
        # database 0 is not touched
        assert {key: data.dump(key) for key in data.scan_iter()} == before
        # a second pass finds nothing
        assert await sweeper.sweep() == 0 and sweeper.passes == 2
    finally:
        await redis_call.aclose()


async def test_the_sweep_honours_its_versions_database(redis_server):
    data, other = redis_server.client(), redis_server.client(db=3)
    default = redis_server.client(db=DB)
    other.set("gone", at(1))
    default.set("gone", at(1))
    redis_call, call = local_call(redis_server)
    try:
        sweeper = TombstoneSweeper(call, grace=GRACE, db=3, rate=0, wall_ms=lambda: NOW)
        assert await sweeper.sweep() == 1
        assert other.get("gone") is None and default.get("gone") == at(1)
        assert data.dbsize() == 0
    finally:
        await redis_call.aclose()


async def test_the_sweep_is_throttled(redis_server):
    kept = redis_server.client(db=DB)
    kept.mset({f"t:{i}": at(CUTOFF_MS + 1) for i in range(1000)})  # all recent: kept
    redis_call, call = local_call(redis_server)
    try:
        sweeper = TombstoneSweeper(call, grace=GRACE, db=DB, step=100, rate=2000, wall_ms=lambda: NOW)
        started = trio.current_time()
        await sweeper.sweep()
        elapsed = trio.current_time() - started
        # about 100 entries a step and a pause after each but the last: 900 / 2000 s
        assert elapsed >= 0.35, elapsed
        assert sweeper.examined >= 1000 and kept.dbsize() == 1000
        unthrottled = TombstoneSweeper(call, grace=GRACE, db=DB, step=100, rate=0, wall_ms=lambda: NOW)
        started = trio.current_time()
        await unthrottled.sweep()
        assert trio.current_time() - started < elapsed
    finally:
        await redis_call.aclose()


async def test_a_sweep_that_cannot_reach_its_redis_is_counted_and_tried_again():
    port = support.free_port()
    me = RingNode("me", "127.0.0.1", port, "dc", "rack", (0,))
    redis_call = RedisCall({"me": ("127.0.0.1", port)}, timeout=1.0)
    sweeper = TombstoneSweeper(lambda argvs: redis_call(me, argvs), grace=GRACE, period=0.01)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sweeper.run)
                while sweeper.failures < 2:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        assert sweeper.passes == 0 and sweeper.removed == 0
        assert sweeper.describe()["failures"] >= 2
    finally:
        await redis_call.aclose()


# -- a real cluster ------------------------------------------------------------------------


def _get(node, path: str) -> str:
    with urllib.request.urlopen(f"http://{node.host}:{node.stats_port}{path}", timeout=5) as reply:
        return reply.read().decode()


def _removed_metric(node) -> int:
    found = re.search(r"^dyno_tombstones_removed_total (\d+)$", _get(node, "/metrics"), re.M)
    assert found, "no dyno_tombstones_removed_total in /metrics"
    return int(found.group(1))


def test_a_node_drops_a_deleted_keys_version_and_keeps_a_live_ones(cluster_factory):
    grace = 2
    cluster = cluster_factory(racks=2, tombstone_grace=grace, max_hint_window=grace * 1000)
    client = cluster[0].client()
    stores = [(node.redis_client(), node.redis_client(db=DB)) for node in cluster.nodes]
    client.set("live", "v")
    client.set("gone", "v")
    client.set("fleeting", "v", px=300)

    def versioned(*names):
        return all(kept.get(name) for _, kept in stores for name in names)

    support.wait_for(lambda: versioned("live", "gone", "fleeting"), 10, "every replica to record the versions")
    live = {index: kept.get("live") for index, (_, kept) in enumerate(stores)}
    written = stores[0][1].get("gone")
    client.delete("gone")
    # the delete leaves a tombstone on every replica: a newer version, no data
    support.wait_for(lambda: all(kept.get("gone") is not None and kept.get("gone") > written
                                 and not data.exists("gone") for data, kept in stores),
                     10, "the tombstone of the delete on every replica")

    def swept():
        return all(kept.get("gone") is None and kept.get("fleeting") is None for _, kept in stores)

    support.wait_for(swept, 30, "every replica to drop the deleted and the expired key's versions")
    now_ms = time.time_ns() // 1_000_000
    for index, (data, kept) in enumerate(stores):
        # as old as the dropped ones, but its key exists: kept, unchanged
        assert kept.get("live") == live[index]
        assert versions.parse_version(live[index])[0] < now_ms - grace * 1000
        assert data.get("live") == b"v"
    assert client.get("live") == b"v" and client.get("gone") is None
    for node in cluster.nodes:
        assert _removed_metric(node) >= 2
        info = json.loads(_get(node, "/info"))
        counters = info["dyn_o_mite"]["tombstones"]
        assert counters["removed"] >= 2 and counters["passes"] >= 1 and counters["grace"] == grace
