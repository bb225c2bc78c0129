"""A read decided whole (coordinator._BatchQuorum) answers exactly what deciding each
request with its own QuorumTracker answers, whatever the replicas reply or fail; and
asked of Q replicas first, it asks the others exactly when those cannot decide it."""

from collections import Counter

import trio
from hypothesis import given
from hypothesis import strategies as st

from dyno.consistency import QuorumTracker
from dyno.coordinator import HEDGE_TICK, Coordinator, _BatchQuorum


class FakeCoordinator:
    def __init__(self):
        self.metrics = type("M", (), {"disagreements": 0, "widened_reads": 0})()
        self.errors = Counter()
        self.quorum_reads = {}

    def replica_failed(self, error, count=1):
        pass

    def decided_error(self, result, level):
        self.errors[level] += 1


class Slot:
    data = None

    def deliver(self, reply):
        assert self.data is None, "answered twice"
        self.data = reply


REPLIES = [b"+OK\r\n", b":1\r\n", b"$1\r\nx\r\n", b"*1\r\n$1\r\na\r\n"]
ERROR = b"-ERR dyno: peer x is unavailable\r\n"
LEVELS = st.sampled_from(["DC_QUORUM", "DC_SAFE_QUORUM"])


def outcomes(data, replicas: int, count: int) -> tuple[list[bool], list[list[bytes]]]:
    """Whether each replica fails, and else its reply to each request."""
    failed = data.draw(st.lists(st.booleans(), min_size=replicas, max_size=replicas))
    answers = [data.draw(st.lists(st.sampled_from(REPLIES), min_size=count, max_size=count))
               for _ in range(replicas)]
    return failed, answers


def report(quorum: _BatchQuorum, index: int, failed: bool, answers: list[bytes]) -> None:
    if failed:
        quorum.failed(index, ERROR)
    else:
        quorum.arrived(index, b"".join(answers))


def track(trackers: list[QuorumTracker], index: int, failed: bool, answers: list[bytes]) -> None:
    """The same outcome, request by request, to the trackers still undecided."""
    for position, tracker in enumerate(trackers):
        if tracker.result is None:
            if failed:
                tracker.failure(index, ERROR)
            else:
                tracker.reply(index, answers[position])


def trackers_for(level: str, replicas: int, count: int) -> list[QuorumTracker]:
    return [QuorumTracker(level, ["dc"] * replicas, "dc") for _ in range(count)]


@given(LEVELS, st.integers(1, 5), st.integers(1, 4), st.data())
def test_whole_batch_equals_each_request(level, replicas, count, data):
    failed, answers = outcomes(data, replicas, count)
    order = data.draw(st.permutations(range(replicas)))
    slot = Slot()
    quorum = _BatchQuorum(FakeCoordinator(), level, slot, count, replicas)
    trackers = trackers_for(level, replicas, count)
    for index in order:
        report(quorum, index, failed[index], answers[index])
        track(trackers, index, failed[index], answers[index])
        # Decided whole exactly when every request would be decided on its own.
        assert (slot.data is not None) == all(t.result is not None for t in trackers)
    assert slot.data == b"".join(tracker.result for tracker in trackers)


@given(LEVELS, st.integers(1, 5), st.integers(1, 4), st.data())
def test_a_read_asked_of_q_replicas_first_answers_what_asking_all_would(level, replicas, count, data):
    failed, answers = outcomes(data, replicas, count)
    needed = replicas // 2 + 1
    first = data.draw(st.permutations(range(replicas)))
    asked = first[:needed]
    slot = Slot()
    coordinator = FakeCoordinator()
    sent = list(asked)  # replicas asked, in order

    class Recorded(_BatchQuorum):
        __slots__ = ()

        def ask(self, index):
            sent.append(index)

    quorum = Recorded(coordinator, level, slot, count, replicas)
    quorum.asked = len(asked)
    quorum.reserve = list(first[needed:])
    trackers = trackers_for(level, replicas, count)
    alone = trackers_for(level, replicas, count)  # the first Q's outcomes only
    hedged = False
    answered: list[int] = []
    while len(answered) < len(sent):
        # any replica asked and not answered yet may answer next
        index = data.draw(st.sampled_from([i for i in sent if i not in answered]))
        answered.append(index)
        report(quorum, index, failed[index], answers[index])
        track(trackers, index, failed[index], answers[index])
        if index in asked:
            track(alone, index, failed[index], answers[index])
        assert (slot.data is not None) == all(t.result is not None for t in trackers)
        if slot.data is None and data.draw(st.booleans()):
            hedged = True  # the first replicas are slow: Coordinator.hedge_reads widens
            quorum.widen()
    # Every replica asked has answered: the read is decided, never left waiting.
    assert slot.data == b"".join(tracker.result for tracker in trackers)
    if not hedged and not any(failed[i] for i in asked) and all(t.result is not None for t in alone):
        assert sent == list(asked)  # the first Q decided it: the others were never asked
    assert coordinator.metrics.widened_reads == (1 if len(sent) > len(asked) else 0)


class Sweeper:
    """What Coordinator.hedge_reads uses of the coordinator."""

    def __init__(self):
        self.quorum_reads = {}
        self._hedge_tick = 0


class Pending:
    """A quorum read waiting for its first replicas."""

    def __init__(self, sweeper, key, widen=None):
        self.done = False
        self.widened = 0
        self.slot = Slot()
        self._widen = widen
        sweeper.quorum_reads[key] = (sweeper._hedge_tick, self)
        self.sweeper, self.key = sweeper, key

    def widen(self):
        self.widened += 1
        self.sweeper.quorum_reads.pop(self.key, None)
        if self._widen:
            self._widen()


async def test_reads_undecided_for_a_full_tick_are_widened_and_a_failing_widen_answers_its_read(
    autojump_clock,  # virtual time: the sleeps below only order events against the ticks
):
    sweeper = Sweeper()
    slow = Pending(sweeper, 1)

    def broken():
        raise RuntimeError("a bug")

    buggy = Pending(sweeper, 2, widen=broken)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(Coordinator.hedge_reads, sweeper)
        await trio.sleep(HEDGE_TICK * 1.5)  # one sweep: asked less than a full tick ago
        assert (slow.widened, buggy.widened) == (0, 0)
        late = Pending(sweeper, 3)  # asked during the second tick
        await trio.sleep(HEDGE_TICK)  # second sweep
        assert (slow.widened, buggy.widened, late.widened) == (1, 1, 0)
        assert buggy.slot.data.startswith(b"-ERR dyno: internal error")  # answered, not left waiting
        assert slow.slot.data is None  # widened reads are answered by their replicas
        await trio.sleep(HEDGE_TICK)
        assert late.widened == 1 and not sweeper.quorum_reads
        nursery.cancel_scope.cancel()
