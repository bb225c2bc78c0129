"""Cluster-mode clients: every dyno node answers CLUSTER SLOTS/SHARDS/NODES/INFO/MYID/
KEYSLOT, so redis-py's RedisCluster works through it, and moves to another node when its
node dies. With any hash but ``slot`` one shard holds every slot; with ``hash: slot`` the
answer is the ring's, and cluster-mode clients send each key to its owner (no hop)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from bisect import bisect_left

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot as redis_py_key_slot

import support
from dyno.node_commands import key_slot

integration = pytest.mark.integration


@given(st.binary(max_size=40))
def test_key_slot_is_redis_clusters(key):
    assert key_slot(key) == redis_py_key_slot(key)


def test_key_slot_known_values():
    # CRC16/XMODEM check value and Redis Cluster's spec examples
    assert key_slot(b"123456789") == 0x31C3 % 16384
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers") == key_slot(b"user1000")
    assert key_slot(b"foo{}{bar}") == key_slot(b"foo{}{bar}")  # empty tag: the whole key
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")


@integration
def test_cluster_commands_describe_one_shard_served_by_the_datacenters_nodes(cluster_factory):
    cluster = cluster_factory(racks=3)
    node = cluster[0]
    client = node.client()
    support.wait_for(lambda: len(client.execute_command("CLUSTER", "SLOTS")[0]) == 5, 15,
                     "gossip to see the other two nodes up")
    (slots,) = client.execute_command("CLUSTER", "SLOTS")
    assert slots[:2] == [0, 16383]
    served = [(host.decode(), port) for host, port, *_ in slots[2:]]
    assert served[0] == (node.host, node.port)
    assert sorted(served) == sorted((n.host, n.port) for n in cluster)
    ids = [entry[2] for entry in slots[2:]]
    assert client.execute_command("CLUSTER", "MYID") == ids[0] and len(set(ids)) == 3
    nodes = client.execute_command("CLUSTER", "NODES").decode()
    assert "myself,master" in nodes and nodes.count("slave " + ids[0].decode()) == 2
    info = client.execute_command("CLUSTER", "INFO").decode()
    assert "cluster_state:ok" in info and "cluster_known_nodes:3" in info
    assert client.execute_command("CLUSTER", "KEYSLOT", "foo") == 12182
    shards = node.client(protocol=3).execute_command("CLUSTER", "SHARDS")
    assert len(shards) == 1 and len(shards[0][b"nodes"]) == 3
    for refused in (("CLUSTER", "ADDSLOTS", "1"), ("CLUSTER", "FAILOVER")):
        with pytest.raises(redis.ResponseError, match="not supported in a dyno cluster"):
            client.execute_command(*refused)
    assert client.execute_command("READONLY") is True and client.execute_command("READWRITE") is True


@integration
def test_redis_py_cluster_client_works_and_fails_over(cluster_factory):
    cluster = cluster_factory(racks=3)
    first, second = cluster[0], cluster[1]
    support.wait_for(lambda: len(first.client().execute_command("CLUSTER", "SLOTS")[0]) == 5, 15,
                     "gossip to see the other two nodes up")
    rc = RedisCluster(startup_nodes=[ClusterNode(first.host, first.port), ClusterNode(second.host, second.port)],
                      socket_timeout=2)
    try:
        assert rc.set("a", "1") and rc.incr("a") == 2
        assert rc.mset_nonatomic({"x": "1", "{t}y": "2"}) and rc.mget_nonatomic(["x", "{t}y"]) == [b"1", b"2"]
        assert rc.hset("h", mapping={"f": "v"}) == 1 and rc.hgetall("h") == {b"f": b"v"}
        pipe = rc.pipeline()
        pipe.rpush("{q}list", "a", "b").lrange("{q}list", 0, -1)
        assert pipe.execute() == [2, [b"a", b"b"]]
        for node in cluster:  # replicated as any write through dyno
            assert node.redis_client().get("a") == b"2"
        first.kill()
        def works() -> bool:
            return rc.set("after", "1") and rc.get("after") == b"1"
        support.wait_for(works, 30, "the cluster client to move to another node", ignore=(redis.RedisError,))
        assert rc.get("a") == b"2"
    finally:
        rc.close()


def admin_counts(node) -> tuple[int, int]:
    """(client requests the node coordinated, commands it sent to peers) so far."""
    with urllib.request.urlopen(f"http://{node.host}:{node.stats_port}/info", timeout=5) as reply:
        info = json.loads(reply.read())
    pool = next(v for v in info.values() if isinstance(v, dict) and "client_requests" in v)
    return pool["client_requests"], sum(peer["sent"] for peer in pool["peers"].values())


def owner_of(slot: int, rack_nodes) -> object:
    """The node of a rack owning ``slot`` by the tokens its config lists (hash slot:
    the slot's token is slot << 18; a node owns (previous token, its token])."""
    tokens = sorted((token, node.name) for node in rack_nodes for token in node.tokens)
    index = bisect_left([t for t, _ in tokens], slot << 18)
    name = tokens[index % len(tokens)][1]
    return next(node for node in rack_nodes if node.name == name)


@pytest.fixture(scope="module")
def slot_cluster(tmp_path_factory):
    if support.dyno_missing():
        pytest.skip(support.dyno_missing())
    with support.start_cluster(tmp_path_factory.mktemp("slots"), racks=3, nodes_per_rack=2,
                               hash="slot") as started:
        for node in started.nodes:  # every node knows the other five up, with their client ports
            support.wait_for(lambda node=node: sum(len(r) - 2 for r in node.client().execute_command(
                "CLUSTER", "SLOTS")) >= 3 * len(node.client().execute_command("CLUSTER", "SLOTS")), 20,
                "gossip to tell every node's client port")
        yield started


@integration
def test_with_hash_slot_cluster_slots_names_each_slots_owner_in_the_nodes_rack(slot_cluster):
    by_port = {node.port: node for node in slot_cluster.nodes}
    for node in slot_cluster.nodes:
        racks = {n.rack: [m for m in slot_cluster.nodes if m.rack == n.rack] for n in slot_cluster.nodes}
        others = sorted(rack for rack in racks if rack != node.rack)
        ranges = sorted(node.client().execute_command("CLUSTER", "SLOTS"))
        covered = [slot for first, last, *_ in ranges for slot in range(first, last + 1)]
        assert covered == list(range(16384))
        for first, last, *serving in ranges:
            for slot in {first, last, (first + last) // 2}:
                master, *replicas = [by_port[port] for _, port, *_ in serving]
                assert master is owner_of(slot, racks[node.rack])
                assert sorted(n.name for n in replicas) == sorted(owner_of(slot, racks[r]).name for r in others)
        shards = node.client(protocol=3).execute_command("CLUSTER", "SHARDS")
        assert len(shards) == 2 and all(len(shard[b"nodes"]) == 3 for shard in shards)
        lines = node.client().execute_command("CLUSTER", "NODES").decode().splitlines()
        masters = [line for line in lines if " master " in f" {line.split()[2].replace(',', ' ')} "]
        assert sorted(int(line.split()[1].split(":")[1].split("@")[0]) for line in masters) == sorted(
            n.port for n in racks[node.rack])
        assert len(lines) == 6 and "myself,master" in lines[0]


@integration
def test_a_cluster_client_sends_each_key_to_its_owner_no_hop(slot_cluster):
    first = slot_cluster[0]
    keys = [f"hop{i}" for i in range(300)]
    rc = RedisCluster(host=first.host, port=first.port, socket_timeout=5)
    try:
        for key in keys:
            assert rc.set(key, key) is True
        before = {n.name: admin_counts(n) for n in slot_cluster.nodes}
        assert [rc.get(key) for key in keys] == [key.encode() for key in keys]
        after = {n.name: admin_counts(n) for n in slot_cluster.nodes}
    finally:
        rc.close()
    rack = [n for n in slot_cluster.nodes if n.rack == first.rack]
    coordinated = {n.name: after[n.name][0] - before[n.name][0] for n in slot_cluster.nodes}
    forwarded = sum(after[n.name][1] - before[n.name][1] for n in slot_cluster.nodes)
    assert forwarded == 0, f"{forwarded} GETs took a hop to a peer"
    assert sorted(coordinated[n.name] for n in rack) == sorted(
        sum(1 for key in keys if owner_of(key_slot(key.encode()), rack) is n) for n in rack)
    for node in rack:  # and the data is where the map said
        assert sorted(node.redis_client().keys("hop*")) == sorted(
            key.encode() for key in keys if owner_of(key_slot(key.encode()), rack) is node)
    # a plain client of one node pays the hop for the keys its rack-mate owns
    plain = first.client()
    before = admin_counts(first)[1]
    assert [plain.get(key) for key in keys] == [key.encode() for key in keys]
    assert admin_counts(first)[1] - before == sum(1 for key in keys if owner_of(key_slot(key.encode()), rack) is not first)


@integration
def test_redis_benchmark_cluster_mode_spreads_over_the_racks_owners(slot_cluster):
    first = slot_cluster[0]
    rack = [n for n in slot_cluster.nodes if n.rack == first.rack]
    before = {n.name: admin_counts(n) for n in slot_cluster.nodes}
    done = subprocess.run(["redis-benchmark", "--cluster", "-h", first.host, "-p", str(first.port), "-t", "set,get",
                           "-n", "2000", "-r", "1000", "-c", "4", "-q"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    after = {n.name: admin_counts(n) for n in slot_cluster.nodes}
    for node in rack:  # both owners coordinated a share (two masters, the 4 clients split between them;
        # each client sends as fast as it is answered, so the 4,000 requests split unevenly)
        assert after[node.name][0] - before[node.name][0] >= 800
    # GETs took no hop; each SET went to the two other racks' owners: two commands a SET
    # (and its version: the stamp travels in the same frame)
    assert sum(after[n.name][0] - before[n.name][0] for n in slot_cluster.nodes if n.rack != first.rack) == 0


def test_config_gives_hash_slot_redis_clusters_hash_tags(tmp_path):
    from dyno.config import ConfigError, load_config
    base = "dyn_o_mite:\n  listen: 127.0.0.1:8102\n  servers: [127.0.0.1:6379:1]\n  hash: slot\n"
    path = tmp_path / "slot.yml"
    path.write_text(base)
    assert load_config(path).hash_tag == "{}"
    path.write_text(base + "  hash_tag: \"#$\"\n")
    with pytest.raises(ConfigError, match="cannot be used with hash: slot"):
        load_config(path)
