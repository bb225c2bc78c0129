"""A dyno node: wires the listeners, the coordinator, the ring, the peer links and
the datastore together.

The node is the composition root (STYLE.md §9): it builds every part and hands each
the few values and callables it needs (a peer link gets "this peer is unreachable",
"these background requests failed", not the node), bound once at construction so
the request path pays nothing for it. No part imports this module; only the
command line does, to start a node, and dyno.workers, to start a node's processes. (The coordinator still takes the node whole;
node_commands answers INFO and CLIENT from it.)

The node owns every long-lived task (one nursery) and the little shared state the
hot path needs: the list of clients with replies ready to send, and plain-integer
counters. Stopping the node cancels the nursery: listeners close, client and peer
connections close, datastore connections close.

With ``workers: N`` (dyno.workers) a node is N + 1 processes, each built here in a
role: a WORKER serves clients and peers on the node's shared ports and routes with
the view its supervisor pushes (no gossip, no admin port); the SUPERVISOR serves no
clients and owns what is one per node (gossip, the admin port, repair, the tombstone
sweeper). ``control`` (a worker's link to its supervisor) and ``on_view_change`` (the
supervisor's: push the view) are set by dyno.workers; a SINGLE node has neither.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time

import msgpack
import trio

from dyno import auth, node_commands, ownership, pubsub, repair, resp, streaming, tls, tombstones, versions
from dyno.admin import AdminServer, NodeView
from dyno.client import ClientConnection, ClientListener
from dyno.config import Config
from dyno.coordinator import Coordinator
from dyno.datastore import Datastore, Sink, check_auth
from dyno.gossip import Gossiper
from dyno.handoff import Handoff
from dyno.hints import HintStore
from dyno.membership import State
from dyno.metrics import Metrics, Stats, merge_into, snapshot
from dyno.peer import COORDINATE, Congestion, PeerLink, PeerServer, hello_frame
from dyno.peer_tls import PeerTLS
from dyno.ring import Ring, RingError, RingNode, nodes_from_config, topology_from_config
from dyno.states import NORMAL, OPERATOR_STATES
from dyno.stream import ListenError

log = logging.getLogger("dyno.node")

# What one process of a node does (dyno.workers): all of it, the supervisor's share or a worker's.
SINGLE, SUPERVISOR, WORKER = "single", "supervisor", "worker"


class Node:
    def __init__(self, config: Config, ring: Ring | None = None, moved_in: bool = False, *,
                 role: str = SINGLE, clock_name: str | None = None):
        self.config = config
        self.role = role
        # A worker's link to its supervisor (dyno.workers.SupervisorLink); None otherwise.
        self.control = None
        # The supervisor's: called after the view workers route by changed.
        self.on_view_change = None
        # A worker's HELLO advertises its supervisor's admin port (None: this process's).
        self.admin_address: str | None = None
        # A worker's copy of its supervisor's gossip: each other node's client address.
        self.pushed_clients: dict[str, tuple[str, int]] = {}
        # auto_bootstrap / replace_node: this node starts pending (it gets writes, owns
        # nothing) and streams its ranges in (dyno.streaming) before it turns NORMAL;
        # unless its Redis records that it did so already (``moved_in``: a restart).
        # (The config refuses them with workers > 1: dyno.config.)
        self.moving_in = (None if moved_in else "replace" if config.replace_node
                          else "join" if config.auto_bootstrap else None)
        self.ring = ring if ring is not None else initial_ring(config, self.moving_in)
        # secure_server_option: which peer links are TLS, with the node's certificate
        # (TLSConfigError, a file that cannot be used, stops the start).
        self.peer_tls = PeerTLS.from_config(config)
        # cluster_secret: peers prove they know it (dyno.peer); without it (or TLS on
        # every link), anyone who knows the cluster name can speak to the peer port.
        self.secret = None if config.cluster_secret is None else config.cluster_secret.encode()
        if self.secret is None and config.secure_server_option != "all" and len(self.ring.nodes) > 1:
            log.warning("cluster_secret is not set: the peer port (%s) accepts any %speer that knows the "
                        "cluster name; set cluster_secret on every node", config.dyn_listen,
                        "" if self.peer_tls is None else "plaintext ")
        self.congestion = Congestion()
        self.peer_links = {
            peer.name: self._new_link(peer) for peer in (*self.ring.nodes, *self.ring.pending_nodes)
            if not peer.local
        }
        self.stats = Stats()
        self.metrics = Metrics()
        self.state = NORMAL
        # Runtime settings the admin port changes; the coordinator reads these.
        self.read_consistency = config.read_consistency
        self.write_consistency = config.write_consistency
        self.admin_down: set[str] = set()  # peers an operator marked down (not read from)
        self.peer_admin: dict[str, str] = {}  # peer name -> its admin address (HELLO)
        self.started = time.time()
        self.clients: dict[int, ClientConnection] = {}
        # Clients with at least one reply ready; flushed after each batch of replies.
        self.ready_clients: list[ClientConnection] = []
        server = config.servers[0]
        self.datastore = Datastore(
            server.host,
            server.port,
            connections=config.datastore_connections,
            timeout=config.timeout / 1000,
            after_batch=self.flush_ready,
            password=config.datastore_password,
            congestion=self.congestion,
        )
        # Clients that said HELLO 3 are served by connections that did too, so that
        # Redis's RESP3 replies are relayed as they are, like RESP2 ones.
        self.datastore3 = Datastore(
            server.host,
            server.port,
            connections=config.datastore_connections,
            timeout=config.timeout / 1000,
            after_batch=self.flush_ready,
            protocol=3,
            password=config.datastore_password,
            congestion=self.congestion,
        )
        # Every write this process coordinates gets a version from this clock; its id
        # (``clock_name``: a worker's own, so two workers' versions never tie) breaks ties.
        self.hlc = versions.HLC(versions.node_id(clock_name or self.name))
        coordinator = self.coordinator = Coordinator(
            self.ring, datastore=self.datastore, datastore3=self.datastore3,
            link_of=self.peer_links.get, admin_down=self.admin_down, stats=self.stats,
            metrics=self.metrics, run_local=self.run_local,
            read_consistency=self.read_consistency, write_consistency=self.write_consistency,
            flush_enabled=config.flush_enabled, hash_tag=config.hash_tag is not None,
            version=self.hlc.now, versions_db=config.versions_db,
        )
        # Hinted handoff: writes a replica did not acknowledge, kept until it is back.
        # (HintStoreError, a hints_dir that cannot be used, stops the start.)
        self.hints = HintStore(config.hints_dir, window_ms=config.max_hint_window,
                               max_bytes=config.max_hints_size)
        if config.hints_dir is None and len(self.ring.replicas(0)) > 1:
            log.warning("hints_dir is not set: writes a replica misses are kept in memory only, "
                        "and lost if this node restarts before it is back")
        self.handoff = Handoff(self.hints, ring=lambda: self.ring, available=coordinator.available,
                               send=coordinator.call, versions_db=config.versions_db)
        coordinator.on_write_failed = self.handoff.failed
        coordinator.observe = self.hlc.observe
        coordinator.repair_keys = self.repair_keys
        coordinator.read_repair_chance = config.read_repair_chance
        # requirepass: clients must AUTH first (dyno.auth); without it nothing stands
        # between a client's batch and the coordinator.
        self.password = auth.Password(config.requirepass)
        execute_batch = coordinator.execute_batch
        if config.requirepass is not None:
            execute_batch = auth.gate(self.password, execute_batch)
        self.listener = ClientListener(
            config.listen.host, config.listen.port, clients=self.clients,
            execute_batch=execute_batch, congestion=self.congestion, maxclients=config.maxclients,
            max_bulk=config.proto_max_bulk_len, max_query=config.client_query_buffer_limit,
            max_output=config.client_output_buffer_limit, max_total=config.maxmemory_clients,
            ready=self.ready_clients, stats=self.stats,
            # client_tls_*: the port speaks TLS only (a bad file: TLSConfigError)
            tls=tls.client_port_context(config),
        )
        self.listener.reuse_port = role == WORKER
        self.peer_server = PeerServer(
            config.dyn_listen.host, config.dyn_listen.port, cluster=config.pool,
            hello=self._hello, datastore=self.datastore, datastore3=self.datastore3,
            coordinate=coordinator.coordinate_for_dc, on_gossip=self.gossip_received,
            on_hello=self.peer_learned, flush_enabled=config.flush_enabled,
            secret=self.secret, tls=self.peer_tls, on_publish=self.publish_received,
            on_query=self.answer_query,
        )
        self.peer_server.reuse_port = role == WORKER
        # pub/sub: this node's subscribers; a PUBLISH is relayed to every peer
        self.pubsub = pubsub.PubSub(self.relay_publish)
        self.listener.on_unsubscribed = self.pubsub.forget
        # enable_gossip: false keeps the static ring of the config, as in Dynomite.
        self.gossiper = Gossiper(
            config, self.ring, send=self.send_gossip, set_ring=self.set_ring,
            set_judged_down=self.set_judged_down,
            state={None: State.NORMAL, "join": State.JOINING, "replace": State.REPLACING}[self.moving_in],
        ) if config.enable_gossip and role != WORKER else None
        # Commands to any replica's Redis (this node's, or a peer's through its link):
        # what read repair and `dyno repair` (dyno.repair) compare and copy with.
        self.call_redis = repair.node_call(self.name, self.datastore, self.peer_links.get)
        self.repairs = repair.RepairService(lambda: self.ring, self.call_redis, db=config.versions_db,
                                            rate=config.repair_rate, tombstone_grace=config.tombstone_grace)
        # Tombstone GC: this node drops its own Redis's versions of keys deleted or
        # expired more than tombstone_grace ago (dyno.tombstones).
        self.sweeper = tombstones.TombstoneSweeper(
            lambda argvs: self.call_redis(self.ring.local, argvs), grace=config.tombstone_grace,
            db=config.versions_db)
        # Range movements: a join or replacement at start, a decommission on request,
        # dropping what a completed join took from this node (dyno.streaming).
        self.mover = streaming.Mover(
            self.name, lambda: self.ring, self.call_redis, available=coordinator.available,
            declare=self.declare, settle=max(3 * config.gos_interval / 1000, 0.5), db=config.versions_db,
            rate=config.stream_rate, ready=self._ring_known)
        self.admin = AdminServer(self._admin_view(), config.stats_listen.host, config.stats_listen.port,
                                 start_repair=self.repairs.start, repair_status=self.repairs.status,
                                 token=config.admin_token, decommission=self.mover.decommission,
                                 movement_status=self.mover.status)
        self.nursery: trio.Nursery | None = None

    @property
    def name(self) -> str:
        return self.config.name

    # -- what the parts are given -------------------------------------------------------

    def _new_link(self, peer: RingNode) -> PeerLink:
        config = self.config
        return PeerLink(
            peer, cluster=config.pool, hello=self._hello, timeout=config.timeout / 1000,
            congestion=self.congestion, after_batch=self.flush_ready,
            on_unreachable=self.peer_unreachable, on_hello=self.learn_admin_address,
            on_write_failed=self._write_failed, secret=self.secret, tls=self.peer_tls,
        )

    def _hello(self) -> bytes:
        """The HELLO this node sends its peers (asked per connection: the admin
        port's address is known once it is bound)."""
        config = self.config
        admin = self.admin_address if self.admin_address is not None else self.admin.address
        return hello_frame(config.pool, self.name, config.datacenter, config.rack, admin)

    def _write_failed(self, peer: RingNode, payload: bytes, count: int, error: bytes, flags: int) -> None:
        """``count`` replica writes nobody waited for (``payload``) failed on the
        link to ``peer``: reported where every write failure is (the coordinator;
        it is built after the links)."""
        self.coordinator.write_failed(peer, payload, count, error, flags & COORDINATE)

    def _admin_view(self) -> NodeView:
        """What the admin port may read and change (dyno.admin.NodeView)."""
        return NodeView(
            name=self.name, config=self.config, started=self.started, stats=self.stats,
            metrics=self.metrics, datastore=self.datastore, peer_links=self.peer_links,
            admin_down=self.admin_down, peer_admin=self.peer_admin, clients=self.clients,
            ring=lambda: self.ring, state=lambda: self.state,
            consistency=lambda: (self.read_consistency, self.write_consistency),
            gossip_view=lambda: self.gossiper.describe() if self.gossiper is not None else {},
            set_state=self.set_state, set_consistency=self.set_consistency,
            set_peer_admin_down=self.set_peer_admin_down, hints=self.handoff.describe,
            auth_failures=lambda: self.password.failures, tombstones=self.sweeper.describe,
            sample_next=self.coordinator.sample_next,
            movement=lambda: self.mover.status(),
        )

    # -- pub/sub (dyno.pubsub) -------------------------------------------------------------

    def relay_publish(self, kind: bytes, channel: bytes, message: bytes) -> None:
        for link in self.peer_links.values():
            link.send_publish(kind, channel, message)
        if self.control is not None:  # and to the node's other workers' subscribers
            self.control.publish(kind, channel, message)

    def publish_received(self, kind: bytes, channel: bytes, message: bytes) -> None:
        """A PUBLISH a peer relayed: to this node's subscribers."""
        if kind in pubsub.KINDS:
            self.pubsub.deliver(kind, channel, message)
            self.flush_ready()
            if self.control is not None:
                self.control.publish(kind, channel, message)

    def sibling_published(self, kind: bytes, channel: bytes, message: bytes) -> None:
        """A PUBLISH another worker of this node received: to this worker's subscribers."""
        if kind in pubsub.KINDS:
            self.pubsub.deliver(kind, channel, message)
            self.flush_ready()

    def answer_query(self, argv: list[bytes], answer) -> None:
        """A peer's QUERY: this node's share of a PUBSUB count, msgpack, to ``answer``."""
        if len(argv) < 2 or argv[0].lower() != b"pubsub":
            answer(msgpack.packb(None))
        elif self.control is None:
            answer(msgpack.packb(self.pubsub.local_counts(argv[1].lower(), argv[2:])))
        else:
            self.coordinator.spawn(self._answer_query, argv[1].lower(), argv[2:], answer)

    async def _answer_query(self, sub: bytes, args: list[bytes], answer) -> None:
        answer(msgpack.packb(pubsub.combine_counts(sub, await self.node_counts(sub, args))))

    async def node_counts(self, sub: bytes, args: list[bytes]) -> list:
        """This node's shares of PUBSUB ``sub``: this process's, and with workers, its
        siblings' (those that answer within QUERY_TIMEOUT)."""
        shares = [self.pubsub.local_counts(sub, args)]
        if self.control is not None:
            shares += await self.control.ask("pubsub", [sub, args], QUERY_TIMEOUT) or []
        return shares

    def pubsub_query(self, sub: bytes, args: list[bytes], slot) -> None:
        """PUBSUB CHANNELS/NUMSUB/NUMPAT/...: every node's share, added up (the peers'
        that answer within QUERY_TIMEOUT); ``slot`` gets the reply."""
        self.coordinator.spawn(self._pubsub_query, sub, args, slot)

    async def _pubsub_query(self, sub: bytes, args: list[bytes], slot) -> None:
        payload = resp.encode_command([b"PUBSUB", sub, *args])
        waiters = []
        for link in self.peer_links.values():
            if link.usable:
                waiter = _Answer()
                link.query(payload, waiter)
                waiters.append(waiter)
        with trio.move_on_after(QUERY_TIMEOUT):
            for waiter in waiters:
                await waiter.event.wait()
        shares = await self.node_counts(sub, args)
        for waiter in waiters:
            if waiter.reply is not None:
                try:
                    share = msgpack.unpackb(waiter.reply, strict_map_key=False)
                except (ValueError, msgpack.UnpackException):
                    continue
                if share is not None and type(share) is type(shares[0]):
                    shares.append(share)
        slot.deliver(pubsub.merge_counts(sub, args, shares))
        self.flush_ready()

    # -- INFO keyspace over the rack ------------------------------------------------------

    def rack_size(self) -> int:
        ring = self.ring
        return len(ring.rack_nodes(ring.local.dc, ring.local.rack))

    async def rack_keyspace(self, mine: dict[str, str]) -> dict[str, str]:
        """INFO keyspace for the cluster's data: this node's Redis's (``mine``: db ->
        "keys=..,expires=..,avg_ttl=..") added to every other node's of this rack,
        which together hold one copy of every key. A node that does not answer within
        QUERY_TIMEOUT is left out (its share missing)."""
        ring = self.ring
        totals = {db: _keyspace_fields(value) for db, value in mine.items()}
        others = [n for n in ring.rack_nodes(ring.local.dc, ring.local.rack) if not n.local]
        replies: list[str] = []

        async def ask(other) -> None:
            try:
                (reply,) = await self.call_redis(other, [[b"EVAL", _KEYSPACE_SCRIPT, b"0"]])
            except Exception:  # noqa: BLE001 - down, unreachable: its share is missing
                return
            if isinstance(reply, bytes):
                replies.append(reply.decode(errors="replace"))

        with trio.move_on_after(QUERY_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for other in others:
                    nursery.start_soon(ask, other)
        for text in replies:
            for line in text.split("\r\n"):
                db, sep, value = line.partition(":")
                if sep and db.startswith("db"):
                    fields = _keyspace_fields(value)
                    total = totals.setdefault(db, {"keys": 0, "expires": 0, "ttl_sum": 0})
                    for name in ("keys", "expires", "ttl_sum"):
                        total[name] += fields[name]
        return {db: "keys=%d,expires=%d,avg_ttl=%d" % (t["keys"], t["expires"],
                                                         t["ttl_sum"] // t["expires"] if t["expires"] else 0)
                for db, t in sorted(totals.items(), key=lambda item: int(item[0][2:] or 0))}

    # -- WAIT -----------------------------------------------------------------------------

    def wait_replicas(self, wanted: int, timeout_ms: int, slot) -> None:
        self.coordinator.spawn(self._wait_replicas, wanted, timeout_ms, slot)

    async def _wait_replicas(self, wanted: int, timeout_ms: int, slot) -> None:
        """WAIT: every peer link's mark now; then, until ``wanted`` other racks
        acknowledged everything sent before it, or the time-out, the count (a rack
        counts once, as the replica of a key there)."""
        me = (self.config.datacenter, self.config.rack)
        marks = [(name, link, link.mark()) for name, link in self.peer_links.items() if link.usable]
        deadline = trio.current_time() + (timeout_ms / 1000 if timeout_ms else math.inf)
        while True:
            racks = set()
            ring = self.ring
            for name, link, mark in marks:
                try:
                    node = ring.node(name)
                except RingError:  # left the ring meanwhile
                    continue
                where = (node.dc, node.rack)
                if where != me and link.acked(mark):
                    racks.add(where)
            if len(racks) >= wanted or trio.current_time() >= deadline:
                slot.deliver(resp.integer(len(racks)))
                self.flush_ready()
                return
            await trio.sleep(WAIT_POLL)

    def flush_ready(self) -> None:
        ready = self.ready_clients
        while ready:
            client = ready.pop()
            client.queued = False
            client.flush()

    def run_local(self, client, spec, argv, slot):
        """A command the node answers itself (dyno.node_commands)."""
        if argv[0][:12].upper() == b"DYNO_CONFIG:":
            return node_commands.dyno_config(client, argv)
        return node_commands.run(self, client, spec, argv, slot)

    # -- membership (dyno.gossip drives these) ------------------------------------------

    def link_to(self, name: str) -> PeerLink | None:
        """The link to peer ``name`` ("host:port"), created on first use: gossip
        may come from a node that is not in the ring yet (it is joining)."""
        link = self.peer_links.get(name)
        if link is None and name != self.name and self.nursery is not None:
            host, _, port = name.rpartition(":")
            if not host or not port.isdigit():
                return None
            peer = RingNode(name, host.strip("[]"), int(port), "?", "?", (0,))
            link = self.peer_links[name] = self._new_link(peer)
            self.nursery.start_soon(link.run)
        return link

    def set_ring(self, ring: Ring) -> None:
        """Route by a new ring (a node joined or left, a range started or stopped moving)."""
        old = self.ring
        added = [n.name for n in ring.nodes if n.name not in {m.name for m in old.nodes}]
        self.ring = ring
        for peer in (*ring.nodes, *ring.pending_nodes):
            if not peer.local:
                self.link_to(peer.name)
        self.coordinator.set_ring(ring)
        self.mover.ring_changed(old, ring)
        if added:
            log.info("node %s: ring now has %d nodes (added %s)", self.name, len(ring.nodes), ", ".join(added))
        if ring.pending_nodes != old.pending_nodes:
            log.info("node %s: pending owners now %s", self.name,
                     ", ".join(n.name for n in ring.pending_nodes) or "none")
        self._view_changed()

    def _view_changed(self) -> None:
        if self.on_view_change is not None:
            self.on_view_change()

    def declare(self, state: str) -> None:
        """Gossip this node's move (dyno.streaming drives it)."""
        if self.gossiper is not None:
            self.gossiper.declare(state)
        log.warning("node %s: declared %s", self.name, state)

    def client_addresses(self) -> dict[str, tuple[str, int]]:
        """Each other node's client address as gossip told it, name -> (host, port);
        nodes that listen on a wildcard address, or whose gossip has not told it yet,
        are left out (CLUSTER SLOTS and the like name them to clients)."""
        if self.gossiper is None:
            return self.pushed_clients
        return {member.name: (member.host, member.client_port) for member in self.gossiper.describe().values()
                if member.name != self.name and member.client_port and member.host not in ("0.0.0.0", "::")}

    def _ring_known(self) -> bool:
        """Whether this node has heard from every node of its ring (a joining node
        must know the ring before it plans what to copy)."""
        if self.gossiper is None:
            return True
        view = self.gossiper.describe()
        return all(member.generation > 0 for member in view.values())

    async def peer_links_flushed(self) -> None:
        """Wait until every connected peer link has sent what it queued."""
        while any(link.up and link.has_unsent for link in self.peer_links.values()):
            await trio.sleep(0.01)

    def set_judged_down(self, names: set[str]) -> None:
        for name, link in self.peer_links.items():
            down = name in names
            if down != link.judged_down:
                link.judged_down = down
                log.warning("node %s: peer %s is %s", self.name, name, "DOWN" if down else "UP")
                if not down:  # it is back: do not wait out the link's back-off
                    link.reconnect_now()
                    self.handoff.wake()
        self._view_changed()

    # -- repair (dyno.repair) --------------------------------------------------------

    async def repair_keys(self, keys: list[bytes], nodes) -> None:
        """Make ``keys`` the same on every one of ``nodes`` (their replicas): the
        newest version wins (read repair)."""
        for start in range(0, len(keys), 500):
            await repair.repair_keys(keys[start : start + 500], list(nodes), self.call_redis,
                                     self.config.versions_db, ties=False,
                                     horizon=tombstones.horizon_now(self.config.tombstone_grace))

    async def scheduled_repairs(self, interval: float) -> None:
        """``repair_interval``: repair this node's ranges every ``interval`` seconds
        (a job already running, started by an operator, counts for this round)."""
        while True:
            await trio.sleep(interval)
            try:
                started = self.repairs.start()
            except repair.RepairRunning:
                continue
            except Exception as exc:  # the service not serving yet, a ring it cannot plan
                log.warning("scheduled repair not started: %s", exc)
                continue
            log.info("scheduled repair %s started", started.get("id"))

    def learn_admin_address(self, name: str, address) -> None:
        """A peer's admin HTTP address, from its HELLO (dyno status follows it)."""
        if isinstance(address, str) and len(address) < 300:
            self.peer_admin[name] = address

    def peer_learned(self, name: str, address) -> None:
        """A HELLO on a peer connection (``on_hello``): its admin address."""
        self.learn_admin_address(name, address)
        if self.control is not None:  # the supervisor's admin port reports it
            self.control.send(["hello", name, address])

    def send_gossip(self, name: str, message) -> int:
        """Queue a gossip message for peer ``name``; its size (0: no link to it)."""
        link = self.link_to(name)
        return link.send_gossip(message) if link is not None else 0

    def peer_unreachable(self, name: str) -> None:
        if self.gossiper is not None:
            self.gossiper.unreachable(name)
        elif self.control is not None:  # the supervisor's gossip judges
            self.control.send(["unreachable", name])

    def gossip_received(self, sender: str, message) -> None:
        if self.gossiper is not None:
            self.gossiper.receive(sender, message)
        elif self.control is not None:  # a peer's gossip, landed on a worker's port
            self.control.send(["gossip", sender, message])

    def _bind(self, clients: bool = True, admin: bool = True) -> None:
        """Open the ports of the config this process serves (``clients``: the client
        and peer ports; ``admin``: the admin port); one that cannot be opened is a
        ListenError naming its key (the ones opened before it are closed again)."""
        opened = []
        servers = ((("listen", self.listener), ("dyn_listen", self.peer_server)) if clients else ()) + \
            ((("stats_listen", self.admin),) if admin else ())
        try:
            for key, server in servers:
                if getattr(server, "handed", None) is not None:  # a worker's client port: handed over
                    continue
                try:
                    server.bind()
                except OSError as error:
                    raise ListenError(key, server.host, server.port, error) from None
                opened.append(server)
        except BaseException:
            for server in opened:
                server.sock.close()
            raise

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Binding happens before ``task_status.started()``
        so a caller knows the ports are open."""
        serves_clients, one_per_node = self.role != SUPERVISOR, self.role != WORKER
        self._bind(clients=serves_clients, admin=one_per_node)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.datastore.run)
            nursery.start_soon(self.datastore3.run)
            self.coordinator.spawn = nursery.start_soon
            self.coordinator.flush_clients = self.flush_ready
            for link in self.peer_links.values():
                nursery.start_soon(link.run)
            # (a supervisor gossips once its workers serve: dyno.workers.serve)
            if self.gossiper is not None and self.role != SUPERVISOR:
                nursery.start_soon(self.gossiper.run)
            if serves_clients:
                nursery.start_soon(self.peer_server.serve, nursery)
                nursery.start_soon(self.coordinator.hedge_reads)
                nursery.start_soon(self.handoff.run)
                nursery.start_soon(self.hints.flusher)
                nursery.start_soon(self.listener.serve, nursery)
            if one_per_node:
                nursery.start_soon(self.repairs.serve)
                nursery.start_soon(self.sweeper.run)
                nursery.start_soon(self.mover.serve, self.moving_in)
                if self.config.repair_interval:
                    nursery.start_soon(self.scheduled_repairs, self.config.repair_interval)
                nursery.start_soon(self.admin.serve)
            if self.role != SINGLE:  # dyno.workers logs what the node serves
                task_status.started(self)
                return
            log.info(
                "node %s serving clients on %s:%d%s, peers on %s:%d, datastore %s "
                "(dc %s, rack %s, %d peers), admin on %s",
                self.name, self.listener.host, self.listener.port,
                "" if self.listener.tls is None else " (TLS only)", self.peer_server.host,
                self.peer_server.port, self.datastore.address, self.config.datacenter,
                self.config.rack, len(self.peer_links), self.admin.address,
            )
            task_status.started(self)

    def set_state(self, state: str) -> None:
        """Change the operator state (admin port); the coordinator refuses what it must."""
        if state not in OPERATOR_STATES:
            raise ValueError(f"unknown node state {state!r}; expected one of {', '.join(OPERATOR_STATES)}")
        previous, self.state = self.state, state
        self.coordinator.set_state(state)
        if self.gossiper is not None:  # peers route around a STANDBY node at once
            self.gossiper.set_operator_state(state)
        log.warning("node %s: state %s -> %s (admin request)", self.name, previous, state)
        self._view_changed()

    def set_consistency(self, operation: str, level: str) -> None:
        """Change the read or write consistency level at run time (admin port)."""
        previous = getattr(self, f"{operation}_consistency")
        setattr(self, f"{operation}_consistency", level)
        self.coordinator.set_levels(self.read_consistency, self.write_consistency)
        log.warning("node %s: %s consistency %s -> %s (admin request)", self.name, operation, previous, level)
        self._view_changed()

    def set_peer_admin_down(self, name: str, down: bool) -> None:
        """Mark a peer down (not chosen to answer reads) or clear the mark (admin port)."""
        if down != (name in self.admin_down):
            (self.admin_down.add if down else self.admin_down.discard)(name)
            log.warning("node %s: peer %s marked %s (admin request)", self.name, name, "down" if down else "up")
            self._view_changed()

    def stop(self) -> None:
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def snapshot(self) -> dict:
        """This process's counters as plain values (a worker's, for its supervisor)."""
        return {
            **snapshot(self.stats, self.metrics), "clients": len(self.clients), "pid": os.getpid(),
            "peers": {name: {"sent": link.sent, "failed": link.failed, "in_flight": link.in_flight}
                      for name, link in self.peer_links.items()},
            "hints": self.handoff.describe(), "auth_failures": self.password.failures,
            "peers_up": sum(link.usable for link in self.peer_links.values()),
        }

    def info_blocks(self, sections: list[bytes], everything: bool, siblings: list[dict] = ()) -> dict[str, dict]:
        """The node's own INFO sections asked for (``node_commands.info_text`` merges
        them into its Redis's): name -> fields. ``siblings``: the other workers'
        snapshots, added in (the node's clients and requests, not one worker's)."""
        config = self.config
        stats, metrics, clients = self.stats, self.metrics, len(self.clients)
        if siblings:
            stats, metrics = Stats(), Metrics()
            merge_into(stats, metrics, [snapshot(self.stats, self.metrics), *siblings])
            clients += sum(sibling["clients"] for sibling in siblings)
        blocks = {
            b"server": node_commands.server_info(self),
            # Redis's fields, dyno's values (no client of dyno blocks or tracks keys)
            b"clients": {"connected_clients": clients, "cluster_connections": 0,
                         "maxclients": config.maxclients, "client_recent_max_input_buffer": 0,
                         "client_recent_max_output_buffer": 0, "blocked_clients": 0,
                         "tracking_clients": 0, "clients_in_timeout_table": 0},
            b"stats": {
                "total_commands_processed": stats.commands,
                "total_error_replies": stats.errors,
                # closed for unread replies past client_output_buffer_limit / maxmemory_clients
                "client_output_buffer_limit_disconnections": stats.output_limit_closes,
                "replica_failures": stats.replica_failures,
                "quorum_reads_widened": metrics.widened_reads,
                "replica_write_failures": metrics.write_failures,
                "failovers": metrics.failovers,
            },
            b"dyno": {
                "node_name": self.name,
                "datacenter": config.datacenter,
                "rack": config.rack,
                "tokens": ",".join(map(str, config.tokens)),
                "state": self.state,
                "read_consistency": self.read_consistency,
                "write_consistency": self.write_consistency,
                "datastore": self.datastore.address,
                "datastore_up": int(self.datastore.up),
                "peers": len(self.peer_links),
                # Connected and judged up by gossip: what routing will use (with
                # workers, what every worker's routing will use).
                "peers_up": min([sum(link.usable for link in self.peer_links.values())]
                                + [sibling["peers_up"] for sibling in siblings]),
                # Replica requests still in flight: 0 on every node means every
                # acknowledged write has reached every replica.
                "peer_requests_in_flight": sum(link.in_flight for link in self.peer_links.values())
                + sum(counts["in_flight"] for sibling in siblings for counts in sibling["peers"].values()),
            },
        }
        return {name.decode(): fields for name, fields in blocks.items() if everything or name in sections}


def initial_ring(config: Config, moving_in: str | None) -> Ring:
    """The ring a node starts with: its config's, or for a node moving in, the ring
    of its dyn_seeds with this node pending (dyno.ownership)."""
    if moving_in is None:
        return topology_from_config(config)
    me, peers, hash_tag = nodes_from_config(config)
    claims = [ownership.Claim(node, ownership.NORMAL, 0) for node in peers]
    claims.append(ownership.Claim(me, ownership.JOINING if moving_in == "join" else ownership.REPLACING, 1))
    try:
        return ownership.ring_of(claims, me, config.hash, hash_tag)[0]
    except RingError as error:
        raise RingError(f"{config.path}: {error}") from None


QUERY_TIMEOUT = 1.0  # seconds PUBSUB waits for the peers' counts
WAIT_POLL = 0.001  # seconds between WAIT's looks at the links (Redis's WAIT polls its replicas too)


# What a peer's Redis says of its keyspace (INFO is not a command peers may send; a
# script running it is).
_KEYSPACE_SCRIPT = b"return redis.call('INFO', 'keyspace')"


def _keyspace_fields(value: str) -> dict[str, int]:
    """"keys=3,expires=1,avg_ttl=500" -> keys, expires and the TTLs' sum (to average again)."""
    fields = {}
    for item in value.split(","):
        name, _, number = item.partition("=")
        try:
            fields[name] = int(number)
        except ValueError:
            fields[name] = 0
    keys, expires = fields.get("keys", 0), fields.get("expires", 0)
    return {"keys": keys, "expires": expires, "ttl_sum": fields.get("avg_ttl", 0) * expires}


class _Answer(Sink):
    """A peer's answer to a QUERY, awaited."""

    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: bytes | None = None

    def deliver(self, reply) -> None:
        self.reply = reply if reply.__class__ is bytes else None
        self.event.set()

    def fail(self, error: bytes) -> None:
        self.event.set()


async def serve(config: Config) -> None:
    """Run a node until SIGINT or SIGTERM, then stop cleanly."""
    server = config.servers[0]
    await check_auth(server.host, server.port, config.datastore_password)
    moved_in = (config.auto_bootstrap or config.replace_node is not None) and await streaming.moved_in_before(
        server.host, server.port, config.datastore_password, config.versions_db, config.tokens)
    if moved_in:
        log.info("node %s: its Redis records a completed move with these tokens: it starts NORMAL", config.name)
    node = Node(config, moved_in=moved_in)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)

            async def watch_signals():
                async for signum in signals:
                    log.info("node %s: %s received, stopping", node.name, signal.Signals(signum).name)
                    if node.gossiper is not None:
                        # Tell the peers first, so they route around this node at once.
                        node.gossiper.leave()
                        with trio.move_on_after(1.0):
                            await node.peer_links_flushed()
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
