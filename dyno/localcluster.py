"""A whole dyno cluster on this machine: plan it, write its configs, start it, stop it.

This is what `make cluster` and `dyno cluster up/down` run, and what the integration tests
start their clusters with.  It owns three things:

* **the plan** (`plan()`, pure): names, racks, datacenters, ports and tokens of every node,
  following Dynomite's conventions (every rack holds the same token set, so every rack holds
  a full copy of the data);
* **the configs** (`write_configs()`): one Dynomite-format YAML per node, readable and
  reusable with `dyno start --config FILE`;
* **the processes** (`up()`, `down()`, `status()`, and one node at a time `stop_one()`,
  `start_one()`, `restart_one()`): one redis-server and one dyno node per node, each in its
  own session (so they outlive the shell command that started them), with their logs in the
  cluster directory and their pids in `DIR/cluster.json`.

`DIR/cluster.json` records what this module started: `down()` works from it and from DIR
alone, from any process.  It is rewritten after every process start, so even an `up()`
interrupted half-way leaves a record that `down()` can clean up.  A process of the cluster
that someone else started (a node restarted by hand with `dyno start --config nodeN.yml`,
as its config's header suggests) is not in the record; `down()` finds it all the same, by
what identifies it (`ClusterState.processes`): a `dyno start` whose config is one of DIR's,
a redis-server whose working directory (its `--dir`) is a node's Redis directory.

Rules this module keeps: it never waits by sleeping for a fixed time (it polls a condition
with a deadline); it only signals processes of the cluster, recorded or found as above, and
checks that each is still the process it saw (by its start time) before signalling it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import yaml

TOKEN_SPACE = 2**32

# Deterministic port layout when a base port is given: node n (0-based, in plan order) uses
# the block base_port + NODE_PORT_STRIDE * n, with these offsets inside the block.
# E.g. base_port=8102: node1 listens on 8102 (dyn 8103, stats 8104, redis 8105),
# node2 on 8112, node3 on 8122, ...
NODE_PORT_STRIDE = 10
PORT_OFFSETS = {"port": 0, "dyn_port": 1, "stats_port": 2, "redis_port": 3}

STATE_FILE = "cluster.json"
TLS_DIR = "tls"  # `up(tls=True)`: the test CA and the nodes' certificates, in the cluster dir
DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0
SAVE_TIMEOUT = 120.0  # seconds a node's Redis may take to save its data when the node is stopped
_POLL_INTERVAL = 0.02


class ClusterError(Exception):
    """Starting or stopping a local cluster failed; the message says what to do."""


# --------------------------------------------------------------------------- plan (pure)


@dataclasses.dataclass(frozen=True)
class NodePlan:
    """Where one node of a planned cluster lives and which tokens it owns."""

    name: str
    dc: str
    rack: str
    host: str
    port: int  # `listen`: RESP clients
    dyn_port: int  # `dyn_listen`: peers
    stats_port: int  # `stats_listen`: admin HTTP
    redis_port: int  # `servers[0]`: the node's own Redis
    tokens: tuple[int, ...]
    seeds: tuple[str, ...]  # dyn_seeds of every OTHER node: 'host:dyn_port:rack:dc:tokens'
    config: tuple[tuple[str, object], ...] = ()  # further config keys (consistency, ...)

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def dyn_listen(self) -> str:
        return f"{self.host}:{self.dyn_port}"

    @property
    def stats_listen(self) -> str:
        return f"{self.host}:{self.stats_port}"

    @property
    def redis(self) -> str:
        return f"{self.host}:{self.redis_port}"

    @property
    def seed(self) -> str:
        """This node as another node's `dyn_seeds` entry."""
        return f"{self.host}:{self.dyn_port}:{self.rack}:{self.dc}:{format_tokens(self.tokens)}"

    def config_dict(self) -> dict:
        """The node's Dynomite config, as the mapping under the `dyn_o_mite:` root."""
        conf: dict[str, object] = {
            "datacenter": self.dc,
            "rack": self.rack,
            "listen": self.listen,
            "dyn_listen": self.dyn_listen,
        }
        if self.seeds:
            conf["dyn_seeds"] = list(self.seeds)
        conf.update(
            {
                "tokens": format_tokens(self.tokens),
                "servers": [f"{self.redis}:1"],
                "stats_listen": self.stats_listen,
                "data_store": 0,
            }
        )
        conf.update(dict(self.config))
        return conf


def _client_tls_config(directory: str | os.PathLike | None, name: str) -> dict[str, str]:
    if directory is None:
        return {}
    directory = Path(directory).resolve()
    return {"client_tls_cert": str(directory / f"{name}.pem"),
            "client_tls_key": str(directory / f"{name}-key.pem")}


def format_tokens(tokens: Iterable[int]) -> str:
    return ",".join(str(t) for t in tokens)


def rack_tokens(nodes_per_rack: int) -> list[int]:
    """Evenly spaced tokens for the K nodes of a rack: node i gets i * (2**32 // K).

    Every rack gets the same set (Dynomite's convention), so a key has the same position in
    every rack and each rack holds one full copy.
    """
    if nodes_per_rack < 1:
        raise ValueError("nodes_per_rack must be at least 1")
    step = TOKEN_SPACE // nodes_per_rack
    return [i * step for i in range(nodes_per_rack)]


def plan(
    dcs: int = 1,
    racks: int = 3,
    nodes_per_rack: int = 1,
    host: str = "127.0.0.1",
    base_port: int | None = None,
    read_consistency: str = "DC_ONE",
    write_consistency: str = "DC_ONE",
    seeds: str = "all",
    client_tls: str | os.PathLike | None = None,
    **extra_config: object,
) -> list[NodePlan]:
    """Plan a cluster of `dcs` datacenters x `racks` racks x `nodes_per_rack` nodes.

    Nodes are named node1..nodeN in (dc, rack, index) order; datacenters dc1..dcN and racks
    rack1..rackR (rack names repeat in every DC, as in Dynomite's examples).
    `base_port=None` picks free ports (all 4*N distinct, probed together); otherwise ports
    follow PORT_OFFSETS / NODE_PORT_STRIDE from `base_port`.
    `seeds="all"` lists every other node in each node's dyn_seeds; `seeds="one"` only the
    node before it (node1 lists the last one), so the ring must be learned by gossip.
    `extra_config` keys go verbatim into every node's config (e.g. hash_tag="{}",
    timeout=2000, enable_gossip=False) and override the generated ones.
    `client_tls`: a directory made by `dyno certs`; node N's client port then speaks TLS
    with DIR/nodeN.pem and DIR/nodeN-key.pem (client_tls_cert/key).
    """
    if seeds not in ("all", "one"):
        raise ValueError(f"seeds must be 'all' or 'one', got {seeds!r}")
    for what, value in (("dcs", dcs), ("racks", racks), ("nodes_per_rack", nodes_per_rack)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    count = dcs * racks * nodes_per_rack
    if base_port is None:
        ports = free_ports(4 * count, host)
    else:
        last = base_port + NODE_PORT_STRIDE * (count - 1) + max(PORT_OFFSETS.values())
        if base_port < 1 or last > 65535:
            raise ValueError(f"base_port {base_port} leaves no room for {count} nodes (up to port {last})")
        ports = []
        for n in range(count):
            block = base_port + NODE_PORT_STRIDE * n
            ports += [block + PORT_OFFSETS[k] for k in ("port", "dyn_port", "stats_port", "redis_port")]

    config = {"read_consistency": read_consistency, "write_consistency": write_consistency}
    config.update(extra_config)
    tokens = rack_tokens(nodes_per_rack)
    skeleton = []
    n = 0
    for d in range(1, dcs + 1):
        for r in range(1, racks + 1):
            for i in range(nodes_per_rack):
                port, dyn_port, stats_port, redis_port = ports[4 * n : 4 * n + 4]
                n += 1
                skeleton.append(
                    NodePlan(
                        name=f"node{n}",
                        dc=f"dc{d}",
                        rack=f"rack{r}",
                        host=host,
                        port=port,
                        dyn_port=dyn_port,
                        stats_port=stats_port,
                        redis_port=redis_port,
                        tokens=(tokens[i],),
                        seeds=(),
                        config=tuple({**_client_tls_config(client_tls, f"node{n}"), **config}.items()),
                    )
                )
    if seeds == "one" and count > 1:
        return [
            dataclasses.replace(node, seeds=(skeleton[index - 1].seed,))
            for index, node in enumerate(skeleton)
        ]
    return [
        dataclasses.replace(node, seeds=tuple(other.seed for other in skeleton if other is not node))
        for node in skeleton
    ]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that are free right now (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def write_configs(plans: Sequence[NodePlan], dir: str | os.PathLike) -> list[Path]:
    """Write DIR/<name>.yml for every node, each readable by `dyno start --config`."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    shape = f"{len(plans)} node(s), {len({p.dc for p in plans})} datacenter(s)"
    for node in plans:
        path = out / f"{node.name}.yml"
        header = (
            f"# {node.name} ({node.dc}/{node.rack}) of a local dyno cluster: {shape}.\n"
            f"# Generated by dyno.localcluster; start it alone with: dyno start --config {path.name}\n"
        )
        conf = node.config_dict()
        # Hinted handoff keeps what a stopped node missed on disk, beside its config.
        conf.setdefault("hints_dir", str((out / node.name / "hints").resolve()))
        body = yaml.safe_dump({"dyn_o_mite": conf}, sort_keys=False, default_flow_style=False)
        path.write_text(header + body)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- processes


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if unknown.

    Recorded next to each pid so that a pid reused by an unrelated process is never signalled.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def dyno_start_config(argv: Sequence[str], cwd: str | os.PathLike) -> Path | None:
    """The config file a ``dyno start`` command line names (``--config F``, ``-c F``,
    ``--config=F``, ``-cF``), relative paths taken from ``cwd``, the process's working
    directory; None for any other command line.  Pure: it reads no file.

    The program is ``dyno`` (a script of that name, or ``python -m dyno``) followed by
    ``start``; ``python -c`` and other programs that merely mention a config are not it."""
    for index, arg in enumerate(argv):
        # the dyno script (run by the kernel, or by python), or python -m dyno
        if os.path.basename(arg) == "dyno" and (
                index == 0 or argv[index - 1] == "-m"
                or index == 1 and os.path.basename(argv[0]).startswith("python")):
            rest = list(argv[index + 1:])
            break
    else:
        return None
    if "start" not in rest:
        return None
    rest = rest[rest.index("start") + 1:]
    for index, arg in enumerate(rest):
        if arg in ("--config", "-c"):
            if index + 1 >= len(rest):
                return None
            value = rest[index + 1]
        elif arg.startswith("--config="):
            value = arg[len("--config="):]
        elif arg.startswith("-c") and len(arg) > 2:
            value = arg[2:]
        else:
            continue
        return Path(os.path.normpath(os.path.join(cwd, value)))
    return None


def _processes_of_this_user() -> Iterable[tuple[int, list[str], str, str]]:
    """(pid, argv, working directory, command name) of every process this one may look
    at (another user's /proc/PID/cwd cannot be read: those are left out), itself excepted."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:  # no /proc: only recorded pids are known
        return
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                raw = f.read()
            with open(f"/proc/{entry}/comm", "rb") as f:
                comm = f.read().decode(errors="replace").strip()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:  # gone meanwhile, a kernel thread, or not ours
            continue
        argv = [arg.decode(errors="surrogateescape") for arg in raw.split(b"\0")]
        if argv and argv[-1] == "":
            argv.pop()
        if argv:
            yield int(entry), argv, cwd, comm


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(path)


@dataclasses.dataclass(frozen=True)
class ClusterProcess:
    """A running process of a local cluster: recorded in cluster.json, or found."""

    node: str
    kind: str  # "dyno" or "redis-server"
    pid: int
    start: int | None  # process_start_time when it was seen
    recorded: bool  # started by this module (its pid is in cluster.json)

    def __str__(self) -> str:
        by = "" if self.recorded else ", not started by dyno cluster"
        return f"{self.node} {self.kind} (pid {self.pid}{by})"


# Popen objects of the processes this Python process started, so that they are reaped
# (no zombies, no ResourceWarning) when stopped from the same process.
_children: dict[int, subprocess.Popen] = {}


def pid_alive(pid: int | None, start_time: int | None = None) -> bool:
    """Is `pid` running and (if `start_time` is given) still the process we started?"""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None  # also reaps it; the Popen keeps the exit code
    if os.path.isdir("/proc"):
        state = _proc_state(pid)
        if state is None or state in ("Z", "X"):
            return False
        return start_time is None or process_start_time(pid) == start_time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads (our processes lead their own session)."""
    with contextlib.suppress(ProcessLookupError):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
                return
        except ProcessLookupError:
            return
        os.kill(pid, sig)


def poll_until(condition: Callable[[], object], timeout: float) -> bool:
    """Poll `condition` until it is true or `timeout` seconds pass; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return bool(condition())
        time.sleep(_POLL_INTERVAL)


def stop_pids(procs: Sequence[tuple[int, int | None]], timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
    """SIGTERM every live (pid, start_time), SIGKILL what is left after `timeout`.

    Returns how many were alive.  Waits until all of them are gone.
    """
    live = [(pid, start) for pid, start in procs if pid_alive(pid, start)]
    for pid, _ in live:
        _signal(pid, signal.SIGTERM)
        _signal(pid, signal.SIGCONT)  # a paused (SIGSTOPped) process must wake up to die
    if not poll_until(lambda: not any(pid_alive(p, s) for p, s in live), timeout):
        for pid, start in live:
            if pid_alive(pid, start):
                _signal(pid, signal.SIGKILL)
        if not poll_until(lambda: not any(pid_alive(p, s) for p, s in live), 5.0):
            left = [p for p, s in live if pid_alive(p, s)]
            raise ClusterError(f"processes {left} survived SIGKILL")
    return len(live)


def probe_tls(config: dict) -> ssl.SSLContext | None:
    """How the probes below reach a node whose client port speaks TLS only (its config
    sets client_tls_cert), or None for plaintext. They ask only whether the process this
    module started serves, so they trust any certificate; they show the node's own
    (``dyno certs`` makes node certificates good for client authentication too), for a
    node whose client_tls_ca asks clients for one."""
    if not config.get("client_tls_cert"):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if config.get("client_tls_ca") and config.get("client_tls_key"):
        with contextlib.suppress(ssl.SSLError, OSError):  # the node's own start reports bad files
            context.load_cert_chain(str(config["client_tls_cert"]), str(config["client_tls_key"]))
    return context


def _connect(host: str, port: int, timeout: float, tls: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock)
    except BaseException:
        sock.close()
        raise


def ping(host: str, port: int, timeout: float = 0.5, tls: ssl.SSLContext | None = None) -> bool:
    """True if a RESP server on host:port answers PING with +PONG (or, when it
    wants a password first, with -NOAUTH: it is serving). ``tls``: see probe_tls."""
    try:
        with _connect(host, port, timeout, tls) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
            return reply == b"+PONG\r\n" or reply.startswith(b"-NOAUTH")
    except OSError:
        return False


def redis_call(host: str, port: int, argv: Sequence[bytes], timeout: float = 5.0) -> bytes:
    """Send one command to the RESP server on host:port; its reply's first line (b"+OK",
    b"-ERR ...", b":3", ...). OSError when it cannot be reached or does not answer."""
    request = b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in argv)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"{host}:{port} closed the connection without a reply")
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


def peers_connected(host: str, port: int, timeout: float = 0.5, tls: ssl.SSLContext | None = None) -> bool:
    """True if the dyno node on host:port has a link up to every peer (INFO dyno's
    peers_up == peers). A server without those fields (a stand-in) counts as ready."""
    try:
        with _connect(host, port, timeout, tls) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$4\r\ndyno\r\n")
            reply = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                reply += chunk
                header, _, body = reply.partition(b"\r\n")
                if header.startswith(b"$") and len(body) >= int(header[1:]) + 2:
                    break
                if header[:1] in (b"-", b"+"):
                    return True
    except (OSError, ValueError):
        return False
    fields = dict(line.split(b":", 1) for line in body.split(b"\r\n") if b":" in line)
    if b"peers" not in fields:
        return True
    return fields[b"peers"] == fields.get(b"peers_up")


def log_tail(path: str | os.PathLike, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _spawn(argv: Sequence[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,  # survives the shell/parent; own process group
        )
    _children[proc.pid] = proc
    return proc


def _dyno_env() -> dict[str, str]:
    """Environment for `python -m dyno`: this very package importable, logs unbuffered."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def dyno_command(node: NodeState) -> list[str]:
    return [sys.executable, "-m", "dyno", "start", "--config", str(node.config)]


def redis_command(node: NodeState, redis_server: str = "redis-server") -> list[str]:
    return [
        redis_server,
        "--port", str(node.redis_port),
        "--bind", node.host,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(node.redis_dir),
        "--daemonize", "no",
    ]  # fmt: skip


@dataclasses.dataclass
class NodeState:
    """One running (or stopped) node of a local cluster: its plan, files and pids."""

    plan: NodePlan
    config: Path
    log: Path
    redis_log: Path
    redis_dir: Path
    argv: list[str] = dataclasses.field(default_factory=list)
    redis_argv: list[str] = dataclasses.field(default_factory=list)
    pid: int | None = None
    pid_start: int | None = None
    redis_pid: int | None = None
    redis_pid_start: int | None = None

    # the plan's addresses, for convenience
    name = property(lambda self: self.plan.name)
    dc = property(lambda self: self.plan.dc)
    rack = property(lambda self: self.plan.rack)
    host = property(lambda self: self.plan.host)
    port = property(lambda self: self.plan.port)
    dyn_port = property(lambda self: self.plan.dyn_port)
    stats_port = property(lambda self: self.plan.stats_port)
    redis_port = property(lambda self: self.plan.redis_port)
    tokens = property(lambda self: self.plan.tokens)

    def probe_tls(self) -> ssl.SSLContext | None:
        """How to probe this node's client port, from its config file (see probe_tls)."""
        try:
            document = yaml.safe_load(self.config.read_text())
            settings = next(iter(document.values()))
        except (OSError, yaml.YAMLError, AttributeError, StopIteration):
            return None
        return probe_tls(settings) if isinstance(settings, dict) else None

    @property
    def node_alive(self) -> bool:
        return pid_alive(self.pid, self.pid_start)

    @property
    def redis_alive(self) -> bool:
        return pid_alive(self.redis_pid, self.redis_pid_start)

    def to_json(self) -> dict:
        p = self.plan
        return {
            "name": p.name,
            "dc": p.dc,
            "rack": p.rack,
            "listen": p.listen,
            "dyn_listen": p.dyn_listen,
            "stats_listen": p.stats_listen,
            "redis": p.redis,
            "pid": self.pid,
            "redis_pid": self.redis_pid,
            "config": str(self.config),
            "log": str(self.log),
            # beyond the documented fields: what down()/restarts need
            "tokens": list(p.tokens),
            "seeds": list(p.seeds),
            "redis_log": str(self.redis_log),
            "redis_dir": str(self.redis_dir),
            "argv": self.argv,
            "redis_argv": self.redis_argv,
            "pid_start": self.pid_start,
            "redis_pid_start": self.redis_pid_start,
        }

    @classmethod
    def from_json(cls, data: dict) -> NodeState:
        def split(addr: str) -> tuple[str, int]:
            host, _, port = addr.rpartition(":")
            return host, int(port)

        host, port = split(data["listen"])
        plan_ = NodePlan(
            name=data["name"],
            dc=data["dc"],
            rack=data["rack"],
            host=host,
            port=port,
            dyn_port=split(data["dyn_listen"])[1],
            stats_port=split(data["stats_listen"])[1],
            redis_port=split(data["redis"])[1],
            tokens=tuple(data.get("tokens", ())),
            seeds=tuple(data.get("seeds", ())),
        )
        return cls(
            plan=plan_,
            config=Path(data["config"]),
            log=Path(data["log"]),
            redis_log=Path(data.get("redis_log", "")),
            redis_dir=Path(data.get("redis_dir", "")),
            argv=list(data.get("argv", [])),
            redis_argv=list(data.get("redis_argv", [])),
            pid=data.get("pid"),
            pid_start=data.get("pid_start"),
            redis_pid=data.get("redis_pid"),
            redis_pid_start=data.get("redis_pid_start"),
        )


@dataclasses.dataclass
class ClusterState:
    """A local cluster as recorded in DIR/cluster.json, with per-node process control."""

    dir: Path
    nodes: list[NodeState]

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    def node(self, name: str) -> NodeState:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in {self.dir} (nodes: {', '.join(n.name for n in self.nodes)})")

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"nodes": [n.to_json() for n in self.nodes]}, indent=2) + "\n")
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, dir: str | os.PathLike) -> ClusterState | None:
        path = Path(dir) / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ClusterError(f"{path}: unreadable cluster state ({e})") from e
        return cls(Path(dir), [NodeState.from_json(n) for n in data.get("nodes", [])])

    def live_processes(self) -> list[tuple[str, int]]:
        """("nodeN dyno" or "nodeN redis-server", pid) of every running process of the cluster."""
        return [(f"{p.node} {p.kind}", p.pid) for p in self.processes()]

    def processes(self, names: Iterable[str] | None = None) -> list[ClusterProcess]:
        """Every running process of the nodes ``names`` (default: all), whoever started it:
        the pids recorded in cluster.json that are still the processes started, then any
        ``dyno start`` whose config is one of these nodes' (found in /proc/*/cmdline, its
        relative path taken from the process's working directory) and any redis-server
        whose working directory is one of these nodes' Redis directories (redis-server
        changes to its ``--dir``, which is the node's own). In plan order, dyno first."""
        names = None if names is None else set(names)
        wanted = [n for n in self.nodes if names is None or n.name in names]
        found: dict[int, ClusterProcess] = {}
        for n in wanted:
            for kind, pid, start in (("dyno", n.pid, n.pid_start), ("redis-server", n.redis_pid, n.redis_pid_start)):
                if pid and pid_alive(pid, start):
                    found[pid] = ClusterProcess(n.name, kind, pid, start, recorded=True)
        configs = {_real(n.config): n.name for n in wanted}
        redis_dirs = {_real(n.redis_dir): n.name for n in wanted if str(n.redis_dir) not in ("", ".")}
        for pid, argv, cwd, comm in _processes_of_this_user():
            if pid in found:
                continue
            config = dyno_start_config(argv, cwd)
            if config is not None and _real(config) in configs:
                kind, name = "dyno", configs[_real(config)]
            elif comm == "redis-server" and _real(cwd) in redis_dirs:
                kind, name = "redis-server", redis_dirs[_real(cwd)]
            else:
                continue
            start = process_start_time(pid)
            if pid_alive(pid, start):
                found[pid] = ClusterProcess(name, kind, pid, start, recorded=False)
        order = {n.name: index for index, n in enumerate(self.nodes)}
        return sorted(found.values(), key=lambda p: (p.kind != "dyno", order[p.node], p.pid))

    # --- one node at a time (fault tests, restarts) ---

    def start_redis(self, name: str, wait: bool = True, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        node = self.node(name)
        if node.redis_alive:
            raise ClusterError(f"{name}: redis-server already running (pid {node.redis_pid})")
        node.redis_dir.mkdir(parents=True, exist_ok=True)
        proc = _spawn(node.redis_argv, node.redis_log, self.dir)
        node.redis_pid, node.redis_pid_start = proc.pid, process_start_time(proc.pid)
        self.save()
        if wait:
            self._wait_ready([(node, "redis")], timeout)

    def start_node(self, name: str, wait: bool = True, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        node = self.node(name)
        if node.node_alive:
            raise ClusterError(f"{name}: dyno already running (pid {node.pid})")
        proc = _spawn(node.argv, node.log, self.dir, _dyno_env())
        node.pid, node.pid_start = proc.pid, process_start_time(proc.pid)
        self.save()
        if wait:
            self._wait_ready([(node, "dyno")], timeout)

    def stop_node(self, name: str, sig: int = signal.SIGTERM, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Signal the dyno process of `name`: SIGTERM, a clean stop, and SIGKILL, a crash, wait
        until it is gone; SIGSTOP (a hung node) and SIGCONT return at once."""
        node = self.node(name)
        self._stop(node.pid, node.pid_start, sig, timeout)

    def stop_redis(self, name: str, sig: int = signal.SIGTERM, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        node = self.node(name)
        self._stop(node.redis_pid, node.redis_pid_start, sig, timeout)

    @staticmethod
    def _stop(pid: int | None, start: int | None, sig: int, timeout: float) -> None:
        if not pid_alive(pid, start):
            return
        if sig == signal.SIGTERM:
            stop_pids([(pid, start)], timeout)
            return
        _signal(pid, sig)
        if sig == signal.SIGKILL and not poll_until(lambda: not pid_alive(pid, start), timeout):
            raise ClusterError(f"pid {pid} survived SIGKILL")

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
        """Stop every process of the cluster, whoever started it; how many ran."""
        return len(self.stop_processes(self.processes(), timeout))

    @staticmethod
    def stop_processes(procs: Sequence[ClusterProcess], timeout: float = DEFAULT_STOP_TIMEOUT,
                       ) -> list[ClusterProcess]:
        """SIGTERM (SIGKILL after ``timeout``) ``procs``: the dyno nodes first (they close
        their clients and tell their peers), then the Redis servers. Returns ``procs``."""
        stop_pids([(p.pid, p.start) for p in procs if p.kind == "dyno"], timeout)
        stop_pids([(p.pid, p.start) for p in procs if p.kind != "dyno"], timeout)
        return list(procs)

    # --- one whole node (its dyno process and its Redis), as `dyno cluster stop|start|restart` ---

    def stop_one(self, name: str, keep_redis: bool = False, timeout: float = DEFAULT_STOP_TIMEOUT,
                 ) -> list[ClusterProcess]:
        """Stop node ``name``'s dyno process (whoever started it) and, unless ``keep_redis``,
        its Redis, which first saves its data to its directory (DIR/<name>/dump.rdb) so that
        ``start_one`` brings the node back with its data. Returns what was stopped."""
        node = self.node(name)
        running = self.processes([name])
        stopped = self.stop_processes([p for p in running if p.kind == "dyno"], timeout)
        redis = [p for p in running if p.kind != "dyno"]
        if keep_redis or not redis:
            return stopped
        try:
            reply = redis_call(node.host, node.redis_port, [b"SAVE"], timeout=SAVE_TIMEOUT)
        except OSError as e:
            reply = str(e).encode()
        if reply != b"+OK":
            raise ClusterError(
                f"{name}: its Redis on {node.host}:{node.redis_port} did not save its data (SAVE: "
                f"{reply.decode(errors='replace')}); it is left running so nothing is lost "
                f"(dyno cluster down stops it and discards the data)")
        return stopped + self.stop_processes(redis, timeout)

    def start_one(self, name: str, timeout: float = DEFAULT_START_TIMEOUT) -> list[str]:
        """Start what is not running of node ``name``: its Redis (which loads what it
        saved when stopped), then its dyno process; return once each answers PING.
        Returns the kinds started ("redis-server", "dyno")."""
        running = {p.kind for p in self.processes([name])}
        started = []
        if "redis-server" not in running:
            self.start_redis(name, timeout=timeout)
            started.append("redis-server")
        if "dyno" not in running:
            self.start_node(name, timeout=timeout)
            started.append("dyno")
        return started

    def _wait_ready(
        self, pending: list[tuple[NodeState, str]], timeout: float, peers: bool = False
    ) -> None:
        """Wait until every (node, "redis"|"dyno") answers PING - and with ``peers``,
        until every dyno node has its peer links up; fail fast if one exits."""
        deadline = time.monotonic() + timeout
        pending = list(pending)
        while pending:
            for node, kind in list(pending):
                port = node.redis_port if kind == "redis" else node.port
                tls = None if kind == "redis" else node.probe_tls()
                if ping(node.host, port, tls=tls) and (
                    kind == "redis" or not peers or peers_connected(node.host, port, tls=tls)
                ):
                    pending.remove((node, kind))
                    continue
                alive = node.redis_alive if kind == "redis" else node.node_alive
                if not alive:
                    raise self._failure(node, kind, f"exited before answering PING on {node.host}:{port}")
            if pending and time.monotonic() >= deadline:
                node, kind = pending[0]
                port = node.redis_port if kind == "redis" else node.port
                raise self._failure(node, kind, f"did not answer PING on {node.host}:{port} within {timeout:g} s")
            if pending:
                time.sleep(_POLL_INTERVAL)

    def _failure(self, node: NodeState, kind: str, what: str) -> ClusterError:
        log = node.redis_log if kind == "redis" else node.log
        code = ""
        pid = node.redis_pid if kind == "redis" else node.pid
        child = _children.get(pid) if pid else None
        if child is not None and child.returncode is not None:
            code = f" (exit code {child.returncode})"
        prog = "redis-server" if kind == "redis" else "dyno"
        return ClusterError(f"{node.name}: {prog} {what}{code}\n--- last lines of {log} ---\n{log_tail(log)}")

    # --- presentation ---

    def describe(self) -> str:
        """Human summary: one line per node with the command to talk to it."""
        lines = []
        for n in self.nodes:
            state = "up" if n.node_alive else "DOWN"
            tls = ""
            if n.probe_tls() is not None:  # dyno certs puts the CA beside the node's certificate
                cert = dict(n.plan.config).get("client_tls_cert")
                tls = f" --tls --cacert {Path(str(cert)).parent / 'ca.pem'}" if cert else " --tls"
            lines.append(
                f"{n.name}  {n.dc}/{n.rack}  tokens {format_tokens(n.tokens)}  {state}  "
                f"redis-cli -p {n.port}{tls}   (redis on {n.redis_port}, stats http://{n.host}:{n.stats_port}/info)"
            )
        lines.append(f"configs and logs in {self.dir}; stop with: dyno cluster down --dir {self.dir}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the API


def up(
    dir: str | os.PathLike,
    dcs: int = 1,
    racks: int = 3,
    nodes_per_rack: int = 1,
    *,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    redis_server: str = "redis-server",
    node_command: Callable[[NodeState], list[str]] | None = None,
    tls: bool | str = False,
    **kw: object,
) -> ClusterState:
    """Plan, configure and start a local cluster in `dir`; return once every node answers PING.

    `tls`: TLS wherever dyno has it (the peer links: secure_server_option all; the client
    ports), with a test CA and one certificate per node made in DIR/tls (dyno.certs; made
    anew each time); ``tls="peers"``: the peer links only.

    `kw` goes to `plan()` (host, base_port, read_consistency, write_consistency, any config key,
    including `timeout`, the nodes' request timeout in ms; `start_timeout` is this call's deadline
    in seconds).
    `node_command(node)` replaces `python -m dyno start --config FILE` (e.g. to run Dynomite
    itself, or a stand-in in tests).  On any failure everything started is stopped and
    ClusterError carries the tail of the failing log.
    """
    dir = Path(dir).resolve()
    dir.mkdir(parents=True, exist_ok=True)
    previous = ClusterState.load(dir)
    if previous is not None:
        live = previous.live_processes()
        if live:
            names = ", ".join(f"{what} (pid {pid})" for what, pid in live)
            raise ClusterError(f"a cluster in {dir} is already running: {names}; run make cluster-stop")
    # Free ports are probed, then bound by other processes a moment later; if something else
    # took one in between, plan again on new ports (only when the ports were ours to choose).
    attempts = 3 if kw.get("base_port") is None else 1
    for attempt in range(1, attempts + 1):
        try:
            return _start(dir, dcs, racks, nodes_per_rack, start_timeout, redis_server, node_command, kw, tls)
        except ClusterError as e:
            if attempt == attempts or not any(s in str(e) for s in _PORT_TAKEN):
                raise
    raise AssertionError("unreachable")


_PORT_TAKEN = ("already in use", "EADDRINUSE", "Errno 98")  # redis-server's words, and dyno's (ListenError)


def _start(dir: Path, dcs: int, racks: int, nodes_per_rack: int, timeout: float, redis_server: str,
           node_command: Callable[[NodeState], list[str]] | None, kw: dict, tls: bool | str = False) -> ClusterState:  # fmt: skip
    try:
        plans = plan(dcs, racks, nodes_per_rack, **kw)
    except ValueError as e:
        raise ClusterError(str(e)) from None
    if tls:
        plans = with_tls(plans, dir / TLS_DIR, clients=tls != "peers")
    configs = write_configs(plans, dir)
    state = ClusterState(dir, [])
    for node_plan, config in zip(plans, configs):
        node = NodeState(
            plan=node_plan,
            config=config,
            log=dir / f"{node_plan.name}.log",
            redis_log=dir / f"{node_plan.name}-redis.log",
            redis_dir=dir / node_plan.name,
        )
        node.redis_argv = redis_command(node, redis_server)
        node.argv = (node_command or dyno_command)(node)
        state.nodes.append(node)
        for log in (node.log, node.redis_log):  # a new cluster starts new logs (restarts append)
            log.write_bytes(b"")
        # ... and empty Redis servers: not the data an earlier cluster's node saved when stopped
        (node.redis_dir / "dump.rdb").unlink(missing_ok=True)
    state.save()
    try:
        for node in state.nodes:
            state.start_redis(node.name, wait=False)
        state._wait_ready([(n, "redis") for n in state.nodes], timeout)
        for node in state.nodes:
            state.start_node(node.name, wait=False)
        state._wait_ready([(n, "dyno") for n in state.nodes], timeout, peers=True)
    except BaseException:
        state.stop()
        raise
    return state


def with_tls(plans: Sequence[NodePlan], directory: Path, clients: bool = True) -> list[NodePlan]:
    """Make a test CA and a certificate per node in `directory` (replacing what is there:
    the cluster's configs are new too), and configure every node's peer links and client
    port (unless not ``clients``) for TLS with its own. Keys given in the plan's config
    (secure_server_option rack, client_tls_* of --client-tls ...) still win."""
    from dyno import certs  # `cryptography` is loaded only when certificates are made

    try:
        certs.write_bundle(directory, len(plans), force=True)
    except (OSError, ValueError) as e:
        raise ClusterError(f"cannot make certificates in {directory}: {e}") from None
    out = []
    for index, node in enumerate(plans, 1):
        files = (
            ("secure_server_option", "all"),
            ("peer_tls_cert", str(directory / f"node{index}.pem")),
            ("peer_tls_key", str(directory / f"node{index}-key.pem")),
            ("peer_tls_ca", str(directory / "ca.pem")),
        )
        if clients:
            files += (("client_tls_cert", str(directory / f"node{index}.pem")),
                      ("client_tls_key", str(directory / f"node{index}-key.pem")))
        out.append(dataclasses.replace(node, config=files + node.config))
    return out


def down(dir: str | os.PathLike, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
    """Stop every process of the cluster in DIR, whoever started it (see
    ClusterState.processes); return how many were running.

    Idempotent: a cluster already down (or never started) gives 0.
    """
    return len(stop_all(dir, timeout))


def stop_all(dir: str | os.PathLike, timeout: float = DEFAULT_STOP_TIMEOUT) -> list[ClusterProcess]:
    """``down()``, returning the processes it stopped."""
    state = ClusterState.load(dir)
    if state is None:
        return []
    return state.stop_processes(state.processes(), timeout)


def load(dir: str | os.PathLike) -> ClusterState:
    """The cluster recorded in DIR; ClusterError when there is none."""
    state = ClusterState.load(dir)
    if state is None:
        raise ClusterError(f"no local cluster in {dir} (no {Path(dir) / STATE_FILE}); "
                           f"dyno cluster up --dir {dir} starts one")
    return state


def _node_of(state: ClusterState, name: str) -> None:
    try:
        state.node(name)
    except KeyError as e:
        raise ClusterError(e.args[0]) from None


def stop_one(dir: str | os.PathLike, name: str, keep_redis: bool = False,
             timeout: float = DEFAULT_STOP_TIMEOUT) -> list[ClusterProcess]:
    """Stop node ``name`` of the cluster in DIR (ClusterState.stop_one)."""
    state = load(dir)
    _node_of(state, name)
    return state.stop_one(name, keep_redis, timeout)


def start_one(dir: str | os.PathLike, name: str, timeout: float = DEFAULT_START_TIMEOUT) -> list[str]:
    """Start node ``name`` of the cluster in DIR (ClusterState.start_one)."""
    state = load(dir)
    _node_of(state, name)
    return state.start_one(name, timeout)


def restart_one(dir: str | os.PathLike, name: str, keep_redis: bool = False,
                stop_timeout: float = DEFAULT_STOP_TIMEOUT, start_timeout: float = DEFAULT_START_TIMEOUT,
                ) -> tuple[list[ClusterProcess], list[str]]:
    """Stop, then start node ``name`` of the cluster in DIR: (what was stopped, what started)."""
    state = load(dir)
    _node_of(state, name)
    stopped = state.stop_one(name, keep_redis, stop_timeout)
    return stopped, state.start_one(name, start_timeout)


def describe(state: ClusterState) -> str:
    """What `dyno cluster up` prints: every node, how to reach it, how to stop the cluster."""
    return state.describe()


def status(dir: str | os.PathLike) -> list[dict]:
    """One dict per recorded node: name, dc, rack, listen, redis, and whether each process runs
    and answers PING.  Empty if DIR has no cluster."""
    state = ClusterState.load(dir)
    if state is None:
        return []
    return [
        {
            "name": n.name,
            "dc": n.dc,
            "rack": n.rack,
            "listen": n.plan.listen,
            "redis": n.plan.redis,
            "dyno_running": n.node_alive,
            "redis_running": n.redis_alive,
            "answers_ping": ping(n.host, n.port, tls=n.probe_tls()),
        }
        for n in state.nodes
    ]


# --------------------------------------------------------------------------- growing and shrinking

# Keys of a node's config that are its own; add_node takes every other key from a node of
# the cluster, so the new node is configured as the others are.
_OWN_KEYS = ("datacenter", "rack", "listen", "dyn_listen", "dyn_seeds", "tokens", "servers", "stats_listen",
             "hints_dir", "auto_bootstrap", "replace_node")


def _read_config(path: Path) -> dict:
    try:
        document = yaml.safe_load(path.read_text())
        return dict(next(iter(document.values())))
    except (OSError, yaml.YAMLError, AttributeError, StopIteration, TypeError, ValueError) as e:
        raise ClusterError(f"{path}: unreadable node config ({e})") from None


def _set_seeds(node: NodeState, seeds: Sequence[str]) -> None:
    """Rewrite ``node``'s config with ``seeds`` as its dyn_seeds (a restart then knows
    the nodes added since), keeping its header."""
    text = node.config.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    conf = _read_config(node.config)
    conf["dyn_seeds"] = list(seeds)
    node.config.write_text(header + yaml.safe_dump({"dyn_o_mite": conf}, sort_keys=False,
                                                   default_flow_style=False))


def add_node(dir: str | os.PathLike, rack: str, dc: str | None = None, *, replace: str | None = None,
             timeout: float = DEFAULT_START_TIMEOUT, redis_server: str = "redis-server",
             node_command: Callable[[NodeState], list[str]] | None = None) -> NodeState:
    """Add a node (and its Redis) to the running local cluster in DIR, in ``rack``: it
    joins with auto_bootstrap (tokens splitting the rack's widest range, its ranges
    streamed in), or with ``replace`` (a node's name, node3) takes that node's place
    and data. Returns once it answers PING; its join goes on (dyno status, /movement)."""
    dir = Path(dir)
    state = ClusterState.load(dir)
    if state is None or not state.nodes:
        raise ClusterError(f"no local cluster in {dir}; start one with: dyno cluster up --dir {dir}")
    old = None
    if replace is not None:
        try:
            old = state.node(replace)
        except KeyError as e:
            raise ClusterError(str(e.args[0])) from None
        if old.node_alive:
            raise ClusterError(f"{replace} is running; a replacement takes the place of a dead node "
                               f"(stop it first: dyno cluster stop --dir {dir} --node {replace})")
        rack, dc = old.rack, old.dc
    dcs = sorted({n.dc for n in state.nodes if n.rack == rack})
    if dc is None:
        if len(dcs) != 1:
            raise ClusterError(f"rack {rack!r} is in {', '.join(dcs) if dcs else 'no datacenter'} of {dir}; "
                               f"give --dc" + ("" if dcs else f" (racks: {', '.join(sorted({n.rack for n in state.nodes}))})"))
        dc = dcs[0]
    template = _read_config(state.nodes[0].config)
    if any(key in template for key in ("peer_tls_cert", "client_tls_cert")):
        raise ClusterError(f"{dir} is a TLS cluster: add-node does not make certificates for a new node yet")
    taken = {int(n.name[4:]) for n in state.nodes if n.name.startswith("node") and n.name[4:].isdigit()}
    name = f"node{max(taken, default=0) + 1}"
    host = state.nodes[0].host
    port, dyn_port, stats_port, redis_port = free_ports(4, host)
    others = [n for n in state.nodes if n is not old]
    # The new node streams its ranges in as one process (dyno.config refuses workers > 1
    # with auto_bootstrap or replace_node); the cluster's other settings are its too.
    extra = tuple((k, v) for k, v in template.items() if k not in _OWN_KEYS and k != "workers")
    extra += (("replace_node", old.plan.dyn_listen),) if old is not None else (("auto_bootstrap", True),)
    seeds = tuple(n.plan.seed for n in state.nodes)   # the replaced node too: its tokens are taken
    node_plan = NodePlan(name=name, dc=dc, rack=rack, host=host, port=port, dyn_port=dyn_port,
                         stats_port=stats_port, redis_port=redis_port, tokens=(0,), seeds=seeds, config=extra)
    path = dir / f"{name}.yml"
    conf = node_plan.config_dict()
    del conf["tokens"]  # chosen by auto_bootstrap or replace_node (dyno.config)
    conf["hints_dir"] = str((dir / name / "hints").resolve())
    path.write_text(f"# {name} ({dc}/{rack}) added to a local dyno cluster"
                    + (f" to replace {replace}" if replace else "") + ".\n"
                    + yaml.safe_dump({"dyn_o_mite": conf}, sort_keys=False, default_flow_style=False))
    from dyno.config import ConfigError, load_config
    try:
        tokens = load_config(path).tokens
    except ConfigError as e:
        raise ClusterError(str(e)) from None
    node_plan = dataclasses.replace(node_plan, tokens=tuple(tokens))
    node = NodeState(plan=node_plan, config=path, log=dir / f"{name}.log", redis_log=dir / f"{name}-redis.log",
                     redis_dir=dir / name)
    node.redis_argv = redis_command(node, redis_server)
    node.argv = (node_command or dyno_command)(node)
    for log in (node.log, node.redis_log):
        log.write_bytes(b"")
    state.nodes.append(node)
    if old is not None:
        state.nodes.remove(old)
    state.save()
    for other in others:  # a restart of another node then knows the new one
        _set_seeds(other, [n.plan.seed for n in state.nodes if n is not other])
    state.start_redis(name, timeout=timeout)
    state.start_node(name, timeout=timeout)
    return node


def remove_node(dir: str | os.PathLike, name: str, *, timeout: float = 3600.0,
                progress: Callable[[dict], None] | None = None) -> None:
    """Decommission ``name`` of the local cluster in DIR: its ranges streamed to their
    next owners (``progress`` gets each status polled), it leaves the ring, then it
    and its Redis are stopped and it is dropped from DIR/cluster.json."""
    from dyno import status as view
    state = ClusterState.load(dir)
    if state is None:
        raise ClusterError(f"no local cluster in {dir}")
    try:
        node = state.node(name)
    except KeyError as e:
        raise ClusterError(str(e.args[0])) from None
    if not node.node_alive:
        raise ClusterError(f"{name} is not running; start it to decommission it (its data is streamed from it)")
    address = f"{node.host}:{node.stats_port}"
    try:
        view.decommission(address, progress=progress, timeout=timeout)
    except view.StatusError as e:
        raise ClusterError(f"{name}: {e}") from None
    state.stop_node(name)
    state.stop_redis(name)
    state.nodes.remove(node)
    state.save()
    for other in state.nodes:
        _set_seeds(other, [n.plan.seed for n in state.nodes if n is not other])
