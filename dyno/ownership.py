"""Ownership while ranges move: which nodes own the ring now, and which rings the
range movements in flight lead to (a join, a decommission, a replacement).

This module owns the rules that turn gossip's members (each with its declared
state) into a ``dyno.ring.Ring`` with pending owners. It is pure: no I/O, no clock;
the same members give the same ring on every node. It must never make a key's
ownership ambiguous: a ring it builds has exactly one read owner per rack for every
token (the *current* ring), and every node that will own a token once any one
movement in flight completes gets that token's writes already (the *futures*).

Rule 1 - the current ring is every member that is not moving in: NORMAL nodes (and
    down ones: they keep their tokens, routing skips them), DECOMMISSIONING nodes
    (still owners while they stream their ranges away), operator states. JOINING
    and REPLACING nodes are not in it; LEFT nodes are nowhere.
Rule 2 - one future per movement: a JOINING node adds itself to the current ring; a
    DECOMMISSIONING node removes itself; a REPLACING node takes the place of the
    current node of its rack that has exactly its tokens. A key's writes go to its
    owners in the current ring and in every future (``Ring.pending``), so whichever
    movement completes first, its new owner already has every write made during
    the move (the simulation test checks this under concurrent joins and leaves).
Rule 3 - conflicts are refused, never guessed: a moving-in node whose tokens
    collide with another node of its rack (a REPLACING node: with any node but the
    one it replaces) gets no future and is listed in ``refused`` with the reason.
Rule 4 - a replacement that completed (the new node NORMAL with the old node's
    tokens) wins over the node it replaced: of two current nodes of a rack that
    share a token, the one with the higher generation (the later start) owns, the
    other is ``replaced`` and leaves the ring.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dyno.ring import MAX_TOKEN, Ring, RingNode

__all__ = ["DECOMMISSIONING", "JOINING", "LEFT", "MOVING_IN", "NORMAL", "REPLACING", "Claim",
           "Placement", "placement", "ring_of", "split_range", "split_tokens"]

NORMAL, JOINING, REPLACING, DECOMMISSIONING, LEFT = (
    "NORMAL", "JOINING", "REPLACING", "DECOMMISSIONING", "LEFT")
MOVING_IN = frozenset({JOINING, REPLACING})


@dataclass(frozen=True)
class Claim:
    """What a member declares that ownership depends on."""

    node: RingNode
    state: str          # a declared state's name (dyno.membership.State values)
    generation: int = 0


@dataclass
class Placement:
    current: list[RingNode]
    futures: list[list[RingNode]]
    moving: dict[str, str] = field(default_factory=dict)    # name -> JOINING/REPLACING/DECOMMISSIONING
    replaced: dict[str, str] = field(default_factory=dict)  # old name -> the node that replaced it
    refused: dict[str, str] = field(default_factory=dict)   # name -> why its move has no future


def placement(claims: Iterable[Claim]) -> Placement:
    """The current ring's nodes and the futures of the movements in flight."""
    claims = sorted(claims, key=lambda claim: claim.node.name)
    claims = [claim for claim in claims if claim.state != LEFT]
    result = Placement([], [])
    staying = [claim for claim in claims if claim.state not in MOVING_IN]
    # Rule 4: a completed replacement owns the tokens it shares with an older node.
    losers: set[str] = set()
    by_rack: dict[tuple[str, str], list[Claim]] = {}
    for claim in staying:
        by_rack.setdefault((claim.node.dc, claim.node.rack), []).append(claim)
    for members in by_rack.values():
        members.sort(key=lambda claim: (-claim.generation, claim.node.name))
        taken: dict[int, str] = {}
        for claim in members:
            clash = next((taken[token] for token in claim.node.tokens if token in taken), None)
            if clash is not None:
                losers.add(claim.node.name)
                result.replaced[claim.node.name] = clash
                continue
            for token in claim.node.tokens:
                taken[token] = claim.node.name
    current = [claim.node for claim in staying if claim.node.name not in losers]
    result.current = current
    owner_of = {(node.dc, node.rack, token): node for node in current for token in node.tokens}
    moving_in_tokens: dict[tuple[str, str, int], str] = {}
    for claim in claims:
        node = claim.node
        if claim.state == DECOMMISSIONING and node.name not in losers:
            result.futures.append([other for other in current if other.name != node.name])
            result.moving[node.name] = DECOMMISSIONING
        elif claim.state in MOVING_IN:
            holders = {owner_of[node.dc, node.rack, token].name
                       for token in node.tokens if (node.dc, node.rack, token) in owner_of}
            rivals = {moving_in_tokens[node.dc, node.rack, token]
                      for token in node.tokens if (node.dc, node.rack, token) in moving_in_tokens}
            if rivals:
                result.refused[node.name] = (f"its tokens collide with those of {', '.join(sorted(rivals))}, "
                                             "also moving in")
                continue
            if claim.state == JOINING:
                if holders:
                    result.refused[node.name] = (f"its tokens collide with those of {', '.join(sorted(holders))} "
                                                 f"in rack {node.rack}")
                    continue
                future = [*current, node]
            else:
                old = [other for other in current if other.name in holders]
                if len(old) != 1 or set(old[0].tokens) != set(node.tokens):
                    result.refused[node.name] = (
                        f"a replacement takes the tokens of exactly one node of rack {node.rack}; its tokens "
                        + (f"are held by {', '.join(sorted(holders))}" if holders else "are held by no node"))
                    continue
                future = [other for other in current if other is not old[0]] + [node]
            for token in node.tokens:
                moving_in_tokens[node.dc, node.rack, token] = node.name
            result.futures.append(future)
            result.moving[node.name] = claim.state
    return result


def ring_of(claims: Iterable[Claim], local: RingNode, hash_name: str = "murmur",
            hash_tag: bytes | None = None) -> tuple[Ring, Placement]:
    """The ring the members' claims make, seen from ``local`` (dyno.ring.Ring with
    the futures of every movement in flight)."""
    placed = placement(claims)
    nodes = [node for node in placed.current if node.name != local.name]
    outside = len(nodes) == len(placed.current)
    return Ring(nodes, local, hash_name, hash_tag, placed.futures, local_outside=outside), placed


def split_tokens(ring: Ring, dc: str, rack: str, count: int = 1) -> list[int]:
    """Tokens for a node joining ``rack``: each the middle of the rack's widest range
    at the time (the most loaded, tokens being the only measure of load a ring has),
    so ``count`` tokens split the ``count`` widest ranges in turn."""
    return split_range([token for node in ring.rack_nodes(dc, rack) for token in node.tokens], count)


def split_range(taken: Iterable[int], count: int = 1) -> list[int]:
    """``count`` tokens, each the middle of the widest range between ``taken``
    tokens (and those chosen before it); fewer if no range is wider than 1."""
    tokens = sorted(set(taken))
    chosen: list[int] = []
    for _ in range(count):
        best, best_width = None, -1
        for index, token in enumerate(tokens):
            previous = tokens[index - 1] - (MAX_TOKEN + 1 if index == 0 else 0)
            width = token - previous
            if width > best_width:
                best, best_width = (previous + width // 2) % (MAX_TOKEN + 1), width
        if best is None or best_width < 2:
            break
        chosen.append(best)
        tokens = sorted(tokens + [best])
    return chosen
