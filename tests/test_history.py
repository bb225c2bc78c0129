"""The history checker of the nemesis test (tests/history.py), checked itself.

Histories are generated from a simulated linearizable register per key: each operation
takes effect at one point inside its interval (a write that was not acknowledged at any
point after it was invoked, even long after the client gave up, or never), so every history
generated is one a correct system could produce, and the checker must pass it. Then one
fault is injected - a stale read, a lost acknowledged write, an older value resurrected (as
a replayed write would) - and the checker must catch exactly that.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import history
from history import FAIL, OK, READ, UNKNOWN, WRITE, History, HistoryError, Op

KEYS = ("a", "b", "c")
INJECTED = 99  # the client of injected reads


# --------------------------------------------------------------------------- simulation


@dataclasses.dataclass
class Planned:
    """An operation of the simulation and when it takes effect on the register
    (`point`, None: never; equal points in `tie` order)."""

    op: Op
    point: int | None
    tie: int


@st.composite
def planned_ops(draw, max_ops: int = 40) -> list[Planned]:
    """Operations with their intervals, outcomes and points of effect (values not read yet)."""
    planned = []
    for index in range(draw(st.integers(0, max_ops))):
        client = draw(st.integers(0, 3))
        kind = draw(st.sampled_from((WRITE, READ)))
        key = draw(st.sampled_from(KEYS))
        invoked = draw(st.integers(0, 100))
        completed = invoked + draw(st.integers(0, 20))
        outcome = draw(st.sampled_from((OK, OK, OK, FAIL, UNKNOWN)))
        if kind == READ or outcome == OK:
            point = draw(st.integers(invoked, completed))
        else:
            # Not acknowledged: may take effect late (a hint replayed), or never.
            point = draw(st.none() | st.integers(invoked, completed + 40))
        value = history.write_value(client, index) if kind == WRITE else None
        op = Op(client, kind, key, value, invoked, completed, outcome, None if outcome == OK else "simulated")
        planned.append(Planned(op, point, draw(st.integers(0, 3))))
    return planned


def simulate(planned: list[Planned], resurrections: list[tuple[int, int, Op]] = ()) -> dict[str, str | None]:
    """Run the register: writes apply, ok reads take the current value; each resurrection
    (point, tie, write) puts that write's value back, as a replay of an old write would.
    Returns the registers at the end."""
    events = [(p.point, p.tie, i, p.op) for i, p in enumerate(planned) if p.point is not None]
    events += [(point, tie, -1, ("resurrect", write)) for point, tie, write in resurrections]
    register: dict[str, str | None] = {}
    for _, _, _, what in sorted(events, key=lambda e: e[:3]):
        if isinstance(what, tuple):
            write = what[1]
            register[write.key] = write.value
        elif what.kind == WRITE:
            register[what.key] = what.value
        elif what.outcome == OK:
            what.value = register.get(what.key)
    return register


def acked_writes(ops):
    return [op for op in ops if op.kind == WRITE and op.acked]


def older_values(ops, write: Op) -> list[str | None]:
    """Values older than `write`: nil, and every write of its key acknowledged before it began."""
    return [None] + [w.value for w in acked_writes(ops) if w.key == write.key and w.completed < write.invoked]


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(planned_ops())
def test_histories_of_a_linearizable_register_pass(planned):
    final = simulate(planned)
    ops = [p.op for p in planned]
    assert history.check(ops, {"rack1": final}) == []


@settings(max_examples=100, deadline=None)
@given(planned_ops(), st.data())
def test_a_stale_read_is_caught(planned, data):
    simulate(planned)
    ops = [p.op for p in planned]
    acked = acked_writes(ops)
    assume(acked)
    newer = data.draw(st.sampled_from(acked))
    stale = data.draw(st.sampled_from(older_values(ops, newer)))
    invoked = newer.completed + data.draw(st.integers(1, 30))
    read = Op(INJECTED, READ, newer.key, stale, invoked, invoked + data.draw(st.integers(0, 10)), OK)
    violations = history.check_reads(ops + [read])
    assert [v.rule for v in violations] == [history.STALE_READ]
    (found,) = violations
    assert found.key == newer.key
    assert f"client {INJECTED}" in found.detail
    assert (repr(stale) if stale is not None else "nil") in found.detail


@settings(max_examples=100, deadline=None)
@given(planned_ops(), st.data())
def test_a_lost_acknowledged_write_is_caught(planned, data):
    final = simulate(planned)
    ops = [p.op for p in planned]
    acked = acked_writes(ops)
    assume(acked)
    lost = data.draw(st.sampled_from(acked))
    final[lost.key] = data.draw(st.sampled_from(older_values(ops, lost)))
    violations = history.check(ops, {"rack2": final})
    assert [(v.rule, v.key) for v in violations] == [(history.LOST_WRITE, lost.key)]
    assert "rack2" in violations[0].detail


@settings(max_examples=100, deadline=None)
@given(planned_ops(), st.data())
def test_an_older_value_resurrected_is_caught(planned, data):
    ops = [p.op for p in planned]
    superseded = [(old, new) for old, new in itertools.permutations(acked_writes(ops), 2)
                  if old.key == new.key and old.completed < new.invoked]  # fmt: skip
    assume(superseded)
    old, new = data.draw(st.sampled_from(superseded))
    # The old write comes back after the new one was acknowledged, and a read right after sees it.
    point = new.completed + data.draw(st.integers(1, 50))
    read = Op(INJECTED, READ, old.key, None, point, point + data.draw(st.integers(0, 10)), OK)
    planned.append(Planned(read, point, 11))  # ties of planned ops are 0-3
    final = simulate(planned, [(point, 10, old)])
    violations = history.check(ops + [read], {"rack3": final})
    assert read.value == old.value
    assert (history.STALE_READ, old.key) in [(v.rule, v.key) for v in violations]
    if final[old.key] == old.value:
        assert (history.LOST_WRITE, old.key) in [(v.rule, v.key) for v in violations]
    assert {v.key for v in violations} == {old.key}


# --------------------------------------------------------------------------- the rules by example


def write(client, key, value, invoked, completed, outcome=OK):
    return Op(client, WRITE, key, value, invoked, completed, outcome)


def read(client, key, value, invoked, completed, outcome=OK):
    return Op(client, READ, key, value, invoked, completed, outcome)


def test_concurrent_writes_may_be_seen_in_either_order():
    w1, w2 = write(1, "k", "c1-1", 0, 10), write(2, "k", "c2-1", 5, 15)
    for value in ("c1-1", "c2-1"):
        ops = [w1, w2, read(3, "k", value, 20, 21)]
        assert history.check(ops, {"rack1": {"k": value}}) == []


def test_a_write_not_acknowledged_may_appear_any_time_later():
    # c1-1 timed out at 1; c2-1 was acknowledged after it; c1-1 may still have landed last.
    for outcome in (UNKNOWN, FAIL):
        ops = [write(1, "k", "c1-1", 0, 1, outcome), write(2, "k", "c2-1", 2, 3), read(3, "k", "c1-1", 4, 5)]
        assert history.check(ops, {"rack1": {"k": "c1-1"}, "rack2": {"k": "c2-1"}}) == []
        # ... or never: nil is fine while nothing was acknowledged.
        assert history.check(ops[:1] + [read(3, "k", None, 4, 5)], {"rack1": {}}) == []


def test_nil_after_an_acknowledged_write_is_stale_and_before_it_is_not():
    w = write(1, "k", "c1-1", 10, 20)
    assert history.check_reads([w, read(2, "k", None, 15, 25)]) == []
    (found,) = history.check_reads([w, read(2, "k", None, 21, 25)])
    assert found.rule == history.STALE_READ
    assert "returned nil" in found.detail


def test_a_long_write_acknowledged_last_does_not_hide_a_newer_one():
    # c3-1 began after c2-1 was acknowledged, so c2-1 is stale once c3-1 is; c1-1, which
    # began first and was acknowledged last, is concurrent with both and changes nothing.
    ops = [write(1, "k", "c1-1", 0, 10), write(2, "k", "c2-1", 1, 2), write(3, "k", "c3-1", 3, 5)]
    (found,) = history.check_reads(ops + [read(4, "k", "c2-1", 11, 12)])
    assert "write 'c3-1'" in found.detail
    assert history.check_reads(ops + [read(4, "k", "c1-1", 11, 12)]) == []
    assert [v.rule for v in history.check_final(ops, {"k": "c2-1"})] == [history.LOST_WRITE]


def test_a_stale_read_names_the_key_the_value_the_write_it_missed_and_the_times():
    ops = [write(1, "k", "c1-1", 100.0, 101.0), write(2, "k", "c2-7", 102.0, 103.5),
           read(3, "k", "c1-1", 104.25, 105.0)]  # fmt: skip
    (found,) = history.check_reads(ops)
    text = str(found)
    assert text.startswith("stale read: key 'k': read by client 3 during [4.250, 5.000] s (ok) returned 'c1-1'")
    assert "of write 'c1-1' by client 1 during [0.000, 1.000] s (ok)" in text
    assert "write 'c2-7' by client 2 during [2.000, 3.500] s (ok) was acknowledged before the read began" in text


def test_a_read_of_a_value_nobody_wrote_or_not_yet_written_is_caught():
    w = write(1, "k", "c1-1", 10, 20)
    (unwritten,) = history.check_reads([w, read(2, "k", "c9-9", 30, 31)])
    assert unwritten.rule == history.READ_UNWRITTEN
    (early,) = history.check_reads([w, read(2, "k", "c1-1", 5, 9)])
    assert early.rule == history.READ_BEFORE_WRITE


def test_a_final_state_holding_a_key_nobody_wrote_is_caught():
    (found,) = history.check_final([write(1, "k", "c1-1", 0, 1)], {"k": "c1-1", "x": "c5-5"}, "rack1")
    assert (found.rule, found.key) == (history.FINAL_UNWRITTEN, "x")
    assert "rack1 holds 'c5-5'" in found.detail


def test_reads_that_failed_are_not_judged():
    ops = [write(1, "k", "c1-1", 0, 1), read(2, "k", None, 2, 3, FAIL), read(2, "k", None, 4, 5, UNKNOWN)]
    assert history.check_reads(ops) == []


def test_a_value_written_twice_is_a_malformed_history():
    with pytest.raises(HistoryError, match="written twice"):
        history.check_reads([write(1, "k", "v", 0, 1), write(2, "k", "v", 2, 3)])


# --------------------------------------------------------------------------- the recorder


def test_the_recorder_stamps_invocation_and_completion_with_its_clock():
    ticks = iter(range(-1, 100))
    h = History(clock=lambda: next(ticks))
    w = h.invoke(1, WRITE, "k", "c1-1")
    r = h.invoke(2, READ, "k")
    h.ok(w)
    h.ok(r, "c1-1")
    u = h.invoke(1, WRITE, "k", "c1-2")
    h.unknown(u, "timed out")
    f = h.invoke(2, READ, "k")
    h.fail(f, "-ERR quorum not achieved")
    assert (h.started, w.invoked, w.completed, r.invoked, r.completed) == (-1, 0, 2, 1, 3)
    assert (r.value, f.value, u.outcome, u.error) == ("c1-1", None, UNKNOWN, "timed out")
    assert h.counts() == {(WRITE, OK): 1, (READ, OK): 1, (WRITE, UNKNOWN): 1, (READ, FAIL): 1}
    with pytest.raises(HistoryError, match="completed twice"):
        h.ok(w)
    assert history.check(h.ops) == []


def test_perform_runs_and_records_one_operation():
    record = History()
    sent = []

    def call(*argv):
        sent.append(argv)
        return {"SET": (history.OK, "OK"), "GET": (history.OK, "v1")}[argv[0]]

    write = record.perform(1, call, WRITE, "k", "v1", "KEEPTTL")
    read = record.perform(2, call, READ, "k")
    assert sent == [("SET", "k", "v1", "KEEPTTL"), ("GET", "k")]
    assert (write.outcome, write.value, read.outcome, read.value) == (history.OK, "v1", history.OK, "v1")
    odd = record.perform(1, lambda *argv: (history.OK, "QUEUED"), WRITE, "k", "v2")
    lost = record.perform(1, lambda *argv: (history.UNKNOWN, "timed out"), READ, "k")
    assert (odd.outcome, odd.error) == (history.FAIL, "unexpected reply 'QUEUED'")
    assert (lost.outcome, lost.error, lost.value) == (history.UNKNOWN, "timed out", None)
