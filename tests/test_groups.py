"""Consumer groups through dyno (dyno.groups): XREADGROUP (BLOCK too), XCLAIM and
XAUTOCLAIM run on the keys' watch replica, and what they did reaches the other
replicas so that every rack keeps the same group state.

First the pure core against two real Redis servers: a command runs on one (with its
followups, as the session sends them), its ``effect`` on the other, and the two must
then hold the same groups (hypothesis over sequences of stream commands). Then a
3-rack cluster: replies as plain Redis's, blocking reads woken through another node,
and consumers on every node sharing a group with no entry delivered twice."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import hiredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import support
from differential import RespConnection
from dyno import groups

integration = pytest.mark.integration


# -- the state a group has, as every replica must agree on it -------------------------------------

def group_state(client: redis.Redis, key: str) -> dict:
    """XINFO GROUPS, each group's consumers (name, pending) and its PEL (id, consumer,
    delivery count); idle times are left out (each Redis reads its own clock)."""
    try:
        infos = client.xinfo_groups(key)
    except redis.ResponseError:
        return {}
    state = {}
    for info in infos:
        name = info["name"]
        consumers = [(c["name"], c["pending"]) for c in client.xinfo_consumers(key, name)]
        pel = [(p["message_id"], p["consumer"], p["times_delivered"])
               for p in client.xpending_range(key, name, "-", "+", 1000)]
        state[name] = (info, consumers, pel)
    return state


def delivery_times(client: redis.Redis, key: str, group: str) -> dict:
    """id -> when it was delivered (ms, by this Redis's clock now less its idle time)."""
    now_s, now_us = client.time()
    now = now_s * 1000 + now_us // 1000
    return {p["message_id"]: now - p["time_since_delivered"]
            for p in client.xpending_range(key, group, "-", "+", 1000)}


# -- the pure core against real Redis ----------------------------------------------------------

def test_which_commands_run_on_the_watch_replica():
    read = [b"XREADGROUP", b"GROUP", b"g", b"c", b"BLOCK", b"0", b"STREAMS", b"k", b">"]
    assert groups.on_watch_replica(b"xreadgroup", read) and groups.blocks(read)
    assert not groups.blocks([b"XREADGROUP", b"GROUP", b"g", b"c", b"STREAMS", b"block", b">"])
    assert groups.on_watch_replica(b"xgroup|create", [b"XGROUP", b"CREATE", b"k", b"g", b"$", b"MKSTREAM"])
    assert not groups.on_watch_replica(b"xgroup|create", [b"XGROUP", b"CREATE", b"k", b"g", b"0"])
    assert not groups.on_watch_replica(b"xack", [b"XACK", b"k", b"g", b"1-0"])
    assert groups.followups(read) == [[b"XINFO", b"GROUPS", b"k"], [b"TIME"]]
    assert groups.effect(read, [None, [], [b"1", b"0"]]) == []  # timed out: nothing anywhere
    assert groups.written_keys([[b"XGROUP", b"CREATECONSUMER", b"k", b"g", b"c"], [b"XCLAIM", b"k", b"g"],
                                [b"EVAL", b"...", b"1", b"k"], [b"XADD", b"j"]]) == [b"k", b"j"]


@pytest.fixture(scope="module")
def redis_pair(tmp_path_factory):
    servers = [support.RedisServer(tmp_path_factory.mktemp(f"redis{i}")) for i in range(2)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def _run_with_effect(ran: RespConnection, other: RespConnection, argv: list[bytes]) -> object:
    """``argv`` and its followups on ``ran``, as one pipeline (the session's request);
    its effect on ``other``. Returns the command's parsed reply."""
    ran.send([argv, *groups.followups(argv)])
    replies = [ran.read_reply()[1] for _ in range(1 + len(groups.followups(argv)))]
    reply = replies[0]
    if not isinstance(reply, hiredis.ReplyError):
        effect = groups.effect(argv, replies)
        if effect:
            other.send(effect)
            for _ in effect:
                answer = other.read_reply()[1]
                assert not isinstance(answer, hiredis.ReplyError), (effect, answer)
    return reply


CONSUMERS = [b"c1", b"c2"]
STREAMS = [b"{s}a", b"{s}b"]
stream = st.sampled_from(STREAMS)
consumer = st.sampled_from(CONSUMERS)
entry_id = st.integers(1, 30).map(lambda n: b"%d-1" % n)


def _read(draw_count, noack, history, keys):
    argv = [b"XREADGROUP", b"GROUP", b"g", b"?"]
    if draw_count is not None:
        argv += [b"COUNT", b"%d" % draw_count]
    if noack:
        argv.append(b"NOACK")
    return argv + [b"STREAMS", *keys, *([b"0" if history else b">"] * len(keys))]


group_command = st.one_of(
    st.builds(lambda c, n, noack, history, keys: [*_read(n, noack, history, keys)[:3], c,
                                                  *_read(n, noack, history, keys)[4:]],
              consumer, st.none() | st.integers(1, 4), st.booleans(), st.booleans(),
              st.lists(stream, min_size=1, max_size=2, unique=True)),
    st.builds(lambda k, c, idle, ids, justid, force, retry: [
        b"XCLAIM", k, b"g", c, idle, *ids, *([b"JUSTID"] if justid else []), *([b"FORCE"] if force else []),
        *([b"RETRYCOUNT", b"%d" % retry] if retry is not None else []), b"IDLE", b"5000"],
        stream, consumer, st.sampled_from([b"0", b"3600000"]), st.lists(entry_id, min_size=1, max_size=3),
        st.booleans(), st.booleans(), st.none() | st.integers(0, 9)),
    st.builds(lambda k, c, count, justid: [b"XAUTOCLAIM", k, b"g", c, b"0", b"0-0", b"COUNT", b"%d" % count,
                                           *([b"JUSTID"] if justid else [])],
              stream, consumer, st.integers(1, 5), st.booleans()),
    st.builds(lambda k: [b"XGROUP", b"SETID", k, b"g", b"$"], stream),
)
plain_command = st.one_of(
    st.builds(lambda k, ids: [b"XACK", k, b"g", *ids], stream, st.lists(entry_id, min_size=1, max_size=3)),
    st.builds(lambda k, i: [b"XDEL", k, i], stream, entry_id),
    st.builds(lambda k, n: [b"XADD", k, b"*", b"f", b"%d" % n], stream, st.integers(0, 9)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["before", "after", "late"]), group_command, plain_command),
                min_size=4, max_size=25))
def test_an_effect_leaves_the_other_redis_with_the_same_groups(redis_pair, steps):
    """The watch replica (``ran``) runs each group command with its followups; the other
    gets its effect; plain writes go to both, before or after it, or (``late``) to the
    other only after the effect (an XDEL through another node that reaches it late).
    Their groups must then be the same: XINFO GROUPS (last-delivered id, entries-read,
    lag), consumers, the PEL with its delivery counts, and delivery times within the
    few ms the two replies are apart."""
    ran, other = (RespConnection(server.addr) for server in redis_pair)
    try:
        for conn in (ran, other):
            conn.call("FLUSHALL")
            for key in STREAMS:
                for n in range(1, 11):
                    conn.call("XADD", key, b"%d-1" % n, "f", "v")
                conn.call("XGROUP", "CREATE", key, "g", "0")
        for order, group_argv, plain_argv in steps:
            if order == "before":
                _plain_on_both(ran, other, plain_argv)
                _run_with_effect(ran, other, group_argv)
            elif order == "after":
                _run_with_effect(ran, other, group_argv)
                _plain_on_both(ran, other, plain_argv)
            elif plain_argv[0] == b"XDEL":  # (a late XADD or XACK: the limits in docs/design-notes.md)
                late = _plain(ran, plain_argv)
                _run_with_effect(ran, other, group_argv)
                other.call(*late)
        clients = [redis.Redis(*server.addr) for server in redis_pair]
        for key in STREAMS:
            assert group_state(clients[0], key.decode()) == group_state(clients[1], key.decode())
            times = [delivery_times(c, key.decode(), "g") for c in clients]
            assert times[0].keys() == times[1].keys()
            for entry in times[0]:
                assert abs(times[0][entry] - times[1][entry]) <= 50, (entry, times)
    finally:
        ran.close()
        other.close()


def test_setid_dollar_while_an_xadd_is_on_its_way(redis_pair):
    """XGROUP SETID ... $ runs on the watch replica; the others get the ID it chose,
    not their own last ID (an XADD through another node has not reached them yet)."""
    ran, other = (RespConnection(server.addr) for server in redis_pair)
    try:
        for conn in (ran, other):
            conn.call("FLUSHALL")
            conn.call("XGROUP", "CREATE", "{s}a", "g", "$", "MKSTREAM")
        late = _plain(ran, [b"XADD", b"{s}a", b"*", b"f", b"w"])
        assert _run_with_effect(ran, other, [b"XGROUP", b"SETID", b"{s}a", b"g", b"$"]) == b"OK"
        other.call(*late)
        clients = [redis.Redis(*server.addr) for server in redis_pair]
        assert group_state(clients[0], "{s}a") == group_state(clients[1], "{s}a")
        assert clients[1].xinfo_groups("{s}a")[0]["last-delivered-id"] == late[2]
    finally:
        ran.close()
        other.close()


def _plain_on_both(ran: RespConnection, other: RespConnection, argv: list[bytes]) -> None:
    other.call(*_plain(ran, argv))


def _plain(ran: RespConnection, argv: list[bytes]) -> list[bytes]:
    """A plain write run on ``ran``; what the other replicas run (an XADD with the ID
    the first chose)."""
    raw = ran.call(*argv)
    if argv[0] == b"XADD" and raw[:1] == b"$":
        return [argv[0], argv[1], raw.split(b"\r\n")[1], *argv[3:]]
    return argv


def test_setid_forward_never_moves_a_group_back(redis_server):
    client = redis_server.client()
    for n in range(1, 4):
        client.xadd("s", {"f": "v"}, id=f"{n}-0")
    client.xgroup_create("s", "g", id="0")
    setid = groups.SETID_FORWARD
    assert client.eval(setid, 1, "s", "g", "3-0", "3") == 1
    assert client.eval(setid, 1, "s", "g", "2-0", "2") == 0  # a later effect came first
    assert client.eval(setid, 1, "s", "g", "10-0", "") == 1 and client.xinfo_groups("s")[0]["entries-read"] is None
    assert client.eval(setid, 1, "s", "g", "9-5", "") == 0
    assert client.eval(setid, 1, "s", "nogroup", "9-5", "") == 0
    assert client.xinfo_groups("s")[0]["last-delivered-id"] == b"10-0"


# -- through a cluster ------------------------------------------------------------------------

def _in_flight(node) -> int:
    return node.client().info("dyno")["peer_requests_in_flight"]


def _settled(cluster) -> None:
    support.wait_for(lambda: all(_in_flight(n) == 0 for n in cluster.nodes), 10, "replica writes in flight")


def _racks_agree(cluster, key: str) -> None:
    _settled(cluster)
    states = [group_state(n.redis_client(), key) for n in cluster.nodes]
    assert states[0], f"no group on {key}"
    for rack, state in enumerate(states[1:], start=2):
        assert state == states[0], _difference(key, states[0], state, rack)


def _difference(key: str, first: dict, other: dict, rack: int) -> str:
    """What rack ``rack``'s groups of ``key`` have that rack 1's do not, and the reverse."""
    lines = [f"{key}: rack 1 and rack {rack} differ"]
    for name in sorted(set(first) | set(other)):
        a, b = first.get(name, ({}, [], [])), other.get(name, ({}, [], []))
        if a[0] != b[0]:
            lines.append(f"  {name!r} XINFO GROUPS: {a[0]} vs {b[0]}")
        if a[1] != b[1]:
            lines.append(f"  {name!r} consumers: {a[1]} vs {b[1]}")
        only_first, only_other = sorted(set(a[2]) - set(b[2])), sorted(set(b[2]) - set(a[2]))
        if only_first or only_other:
            lines.append(f"  {name!r} PEL only on rack 1: {only_first}; only on rack {rack}: {only_other}")
    return "\n".join(lines)


SEQUENCE_PLAIN = "plain"  # sent through node1 (whose Redis is the watch replica), as every write
SEQUENCE = [
    *[(SEQUENCE_PLAIN, "XADD", "{g}s", f"{n}-1", "f", f"v{n}") for n in range(1, 7)],
    (SEQUENCE_PLAIN, "XGROUP", "CREATE", "{g}s", "grp", "0"),
    ("XREADGROUP", "GROUP", "grp", "c1", "COUNT", "2", "STREAMS", "{g}s", ">"),
    ("XREADGROUP", "GROUP", "grp", "c2", "NOACK", "COUNT", "1", "STREAMS", "{g}s", ">"),
    ("XREADGROUP", "GROUP", "grp", "c3", "STREAMS", "{g}s", ">"),
    ("XREADGROUP", "GROUP", "grp", "c4", "STREAMS", "{g}s", ">"),  # nothing new: nil, no consumer
    ("XREADGROUP", "GROUP", "grp", "c1", "STREAMS", "{g}s", "0"),  # history: delivered once more
    (SEQUENCE_PLAIN, "XACK", "{g}s", "grp", "1-1"),
    ("XCLAIM", "{g}s", "grp", "c5", "0", "2-1", "4-1"),
    ("XCLAIM", "{g}s", "grp", "c5", "3600000", "5-1"),  # too young: not claimed
    ("XCLAIM", "{g}s", "grp", "c6", "0", "5-1", "JUSTID", "IDLE", "5000", "RETRYCOUNT", "7"),
    (SEQUENCE_PLAIN, "XDEL", "{g}s", "6-1"),
    ("XAUTOCLAIM", "{g}s", "grp", "c7", "0", "0-0", "COUNT", "10"),
    ("XREADGROUP", "GROUP", "grp", "c1", "BLOCK", "100", "STREAMS", "{g}s", ">"),  # times out: nil
    ("XREADGROUP", "GROUP", "nogroup", "c1", "STREAMS", "{g}s", ">"),
    (SEQUENCE_PLAIN, "XADD", "{g}t", "1-1", "f", "t1"),
    (SEQUENCE_PLAIN, "XGROUP", "CREATE", "{g}t", "grp", "0"),
    (SEQUENCE_PLAIN, "XADD", "{g}s", "7-1", "f", "v7"),
    ("XREADGROUP", "GROUP", "grp", "c8", "COUNT", "5", "STREAMS", "{g}s", "{g}t", ">", ">"),
    ("XGROUP", "CREATE", "{g}u", "grp", "$", "MKSTREAM"),  # (`$`: the watch replica's last ID)
    (SEQUENCE_PLAIN, "XADD", "{g}u", "1-1", "f", "u1"),
    ("XGROUP", "CREATE", "{g}u", "late", "$"),
    ("XGROUP", "SETID", "{g}s", "grp", "$"),
    ("XGROUP", "CREATE", "{g}u", "late", "$"),  # BUSYGROUP
    ("XGROUP", "HELP"),
    (SEQUENCE_PLAIN, "XPENDING", "{g}s", "grp"),
    (SEQUENCE_PLAIN, "XINFO", "GROUPS", "{g}s"),
    (SEQUENCE_PLAIN, "XINFO", "GROUPS", "{g}t"),
]


@integration
@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("through", [0, 2])
def test_group_commands_answer_as_redis_and_leave_every_rack_the_same(cluster_factory, redis_server,
                                                                       through, protocol):
    """Group commands through node1 (its Redis is the keys' watch replica) and through
    node3 (its session lives on node1); writes through node1, so that each has reached
    the watch replica when the next command runs, as on one Redis."""
    cluster = cluster_factory(racks=3, hash_tag="{}")
    plain = RespConnection(redis_server.addr)
    writer, grouped = RespConnection(cluster[0].addr), RespConnection(cluster[through].addr)
    try:
        for conn in (plain, writer, grouped):
            conn.call("HELLO", protocol)
        for step in SEQUENCE:
            argv = step[1:] if step[0] == SEQUENCE_PLAIN else step
            conn = writer if step[0] == SEQUENCE_PLAIN else grouped
            assert conn.call(*argv) == plain.call(*argv), argv
    finally:
        for conn in (plain, writer, grouped):
            conn.close()
    _racks_agree(cluster, "{g}s")
    _racks_agree(cluster, "{g}t")
    _racks_agree(cluster, "{g}u")
    assert group_state(cluster[1].redis_client(), "{g}s") == group_state(redis_server.client(), "{g}s")


def _blocked_read_woken_by(cluster, stream: str, reader, writer) -> bytes:
    """XREADGROUP BLOCK 0 through ``reader`` until ``writer`` XADDs: the entry's id."""
    got: list = []
    thread = threading.Thread(target=lambda: got.append(
        reader.xreadgroup("g", "w", {stream: ">"}, count=5, block=0)))
    thread.start()
    try:
        support.wait_for(lambda: any(c["cmd"] == "xreadgroup" for n in cluster.nodes
                                     for c in n.redis_client().client_list()), 5, "the XREADGROUP to wait in a Redis")
        entry = writer.xadd(stream, {"k": "v"})
    finally:
        thread.join(10)
    assert got == [[[stream.encode(), [(entry, {b"k": b"v"})]]]]
    return entry


def _pending_everywhere(cluster, stream: str, count: int) -> None:
    support.wait_for(lambda: all(n.redis_client().xpending(stream, "g")["pending"] == count for n in cluster.nodes),
                     10, f"every replica to have {count} delivery pending")


@integration
def test_xreadgroup_block_waits_for_an_xadd_through_another_node(cluster_factory):
    cluster = cluster_factory(racks=3, hash_tag="{}")
    for stream in ("{b}s", "{b}t"):
        cluster[0].client().xgroup_create(stream, "g", id="$", mkstream=True)
    reader = cluster[2].client(socket_timeout=10)
    _blocked_read_woken_by(cluster, "{b}s", reader, cluster[1].client())
    started = time.monotonic()
    assert reader.xreadgroup("g", "w", {"{b}s": ">"}, block=300) == []  # the time-out: nothing new
    assert time.monotonic() - started >= 0.25
    # The replica that served the read has the delivery pending. (A third replica may get
    # the read's effect before the XADD that went through the other node, and then
    # misses the pending entry until `dyno repair`: README, "Stream consumer groups".)
    support.wait_for(lambda: any(n.redis_client().xpending("{b}s", "g")["pending"] == 1 for n in cluster.nodes),
                     10, "the watch replica to have the delivery pending")
    # An XADD through the reader's node reaches every replica before the read's effect
    # (one FIFO link per peer): every replica ends with the same group state.
    _blocked_read_woken_by(cluster, "{b}t", reader, cluster[2].client())
    _pending_everywhere(cluster, "{b}t", 1)
    _racks_agree(cluster, "{b}t")


@integration
def test_keys_of_different_owners_get_crossslot(cluster_factory):
    cluster = cluster_factory(racks=1, nodes_per_rack=2, hash_tag="{}")
    client = cluster[0].client()
    keys = [f"k{i}" for i in range(20)]  # with two nodes in the rack: several owners
    with pytest.raises(redis.ResponseError, match="hash to the same slot"):
        client.xreadgroup("g", "c", dict.fromkeys(keys, ">"), block=100)
    with pytest.raises(redis.ResponseError, match="hash to the same slot"):
        client.xreadgroup("g", "c", dict.fromkeys(keys, ">"))
    client.xgroup_create("{one}a", "g", mkstream=True)
    client.xgroup_create("{one}b", "g", mkstream=True)
    client.xadd("{one}b", {"f": "v"}, id="1-0")
    assert client.xreadgroup("g", "c", {"{one}a": ">", "{one}b": ">"}, block=100) == [
        [b"{one}b", [(b"1-0", {b"f": b"v"})]]]
    with pytest.raises(redis.ResponseError, match="each replica would choose"):
        pipe = client.pipeline()  # a transaction: refused while queued, nothing runs
        pipe.xreadgroup("g", "c", {"{one}a": ">"})
        pipe.execute()


@integration
def test_consumers_on_every_node_share_a_group_and_every_rack_agrees(cluster_factory):
    """Two consumers per node read two streams (one owner, hash tags) fed by producers
    through node2 and node3, with XREADGROUP BLOCK; they ack every other entry. Every
    entry is delivered to the group once, and after `dyno repair` every rack's Redis
    holds the same groups (XINFO GROUPS, consumers, the PEL)."""
    cluster = cluster_factory(racks=3, hash_tag="{}")
    streams = ["{q}a", "{q}b"]
    for key in streams:
        cluster[0].client().xgroup_create(key, "g", id="$", mkstream=True)
    _settled(cluster)
    per_stream = 60
    delivered: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def consume(node, name: str) -> None:
        client = node.client(socket_timeout=10)
        try:
            while not stop.is_set():
                for key, entries in client.xreadgroup("g", name, dict.fromkeys(streams, ">"), count=3, block=200):
                    key = key.decode()
                    for entry_id, fields in entries:
                        with lock:
                            delivered.append((key, entry_id))
                        if int(fields[b"n"]) % 2 == 0:
                            client.xack(key, "g", entry_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def produce(node, key: str) -> None:
        client = node.client()
        try:
            for n in range(per_stream):
                client.xadd(key, {"n": n})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    consumers = [threading.Thread(target=consume, args=(node, f"{node.name}-{i}"))
                 for node in cluster.nodes for i in range(2)]
    producers = [threading.Thread(target=produce, args=(cluster[1], "{q}a")),
                 threading.Thread(target=produce, args=(cluster[2], "{q}b"))]
    for thread in consumers + producers:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(delivered) < 2 * per_stream and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in consumers + producers:
            thread.join(15)
    assert not errors, errors
    assert len(delivered) == len(set(delivered)) == 2 * per_stream  # each entry once
    # An entry read before its XADD (sent through another node) reached a third replica
    # is not pending there (XCLAIM FORCE ignores what the stream lacks), and an XACK may
    # beat a read's effect to a replica: those converge by repair (docs/design-notes.md).
    _settled(cluster)
    done = subprocess.run([sys.executable, "-m", "dyno", "repair", "--node",
                           f"{cluster[0].host}:{cluster[0].stats_port}"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for key in streams:
        _racks_agree(cluster, key)
        (info, consumers_, pel), = group_state(cluster[0].redis_client(), key).values()
        assert info["pending"] == len(pel) <= per_stream // 2


@integration
def test_reads_that_show_idle_times_are_answered_at_quorum(cluster_factory):
    """XPENDING's extended form and XINFO CONSUMERS carry each Redis's clock (idle
    times), which two replicas never quite share: one replica answers them, at every
    level, rather than a quorum that would report a disagreement."""
    cluster = cluster_factory(racks=3, hash_tag="{}", read_consistency="DC_QUORUM", write_consistency="DC_QUORUM")
    client = cluster[1].client()
    client.xgroup_create("{i}s", "g", mkstream=True)
    client.xadd("{i}s", {"f": "v"}, id="1-0")
    assert client.xreadgroup("g", "c", {"{i}s": ">"}) == [[b"{i}s", [(b"1-0", {b"f": b"v"})]]]
    _settled(cluster)
    for _ in range(30):
        (pending,) = client.xpending_range("{i}s", "g", "-", "+", 10)
        assert pending["message_id"] == b"1-0" and pending["times_delivered"] == 1
        (consumer,) = client.xinfo_consumers("{i}s", "g")
        assert consumer["name"] == b"c" and consumer["pending"] == 1
        assert client.xpending("{i}s", "g")["pending"] == 1  # (the summary has no times)
