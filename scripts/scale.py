#!/usr/bin/env python3
"""Does the work per request stay flat as a cluster grows? 3, 6 and 12 nodes under one load.

A measurement, never a test: it prints a table and exits 1 only when something could not
run. (tests/test_scale_script.py runs it at a tiny size and checks the output is sane.)

What it starts, on free loopback ports, in a temporary directory: one local cluster per size
(dyno.localcluster.up, what `dyno cluster up` runs), 1 datacenter x 3 racks x K nodes for
K in --sizes (default 1, 2, 4: 3, 6 and 12 nodes), DC_ONE, hash tags off, every rack with
the tokens `dyno tokens --nodes-per-rack K` gives (checked against the plan). All sizes are
up for the whole run and measured in turn, interleaved by round (the order rotates), so a
slow minute of the machine hits every size alike. Everything is stopped at the end, also on
error, Ctrl-C or SIGTERM.

The load, the same at every size: for each pipeline depth P in --pipelines (1, 16) and each
test (SET, then GET), `redis-benchmark -t TEST -r 100000 -P P` against every node's client
port at once, one process per node, the 50 clients (-c) and the requests (-n) split evenly
between them, so every node coordinates the same share whatever the size. (With
--clients-per-node N instead: N clients on every node and the requests grown with the
nodes, so each node sees the same load at every size.) With --rate R instead: R requests a
second in all, request/response, from two paced connections per node (a Python client, one
thread per connection), a load no size saturates, so every size pays each request's
wake-ups alike; the table adds the CPU per request above the nodes' idle cost. Before each
round's SETs the nodes' Redis servers are flushed. With --cluster-clients the clients are
cluster-mode clients (as redis-py's RedisCluster, ioredis's Cluster, Jedis or Lettuce): the
clusters run `hash: slot`, redis-benchmark runs with --cluster (one per rack, seeded at a
node of that rack, the clients and requests split between the racks; plain with one node
per rack, whose only master it would be), and the paced load
asks CLUSTER SLOTS; so each request goes to its key's owner in the client's rack and takes no
hop inside the rack, as with Dynomite's token-aware clients.

What it measures per (size, P, test), the median over rounds:
- ops/s: all requests over the wall time of the phase (the slowest redis-benchmark);
- CPU per request: every dyno process's CPU time over the phase (the sum over its threads of
  /proc/PID/task/TID/schedstat, nanoseconds) divided by the requests the nodes counted as
  coordinated (admin /info client_requests, deltas); "node" is the lowest..highest of each
  node's CPU over the requests it coordinated itself (work it did for others included);
  Redis's CPU per request beside it;
- peer commands per request: the commands the nodes sent over peer links (admin /info, every
  peer link's `sent`) over the requests they coordinated: a GET owned by a rack-mate costs
  one, a write one per remote replica plus what carries its version;
- wakeups per request: the dyno processes' voluntary context switches (each is one time the
  event loop found nothing to do and slept) over the requests: how little each turn of the
  loop carried;
- coordinated: lowest..highest of the requests each node coordinated;
- keys per node (after a round's SETs; the round with the median spread): each node's
  DBSIZE, and the largest distance from its rack's mean, in percent;
- idle CPU: what all the dyno processes of a size use with no client, ms per second,
  measured once before the first round (it is in every phase's CPU too).

With --count-calls (paced runs only) every dyno process counts the Python function calls
it makes (scripts/callcount/sitecustomize.py: a profile hook; every call of Python code or
of a built-in, all threads), and the table adds the calls per request above idle. A count
does not depend on how crowded the machine is, so it shows the work a node does for a
request apart from the machine's caches and scheduling; the CPU columns of such a run
include the counting's own cost (about 2x) and compare only within the run. The JSON
output keeps each phase's calls per request by function.

    .venv/bin/python scripts/scale.py                       # 3, 6, 12 nodes, 3 rounds (4 min here)
    .venv/bin/python scripts/scale.py --sizes 1 --rounds 1 --requests 3000 --json out.json
    .venv/bin/python scripts/scale.py --rate 2000 --seconds 8   # paced: no size saturated
    .venv/bin/python scripts/scale.py --cluster-clients         # cluster-mode clients: no hop
    .venv/bin/python scripts/scale.py --rate 2000 --cluster-clients --controls --count-calls
"""

from __future__ import annotations

import argparse
import binascii
import contextlib
import json
import os
import random
import socket
import threading
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyno import localcluster  # noqa: E402
from dyno.status import tokens_plan  # noqa: E402

RACKS = 3
CLIENTS = 50
KEYSPACE = 100_000
TESTS = ("SET", "GET")


class ScaleError(Exception):
    """Something could not run; the message says what."""


# --------------------------------------------------------------------------- pure parts


def split(total: int, parts: int) -> list[int]:
    """`total` in `parts` whole shares differing by at most one, larger first."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def spread(values: Sequence[float]) -> float:
    """Largest distance of a value from the mean, as a fraction of the mean (0 if empty)."""
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    return max(abs(v - mean) for v in values) / mean if mean else 0.0


def keys_spread(keys: dict[str, int], racks: dict[str, str]) -> float:
    """The largest `spread` of keys per node within a rack (every rack holds a full copy)."""
    by_rack: dict[str, list[int]] = {}
    for name, count in keys.items():
        by_rack.setdefault(racks[name], []).append(count)
    return max(spread(counts) for counts in by_rack.values())


def phase_figures(requests: dict[str, int], sent: dict[str, int], cpu_ns: dict[str, int],
                  redis_cpu_ns: int, seconds: float, wakeups: int = 0) -> dict:
    """One phase's figures from the per-node deltas (requests coordinated, requests sent to
    peers, CPU nanoseconds), the Redis servers' CPU and the dyno processes' wakeups."""
    total = sum(requests.values())
    if total <= 0:
        raise ScaleError("the nodes counted no requests in a phase")
    per_node = [cpu_ns[n] / requests[n] / 1000 for n in requests if requests[n]]
    return {
        "requests": total,
        "ops_per_sec": total / seconds if seconds > 0 else 0.0,
        "cpu_us_per_request": sum(cpu_ns.values()) / total / 1000,
        "node_cpu_us_min": min(per_node),
        "node_cpu_us_max": max(per_node),
        "redis_cpu_us_per_request": redis_cpu_ns / total / 1000,
        "peer_commands_per_request": sum(sent.values()) / total,
        "wakeups_per_request": wakeups / total,
        "coordinated_min": min(requests.values()),
        "coordinated_max": max(requests.values()),
    }


GC = "<gc>:"  # scripts/callcount's keys for the garbage collector's runs


def calls_figures(calls: dict[str, int], idle_per_second: dict[str, float], seconds: float,
                  requests: int, least: float = 0.05) -> dict:
    """Calls per request of a phase (``calls`` by function over ``seconds``), all of them
    and above what the processes call idle (``idle_per_second``); by function, above
    idle, those of ``least`` calls per request or more either way; and the garbage
    collector's microseconds and runs per request, above idle."""
    if requests <= 0:
        raise ScaleError("the nodes counted no requests in a phase")
    above = {f: (n - idle_per_second.get(f, 0.0) * seconds) / requests for f, n in calls.items()}
    for f, rate in idle_per_second.items():
        above.setdefault(f, -rate * seconds / requests)
    gc = {f: v for f, v in above.items() if f.startswith(GC)}
    by_function = {f: v for f, v in above.items() if not f.startswith(GC)}
    return {
        "calls_per_request": sum(n for f, n in calls.items() if not f.startswith(GC)) / requests,
        "calls_above_idle": sum(by_function.values()),
        "calls_by_function": {f: round(v, 3) for f, v in sorted(by_function.items(), key=lambda kv: -abs(kv[1]))
                              if abs(v) >= least},
        # the collector's runs (Python's gc, which no call shows), above idle
        "gc_us_above_idle": sum(v for f, v in gc.items() if f.endswith(" microseconds")),
        "gc_above_idle": {f[len(GC):]: round(v, 4) for f, v in sorted(gc.items())},
    }


def request_bytes(test: str, key: bytes) -> bytes:
    """One RESP request of the paced load: ``SET key xxx`` or ``GET key``."""
    if test == "SET":
        return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$3\r\nxxx\r\n" % (len(key), key)
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)


def due_times(rate: float, seconds: float) -> list[float]:
    """When each request of a paced connection is due, from its start: ``rate`` a second,
    evenly, for ``seconds``."""
    return [i / rate for i in range(int(rate * seconds))]


def summarise(phases: list[dict]) -> list[dict]:
    """Medians over rounds per (nodes, control, pipeline, test), by pipeline, test, size."""
    groups: dict[tuple, list[dict]] = {}
    for phase in phases:
        groups.setdefault((phase["nodes"], phase.get("control", False), phase["pipeline"], phase["test"]),
                          []).append(phase)
    rows = []
    for (nodes, control, pipeline, test), runs in sorted(
            groups.items(), key=lambda kv: (kv[0][2], TESTS.index(kv[0][3]), kv[0][0], kv[0][1])):
        row = {"nodes": nodes, "pipeline": pipeline, "test": test, "rounds": len(runs)}
        if control:
            row["control"] = True
        for field, first in runs[0]["figures"].items():
            if isinstance(first, dict):  # by function: each function's median
                names = {name for r in runs for name in r["figures"][field]}
                row[field] = {name: statistics.median(r["figures"][field].get(name, 0.0) for r in runs)
                              for name in names}
            else:
                row[field] = statistics.median(r["figures"][field] for r in runs)
        rows.append(row)
    return rows


def flatness(rows: list[dict]) -> list[dict]:
    """CPU per request of each size over the smallest size's, per (pipeline, test)."""
    out = []
    smallest = {}
    for row in rows:
        key = (row["pipeline"], row["test"])
        smallest.setdefault(key, row)
        base = smallest[key]
        out.append({"pipeline": row["pipeline"], "test": row["test"], "nodes": row["nodes"],
                    "control": row.get("control", False),
                    "ratio": row["cpu_us_per_request"] / base["cpu_us_per_request"]})
    return out


def size_label(row: dict) -> str:
    """A row's size: its nodes, or for a control the separate 3-node clusters it is."""
    if row.get("control"):
        return f"{row['nodes']} as {row['nodes'] // RACKS} separate clusters of {RACKS}"
    return str(row["nodes"])


def render(rows: list[dict], keys: dict[int, dict], command: str) -> str:
    """The markdown table docs/performance.md shows, and the keys per node."""
    ratios = {(r["pipeline"], r["test"], r["nodes"], r["control"]): r["ratio"] for r in flatness(rows)}
    lines = [
        f"`{command}`",
        "",
        "| nodes | P | test | ops/s | all dyno µs/req | vs smallest | node µs/req (min..max) "
        "| Redis µs/req | peer cmds/req | wakeups/req | coordinated per node (min..max) |",
    ]
    if rows and "cpu_us_above_idle" in rows[0]:
        lines[2] = lines[2].replace("| vs smallest |", "| vs smallest | above idle µs/req | vs smallest |")
        smallest: dict = {}
        for r in rows:
            base = smallest.setdefault((r["pipeline"], r["test"]), r)
            r["_above"] = (f" | {r['cpu_us_above_idle']:.2f} | "
                           f"{r['cpu_us_above_idle'] / base['cpu_us_above_idle']:.2f}")
            if "calls_above_idle" in r:
                calls = r["calls_above_idle"]
                r["_above"] += f" | {calls:.1f} | {calls / base['calls_above_idle']:.2f}"
        if "calls_above_idle" in rows[0]:
            lines[2] = lines[2].replace("| above idle µs/req | vs smallest |",
                                        "| above idle µs/req | vs smallest | calls/req above idle | vs smallest |")
    # text columns to the left, figures to the right
    lines.append("|" + "|".join("---" if title.strip() == "test" or "(min..max)" in title else "---:"
                                for title in lines[2].strip("|").split("|")) + "|")
    for r in rows:
        lines.append(
            f"| {size_label(r)} | {r['pipeline']} | {r['test']} | {r['ops_per_sec']:,.0f} "
            f"| {r['cpu_us_per_request']:.2f} | {ratios[(r['pipeline'], r['test'], r['nodes'], r.get('control', False))]:.2f}"
            f"{r.pop('_above', '')} "
            f"| {r['node_cpu_us_min']:.2f}..{r['node_cpu_us_max']:.2f} | {r['redis_cpu_us_per_request']:.2f} "
            f"| {r['peer_commands_per_request']:.2f} | {r['wakeups_per_request']:.2f} | {r['coordinated_min']:,.0f}..{r['coordinated_max']:,.0f} |"
        )
    lines += ["", "| nodes | keys per node (rack1 / rack2 / rack3) | largest distance from the rack's mean "
              "| idle dyno CPU, ms/s |", "|---:|---|---:|---:|"]
    for nodes, entry in sorted(keys.items()):
        by_rack: dict[str, list[str]] = {}
        for name, count in entry["keys"].items():
            by_rack.setdefault(entry["racks"][name], []).append(f"{count:,}")
        racks = " / ".join(", ".join(counts) for _, counts in sorted(by_rack.items()))
        idle = entry.get("idle_cpu_ms_per_s")
        lines.append(f"| {nodes} | {racks} | {entry['spread'] * 100:.1f}% | {'?' if idle is None else f'{idle:.0f}'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the shell


def cpu_ns(pid: int) -> int:
    """Nanoseconds `pid` has run, all its live threads together."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        raise ScaleError(f"pid {pid} is not running any more") from None
    for tid in tasks:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def wakeups(pid: int) -> int:
    """Times `pid` went to sleep waiting (voluntary context switches), all its live threads."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


CALL_COUNTER = Path(__file__).resolve().parent / "callcount"


@contextlib.contextmanager
def counting_calls(directory: Path):
    """While open, the dyno processes started count their calls (CALL_COUNTER's
    sitecustomize, found first on their PYTHONPATH) and write them into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    saved = {name: os.environ.get(name) for name in ("DYNO_CALL_COUNTS", "PYTHONPATH")}
    os.environ["DYNO_CALL_COUNTS"] = str(directory)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(CALL_COUNTER), saved["PYTHONPATH"]) if p)
    try:
        yield directory
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def call_counts(nodes: Sequence[localcluster.NodeState], timeout: float = 20.0) -> dict[str, int]:
    """Every node's calls so far by function, summed over the nodes (each writes its
    counts on SIGUSR2; see counting_calls)."""
    directory = Path(os.environ["DYNO_CALL_COUNTS"])
    paths = {n.pid: directory / f"{n.pid}.json" for n in nodes}
    for pid, path in paths.items():
        path.unlink(missing_ok=True)
        os.kill(pid, signal.SIGUSR2)
    total: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    for pid, path in paths.items():
        while not path.exists():
            if time.monotonic() > deadline:
                raise ScaleError(f"pid {pid} wrote no call counts within {timeout:.0f} s")
            time.sleep(0.01)  # waiting for the file, with a deadline
        for function, count in json.loads(path.read_text()).items():
            total[function] = total.get(function, 0) + count
    return total


def calls_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The calls made between two ``call_counts``, by function (none left out)."""
    return {f: n - before.get(f, 0) for f, n in after.items() if n != before.get(f, 0)}


def admin_info(node: localcluster.NodeState) -> dict:
    with urllib.request.urlopen(f"http://{node.host}:{node.stats_port}/info", timeout=10) as reply:
        return json.loads(reply.read())


def counters(node: localcluster.NodeState) -> tuple[int, int]:
    """(client requests coordinated, requests sent to peers) so far."""
    info = admin_info(node)
    pool = next(v for v in info.values() if isinstance(v, dict) and "client_requests" in v)
    return pool["client_requests"], sum(peer["sent"] for peer in pool["peers"].values())


def redis_call(host: str, port: int, *args: str) -> str:
    result = subprocess.run(["redis-cli", "-h", host, "-p", str(port), *args],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise ScaleError(f"redis-cli -p {port} {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def slot_owners(slots: list) -> list[tuple[str, int]]:
    """Each of the 16384 slots' master (host, port), from a CLUSTER SLOTS answer."""
    owners: list[tuple[str, int] | None] = [None] * 16384
    for first, last, (host, port, *_), *_replicas in slots:
        owners[first:last + 1] = [(host.decode(), port)] * (last - first + 1)
    if None in owners:
        raise ScaleError(f"CLUSTER SLOTS left slot {owners.index(None)} without a node")
    return owners  # type: ignore[return-value]


def key_slot(key: bytes) -> int:
    """Redis Cluster's slot of a key without a hash tag (the paced load's keys have none)."""
    return binascii.crc_hqx(key, 0) % 16384


def _ask(sock: socket.socket, request: bytes, reader) -> object:
    sock.sendall(request)
    reply = False
    while reply is False:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the node closed the connection")
        reader.feed(data)
        reply = reader.gets()
    return reply


def _paced_client(host: str, port: int, test: str, rate: float, seconds: float, seed: int,
                  failures: list[str], cluster: bool = False) -> None:
    """One connection sending ``test`` requests on schedule (``due_times``), each waiting
    for its reply; a failure is appended to ``failures``. ``cluster``: as a cluster-mode
    client, each request goes to the node CLUSTER SLOTS of ``host:port`` names for its
    key (one connection to each)."""
    import hiredis

    rng = random.Random(seed)
    sockets: dict[tuple[str, int], socket.socket] = {}
    try:
        reader = hiredis.Reader()
        first = sockets[host, port] = socket.create_connection((host, port), timeout=10)
        owners = None
        if cluster:
            owners = slot_owners(_ask(first, b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n", reader))
            for address in set(owners) - set(sockets):
                sockets[address] = socket.create_connection(address, timeout=10)
        start = time.monotonic()
        for due in due_times(rate, seconds):
            wait = start + due - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # pacing the load, not a synchronisation
            key = b"key:%012d" % rng.randrange(KEYSPACE)
            sock = first if owners is None else sockets[owners[key_slot(key)]]
            reply = _ask(sock, request_bytes(test, key), reader)
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"{test} answered {reply}")
    except Exception as e:  # noqa: BLE001 - reported by the phase, which raises ScaleError
        failures.append(f"{host}:{port}: {e}")
    finally:
        for sock in sockets.values():
            sock.close()


class Size:
    """One running cluster of 3 racks x `per_rack` nodes."""

    control = False

    def __init__(self, root: Path, per_rack: int, cluster_clients: bool = False, name: str | None = None):
        self.per_rack = per_rack
        self.cluster_clients = cluster_clients
        self.dir = root / (name or f"cluster-{RACKS * per_rack}")
        self.state = localcluster.up(self.dir, 1, RACKS, per_rack, start_timeout=120,
                                     **({"hash": "slot"} if cluster_clients else {}))
        if cluster_clients:
            self._wait_for_slot_maps()
        planned = sorted({n.tokens[0] for n in self.state.nodes})
        wanted = tokens_plan(per_rack)["tokens"]  # what `dyno tokens --nodes-per-rack K` prints
        if planned != sorted(wanted):
            raise ScaleError(f"the cluster's tokens {planned} are not `dyno tokens`' {wanted}")

    @property
    def nodes(self) -> list[localcluster.NodeState]:
        return self.state.nodes

    def _wait_for_slot_maps(self, timeout: float = 60.0) -> None:
        """Until every node's CLUSTER SLOTS names one node of its own rack per slot range
        and every rack-mate as a master (gossip told every client port)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            mates = {(n.host, n.port) for n in self.nodes if n.rack == node.rack}
            while True:
                answer = redis_call(node.host, node.port, "CLUSTER", "NODES")
                masters = {(a.split(":")[0], int(a.split(":")[1].split("@")[0]))
                           for _, a, flags, *_ in (line.split() for line in answer.splitlines()) if "master" in flags}
                if masters == mates:
                    break
                if time.monotonic() > deadline:
                    raise ScaleError(f"{node.name}: CLUSTER NODES names masters {sorted(masters)}, not its rack's nodes")
                time.sleep(0.2)  # polling gossip's progress, with a deadline

    def flush(self) -> None:
        for node in self.nodes:
            redis_call(node.host, node.redis_port, "FLUSHALL")

    def keys(self) -> dict[str, int]:
        return {n.name: int(redis_call(n.host, n.redis_port, "DBSIZE")) for n in self.nodes}

    def phase(self, test: str, pipeline: int, requests: int, clients: int = CLIENTS) -> dict:
        """Run one load phase on every node at once, `clients` connections in all; return its figures."""
        nodes = self.nodes
        clients = split(clients, len(nodes))
        shares = split(requests, len(nodes))
        before = {n.port: counters(n) for n in nodes}
        cpu_before = {n.port: cpu_ns(n.pid) for n in nodes}
        sleeps_before = sum(wakeups(n.pid) for n in nodes)
        redis_before = sum(cpu_ns(n.redis_pid) for n in nodes)
        started = time.monotonic()
        targets = list(zip(nodes, clients, shares))
        cluster_flag = []
        # Cluster-mode clients: one redis-benchmark --cluster per rack, seeded at its first
        # node. (It refuses a "cluster" of one master; with one node per rack a plain client
        # of each node already sends every key to its owner.)
        if self.cluster_clients and self.per_rack > 1:
            seeds = [next(n for n in nodes if n.rack == rack) for rack in sorted({n.rack for n in nodes})]
            targets = list(zip(seeds, split(sum(clients), len(seeds)), split(requests, len(seeds))))
            cluster_flag = ["--cluster"]
        procs = [
            subprocess.Popen(
                ["redis-benchmark", *cluster_flag, "-h", n.host, "-p", str(n.port), "-t", test.lower(),
                 "-n", str(share), "-c", str(max(1, c)), "-r", str(KEYSPACE), "-P", str(pipeline), "-q"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for n, c, share in targets
        ]
        try:
            outputs = [p.communicate(timeout=600)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        seconds = time.monotonic() - started
        cpu = {n.port: cpu_ns(n.pid) - cpu_before[n.port] for n in nodes}
        redis_cpu = sum(cpu_ns(n.redis_pid) for n in nodes) - redis_before
        sleeps = sum(wakeups(n.pid) for n in nodes) - sleeps_before
        for p, out in zip(procs, outputs):
            if p.returncode != 0 or "requests per second" not in out:
                raise ScaleError(f"redis-benchmark failed ({p.returncode}): {out.strip()[-300:]}")
        after = {n.port: counters(n) for n in nodes}
        requests_by_node = {name: after[name][0] - before[name][0] for name in after}
        sent = {name: after[name][1] - before[name][1] for name in after}
        return phase_figures(requests_by_node, sent, cpu, redis_cpu, seconds, sleeps)

    def paced_phase(self, test: str, rate: float, seconds: float, idle_ms_per_s: float,
                    connections_per_node: int = 2, idle_calls: dict[str, float] | None = None) -> dict:
        """``rate`` requests a second in all, request/response (-P 1), spread evenly over
        every node's client port, for ``seconds``: a load that leaves every size idle
        between requests, so each request pays its own wake-ups at every size (no size
        gets to batch). The figures add the CPU per request above the idle cost, and with
        ``idle_calls`` (calls a second by function, the processes counting) the calls."""
        nodes = self.nodes
        per_connection = rate / (len(nodes) * connections_per_node)
        before = {n.port: counters(n) for n in nodes}
        calls_before = call_counts(nodes) if idle_calls is not None else None
        cpu_before = {n.port: cpu_ns(n.pid) for n in nodes}
        sleeps_before = sum(wakeups(n.pid) for n in nodes)
        redis_before = sum(cpu_ns(n.redis_pid) for n in nodes)
        failures: list[str] = []
        threads = [threading.Thread(target=_paced_client, daemon=True,
                                    args=(n.host, n.port, test, per_connection, seconds, 1000 * i + c, failures,
                                          self.cluster_clients))
                   for i, n in enumerate(nodes) for c in range(connections_per_node)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 60)
        elapsed = time.monotonic() - started
        if failures:
            raise ScaleError(f"the paced load failed: {failures[0]}")
        cpu = {n.port: cpu_ns(n.pid) - cpu_before[n.port] for n in nodes}
        redis_cpu = sum(cpu_ns(n.redis_pid) for n in nodes) - redis_before
        sleeps = sum(wakeups(n.pid) for n in nodes) - sleeps_before
        calls = calls_between(calls_before, call_counts(nodes)) if calls_before is not None else None
        after = {n.port: counters(n) for n in nodes}
        requests_by_node = {name: after[name][0] - before[name][0] for name in after}
        sent = {name: after[name][1] - before[name][1] for name in after}
        figures = phase_figures(requests_by_node, sent, cpu, redis_cpu, elapsed, sleeps)
        idle_ns = idle_ms_per_s * 1e6 * elapsed
        figures["cpu_us_above_idle"] = (sum(cpu.values()) - idle_ns) / figures["requests"] / 1000
        if calls is not None:
            figures.update(calls_figures(calls, idle_calls, elapsed, figures["requests"]))
        return figures

    def idle_cpu(self, seconds: float = 2.0) -> float:
        """CPU milliseconds per second all the dyno processes use with no client (gossip,
        timers): it counts in every phase's CPU too."""
        before = sum(cpu_ns(n.pid) for n in self.nodes)
        started = time.monotonic()
        time.sleep(seconds)  # a duration to measure over, not a synchronisation
        return (sum(cpu_ns(n.pid) for n in self.nodes) - before) / (time.monotonic() - started) / 1e6

    def idle_calls(self, seconds: float = 4.0) -> dict[str, float]:
        """Calls a second by function all the dyno processes make with no client."""
        before = call_counts(self.nodes)
        started = time.monotonic()
        time.sleep(seconds)  # a duration to measure over, not a synchronisation
        calls = calls_between(before, call_counts(self.nodes))
        elapsed = time.monotonic() - started
        return {function: n / elapsed for function, n in calls.items()}

    def down(self) -> None:
        localcluster.down(self.dir)


class Separate:
    """The control for a size of 3 racks x K nodes: K separate clusters of 3 nodes, up and
    loaded at once, the load split between them. The machine runs as many dyno and Redis
    processes as the size does, and each node gets the same share of the load, but no
    cluster is larger than 3 nodes: what the size costs beyond this control is the larger
    cluster's own work; what this control costs beyond 3 nodes is the machine's (more
    processes sharing two cores and their caches)."""

    control = True
    per_rack = 1

    def __init__(self, root: Path, clusters: int, cluster_clients: bool = False):
        self.cluster_clients = cluster_clients
        self.parts: list[Size] = []
        try:
            for index in range(clusters):
                self.parts.append(Size(root, 1, cluster_clients, name=f"control-{clusters}x{RACKS}-{index + 1}"))
        except BaseException:
            self.down()
            raise

    @property
    def nodes(self) -> list[localcluster.NodeState]:
        return [node for part in self.parts for node in part.nodes]

    def flush(self) -> None:
        for part in self.parts:
            part.flush()

    phase = Size.phase
    paced_phase = Size.paced_phase
    idle_cpu = Size.idle_cpu
    idle_calls = Size.idle_calls

    def down(self) -> None:
        for part in self.parts:
            part.down()


def measure(sizes: Sequence[int], rounds: int, pipelines: Sequence[int], requests: dict[int, int],
            root: Path, clients_per_node: int | None = None, log=print,
            rate: float | None = None, seconds: float = 10.0,
            cluster_clients: bool = False, controls: bool = False,
            count_calls: bool = False) -> tuple[list[dict], dict[int, dict]]:
    """Every phase of every round (interleaved sizes), and the keys per node of each size.
    ``clients_per_node``: instead of CLIENTS split between the nodes, that many per node
    (and the requests grown with the nodes likewise), so each node sees the same load.
    ``controls``: for each size of K > 1 nodes per rack, also its ``Separate`` control.
    ``count_calls`` (with ``rate``): the nodes count their calls (``counting_calls``)."""
    with counting_calls(root / "calls") if count_calls else contextlib.nullcontext():
        return _measure(sizes, rounds, pipelines, requests, root, clients_per_node, log, rate, seconds,
                        cluster_clients, controls, count_calls)


def _measure(sizes, rounds, pipelines, requests, root, clients_per_node, log, rate, seconds,
             cluster_clients, controls, count_calls):
    clusters: list[Size | Separate] = []
    phases: list[dict] = []
    keys: dict[int, list[dict]] = {}
    idle: dict[int, float] = {}
    idle_calls: dict[int, dict[str, float] | None] = {}
    try:
        for per_rack in sizes:
            log(f"starting {RACKS * per_rack} nodes ...")
            clusters.append(Size(root, per_rack, cluster_clients))
            if controls and per_rack > 1:
                log(f"starting {per_rack} separate clusters of {RACKS} nodes (the control) ...")
                clusters.append(Separate(root, per_rack, cluster_clients))
        for cluster in clusters:
            idle[id(cluster)] = cluster.idle_cpu()
            idle_calls[id(cluster)] = cluster.idle_calls() if count_calls else None
        for round_no in range(rounds):
            order = clusters[round_no % len(clusters):] + clusters[:round_no % len(clusters)]
            for cluster in order:
                nodes = len(cluster.nodes)
                cluster.flush()
                for pipeline in pipelines:
                    for test in TESTS:
                        if rate is not None:
                            figures = cluster.paced_phase(test, rate, seconds, idle[id(cluster)],
                                                          idle_calls=idle_calls[id(cluster)])
                        elif clients_per_node is None:
                            figures = cluster.phase(test, pipeline, requests[pipeline])
                        else:
                            scaled = requests[pipeline] * nodes // RACKS
                            figures = cluster.phase(test, pipeline, scaled, clients_per_node * nodes)
                        phases.append({"nodes": nodes, "pipeline": pipeline, "test": test, "round": round_no + 1,
                                       "figures": figures, **({"control": True} if cluster.control else {})})
                        log(f"round {round_no + 1}: {nodes} nodes{' (control)' if cluster.control else ''} "
                            f"-P {pipeline} {test}: "
                            f"{figures['ops_per_sec']:,.0f} ops/s, {figures['cpu_us_per_request']:.2f} µs/req")
                    if pipeline == max(pipelines) and not cluster.control:
                        counts = cluster.keys()
                        racks = {n.name: n.rack for n in cluster.nodes}
                        keys.setdefault(nodes, []).append(
                            {"keys": counts, "racks": racks, "spread": keys_spread(counts, racks)})
    finally:
        for cluster in clusters:
            cluster.down()
    # keys per node: the round with the median spread
    idle_of = {len(cluster.nodes): idle[id(cluster)] for cluster in clusters if not cluster.control}
    chosen = {nodes: {**sorted(entries, key=lambda e: e["spread"])[len(entries) // 2],
                      "idle_cpu_ms_per_s": idle_of[nodes]}
              for nodes, entries in keys.items()}
    return phases, chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,2,4", help="nodes per rack of each cluster (3 racks each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pipelines", default="1,16")
    parser.add_argument("--requests", type=int, default=60_000,
                        help="requests per phase at -P 1 (at deeper pipelines, that many times P / 3)")
    parser.add_argument("--clients-per-node", type=int, default=None, metavar="N",
                        help=f"N clients on every node (requests grown with the nodes) instead of "
                        f"{CLIENTS} clients split between them")
    parser.add_argument("--rate", type=float, default=None, metavar="R",
                        help="instead of redis-benchmark: R requests a second in all, request/response, "
                        "spread evenly over the nodes (2 connections each), for --seconds per phase; "
                        "adds the CPU per request above the idle cost (-P is 1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a --rate phase")
    parser.add_argument("--cluster-clients", action="store_true",
                        help="clients as cluster-mode clients use dyno: the clusters run hash: slot, "
                        "redis-benchmark runs --cluster (one per rack, seeded there), the paced load asks "
                        "CLUSTER SLOTS; each request goes to its key's owner in the client's rack")
    parser.add_argument("--controls", action="store_true",
                        help="for each size of K > 1 nodes per rack, also K separate 3-node clusters loaded "
                        "at once (as many processes on the machine, no cluster larger than 3)")
    parser.add_argument("--count-calls", action="store_true",
                        help="with --rate: the nodes count their Python calls; the table adds calls per request "
                             "above idle (the CPU columns then include the counting's cost)")
    parser.add_argument("--json", type=Path, help="also write the phases, the summary and the keys here")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        pipelines = [int(p) for p in args.pipelines.split(",")]
    except ValueError:
        parser.error("--sizes and --pipelines are comma-separated whole numbers")
    if any(s < 1 for s in sizes) or any(p < 1 for p in pipelines) or args.rounds < 1 or args.requests < 1 \
            or (args.clients_per_node is not None and args.clients_per_node < 1):
        parser.error("sizes, pipelines, rounds and requests must be at least 1")
    if args.rate is not None:
        if args.rate <= 0 or args.seconds <= 0:
            parser.error("--rate and --seconds must be positive")
        pipelines = [1]
    elif args.count_calls:
        parser.error("--count-calls counts a paced load: give --rate too")
    requests = {p: args.requests if p == 1 else args.requests * p // 3 for p in pipelines}
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    root = Path(tempfile.mkdtemp(prefix="dyno-scale-"))
    try:
        phases, keys = measure(sizes, args.rounds, pipelines, requests, root, args.clients_per_node,
                               log=lambda line: print(line, file=sys.stderr, flush=True),
                               rate=args.rate, seconds=args.seconds, cluster_clients=args.cluster_clients,
                               controls=args.controls, count_calls=args.count_calls)
    except (ScaleError, localcluster.ClusterError, OSError) as e:
        print(f"scale.py: {e} (logs in {root})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scale.py: interrupted; everything it started is stopped", file=sys.stderr)
        return 1
    rows = summarise(phases)
    command = "scripts/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(render(rows, keys, command.strip()))
    if args.json:
        args.json.write_text(json.dumps({"phases": phases, "summary": rows, "flatness": flatness(rows),
                                         "keys": {str(k): v for k, v in keys.items()}}, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
