#!/usr/bin/env python3
"""dyno's throughput benchmark: dyno next to plain Redis and twemproxy, in one run.

This is a measurement, never a test: it prints numbers and the targets the issues set,
and fails (exit 1) only when something could not run or a replica lost a write.

What it starts, on free loopback ports, in a temporary directory:
- one redis-server, the *shared backend*: it is measured directly (target "redis", the
  reference every ratio is taken against), and twemproxy and the single dyno node sit in
  front of this same Redis, as the issues ask;
- twemproxy (Debian's `nutcracker`, generated config: one pool, `redis: true`, one
  server = the shared Redis);
- "dyno-1": `dyno start --config` with a generated config whose `servers` is the shared Redis;
- "dyno-3r-one" / "dyno-3r-quorum": `dyno cluster up --dcs 1 --racks 3 --nodes-per-rack 1`
  at DC_ONE / DC_QUORUM; each node has its own redis-server; the client talks to the first
  node of DIR/cluster.json.
- only when named in --targets: "dyno-3x2-one" / "dyno-3x2-quorum" (3 racks of 2 nodes)
  and "dyno-2dc-one" (2 datacenters of 3 racks of 1 node), started the same way.
- only with --baseline REV: beside every dyno target above, its twin "TARGET@base" (e.g.
  "dyno-3r-one@base"), the same shape started the same way, but running git revision REV
  of the repository holding this script: `git archive REV | tar -x` into the temporary
  directory (the repository is only read), that tree first on PYTHONPATH and
  PYTHONSAFEPATH set (so neither the working directory nor the virtualenv's editable
  install puts the checkout's dyno/ ahead of it); `dyno cluster up` hands both on to the
  nodes it spawns. Each started dyno process is then asked which dyno/ it imports (the
  probe: its own interpreter, environment and working directory, `import dyno`): a twin
  that would run the checkout's code, or a target the baseline's, is not measured.
- only with --tls (or when named, e.g. "dyno-1+tls"): beside every dyno target, its TLS
  variant "TARGET+tls", the same shape with TLS on the client port (client_tls_cert/key
  from `dyno certs` in the temporary directory; `dyno cluster up --client-tls`), driven
  by `redis-benchmark --tls --cacert`. It runs back to back with its plaintext target at
  each depth, and a table compares each pair (ops/s, p99, CPU per request).
- only when named in --targets, and with DYNOMITE_BIN=/path/to/dynomite (a Netflix/dynomite
  binary built outside this repository; docs/performance.md, "Dynomite side by side", says
  how): "dynomite-1" (one Dynomite node in front of the shared Redis, as dyno-1) and
  "dynomite-3r-one" / "dynomite-3r-quorum" (3 racks of 1 node, each beside its own
  redis-server, DC_ONE / DC_QUORUM; the client talks to node1), from configs generated in
  dyno's shapes (token 0 on every rack, dyn_seeds with simple_provider, data_store 0,
  Dynomite's default mbuf size). Each Dynomite process's CPU is measured like a dyno node's.
Everything it started is stopped at the end, also on error, Ctrl-C or SIGTERM: each child
runs in its own process group and is stopped by that group; clusters by `dyno cluster down`
(a twin's by the baseline's own), then by the pids cluster.json lists.

How it measures: for every round, every target, every pipeline depth (interleaved, so a
slow minute of the machine hits all targets alike), the shared or own backends are flushed,
then `redis-benchmark -t set,get -n N -c 50 -r 100000 -P P --csv` runs against the target.
The table shows per (target, test, P) the median over rounds of ops/s and of the p50/p99
latencies redis-benchmark reports, the ratios to plain Redis and to twemproxy, and the
issues' goals; a second table the CPU time per request of each proxy process (from
/proc/PID/stat, utime+stime, over the SET+GET invocation). On multi-rack shapes, after each
invocation, every rack's Redis servers must hold the same keys: a write acknowledged at
DC_ONE that never reached a rack is a lost write (issue 3).

With --baseline, a target and its twin run back to back at each depth (the twin second in
odd rounds, first in even ones), and two more tables compare each pair: ops/s of the
target over its twin's (from the medians, and the lowest..highest of the rounds' pairs),
the p99 ratio, and the CPU µs per request of all their processes. With REV = HEAD both
run the same code: the ratios' distance from 1.00 is the noise of an A/B on this box.

    .venv/bin/python scripts/bench.py                 # full run: 3 rounds, a few minutes
    .venv/bin/python scripts/bench.py --quick         # ~30 s sanity check
    .venv/bin/python scripts/bench.py --targets redis,twemproxy,dyno-1 --json out.json
    .venv/bin/python scripts/bench.py --targets redis,dyno-1,dyno-3r-one --baseline main
    .venv/bin/python scripts/bench.py --targets redis,dyno-1,dyno-3r-one --tls   # make bench-tls
    DYNOMITE_BIN=/path/to/dynomite/src/dynomite .venv/bin/python scripts/bench.py \
        --targets redis,dyno-1,dynomite-1,dyno-3r-one,dynomite-3r-one
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

KEYSPACE = 100_000  # redis-benchmark -r: keys key:000000000000 .. key:000000099999
TESTS = ("SET", "GET")
DEFAULT_TARGETS = ("redis", "twemproxy", "dyno-1", "dyno-3r-one", "dyno-3r-quorum")
# Shapes the issues set no goal for, measured on request (--targets): racks of two
# nodes (keys with different replica sets in one batch), and two datacenters.
CLUSTER_SHAPES = {  # name: (dcs, racks, nodes per rack, consistency)
    "dyno-3r-one": (1, 3, 1, "DC_ONE"),
    "dyno-3r-quorum": (1, 3, 1, "DC_QUORUM"),
    "dyno-3x2-one": (1, 3, 2, "DC_ONE"),
    "dyno-3x2-quorum": (1, 3, 2, "DC_QUORUM"),
    "dyno-2dc-one": (2, 3, 1, "DC_ONE"),
}
DYNO_TARGETS = ("dyno-1", *CLUSTER_SHAPES)  # the targets --baseline gives a twin
TWIN_SUFFIX = "@base"  # "dyno-1@base": dyno-1's shape, running the --baseline revision
# "dyno-1+tls": dyno-1's shape with TLS on the client port (client_tls_cert/key from
# `dyno certs`, redis-benchmark --tls --cacert); --tls adds one beside each dyno target.
TLS_SUFFIX = "+tls"
TLS_TARGETS = tuple(name + TLS_SUFFIX for name in DYNO_TARGETS)
# Netflix's Dynomite in dyno's shapes, only when named in --targets and the environment
# variable DYNOMITE_BIN names a dynomite binary, built outside this repository (see
# docs/performance.md, "Dynomite side by side"): nothing of Dynomite is part of dyno.
DYNOMITE_BIN = "DYNOMITE_BIN"
DYNOMITE_SHAPES = {  # name: (racks of one node each, in one datacenter; consistency)
    "dynomite-1": (1, "DC_ONE"),  # like dyno-1: in front of the shared Redis
    "dynomite-3r-one": (3, "DC_ONE"),  # like dyno-3r-*: own redis-server per node
    "dynomite-3r-quorum": (3, "DC_QUORUM"),
}
DYNOMITE_TARGETS = tuple(DYNOMITE_SHAPES)
ALL_TARGETS = (*DEFAULT_TARGETS, *(name for name in CLUSTER_SHAPES if name not in DEFAULT_TARGETS),
               *TLS_TARGETS, *DYNOMITE_TARGETS)
HOST = "127.0.0.1"
PROBE_KEY = "dyno-bench:probe"  # written to check a target serves, flushed before runs
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h

# Minimum throughput ratio to plain Redis in the same run, from the issues' "Performance"
# sections, as (SET P1, GET P1, SET P16, GET P16).
BASE_GOALS = {  # issue 2 (single node) and issue 3 (the cluster)
    "dyno-1": (0.35, 0.35, 0.35, 0.35),
    "dyno-3r-one": (0.30, 0.30, 0.20, 0.20),
    "dyno-3r-quorum": (0.25, 0.25, 0.15, 0.15),
}
FAST_PATH_GOALS = {  # issue 6
    "dyno-1": (0.45, 0.45, 0.42, 0.37),
    "dyno-3r-one": (0.40, 0.61, 0.25, 0.25),
    "dyno-3r-quorum": (0.35, 0.39, 0.20, 0.20),
}


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what."""


# ---------------------------------------------------------------------------------------
# Pure part: parsing, medians, ratios, goals, tables (tests/test_bench_script.py).
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Measurement:
    """One line of `redis-benchmark --csv` (7.0): throughput and latencies in ms."""

    test: str
    rps: float
    avg_ms: float
    min_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


def parse_benchmark_csv(text: str) -> dict[str, Measurement]:
    """Parse redis-benchmark 7.0 `--csv` output into {test name: result}.

    Lines before the header (warnings some versions print on stdout) are skipped.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"test"')), None)
    if start is None:
        raise BenchError(f"no CSV header in redis-benchmark output: {text[:200]!r}")
    results = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        result = Measurement(
            test=row["test"],
            rps=float(row["rps"]),
            avg_ms=float(row["avg_latency_ms"]),
            min_ms=float(row["min_latency_ms"]),
            p50_ms=float(row["p50_latency_ms"]),
            p95_ms=float(row["p95_latency_ms"]),
            p99_ms=float(row["p99_latency_ms"]),
            max_ms=float(row["max_latency_ms"]),
        )
        results[result.test] = result
    return results


@dataclasses.dataclass
class RackCheck:
    """After a SET run on a multi-rack shape: which keys each rack holds."""

    keys_per_rack: dict[str, int]
    missing_per_rack: dict[str, int]  # keys some other rack has and this one lacks

    @property
    def ok(self) -> bool:
        return not any(self.missing_per_rack.values())

    def describe(self) -> str:
        racks = ", ".join(
            f"{rack} {count} keys" + (f" ({self.missing_per_rack[rack]} MISSING)"
                                      if self.missing_per_rack[rack] else "")
            for rack, count in self.keys_per_rack.items())
        verdict = "every rack has every write" if self.ok else "WRITES LOST"
        return f"{racks}: {verdict}"


def compare_racks(keys_by_rack: dict[str, set[str]]) -> RackCheck:
    """Every rack holds a full copy, so all racks must hold the same key set."""
    union = set().union(*keys_by_rack.values()) if keys_by_rack else set()
    return RackCheck(
        keys_per_rack={rack: len(keys) for rack, keys in keys_by_rack.items()},
        missing_per_rack={rack: len(union - keys) for rack, keys in keys_by_rack.items()},
    )


@dataclasses.dataclass
class Run:
    """One redis-benchmark invocation (all tests) against one target at one pipeline depth."""

    target: str
    round: int
    pipeline: int
    requests: int  # per test
    results: dict[str, Measurement] = dataclasses.field(default_factory=dict)
    cpu_us_per_request: dict[str, float] = dataclasses.field(default_factory=dict)
    rack_check: RackCheck | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Goal:
    issue: str
    minimum: float
    ratio: float

    @property
    def met(self) -> bool:
        return self.ratio >= self.minimum

    def describe(self) -> str:
        return f">={self.minimum:.2f} {'ok' if self.met else 'FAIL'}"


@dataclasses.dataclass(frozen=True)
class LatencyGoal:
    """Issue 6: p99 latency at -P 1 no worse than ``maximum`` times plain Redis's."""
    maximum: float
    ratio: float

    @property
    def met(self) -> bool:
        return self.ratio <= self.maximum

    def describe(self) -> str:
        return f"{self.ratio:.2f}x <={self.maximum:.0f}x {'ok' if self.met else 'FAIL'}"


P99_GOAL = 2.0  # issue 6, at -P 1, for every dyno target


def goal_minimum(goals: dict, target: str, test: str, pipeline: int) -> float | None:
    """The goal for one table cell, or None when the issue sets none."""
    row = goals.get(target)
    if row is None or pipeline not in (1, 16) or test not in TESTS:
        return None
    return row[(0 if pipeline == 1 else 2) + TESTS.index(test)]


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    target: str
    test: str
    pipeline: int
    rounds: int  # how many rounds succeeded
    rps: float
    p50_ms: float
    p99_ms: float
    vs_redis: float | None
    vs_twemproxy: float | None
    base_goal: Goal | None
    fast_path_goal: Goal | None
    p99_goal: LatencyGoal | None = None


def summarize(runs: Iterable[Run], targets: Sequence[str], pipelines: Sequence[int]
              ) -> list[SummaryRow]:
    """Median over rounds per (target, test, P), with ratios and goals; rows in table order."""
    samples: dict[tuple[str, str, int], list[Measurement]] = {}
    for run in runs:
        for test, result in run.results.items():
            samples.setdefault((run.target, test, run.pipeline), []).append(result)

    def median_rps(target: str, test: str, pipeline: int) -> float | None:
        found = samples.get((target, test, pipeline))
        return statistics.median(r.rps for r in found) if found else None

    def median_p99(target: str, test: str, pipeline: int) -> float | None:
        found = samples.get((target, test, pipeline))
        return statistics.median(r.p99_ms for r in found) if found else None

    def ratio(value: float, reference: float | None) -> float | None:
        return value / reference if reference else None

    rows = []
    for target in targets:
        for test in TESTS:
            for pipeline in pipelines:
                found = samples.get((target, test, pipeline))
                if not found:
                    continue
                rps = statistics.median(r.rps for r in found)
                vs_redis = ratio(rps, median_rps("redis", test, pipeline))
                goals = []
                for issue, table in (("#2/#3", BASE_GOALS), ("#6", FAST_PATH_GOALS)):
                    minimum = goal_minimum(table, target, test, pipeline)
                    goals.append(None if minimum is None or vs_redis is None
                                 else Goal(issue, minimum, vs_redis))
                p99 = statistics.median(r.p99_ms for r in found)
                redis_p99 = median_p99("redis", test, pipeline)
                p99_goal = None  # the goals are the checkout's: a baseline twin has none
                if target in DYNO_TARGETS and pipeline == 1 and redis_p99:
                    p99_goal = LatencyGoal(P99_GOAL, p99 / redis_p99)
                rows.append(SummaryRow(
                    target=target, test=test, pipeline=pipeline, rounds=len(found), rps=rps,
                    p50_ms=statistics.median(r.p50_ms for r in found),
                    p99_ms=p99,
                    vs_redis=vs_redis,
                    vs_twemproxy=ratio(rps, median_rps("twemproxy", test, pipeline)),
                    base_goal=goals[0], fast_path_goal=goals[1], p99_goal=p99_goal,
                ))
    return rows


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """Plain-text table; `align` has one 'l' or 'r' per column."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        padded = (cell.ljust(w) if a == "l" else cell.rjust(w)
                  for cell, w, a in zip(cells, widths, align))
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_summary(rows: Sequence[SummaryRow]) -> str:
    headers = ["target", "test", "P", "ops/s", "x redis", "x twemproxy", "p50 ms", "p99 ms",
               "goal #2/#3", "goal #6", "p99 goal #6"]
    cells = [[
        row.target, row.test, str(row.pipeline), f"{row.rps:,.0f}",
        _fmt_ratio(row.vs_redis), _fmt_ratio(row.vs_twemproxy),
        f"{row.p50_ms:.3f}", f"{row.p99_ms:.3f}",
        row.base_goal.describe() if row.base_goal else "",
        row.fast_path_goal.describe() if row.fast_path_goal else "",
        row.p99_goal.describe() if row.p99_goal else "",
    ] for row in rows]
    return render_table(headers, cells, "llrrrrrrlll")


def render_cpu(runs: Iterable[Run], targets: Sequence[str], pipelines: Sequence[int]) -> str:
    """Median CPU µs per request (SET and GET together) of each measured process."""
    samples: dict[tuple[str, str], dict[int, list[float]]] = {}
    for run in runs:
        if run.error is None:
            for process, cpu in run.cpu_us_per_request.items():
                samples.setdefault((run.target, process), {}).setdefault(
                    run.pipeline, []).append(cpu)
    cells = []
    for target in targets:
        for (sample_target, process), by_pipeline in samples.items():
            if sample_target == target:
                cells.append([target, process] + [
                    f"{statistics.median(by_pipeline[p]):.1f}" if p in by_pipeline else "-"
                    for p in pipelines])
    headers = ["target", "process"] + [f"P{p} us/req" for p in pipelines]
    return render_table(headers, cells, "ll" + "r" * len(pipelines))


# A/B against another revision (--baseline): every dyno target gets a twin of the same
# shape running the baseline's code, measured in the same rounds, right next to it.

def twin_name(target: str) -> str:
    return target + TWIN_SUFFIX


def twin_of(name: str) -> str | None:
    """The target a twin stands beside ("dyno-1@base" -> "dyno-1"); None for a target."""
    return name.removesuffix(TWIN_SUFFIX) if name.endswith(TWIN_SUFFIX) else None


def tls_name(target: str) -> str:
    return target + TLS_SUFFIX


def tls_of(name: str) -> str | None:
    """The plaintext target a TLS variant mirrors ("dyno-1+tls" -> "dyno-1"); else None."""
    return name.removesuffix(TLS_SUFFIX) if name.endswith(TLS_SUFFIX) else None


def with_tls(targets: Sequence[str]) -> list[str]:
    """--tls: each dyno target followed by its TLS variant (unless named already)."""
    out: list[str] = []
    for target in targets:
        if tls_of(target) in targets:
            continue  # goes right after its target
        out.append(target)
        if target in DYNO_TARGETS:
            out.append(tls_name(target))
    return out


def with_twins(targets: Sequence[str]) -> list[str]:
    """The targets to start, each dyno target's twin right after it."""
    return [name for target in targets
            for name in ((target, twin_name(target)) if target in DYNO_TARGETS else (target,))]


def round_order(names: Sequence[str], pipelines: Sequence[int], round_no: int
                ) -> list[tuple[str, int]]:
    """(target, P) in the order one round runs them.

    A target and its twin run back to back at each depth, so a slow moment of the machine
    hits both; the twin goes second in odd rounds and first in even ones, so that neither
    always follows the other (a warm shared Redis, the CPU's frequency). A TLS variant
    ("dyno-1+tls") runs beside its plaintext target the same way.
    """
    order = []
    for name in names:
        if twin_of(name) in names or tls_of(name) in names:
            continue  # runs beside its target
        pair = [name] + [other for other in (twin_name(name), tls_name(name)) if other in names]
        if round_no % 2 == 0:
            pair.reverse()
        order.extend((member, pipeline) for pipeline in pipelines for member in pair)
    return order


@dataclasses.dataclass(frozen=True)
class BaselineComparison:
    """One (target, test, P) next to its twin: medians over rounds, and each round's pair."""

    target: str
    test: str
    pipeline: int
    rps: float
    base_rps: float
    rps_ratio: float  # median ops/s of the target over its twin's
    round_ratios: tuple[float, ...]  # target / twin in each round where both ran
    p99_ms: float
    base_p99_ms: float
    p99_ratio: float


@dataclasses.dataclass(frozen=True)
class BaselineCpuComparison:
    """CPU µs per request (SET and GET together) of all of a target's measured processes,
    the sum of each process's median over rounds, next to its twin's."""

    target: str
    pipeline: int
    cpu_us: float
    base_cpu_us: float
    ratio: float


def baseline_partner(target: str) -> str | None:
    """What --baseline compares a target with: its twin (a twin itself: nothing)."""
    return None if twin_of(target) is not None else twin_name(target)


def tls_partner(target: str) -> str | None:
    """What the TLS table compares a TLS variant with: its plaintext target."""
    return tls_of(target)


def compare_with_baseline(runs: Iterable[Run], targets: Sequence[str],
                          pipelines: Sequence[int], partner=baseline_partner
                          ) -> list[BaselineComparison]:
    """Every target whose partner (its twin; or `partner(target)`, e.g. tls_partner) also
    has results, in `targets` then test then P order; "base" is the partner."""
    found: dict[tuple[str, str, int], dict[int, Measurement]] = {}
    for run in runs:
        for test, result in run.results.items():
            found.setdefault((run.target, test, run.pipeline), {})[run.round] = result
    rows = []
    for target in targets:
        for test in TESTS:
            for pipeline in pipelines:
                other = partner(target)
                ours = found.get((target, test, pipeline))
                theirs = found.get((other, test, pipeline)) if other else None
                if not ours or not theirs:
                    continue
                rps = statistics.median(r.rps for r in ours.values())
                base_rps = statistics.median(r.rps for r in theirs.values())
                p99 = statistics.median(r.p99_ms for r in ours.values())
                base_p99 = statistics.median(r.p99_ms for r in theirs.values())
                rows.append(BaselineComparison(
                    target=target, test=test, pipeline=pipeline, rps=rps, base_rps=base_rps,
                    rps_ratio=rps / base_rps,
                    round_ratios=tuple(ours[n].rps / theirs[n].rps
                                       for n in sorted(ours) if n in theirs),
                    p99_ms=p99, base_p99_ms=base_p99, p99_ratio=p99 / base_p99))
    return rows


def compare_cpu_with_baseline(runs: Iterable[Run], targets: Sequence[str],
                              pipelines: Sequence[int], partner=baseline_partner
                              ) -> list[BaselineCpuComparison]:
    samples: dict[tuple[str, int], dict[str, list[float]]] = {}
    for run in runs:
        if run.error is None:
            for process, cpu in run.cpu_us_per_request.items():
                samples.setdefault((run.target, run.pipeline), {}).setdefault(
                    process, []).append(cpu)

    def total(target: str, pipeline: int) -> float | None:
        by_process = samples.get((target, pipeline))
        return (sum(statistics.median(cpu) for cpu in by_process.values())
                if by_process else None)

    rows = []
    for target in targets:
        for pipeline in pipelines:
            other = partner(target)
            ours, theirs = total(target, pipeline), (total(other, pipeline) if other else None)
            if ours is not None and theirs:
                rows.append(BaselineCpuComparison(target, pipeline, ours, theirs, ours / theirs))
    return rows


def render_baseline_comparison(rows: Sequence[BaselineComparison]) -> str:
    headers = ["target", "test", "P", "ops/s", "base ops/s", "x base", "rounds x base",
               "p99 ms", "base p99", "p99 x base"]
    cells = [[
        row.target, row.test, str(row.pipeline), f"{row.rps:,.0f}", f"{row.base_rps:,.0f}",
        f"{row.rps_ratio:.3f}",
        f"{min(row.round_ratios):.3f}..{max(row.round_ratios):.3f}" if row.round_ratios else "-",
        f"{row.p99_ms:.3f}", f"{row.base_p99_ms:.3f}", f"{row.p99_ratio:.2f}",
    ] for row in rows]
    return render_table(headers, cells, "llrrrrrrrr")


def render_baseline_cpu(rows: Sequence[BaselineCpuComparison]) -> str:
    headers = ["target", "P", "us/req", "base us/req", "x base"]
    cells = [[row.target, str(row.pipeline), f"{row.cpu_us:.1f}", f"{row.base_cpu_us:.1f}",
              f"{row.ratio:.3f}"] for row in rows]
    return render_table(headers, cells, "lrrrr")


def render_tls_comparison(rows: Sequence[BaselineComparison],
                          cpu_rows: Sequence[BaselineCpuComparison]) -> str:
    """TLS variants against their plaintext targets (rows from tls_partner)."""
    cpu = {(row.target, row.pipeline): row for row in cpu_rows}
    headers = ["target", "test", "P", "plain ops/s", "TLS ops/s", "TLS x plain",
               "rounds x plain", "plain p99", "TLS p99", "plain us/req", "TLS us/req"]
    cells = []
    for row in rows:
        cost = cpu.get((row.target, row.pipeline))
        cells.append([
            tls_of(row.target) or row.target, row.test, str(row.pipeline), f"{row.base_rps:,.0f}",
            f"{row.rps:,.0f}", f"{row.rps_ratio:.2f}",
            "..".join(f"{r:.2f}" for r in (min(row.round_ratios), max(row.round_ratios)))
            if row.round_ratios else "-",
            f"{row.base_p99_ms:.3f}", f"{row.p99_ms:.3f}",
            f"{cost.base_cpu_us:.1f}" if cost else "-", f"{cost.cpu_us:.1f}" if cost else "-"])
    return render_table(headers, cells, "llrrrrrrrrr")


def code_mismatch(package: Path, expected_root: Path | None, baseline_root: Path) -> str | None:
    """Why a process importing dyno from `package` runs the wrong code, or None.

    A twin (expected_root = the baseline tree) must import that tree's dyno/; every other
    dyno process (expected_root None: the checkout) anything but the baseline tree.
    """
    if expected_root is not None and package != expected_root / "dyno":
        return f"imports dyno from {package}, not from the baseline tree {expected_root}"
    if expected_root is None and package.is_relative_to(baseline_root):
        return f"imports dyno from the baseline tree ({package}), not from the checkout"
    return None


@dataclasses.dataclass(frozen=True)
class ClusterNode:
    name: str
    listen: tuple[str, int]
    redis: tuple[str, int]
    pid: int | None
    redis_pid: int | None
    rack: str


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = HOST
    return host, int(port)


def parse_cluster_json(data: dict) -> list[ClusterNode]:
    """The nodes `dyno cluster up` wrote to DIR/cluster.json, first node first."""
    nodes = []
    for index, node in enumerate(data["nodes"]):
        rack = node.get("rack") or f"node{index + 1}"  # nodes-per-rack 1: a node is a rack
        dc = node.get("dc") or node.get("datacenter")
        nodes.append(ClusterNode(
            name=node.get("name") or f"node{index + 1}",
            listen=parse_address(node["listen"]),
            redis=parse_address(node["redis"]),
            pid=node.get("pid"),
            redis_pid=node.get("redis_pid"),
            rack=f"{dc}/{rack}" if dc else rack,
        ))
    return nodes


# Dynomite's targets: the configs are written here (pure), the binary comes from outside.

@dataclasses.dataclass(frozen=True)
class DynomitePorts:
    """The ports of one node of a Dynomite target, and of the Redis it fronts."""

    listen: int  # clients
    dyn_listen: int  # peers
    stats_listen: int  # Dynomite's default, 0.0.0.0:22222, is nutcracker's and dyno's too
    redis: int


DYNOMITE_TOKEN = "0"  # one node per rack: `dyno cluster up --nodes-per-rack 1`'s token


def dynomite_configs(nodes: Sequence[DynomitePorts], consistency: str) -> list[str]:
    """One Dynomite YAML per node, the shape of dyno's targets: node i is rack{i} of dc1
    with token 0 (every rack holds one full copy, as in `dyno cluster up`), every other
    node in its dyn_seeds (simple_provider), its Redis as the one server (data_store 0),
    `consistency` for reads and writes. mbuf size, connections, timeouts, gossip: Dynomite's
    defaults (its -m is deprecated; mbuf_size unset means 16384 bytes)."""
    def seed(index: int, node: DynomitePorts) -> str:
        return f"{HOST}:{node.dyn_listen}:rack{index}:dc1:{DYNOMITE_TOKEN}"

    configs = []
    for index, node in enumerate(nodes, 1):
        seeds = [seed(other_index, other) for other_index, other in enumerate(nodes, 1)
                 if other_index != index]
        configs.append(
            "dyn_o_mite:\n"
            "  datacenter: dc1\n"
            f"  rack: rack{index}\n"
            f"  listen: {HOST}:{node.listen}\n"
            f"  dyn_listen: {HOST}:{node.dyn_listen}\n"
            f"  stats_listen: {HOST}:{node.stats_listen}\n"
            f"  tokens: '{DYNOMITE_TOKEN}'\n"
            "  data_store: 0\n"
            "  dyn_seed_provider: simple_provider\n"
            + ("  dyn_seeds:\n" + "".join(f"  - {s}\n" for s in seeds) if seeds else "")
            + f"  read_consistency: {consistency}\n"
            f"  write_consistency: {consistency}\n"
            "  servers:\n"
            f"  - {HOST}:{node.redis}:1\n")
    return configs


def dynomite_binary(environ: dict[str, str]) -> Path:
    """The dynomite binary DYNOMITE_BIN names; a BenchError (one line) when there is none."""
    value = environ.get(DYNOMITE_BIN, "").strip()
    if not value:
        raise BenchError(f"the dynomite-* targets need {DYNOMITE_BIN}=/path/to/dynomite, a "
                         "Netflix/dynomite binary built outside this repository: see "
                         "docs/performance.md, \"Dynomite side by side\"")
    binary = Path(value).expanduser()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise BenchError(f"{DYNOMITE_BIN}={value} is not an executable file (build it as "
                         "docs/performance.md, \"Dynomite side by side\", says)")
    return binary.resolve()


# ---------------------------------------------------------------------------------------
# Processes: start in their own group, stop by that group, always.
# ---------------------------------------------------------------------------------------

_handed_out_ports: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now (and that this script has not handed out)."""
    while True:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port


def spawn(argv: Sequence[str], log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has already exited


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """Stop a process this script started indirectly (through `dyno cluster up`)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def become_subreaper() -> None:
    """Adopt the orphans of our children (the nodes `dyno cluster up` leaves running).

    Then they are reaped here once stopped, instead of lingering as zombies where PID 1
    does not reap (as in some containers and VMs), and their exit is seen at once.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_adopted_children() -> None:
    """Collect every exited child; only after all Popen objects have been waited for."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def cpu_seconds_of(processes: dict[str, int]) -> dict[str, float]:
    """utime + stime of each process, from /proc/PID/stat (fields 14 and 15)."""
    seconds = {}
    for label, pid in processes.items():
        if not pid_alive(pid):
            raise BenchError(f"{label} (pid {pid}) is not running any more")
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        seconds[label] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return "(no log)"
    return "\n".join("    " + line for line in text) or "    (empty log)"


def command(host: str, port: int, *args: str, timeout: float = 2.0,
            tls_ca: Path | None = None) -> bytes:
    """Send one command and return the first reply line (enough for +OK/+PONG/:N);
    over TLS, trusting `tls_ca`, when given."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    conn = socket.create_connection((host, port), timeout=timeout)
    if tls_ca is not None:
        try:
            conn = ssl.create_default_context(cafile=str(tls_ca)).wrap_socket(
                conn, server_hostname=host)
        except BaseException:
            conn.close()
            raise
    with conn:
        conn.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.strip()


def wait_until_serving(host: str, port: int, what: str, log: Path,
                       proc: subprocess.Popen | None = None, timeout: float = 30.0,
                       tls_ca: Path | None = None) -> None:
    """Wait until SET through (host, port) answers +OK: the whole request path works."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode}; its log:\n"
                             + log_tail(log))
        try:
            reply = command(host, port, "SET", PROBE_KEY, "1", tls_ca=tls_ca)
            if reply == b"+OK":
                return
            last = reply.decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{what} did not serve SET on {host}:{port} within {timeout:.0f} s "
                     f"(last: {last}); its log:\n{log_tail(log)}")


def redis_cli(host: str, port: int, *args: str, timeout: float = 60.0) -> str:
    done = subprocess.run(["redis-cli", "-h", host, "-p", str(port), *args],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BenchError(f"redis-cli -p {port} {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def tool_version(tool: str) -> str:
    """`redis-server 7.0.15`, `nutcracker 0.5.0`: from the tool's --version banner."""
    done = subprocess.run([tool, "--version"], capture_output=True, text=True)
    found = re.search(r"(?:v=|-)(\d+\.\d+\.\d+)", done.stdout + done.stderr)
    return f"{tool} {found.group(1) if found else '(unknown version)'}"


# ---------------------------------------------------------------------------------------
# The code a dyno target runs: this checkout's, or (--baseline) another revision's,
# extracted from git into the work directory; and the check which one a process runs.
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DynoCode:
    """Which dyno package a dyno target's processes import.

    `root` None: whatever the Python running this script imports, this checkout (the
    virtualenv's editable install). Otherwise a tree holding a dyno/ package, the
    --baseline revision extracted into the work directory, put ahead of everything else.
    """

    label: str
    root: Path | None = None
    commit: str | None = None

    def argv(self, *args: str) -> list[str]:
        """The dyno CLI under this virtualenv's Python (the same for both codes)."""
        return [sys.executable, "-m", "dyno", *args]

    def env(self) -> dict[str, str] | None:
        """The environment its processes start with; None: this script's own."""
        if self.root is None:
            return None
        env = dict(os.environ)
        # PYTHONPATH is searched before the editable install's finder (appended to
        # sys.meta_path); `dyno cluster up` keeps it for the nodes it spawns. But
        # `python -m` puts its working directory first on sys.path, and run from the
        # checkout that is the checkout's dyno/: PYTHONSAFEPATH (3.11) leaves it out.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.root), env.get("PYTHONPATH"))
                                            if p)
        env["PYTHONSAFEPATH"] = "1"
        return env


CHECKOUT = DynoCode("this checkout")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)} in {repo}: "
                         f"{done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout.strip()


def script_repository() -> Path:
    """The git repository holding this script, where --baseline revisions are resolved."""
    return Path(git(Path(__file__).resolve().parent, "rev-parse", "--show-toplevel"))


def describe_checkout(repo: Path) -> DynoCode:
    """The checkout's code, labelled with its commit. Reads only: no index refresh."""
    head = git(repo, "rev-parse", "HEAD")
    dirty = git(repo, "--no-optional-locks", "status", "--porcelain", "--", "dyno")
    return DynoCode(f"this checkout (HEAD {head[:12]}"
                    + (", with uncommitted changes in dyno/)" if dirty else ")"), commit=head)


def extract_baseline(revision: str, repo: Path, workdir: Path) -> DynoCode:
    """`git archive REV | tar -x` into workdir/baseline; the repository is only read."""
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                           f"{revision}^{{commit}}"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise BenchError(f"--baseline: {revision!r} is not a commit in {repo}")
    commit = done.stdout.strip()
    tree = workdir / "baseline"
    tree.mkdir()
    with tempfile.TemporaryFile() as err:
        archive = subprocess.Popen(["git", "-C", str(repo), "archive", "--format=tar", commit],
                                   stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        untar = subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout,
                               stderr=err)
        archive.stdout.close()
        archive.wait()
        if archive.returncode or untar.returncode:
            err.seek(0)
            raise BenchError(f"--baseline: git archive {commit[:12]} | tar -x failed: "
                             f"{err.read().decode(errors='replace').strip()[:300]}")
    if not (tree / "dyno" / "__init__.py").is_file():
        raise BenchError(f"--baseline: {revision} ({commit[:12]}) has no dyno package")
    return DynoCode(f"baseline {revision} ({commit[:12]})", root=tree, commit=commit)


# The process asked which dyno it imports: run like it (its interpreter, environment and
# working directory), `import dyno` resolves as it did. (`-c` puts the working directory
# first on sys.path as `-m` does, and under PYTHONSAFEPATH neither does.)
PROBE = "import dyno; print(dyno.__file__)"


def dyno_package_of(pid: int) -> Path:
    """The dyno/ directory the running Python process `pid` imports."""
    proc = Path(f"/proc/{pid}")
    try:
        interpreter = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
        env = dict(item.split("=", 1) for item in (proc / "environ").read_bytes().decode(
            errors="surrogateescape").split("\0") if "=" in item)
        cwd = os.readlink(proc / "cwd")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read pid {pid}'s command line and environment: {exc}") from None
    done = subprocess.run([interpreter, "-c", PROBE], env=env, cwd=cwd, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60)
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"pid {pid}'s Python cannot import dyno: {done.stderr.strip()[-300:]}")
    return Path(done.stdout.strip()).resolve().parent


# ---------------------------------------------------------------------------------------
# Targets: each a small class with start()/stop(), the port clients use, the processes
# whose CPU is measured, and the Redis servers behind it grouped by rack.
# ---------------------------------------------------------------------------------------

class RedisServer:
    """A redis-server without persistence, in its own directory."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.dir = workdir / name
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = spawn(["redis-server", "--port", str(self.port), "--bind", HOST,
                           "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                          self.log)
        wait_until_serving(HOST, self.port, f"redis-server ({self.name})", self.log, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class Target:
    name: str
    description = ""
    client_port = 0
    code: DynoCode | None = None  # a dyno target's: which dyno package its processes run
    tls_ca: Path | None = None  # a TLS variant's: clients speak TLS, trusting this CA

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def measured_processes(self) -> dict[str, int]:
        """label -> pid of each process whose CPU per request is reported."""
        raise NotImplementedError

    def backends_by_rack(self) -> dict[str, list[tuple[str, int]]]:
        raise NotImplementedError


class PlainRedis(Target):
    """The shared Redis itself: the reference."""

    name = "redis"

    def __init__(self, backend: RedisServer):
        self.backend = backend

    def start(self) -> None:
        self.client_port = self.backend.port
        self.description = (f"{tool_version('redis-server')}, "
                            f"port {self.client_port}: the shared backend, measured directly")

    def stop(self) -> None:
        pass  # the shared backend is stopped by whoever started it

    def measured_processes(self) -> dict[str, int]:
        return {"redis-server": self.backend.proc.pid}

    def backends_by_rack(self) -> dict[str, list[tuple[str, int]]]:
        return {"-": [(HOST, self.backend.port)]}


class Twemproxy(Target):
    """Debian's nutcracker in front of the shared Redis."""

    name = "twemproxy"

    def __init__(self, backend: RedisServer, workdir: Path):
        self.backend = backend
        self.dir = workdir / "twemproxy"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if shutil.which("nutcracker") is None:
            raise BenchError("nutcracker not found: `make bench` installs Debian's nutcracker")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.client_port = free_port()
        conf = self.dir / "nutcracker.yml"
        conf.write_text(
            "bench:\n"
            f"  listen: {HOST}:{self.client_port}\n"
            "  hash: fnv1a_64\n"
            "  distribution: ketama\n"
            "  redis: true\n"
            "  auto_eject_hosts: false\n"
            "  servers:\n"
            f"    - {HOST}:{self.backend.port}:1\n")
        log = self.dir / "nutcracker.log"
        # -o/-s/-a: Debian's defaults are /var/log/nutcracker and stats on 0.0.0.0:22222,
        # which is also Dynomite's (and dyno's) stats port.
        self.proc = spawn(["nutcracker", "-c", str(conf), "-o", str(log),
                           "-s", str(free_port()), "-a", HOST], log)
        wait_until_serving(HOST, self.client_port, "nutcracker", log, self.proc)
        self.description = (f"{tool_version('nutcracker')}, "
                            f"port {self.client_port} -> shared redis port {self.backend.port} "
                            "(one server connection)")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def measured_processes(self) -> dict[str, int]:
        return {"nutcracker": self.proc.pid}

    def backends_by_rack(self) -> dict[str, list[tuple[str, int]]]:
        return {"-": [(HOST, self.backend.port)]}


class DynoNode(Target):
    """One dyno node (`dyno start --config`) in front of the shared Redis."""

    def __init__(self, backend: RedisServer, workdir: Path, name: str = "dyno-1",
                 code: DynoCode = CHECKOUT, certs: Path | None = None):
        self.name = name
        self.code = code
        self.backend = backend
        self.dir = workdir / name
        self.proc: subprocess.Popen | None = None
        self.certs = certs  # a TLS variant's `dyno certs` directory
        self.tls_ca = None if certs is None else certs / "ca.pem"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.client_port = free_port()
        conf = self.dir / "dyno.yml"
        conf.write_text(
            "dyn_o_mite:\n"
            "  datacenter: dc1\n"
            "  rack: rack1\n"
            f"  listen: {HOST}:{self.client_port}\n"
            f"  dyn_listen: {HOST}:{free_port()}\n"
            f"  stats_listen: {HOST}:{free_port()}\n"
            "  tokens: '0'\n"
            "  data_store: 0\n"
            "  servers:\n"
            f"  - {HOST}:{self.backend.port}:1\n"
            + ("" if self.certs is None else
               f"  client_tls_cert: {self.certs / 'node1.pem'}\n"
               f"  client_tls_key: {self.certs / 'node1-key.pem'}\n"))
        log = self.dir / "dyno.log"
        self.proc = spawn(self.code.argv("start", "--config", str(conf)), log, self.code.env())
        wait_until_serving(HOST, self.client_port, "dyno start", log, self.proc,
                           tls_ca=self.tls_ca)
        self.description = (f"dyno start --config {conf.name}, port {self.client_port} "
                            f"{'(TLS) ' if self.certs else ''}-> "
                            f"shared redis port {self.backend.port}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def measured_processes(self) -> dict[str, int]:
        return {"dyno": self.proc.pid}

    def backends_by_rack(self) -> dict[str, list[tuple[str, int]]]:
        return {"-": [(HOST, self.backend.port)]}


class DynoCluster(Target):
    """`dyno cluster up` with its own Redis per node; the client talks to the first node.

    Every target stays up for the whole run (rounds interleave), so the two cluster shapes
    run side by side: `dyno cluster up` must pick free ports for nodes and Redis servers.
    """

    def __init__(self, name: str, workdir: Path, code: DynoCode = CHECKOUT,
                 certs: Path | None = None):
        self.name = name
        self.code = code
        self.dcs, self.racks, self.nodes_per_rack, self.consistency = CLUSTER_SHAPES[
            twin_of(name) or tls_of(name) or name]
        self.certs = certs  # a TLS variant's `dyno certs` directory
        self.tls_ca = None if certs is None else certs / "ca.pem"
        self.dir = workdir / name
        self.nodes: list[ClusterNode] = []
        self.started = False

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir / "cluster-up.log"
        argv = self.code.argv("cluster", "up", "--dir", str(self.dir), "--dcs", str(self.dcs),
                         "--racks", str(self.racks), "--nodes-per-rack", str(self.nodes_per_rack),
                         "--read-consistency", self.consistency,
                         "--write-consistency", self.consistency,
                         *(() if self.certs is None else ("--client-tls", str(self.certs))))
        self.started = True  # from here on, stop() must run even if `up` fails half-way
        with open(log, "ab") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=120, env=self.code.env())
        if done.returncode != 0:
            raise BenchError(f"`dyno {' '.join(argv[3:])}` exited with status "
                             f"{done.returncode}; its log:\n{log_tail(log)}")
        self.nodes = self._read_nodes()
        first = self.nodes[0]
        host, self.client_port = first.listen
        wait_until_serving(host, self.client_port, f"dyno node {first.name}", log,
                           tls_ca=self.tls_ca)
        lagging = self._racks_missing_probe()
        self.description = (
            f"dyno cluster up --dcs {self.dcs} --racks {self.racks} "
            f"--nodes-per-rack {self.nodes_per_rack}{' --client-tls' if self.certs else ''}, "
            f"{self.consistency}, "
            f"own redis-server per node, client on {first.name} port {self.client_port}")
        if lagging:
            # Measured anyway: the rack check after each run then reports the lost writes.
            warning = f"a SET through {first.name} never reached {', '.join(lagging)}"
            progress(f"bench: {self.name}: WARNING: {warning}")
            self.description += f"; WARNING: {warning}"

    def _racks_missing_probe(self, timeout: float = 10.0) -> list[str]:
        """Wait until the probe SET has reached every rack (peer links up); the racks it
        still has not reached when `timeout` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            lagging = [rack for rack, servers in self.backends_by_rack().items()
                       if not any(redis_cli(h, p, "EXISTS", PROBE_KEY).strip() == "1"
                                  for h, p in servers)]
            if not lagging or time.monotonic() > deadline:
                return lagging
            time.sleep(0.1)

    def _read_nodes(self) -> list[ClusterNode]:
        path = self.dir / "cluster.json"
        try:
            return parse_cluster_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BenchError(f"cannot read {path}: {exc!r}") from None

    def stop(self) -> None:
        if not self.started:
            return
        log = self.dir / "cluster-down.log"
        with open(log, "ab") as out, contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(self.code.argv("cluster", "down", "--dir", str(self.dir)),
                           stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=60, env=self.code.env())
        # Whatever `down` left behind (or all of it, when `up` died before writing
        # cluster.json completely), stopped by the pids the cluster reported.
        with contextlib.suppress(BenchError):
            self.nodes = self.nodes or self._read_nodes()
        for node in self.nodes:
            for pid in (node.pid, node.redis_pid):
                if pid:
                    stop_pid(pid)

    def measured_processes(self) -> dict[str, int]:
        return {node.name: node.pid for node in self.nodes if node.pid}

    def backends_by_rack(self) -> dict[str, list[tuple[str, int]]]:
        racks: dict[str, list[tuple[str, int]]] = {}
        for node in self.nodes:
            racks.setdefault(node.rack, []).append(node.redis)
        return racks


def racks_missing_fresh_probe(client_port: int, racks: dict[str, list[tuple[str, int]]],
                              timeout: float = 30.0, settle: float = 1.0) -> list[str]:
    """Write a new probe value through the client port until every rack has it; the racks
    the last one did not reach when `timeout` runs out.

    Not DynoCluster's one probe: each Redis here was started by this script, which left the
    probe key in it; and a Dynomite node that starts before its peers listen answers +OK
    while it drops what it owes them (at DC_ONE) until its retry connects, so one write
    proves nothing, a write that arrives everywhere proves the links are up.
    """
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        value = f"fresh-{attempt}"
        with contextlib.suppress(OSError):
            command(HOST, client_port, "SET", PROBE_KEY, value)
        arrived_by = min(deadline, time.monotonic() + settle)
        while True:
            lagging = [rack for rack, servers in racks.items()
                       if not any(redis_cli(h, p, "GET", PROBE_KEY).strip() == value
                                  for h, p in servers)]
            if not lagging:
                return []
            if time.monotonic() > arrived_by:
                break
            time.sleep(0.05)
        if time.monotonic() > deadline:
            return lagging


class Dynomite(Target):
    """Netflix's Dynomite (the binary DYNOMITE_BIN names) in one of dyno's shapes.

    "dynomite-1" is one node in front of the shared Redis, as dyno-1; the 3-rack shapes
    start a redis-server per node, as `dyno cluster up` does, and the client talks to
    node1. Each node is measured on its own (node1 coordinates, the others replicate).
    """

    def __init__(self, name: str, shared: RedisServer, workdir: Path, binary: Path):
        self.name = name
        self.racks, self.consistency = DYNOMITE_SHAPES[name]
        self.shared = shared
        self.binary = binary
        self.dir = workdir / name
        self.redis_servers: list[RedisServer] = []
        self.procs: list[subprocess.Popen] = []
        self.ports: list[DynomitePorts] = []

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.racks == 1:
            redis_ports = [self.shared.port]
        else:
            for index in range(1, self.racks + 1):
                server = RedisServer(f"{self.name}/redis-node{index}", self.dir.parent)
                self.redis_servers.append(server)  # stop() stops it, even if start fails
                server.start()
            redis_ports = [server.port for server in self.redis_servers]
        self.ports = [DynomitePorts(free_port(), free_port(), free_port(), redis)
                      for redis in redis_ports]
        for index, conf in enumerate(dynomite_configs(self.ports, self.consistency), 1):
            path = self.dir / f"node{index}.yml"
            path.write_text(conf)
            self.procs.append(spawn([str(self.binary), "-c", str(path)],
                                    self.dir / f"node{index}.log"))
        self.client_port = self.ports[0].listen
        wait_until_serving(HOST, self.client_port, f"dynomite {self.label(1)}",
                           self.dir / "node1.log", self.procs[0])
        for index, proc in enumerate(self.procs, 1):
            if proc.poll() is not None:
                raise BenchError(f"dynomite {self.label(index)} exited with status "
                                 f"{proc.returncode}; its log:\n"
                                 + log_tail(self.dir / f"node{index}.log"))
        shape = ("one node -> shared redis port " + str(self.shared.port) if self.racks == 1
                 else f"{self.racks} racks x 1 node, own redis-server per node")
        self.description = (f"{tool_version(str(self.binary))}, {shape}, {self.consistency}, "
                            f"client on {self.label(1)} port {self.client_port}")
        lagging = (racks_missing_fresh_probe(self.client_port, self.backends_by_rack())
                   if self.racks > 1 else [])
        if lagging:
            warning = f"a SET through node1 never reached {', '.join(lagging)}"
            progress(f"bench: {self.name}: WARNING: {warning}")
            self.description += f"; WARNING: {warning}"

    def label(self, index: int) -> str:
        return "dynomite" if self.racks == 1 else f"node{index}"

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        for server in self.redis_servers:
            server.stop()

    def measured_processes(self) -> dict[str, int]:
        return {self.label(index): proc.pid for index, proc in enumerate(self.procs, 1)}

    def backends_by_rack(self) -> dict[str, list[tuple[str, int]]]:
        if self.racks == 1:
            return {"-": [(HOST, self.shared.port)]}
        return {f"dc1/rack{index}": [(HOST, ports.redis)]
                for index, ports in enumerate(self.ports, 1)}


def make_certificates(workdir: Path) -> Path:
    """`dyno certs` in the work directory: a CA and node certificates for the TLS variants."""
    directory = workdir / "certs"
    done = subprocess.run(CHECKOUT.argv("certs", "--out", str(directory), "--nodes", "6"),
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise BenchError(f"dyno certs failed: {(done.stderr or done.stdout).strip()[:300]}")
    return directory


def make_target(name: str, shared: RedisServer, workdir: Path,
                baseline: DynoCode | None = None, checkout: DynoCode = CHECKOUT,
                certs: Path | None = None, dynomite: Path | None = None) -> Target:
    """The target `name`; a twin ("dyno-1@base") is its target's shape running `baseline`;
    a TLS variant ("dyno-1+tls") its target's shape with TLS on the client port, with the
    certificates in `certs` (made by `dyno certs`); a Dynomite target runs the binary
    `dynomite` (from DYNOMITE_BIN)."""
    if name in DYNOMITE_TARGETS:
        if dynomite is None:
            raise BenchError(f"{name!r} needs {DYNOMITE_BIN}")
        return Dynomite(name, shared, workdir, dynomite)
    shape = twin_of(name)
    tls = None
    if shape is not None:
        if baseline is None or shape not in DYNO_TARGETS:
            raise BenchError(f"{name!r}: only a dyno target has a twin, and only with --baseline")
        code = baseline
    elif tls_of(name) is not None:
        shape, code, tls = tls_of(name), checkout, certs
        if shape not in DYNO_TARGETS or certs is None:
            raise BenchError(f"{name!r}: only a dyno target has a TLS variant")
    else:
        shape, code = name, checkout
    match shape:
        case "redis":
            return PlainRedis(shared)
        case "twemproxy":
            return Twemproxy(shared, workdir)
        case "dyno-1":
            return DynoNode(shared, workdir, name, code, tls)
        case _ if shape in CLUSTER_SHAPES:
            return DynoCluster(name, workdir, code, tls)
    raise BenchError(f"unknown target {name!r}; known: {', '.join(ALL_TARGETS)}")


# ---------------------------------------------------------------------------------------
# Measuring.
# ---------------------------------------------------------------------------------------

def flush_backends(target: Target) -> None:
    for servers in target.backends_by_rack().values():
        for host, port in servers:
            redis_cli(host, port, "FLUSHALL", "SYNC")


def check_every_rack_has_every_write(racks: dict[str, list[tuple[str, int]]],
                                     settle: float = 10.0) -> RackCheck:
    """Compare the key sets of all racks, once replication has settled.

    At DC_ONE the client is answered when its own rack has the write, so the other racks
    may trail by a moment: wait (up to `settle` s) until every rack's DBSIZE is equal and
    stops changing, then compare the actual keys (SCAN).
    """
    def dbsize(host: str, port: int) -> int:
        reply = redis_cli(host, port, "DBSIZE").strip()
        if not reply.isdigit():
            raise BenchError(f"DBSIZE on {host}:{port} answered {reply!r}")
        return int(reply)

    def sizes() -> dict[str, int]:
        return {rack: sum(dbsize(h, p) for h, p in servers) for rack, servers in racks.items()}

    deadline = time.monotonic() + settle
    previous = sizes()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        current = sizes()
        if current == previous and len(set(current.values())) == 1:
            break
        previous = current
    keys_by_rack = {}
    for rack, servers in racks.items():
        keys: set[str] = set()
        for host, port in servers:
            keys.update(redis_cli(host, port, "--scan").split())
        keys_by_rack[rack] = keys
    return compare_racks(keys_by_rack)


# Pipelined tests run this many times the requests (--quick: 3): Redis answers 200k
# requests at -P 16 in 0.15 s, too short to measure (its rate swung from 0.98M to
# 1.49M between rounds, and every -P 16 ratio with it).
PIPELINED_SCALE = 5


def requests_per_test(args: argparse.Namespace, pipeline: int) -> int:
    return args.requests * (args.pipelined_scale if pipeline > 1 else 1)


def run_benchmark(target: Target, round_no: int, pipeline: int, args: argparse.Namespace
                  ) -> Run:
    """One redis-benchmark invocation; whatever goes wrong is recorded in Run.error."""
    run = Run(target=target.name, round=round_no, pipeline=pipeline,
              requests=requests_per_test(args, pipeline))
    try:
        _measure(target, run, args)
    except (BenchError, subprocess.TimeoutExpired) as exc:
        run.error = str(exc)
    return run


def run_while_alive(argv: Sequence[str], processes: dict[str, int], timeout: float
                    ) -> subprocess.CompletedProcess:
    """Run redis-benchmark, but give up as soon as a process of the target dies.

    (redis-benchmark 7.0 keeps retrying a refused connection, spinning until killed.)
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                dead = [label for label, pid in processes.items() if not pid_alive(pid)]
                if dead:
                    raise BenchError(f"{', '.join(dead)} exited during the run")
                if time.monotonic() > deadline:
                    raise BenchError(f"redis-benchmark did not finish within {timeout:.0f} s")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.2)
        finally:
            stop_process(proc, grace=1.0)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())


def _measure(target: Target, run: Run, args: argparse.Namespace) -> None:
    argv = ["redis-benchmark", "-h", HOST, "-p", str(target.client_port),
            "-t", ",".join(t.lower() for t in TESTS), "-n", str(run.requests),
            "-c", str(args.clients), "-r", str(KEYSPACE), "-P", str(run.pipeline), "--csv",
            *(() if target.tls_ca is None else ("--tls", "--cacert", str(target.tls_ca)))]
    flush_backends(target)
    processes = target.measured_processes()
    before = cpu_seconds_of(processes)
    # Generous: a stuck proxy must not hang the benchmark, a slow one must finish.
    timeout = 60 + len(TESTS) * run.requests / 1000
    done = run_while_alive(argv, processes, timeout)
    after = cpu_seconds_of(processes)
    # redis-benchmark 7.0 exits non-zero at the first error reply it gets.
    noise = "WARNING: Could not fetch server CONFIG"  # twemproxy refuses CONFIG GET
    stderr = "\n".join(line for line in done.stderr.splitlines()
                       if line.strip() and noise not in line)
    if done.returncode != 0:
        raise BenchError(f"redis-benchmark exited {done.returncode}: "
                         f"{(stderr or done.stdout)[:500]}")
    run.results = parse_benchmark_csv(done.stdout)
    if set(run.results) != set(TESTS):
        raise BenchError(f"redis-benchmark reported {sorted(run.results)}, expected {TESTS}")
    total = run.requests * len(TESTS)
    run.cpu_us_per_request = {label: (after[label] - before[label]) * 1e6 / total
                              for label in processes}
    if len(target.backends_by_rack()) > 1:
        run.rack_check = check_every_rack_has_every_write(target.backends_by_rack())


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe_run(run: Run, width: int = 15) -> str:
    head = f"  round {run.round} {run.target:<{width}} P{run.pipeline:<3}"
    if run.error:
        return f"{head} ERROR: {run.error}"
    parts = [f"{test} {result.rps:>11,.0f}/s" for test, result in run.results.items()]
    if run.rack_check is not None:
        parts.append("racks: " + run.rack_check.describe())
    return head + "  ".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark dyno against plain Redis and twemproxy with redis-benchmark.")
    parser.add_argument("--quick", action="store_true",
                        help="a ~30 s check: fewer requests and one round "
                             "(unless --requests/--rounds say otherwise)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--requests", type=int,
                        help="redis-benchmark -n, per test at -P 1 (default 200000; quick "
                             f"100000); x{PIPELINED_SCALE} at a higher -P (quick x3)")
    parser.add_argument("--clients", type=int, default=50, help="redis-benchmark -c (50)")
    parser.add_argument("--pipelines", default="1,16",
                        help="comma list of redis-benchmark -P values (1,16)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help=f"comma list among {','.join(ALL_TARGETS)} "
                             f"(default: {','.join(DEFAULT_TARGETS)}); the dynomite-* "
                             f"targets (Netflix's Dynomite in dyno-1's and dyno-3r-*'s "
                             f"shapes) need {DYNOMITE_BIN}=/path/to/dynomite, built outside "
                             "this repository as docs/performance.md says")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every run's raw results to FILE")
    parser.add_argument("--tls", action="store_true",
                        help="beside each dyno target, its TLS variant TARGET+tls (TLS on the "
                             "client port, redis-benchmark --tls), in the same rounds; a table "
                             "compares each pair")
    parser.add_argument("--baseline", metavar="REV",
                        help="A/B: beside each dyno target, a twin TARGET@base of the same "
                             "shape running git revision REV (e.g. main) of this repository, "
                             "in the same rounds; the summary compares each pair")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.requests = args.requests or (100_000 if args.quick else 200_000)
    args.pipelined_scale = 3 if args.quick else PIPELINED_SCALE
    try:
        args.pipelines = [int(p) for p in args.pipelines.split(",") if p]
    except ValueError:
        parser.error(f"--pipelines: expected numbers like 1,16, got {args.pipelines!r}")
    args.targets = [t for t in args.targets.split(",") if t]
    if args.tls:
        args.targets = with_tls(args.targets)
    unknown = [t for t in args.targets if t not in ALL_TARGETS]
    if unknown:
        parser.error(f"--targets: unknown {', '.join(unknown)}; known: {', '.join(ALL_TARGETS)}")
    if args.rounds < 1 or args.requests < 1 or args.clients < 1 or not args.pipelines:
        parser.error("--rounds, --requests, --clients and --pipelines must be positive")
    if args.baseline is not None:
        if not args.baseline.strip() or args.baseline.startswith("-"):
            parser.error(f"--baseline: expected a git revision like main, got {args.baseline!r}")
        if not any(t in DYNO_TARGETS for t in args.targets):
            parser.error(f"--baseline compares dyno targets; --targets names none of "
                         f"{', '.join(DYNO_TARGETS)}")
    return args


def check_code(target: Target, baseline_root: Path) -> dict[str, tuple[int, Path]]:
    """Ask each of a started dyno target's processes which dyno it imports (a twin must
    run the baseline tree's, a target the checkout's); the answer goes in its description."""
    found = {}
    for process, pid in target.measured_processes().items():
        package = dyno_package_of(pid)
        mismatch = code_mismatch(package, target.code.root, baseline_root)
        if mismatch:
            raise BenchError(f"{process} (pid {pid}) {mismatch}")
        found[process] = (pid, package)
    packages = sorted({str(package) for _, package in found.values()})
    target.description += f"; {target.code.label}: dyno from {', '.join(packages)}"
    return found


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dynomite = None
    if any(t in DYNOMITE_TARGETS for t in args.targets):
        try:
            dynomite = dynomite_binary(os.environ)
        except BenchError as exc:
            progress(f"bench: {exc}")
            return 1
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if shutil.which(tool) is None:
            progress(f"bench: {tool} not found; `make install` installs redis-server "
                     "and redis-tools")
            return 1
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the finally below stops everything.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGHUP, _raise_keyboard_interrupt)
    become_subreaper()
    load_before = os.getloadavg()[0]  # before anything of ours runs

    runs: list[Run] = []
    targets: list[Target] = []
    failed_to_start: dict[str, str] = {}
    # --baseline: the code each side runs, and per dyno target, per process, the pid and
    # the dyno/ directory it was found to import.
    checkout, baseline = CHECKOUT, None
    imports: dict[str, dict[str, tuple[int, Path]]] = {}
    cleanup = contextlib.ExitStack()
    workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="dyno-bench-")))
    try:
        if args.baseline is not None:
            repo = script_repository()
            checkout = describe_checkout(repo)
            baseline = extract_baseline(args.baseline, repo, workdir)
            progress(f"A/B against {baseline.label}, extracted to {baseline.root}")
        shared = RedisServer("redis-shared", workdir)
        cleanup.callback(shared.stop)
        shared.start()
        certs = make_certificates(workdir) if any(map(tls_of, args.targets)) else None
        for name in args.targets if baseline is None else with_twins(args.targets):
            target = make_target(name, shared, workdir, baseline, checkout, certs, dynomite)
            cleanup.callback(target.stop)
            progress(f"starting {name} ...")
            try:
                target.start()
                if baseline is not None and target.code is not None:
                    imports[name] = check_code(target, baseline.root)
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                failed_to_start[name] = str(exc)
                progress(f"bench: {name} could not start, skipping it: {exc}")
                continue
            targets.append(target)

        progress(f"{args.rounds} round(s) x {len(targets)} target(s) x P in {args.pipelines}, "
                 f"{args.requests} requests per test at P1, x{args.pipelined_scale} pipelined")
        by_name = {target.name: target for target in targets}
        width = max([15, *map(len, by_name)])
        for round_no in range(1, args.rounds + 1):
            for name, pipeline in round_order(list(by_name), args.pipelines, round_no):
                run = run_benchmark(by_name[name], round_no, pipeline, args)
                runs.append(run)
                progress(describe_run(run, width))
    except KeyboardInterrupt:
        progress("bench: interrupted; stopping everything it started")
        return 130
    except BenchError as exc:
        progress(f"bench: {exc}")
        return 1
    finally:
        # Cleanup must not be cut short by a second Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        progress("stopping ...")
        cleanup.close()
        reap_adopted_children()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    names = [t.name for t in targets]
    print(f"\nredis-benchmark -t set,get -n {args.requests} (x{args.pipelined_scale} at -P > 1) "
          f"-c {args.clients} -r {KEYSPACE} "
          f"-P {{{','.join(map(str, args.pipelines))}}} --csv; median of {args.rounds} "
          f"interleaved round(s); {os.cpu_count()} CPUs")
    if load_before > (os.cpu_count() or 1) / 2:
        print(f"  WARNING: the machine was busy before the benchmark started (load average "
              f"{load_before:.1f}): other work competes for the CPUs, ratios are unreliable")
    width = max([15, *map(len, names), *map(len, failed_to_start)])
    for target in targets:
        print(f"  {target.name:<{width}} {target.description}")
    for name, error in failed_to_start.items():
        lines = error.splitlines()
        print(f"  {name:<{width}} NOT RUN: {lines[0]}" + (f" ... {lines[-1].strip()}"
                                                     if len(lines) > 1 else ""))
    print()
    print(render_summary(summarize(runs, names, args.pipelines)))
    print("\ngoal #2/#3: issues 2 (dyno-1) and 3 (3 racks); goal #6: the fast-path issue; "
          "ratios to plain Redis in this run.")
    print("\nCPU time per request (SET and GET together), median over rounds:")
    print(render_cpu(runs, names, args.pipelines))
    comparison = compare_with_baseline(runs, names, args.pipelines)
    cpu_comparison = compare_cpu_with_baseline(runs, names, args.pipelines)
    if baseline is not None:
        print(f"\nA/B: TARGET runs {checkout.label}, TARGET{TWIN_SUFFIX} {baseline.label}, "
              "back to back in every round; x base: TARGET over TARGET@base, from the "
              "medians; rounds x base: the lowest..highest of the rounds' pairs:")
        print(render_baseline_comparison(comparison) if comparison else "  (no pair ran)")
        print("\nCPU µs per request, all of a target's measured processes together "
              "(the sum of their medians), against its twin's:")
        print(render_baseline_cpu(cpu_comparison) if cpu_comparison else "  (no pair ran)")

    tls_rows = compare_with_baseline(runs, names, args.pipelines, partner=tls_partner)
    tls_cpu = compare_cpu_with_baseline(runs, names, args.pipelines, partner=tls_partner)
    if tls_rows:
        print("\nTLS on the client port: TARGET+tls against TARGET, in the same rounds; TLS x "
              "plain from the medians, rounds x plain the lowest..highest of the rounds' pairs; "
              "us/req: CPU of all the target's processes per request:")
        print(render_tls_comparison(tls_rows, tls_cpu))

    checks = [run for run in runs if run.rack_check is not None]
    if checks:
        print("\nEvery acknowledged write on every rack (after each run, racks' key sets):")
        for run in checks:
            print(f"  round {run.round} {run.target} P{run.pipeline}: "
                  f"{run.rack_check.describe()}")
    errors = [run for run in runs if run.error]
    for run in errors:
        print(f"\nERROR round {run.round} {run.target} P{run.pipeline}: {run.error}")

    if args.json:
        args.json.write_text(json.dumps({
            "command": {"requests": args.requests, "pipelined_requests": requests_per_test(args, 2),
                        "clients": args.clients,
                        "keyspace": KEYSPACE, "pipelines": args.pipelines,
                        "rounds": args.rounds},
            "targets": {t.name: t.description for t in targets},
            "not_run": failed_to_start,
            "runs": [dataclasses.asdict(run) for run in runs],
            "summary": [dataclasses.asdict(row)
                        for row in summarize(runs, names, args.pipelines)],
            **({} if not tls_rows else {
                "tls_comparison": [dataclasses.asdict(row) for row in tls_rows],
                "tls_cpu_comparison": [dataclasses.asdict(row) for row in tls_cpu],
            }),
            **({} if baseline is None else {
                "baseline": {"revision": args.baseline, "commit": baseline.commit,
                             "tree": str(baseline.root), "label": baseline.label},
                "checkout": {"commit": checkout.commit, "label": checkout.label},
                "code": {name: {process: {"pid": pid, "dyno": str(package)}
                                for process, (pid, package) in by_process.items()}
                         for name, by_process in imports.items()},
                "comparison": [dataclasses.asdict(row) for row in comparison],
                "cpu_comparison": [dataclasses.asdict(row) for row in cpu_comparison],
            }),
        }, indent=2))
        print(f"\nraw results written to {args.json}")
    lost_writes = any(not run.rack_check.ok for run in checks)
    return 1 if failed_to_start or errors or lost_writes else 0


if __name__ == "__main__":
    sys.exit(main())
