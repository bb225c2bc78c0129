"""The phi-accrual failure detector: how suspicious is the silence of one peer.

This module owns the arithmetic of suspicion and nothing else: no I/O, no clock
(times are passed in, float seconds, monotonic), no knowledge of gossip. The
membership state machine (dyno.membership) keeps one ``ArrivalWindow`` per peer
and feeds it the times at which it learned a newer heartbeat of that peer, each
with the moment that heartbeat shows the peer alive (earlier than its arrival
when it came through relays).

Theory of operation (Hayashibara et al., "The phi accrual failure detector",
2004; the variant of Akka's ``PhiAccrualFailureDetector``). The detector keeps
the last ``window`` intervals between heartbeat arrivals and models them as a
normal distribution of mean ``m`` and standard deviation ``s``. An interval is
the silence from the last moment the peer was known alive to the arrival of
fresher news. Given the time ``t`` elapsed since the peer was last known alive,
``phi(t) = -log10(P(interval > t))``:
phi 1 means a 10% chance that a heartbeat is merely late, phi 8 one in 10^8.
The peer is convicted when phi reaches the threshold.

Rule 1 - the normal model, not Cassandra's exponential one. Cassandra computes
    ``phi = t / m * log10(e)``, which reaches 8 only after ``t = 18.4 m``: with
    heartbeats learned about once per ``gos_interval`` a dead node would stand for
    18 intervals. The normal model convicts after ``m + y* s`` (``y* = 5.23`` at
    threshold 8), a few intervals, and still adapts to a jittery network, since
    ``s`` is measured.
Rule 2 - ``s`` is never below ``min_std``. Over a quiet network the measured
    deviation can be tiny, and then a single late or lost message would convict.
Rule 3 - ``acceptable_pause`` is added to ``m`` (Akka's acceptable-heartbeat-
    pause): a margin for pauses the intervals did not show (a GC, a busy loop).
Rule 4 - bootstrap: the first arrival seeds the window with two intervals,
    ``first_estimate ± first_estimate / 4`` (mean ``first_estimate``, deviation a
    quarter of it), so the detector can judge before it has measured anything.
Rule 5 - an interval at least as long as the conviction point is not recorded:
    the peer was convicted during it (or would have been), so it measures an
    outage, not the network. Recording it would inflate ``m`` and ``s`` and slow
    the next conviction by many intervals.
Rule 6 - a recorded interval is clamped to ``max_interval`` (Cassandra ignores
    intervals above its MAX_INTERVAL instead). One long silence - often the very
    one that ended with stale news of a peer that just died - would otherwise
    raise ``s`` far enough in a young window to delay the next conviction past
    any bound. Clamped, ``m <= max_interval`` and ``s <= max(min_std,
    max_interval / 2)`` whatever the history, so the conviction point is bounded,
    while a lossy network still raises ``m`` (and ``s``) within that range.

phi uses Akka's logistic approximation of the normal tail,
``P(interval > t) ~ 1 / (1 + exp(y (1.5976 + 0.070566 y^2)))`` with
``y = (t - m) / s``, computed in log space so that it neither overflows nor
returns infinity for a long silence. Because phi depends on ``y`` alone, the
threshold is turned once into ``y*`` and the conviction point of a peer is a plain
time, ``last + m + pause + y* s``: judging is one comparison, and the caller can
sleep exactly until the next possible conviction.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["ArrivalWindow", "conviction_distance", "phi"]

_LN10 = math.log(10.0)


def _tail_exponent(y: float) -> float:
    return y * (1.5976 + 0.070566 * y * y)


def phi(elapsed: float, mean: float, std: float) -> float:
    """``-log10(P(interval > elapsed))`` for intervals normal with ``mean``, ``std``
    (logistic approximation). Always finite and >= 0; grows without bound."""
    z = _tail_exponent((elapsed - mean) / std)
    # -log10(1 / (1 + e^z)) = softplus(z) / ln 10, computed without overflow.
    softplus = z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))
    return softplus / _LN10


def conviction_distance(threshold: float) -> float:
    """``y*``: the number of standard deviations past the mean at which phi
    reaches ``threshold`` (5.23 for 8, 4.12 for 5)."""
    if not threshold > 0 or math.isinf(threshold):
        raise ValueError(f"phi threshold must be a positive number, got {threshold!r}")
    # softplus(z) = threshold * ln 10  <=>  z = ln(10^threshold - 1)
    target = math.log(math.expm1(threshold * _LN10)) if threshold < 300 else threshold * _LN10
    low, high = -50.0, 50.0  # _tail_exponent is increasing; bisect to the last bit
    for _ in range(200):
        middle = (low + high) / 2
        if _tail_exponent(middle) < target:
            low = middle
        else:
            high = middle
        if high - low <= 1e-15:
            break
    return high


class ArrivalWindow:
    """The recent heartbeat inter-arrival times of one peer, and the verdict.

    ``arrive(now)`` records that a newer heartbeat was learned at ``now``;
    ``deadline()`` is the time at which phi reaches the threshold unless another
    heartbeat arrives (None before the first arrival); ``phi(now)`` is the
    suspicion level at ``now``.
    """

    __slots__ = ("_intervals", "_sum", "_squares", "_min_std", "_pause", "_y_star",
                 "_first_estimate", "_max_interval", "_patience", "last")

    def __init__(self, *, window: int, first_estimate: float, min_std: float,
                 acceptable_pause: float, y_star: float, max_interval: float) -> None:
        if window < 2:
            raise ValueError(f"the arrival window must hold at least 2 intervals, got {window}")
        if not 0 < first_estimate <= max_interval or not min_std > 0 or not acceptable_pause >= 0:
            raise ValueError("detector parameters must be positive, and the first "
                             "estimate no larger than max_interval")
        self._max_interval = max_interval
        self._intervals: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._squares = 0.0
        self._first_estimate = first_estimate
        self._min_std = min_std
        self._pause = acceptable_pause
        self._y_star = y_star
        # deadline() - last: changes only with a sample, and a node judges its peers
        # far more often (at every gossip message, each of its peers) than it samples
        self._patience = self._measure_patience()
        self.last: float | None = None

    def _record(self, interval: float) -> None:
        intervals = self._intervals
        if len(intervals) == intervals.maxlen:
            dropped = intervals[0]
            self._sum -= dropped
            self._squares -= dropped * dropped
        intervals.append(interval)
        self._sum += interval
        self._squares += interval * interval
        self._patience = self._measure_patience()

    def _measure_patience(self) -> float:
        return self.mean + self._pause + self._y_star * self.std

    def arrive(self, now: float, alive_at: float | None = None) -> None:
        """A newer heartbeat was learned at ``now``, showing the peer alive at
        ``alive_at`` (default ``now``; earlier when the heartbeat came through
        relays that say how old it is). The silence since the last moment the
        peer was known alive ends: its length is a sample."""
        seen = now if alive_at is None else min(alive_at, now)
        last = self.last
        if last is None:
            spread = self._first_estimate / 4
            self._record(self._first_estimate - spread)
            self._record(self._first_estimate + spread)
            self.last = seen
        elif seen > last:
            if now < self.deadline():  # Rule 5
                self._record(min(now - last, self._max_interval))  # Rule 6
            self.last = seen

    @property
    def mean(self) -> float:
        count = len(self._intervals)
        return self._sum / count if count else self._first_estimate

    @property
    def std(self) -> float:
        """The measured deviation, floored at ``min_std``."""
        count = len(self._intervals)
        if count < 2:
            return max(self._first_estimate / 4, self._min_std)
        mean = self._sum / count
        variance = max(self._squares / count - mean * mean, 0.0)
        return max(math.sqrt(variance), self._min_std)

    def deadline(self) -> float | None:
        """When the peer is convicted if nothing arrives before."""
        last = self.last
        if last is None:
            return None
        return last + self._patience

    def phi(self, now: float) -> float:
        if self.last is None:
            return math.inf
        return phi(now - self.last, self.mean + self._pause, self.std)

    def __len__(self) -> int:
        return len(self._intervals)
