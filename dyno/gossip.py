"""The gossip shell: runs dyno.membership (pure) on a live node.

It owns the only gossip task: every ``gos_interval`` it calls ``tick`` and sends
what membership returns, as GOSSIP frames over the peer links (so TLS and the HELLO
checks cover gossip too). Frames that arrive go to ``receive``. After every input
it compares membership's ``version`` with the last one it applied; when it moved,
it tells the node which peers are judged down (routing skips them at once) and,
if the set of nodes or their tokens changed, gives the node a new ring.

Never on the request path: routing reads one attribute per peer link
(``PeerLink.judged_down``), written here.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

import trio

from dyno.membership import GossipError, Member, Membership, Seed, State
from dyno.ring import Ring, RingError

if TYPE_CHECKING:
    from dyno.node import Node

log = logging.getLogger("dyno.gossip")

# Declared states in which a node takes no requests: routing treats it as down.
UNAVAILABLE_STATES = frozenset({State.LEAVING, State.STANDBY})


class Gossiper:
    def __init__(self, node: "Node"):
        self.node = node
        config = node.config
        dyn = config.dyn_listen
        me = Member(
            name=node.name, host=dyn.host, port=dyn.port, dc=config.datacenter, rack=config.rack,
            tokens=tuple(config.tokens), generation=int(time.time() * 1000), heartbeat=0,
            state=State.NORMAL, client_port=config.listen.port,
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
        self.bytes_sent = 0
        self._ring_key = self._key(node.ring)

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
        """Graceful stop: declare LEAVING so peers route around this node at once."""
        self._send(self.membership.set_state(State.LEAVING))

    def set_operator_state(self, state: str) -> None:
        self._send(self.membership.set_state(State(state)))

    # -- outputs ----------------------------------------------------------------------

    def _send(self, messages) -> None:
        node = self.node
        for name, message in messages:
            link = node.link_to(name)
            if link is not None:
                self.bytes_sent += link.send_gossip(message)

    def _apply(self, now: float) -> None:
        membership = self.membership
        if membership.version == self._applied:
            return
        self._applied = membership.version
        view = membership.view(now)
        node = self.node
        members = [m for m in view.values() if m.tokens]
        key = tuple(sorted((m.name, m.host, m.port, m.dc, m.rack, m.tokens) for m in members))
        if key != self._ring_key:
            try:
                ring = Ring(
                    [m.ring_node(local=m.name == node.name) for m in members],
                    node.ring.local, node.ring.hash_name, node.ring.hash_tag,
                )
            except RingError as exc:
                log.error("membership change not applied to the ring: %s", exc)
            else:
                self._ring_key = key
                node.set_ring(ring)
        down = {
            name for name, member in view.items()
            if name != node.name and (not member.up or member.state in UNAVAILABLE_STATES)
        }
        node.set_judged_down(down)

    @staticmethod
    def _key(ring: Ring) -> tuple:
        return tuple(sorted((n.name, n.host, n.port, n.dc, n.rack, n.tokens) for n in ring.nodes))

    def describe(self, now: float | None = None) -> dict:
        """The view, for INFO and the admin port."""
        now = trio.current_time() if now is None else now
        return self.membership.view(now)
