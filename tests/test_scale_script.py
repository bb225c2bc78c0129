"""scripts/scale.py: its pure parts (shares, spreads, a phase's figures, medians, the
table), and, marked integration, one tiny run of the script (3 nodes, a few thousand
requests) whose output must have the promised shape and sane values."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent

_spec = importlib.util.spec_from_file_location("scale", REPO / "scripts" / "scale.py")
scale = importlib.util.module_from_spec(_spec)
sys.modules["scale"] = scale
_spec.loader.exec_module(scale)


@given(st.integers(0, 10**6), st.integers(1, 64))
def test_split_gives_every_part_its_share(total, parts):
    shares = scale.split(total, parts)
    assert len(shares) == parts and sum(shares) == total
    assert max(shares) - min(shares) <= 1


def test_spread_is_the_largest_distance_from_the_mean():
    assert scale.spread([100, 100, 100]) == 0.0
    assert scale.spread([90, 110]) == pytest.approx(0.1)
    assert scale.spread([80, 100, 120]) == pytest.approx(0.2)
    racks = {"a": "r1", "b": "r1", "c": "r2", "d": "r2"}
    # each rack is judged on its own: rack r2 holds fewer keys but evenly
    assert scale.keys_spread({"a": 95, "b": 105, "c": 10, "d": 10}, racks) == pytest.approx(0.05)


def test_phase_figures_divide_by_the_requests_the_nodes_counted():
    figures = scale.phase_figures(
        requests={"n1": 1000, "n2": 3000}, sent={"n1": 500, "n2": 500},
        cpu_ns={"n1": 10_000_000, "n2": 20_000_000}, redis_cpu_ns=4_000_000, seconds=2.0, wakeups=1000)
    assert figures["requests"] == 4000 and figures["ops_per_sec"] == 2000
    assert figures["cpu_us_per_request"] == pytest.approx(7.5)
    assert (figures["node_cpu_us_min"], figures["node_cpu_us_max"]) == pytest.approx((20 / 3, 10.0))
    assert figures["redis_cpu_us_per_request"] == pytest.approx(1.0)
    assert figures["peer_commands_per_request"] == pytest.approx(0.25)
    assert figures["wakeups_per_request"] == pytest.approx(0.25)
    assert (figures["coordinated_min"], figures["coordinated_max"]) == (1000, 3000)
    with pytest.raises(scale.ScaleError, match="no requests"):
        scale.phase_figures({"n1": 0}, {"n1": 0}, {"n1": 5}, 0, 1.0)


def test_summary_takes_medians_and_compares_each_size_with_the_smallest():
    def phase(nodes, cpu, round_no):
        figures = scale.phase_figures({"n": 100}, {"n": 0}, {"n": int(cpu * 100 * 1000)}, 0, 1.0)
        return {"nodes": nodes, "pipeline": 1, "test": "GET", "round": round_no, "figures": figures}

    phases = [phase(3, c, i) for i, c in enumerate([10, 30, 20])] + [phase(12, c, i) for i, c in enumerate([22, 21, 99])]
    rows = scale.summarise(phases)
    assert [(r["nodes"], r["rounds"]) for r in rows] == [(3, 3), (12, 3)]
    assert [r["cpu_us_per_request"] for r in rows] == pytest.approx([20, 22])
    assert [f["ratio"] for f in scale.flatness(rows)] == pytest.approx([1.0, 1.1])
    table = scale.render(rows, {3: {"keys": {"n1": 5, "n2": 5, "n3": 5}, "idle_cpu_ms_per_s": 12.3,
                                    "racks": {"n1": "rack1", "n2": "rack2", "n3": "rack3"}, "spread": 0.0}},
                         "scripts/scale.py")
    assert "| 12 | 1 | GET |" in table and "| 1.10 |" in table
    assert "| 3 | 5 / 5 / 5 | 0.0% | 12 |" in table


def test_a_control_is_its_own_row_beside_its_size():
    def phase(nodes, cpu, control=False):
        figures = scale.phase_figures({"n": 100}, {"n": 0}, {"n": int(cpu * 100 * 1000)}, 0, 1.0)
        return {"nodes": nodes, "pipeline": 1, "test": "SET", "round": 1, "figures": figures,
                **({"control": True} if control else {})}

    rows = scale.summarise([phase(12, 30.0), phase(3, 20.0), phase(12, 28.0, control=True)])
    assert [(r["nodes"], r.get("control", False)) for r in rows] == [(3, False), (12, False), (12, True)]
    assert [f["ratio"] for f in scale.flatness(rows)] == pytest.approx([1.0, 1.5, 1.4])
    table = scale.render(rows, {}, "scripts/scale.py --controls")
    assert "| 12 | 1 | SET |" in table and "| 1.50 |" in table
    assert "| 12 as 4 separate clusters of 3 | 1 | SET |" in table and "| 1.40 |" in table


def test_a_paced_run_shows_the_cpu_above_idle_against_the_smallest_size():
    rows = [{"nodes": n, "pipeline": 1, "test": "SET", "rounds": 1, "ops_per_sec": 2000.0,
             "cpu_us_per_request": total, "cpu_us_above_idle": above, "node_cpu_us_min": 1.0,
             "node_cpu_us_max": 2.0, "redis_cpu_us_per_request": 1.0, "peer_commands_per_request": 2.0,
             "wakeups_per_request": 1.0, "coordinated_min": 10, "coordinated_max": 10}
            for n, total, above in ((3, 110.0, 100.0), (12, 190.0, 150.0))]
    table = scale.render(rows, {}, "scripts/scale.py --rate 2000").splitlines()
    assert "| above idle µs/req | vs smallest |" in table[2]
    assert table[3].count("|") == table[2].count("|")
    assert "| 12 | 1 | SET | 2,000 | 190.00 | 1.73 | 150.00 | 1.50 |" in table[5]


@pytest.mark.integration
def test_a_tiny_run_reports_every_phase_with_sane_figures(tmp_path):
    out = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "scale.py"), "--sizes", "1", "--rounds", "1",
         "--requests", "3000", "--json", str(out)],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    rows = data["summary"]
    assert [(r["nodes"], r["pipeline"], r["test"]) for r in rows] == [
        (3, 1, "SET"), (3, 1, "GET"), (3, 16, "SET"), (3, 16, "GET")]
    for row in rows:
        # every node coordinated its share: the split, plus redis-benchmark's own few commands
        wanted = 3000 if row["pipeline"] == 1 else 3000 * 16 // 3
        assert wanted <= row["requests"] <= wanted * 1.05 + 30, row
        assert row["coordinated_max"] - row["coordinated_min"] <= 2, row
        assert 0.1 < row["cpu_us_per_request"] < 5000, row
        assert row["node_cpu_us_min"] <= row["node_cpu_us_max"]
        assert row["ops_per_sec"] > 0 and row["wakeups_per_request"] > 0
    by_test = {(r["pipeline"], r["test"]): r for r in rows}
    # one node per rack: a GET is always the coordinator's own; a SET is copied to 2 racks
    assert by_test[(1, "GET")]["peer_commands_per_request"] == 0
    assert by_test[(1, "SET")]["peer_commands_per_request"] >= 2
    # pipelining makes each request cheaper
    assert by_test[(16, "GET")]["cpu_us_per_request"] < by_test[(1, "GET")]["cpu_us_per_request"]
    keys = data["keys"]["3"]
    assert sorted(keys["keys"]) == ["node1", "node2", "node3"]
    # every rack holds a full copy: three equal counts, about the keys written
    counts = set(keys["keys"].values())
    assert len(counts) == 1 and 1000 < counts.pop() <= 3000 + 16000
    assert keys["spread"] == 0.0 and keys["idle_cpu_ms_per_s"] > 0
    assert "| 3 | 16 | GET |" in result.stdout


@given(st.sampled_from(["SET", "GET"]), st.binary(min_size=1, max_size=40))
def test_the_paced_load_sends_one_whole_request(test, key):
    import hiredis

    reader = hiredis.Reader()
    reader.feed(scale.request_bytes(test, key))
    assert reader.gets() == ([b"SET", key, b"xxx"] if test == "SET" else [b"GET", key])
    assert reader.gets() is False


@given(st.floats(1, 5000), st.floats(0.01, 5))
def test_the_paced_load_is_due_evenly_at_its_rate(rate, seconds):
    due = scale.due_times(rate, seconds)
    assert len(due) == int(rate * seconds)
    step = 1 / rate  # (math.isclose, not pytest.approx: up to 25,000 steps a case)
    assert all(math.isclose(b - a, step, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(due, due[1:]))
    assert all(0 <= d < seconds for d in due)


@pytest.mark.integration
def test_cluster_clients_take_no_hop_and_the_control_runs_beside(tmp_path):
    out = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "scale.py"), "--sizes", "2", "--rounds", "1", "--requests", "2000",
         "--pipelines", "1", "--cluster-clients", "--controls", "--json", str(out)],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["summary"]
    assert [(r["nodes"], r.get("control", False), r["test"]) for r in rows] == [
        (6, False, "SET"), (6, True, "SET"), (6, False, "GET"), (6, True, "GET")]
    for row in rows:
        assert row["coordinated_min"] > 0, row  # every node of the size (or control) coordinated
        if row["test"] == "GET":  # each key went to its owner: no hop to a rack-mate
            assert row["peer_commands_per_request"] == 0, row
        else:  # a SET goes to the two other racks' owners only
            assert 2 <= row["peer_commands_per_request"] <= 8.1, row
    assert "| 6 as 2 separate clusters of 3 | 1 | GET |" in result.stdout


def test_calls_figures_take_away_the_idle_calls_by_function():
    calls = {"loop": 3000, "get": 1000, "gossip": 500,
             "<gc>:generation 0 collections": 30, "<gc>:generation 0 microseconds": 3000}
    idle = {"loop": 100.0, "gossip": 50.0, "timer": 5.0,  # a second
            "<gc>:generation 0 collections": 1.0, "<gc>:generation 0 microseconds": 100.0}
    figures = scale.calls_figures(calls, idle, seconds=10.0, requests=1000, least=0.01)
    assert figures["calls_per_request"] == pytest.approx(4.5)
    # 4,500 calls, less 1,550 the 10 idle seconds make
    assert figures["calls_above_idle"] == pytest.approx(2.95)
    assert figures["calls_by_function"] == {"loop": 2.0, "get": 1.0, "timer": -0.05}
    # the collector apart: 3,000 µs less the idle 1,000, over 1,000 requests
    assert figures["gc_us_above_idle"] == pytest.approx(2.0)
    assert figures["gc_above_idle"] == {"generation 0 collections": 0.02, "generation 0 microseconds": 2.0}
    with pytest.raises(scale.ScaleError, match="no requests"):
        scale.calls_figures(calls, idle, 1.0, 0)


def test_a_counting_process_writes_its_calls_by_function_when_signalled(tmp_path):
    """scripts/callcount/sitecustomize.py in a real Python process: a function called
    n times is counted n times (and so are built-ins), and the file appears only whole."""
    program = tmp_path / "prog.py"
    program.write_text(
        "import signal, sys, time\n"
        "def work(n):\n"
        "    return len(str(n))\n"
        "for i in range(int(sys.argv[1])):\n"
        "    work(i)\n"
        "kept = [[i] for i in range(5000)]\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    signal.pause()\n")
    env = {**scale.os.environ, "DYNO_CALL_COUNTS": str(tmp_path),
           "PYTHONPATH": str(scale.CALL_COUNTER)}
    proc = subprocess.Popen([sys.executable, str(program), "1234"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        scale.os.kill(proc.pid, scale.signal.SIGUSR2)
        path = tmp_path / f"{proc.pid}.json"
        deadline = scale.time.monotonic() + 20
        while not path.exists():
            assert scale.time.monotonic() < deadline, "no counts written"
            scale.time.sleep(0.01)  # waiting for the file, with a deadline
        counts = json.loads(path.read_text())
    finally:
        proc.kill()
        proc.wait()
    assert counts["prog.py:work"] == 1234
    assert counts["<builtin>:len"] >= 1234
    assert counts.get("<gc>:generation 0 collections", 0) >= 1  # 5,000 lists kept
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.integration
def test_a_counting_run_adds_the_calls_per_request(tmp_path):
    out = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "scale.py"), "--sizes", "1", "--rounds", "1", "--rate", "300",
         "--seconds", "1", "--count-calls", "--json", str(out)],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["summary"]
    assert [r["test"] for r in rows] == ["SET", "GET"]
    for row in rows:
        assert 0 < row["calls_above_idle"] <= row["calls_per_request"], row
        # every request was read, planned and answered by dyno's own code
        functions = row["calls_by_function"]
        assert functions.get("coordinator.py:Coordinator.execute_batch", 0) >= 0.9, sorted(functions)[:20]
        # and each took a send of its reply (a Python call of a built-in is counted too)
        assert functions.get("<builtin>:socket.send", 0) >= 0.9, row
    assert "| calls/req above idle | vs smallest |" in result.stdout


def test_count_calls_wants_a_paced_load():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "scale.py"), "--count-calls"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "give --rate too" in result.stderr


_ab_spec = importlib.util.spec_from_file_location("scale_ab", REPO / "scripts" / "scale_ab.py")
scale_ab = importlib.util.module_from_spec(_ab_spec)
_ab_spec.loader.exec_module(scale_ab)


def test_the_ab_table_gives_each_sides_medians_and_ratios_to_3_nodes():
    def output(cpu3, cpu12, idle3, idle12):
        def row(nodes, cpu, **extra):
            return {"nodes": nodes, "test": "GET", "cpu_us_per_request": cpu, "cpu_us_above_idle": cpu - 10,
                    "wakeups_per_request": 2.0, **extra}
        return {"summary": [row(3, cpu3), row(12, cpu12), row(12, cpu12 - 20, control=True)],
                "keys": {"3": {"idle_cpu_ms_per_s": idle3}, "12": {"idle_cpu_ms_per_s": idle12}}}

    table = scale_ab.combine({"base": [output(100, 150, 17, 80), output(120, 170, 17, 82), output(110, 160, 16, 81)],
                              "new": [output(90, 110, 3, 20), output(100, 130, 3, 22), output(95, 120, 3, 21)]})
    lines = table.splitlines()
    assert lines[1].count("|") == lines[0].count("|")
    # medians: base 110 / 160, new 95 / 120; above idle 100 / 150 and 85 / 110
    assert "| GET | 3 | 110.0 | 95.0 | 100.0 | 85.0 | 2.0 | 2.0 | 1.00 / 1.00 | 1.00 / 1.00 |" in lines
    assert "| GET | 12 | 160.0 | 120.0 | 150.0 | 110.0 | 2.0 | 2.0 | 1.45 / 1.50 | 1.26 / 1.29 |" in lines
    assert "| GET | 12 as 4 separate clusters of 3 | 140.0 | 100.0 |" in table
    assert "| 12 | 81.0 | 21.0 |" in lines


def test_the_ab_script_wants_a_base_with_scale_py(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "scale_ab.py"), "--base", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "has no scripts/scale.py" in result.stderr
