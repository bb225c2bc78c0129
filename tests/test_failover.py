"""A replica that fails after the batch was sent to it - with an error before
running it, by timing out after running it, or by dropping the connection half-way
through its replies - on every route a batch can take (one part, parts per replica
set, the general plan, multi-key commands cut apart, two datacenters, the
receiving side of another datacenter's writes):

* a DC_ONE write is answered from another replica (its echo), a DC_ONE read from
  the next replica;
* a quorum request is decided or failed exactly as its level says;
* a write's failure is reported once, to ``Coordinator.write_failed``, with the
  target and the payload it did not (or may not have) taken.

Pure: a real Coordinator over fake targets (tests/fakes.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyno import resp
from fakes import DISCONNECT, ERROR, FAULTS, TIMEOUT, Client, Cluster, ring, run

KEYS = [b"k%d" % i for i in range(24)]
# route -> (datacenters, racks, nodes per rack, what goes in front of the batch)
ROUTES = {
    "one part": (1, 3, 1, None),
    "parts per replica set": (1, 3, 2, None),
    "general plan": (1, 3, 2, [b"ECHO", b"x"]),
    "two datacenters": (2, 3, 1, None),
}

writes = st.lists(st.tuples(st.sampled_from([b"SET", b"APPEND", b"INCR"]), st.sampled_from(KEYS),
                            st.binary(min_size=1, max_size=3)), min_size=1, max_size=12)
reads = st.lists(st.tuples(st.sampled_from([b"GET", b"STRLEN"]), st.sampled_from(KEYS)),
                 min_size=1, max_size=12)


def argv_of(command: tuple) -> list[bytes]:
    return [command[0], command[1]] if command[0] in (b"INCR", b"GET", b"STRLEN") else list(command)


def local_echo(run_local):
    def answer(client, spec, argv, slot):
        return resp.bulk(argv[1])
    return answer


def prepare(route: str, level: str, seed: int):
    dcs, racks, per_rack, front = ROUTES[route]
    fake = Cluster(ring(dcs, racks, per_rack), level, seed)
    fake.coordinator.run_local = local_echo(None)
    model: dict[bytes, bytes] = {key: b"%d" % i for i, key in enumerate(KEYS)}
    for target in fake.targets:
        node = fake.ring.node(target.name)
        target.store = {k: v for k, v in model.items() if node in fake.ring.replicas(fake.ring.token_of(k))}
    return fake, model, front


def faulted_replica(fake: Cluster, key: bytes, which: int):
    """The ``which``-th replica (of this datacenter) of ``key``."""
    replicas = fake.ring.local_replicas(fake.ring.token_of(key))
    return fake.target(replicas[which % len(replicas)].name)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("level", ["DC_ONE", "DC_QUORUM", "DC_SAFE_QUORUM"])
@settings(max_examples=60, deadline=None)
@given(batch=st.one_of(writes, reads), fault=st.sampled_from(FAULTS), which=st.integers(0, 2),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_one_replica_failing_after_dispatch_changes_no_reply(route, level, batch, fault, which, seed):
    fake, model, front = prepare(route, level, seed)
    requests = [argv_of(command) for command in batch]
    write = requests[0][0] in (b"SET", b"APPEND", b"INCR")
    victim = faulted_replica(fake, requests[0][1], which)
    victim.faults = [fault]
    sent = ([front] if front else []) + requests
    client = Client()
    fake.coordinator.execute_batch(client, sent, b"".join(map(resp.encode_command, sent)))
    first_call = victim.calls[:1]
    fake.drain()
    expected = ([resp.bulk(front[1])] if front else []) + [run(model, argv) for argv in requests]
    got = resp.split_replies(client.take(), len(sent))
    # One replica of three failed: every level still answers as one Redis would.
    assert got == expected, (fault, victim.name)
    reported = [entry for entry in fake.reported]
    if write and first_call:
        # Reported once, by the target, with exactly what that call carried.
        assert {name for name, _, _, _ in reported} == {victim.name}
        assert sum(count for _, _, count, _ in reported) == first_call[0][1]
        for _, payload, count, error in reported:
            assert len(resp.RequestParser().feed(payload)) == count
            assert error.startswith(b"-ERR dyno: ")
    else:
        assert reported == []
    if write:  # every replica that did not fail holds every write
        for target in fake.targets:
            node = fake.ring.node(target.name)
            if target is victim or node.dc != fake.ring.local.dc:
                continue
            for key, value in model.items():
                if node in fake.ring.replicas(fake.ring.token_of(key)):
                    assert target.store.get(key) == value, (target.name, key)


@pytest.mark.parametrize("level", ["DC_QUORUM", "DC_SAFE_QUORUM"])
@settings(max_examples=40, deadline=None)
@given(batch=writes, faults=st.lists(st.sampled_from(FAULTS), min_size=2, max_size=2),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_two_replicas_of_three_failing_fail_a_quorum_write(level, batch, faults, seed):
    fake, model, _ = prepare("one part", level, seed)
    requests = [argv_of(command) for command in batch]
    for which, fault in enumerate(faults):
        faulted_replica(fake, requests[0][1], which + 1).faults = [fault]
    client = Client()
    fake.coordinator.execute_batch(client, requests, b"".join(map(resp.encode_command, requests)))
    fake.drain()
    got = resp.split_replies(client.take(), len(requests))
    # Decided at the second failure: the third replica's reply may or may not be in.
    assert all(re.match(rb"-ERR dyno: quorum not achieved: [01] of 3 replicas answered, 2 needed", reply)
               for reply in got), got
    assert fake.coordinator.metrics.failures_by_level[level] == 1  # one part
    assert sorted({name for name, _, _, _ in fake.reported}) == sorted(
        faulted_replica(fake, requests[0][1], i).name for i in (1, 2))


@settings(max_examples=60, deadline=None)
@given(batch=writes, fault=st.sampled_from(FAULTS), which=st.integers(0, 2), seed=st.integers(0, 2**32 - 1))
def test_writes_another_datacenter_hands_over_survive_a_failing_replica_here(batch, fault, which, seed):
    """The receiving side of a COORDINATE frame: one replica here failing after
    dispatch; the frame's acknowledgement still counts every write as done, and
    the failure is reported once with its payload."""
    fake, model, _ = prepare("parts per replica set", "DC_ONE", seed)
    requests = [argv_of(command) for command in batch]
    victim = faulted_replica(fake, requests[0][1], which)
    victim.faults = [fault]

    class Ack:
        runs = True
        split = False
        replies = 0
        failures: list = []

        def deliver(self, reply):
            self.replies += 1

        def deliver_run(self, replies, n):
            self.replies += n

        def fail(self, error):
            self.failures.append(error)

    ack = Ack()
    payload = b"".join(map(resp.encode_command, requests))
    fake.coordinator.coordinate_for_dc(payload, ack, 0, len(requests))
    first_call = victim.calls[:1]
    fake.drain()
    assert (ack.replies, ack.failures) == (len(requests), [])
    for argv in requests:
        run(model, argv)
    assert {name for name, _, _, _ in fake.reported} == ({victim.name} if first_call else set())
    assert sum(count for _, _, count, _ in fake.reported) == (first_call[0][1] if first_call else 0)


def test_a_dc_one_write_whose_every_replica_fails_gets_the_answering_replicas_error():
    fake, model, _ = prepare("one part", "DC_ONE", 0)
    for target in fake.targets:
        target.faults = [ERROR]
    client = Client()
    requests = [[b"SET", b"k1", b"v"], [b"INCR", b"k2"]]
    fake.coordinator.execute_batch(client, requests, b"".join(map(resp.encode_command, requests)))
    fake.drain()
    got = resp.split_replies(client.take(), 2)
    assert got == [resp.error(f"ERR dyno: datastore of {fake.datastore.name} is unavailable")] * 2
    assert sorted(name for name, _, _, _ in fake.reported) == sorted(t.name for t in fake.targets)


@pytest.mark.parametrize("fault", [TIMEOUT, DISCONNECT])
def test_a_dc_one_write_cut_half_way_takes_the_rest_of_its_replies_from_another_replica(fault):
    fake, model, _ = prepare("one part", "DC_ONE", 3)
    fake.datastore.faults = [fault]
    client = Client()
    requests = [[b"INCR", b"k%d" % (i % 3)] for i in range(10)]
    fake.coordinator.execute_batch(client, requests, b"".join(map(resp.encode_command, requests)))
    fake.drain()
    assert client.take() == b"".join(run(model, argv) for argv in requests)
    assert fake.coordinator.metrics.failovers == 1
