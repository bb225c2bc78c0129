"""The quorum logic (dyno.consistency) against a brute-force oracle.

The oracle is written from the rules, not from the tracker: ``verdict`` says what a
request's answer is once every replica's outcome is known; a prefix of outcomes is
*decided* when every way the outstanding replicas could still answer (every outcome,
every value - seen before or new - and, where order matters, every order) leads to
the same verdict. The tracker must answer exactly once, exactly at the first decided
prefix, with the verdict (or, for a failed quorum, the error the rules give for what
was known at that point).
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyno import config, consistency
from dyno.consistency import LEVELS, Quorum, QuorumTracker

REPLY, FAIL = "reply", "fail"
UNDECIDED = object()


class Shape(NamedTuple):
    level: str
    dcs: tuple[str, ...]
    local: str = "dc1"
    primary: int = 0


def majority(replicas: int) -> int:
    return replicas // 2 + 1


# -- the oracle ----------------------------------------------------------------------


def quorum_value(replies: list[bytes], replicas: int) -> bytes | None:
    """The value at least a majority of ``replicas`` replied, if any."""
    for value, same in Counter(replies).items():
        if same >= majority(replicas):
            return value
    return None


def verdict(shape: Shape, outcomes) -> object:
    """The answer once every replica's outcome is in (``outcomes`` in arrival order).
    DC_ONE: the client's reply. The quorum levels: ("ok", value) or ("fail",); the
    error line depends on when the failure became certain (see ``failure_line``)."""
    if shape.level == "DC_ONE":
        outcome_of = {index: (kind, payload) for index, kind, payload in outcomes}
        kind, payload = outcome_of[shape.primary]
        if kind == REPLY:
            return payload
        for index, kind, other in outcomes:
            if kind == REPLY:
                return other
        return payload
    if shape.level in ("DC_QUORUM", "DC_SAFE_QUORUM"):
        counted = [i for i, dc in enumerate(shape.dcs) if dc == shape.local]
        replies = [p for i, k, p in outcomes if k == REPLY and i in counted]
        value = quorum_value(replies, len(counted))
        return ("fail",) if value is None else ("ok", value)
    assert shape.level == "DC_EACH_SAFE_QUORUM"
    winners = set()
    for dc in set(shape.dcs):
        members = [i for i, d in enumerate(shape.dcs) if d == dc]
        value = quorum_value([p for i, k, p in outcomes if k == REPLY and i in members], len(members))
        if value is None:
            return ("fail",)
        winners.add(value)
    return ("ok", winners.pop()) if len(winners) == 1 else ("fail",)


def completions(shape: Shape, prefix):
    """Every way the replicas not in ``prefix`` could still report."""
    reported = {index for index, _, _ in prefix}
    outstanding = [i for i in range(len(shape.dcs)) if i not in reported]
    if shape.level == "DC_ONE":
        # DC_ONE never compares replies, so one new value per replica covers every
        # case; but the order of arrival matters.
        for order in itertools.permutations(outstanding):
            for kinds in itertools.product((FAIL, REPLY), repeat=len(order)):
                yield list(prefix) + [
                    (i, k, b"-ERR what if %d\r\n" % i if k == FAIL else b"+new %d\r\n" % i)
                    for i, k in zip(order, kinds)
                ]
        return
    # The quorum verdicts depend on the outcomes, not their order; values are the
    # ones seen so far plus enough new ones for any pattern of agreement.
    seen = list(dict.fromkeys(p for _, k, p in prefix if k == REPLY))
    fresh = [b"+new %d\r\n" % n for n in range(len(outstanding))]
    choices = [(FAIL, b"-ERR what if\r\n")] + [(REPLY, v) for v in seen + fresh]
    for picks in itertools.product(choices, repeat=len(outstanding)):
        yield list(prefix) + [(i, k, p) for i, (k, p) in zip(outstanding, picks)]


_decided_cache: dict = {}


def decided(shape: Shape, prefix) -> object:
    """The verdict if ``prefix`` fixes it, else UNDECIDED. Cached on the prefix with
    its payloads renamed in order of appearance (the oracle only compares them)."""
    names: dict[tuple[str, bytes], bytes] = {}
    canonical = []
    for index, kind, payload in prefix:
        name = names.setdefault((kind, payload), b"%s%d" % (kind.encode(), len(names)))
        canonical.append((index, kind, name))
    key = (shape, tuple(canonical))
    if key not in _decided_cache:
        found = UNDECIDED
        for full in completions(shape, canonical):
            answer = verdict(shape, full)
            if found is UNDECIDED:
                found = answer
            elif answer != found:
                found = UNDECIDED
                break
        _decided_cache[key] = found
    found = _decided_cache[key]
    payload_of = {name: payload for (_, payload), name in names.items()}
    if isinstance(found, bytes):
        return payload_of[found]
    if isinstance(found, tuple) and found[0] == "ok":
        return ("ok", payload_of[found[1]])
    return found


def quorum_possible(members: list[int], prefix) -> bool:
    """Could these replicas still reach a quorum on some value? (brute force)"""
    reported = {i: (k, p) for i, k, p in prefix if i in members}
    outstanding = [i for i in members if i not in reported]
    replies = [p for k, p in reported.values() if k == REPLY]
    choices = [None] + list(dict.fromkeys(replies)) + [b"new %d" % n for n in range(len(outstanding))]
    for picks in itertools.product(choices, repeat=len(outstanding)):
        if quorum_value(replies + [p for p in picks if p is not None], len(members)) is not None:
            return True
    return False


def group_failure_line(level: str, members: list[int], prefix, datacenter=None) -> bytes:
    """The rules' error for a group of replicas that can no longer reach a quorum."""
    mine = [(k, p) for i, k, p in prefix if i in members]
    answered = sum(1 for k, _ in mine if k == REPLY)
    failures = [p for k, p in mine if k == FAIL]
    replicas, needed = len(members), majority(len(members))
    if len(failures) > replicas - needed:
        return consistency.quorum_not_achieved(answered, replicas, needed, failures[0], datacenter)
    return consistency.replicas_disagree(level, datacenter)


def failure_line(shape: Shape, prefix) -> bytes:
    if shape.level in ("DC_QUORUM", "DC_SAFE_QUORUM"):
        members = [i for i, dc in enumerate(shape.dcs) if dc == shape.local]
        return group_failure_line(shape.level, members, prefix)
    for dc in dict.fromkeys(shape.dcs):
        members = [i for i, d in enumerate(shape.dcs) if d == dc]
        if not quorum_possible(members, prefix):
            return group_failure_line(shape.level, members, prefix, dc)
    return consistency.DATACENTERS_DISAGREE


def expected(shape: Shape, outcomes) -> tuple[int, bytes]:
    """(how many outcomes the tracker needs before answering, its answer)."""
    for seen in range(len(outcomes) + 1):
        found = decided(shape, outcomes[:seen])
        if found is not UNDECIDED:
            break
    assert found is not UNDECIDED, "a complete set of outcomes always decides"
    if isinstance(found, bytes):
        return seen, found
    if found[0] == "ok":
        return seen, found[1]
    return seen, failure_line(shape, outcomes[:seen])


def check(shape: Shape, outcomes) -> None:
    """The tracker, and a Quorum of one request (which applies it, with a cheaper
    start when every replica is local), answer as the oracle says, when it says."""
    when, answer = expected(shape, outcomes)
    assert when >= 1
    deciders = [
        QuorumTracker(shape.level, list(shape.dcs), shape.local, shape.primary),
        Quorum(shape.level, len(shape.dcs), shape.local, list(shape.dcs), 1, shape.primary),
    ]
    if set(shape.dcs) == {shape.local}:
        deciders.append(Quorum(shape.level, len(shape.dcs), shape.local, None, 1, shape.primary))
    for decider in deciders:
        for step, (index, kind, payload) in enumerate(outcomes, start=1):
            given_ = decider.reply(index, payload) if kind == REPLY else decider.failure(index, payload)
            context = f"{decider!r} {shape} {outcomes} after {step}"
            if step < when:
                assert given_ is None and not decider.done and decider.result is None, context
            elif step == when:
                assert given_ == answer and decider.done and decider.result == answer, context
            else:
                assert given_ is None and decider.done and decider.result == answer, context


# -- exhaustive: every outcome from a small set, every order of arrival ---------------


def every_run(shape: Shape, values: tuple[bytes, ...]):
    replicas = range(len(shape.dcs))
    domain = [(REPLY, v) for v in values] + [(FAIL, None)]
    for picks in itertools.product(domain, repeat=len(shape.dcs)):
        outcome_of = {
            i: (k, p if k == REPLY else b"-ERR dyno: replica %d timed out\r\n" % i)
            for i, (k, p) in zip(replicas, picks)
        }
        for order in itertools.permutations(replicas):
            yield [(i, *outcome_of[i]) for i in order]


ABC = (b"$1\r\na\r\n", b"$1\r\nb\r\n", b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")


@pytest.mark.parametrize("level", ["DC_ONE", "DC_QUORUM", "DC_SAFE_QUORUM"])
@pytest.mark.parametrize("racks", [1, 2, 3, 4])
def test_one_datacenter_every_order(level, racks):
    values = ABC if racks <= 3 else ABC[:2]
    primaries = range(racks) if level == "DC_ONE" and racks <= 3 else [0]
    for primary in primaries:
        shape = Shape(level, ("dc1",) * racks, primary=primary)
        for outcomes in every_run(shape, values):
            check(shape, outcomes)


@pytest.mark.parametrize("dcs", [
    ("dc1", "dc2"),
    ("dc1", "dc1", "dc2"),
    ("dc2", "dc1", "dc2"),
    ("dc1", "dc2", "dc1", "dc2"),
    ("dc1", "dc1", "dc1", "dc2"),
])
def test_each_safe_quorum_every_order(dcs):
    shape = Shape("DC_EACH_SAFE_QUORUM", dcs)
    for outcomes in every_run(shape, ABC[:2]):
        check(shape, outcomes)


@pytest.mark.parametrize("level", ["DC_ONE", "DC_QUORUM", "DC_SAFE_QUORUM"])
def test_remote_replicas_listed_every_order(level):
    """Quorum levels ignore remote replicas; DC_ONE may fall back to them."""
    shape = Shape(level, ("dc1", "dc2", "dc1"))
    for outcomes in every_run(shape, ABC[:2]):
        check(shape, outcomes)


# -- hypothesis: up to 5 racks per datacenter, 2 datacenters -------------------------

PAYLOADS = (b"+OK\r\n", b"$1\r\na\r\n", b"$1\r\nb\r\n", b":1\r\n", ABC[2])
REASONS = (b"-ERR dyno: peer 10.0.0.2:8101 timed out\r\n", b"-ERR dyno: peer 10.0.0.3:8101 is down\r\n",
           b"-ERR dyno: link to 10.0.0.4:8101 lost\r\n")


@st.composite
def runs(draw):
    level = draw(st.sampled_from(LEVELS))
    local = draw(st.integers(1, 5))
    remote = draw(st.integers(1 if level == "DC_EACH_SAFE_QUORUM" and local == 1 else 0, 5 - local))
    dcs = tuple(draw(st.permutations(["dc1"] * local + ["dc2"] * remote)))
    primary = draw(st.sampled_from([i for i, dc in enumerate(dcs) if dc == "dc1"]))
    # a small pool of values, so that replicas often agree
    pool = draw(st.lists(st.sampled_from(PAYLOADS), min_size=1, max_size=3, unique=True))
    outcome = st.one_of(st.tuples(st.just(REPLY), st.sampled_from(pool)),
                        st.tuples(st.just(FAIL), st.sampled_from(REASONS)))
    picks = draw(st.lists(outcome, min_size=len(dcs), max_size=len(dcs)))
    order = draw(st.permutations(range(len(dcs))))
    return Shape(level, dcs, "dc1", primary), [(i, *picks[i]) for i in order]


@settings(max_examples=600, deadline=None)
@given(runs())
def test_every_level_against_the_oracle(run):
    check(*run)


# -- examples: the rules in plain words ----------------------------------------------

A, B, C = b"$1\r\na\r\n", b"$1\r\nb\r\n", b"$1\r\nc\r\n"
DOWN = b"-ERR dyno: peer 10.0.0.2:8101 is down\r\n"
THREE = ["dc1", "dc1", "dc1"]


def test_quorum_arithmetic():
    assert [consistency.quorum(r) for r in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(ValueError):
        consistency.quorum(0)


def test_levels_are_the_configs():
    assert LEVELS == config.CONSISTENCY_LEVELS


@pytest.mark.parametrize("level", ["DC_QUORUM", "DC_SAFE_QUORUM"])
def test_two_of_three_agree(level):
    tracker = QuorumTracker(level, THREE, "dc1")
    assert tracker.reply(0, A) is None
    assert tracker.reply(1, B) is None
    assert tracker.reply(2, A) == A
    assert tracker.done and tracker.result == A


@pytest.mark.parametrize("level", ["DC_QUORUM", "DC_SAFE_QUORUM"])
def test_two_agree_first_needs_no_third(level):
    tracker = QuorumTracker(level, THREE, "dc1")
    assert tracker.reply(2, B) is None
    assert tracker.reply(0, B) == B
    assert tracker.reply(1, A) is None and tracker.result == B


def test_all_three_differ():
    for level in ("DC_QUORUM", "DC_SAFE_QUORUM"):
        tracker = QuorumTracker(level, THREE, "dc1")
        assert tracker.reply(0, A) is None
        assert tracker.reply(1, B) is None
        assert tracker.reply(2, C) == b"-ERR dyno: %s not achieved: replicas disagree\r\n" % level.encode()


def test_two_replicas_disagree_fails_before_the_third_once_no_value_can_win():
    tracker = QuorumTracker("DC_SAFE_QUORUM", ["dc1"] * 5, "dc1")
    for index, value in enumerate([A, B, C, A]):
        assert tracker.reply(index, value) is None
    # a, b, c, a: the last replica could still make 'a' a quorum of 3
    assert tracker.reply(4, A) == A


def test_failures_make_quorum_impossible():
    tracker = QuorumTracker("DC_QUORUM", THREE, "dc1")
    assert tracker.reply(1, A) is None
    assert tracker.failure(0, DOWN) is None
    assert tracker.failure(2, b"-ERR dyno: peer 10.0.0.4:8101 timed out\r\n") == (
        b"-ERR dyno: quorum not achieved: 1 of 3 replicas answered, 2 needed "
        b"(ERR dyno: peer 10.0.0.2:8101 is down)\r\n")
    assert tracker.done


def test_one_failure_of_three_still_succeeds():
    tracker = QuorumTracker("DC_QUORUM", THREE, "dc1")
    assert tracker.failure(0, DOWN) is None
    assert tracker.reply(1, A) is None
    assert tracker.reply(2, A) == A


def test_a_redis_error_is_an_answer():
    wrongtype = ABC[2]
    tracker = QuorumTracker("DC_SAFE_QUORUM", THREE, "dc1")
    assert tracker.reply(0, wrongtype) is None
    assert tracker.reply(1, wrongtype) == wrongtype


def test_dc_one_primary_answers():
    tracker = QuorumTracker("DC_ONE", THREE, "dc1", primary=1)
    assert tracker.reply(0, B) is None  # another rack was faster: still the primary's reply
    assert tracker.reply(1, A) == A
    assert tracker.reply(2, C) is None


def test_dc_one_primary_down_serves_another_rack():
    tracker = QuorumTracker("DC_ONE", THREE, "dc1")
    assert tracker.failure(0, DOWN) is None
    assert tracker.failure(1, DOWN) is None
    assert tracker.reply(2, B) == B


def test_dc_one_primary_down_after_another_rack_answered():
    tracker = QuorumTracker("DC_ONE", ["dc1", "dc1", "dc2"], "dc1")
    assert tracker.reply(2, C) is None
    assert tracker.reply(1, B) is None
    assert tracker.failure(0, DOWN) == C  # the first other reply


def test_dc_one_everything_down_gives_the_primarys_error():
    tracker = QuorumTracker("DC_ONE", THREE, "dc1", primary=2)
    assert tracker.failure(0, b"-ERR dyno: other\r\n") is None
    assert tracker.failure(2, DOWN) is None
    assert tracker.failure(1, b"-ERR dyno: other\r\n") == DOWN


def test_dc_one_single_replica():
    assert QuorumTracker("DC_ONE", ["dc1"], "dc1").failure(0, DOWN) == DOWN
    assert QuorumTracker("DC_ONE", ["dc1"], "dc1").reply(0, A) == A


def test_quorum_ignores_remote_replicas():
    tracker = QuorumTracker("DC_QUORUM", ["dc2", "dc1", "dc2"], "dc1")
    assert tracker.reply(0, A) is None
    assert tracker.failure(2, DOWN) is None
    assert tracker.reply(1, B) == B  # R = 1 local replica


def test_each_safe_quorum():
    dcs = ["dc1", "dc1", "dc1", "dc2", "dc2", "dc2"]
    tracker = QuorumTracker("DC_EACH_SAFE_QUORUM", dcs, "dc1")
    assert tracker.reply(0, A) is None
    assert tracker.reply(1, A) is None  # dc1 has its quorum, dc2 has nothing yet
    assert tracker.reply(3, A) is None
    assert tracker.failure(4, DOWN) is None
    assert tracker.reply(5, A) == A


def test_each_safe_quorum_datacenters_disagree():
    tracker = QuorumTracker("DC_EACH_SAFE_QUORUM", ["dc1", "dc1", "dc2", "dc2"], "dc1")
    assert tracker.reply(0, A) is None
    assert tracker.reply(1, A) is None
    assert tracker.reply(2, B) == (
        b"-ERR dyno: DC_EACH_SAFE_QUORUM not achieved: datacenters disagree\r\n")


def test_each_safe_quorum_a_datacenter_fails():
    tracker = QuorumTracker("DC_EACH_SAFE_QUORUM", ["dc1", "dc2", "dc2", "dc1", "dc2"], "dc1")
    assert tracker.failure(1, DOWN) is None
    assert tracker.failure(4, b"-ERR dyno: peer 10.0.0.9:8101 timed out\r\n") == (
        b"-ERR dyno: quorum not achieved in dc2: 0 of 3 replicas answered, 2 needed "
        b"(ERR dyno: peer 10.0.0.2:8101 is down)\r\n")
    tracker = QuorumTracker("DC_EACH_SAFE_QUORUM", ["dc1", "dc2", "dc2", "dc2"], "dc1")
    assert tracker.reply(1, A) is None
    assert tracker.reply(2, B) is None
    assert tracker.reply(3, C) == (
        b"-ERR dyno: DC_EACH_SAFE_QUORUM not achieved in dc2: replicas disagree\r\n")


def test_failure_reason_is_one_line():
    line = consistency.quorum_not_achieved(0, 1, 1, b"-ERR a\r\nb\r\n")
    assert line == b"-ERR dyno: quorum not achieved: 0 of 1 replicas answered, 1 needed (ERR a  b)\r\n"


@pytest.mark.parametrize("args", [
    ("DC_TWO", ["dc1"], "dc1"),
    ("DC_ONE", [], "dc1"),
    ("DC_QUORUM", ["dc2", "dc2"], "dc1"),
    ("DC_ONE", ["dc1"], "dc1", 1),
])
def test_misuse_is_a_value_error(args):
    with pytest.raises(ValueError):
        QuorumTracker(*args)


def test_reporting_a_replica_twice_or_an_unlisted_one_is_a_value_error():
    tracker = QuorumTracker("DC_QUORUM", THREE, "dc1")
    tracker.reply(0, A)
    with pytest.raises(ValueError):
        tracker.failure(0, DOWN)
    with pytest.raises(ValueError):
        tracker.reply(3, A)
    with pytest.raises(ValueError):
        tracker.reply(-1, A)


def test_tracker_has_no_instance_dict():
    assert not hasattr(QuorumTracker("DC_QUORUM", THREE, "dc1"), "__dict__")
