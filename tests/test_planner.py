"""The planner (dyno.planner) against a simple model, on hypothesis-generated
batches over rings of 1-3 datacenters, 1-3 racks and 1-3 nodes per rack, with
random sets of nodes down.

For every request the model says, from the ring and the rules of DESIGN.md §4
(and nothing of the planner's): which replicas must get it at once, which are
kept in reserve, which node of another datacenter coordinates it there, and how
its reply is decided (one replica, a quorum, every datacenter's quorum, a merge of
parts, the node itself, an error now). The plan must say the same; and the parts
together must carry exactly the batch's requests (relative expiries made absolute),
each replica set's in the order the client sent them.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyno import commands as command_table
from dyno import resp, versions
from dyno.planner import EACH, LOCAL, ONE, QUORUM, Merge, Part, Plan, Planner
from dyno.ring import Ring, RingNode

KEYS = [b"k%d" % i for i in range(30)] + [b"{t}a", b"{t}b"]
NOW = 1_700_000_000_000
VERSION = versions.make_version(NOW, 7, 42)


@st.composite
def rings(draw) -> Ring:
    dcs = draw(st.integers(1, 3))
    racks = draw(st.integers(1, 3))
    per_rack = draw(st.integers(1, 3))
    nodes = []
    for dc in range(dcs):
        for rack in range(racks):
            # Each rack cuts the ring at its own random tokens.
            tokens = sorted(draw(st.sets(st.integers(0, 2**32 - 1), min_size=per_rack, max_size=per_rack)))
            for token in tokens:
                port = 9000 + len(nodes)
                nodes.append(RingNode(f"127.0.0.1:{port}", "127.0.0.1", port, f"dc{dc}", f"r{rack}", (token,)))
    local = draw(st.sampled_from(nodes))
    return Ring(nodes, local, draw(st.sampled_from(["murmur", "slot"])), b"{}")


def commands():
    key = st.sampled_from(KEYS)
    value = st.binary(min_size=1, max_size=3)
    return st.one_of(
        st.tuples(st.just(b"GET"), key),
        st.tuples(st.just(b"SET"), key, value),
        st.tuples(st.just(b"INCR"), key),
        st.tuples(st.just(b"SET"), key, value, st.just(b"EX"), st.just(b"100")),
        st.tuples(st.just(b"EXPIRE"), key, st.just(b"50")),
        st.lists(key, min_size=1, max_size=4).map(lambda ks: (b"MGET", *ks)),
        st.lists(st.tuples(key, value), min_size=1, max_size=3).map(
            lambda pairs: (b"MSET", *itertools.chain.from_iterable(pairs))),
        st.lists(key, min_size=1, max_size=3).map(lambda ks: (b"DEL", *ks)),
        st.tuples(st.just(b"HGETALL"), key),
        st.tuples(st.just(b"SRANDMEMBER"), key),
        st.tuples(st.just(b"SPOP"), key),
        st.tuples(st.just(b"SSCAN"), key, st.just(b"0")),
        st.tuples(st.just(b"RENAME"), st.just(b"{t}a"), st.sampled_from([b"{t}b", b"k1", b"k2"])),
        st.just((b"DBSIZE",)),
        st.just((b"PING",)),
        st.just((b"EVAL", b"return 1", b"0")),
        st.just((b"NOSUCHCOMMAND", b"x")),
    )


LEVELS = st.sampled_from(["DC_ONE", "DC_QUORUM", "DC_SAFE_QUORUM", "DC_EACH_SAFE_QUORUM"])


# -- the model ------------------------------------------------------------------------


def quorum(n: int) -> int:
    return n // 2 + 1


def model_part(ring: Ring, up, key: bytes, write: bool, level: str):
    """(kind, asked, reserve, coordinate) for a request on ``key``, from first principles."""
    replicas = ring.replicas(ring.token_of(key))
    local = [n for n in replicas if n.dc == ring.local.dc]  # this rack's first, then the others'
    remote_dcs = sorted({n.dc for n in replicas if n.dc != ring.local.dc})
    coordinate = []
    if write and level != "DC_EACH_SAFE_QUORUM":
        for dc in remote_dcs:
            there = [n for n in replicas if n.dc == dc]
            coordinate.append(next((n for n in there if up(n)), there[0]))
    if level == "DC_EACH_SAFE_QUORUM":
        return EACH, list(replicas), [], []
    if level == "DC_ONE":
        if write:  # every local replica, the first available answering
            first = next((n for n in local if up(n)), local[0])
            return ONE, [first] + [n for n in local if n is not first], [], coordinate
        first = next((n for n in replicas if up(n)), local[0])
        return ONE, [first], [n for n in replicas if n is not first], coordinate
    if write or len(local) < 3:
        return QUORUM, local, [], coordinate
    return QUORUM, "Q", local, coordinate  # a read asks Q first: checked apart


def absolute(ring: Ring, argv: list[bytes]) -> list[bytes]:
    """What the planner must send for a request (relative expiries made absolute,
    where there are replicas)."""
    name = argv[0].upper()
    if len(ring.nodes) == 1:
        return argv
    if name == b"SET" and len(argv) == 5:
        return [b"SET", argv[1], argv[2], b"PXAT", b"%d" % (NOW + 100_000)]
    if name == b"EXPIRE":
        return [b"PEXPIREAT", argv[1], b"%d" % (NOW + 50_000)]
    return argv


WRITES = {b"SET", b"INCR", b"MSET", b"DEL", b"SPOP", b"RENAME", b"EXPIRE"}


# -- the property ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(ring=rings(), data=st.data(), read_level=LEVELS, write_level=LEVELS,
       batch=st.lists(commands(), min_size=1, max_size=12))  # fmt: skip
def test_a_plan_sends_each_request_where_the_rules_say_and_decides_it_as_they_say(
        ring, data, read_level, write_level, batch):
    down = data.draw(st.sets(st.sampled_from([n.name for n in ring.nodes])))

    def up(node):
        return node.name not in down

    requests = [list(command) for command in batch]
    raw = b"".join(map(resp.encode_command, requests))
    planner = Planner(ring, up, hash_tag=True, version=lambda: VERSION, versions_db=9)
    plan = as_plan(planner.plan(requests, raw, read_level, write_level, lambda: NOW), ring)
    size = plan.size
    assert 1 <= size <= len(requests)
    ends = [i for i, argv in enumerate(requests) if argv[0] in (b"HELLO", b"QUIT")]
    assert size == (ends[0] + 1 if ends else len(requests))
    sources = plan.sources if plan.sources is not None else [None] * size
    assert len(sources) == size
    carried = {}  # position -> (part, index in part)
    for part in plan.parts:
        positions = part.positions if part.positions is not None else list(range(size))
        sent = resp.RequestParser().feed(part.payload)
        check_stamp(ring, part, sent)
        sent = sent[: part.count]
        assert len(sent) == len(positions) == part.count
        for index, (position, argv) in enumerate(zip(positions, sent)):
            assert position not in carried, "a request carried twice"
            carried[position] = (part, index, argv)
    # Requests on the same keys go in the order the client sent them (a
    # sub-request of a merge stands where its request does).
    owner = {sub: position for position, source in enumerate(sources) if isinstance(source, Merge)
             for sub in source.parts}
    order = sorted(carried, key=lambda position: owner.get(position, position))
    for a, b in itertools.combinations(order, 2):
        part_a, part_b = carried[a][0], carried[b][0]
        if part_a is not part_b and _same_keys(carried[a][2], carried[b][2]):
            assert plan.parts.index(part_a) < plan.parts.index(part_b), (a, b)
    for position in range(size):
        argv = requests[position]
        name = argv[0].upper()
        source = sources[position]
        level = write_level if name in WRITES else read_level
        if len(ring.nodes) == 1:
            level = "DC_ONE"  # one replica: every level is decided by its reply
        if name == b"PING":
            assert source is LOCAL
            continue
        if name == b"NOSUCHCOMMAND":
            assert source.startswith(b"-ERR unknown command")
            continue
        if name == b"RENAME" and ring.replicas(ring.token_of(argv[1])) is not ring.replicas(ring.token_of(argv[2])):
            assert source.startswith(b"-CROSSSLOT")
            continue
        if name == b"DBSIZE":  # a part per node of this rack, summed
            assert isinstance(source, Merge)
            rack = ring.rack_nodes(ring.local.dc, ring.local.rack)
            subs = [carried[sub] for sub in source.parts]
            assert len(subs) == len(rack)
            assert {part.asked[0] for part, _, _ in subs} <= set(ring.nodes)
            continue
        if name in (b"MGET", b"MSET", b"DEL"):
            stride = 2 if name == b"MSET" else 1
            keys = argv[1::stride]
            sets = {id(ring.replicas(ring.token_of(k))) for k in keys}
            if len(sets) > 1:  # cut into a sub-command per replica set, merged
                assert isinstance(source, Merge)
                subs = [carried[sub][2] for sub in source.parts]
                assert sorted(k for sub in subs for k in sub[1::stride]) == sorted(keys)
                for sub_position in source.parts:
                    part, _, sub = carried[sub_position]
                    check_targets(ring, up, part, sub[1], name in WRITES, level)
                continue
        assert source is None, (argv, source)
        part, _, sent = carried[position]
        if name == b"EVAL":  # no key: this node answers
            assert part.asked == (ring.local,) and part.kind is ONE
            continue
        if name == b"SPOP":  # one replica runs it, the others get what it did
            replicas = ring.replicas(ring.token_of(argv[1]))
            assert part.kind is ONE and part.effect is not None
            assert {part.asked[0], *part.others} == set(replicas) and part.asked[0] not in part.others
            assert part.asked[0] == next((n for n in replicas if up(n)), replicas[0])
            continue
        if name == b"SSCAN":  # the replica the cursor names (cursor 0: the first available)
            replicas = ring.replicas(ring.token_of(argv[1]))
            assert part.kind is ONE and part.reserve == () and part.transform is not None
            assert part.asked == (next((n for n in replicas if up(n)), replicas[0]),)
            continue
        assert sent == absolute(ring, argv)
        if name in (b"SRANDMEMBER",):
            level = "DC_ONE"  # any replica's pick is right
        check_targets(ring, up, part, argv[1], name in WRITES, level)
        assert part.canonical == (name == b"HGETALL" and level != "DC_ONE")


def check_stamp(ring: Ring, part: Part, sent: list[list[bytes]]) -> None:
    """A write part of a key with several replicas ends with the stamp that records
    the batch's version for every key its writes name; nothing else is stamped."""
    replicated = len(ring.replicas(0)) > 1
    keyed = part.write and part.count and all(
        command_table.keys(command_table.resolve(argv), argv) for argv in sent[: part.count])
    if part.write and replicated and keyed and sent[0][0].upper() not in (b"FLUSHALL", b"FLUSHDB"):
        assert part.extra == versions.STAMP_REPLIES and part.version == VERSION
        assert len(sent) == part.count + part.extra
        version, keys = versions.stamp_version(sent[part.count:])
        assert version == VERSION and sent[part.count] == [b"SELECT", b"9"]
        named = [k for argv in sent[: part.count] for k in command_table.keys(command_table.resolve(argv), argv)]
        assert keys == named
    else:
        assert part.extra == 0 and len(sent) == part.count, (part, sent)


def test_writes_another_datacenter_hands_over_keep_their_version():
    """COORDINATE writes are stamped with the version their coordinator gave them,
    and not stamped at all if it gave none."""
    nodes = [RingNode(f"127.0.0.1:{9000 + i}", "127.0.0.1", 9000 + i, f"dc{i // 2}", f"r{i % 2}", (0,))
             for i in range(4)]
    ring = Ring(nodes, nodes[0], "murmur", b"{}")
    planner = Planner(ring, lambda node: True, version=lambda: b"0" * 24)
    requests = [[b"SET", b"a", b"1"], [b"INCR", b"b"]]
    raw = b"".join(map(resp.encode_command, requests))
    given = planner.plan(requests, raw, "DC_ONE", "DC_ONE", here_only=True, version=VERSION)
    assert given.version == VERSION and given.payload == raw + versions.stamp([b"a", b"b"], VERSION)
    none = planner.plan(requests, raw, "DC_ONE", "DC_ONE", here_only=True)
    assert none.version is None and none.payload == raw and none.extra == 0
    own = planner.plan(requests, raw, "DC_ONE", "DC_ONE")
    assert own.version == b"0" * 24 and own.coordinate


def test_segments_cut_a_payload_at_its_stamps():
    one = [[b"SET", b"a", b"1"], [b"INCR", b"b"]]
    two = [[b"DEL", b"c"]]
    stamp_a = versions.stamp([b"a", b"b"], VERSION)
    other = versions.make_version(NOW + 1, 0, 1)
    stamp_b = versions.stamp([b"c"], other)
    payload = (b"".join(map(resp.encode_command, one)) + stamp_a + b"".join(map(resp.encode_command, two))
               + stamp_b + resp.encode_command([b"SET", b"d", b"x"]))
    requests = resp.RequestParser().feed(payload)
    got = list(versions.segments(requests, payload))
    assert [(r, v) for r, _, v in got] == [(one, VERSION), (two, other), ([[b"SET", b"d", b"x"]], None)]
    assert [raw for _, raw, _ in got] == [b"".join(map(resp.encode_command, r)) for r, _, _ in got]


def _keys(argv: list[bytes]) -> set[bytes]:
    name = argv[0].upper()
    if name in (b"MGET", b"DEL"):
        return set(argv[1:])
    if name == b"MSET":
        return set(argv[1::2])
    if name == b"RENAME":
        return set(argv[1:3])
    if name in (b"DBSIZE", b"EVAL"):
        return set()
    return {argv[1]}


def _same_keys(a: list[bytes], b: list[bytes]) -> bool:
    return bool(_keys(a) & _keys(b))


def check_targets(ring: Ring, up, part: Part, key: bytes, write: bool, level: str) -> None:
    kind, asked, reserve, coordinate = model_part(ring, up, key, write, level)
    assert part.kind is kind and part.write is write and part.level == level
    assert list(part.coordinate) == coordinate
    if asked != "Q":
        assert list(part.asked) == asked
        if kind is ONE and not write:  # a read's fallbacks: every replica, in order
            assert [n for n in part.reserve if n is not part.asked[0]] == reserve
        else:
            assert list(part.reserve) == reserve
        return
    local = reserve
    needed = quorum(len(local))
    assert len(part.asked) == needed and set(part.asked) | set(part.reserve) == set(local)
    assert not set(part.asked) & set(part.reserve)
    if local[0].local:
        assert part.asked[0] is local[0]  # this node's own Redis, no hop
    available = [n for n in local if up(n) or n.local]
    if len(available) >= needed:  # nobody down is asked while enough are up
        assert all(up(n) or n.local for n in part.asked)


@pytest.mark.parametrize("level", ["DC_ONE", "DC_QUORUM"])
@settings(max_examples=100, deadline=None)
@given(ring=rings(), batch=st.lists(st.tuples(st.just(b"GET"), st.sampled_from(KEYS)), min_size=1, max_size=16),
       down=st.booleans())
def test_a_plain_batch_is_planned_as_the_general_planner_would(level, ring, batch, down):
    """The common case's shortcut (Planner.plain) makes the plan the general
    planner makes: the same parts, carrying the same requests (at DC_ONE, also
    when this node's own Redis is down and the read goes elsewhere)."""
    planner = Planner(ring, lambda node: not (down and node.local))
    requests = [list(command) for command in batch]
    raw = b"".join(map(resp.encode_command, requests))
    fast = as_plan(planner.plan(requests, raw, level, level, lambda: NOW), ring)
    general = as_plan(planner.plan(requests, None, level, level, lambda: NOW), ring)
    assert [p.describe() for p in _normal(fast)] == [p.describe() for p in _normal(general)]
    assert [p.payload for p in _normal(fast)] == [p.payload for p in _normal(general)]


def as_plan(plan: Plan | Part | tuple, ring: Ring | None = None) -> Plan:
    """A Plan, also for a Part that is a whole plan (it answers every request, in
    order), for a ring of one node's ``(raw, count, calls)``: all of it to the
    one node, as read, and for a DC_ONE read's ``(raw, count, calls, reserve)``:
    the same, failing over to ``reserve``."""
    if isinstance(plan, tuple):
        raw, count, calls, *reserve = plan
        write = (calls[0] if isinstance(calls, list) else calls).write
        local = (ring.local,)
        if reserve:
            assert not write and reserve[0][0] is ring.local
            part = Part(ONE, "DC_ONE", False, local, reserve[0], (), raw, count, None)
        else:
            part = Part(ONE, "DC_ONE", write, local, () if write else local, (), raw, count, None)
        part.calls = calls
        plan = part
    if isinstance(plan, Part):
        assert plan.positions is None and plan.calls is not None
        return Plan([plan], plan.count)
    return plan


def _normal(plan: Plan) -> list[Part]:
    """The parts, each with its positions spelled out."""
    for part in plan.parts:
        if part.positions is None:
            part.positions = list(range(plan.size))
    return plan.parts


# -- range movements (dyno.ownership): a write's pending owners ------------------------------


def _moving_ring(current: int):
    from dyno.ownership import JOINING, NORMAL, Claim, ring_of
    nodes = [RingNode(f"n{i}", "h", 1000 + i, "dc", f"r{i}", (0,)) for i in range(1, current + 1)]
    joining = RingNode("n9", "h", 1009, "dc", "r1", (2**31,))
    claims = [Claim(n, NORMAL, 1) for n in nodes] + [Claim(joining, JOINING, 2)]
    return ring_of(claims, nodes[0])[0]


@given(st.integers(1, 3), st.sampled_from(["DC_ONE", "DC_QUORUM"]), st.binary(min_size=1, max_size=8))
def test_writes_of_a_moving_range_also_go_to_its_pending_owner_and_reads_do_not(current, level, key):
    ring = _moving_ring(current)
    planner = Planner(ring, lambda node: True)
    pending = ring.pending(ring.token_of(key))
    write = as_plan(planner.plan([[b"SET", key, b"v"]], resp.encode_command([b"SET", key, b"v"]), level, level), ring)
    read = as_plan(planner.plan([[b"GET", key]], resp.encode_command([b"GET", key]), level, level), ring)
    assert [n.name for n in write.parts[0].pending] == [n.name for n in pending]
    assert read.parts[0].pending == ()
    assert all(n.name != "n9" for part in read.parts for n in (*part.asked, *part.reserve))
    assert bool(pending) == (ring.token_of(key) in range(1, 2**31 + 1))
