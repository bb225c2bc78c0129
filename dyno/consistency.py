"""Consistency levels: when is a replicated request done, and with which reply.

A coordinator sends a client's requests to several replicas (the key's owner in each
rack) and feeds every replica's outcome into a ``Quorum``, which says when the
requests are decided and what the client gets. The rule (DESIGN.md §4) is written
once, in ``QuorumTracker``, for one request; ``Quorum`` applies it to a *part* -
requests that went together to the same replicas - and is what the coordinator
uses for every replicated request (a single request is a part of one). No I/O, no
clock, no trio: time-outs reach it as failures reported by the coordinator. Both
are plain ``__slots__`` classes; a Quorum in the common case (every replica answers
the same) allocates nothing but its counter list.

Outcomes. ``reply(i, data)``: replica ``i`` answered with the RESP bytes ``data``. A
Redis error reply (``-WRONGTYPE ...``) is an answer like any other. ``failure(i,
error)``: replica ``i`` could not answer (down, timed out, link lost); ``error`` is a
full RESP error line saying why. Replies are identical when their bytes are equal.

Rule 0 - when. Both calls return the client's reply exactly once: at the first
outcome after which the answer can no longer change, whatever the outstanding
replicas do. A tracker never waits for a reply it does not need and never answers
while the answer is still open. Before and after that call they return None (the
coordinator keeps feeding late outcomes; they change nothing). ``done`` and
``result`` hold the decision.

Rule 1 - DC_ONE. The reply of ``primary`` (the local-rack replica). If the primary
fails, the first reply of any other listed replica, in order of arrival, whatever
its rack or datacenter: dyno serves a read whose local-rack owner is down from
another rack (Dynomite returns an error), and a write another rack acknowledged is
durable. If every listed replica fails: the primary's error line, unchanged.

Rule 2 - DC_QUORUM and DC_SAFE_QUORUM. Only replicas of ``local_dc`` count; listed
replicas of other datacenters are ignored. With R local replicas and Q = quorum(R):
success as soon as Q byte-identical replies arrived (the result is that reply;
Q > R/2, so at most one value can get there). While some value - one already seen,
or one not seen yet - can still reach Q, the tracker waits. When none can:
  * if so many replicas failed that Q can no longer answer at all
    (failures > R - Q): ``quorum_not_achieved(...)``, naming how many answered and
    the first failure's reason;
  * otherwise the replicas that answered disagree: ``replicas_disagree(level)``.
In dyno the two levels therefore give the same answers. DESIGN.md §4's "DC_QUORUM
returns the majority value if there is one" is this rule: a majority of the local
replicas is Q identical replies. Dynomite's DC_QUORUM returns the first reply when
replicas disagree; dyno never returns a value fewer than Q replicas vouch for.
DC_SAFE_QUORUM is kept as Dynomite's name; only the error line names the level.

Rule 3 - DC_EACH_SAFE_QUORUM. Every datacenter listed must reach its own quorum of
identical replies (Q_dc = quorum(R_dc)), and all on the same value; the result is
that value (the local datacenter's). The tracker fails as soon as that is
impossible: when one datacenter can no longer reach a quorum on any value (the
Rule 2 errors, naming the datacenter), or when every datacenter still could but no
single value could win in all of them (``DATACENTERS_DISAGREE``) - for instance two
datacenters that reached quorum on different values.

Rule 4 - misuse is a programming error (ValueError): an unknown level, a tracker
with no replica to await (no local replica at the quorum levels), a primary that is
not listed, an index that is not listed, two outcomes for one replica.
"""

from __future__ import annotations

from collections.abc import Sequence

from dyno.resp import split_replies

__all__ = [
    "LEVELS",
    "DATACENTERS_DISAGREE",
    "Quorum",
    "QuorumTracker",
    "failure_reason",
    "quorum",
    "quorum_not_achieved",
    "replicas_disagree",
]

#: Dynomite's consistency levels, the values of read_consistency / write_consistency.
LEVELS = ("DC_ONE", "DC_QUORUM", "DC_SAFE_QUORUM", "DC_EACH_SAFE_QUORUM")

_ONE, _QUORUM, _SAFE_QUORUM, _EACH_SAFE_QUORUM = range(4)
_LEVEL_CODES = {level: code for code, level in enumerate(LEVELS)}


def quorum(replicas: int) -> int:
    """How many of ``replicas`` make a quorum: floor(R/2) + 1, a strict majority."""
    if replicas < 1:
        raise ValueError(f"a quorum of {replicas} replicas is meaningless")
    return replicas // 2 + 1


# -- the error lines a client gets (shared with the coordinator and the tests) -------

DATACENTERS_DISAGREE = b"-ERR dyno: DC_EACH_SAFE_QUORUM not achieved: datacenters disagree\r\n"


def _one_line(text: bytes) -> bytes:
    return text.replace(b"\r", b" ").replace(b"\n", b" ")


def _in(datacenter: str | None) -> bytes:
    return b"" if datacenter is None else b" in " + _one_line(datacenter.encode())


def failure_reason(error: bytes) -> bytes:
    """The text of a RESP error line, without its '-' and line end."""
    if error[:1] == b"-":
        error = error[1:]
    if error[-2:] == b"\r\n":
        error = error[:-2]
    return _one_line(error)


def quorum_not_achieved(
    answered: int, replicas: int, needed: int, first_failure: bytes, datacenter: str | None = None
) -> bytes:
    """Failures left too few replicas to make a quorum. ``datacenter`` is named at
    DC_EACH_SAFE_QUORUM, where each datacenter has its own quorum."""
    return b"-ERR dyno: quorum not achieved%s: %d of %d replicas answered, %d needed (%s)\r\n" % (
        _in(datacenter), answered, replicas, needed, failure_reason(first_failure),
    )


def replicas_disagree(level: str, datacenter: str | None = None) -> bytes:
    """Enough replicas answered, but no value was given by a quorum of them."""
    return b"-ERR dyno: %s not achieved%s: replicas disagree\r\n" % (level.encode(), _in(datacenter))


# -- the tracker --------------------------------------------------------------------


class _Group:
    """The listed replicas of one datacenter, which reach a quorum together."""

    __slots__ = ("datacenter", "replicas", "needed", "outstanding", "answered", "failed",
                 "best", "counts", "first_failure")

    def __init__(self, datacenter: str, replicas: int):
        self.datacenter = datacenter
        self.replicas = replicas
        self.needed = quorum(replicas)
        self.outstanding = replicas
        self.answered = 0
        self.failed = 0
        self.best = 0  # the largest number of identical replies so far
        self.counts: dict[bytes, int] = {}
        self.first_failure: bytes | None = None

    def hopeless(self) -> bool:
        """No value, seen or not, can reach a quorum any more."""
        return self.best + self.outstanding < self.needed

    def error(self, level: str, datacenter: str | None) -> bytes:
        if self.failed > self.replicas - self.needed:
            assert self.first_failure is not None
            return quorum_not_achieved(self.answered, self.replicas, self.needed,
                                       self.first_failure, datacenter)
        return replicas_disagree(level, datacenter)


class QuorumTracker:
    """Decides one replicated request from its replicas' outcomes (module docstring).

    ``dcs[i]`` is the datacenter of replica ``i`` (the coordinator's numbering);
    ``primary`` is the local-rack replica, which DC_ONE waits for first. Only the
    replicas listed are awaited: the coordinator does not list those it sends to
    without waiting (remote datacenters at DC_QUORUM, for instance).
    """

    __slots__ = ("done", "result", "_level", "_count", "_reported",
                 "_primary", "_outstanding", "_primary_error", "_fallback",
                 "_group_of", "_groups", "_reached")

    def __init__(self, level: str, dcs: Sequence[str], local_dc: str, primary: int = 0):
        code = _LEVEL_CODES.get(level)
        if code is None:
            raise ValueError(f"unknown consistency level {level!r}; expected one of {', '.join(LEVELS)}")
        count = len(dcs)
        if count == 0:
            raise ValueError("a quorum tracker needs at least one replica to await")
        if not 0 <= primary < count:
            raise ValueError(f"primary {primary} is not one of the {count} replicas listed")
        self.done = False
        self.result: bytes | None = None
        self._level = code
        self._count = count
        self._reported = 0  # bit i: replica i has reported its outcome
        # DC_ONE
        self._primary = primary
        self._outstanding = count
        self._primary_error: bytes | None = None
        self._fallback: bytes | None = None  # first reply of a non-primary replica
        # the quorum levels: one group per datacenter that must reach quorum
        self._group_of: list[_Group | None] = []
        self._groups: list[_Group] = []
        self._reached = 0  # DC_EACH_SAFE_QUORUM: groups that reached quorum
        if code == _ONE:
            return
        if code == _EACH_SAFE_QUORUM:
            sizes: dict[str, int] = {}
            for dc in dcs:
                sizes[dc] = sizes.get(dc, 0) + 1
            by_dc = {dc: _Group(dc, size) for dc, size in sizes.items()}
            self._groups = list(by_dc.values())
            self._group_of = [by_dc[dc] for dc in dcs]
        else:
            local = sum(1 for dc in dcs if dc == local_dc)
            if local == 0:
                raise ValueError(f"{level}: no replica of the local datacenter {local_dc!r} is listed")
            group = _Group(local_dc, local)
            self._groups = [group]
            self._group_of = [group if dc == local_dc else None for dc in dcs]

    def __repr__(self) -> str:
        state = f"done result={self.result!r}" if self.done else "pending"
        return f"<QuorumTracker {LEVELS[self._level]} {self._count} replicas {state}>"

    def _report(self, index: int) -> None:
        if not 0 <= index < self._count:
            raise ValueError(f"replica {index} is not one of the {self._count} replicas listed")
        bit = 1 << index
        if self._reported & bit:
            raise ValueError(f"replica {index} reported twice")
        self._reported |= bit

    def _decide(self, result: bytes) -> bytes:
        self.done = True
        self.result = result
        return result

    def reply(self, index: int, data: bytes) -> bytes | None:
        """Replica ``index`` answered ``data``. Returns the client's reply if this
        decided the request, else None."""
        self._report(index)
        if self.done:
            return None
        if self._level == _ONE:
            self._outstanding -= 1
            if index == self._primary or self._primary_error is not None:
                return self._decide(data)
            if self._fallback is None:
                self._fallback = data
            return None
        group = self._group_of[index]
        if group is None:  # another datacenter, not counted at this level
            return None
        group.outstanding -= 1
        group.answered += 1
        counts = group.counts
        same = counts.get(data, 0) + 1
        counts[data] = same
        if same > group.best:
            group.best = same
        if self._level != _EACH_SAFE_QUORUM:
            if same >= group.needed:
                return self._decide(data)
            if group.best + group.outstanding < group.needed:
                return self._decide(group.error(LEVELS[self._level], None))
            return None
        if same == group.needed:
            self._reached += 1
        return self._each_progress(group, data)

    def failure(self, index: int, error: bytes) -> bytes | None:
        """Replica ``index`` could not answer; ``error`` is a RESP error line saying
        why. Returns the client's reply if this decided the request, else None."""
        self._report(index)
        if self.done:
            return None
        if self._level == _ONE:
            self._outstanding -= 1
            if index == self._primary:
                self._primary_error = error
                if self._fallback is not None:
                    return self._decide(self._fallback)
            elif self._primary_error is None:
                return None
            if self._outstanding == 0:
                return self._decide(self._primary_error)
            return None
        group = self._group_of[index]
        if group is None:
            return None
        group.outstanding -= 1
        group.failed += 1
        if group.first_failure is None:
            group.first_failure = error
        if self._level != _EACH_SAFE_QUORUM:
            if group.best + group.outstanding < group.needed:
                return self._decide(group.error(LEVELS[self._level], None))
            return None
        return self._each_progress(group, None)

    def _each_progress(self, group: _Group, data: bytes | None) -> bytes | None:
        """DC_EACH_SAFE_QUORUM after an outcome in ``group``: fail if that
        datacenter or the datacenters together can no longer agree; succeed when
        all reached quorum (then on one value, ``data``: the check below leaves
        only one value reachable everywhere)."""
        if group.hopeless():
            return self._decide(group.error("DC_EACH_SAFE_QUORUM", group.datacenter))
        if not self._common_value_possible():
            return self._decide(DATACENTERS_DISAGREE)
        if self._reached == len(self._groups):
            assert data is not None
            return self._decide(data)
        return None

    def _common_value_possible(self) -> bool:
        """Can one value still reach a quorum in every datacenter? A datacenter
        with a quorum still outstanding accepts any value; the others accept the
        values they have seen that the outstanding replicas could still lift to
        a quorum."""
        candidates: set[bytes] | None = None
        for group in self._groups:
            short = group.needed - group.outstanding
            if short <= 0:
                continue
            reachable = {value for value, same in group.counts.items() if same >= short}
            candidates = reachable if candidates is None else candidates & reachable
            if not candidates:
                return False
        return True


_LOCAL_LEVELS = frozenset({"DC_QUORUM", "DC_SAFE_QUORUM"})
_SHORT, _WHOLE, _APART = 0, 1, 2  # Quorum's modes


class Quorum:
    """Decides a *part*: ``count`` requests that went together to the same replicas
    (one replica set's share of a client's batch; a single request is a part of
    one), by ``QuorumTracker``'s rule. A replica answers all of a part's requests
    or fails all of them; its replies come joined.

    Three ways to apply the rule, each exact:

    * Short: at DC_QUORUM / DC_SAFE_QUORUM with every replica local, as long as
      every outcome is a reply identical to the first one, the tracker's state is
      just how many agree, and it decides exactly when Q have: the part is decided
      with a counter (the hot path's case; no tracker is built). The first failure
      or different reply leaves this mode, replaying what came before.
    * Whole: one tracker over the joined replies, for a part of one request (the
      whole is the request), and at DC_ONE, whose rule looks only at which replica
      answered or failed, never at what it said.
    * Apart: one tracker per request, fed each outcome cut apart; the part is
      decided when every request is. For a part of several requests at the levels
      that compare values, once the replies differ (replicas that disagree about
      one request may agree about the others).

    ``canonical``: the replies are collections in no defined order (SMEMBERS of a
    set kept in a hashtable): compared in that form, answered as one of the
    agreeing replicas sent them.

    ``reply`` and ``failure`` return the part's replies, joined, when that outcome
    decided it, else None; ``done`` and ``result`` hold the decision. A failure
    that decides a part alone (every replica failed) stands for each request.
    """

    __slots__ = ("done", "result", "level", "replicas", "dcs", "local_dc", "primary", "count",
                 "canonical", "_mode", "_needed", "_first", "_agreeing", "_trackers", "_failures",
                 "_originals")

    def __init__(self, level: str, replicas: int, local_dc: str = "", dcs: Sequence[str] | None = None,
                 count: int = 1, primary: int = 0, canonical=None):
        """``dcs[i]`` is the datacenter of replica ``i``; None when all ``replicas``
        are in ``local_dc`` (no list to build on the hot path)."""
        self.done = False
        self.result: bytes | None = None
        self.level = level
        self.replicas = replicas
        self.dcs = dcs
        self.local_dc = local_dc
        self.primary = primary
        self.count = count
        self.canonical = canonical if level != "DC_ONE" else None  # DC_ONE compares nothing
        self._first: bytes | None = None
        self._agreeing: list[int] = []  # Short: the replicas that answered ``_first``
        self._trackers: list[QuorumTracker] = []
        self._failures: list[bytes] = []  # Whole: the failure lines seen
        self._originals: list[dict[bytes, bytes]] | None = None  # canonical -> bytes, per request
        if dcs is None and level in _LOCAL_LEVELS and self.canonical is None:
            if replicas < 1:
                raise ValueError("a quorum needs at least one replica to await")
            self._mode = _SHORT
            self._needed = replicas // 2 + 1
        else:
            self._needed = 0
            self._leave_short()

    def __repr__(self) -> str:
        state = f"done result={self.result!r}" if self.done else "pending"
        return f"<Quorum {self.level} of {self.count} request(s) over {self.replicas} replicas {state}>"

    def reply(self, index: int, data: bytes) -> bytes | None:
        """Replica ``index`` answered: ``data`` is its reply to each request, joined."""
        if self._mode is _SHORT:
            if self.done:
                return None
            first = self._first
            if first is None or data == first:
                self._first = data
                agreeing = self._agreeing
                agreeing.append(index)
                if len(agreeing) == self._needed:
                    return self._decide(data)
                return None
            self._leave_short()
        return self._outcome(index, True, data)

    def failure(self, index: int, error: bytes) -> bytes | None:
        """Replica ``index`` could not answer (``error`` is a RESP error line saying why)."""
        if self._mode is _SHORT:
            if self.done:
                return None
            self._leave_short()
        return self._outcome(index, False, error)

    # -- the general modes ---------------------------------------------------------

    def _leave_short(self) -> None:
        dcs = self.dcs if self.dcs is not None else [self.local_dc] * self.replicas
        apart = self.count > 1 and self.level != "DC_ONE"
        self._mode = _APART if apart else _WHOLE
        self._trackers = [QuorumTracker(self.level, dcs, self.local_dc, self.primary)
                          for _ in range(self.count if apart else 1)]
        if self.canonical is not None:
            self._originals = [{} for _ in self._trackers]
        first = self._first
        for index in self._agreeing:  # fewer than Q: replaying them decides nothing
            self._outcome(index, True, first)

    def _outcome(self, index: int, ok: bool, data: bytes) -> bytes | None:
        trackers = self._trackers
        if self._mode is _WHOLE:
            if ok:
                result = trackers[0].reply(index, self._compared(0, data))
            else:
                self._failures.append(data)
                result = trackers[0].failure(index, data)
            if result is None or self.done:
                return None
            if self.count > 1 and any(result is failure for failure in self._failures):
                result = result * self.count  # no replica answered: each request's error
            return self._decide(self._original(0, result))
        # Apart: each request by its own tracker.
        parts = split_replies(data, self.count) if ok else None
        if ok and parts is None:  # a reply that does not hold `count` replies
            ok, data = False, _UNSPLITTABLE
        for position, tracker in enumerate(trackers):
            if ok:
                tracker.reply(index, self._compared(position, parts[position]))
            else:
                tracker.failure(index, data)
        if self.done or not all(tracker.done for tracker in trackers):
            return None
        return self._decide(b"".join(self._original(position, tracker.result)
                                     for position, tracker in enumerate(trackers)))

    def _compared(self, position: int, reply: bytes) -> bytes:
        """The form a reply is compared in (and, canonical, where to find it again)."""
        canonical = self.canonical
        if canonical is None or reply[:1] == b"-":
            return reply
        form = canonical(reply)
        self._originals[position].setdefault(form, reply)
        return form

    def _original(self, position: int, result: bytes) -> bytes:
        if self._originals is None:
            return result
        return self._originals[position].get(result, result)

    def _decide(self, result: bytes) -> bytes:
        self.done = True
        self.result = result
        return result


_UNSPLITTABLE = b"-ERR dyno: a replica's replies could not be split\r\n"
