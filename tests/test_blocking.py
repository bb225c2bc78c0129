"""Blocking pops through dyno (dyno.blocking): served on one replica of the keys, the
same whichever node a worker uses, so a job is popped once; woken by a push through
any node; the timeout honoured; what was popped done to every replica."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
import redis

import support

integration = pytest.mark.integration


def _in_flight(node) -> int:
    return node.client().info("dyno")["peer_requests_in_flight"]


def agree(cluster, key: str) -> bool:
    dumps = [n.redis_client().dump(key) for n in cluster.nodes]
    return dumps.count(dumps[0]) == len(dumps)


@integration
def test_a_blpop_waits_for_a_push_through_another_node(cluster_factory):
    cluster = cluster_factory(racks=3, hash_tag="{}")
    waiter = cluster[2].client(socket_timeout=10)
    got: list = []
    thread = threading.Thread(target=lambda: got.append(waiter.blpop("{q}jobs", timeout=5)))
    thread.start()
    support.wait_for(lambda: any(c["cmd"] == "blpop" for n in cluster.nodes
                                 for c in n.redis_client().client_list()), 5, "the BLPOP to wait in a Redis")
    assert cluster[1].client().rpush("{q}jobs", "j1", "j2") == 2
    thread.join(10)
    assert got == [(b"{q}jobs", b"j1")]
    support.wait_for(lambda: all(n.redis_client().lrange("{q}jobs", 0, -1) == [b"j2"] for n in cluster.nodes),
                     10, "every replica to have the pop")


@integration
@pytest.mark.parametrize("protocol", [2, 3])
def test_every_blocking_pop_answers_as_redis_and_leaves_replicas_equal(cluster_factory, redis_server, protocol):
    cluster = cluster_factory(racks=3, hash_tag="{}")
    client, plain = cluster[1].client(protocol=protocol), redis.Redis(*redis_server.addr, protocol=protocol)
    for c in (client, plain):
        c.rpush("{b}l", "a", "b", "c", "d")
        c.zadd("{b}z", {"m1": 1, "m2": 2, "m3": 3})
    calls = [("BLPOP", "{b}l", "1"), ("BRPOP", "{b}none", "{b}l", "1"), ("BLMOVE", "{b}l", "{b}m", "LEFT", "RIGHT", "1"),
             ("BRPOPLPUSH", "{b}l", "{b}m", "1"), ("BZPOPMIN", "{b}z", "1"), ("BZPOPMAX", "{b}z", "1"),
             ("BLMPOP", "1", "2", "{b}x", "{b}m", "RIGHT", "COUNT", "5"), ("BZMPOP", "1", "1", "{b}z", "MIN"),
             ("BLPOP", "{b}empty", "0.2"), ("BZPOPMIN", "{b}empty", "0.2")]
    for call in calls:
        assert client.execute_command(*call) == plain.execute_command(*call), call
    for key in ("{b}l", "{b}m", "{b}z"):
        support.wait_for(lambda key=key: agree(cluster, key), 10, f"replicas of {key} to agree")


@integration
def test_a_worker_pool_through_every_node_pops_each_job_once(cluster_factory):
    """BLPOP workers on all three nodes, jobs pushed through all three: every job
    popped exactly once, and every rack ends with the same (empty) list."""
    cluster = cluster_factory(racks=3, hash_tag="{}")
    jobs = 150
    popped: list[bytes] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(node) -> None:
        client = node.client(socket_timeout=10)
        try:
            while not stop.is_set():
                item = client.blpop("{p}queue", timeout=0.5)
                if item is not None:
                    with lock:
                        popped.append(item[1])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(node,)) for node in cluster.nodes for _ in range(2)]
    for thread in workers:
        thread.start()
    producers = [node.client() for node in cluster.nodes]
    for i in range(jobs):
        producers[i % 3].rpush("{p}queue", f"job{i}")
    deadline = time.monotonic() + 30
    while len(popped) < jobs and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    stop.set()
    for thread in workers:
        thread.join(10)
    assert not errors, errors
    assert sorted(popped) == sorted(f"job{i}".encode() for i in range(jobs))  # each once
    # A pop's effect and a push through another node can reach a third replica in either
    # order (LPOP does not commute with RPUSH), so replicas may differ until repair makes
    # them agree (docs/design-notes.md); after it, every rack holds the same list.
    support.wait_for(lambda: all(_in_flight(n) == 0 for n in cluster.nodes), 10, "replica writes in flight")
    done = subprocess.run([sys.executable, "-m", "dyno", "repair", "--node",
                           f"{cluster[0].host}:{cluster[0].stats_port}"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert agree(cluster, "{p}queue")


@integration
def test_a_client_that_leaves_while_blocked_frees_its_connection(cluster_factory):
    cluster = cluster_factory(racks=3, hash_tag="{}")
    for node in cluster.nodes:
        sock = socket.create_connection(node.addr, timeout=5)
        sock.sendall(b"*3\r\n$5\r\nBLPOP\r\n$5\r\n{z}q1\r\n$1\r\n0\r\n")
        support.wait_for(lambda: any(c["cmd"] == "blpop" for n in cluster.nodes
                                     for c in n.redis_client().client_list()), 5, "the BLPOP to wait")
        sock.close()
    support.wait_for(lambda: not any(c["cmd"] == "blpop" for n in cluster.nodes
                                     for c in n.redis_client().client_list()), 10,
                     "every blocked Redis connection to be closed")
    assert cluster[0].client().rpush("{z}q1", "x") == 1  # nobody took it
    support.wait_for(lambda: all(n.redis_client().lrange("{z}q1", 0, -1) == [b"x"] for n in cluster.nodes), 10,
                     "the push to stay on every replica")


@integration
def test_xread_block_is_woken_by_an_xadd_through_another_node(cluster_factory):
    cluster = cluster_factory(racks=3, hash_tag="{}")
    reader = cluster[2].client(socket_timeout=10)
    got: list = []
    thread = threading.Thread(target=lambda: got.append(reader.xread({"{s}events": "$"}, block=5000)))
    thread.start()
    support.wait_for(lambda: any(c["cmd"] == "xread" for n in cluster.nodes
                                 for c in n.redis_client().client_list()), 5, "the XREAD to wait in a Redis")
    entry = cluster[0].client().xadd("{s}events", {"k": "v"})
    thread.join(10)
    assert got == [[[b"{s}events", [(entry, {b"k": b"v"})]]]]
    assert reader.xread({"{s}events": "$"}, block=100) == []  # the time-out: nothing new
