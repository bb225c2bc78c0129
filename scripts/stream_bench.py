#!/usr/bin/env python3
"""Streaming figures for issue 18: how fast a join copies its range (keys/s, MB/s),
and a client's latency before and during the join.

Starts a local cluster of 3 racks x 1 node (dyno.localcluster) in a temporary
directory, writes --keys keys of --value-size bytes through node1, then runs a
paced client (GET/SET half and half, --rate ops/s, through node1) for --before
seconds, adds a node to rack1 (auto_bootstrap: it takes half of rack1's range) and
keeps the client running until the join ends. Prints the join's own figures (from
its /movement) and the client's p50/p99/max before and during the join. Everything
it started is stopped on the way out.

    .venv/bin/python scripts/stream_bench.py --keys 1000000
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time

import redis

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dyno import localcluster  # noqa: E402
from dyno import status as view  # noqa: E402


def load(client: redis.Redis, keys: int, size: int) -> float:
    started = time.monotonic()
    value = os.urandom(size // 2).hex().encode()[:size]
    batch = 5000
    for start in range(0, keys, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + batch, keys)):
            pipe.set(b"key:%d" % i, value)
        pipe.execute()
    return time.monotonic() - started


class Paced(threading.Thread):
    def __init__(self, port: int, keys: int, rate: float):
        super().__init__(daemon=True)
        self.client = redis.Redis(port=port, socket_timeout=10)
        self.keys, self.rate = keys, rate
        self.samples: list[tuple[float, float]] = []  # (when, seconds)
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(18)
        interval = 1 / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += interval
            key = b"key:%d" % rng.randrange(self.keys)
            begun = time.monotonic()
            try:
                if rng.random() < 0.5:
                    self.client.get(key)
                else:
                    self.client.set(key, b"v")
            except redis.RedisError:
                self.errors += 1
            self.samples.append((begun, time.monotonic() - begun))
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "no samples"
    ordered = sorted(latencies)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return (f"{len(ordered):6d} ops  p50 {p(0.50):6.2f} ms  p99 {p(0.99):6.2f} ms  "
            f"max {ordered[-1] * 1000:7.2f} ms  mean {statistics.mean(ordered) * 1000:5.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--rate", type=float, default=500.0, help="client ops/s during the measurement")
    parser.add_argument("--before", type=float, default=15.0, help="seconds measured before the join")
    parser.add_argument("--stream-rate", type=int, default=0, help="stream_rate of the joining node")
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="dyno-stream-bench-")
    state = localcluster.up(directory, 1, 3, 1)
    try:
        node1 = state.nodes[0]
        if args.stream_rate:
            path = node1.config
            path.write_text(path.read_text().replace("data_store: 0", f"data_store: 0\n  stream_rate: {args.stream_rate}"))
        took = load(redis.Redis(port=node1.port, socket_timeout=60), args.keys, args.value_size)
        print(f"loaded {args.keys:,} keys of {args.value_size} bytes through node1 in {took:.1f} s "
              f"({args.keys / took:,.0f} keys/s)")
        client = Paced(node1.port, args.keys, args.rate)
        client.start()
        time.sleep(args.before)
        join_at = time.monotonic()
        added = localcluster.add_node(directory, "rack1")
        address = f"{added.host}:{added.stats_port}"
        while True:
            progress = view.movement_progress(address)
            if progress.get("state") == "done":
                break
            time.sleep(0.2)
        done_at = time.monotonic()
        client.stop.set()
        client.join(10)
        transfer = progress["transfer"]
        print(f"join: {transfer['copied']:,} keys, {transfer['bytes'] / 1e6:.1f} MB copied in "
              f"{transfer['elapsed']:.1f} s: {transfer['copied'] / transfer['elapsed']:,.0f} keys/s, "
              f"{transfer['bytes'] / 1e6 / transfer['elapsed']:.2f} MB/s "
              f"(scanned {transfer['scanned']:,} keys of the source; settle and cleanup not counted)")
        before = [s for t, s in client.samples if t < join_at]
        during = [s for t, s in client.samples if join_at <= t < done_at]
        print(f"client before the join: {summary(before)}")
        print(f"client during the join: {summary(during)}")
        print(f"client errors: {client.errors}")
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        localcluster.down(directory)


if __name__ == "__main__":
    main()
