#!/usr/bin/env python3
"""How fast replicas converge on a local 3-rack cluster (issue 14's figures).

hints:  node3 is killed, clients write through node1 at --rate writes/s for
        --outage seconds, node3 is restarted; prints how long until node1 has no
        hint pending and node3's Redis holds every key written.
repair: --keys keys are written through node1 (redis-benchmark, pipelined), node3's
        Redis is emptied behind dyno's back (FLUSHALL), `dyno repair` runs through
        node1; prints keys per second and checks node3 again.

    python scripts/convergence_bench.py hints --rate 5000 --outage 60
    python scripts/convergence_bench.py repair --keys 1000000
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

from dyno import localcluster


def info(node) -> dict:
    with urllib.request.urlopen(f"http://{node.host}:{node.stats_port}/info", timeout=5) as reply:
        return json.loads(reply.read())


def hints_pending(node) -> int:
    body = info(node)
    pool = next(v for v in body.values() if isinstance(v, dict) and "hints" in v)
    return sum(counts["pending"] for counts in pool["hints"].values())


def wait(condition, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            sys.exit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def hints(cluster, rate: int, outage: float) -> None:
    node1, node3 = cluster.nodes[0], cluster.nodes[2]
    client = redis.Redis(node1.host, node1.port)
    cluster.stop_node(node3.name, signal.SIGKILL)
    written = 0
    started = time.monotonic()
    batch = max(1, rate // 100)  # 100 pipelines a second
    while (elapsed := time.monotonic() - started) < outage:
        pipe = client.pipeline(transaction=False)
        for _ in range(batch):
            pipe.set(f"h:{written}", written)
            written += 1
        pipe.execute()
        ahead = written / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    print(f"outage: {written:,} writes in {elapsed:.1f} s ({written / elapsed:,.0f}/s) while node3 was down; "
          f"node1 holds {hints_pending(node1):,} hints")
    restarted = time.monotonic()
    cluster.start_node(node3.name)
    up = time.monotonic() - restarted
    drained = wait(lambda: hints_pending(node1) == 0, 600, "the hints to drain")
    direct = redis.Redis(node3.host, node3.redis_port)
    missing = sum(1 for start in range(0, written, 1000)
                  for value in direct.mget([f"h:{i}" for i in range(start, min(written, start + 1000))])
                  if value is None)
    print(f"node3 restarted in {up:.1f} s; hints drained {drained:.1f} s after the restart "
          f"({written / max(drained, 1e-9):,.0f} writes/s replayed); keys missing on node3: {missing}")


def repair(cluster, keys: int) -> None:
    node1, node3 = cluster.nodes[0], cluster.nodes[2]
    subprocess.run(["redis-benchmark", "-p", str(node1.port), "-t", "set", "-r", str(keys), "-n", str(keys * 2),
                    "-P", "16", "-q"], check=True, capture_output=True)
    stored = redis.Redis(node1.host, node1.redis_port).dbsize()
    wait(lambda: all(redis.Redis(n.host, n.redis_port).dbsize() == stored for n in cluster.nodes), 120,
         "every rack to hold every key")
    redis.Redis(node3.host, node3.redis_port).flushall()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dyno", "repair", "--node", f"{node1.host}:{node1.stats_port}"],
                          capture_output=True, text=True)
    took = time.monotonic() - started
    print(done.stdout.strip())
    rebuilt = redis.Redis(node3.host, node3.redis_port).dbsize()
    print(f"repair: {stored:,} keys, node3 emptied and rebuilt to {rebuilt:,} keys in {took:.1f} s "
          f"({stored / took:,.0f} keys/s compared on 3 replicas), exit {done.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["hints", "repair"])
    parser.add_argument("--rate", type=int, default=5000, help="writes per second during the outage")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds node3 is down")
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys for the repair run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dyno-converge-") as tmp:
        cluster = localcluster.up(Path(tmp) / "cluster", 1, 3, 1)
        try:
            if args.what == "hints":
                hints(cluster, args.rate, args.outage)
            else:
                repair(cluster, args.keys)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
