"""Membership: who is in the cluster, what each node declares, and who is up.

This module owns the gossip state machine of DESIGN.md §7 and the judgement of
the failure detector (dyno.failure_detector). It is pure, like h11: it never
touches a socket, a task or the wall clock. The node feeds it the time (float
seconds, monotonic), the GOSSIP messages it received and the failures its peer
links saw; it answers with the messages to send and with its view. Randomness
comes from an injected ``random.Random``, so a simulated cluster replays exactly.

Rule 1 - every node is the only author of its own entry: name, addresses, dc,
    rack, tokens, declared state, and the version ``(generation, heartbeat)``.
    The generation is the node's start (a restart gets a higher one); the
    heartbeat counts its gossip rounds. Everyone else only relays. Of two copies
    of an entry the one with the higher ``(generation, heartbeat)`` wins; a higher
    generation replaces the old entry whole (a restart). Copies with the same
    version and different contents cannot come from a correct node; the larger
    one (in a fixed order of the fields) wins, so that merging entries is a join:
    any order, any repetition of the same messages gives the same view.
Rule 2 - entries are sent whole only when the other side lacks them. Each entry
    carries ``sv``, the heartbeat at which its fields last changed. A digest
    ``[name, generation, heartbeat, sv, age]`` whose generation and ``sv`` match
    the receiver's copy is a complete update (only the heartbeat moved), so in
    the steady state gossip is digests alone, about 35 bytes per node.
Rule 3 - the exchange is Cassandra's three-way one. SYN (all my digests, and
    my own entry whole) ->
    ACK (the digests and entries where the ACKer is newer, and the names it wants
    whole) -> ACK2 (those entries). Every ``gos_interval`` a node gossips to one
    random live peer, sometimes also to a node believed down (probability
    down / (live + 1)) and to a seed (Cassandra's ``maybeGossipToSeed``; always
    when no peer is live). News - a node never seen, a new generation, a change
    of declared fields - is also pushed at once (an unsolicited ACK2) to
    ``push_fanout`` random live peers by every node that learns it, so a join,
    a restart or a LEAVING reaches the whole cluster in a few network hops
    instead of a few gossip rounds.
Rule 4 - heartbeats go straight to every peer. Each round a node also sends its
    own digest alone (HEARTBEAT, ~40 bytes) to every peer it did not SYN, the
    ones believed down and the seeds it never heard from included. Gossip alone
    spreads a node's heartbeat in log(n) rounds, with a spread that grows with
    the cluster: simulated at 9 nodes with one SYN per round and 5% loss, the
    silences between fresher news of a live peer averaged 1.9 intervals
    (deviation 0.7, longest 5.6), so no threshold could both spare live nodes
    and convict a dead one within 5 intervals. With direct heartbeats the
    silences are 1 interval (deviation 0.13) at 3, 9, 12 or 30 nodes, and a dead
    node is convicted in under 4. A receiver that cannot apply a heartbeat (unknown node, newer
    generation or fields) answers with a SYN, so a joining or restarted node is
    learned within one round trip.
Rule 5 - judgement. Each peer has a phi-accrual detector fed with the moments
    the peer was last known alive: a digest carries ``age``, how long ago the
    relaying node last knew its subject alive (0 for the sender itself), so news
    that came the long way round counts from when it was true, not from when it
    arrived. A peer is down when its phi reaches ``phi_convict_threshold``, or
    when this node's requests to it failed (``report_unreachable``) and no newer
    heartbeat came for ``unreachable_grace``: a node that keeps heartbeating is
    never convicted by failed requests alone. DOWN is never gossiped nor
    declared: it is each node's own judgement.
Rule 6 - first sight. A node or generation learned from the node itself is up.
    Learned from a relay, it is judged from the age the relay gives: a joining
    node does not believe in a dead node whose stale entry it learned, and a
    restarted node is up wherever its fresh entry spreads.
Rule 7 - a node's own entry always wins. A copy of its own name newer than
    itself (it restarted with a generation that did not grow, or another process
    uses its name) makes it take a higher generation (or heartbeat).
Rule 8 - garbage in, ``GossipError`` out, and nothing changed: a message is
    decoded and validated whole before any of it is merged.

Wire format (msgpack-safe; carried as the third element of a GOSSIP frame)::

    {"v": 1, "k": 1 SYN | 2 ACK | 3 ACK2 | 4 HEARTBEAT,
     "b": msgpack([digests, entries, wants])}
    digest: [name, generation, heartbeat, sv, age]
    entry:  [name, generation, heartbeat, sv, host, port, dc, rack, [tokens],
             state, client_port | None, age]
    wants:  [name, ...]
    age:    ms since the subject was last known alive, or None (never)

The body travels as bytes, decoded here with this module's own limits, so the
peer link's frame limits (arrays of at most 16 items) do not bound the cluster
size, and the link needs to know nothing of gossip.

``version`` grows whenever something routing cares about changes: a node joins,
a node's generation or declared fields change, a peer goes up or down (not when
only a heartbeat moves). Judgements change with time alone, so they are
re-evaluated in every call that takes ``now``; ``next_check(now)`` says when the
next one can change without any input (the shell sleeps until the earlier of
that and the next tick, then calls ``refresh``).

How the shell drives it: ``tick(now)`` at start and every ``gos_interval``,
sending what it returns; ``receive(sender, message, now)`` for each GOSSIP frame
(log and drop a GossipError), sending what it returns; ``report_unreachable``
when a connection to a peer is refused or a request to it times out;
``refresh(now)`` at ``next_check``; rebuild the ring from ``members()`` when
``version`` changed. Sends are best effort: a message that cannot be sent is
dropped (gossip repeats itself).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgpack

from dyno.failure_detector import ArrivalWindow, conviction_distance
from dyno.ring import MAX_TOKEN, RingNode

__all__ = [
    "ACK",
    "ACK2",
    "HEARTBEAT",
    "PROTOCOL_VERSION",
    "SYN",
    "GossipError",
    "Member",
    "MemberView",
    "Membership",
    "Seed",
    "State",
]

PROTOCOL_VERSION = 1
SYN, ACK, ACK2, HEARTBEAT = 1, 2, 3, 4

MAX_BODY = 4 * 1024 * 1024   # bytes of one message body
MAX_ENTRIES = 10_000         # digests, entries or wants in one message
MAX_TOKENS = 4096            # tokens of one node
MAX_TEXT = 255               # a name, host, dc or rack
MAX_INT = 2**63 - 1
MAX_AGE = 2**32 - 1          # ms


class State(str, Enum):
    """A node's declared state. DOWN is never declared: it is a judgement."""

    JOINING = "JOINING"
    NORMAL = "NORMAL"
    LEAVING = "LEAVING"
    DOWN = "DOWN"
    STANDBY = "STANDBY"
    WRITES_ONLY = "WRITES_ONLY"
    RESUMING = "RESUMING"
    # Range movements (dyno.ownership, dyno.streaming)
    REPLACING = "REPLACING"
    DECOMMISSIONING = "DECOMMISSIONING"
    LEFT = "LEFT"


_DECLARABLE = {state.value: state for state in State if state is not State.DOWN}


class GossipError(ValueError):
    """A gossip message that is not one: wrong version, malformed, out of range.
    The message says what; nothing of the message was merged."""


@dataclass(frozen=True, slots=True)
class Member:
    """One node as gossip knows it."""

    name: str                   # "host:dyn_port"
    host: str                   # peer (dyn_listen) address
    port: int
    dc: str
    rack: str
    tokens: tuple[int, ...]
    generation: int             # >= 1 for a real node; 0: known from the config only
    heartbeat: int
    state: State
    client_port: int | None = None

    def ring_node(self, local: bool = False) -> RingNode:
        return RingNode(self.name, self.host, self.port, self.dc, self.rack,
                        self.tokens, local)


@dataclass(frozen=True, slots=True)
class MemberView(Member):
    """A member and this node's judgement of it."""

    up: bool = False
    phi: float = 0.0


@dataclass(frozen=True, slots=True)
class Seed:
    """A node to contact first (``dyn_seeds``). With dc, rack and tokens (as
    dyn_seeds gives them) it is also in the view before it is heard from, as a
    down member of generation 0, so the static ring of the config is complete."""

    name: str
    host: str
    port: int
    dc: str | None = None
    rack: str | None = None
    tokens: tuple[int, ...] = ()


class _Entry:
    """The mutable record behind a Member, plus this node's judgement of it."""

    __slots__ = ("name", "host", "port", "dc", "rack", "tokens", "generation",
                 "heartbeat", "sv", "state", "client_port", "window", "up", "evidence")

    def __init__(self, fields: tuple, window: ArrivalWindow | None) -> None:
        (self.name, self.generation, self.heartbeat, self.sv, self.host, self.port,
         self.dc, self.rack, self.tokens, self.state, self.client_port) = fields
        self.window = window
        self.up = False
        self.evidence: float | None = None

    def fields(self) -> tuple:
        """The entry as validated wire fields (the order of ``_check_entry``)."""
        return (self.name, self.generation, self.heartbeat, self.sv, self.host, self.port,
                self.dc, self.rack, self.tokens, self.state, self.client_port)

    def declared(self) -> tuple:
        return (self.host, self.port, self.dc, self.rack, self.tokens, self.state,
                self.client_port)

    def member(self) -> Member:
        return Member(self.name, self.host, self.port, self.dc, self.rack, self.tokens,
                      self.generation, self.heartbeat, self.state, self.client_port)


def _order(fields: tuple) -> tuple:
    """Rule 1's total order of entries: version first, then every field."""
    (name, generation, heartbeat, sv, host, port, dc, rack, tokens, state,
     client_port) = fields
    return (generation, heartbeat, sv, host, port, dc, rack, tokens, state.value,
            -1 if client_port is None else client_port)


class Membership:
    """One node's membership: its own entry, every other node's, and its judgement.

    ``me`` is this node (generation >= 1: its start time in ms, or a counter that
    grows across restarts). ``seeds`` are ``Seed``s or tuples ``(name, host,
    port)`` or ``(name, host, port, dc, rack, tokens)``.

    ``now`` is accepted for symmetry with the other calls; nothing is judged
    before the first input.

    Detector parameters (see dyno.failure_detector), and why:
    - ``phi_convict_threshold`` 8 (Cassandra's and Akka's default): conviction
      5.23 deviations past the mean silence.
    - ``min_std`` ``gos_interval / 2``. With direct heartbeats the measured
      silences are ~1 interval with a deviation of ~0.13 (tick jitter, a lost
      message now and then), so this floor decides: conviction comes
      ~1 + 5.23 * 0.5 = 3.6 intervals after the peer was last known alive. A live
      peer is convicted only if its heartbeats and all gossip about it are lost
      for over 3 rounds (never seen in simulation at 5% loss; the longest
      silence seen was 3.0); a dead one within 3.6 intervals of its last
      heartbeat, so under 4.6 after it died (5 is the bound of issue 4).
    - ``window`` 100 intervals: enough samples for a stable mean and deviation,
      short enough (under two minutes at 1 s) to forget a bad spell; Akka keeps
      1000.
    - ``max_interval`` ``2 * gos_interval``: longer silences are recorded as this
      long, so the mean stays under 2 intervals and the deviation under 1,
      whatever the history: with silences near one interval (as direct
      heartbeats make them) the conviction point stays under ~4.6 intervals of
      the last sign of life even when the network is bad (unclamped, one long
      silence in a young window once pushed a conviction to 5.6 intervals in
      simulation).
    - ``acceptable_pause`` 0: added to the mean, for deployments whose nodes
      pause (GC, swapping) longer than the floor above tolerates.
    - bootstrap: until measured, mean ``gos_interval``, deviation a quarter of it
      (then floored as above).
    - ``unreachable_grace`` ``2 * gos_interval``: a refused connection plus two
      missed heartbeats convicts at once, earlier than phi would.
    Messaging: ``push_fanout`` (2) peers get each piece of news; ``heartbeat_fanout``
    None sends a heartbeat to every peer each round (an int: that many random
    peers, for clusters of hundreds of nodes, at the cost of slower detection).
    """

    def __init__(self, me: Member, seeds: Iterable[Seed | tuple] = (), *,
                 gos_interval: float, phi_convict_threshold: float = 8.0,
                 rng: random.Random, now: float, min_std: float | None = None,
                 window: int = 100, acceptable_pause: float = 0.0,
                 max_interval: float | None = None,
                 unreachable_grace: float | None = None, push_fanout: int = 2,
                 heartbeat_fanout: int | None = None) -> None:
        if not gos_interval > 0:
            raise ValueError(f"gos_interval must be positive, got {gos_interval!r}")
        self.gos_interval = gos_interval
        self.phi_convict_threshold = phi_convict_threshold
        self._y_star = conviction_distance(phi_convict_threshold)
        self._min_std = gos_interval / 2 if min_std is None else min_std
        self._window = window
        self._pause = acceptable_pause
        self._max_interval = 2 * gos_interval if max_interval is None else max_interval
        self._grace = 2 * gos_interval if unreachable_grace is None else unreachable_grace
        self._fanout = push_fanout
        self._heartbeat_fanout = heartbeat_fanout
        self._rng = rng
        self._new_window()  # fail early on bad detector parameters

        if not isinstance(me, Member):
            raise ValueError(f"me must be a Member, got {me!r}")
        try:
            fields = _check_entry([me.name, me.generation, me.heartbeat, me.heartbeat,
                                   me.host, me.port, me.dc, me.rack, list(me.tokens),
                                   State(me.state).value, me.client_port, 0])[0]
        except (GossipError, ValueError) as error:
            raise ValueError(f"this node ({me.name!r}): {error}") from None
        self.name: str = me.name
        self._me = _Entry(fields, None)
        self._me.up = True
        self._entries: dict[str, _Entry] = {self.name: self._me}

        self._seeds: list[str] = []
        for seed in seeds:
            seed = _as_seed(seed)
            if seed.name == self.name or seed.name in self._seeds:
                continue
            self._seeds.append(seed.name)
            if seed.dc is not None and seed.rack is not None and seed.tokens:
                try:
                    placeholder = _check_entry(
                        [seed.name, 0, 0, 0, seed.host, seed.port, seed.dc, seed.rack,
                         list(seed.tokens), State.NORMAL.value, None, None],
                        low_generation=0)[0]
                except GossipError as error:
                    raise ValueError(f"seed {seed.name!r}: {error}") from None
                self._entries[seed.name] = _Entry(placeholder, self._new_window())
        self._seed_set = frozenset(self._seeds)
        self.version = 1

    # -- the node's own entry ---------------------------------------------------------

    def set_state(self, state: State) -> list[tuple[str, dict]]:
        """Declare this node's state (LEAVING on a graceful stop, an operator state).
        Returns a push of the new entry to every live peer, to send at once (or
        drop: the next gossip rounds carry it anyway)."""
        state = State(state)
        if state is State.DOWN:
            raise ValueError("a node never declares itself DOWN; DOWN is the judgement "
                             "of the others")
        me = self._me
        if state is me.state:
            return []
        me.heartbeat += 1
        me.sv = me.heartbeat
        me.state = state
        self.version += 1
        push = _message(ACK2, [], [self._wire(me, 0.0)], [])
        return [(entry.name, push) for entry in self._peers() if entry.up]

    @property
    def state(self) -> State:
        return self._me.state

    @property
    def generation(self) -> int:
        return self._me.generation

    # -- gossip -------------------------------------------------------------------------

    def tick(self, now: float) -> list[tuple[str, dict]]:
        """One gossip round (call at start, then every ``gos_interval``): bump the
        heartbeat; return the messages to send, as ``[(peer name, message), ...]``:
        a SYN to a random live peer (sometimes also to a node believed down and to
        a seed; to a seed always while no peer is live), a HEARTBEAT to every
        other peer (Rule 4)."""
        self._me.heartbeat += 1
        self._judge_all(now)
        live, down = [], []
        for entry in self._peers():
            (live if entry.up else down).append(entry.name)
        rng = self._rng
        targets: list[str] = []
        if live:
            targets.append(rng.choice(live))
        if down and rng.random() < len(down) / (len(live) + 1):
            targets.append(rng.choice(down))
        seeds = self._seeds
        if seeds and (not live or targets[0] not in self._seed_set or len(live) < len(seeds)):
            if not live or rng.random() <= len(seeds) / (len(live) + len(down)):
                targets.append(rng.choice(seeds))
        syn = self._syn(now)
        out = [(target, syn) for target in dict.fromkeys(targets)]
        # Rule 4: a heartbeat straight to the other peers, so that every node hears
        # every other once per interval, however large the cluster.
        others = [name for name in live + down if name not in targets]
        if self._heartbeat_fanout is not None and len(others) > self._heartbeat_fanout:
            others = rng.sample(others, self._heartbeat_fanout)
        # and to the seeds never heard from: one that does not know this node
        # answers with a SYN, so two groups that formed apart merge at once
        others.extend(name for name in seeds
                      if name not in self._entries and name not in targets)
        if others:
            beat = _message(HEARTBEAT, [self._digest(self._me, now)], [], [])
            out.extend((name, beat) for name in others)
        return out

    def receive(self, sender: str, message: Any, now: float) -> list[tuple[str, dict]]:
        """Merge a GOSSIP message from ``sender``; return the replies (and pushes)
        to send. Raises GossipError, having changed nothing, if it is malformed."""
        kind, digests, entries, wants = _decode(message)
        out: list[tuple[str, dict]] = []
        news: list[str] = []
        for wire in entries:
            if self._merge_entry(wire, sender, now):
                news.append(wire[0][0])
        if kind == SYN:
            out.extend(self._answer_syn(sender, digests, now))
        else:
            behind = False
            for digest in digests:
                behind |= self._merge_digest(digest, now)
            if behind and kind == HEARTBEAT:
                # The sender has what we lack (a new node, generation or state):
                # ask for it with a SYN of our own.
                out.append((sender, self._syn(now)))
        if kind == ACK and wants:
            known = [self._wire(self._entries[name], now) for name in dict.fromkeys(wants)
                     if name in self._entries and self._entries[name].generation > 0]
            if known:
                out.append((sender, _message(ACK2, [], known, [])))
        # (Only the peers this message told of are judged again, as it merged them:
        # the others' judgements change with time alone, at next_check, which the
        # gossiper wakes for. Judging every peer at every message made a node of N
        # peers judge N*N times an interval.)
        if news:
            out.extend(self._push(news, sender, now))
        return out

    def _answer_syn(self, sender: str, digests: list, now: float) -> list[tuple[str, dict]]:
        newer_digests, newer_entries, wants = [], [], []
        mentioned = set()
        for name, generation, heartbeat, sv, age in digests:
            mentioned.add(name)
            entry = self._entries.get(name)
            if entry is None or entry.generation == 0:
                if name != self.name:
                    wants.append(name)
                continue
            theirs, mine = (generation, heartbeat), (entry.generation, entry.heartbeat)
            if theirs > mine:
                if name == self.name:
                    self._contest(generation, heartbeat)
                    newer_entries.append(self._wire(entry, now))
                elif generation == entry.generation and sv == entry.sv:
                    self._arrival(entry, heartbeat, age, now)
                else:
                    wants.append(name)
            elif mine > theirs:
                if generation == entry.generation and sv == entry.sv:
                    newer_digests.append(self._digest(entry, now))
                else:
                    newer_entries.append(self._wire(entry, now))
        for name, entry in self._entries.items():
            if name not in mentioned and entry.generation > 0:
                newer_entries.append(self._wire(entry, now))
        if newer_digests or newer_entries or wants:
            return [(sender, _message(ACK, newer_digests, newer_entries, wants))]
        return []

    def _merge_digest(self, digest: tuple, now: float) -> bool:
        """A digest is a heartbeat update when it matches our copy's generation and
        fields version. True if it shows a newer entry that it cannot update ours
        to (ours is missing, of an older generation or older fields)."""
        name, generation, heartbeat, sv, age = digest
        entry = self._entries.get(name)
        if entry is None or entry.generation == 0:
            return True
        if entry is self._me:
            if (generation, heartbeat) > (entry.generation, entry.heartbeat):
                self._contest(generation, heartbeat)
            return False
        if (generation, heartbeat) <= (entry.generation, entry.heartbeat):
            return False
        if generation == entry.generation and sv == entry.sv:
            self._arrival(entry, heartbeat, age, now)
            return False
        return True

    def _merge_entry(self, wire: tuple, sender: str, now: float) -> bool:
        """Merge a whole entry; True if it is news (Rule 3)."""
        fields, age = wire
        name, generation, heartbeat = fields[0], fields[1], fields[2]
        entry = self._entries.get(name)
        if entry is self._me:
            if _order(fields) > _order(entry.fields()):
                self._contest(generation, heartbeat)
            return False
        if entry is None or entry.generation == 0 or generation > entry.generation:
            fresh = _Entry(fields, self._new_window())
            self._entries[name] = fresh
            if age is not None:
                fresh.window.arrive(now, now - age)
            self.version += 1
            self._judge(fresh, now)
            return True
        if _order(fields) <= _order(entry.fields()):
            return False
        declared = entry.declared()
        moved = heartbeat > entry.heartbeat
        (_, _, entry.heartbeat, entry.sv, entry.host, entry.port, entry.dc, entry.rack,
         entry.tokens, entry.state, entry.client_port) = fields
        changed = entry.declared() != declared
        if changed:
            self.version += 1
        if moved and age is not None:
            entry.window.arrive(now, now - age)
            self._judge(entry, now)
        return changed

    def _contest(self, generation: int, heartbeat: int) -> None:
        """Rule 7: someone has a newer copy of this node's own entry."""
        me = self._me
        if generation >= me.generation and generation < MAX_INT:
            me.generation = generation + 1
        else:  # the same generation (or the largest there is): outrun its heartbeat
            me.generation = max(me.generation, generation)
            me.heartbeat = min(max(me.heartbeat, heartbeat) + 1, MAX_INT)
        me.sv = me.heartbeat
        self.version += 1

    def _push(self, news: list[str], sender: str, now: float) -> list[tuple[str, dict]]:
        if self._fanout <= 0:
            return []
        skip = {sender, *news}
        candidates = [entry.name for entry in self._peers() if entry.up
                      and entry.name not in skip]
        if not candidates:
            return []
        chosen = self._rng.sample(candidates, min(self._fanout, len(candidates)))
        push = _message(ACK2, [], [self._wire(self._entries[name], now)
                                   for name in dict.fromkeys(news)], [])
        return [(name, push) for name in chosen]

    # -- judgement ----------------------------------------------------------------------

    def report_unreachable(self, name: str, now: float) -> None:
        """A request to ``name`` failed for want of a connection (refused, reset,
        timed out). Convicts it once no newer heartbeat came for
        ``unreachable_grace`` (Rule 5)."""
        entry = self._entries.get(name)
        if entry is None or entry is self._me:
            return
        entry.evidence = now
        self._judge(entry, now)

    def is_up(self, name: str, now: float) -> bool:
        entry = self._entries.get(name)
        if entry is None:
            return False
        if entry is not self._me:
            self._judge(entry, now)
        return entry.up

    def refresh(self, now: float) -> int:
        """Re-judge every peer at ``now``; return ``version``."""
        self._judge_all(now)
        return self.version

    def next_check(self, now: float) -> float | None:
        """The earliest time at which a judgement can change with no new input
        (a conviction), or None. May be <= now if ``refresh`` is due."""
        earliest = None
        for entry in self._peers():
            if not entry.up:
                continue
            when = entry.window.deadline()
            evidence = entry.evidence
            if evidence is not None and evidence >= entry.window.last:
                when = min(when, max(evidence, entry.window.last + self._grace))
            if earliest is None or when < earliest:
                earliest = when
        return earliest

    def view(self, now: float) -> dict[str, MemberView]:
        """Every known node, this one included, with this node's judgement."""
        self._judge_all(now)
        result = {}
        for name in sorted(self._entries):
            entry = self._entries[name]
            if entry.state is State.LEFT and entry is not self._me:
                continue  # decommissioned: out of the view (its entry stays, so that
                # an old copy relayed later cannot bring it back)
            phi = 0.0 if entry is self._me else entry.window.phi(now)
            result[name] = MemberView(entry.name, entry.host, entry.port, entry.dc,
                                      entry.rack, entry.tokens, entry.generation,
                                      entry.heartbeat, entry.state, entry.client_port,
                                      entry.up, phi)
        return result

    def members(self) -> list[Member]:
        """Every known node, this one included, by name: what the ring is built of
        (down nodes keep their tokens; routing skips them)."""
        return [self._entries[name].member() for name in sorted(self._entries)]

    def up_peers(self) -> list[str]:
        """The peers judged up at the last evaluation, by name."""
        return sorted(entry.name for entry in self._peers() if entry.up)

    def _judge(self, entry: _Entry, now: float) -> None:
        window = entry.window
        last = window.last
        if last is None or now >= window.deadline():
            up = False
        else:
            evidence = entry.evidence
            up = evidence is None or evidence < last or now < last + self._grace
        if up != entry.up:
            entry.up = up
            self.version += 1

    def _judge_all(self, now: float) -> None:
        for entry in self._peers():
            self._judge(entry, now)

    def _arrival(self, entry: _Entry, heartbeat: int, age: float | None, now: float) -> None:
        entry.heartbeat = heartbeat
        if age is not None:
            entry.window.arrive(now, now - age)
            self._judge(entry, now)

    # -- helpers -----------------------------------------------------------------------

    def _peers(self):
        me = self._me
        return (entry for entry in self._entries.values() if entry is not me)

    def _new_window(self) -> ArrivalWindow:
        return ArrivalWindow(window=self._window, first_estimate=self.gos_interval,
                             min_std=self._min_std, acceptable_pause=self._pause,
                             y_star=self._y_star, max_interval=self._max_interval)

    def _age(self, entry: _Entry, now: float) -> int | None:
        """How long ago ``entry``'s node was last known alive, in ms (0 for this
        node: the message itself shows it alive); None if it never was."""
        if entry is self._me:
            return 0
        last = entry.window.last
        if last is None:
            return None
        return min(max(int((now - last) * 1000), 0), MAX_AGE)

    def _digest(self, entry: _Entry, now: float) -> list:
        return [entry.name, entry.generation, entry.heartbeat, entry.sv,
                self._age(entry, now)]

    def _syn(self, now: float) -> dict:
        """All digests; and this node's own entry whole, so that a receiver that
        never heard of it learns it from the SYN itself, even if the ACK is lost
        (~60 bytes more per SYN)."""
        return _message(SYN, self._digests(now), [self._wire(self._me, now)], [])

    def _digests(self, now: float) -> list[list]:
        return [self._digest(entry, now) for entry in self._entries.values()
                if entry.generation > 0]

    def _wire(self, entry: _Entry, now: float) -> list:
        return [entry.name, entry.generation, entry.heartbeat, entry.sv, entry.host,
                entry.port, entry.dc, entry.rack, list(entry.tokens), entry.state.value,
                entry.client_port, self._age(entry, now)]

    def __repr__(self) -> str:
        up = sum(1 for entry in self._peers() if entry.up)
        return (f"<Membership {self.name} gen {self._me.generation} hb "
                f"{self._me.heartbeat}: {len(self._entries)} nodes, {up} peers up, "
                f"version {self.version}>")


# ---------------------------------------------------------------------------
# The wire: encoding, decoding, validation.


def _message(kind: int, digests: list, entries: list, wants: list) -> dict:
    body = msgpack.packb([digests, entries, wants], use_bin_type=True)
    return {"v": PROTOCOL_VERSION, "k": kind, "b": body}


def _decode(message: Any) -> tuple[int, list, list, list]:
    """A message -> (kind, digests, entries, wants), every field checked.
    Entries come as ``(fields, up)``, fields in the order of ``_Entry.fields``."""
    if not isinstance(message, dict):
        raise GossipError(f"a gossip message is a map, got {type(message).__name__}")
    version = message.get("v")
    if type(version) is not int:
        raise GossipError(f"gossip message without a protocol version (v): {version!r}")
    if version != PROTOCOL_VERSION:
        raise GossipError(f"gossip protocol version {version} is not supported "
                          f"(this node speaks {PROTOCOL_VERSION})")
    kind = message.get("k")
    if type(kind) is not int or kind not in (SYN, ACK, ACK2, HEARTBEAT):
        raise GossipError(f"unknown gossip message kind {kind!r}")
    body = message.get("b")
    if not isinstance(body, bytes):
        raise GossipError(f"gossip message body must be bytes, got {type(body).__name__}")
    if len(body) > MAX_BODY:
        raise GossipError(f"gossip message body of {len(body)} bytes exceeds {MAX_BODY}")
    try:
        decoded = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True,
                                  max_str_len=MAX_TEXT, max_bin_len=0, max_ext_len=0,
                                  max_map_len=0, max_array_len=MAX_ENTRIES)
    except Exception as error:  # msgpack raises several types for bad input
        raise GossipError(f"gossip message body is not valid msgpack: {error}") from None
    if not isinstance(decoded, list) or len(decoded) != 3:
        raise GossipError("gossip message body must be [digests, entries, wants]")
    digests, entries, wants = decoded
    for part, what in ((digests, "digests"), (entries, "entries"), (wants, "wants")):
        if not isinstance(part, list):
            raise GossipError(f"gossip {what} must be a list, got {type(part).__name__}")
    return (kind, [_check_digest(digest) for digest in digests],
            [_check_entry(entry) for entry in entries],
            [_text(name, "wanted name") for name in wants])


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
        raise GossipError(f"{what} must be a string of 1 to {MAX_TEXT} characters, "
                          f"got {value!r:.80}")
    return value


def _integer(value: Any, what: str, low: int, high: int = MAX_INT) -> int:
    if type(value) is not int or not low <= value <= high:
        raise GossipError(f"{what} must be a whole number from {low} to {high}, "
                          f"got {value!r:.80}")
    return value


def _check_version(name: str, generation: Any, heartbeat: Any, sv: Any,
                   low_generation: int) -> None:
    _integer(generation, f"generation of {name}", low_generation)
    _integer(heartbeat, f"heartbeat of {name}", 0)
    _integer(sv, f"fields version of {name}", 0, heartbeat)


def _age_seconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    return _integer(value, f"age of {name}", 0, MAX_AGE) / 1000


def _check_digest(digest: Any) -> tuple[str, int, int, int, float | None]:
    if not isinstance(digest, list) or len(digest) != 5:
        raise GossipError("a digest is [name, generation, heartbeat, sv, age], got "
                          f"{digest!r:.80}")
    name = _text(digest[0], "node name")
    _check_version(name, digest[1], digest[2], digest[3], 1)
    return name, digest[1], digest[2], digest[3], _age_seconds(digest[4], name)


def _check_entry(entry: Any, low_generation: int = 1) -> tuple[tuple, float | None]:
    if not isinstance(entry, list) or len(entry) != 12:
        raise GossipError(f"an entry has 12 fields, got {entry!r:.80}")
    (name, generation, heartbeat, sv, host, port, dc, rack, tokens, state, client_port,
     age) = entry
    name = _text(name, "node name")
    _check_version(name, generation, heartbeat, sv, low_generation)
    _text(host, f"host of {name}")
    _integer(port, f"port of {name}", 1, 65535)
    _text(dc, f"datacenter of {name}")
    _text(rack, f"rack of {name}")
    if not isinstance(tokens, list) or not 0 < len(tokens) <= MAX_TOKENS:
        raise GossipError(f"tokens of {name} must be a list of 1 to {MAX_TOKENS} tokens")
    for token in tokens:
        _integer(token, f"token of {name}", 0, MAX_TOKEN)
    if len(set(tokens)) != len(tokens):
        raise GossipError(f"tokens of {name} list a token twice")
    declared = _DECLARABLE.get(state) if isinstance(state, str) else None
    if declared is None:
        raise GossipError(f"state of {name} must be one of {', '.join(_DECLARABLE)}, "
                          f"got {state!r:.80}")
    if client_port is not None:
        _integer(client_port, f"client port of {name}", 1, 65535)
    return (name, generation, heartbeat, sv, host, port, dc, rack, tuple(tokens), declared,
            client_port), _age_seconds(age, name)


def _as_seed(seed: Any) -> Seed:
    if isinstance(seed, Seed):
        return seed
    if isinstance(seed, tuple) and len(seed) in (3, 6):
        if len(seed) == 3:
            return Seed(*seed)
        name, host, port, dc, rack, tokens = seed
        return Seed(name, host, port, dc, rack, tuple(tokens))
    raise ValueError(f"a seed is a Seed, (name, host, port) or (name, host, port, dc, "
                     f"rack, tokens), got {seed!r}")
