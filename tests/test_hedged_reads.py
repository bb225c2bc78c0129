"""Quorum reads ask Q replicas first (dyno.planner) and the others only when those
cannot decide them: they disagree, one fails, or they have not answered within one
to two HEDGE_TICKs (dyno.coordinator). Whatever the replicas answer, in whatever
order, the client gets what asking every replica at once would give when the first
Q to answer are those asked - and a read the first Q decide never reaches a third."""

from __future__ import annotations


import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dyno import resp
from dyno.coordinator import HEDGE_PARK_AFTER, HEDGE_TICK
from fakes import ERROR, TIMEOUT, Client, Cluster, ring

KEYS = [b"k%d" % i for i in range(8)]
VALUES = [b"a", b"b"]


@pytest.mark.parametrize("level", ["DC_QUORUM", "DC_SAFE_QUORUM"])
@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=6),
       stores=st.lists(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES)), min_size=3, max_size=3),
       faults=st.lists(st.sampled_from([None, ERROR, TIMEOUT]), min_size=3, max_size=3),
       hedge=st.booleans(), seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_a_quorum_read_answers_what_asking_every_replica_would(level, keys, stores, faults, hedge, seed):
    fake = Cluster(ring(1, 3, 1), level, seed)
    for target, store, fault in zip(fake.targets, stores, faults):
        target.store = dict(store)
        if fault is not None:
            target.faults = [fault]
    client = Client()
    requests = [[b"GET", key] for key in keys]
    fake.coordinator.execute_batch(client, requests, b"".join(map(resp.encode_command, requests)))
    asked = [t.name for t in fake.targets if t.calls]
    assert len(asked) == 2  # Q of 3, this node's own Redis first
    assert fake.datastore.calls
    if hedge:  # the first two are slow: the sweep widens the read
        for run in list(fake.coordinator.hedged.values()):
            run[1].widen()
    fake.drain()
    # Per request: the value two replicas agree on among those that answered,
    # else an error (Q = 2 of 3 can be reached by one value at most).
    answered = [target.store for target, fault in zip(fake.targets, faults)
                if target.calls and fault is None]
    got = resp.split_replies(client.take(), len(keys))
    assert got is not None
    for key, reply in zip(keys, got):
        values = [resp.bulk(store.get(key)) for store in answered]
        winner = next((v for v in values if values.count(v) >= 2), None)
        if winner is not None:
            assert reply == winner
        else:
            assert reply.startswith(b"-ERR dyno: ")
    first = [(target, fault) for target, fault in zip(fake.targets, faults) if target.name in asked]
    agree = all(resp.bulk(first[0][0].store.get(k)) == resp.bulk(first[1][0].store.get(k)) for k in keys)
    if not hedge and agree and not any(fault for _, fault in first):
        # The first two decided it: the third was never asked.
        assert sum(1 for t in fake.targets if t.calls) == 2
        assert fake.coordinator.metrics.widened_reads == 0
    else:
        assert sum(1 for t in fake.targets if t.calls) == 3
    assert not fake.coordinator.hedged  # nothing kept once decided


class Pending:
    """A quorum read waiting for its first replicas (what hedge_reads sees of it)."""

    def __init__(self, coordinator, key, widen=None):
        self.quorum = type("Q", (), {"done": False})()
        self.widened = 0
        self.replies = []
        self.part = type("P", (), {"count": 1})()
        self.dest = self
        self._widen = widen
        self.coordinator, self.key = coordinator, key
        coordinator.hedge(self)

    def deliver_run(self, reply, n):
        self.replies.append(reply)

    def widen(self):
        self.widened += 1
        self.coordinator.hedged.pop(id(self), None)
        if self._widen:
            self._widen()


async def test_reads_undecided_for_a_full_tick_are_widened_and_a_failing_widen_answers_its_read(
    autojump_clock,  # virtual time: the sleeps below only order events against the ticks
):
    coordinator = Cluster(ring(1, 3, 1), "DC_QUORUM").coordinator
    slow = Pending(coordinator, 1)

    def broken():
        raise RuntimeError("a bug")

    buggy = Pending(coordinator, 2, widen=broken)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(coordinator.hedge_reads)
        await trio.sleep(HEDGE_TICK * 1.5)  # one sweep: asked less than a full tick ago
        assert (slow.widened, buggy.widened) == (0, 0)
        late = Pending(coordinator, 3)  # asked during the second tick
        await trio.sleep(HEDGE_TICK)  # second sweep
        assert (slow.widened, buggy.widened, late.widened) == (1, 1, 0)
        assert buggy.replies[0].startswith(b"-ERR dyno: internal error")  # answered, not left waiting
        assert slow.replies == []  # widened reads are answered by their replicas
        await trio.sleep(HEDGE_TICK)
        assert late.widened == 1 and not coordinator.hedged
        nursery.cancel_scope.cancel()


async def test_the_sweeper_parks_when_no_read_is_undecided_and_a_new_one_still_widens_in_two_ticks(
    autojump_clock,  # virtual time: the sleeps below only order events against the ticks
):
    coordinator = Cluster(ring(1, 3, 1), "DC_QUORUM").coordinator
    async with trio.open_nursery() as nursery:
        nursery.start_soon(coordinator.hedge_reads)
        await trio.sleep(HEDGE_TICK * (HEDGE_PARK_AFTER + 1.5))
        parked_at = coordinator._hedge_tick
        await trio.sleep(HEDGE_TICK * 100)  # parked: no tick counted
        assert coordinator._hedger.parked and coordinator._hedge_tick == parked_at
        read = Pending(coordinator, 1)  # wakes it
        assert not coordinator._hedger.parked
        await trio.sleep(HEDGE_TICK * 1.5)  # one sweep: asked less than a full tick ago
        assert read.widened == 0
        await trio.sleep(HEDGE_TICK)
        assert read.widened == 1 and not coordinator.hedged
        nursery.cancel_scope.cancel()
