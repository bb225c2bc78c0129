"""The process harness every integration test uses: real redis-server and dyno processes.

What it owns:
* starting processes on free ports (`RedisServer`, `start_cluster`, `Cluster`/`NodeHandle`,
  the latter two on top of dyno.localcluster, the same code `make cluster` runs);
* waiting for conditions with a deadline (`wait_for`) — never a sleep as synchronisation;
* never leaving a process behind: everything started here is recorded in `TRACKER`, which
  conftest.py empties at the end of the session (and atexit), even after a crashed test.

Fixtures built on this module live in conftest.py: `redis_server`, `dyno_node`,
`cluster_factory`.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import redis

from dyno import localcluster

HOST = "127.0.0.1"
# DYNO_TEST_WORKERS=2: every cluster the harness starts runs its nodes with `workers: 2`.
WORKERS = int(os.environ["DYNO_TEST_WORKERS"]) if os.environ.get("DYNO_TEST_WORKERS") else None
T = TypeVar("T")

# redis-py >= 8 opens with HELLO 3 (RESP3) unless told otherwise. The harness's clients ask
# for RESP2, the protocol most tests check bytes of; tests/test_resp3.py covers RESP3.
CLIENT_DEFAULTS = {"socket_timeout": 10, "protocol": 2}


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now."""
    return localcluster.free_ports(1, host)[0]


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.01,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Exceptions of the `ignore` types count as "not yet" (e.g. ConnectionError while a node
    starts). On timeout, raise AssertionError naming `what` (and the last ignored error).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ignore as e:
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    return localcluster.ping(host, port, timeout)


def dyno_missing() -> str | None:
    """Why a dyno node cannot be started yet (None when it can)."""
    for module in ("dyno.node", "dyno.cli"):
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} does not exist yet: no dyno node to start"
        except ImportError as e:
            return f"{module} cannot be imported: {e}"
    return None


# --------------------------------------------------------------------------- safety net


class ProcessTracker:
    """Every process and cluster directory the harness started, to stop whatever is left."""

    def __init__(self) -> None:
        self.pids: dict[int, tuple[int | None, str]] = {}
        self.cluster_dirs: set[Path] = set()

    def track(self, pid: int, what: str) -> None:
        self.pids[pid] = (localcluster.process_start_time(pid), what)

    def track_cluster(self, dir: Path) -> None:
        self.cluster_dirs.add(Path(dir))

    def leftovers(self) -> list[str]:
        out = [f"{what} (pid {pid})" for pid, (start, what) in self.pids.items() if localcluster.pid_alive(pid, start)]
        for dir in self.cluster_dirs:
            state = localcluster.ClusterState.load(dir)
            if state is not None:
                out += [f"{what} in {dir} (pid {pid})" for what, pid in state.live_processes()]
        return out

    def stop_all(self) -> list[str]:
        """Stop everything still running; return what had been left running."""
        left = self.leftovers()
        for dir in list(self.cluster_dirs):
            with contextlib.suppress(Exception):
                localcluster.down(dir, timeout=5.0)
        localcluster.stop_pids([(pid, start) for pid, (start, _) in self.pids.items()], timeout=5.0)
        self.pids.clear()
        self.cluster_dirs.clear()
        return left


TRACKER = ProcessTracker()
atexit.register(TRACKER.stop_all)


# --------------------------------------------------------------------------- plain Redis


class RedisServer:
    """A plain redis-server on a free port, in its own directory, no persistence."""

    def __init__(self, dir: str | os.PathLike, port: int | None = None, host: str = HOST, args: tuple[str, ...] = ()):
        self.dir = Path(dir)
        self.host = host
        self.port = port or free_port(host)
        self.args = tuple(args)
        self.log = self.dir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self._clients: list[redis.Redis] = []

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.alive:
            raise RuntimeError(f"redis-server on {self.port} already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", self.host, "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no", *self.args]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        TRACKER.track(self.proc.pid, f"redis-server :{self.port}")
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"redis-server on {self.port} exited with {proc.returncode}:\n{localcluster.log_tail(self.log)}"
                )
            return ping(self.host, self.port)

        wait_for(ready, timeout, f"redis-server to answer PING on {self.port}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (then SIGKILL after `timeout`) and wait until it is gone."""
        for c in self._clients:
            c.close()
        self._clients.clear()
        if self.proc is not None and self.proc.poll() is None:
            localcluster.stop_pids([(self.proc.pid, None)], timeout)
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the server dies without a chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def client(self, **kw) -> redis.Redis:
        c = redis.Redis(self.host, self.port, **{**CLIENT_DEFAULTS, **kw})
        self._clients.append(c)
        return c

    def log_tail(self, lines: int = 30) -> str:
        return localcluster.log_tail(self.log, lines)

    def __enter__(self) -> RedisServer:
        return self.start() if not self.alive else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RedisServer {self.host}:{self.port} {'up' if self.alive else 'down'}>"


# --------------------------------------------------------------------------- dyno clusters


class NodeHandle:
    """One node of a local cluster (its dyno process and its Redis), for tests to poke."""

    def __init__(self, cluster: Cluster, name: str):
        self.cluster = cluster
        self.name = name

    @property
    def state(self) -> localcluster.NodeState:
        return self.cluster.state.node(self.name)

    host = property(lambda self: self.state.host)
    port = property(lambda self: self.state.port)
    dyn_port = property(lambda self: self.state.dyn_port)
    stats_port = property(lambda self: self.state.stats_port)
    redis_port = property(lambda self: self.state.redis_port)
    dc = property(lambda self: self.state.dc)
    rack = property(lambda self: self.state.rack)
    tokens = property(lambda self: self.state.tokens)
    config = property(lambda self: self.state.config)
    log = property(lambda self: self.state.log)
    addr = property(lambda self: (self.host, self.port))
    redis_addr = property(lambda self: (self.host, self.redis_port))
    alive = property(lambda self: self.state.node_alive)
    redis_alive = property(lambda self: self.state.redis_alive)

    # the dyno process
    def stop(self) -> None:
        """Clean stop (SIGTERM), waits until the process is gone."""
        self.cluster.state.stop_node(self.name)

    def kill(self) -> None:
        """Crash (SIGKILL), waits until the process is gone."""
        self.cluster.state.stop_node(self.name, signal.SIGKILL)

    def start(self) -> None:
        """Start the dyno process again (same config); returns when it answers PING."""
        self.cluster.state.start_node(self.name)
        TRACKER.track(self.state.pid, f"{self.name} dyno")

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the node hangs (connections stay open, nothing is answered)."""
        self.cluster.state.stop_node(self.name, signal.SIGSTOP)

    def resume(self) -> None:
        self.cluster.state.stop_node(self.name, signal.SIGCONT)

    # its Redis
    def stop_redis(self) -> None:
        self.cluster.state.stop_redis(self.name)

    def kill_redis(self) -> None:
        self.cluster.state.stop_redis(self.name, signal.SIGKILL)

    def start_redis(self) -> None:
        self.cluster.state.start_redis(self.name)
        TRACKER.track(self.state.redis_pid, f"{self.name} redis-server")

    def pause_redis(self) -> None:
        """SIGSTOP the node's Redis: it hangs without closing connections."""
        self.cluster.state.stop_redis(self.name, signal.SIGSTOP)

    def resume_redis(self) -> None:
        self.cluster.state.stop_redis(self.name, signal.SIGCONT)

    def restart_redis(self) -> None:
        """Stop the node's Redis (SIGTERM) and start an empty one on the same port."""
        self.stop_redis()
        self.start_redis()

    # clients
    def client(self, **kw) -> redis.Redis:
        """A redis-py client talking to the dyno node."""
        return self.cluster._client(self.host, self.port, **kw)

    def redis_client(self, **kw) -> redis.Redis:
        """A redis-py client talking to the node's own Redis directly (behind dyno's back)."""
        return self.cluster._client(self.host, self.redis_port, **kw)

    def log_tail(self, lines: int = 30) -> str:
        return localcluster.log_tail(self.log, lines)

    def __repr__(self) -> str:
        return f"<NodeHandle {self.name} {self.dc}/{self.rack} :{self.port} redis :{self.redis_port}>"


class Cluster:
    """A running local cluster (dyno.localcluster.up) with handles on its nodes."""

    def __init__(self, state: localcluster.ClusterState):
        self.state = state
        self.dir = state.dir
        self.nodes = [NodeHandle(self, n.name) for n in state.nodes]
        self._clients: list[redis.Redis] = []

    def node(self, name: str) -> NodeHandle:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def __getitem__(self, index: int) -> NodeHandle:
        return self.nodes[index]

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def addrs(self) -> list[tuple[str, int]]:
        """Client (host, port) of every node, in plan order."""
        return [n.addr for n in self.nodes]

    @property
    def redis_addrs(self) -> list[tuple[str, int]]:
        """(host, port) of every node's own Redis, in plan order."""
        return [n.redis_addr for n in self.nodes]

    def _client(self, host: str, port: int, **kw) -> redis.Redis:
        c = redis.Redis(host, port, **{**CLIENT_DEFAULTS, **kw})
        self._clients.append(c)
        return c

    def logs(self, lines: int = 30) -> str:
        parts = []
        for n in self.state.nodes:
            parts.append(f"--- {n.log} ---\n{localcluster.log_tail(n.log, lines)}")
            parts.append(f"--- {n.redis_log} ---\n{localcluster.log_tail(n.redis_log, lines)}")
        return "\n".join(parts)

    def down(self) -> int:
        for c in self._clients:
            c.close()
        self._clients.clear()
        return localcluster.down(self.dir)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"<Cluster {self.dir} {len(self.nodes)} nodes>"


def start_cluster(
    dir: str | os.PathLike, dcs: int = 1, racks: int = 3, nodes_per_rack: int = 1, **kw
) -> Cluster:
    """localcluster.up() in `dir`, registered with the safety net (use as a context manager).
    DYNO_TEST_WORKERS=N in the environment runs every node with `workers: N` (unless the
    test gives `workers` itself)."""
    if WORKERS is not None:
        kw.setdefault("workers", WORKERS)
    TRACKER.track_cluster(Path(dir).resolve())
    return Cluster(localcluster.up(dir, dcs, racks, nodes_per_rack, **kw))


@contextlib.contextmanager
def running_cluster(dir: str | os.PathLike, *args, **kw) -> Iterator[Cluster]:
    with start_cluster(dir, *args, **kw) as cluster:
        yield cluster


def standin_command(node: localcluster.NodeState) -> list[str]:
    """A plain redis-server listening on the node's client port: a stand-in for a dyno node
    (a "cluster" of independent Redis servers), to exercise the harness without dyno."""
    return ["redis-server", "--port", str(node.port), "--bind", node.host, "--save", "", "--appendonly", "no",
            "--dir", str(node.redis_dir), "--daemonize", "no"]  # fmt: skip
