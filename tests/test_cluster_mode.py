"""Cluster-mode clients: every dyno node answers CLUSTER SLOTS/SHARDS/NODES/INFO/MYID/
KEYSLOT as one shard holding every slot, so redis-py's RedisCluster works through it,
and moves to another node when its node dies."""

from __future__ import annotations

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
