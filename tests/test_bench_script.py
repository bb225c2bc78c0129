"""scripts/bench.py: its pure parts (parsing, medians and ratios, goals, tables, the A/B
twins' names, order and comparison), and, marked integration, the --baseline machinery:
the probe that tells which dyno a process imports, and one tiny A/B run of the script.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from dyno import config, localcluster

integration = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent

_spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
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


# --------------------------------------------------------------------------- A/B (--baseline)

def test_twins_are_named_after_their_target():
    assert bench.twin_name("dyno-3r-one") == "dyno-3r-one@base"
    assert bench.twin_of("dyno-3r-one@base") == "dyno-3r-one"
    assert bench.twin_of("dyno-3r-one") is None
    assert bench.with_twins(["redis", "twemproxy", "dyno-1", "dyno-2dc-one"]) == [
        "redis", "twemproxy", "dyno-1", "dyno-1@base", "dyno-2dc-one", "dyno-2dc-one@base"]


def test_round_order_without_twins_is_target_then_pipeline():
    assert bench.round_order(["redis", "dyno-1"], [1, 16], 1) == [
        ("redis", 1), ("redis", 16), ("dyno-1", 1), ("dyno-1", 16)]


def test_round_order_runs_each_twin_beside_its_target_second_then_first():
    names = ["redis", "dyno-1", "dyno-1@base"]
    assert bench.round_order(names, [1, 16], 1) == [
        ("redis", 1), ("redis", 16),
        ("dyno-1", 1), ("dyno-1@base", 1), ("dyno-1", 16), ("dyno-1@base", 16)]
    assert bench.round_order(names, [1, 16], 2) == [
        ("redis", 1), ("redis", 16),
        ("dyno-1@base", 1), ("dyno-1", 1), ("dyno-1@base", 16), ("dyno-1", 16)]


def test_round_order_runs_a_twin_whose_target_did_not_start():
    assert bench.round_order(["redis", "dyno-1@base"], [1], 1) == [
        ("redis", 1), ("dyno-1@base", 1)]


@given(targets=st.lists(st.sampled_from(bench.ALL_TARGETS), unique=True, min_size=1),
       pipelines=st.lists(st.integers(1, 64), unique=True, min_size=1, max_size=3),
       round_no=st.integers(1, 6))
def test_round_order_runs_everything_once_and_pairs_side_by_side(targets, pipelines, round_no):
    names = bench.with_twins(targets)
    order = bench.round_order(names, pipelines, round_no)
    assert sorted(order) == sorted((n, p) for n in names for p in pipelines)
    for index, (name, pipeline) in enumerate(order):
        if bench.twin_of(name) is not None:
            partner = (bench.twin_of(name), pipeline)
            second = round_no % 2 == 1  # the twin follows in odd rounds, leads in even ones
            assert order[index - 1 if second else index + 1] == partner


def test_tls_variants_are_named_after_their_target_and_run_beside_it():
    assert bench.tls_of("dyno-3r-one+tls") == "dyno-3r-one" and bench.tls_of("dyno-1") is None
    assert bench.with_tls(["redis", "dyno-1", "dyno-3r-one", "dyno-1+tls"]) == [
        "redis", "dyno-1", "dyno-1+tls", "dyno-3r-one", "dyno-3r-one+tls"]
    assert bench.round_order(["redis", "dyno-1", "dyno-1+tls"], [1, 16], 1) == [
        ("redis", 1), ("redis", 16),
        ("dyno-1", 1), ("dyno-1+tls", 1), ("dyno-1", 16), ("dyno-1+tls", 16)]
    assert bench.round_order(["dyno-1", "dyno-1+tls"], [1], 2) == [("dyno-1+tls", 1), ("dyno-1", 1)]
    args = bench.parse_args(["--targets", "redis,dyno-1", "--tls"])
    assert args.targets == ["redis", "dyno-1", "dyno-1+tls"]


def test_tls_variants_are_compared_with_their_plaintext_target():
    runs = (paired_runs("dyno-1", 16, {1: 200, 2: 100}, p99=1.0, cpu={"dyno": 2.0})
            + paired_runs("dyno-1+tls", 16, {1: 100, 2: 75}, p99=2.0, cpu={"dyno": 3.0}))
    names = ["dyno-1", "dyno-1+tls"]
    rows = bench.compare_with_baseline(runs, names, [16], partner=bench.tls_partner)
    assert [(r.target, r.test) for r in rows] == [("dyno-1+tls", "SET"), ("dyno-1+tls", "GET")]
    assert rows[0].rps_ratio == pytest.approx(87.5 / 150)
    assert rows[0].round_ratios == pytest.approx((0.5, 0.75))
    cpu = bench.compare_cpu_with_baseline(runs, names, [16], partner=bench.tls_partner)
    assert [(c.target, c.ratio) for c in cpu] == [("dyno-1+tls", pytest.approx(1.5))]
    table = bench.render_tls_comparison(rows, cpu).splitlines()
    assert table[0].split()[:6] == ["target", "test", "P", "plain", "ops/s", "TLS"]
    assert table[2].split() == ["dyno-1", "SET", "16", "150", "88", "0.58", "0.50..0.75",
                                "1.000", "2.000", "2.0", "3.0"]


def paired_runs(target, pipeline, rps_by_round, p99=0.5, cpu=None):
    return [bench.Run(target, round_no, pipeline, 1000,
                      results={test: result(test, rps, p99=p99) for test in bench.TESTS},
                      cpu_us_per_request=cpu or {})
            for round_no, rps in rps_by_round.items()]


def test_compare_with_baseline_takes_medians_and_pairs_rounds():
    runs = (paired_runs("dyno-1", 1, {1: 90, 2: 120, 3: 100}, p99=1.5)
            + paired_runs("dyno-1@base", 1, {1: 100, 2: 100, 3: 80}, p99=1.0)
            + paired_runs("redis", 1, {1: 500}))
    rows = bench.compare_with_baseline(runs, ["redis", "dyno-1", "dyno-1@base"], [1])
    assert [(r.target, r.test) for r in rows] == [("dyno-1", "SET"), ("dyno-1", "GET")]
    row = rows[0]
    assert (row.rps, row.base_rps) == (100, 100)
    assert row.rps_ratio == pytest.approx(1.0)
    assert row.round_ratios == pytest.approx((0.9, 1.2, 1.25))
    assert row.p99_ratio == pytest.approx(1.5)


def test_compare_with_baseline_pairs_only_rounds_both_ran():
    runs = (paired_runs("dyno-1", 1, {1: 50, 2: 60})
            + paired_runs("dyno-1@base", 1, {2: 40}))
    row = bench.compare_with_baseline(runs, ["dyno-1", "dyno-1@base"], [1])[0]
    assert row.round_ratios == pytest.approx((1.5,))
    assert row.rps_ratio == pytest.approx(55 / 40)


def test_compare_with_baseline_needs_both_sides():
    runs = paired_runs("dyno-1", 1, {1: 50}) + paired_runs("dyno-3r-one@base", 1, {1: 50})
    assert bench.compare_with_baseline(runs, ["dyno-1", "dyno-3r-one@base"], [1]) == []


def test_compare_cpu_with_baseline_sums_each_process_median():
    runs = (paired_runs("dyno-3r-one", 1, {1: 1, 2: 1, 3: 1}, cpu={"node1": 20, "node2": 5})
            + paired_runs("dyno-3r-one@base", 1, {1: 1}, cpu={"node1": 10, "node2": 5})
            + paired_runs("dyno-3r-one@base", 1, {2: 1}, cpu={"node1": 30, "node2": 7}))
    runs[0].cpu_us_per_request = {"node1": 80, "node2": 5}  # the median skips it
    failed = paired_runs("dyno-3r-one@base", 1, {3: 1}, cpu={"node1": 999, "node2": 999})[0]
    failed.error = "redis-benchmark exited 1"  # an error's CPU is no sample
    rows = bench.compare_cpu_with_baseline(runs + [failed],
                                           ["dyno-3r-one", "dyno-3r-one@base"], [1])
    assert rows == [bench.BaselineCpuComparison("dyno-3r-one", 1, 25.0, 26.0, 25 / 26)]


def test_render_baseline_tables():
    runs = (paired_runs("dyno-1", 1, {1: 1000, 2: 1100}, p99=2.0, cpu={"dyno": 30})
            + paired_runs("dyno-1@base", 1, {1: 1000, 2: 1000}, p99=1.0, cpu={"dyno": 20}))
    names = ["dyno-1", "dyno-1@base"]
    text = bench.render_baseline_comparison(bench.compare_with_baseline(runs, names, [1]))
    set_row = next(line for line in text.splitlines() if line.startswith("dyno-1  SET"))
    assert set_row.split() == ["dyno-1", "SET", "1", "1,050", "1,000", "1.050",
                               "1.000..1.100", "2.000", "1.000", "2.00"]
    text = bench.render_baseline_cpu(bench.compare_cpu_with_baseline(runs, names, [1]))
    assert text.splitlines()[-1].split() == ["dyno-1", "1", "30.0", "20.0", "1.500"]


def test_a_twin_has_no_goals_but_is_in_the_tables():
    runs = (runs_of("redis", 1, [1000], [1000]) + runs_of("dyno-1", 1, [400], [400])
            + runs_of("dyno-1@base", 1, [200], [200]))
    rows = {(r.target, r.test): r
            for r in bench.summarize(runs, ["redis", "dyno-1", "dyno-1@base"], [1])}
    twin = rows["dyno-1@base", "SET"]
    assert twin.vs_redis == pytest.approx(0.2)
    assert (twin.base_goal, twin.fast_path_goal, twin.p99_goal) == (None, None, None)
    assert rows["dyno-1", "SET"].p99_goal is not None


def test_parse_args_baseline():
    assert bench.parse_args([]).baseline is None
    assert bench.parse_args(["--baseline", "main"]).baseline == "main"


@pytest.mark.parametrize("argv, message", [
    (["--baseline=--output=/tmp/x"], "expected a git revision"),  # never a git option
    (["--baseline", " "], "expected a git revision"),
    (["--baseline", "main", "--targets", "redis,twemproxy"], "compares dyno targets"),
])
def test_parse_args_refuses_a_baseline_it_cannot_use(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_twin_needs_a_dyno_shape_and_a_baseline(tmp_path):
    baseline = bench.DynoCode("baseline", root=tmp_path)
    with pytest.raises(bench.BenchError, match="only a dyno target has a twin"):
        bench.make_target("redis@base", None, tmp_path, baseline)
    with pytest.raises(bench.BenchError, match="only a dyno target has a twin"):
        bench.make_target("dyno-1@base", None, tmp_path, None)
    twin = bench.make_target("dyno-3x2-one@base", None, tmp_path, baseline)
    assert (twin.name, twin.code, twin.nodes_per_rack) == ("dyno-3x2-one@base", baseline, 2)
    assert bench.make_target("dyno-1", None, tmp_path, baseline).code == bench.CHECKOUT


def test_baseline_code_comes_first_on_pythonpath_without_the_working_directory(
        tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = bench.DynoCode("baseline", root=tmp_path).env()
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/elsewhere"]
    assert env["PYTHONSAFEPATH"] == "1"
    assert bench.CHECKOUT.env() is None  # the checkout's processes inherit ours


def test_code_mismatch():
    base = Path("/tmp/dyno-bench-x/baseline")
    assert bench.code_mismatch(base / "dyno", base, base) is None
    assert "not from the baseline tree" in bench.code_mismatch(REPO / "dyno", base, base)
    assert bench.code_mismatch(REPO / "dyno", None, base) is None
    assert "not from the checkout" in bench.code_mismatch(base / "dyno", None, base)


# Dynomite's targets: what can be checked without a Dynomite binary (CI has none).

def dynomite_ports(count):
    return [bench.DynomitePorts(listen=7000 + 10 * n, dyn_listen=7001 + 10 * n,
                                stats_listen=7002 + 10 * n, redis=7003 + 10 * n)
            for n in range(count)]


@pytest.mark.parametrize("consistency", ["DC_ONE", "DC_QUORUM"])
def test_dynomite_configs_have_the_shape_of_dynos_three_racks(consistency):
    ports = dynomite_ports(3)
    configs = [yaml.safe_load(text)["dyn_o_mite"]
               for text in bench.dynomite_configs(ports, consistency)]
    # The shape `dyno cluster up --racks 3 --nodes-per-rack 1` gives dyno's targets.
    dyno_plan = localcluster.plan(racks=3, nodes_per_rack=1, base_port=9000,
                                  read_consistency=consistency, write_consistency=consistency)
    for index, (conf, own, dyno_node) in enumerate(zip(configs, ports, dyno_plan)):
        assert (conf["datacenter"], conf["rack"]) == (dyno_node.dc, dyno_node.rack)
        assert conf["tokens"] == localcluster.format_tokens(dyno_node.tokens) == "0"
        assert conf["listen"] == f"127.0.0.1:{own.listen}"
        assert conf["dyn_listen"] == f"127.0.0.1:{own.dyn_listen}"
        assert conf["stats_listen"] == f"127.0.0.1:{own.stats_listen}"
        assert conf["servers"] == [f"127.0.0.1:{own.redis}:1"]
        assert conf["data_store"] == 0
        assert conf["dyn_seed_provider"] == "simple_provider"
        assert conf["read_consistency"] == conf["write_consistency"] == consistency
        assert "mbuf_size" not in conf  # Dynomite's default
        others = [n for n in range(3) if n != index]
        assert conf["dyn_seeds"] == [
            f"127.0.0.1:{ports[n].dyn_listen}:rack{n + 1}:dc1:0" for n in others]
        # A seed names a peer as dyno's plan does (host:dyn_port:rack:dc:tokens).
        assert [seed.split(":")[2:] for seed in conf["dyn_seeds"]] == [
            seed.split(":")[2:] for seed in dyno_node.seeds]


def test_dynomite_configs_are_dynomite_format_that_dyno_reads_too():
    """dyno reads Dynomite's format: its parser sees the same node, peers and tokens."""
    ports = dynomite_ports(3)
    text = bench.dynomite_configs(ports, "DC_QUORUM")[1]
    conf = config.parse_config(text, "node2.yml")
    assert (conf.datacenter, conf.rack, conf.tokens) == ("dc1", "rack2", (0,))
    assert conf.servers[0].port == ports[1].redis
    assert conf.read_consistency == conf.write_consistency == "DC_QUORUM"
    assert [(seed.port, seed.rack, seed.tokens) for seed in conf.dyn_seeds] == [
        (ports[0].dyn_listen, "rack1", (0,)), (ports[2].dyn_listen, "rack3", (0,))]


@given(count=st.integers(min_value=1, max_value=6))
def test_every_dynomite_node_seeds_every_other_node_once(count):
    ports = dynomite_ports(count)
    configs = [yaml.safe_load(text)["dyn_o_mite"]
               for text in bench.dynomite_configs(ports, "DC_ONE")]
    assert [conf["rack"] for conf in configs] == [f"rack{n}" for n in range(1, count + 1)]
    for index, conf in enumerate(configs):
        seeded = sorted(int(seed.split(":")[1]) for seed in conf.get("dyn_seeds", []))
        assert seeded == sorted(p.dyn_listen for n, p in enumerate(ports) if n != index)
    if count == 1:
        assert "dyn_seeds" not in configs[0]  # dynomite-1: a ring of one


def test_dynomite_binary_comes_from_the_environment(tmp_path):
    for environ in ({}, {"DYNOMITE_BIN": " "}):
        with pytest.raises(bench.BenchError, match="need DYNOMITE_BIN=.*docs/performance.md"):
            bench.dynomite_binary(environ)
    text_file = tmp_path / "dynomite"
    text_file.write_text("not a program")
    for missing in (tmp_path / "nowhere", text_file, tmp_path):
        with pytest.raises(bench.BenchError, match="is not an executable file"):
            bench.dynomite_binary({"DYNOMITE_BIN": str(missing)})
    text_file.chmod(0o755)
    assert bench.dynomite_binary({"DYNOMITE_BIN": str(text_file)}) == text_file.resolve()


def test_a_dynomite_target_needs_the_binary(tmp_path):
    with pytest.raises(bench.BenchError, match="needs DYNOMITE_BIN"):
        bench.make_target("dynomite-1", None, tmp_path)
    target = bench.make_target("dynomite-3r-quorum", None, tmp_path, dynomite=Path("/bin/true"))
    assert (target.racks, target.consistency, target.binary) == (3, "DC_QUORUM", Path("/bin/true"))
    assert "dynomite-3r-one" in bench.parse_args(["--targets", "dynomite-3r-one"]).targets


@pytest.mark.parametrize("environ", [{}, {"DYNOMITE_BIN": "/nowhere/dynomite"}])
def test_asking_for_dynomite_without_it_is_one_line_and_starts_nothing(environ, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DYNOMITE_BIN"}
    env.update(environ, TMPDIR=str(tmp_path))  # the work directory would be made here
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"),
                           "--targets", "redis,dynomite-1"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: ") and "DYNOMITE_BIN" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no work directory: nothing was started


# --------------------------------------------------------------------------- integration

@pytest.fixture(scope="module")
def baseline_tree(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench-baseline")
    return bench.extract_baseline("HEAD", bench.script_repository(), workdir)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "--no-optional-locks", *args],
                          capture_output=True, text=True, check=True).stdout


@integration
def test_extract_baseline_extracts_the_commit_and_leaves_the_repository_alone(tmp_path):
    index = Path(git("rev-parse", "--path-format=absolute", "--git-path", "index").strip())
    before = (git("status", "--porcelain"), index.stat().st_mtime_ns)
    code = bench.extract_baseline("HEAD~1", bench.script_repository(), tmp_path)
    assert (git("status", "--porcelain"), index.stat().st_mtime_ns) == before
    assert code.commit == git("rev-parse", "HEAD~1").strip()
    assert code.root == tmp_path / "baseline"
    assert (code.root / "dyno" / "node.py").read_text() == git("show", "HEAD~1:dyno/node.py")
    assert code.label == f"baseline HEAD~1 ({code.commit[:12]})"


@integration
def test_extract_baseline_refuses_an_unknown_revision(tmp_path):
    with pytest.raises(bench.BenchError, match="'no-such-rev' is not a commit"):
        bench.extract_baseline("no-such-rev", bench.script_repository(), tmp_path)


@integration
@pytest.mark.parametrize("environment", ["checkout", "baseline", "pythonpath only"])
def test_the_probe_finds_the_dyno_a_running_process_imported(environment, baseline_tree):
    """Started from the checkout's root, as `make bench` starts dyno: with PYTHONPATH alone
    the working directory still wins (hence PYTHONSAFEPATH); the probe must agree with
    what the process itself imported in every case."""
    env = {"checkout": None, "baseline": baseline_tree.env(),
           "pythonpath only": {**os.environ, "PYTHONPATH": str(baseline_tree.root)}}[environment]
    proc = subprocess.Popen(
        [sys.executable, "-c", "import dyno, sys; print(dyno.__file__, flush=True); "
                               "sys.stdin.read()"],
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        imported = Path(proc.stdout.readline().strip()).resolve().parent
        assert bench.dyno_package_of(proc.pid) == imported
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()
    expected = baseline_tree.root if environment == "baseline" else REPO
    assert imported == expected / "dyno"


def processes_within(directory: Path) -> list[str]:
    """Our processes whose command line, environment or working directory names
    `directory` (redis-server rewrites its command line, but keeps its working directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            mentions = (str(directory).encode() in (proc / "cmdline").read_bytes()
                        or str(directory).encode() in (proc / "environ").read_bytes()
                        or os.readlink(proc / "cwd").startswith(str(directory)))
            if mentions:
                found.append(f"pid {proc.name}: " + (proc / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue  # gone meanwhile, or not ours
    return found


@integration
def test_a_tiny_ab_run_measures_the_twins_with_the_baseline_tree_and_stops_everything(
        tmp_path):
    out = tmp_path / "ab.json"
    argv = [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--requests", "2000",
            "--rounds", "1", "--pipelines", "1", "--targets", "redis,dyno-1,dyno-3r-one",
            "--baseline", "HEAD", "--json", str(out)]
    # Started from the checkout's root, where `python -m dyno` would find the checkout.
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # SIGTERM: the script stops everything it started
            os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    report = json.loads(out.read_text())
    tree = Path(report["baseline"]["tree"])
    assert report["baseline"]["commit"] == report["checkout"]["commit"]
    code = report["code"]
    assert set(code) == {"dyno-1", "dyno-1@base", "dyno-3r-one", "dyno-3r-one@base"}
    assert set(code["dyno-3r-one@base"]) == {"node1", "node2", "node3"}  # cluster up's nodes
    for name, processes in code.items():
        expected = tree if name.endswith("@base") else REPO
        assert {p["dyno"] for p in processes.values()} == {str(expected / "dyno")}, name
        assert not (set(p["pid"] for p in processes.values())
                    & set(p["pid"] for p in code[bench.twin_of(name) or name + "@base"]
                          .values()))  # twins are processes of their own
    assert {r["target"] for r in report["runs"] if r["error"] is None} == {
        "redis", "dyno-1", "dyno-1@base", "dyno-3r-one", "dyno-3r-one@base"}
    assert {(r["target"], r["test"]) for r in report["comparison"]} == {
        (t, test) for t in ("dyno-1", "dyno-3r-one") for test in bench.TESTS}
    assert {r["target"] for r in report["cpu_comparison"]} == {"dyno-1", "dyno-3r-one"}
    assert "dyno-3r-one@base" in stdout and "rounds x base" in stdout
    assert not tree.exists()  # the work directory went with everything in it
    assert processes_within(tree.parent) == []
