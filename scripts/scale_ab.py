#!/usr/bin/env python3
"""scripts/scale.py, A/B: another checkout's code against this tree's, interleaved.

Runs scale.py once with one round from BASE (a checkout of the code to compare with,
e.g. `git worktree add /tmp/base main`), then once from this tree, and again, --rounds
times, with the same scale.py arguments; so a slow minute of the machine hits both
alike. Then prints one table: per test and size, the medians over the runs of all dyno
CPU per request, the CPU above idle, wake-ups per request, and each size against 3 nodes,
for both; and the idle CPU of each size. A measurement, never a test: it exits 1 only
when a run failed (its output is kept).

    .venv/bin/python scripts/scale_ab.py --base /tmp/base --rounds 3 -- \\
        --sizes 1,4 --rate 2000 --seconds 8 --cluster-clients --controls
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
FIELDS = (("cpu_us_per_request", "all dyno µs/req"), ("cpu_us_above_idle", "above idle µs/req"),
          ("wakeups_per_request", "wakeups/req"))


def combine(runs: dict[str, list[dict]]) -> str:
    """The table of the medians, from each side's scale.py JSON outputs (``base``, ``new``)."""
    rows: dict[tuple, list[dict]] = {}
    idle: dict[tuple, list[float]] = {}
    for side, outputs in runs.items():
        for output in outputs:
            for row in output["summary"]:
                rows.setdefault((side, row["test"], row["nodes"], row.get("control", False)), []).append(row)
            for nodes, keys in output["keys"].items():
                idle.setdefault((side, int(nodes)), []).append(keys["idle_cpu_ms_per_s"])

    def median(side, key, field):
        return statistics.median(r[field] for r in rows[(side, *key)] if field in r)

    header = ["test", "nodes"]
    for _, title in FIELDS:
        header += [f"base: {title}", "new"]
    header += ["base: vs 3 nodes (all / above idle)", "new"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (2 * len(FIELDS)) + "---|---|"]
    keys = sorted({k[1:] for k in rows}, key=lambda k: (k[0] != "SET", k[1], k[2]))
    for key in keys:
        test, nodes, control = key
        smallest = min(k for k in keys if k[0] == test and not k[2])
        label = f"{nodes} as {nodes // 3} separate clusters of 3" if control else str(nodes)
        cells = [test, label]
        for field, _ in FIELDS:
            cells += [f"{median(side, key, field):.1f}" for side in ("base", "new")]
        for side in ("base", "new"):
            cells.append(" / ".join(f"{median(side, key, field) / median(side, smallest, field):.2f}"
                                    for field in ("cpu_us_per_request", "cpu_us_above_idle")))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| nodes | base: idle dyno CPU, ms/s | new |", "|---:|---:|---:|"]
    for nodes in sorted({n for _, n in idle}):
        lines.append(f"| {nodes} | " + " | ".join(
            f"{statistics.median(idle[side, nodes]):.1f}" if (side, nodes) in idle else "?"
            for side in ("base", "new")) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("scale_args", nargs="*", help="scale.py's arguments, after --")
    args = parser.parse_args(argv)
    if not (args.base / "scripts" / "scale.py").is_file():
        parser.error(f"{args.base} has no scripts/scale.py")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    out = Path(tempfile.mkdtemp(prefix="dyno-scale-ab-"))
    runs: dict[str, list[dict]] = {"base": [], "new": []}
    for round_no in range(1, args.rounds + 1):
        for side, tree in (("base", args.base.resolve()), ("new", HERE)):
            result = out / f"{side}-{round_no}.json"
            log = out / f"{side}-{round_no}.out"
            with open(log, "w") as sink:
                code = subprocess.call([sys.executable, str(tree / "scripts" / "scale.py"), *args.scale_args,
                                        "--rounds", "1", "--json", str(result)],
                                       cwd=tree, stdout=sink, stderr=subprocess.STDOUT)
            if code != 0:
                print(f"scale_ab.py: the {side} run of round {round_no} failed ({code}); see {log}", file=sys.stderr)
                return 1
            runs[side].append(json.loads(result.read_text()))
            print(f"round {round_no}: {side} done", file=sys.stderr, flush=True)
    print(f"`scripts/scale_ab.py --base {args.base} --rounds {args.rounds} -- {' '.join(args.scale_args)}`\n")
    print(combine(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
