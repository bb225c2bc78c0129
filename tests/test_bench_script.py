"""The pure parts of scripts/bench.py: parsing, medians and ratios, goals, tables.

The benchmark itself starts processes and is never run by the test suite.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench", Path(__file__).resolve().parent.parent / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench"] = bench  # dataclasses look their module up by name
_spec.loader.exec_module(bench)

CSV = """\
WARNING: Could not fetch server CONFIG
"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"SET","112359.55","0.240","0.064","0.223","0.375","0.599","1.303"
"GET","114942.53","0.231","0.072","0.223","0.271","0.487","2.663"
"""


def test_parse_benchmark_csv_reads_every_column_and_skips_noise():
    results = bench.parse_benchmark_csv(CSV)
    assert list(results) == ["SET", "GET"]
    assert results["SET"] == bench.Measurement("SET", 112359.55, 0.240, 0.064, 0.223, 0.375,
                                              0.599, 1.303)
    assert results["GET"].p99_ms == 0.487


def test_parse_benchmark_csv_without_header_is_an_error():
    with pytest.raises(bench.BenchError, match="no CSV header"):
        bench.parse_benchmark_csv("Could not connect to Redis at 127.0.0.1:1\n")


def result(test, rps, p50=0.2, p99=0.5):
    return bench.Measurement(test, rps, 0.0, 0.0, p50, 0.0, p99, 0.0)


def runs_of(target, pipeline, set_rps, get_rps):
    return [bench.Run(target, round_no, pipeline, 1000,
                      results={"SET": result("SET", s), "GET": result("GET", g)})
            for round_no, (s, g) in enumerate(zip(set_rps, get_rps), 1)]


def test_summarize_takes_medians_and_ratios_to_redis_and_twemproxy():
    runs = (runs_of("redis", 1, [100, 300, 200], [100, 100, 100])
            + runs_of("twemproxy", 1, [50, 80, 60], [70, 70, 70])
            + runs_of("dyno-1", 1, [10, 40, 90], [30, 30, 30]))
    rows = {(r.target, r.test): r for r in bench.summarize(runs, bench.ALL_TARGETS, [1])}
    assert rows["redis", "SET"].rps == 200
    assert rows["dyno-1", "SET"].rps == 40
    assert rows["dyno-1", "SET"].vs_redis == pytest.approx(0.20)
    assert rows["dyno-1", "SET"].vs_twemproxy == pytest.approx(40 / 60)
    assert rows["dyno-1", "SET"].base_goal.minimum == 0.35
    assert not rows["dyno-1", "SET"].base_goal.met
    assert rows["dyno-1", "GET"].vs_redis == pytest.approx(0.30)
    assert rows["dyno-1", "SET"].rounds == 3
    assert rows["redis", "SET"].base_goal is None  # no goals for the references


def test_summarize_without_reference_has_no_ratio_and_no_goal():
    rows = bench.summarize(runs_of("dyno-1", 16, [5], [5]), bench.ALL_TARGETS, [16])
    assert [(r.vs_redis, r.vs_twemproxy, r.base_goal) for r in rows] == [(None, None, None)] * 2


def test_rows_follow_target_then_test_then_pipeline_order():
    runs = runs_of("dyno-1", 16, [1], [1]) + runs_of("redis", 1, [1], [1]) \
        + runs_of("dyno-1", 1, [1], [1])
    rows = bench.summarize(runs, ["redis", "dyno-1"], [1, 16])
    assert [(r.target, r.test, r.pipeline) for r in rows] == [
        ("redis", "SET", 1), ("redis", "GET", 1),
        ("dyno-1", "SET", 1), ("dyno-1", "SET", 16), ("dyno-1", "GET", 1),
        ("dyno-1", "GET", 16)]


def test_goals_come_from_the_issues():
    assert bench.goal_minimum(bench.BASE_GOALS, "dyno-3r-one", "SET", 1) == 0.30
    assert bench.goal_minimum(bench.BASE_GOALS, "dyno-3r-one", "GET", 16) == 0.20
    assert bench.goal_minimum(bench.BASE_GOALS, "dyno-3r-quorum", "SET", 16) == 0.15
    assert bench.goal_minimum(bench.FAST_PATH_GOALS, "dyno-3r-one", "GET", 1) == 0.61
    assert bench.goal_minimum(bench.FAST_PATH_GOALS, "dyno-1", "GET", 16) == 0.37
    assert bench.goal_minimum(bench.BASE_GOALS, "twemproxy", "SET", 1) is None
    assert bench.goal_minimum(bench.BASE_GOALS, "dyno-1", "SET", 4) is None
    assert bench.Goal("#2/#3", 0.35, 0.35).describe() == ">=0.35 ok"
    assert bench.Goal("#2/#3", 0.35, 0.349).describe() == ">=0.35 FAIL"


def test_render_table_aligns_columns():
    text = bench.render_table(["name", "ops/s"], [["redis", "1,000"], ["dyno-1", "50"]], "lr")
    assert text.splitlines() == [
        "name    ops/s",
        "------  -----",
        "redis   1,000",
        "dyno-1     50",
    ]


def test_render_summary_shows_ratios_and_goals():
    runs = runs_of("redis", 1, [1000], [1000]) + runs_of("dyno-1", 1, [400], [300])
    text = bench.render_summary(bench.summarize(runs, bench.ALL_TARGETS, [1]))
    dyno_set = next(line for line in text.splitlines() if line.startswith("dyno-1  SET"))
    assert dyno_set.split() == ["dyno-1", "SET", "1", "400", "0.40", "-", "0.200", "0.500",
                                ">=0.35", "ok", ">=0.45", "FAIL", "1.00x", "<=2x", "ok"]


def test_p99_goal_compares_with_redis_at_pipeline_1_only():
    runs = [bench.Run("redis", 1, p, 1000, results={"SET": result("SET", 1000, p99=0.5)})
            for p in (1, 16)]
    runs += [bench.Run("dyno-1", 1, p, 1000, results={"SET": result("SET", 500, p99=1.5)})
             for p in (1, 16)]
    rows = {(r.target, r.pipeline): r for r in bench.summarize(runs, bench.ALL_TARGETS, [1, 16])
            if r.test == "SET"}
    assert rows["dyno-1", 1].p99_goal.ratio == pytest.approx(3.0)
    assert not rows["dyno-1", 1].p99_goal.met
    assert rows["dyno-1", 16].p99_goal is None
    assert rows["redis", 1].p99_goal is None


def test_compare_racks_counts_what_each_rack_misses():
    check = bench.compare_racks({"rack1": {"a", "b", "c"}, "rack2": {"a", "b", "c"},
                                 "rack3": {"a"}})
    assert check.keys_per_rack == {"rack1": 3, "rack2": 3, "rack3": 1}
    assert check.missing_per_rack == {"rack1": 0, "rack2": 0, "rack3": 2}
    assert not check.ok
    assert "WRITES LOST" in check.describe()
    assert bench.compare_racks({"rack1": {"a"}, "rack2": {"a"}}).ok


def test_parse_cluster_json_groups_nodes_by_rack():
    nodes = bench.parse_cluster_json({"nodes": [
        {"name": "a", "listen": "0.0.0.0:8102", "redis": "127.0.0.1:22122", "pid": 10,
         "rack": "rack1", "dc": "dc1"},
        {"name": "b", "listen": "127.0.0.1:8112", "redis": "127.0.0.1:22132", "pid": 11},
    ]})
    assert nodes[0].listen == ("127.0.0.1", 8102)
    assert nodes[0].rack == "dc1/rack1"
    assert nodes[1].rack == "node2"  # no rack given: one node per rack
    assert (nodes[1].pid, nodes[1].redis_pid) == (11, None)


@pytest.mark.parametrize("argv, at_p1, at_p16", [
    ([], 200_000, 1_000_000),
    (["--quick"], 100_000, 300_000),
    (["--requests", "1000"], 1000, 5000),
])
def test_pipelined_tests_run_more_requests(argv, at_p1, at_p16):
    args = bench.parse_args(argv)
    assert (bench.requests_per_test(args, 1), bench.requests_per_test(args, 16)) == (at_p1, at_p16)
