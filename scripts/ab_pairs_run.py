#!/usr/bin/env python3
"""Interleaved A/B of one redis-benchmark test against two running local clusters
(scripts/ab_pairs.sh): medians of 5 rounds, ops/s and CPU per request (node1, all
dyno processes, all Redis servers, redis-benchmark) from /proc/PID/schedstat.
    ab_pairs_run.py NEW_CLUSTER_DIR BASE_CLUSTER_DIR TEST PIPES   (e.g. ... set 16,1)"""
import json
import resource
import statistics
import subprocess
import sys


def node1(d):
    nodes = json.load(open(f"{d}/cluster.json"))["nodes"]
    return nodes[0]["listen"].split(":")[1], [n["pid"] for n in nodes] + [n["redis_pid"] for n in nodes]


def cpu(pids):
    return [int(open(f"/proc/{pid}/schedstat").read().split()[0]) for pid in pids]


def children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(port, pids, p, n):
    a = cpu(pids); ca = children()
    out = subprocess.run(["redis-benchmark", "-p", port, "-t", sys.argv[3] if len(sys.argv) > 3 else "mset", "-n", str(n), "-c", "50", "-r", "100000", "-P", str(p), "--csv"], capture_output=True, text=True).stdout
    b = cpu(pids); cb = children()
    rps = float(out.strip().splitlines()[-1].split(",")[1].strip('"'))
    half = len(pids) // 2
    return (rps, (b[0] - a[0]) / 1000 / n, (sum(b[:half]) - sum(a[:half])) / 1000 / n,
            (sum(b[half:]) - sum(a[half:])) / 1000 / n, (cb - ca) * 1e6 / n)


new, base = sys.argv[1], sys.argv[2]
for p in ([int(x) for x in sys.argv[4].split(",")] if len(sys.argv) > 4 else (16, 1)):
    res = {"new": [], "base": []}
    for r in range(5):
        order = [("new", new), ("base", base)] if r % 2 == 0 else [("base", base), ("new", new)]
        for name, d in order:
            res[name].append(run(*node1(d), p, 60000 if p == 16 else 20000))
    for name in ("base", "new"):
        rps = statistics.median(x[0] for x in res[name]); c = statistics.median(x[1] for x in res[name])
        t = statistics.median(x[2] for x in res[name])
        r = statistics.median(x[3] for x in res[name]); bm = statistics.median(x[4] for x in res[name])
        print(f"P{p:<3} {name:5s} {rps:9.0f} ops/s  node1 {c:6.2f}  all dyno {t:6.2f}  redis {r:6.2f}  benchmark {bm:6.2f} us/op  rounds {[round(x[0]) for x in res[name]]}")
