"""Versions (dyno.versions): the hybrid logical clock, the version encoding, the
stamp, and the Lua that applies a replayed write only where it is newer."""

from __future__ import annotations

import socket

import hiredis
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from dyno import resp, versions
from dyno.versions import HLC, make_version, parse_version

millis = st.integers(0, 2**48 - 2)
micros = st.integers(0, (2**48 - 2) * 1000)  # the wall clock an HLC reads
before_the_end = st.integers(0, (2**48 - 100) * 1000)  # with room for a later reading (year 10889)


class Clock:
    """A wall clock that reads the values it is given, jumps backwards included."""

    def __init__(self, readings):
        self.readings = list(readings)
        self.last = self.readings[0]

    def __call__(self) -> int:
        if self.readings:
            self.last = self.readings.pop(0)
        return self.last


@given(readings=st.lists(micros, min_size=1, max_size=60), node=st.integers(0, 2**32 - 1))
def test_readings_only_go_forward_whatever_the_wall_clock_does(readings, node):
    hlc = HLC(node, Clock(readings))
    made = [hlc.now() for _ in readings]
    assert made == sorted(made) and len(set(made)) == len(made)
    for version, wall in zip(made, readings):
        ms, _, who = parse_version(version)
        assert who == node
        assert ms >= wall // 1000  # never behind the wall clock it read


@given(readings=st.lists(micros, min_size=1, max_size=20), seen=st.lists(millis, min_size=1, max_size=20),
       logical=st.integers(0, 0xFFFE))
def test_a_reading_orders_after_every_version_observed(readings, seen, logical):
    hlc = HLC(1, Clock(readings))
    for ms in seen:
        other = make_version(ms, logical, 2)
        hlc.observe(other)
        assert hlc.now()[:16] > other[:16]


@given(first=before_the_end, gap=st.integers(1, 5000), a=st.integers(0, 2**32 - 1), b=st.integers(0, 2**32 - 1),
       earlier=st.integers(0, 64))
def test_a_write_that_began_a_microsecond_later_has_the_newer_version_whatever_the_node_ids(
        first, gap, a, b, earlier):
    # Two nodes of one host: node a made `earlier` versions in its microsecond, the
    # client got the last one's acknowledgement and wrote through node b at least a
    # microsecond later. Node b's version must win, even in the same millisecond.
    one = HLC(a, lambda: first)
    for _ in range(earlier):
        one.now()
    acknowledged = one.now()
    later = HLC(b, lambda: first + gap).now()
    assert acknowledged < later


@given(wall=micros, a=st.integers(0, 2**32 - 1), b=st.integers(0, 2**32 - 1))
def test_two_nodes_writing_in_the_same_microsecond_are_ordered_by_node_id(wall, a, b):
    first, second = HLC(a, lambda: wall).now(), HLC(b, lambda: wall).now()
    assert (first < second) == (a < b) and (first == second) == (a == b)


def test_65536_versions_in_one_millisecond_borrow_the_next():
    hlc = HLC(3, lambda: 1_000_999)  # the last microsecond of millisecond 1000
    made = [hlc.now() for _ in range(0x10002)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert parse_version(made[0])[:2] == (1000, 999 * 65)
    assert parse_version(made[-1])[0] == 1001


def test_the_microsecond_is_in_the_logical_field():
    assert parse_version(HLC(7, lambda: 5_000_123).now()) == (5000, 123 * 65, 7)


def test_not_a_version():
    with pytest.raises(ValueError):
        parse_version(b"nope")
    hlc = HLC(1, lambda: 5_000)
    hlc.observe(b"garbage")  # ignored
    assert parse_version(hlc.now())[0] == 5


@settings(max_examples=50)
@given(keys=st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=10), db=st.integers(1, 15))
def test_a_stamp_says_its_version_and_keys(keys, db):
    version = make_version(123, 4, 5)
    stamp = versions.stamp(keys, version, db)
    reader = hiredis.Reader()
    reader.feed(stamp)
    parsed = [reader.gets() for _ in range(versions.STAMP_REPLIES)]
    assert reader.gets() is False
    assert parsed[0] == [b"SELECT", str(db).encode()]
    assert versions.stamp_version(parsed) == (version, keys)


# -- the Lua, against a real Redis ----------------------------------------------------


@pytest.fixture
def r(redis_server) -> redis.Redis:
    client = redis_server.client()
    client.flushall()
    return client


@pytest.fixture
def recorded(redis_server) -> redis.Redis:
    """The same Redis, its versions database."""
    return redis_server.client(db=versions.DEFAULT_DB)


def apply_segment(r: redis.Redis, version: bytes, writes: list[tuple[list, list]]) -> list:
    args: list = []
    for argv, keys in writes:
        args += [len(keys), *keys, len(argv), *argv]
    keys = list(dict.fromkeys(key for _, write_keys in writes for key in write_keys))
    return r.eval(versions.APPLY_SEGMENT_IF_NEWER, len(keys), *keys, version, versions.DEFAULT_DB, *args)


def apply(r: redis.Redis, version: bytes, argv: list, keys: list) -> object:
    (reply,) = apply_segment(r, version, [(argv, keys)])
    return reply


@pytest.mark.integration
def test_a_replayed_write_runs_once_and_never_over_a_newer_one(r, recorded):
    v1, v2 = make_version(1000, 0, 1), make_version(2000, 0, 1)
    assert apply(r, v1, ["INCR", "n"], ["n"]) == 1
    assert apply(r, v1, ["INCR", "n"], ["n"]) == b"SKIPPED"  # the same write again
    assert apply(r, v2, ["APPEND", "s", "x"], ["s"]) == 1
    assert apply(r, v1, ["SET", "s", "older"], ["s"]) == b"SKIPPED"
    assert r.get("n") == b"1" and r.get("s") == b"x"
    assert recorded.mget("n", "s") == [v1, v2]
    assert r.dbsize() == 2  # the versions are not in database 0


@pytest.mark.integration
def test_a_segment_that_writes_a_key_twice_replays_both_writes_once(r, recorded):
    """SET k then INCR k in one stamped part: staleness is decided before either runs,
    so both run on a replica that missed them, and neither on one that has them."""
    v1, v2 = make_version(1000, 0, 1), make_version(2000, 0, 1)
    segment = [(["SET", "k", "1"], ["k"]), (["INCR", "k"], ["k"]), (["APPEND", "s", "a"], ["s"]),
               (["APPEND", "s", "b"], ["s"]), (["RPUSH", "{t}l", "x"], ["{t}l"]),
               (["RPOPLPUSH", "{t}l", "{t}m"], ["{t}l", "{t}m"])]
    assert apply_segment(r, v1, segment) == [b"OK", 2, 1, 2, 1, b"x"]
    assert apply_segment(r, v1, segment) == [b"SKIPPED"] * 6  # replayed again: nothing
    assert r.get("k") == b"2" and r.get("s") == b"ab" and r.lrange("{t}m", 0, -1) == [b"x"]
    assert recorded.mget("k", "s", "{t}l", "{t}m") == [v1] * 4
    # a newer write of s arrived first: s's writes are skipped, k's run
    r.delete("k")
    recorded.delete("k")
    recorded.set("s", v2)
    assert apply_segment(r, v1, segment[:4]) == [b"OK", 2, b"SKIPPED", b"SKIPPED"]
    assert r.get("s") == b"ab" and recorded.get("s") == v2


@pytest.mark.integration
def test_a_stamped_batch_records_every_key_it_wrote(r, recorded):
    version = make_version(5000, 0, 9)
    host, port = r.connection_pool.connection_kwargs["host"], r.connection_pool.connection_kwargs["port"]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n" + versions.stamp([b"a", b"b"], version)
                     + b"*1\r\n$6\r\nDBSIZE\r\n")
        reader = hiredis.Reader()
        replies: list = []
        while len(replies) < 5:
            reader.feed(sock.recv(4096))
            while (reply := reader.gets()) is not False:
                replies.append(reply)
    assert replies == [b"OK"] * 4 + [1]  # and the connection is back on database 0
    assert r.dbsize() == 1  # database 0: the data only, and the connection is back on it
    assert recorded.mget("a", "b") == [version, version]


def _run_raw(r: redis.Redis, payload: bytes, count: int) -> list:
    host, port = r.connection_pool.connection_kwargs["host"], r.connection_pool.connection_kwargs["port"]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(payload)
        reader = hiredis.Reader()
        replies: list = []
        while len(replies) < count:
            reader.feed(sock.recv(65536))
            while (reply := reader.gets()) is not False:
                replies.append(reply)
    return replies


@pytest.mark.integration
@pytest.mark.parametrize("routed", [False, True])
def test_a_hint_with_two_writes_of_one_key_replays_both_once(r, recorded, routed):
    from dyno.handoff import replay_payload

    version = make_version(7000, 0, 3)
    writes = [[b"SET", b"k", b"1"], [b"INCR", b"k"], [b"SET", b"other", b"x"], [b"MULTI"],
              [b"APPEND", b"s", b"a"], [b"APPEND", b"s", b"b"], [b"EXEC"]]
    hint = b"".join(map(resp.encode_command, writes)) + versions.stamp([b"k", b"k", b"other", b"s", b"s"], version)
    payload, count = replay_payload(hint, versions.DEFAULT_DB, routed)
    assert count == (3 if routed else 1)  # routed: {k}, {other}, {s}
    for _ in range(2):  # the second replay finds every version recorded: nothing runs
        _run_raw(r, payload, count)
        assert r.mget("k", "other", "s") == [b"2", b"x", b"ab"]
    assert recorded.mget("k", "other", "s") == [version] * 3


@pytest.mark.integration
def test_a_write_begun_after_another_was_acknowledged_has_the_larger_version(cluster_factory):
    # Two nodes of one host, the writes a client makes one after another through
    # alternate nodes: each write's version must be larger than the one acknowledged
    # before it began, even when both fall in one millisecond and the first node's id
    # is the larger (a millisecond clock ordered such writes by node id: a DC_QUORUM read
    # could then return the older value; the nemesis test caught it once in CI).
    cluster = cluster_factory(racks=2)
    names = {n.name: f"{n.host}:{n.dyn_port}" for n in cluster.nodes}
    first, second = sorted(cluster.nodes, key=lambda n: versions.node_id(names[n.name]), reverse=True)
    clients = [first.client(single_connection_client=True), second.client(single_connection_client=True)]
    keys = [f"order{i}" for i in range(400)]
    for i, key in enumerate(keys):
        assert clients[i % 2].set(key, i) is True
    stamped = first.redis_client(db=15)
    made = [parse_version(v) for v in stamped.mget(keys)]
    # the clock ids of each node's processes (with workers, each worker's own)
    ids = [{versions.node_id(name)} | {versions.node_id(f"{name}/w{w}") for w in range(8)}
           for name in (names[first.name], names[second.name])]
    assert all(made[i][2] in ids[i % 2] for i in range(len(keys)))
    out_of_order = [(keys[i], made[i], made[i + 1]) for i in range(len(made) - 1) if made[i] >= made[i + 1]]
    assert not out_of_order, f"{len(out_of_order)} writes ordered before the write acknowledged ahead of them"
