"""The gossip shell: runs dyno.membership (pure) on a live node.

It owns the only gossip task: every ``gos_interval`` it calls ``tick`` and sends
what membership returns, as GOSSIP frames over the peer links (so TLS and the HELLO
checks cover gossip too). Frames that arrive go to ``receive``. After every input
it compares membership's ``version`` with the last one it applied; when it moved,
it tells the node which peers are judged down (routing skips them at once) and,
if the set of nodes or their tokens changed, gives the node a new ring.

It does not know the node (STYLE.md §9): the node hands it ``send(name,
message)`` (a GOSSIP frame over the link to that peer), ``set_ring(ring)`` and
``set_judged_down(names)``.

Never on the request path: routing reads one attribute per peer link
(``PeerLink.judged_down``), written here.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Callable

import trio

from dyno import ownership
from dyno.membership import GossipError, Member, Membership, Seed, State
from dyno.ring import Ring, RingError

if TYPE_CHECKING:
    from dyno.config import Config

log = logging.getLogger("dyno.gossip")

# Declared states in which a node takes no requests: routing treats it as down.
UNAVAILABLE_STATES = frozenset({State.LEAVING, State.STANDBY, State.LEFT})


class Gossiper:
    """Membership on a live node. ``config`` gives this node's identity, its seeds
    and the gossip settings; ``ring`` is the ring the node starts with (new rings
    keep its local node and hashing). ``send(name, message)`` queues a message
    for a peer and returns its size (0 if there is no link to it)."""

    def __init__(
        self, config: "Config", ring: Ring, *, send: Callable[[str, dict], int],
        set_ring: Callable[[Ring], None], set_judged_down: Callable[[set[str]], None],
        state: State = State.NORMAL,
    ):
        self.name = config.name
        self.ring = ring
        self.send = send
        self.set_ring = set_ring
        self.set_judged_down = set_judged_down
        dyn = config.dyn_listen
        me = Member(
            name=config.name, host=dyn.host, port=dyn.port, dc=config.datacenter, rack=config.rack,
            tokens=tuple(config.tokens), generation=int(time.time() * 1000), heartbeat=0,
            state=state, client_port=config.listen.port,
        )
        seeds = [
            Seed(f"{s.host}:{s.port}", s.host, s.port, s.dc, s.rack, tuple(s.tokens))
            for s in config.dyn_seeds
        ]
        self.interval = config.gos_interval / 1000
        self.membership = Membership(
            me, seeds, gos_interval=self.interval,
            phi_convict_threshold=config.phi_convict_threshold,
            rng=random.Random(), now=trio.current_time(),
        )
        self._applied = 0
        self._replaced_logged: set[str] = set()
        self.bytes_sent = 0
        self._ring_key = self._key(ring)

    # -- inputs -----------------------------------------------------------------------

    async def run(self) -> None:
        membership = self.membership
        next_tick = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= next_tick:
                self._send(membership.tick(now))
                next_tick = now + self.interval
            else:
                membership.refresh(now)
            self._apply(now)
            wake = next_tick
            check = membership.next_check(now)
            if check is not None and check < wake:
                wake = max(check, now + 0.01)
            await trio.sleep_until(wake)

    def receive(self, sender: str, message) -> None:
        now = trio.current_time()
        try:
            replies = self.membership.receive(sender, message, now)
        except GossipError as exc:
            log.warning("gossip from %s ignored: %s", sender, exc)
            return
        self._send(replies)
        self._apply(now)

    def unreachable(self, name: str) -> None:
        """A peer link could not connect, or lost its connection."""
        now = trio.current_time()
        self.membership.report_unreachable(name, now)
        self._apply(now)

    def leave(self) -> None:
        """Graceful stop: declare LEAVING so peers route around this node at once
        (a node that left the ring stays LEFT: LEAVING would bring it back)."""
        if self.membership.state is not State.LEFT:
            self._send(self.membership.set_state(State.LEAVING))

    def set_operator_state(self, state: str) -> None:
        self._send(self.membership.set_state(State(state)))
        self._apply(trio.current_time())

    def declare(self, state: str) -> None:
        """A range movement's step (JOINING, NORMAL, DECOMMISSIONING, LEFT): pushed
        to every live peer at once, and applied to this node's own ring."""
        self.set_operator_state(state)

    # -- outputs ----------------------------------------------------------------------

    def _send(self, messages) -> None:
        send = self.send
        for name, message in messages:
            self.bytes_sent += send(name, message)

    def _apply(self, now: float) -> None:
        membership = self.membership
        if membership.version == self._applied:
            return
        self._applied = membership.version
        view = membership.view(now)
        members = [m for m in view.values() if m.tokens]
        key = tuple(sorted((m.name, m.host, m.port, m.dc, m.rack, m.tokens, _ownership_state(m.state),
                            m.generation) for m in members))
        if key != self._ring_key:
            current = self.ring
            claims = [ownership.Claim(m.ring_node(local=m.name == self.name), _ownership_state(m.state),
                                      m.generation) for m in members]
            try:
                ring, placed = ownership.ring_of(claims, current.local, current.hash_name, current.hash_tag)
            except RingError as exc:
                log.error("membership change not applied to the ring: %s", exc)
            else:
                for name, reason in placed.refused.items():
                    log.error("the move of %s is refused: %s", name, reason)
                for old, new in placed.replaced.items():
                    if old not in self._replaced_logged:
                        self._replaced_logged.add(old)
                        log.warning("%s holds the tokens of %s and started later: it owns them, %s leaves the "
                                    "ring (a replacement; if %s is alive, two nodes share tokens by mistake)",
                                    new, old, old, old)
                self._ring_key = key
                self.ring = ring
                self.set_ring(ring)
        down = {
            name for name, member in view.items()
            if name != self.name and (not member.up or member.state in UNAVAILABLE_STATES)
        }
        self.set_judged_down(down)

    @staticmethod
    def _key(ring: Ring) -> tuple:
        return ()  # (the first membership view is always applied)

    def describe(self, now: float | None = None) -> dict:
        """The view, for INFO and the admin port."""
        now = trio.current_time() if now is None else now
        return self.membership.view(now)


def _ownership_state(state: State) -> str:
    """What dyno.ownership makes of a declared state: the moves are theirs, every
    other state (operator states, LEAVING on a stop) is a current owner's."""
    return state.value if state.value in _MOVES else ownership.NORMAL


_MOVES = frozenset({ownership.JOINING, ownership.REPLACING, ownership.DECOMMISSIONING, ownership.LEFT})
