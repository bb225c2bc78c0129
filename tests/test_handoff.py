"""Hinted handoff and read repair with real processes (dyno.handoff, dyno.versions).

A replica that was down - killed with SIGKILL, paused past the time-out - gets every
write it missed once it is back, with the newest value, and a write that did reach
it before its time-out is not applied a second time. Quorum reads that find
replicas disagreeing return the newest version and leave every replica with it.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request

import pytest
import redis

from dyno import versions

import support
from support import wait_for

integration = pytest.mark.integration

KEYS = 10_000


def info_json(node: support.NodeHandle) -> dict:
    with urllib.request.urlopen(f"http://{node.host}:{node.stats_port}/info", timeout=5) as reply:
        return json.loads(reply.read())


def hints_of(node: support.NodeHandle) -> dict:
    body = info_json(node)
    return body[next(k for k, v in body.items() if isinstance(v, dict) and "hints" in v)]["hints"]


def pending_hints(cluster: support.Cluster, nodes=None) -> int:
    return sum(counts["pending"] for n in (nodes or cluster.nodes) for counts in hints_of(n).values())


def wait_drained(cluster: support.Cluster, nodes=None, timeout: float = 60.0) -> None:
    wait_for(lambda: pending_hints(cluster, nodes) == 0, timeout, "every hint to be replayed",
             ignore=(OSError,), interval=0.1)


def wait_all_up(cluster: support.Cluster, timeout: float = 20.0) -> None:
    def up() -> bool:
        return all(all(p["up"] for p in peers_of(n).values()) for n in cluster.nodes)
    wait_for(up, timeout, "every node to see every peer up", ignore=(OSError,), interval=0.05)


def peers_of(node: support.NodeHandle) -> dict:
    body = info_json(node)
    return body[next(k for k, v in body.items() if isinstance(v, dict) and "peers" in v)]["peers"]


def write_keys(client: redis.Redis, prefix: str, count: int, value: str) -> dict[bytes, bytes]:
    written = {}
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        key, val = f"{prefix}:{i}".encode(), f"{value}:{i}".encode()
        pipe.set(key, val)
        written[key] = val
        if len(pipe) == 500:
            assert all(pipe.execute())
    if len(pipe):
        assert all(pipe.execute())
    return written


def missing_on(node: support.NodeHandle, written: dict[bytes, bytes]) -> list[bytes]:
    direct = node.redis_client()
    keys = list(written)
    wrong = []
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        for key, value in zip(chunk, direct.mget(chunk)):
            if value != written[key]:
                wrong.append(key)
    return wrong


@integration
@pytest.mark.parametrize("level", ["DC_ONE", "DC_QUORUM"])
def test_a_killed_replica_gets_every_write_it_missed(cluster_factory, level):
    """kill -9 a replica, write 10,000 keys (and overwrite half) through another
    node, restart it: its Redis ends up with every key's newest value."""
    cluster = cluster_factory(racks=3, read_consistency=level, write_consistency=level)
    wait_all_up(cluster)
    coordinator, down = cluster[0], cluster[2]
    client = coordinator.client()
    client.set(b"before", b"1")
    down.kill()
    written = write_keys(client, "k", KEYS, "old")
    written.update(write_keys(client, "k", KEYS // 2, "new"))
    assert sum(c["stored"] for c in hints_of(coordinator).values()) > 0
    down.start()
    wait_drained(cluster)
    assert missing_on(down, written) == []
    counts = hints_of(coordinator)[f"{down.host}:{down.dyn_port}"]
    assert counts["replayed"] == counts["stored"] and counts["pending"] == 0


@integration
def test_hints_survive_a_crash_of_the_node_that_holds_them(cluster_factory):
    """The coordinator holding hints is killed too; after both restart, the replica
    still gets every write (hints are on disk, in hints_dir)."""
    cluster = cluster_factory(racks=3)
    wait_all_up(cluster)
    coordinator, down = cluster[0], cluster[2]
    down.kill()
    written = write_keys(coordinator.client(), "h", 2000, "v")
    wait_for(lambda: sum(c["pending"] for c in hints_of(coordinator).values()) > 0, 10, "hints kept")
    coordinator.kill()
    down.start()
    coordinator.start()
    wait_drained(cluster)
    assert missing_on(down, written) == []


@integration
def test_an_incr_replayed_after_a_time_out_that_applied_counts_once(cluster_factory):
    """A replica paused past the time-out: the INCR it was sent times out (and is
    hinted), yet it runs once the replica resumes; the hint's replay finds the
    INCR's version recorded and does nothing."""
    cluster = cluster_factory(racks=3, timeout=1000)
    wait_all_up(cluster)
    coordinator, paused = cluster[0], cluster[2]
    client = coordinator.client()
    paused.pause()
    try:
        assert client.incr(b"counter") == 1
        wait_for(lambda: sum(c["stored"] for c in hints_of(coordinator).values()) >= 1, 10,
                 "the INCR to time out and be hinted", interval=0.05)
    finally:
        paused.resume()
    wait_all_up(cluster)
    wait_drained(cluster)
    direct = paused.redis_client()
    wait_for(lambda: direct.get(b"counter") is not None, 10, "the paused replica to run the INCR")
    assert [n.redis_client().get(b"counter") for n in cluster.nodes] == [b"1", b"1", b"1"]
    assert sum(c["replayed"] for c in hints_of(coordinator).values()) >= 1


@integration
def test_a_batch_that_writes_a_key_twice_reaches_a_killed_replica_whole(cluster_factory):
    """One pipelined read that writes keys more than once (SET then INCR, two APPENDs,
    RPUSH then LPOP): the replica that missed it gets every write once, so it ends
    equal to the others."""
    cluster = cluster_factory(racks=3)
    wait_all_up(cluster)
    coordinator, down = cluster[0], cluster[2]
    client = coordinator.client()
    down.kill()
    for round_ in range(3):
        pipe = client.pipeline(transaction=False)
        for i in range(50):
            pipe.set(f"n:{i}", round_).incr(f"n:{i}").incrby(f"n:{i}", 10)
            pipe.append(f"s:{i}", "a").append(f"s:{i}", "b")
            pipe.rpush(f"l:{i}", "x", "y").lpop(f"l:{i}")
        pipe.execute()
    down.start()
    wait_drained(cluster)
    expected = {f"n:{i}": str(2 + 11).encode() for i in range(50)}
    for node in cluster.nodes:
        direct = node.redis_client()
        assert {key: direct.get(key) for key in expected} == expected, node
        assert [direct.get(f"s:{i}") for i in range(50)] == [b"ababab"] * 50, node
        assert [direct.lrange(f"l:{i}", 0, -1) for i in range(50)] == [[b"y", b"x", b"y"]] * 50, node


def _plant(node: support.NodeHandle, key: bytes, value: bytes, version: bytes) -> None:
    """A value and its version, written to a replica's Redis behind dyno's back."""
    direct = node.redis_client()
    direct.set(key, value)
    node.redis_client(db=versions.DEFAULT_DB).set(key, version)


@integration
def test_a_quorum_read_returns_the_newest_version_and_repairs_the_others(cluster_factory):
    cluster = cluster_factory(racks=3, read_consistency="DC_QUORUM", write_consistency="DC_QUORUM")
    wait_all_up(cluster)
    now = int(time.time() * 1000)
    rng = random.Random(7)
    keys = [f"rr:{i}".encode() for i in range(50)]
    expected = {}
    for key in keys:
        # Three replicas, three versions: which one is newest is random.
        values = [(versions.make_version(now - rng.randrange(10_000), 0, i), b"value-%d" % i)
                  for i in range(3)]
        for node, (version, value) in zip(cluster.nodes, values):
            _plant(node, key, value, version)
        expected[key] = max(values)[1]
    reader = cluster[0].client()
    for key in keys:
        assert reader.get(key) == expected[key], key
    for node in cluster.nodes:
        assert node.redis_client().mget(keys) == [expected[k] for k in keys]
    info = info_json(cluster[0])
    assert next(v for v in info.values() if isinstance(v, dict) and "read_repairs" in v)["read_repairs"] >= 50


@integration
def test_a_stale_replica_is_repaired_by_the_quorum_reads_that_ask_it(cluster_factory):
    """One replica holds an older version than the two others (it missed a write):
    quorum reads through every node return the newest value, and the ones that ask
    the stale replica repair it."""
    cluster = cluster_factory(racks=3, read_consistency="DC_QUORUM", write_consistency="DC_QUORUM")
    wait_all_up(cluster)
    key = b"one-stale"
    cluster[0].client().set(key, b"new")
    version = cluster[0].redis_client(db=versions.DEFAULT_DB).get(key)
    older = versions.make_version(versions.parse_version(version)[0] - 1000, 0, 1)
    _plant(cluster[2], key, b"old", older)
    for node in cluster.nodes:
        assert node.client().get(key) == b"new"
    wait_for(lambda: [n.redis_client().get(key) for n in cluster.nodes] == [b"new"] * 3, 10,
             "the stale replica to be repaired")
    assert {n.redis_client(db=versions.DEFAULT_DB).get(key) for n in cluster.nodes} == {version}


@integration
def test_read_repair_chance_repairs_what_a_dc_one_read_touched(cluster_factory):
    """read_repair_chance: 1 - every DC_ONE read also compares its keys on every
    replica and repairs a stale one in the background (the read itself is answered
    by the local replica as always)."""
    cluster = cluster_factory(racks=3, read_repair_chance=1)
    wait_all_up(cluster)
    key = b"chance"
    cluster[0].client().set(key, b"new")
    version = cluster[0].redis_client(db=versions.DEFAULT_DB).get(key)
    _plant(cluster[2], key, b"old", versions.make_version(versions.parse_version(version)[0] - 1000, 0, 1))
    assert cluster[0].client().get(key) == b"new"
    wait_for(lambda: cluster[2].redis_client().get(key) == b"new", 10, "the stale replica to be repaired")


@integration
def test_writes_for_another_datacenter_reach_a_node_that_was_down_there(cluster_factory):
    """2 DCs: a node of the remote DC is killed while writes go through the local
    one; once it is back it holds every write (hinted by whichever node
    coordinated them: this DC's, for the remote DC's representative, or the
    remote DC's own coordinator)."""
    cluster = cluster_factory(dcs=2, racks=2)
    wait_all_up(cluster)
    remote = next(n for n in cluster.nodes if n.dc == "dc2")
    remote.kill()
    written = write_keys(cluster[0].client(), "dc", 2000, "v")
    remote.start()
    wait_drained(cluster)
    wait_all_up(cluster)
    wait_drained(cluster)
    assert missing_on(remote, written) == []
