"""The benchmark harness runs end to end at a tiny size.

`python bench/run.py --smoke` must finish, exit 0 and write a number for
every scenario for Ninja and doit, and for atmosbuild once its CLI exists.
Timings are never asserted: this machine is shared and slow. The schedule
bounds the makespan scenario compares against are checked on small graphs.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = {"cold", "noop", "edit", "load", "makespan"}


def _importable(module: str) -> bool:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _has_ninja() -> bool:
    return _importable("ninja") or shutil.which("ninja") is not None


@pytest.mark.skipif(not (_importable("doit") and _has_ninja()),
                    reason="the bench needs ninja and doit (pip install '.[bench]')")
def test_smoke_run_measures_every_scenario(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    output = proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    scenarios = results["scenarios"]
    assert set(scenarios) == SCENARIOS, output

    for name, entries in scenarios.items():
        for tool in ("ninja", "doit"):
            entry = entries[tool]
            assert entry["status"] == "ok", (name, tool, entry, output)
            assert isinstance(entry["median_s"], float), (name, tool, entry)
            assert isinstance(entry["peak_rss_mb"], float), (name, tool, entry)

    if _importable("atmosbuild.cli"):
        for name, entries in scenarios.items():
            rows = {tool: e for tool, e in entries.items() if tool.startswith("atmosbuild")}
            assert rows, name
            for tool, entry in rows.items():
                assert entry["status"] == "ok", (name, tool, entry.get("error"))
                assert isinstance(entry["median_s"], float), (name, tool, entry)

    assert proc.returncode == 0, output
    assert (tmp_path / "results.md").is_file()


def test_schedule_bounds_of_a_diamond_and_of_independent_jobs():
    sys.path.insert(0, str(REPO / "bench"))
    import bounds

    # 0 -> {1, 2} -> 3, on 2 slots: the critical path 0-2-3 decides.
    durations, deps = [1.0, 2.0, 3.0, 1.0], [[], [0], [0], [1, 2]]
    assert bounds.waves(deps) == [[0], [1, 2], [3]]
    assert bounds.critical_path(durations, deps) == 5.0
    assert bounds.lower_bound(durations, deps, 2) == 5.0
    assert bounds.ideal_waves(durations, deps, 2) == 5.0
    assert bounds.ideal_eager(durations, deps, 2) == 5.0

    # Five independent jobs in one wave: greedy in id order needs 7, the bound says 6.
    durations, deps = [3.0, 3.0, 2.0, 2.0, 2.0], [[]] * 5
    assert bounds.lower_bound(durations, deps, 2) == 6.0
    assert bounds.ideal_waves(durations, deps, 2) == 7.0
