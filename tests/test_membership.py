"""The membership state machine and its failure detector, one rule at a time.

Whole clusters over a simulated network are in test_gossip_simulation.py; here
two or three ``Membership`` objects talk by hand, so that each merge rule, each
judgement and each wire check can be seen alone.
"""

from __future__ import annotations

import math
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyno import membership as gossip
from dyno.failure_detector import ArrivalWindow, conviction_distance, phi
from dyno.membership import (
    ACK, ACK2, HEARTBEAT, SYN, GossipError, Member, Membership, Seed, State,
)
from dyno.ring import Ring

INTERVAL = 1.0
GENERATION = 1_700_000_000_000


def member(index: int, *, generation: int = GENERATION, heartbeat: int = 0,
           state: State = State.NORMAL, rack: str | None = None, dc: str = "dc1",
           tokens: tuple[int, ...] | None = None) -> Member:
    return Member(f"10.0.0.{index}:8101", f"10.0.0.{index}", 8101, dc,
                  rack or f"rack{index % 3 + 1}", tokens or (index * 1000,),
                  generation, heartbeat, state)


def node(index: int, seeds=(), *, now: float = 0.0, rng_seed: int = 0, **options) -> Membership:
    return Membership(member(index, **{k: options.pop(k) for k in
                                       ("generation", "heartbeat", "state") if k in options}),
                      seeds, gos_interval=INTERVAL, rng=random.Random(rng_seed), now=now,
                      **options)


def name(index: int) -> str:
    return f"10.0.0.{index}:8101"


def entry(index: int, generation: int = GENERATION, heartbeat: int = 1, sv: int = 0, *,
          state: str = "NORMAL", tokens=None, rack=None, age: int | None = 0) -> list:
    return [name(index), generation, heartbeat, sv, f"10.0.0.{index}", 8101, "dc1",
            rack or f"rack{index % 3 + 1}", list(tokens or [index * 1000]), state, None, age]


def push(*entries, digests=()) -> dict:
    return gossip._message(ACK2, list(digests), list(entries), [])


def exchange(nodes: dict[str, Membership], outbox: list, now: float, limit: int = 100) -> None:
    """Deliver messages (and their replies) instantly until none is left."""
    while outbox:
        limit -= 1
        assert limit > 0, "the exchange does not end"
        sender, target, message = outbox.pop(0)
        if target in nodes:
            roundtrip = msgpack.unpackb(msgpack.packb(message), raw=False)
            for reply_target, reply in nodes[target].receive(sender, roundtrip, now):
                outbox.append((target, reply_target, reply))


def gossip_round(nodes: dict[str, Membership], now: float) -> None:
    outbox = [(who, target, message) for who, m in nodes.items()
              for target, message in m.tick(now)]
    exchange(nodes, outbox, now)


def body(message: dict) -> list:
    return msgpack.unpackb(message["b"], raw=False)


def view_of(m: Membership) -> dict:
    return {x.name: (x.generation, x.heartbeat, x.state, x.tokens, x.rack, x.dc, x.host,
                     x.port, x.client_port) for x in m.members()}


# ---------------------------------------------------------------------------
# phi and the arrival window.


def test_phi_is_the_logistic_normal_tail_of_akka():
    for elapsed, mean, std in [(0.5, 1.0, 0.5), (1.0, 1.0, 0.2), (2.2, 1.0, 0.3), (3.0, 1.2, 0.5)]:
        y = (elapsed - mean) / std
        e = math.exp(-y * (1.5976 + 0.070566 * y * y))
        akka = -math.log10(e / (1 + e)) if elapsed > mean else -math.log10(1 - 1 / (1 + e))
        assert phi(elapsed, mean, std) == pytest.approx(akka, rel=1e-9)
    assert phi(1.0, 1.0, 0.5) == pytest.approx(math.log10(2))
    # far past the mean it neither overflows nor becomes infinite
    assert math.isfinite(phi(1e6, 1.0, 0.1)) and phi(1e6, 1.0, 0.1) > 1e6
    assert phi(-1e6, 1.0, 0.1) == 0.0


def test_phi_grows_with_silence():
    values = [phi(t / 10, 1.0, 0.5) for t in range(0, 100)]
    assert values == sorted(values)


@pytest.mark.parametrize("threshold", [1, 3, 5, 8, 12, 16])
def test_conviction_distance_is_where_phi_reaches_the_threshold(threshold):
    y_star = conviction_distance(threshold)
    assert phi(1.0 + y_star * 0.5, 1.0, 0.5) == pytest.approx(threshold, rel=1e-9)
    assert conviction_distance(8) == pytest.approx(5.226, abs=1e-3)


@pytest.mark.parametrize("threshold", [0, -1, math.inf, math.nan])
def test_a_threshold_must_be_positive(threshold):
    with pytest.raises(ValueError):
        conviction_distance(threshold)


def window(**overrides) -> ArrivalWindow:
    options = dict(window=100, first_estimate=1.0, min_std=0.5, acceptable_pause=0.0,
                   y_star=conviction_distance(8), max_interval=2.0)
    options.update(overrides)
    return ArrivalWindow(**options)


def test_window_bootstraps_with_the_gossip_interval():
    w = window()
    assert w.deadline() is None and w.phi(5.0) == math.inf
    w.arrive(10.0)
    assert w.mean == 1.0 and w.std == 0.5  # measured 0.25, floored
    assert w.deadline() == pytest.approx(10.0 + 1.0 + 5.226 * 0.5, abs=1e-3)
    assert w.phi(w.deadline()) == pytest.approx(8.0)


def test_window_measures_intervals_and_floors_the_deviation():
    w = window(window=10, min_std=0.01)
    for tick in range(30):
        w.arrive(tick * 0.8)
    assert len(w) == 10 and w.mean == pytest.approx(0.8) and w.std == 0.01
    w = window(window=4, min_std=0.01)
    for when in (0, 1, 3, 4, 6):
        w.arrive(when)
    assert w.mean == pytest.approx(1.5) and w.std == pytest.approx(0.5)


@given(st.integers(2, 8), st.lists(st.tuples(st.floats(0.0, 3.0), st.floats(0.0, 0.5)), max_size=30))
def test_the_deadline_is_always_phi_at_the_threshold_after_the_last_heartbeat(size, arrivals):
    """deadline() keeps last + mean + pause + y* x std (worked out once per sample,
    not at every judgement) true after any arrivals, samples, outages and relays."""
    w = window(window=size, acceptable_pause=0.3)
    now = 0.0
    for gap, relayed in arrivals:
        now += gap
        w.arrive(now, now - relayed)
        expected = w.last + w.mean + 0.3 + conviction_distance(8) * w.std
        assert w.deadline() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_window_ignores_outages_and_clamps_long_silences():
    w = window()
    w.arrive(0.0)
    w.arrive(1.0)
    deadline = w.deadline()
    w.arrive(deadline + 10)  # an outage: not a sample (Rule 5)
    assert len(w) == 3 and w.last == deadline + 10
    w.arrive(w.last + 1.9)
    w.arrive(w.last + 1.999)
    assert max(w._intervals) <= 2.0
    # clamped: however long the silences, the conviction point stays bounded
    w = window(window=5)
    w.arrive(0.0)
    for _ in range(20):
        w.arrive(w.deadline() - 1e-6)
    assert w.deadline() - w.last <= 2.0 + 5.23 * 0.5 + 1e-6


def test_window_counts_relayed_news_from_when_it_was_true():
    w = window()
    w.arrive(10.0)
    w.arrive(11.5, alive_at=11.0)   # learned at 11.5 that the peer lived at 11.0
    assert w.last == 11.0 and list(w._intervals)[-1] == pytest.approx(1.5)
    w.arrive(12.0, alive_at=10.5)   # older than what we know: nothing changes
    assert w.last == 11.0 and len(w) == 3
    w.arrive(12.0, alive_at=99.0)   # from the future: now at the latest
    assert w.last == 12.0


# ---------------------------------------------------------------------------
# Exchanges.


def test_two_nodes_learn_each_other_through_syn_ack_ack2():
    a = node(1, [Seed(name(2), "10.0.0.2", 8101)])
    b = node(2)
    out = a.tick(0.0)
    assert [target for target, _ in out] == [name(2)]  # nothing is live: the seed
    assert out[0][1]["k"] == SYN
    assert [e[0] for e in body(out[0][1])[1]] == [name(1)]  # its own entry, whole
    replies = b.receive(name(1), out[0][1], 0.01)
    assert b.is_up(name(1), 0.01)  # learned from the SYN alone
    assert [(t, m["k"]) for t, m in replies] == [(name(1), ACK)]
    digests, entries, wants = body(replies[0][1])
    assert [e[0] for e in entries] == [name(2)] and wants == []
    assert a.receive(name(2), replies[0][1], 0.02) == []
    assert set(view_of(a)) == set(view_of(b)) == {name(1), name(2)}
    assert a.is_up(name(2), 0.05) and b.is_up(name(1), 0.05)
    assert view_of(a)[name(2)] == view_of(b)[name(2)]


def test_an_ack_asks_for_what_the_syn_only_mentions_and_ack2_brings_it():
    a, b = node(1), node(2)
    a.receive(name(3), push(entry(3, heartbeat=4)), 0.0)
    syn = gossip._message(SYN, [[name(1), GENERATION, 2, 0, 0],
                                [name(3), GENERATION, 4, 0, 100]], [entry(1, heartbeat=2)], [])
    (target, ack), = b.receive(name(1), syn, 0.1)
    assert body(ack)[2] == [name(3)]
    out = a.receive(name(2), ack, 0.2)  # b is news to a: pushed on to 3 as well
    ack2 = next(m for t, m in out if t == name(2))
    assert ack2["k"] == ACK2 and [e[0] for e in body(ack2)[1]] == [name(3)]
    b.receive(name(1), ack2, 0.3)
    assert view_of(b)[name(3)][1] == 4


def test_steady_state_gossip_is_digests_only():
    nodes = {name(i): node(i, [Seed(name(1), "10.0.0.1", 8101)], rng_seed=i) for i in (1, 2, 3)}
    for tick in range(5):
        gossip_round(nodes, float(tick))
    a = nodes[name(1)]
    out = a.tick(5.0)
    syn = [m for _, m in out if m["k"] == SYN]
    beats = [m for _, m in out if m["k"] == HEARTBEAT]
    assert len(syn) == 1 and len(beats) == 1  # one SYN, a heartbeat to the other peer
    assert body(beats[0]) == [[[name(1), GENERATION, a.members()[0].heartbeat, 0, 0]], [], []]
    target = next(t for t, m in out if m["k"] == SYN)
    replies = nodes[target].receive(name(1), syn[0], 5.0)
    for _, reply in replies:
        digests, entries, wants = body(reply)
        assert entries == [] and wants == []


def test_a_heartbeat_updates_without_bumping_the_version():
    b = node(2)
    b.receive(name(1), push(entry(1, heartbeat=5)), 0.0)
    version = b.version
    beat = gossip._message(HEARTBEAT, [[name(1), GENERATION, 6, 0, 0]], [], [])
    assert b.receive(name(1), beat, 0.9) == []
    assert b.members()[0].heartbeat == 6 and b.version == version
    # a heartbeat of a node b does not know makes b ask: a SYN back
    replies = b.receive(name(3), gossip._message(HEARTBEAT, [[name(3), 7, 1, 0, 0]], [], []), 1.0)
    assert [(t, m["k"]) for t, m in replies] == [(name(3), SYN)]


# ---------------------------------------------------------------------------
# Merge rules.


def test_a_newer_heartbeat_wins_and_an_older_one_is_ignored():
    b = node(2)
    b.receive(name(3), push(entry(1, heartbeat=5)), 0.0)
    b.receive(name(3), push(entry(1, heartbeat=3, state="LEAVING", sv=3)), 0.1)
    assert view_of(b)[name(1)][1:3] == (5, State.NORMAL)
    b.receive(name(3), push(entry(1, heartbeat=9, state="LEAVING", sv=8)), 0.2)
    assert view_of(b)[name(1)][1:3] == (9, State.LEAVING)


def test_a_higher_generation_replaces_the_old_entry():
    b = node(2)
    b.receive(name(1), push(entry(1, heartbeat=500, tokens=[1, 2])), 0.0)
    version = b.version
    b.receive(name(1), push(entry(1, generation=GENERATION + 60_000, heartbeat=1,
                                  tokens=[3])), 0.5)
    assert view_of(b)[name(1)][:2] == (GENERATION + 60_000, 1)
    assert view_of(b)[name(1)][3] == (3,)
    assert b.version > version
    # the old generation's gossip, still travelling, changes nothing
    b.receive(name(3), push(entry(1, heartbeat=501, tokens=[1, 2])), 0.6)
    assert view_of(b)[name(1)][:2] == (GENERATION + 60_000, 1)


def test_a_digest_moves_only_a_matching_copy():
    b = node(2)
    b.receive(name(1), push(entry(1, heartbeat=5, sv=2)), 0.0)
    # other fields version: not applicable, b asks for the entry instead
    syn = gossip._message(SYN, [[name(1), GENERATION, 9, 7, 0]], [], [])
    replies = b.receive(name(3), syn, 0.1)
    assert view_of(b)[name(1)][1] == 5
    assert body(replies[0][1])[2] == [name(1)]
    # same generation and fields version: applied
    syn = gossip._message(SYN, [[name(1), GENERATION, 9, 2, 0]], [], [])
    b.receive(name(3), syn, 0.2)
    assert view_of(b)[name(1)][1] == 9


def test_the_ack_sends_digests_or_entries_as_the_other_side_needs():
    b = node(2)
    b.receive(name(1), push(entry(1, heartbeat=9, sv=4)), 0.0)
    b.receive(name(4), push(entry(4, heartbeat=3)), 0.0)
    syn = gossip._message(SYN, [[name(1), GENERATION, 7, 4, 0],   # older, same fields
                                [name(4), GENERATION, 3, 0, 0]], [], [])  # equal
    (target, ack), = b.receive(name(3), syn, 0.1)
    digests, entries, wants = body(ack)
    assert [d[:4] for d in digests] == [[name(1), GENERATION, 9, 4]]
    assert sorted(e[0] for e in entries) == [name(2)]  # b itself, unknown to the SYN
    assert wants == []


def test_equal_versions_with_different_fields_resolve_the_same_way_in_any_order():
    one = entry(1, heartbeat=5, sv=5, state="LEAVING")
    two = entry(1, heartbeat=5, sv=5, state="STANDBY")
    first, second = node(2), node(3)
    first.receive(name(9), push(one), 0.0)
    first.receive(name(9), push(two), 0.0)
    second.receive(name(9), push(two), 0.0)
    second.receive(name(9), push(one), 0.0)
    assert view_of(first)[name(1)] == view_of(second)[name(1)]


def test_gossip_about_a_node_newer_than_itself_makes_it_take_a_new_generation():
    a = node(1, [Seed(name(2), "10.0.0.2", 8101)], heartbeat=3)
    a.receive(name(2), push(entry(1, heartbeat=10)), 0.0)  # "a", newer than a itself
    generation = view_of(a)[name(1)][0]
    assert generation > GENERATION
    b = node(2)
    b.receive(name(3), push(entry(1, heartbeat=10)), 0.0)  # b holds that copy
    gossip_round({name(1): a, name(2): b}, 1.0)
    assert view_of(b)[name(1)][0] == generation == view_of(a)[name(1)][0]


def test_placeholders_from_the_config_are_listed_down_and_not_gossiped():
    seeds = [Seed(name(2), "10.0.0.2", 8101, "dc1", "rack3", (2000,)),
             (name(3), "10.0.0.3", 8101)]
    a = node(1, seeds)
    members = {m.name: m for m in a.members()}
    assert set(members) == {name(1), name(2)}
    assert members[name(2)].generation == 0 and members[name(2)].tokens == (2000,)
    assert not a.is_up(name(2), 0.0)
    out = a.tick(0.0)
    assert {t for t, _ in out} >= {name(2)}
    syn = next(m for _, m in out if m["k"] == SYN)
    assert [d[0] for d in body(syn)[0]] == [name(1)]
    a.receive(name(2), push(entry(2)), 0.1)
    assert a.is_up(name(2), 0.1) and {m.name: m for m in a.members()}[name(2)].generation > 0
    ring = Ring([m.ring_node() for m in a.members()], a.members()[0].ring_node(True))
    assert len(ring.nodes) == 2


# ---------------------------------------------------------------------------
# Judgement.


def test_a_silent_peer_is_convicted_at_the_deadline_and_back_with_a_heartbeat():
    b = node(2)
    b.receive(name(1), push(entry(1, heartbeat=1)), 0.0)
    assert b.is_up(name(1), 0.0)
    deadline = b.next_check(0.0)
    assert deadline == pytest.approx(1.0 + 5.226 * 0.5, abs=1e-3)
    version = b.version
    assert b.is_up(name(1), deadline - 1e-6)
    assert b.refresh(deadline) > version and not b.is_up(name(1), deadline)
    assert b.view(deadline)[name(1)].phi == pytest.approx(8.0)
    assert b.next_check(deadline) is None  # nothing left to convict
    beat = gossip._message(HEARTBEAT, [[name(1), GENERATION, 2, 0, 0]], [], [])
    b.receive(name(1), beat, deadline + 5)
    assert b.is_up(name(1), deadline + 5)


def test_relayed_news_counts_from_its_age():
    b = node(2)
    b.receive(name(3), push(entry(1, heartbeat=1, age=10_000)), 20.0)  # alive 10 s ago
    assert not b.is_up(name(1), 20.0)
    b.receive(name(3), push(entry(4, heartbeat=1, age=300)), 20.0)
    assert b.is_up(name(4), 20.0)
    b.receive(name(3), push(entry(5, heartbeat=1, age=None)), 20.0)  # never known alive
    assert not b.is_up(name(5), 20.0)


def test_refused_connections_convict_only_a_silent_peer():
    b = node(2)
    b.receive(name(1), push(entry(1, heartbeat=1)), 0.0)
    b.report_unreachable(name(1), 0.5)
    assert b.is_up(name(1), 1.9)
    assert b.next_check(1.0) == pytest.approx(2.0)
    assert not b.is_up(name(1), 2.0)
    # a node that keeps heartbeating is never convicted, whatever the links say
    c = node(3)
    for tick in range(20):
        c.receive(name(1), gossip._message(HEARTBEAT, [[name(1), GENERATION, tick + 1, 0, 0]],
                                           [], []) if tick else push(entry(1)), float(tick))
        c.report_unreachable(name(1), tick + 0.5)
        assert c.is_up(name(1), tick + 0.9)
    c.report_unreachable("nobody:1", 1.0)  # unknown names are ignored


def test_tick_gossips_to_a_live_peer_sometimes_a_down_one_and_beats_to_all():
    rng_seed = 5
    a = node(1, [Seed(name(2), "10.0.0.2", 8101)], rng_seed=rng_seed)
    for i in range(2, 10):
        a.receive(name(i), push(entry(i)), 0.0)
    a.receive(name(10), push(entry(10, age=60_000)), 0.0)  # long gone: down
    counts = {"down": 0, "ticks": 0}
    now = 0.0
    for tick in range(2000):
        now = tick * 0.001  # nobody goes stale
        out = a.tick(now)
        syns = [t for t, m in out if m["k"] == SYN]
        beats = {t for t, m in out if m["k"] == HEARTBEAT}
        assert set(syns) | beats == {name(i) for i in range(2, 11)}
        assert not set(syns) & beats
        counts["down"] += name(10) in syns
        counts["ticks"] += 1
    # Cassandra: a node believed down gets a SYN with probability down / (live + 1)
    assert counts["down"] / counts["ticks"] == pytest.approx(1 / 9, abs=0.03)


def test_states_are_declared_and_spread_but_down_is_never_declared():
    a, b = node(1), node(2)
    b.receive(name(1), push(entry(1)), 0.0)
    a.receive(name(2), push(entry(2)), 0.0)
    with pytest.raises(ValueError):
        a.set_state(State.DOWN)
    with pytest.raises(ValueError):
        a.set_state("SLEEPING")
    heartbeat = view_of(a)[name(1)][1]
    out = a.set_state(State.LEAVING)
    assert [t for t, _ in out] == [name(2)] and a.state is State.LEAVING
    assert view_of(a)[name(1)][1] == heartbeat + 1
    version = b.version
    b.receive(name(1), out[0][1], 0.1)
    assert view_of(b)[name(1)][2] is State.LEAVING and b.version > version
    assert a.set_state(State.LEAVING) == []
    for state in (State.STANDBY, State.WRITES_ONLY, State.RESUMING, State.NORMAL, State.JOINING):
        for _, message in a.set_state(state):
            b.receive(name(1), message, 0.2)
        assert view_of(b)[name(1)][2] is state


def test_news_is_pushed_on_to_other_live_peers():
    b = node(2, push_fanout=2)
    for i in (3, 4, 5):
        b.receive(name(i), push(entry(i)), 0.0)
    out = b.receive(name(3), push(entry(1)), 0.1)  # a node b never saw
    assert len(out) == 2 and all(t in {name(4), name(5)} for t, _ in out)
    assert b.receive(name(3), push(entry(1)), 0.2) == []  # not news any more


def test_view_and_members_list_every_node():
    a = node(1)
    a.receive(name(2), push(entry(2)), 0.0)
    view = a.view(0.5)
    assert list(view) == sorted(view) == [name(1), name(2)]
    assert view[name(1)].up and view[name(1)].phi == 0.0
    assert view[name(2)].up and 0 < view[name(2)].phi < 1
    assert [m.name for m in a.members()] == [name(1), name(2)]
    assert a.is_up(name(1), 99.0) and not a.is_up("unknown:1", 0.0)


def test_bad_construction_is_refused():
    with pytest.raises(ValueError):
        node(1, generation=0)
    with pytest.raises(ValueError):
        node(1, state=State.DOWN)
    with pytest.raises(ValueError):
        Membership(member(1), [("bad",)], gos_interval=1.0, rng=random.Random(), now=0.0)
    with pytest.raises(ValueError):
        Membership(member(1), gos_interval=0, rng=random.Random(), now=0.0)
    with pytest.raises(ValueError):
        Membership(member(1), [Seed(name(2), "h", 99999, "dc", "r", (1,))],
                   gos_interval=1.0, rng=random.Random(), now=0.0)


# ---------------------------------------------------------------------------
# Garbage.


GOOD_BODY = [[[name(1), GENERATION, 1, 0, 0]], [entry(1)], []]

BAD_MESSAGES = [
    None, 1, "syn", b"\x00", [], [1, 2, 3],
    {}, {"v": 2, "k": SYN, "b": b"\x93\x90\x90\x90"}, {"v": "1", "k": SYN, "b": b""},
    {"v": True, "k": SYN, "b": b""}, {"v": 1, "k": 9, "b": b"\x93\x90\x90\x90"},
    {"v": 1, "k": SYN}, {"v": 1, "k": SYN, "b": "text"}, {"v": 1, "k": SYN, "b": b""},
    {"v": 1, "k": SYN, "b": b"\xc1"}, {"v": 1, "k": SYN, "b": b"\x93\x90\x90\x90\x90"},
    {"v": 1, "k": SYN, "b": b"\x91" * 100_000},
    {"v": 1, "k": SYN, "b": msgpack.packb([[], []])},
    {"v": 1, "k": SYN, "b": msgpack.packb({"d": []})},
    {"v": 1, "k": SYN, "b": msgpack.packb([[["x", 1, 1]], [], []])},
]


def _bad_bodies():
    digest = [name(1), GENERATION, 5, 2, 0]
    for index, value in [(0, ""), (0, "x" * 300), (0, 7), (1, 0), (1, -1), (1, 2**63),
                         (1, 1.5), (1, True), (2, -1), (3, 6), (4, -5), (4, 2**32),
                         (4, "0")]:
        bad = list(digest)
        bad[index] = value
        yield [[bad], [], []]
    good = entry(1, heartbeat=5, sv=2)
    for index, value in [(4, ""), (5, 0), (5, 65536), (6, None), (7, 3), (8, []),
                         (8, [1, 1]), (8, [2**32]), (8, [-1]), (8, "1"), (9, "DOWN"),
                         (9, "normal"), (9, 1), (10, 0), (10, "8102"), (11, -1)]:
        bad = list(good)
        bad[index] = value
        yield [[], [bad], []]
    yield [[], [good[:11]], []]
    yield [[], [], [1]]
    yield [[], [], [""]]
    yield [{}, [], []]


@pytest.mark.parametrize("message", BAD_MESSAGES + [
    {"v": 1, "k": ACK, "b": msgpack.packb(bad)} for bad in _bad_bodies()])
def test_garbage_raises_gossip_error_and_changes_nothing(message):
    b = node(2)
    b.receive(name(3), push(entry(3)), 0.0)
    before, version = view_of(b), b.version
    with pytest.raises(GossipError):
        b.receive(name(1), message, 0.5)
    assert view_of(b) == before and b.version == version
    assert isinstance(GossipError(), ValueError)


def test_a_message_with_one_bad_entry_is_refused_whole():
    b = node(2)
    bad = entry(4)
    bad[8] = []
    with pytest.raises(GossipError, match="tokens of 10.0.0.4:8101"):
        b.receive(name(1), push(entry(1), entry(3), bad), 0.0)
    assert set(view_of(b)) == {name(2)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=10)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=3), children, max_size=4), max_leaves=30))
def test_any_value_is_either_a_message_or_a_gossip_error(value):
    b = node(2)
    for candidate in (value, {"v": 1, "k": SYN, "b": msgpack.packb(value)},
                      {"v": 1, "k": ACK, "b": msgpack.packb([value, [], []])},
                      {"v": 1, "k": ACK2, "b": msgpack.packb([[], [value], []])}):
        try:
            b.receive(name(1), candidate, 0.0)
        except GossipError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 10_000))
def test_corrupted_bodies_never_crash(noise, position):
    good = bytearray(msgpack.packb(GOOD_BODY))
    position %= len(good)
    good[position:position + len(noise)] = noise
    b = node(2)
    try:
        b.receive(name(1), {"v": 1, "k": ACK, "b": bytes(good)}, 0.0)
    except GossipError:
        pass


# ---------------------------------------------------------------------------
# Merging is a join: any order, any repetition, the same view.


@st.composite
def histories(draw):
    """Full entries of up to 4 authors, several versions each (generations and
    heartbeats growing, fields changing at sv), plus some conflicting copies."""
    entries = []
    for author in range(1, draw(st.integers(1, 4)) + 1):
        generation = GENERATION + draw(st.integers(0, 3))
        sv = 0
        state = "NORMAL"
        for heartbeat in sorted(draw(st.sets(st.integers(0, 30), min_size=1, max_size=6))):
            if draw(st.booleans()):
                sv, state = heartbeat, draw(st.sampled_from(["NORMAL", "LEAVING", "STANDBY"]))
            entries.append(entry(author, generation, heartbeat, sv, state=state,
                                 age=draw(st.integers(0, 5000))))
        if draw(st.booleans()):  # a restart
            entries.append(entry(author, generation + 1, draw(st.integers(0, 5)), 0,
                                 tokens=[author * 1000 + 1], age=0))
    return entries


@settings(max_examples=200, deadline=None)
@given(histories(), st.randoms(use_true_random=False), st.integers(1, 3))
def test_merging_entries_in_any_order_and_any_number_of_times_gives_one_view(
        entries, rng, repeat):
    reference = node(9)
    for item in entries:
        reference.receive(name(8), push(item), 1.0)
    shuffled = entries * repeat
    rng.shuffle(shuffled)
    other = node(9)
    for start in range(0, len(shuffled), 3):  # in batches, as messages carry several
        other.receive(name(8), push(*shuffled[start:start + 3]), 1.0)
    assert view_of(other) == view_of(reference)
    # and the view holds the largest version of each author
    for author in {item[0] for item in entries}:
        best = max((item for item in entries if item[0] == author),
                   key=lambda item: (item[1], item[2]))
        assert view_of(reference)[author][:2] == (best[1], best[2])


@settings(max_examples=100, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_digests_never_move_a_view_backwards_nor_change_fields(entries, rng):
    m = node(9)
    for item in entries[: len(entries) // 2]:
        m.receive(name(8), push(item), 1.0)
    digests = [item[:4] + [0] for item in entries]
    rng.shuffle(digests)
    before = view_of(m)
    for kind in (SYN, ACK, ACK2, HEARTBEAT):
        m.receive(name(8), gossip._message(kind, digests, [], []), 2.0)
    after = view_of(m)
    assert set(after) == set(before)
    for author, fields in before.items():
        assert after[author][:1] == fields[:1] and after[author][1] >= fields[1]
        assert after[author][2:] == fields[2:]


# ---------------------------------------------------------------------------
# The wire.


def test_every_message_fits_a_peer_frame():
    nodes = {name(i): node(i, [Seed(name(1), "10.0.0.1", 8101)], rng_seed=i,
                           ) for i in range(1, 21)}
    seen = set()
    for tick in range(6):
        outbox = []
        for who, m in nodes.items():
            for target, message in m.tick(float(tick)):
                outbox.append((who, target, message))
        while outbox:
            sender, target, message = outbox.pop(0)
            seen.add(message["k"])
            frame = msgpack.packb([4, 0, message])
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_array_len=16,
                                        max_map_len=64)
            unpacker.feed(frame)
            kind, _, decoded = next(unpacker)
            assert decoded == message
            for reply_target, reply in nodes[target].receive(sender, decoded, float(tick)):
                outbox.append((target, reply_target, reply))
    assert seen == {SYN, ACK, ACK2, HEARTBEAT}
    assert all(len(m.members()) == 20 for m in nodes.values())
