#!/usr/bin/env python3
"""How one dyno node scales with ``workers: N``: a measurement, never a test.

What it starts, on free loopback ports, in a temporary directory: one redis-server, and
one dyno node in front of it per worker count asked (default 1, 2 and 4), each with its
own config (``workers: N``), started with ``python -m dyno start``, one at a time.

How it measures, per round (rounds interleave the worker counts, so a slow minute of the
box hits them alike): the Redis is flushed, the node is started and waits until every
worker serves (its /info), then ``redis-benchmark -t set,get -n N -c 50 -r 100000 -P P``
runs against it. Around the run it reads:
- the CPU time (utime + stime, /proc/PID/stat) of all the node's processes together
  (the supervisor and its workers), and of the supervisor alone: per request, in µs;
- each worker's share of the requests (its ``client_requests`` in /info's ``workers``,
  before and after) and of the clients (``client_connections``, sampled while the
  benchmark's 50 clients are connected), as a fraction of an even share.

The table: workers, ops/s (SET, GET; medians over rounds), node CPU µs per request and
its ratio to one worker's, the supervisor's µs per request (the cross-process work: 0
means nothing on the request path crossed to it), and the largest distance of a worker's
share from an even one (requests, clients). It only reports what it measured on this box.

    .venv/bin/python scripts/workers_bench.py                  # 3 rounds of 1, 2, 4 workers
    .venv/bin/python scripts/workers_bench.py --workers 1,2 --rounds 1 --requests 50000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def admin_info(port: int) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{port}/info", timeout=5) as reply:
        return json.loads(reply.read())


def ping(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


class Node:
    def __init__(self, workdir: Path, redis_port: int, workers: int):
        self.workers = workers
        self.port, self.dyn_port, self.stats_port = free_port(), free_port(), free_port()
        self.config = workdir / f"dyno-{workers}.yml"
        self.config.write_text(
            "dyn_o_mite:\n"
            f"  listen: {HOST}:{self.port}\n  dyn_listen: {HOST}:{self.dyn_port}\n"
            f"  stats_listen: {HOST}:{self.stats_port}\n  servers: [{HOST}:{redis_port}:1]\n"
            f"  workers: {workers}\n")
        self.log = workdir / f"dyno-{workers}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "dyno", "start", "-c", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for(lambda: ping(self.port), 30, f"the {workers}-worker node to answer PING")
        if workers > 1:
            wait_for(lambda: all(w["up"] for w in admin_info(self.stats_port)["workers"]), 30,
                     "every worker serving")
        self.pids = [self.proc.pid, *children(self.proc.pid)]

    def cpu(self) -> tuple[float, float]:
        """(all the node's processes, the supervisor alone) CPU seconds."""
        own = cpu_seconds(self.proc.pid)
        return sum(cpu_seconds(pid) for pid in self.pids), own

    def per_worker(self) -> list[dict]:
        info = admin_info(self.stats_port)
        if "workers" in info:
            return info["workers"]
        return [{"index": 0, "client_requests": info["dyn_o_mite"]["client_requests"],
                 "client_connections": info["dyn_o_mite"]["client_connections"]}]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def measure(node: Node, requests: int, pipeline: int, clients: int) -> dict:
    before_requests = {w["index"]: w["client_requests"] for w in node.per_worker()}
    cpu_before, supervisor_before = node.cpu()
    bench = subprocess.Popen(
        ["redis-benchmark", "-h", HOST, "-p", str(node.port), "-t", "set,get", "-n", str(requests),
         "-c", str(clients), "-r", "100000", "-P", str(pipeline), "--csv"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    # the clients' spread, while the benchmark's clients are connected
    connections: dict[int, int] = {}
    deadline = time.monotonic() + 30
    while bench.poll() is None and time.monotonic() < deadline:
        sample = {w["index"]: w["client_connections"] for w in node.per_worker()}
        if sum(sample.values()) >= clients:
            connections = sample
            break
        time.sleep(0.05)
    out, _ = bench.communicate()
    cpu_after, supervisor_after = node.cpu()
    after_requests = {w["index"]: w["client_requests"] for w in node.per_worker()}
    ops = {}
    for line in out.splitlines():
        cells = [cell.strip('"') for cell in line.split(",")]
        if cells[0] in ("SET", "GET") and len(cells) > 1:
            ops[cells[0]] = float(cells[1])
    if bench.returncode or len(ops) != 2:
        raise SystemExit(f"redis-benchmark failed against {node.workers} worker(s):\n{out}")
    restarted = [w["index"] for w in node.per_worker() if w.get("restarts")]
    if restarted:
        raise SystemExit(f"worker(s) {restarted} were started again during the run: see {node.log}")
    served = {index: after_requests[index] - before_requests.get(index, 0) for index in after_requests}
    total = sum(served.values())
    return {"ops": ops, "requests": total,
            "cpu_us": (cpu_after - cpu_before) * 1e6 / total,
            "supervisor_us": (supervisor_after - supervisor_before) * 1e6 / total if node.workers > 1 else 0.0,
            "request_shares": [served[i] / total * len(served) for i in sorted(served)],
            "client_shares": [connections[i] / sum(connections.values()) * len(connections)
                              for i in sorted(connections)] if connections else []}


def spread(shares: list[float]) -> float:
    """The largest distance of a share from an even one (1.0), as a fraction."""
    return max((abs(share - 1.0) for share in shares), default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure (default 1,2,4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200_000, help="per test (SET, GET)")
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    for tool in ("redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH")
    results: dict[int, list[dict]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="workers-bench-") as tmp:
        workdir = Path(tmp)
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", HOST, "--save", "",
                                  "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL,
                                 start_new_session=True)
        try:
            wait_for(lambda: ping(redis_port), 10, "redis-server")
            for round_no in range(args.rounds):
                order = counts if round_no % 2 == 0 else counts[::-1]
                for workers in order:
                    subprocess.run(["redis-cli", "-p", str(redis_port), "FLUSHALL"], check=True,
                                   stdout=subprocess.DEVNULL)
                    node = Node(workdir, redis_port, workers)
                    try:
                        result = measure(node, args.requests, args.pipeline, args.clients)
                    finally:
                        node.stop()
                    results[workers].append(result)
                    print(f"round {round_no + 1} workers {workers}: "
                          f"{result['cpu_us']:.1f} µs/request, SET {result['ops'].get('SET', 0):,.0f} "
                          f"GET {result['ops'].get('GET', 0):,.0f} ops/s, request shares "
                          f"{', '.join(f'{s:.2f}' for s in result['request_shares'])}, client shares "
                          f"{', '.join(f'{s:.2f}' for s in result['client_shares'])}", flush=True)
        finally:
            os.killpg(redis.pid, signal.SIGTERM)
            redis.wait()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    base = statistics.median(r["cpu_us"] for r in results[counts[0]])
    print(f"\nredis-benchmark -c {args.clients} -P {args.pipeline} -n {args.requests} (SET and GET), "
          f"{args.rounds} rounds, medians; {os.cpu_count()} cores")
    print("| workers | SET ops/s | GET ops/s | node CPU µs/request | vs 1 worker | supervisor µs/request "
          "| worst request share | worst client share |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workers in counts:
        rounds = results[workers]
        cpu = statistics.median(r["cpu_us"] for r in rounds)
        print(f"| {workers} | {statistics.median(r['ops'].get('SET', 0) for r in rounds):,.0f} "
              f"| {statistics.median(r['ops'].get('GET', 0) for r in rounds):,.0f} | {cpu:.1f} "
              f"| {cpu / base:.2f} | {statistics.median(r['supervisor_us'] for r in rounds):.2f} "
              f"| {max(spread(r['request_shares']) for r in rounds):.0%} "
              f"| {max(spread(r['client_shares']) for r in rounds):.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
