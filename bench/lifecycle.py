"""The lifecycle scenario (SPEC 10, issue 14).

    python bench/lifecycle.py [--n 5000] [--files 5] [--runs 5]
                              [--tf-n 100] [--jobs 4] [--plan-s 0.1]
    python bench/run.py --only lifecycle      # the same, from the harness

Round 1, `preview` and `check` of the N-component bench selection when
nothing would run, beside a no-op rollout: one workspace from generate.py
(commands and their source trees, no terraform components), rolled out cold
at -j2, rolled out once more (that rollout writes the up-to-date record),
then per round, in rotating order: a no-op `rollout`, a `preview` and a
`check`. Each number is the median over the rounds; the ratio to the no-op
is what the target (<= 1.10x) is about.

Round 2, `check` of TF_N terraform components (bench/terraform.py's
modules) at -jJOBS with the lifecycle stand-in terraform of
bench/terraform.py, whose `plan` takes PLAN_S seconds and which logs every
call with its start and end: applied cold, rolled out once more, then per
round a no-op rollout and a `check`, alternating. From the stand-in's log:
the invocations per verb (target: exactly TF_N plans and TF_N `show -json`,
nothing else: the data directories are kept and initialized, so no init,
no workspace selection, no apply, no output), the peak number of plans at
once (target: min(TF_N, JOBS)), and the wall time beside the no-op and
beside the lower bound ceil(TF_N / JOBS) x PLAN_S.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import generate  # noqa: E402
import measure  # noqa: E402
import terraform as tfbench  # noqa: E402

OPS = {"noop rollout": ("rollout",), "preview": ("preview",), "check": ("check",)}


def noop_round(cli: list[str], n: int, files: int, runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="atmos-bench-lifecycle-") as ws:
        generate.generate(ws, n, files, 1)
        log = os.path.join(ws, "bench.log")
        for _ in range(2):
            m = measure.run_timed([*cli, "-C", ws, "rollout", f"//{generate.YAML_PACKAGE}:dev", "-j2"], ws, log, 3600)
            if not m.ok:
                raise SystemExit(f"rollout failed:\n{measure.log_tail(log)}")
        times: dict[str, list[float]] = {op: [] for op in OPS}
        names = list(OPS)
        for r in range(runs):
            for op in names[r % len(names):] + names[:r % len(names)]:
                m = measure.run_timed([*cli, "-C", ws, *OPS[op], f"//{generate.YAML_PACKAGE}:dev", "-j2"], ws, log, 600)
                if not m.ok:
                    raise SystemExit(f"{op} failed:\n{measure.log_tail(log)}")
                times[op].append(m.seconds)
    base = statistics.median(times["noop rollout"])
    return {"n": n, "files": files, "runs": runs,
            "ops": {op: {"median_s": round(statistics.median(ts), 3), "min_s": round(min(ts), 3),
                         "max_s": round(max(ts), 3), "vs_noop": round(statistics.median(ts) / base, 3)}
                    for op, ts in times.items()}}


def _timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=tfbench.env(), capture_output=True, text=True, timeout=3600)
    return time.perf_counter() - t0, proc


def check_round(work: str, n: int, jobs: int, plan_s: float, runs: int) -> dict:
    """`check` of n terraform components at -j`jobs`, from the stand-in's log."""
    shutil.rmtree(work, ignore_errors=True)
    root, calls = os.path.join(work, "ws"), os.path.join(work, "calls.txt")
    tf = tfbench.write_lifecycle_standin(os.path.join(work, "bin", "terraform"), calls, plan_seconds=plan_s)
    tfbench.write_workspace(root, n, tf, {})
    base = [*tfbench.cli(), "-C", root]
    out: dict = {"n": n, "jobs": jobs, "plan_s": plan_s, "runs": runs}
    for name in ("cold", "settle"):  # applied, then the rollout that writes the up-to-date record
        took, proc = _timed([*base, "rollout", "//tf:dev", f"-j{jobs}"])
        if proc.returncode != 0:
            raise SystemExit(f"{name} rollout failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        out[f"{name}_verbs"] = tfbench.read_calls(calls)["verbs"]
        out[f"{name}_s"] = round(took, 3)
    # What one component's check costs in processes alone, run one after
    # the other outside atmosbuild: the exit-code wrapper around the
    # stand-in's plan, then its show -json.
    exitmap = os.path.join(tfbench.REPO, "atmosbuild", "components", "exitmap.py")
    plan_file = os.path.join(work, "one.tfplan")
    one = []
    for _ in range(10):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-S", "-E", exitmap, plan_file + ".exitcode", "0,2", "--", tf, "plan",
                        "-detailed-exitcode", f"-out={plan_file}", "-input=false", "-no-color"], check=True)
        subprocess.run([tf, "show", "-json", "-no-color", plan_file], check=True, stdout=subprocess.DEVNULL)
        one.append(time.perf_counter() - t0)
    os.unlink(calls)
    out["processes_per_component_ms"] = round(statistics.median(one) * 1000, 1)
    noops, checks = [], []
    for r in range(runs):
        for op in (("noop", "check") if r % 2 == 0 else ("check", "noop")):
            argv = [*base, "rollout", "//tf:dev", f"-j{jobs}"] if op == "noop" else \
                [*base, "check", "//tf:dev", f"-j{jobs}"]
            took, proc = _timed(argv)
            seen = tfbench.read_calls(calls)
            if proc.returncode != 0:
                raise SystemExit(f"{op} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            if op == "noop":
                noops.append({"wall_s": took, "verbs": seen["verbs"]})
            else:
                plans = seen["components"].get("plan", [])
                checks.append({"wall_s": took, "verbs": seen["verbs"], "peak_plans": seen["peak_plans"],
                               "distinct_planned": len(set(plans)),
                               "reported": f"No drift: {n} terraform components checked" in proc.stdout})
    mid = sorted(checks, key=lambda c: c["wall_s"])[len(checks) // 2]
    noop = statistics.median(c["wall_s"] for c in noops)
    bound = math.ceil(n / jobs) * plan_s
    out["noop"] = {"median_s": round(noop, 3), "verbs": max((c["verbs"] for c in noops), key=len)}
    out["check"] = {
        "median_s": round(mid["wall_s"], 3),
        "rounds_s": [round(c["wall_s"], 3) for c in checks],
        "vs_noop": round(mid["wall_s"] / noop, 2),
        "lower_bound_s": round(bound, 3),
        "vs_lower_bound": round(mid["wall_s"] / bound, 2) if bound else None,
        "verbs": mid["verbs"],
        "peak_plans": [c["peak_plans"] for c in checks],
        # Each slot is busy for this long per component (wall x slots / N),
        # against what its processes alone cost.
        "slot_ms_per_component": round(mid["wall_s"] * min(n, jobs) / n * 1000, 1),
    }
    want = min(n, jobs)
    out["targets"] = {
        f"exactly {n} plans, each component once, every round":
            all(c["verbs"].get("plan") == n and c["distinct_planned"] == n for c in checks),
        "nothing else but one show -json each (no init, workspace, apply, output)":
            all(c["verbs"] == {"plan": n, "show": n} for c in checks),
        f"peak plans at once = min(N, -j) = {want}": all(c["peak_plans"] == want for c in checks),
        "no drift reported": all(c["reported"] for c in checks),
        "no-op runs no terraform": all(not c["verbs"] for c in noops),
    }
    return out


def run(work: str, cli: list[str] | None, n: int, files: int, runs: int, tf_n: int, jobs: int,
        plan_s: float) -> dict:
    results: dict = {}
    if cli is not None and n:
        results["up_to_date"] = noop_round(cli, n, files, runs)
    if tf_n:
        results["check_terraform"] = check_round(os.path.join(work, "check"), tf_n, jobs, plan_s, runs)
    return results


def text(results: dict) -> str:
    lines = []
    if "up_to_date" in results:
        r = results["up_to_date"]
        lines.append(f"lifecycle: {r['n']} components, {r['files']} files each, median of {r['runs']}:")
        for op, m in r["ops"].items():
            lines.append(f"  {op:<13} {m['median_s']:.3f} s  ({m['vs_noop']:.2f}x the no-op; rounds "
                         f"{m['min_s']:.3f}-{m['max_s']:.3f} s)")
    if "check_terraform" in results:
        c = results["check_terraform"]
        ch = c["check"]
        lines.append(f"lifecycle: check of {c['n']} terraform components at -j{c['jobs']} (stand-in plan "
                     f"{c['plan_s']:g} s), median of {c['runs']}:")
        lines.append(f"  no-op rollout {c['noop']['median_s']:.3f} s  (terraform calls: "
                     + (" ".join(f"{k}={v}" for k, v in sorted(c["noop"]["verbs"].items())) or "none") + ")")
        lines.append(f"  check         {ch['median_s']:.3f} s  ({ch['vs_noop']:.2f}x the no-op, "
                     f"{ch['vs_lower_bound']}x the lower bound {ch['lower_bound_s']:.3f} s; rounds "
                     + ", ".join(f"{x:.3f}" for x in ch["rounds_s"]) + ")")
        lines.append("  check's terraform calls: " + " ".join(f"{k}={v}" for k, v in sorted(ch["verbs"].items()))
                     + f"; peak plans at once: {', '.join(map(str, ch['peak_plans']))}")
        lines.append(f"  per component: {ch['slot_ms_per_component']} ms of a slot (wall x slots / N); "
                     f"its processes alone, one after the other: {c['processes_per_component_ms']} ms")
        lines += [f"  {'ok ' if ok else 'MISS'} {name}" for name, ok in c["targets"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="components of round 1 (0: skip it)")
    ap.add_argument("--files", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tf-n", type=int, default=100, help="terraform components of round 2 (0: skip it)")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--plan-s", type=float, default=0.1, help="seconds one stand-in plan takes")
    ap.add_argument("--out", default=os.path.join(BENCH_DIR, "out"))
    args = ap.parse_args(argv)
    cli, why = measure.find_atmosbuild()
    if cli is None:
        print(f"atmosbuild not runnable: {why}")
        return 1
    work = os.path.join(os.path.abspath(args.out), "ws", "lifecycle")
    results = run(work, cli, args.n, args.files, args.runs, args.tf_n, args.jobs, args.plan_s)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "lifecycle.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    print(text(results))
    return 0 if all(results.get("check_terraform", {}).get("targets", {}).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
