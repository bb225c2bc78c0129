"""A dyno node: wires the listeners, the coordinator, the ring, the peer links and
the datastore together.

The node owns every long-lived task (one nursery) and the little shared state the
hot path needs: the list of clients with replies ready to send, and plain-integer
counters. Stopping the node cancels the nursery: listeners close, client and peer
connections close, datastore connections close.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass

import trio

from dyno import node_commands
from dyno.client import ClientConnection, ClientListener
from dyno.config import Config
from dyno.coordinator import Coordinator
from dyno.datastore import Datastore
from dyno.peer import PeerLink, PeerServer
from dyno.ring import Ring, topology_from_config

log = logging.getLogger("dyno.node")


class Congestion:
    """The peer links that have too many unanswered requests. While any has,
    clients are not read from (``wait_clear``), so a slow replica slows writers
    down instead of making the node queue without bound."""

    def __init__(self) -> None:
        self.links: set = set()
        self._lot = trio.lowlevel.ParkingLot()

    def __bool__(self) -> bool:
        return bool(self.links)

    def add(self, link) -> None:
        self.links.add(link)

    def remove(self, link) -> None:
        self.links.discard(link)
        if not self.links:
            self._lot.unpark_all()

    async def wait_clear(self) -> None:
        while self.links:
            await self._lot.park()


@dataclass
class Stats:
    """Counters on the hot path are plain integers, read only when asked."""

    commands: int = 0
    errors: int = 0
    connections_received: int = 0
    replica_failures: int = 0


class Node:
    def __init__(self, config: Config, ring: Ring | None = None):
        self.config = config
        self.ring = ring if ring is not None else topology_from_config(config)
        self.peer_links = {
            peer.name: PeerLink(self, peer) for peer in self.ring.nodes if not peer.local
        }
        self.stats = Stats()
        self.started = time.time()
        self.clients: dict[int, ClientConnection] = {}
        self.congestion = Congestion()
        # Clients with at least one reply ready; flushed after each batch of replies.
        self.ready_clients: list[ClientConnection] = []
        server = config.servers[0]
        self.datastore = Datastore(
            server.host,
            server.port,
            connections=config.datastore_connections,
            timeout=config.timeout / 1000,
            after_batch=self.flush_ready,
        )
        self.coordinator = Coordinator(self)
        self.listener = ClientListener(self, config.listen.host, config.listen.port)
        self.peer_server = PeerServer(self, config.dyn_listen.host, config.dyn_listen.port)
        self.nursery: trio.Nursery | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def flush_ready(self) -> None:
        ready = self.ready_clients
        while ready:
            client = ready.pop()
            client.queued = False
            client.flush()

    def forget_client(self, client: ClientConnection) -> None:
        self.clients.pop(client.id, None)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Binding happens before ``task_status.started()``
        so a caller knows the ports are open."""
        self.listener.bind()
        self.peer_server.bind()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.datastore.run)
            nursery.start_soon(self.peer_server.serve, nursery)
            for link in self.peer_links.values():
                nursery.start_soon(link.run)
            nursery.start_soon(self.listener.serve, nursery)
            log.info(
                "node %s serving clients on %s:%d, peers on %s:%d, datastore %s "
                "(dc %s, rack %s, %d peers)",
                self.name, self.listener.host, self.listener.port, self.peer_server.host,
                self.peer_server.port, self.datastore.address, self.config.datacenter,
                self.config.rack, len(self.peer_links),
            )
            task_status.started(self)

    def stop(self) -> None:
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def info_text(self, sections: list[bytes], everything: bool) -> str:
        """The node's own INFO sections (Redis's keyspace section is appended by the caller)."""
        config = self.config
        blocks = {
            b"server": node_commands.server_info(self),
            b"clients": {"connected_clients": len(self.clients)},
            b"stats": {
                "total_commands_processed": self.stats.commands,
                "total_error_replies": self.stats.errors,
                "replica_failures": self.stats.replica_failures,
            },
            b"dyno": {
                "node_name": self.name,
                "datacenter": config.datacenter,
                "rack": config.rack,
                "tokens": ",".join(map(str, config.tokens)),
                "read_consistency": config.read_consistency,
                "write_consistency": config.write_consistency,
                "datastore": self.datastore.address,
                "datastore_up": int(self.datastore.up),
                "peers": len(self.peer_links),
                "peers_up": sum(link.up for link in self.peer_links.values()),
                # Replica requests still in flight: 0 on every node means every
                # acknowledged write has reached every replica.
                "peer_requests_in_flight": sum(
                    link.in_flight for link in self.peer_links.values()
                ),
            },
        }
        out = []
        for name, fields in blocks.items():
            if everything or name in sections:
                out.append(f"# {name.decode().capitalize()}\r\n")
                out.extend(f"{k}:{v}\r\n" for k, v in fields.items())
                out.append("\r\n")
        return "".join(out)


async def serve(config: Config) -> None:
    """Run a node until SIGINT or SIGTERM, then stop cleanly."""
    node = Node(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)

            async def watch_signals():
                async for signum in signals:
                    log.info("node %s: %s received, stopping", node.name, signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
