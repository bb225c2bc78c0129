"""A pipelined batch whose keys have different replica sets (racks of several
nodes) goes out as one part per replica set (dyno.planner), and the client still
gets every reply in order (dyno.coordinator).

Pure unit tests: a real Coordinator and a real Ring of 3 racks x 2 nodes, with
fake targets (tests/fakes.py) - each node's Redis is a dict, and every call is
queued and run later, each target in its own order, the targets interleaved as
hypothesis chooses. The replies must be those of one Redis running the batches in
order, and each target must get one call per part, never one per request.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyno import resp
from fakes import FAULTS, Client, Cluster, drain, run
from fakes import ring as make_ring


def cluster(level: str, seed: int, dcs: int, local: int = 0, nodes_per_rack: int = 2):
    fake = Cluster(make_ring(dcs, 3, nodes_per_rack, local), level, seed)
    return fake.coordinator, fake.targets, fake.jobs


KEYS = [b"k%d" % i for i in range(40)]
writes = st.tuples(st.sampled_from([b"SET", b"APPEND"]), st.sampled_from(KEYS), st.binary(max_size=5))
reads = st.tuples(st.sampled_from([b"GET", b"STRLEN"]), st.sampled_from(KEYS))
batches = st.lists(
    st.one_of(st.lists(writes, min_size=1, max_size=30), st.lists(reads, min_size=1, max_size=30)),
    min_size=1, max_size=6,
)


@pytest.mark.parametrize("dcs", [1, 2])
@pytest.mark.parametrize("level", ["DC_ONE", "DC_QUORUM", "DC_SAFE_QUORUM"])
@settings(max_examples=150, deadline=None)
@given(batches=batches, seed=st.integers(0, 2**32 - 1), streaming=st.booleans())
def test_a_split_batch_answers_like_one_redis_with_one_call_per_part(level, dcs, batches, seed, streaming):
    """Batches of reads or of writes through node1, the targets answering in a
    random interleaving; with two datacenters, writes also go, a part per
    replica set, to one node of the other datacenter, which coordinates them."""
    coordinator, targets, jobs = cluster(level, seed, dcs)
    order = random.Random(seed + 1)
    client = Client()
    model: dict[bytes, bytes] = {}
    if streaming:  # another request in flight: the per-request slots
        pending = SimpleNamespace(data=None)
        client.replies.append(pending)
    got, expected = [], []
    local_dc = {n.name for n in coordinator.ring.nodes if n.dc == coordinator.ring.local.dc}
    for batch in batches:
        requests = [list(command) for command in batch]
        raw = b"".join(map(resp.encode_command, requests))
        for target in targets:
            target.calls = []
        coordinator.execute_batch(client, requests, raw)
        ring = coordinator.ring
        owners = {ring.replicas(ring.token_of(argv[1])) for argv in requests}
        write = requests[0][0] in (b"SET", b"APPEND")
        for target in targets:
            # One call per part (replica set) this target is in, carrying the part whole.
            assert len(target.calls) <= sum(1 for group in owners if any(n.name == target.name for n in group))
            if len(requests) > 1:
                assert all(method != "send" for method, _ in target.calls), target.calls
        if not write:  # a read asks one replica per part at DC_ONE, else Q of the 3 first
            parts = len({ring.local_replicas(ring.token_of(argv[1])) for argv in requests})
            assert sum(len(target.calls) for target in targets) == (1 if level == "DC_ONE" else 2) * parts
        links = targets[1:]
        assert sum(link.coordinated for link in links) == (len(requests) if write and dcs == 2 else 0)
        for link in links:
            link.coordinated = 0
        drain(jobs, order)
        expected += [run(model, argv) for argv in requests]
        if streaming:
            pending.data = b""
            streaming = False
        got.append(client.take())
        # Every write reached every replica of its key: each node's Redis holds
        # what the model holds for the keys it owns.
        for target in targets:
            if target.name not in local_dc:
                continue
            for key, value in model.items():
                if any(n.name == target.name for n in ring.local_replicas(ring.token_of(key))):
                    assert target.store.get(key) == value, (target.name, key)
    assert b"".join(got) == b"".join(expected)
    assert coordinator.metrics.disagreements == 0


@pytest.mark.parametrize("up_here", [(), ("127.0.0.1:8103",)])
def test_a_dc_one_read_with_no_replica_up_in_this_datacenter_is_answered_by_another(up_here):
    """Every node of this datacenter down but ``up_here``: a key none of whose
    replicas here is up is read from the other datacenter (and nothing is sent
    to a node that is down)."""
    coordinator, targets, jobs = cluster("DC_ONE", 0, 2)
    ring = coordinator.ring
    keys = KEYS[:20]
    for target in targets:
        node = ring.node(target.name)
        target.store = {key: b"%s:%s" % (node.dc.encode(), key) for key in keys}
        if node.dc == ring.local.dc and node.name not in up_here:
            if node.local:
                target.up = False
            else:
                target.usable = False
    requests = [[b"GET", key] for key in keys]
    client = Client()
    coordinator.execute_batch(client, requests, b"".join(map(resp.encode_command, requests)))
    drain(jobs, random.Random(0))
    expected = [
        resp.bulk(b"dc1:" + key if any(n.name in up_here for n in ring.local_replicas(ring.token_of(key)))
                  else b"dc2:" + key)
        for key in keys
    ]
    assert client.take() == b"".join(expected)
    assert up_here == () or b"dc1:" in b"".join(expected)  # both cases happen


class Ack:
    """A COORDINATE frame's acknowledgement (dyno.peer._PeerAck): counts outcomes."""

    runs = True
    split = False

    def __init__(self):
        self.replies = 0
        self.failures: list[bytes] = []

    def deliver(self, reply):
        self.replies += 1

    def deliver_run(self, replies, n):
        self.replies += n

    def deliver_each(self, replies):
        self.replies += len(replies)

    def fail(self, error):
        self.failures.append(error)


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(writes, min_size=2, max_size=30), seed=st.integers(0, 2**32 - 1),
       local=st.sampled_from([6, 9]))  # fmt: skip
def test_writes_from_another_datacenter_reach_every_replica_here_a_part_at_a_time(batch, seed, local):
    """The receiving side of a COORDINATE frame of several writes: each part goes
    to its replicas in this datacenter (one call per part), and the frame's
    acknowledgement counts every write once."""
    coordinator, targets, jobs = cluster("DC_ONE", seed, 2, local)
    ring = coordinator.ring
    requests = [list(command) for command in batch]
    ack = Ack()
    coordinator.coordinate_for_dc(b"".join(map(resp.encode_command, requests)), ack, 0, len(requests))
    owners = {ring.local_replicas(ring.token_of(argv[1])) for argv in requests}
    for target in targets:
        assert len(target.calls) <= sum(1 for group in owners if any(n.name == target.name for n in group))
        assert all(method != "send" for method, _ in target.calls), target.calls
    drain(jobs, random.Random(seed))
    assert (ack.replies, ack.failures) == (len(requests), [])
    model: dict[bytes, bytes] = {}
    for argv in requests:
        run(model, argv)
    for target in targets:
        node = ring.node(target.name)
        held = {key: value for key, value in target.store.items()}
        if node.dc != ring.local.dc:
            assert held == {}
            continue
        for key, value in model.items():
            if node in ring.local_replicas(ring.token_of(key)):
                assert held.get(key) == value, (target.name, key)


keys = st.lists(st.sampled_from(KEYS), min_size=1, max_size=4)
multi_writes = st.one_of(
    writes,
    keys.map(lambda ks: (b"DEL", *ks)),
    st.lists(st.tuples(st.sampled_from(KEYS), st.binary(max_size=3)), min_size=1, max_size=3).map(
        lambda pairs: (b"MSET", *(x for pair in pairs for x in pair))),
)
multi_reads = st.one_of(reads, keys.map(lambda ks: (b"MGET", *ks)), keys.map(lambda ks: (b"EXISTS", *ks)))


@pytest.mark.parametrize("nodes_per_rack", [1, 2])
@pytest.mark.parametrize("dcs", [1, 2])
@pytest.mark.parametrize("level", ["DC_ONE", "DC_QUORUM"])
@settings(max_examples=100, deadline=None)
@given(batches=st.lists(st.one_of(st.lists(multi_writes, min_size=1, max_size=12),
                                  st.lists(multi_reads, min_size=1, max_size=12)), min_size=1, max_size=5),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_multi_key_commands_whose_keys_live_together_go_with_the_batch(level, dcs, nodes_per_rack, batches, seed):
    """MGET, MSET, DEL and EXISTS in a batch: where all of a command's keys have
    one replica set (always, in a ring of one node per rack) the command goes
    with the batch, whole; else it is cut into a sub-command per replica set,
    each going with that set's part (with two datacenters such a batch takes
    the general path). Either way the replies are one Redis's and every replica
    gets the writes."""
    coordinator, targets, jobs = cluster(level, seed, dcs, nodes_per_rack=nodes_per_rack)
    ring = coordinator.ring
    order = random.Random(seed + 1)
    client = Client()
    model: dict[bytes, bytes] = {}
    got, expected = [], []
    for batch in batches:
        requests = [list(command) for command in batch]
        for target in targets:
            target.calls = []
        coordinator.execute_batch(client, requests, b"".join(map(resp.encode_command, requests)))
        alone = len(requests) == 1 and requests[0][0] in (b"MGET", b"MSET", b"DEL", b"EXISTS")
        if nodes_per_rack == 1 or dcs == 1 and not alone:  # nothing goes one by one
            # (A multi-key command alone in a read of a non-uniform ring is _multi_key's.)
            sets = {ring.replicas(ring.token_of(key)) for argv in requests
                    for key in (argv[1::2] if argv[0] == b"MSET" else argv[1:])}
            for target in targets:
                assert "send" not in [method for method, _ in target.calls], target.calls
                assert len(target.calls) <= sum(1 for group in sets if ring.node(target.name) in group), target.calls
        drain(jobs, order)
        expected += [run(model, argv) for argv in requests]
        got.append(client.take())
        for target in targets:
            node = ring.node(target.name)
            if node.dc != ring.local.dc:
                continue
            # A node's Redis holds exactly the model's keys that it owns.
            assert target.store == {k: v for k, v in model.items() if node in ring.local_replicas(ring.token_of(k))}
    assert b"".join(got) == b"".join(expected)


@pytest.mark.parametrize("level", ["DC_ONE", "DC_QUORUM"])
@settings(max_examples=50, deadline=None)
@given(reads=st.lists(st.tuples(st.sampled_from([b"GET", b"HGETALL", b"SMEMBERS"]), st.sampled_from(KEYS)),
                      min_size=2, max_size=20),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_reads_whose_replicas_may_differ_in_bytes_go_whole_at_dc_one_and_in_their_own_parts_at_quorum(
        level, reads, seed):
    """HGETALL and SMEMBERS replies list members in an order that differs from
    replica to replica: at DC_ONE one replica answers, so they go with the
    batch; a quorum compares them sorted, so each run of them is a part of its
    own (``Part.canonical``), asked of Q replicas like any quorum read."""
    coordinator, targets, jobs = cluster(level, seed, 1, nodes_per_rack=1)
    model = {key: b"v" for key in KEYS[::2]}
    for target in targets:
        target.store = dict(model)
    requests = [list(command) for command in reads]
    client = Client()
    coordinator.execute_batch(client, requests, b"".join(map(resp.encode_command, requests)))
    calls = [call for target in targets for call in target.calls]
    assert "send" not in [method for method, _ in calls]  # parts, never request by request
    if level == "DC_ONE":
        assert len(calls) == 1  # the batch goes whole
    else:  # a part per run of reads compared alike, each asked of Q = 2 replicas
        runs = 1 + sum(1 for a, b in zip(requests, requests[1:]) if (a[0] == b"GET") != (b[0] == b"GET"))
        assert len(calls) == 2 * runs
    drain(jobs, random.Random(seed))
    assert client.take() == b"".join(run(model, argv) for argv in requests)


@pytest.mark.parametrize("racks", [1, 3])
@pytest.mark.parametrize("argv", [[b"SET", b"k1", b"v"], [b"GET", b"k1"]])
def test_a_sampled_request_records_its_client_latency_however_its_reply_lands(racks, argv):
    """One batch in SAMPLE_EVERY gets a timed slot: its reply is recorded whether it
    lands with deliver (a read) or deliver_run (a stamped write's run of replies)."""
    fake = Cluster(make_ring(1, racks, 1), "DC_ONE", 0)
    coordinator = fake.coordinator
    histogram = coordinator.metrics.client_latency
    client = Client()
    coordinator.countdown = 1  # this batch is the sampled one
    coordinator.execute_batch(client, [argv], resp.encode_command(argv))
    fake.drain()
    assert client.take() == run({}, argv)
    assert histogram.count == 1


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_sampled_dc_one_read_whose_redis_fails_is_answered_by_another_replica(fault, count):
    """A read sent as read to this node's Redis (Planner.plain's reserve) and timed:
    when that Redis fails it, the next replica answers it, and it is timed once."""
    fake = Cluster(make_ring(1, 3, 1), "DC_ONE", 0)
    for target in fake.targets:
        target.store = {b"k1": b"v"}
    fake.datastore.faults = [fault]
    coordinator = fake.coordinator
    client = Client()
    coordinator.countdown = 1  # this batch is the sampled one
    requests = [[b"GET", b"k1"]] * count
    coordinator.execute_batch(client, requests, b"".join(map(resp.encode_command, requests)))
    fake.drain()
    assert client.take() == resp.bulk(b"v") * count
    assert coordinator.metrics.client_latency.count == 1
    assert coordinator.metrics.failovers == 1
