"""Replicas converge: `dyno repair` rebuilds a replica whose Redis was emptied behind
dyno's back while clients keep working, and writers racing on the same keys through
different nodes leave every rack with one value, the newest version's."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

import pytest
import redis

import support
from dyno import versions

integration = pytest.mark.integration


def run_repair(node: support.NodeHandle) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "dyno", "repair", "--node", f"{node.host}:{node.stats_port}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv} exited {done.returncode}: {done.stdout}\n{done.stderr}"
    return done


def settle(cluster: support.Cluster) -> None:
    def quiet() -> bool:
        return all(n.client().info("dyno")["peer_requests_in_flight"] == 0 for n in cluster.nodes)
    support.wait_for(quiet, 30, "every replica write answered")


def contents(node: support.NodeHandle) -> dict[bytes, tuple]:
    """Every key of the node's Redis: (type, value in a canonical form, PEXPIRETIME, version)."""
    r = node.redis_client()
    recorded = node.redis_client(db=versions.DEFAULT_DB)
    out = {}
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == b"string":
            value = r.get(key)
        elif kind == b"hash":
            value = sorted(r.hgetall(key).items())
        elif kind == b"set":
            value = sorted(r.smembers(key))
        elif kind == b"zset":
            value = r.zrange(key, 0, -1, withscores=True)
        else:
            value = r.lrange(key, 0, -1)
        out[key] = (kind, value, r.execute_command("PEXPIRETIME", key), recorded.get(key))
    return out


def assert_racks_identical(cluster: support.Cluster) -> dict[bytes, tuple]:
    first, *others = [contents(n) for n in cluster.nodes]
    for node, other in zip(cluster.nodes[1:], others):
        assert set(other) == set(first), f"{node.name}: {len(set(first) ^ set(other))} keys differ in presence"
        differing = [k for k in first if first[k] != other[k]]
        assert not differing, f"{node.name}: {len(differing)} keys differ, e.g. {differing[0]!r}: " \
                              f"{first[differing[0]]} vs {other[differing[0]]}"
    return first


def write_everything(client: redis.Redis, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        kind = i % 5
        key = f"c:{kind}:{i}"
        if kind == 0:
            pipe.set(key, f"v{i}", ex=3600 if i % 2 else None)
        elif kind == 1:
            pipe.hset(key, mapping={f"f{j}": j for j in range(5)})
        elif kind == 2:
            pipe.sadd(key, *range(i % 7 + 1))
        elif kind == 3:
            pipe.zadd(key, {f"m{j}": j for j in range(4)})
        else:
            pipe.rpush(key, *range(3))
            pipe.pexpireat(key, int(time.time() * 1000) + 7_200_000)
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()


class Traffic(threading.Thread):
    """A client writing and reading through one node until stopped; every error kept."""

    def __init__(self, node: support.NodeHandle):
        super().__init__(daemon=True)
        self.client = node.client()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.done = 0

    def run(self) -> None:
        rng = random.Random(3)
        while not self.stop.is_set():
            key = f"live:{rng.randrange(500)}"
            try:
                self.client.set(key, rng.randrange(10**6))
                self.client.get(key)
                self.done += 2
            except redis.RedisError as exc:
                self.errors.append(repr(exc))


@integration
def test_dyno_repair_rebuilds_a_flushed_replica_while_clients_keep_working(cluster_factory):
    cluster = cluster_factory(racks=3)
    write_everything(cluster[0].client(), 5000)
    settle(cluster)
    flushed = cluster[2]
    flushed.redis_client().flushall()  # behind dyno's back: data and versions gone
    assert flushed.redis_client().dbsize() == 0
    traffic = Traffic(cluster[1])
    traffic.start()
    try:
        done = run_repair(cluster[0])
    finally:
        traffic.stop.set()
        traffic.join(10)
    assert traffic.errors == [] and traffic.done > 0
    settle(cluster)
    assert "no errors" in done.stdout
    rebuilt = assert_racks_identical(cluster)
    assert len([k for k in rebuilt if k.startswith(b"c:")]) == 5000
    # A second repair finds nothing to copy.
    again = run_repair(cluster[0])
    assert " 0 values and 0 deletes copied" in again.stdout, again.stdout


@integration
def test_writers_racing_through_different_nodes_leave_one_value_on_every_rack(cluster_factory):
    cluster = cluster_factory(racks=3)
    keys = [f"race:{i}" for i in range(40)]
    stop = time.monotonic() + 3.0

    def writer(node: support.NodeHandle, seed: int) -> None:
        client = node.client()
        rng = random.Random(seed)
        while time.monotonic() < stop:
            pipe = client.pipeline(transaction=False)
            for key in rng.sample(keys, 10):
                pipe.set(key, f"{node.name}-{rng.randrange(10**9)}")
            if rng.random() < 0.3:
                pipe.delete(rng.choice(keys))
            pipe.execute()

    threads = [threading.Thread(target=writer, args=(node, i), daemon=True) for i, node in enumerate(cluster.nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    settle(cluster)
    run_repair(cluster[1])
    assert_racks_identical(cluster)  # values and versions of every key still there
    recorded = [n.redis_client(db=versions.DEFAULT_DB) for n in cluster.nodes]
    for key in keys:  # and of the deleted ones: one tombstone everywhere
        assert len({r.get(key) for r in recorded}) == 1, key


@integration
def test_repair_interval_rebuilds_a_flushed_replica_by_itself(cluster_factory):
    """repair_interval: the nodes repair their own ranges on a schedule; nobody runs
    `dyno repair`."""
    cluster = cluster_factory(racks=3, repair_interval=1)
    write_everything(cluster[0].client(), 500)
    settle(cluster)
    expected = cluster[0].redis_client().dbsize()
    cluster[2].redis_client().flushall()
    support.wait_for(lambda: cluster[2].redis_client().dbsize() == expected, 30,
                     "a scheduled repair to rebuild the flushed replica", interval=0.2)
    assert_racks_identical(cluster)
