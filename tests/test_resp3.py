"""RESP3: after HELLO 3 a client gets Redis's RESP3 replies byte for byte, through one
node and through a 3-rack cluster at DC_ONE and DC_QUORUM; redis-py's defaults work."""

from __future__ import annotations

import re

import pytest
import redis

import differential as d
import support

pytestmark = pytest.mark.integration

COMMANDS = [
    ("HSET", "h", "f1", "v1", "f2", "v2"),
    ("HGETALL", "h"),                      # a map
    ("SADD", "s", "3", "1", "2"),         # an intset: the same order in every Redis
    ("SMEMBERS", "s"),                     # a set
    ("SISMEMBER", "s", "2"),
    ("ZADD", "z", "1.5", "m", "2", "n"),
    ("ZSCORE", "z", "m"),                  # a double
    ("ZRANGE", "z", "0", "-1", "WITHSCORES"),
    ("GET", "nope"),                       # the RESP3 null
    ("MGET", "h", "nope", "k"),
    ("SET", "k", "v"),
    ("MGET", "k", "nope"),
    ("INCRBYFLOAT", "f", "1.5"),
    ("LPUSH", "l", "a", "b"),
    ("LPOP", "l", "5"),
    ("HRANDFIELD", "nope", "2"),
    ("EXISTS", "h", "k", "nope"),
    ("TYPE", "z"),
    ("DEL", "h", "s", "z", "k", "f", "l"),
    ("HGETALL", "h"),                      # an empty map
    ("CLIENT", "GETNAME"),
]


def exchange(addr, commands) -> list[bytes]:
    conn = d.RespConnection(addr)
    try:
        conn.send([("HELLO", "3")])
        hello = conn.read_reply()[0]
        assert hello.startswith(b"%7\r\n") and b":3\r\n" in hello, hello
        replies = []
        for command in commands:
            conn.send([command])
            replies.append(conn.read_reply()[0])
        return replies
    finally:
        conn.close()


SHAPES = pytest.mark.parametrize("shape", [
    dict(racks=1),
    dict(racks=3, read_consistency="DC_ONE", write_consistency="DC_ONE"),
    dict(racks=3, read_consistency="DC_QUORUM", write_consistency="DC_QUORUM"),
], ids=["1-node", "3-racks-DC_ONE", "3-racks-DC_QUORUM"])


def settled(cluster) -> bool:
    return all(int(n.client().info("dyno")["peer_requests_in_flight"]) == 0 for n in cluster.nodes)


@SHAPES
def test_resp3_replies_are_redis_bytes(redis_server, cluster_factory, shape):
    cluster = cluster_factory(**shape)
    expected = exchange(redis_server.addr, COMMANDS)
    # One connection through node 1 for everything: read-your-writes at any level.
    got = exchange(cluster.nodes[0].addr, COMMANDS)
    for command, want, have in zip(COMMANDS, expected, got):
        assert have == want, f"{command}: Redis {want!r}, dyno {have!r}"


SWITCHES = [  # sent in one write: each request is answered in the protocol in force for it
    ("HGETALL", "nope"), ("HELLO", "3"), ("HGETALL", "nope"), ("GET", "nope"), ("RESET",),
    ("HGETALL", "nope"), ("HELLO", "3"), ("MGET", "nope", "nada"), ("HELLO", "2"), ("GET", "nope"),
]


def pipelined(addr) -> list[bytes]:
    conn = d.RespConnection(addr)
    try:
        conn.send(SWITCHES)
        replies = [conn.read_reply()[0] for _ in SWITCHES]
    finally:
        conn.close()
    # HELLO tells each connection its own id
    return [re.sub(rb"\$2\r\nid\r\n:\d+", b"id", reply) for reply in replies]


@SHAPES
def test_hello_and_reset_in_a_pipeline_switch_the_requests_after_them(redis_server, cluster_factory, shape):
    expected = pipelined(redis_server.addr)
    assert expected[2] == b"%0\r\n" and expected[5] == b"*0\r\n"
    assert pipelined(cluster_factory(**shape).nodes[0].addr) == expected


def test_redis_py_defaults_work(cluster_factory):
    cluster = cluster_factory(racks=3)
    writer = redis.Redis(*cluster.nodes[0].addr)  # redis-py's own default protocol
    reader = redis.Redis(*cluster.nodes[1].addr, protocol=3)
    try:
        writer.hset("user:1", mapping={"name": "ada", "lang": "py"})
        writer.zadd("scores", {"ada": 3.5})
        support.wait_for(lambda: settled(cluster), 10, "replication settled")
        assert reader.hgetall("user:1") == {b"name": b"ada", b"lang": b"py"}
        assert reader.zscore("scores", "ada") == 3.5
        assert reader.get("missing") is None
        pipe = writer.pipeline(transaction=False)
        for i in range(100):
            pipe.set(f"p:{i}", i)
        assert all(pipe.execute())
    finally:
        writer.close()
        reader.close()
