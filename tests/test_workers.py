"""A node of several worker processes (``workers: 2``, dyno.workers), with real processes.

A client's connection lands on one worker (SO_REUSEPORT); ``INFO server``'s process_id
says which. The tests place clients on each worker on purpose, then check what must
cross workers (pub/sub, WATCH, blocking pops, the node's counters) and what must not
(a worker killed: the others' clients see nothing; it is replaced; the node keeps its
ring identity and admin port; no worker outlives its supervisor).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest
import redis

import differential as d
import support
from dyno import localcluster, versions

integration = pytest.mark.integration


def admin(node, path: str = "/info"):
    with urllib.request.urlopen(f"http://{node.host}:{node.stats_port}{path}", timeout=5) as reply:
        return json.loads(reply.read())


def workers_up(node, count: int = 2) -> list[dict]:
    """The node's workers once all ``count`` serve (its /info)."""
    return support.wait_for(
        lambda: (lambda ws: ws if len(ws) == count and all(w["up"] for w in ws) else None)(admin(node)["workers"]),
        timeout=20, what="every worker serving", ignore=(OSError,))


def worker_of(client: redis.Redis) -> int:
    return int(client.info("server")["process_id"])


def clients_on_each_worker(node, count: int = 2, each: int = 1) -> dict[int, list[redis.Redis]]:
    """At least ``each`` clients (one connection apiece) on each of the node's workers."""
    by_pid: dict[int, list[redis.Redis]] = {}

    def spread() -> bool:
        client = node.client(single_connection_client=True)
        by_pid.setdefault(worker_of(client), []).append(client)
        return len(by_pid) == count and all(len(c) >= each for c in by_pid.values())

    support.wait_for(spread, timeout=20, what=f"{each} client(s) on each of {count} workers", interval=0)
    return by_pid


def settled(cluster) -> None:
    support.wait_for(lambda: all(d.peer_requests_in_flight(a) == 0 for a in cluster.addrs), timeout=10,
                     what="replica requests still in flight")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if support.dyno_missing():
        pytest.skip(support.dyno_missing())
    with support.start_cluster(tmp_path_factory.mktemp("workers"), racks=3, workers=2,
                               read_consistency="DC_QUORUM", write_consistency="DC_QUORUM") as started:
        for node in started.nodes:
            workers_up(node)
        yield started


@integration
def test_config_refuses_a_bad_workers_value(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("dyn_o_mite:\n  listen: 127.0.0.1:1\n  servers: [127.0.0.1:2:1]\n  workers: lots\n")
    result = subprocess.run([sys.executable, "-m", "dyno", "check-config", str(path)],
                            capture_output=True, text=True, env=localcluster._dyno_env())
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"Error: {path}: dyn_o_mite.workers: expected 'auto' or a whole number of processes, got 'lots'"]


@integration
def test_a_write_through_either_worker_is_read_back_everywhere(cluster):
    writers = clients_on_each_worker(cluster[0])
    for pid, (client, *_) in writers.items():
        assert client.set(f"k{pid}", f"v{pid}") is True
    settled(cluster)
    for node in cluster.nodes:
        readers = clients_on_each_worker(node)
        for client, *_ in readers.values():
            assert [client.get(f"k{pid}") for pid in writers] == [f"v{pid}".encode() for pid in writers]
        # the replica of this rack holds it in its own Redis
        assert sorted(node.redis_client().keys("k*")) == sorted(f"k{pid}".encode() for pid in writers)
    # each worker stamps with its own clock id, so two workers' versions never tie
    stamped = cluster[0].redis_client(db=15)
    ids = {versions.parse_version(stamped.get(f"k{pid}"))[2] for pid in writers}
    name = f"{cluster[0].host}:{cluster[0].dyn_port}"  # the node's name among its peers
    assert ids == {versions.node_id(f"{name}/w{index}") for index in range(2)}


@integration
def test_pubsub_reaches_subscribers_on_every_worker(cluster):
    subscribers = []
    for node in cluster.nodes[:2]:
        for pid, clients in clients_on_each_worker(node, each=2).items():
            for client in clients[:2]:
                pubsub = client.pubsub()
                pubsub.subscribe("news")
                assert pubsub.get_message(timeout=5)["type"] == "subscribe"
                subscribers.append(pubsub)
    assert len(subscribers) == 8  # 2 nodes x 2 workers x 2
    for node in cluster.nodes:
        for client, *_ in clients_on_each_worker(node).values():
            assert client.pubsub_numsub("news") == [(b"news", 8)]
    publishers = [clients[0] for clients in clients_on_each_worker(cluster[0]).values()]
    sent = [f"p{index}-{n}".encode() for n in range(3) for index, _ in enumerate(publishers)]
    for message in sent:
        publishers[int(message[1:2])].publish("news", message)
    for pubsub in subscribers:
        got = [m and m["data"] for m in (pubsub.get_message(timeout=5) for _ in sent)]
        # Each once, in publish order per publisher (Redis Cluster's promise too: two
        # publishers' messages reach a subscriber by different paths, so they may cross).
        assert sorted(got) == sorted(sent)
        for index in range(len(publishers)):
            mine = [m for m in got if m.startswith(b"p%d-" % index)]
            assert mine == [m for m in sent if m.startswith(b"p%d-" % index)]
    for pubsub in subscribers:
        pubsub.close()


@integration
def test_watch_sees_a_write_from_another_worker(cluster):
    (first, *_), (second, *_) = clients_on_each_worker(cluster[0]).values()
    first.set("watched", "0")
    with first.pipeline() as transaction:
        transaction.watch("watched")
        second.set("watched", "1")  # another worker's client
        transaction.multi()
        transaction.set("watched", "2")
        with pytest.raises(redis.WatchError):
            transaction.execute()
    assert first.get("watched") == b"1"


@integration
def test_a_blocking_pop_is_woken_by_a_push_through_another_worker(cluster):
    (waiter, *_), (pusher, *_) = clients_on_each_worker(cluster[0]).values()
    popped = []
    thread = threading.Thread(target=lambda: popped.append(waiter.blpop("jobs", timeout=10)))
    thread.start()
    pusher.lpush("jobs", "job1")
    thread.join(15)
    assert popped == [(b"jobs", b"job1")]


@integration
def test_info_and_admin_report_the_node_as_a_whole(cluster):
    node = cluster[2]
    by_pid = clients_on_each_worker(node, each=2)
    for clients in by_pid.values():
        for client in clients:
            client.ping()
    total = sum(len(clients) for clients in by_pid.values())
    info = admin(node)
    workers = {w["pid"]: w for w in info["workers"]}
    assert set(workers) == set(by_pid)
    for pid, clients in by_pid.items():
        assert workers[pid]["client_connections"] >= len(clients)
        assert workers[pid]["client_requests"] >= 2 * len(clients)  # INFO server and PING
    assert info["dyn_o_mite"]["client_connections"] == sum(w["client_connections"] for w in workers.values())
    assert info["dyn_o_mite"]["client_connections"] >= total
    some = next(iter(by_pid.values()))[0]
    assert int(some.info("clients")["connected_clients"]) == info["dyn_o_mite"]["client_connections"]


@integration
def test_a_killed_worker_is_replaced_and_the_other_workers_clients_see_nothing(cluster_factory):
    cluster = cluster_factory(racks=1, workers=2)
    node = cluster[0]
    before = workers_up(node)
    identity = (admin(node)["node"], admin(node, "/cluster_describe"))
    by_pid = clients_on_each_worker(node)
    victim, survivor = sorted(by_pid, key=lambda pid: pid != before[0]["pid"])
    client = by_pid[survivor][0]
    client.set("counter", 0)
    os.kill(victim, signal.SIGKILL)
    count = 0

    def replaced() -> bool:
        nonlocal count
        count += 1
        assert client.incr("counter") == count  # the survivor's client: no error, nothing lost
        workers = admin(node)["workers"]
        return all(w["up"] for w in workers) and victim not in {w["pid"] for w in workers}

    support.wait_for(replaced, timeout=20, what="the killed worker replaced")
    after = admin(node)["workers"]
    assert [w["index"] for w in after] == [w["index"] for w in before]
    assert [w["restarts"] for w in after] == [int(w["pid"] == victim) for w in before]
    assert (admin(node)["node"], admin(node, "/cluster_describe")) == identity
    assert worker_of(client) == survivor
    # dyno status names the worker that was started again
    shown = subprocess.run([sys.executable, "-m", "dyno", "status", "--node", f"{node.host}:{node.stats_port}"],
                           capture_output=True, text=True, env=localcluster._dyno_env(), timeout=30)
    assert shown.returncode == 0, shown.stderr
    index = next(w["index"] for w in before if w["pid"] == victim)
    assert f"workers: {admin(node)['node']}: 2/2 up" in shown.stdout
    assert f"#{index} " in shown.stdout and "started again 1x" in shown.stdout
    # new clients reach both workers again, the new one included
    new_pids = {w["pid"] for w in after}
    assert set(clients_on_each_worker(node)) == new_pids
    # a clean stop leaves no worker behind
    node.stop()
    support.wait_for(lambda: not any(localcluster.pid_alive(pid, None) for pid in new_pids), timeout=10,
                     what="every worker gone after the node stopped")


@integration
def test_no_worker_outlives_its_supervisor(cluster_factory):
    node = cluster_factory(racks=1, workers=2)[0]
    pids = [w["pid"] for w in workers_up(node)]
    assert len(set(pids)) == 2
    os.kill(node.state.pid, signal.SIGKILL)  # the supervisor alone, not its process group
    support.wait_for(lambda: not any(localcluster.pid_alive(pid, None) for pid in pids), timeout=10,
                     what="the workers gone with their supervisor")


@integration
def test_an_operator_state_is_in_force_on_every_worker_when_the_admin_port_answers(cluster):
    node = cluster[1]
    clients = [clients[0] for clients in clients_on_each_worker(node).values()]
    clients[0].set("state-key", "v")
    url = f"http://{node.host}:{node.stats_port}"
    try:
        urllib.request.urlopen(urllib.request.Request(f"{url}/state/writes_only", method="POST"), timeout=5).read()
        for client in clients:
            with pytest.raises(redis.ResponseError, match="WRITES_ONLY"):
                client.get("state-key")
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{url}/state/normal", method="POST"), timeout=5).read()
    assert [client.get("state-key") for client in clients] == [b"v", b"v"]


class _ViewNode:
    """What view_of reads of a supervisor's node and apply_view changes of a worker's."""

    def __init__(self, ring):
        self.ring, self.name, self.peer_links, self.admin_down = ring, ring.local.name, {}, set()
        self.state, self.read_consistency, self.write_consistency = "NORMAL", "DC_ONE", "DC_ONE"
        self.coordinator = None
        self.pushed_clients = {}

    def client_addresses(self):
        return {"peer:8101": ("10.0.0.2", 8102)}

    def set_ring(self, ring) -> None:
        self.ring = ring

    def set_judged_down(self, names) -> None:
        self.down = names


def test_the_view_carries_the_range_movements_in_flight():
    """A worker coordinating writes while another node joins must send them to the
    joining node too: the supervisor's pending owners reach its workers' rings."""
    from dyno.ownership import JOINING, NORMAL, Claim, ring_of
    from dyno.ring import RingNode
    from dyno.workers import apply_view, view_of

    def node(name, rack, token):
        return RingNode(name, "127.0.0.1", 1000 + int(name[1:]), "dc", rack, (token,))

    a, b, joining = node("n1", "r1", 0), node("n2", "r2", 0), node("n3", "r1", 2**31)
    quiet, _ = ring_of([Claim(a, NORMAL, 1), Claim(b, NORMAL, 1)], a)
    moving, _ = ring_of([Claim(a, NORMAL, 1), Claim(b, NORMAL, 1), Claim(joining, JOINING, 2)], a)
    worker = _ViewNode(quiet)
    apply_view(worker, view_of(_ViewNode(moving)))
    assert [n.name for n in worker.ring.pending(100)] == ["n3"]
    assert [n.name for n in worker.ring.replicas(100)] == ["n1", "n2"]
    apply_view(worker, view_of(_ViewNode(quiet)))  # the join is over (here: given up)
    assert worker.ring.pending(100) == () and not worker.ring.moving
    assert worker.pushed_clients == {"peer:8101": ("10.0.0.2", 8102)}  # for its CLUSTER answers


def test_config_refuses_workers_with_a_node_that_streams_its_ranges_in():
    from dyno.config import ConfigError, parse_config

    base = ("dyn_o_mite:\n  listen: 127.0.0.1:8102\n  dyn_listen: 127.0.0.1:8101\n  rack: r1\n"
            "  datacenter: dc\n  servers: [127.0.0.1:22122:1]\n"
            "  dyn_seeds: ['127.0.0.1:9101:r1:dc:0', '127.0.0.1:9301:r2:dc:0']\n  workers: 2\n")
    for extra in ("  auto_bootstrap: true\n", "  replace_node: 127.0.0.1:9101\n"):
        with pytest.raises(ConfigError, match="cannot be used with workers > 1"):
            parse_config(base + extra)
    assert parse_config(base + "  tokens: '7'\n").workers == 2


@integration
def test_cluster_slots_through_any_worker_names_every_node(cluster):
    # a worker has no gossip of its own: its supervisor pushes the peers' client addresses
    node = cluster[0]
    for clients in clients_on_each_worker(node).values():
        support.wait_for(lambda c=clients[0]: len(c.execute_command("CLUSTER", "SLOTS")[0]) == 5, 20,
                         "the worker to know the other nodes' client ports")
        (slots,) = clients[0].execute_command("CLUSTER", "SLOTS")
        assert sorted(port for _, port, *_ in slots[2:]) == sorted(n.port for n in cluster.nodes)


@integration
def test_clients_are_handed_to_the_worker_with_the_fewest_open(cluster_factory):
    node = cluster_factory(racks=1, workers=2)[0]  # its own: no other test's clients on it
    workers_up(node)

    def open_by_worker() -> dict[int, int]:
        # each worker's open client connections (the admin port gathers them over the
        # channel its "closed" messages take, so they are in)
        return {w["pid"]: w["client_connections"] for w in admin(node)["workers"]}

    opened = [node.client(single_connection_client=True) for _ in range(50)]
    try:
        for client in opened:
            client.ping()  # each connection is the worker's once it answered
        counts = open_by_worker()
        assert max(counts.values()) - min(counts.values()) <= 1, counts  # the kernel's hash gave 20/30
        # close 10 of one worker's: the next 10 go to it (9 at least: the last may tie)
        first = worker_of(opened[0])
        closing = [c for c in opened if worker_of(c) == first][:10]
        for client in closing:
            client.close()
            opened.remove(client)
        support.wait_for(lambda: open_by_worker()[first] == counts[first] - 10, timeout=10,
                         what="the worker to count its closed connections", ignore=(OSError, KeyError))
        fresh = [node.client(single_connection_client=True) for _ in range(10)]
        opened += fresh
        assert [worker_of(c) for c in fresh].count(first) >= 9
        after = open_by_worker()
        assert max(after.values()) - min(after.values()) <= 1, after
    finally:
        for client in opened:
            client.close()
