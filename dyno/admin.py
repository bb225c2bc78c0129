"""The admin port (``stats_listen``, Dynomite's 22222): HTTP for operators and monitoring.

What it owns: the HTTP server (h11 over trio streams: this port is not the hot path,
so the high-level trio tools are fine here), the table of paths and their handlers,
and the node's *cluster view* as the admin port and the CLI see it.

What it must never do: slow down or stop client traffic. Handlers only read the
node's counters and change a few plain attributes (state, consistency levels, log
level, peers marked down); the one that talks to Redis (``/info`` asks DBSIZE) waits
at most ``DATASTORE_TIMEOUT``; ``POST /repair`` only starts a job the node runs
(``dyno.repair.RepairService``) and returns. A bad request gets a 4xx with a reason, never a
dropped node. It does not know the node (STYLE.md §9): it reads and changes what
the node hands it in a ``NodeView``, and nothing else.

Paths keep Dynomite's reply shapes (``/info`` JSON, ``/cluster_describe`` JSON,
``OK`` for commands, ``Read Consistency: ...`` for ``/get_consistency``, ``State:
...`` for ``/state/get_state``) and add ``/metrics`` (Prometheus). Unlike Dynomite,
an unknown path is a 404 listing the paths, and a bad parameter is a 400 saying why.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping
from urllib.parse import parse_qsl, unquote

import h11
import trio

from dyno import __version__, metrics, resp
from dyno.consistency import LEVELS
from dyno.datastore import Sink
from dyno.repair import RepairRunning, RepairUnavailable
from dyno.states import OPERATOR_STATES
from dyno.stream import listen_socket

if TYPE_CHECKING:
    from dyno.client import ClientConnection
    from dyno.config import Config
    from dyno.datastore import Datastore
    from dyno.metrics import Metrics, Stats
    from dyno.peer import PeerLink
    from dyno.ring import Ring

log = logging.getLogger("dyno.admin")

MAX_RECV = 16 * 1024
IDLE_TIMEOUT = 30.0        # seconds an idle keep-alive connection is kept
DATASTORE_TIMEOUT = 1.0    # seconds /info waits for its Redis's DBSIZE
SAMPLE_INTERVAL = 1.0      # seconds between samples of the recent-history window

# Log levels in order of verbosity: /loglevelup moves right, /logleveldown left.
LOG_LEVELS = (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def _text(body: str, status: int = 200) -> Reply:
    return Reply(status, body.encode())


def _json(value: object, status: int = 200) -> Reply:
    return Reply(status, (json.dumps(value, indent=1) + "\n").encode(), "application/json")


def _bad(reason: str) -> Reply:
    return _text(f"400 Bad Request: {reason}\n", 400)


OK = "OK\r\n"  # Dynomite's reply to every command


@dataclass(frozen=True)
class NodeView:
    """What the admin port reads of its node, and the settings it may change.

    The node builds it. What the node replaces (its ring, its state, its
    consistency levels, gossip's view) is read through a callable; containers the
    node changes in place (``peer_links``, ``admin_down``, ``peer_admin``,
    ``clients``) are the node's own, never changed here. ``gossip_view()`` is
    gossip's view of the members by name (``Gossiper.describe``), empty without
    gossip."""

    name: str
    config: "Config"
    started: float  # time.time() at start
    stats: "Stats"
    metrics: "Metrics"
    datastore: "Datastore"
    peer_links: Mapping[str, "PeerLink"]
    admin_down: "set[str]"
    peer_admin: Mapping[str, str]
    clients: Mapping[int, "ClientConnection"]
    ring: Callable[[], "Ring"]
    state: Callable[[], str]
    consistency: Callable[[], tuple[str, str]]  # (read, write)
    gossip_view: Callable[[], dict]
    set_state: Callable[[str], None]
    set_consistency: Callable[[str, str], None]  # ("read" or "write", level)
    set_peer_admin_down: Callable[[str, bool], None]
    #: Hinted handoff per peer (dyno.handoff.Handoff.describe).
    hints: Callable[[], dict] = dict
    #: Wrong passwords clients gave (AUTH, HELLO AUTH; dyno.auth).
    auth_failures: Callable[[], int] = int
    #: This node's range movement and cleanup (dyno.streaming.Mover.status).
    movement: Callable[[], dict] = dict
    #: Tombstone GC counters (dyno.tombstones.TombstoneSweeper.describe).
    tombstones: Callable[[], dict] = dict
    #: Time the next client batch (Coordinator.sample_next): asked once a second
    #: when no batch was timed in the last one (dyno.metrics, "Latency is sampled").
    sample_next: Callable[[], None] = lambda: None
    #: With ``workers: N`` (dyno.workers), the supervisor's: gathers the workers'
    #: counters into ``stats``, ``metrics`` and ``clients`` before they are read.
    refresh: Callable[[], Awaitable[None]] | None = None
    #: Requests sent to each peer by the node's processes together: name -> {sent,
    #: failed, in_flight} (None: this process's links are the node's).
    peer_totals: Callable[[], dict] | None = None
    #: Per worker (index, pid, up, restarts, client_connections, client_requests);
    #: None without workers.
    workers: Callable[[], list] | None = None
    #: With workers, the supervisor's: returns once every worker routes by what an
    #: admin request just changed (its view applied), so the reply means it is in force.
    settle: Callable[[], Awaitable[None]] | None = None


# -- the cluster view ------------------------------------------------------------------


# Declared states of a range movement (dyno.ownership), shown for the node itself too.
MOVE_STATES = frozenset({"JOINING", "REPLACING", "DECOMMISSIONING", "LEFT"})


def cluster_view(server: "AdminServer") -> list[dict]:
    """Every node of the ring as this node sees it: name, host, port, dc, rack,
    tokens, state, up, admin (its admin address when known), local.

    The view's source is this one function. "up" is what routing uses: the peer
    link is connected, gossip judges the peer up (and it has not declared LEAVING
    or STANDBY), and no operator marked it down. A peer's state is the one it
    declared through gossip (NORMAL without gossip), or DOWN. A peer's admin
    address is the one its peer-link HELLO carried.
    """
    node = server.node
    view = []
    gossip = node.gossip_view()
    ring = node.ring()
    for member in (*ring.nodes, *ring.pending_nodes):  # (pending: joining, replacing)
        if member.local:
            up, state, admin_down = True, node.state(), False
            declared = gossip.get(member.name)
            if declared is not None and declared.state.value in MOVE_STATES:
                state = declared.state.value
            admin = server.address
        else:
            link = node.peer_links.get(member.name)
            admin_down = member.name in node.admin_down
            up = link is not None and link.usable and not admin_down
            declared = gossip.get(member.name)
            state = "DOWN" if not up and (declared is None or declared.state.value == "NORMAL") else (
                declared.state.value if declared is not None else "NORMAL"
            )
            admin = node.peer_admin.get(member.name)
        view.append({
            "name": member.name, "host": member.host, "port": member.port,
            "dc": member.dc, "rack": member.rack, "tokens": list(member.tokens),
            "state": state, "up": up, "admin_down": admin_down, "admin": admin,
            "local": member.local,
        })
    return view


def cluster_describe(server: "AdminServer") -> dict:
    """Dynomite's ``/cluster_describe``: ``{dcs: [{name, racks: [{name, servers:
    [{name, host, port, token}]}]}]}``; dyno adds each server's ``tokens`` (all of
    them), ``state``, ``up`` and ``admin`` address (null when unknown)."""
    dcs: dict[str, dict[str, list[dict]]] = {}
    for entry in cluster_view(server):
        servers = dcs.setdefault(entry["dc"], {}).setdefault(entry["rack"], [])
        servers.append({
            "name": entry["name"], "host": entry["host"], "port": entry["port"],
            "token": entry["tokens"][0], "tokens": entry["tokens"], "state": entry["state"],
            "up": entry["up"], "admin": entry["admin"],
        })
    return {
        "dcs": [
            {"name": dc, "racks": [
                {"name": rack, "servers": sorted(servers, key=lambda s: (s["token"], s["name"]))}
                for rack, servers in sorted(racks.items())
            ]}
            for dc, racks in sorted(dcs.items())
        ]
    }


# -- the handlers --------------------------------------------------------------------


class _Waiter(Sink):
    """Receives one datastore reply for an admin request."""

    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: bytes | None = None

    def deliver(self, reply: bytes) -> None:
        self.reply = reply
        self.event.set()


async def datastore_keys(node: NodeView) -> int | None:
    """DBSIZE of the node's own Redis, or None if it does not answer in time."""
    waiter = _Waiter()
    node.datastore.send(resp.encode_command([b"DBSIZE"]), waiter)
    with trio.move_on_after(DATASTORE_TIMEOUT):
        await waiter.event.wait()
    reply = waiter.reply
    if reply is None or reply[:1] != b":":
        return None
    return int(reply[1:-2])


def _microseconds(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _latency_summary(histogram: metrics.Histogram, counts: list[int], prefix: str = "latency") -> dict:
    count = sum(counts)
    mean = histogram.sum / histogram.count if histogram.count else 0.0
    return {
        f"{prefix}_max": _microseconds(histogram.max),
        f"{prefix}_999th": _microseconds(metrics.percentile(counts, 0.999)),
        f"{prefix}_99th": _microseconds(metrics.percentile(counts, 0.99)),
        f"{prefix}_95th": _microseconds(metrics.percentile(counts, 0.95)),
        f"{prefix}_mean": _microseconds(mean),
        f"{prefix}_samples": count,
    }


def _sampling(m: metrics.Metrics, window: metrics.Window) -> dict:
    """How the latency figures are made, beside them in /info."""
    return {
        "latency_sampling": metrics.SAMPLING,
        "latency_sampled_batches": m.sampled_batches,
        "latency_window_seconds": window.seconds,
    }


async def info(server: "AdminServer") -> dict:
    """Dynomite's ``/info`` fields (latencies in microseconds, percentiles over the
    last minute, sampled: ``latency_samples`` observations in that minute, how in
    ``latency_sampling``), plus dyno's: node, state, consistency, keys, ops/s."""
    node = server.node
    config = node.config
    m = node.metrics
    stats = node.stats
    now = time.time()
    recent = server.window.recent_counts(m.client_latency)
    datastore_counts = list(m.datastore_latency.counts)
    peers = {}
    totals = metrics.peer_totals(node)
    for name in sorted(node.peer_links):
        link = node.peer_links[name]
        counts = totals.get(name, metrics.NO_REQUESTS)
        peers[name] = {
            "dc": link.peer.dc, "rack": link.peer.rack, "up": int(link.up),
            "admin_down": int(name in node.admin_down), "sent": counts["sent"],
            "failed": counts["failed"], "in_flight": counts["in_flight"],
            "latency_99th": _microseconds(
                metrics.percentile(m.peer_latency[name].counts, 0.99)) if name in m.peer_latency else 0,
        }
    datastore = node.datastore
    read_consistency, write_consistency = node.consistency()
    body = {
        "service": "dyno",
        "source": socket.gethostname(),
        "version": __version__,
        "uptime": int(now - node.started),
        "timestamp": int(now),
        "rack": config.rack,
        "dc": config.datacenter,
        "node": node.name,
        "state": node.state(),
        "read_consistency": read_consistency,
        "write_consistency": write_consistency,
        "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        **_latency_summary(m.client_latency, recent),
        **_sampling(m, server.window),
        "99_server_latency": _microseconds(metrics.percentile(datastore_counts, 0.99)),
        "average_server_latency": _microseconds(
            m.datastore_latency.sum / m.datastore_latency.count if m.datastore_latency.count else 0.0),
        "keys": await datastore_keys(node),
        # as of the last sample (taken every second): two reads in a row agree
        "ops_per_sec": round(server.window.ops_per_sec(*server.window.latest(time.monotonic(), stats.commands)), 1),
        config.pool: {
            "client_connections": len(node.clients),
            "client_requests": stats.commands,
            **{f"client_{name}_requests": count for name, count in m.by_class().items()},
            "client_err": stats.errors,
            "client_state_refusals": m.state_refusals,
            "quorum_failures": m.quorum_failures(),
            "replica_disagreements": m.disagreements,
            "quorum_reads_widened": m.widened_reads,
            "replica_failures": stats.replica_failures,
            "replica_write_failures": m.write_failures,
            "failovers": m.failovers,
            "auth_failures": node.auth_failures(),
            "read_repairs": m.read_repairs,
            "read_repair_failures": m.read_repair_failures,
            "transactions": m.transactions,
            "version_stamp_failures": m.stamp_failures,
            "client_bytes_in": stats.client_bytes_in,
            "client_bytes_out": stats.client_bytes_out,
            "requests_by_command": m.commands(),
            "requests_by_consistency": dict(m.by_level),
            "quorum_failures_by_consistency": dict(m.failures_by_level),
            "peers": peers,
            "hints": node.hints(),
            "tombstones": node.tombstones(),
            datastore.address: {
                "up": int(datastore.up),
                "connections": len(datastore.connections),
                "connections_up": sum(c.up for c in datastore.connections),
            },
        },
    }
    if node.workers is not None:
        body["workers"] = node.workers()
    return body


def _help(server: "AdminServer") -> Reply:
    return _text("".join(f"{path}\n    {what}\n" for path, what in PATHS))


async def _info(server: "AdminServer") -> Reply:
    return _json(await info(server))


def _ping(server: "AdminServer") -> Reply:
    return _text(OK)


def _cluster_describe(server: "AdminServer") -> Reply:
    return _json(cluster_describe(server))


def _get_consistency(server: "AdminServer") -> Reply:
    read_consistency, write_consistency = server.node.consistency()
    return _text(f"Read Consistency: {read_consistency}\r\n"
                 f"Write Consistency: {write_consistency}\r\n")


def _set_consistency(server: "AdminServer", operation: str, level: str) -> Reply:
    node = server.node
    if operation not in ("read", "write"):
        return _bad(f"'{operation}' is neither read nor write (/set_consistency/<read|write>/<level>)")
    if level.upper() not in LEVELS:
        return _bad(f"'{level}' is not a consistency level; use one of {', '.join(LEVELS)}")
    node.set_consistency(operation, level.upper())
    return _text(OK)


def _state(server: "AdminServer", name: str) -> Reply:
    node = server.node
    if name == "get_state":
        return _text(f"State: {node.state()}\n")
    state = name.upper()
    if state not in OPERATOR_STATES:
        choices = ", ".join(["get_state", *(s.lower() for s in OPERATOR_STATES)])
        return _bad(f"'{name}' is not a state; use one of {choices}")
    node.set_state(state)
    return _text(OK)


def _peer(server: "AdminServer", action: str, name: str) -> Reply:
    node = server.node
    if action not in ("down", "up", "reset"):
        return _bad(f"'{action}' is not a peer action; use down, up or reset (/peer/<down|up|reset>/<name>)")
    names = sorted(node.peer_links) if name == "all" else [name]
    unknown = [n for n in names if n not in node.peer_links]
    if unknown:
        known = ", ".join(sorted(node.peer_links)) or "none"
        return _bad(f"no peer named '{unknown[0]}'; the peers are: {known} (or 'all')")
    for peer in names:
        node.set_peer_admin_down(peer, action == "down")
    return _text(OK)


def _log_level(server: "AdminServer", step: int) -> Reply:
    root = logging.getLogger()
    current = root.getEffectiveLevel()
    index = min(range(len(LOG_LEVELS)), key=lambda i: abs(LOG_LEVELS[i] - current))
    new = LOG_LEVELS[max(0, min(len(LOG_LEVELS) - 1, index + step))]
    root.setLevel(new)
    log.warning("node %s: log level %s -> %s (admin request)", server.node.name,
                logging.getLevelName(current), logging.getLevelName(new))
    return _text(OK)


def _metrics(server: "AdminServer") -> Reply:
    text = metrics.render_prometheus(server.node, cluster_view(server))
    return Reply(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")


_NO_REPAIR = "503 Service Unavailable: repair not available on this node\n"
REPAIR_PARAMETERS = ("rack", "range", "rate")


def _repair_status(server: "AdminServer") -> Reply:
    """GET /repair: the current or last repair job's progress (JSON null if none ran)."""
    if server.repair_status is None:
        return _text(_NO_REPAIR, 503)
    return _json(server.repair_status())


def _movement_status(server: "AdminServer") -> Reply:
    """GET /movement: this node's range movement and cleanup (JSON)."""
    if server.movement_status is None:
        return _text("503 Service Unavailable: range movements not available on this node\n", 503)
    return _json(server.movement_status())


def _decommission(server: "AdminServer", query: dict[str, str]) -> Reply:
    """POST /decommission: start streaming this node's ranges away."""
    if server.decommission is None:
        return _text("503 Service Unavailable: range movements not available on this node\n", 503)
    if query:
        return _bad(f"/decommission takes no parameters, not {', '.join(query)}")
    try:
        return _json(server.decommission(), 202)
    except RuntimeError as error:
        return _text(f"409 Conflict: {error}\n", 409)


def _start_repair(server: "AdminServer", query: dict[str, str]) -> Reply:
    """POST /repair?rack=R&range=A:B&rate=N: start a repair of this node's ranges."""
    if server.start_repair is None:
        return _text(_NO_REPAIR, 503)
    unknown = sorted(set(query) - set(REPAIR_PARAMETERS))
    if unknown:
        return _bad(f"/repair takes {', '.join(REPAIR_PARAMETERS)}, not {', '.join(unknown)}")
    rate = query.get("rate") or None
    if rate is not None:
        try:
            rate = float(rate)
            if not rate >= 0 or rate == float("inf"):
                raise ValueError
        except ValueError:
            return _bad(f"rate '{query['rate']}' is not a number of keys per second (0: no limit)")
    try:
        started = server.start_repair(query.get("rack") or None, query.get("range") or None, rate)
    except ValueError as error:
        return _bad(str(error))
    except RepairRunning as error:
        return _text(f"409 Conflict: {error}\n", 409)
    except RepairUnavailable as error:
        return _text(f"503 Service Unavailable: {error}\n", 503)
    return _json({"started": started}, 202)


Handler = Callable[..., "Reply | Awaitable[Reply]"]

# path -> handler, for paths without parameters
FIXED: dict[str, Handler] = {
    "/": _info,
    "/info": _info,
    "/ping": _ping,
    "/help": _help,
    "/cluster_describe": _cluster_describe,
    "/get_consistency": _get_consistency,
    "/loglevelup": lambda server: _log_level(server, +1),
    "/logleveldown": lambda server: _log_level(server, -1),
    "/metrics": _metrics,
    "/repair": _repair_status,
    "/movement": _movement_status,
}
# path -> handler of a POST, given the query parameters
POSTS: dict[str, Callable[["AdminServer", dict[str, str]], Reply]] = {
    "/repair": _start_repair,
    "/decommission": _decommission,
}
# first path segment -> (handler, number of parameters, usage)
WITH_PARAMETERS: dict[str, tuple[Handler, int, str]] = {
    "set_consistency": (_set_consistency, 2, "/set_consistency/<read|write>/<level>"),
    "state": (_state, 1, "/state/<get_state|standby|writes_only|resuming|normal>"),
    "peer": (_peer, 2, "/peer/<down|up|reset>/<name>"),
}
PATHS = [
    ("/info", "JSON: version, uptime, state, latency percentiles (us, sampled: latency_sampling says how), "
              "request, peer and datastore counters"),
    ("/ping", "OK when the admin port answers"),
    ("/cluster_describe", "JSON: the ring by datacenter and rack, with tokens and up/down"),
    ("/get_consistency", "the node's read and write consistency levels"),
    ("/set_consistency/<read|write>/<level>", f"change a level at run time ({', '.join(LEVELS)})"),
    ("/state/<get_state|standby|writes_only|resuming|normal>", "show or change the node state"),
    ("/peer/<down|up|reset>/<name>", "mark a peer down for reads (up/reset: clear the mark); name or 'all'"),
    ("/loglevelup", "log more (towards DEBUG)"),
    ("/logleveldown", "log less (towards CRITICAL)"),
    ("/metrics", "every counter and histogram in Prometheus text format"),
    ("/repair", "GET: JSON progress of the current or last repair; POST ?rack=R&range=A:B&rate=N: "
                "repair this node's ranges (dyno repair)"),
    ("/movement", "JSON progress of this node's range movement (join, replace, decommission) and cleanup"),
    ("/decommission", "POST: stream this node's ranges to their next owners, then leave the ring "
                      "(dyno decommission)"),
    ("/help", "this list"),
]


def _not_found(path: str) -> Reply:
    listing = "\n".join(f"  {p}" for p, _ in PATHS)
    return _text(f"404 Not Found: no admin path {path}; the paths are:\n{listing}\n", 404)


def changes_node(path: str) -> bool:
    """Whether an admin path changes the node (POST only): Dynomite's state,
    consistency, peer and log-level paths but /state/get_state, and /repair's POST."""
    if path in ("/loglevelup", "/logleveldown"):
        return True
    head = path.lstrip("/").partition("/")[0]
    return head in ("set_consistency", "peer") or (head == "state" and path != "/state/get_state")


def _bearer_matches(authorization: bytes | None, token: bytes) -> bool:
    if authorization is None or not authorization.startswith(b"Bearer "):
        return False
    return hmac.compare_digest(authorization[7:].strip(), token)


def route(path: str) -> tuple[Handler, tuple[str, ...]] | Reply:
    """The handler and parameters for ``path``, or the error reply. No I/O."""
    if path != "/" and path.endswith("/"):
        path = path.rstrip("/")
    handler = FIXED.get(path)
    if handler is not None:
        return handler, ()
    head, _, rest = path.lstrip("/").partition("/")
    entry = WITH_PARAMETERS.get(head)
    if entry is None:
        return _not_found(path)
    handler, count, usage = entry
    parameters = tuple(rest.split("/", count - 1)) if rest else ()
    if len(parameters) != count or not all(parameters):
        return _bad(f"{path} needs {count} parameter{'s' if count > 1 else ''}: {usage}")
    return handler, parameters


# -- the server --------------------------------------------------------------------


class AdminServer:
    """``start_repair(rack, token_range, rate) -> status`` and ``repair_status() ->
    status | None`` are the node's repair service (``RepairService.start`` and
    ``.status``); without them /repair answers 503."""

    def __init__(self, node: NodeView, host: str, port: int, *,
                 start_repair: Callable[[str | None, str | None, float | None], dict] | None = None,
                 repair_status: Callable[[], dict | None] | None = None, token: str | None = None,
                 decommission: Callable[[], dict] | None = None,
                 movement_status: Callable[[], dict] | None = None):
        self.node = node
        self.host = host
        self.port = port
        #: admin_token: what a POST's "Authorization: Bearer ..." must carry (None: nothing).
        self.token = None if token is None else token.encode()
        self.start_repair = start_repair
        self.repair_status = repair_status
        #: The node's range movements (dyno.streaming.Mover): start a decommission, status.
        self.decommission = decommission
        self.movement_status = movement_status
        self.sock: socket.socket | None = None
        self.window = metrics.Window()

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def bind(self) -> None:
        self.sock = listen_socket(self.host, self.port, backlog=64)
        self.port = self.sock.getsockname()[1]

    async def serve(self) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.sock))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sample_forever)
            await trio.serve_listeners(self._serve_connection, [listener], handler_nursery=nursery)

    async def _sample_forever(self) -> None:
        node = self.node
        timed = node.metrics.sampled_batches
        while True:
            if node.refresh is not None:
                await node.refresh()
            self.window.sample(time.monotonic(), node.stats.commands, node.metrics.client_latency)
            if node.metrics.sampled_batches == timed:  # none timed this second: the next one is
                node.sample_next()
            timed = node.metrics.sampled_batches
            await trio.sleep(SAMPLE_INTERVAL)

    async def respond(self, method: str, target: str, authorization: bytes | None = None) -> Reply:
        """The reply to one request. Paths that change the node (its state,
        levels, peers' marks, log level, a repair) take POST, and the bearer token
        when ``admin_token`` is set; a GET of one gets 405 (a web page cannot make a
        browser change the node). Read-only paths are Dynomite's GETs."""
        path, _, query = target.partition("?")
        path = unquote(path) or "/"
        if path != "/" and path.endswith("/"):
            path = path.rstrip("/")
        post = POSTS.get(path)
        changes = post is not None or changes_node(path)
        if method == "POST" and changes:
            if self.token is not None and not _bearer_matches(authorization, self.token):
                reply = _text(f"401 Unauthorized: {path} needs the admin token "
                              "(Authorization: Bearer <admin_token>)\n", 401)
                reply.headers.append(("WWW-Authenticate", "Bearer"))
                return reply
            if post is not None:
                return post(self, dict(parse_qsl(query, keep_blank_values=True)))
        elif method not in ("GET", "HEAD") or (changes and post is None):
            if changes:
                allowed, what = ("GET, HEAD, POST", "GET and POST") if post is not None else ("POST", "POST only")
            else:
                allowed, what = "GET, HEAD", "GET only"
            hint = (f" (it changes the node: curl -X POST http://{self.address}{path})"
                    if changes and method in ("GET", "HEAD") else "")
            reply = _text(f"405 Method Not Allowed: {path} answers {what}, not {method}{hint}\n", 405)
            reply.headers.append(("Allow", allowed))
            return reply
        found = route(path)
        if isinstance(found, Reply):
            return found
        handler, parameters = found
        if self.node.refresh is not None and handler in (_info, _metrics):
            await self.node.refresh()
        result = handler(self, *parameters)
        if inspect.isawaitable(result):
            result = await result
        if changes and self.node.settle is not None:
            await self.node.settle()
        return result

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT):
                    request = await self._read_request(conn, stream)
                if request is None:
                    return
                try:
                    reply = await self.respond(request.method.decode("ascii", "replace"),
                                               request.target.decode("latin-1"),
                                               dict(request.headers).get(b"authorization"))
                except Exception:  # a bug in a handler: answer 500, keep the node up
                    log.exception("admin %s: handler failed", request.target.decode("latin-1"))
                    reply = _text("500 Internal Server Error: see the node's log\n", 500)
                await self._send(conn, stream, reply, head=request.method == b"HEAD")
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                reply = _text(f"{exc.error_status_hint} Bad Request: {exc}\n", exc.error_status_hint)
                try:
                    await self._send(conn, stream, reply)
                except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # never let one admin connection take the node down
            log.exception("admin connection failed")
        finally:
            await stream.aclose()

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
        """The next request, its body (ignored) read through; None on close."""
        request = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(MAX_RECV)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, reply: Reply,
                    head: bool = False) -> None:
        headers = [
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            ("Server", f"dyno/{__version__}"),
            *reply.headers,
        ]
        reason = HTTPStatus(reply.status).phrase.encode()
        data = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=reason))
        if not head:
            data += conn.send(h11.Data(data=reply.body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
