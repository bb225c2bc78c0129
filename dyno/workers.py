"""A node of several processes (``workers: N``): N workers that serve, one supervisor.

What it owns: the supervisor (``Supervisor``), which serves no client and runs what
must be one per node: gossip and its failure detector, the admin port, repair jobs
and the tombstone sweeper, each in a ``Node`` of role SUPERVISOR; the worker
processes it starts, watches and starts again; and the control channel between them
(``Channel``: msgpack frames over a socketpair the worker inherits).

Each worker is a ``Node`` of role WORKER. Its clients are handed to it: the
supervisor alone listens on the client port, accepts each connection and passes it
(SCM_RIGHTS over a socketpair of its own) to the worker with the fewest open client
connections, so the workers' shares stay even whatever the kernel's hash would have
done (Envoy's "exact balance"); a worker says when one of its connections ends. That
is one message per connection, never per request. The peer port is shared with
SO_REUSEPORT (peer links are few and long-lived). Each worker has
its own Redis connections, peer links and hint log (hints_dir for worker 0,
hints_dir/.worker-K for worker K), and routes with the view the supervisor pushes
(``view``: ring, peers judged down, operator state, consistency levels, peers an
operator marked down). Nothing on the request path crosses processes: a GET or SET
is served wholly by the worker whose client sent it.

What crosses the channel, and why it is not the request path:
    supervisor -> worker: start {config, index, admin, view, logging}, view, publish
        (a sibling's PUBLISH, for this worker's subscribers), sample (time your next
        batch: the admin port's once-a-second latency sample), ask, answer, stop
    supervisor -> worker, on a socketpair of their own: each client connection's fd
    worker -> supervisor: ready, closed (one of its client connections ended),
        gossip (a peer's, that landed on the worker's port),
        unreachable (a link failed: gossip judges), hello (a peer's admin address),
        publish (for the siblings' subscribers), ask (PUBSUB counts, INFO's
        counters: the siblings' shares), answer

A worker that ends (killed, crashed) is started again with the same index; the
other workers and their clients do not notice. A worker stops when told, on SIGTERM
or SIGINT, when its channel closes, or when the supervisor dies (PR_SET_PDEATHSIG):
no worker outlives its node.

It must never: put a lock, a shared file or a cross-process hop on a client's
request; let one worker's end disturb another's clients.
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import logging
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
from typing import Callable

import msgpack
import trio

from dyno import process
from dyno.client import number_clients
from dyno.config import Config
from dyno.datastore import check_auth
from dyno.hints import WORKER_DIR_PREFIX
from dyno.metrics import merge_into
from dyno.node import SUPERVISOR, WORKER, Node
from dyno.ring import Ring, RingError, RingNode
from dyno.stream import accept_loop, listen_socket

log = logging.getLogger("dyno.workers")

READY_TIMEOUT = 30.0      # seconds a worker has to bind its ports at the node's start
STOP_TIMEOUT = 5.0        # seconds workers have to stop before they are killed
GATHER_TIMEOUT = 1.0      # seconds the supervisor waits for a worker's counters
STEADY = 10.0             # a worker that ran this long is started again at once
RESTART_DELAYS = (0.0, 0.2, 0.5, 1.0, 2.0, 5.0)  # after quicker ends, one after another
PR_SET_PDEATHSIG = 1


class WorkerError(Exception):
    """A worker could not start (its own error is in the log above)."""


class Channel:
    """One end of the control socketpair: msgpack frames each way, and asks
    answered by id. Not the request path: the trio high-level tools are fine."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._send, self._queued = trio.open_memory_channel(math.inf)
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._ids = itertools.count(1)
        self._asked: dict[int, _Asked] = {}

    def send(self, frame: list) -> None:
        try:
            self._send.send_nowait(msgpack.packb(frame))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def publish(self, kind: bytes, channel: bytes, message: bytes) -> None:
        self.send(["publish", kind, channel, message])

    async def writer(self) -> None:
        try:
            async for data in self._queued:
                pending = [data]
                while True:
                    try:
                        pending.append(self._queued.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self.stream.send_all(b"".join(pending))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def receive(self) -> list | None:
        """The next frame; None when the other side closed."""
        while True:
            for frame in self._unpacker:
                return frame
            try:
                data = await self.stream.receive_some(256 * 1024)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            self._unpacker.feed(data)

    async def ask(self, what: str, args, timeout: float):
        """Ask the other side; its answer, or None past ``timeout``."""
        ask_id = next(self._ids)
        asked = self._asked[ask_id] = _Asked()
        self.send(["ask", ask_id, what, args])
        try:
            with trio.move_on_after(timeout):
                await asked.event.wait()
        finally:
            self._asked.pop(ask_id, None)
        return asked.value

    def answered(self, ask_id: int, value) -> None:
        asked = self._asked.pop(ask_id, None)
        if asked is not None:
            asked.value = value
            asked.event.set()

    def close(self) -> None:
        self._send.close()


class _Asked:
    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value = None


# -- the view workers route by ----------------------------------------------------------


def view_of(node: Node) -> dict:
    """What a worker must know to route as the supervisor's gossip and admin port say."""
    return {
        "ring": [_fields(n) for n in node.ring.nodes],
        # Range movements in flight (dyno.ownership): their owners get writes too.
        "futures": [[_fields(n) for n in future] for future in node.ring.futures],
        "outside": node.ring.local_outside,
        "down": sorted(name for name, link in node.peer_links.items() if link.judged_down),
        "state": node.state,
        "consistency": [node.read_consistency, node.write_consistency],
        "admin_down": sorted(node.admin_down),
        "clients": sorted([name, host, port] for name, (host, port) in node.client_addresses().items()),
    }


def _fields(n: RingNode) -> list:
    return [n.name, n.host, n.port, n.dc, n.rack, list(n.tokens)]


def _ring_shape(nodes, futures, outside) -> tuple:
    """A ring's nodes and movements as comparable values (order aside)."""
    def one(fields) -> tuple:
        name, host, port, dc, rack, tokens = fields
        return name, host, port, dc, rack, tuple(tokens)
    return (tuple(sorted(one(f) for f in nodes)),
            tuple(tuple(sorted(one(f) for f in future)) for future in futures), bool(outside))


def apply_view(node: Node, view: dict) -> None:
    """Make a worker's node route by ``view`` (``view_of`` its supervisor)."""
    current = node.ring
    wanted = _ring_shape(view["ring"], view.get("futures", ()), view.get("outside", False))
    have = _ring_shape([_fields(n) for n in current.nodes],
                       [[_fields(n) for n in future] for future in current.futures], current.local_outside)
    if wanted != have:
        nodes, futures, outside = wanted

        def ring_node(fields) -> RingNode:
            return RingNode(*fields, local=fields[0] == node.name)
        try:
            ring = Ring([ring_node(fields) for fields in nodes if not (outside and fields[0] == node.name)],
                        current.local, current.hash_name, current.hash_tag,
                        futures=[[ring_node(fields) for fields in future] for future in futures],
                        local_outside=outside)
        except RingError as exc:
            log.error("ring from the supervisor not applied: %s", exc)
        else:
            node.set_ring(ring)
    node.set_judged_down(set(view["down"]))
    if view["state"] != node.state:
        node.state = view["state"]
        node.coordinator.set_state(node.state)
    read, write = view["consistency"]
    if (read, write) != (node.read_consistency, node.write_consistency):
        node.read_consistency, node.write_consistency = read, write
        node.coordinator.set_levels(read, write)
    node.pushed_clients = {name: (host, port) for name, host, port in view.get("clients", ())}
    marked = set(view["admin_down"])
    if marked != node.admin_down:  # the coordinator holds this very set
        node.admin_down.intersection_update(marked)
        node.admin_down.update(marked)


# -- the supervisor -------------------------------------------------------------------------


class Worker:
    """The supervisor's record of one worker process (by index, across restarts)."""

    def __init__(self, index: int):
        self.index = index
        self.pid: int | None = None
        self.channel: Channel | None = None
        self.up = False
        self.restarts = 0
        self.snapshot: dict | None = None  # its counters, as last gathered
        self.handoff: socket.socket | None = None  # where its client connections are passed
        self.open = 0  # client connections handed to it and not yet ended

    def describe(self) -> dict:
        taken = self.snapshot or {}
        return {"index": self.index, "pid": self.pid, "up": self.up, "restarts": self.restarts,
                "client_connections": taken.get("clients", 0),
                "client_requests": taken.get("stats", {}).get("commands", 0)}


class Supervisor:
    """Runs the node's one-per-node parts (a SUPERVISOR ``Node``) and keeps
    ``config.workers`` worker processes serving. ``logging`` is how workers log
    (``dyno.process.setup_logging``'s arguments)."""

    def __init__(self, config: Config, logging_setup: dict):
        self.config = config
        self.logging_setup = logging_setup
        # It coordinates no writes: the workers keep the hints.
        self.node = Node(dataclasses.replace(config, hints_dir=None), role=SUPERVISOR)
        self.node.on_view_change = self.push_view
        self.workers = [Worker(index) for index in range(config.workers)]
        self.stopping = False
        self._pushed: dict | None = None
        self._gathered: list[dict] = []
        admin = self.node.admin
        admin.node = dataclasses.replace(
            admin.node, clients=_ClientTotal(self), refresh=self.refresh, peer_totals=self.peer_totals,
            workers=lambda: [worker.describe() for worker in self.workers], hints=self.hints,
            settle=self.settle, sample_next=self.sample_next,
            auth_failures=lambda: sum(taken.get("auth_failures", 0) for taken in self._gathered),
        )

    # -- what the workers are told --------------------------------------------------------

    def push_view(self) -> None:
        view = view_of(self.node)
        if view != self._pushed:
            self._pushed = view
            for worker in self.workers:
                if worker.channel is not None:
                    worker.channel.send(["view", view])

    def sample_next(self) -> None:
        """No batch was timed this second (the admin port's tick): each worker times its next."""
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.send(["sample"])

    def hand_off(self, conn: socket.socket, address) -> None:
        """A client connection the supervisor accepted: to the serving worker with the
        fewest open client connections (the next if its socketpair is full or gone)."""
        for worker in sorted((w for w in self.workers if w.up and w.handoff is not None), key=lambda w: w.open):
            try:
                socket.send_fds(worker.handoff, [b"c"], [conn.fileno()])
            except OSError:  # full (a worker that stopped taking), or gone: the next one
                continue
            worker.open += 1
            break
        else:
            log.warning("node %s: no worker could take client %s:%s; closed", self.node.name, *address[:2])
        conn.close()  # the worker has its own copy

    async def push_view_every(self, interval: float) -> None:
        """Push the view once a gossip round if it changed by something that calls no
        ``on_view_change`` (a peer's client address, learnt from its gossip)."""
        while True:
            await trio.sleep(max(interval, 0.1))
            self.push_view()

    def _start_frame(self, worker: Worker) -> list:
        return ["start", {
            "config": pickle.dumps(self.config), "index": worker.index,
            "admin": self.node.admin.address, "view": view_of(self.node), "logging": self.logging_setup,
        }]

    # -- the node as a whole (admin port) ---------------------------------------------------

    async def gather(self, what: str, args, but: Worker | None = None) -> list:
        """Every serving worker's answer (but ``but``'s), those within GATHER_TIMEOUT."""
        answers: list = []

        async def ask(worker: Worker, channel: Channel) -> None:
            value = await channel.ask(what, args, GATHER_TIMEOUT)
            if value is not None:
                answers.append((worker, value))

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                if worker is not but and worker.up and worker.channel is not None:
                    nursery.start_soon(ask, worker, worker.channel)
        return answers

    async def refresh(self) -> None:
        """The node's counters (stats, metrics, clients) from every worker's."""
        gathered = await self.gather("snapshot", None)
        for worker, taken in gathered:
            worker.snapshot = taken
        self._gathered = [taken for _, taken in gathered]
        merge_into(self.node.stats, self.node.metrics, self._gathered)

    async def settle(self) -> None:
        """Return once every serving worker applied the view pushed so far (frames
        are taken in order: its answer comes after the view)."""
        await self.gather("sync", None)

    def peer_totals(self) -> dict:
        totals: dict[str, dict] = {}
        for taken in self._gathered:
            for name, counts in taken.get("peers", {}).items():
                mine = totals.setdefault(name, {"sent": 0, "failed": 0, "in_flight": 0})
                for field in mine:
                    mine[field] += counts.get(field, 0)
        return totals

    def hints(self) -> dict:
        totals: dict[str, dict] = {}
        for taken in self._gathered:
            for name, counts in taken.get("hints", {}).items():
                mine = totals.setdefault(name, dict.fromkeys(counts, 0))
                for field, count in counts.items():
                    mine[field] = mine.get(field, 0) + count
        return dict(sorted(totals.items()))

    # -- the worker processes ---------------------------------------------------------------

    async def start_workers(self, nursery: trio.Nursery) -> None:
        """Start every worker; return once each serves (WorkerError if one cannot)."""
        for worker in self.workers:
            await nursery.start(self._keep_running, worker)
        log.info("node %s serving clients on %s with %d workers (pids %s), peers on %s, datastore %s "
                 "(dc %s, rack %s, %d peers), admin on %s (supervisor pid %d)",
                 self.node.name, self.config.listen, len(self.workers),
                 ", ".join(str(worker.pid) for worker in self.workers), self.config.dyn_listen,
                 self.node.datastore.address, self.config.datacenter, self.config.rack,
                 len(self.node.peer_links), self.node.admin.address, os.getpid())

    async def _keep_running(self, worker: Worker, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        starting = task_status
        quick_ends = 0
        while True:
            began = trio.current_time()
            ready = trio.Event()
            code = await self._run_once(worker, ready, starting)
            if self.stopping:
                return
            if starting is not None and not ready.is_set():
                raise WorkerError(f"worker {worker.index} exited before serving (exit code {code}); "
                                  "its error is logged above")
            starting = None
            ran = trio.current_time() - began
            quick_ends = 0 if ran >= STEADY else quick_ends + 1
            delay = 0.0 if not quick_ends else RESTART_DELAYS[min(quick_ends, len(RESTART_DELAYS)) - 1]
            worker.restarts += 1
            log.warning("node %s: worker %d (pid %s) ended (exit code %s); starting it again%s",
                        self.node.name, worker.index, worker.pid, code,
                        f" in {delay:g} s" if delay else "")
            await trio.sleep(delay)

    async def _run_once(self, worker: Worker, ready: trio.Event, starting) -> int | None:
        """One life of a worker process; its exit code."""
        ours, theirs = socket.socketpair()
        handoff, handed = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Started from this (the main) thread, not a helper thread as trio's
            # open_process does: PR_SET_PDEATHSIG fires when the creating thread ends.
            process = subprocess.Popen(
                [sys.executable, "-m", "dyno.workers", str(theirs.fileno()), str(os.getpid()),
                 str(handed.fileno())],
                pass_fds=(theirs.fileno(), handed.fileno()), stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            handoff.close()
            raise
        finally:
            theirs.close()
            handed.close()
        handoff.setblocking(False)
        worker.handoff, worker.open = handoff, 0
        channel = Channel(ours)
        worker.pid = process.pid
        channel.send(self._start_frame(worker))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(channel.writer)
                nursery.start_soon(self._serve_worker, worker, channel, ready, starting)
                if starting is not None:
                    with trio.move_on_after(READY_TIMEOUT):
                        await _first(lambda: _exited(process), ready.wait)
                    if not ready.is_set() and process.poll() is None:
                        log.error("node %s: worker %d did not serve within %g s", self.node.name,
                                  worker.index, READY_TIMEOUT)
                        process.kill()
                await _exited(process)
                nursery.cancel_scope.cancel()
        finally:
            worker.up = False
            worker.channel = None
            worker.handoff = None
            handoff.close()  # the connections it was handed and did not take end with it
            channel.close()
            with trio.CancelScope(shield=True):
                if process.poll() is None:
                    process.kill()
                    await _exited(process)
                await channel.stream.aclose()
        return process.returncode

    async def _serve_worker(self, worker: Worker, channel: Channel, ready: trio.Event, starting) -> None:
        node = self.node
        async with trio.open_nursery() as nursery:
            while True:
                frame = await channel.receive()
                if frame is None:
                    return
                kind = frame[0]
                if kind == "ready":
                    worker.up = True
                    worker.channel = channel
                    channel.send(["view", view_of(node)])  # what changed since the start frame
                    ready.set()
                    if starting is not None:
                        starting.started()
                        starting = None
                elif kind == "closed":
                    worker.open = max(0, worker.open - frame[1])
                elif kind == "gossip":
                    node.gossip_received(frame[1], frame[2])
                elif kind == "unreachable":
                    node.peer_unreachable(frame[1])
                elif kind == "hello":
                    node.learn_admin_address(frame[1], frame[2])
                elif kind == "publish":
                    for sibling in self.workers:
                        if sibling is not worker and sibling.channel is not None:
                            sibling.channel.send(frame)
                elif kind == "ask":
                    nursery.start_soon(self._answer, worker, channel, frame[1], frame[2], frame[3])
                elif kind == "answer":
                    channel.answered(frame[1], frame[2])

    async def _answer(self, worker: Worker, channel: Channel, ask_id: int, what: str, args) -> None:
        """A worker asks for its siblings' shares (PUBSUB counts, INFO's counters)."""
        if what in ("pubsub", "snapshot"):
            gathered = await self.gather(what, args, but=worker)
            channel.send(["answer", ask_id, [value for _, value in gathered]])
        else:
            channel.send(["answer", ask_id, None])

    async def stop_workers(self) -> None:
        """Tell every worker to stop; those still running after STOP_TIMEOUT are
        killed (when the nursery that runs them is cancelled)."""
        self.stopping = True
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.send(["stop"])
        with trio.move_on_after(STOP_TIMEOUT):
            while any(worker.up for worker in self.workers):
                await trio.sleep(0.02)


class _ClientTotal:
    """The node's client connections, for the admin port: its workers' (as last gathered)."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor

    def __len__(self) -> int:
        return sum(taken.get("clients", 0) for taken in self.supervisor._gathered)


async def _exited(process: subprocess.Popen) -> int:
    """Wait for ``process`` to end (its pidfd turns readable); its exit code."""
    if process.poll() is None:
        pidfd = os.pidfd_open(process.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
    return process.wait()


async def _first(*waits: Callable) -> None:
    """Return when the first of ``waits`` returns."""
    async with trio.open_nursery() as nursery:
        async def one(wait) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(one, wait)


def _check_ports_free(config: Config) -> None:
    """Workers share the peer port with SO_REUSEPORT, which another node's workers
    could share too, and the supervisor listens on the client port: first make sure
    nobody listens on either (OSError naming the key if one does)."""
    for key in ("listen", "dyn_listen"):
        address = getattr(config, key)
        try:
            listen_socket(address.host, address.port).close()
        except OSError as exc:
            raise OSError(exc.errno, f"{key} {address}: {exc.strerror}") from None


async def serve(config: Config, logging_setup: dict) -> None:
    """Run a node of ``config.workers`` workers until SIGINT or SIGTERM, then stop
    every worker (dyno.node.serve is the node of one process)."""
    server = config.servers[0]
    await check_auth(server.host, server.port, config.datastore_password)
    _check_ports_free(config)
    clients = listen_socket(config.listen.host, config.listen.port)  # the supervisor's alone
    supervisor = Supervisor(config, logging_setup)
    node = supervisor.node
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await supervisor.start_workers(nursery)
            # Peers hear of the node (and judge it UP, and route to it) only once its
            # workers listen on the peer port: before, their links would be refused and back off.
            if node.gossiper is not None:
                nursery.start_soon(node.gossiper.run)
            nursery.start_soon(accept_loop, clients, supervisor.hand_off, log)
            nursery.start_soon(supervisor.push_view_every, config.gos_interval / 1000)
            async for signum in signals:
                log.info("node %s: %s received, stopping", node.name, signal.Signals(signum).name)
                if node.gossiper is not None:  # peers route around this node at once
                    node.gossiper.leave()
                    with trio.move_on_after(1.0):
                        await node.peer_links_flushed()
                await supervisor.stop_workers()
                nursery.cancel_scope.cancel()
                return


# -- a worker process -------------------------------------------------------------------------


def share(total: int, workers: int, index: int) -> int:
    """Worker ``index``'s part of a node-wide budget of ``total`` (the parts add up to it)."""
    return total // workers + (index < total % workers)


def worker_hints_dir(hints_dir: str | None, index: int) -> str | None:
    if hints_dir is None or index == 0:
        return hints_dir
    return os.path.join(hints_dir, f"{WORKER_DIR_PREFIX}{index}")


async def run_worker(sock: socket.socket, handed: socket.socket) -> None:
    channel = Channel(sock)
    start = await channel.receive()
    if start is None or start[0] != "start":
        return
    given = start[1]
    config: Config = pickle.loads(given["config"])
    index = given["index"]
    setup = given["logging"]
    process.setup_logging(setup.get("verbose", 0), setup.get("log_file"), f"{config.name} w{index}", setup.get("level"))
    config = dataclasses.replace(
        config, hints_dir=worker_hints_dir(config.hints_dir, index),
        # the node's budgets, split: together the workers never exceed them
        maxclients=max(1, share(config.maxclients, config.workers, index)),
        maxmemory_clients=config.maxmemory_clients and max(1, share(config.maxmemory_clients, config.workers, index)))
    number_clients(index + 1, config.workers)
    node = Node(config, role=WORKER, clock_name=f"{config.name}/w{index}")
    node.control = channel
    node.admin_address = given["admin"]
    # Its clients come from the supervisor (it accepts them); it says when one ends.
    node.listener.handed = lambda on_connection, log: _receive_clients(handed, on_connection, log)
    node.listener.on_closed = lambda: channel.send(["closed", 1])
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            apply_view(node, given["view"])
            nursery.start_soon(channel.writer)
            channel.send(["ready", os.getpid()])

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            await _worker_frames(node, channel, nursery)
            nursery.cancel_scope.cancel()


async def _receive_clients(handed: socket.socket, on_connection, log) -> None:
    """The client connections the supervisor hands over, one fd a message, to
    ``on_connection(conn, address)`` as an accept loop would; until it closes its end."""
    handed.setblocking(False)
    try:
        while True:
            await trio.lowlevel.wait_readable(handed)
            while True:
                try:
                    message, fds, _flags, _address = socket.recv_fds(handed, 16, 4)
                except BlockingIOError:
                    break
                if not message and not fds:
                    return  # the supervisor closed its end
                for fd in fds:
                    conn = socket.socket(fileno=fd)
                    try:
                        address = conn.getpeername()
                    except OSError:  # it ended on its way here
                        conn.close()
                        log.debug("a handed client connection had already ended")
                        continue
                    conn.setblocking(False)
                    on_connection(conn, address)
    finally:
        handed.close()


async def _worker_frames(node: Node, channel: Channel, nursery: trio.Nursery) -> None:
    """Serve the supervisor's frames until it says stop or goes away."""
    while True:
        frame = await channel.receive()
        if frame is None or frame[0] == "stop":
            return
        kind = frame[0]
        if kind == "view":
            apply_view(node, frame[1])
        elif kind == "publish":
            node.sibling_published(frame[1], frame[2], frame[3])
        elif kind == "sample":
            node.coordinator.sample_next()
        elif kind == "answer":
            channel.answered(frame[1], frame[2])
        elif kind == "ask":
            ask_id, what, args = frame[1], frame[2], frame[3]
            if what == "snapshot":
                channel.send(["answer", ask_id, node.snapshot()])
            elif what == "pubsub":
                channel.send(["answer", ask_id, node.pubsub.local_counts(args[0], args[1])])
            elif what == "sync":  # every frame before it is taken
                channel.send(["answer", ask_id, True])
            else:
                channel.send(["answer", ask_id, None])


def _die_with(parent: int) -> None:
    """SIGTERM this process when its supervisor ends, however it ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the channel's end stops the worker
        pass
    if os.getppid() != parent:  # it ended before prctl
        sys.exit(0)


def worker_main(argv: list[str]) -> int:
    """``python -m dyno.workers FD SUPERVISOR_PID HANDOFF_FD``: a worker (started by a
    Supervisor): its control channel, and where its client connections come from."""
    fd, parent, handoff = int(argv[0]), int(argv[1]), int(argv[2])
    _die_with(parent)
    sock = socket.socket(fileno=fd)
    handed = socket.socket(fileno=handoff)
    from dyno.datastore import DatastoreAuthError
    from dyno.hints import HintStoreError
    from dyno.tls import TLSConfigError

    try:
        process.run(run_worker, sock, handed)
    except KeyboardInterrupt:
        return 0
    except (OSError, HintStoreError, DatastoreAuthError, TLSConfigError) as exc:
        logging.getLogger("dyno.workers").error("worker cannot serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
