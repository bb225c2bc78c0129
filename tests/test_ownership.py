"""dyno.ownership and the ring's pending owners: a simulation of concurrent joins,
decommissions and replacements (hypothesis state machine) in which ownership is
never ambiguous, checked against a brute-force oracle of the rings each movement
leads to; and the token splitter."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dyno.ownership import (DECOMMISSIONING, JOINING, LEFT, NORMAL, REPLACING, Claim, placement, ring_of,
                            split_tokens)
from dyno.ring import MAX_TOKEN, Moving, Ring, RingNode

RACKS = ("r1", "r2")


def node(name: str, rack: str, *tokens: int) -> RingNode:
    return RingNode(name, "127.0.0.1", 1000 + int(name[1:]), "dc", rack, tuple(tokens))


def brute_owner(nodes: list[RingNode], rack: str, token: int) -> RingNode | None:
    """Rule 2 of dyno.ring, the slow way: the smallest token >= t, else the smallest."""
    owned = sorted((t, n.name, n) for n in nodes if n.rack == rack for t in n.tokens)
    if not owned:
        return None
    for t, _, n in owned:
        if t >= token:
            return n
    return owned[0][2]


class Movements(RuleBasedStateMachine):
    """Nodes join, leave and are replaced, several at once; after every step the
    ring built from the claims is checked for every token that matters."""

    def __init__(self):
        super().__init__()
        self.counter = itertools.count(1)
        self.claims: dict[str, Claim] = {}
        self.generation = itertools.count(1)
        self.used: set[tuple[str, int]] = set()
        for rack, token in (("r1", 0), ("r2", 0)):
            self._add(rack, (token,), NORMAL)

    def _add(self, rack: str, tokens: tuple[int, ...], state: str) -> str:
        name = f"n{next(self.counter)}"
        self.claims[name] = Claim(node(name, rack, *tokens), state, next(self.generation))
        for token in tokens:
            self.used.add((rack, token))
        return name

    def _in(self, *states: str) -> list[str]:
        return sorted(name for name, claim in self.claims.items() if claim.state in states)

    @rule(rack=st.sampled_from(RACKS), tokens=st.sets(st.integers(0, 2**12 - 1), min_size=1, max_size=3))
    def join(self, rack, tokens):
        tokens = tuple(sorted(t * (2**20) for t in tokens if (rack, t * (2**20)) not in self.used))
        if tokens:
            self._add(rack, tokens, JOINING)

    @precondition(lambda self: self._in(JOINING, REPLACING))
    @rule(data=st.data())
    def finish_moving_in(self, data):
        name = data.draw(st.sampled_from(self._in(JOINING, REPLACING)))
        placed = placement(self.claims.values())
        if name in placed.refused:  # refused: the operator stops it
            self.claims[name] = Claim(self.claims[name].node, LEFT, self.claims[name].generation)
            return
        self.claims[name] = Claim(self.claims[name].node, NORMAL, next(self.generation))
        # the node it replaced, if any, is now out of the ring
        for old in placement(self.claims.values()).replaced:
            self.claims[old] = Claim(self.claims[old].node, LEFT, self.claims[old].generation)

    @precondition(lambda self: self._in(NORMAL))
    @rule(data=st.data())
    def decommission(self, data):
        name = data.draw(st.sampled_from(self._in(NORMAL)))
        rack = self.claims[name].node.rack
        staying = [n for n in self._in(NORMAL) if self.claims[n].node.rack == rack]
        if len(staying) > 1:
            self.claims[name] = Claim(self.claims[name].node, DECOMMISSIONING, self.claims[name].generation)

    @precondition(lambda self: self._in(DECOMMISSIONING))
    @rule(data=st.data())
    def finish_decommission(self, data):
        name = data.draw(st.sampled_from(self._in(DECOMMISSIONING)))
        self.claims[name] = Claim(self.claims[name].node, LEFT, self.claims[name].generation)

    @precondition(lambda self: self._in(NORMAL))
    @rule(data=st.data())
    def replace(self, data):
        name = data.draw(st.sampled_from(self._in(NORMAL)))
        old = self.claims[name].node
        if any(c.state == REPLACING and c.node.rack == old.rack and set(c.node.tokens) & set(old.tokens)
               for c in self.claims.values()):
            return
        self._add(old.rack, old.tokens, REPLACING)

    # -- the checks --------------------------------------------------------------

    def _tokens(self, ring: Ring) -> list[int]:
        """Every boundary, one past it, and the ends: where owners change."""
        points = {0, MAX_TOKEN}
        for claim in self.claims.values():
            for token in claim.node.tokens:
                points.update({token, min(token + 1, MAX_TOKEN), max(token - 1, 0)})
        return sorted(points)

    @invariant()
    def ownership_is_never_ambiguous(self):
        claims = list(self.claims.values())
        local = claims[0].node
        ring, placed = ring_of(claims, local)
        current = placed.current
        current_names = {n.name for n in current}
        racks = sorted({n.rack for n in current})
        # the ring each single movement leads to (the oracle)
        after = []
        for name, kind in placed.moving.items():
            moved = {c.node.name: c.node for c in claims if c.state != LEFT and c.node.name in current_names}
            if kind == DECOMMISSIONING:
                moved.pop(name)
            else:
                me = self.claims[name].node
                if kind == REPLACING:
                    for other in list(moved.values()):
                        if other.rack == me.rack and set(other.tokens) == set(me.tokens):
                            moved.pop(other.name)
                moved[name] = me
            after.append(list(moved.values()))
        for token in self._tokens(ring):
            replicas = ring.replicas(token)
            pending = ring.pending(token)
            writes = set(n.name for n in replicas) | set(n.name for n in pending)
            # exactly one read owner per rack, a current node, the oracle's
            assert len(replicas) == len(racks)
            assert sorted(n.rack for n in replicas) == racks
            for owner in replicas:
                assert owner.name in current_names
                assert owner.name == brute_owner(current, owner.rack, token).name
            # pending owners never read, and the set is consistent with the table
            assert not {n.name for n in pending} & {n.name for n in replicas}
            assert isinstance(replicas, Moving) == bool(pending)
            # at least one writer per rack; whichever movement completes next, its
            # read owners already get this token's writes
            assert writes
            for future in after:
                for rack in {n.rack for n in future}:
                    assert brute_owner(future, rack, token).name in writes, (token, rack, future)


TestMovements = Movements.TestCase
TestMovements.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


def test_a_join_sends_writes_to_the_joining_node_and_reads_to_the_old_owner():
    a, b = node("n1", "r1", 0), node("n2", "r2", 0)
    joining = node("n3", "r1", 2**31)
    ring, placed = ring_of([Claim(a, NORMAL, 1), Claim(b, NORMAL, 1), Claim(joining, JOINING, 2)], a)
    assert placed.moving == {"n3": JOINING}
    assert [n.name for n in ring.replicas(100)] == ["n1", "n2"]
    assert ring.pending(100) == (joining,)           # (0, 2**31] moves to n3
    assert ring.pending(2**31 + 1) == ()               # the rest stays with n1
    assert ring.moving and [n.name for n in ring.pending_nodes] == ["n3"]
    assert ring.node("n3") == joining


def test_the_joining_node_routes_by_the_current_ring():
    a, b = node("n1", "r1", 0), node("n2", "r2", 0)
    joining = node("n3", "r1", 2**31)
    ring, _ = ring_of([Claim(a, NORMAL, 1), Claim(b, NORMAL, 1), Claim(joining, JOINING, 2)], joining)
    assert ring.local_pending and ring.local.name == "n3"
    assert [n.name for n in ring.replicas(100)] == ["n1", "n2"]
    assert [n.name for n in ring.pending(100)] == ["n3"]
    assert [n.name for n in ring.nodes] == ["n1", "n2"]


def test_a_replacement_takes_over_once_normal_and_the_old_node_leaves_the_ring():
    a, b = node("n1", "r1", 0), node("n2", "r2", 0)
    new = node("n3", "r1", 0)
    ring, placed = ring_of([Claim(a, NORMAL, 1), Claim(b, NORMAL, 1), Claim(new, REPLACING, 5)], b)
    assert [n.name for n in ring.replicas(7)] == ["n2", "n1"] and [n.name for n in ring.pending(7)] == ["n3"]
    ring, placed = ring_of([Claim(a, NORMAL, 1), Claim(b, NORMAL, 1), Claim(new, NORMAL, 5)], b)
    assert placed.replaced == {"n1": "n3"}
    assert [n.name for n in ring.replicas(7)] == ["n2", "n3"] and not ring.moving


def test_conflicting_moves_are_refused_with_the_reason():
    a, b = node("n1", "r1", 0), node("n2", "r1", 2**31)
    placed = placement([Claim(a, NORMAL, 1), Claim(b, NORMAL, 1), Claim(node("n3", "r1", 2**31), JOINING, 2),
                        Claim(node("n4", "r1", 5), REPLACING, 2)])
    assert "n2" in placed.refused["n3"]
    assert "exactly one node" in placed.refused["n4"]
    assert placed.futures == []


@given(st.sets(st.integers(0, MAX_TOKEN), min_size=1, max_size=8), st.integers(1, 4))
def test_split_tokens_halve_the_widest_ranges(tokens, count):
    nodes = [node(f"n{i + 1}", "r1", t) for i, t in enumerate(sorted(tokens))]
    ring = Ring(nodes[1:], nodes[0])
    chosen = split_tokens(ring, "dc", "r1", count)
    assert len(chosen) == count and not set(chosen) & tokens
    ordered = sorted(tokens)
    widths = [(t - ordered[i - 1]) % (MAX_TOKEN + 1) or MAX_TOKEN + 1 for i, t in enumerate(ordered)]
    first = chosen[0]
    # the first token sits in the middle of a widest range
    for i, t in enumerate(ordered):
        start = ordered[i - 1]
        if widths[i] == max(widths) and (first - start) % (MAX_TOKEN + 1) == widths[i] // 2:
            break
    else:
        pytest.fail(f"{first} does not halve a widest range of {ordered}")
