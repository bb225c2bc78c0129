"""Range movements on a real cluster (dyno.streaming): grow 3 racks x 1 node to 3 x 2
while clients write and read, shrink back with decommission, replace a dead node by
a fresh one with an empty Redis; and the copy job against real Redis servers.

Every test records a history (tests/history.py) of seeded clients' reads and writes
through two nodes and checks it: no client error, no stale read, no acknowledged
write missing; and at the end every key lives exactly on its owners (each key in
exactly one Redis per rack, the one the ring says), with its TTL and version.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis

import history
import support
from dyno import localcluster
from dyno import status as view
from dyno.ring import Ring, RingNode
from history import READ, WRITE, History
from test_nemesis import Connection

KEYS = 3000            # written before the move, then read and overwritten during it
TTL_KEYS = 200         # of those, with a TTL the move must keep
MOVE_TIMEOUT = 120.0


class Client(threading.Thread):
    """Reads and writes random keys through one node until stopped, recording them."""

    def __init__(self, id: int, addr, record: History, seed: int, stop: threading.Event):
        super().__init__(name=f"stream-client-{id}", daemon=True)
        self.id, self.addr, self.record, self.stop = id, addr, record, stop
        self.rng = random.Random(seed)
        self.crash: BaseException | None = None

    def run(self) -> None:
        conn = Connection(self.addr, 5.0)
        seq = 0
        try:
            while not self.stop.wait(self.rng.expovariate(400)):
                key = f"key:{self.rng.randrange(KEYS)}"
                if self.rng.random() < 0.5:
                    seq += 1
                    self.record.perform(self.id, conn.call, WRITE, key, history.write_value(self.id, seq), "KEEPTTL")
                else:
                    self.record.perform(self.id, conn.call, READ, key)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.crash = e
        finally:
            conn.close()


def preload(cluster: support.Cluster, record: History) -> None:
    """Every key written once through node1, acknowledged (recorded as client 0)."""
    client = cluster[0].client()
    pipe = client.pipeline(transaction=False)
    ops = []
    for i in range(KEYS):
        key, value = f"key:{i}", history.write_value(0, i)
        ops.append(record.invoke(0, WRITE, key, value))
        if i < TTL_KEYS:
            pipe.set(key, value, ex=3600)
        else:
            pipe.set(key, value)
    assert all(pipe.execute())
    for op in ops:
        record.ok(op)


def state(cluster: support.Cluster) -> localcluster.ClusterState:
    return localcluster.ClusterState.load(cluster.dir)


def contents(node: localcluster.NodeState) -> dict[str, str]:
    r = redis.Redis(node.host, node.redis_port, decode_responses=True, socket_timeout=10)
    try:
        keys = list(r.scan_iter(count=1000))
        return dict(zip(keys, r.mget(keys))) if keys else {}
    finally:
        r.close()


def ring_of(nodes: list[localcluster.NodeState]) -> Ring:
    ring_nodes = [RingNode(n.plan.dyn_listen, n.host, n.dyn_port, n.dc, n.rack, tuple(n.tokens)) for n in nodes]
    return Ring(ring_nodes[1:], ring_nodes[0])


def misplaced(nodes: list[localcluster.NodeState]) -> list[str]:
    """Keys not held by exactly their owner in each rack (by the nodes' tokens)."""
    ring = ring_of(nodes)
    where = {n.plan.dyn_listen: contents(n) for n in nodes}
    wrong = []
    for node in nodes:
        for key in where[node.plan.dyn_listen]:
            owner = ring.owner(ring.token_of(key.encode()), node.dc, node.rack)
            if owner.name != node.plan.dyn_listen:
                wrong.append(f"{key} on {node.name}, owned by {owner.name}")
    return wrong


def rack_contents(nodes: list[localcluster.NodeState]) -> dict[str, dict[str, str]]:
    racks: dict[str, dict[str, str]] = {}
    for node in nodes:
        racks.setdefault(node.rack, {}).update(contents(node))
    return racks


def wait_moved(address: str, states=("done",), timeout: float = MOVE_TIMEOUT) -> dict:
    return support.wait_for(lambda: (lambda s: s if s.get("state") in states else None)(
        view.movement_progress(address)), timeout, f"the move of {address} to end", interval=0.2,
        ignore=(view.StatusError,))


class Workload:
    """Clients through node1 and node2 during a move (``with Workload(...) as work:``, the
    move in the block); ``check`` stops them and judges."""

    def __init__(self, cluster: support.Cluster, record: History, seed: int):
        self.stop = threading.Event()
        self.record = record
        self.clients = [Client(i + 1, cluster[i].addr, record, seed + i, self.stop) for i in range(2)]
        for client in self.clients:
            client.start()

    def __enter__(self) -> "Workload":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:  # the test failed during the move: stop the clients (else check does)
            self.stop.set()

    def check(self, nodes: list[localcluster.NodeState]) -> None:
        """Stop the clients; no error, no stale read, and every rack's content (once the
        writes acknowledged by one rack reached the others) holds every acknowledged write."""
        self.stop.set()
        for client in self.clients:
            client.join(10)
            assert client.crash is None, client.crash
        counts = self.record.counts()
        failed = [op for op in self.record.ops if op.outcome != history.OK]
        assert not failed, f"{len(failed)} client errors, first: {failed[0].error}"
        assert counts[(READ, history.OK)] > 100 and counts[(WRITE, history.OK)] > 100, counts
        violations: list = []

        def settled() -> bool:
            finals = {f"rack {rack}": content for rack, content in rack_contents(nodes).items()}
            violations[:] = history.check(self.record.ops, finals, self.record.started)
            return not violations

        try:
            support.wait_for(settled, 15, "every rack to hold every acknowledged write", interval=0.5)
        except AssertionError:
            pass
        assert not violations, "\n".join(map(str, violations[:10]))


def check_ttls(nodes: list[localcluster.NodeState]) -> None:
    for node in nodes:
        r = redis.Redis(node.host, node.redis_port, socket_timeout=10)
        try:
            held = [f"key:{i}" for i in range(TTL_KEYS) if r.exists(f"key:{i}")]
            assert held, f"{node.name} holds none of the keys with a TTL"
            ttls = [r.ttl(key) for key in held]
            assert all(0 < ttl <= 3600 for ttl in ttls), (node.name, ttls[:10])
            # versions travel with the keys (versions_db 15)
            r.execute_command("SELECT", 15)
            assert all(r.get(key) for key in held[:50]), f"{node.name}: keys without their version"
        finally:
            r.close()


@pytest.mark.timeout(600)
def test_grow_three_racks_to_two_nodes_each_then_shrink_back_while_clients_run(cluster_factory):
    cluster = cluster_factory(racks=3, nodes_per_rack=1)
    record = History()
    preload(cluster, record)
    with Workload(cluster, record, seed=18) as work:
        time.sleep(0.5)  # (traffic before the move, not a synchronisation)
        added = [localcluster.add_node(cluster.dir, f"rack{r}") for r in (1, 2, 3)]
        for node in added:
            done = wait_moved(f"{node.host}:{node.stats_port}")
            assert done["transfer"]["copied"] > KEYS // 4, done
        nodes = state(cluster).nodes
        assert len(nodes) == 6
        support.wait_for(lambda: not misplaced(nodes), MOVE_TIMEOUT, "the old owners to drop the moved keys",
                         interval=0.5)
    work.check(nodes)
    assert not misplaced(nodes)
    check_ttls(nodes)
    # every node of a rack holds about half of it (tokens split the widest range)
    for node in nodes:
        assert len(contents(node)) > KEYS // 4, node.name
    # a joined node restarted with its config (auto_bootstrap) does not join again:
    # its Redis records the join, it comes back NORMAL with its data
    again = added[0]
    held = contents(again)
    state(cluster).stop_node(again.name)
    state(cluster).start_node(again.name)
    assert view.movement_progress(f"{again.host}:{again.stats_port}")["state"] == "idle"
    assert contents(again) == held

    # -- shrink back: decommission the nodes added, clients still running
    record2 = History()
    preload(cluster, record2)
    with Workload(cluster, record2, seed=81) as work:
        progress: list[dict] = []
        for node in added:
            localcluster.remove_node(cluster.dir, node.name, progress=progress.append)
        assert any(p.get("state") == "streaming" or p.get("transfer") for p in progress)
        nodes = state(cluster).nodes
        assert sorted(n.name for n in nodes) == ["node1", "node2", "node3"]
        support.wait_for(lambda: not misplaced(nodes), MOVE_TIMEOUT, "every key on its owner", interval=0.5)
    work.check(nodes)
    assert not misplaced(nodes)
    check_ttls(nodes)
    # the nodes that left are out of every view
    describe = view.fetch_json(f"{nodes[0].host}:{nodes[0].stats_port}", "/cluster_describe")
    names = {server["name"] for dc in describe["dcs"] for rack in dc["racks"] for server in rack["servers"]}
    assert names == {n.plan.dyn_listen for n in nodes}, names


@pytest.mark.timeout(300)
def test_a_node_joins_and_leaves_beside_nodes_of_two_workers(cluster_factory):
    """The coordinators' workers route by their supervisor's view: while a range moves
    it must carry the pending owners, or writes through a worker would miss the joining
    node (and a decommissioned node's successor) for the time of the copy."""
    cluster = cluster_factory(racks=3, nodes_per_rack=1, workers=2)
    record = History()
    preload(cluster, record)
    with Workload(cluster, record, seed=27) as work:
        joined = localcluster.add_node(cluster.dir, "rack1")  # one process: it streams in
        done = wait_moved(f"{joined.host}:{joined.stats_port}")
        assert done["transfer"]["copied"] > KEYS // 4, done
        nodes = state(cluster).nodes
        support.wait_for(lambda: not misplaced(nodes), MOVE_TIMEOUT, "the old owner to drop the moved keys",
                         interval=0.5)
    work.check(nodes)
    assert not misplaced(nodes)
    record2 = History()
    preload(cluster, record2)
    with Workload(cluster, record2, seed=72) as work:
        localcluster.remove_node(cluster.dir, joined.name)
        nodes = state(cluster).nodes
        support.wait_for(lambda: not misplaced(nodes), MOVE_TIMEOUT, "every key on its owner", interval=0.5)
    work.check(nodes)
    assert not misplaced(nodes)


@pytest.mark.timeout(300)
def test_a_node_of_two_workers_is_decommissioned_while_clients_run(cluster_factory):
    """The supervisor of the leaving node streams its ranges away; the coordinators'
    workers (every node has two) send the writes to the successor meanwhile."""
    cluster = cluster_factory(racks=3, nodes_per_rack=1, workers=2)
    joined = localcluster.add_node(cluster.dir, "rack3")
    wait_moved(f"{joined.host}:{joined.stats_port}")
    support.wait_for(lambda: not misplaced(state(cluster).nodes), MOVE_TIMEOUT, "the join to settle", interval=0.5)
    record = History()
    preload(cluster, record)
    with Workload(cluster, record, seed=33) as work:  # through node1 and node2
        localcluster.remove_node(cluster.dir, "node3")
        nodes = state(cluster).nodes
        assert sorted(n.name for n in nodes) == ["node1", "node2", joined.name]
        support.wait_for(lambda: not misplaced(nodes), MOVE_TIMEOUT, "every key on its owner", interval=0.5)
    work.check(nodes)
    assert not misplaced(nodes)
    assert len(contents(joined)) == len(contents(nodes[0]))  # rack3 whole on the node that stayed


@pytest.mark.timeout(300)
def test_replace_a_dead_node_with_a_fresh_one(cluster_factory):
    cluster = cluster_factory(racks=3, nodes_per_rack=1)
    record = History()
    preload(cluster, record)
    dead = cluster.node("node3")
    dead.kill()
    dead.kill_redis()
    with Workload(cluster, record, seed=7) as work:
        fresh = localcluster.add_node(cluster.dir, "rack3", replace="node3")
        done = wait_moved(f"{fresh.host}:{fresh.stats_port}")
        assert done["kind"] == "replace" and done["transfer"]["copied"] >= KEYS, done
        time.sleep(0.5)  # (more traffic after it, not a synchronisation)
        nodes = state(cluster).nodes
        assert sorted(n.name for n in nodes) == ["node1", "node2", "node4"]
    work.check(nodes)
    # it ends with exactly the data the other racks hold
    support.wait_for(lambda: contents(nodes[2]) == contents(nodes[0]) == contents(nodes[1]), 30,
                     "the replacement to hold what the other racks hold", interval=0.5)
    check_ttls(nodes)


@pytest.mark.timeout(180)
def test_dyno_start_join_joins_the_cluster_a_seed_describes(cluster_factory, tmp_path):
    import subprocess
    import sys

    import yaml

    cluster = cluster_factory(racks=2, nodes_per_rack=1)
    preload(cluster, History())
    first = state(cluster).nodes[0]
    port, dyn_port, stats_port = localcluster.free_ports(3)
    with support.RedisServer(tmp_path / "redis-new") as own:
        config = tmp_path / "new.yml"
        config.write_text(yaml.safe_dump({"dyn_o_mite": {
            "datacenter": first.dc, "rack": first.rack, "listen": f"127.0.0.1:{port}",
            "dyn_listen": f"127.0.0.1:{dyn_port}", "stats_listen": f"127.0.0.1:{stats_port}",
            "servers": [f"{own.addr[0]}:{own.addr[1]}:1"]}}))
        log = open(tmp_path / "new.log", "wb")
        process = subprocess.Popen([sys.executable, "-m", "dyno", "start", "--config", str(config), "--join",
                                    f"{first.host}:{first.stats_port}"], stdout=log, stderr=subprocess.STDOUT)
        support.TRACKER.track(process.pid, "joining dyno")
        try:
            done = wait_moved(f"127.0.0.1:{stats_port}")
            assert done["kind"] == "join" and done["transfer"]["copied"] > KEYS // 4, done
            held = own.client().dbsize()
            assert KEYS // 4 < held < KEYS * 3 // 4
        finally:
            process.terminate()
            process.wait(10)
            log.close()


@pytest.mark.timeout(240)
def test_two_nodes_join_one_rack_at_once(cluster_factory):
    cluster = cluster_factory(racks=2, nodes_per_rack=1)
    record = History()
    preload(cluster, record)
    with Workload(cluster, record, seed=2) as work:
        first = localcluster.add_node(cluster.dir, "rack1")
        second = localcluster.add_node(cluster.dir, "rack1")  # while the first one streams
        assert first.tokens != second.tokens
        for node in (first, second):
            wait_moved(f"{node.host}:{node.stats_port}")
        nodes = state(cluster).nodes
        wrong: list[str] = []

        def placed() -> bool:
            wrong[:] = misplaced(nodes)
            return not wrong

        try:
            support.wait_for(placed, 30, "every key on its owner", interval=0.5)
        except AssertionError:
            raise AssertionError(f"{len(wrong)} keys misplaced, first {wrong[:5]}") from None
    work.check(nodes)
    racks = rack_contents(nodes)
    assert racks["rack1"] == racks["rack2"] and len(racks["rack1"]) == KEYS
