"""`check` of N terraform components runs exactly N plans (and the `show
-json` that reads each back) and nothing else, N at a time up to `-j`
(issue 14). Real CLI and real processes, with the stand-in `terraform` of
bench/terraform.py, which logs every call with its start and end; each plan
waits at a barrier until min(N, -j) plans have started, so the overlap the
scheduler allows shows whatever the machine's load (a scheduler that ran
them one by one would make each wait out the barrier and peak at 1)."""

from __future__ import annotations

import importlib.util
import re

from conftest import REPO

_spec = importlib.util.spec_from_file_location("bench_terraform", REPO / "bench" / "terraform.py")
tfbench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tfbench)

N = 5


def test_check_runs_exactly_one_plan_per_component_at_most_j_at_once(ws):
    calls = str(ws.root.parent / "calls.txt")
    tf = str(ws.root.parent / "bin" / "terraform")
    tfbench.write_lifecycle_standin(tf, calls, barrier=3)
    tfbench.write_workspace(str(ws.root), N, tf, {})
    comps = {f"terraform/c{i:04d}" for i in range(N)}

    applied = ws.run("rollout", "//tf:dev", "-j3")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    cold = tfbench.read_calls(calls)
    assert cold["verbs"] == {"init": N, "workspace": N, "apply": N, "output": N}, cold

    for jobs, peak in ((3, 3), (8, N), (1, 1)):
        tfbench.write_lifecycle_standin(tf, calls, barrier=peak)
        proc = ws.run("check", "//tf:dev", f"-j{jobs}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"No drift: {N} terraform components checked" in proc.stdout
        seen = tfbench.read_calls(calls)
        # One plan and one show per component; no init (the data dirs are
        # kept and initialized), no workspace selection, no apply, no output.
        assert seen["verbs"] == {"plan": N, "show": N}, (jobs, seen["verbs"])
        assert sorted(seen["components"]["plan"]) == sorted(comps)
        assert seen["peak_plans"] == peak, (jobs, seen)
        assert not re.search(r"\] (failed|skipped)", proc.stdout)
