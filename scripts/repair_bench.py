#!/usr/bin/env python3
"""How fast repair goes: keys per second between two local redis-servers, reached
straight (dyno.repair.RedisCall), one job at a time as a node runs it.

Three cases, on ``--keys`` keys (200,000 by default) of ``--value-size`` bytes:
- *refill*: replica A holds every key (with versions), B was flushed: every key is
  compared and copied;
- *in sync*: the same job again: every key is compared, nothing copied (the common
  case of a periodic repair);
- *10% stale*: B's copy of one key in ten is older: those are copied back.

    .venv/bin/python scripts/repair_bench.py                # about half a minute
    .venv/bin/python scripts/repair_bench.py --keys 20000   # quick
    .venv/bin/python scripts/repair_bench.py --json

Figures depend on the machine and on what else runs on it; compare them on one
machine. The redis-servers are started here (free ports, no persistence) and
stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

from dyno import versions  # noqa: E402
from dyno.repair import CHUNK, PARALLEL, RedisCall, Repair, plan_repair  # noqa: E402
from dyno.ring import Ring, RingNode  # noqa: E402

HOST = "127.0.0.1"
POPULATE = """
local count, size, version, db = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local value = string.rep('x', size)
local from = tonumber(ARGV[5])
for i = from, count, tonumber(ARGV[6]) do redis.call('SET', 'key:' .. i, value .. i) end
redis.call('SELECT', db)
for i = from, count, tonumber(ARGV[6]) do redis.call('SET', 'key:' .. i, version) end
return 1
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def redis_server(directory: Path):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                             "--appendonly", "no", "--dir", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server on {port} did not start")
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def populate(port: int, keys: int, size: int, version: bytes, start: int = 1, step: int = 1) -> None:
    redis_cli(port, "EVAL", POPULATE, "0", str(keys), str(size), version.decode(),
              str(versions.DEFAULT_DB), str(start), str(step))


async def timed_repair(ring: Ring, call: RedisCall, chunk: int, parallel: int) -> dict:
    started = time.perf_counter()
    cpu = time.process_time()
    job = await Repair(plan_repair(ring), call, chunk=chunk, parallel=parallel).run()
    seconds = time.perf_counter() - started
    status = job.status()
    if status["phase"] != "done" or status["errors"]:
        raise SystemExit(f"the repair did not end cleanly: {status}")
    return {
        "seconds": round(seconds, 2), "compared": status["compared"],
        "copied": status["repaired"] + status["deleted"],
        "keys_per_second": round(status["compared"] / seconds),
        "dyno_cpu_seconds": round(time.process_time() - cpu, 2),
    }


async def bench(args) -> dict:
    nodes = [RingNode(f"n{i}", HOST, 1 + i, "dc1", f"r{i}", (0,)) for i in (1, 2)]
    ring = Ring(nodes[1:], nodes[0])
    old, new = versions.make_version(1, 0, 1), versions.make_version(2, 0, 1)
    results = {}
    with tempfile.TemporaryDirectory() as directory, \
            redis_server(Path(directory)) as a, redis_server(Path(directory)) as b:
        call = RedisCall({"n1": (HOST, a), "n2": (HOST, b)}, timeout=60)
        try:
            populate(a, args.keys, args.value_size, new)
            results["refill"] = await timed_repair(ring, call, args.chunk, args.parallel)
            results["in sync"] = await timed_repair(ring, call, args.chunk, args.parallel)
            populate(b, args.keys, args.value_size, old, start=1, step=10)
            results["10% stale"] = await timed_repair(ring, call, args.chunk, args.parallel)
        finally:
            await call.aclose()
    return {"keys": args.keys, "value_size": args.value_size, "chunk": args.chunk,
            "parallel": args.parallel, "cases": results,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--value-size", type=int, default=32, help="bytes per value")
    parser.add_argument("--chunk", type=int, default=CHUNK, help="keys per FETCH")
    parser.add_argument("--parallel", type=int, default=PARALLEL, help="SCAN steps repaired at once")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = trio.run(bench, args)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"repair of {report['keys']:,} keys of {report['value_size']} bytes between two "
          f"redis-servers (chunks of {report['chunk']}, {report['parallel']} steps at once):")
    for name, case in report["cases"].items():
        print(f"  {name:10} {case['keys_per_second']:>9,} keys/s  ({case['compared']:,} compared, "
              f"{case['copied']:,} copied in {case['seconds']} s; dyno CPU {case['dyno_cpu_seconds']} s)")
    print(f"  largest resident size of this process: {report['max_rss_mb']} MB")


if __name__ == "__main__":
    main()
