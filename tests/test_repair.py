"""dyno.repair: the decision for one key (hypothesis, against a model of replicas),
the plan of a job (which keys, which replicas), and repair_keys / Repair against
real redis-server processes reached straight (RedisCall) and through a node's
datastore and peer link (NodeCall): divergent values of every type, missing keys,
tombstones, TTLs, unversioned keys, a flushed replica, a rack filter, token ranges,
a replica refusing writes, an unreachable one, and a write landing between FETCH
and RESTORE."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import hiredis
import pytest
import trio
import trio.testing
from hypothesis import given
from click.testing import CliRunner
from hypothesis import strategies as st

import support
from dyno import admin, cli, peer, tombstones, versions
from dyno.datastore import Datastore
from dyno.metrics import Metrics, Stats
from dyno.peer import Congestion, PeerLink, PeerServer
from dyno.repair import (
    RESTORE_SHA, KeyState, RedisCall, Repair, RepairRunning, RepairService, RepairUnavailable, ReplicaUnavailable,
    TokenRange, decide, node_call, parse_range, plan_repair, repair_keys, scan_steps,
)
from dyno.ring import MAX_TOKEN, Ring, RingNode
from dyno.versions import DIGEST, FETCH

DB = versions.DEFAULT_DB


def version(n: int) -> bytes:
    return versions.make_version(1_700_000_000_000 + n, 0, 7)


# -- the decision, against a model ------------------------------------------------------
#
# A modelled value is (content, encoding): its DUMP depends on both, its content digest
# on the content only (as Redis's: a set dumps in its hash table's order). A copy
# installs the winner's content, in the encoding the receiving Redis picks.

VERSIONS = [b"", version(1), version(2), version(3)]


def model_state(ver: bytes, present: bool, content: bytes, encoding: int, expire: int) -> KeyState:
    if not present:
        return KeyState(ver, -2, b"", b"")
    value = hashlib.sha1(content + bytes([encoding])).hexdigest().encode()
    return KeyState(ver, expire, value, hashlib.sha1(b"content:" + content).hexdigest().encode())


states_strategy = st.builds(
    model_state, st.sampled_from(VERSIONS), st.booleans(), st.sampled_from([b"a", b"b", b"c"]),
    st.integers(0, 1), st.sampled_from([-1, 1_000, 2_000]),
)
replica_states = st.lists(states_strategy, min_size=1, max_size=5)


def without_digests(states):
    return [state._replace(digest=None) if state.present else state for state in states]


def decide_fully(states):
    """decide() as repair_keys drives it: digests are only given when asked for."""
    bare = without_digests(states)
    decision = decide(bare)
    if decision.needs_digests:
        for index in decision.needs_digests:
            bare[index] = states[index]
        decision = decide(bare)
    assert not decision.needs_digests
    return decision


def rank(state: KeyState):
    expiry = 1 << 62 if state.expire_at == -1 else state.expire_at
    return state.version, state.digest, expiry


def copy_of(winner: KeyState, encoding_seed: int) -> KeyState:
    """What a replica holds once it installed ``winner``: same version, content and
    expiry, possibly another DUMP (its own encoding)."""
    if not winner.present:
        return winner
    value = hashlib.sha1(winner.value + bytes([encoding_seed])).hexdigest().encode()
    return winner._replace(value=value)


@given(replica_states, st.randoms())
def test_decision_does_not_depend_on_the_order_of_replicas(states, random):
    order = list(range(len(states)))
    random.shuffle(order)
    shuffled = [states[i] for i in order]
    first, second = decide_fully(states), decide_fully(shuffled)
    assert states[first.winner][:3] == shuffled[second.winner][:3]
    assert {order[i] for i in second.targets} == set(first.targets)


@given(replica_states)
def test_decision_never_picks_an_older_version(states):
    decision = decide_fully(states)
    newest = max(state.version for state in states)
    winner = states[decision.winner]
    assert winner.version == newest
    # and nothing ranks above the winner
    assert all(rank(state) <= rank(winner) for state in states)
    for index in decision.targets:
        assert rank(states[index]) < rank(winner)


@given(replica_states, st.lists(st.integers(0, 255), min_size=5, max_size=5))
def test_applying_a_decision_leaves_nothing_to_do(states, encodings):
    decision = decide_fully(states)
    winner = states[decision.winner]
    repaired = list(states)
    for index in decision.targets:
        repaired[index] = copy_of(winner, encodings[index])
    again = decide_fully(repaired)
    assert again.targets == ()
    assert repaired[again.winner][0] == winner.version


@given(replica_states)
def test_replicas_left_alone_agree_with_the_winner(states):
    decision = decide_fully(states)
    winner = states[decision.winner]
    for index, state in enumerate(states):
        if index not in decision.targets:
            assert rank(state) == rank(winner)


@given(st.lists(states_strategy.filter(lambda s: s.present), min_size=1, max_size=4),
       st.sampled_from(VERSIONS[1:]), st.data())
def test_a_newer_tombstone_deletes_the_key_everywhere(values, tombstone_version, data):
    values = [v for v in values if v.version < tombstone_version]
    position = data.draw(st.integers(0, len(values)))
    states = values[:position] + [KeyState(tombstone_version, -2, b"", b"")] + values[position:]
    decision = decide_fully(states)
    assert not states[decision.winner].present
    assert states[decision.winner].version == tombstone_version
    assert set(decision.targets) == set(range(len(states))) - {position}


@given(states_strategy, st.integers(1, 4))
def test_identical_states_need_nothing(state, count):
    decision = decide(without_digests([state] * count))
    assert decision.targets == () and decision.needs_digests == ()


def test_digests_are_asked_for_only_to_break_a_tie():
    old = KeyState(version(1), -1, b"x", None)
    new = KeyState(version(2), -1, b"y", None)
    assert decide([old, new]) == (1, (0,), (), False)
    other = KeyState(version(2), -1, b"z", None)
    assert decide([new, old, other]).needs_digests == (0, 2)
    absent = KeyState(version(2), -2, b"", b"")
    assert decide([absent, new]).needs_digests == (1,)
    # same digest and expiry: the same value dumped differently; no copy
    same = decide([new._replace(digest=b"d"), other._replace(digest=b"d")])
    assert same.targets == ()
    # same digest, one with no expiry: no expiry ranks last... that is, latest
    expiring = decide([new._replace(digest=b"d", expire_at=5), other._replace(digest=b"d")])
    assert (expiring.winner, expiring.targets, expiring.tie) == (1, (0,), True)


@given(replica_states, st.sampled_from([b"", *VERSIONS[1:], version(4)]))
def test_tombstones_past_the_horizon_are_copied_nowhere_when_no_replica_has_the_key(states, cutoff):
    """decide(horizon=...): replicas that all lack the key agree once every version of
    it is older than the horizon (a sweep may drop them: dyno.tombstones); otherwise
    the horizon changes nothing, and an old tombstone still deletes a value."""
    plain, swept = decide_fully(states), decide(without_digests(states), cutoff)
    newest = max(state.version for state in states)
    if newest < cutoff and not any(state.present for state in states):
        assert swept.targets == () and swept.needs_digests == ()
        assert states[swept.winner].version == newest
    else:
        if swept.needs_digests:
            swept = decide(states, cutoff)
        assert swept == plain


def test_an_old_tombstone_still_deletes_an_older_value():
    tombstone = KeyState(version(2), -2, b"", b"")
    value = KeyState(version(1), -1, b"x", None)
    assert decide([tombstone, value], horizon=version(3)) == (0, (1,), (), False)
    assert decide([tombstone, KeyState(b"", -2, b"", b"")], horizon=version(3)).targets == ()
    assert decide([tombstone, KeyState(b"", -2, b"", b"")], horizon=version(2)).targets == (1,)


# -- ranges and plans ---------------------------------------------------------------------


def test_parse_range():
    assert parse_range("10:20") == TokenRange(10, 20)
    assert 11 in parse_range("10:20") and 20 in parse_range("10:20")
    assert 10 not in parse_range("10:20") and 21 not in parse_range("10:20")
    wrapped = parse_range(f"{MAX_TOKEN - 1}:5")
    assert MAX_TOKEN in wrapped and 0 in wrapped and 5 in wrapped and 6 not in wrapped
    for bad, says in [("10", "START:END"), ("a:b", "START:END"), ("5:5", "empty"),
                      (f"0:{MAX_TOKEN + 1}", "not from 0"), ("-1:3", "not from 0")]:
        with pytest.raises(ValueError, match=says):
            parse_range(bad)


def node(name: str, rack: str, *tokens: int, dc: str = "dc1") -> RingNode:
    return RingNode(name, "127.0.0.1", 1000 + int(name[1:]), dc, rack, tuple(tokens))


def test_plan_of_racks_with_different_tokens():
    # rack r1: n1 owns (3000, 1000] (wrapping), n2 (1000, 3000]; rack r2: n3 (2000, 0], n4 (0, 2000]
    n1, n2, n3, n4 = node("n1", "r1", 1000), node("n2", "r1", 3000), node("n3", "r2", 0), node("n4", "r2", 2000)
    other_dc = node("n5", "r1", 1000, dc="dc2")
    ring = Ring([n2, n3, n4, other_dc], n1)
    plan = plan_repair(ring)
    assert [m.name for m in plan.scan] == ["n1", "n3", "n4"]  # ring order, local rack first
    assert plan.writable == {"n1", "n3", "n4"}
    assert [m.name for m in plan.replicas_of(500)] == ["n1", "n4"]
    assert [m.name for m in plan.replicas_of(4000)] == ["n1", "n3"]
    assert plan.replicas_of(1500) is None  # n2's
    narrow = plan_repair(ring, None, "r2", "100:900")
    assert [m.name for m in narrow.scan] == ["n1", "n4"]
    assert narrow.writable == {"n4"}
    assert narrow.replicas_of(50) is None and narrow.replicas_of(901) is None
    assert [m.name for m in narrow.replicas_of(900)] == ["n1", "n4"]
    assert [m.name for m in plan_repair(ring, "n2").scan] == ["n2", "n3", "n4"]
    with pytest.raises(ValueError, match="no rack 'r9' in datacenter dc1; its racks are: r1, r2"):
        plan_repair(ring, None, "r9")


# -- real Redis ------------------------------------------------------------------------


@pytest.fixture
def redises(tmp_path):
    """Three redis-servers, stopped on the way out."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(support.RedisServer(tmp_path / f"redis{i}")) for i in range(3)]


def one_token_ring(count: int, racks=None):
    """``count`` racks of one node each, all on token 0: every node replicates every key."""
    racks = racks or [f"r{i + 1}" for i in range(count)]
    nodes = [node(f"n{i + 1}", rack, 0) for i, rack in enumerate(racks)]
    return Ring(nodes[1:], nodes[0])


def direct(ring: Ring, servers) -> RedisCall:
    return RedisCall({member.name: server.addr for member, server in zip(ring.nodes, servers)})


class Replica:
    """Planting and reading one Redis's data (db 0) and versions (db 15)."""

    def __init__(self, server):
        self.data = server.client()
        self.versions = server.client(db=DB)

    def put(self, key: str, ver: bytes | None, write) -> None:
        write(self.data)
        if ver is not None:
            self.versions.set(key, ver)

    def tombstone(self, key: str, ver: bytes) -> None:
        self.data.delete(key)
        self.versions.set(key, ver)

    def fetch(self, keys) -> list:
        return self.data.eval(FETCH, len(keys), *keys, DB)

    def digests(self, keys) -> list:
        return self.data.eval(DIGEST, len(keys), *keys)


def snapshot(replica, keys) -> list:
    """(version, expiry, content digest) of each key on ``replica``."""
    return [(v, at, digest) for (v, at, _), digest in zip(replica.fetch(keys), replica.digests(keys))]


def agreement(replicas, keys, dumps=True):
    """Per key, the (version, expiry, digest[, DUMP]) of every replica; the keys on
    which they differ."""
    views = []
    for replica in replicas:
        rows = replica.fetch(keys)
        digests = replica.digests(keys)
        views.append([(v, at, digest, dump if dumps else b"") for (v, at, dump), digest in zip(rows, digests)])
    return [key for index, key in enumerate(keys) if len({view[index] for view in views}) > 1]


FUTURE = 4_000_000_000_000  # ms: year 2096


def plant_divergence(a: Replica, b: Replica, c: Replica) -> list[str]:
    """Keys on which three replicas disagree in every way repair must handle."""
    keys = []

    def key(name):
        keys.append(name)
        return name

    k = key("string")
    a.put(k, version(2), lambda r: r.set(k, "new"))
    b.put(k, version(1), lambda r: r.set(k, "old"))
    k = key("string-with-ttl")
    a.put(k, version(2), lambda r: r.set(k, "v", pxat=FUTURE))
    b.put(k, version(1), lambda r: r.set(k, "v"))
    k = key("hash")
    b.put(k, version(3), lambda r: r.hset(k, mapping={"f1": "1", "f2": "2"}))
    c.put(k, version(2), lambda r: r.hset(k, mapping={"f1": "0"}))
    k = key("list")
    c.put(k, version(3), lambda r: r.rpush(k, "x", "y", "z"))
    a.put(k, version(1), lambda r: r.rpush(k, "x"))
    k = key("set")
    a.put(k, version(4), lambda r: (r.sadd(k, "m1", "m2", "m3"), r.pexpireat(k, FUTURE)))
    k = key("zset")
    b.put(k, version(4), lambda r: r.zadd(k, {"a": 1.5, "b": 2}))
    c.put(k, version(4), lambda r: r.zadd(k, {"a": 1.5, "b": 3}))  # same version: a tie
    k = key("stream")
    c.put(k, version(5), lambda r: r.xadd(k, {"f": "v"}, id="1-1"))
    k = key("tombstone")
    a.tombstone(k, version(6))
    b.put(k, version(5), lambda r: r.set(k, "deleted later"))
    c.put(k, None, lambda r: r.set(k, "never versioned"))
    k = key("unversioned")
    a.put(k, None, lambda r: r.set(k, "x"))
    b.put(k, None, lambda r: r.set(k, "y"))
    k = key("big-set")  # hash-table encoded: its DUMP differs between Redis processes
    members = [f"member{i}" for i in range(300)]
    a.put(k, version(7), lambda r: r.sadd(k, *members))
    b.put(k, version(6), lambda r: r.sadd(k, *members[:10]))
    return keys


async def test_repair_keys_makes_three_replicas_agree(redises):
    ring = one_token_ring(3)
    a, b, c = replicas = [Replica(server) for server in redises]
    keys = plant_divergence(a, b, c)
    call = direct(ring, redises)
    try:
        result = await repair_keys([k.encode() for k in keys], ring.nodes, call)
        # Redis 7.0 keeps any set of strings in a hash table, dumped in its order
        sets = ["set", "big-set"]
        assert agreement(replicas, [k for k in keys if k not in sets]) == []
        assert agreement(replicas, sets, dumps=False) == []
        assert result.compared == len(keys) and result.errors == 0, result.messages
        # the winners, as decided
        for replica in replicas:
            assert replica.data.get("string") == b"new"
            assert replica.data.pexpiretime("string-with-ttl") == FUTURE
            assert replica.data.pexpiretime("string") == -1
            assert replica.data.hgetall("hash") == {b"f1": b"1", b"f2": b"2"}
            assert replica.data.lrange("list", 0, -1) == [b"x", b"y", b"z"]
            assert replica.data.pexpiretime("set") == FUTURE
            assert replica.data.xrange("stream") == [(b"1-1", {b"f": b"v"})]
            assert not replica.data.exists("tombstone")
            assert replica.versions.get("tombstone") == version(6)
            assert replica.versions.get("unversioned") is None  # never given a version
            assert replica.data.scard("big-set") == 300
        assert result.deleted == 2  # the tombstone, to b and c
        again = await repair_keys([k.encode() for k in keys], ring.nodes, call)
        assert (again.compared, again.copies, again.errors) == (len(keys), 0, 0)
    finally:
        await call.aclose()


async def test_equal_sets_that_dump_differently_are_not_copied(redises):
    ring = one_token_ring(2)
    replicas = [Replica(server) for server in redises[:2]]
    members = [f"m{i}" for i in range(500)]
    for replica in replicas:
        replica.put("s", version(1), lambda r: r.sadd("s", *members))
    dumps = {replica.data.dump("s") for replica in replicas}
    assert len(dumps) == 2, "the premise: two Redis processes dump one set differently"
    call = direct(ring, redises)
    try:
        result = await repair_keys([b"s"], ring.nodes, call)
        assert (result.compared, result.copies) == (1, 0)
    finally:
        await call.aclose()


async def test_repair_does_not_copy_back_a_tombstone_a_sweep_may_drop(redises):
    """One replica has dropped a tombstone older than tombstone_grace (or never had
    it), another still has it, neither has the key: repair leaves both alone, rather
    than copy the old tombstone back. A recent tombstone is still copied, and an old
    one still deletes an older value."""
    ring = one_token_ring(2)
    a, b = [Replica(server) for server in redises[:2]]
    now_ms = time.time_ns() // 1_000_000
    recent = versions.make_version(now_ms, 0, 7)
    a.tombstone("swept-on-b", version(2))
    a.tombstone("both-old", version(3))
    b.tombstone("both-old", version(2))
    a.tombstone("recent", recent)
    a.tombstone("over-a-value", version(5))
    b.put("over-a-value", version(4), lambda r: r.set("over-a-value", "deleted later"))
    keys = [b"swept-on-b", b"both-old", b"recent", b"over-a-value"]
    cutoff = tombstones.horizon(now_ms, 864_000)
    assert version(5) < cutoff < recent
    call = direct(ring, redises)
    try:
        result = await repair_keys(keys, ring.nodes, call, horizon=cutoff)
        assert (result.compared, result.deleted, result.repaired, result.errors) == (4, 2, 0, 0)
        assert b.versions.get("swept-on-b") is None          # not copied back
        assert (a.versions.get("both-old"), b.versions.get("both-old")) == (version(3), version(2))
        assert b.versions.get("recent") == recent            # inside the grace: copied
        assert not b.data.exists("over-a-value") and b.versions.get("over-a-value") == version(5)
        # without a horizon (as before tombstone GC) the old tombstone is copied back
        again = await repair_keys([b"swept-on-b"], ring.nodes, call)
        assert again.deleted == 1 and b.versions.get("swept-on-b") == version(2)
    finally:
        await call.aclose()


async def test_a_repair_job_honours_tombstone_grace(redises):
    """A job (as the node's RepairService runs it) takes its horizon from
    tombstone_grace: a key deleted behind the scan's back on every replica, whose
    tombstone is old, is not copied to the replica without it."""
    ring = one_token_ring(2)
    a, b = [Replica(server) for server in redises[:2]]
    a.put("k", version(1), lambda r: r.set("k", "v"))
    b.put("k", version(1), lambda r: r.set("k", "v"))
    call = direct(ring, redises)
    scanned = []

    async def deleting_call(node, argvs):
        # the scan saw k on a; then k is deleted on both (b dropped its tombstone already)
        replies = await call(node, argvs)
        if argvs[0][0] == b"SCAN" and not scanned:
            scanned.append(node.name)
            a.tombstone("k", version(2))
            b.data.delete("k")
            b.versions.delete("k")
        return replies

    try:
        job = Repair(plan_repair(ring), deleting_call, tombstone_grace=864_000)
        await job.run()
        assert job.phase == "done" and job.result.compared >= 1 and job.result.copies == 0
        assert b.versions.get("k") is None
        a.data.set("k", "v")
        b.data.set("k", "v")
        b.versions.set("k", version(1))
        scanned.clear()
        plain = Repair(plan_repair(ring), deleting_call)   # no grace: the tombstone is copied
        await plain.run()
        assert plain.result.deleted == 1 and b.versions.get("k") == version(2)
    finally:
        await call.aclose()


async def test_a_write_landing_before_the_copy_is_not_overwritten(redises):
    ring = one_token_ring(2)
    a, b = [Replica(server) for server in redises[:2]]
    a.put("k", version(2), lambda r: r.set("k", "repair's copy"))
    b.put("k", version(1), lambda r: r.set("k", "stale"))
    straight = direct(ring, redises)
    written = []

    async def call(replica, argvs):
        if replica.name == "n2" and any(argv[:2] == [b"EVALSHA", RESTORE_SHA] for argv in argvs) and not written:
            b.put("k", version(3), lambda r: r.set("k", "a client's write"))
            written.append(True)
        return await straight(replica, argvs)

    try:
        result = await repair_keys([b"k"], ring.nodes, call)
        assert written
        assert (result.repaired, result.skipped) == (0, 1)
        assert b.data.get("k") == b"a client's write" and b.versions.get("k") == version(3)
        # the next repair carries the newer write the other way
        again = await repair_keys([b"k"], ring.nodes, straight)
        assert again.repaired == 1 and a.data.get("k") == b"a client's write"
    finally:
        await straight.aclose()


async def test_a_winner_written_between_the_two_fetches_is_left_alone(redises):
    ring = one_token_ring(2)
    a, b = [Replica(server) for server in redises[:2]]
    a.put("k", version(2), lambda r: r.set("k", "fetched"))
    straight = direct(ring, redises)
    fetches = itertools.count()

    async def call(replica, argvs):
        if replica.name == "n1" and argvs[0][1] == FETCH and next(fetches) == 1:
            a.put("k", version(3), lambda r: r.set("k", "rewritten"))
        return await straight(replica, argvs)

    try:
        result = await repair_keys([b"k"], ring.nodes, call)
        assert (result.changed, result.copies) == (1, 0)
        assert not b.data.exists("k")
    finally:
        await straight.aclose()


def populate(replica: Replica, count: int, ver: bytes) -> None:
    script = """
    for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'key:' .. i, 'value ' .. i) end
    redis.call('SELECT', ARGV[3])
    for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'key:' .. i, ARGV[2]) end
    return 1
    """
    replica.data.eval(script, 0, count, ver, DB)


async def test_repair_refills_a_flushed_replica(redises):
    count = 20_000
    ring = one_token_ring(3)
    a, b, c = replicas = [Replica(server) for server in redises]
    for replica in (a, b, c):
        populate(replica, count, version(1))
    b.put("only-on-b", version(2), lambda r: r.hset("only-on-b", "f", "v"))
    c.data.flushall()
    call = direct(ring, redises)
    try:
        job = await Repair(plan_repair(ring), call).run()
        status = job.status()
        assert status["phase"] == "done" and status["errors"] == 0, status
        assert status["repaired"] == count + 2  # every key to c, only-on-b to a and c
        assert status["keys_total"] == 2 * count + 1  # DBSIZE of a, b and c, summed
        keys = [f"key:{i}" for i in range(1, count + 1)] + ["only-on-b"]
        for start in range(0, len(keys), 2000):
            assert agreement(replicas, keys[start:start + 2000]) == []
        again = (await Repair(plan_repair(ring), call).run()).status()
        assert (again["phase"], again["repaired"], again["deleted"], again["errors"]) == ("done", 0, 0, 0)
        # the key each replica holds is compared once (in the first pass that sees it)
        assert count + 1 <= again["compared"] < 1.1 * (count + 1)
    finally:
        await call.aclose()


async def test_a_node_repairs_only_its_own_ranges(redises):
    # rack r1: n1 owns (2**31, MAX_TOKEN] and [0, 2**31], n2 (2**31, MAX_TOKEN]... as tokens say
    n1, n2, n3 = node("n1", "r1", 2**31), node("n2", "r1", MAX_TOKEN), node("n3", "r2", MAX_TOKEN)
    ring = Ring([n2, n3], n1)
    one, two, three = [Replica(server) for server in redises]
    keys = [f"key:{i}".encode() for i in range(1, 2001)]
    populate(three, len(keys), version(1))
    call = direct(ring, redises)
    try:
        job = await Repair(plan_repair(ring), call).run()
        ones = {k for k in keys if ring.token_of(k) <= 2**31}
        assert 800 < len(ones) < 1200
        assert set(one.data.keys()) == ones
        assert two.data.dbsize() == 0 and three.data.dbsize() == len(keys)
        assert job.status()["repaired"] == len(ones)
        narrow = parse_range(f"{2**31}:{3 * 2**30}")
        job = await Repair(plan_repair(ring, "n2", None, narrow), call).run()
        assert set(two.data.keys()) == {k for k in keys if ring.token_of(k) in narrow}
        assert job.status()["range"] == str(narrow)
    finally:
        await call.aclose()


async def test_a_rack_filter_repairs_only_that_rack(redises):
    ring = one_token_ring(3)
    a, b, c = [Replica(server) for server in redises]
    a.put("k", version(2), lambda r: r.set("k", "new"))
    b.put("k", version(1), lambda r: r.set("k", "old"))
    call = direct(ring, redises)
    try:
        job = await Repair(plan_repair(ring, None, "r3"), call).run()
        assert job.status()["writable"] == ["n3"]
        assert (b.data.get("k"), c.data.get("k")) == (b"old", b"new")
        assert job.status()["repaired"] == 1
    finally:
        await call.aclose()


async def test_a_replica_refusing_copies_is_counted_not_fatal(redises):
    ring = one_token_ring(2)
    a, b = [Replica(server) for server in redises[:2]]
    a.put("k", version(2), lambda r: r.set("k", "new"))
    b.data.config_set("maxmemory", 1)  # every write is refused (OOM)
    call = direct(ring, redises)
    try:
        status = (await Repair(plan_repair(ring), call).run()).status()
        assert status["phase"] == "done" and status["errors"] == 1 and status["repaired"] == 0
        assert "n2: RESTORE_IF_NEWER failed: OOM" in status["error_samples"][0]
    finally:
        b.data.config_set("maxmemory", 0)
        await call.aclose()


async def test_a_replica_refusing_scan_is_counted_and_left_for_the_next_repair(redises):
    ring = one_token_ring(2)
    a, b = [Replica(server) for server in redises[:2]]
    a.put("k", version(2), lambda r: r.set("k", "new"))
    b.data.execute_command("ACL", "SETUSER", "default", "-scan")  # n2's pass cannot start
    call = direct(ring, redises)
    try:
        status = (await Repair(plan_repair(ring), call).run()).status()
        # n1's pass copied k to n2; n2's pass is an error, not the job's end
        assert status["phase"] == "done" and status["repaired"] == 1 and status["errors"] == 1, status
        assert status["error_samples"][0].startswith("n2: SCAN failed: NOPERM"), status
        assert b.data.get("k") == b"new"
    finally:
        b.data.execute_command("ACL", "SETUSER", "default", "+scan")
        await call.aclose()


async def test_an_unreachable_replica_ends_the_job_naming_it(redises):
    ring = one_token_ring(2)
    Replica(redises[0]).put("k", version(1), lambda r: r.set("k", "v"))
    call = RedisCall({"n1": redises[0].addr, "n2": ("127.0.0.1", support.free_port())}, timeout=5)
    try:
        with pytest.raises(ReplicaUnavailable, match="replica n2 is unreachable: 127.0.0.1:"):
            await repair_keys([b"k"], ring.nodes, call)
        status = (await Repair(plan_repair(ring), call).run()).status()
        assert status["phase"] == "failed" and not status["running"]
        assert status["error"].startswith("replica n2 is unreachable: 127.0.0.1:")
    finally:
        await call.aclose()


# -- scan_steps: the SCAN loop repair's passes and streaming's copies share ----------


async def until(predicate) -> None:
    """Wait for ``predicate()`` (the caller's trio.fail_after is the deadline)."""
    while not predicate():
        await trio.sleep(0.001)


async def test_scan_steps_works_on_every_key_with_at_most_parallel_steps_at_once(redises):
    populate(Replica(redises[0]), 1000, version(1))
    redis_call = RedisCall({"n1": redises[0].addr})
    scanned_to_end = trio.Event()

    async def call(node, argvs):  # the real Redis's replies, noting the last SCAN
        replies = await redis_call(node, argvs)
        if argvs[0][0] == b"SCAN" and replies[0][0] == b"0":
            scanned_to_end.set()
        return replies

    seen: list[bytes] = []
    started: list[bool] = []
    running: set[int] = set()
    most = 0

    def step_for(keys):
        seen.extend(keys)
        index = len(started)
        started.append(False)

        async def work():
            nonlocal most
            started[index] = True
            running.add(index)
            most = max(most, len(running))
            # held until the next step's work starts: two overlap whenever scan_steps lets them
            await until(lambda: scanned_to_end.is_set() or (index + 1 < len(started) and started[index + 1]))
            running.discard(index)

        return work if keys else None

    try:
        with trio.fail_after(30):
            await scan_steps(call, node("n1", "r1", 0), step_for, count=b"50", parallel=2,
                             bad_reply=lambda reply: pytest.fail(f"SCAN answered {reply!r}"))
    finally:
        await redis_call.aclose()
    assert sorted(set(seen)) == sorted(b"key:%d" % i for i in range(1, 1001))
    assert len(started) > 2 and all(started) and most == 2


async def test_scan_steps_cancels_the_other_steps_at_the_first_unavailable_replica(redises):
    populate(Replica(redises[0]), 1000, version(1))
    call = RedisCall({"n1": redises[0].addr})
    steps = 0
    started = trio.Event()
    cancelled = []

    def step_for(keys):
        nonlocal steps
        steps += 1
        if steps == 1:
            async def fail():
                await started.wait()
                raise ReplicaUnavailable("n2", "gone")
            return fail

        async def hang():
            started.set()
            try:
                await trio.sleep_forever()
            finally:
                cancelled.append(True)
        return hang

    try:
        with trio.fail_after(30), pytest.raises(ReplicaUnavailable, match="replica n2 is unreachable: gone"):
            await scan_steps(call, node("n1", "r1", 0), step_for, count=b"50", parallel=2,
                             bad_reply=lambda reply: pytest.fail(f"SCAN answered {reply!r}"))
    finally:
        await call.aclose()
    assert cancelled == [True] and steps < 1000 // 50  # the scan stopped too


async def test_scan_steps_hands_a_refused_scan_to_bad_reply(redises):
    server = redises[0]
    server.client().set("k", "v")
    server.client().execute_command("ACL", "SETUSER", "default", "-scan")
    call = RedisCall({"n1": server.addr})
    bad = []
    try:
        await scan_steps(call, node("n1", "r1", 0), lambda keys: pytest.fail(f"a step of {keys}"),
                         count=b"50", parallel=2, bad_reply=bad.append)
    finally:
        server.client().execute_command("ACL", "SETUSER", "default", "+scan")
        await call.aclose()
    assert len(bad) == 1 and isinstance(bad[0], hiredis.ReplyError) and str(bad[0]).startswith("NOPERM")


async def test_the_rate_limit_spreads_the_work(redises):
    ring = one_token_ring(2)
    populate(Replica(redises[0]), 300, version(1))
    call = direct(ring, redises)
    try:
        job = await Repair(plan_repair(ring), call, rate=1000, chunk=50).run()
        # 300 keys at 1,000 a second: the last chunk starts no earlier than 0.25 s in
        assert job.status()["compared"] == 300
        assert job.elapsed() >= 0.25
    finally:
        await call.aclose()


async def test_the_service_runs_one_job_at_a_time(redises):
    ring = one_token_ring(2)
    populate(Replica(redises[0]), 2000, version(1))
    call = direct(ring, redises)
    service = RepairService(lambda: ring, call, rate=2000)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.serve)
            await trio.testing.wait_all_tasks_blocked()
            assert service.status() is None
            with pytest.raises(ValueError, match="no rack 'r7'"):
                service.start("r7")
            with pytest.raises(ValueError, match="range"):
                service.start(None, "1:x")
            started = service.start(None, None)
            assert started["running"] and started["id"] == 1
            with pytest.raises(RepairRunning, match="repair 1 is running already on n1"):
                service.start()
            with trio.fail_after(20):
                while service.status()["running"]:
                    await trio.sleep(0.01)
            done = service.status()
            assert done["phase"] == "done" and done["repaired"] == 2000 and done["eta"] == 0
            assert service.start(rate=0)["id"] == 2
            nursery.cancel_scope.cancel()
        assert service.status()["phase"] == "cancelled"
    finally:
        await call.aclose()


# -- through a node's datastore and a peer link --------------------------------------


@contextlib.asynccontextmanager
async def node_transport(nursery, servers):
    """A ``node_call`` as node n1 would have it: n1's Redis through a Datastore, n2's
    through a PeerLink to a PeerServer in front of n2's Redis."""
    local, remote = (Datastore(s.host, s.port, timeout=10) for s in servers)
    hello = peer.hello_frame("test", "n2", "dc1", "r2", "127.0.0.1:1")
    server = PeerServer("127.0.0.1", 0, cluster="test", hello=lambda: hello, datastore=remote,
                        datastore3=remote, coordinate=None, on_gossip=lambda *a: None,
                        on_hello=lambda *a: None)
    server.bind()
    link = PeerLink(
        RingNode("n2", "127.0.0.1", server.port, "dc1", "r2", (0,)), cluster="test",
        hello=lambda: peer.hello_frame("test", "n1", "dc1", "r1", "127.0.0.1:1"), timeout=10,
        congestion=Congestion(), after_batch=lambda: None, on_unreachable=lambda name: None,
        on_hello=lambda *a: None, on_write_failed=lambda *a: None,
    )
    for task in (local.run, remote.run, link.run):
        nursery.start_soon(task)
    nursery.start_soon(server.serve, nursery)
    with trio.fail_after(10):
        while not (local.up and remote.up and link.usable):
            await trio.sleep(0.01)
    yield node_call("n1", local, {"n2": link}.get), link


async def test_repair_through_the_datastore_and_a_peer_link(redises):
    ring = one_token_ring(2)
    a, b = replicas = [Replica(server) for server in redises[:2]]
    keys = plant_divergence(a, b, Replica(redises[2]))
    async with trio.open_nursery() as nursery:
        async with node_transport(nursery, redises[:2]) as (call, link):
            assert await call(ring.nodes[1], [[b"EXISTS", b"no-such-key"]]) == [0]
            [error] = await call(ring.nodes[0], [[b"NOSUCHCOMMAND"]])
            assert isinstance(error, hiredis.ReplyError)
            result = await repair_keys([k.encode() for k in keys], ring.nodes, call)
            assert result.errors == 0 and result.copies > 0
            assert agreement(replicas, [k for k in keys if k not in ("set", "big-set")]) == []
            assert agreement(replicas, ["set", "big-set"], dumps=False) == []
            job = await Repair(plan_repair(ring), call).run()
            assert job.status()["phase"] == "done" and job.status()["repaired"] == 0
            link.judged_down = True  # gossip says n2 is down: calls fail at once
            with pytest.raises(ReplicaUnavailable, match="replica n2 is unreachable: ERR dyno: peer n2"):
                await call(ring.nodes[1], [[b"PING"]])
            with pytest.raises(ReplicaUnavailable, match="no peer link"):
                await node_call("n1", None, {}.get)(ring.nodes[1], [[b"PING"]])
        nursery.cancel_scope.cancel()


# -- the admin port's /repair, and `dyno repair` end to end ---------------------------


class NodeStub:
    """What the admin server's sampler and its POSTs read of a node (and ask of it: time a batch)."""

    stats = Stats()
    metrics = Metrics()
    refresh = settle = None  # a node of one process (dyno.workers sets them)

    @staticmethod
    def sample_next() -> None:
        pass


async def test_the_admin_repair_routes():
    started = []

    def start(rack, token_range, rate):
        started.append((rack, token_range, rate))
        if rack == "busy":
            raise RepairRunning("repair 1 is running already on n1")
        if rack == "stopping":
            raise RepairUnavailable("the repair service is not running")
        if token_range == "5:5":
            raise ValueError("range '5:5' is empty")
        return {"id": len(started)}

    server = admin.AdminServer(NodeStub(), "127.0.0.1", 0, start_repair=start,
                               repair_status=lambda: {"id": 7, "running": False})
    reply = await server.respond("POST", "/repair?rack=r1&range=1%3A2&rate=5")
    assert (reply.status, json.loads(reply.body)) == (202, {"started": {"id": 1}})
    assert started == [("r1", "1:2", 5.0)]
    reply = await server.respond("POST", "/repair/")
    assert reply.status == 202 and started[-1] == (None, None, None)
    for target, status, says in [
        ("/repair?range=5:5", 400, b"400 Bad Request: range '5:5' is empty\n"),
        ("/repair?rack=busy", 409, b"409 Conflict: repair 1 is running already on n1\n"),
        ("/repair?rack=stopping", 503, b"503 Service Unavailable: the repair service is not running\n"),
        ("/repair?rate=-1", 400, b"400 Bad Request: rate '-1' is not a number of keys per second (0: no limit)\n"),
        ("/repair?rate=fast", 400, b"400 Bad Request: rate 'fast' is not"),
        ("/repair?racks=r1", 400, b"400 Bad Request: /repair takes rack, range, rate, not racks\n"),
    ]:
        reply = await server.respond("POST", target)
        assert (reply.status, reply.body[:len(says)]) == (status, says), target
    reply = await server.respond("GET", "/repair")
    assert (reply.status, json.loads(reply.body)) == (200, {"id": 7, "running": False})
    reply = await server.respond("PUT", "/repair")
    assert reply.status == 405 and ("Allow", "GET, HEAD, POST") in reply.headers
    reply = await server.respond("POST", "/info")
    assert reply.status == 405 and b"GET only" in reply.body and ("Allow", "GET, HEAD") in reply.headers
    bare = admin.AdminServer(NodeStub(), "127.0.0.1", 0)
    for method in ("GET", "POST"):
        reply = await bare.respond(method, "/repair")
        assert (reply.status, reply.body) == (503, b"503 Service Unavailable: repair not available on this node\n")


async def test_dyno_repair_through_a_real_admin_port(redises):
    ring = one_token_ring(3)
    replicas = [Replica(server) for server in redises]
    keys = plant_divergence(*replicas)
    call = direct(ring, redises)
    service = RepairService(lambda: ring, call)
    server = admin.AdminServer(NodeStub(), "127.0.0.1", 0, start_repair=service.start,
                               repair_status=service.status)
    server.bind()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.serve)
            nursery.start_soon(server.serve)
            result = await trio.to_thread.run_sync(
                lambda: CliRunner().invoke(cli.main, ["repair", "--node", server.address, "--rack", "r3"]))
            assert result.exit_code == 0, result.output
            assert result.stdout.startswith("repair 1 of n1 (rack r3 of dc1, all its ranges) done in ")
            assert "no errors." in result.stdout
            assert replicas[2].data.get("string") == b"new" and replicas[1].data.get("string") == b"old"
            after_r3 = snapshot(replicas[2], keys)
            result = await trio.to_thread.run_sync(
                lambda: CliRunner().invoke(cli.main, ["repair", "--node", server.address]))
            assert result.exit_code == 0 and result.stdout.startswith("repair 2 of n1 (every rack")
            sets = ["set", "big-set"]
            assert agreement(replicas, [k for k in keys if k not in sets]) == []
            # the repair of every rack found nothing newer for rack r3's replica
            assert snapshot(replicas[2], keys) == after_r3
            nursery.cancel_scope.cancel()
    finally:
        await call.aclose()


def test_the_bench_script_reports_what_it_did():
    script = Path(__file__).resolve().parent.parent / "scripts" / "repair_bench.py"
    done = subprocess.run([sys.executable, str(script), "--keys", "3000", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cases = json.loads(done.stdout)["cases"]
    assert [(c["compared"], c["copied"]) for c in cases.values()] == [(3000, 3000), (3000, 0), (3000, 300)]
    assert all(c["keys_per_second"] > 0 for c in cases.values())
