"""scripts/microbench.py keeps working (its figures are reported, never asserted)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "microbench.py"


def load():
    spec = importlib.util.spec_from_file_location("microbench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_case_runs_and_reports_a_positive_time(tmp_path):
    microbench = load()
    results = microbench.measure(number=20, repeat=1)
    assert set(results) == set(microbench.cases())
    assert all(micros > 0 for micros in results.values())
    out = tmp_path / "figures.json"
    assert microbench.main(["--quick", "--json", str(out)]) == 0
    assert out.read_text().startswith("{")


def test_idle_memory_script_runs(capsys):
    spec = importlib.util.spec_from_file_location("idle_memory", SCRIPT.parent / "idle_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--connections", "20"]) == 0
    assert "KiB per connection" in capsys.readouterr().out
