"""WATCH through dyno (dyno.watch): optimistic locking on one replica of the keys
(the same whichever node a client uses), answers as Redis's, and watched
transactions through every node that never lose an update."""

from __future__ import annotations

import socket
import threading

import pytest
import redis

import differential as d
import support

integration = pytest.mark.integration
cmd, replies = d.request, d.read_replies






SEQUENCE = [
    # watched, unchanged: commits
    cmd("SET", "{w}a", "1"), cmd("WATCH", "{w}a"), cmd("GET", "{w}a"), cmd("MULTI"), cmd("INCR", "{w}a"),
    cmd("EXEC"), cmd("GET", "{w}a"),
    # changed by the client itself after WATCH: EXEC is nil, nothing ran
    cmd("WATCH", "{w}a", "{w}b"), cmd("SET", "{w}b", "x"), cmd("MULTI"), cmd("INCR", "{w}a"), cmd("EXEC"),
    cmd("MGET", "{w}a", "{w}b"),
    # UNWATCH: the change no longer matters
    cmd("WATCH", "{w}a"), cmd("UNWATCH"), cmd("SET", "{w}a", "10"), cmd("MULTI"), cmd("INCR", "{w}a"),
    cmd("EXEC"),
    # DISCARD unwatches; WATCH inside MULTI is an error; EXEC without MULTI too
    cmd("WATCH", "{w}a"), cmd("MULTI"), cmd("WATCH", "{w}b"), cmd("DISCARD"), cmd("EXEC"),
    cmd("SET", "{w}a", "20"), cmd("MULTI"), cmd("GET", "{w}a"), cmd("EXEC"),
    # a watched key that does not exist, then is created
    cmd("WATCH", "{w}new"), cmd("SET", "{w}new", "1"), cmd("MULTI"), cmd("GET", "{w}new"), cmd("EXEC"),
    cmd("WATCH"), cmd("UNWATCH"), cmd("PING"),
]


@integration
@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("through", [0, 2])
def test_watch_answers_as_redis(cluster_factory, redis_server, pipelined, through):
    """Through the node whose Redis is the watch replica (node1, rack1) and through one
    whose session lives on a peer (node3)."""
    cluster = cluster_factory(racks=3, hash_tag="{}")
    got = {}
    for name, addr in (("dyno", cluster[through].addr), ("redis", redis_server.addr)):
        sock = socket.create_connection(addr, timeout=10)
        if pipelined:
            sock.sendall(b"".join(SEQUENCE))
            got[name] = replies(sock, len(SEQUENCE))
        else:
            got[name] = []
            for command in SEQUENCE:
                sock.sendall(command)
                got[name] += replies(sock, 1)
        sock.close()
    assert got["dyno"] == got["redis"]
    assert got["dyno"][5] == b"*1\r\n:2\r\n" and got["dyno"][11] == b"*-1\r\n"
    support.wait_for(lambda: all(n.redis_client().mget("{w}a", "{w}b", "{w}new") == [b"20", b"x", b"1"]
                                 for n in cluster.nodes), 10, "every replica to agree")


@integration
def test_a_change_through_another_node_makes_exec_nil(cluster_factory):
    cluster = cluster_factory(racks=3, hash_tag="{}")
    watcher, writer = cluster[2].client(), cluster[1].client()
    watcher.set("{x}k", "0")
    pipe = watcher.pipeline()
    pipe.watch("{x}k")
    assert pipe.get("{x}k") == b"0"
    assert writer.set("{x}k", "theirs")
    support.wait_for(lambda: all(n.redis_client().get("{x}k") == b"theirs" for n in cluster.nodes), 10,
                     "the other write to reach every replica")
    pipe.multi()
    pipe.set("{x}k", "mine")
    with pytest.raises(redis.WatchError):
        pipe.execute()
    assert all(n.redis_client().get("{x}k") == b"theirs" for n in cluster.nodes)


@integration
@pytest.mark.parametrize("level", ["DC_ONE", "DC_QUORUM"])
def test_check_and_set_through_every_node_loses_no_update(cluster_factory, level):
    """redis-py's transaction() (WATCH, GET, MULTI, SET, EXEC, retried on WatchError)
    from threads on every node: each increment counted once."""
    cluster = cluster_factory(racks=3, hash_tag="{}", read_consistency=level, write_consistency=level)
    rounds = 25
    errors: list[BaseException] = []

    def worker(node) -> None:
        client = node.client()

        def increment(pipe) -> None:
            value = int(pipe.get("{c}n") or 0)
            pipe.multi()
            pipe.set("{c}n", value + 1)

        try:
            for _ in range(rounds):
                client.transaction(increment, "{c}n")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(node,)) for node in cluster.nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    total = str(rounds * len(cluster.nodes)).encode()
    support.wait_for(lambda: all(n.redis_client().get("{c}n") == total for n in cluster.nodes), 10,
                     "every replica to hold every increment")


@integration
def test_a_client_that_leaves_while_watching_frees_its_session(cluster_factory):
    cluster = cluster_factory(racks=3, hash_tag="{}")
    node = cluster[2]
    for _ in range(20):
        client = node.client()
        pipe = client.pipeline()
        pipe.watch("{l}k")
        client.close()
    # the peer holding the sessions closed them: its Redis has only its pool's connections
    owner = cluster[0].redis_client()
    support.wait_for(lambda: len(owner.client_list()) < 20, 10, "the sessions' connections to close")
    assert node.client().set("{l}k", "1")
