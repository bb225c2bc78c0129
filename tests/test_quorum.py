"""``consistency.Quorum`` decides a part - several requests that went together to
the same replicas - exactly as deciding each request with its own QuorumTracker
(the rule, tested against an oracle in test_consistency.py) would: the same
replies, at the same moment, whatever the replicas reply or fail, in any order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dyno import resp
from dyno.consistency import LEVELS, Quorum, QuorumTracker
from dyno.rewrite import canonical

REPLIES = [b"+OK\r\n", b":1\r\n", b"$1\r\nx\r\n", b"*1\r\n$1\r\na\r\n", b"-WRONGTYPE no\r\n"]
SETS = [b"*2\r\n$1\r\na\r\n$1\r\nb\r\n", b"*2\r\n$1\r\nb\r\n$1\r\na\r\n", b"*1\r\n$1\r\na\r\n"]
ERROR = b"-ERR dyno: peer x is unavailable\r\n"


@st.composite
def shapes(draw):
    """(level, dcs or None, local dc, replicas, primary)."""
    level = draw(st.sampled_from(LEVELS))
    replicas = draw(st.integers(1, 5))
    if level == "DC_EACH_SAFE_QUORUM" or draw(st.booleans()):
        dcs = draw(st.lists(st.sampled_from(["dc1", "dc2"]), min_size=replicas, max_size=replicas))
        if "dc1" not in dcs:
            dcs[0] = "dc1"
    else:
        dcs = None
    primary = draw(st.integers(0, replicas - 1)) if level == "DC_ONE" else 0
    return level, dcs, "dc1", replicas, primary


def trackers(level, dcs, local, replicas, primary, count):
    listed = dcs if dcs is not None else [local] * replicas
    return [QuorumTracker(level, listed, local, primary) for _ in range(count)]


@settings(max_examples=500, deadline=None)
@given(shapes(), st.integers(1, 4), st.booleans(), st.data())
def test_a_part_is_decided_as_its_requests_would_be_one_by_one(shape, count, unordered, data):
    level, dcs, local, replicas, primary = shape
    values = SETS if unordered else REPLIES
    failed = data.draw(st.lists(st.booleans(), min_size=replicas, max_size=replicas))
    answers = [data.draw(st.lists(st.sampled_from(values), min_size=count, max_size=count))
               for _ in range(replicas)]
    order = data.draw(st.permutations(range(replicas)))
    quorum = Quorum(level, replicas, local, dcs, count, primary, canonical if unordered else None)
    each = trackers(level, dcs, local, replicas, primary, count)
    results = [None] * count
    decided_at = None
    for step, index in enumerate(order):
        if failed[index]:
            given_ = quorum.failure(index, ERROR)
        else:
            given_ = quorum.reply(index, b"".join(answers[index]))
        for position, tracker in enumerate(each):
            if failed[index]:
                result = tracker.failure(index, ERROR)
            else:
                reply = answers[index][position]
                compared = canonical(reply) if unordered and level != "DC_ONE" else reply
                result = tracker.reply(index, compared)
            if result is not None:
                results[position] = result
        all_decided = all(result is not None for result in results)
        if all_decided and decided_at is None:
            decided_at = step
        # Decided exactly when every request is decided on its own, and only then.
        assert (given_ is not None) == (step == decided_at), (step, decided_at, given_)
        assert quorum.done == all_decided
    assert quorum.done
    if unordered and level != "DC_ONE":
        # Each request answered as one of the agreeing replicas sent it (its bytes),
        # in the canonical form the trackers decided on.
        got = resp.split_replies(quorum.result, count)
        assert [canonical(r) if r[:1] != b"-" else r for r in got] == results
        assert all(r in values or r[:1] == b"-" for r in got)
    else:
        assert quorum.result == b"".join(results)


def test_the_common_case_builds_no_tracker():
    """Every replica answers the same at DC_QUORUM: decided with a counter."""
    quorum = Quorum("DC_QUORUM", 3, "dc1", count=16)
    assert quorum.reply(0, b"+OK\r\n" * 16) is None
    assert quorum.reply(1, b"+OK\r\n" * 16) == b"+OK\r\n" * 16
    assert quorum._trackers == []  # noqa: SLF001 - the point of the shortcut


def test_no_replica_answering_a_dc_one_part_gives_each_request_the_primary_error():
    quorum = Quorum("DC_ONE", 2, "dc1", count=3)
    assert quorum.failure(1, b"-ERR dyno: b\r\n") is None
    assert quorum.failure(0, ERROR) == ERROR * 3


def test_a_quorum_part_has_no_instance_dict():
    assert not hasattr(Quorum("DC_QUORUM", 3, "dc1"), "__dict__")
