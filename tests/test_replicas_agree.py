"""Replicas agree where they used to drift, on a real cluster of two datacenters of
three racks (every node holds a full copy), through every node:

* a relative expiry is made absolute by the coordinator (dyno.rewrite), so every
  replica holds the same deadline (PEXPIRETIME read behind dyno's back), in this
  datacenter and in the other, which gets the write through its coordinator;
* SSCAN / HSCAN / ZSCAN of a hashtable-encoded collection (whose iteration order
  differs from replica to replica) is answered by the replica the cursor names, so a
  client iterates it whole at every consistency level.
"""

from __future__ import annotations

import time

import pytest
import redis

import support

pytestmark = pytest.mark.integration

LEVELS = ("DC_ONE", "DC_QUORUM", "DC_SAFE_QUORUM", "DC_EACH_SAFE_QUORUM")


@pytest.fixture(scope="module")
def two_dcs(tmp_path_factory):
    if support.dyno_missing():
        pytest.skip(support.dyno_missing())
    with support.running_cluster(tmp_path_factory.mktemp("agree"), dcs=2, racks=3, nodes_per_rack=1,
                                 hash_tag="{}") as cluster:  # fmt: skip
        yield cluster


def settle(cluster) -> None:
    def quiet() -> bool:
        return all(n.client().info("dyno")["peer_requests_in_flight"] == 0 for n in cluster.nodes)

    support.wait_for(quiet, 20, "every node to have 0 peer_requests_in_flight")


def at_level(node: support.NodeHandle, level: str) -> redis.Redis:
    c = node.client(single_connection_client=True)
    assert c.execute_command("DYNO_CONFIG:CONN_CONSISTENCY", level) in (b"OK", True)
    return c


def deadlines(cluster, key: str) -> dict[str, int]:
    """PEXPIRETIME of ``key`` in every node's own Redis."""
    return {n.name: n.redis_client().execute_command("PEXPIRETIME", key) for n in cluster.nodes}


# (name, setup on a plain key, the command, its relative expiry in ms)
FORMS = [
    ("expire", True, lambda k: ("EXPIRE", k, 100), 100_000),
    ("expire-gt", True, lambda k: ("EXPIRE", k, 100, "NX"), 100_000),
    ("pexpire", True, lambda k: ("PEXPIRE", k, 100_000), 100_000),
    ("setex", False, lambda k: ("SETEX", k, 100, "v"), 100_000),
    ("psetex", False, lambda k: ("PSETEX", k, 100_000, "v"), 100_000),
    ("set-ex", False, lambda k: ("SET", k, "v", "EX", 100), 100_000),
    ("set-px-get", True, lambda k: ("SET", k, "w", "GET", "PX", 100_000), 100_000),
    ("set-nx-ex", False, lambda k: ("SET", k, "v", "NX", "EX", 100), 100_000),
    ("getex-ex", True, lambda k: ("GETEX", k, "EX", 100), 100_000),
    ("getex-px", True, lambda k: ("GETEX", k, "PX", 100_000), 100_000),
]


@pytest.mark.parametrize("level", ["DC_ONE", "DC_QUORUM"])
def test_every_replica_holds_the_same_deadline_whichever_node_took_the_write(two_dcs, level):
    keys = []
    for via in two_dcs.nodes:
        c = at_level(via, level)
        for name, existing, command, relative in FORMS:
            key = f"ttl:{level}:{name}:{via.name}"
            if existing:
                assert c.set(key, "v") is True
            before = time.time() * 1000
            c.execute_command(*command(key))
            after = time.time() * 1000
            keys.append((key, before + relative, after + relative))
        # RESTORE with a relative TTL: the payload of a plain string, dumped here.
        dumped = via.redis_client().dump(keys[-1][0])
        key = f"ttl:{level}:restore:{via.name}"
        before = time.time() * 1000
        assert c.execute_command("RESTORE", key, 100_000, dumped) in (b"OK", True)
        keys.append((key, before + 100_000, time.time() * 1000 + 100_000))
    settle(two_dcs)
    for key, earliest, latest in keys:
        held = deadlines(two_dcs, key)
        assert len(set(held.values())) == 1, (key, held)
        (deadline,) = set(held.values())
        assert earliest - 5 <= deadline <= latest + 5, (key, deadline, earliest, latest)


def test_a_relative_expiry_redis_refuses_gets_redis_own_error_everywhere(two_dcs):
    c = two_dcs.nodes[1].client()
    for command, error in [
        (("SETEX", "bad:ttl", 0, "v"), "invalid expire time in 'setex' command"),
        (("SET", "bad:ttl", "v", "EX", "soon"), "value is not an integer or out of range"),
        (("EXPIRE", "bad:ttl", 9223372036854775807), "invalid expire time in 'expire' command"),
    ]:
        with pytest.raises(redis.ResponseError, match=error):
            c.execute_command(*command)


def fill(cluster, key: str, kind: str, members: int) -> set[bytes]:
    """A collection past the listpack limits (a hashtable: each replica iterates it
    in its own order)."""
    c = cluster.nodes[0].client()
    names = [f"m{i}" for i in range(members)]
    if kind == "set":
        c.sadd(key, *names)
    elif kind == "hash":
        c.hset(key, mapping={name: i for i, name in enumerate(names)})
    else:
        c.zadd(key, {name: i for i, name in enumerate(names)})
    settle(cluster)
    assert {n.redis_client().object("encoding", key) for n in cluster.nodes} == {b"hashtable" if kind != "zset"
                                                                                else b"skiplist"}
    return {name.encode() for name in names}


def iterate(c: redis.Redis, kind: str, key: str) -> tuple[list[bytes], int]:
    """Every member a client sees iterating ``key`` with its cursor, and the calls."""
    seen: list[bytes] = []
    cursor, calls = 0, 0
    while True:
        if kind == "set":
            cursor, batch = c.sscan(key, cursor, count=50)
            seen += batch
        elif kind == "hash":
            cursor, batch = c.hscan(key, cursor, count=50)
            seen += list(batch)
        else:
            cursor, batch = c.zscan(key, cursor, count=50)
            seen += [member for member, _ in batch]
        calls += 1
        assert calls < 500, "the scan does not end"
        if cursor == 0:
            return seen, calls


@pytest.mark.parametrize("kind", ["set", "hash", "zset"])
def test_cursor_reads_of_a_large_collection_visit_every_member_at_every_level(two_dcs, kind):
    key = f"big:{{{kind}}}"
    members = fill(two_dcs, key, kind, 1000)
    for level in LEVELS:
        for via in (two_dcs.nodes[0], two_dcs.nodes[4]):
            seen, calls = iterate(at_level(via, level), kind, key)
            assert set(seen) == members, (level, via.name, len(members - set(seen)))
            assert calls > 1  # it really took a cursor from call to call


def test_a_cursor_that_is_not_a_number_is_refused_like_redis(two_dcs):
    c = two_dcs.nodes[0].client()
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        c.execute_command("SSCAN", "any", "abc")
