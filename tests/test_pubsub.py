"""Pub/sub through dyno (dyno.pubsub): subscribers on every node get every message
published through any node, once and in order; replies and messages as Redis's."""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import differential as d
import support
from dyno.pubsub import glob_regex

integration = pytest.mark.integration
cmd, replies = d.request, d.read_replies






# -- Redis's glob, against Redis itself (KEYS uses the same stringmatchlen) --------------

NAMES = [b"a", b"b", b"ab", b"abc", b"a-c", b"a]", b"[a", b"a*", b"a?b", b"\\a", b"", b"ba", b"c^", b"x-y"]


@pytest.mark.integration
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=st.lists(st.sampled_from([b"a", b"b", b"c", b"*", b"?", b"[", b"]", b"^", b"-", b"\\"]),
                        min_size=1, max_size=7).map(b"".join))
def test_patterns_match_as_redis_matches_them(redis_server, pattern):
    client = redis_server.client()
    if client.dbsize() != len([n for n in NAMES if n]):
        client.flushall()
        client.mset({name: 1 for name in NAMES if name})
    regex = glob_regex(pattern)
    expected = sorted(client.keys(pattern))
    assert sorted(name for name in NAMES if name and regex.match(name)) == expected, pattern


# -- one connection, as plain Redis answers -----------------------------------------------

SEQUENCE = [cmd("SUBSCRIBE", "a", "b"), cmd("PING"), cmd("PING", "hi"), cmd("GET", "x"), cmd("SUBSCRIBE", "a"),
            cmd("PSUBSCRIBE", "n*"), cmd("UNSUBSCRIBE", "a", "zz"), cmd("PUNSUBSCRIBE"), cmd("UNSUBSCRIBE"),
            cmd("UNSUBSCRIBE"), cmd("GET", "x"), cmd("PING"), cmd("SSUBSCRIBE", "s1"), cmd("SUNSUBSCRIBE"),
            cmd("PUBLISH", "nobody", "m"), cmd("PUBSUB", "NUMPAT"), cmd("PUBSUB", "NUMSUB", "a")]
COUNTS = [2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]


@integration
@pytest.mark.parametrize("protocol", [2, 3])
def test_subscriber_replies_as_redis(cluster_factory, redis_server, protocol):
    node = cluster_factory(racks=1)[0]
    got = {}
    for name, addr in (("dyno", node.addr), ("redis", redis_server.addr)):
        sock = socket.create_connection(addr, timeout=10)
        if protocol == 3:
            sock.sendall(cmd("HELLO", "3"))
            replies(sock, 1)
        got[name] = []
        for command, count in zip(SEQUENCE, COUNTS):
            sock.sendall(command)
            got[name] += replies(sock, count)
        sock.close()
    assert got["dyno"] == got["redis"]


# -- across the cluster --------------------------------------------------------------------


def drain(pubsub, count: int, timeout: float = 15.0) -> list:
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < count:
        assert time.monotonic() < deadline, f"got {len(messages)} of {count} messages: {messages[-3:]}"
        message = pubsub.get_message(timeout=0.5)
        if message is not None and message["type"] in ("message", "pmessage", "smessage"):
            messages.append(message)
    return messages


@integration
@pytest.mark.parametrize("protocol", [2, 3])
def test_every_subscriber_gets_every_message_once_in_order(cluster_factory, protocol):
    cluster = cluster_factory(racks=3)
    subscribers = []
    for node in cluster.nodes:
        pubsub = node.client(protocol=protocol).pubsub()
        pubsub.subscribe("news")
        pubsub.psubscribe("ne*")
        subscribers.append(pubsub)
    publisher = cluster[1].client()

    def everyone_subscribed() -> bool:
        return publisher.pubsub_numsub("news") == [(b"news", 3)] and publisher.pubsub_numpat() == 3
    support.wait_for(everyone_subscribed, 10, "the subscriptions to show on every node")
    assert sorted(publisher.pubsub_channels()) == [b"news"]
    count = 300
    # this node's subscribers: one channel, one pattern (with workers, PUBLISH counts the
    # publisher's worker's own, as documented: the subscriber may be on the other one)
    counted = {2} if support.WORKERS is None else {0, 2}
    for i in range(count):
        assert publisher.publish("news", f"m{i}") in counted
    for pubsub in subscribers:
        messages = drain(pubsub, 2 * count)
        plain = [m["data"] for m in messages if m["type"] == "message"]
        patterned = [(m["pattern"], m["data"]) for m in messages if m["type"] == "pmessage"]
        assert plain == [f"m{i}".encode() for i in range(count)]
        assert patterned == [(b"ne*", f"m{i}".encode()) for i in range(count)]
        assert pubsub.get_message(timeout=0.2) is None  # nothing twice
    for pubsub in subscribers:
        pubsub.close()
    support.wait_for(lambda: publisher.pubsub_numsub("news") == [(b"news", 0)], 10, "subscribers to leave")


@integration
def test_sharded_channels_and_a_subscriber_that_leaves(cluster_factory):
    cluster = cluster_factory(racks=3)
    listener = cluster[2].client().pubsub()
    listener.ssubscribe("orders")
    publisher = cluster[0].client()
    support.wait_for(lambda: publisher.execute_command("PUBSUB", "SHARDNUMSUB", "orders") == [b"orders", 1], 10,
                     "the shard subscription")
    assert publisher.spublish("orders", "o1") == 0  # no subscriber on this node
    (message,) = drain(listener, 1)
    assert message["type"] == "smessage" and message["data"] == b"o1"
    # a RESP2 subscriber may only subscribe, ping and quit
    raw = socket.create_connection(cluster[1].addr, timeout=5)
    raw.sendall(cmd("SUBSCRIBE", "c") + cmd("SET", "k", "v"))
    assert replies(raw, 2)[1].startswith(b"-ERR Can't execute 'set'")
    raw.close()
    listener.close()
    assert publisher.set("k", "v") and cluster[1].client().get("k") == b"v"
