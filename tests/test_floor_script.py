"""scripts/floor.py, marked integration: one tiny run (a one-node dyno and the three
stand-in proxies in front of its Redis) whose table has every target with sane values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_a_tiny_run_measures_every_target():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "floor.py"), "--rounds", "1", "--requests", "2000"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert set(rows) == {"target", "dyno", "epoll", "mux", "trio"}
    for name in ("dyno", "epoll", "mux", "trio"):
        set_rate, set_cpu, get_rate, get_cpu = (float(cell.strip().replace(",", ""))
                                               for cell in rows[name].split("|")[2:6])
        assert set_rate > 0 and get_rate > 0, rows[name]
        assert 0.5 < set_cpu < 5000 and 0.5 < get_cpu < 5000, rows[name]
