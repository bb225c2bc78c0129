"""LocalQuorum must answer exactly like QuorumTracker, at the same moment."""

from hypothesis import given
from hypothesis import strategies as st

from dyno.consistency import LocalQuorum, QuorumTracker


@st.composite
def outcomes(draw):
    replicas = draw(st.integers(1, 5))
    order = draw(st.permutations(range(replicas)))
    # A few distinct reply values so that agreement and disagreement both happen.
    kinds = draw(st.lists(st.sampled_from([b"+a\r\n", b"+a\r\n", b"+b\r\n", b":1\r\n", None]),
                          min_size=replicas, max_size=replicas))
    return replicas, [(i, kinds[i]) for i in order]


@given(st.sampled_from(["DC_QUORUM", "DC_SAFE_QUORUM"]), outcomes())
def test_same_answers_as_the_general_tracker(level, case):
    replicas, events = case
    fast = LocalQuorum(level, replicas)
    general = QuorumTracker(level, ["dc1"] * replicas, "dc1")
    for index, data in events:
        if data is None:
            error = b"-ERR dyno: peer x is unavailable\r\n"
            expected, got = general.failure(index, error), fast.failure(index, error)
        else:
            expected, got = general.reply(index, data), fast.reply(index, data)
        assert got == expected
        assert (fast.done, fast.result) == (general.done, general.result)
