"""The cluster end to end: real dyno nodes, each with its own redis-server (issue 3).

What these tests check, by looking inside every Redis behind dyno's back:
* placement: each key is stored exactly once per rack, on the node that owns its token in
  that rack (computed with dyno.ring from the node's own config), and every rack holds the
  same data;
* routing: a key written through one node is read through any other;
* consistency levels: DC_QUORUM / DC_SAFE_QUORUM return the majority value when one replica
  was changed behind dyno's back and fail when no two agree; with a node dead, quorum
  requests succeed with 2 of 3 racks and DC_ONE reads fall back to another rack;
* multi-key commands split per owner and merged; co-located commands need hash tags;
* rack-wide DBSIZE / KEYS / SCAN / FLUSHALL;
* under pipelined load at DC_ONE every acknowledged write reaches every rack;
* the shipped configs under configs/ (cluster-3racks, cluster-2dcs) form consistent rings.

Clusters that no test damages are shared per module (`shared6`, `shared3`); tests that kill
or stop processes start their own. Settling means waiting until no node has a replica request
in flight (INFO dyno `peer_requests_in_flight` 0 everywhere), never sleeping.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import subprocess
import threading
import weakref
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

import support
from dyno.cli import main as dyno_cli
from dyno.config import load_config
from dyno.consistency import replicas_disagree
from dyno.ring import topology_from_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIRS = ("cluster-3racks", "cluster-2dcs")

integration = pytest.mark.integration


# --------------------------------------------------------------------------- helpers


def seed_for(what: str) -> int:
    """A fresh random seed per run (DYNO_TEST_SEED=<n> replays one), named in failures."""
    env = os.environ.get("DYNO_TEST_SEED")
    seed = int(env) if env else random.randrange(2**32)
    print(f"{what}: DYNO_TEST_SEED={seed}")
    return seed


def node_name(node: support.NodeHandle) -> str:
    """The node's name in the ring: str(dyn_listen)."""
    return f"{node.host}:{node.dyn_port}"


def ring_of(node: support.NodeHandle):
    return topology_from_config(load_config(node.config))


def owners(ring, key: bytes) -> set[str]:
    """Names of the nodes that must hold `key` (its owner in every rack)."""
    return {replica.name for replica in ring.replicas(ring.token_of(key))}


_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_redis_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def client_of(node: support.NodeHandle) -> redis.Redis:
    """One reused client per node, for polling (node.client() makes a new one each call)."""
    if node not in _clients:
        _clients[node] = node.client()
    return _clients[node]


def redis_of(node: support.NodeHandle) -> redis.Redis:
    """One reused client per node's own Redis (behind dyno's back)."""
    if node not in _redis_clients:
        _redis_clients[node] = node.redis_client()
    return _redis_clients[node]


def info_dyno(node: support.NodeHandle) -> dict:
    return client_of(node).info("dyno")


def replica_failures(node: support.NodeHandle) -> int:
    return client_of(node).info("stats")["replica_failures"]


def settle(cluster: support.Cluster, timeout: float = 30.0, nodes=None) -> None:
    """Wait until every (live) node has no replica request in flight: every write it
    acknowledged has been answered by every replica."""
    nodes = nodes if nodes is not None else cluster.nodes

    def quiet() -> bool:
        return all(info_dyno(n)["peer_requests_in_flight"] == 0 for n in nodes)

    support.wait_for(quiet, timeout, "every node to have 0 peer_requests_in_flight")


def wait_peers_up(cluster: support.Cluster, timeout: float = 15.0) -> None:
    def all_up() -> bool:
        for n in cluster.nodes:
            info = info_dyno(n)
            if info["peers_up"] != info["peers"]:
                return False
        return True

    support.wait_for(all_up, timeout, "every node to have all its peer links up", ignore=(redis.ConnectionError,))


def redis_keys(node: support.NodeHandle) -> list[bytes]:
    """Every key in the node's own Redis (read directly, behind dyno's back)."""
    return list(redis_of(node).scan_iter(count=1000))


def racks_of(cluster: support.Cluster) -> dict[tuple[str, str], list[support.NodeHandle]]:
    out: dict[tuple[str, str], list[support.NodeHandle]] = collections.defaultdict(list)
    for n in cluster.nodes:
        out[n.dc, n.rack].append(n)
    return dict(out)


def content(r: redis.Redis, key: bytes):
    """A key's value in a form that does not depend on Redis's encoding order."""
    kind = r.type(key).decode()
    if kind == "string":
        value = r.get(key)
    elif kind == "hash":
        value = sorted(r.hgetall(key).items())
    elif kind == "set":
        value = sorted(r.smembers(key))
    elif kind == "zset":
        value = r.zrange(key, 0, -1, withscores=True)
    elif kind == "list":
        value = r.lrange(key, 0, -1)
    else:
        value = r.dump(key)
    return kind, value, r.pttl(key) > 0


def fresh(cluster: support.Cluster) -> support.Cluster:
    """A shared cluster emptied for the next test: replication settled, every Redis flushed
    directly, every peer link up."""
    settle(cluster)
    for n in cluster.nodes:
        redis_of(n).flushall()
    wait_peers_up(cluster)
    return cluster


def single(node: support.NodeHandle, level: str | None = None) -> redis.Redis:
    """A client on one connection (so DYNO_CONFIG:CONN_CONSISTENCY sticks)."""
    c = node.client(single_connection_client=True)
    if level is not None:
        assert c.execute_command("DYNO_CONFIG:CONN_CONSISTENCY", level) in (b"OK", True)
    return c


def keys_by_rack_owner(cluster: support.Cluster, count: int, prefix: str = "k:") -> dict[str, list[bytes]]:
    """`count` keys per node of rack1, grouped by the node owning them there."""
    ring = ring_of(cluster.nodes[0])
    rack1 = [n for n in cluster.nodes if (n.dc, n.rack) == ("dc1", "rack1")]
    names = {node_name(n) for n in rack1}
    groups: dict[str, list[bytes]] = {name: [] for name in names}
    i = 0
    while any(len(g) < count for g in groups.values()):
        key = f"{prefix}{i}".encode()
        i += 1
        owner = ring.owner(ring.token_of(key), "dc1", "rack1").name
        if len(groups[owner]) < count:
            groups[owner].append(key)
    return groups


def check_placement(cluster: support.Cluster, written: set[bytes]) -> None:
    """Every Redis holds exactly the written keys its node owns, and nothing else."""
    ring = ring_of(cluster.nodes[0])
    expected: dict[str, set[bytes]] = {node_name(n): set() for n in cluster.nodes}
    for key in written:
        for name in owners(ring, key):
            expected[name].add(key)
    for n in cluster.nodes:
        held = redis_keys(n)
        assert len(held) == len(set(held))
        held_set = set(held)
        missing = expected[node_name(n)] - held_set
        extra = held_set - expected[node_name(n)]
        assert not missing and not extra, (
            f"{n!r}: {len(missing)} owned key(s) missing (e.g. {sorted(missing)[:5]}), "
            f"{len(extra)} key(s) it does not own (e.g. {sorted(extra)[:5]})"
        )


# --------------------------------------------------------------------------- shared clusters


@pytest.fixture(scope="module")
def shared6(tmp_path_factory):
    """3 racks x 2 nodes per rack, hash_tag '{}', DC_ONE."""
    if support.dyno_missing():
        pytest.skip(support.dyno_missing())
    with support.running_cluster(tmp_path_factory.mktemp("shared6"), racks=3, nodes_per_rack=2,
                                 hash_tag="{}") as cluster:  # fmt: skip
        yield cluster


@pytest.fixture(scope="module")
def shared3(tmp_path_factory):
    """3 racks x 1 node, hash_tag '{}', DC_ONE."""
    if support.dyno_missing():
        pytest.skip(support.dyno_missing())
    with support.running_cluster(tmp_path_factory.mktemp("shared3"), racks=3, nodes_per_rack=1,
                                 hash_tag="{}") as cluster:  # fmt: skip
        yield cluster


@pytest.fixture
def c6(shared6):
    return fresh(shared6)


@pytest.fixture
def c3(shared3):
    return fresh(shared3)


# --------------------------------------------------------------------------- 1. placement


def _random_writes(cluster: support.Cluster, rng: random.Random, count: int) -> set[bytes]:
    """Writes of every type through random nodes. A key whose value depends on the order of
    its writes (strings overwritten, lists) is written through one node, so every replica
    sees its writes in one order; commutative writes (SADD, HSET of distinct fields,
    INCRBY, ZADD of distinct members) go through any node."""
    clients = [n.client() for n in cluster.nodes]
    written: set[bytes] = set()
    pinned_of: dict[bytes, redis.Redis] = {}  # keys written through one node only
    for i in range(count):
        kind = rng.choice(["string", "incr", "hash", "set", "zset", "list", "expire", "tagged"])
        key = f"{kind}:{i}:{rng.randrange(10**6)}".encode()
        pinned = rng.choice(clients)

        def anyone() -> redis.Redis:
            return rng.choice(clients)

        if kind == "string":
            for _ in range(rng.randint(1, 3)):
                pinned.set(key, rng.randbytes(rng.randint(0, 40)))
        elif kind == "incr":
            for _ in range(rng.randint(1, 4)):
                anyone().incrby(key, rng.randint(-5, 5))
        elif kind == "hash":
            for f in range(rng.randint(1, 5)):
                anyone().hset(key, f"f{f}", rng.randbytes(5))
        elif kind == "set":
            for m in rng.sample(range(100), rng.randint(1, 6)):
                anyone().sadd(key, m if rng.random() < 0.5 else f"m{m}")
        elif kind == "zset":
            for m in range(rng.randint(1, 5)):
                anyone().zadd(key, {f"m{m}": rng.randint(0, 9)})
        elif kind == "list":
            for _ in range(rng.randint(1, 4)):
                pinned.rpush(key, rng.randbytes(3))
        elif kind == "expire":
            pinned.set(key, b"v", ex=1000)
        else:  # keys sharing a hash tag, written through one node
            tag = f"{{user{rng.randrange(20)}}}"
            key = f"{tag}:{i}".encode()
            pinned.hset(key, "name", f"n{i}")
        written.add(key)
        if kind in ("string", "list", "expire", "tagged"):
            pinned_of[key] = pinned
        if rng.random() < 0.05 and pinned_of:  # some deletes, through the key's one node
            victim = rng.choice(sorted(pinned_of))
            assert pinned_of.pop(victim).delete(victim) == 1
            written.discard(victim)
    for c in clients:
        c.close()
    return written


@integration
def test_placement_every_key_once_per_rack_on_its_owner_and_racks_identical(c6):
    rng = random.Random(seed_for("placement"))
    written = _random_writes(c6, rng, 400)
    settle(c6)
    check_placement(c6, written)

    # Every rack holds the same data: compare each key across racks, by DUMP where the
    # encoding is order-independent of arrival, else by type-aware content.
    racks = racks_of(c6)
    ring = ring_of(c6.nodes[0])
    by_name = {node_name(n): n for n in c6.nodes}
    for key in sorted(written):
        holders = [by_name[name] for name in owners(ring, key)]
        assert len(holders) == len(racks)
        contents = {n.name: content(redis_of(n), key) for n in holders}
        assert len(set(map(repr, contents.values()))) == 1, f"{key!r} differs across racks: {contents}"
        kind = contents[holders[0].name][0]
        if kind in ("string", "list"):
            dumps = {redis_of(n).dump(key) for n in holders}
            assert len(dumps) == 1, f"DUMP of {key!r} differs across racks"


@integration
def test_placement_in_two_datacenters(cluster_factory):
    """Writes through nodes of both DCs reach every rack of both (the remote DC through
    one representative that fans out there: 2 hops), each key on its owners only."""
    cluster = cluster_factory(dcs=2, racks=3, nodes_per_rack=2, hash_tag="{}")
    rng = random.Random(seed_for("placement-2dcs"))
    written = _random_writes(cluster, rng, 150)
    settle(cluster)
    check_placement(cluster, written)
    ring = ring_of(cluster.nodes[0])
    by_name = {node_name(n): n for n in cluster.nodes}
    for key in sorted(written):
        holders = [by_name[name] for name in owners(ring, key)]
        assert {n.dc for n in holders} == {"dc1", "dc2"} and len(holders) == 6
        contents = {n.name: content(redis_of(n), key) for n in holders}
        assert len(set(map(repr, contents.values()))) == 1, f"{key!r} differs across racks: {contents}"


# --------------------------------------------------------------------------- 2. any node


@integration
def test_set_on_one_node_get_on_every_other(c3):
    a, b, c = c3.nodes
    assert a.client().set("greeting", "hello") is True
    settle(c3)  # DC_ONE: acknowledged by a's rack; the others follow
    assert b.client().get("greeting") == b"hello"
    assert c.client().get("greeting") == b"hello"
    assert [redis_of(n).get("greeting") for n in c3.nodes] == [b"hello"] * 3


# --------------------------------------------------------------------------- 3. quorum reads


@integration
def test_quorum_reads_return_the_majority_and_fail_when_no_quorum_agrees(c3):
    a, b, c = c3.nodes
    assert a.client().set("q", "good")
    settle(c3)
    assert [redis_of(n).get("q") for n in c3.nodes] == [b"good"] * 3

    safe = single(a, "DC_SAFE_QUORUM")
    quorum = single(a, "DC_QUORUM")
    one = single(a, "DC_ONE")
    # The local replica of the node read through goes wrong behind dyno's back:
    a.redis_client().set("q", "bad-local")
    assert one.get("q") == b"bad-local"  # DC_ONE trusts the local rack
    assert safe.get("q") == b"good"
    assert quorum.get("q") == b"good"
    # ... or a remote one does:
    a.redis_client().set("q", "good")
    c.redis_client().set("q", "bad-remote")
    assert safe.get("q") == b"good"
    assert quorum.get("q") == b"good"
    # No two replicas agree: no majority value, a clear error at both levels.
    b.redis_client().set("q", "other")
    expected = replicas_disagree("DC_SAFE_QUORUM")[1:-2].decode()  # "ERR dyno: ..."
    with pytest.raises(redis.ResponseError) as error:
        safe.get("q")
    assert str(error.value) == expected.removeprefix("ERR ")  # redis-py drops "ERR "
    assert "replicas disagree" in expected
    with pytest.raises(redis.ResponseError, match="replicas disagree"):
        quorum.get("q")
    # The connection stays usable, and a key everyone agrees on still reads.
    assert safe.set("fine", "1")
    assert safe.get("fine") == b"1"
    # A missing key is agreed on (nil everywhere).
    assert safe.get("nothing-here") is None


# --------------------------------------------------------------------------- 4. a dead node


@integration
def test_node_killed_quorum_still_served_by_two_of_three_racks(cluster_factory):
    cluster = cluster_factory(racks=3, nodes_per_rack=1)
    a, b, c = cluster.nodes
    assert a.client().set("before", "1")
    settle(cluster)
    c.kill()
    support.wait_for(lambda: info_dyno(a)["peers_up"] == 1 and info_dyno(b)["peers_up"] == 1, 10,
                     "node1 and node2 to see node3 down")  # fmt: skip
    qa, qb = single(a, "DC_QUORUM"), single(b, "DC_QUORUM")
    for i in range(20):
        assert qa.set(f"q{i}", i)
        assert qb.get(f"q{i}") == str(i).encode()
    assert qb.get("before") == b"1"
    assert single(b, "DC_SAFE_QUORUM").get("q3") == b"3"
    assert qa.delete("q0", "q1", "q2") == 3
    assert qb.mget("q0", "q3", "before") == [None, b"3", b"1"]
    # A second failure leaves one rack: no quorum, a clear error (not a hang).
    b.kill_redis()
    support.wait_for(lambda: info_dyno(b)["datastore_up"] == 0, 10, "node2 to see its Redis down")
    with pytest.raises(redis.ResponseError, match="quorum not achieved"):
        qa.set("lonely", "x")


@integration
def test_dc_one_read_served_by_another_rack_when_the_local_redis_is_dead(cluster_factory):
    cluster = cluster_factory(racks=3, nodes_per_rack=1)
    a, b, c = cluster.nodes
    assert a.client().mset({f"k{i}": i for i in range(10)})
    settle(cluster)
    a.kill_redis()
    support.wait_for(lambda: info_dyno(a)["datastore_up"] == 0, 10, "node1 to see its Redis down")
    one = single(a, "DC_ONE")
    for i in range(10):
        assert one.get(f"k{i}") == str(i).encode()
    assert one.mget("k1", "k2", "missing") == [b"1", b"2", None]


@integration
def test_dc_one_read_served_by_another_rack_when_the_local_rack_owner_is_dead(cluster_factory):
    cluster = cluster_factory(racks=3, nodes_per_rack=2)
    by_name = {node_name(n): n for n in cluster.nodes}
    groups = keys_by_rack_owner(cluster, 10)
    rack1 = sorted((by_name[name] for name in groups), key=lambda n: n.name)
    client_node = rack1[0]
    dead = rack1[1]
    dead_keys = groups[node_name(dead)]
    live_keys = groups[node_name(client_node)]
    one = single(client_node, "DC_ONE")
    for key in dead_keys + live_keys:
        assert one.set(key, key)
    settle(cluster)
    dead.kill()
    support.wait_for(lambda: info_dyno(client_node)["peers_up"] == 4, 10, f"{client_node.name} to see {dead.name} down")
    for key in dead_keys + live_keys:
        assert one.get(key) == key, key
    # DC_ONE writes while a replica is dead: acknowledged, the failed replica counted.
    failures = replica_failures(client_node)
    for key in dead_keys:
        assert one.set(key, b"new")
    assert replica_failures(client_node) >= failures + len(dead_keys)
    for key in dead_keys:
        assert one.get(key) == b"new"


@integration
def test_dc_one_writes_with_a_dead_peer_are_acknowledged_and_counted(cluster_factory):
    cluster = cluster_factory(racks=3, nodes_per_rack=1)
    a, b, c = cluster.nodes
    c.kill()
    support.wait_for(lambda: info_dyno(a)["peers_up"] == 1, 10, "node1 to see node3 down")
    assert replica_failures(a) == 0
    one = single(a, "DC_ONE")
    for i in range(10):
        assert one.set(f"w{i}", i)
    assert replica_failures(a) >= 10
    settle(cluster, nodes=[a, b])
    assert [b.redis_client().get(f"w{i}") for i in range(10)] == [str(i).encode() for i in range(10)]


# --------------------------------------------------------------------------- 5. multi-key


@integration
def test_multi_key_commands_split_per_owner_and_merge(c6):
    groups = keys_by_rack_owner(c6, 3)
    x, y = list(groups.values())  # keys of two different owners
    ring = ring_of(c6.nodes[0])
    assert owners(ring, x[0]) != owners(ring, y[0])
    r = c6.nodes[0].client()
    r2 = c6.nodes[3].client()

    # MSET across owners, then GET each through another node (of another rack: at
    # DC_ONE a write is acknowledged by one rack, so wait for the others first)
    assert r.mset({x[0]: "x0", y[0]: "y0", x[1]: "x1", y[1]: "y1"})
    settle(c6)
    assert [r2.get(k) for k in (x[0], y[0], x[1], y[1])] == [b"x0", b"y0", b"x1", b"y1"]

    # MGET keeps the order, nil for missing and wrong-type keys
    r.sadd(y[2], "member")
    settle(c6)
    assert r2.mget(y[1], x[0], x[2], y[0], y[2], x[1], y[1]) == [b"y1", b"x0", None, b"y0", None, b"x1", b"y1"]

    # EXISTS / TOUCH count every argument, duplicates included; DEL / UNLINK each key once
    assert r2.exists(x[0], x[0]) == 2
    assert r2.exists(x[0], y[0], x[0], y[0], x[2]) == 4
    assert r2.touch(x[0], y[0], y[0], x[2]) == 3
    assert r.delete(x[0], y[0], x[0], x[2]) == 2
    assert r.unlink(x[1], y[1], y[1], y[2]) == 3
    assert r.exists(x[0], y[0], x[1], y[1], y[2]) == 0
    settle(c6)
    check_placement(c6, set())

    # Co-located commands: different owners -> CROSSSLOT naming hash tags; one tag -> works.
    r.sadd(x[0], "a", "b")
    r.sadd(y[0], "b", "c")
    # (redis-py turns a "-CROSSSLOT ..." line into ClusterCrossSlotError, without the prefix)
    with pytest.raises(redis.exceptions.ClusterCrossSlotError) as error:
        r.sinterstore("dest", [x[0], y[0]])
    assert str(error.value).startswith("Keys in request don't hash to the same slot")
    assert "hash tag" in str(error.value)
    r.set(x[1], "v")
    with pytest.raises(redis.exceptions.ClusterCrossSlotError, match=r"hash tag"):
        r.rename(x[1], y[1])
    with pytest.raises(redis.exceptions.ClusterCrossSlotError, match=r"hash tag"):
        r.smove(x[0], y[0], "a")
    assert r.get(x[1]) == b"v"

    r.sadd("{u1}:a", "a", "b")
    r.sadd("{u1}:b", "b", "c")
    assert r.sinterstore("{u1}:both", ["{u1}:a", "{u1}:b"]) == 1
    settle(c6)
    assert r2.smembers("{u1}:both") == {b"b"}
    assert r.rename("{u1}:both", "{u1}:renamed")
    settle(c6)
    assert r2.smembers("{u1}:renamed") == {b"b"}
    assert r2.exists("{u1}:both") == 0
    settle(c6)
    check_placement(c6, {x[0], y[0], x[1], b"{u1}:a", b"{u1}:b", b"{u1}:renamed"})


# --------------------------------------------------------------------------- 6. rack-wide


@integration
def test_dbsize_keys_scan_and_flushall_cover_the_whole_cluster(c6):
    keys = {f"scan:{i}".encode() for i in range(500)}
    r = c6.nodes[0].client()
    pipe = r.pipeline(transaction=False)
    for k in sorted(keys):
        pipe.set(k, "1")
    assert all(pipe.execute())
    settle(c6)
    # The keys are spread over both nodes of each rack.
    per_node = {n.name: len(redis_keys(n)) for n in c6.nodes}
    assert all(0 < count < 500 for count in per_node.values()), per_node

    for n in (c6.nodes[0], c6.nodes[3], c6.nodes[5]):
        c = n.client()
        assert c.dbsize() == 500
        listed = c.keys("*")
        assert len(listed) == 500 and set(listed) == keys

        seen: list[bytes] = []
        cursor, calls = 0, 0
        while True:
            cursor, batch = c.scan(cursor, count=10)
            seen += batch
            calls += 1
            assert calls < 1000, "SCAN does not end"
            if cursor == 0:
                break
        duplicates = [k for k, count in collections.Counter(seen).items() if count > 1]
        assert duplicates == []
        assert set(seen) == keys
        assert calls > 10  # COUNT 10 over 500 keys takes many calls

    matched = set(c6.nodes[1].client().scan_iter(match="scan:1*", count=50))
    assert matched == {k for k in keys if k.startswith(b"scan:1")}

    r = c6.nodes[2].client()
    for bad in ("abc", "1x", "18446744073709551616"):
        with pytest.raises(redis.ResponseError, match="^invalid cursor$"):
            r.execute_command("SCAN", bad)
    with pytest.raises(redis.ResponseError, match="^invalid cursor$"):
        r.execute_command("SCAN", "abc", "COUNT", "10")

    assert r.flushall()
    assert [redis_of(n).dbsize() for n in c6.nodes] == [0] * len(c6.nodes)
    assert c6.nodes[4].client().dbsize() == 0
    assert list(c6.nodes[4].client().scan_iter(count=10)) == []


# --------------------------------------------------------------------------- 7. load


@integration
def test_pipelined_load_at_dc_one_every_acknowledged_write_reaches_every_rack(c6):
    """Dynomite dropped replica writes when a peer queue overflowed under -P 16; dyno must
    slow the client down instead."""
    benchmark = shutil.which("redis-benchmark")
    node = c6.nodes[0]
    known = [f"known:{i}".encode() for i in range(20000)]
    errors: list[BaseException] = []

    def pipelined_writes() -> None:
        try:
            c = c6.nodes[2].client()
            for start in range(0, len(known), 1000):
                pipe = c.pipeline(transaction=False)
                for k in known[start : start + 1000]:
                    pipe.set(k, k)
                assert all(pipe.execute())
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    writer = threading.Thread(target=pipelined_writes)
    writer.start()
    try:
        if benchmark:
            result = subprocess.run(
                [benchmark, "-h", node.host, "-p", str(node.port), "-t", "set", "-n", "100000",
                 "-P", "16", "-c", "50", "-r", "100000", "-q"],  # fmt: skip
                capture_output=True, text=True, timeout=120,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert "error" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    finally:
        writer.join(120)
    assert not writer.is_alive()
    assert not errors, errors
    settle(c6, timeout=60)

    rack_keys = {}
    for place, nodes in racks_of(c6).items():
        keys: set[bytes] = set()
        for n in nodes:
            held = redis_keys(n)
            assert not keys & set(held), f"{place}: a key held by two nodes of one rack"
            keys |= set(held)
        rack_keys[place] = keys
    first = next(iter(rack_keys.values()))
    for place, keys in rack_keys.items():
        assert keys == first, f"{place} differs: {len(keys ^ first)} keys held by one rack and not another"
    assert set(known) <= first
    if benchmark:
        bench_keys = first - set(known)
        assert len(bench_keys) > 50000 and all(k.startswith(b"key:") for k in bench_keys)
    else:
        assert first == set(known)
    check_placement(c6, first)
    # values too, for the keys whose values are known
    for n in c6.nodes:
        held = set(redis_keys(n))
        mine = [k for k in known if k in held]
        values = redis_of(n).mget(mine)
        assert values == mine


# --------------------------------------------------------------------------- shipped configs


SHIPPED = sorted(p for d in CONFIG_DIRS for p in (ROOT / "configs" / d).glob("*.yml"))


def test_cluster_configs_are_shipped():
    names = {(p.parent.name, p.name) for p in SHIPPED}
    assert {("cluster-3racks", f"node{i}.yml") for i in (1, 2, 3)} <= names
    assert sum(1 for d, _ in names if d == "cluster-2dcs") == 12


@pytest.mark.parametrize("path", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_cluster_config_passes_check_config_and_builds_a_ring(path):
    result = CliRunner().invoke(dyno_cli, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    config = load_config(path)
    assert config.warnings == ()
    ring = topology_from_config(config)
    assert len(ring.nodes) == len(list(path.parent.glob("*.yml")))


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_cluster_configs_agree_with_each_other(directory):
    """The files of one cluster describe one ring: each node's seeds are exactly the other
    nodes as they describe themselves, no port is used twice, every rack has the same
    evenly spaced token set, and every node computes the same replicas for any key."""
    paths = sorted((ROOT / "configs" / directory).glob("*.yml"))
    configs = [load_config(p) for p in paths]
    selves = {str(c.dyn_listen): (c.rack, c.datacenter, tuple(c.tokens)) for c in configs}
    assert len(selves) == len(configs)
    for c in configs:
        seeds = {str(s.address): (s.rack, s.dc, tuple(s.tokens)) for s in c.dyn_seeds}
        assert seeds == {name: v for name, v in selves.items() if name != str(c.dyn_listen)}, c.path
    ports = [a.port for c in configs for a in (c.listen, c.dyn_listen, c.stats_listen, c.servers[0].address)]
    assert len(ports) == len(set(ports)), "a port is used twice"
    pools = {c.pool for c in configs}
    assert pools == {"dyn_o_mite"}

    token_sets = collections.defaultdict(list)
    for c in configs:
        token_sets[c.datacenter, c.rack] += c.tokens
    sets = {tuple(sorted(t)) for t in token_sets.values()}
    assert len(sets) == 1, token_sets
    (tokens,) = sets
    assert list(tokens) == [i * 2**32 // len(tokens) for i in range(len(tokens))]

    rings = [topology_from_config(c) for c in configs]
    racks = len(token_sets)
    rng = random.Random(3)
    for _ in range(200):
        key = rng.randbytes(rng.randint(0, 20))
        replica_sets = {frozenset(n.name for n in ring.replicas(ring.token_of(key))) for ring in rings}
        assert len(replica_sets) == 1
        (replicas,) = replica_sets
        assert len(replicas) == racks  # one owner in each rack of each DC
    # a hash tag keeps related keys together
    ring = rings[0]
    assert ring.replicas(ring.token_of(b"{user1}:a")) == ring.replicas(ring.token_of(b"{user1}:b"))


@integration
def test_localcluster_passes_the_config_key_timeout_to_the_nodes(cluster_factory):
    cluster = cluster_factory(racks=1, nodes_per_rack=1, timeout=1000)
    assert load_config(cluster.nodes[0].config).timeout == 1000


def test_readme_documents_cluster_configs():
    readme = (ROOT / "configs" / "README.md").read_text()
    assert "## Cluster configs" in readme
    for directory in CONFIG_DIRS:
        assert directory in readme


@integration
def test_unordered_and_random_replies_do_not_break_quorum(c3):
    """Replicas keep a set of strings in hashtables whose order differs per process:
    SMEMBERS answers differ as bytes but agree as sets. SRANDMEMBER can never agree."""
    members = {f"member-{i}".encode() for i in range(40)}
    writer = c3.nodes[0].client()
    writer.sadd("unordered", *members)
    writer.hset("fields", mapping={f"f{i}": i for i in range(40)})
    settle(c3)
    orders = {tuple(redis_of(n).execute_command("SMEMBERS", "unordered")) for n in c3.nodes}
    assert len(orders) > 1, "the replicas happened to order the set alike: the test proves nothing"
    reader = c3.nodes[1].client(single_connection_client=True)
    reader.execute_command("DYNO_CONFIG:CONN_CONSISTENCY", "DC_SAFE_QUORUM")
    assert reader.smembers("unordered") == members, f"replica orders seen: {len(orders)}"
    assert len(reader.hgetall("fields")) == 40
    # A small hash keeps insertion order in Redis; HKEYS and HVALS pair up, so a
    # quorum answers a replica's own bytes, not the sorted form it compared.
    writer.hset("small", mapping={"f2": "two", "f1": "one", "f3": "three"})
    settle(c3)
    assert reader.hkeys("small") == [b"f2", b"f1", b"f3"]
    assert reader.hvals("small") == [b"two", b"one", b"three"]
    assert reader.srandmember("unordered") in members
    assert set(reader.srandmember("unordered", 5)) <= members


@integration
def test_spop_and_xadd_leave_every_replica_identical(c3):
    """SPOP picks members at random and XADD * makes a time-based ID: run on every
    replica independently, replicas would diverge. dyno runs them once and
    replicates what they did."""
    client = c3.nodes[0].client()
    client.sadd("pool", *range(50))
    popped = set(client.spop("pool", 10)) | {client.spop("pool")}
    assert len(popped) == 11
    ids = [client.xadd("events", {"n": i}) for i in range(5)]
    client.xadd("events", {"n": "trimmed"}, maxlen=3, approximate=False)
    settle(c3)
    sets = [frozenset(redis_of(n).smembers("pool")) for n in c3.nodes]
    assert len(set(sets)) == 1 and len(sets[0]) == 39 and not popped & sets[0]
    streams = [redis_of(n).xrange("events") for n in c3.nodes]
    assert all(stream == streams[0] for stream in streams) and len(streams[0]) == 3
    assert all(entry_id in {e[0] for e in streams[0]} for entry_id in ids[-2:])


@integration
def test_pfcount_leaves_every_replica_identical(c3, redis_server):
    """PFCOUNT of one key caches the count in the key's header (Redis propagates it
    for that reason). Run on one replica only, the others would keep the stale
    header, and GET or DUMP through another rack would not give Redis's bytes."""
    plain = redis.Redis(*redis_server.addr)
    a, b, _ = c3.nodes
    for client in (plain, a.client()):
        client.pfadd("hll", "x", "y")
        assert client.pfcount("hll") == 2
        client.pfadd("{h}1", "z")
        assert client.pfcount("{h}1", "hll") == 3  # a union: no key changes
    settle(c3)
    expected = plain.get("hll")
    assert [redis_of(n).get("hll") for n in c3.nodes] == [expected] * 3
    assert b.client().get("hll") == expected
