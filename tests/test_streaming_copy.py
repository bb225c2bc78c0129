"""dyno.streaming against real redis-servers: what a join's copy moves (only the
pending ranges, with TTLs and versions), which copy wins (the source's on the same
version, the target's when newer), the throttle, the plan's choice of sources, and
cleanup dropping only what a node no longer owns."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing

import support
from dyno.ownership import JOINING, NORMAL, REPLACING, Claim, ring_of
from dyno.repair import RedisCall
from dyno.ring import RingNode
from dyno.streaming import Cleanup, Transfer, not_owned, plan_transfer

DB = 15


def node(name: str, rack: str, *tokens: int) -> RingNode:
    return RingNode(name, "127.0.0.1", 1000 + int(name[1:]), "dc", rack, tuple(tokens))


@pytest.fixture
def redises(tmp_path):
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(support.RedisServer(tmp_path / f"redis{i}")) for i in range(3)]


def join_ring(local="n1"):
    """Rack r1: n1 (token 0) and n3 joining at 2**31; rack r2: n2. n3 takes (0, 2**31]."""
    n1, n2, n3 = node("n1", "r1", 0), node("n2", "r2", 0), node("n3", "r1", 2**31)
    me = {"n1": n1, "n2": n2, "n3": n3}[local]
    return ring_of([Claim(n1, NORMAL, 1), Claim(n2, NORMAL, 1), Claim(n3, JOINING, 2)], me)[0]


async def test_a_join_copies_its_range_with_ttls_and_versions_and_nothing_else(redises):
    source, other, target = redises
    ring = join_ring("n3")
    call = RedisCall({"n1": source.addr, "n2": other.addr, "n3": target.addr})
    data, versions = source.client(), source.client(db=DB)
    moving, staying = [], []
    for i in range(400):
        key = f"k{i}"
        data.set(key, f"v{i}", ex=1000 if i % 2 else None)
        versions.set(key, b"%024x" % i)
        (moving if ring.pending(ring.token_of(key.encode())) else staying).append(key)
    data.hset("h0", mapping={"a": "1", "b": "2"})
    assert moving and staying
    plan = plan_transfer(ring, "n3", "join", lambda n: True)
    assert [(s.name, [t.name for t in ts]) for s, ts in plan.sources] == [("n1", ["n3"])]
    transfer = await Transfer(plan, lambda: ring, call, db=DB).run()
    assert transfer.phase == "done", transfer.error
    moved = {key.decode() for key in target.client().keys()}
    assert moved == set(moving) | ({"h0"} if ring.pending(ring.token_of(b"h0")) else set())
    assert transfer.copied == len(moved) and transfer.bytes > 0
    t_data, t_versions = target.client(), target.client(db=DB)
    for key in moving:
        i = int(key[1:])
        assert t_data.get(key) == f"v{i}".encode()
        assert t_versions.get(key) == b"%024x" % i
        assert (0 < t_data.ttl(key) <= 1000) if i % 2 else t_data.ttl(key) == -1
    status = transfer.status()
    assert status["phase"] == "done" and status["total"] == 401 and status["scanned"] == 401


async def test_the_source_wins_on_the_same_version_and_a_newer_target_is_kept(redises):
    source, _, target = redises
    ring = join_ring("n3")
    call = RedisCall({"n1": source.addr, "n3": target.addr})
    keys = [f"k{i}" for i in range(200) if ring.pending(ring.token_of(f"k{i}".encode()))][:2]
    same, newer = keys
    s, sv, t, tv = source.client(), source.client(db=DB), target.client(), target.client(db=DB)
    # a write the pending owner got before its key was copied: an HSET on a hash it did not have
    s.hset(same, mapping={"a": "1", "b": "2"}); sv.set(same, b"%024x" % 5)
    t.hset(same, mapping={"b": "2"}); tv.set(same, b"%024x" % 5)
    # a write the target applied first, newer than what the source holds yet
    s.set(newer, "old"); sv.set(newer, b"%024x" % 5)
    t.set(newer, "new"); tv.set(newer, b"%024x" % 9)
    transfer = await Transfer(plan_transfer(ring, "n3", "join", lambda n: True), lambda: ring, call, db=DB).run()
    assert transfer.phase == "done"
    assert t.hgetall(same) == {b"a": b"1", b"b": b"2"}
    assert t.get(newer) == b"new" and transfer.newer >= 1


async def test_stream_rate_throttles_the_copy(redises):
    source, _, target = redises
    ring = join_ring("n3")
    call = RedisCall({"n1": source.addr, "n3": target.addr})
    source.client().mset({f"k{i}": "v" for i in range(2000)})
    plan = plan_transfer(ring, "n3", "join", lambda n: True)
    transfer = Transfer(plan, lambda: ring, call, db=DB, rate=1500)
    started = trio.current_time()
    await transfer.run()
    elapsed = trio.current_time() - started
    assert transfer.phase == "done" and transfer.copied > 700
    # the copy waits after each chunk until the rate allows what it copied
    assert elapsed >= transfer.copied / 1500 * 0.95, (elapsed, transfer.copied)
    assert transfer.status()["keys_per_second"] <= 1500 * 1.05


async def test_a_source_refusing_scan_fails_the_copy_naming_it(redises):
    source, _, target = redises
    ring = join_ring("n3")
    call = RedisCall({"n1": source.addr, "n3": target.addr})
    source.client().mset({f"k{i}": "v" for i in range(100)})
    source.client().execute_command("ACL", "SETUSER", "default", "-scan")
    try:
        transfer = await Transfer(plan_transfer(ring, "n3", "join", lambda n: True), lambda: ring, call,
                                  db=DB).run()
        # a copy cannot skip a source (repair can): the move fails, naming it
        assert transfer.phase == "failed", transfer.status()
        assert transfer.error.startswith("replica n1 is unreachable: SCAN answered ReplyError("), transfer.error
        assert "NOPERM" in transfer.error
        assert transfer.copied == 0 and target.client().dbsize() == 0
    finally:
        source.client().execute_command("ACL", "SETUSER", "default", "+scan")
        await call.aclose()


def test_a_replacement_copies_from_another_rack_when_the_replaced_node_is_down():
    n1, n2, n3 = node("n1", "r1", 0), node("n2", "r2", 0), node("n3", "r2", 0)
    ring = ring_of([Claim(n1, NORMAL, 1), Claim(n2, NORMAL, 1), Claim(n3, REPLACING, 2)], n3)[0]
    plan = plan_transfer(ring, "n3", "replace", lambda n: n.name != "n2")
    assert [(s.name, [t.name for t in ts]) for s, ts in plan.sources] == [("n1", ["n3"])]
    nobody = plan_transfer(ring, "n3", "replace", lambda n: False)
    assert nobody.sources == [] and nobody.missing


def test_a_decommission_sends_each_range_to_its_next_owner_in_the_rack():
    n1, n2, n4 = node("n1", "r1", 0), node("n2", "r2", 0), node("n4", "r1", 2**31)
    from dyno.ownership import DECOMMISSIONING
    ring = ring_of([Claim(n1, NORMAL, 1), Claim(n2, NORMAL, 1), Claim(n4, DECOMMISSIONING, 1)], n4)[0]
    plan = plan_transfer(ring, "n4", "decommission", lambda n: True)
    assert [(s.name, [t.name for t in ts]) for s, ts in plan.sources] == [("n4", ["n1"])]


async def test_cleanup_drops_only_what_the_node_no_longer_owns(redises):
    mine = redises[0]
    n1, n2, n3 = node("n1", "r1", 0), node("n2", "r2", 0), node("n3", "r1", 2**31)
    after = ring_of([Claim(n1, NORMAL, 1), Claim(n2, NORMAL, 1), Claim(n3, NORMAL, 2)], n1)[0]
    during = join_ring("n1")
    keys = [f"k{i}".encode() for i in range(300)]
    assert not_owned(during, "n1", keys) == []   # while n3 joins, n1 still owns everything
    gone = set(not_owned(after, "n1", keys))
    assert gone and len(gone) < len(keys)
    data, versions = mine.client(), mine.client(db=DB)
    data.mset({key: b"v" for key in keys})
    versions.mset({key: b"1" for key in keys})
    cleanup = Cleanup(n1, lambda: after, RedisCall({"n1": mine.addr}), db=DB)
    await cleanup.run()
    assert cleanup.dropped == len(gone)
    assert set(data.keys()) == set(keys) - gone
    assert set(versions.keys()) == set(keys) - gone


async def test_a_decommission_is_refused_for_the_last_node_of_a_rack_and_a_joining_node():
    from dyno.streaming import Mover

    n1, n2 = node("n1", "r1", 0), node("n2", "r2", 0)
    alone = ring_of([Claim(n1, NORMAL, 1), Claim(n2, NORMAL, 1)], n1)[0]
    joining = join_ring("n3")

    async def no_call(node, argvs):
        raise AssertionError("nothing is sent")

    for ring, name, reason in ((alone, "n1", "last of rack r1"), (joining, "n3", "owns no range")):
        mover = Mover(name, lambda ring=ring: ring, no_call, available=lambda n: True, declare=lambda s: None,
                      settle=0.1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mover.serve)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(RuntimeError, match=reason):
                mover.decommission()
            nursery.cancel_scope.cancel()
