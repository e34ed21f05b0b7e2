"""atmosbuild against Ninja, doit and Make on one synthetic graph.

    python bench/run.py [--n 5000] [--files 5] [--runs 5] [--out bench/out]
                        [--only cold,noop,edit,load,makespan,scale,dask] [--smoke]
                        [--tools ninja,doit,make,atmosbuild] [--workdir DIR]

Scenarios (bench/README.md says what each measures):
  cold      fresh state, build everything at -j2
  noop      build again, nothing changed
  edit      change one source file of a component in the middle of the graph
  load      parse + validate the deployment (YAML and DSL)
  makespan  300 sleeping actions at -j4 against the schedule lower bounds
  scale     5k/20k/50k components: validate, plan, no-op rollout (only if asked)
  dask      500 no-op actions at -j4: local executor against a loopback Dask
            cluster of two workers (only if asked)
  remote    the same components from one git repository (one commit): cold with an
            empty vendor cache, cold with a warm one, no-op (only if asked)
  postgres  no-op and one-file edit with state on a loopback PostgreSQL against
            SQLite (only if asked; needs PostgreSQL's server binaries and psycopg)
  terraform what atmosbuild costs around a stand-in and the real Terraform (only if asked)
  lifecycle preview and check beside the no-op; check of 100 terraform components at -j4:
            plans counted, peak at once (only if asked; bench/lifecycle.py)

Tools alternate inside every round (the start rotates each round) and each
number is the median over the rounds. atmosbuild is measured only when its
CLI exists; until then its cells say n/a. Exit status: 0, or 1 when a tool
that was measured failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import bounds  # noqa: E402
import generate  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402

SCENARIOS = ("cold", "noop", "edit", "load", "makespan", "scale", "terraform", "lifecycle", "dask", "remote",
             "postgres")
DEFAULT_SCENARIOS = ("cold", "noop", "edit", "load", "makespan")
INCREMENTAL_TOOLS = ("ninja", "doit", "make", "atmosbuild")
# "-cold": with atmosbuild's parse and structure caches off (ATMOS_NO_CACHE=1),
# i.e. what the first load of a changed file costs.
LOAD_TOOLS = ("ninja", "doit", "atmosbuild-yaml", "atmosbuild-dsl",
              "atmosbuild-yaml-cold", "atmosbuild-dsl-cold")
MAKESPAN_TOOLS = ("ninja", "make", "doit", "atmosbuild-waves", "atmosbuild-eager")
SEED = 1
MAKESPAN_SEED = 2
JOBS = 2
MAKESPAN_SLOTS = 4
MAKESPAN_NODES = 300
MAKESPAN_SLEEP = (0.020, 0.200)
SMOKE_MAKESPAN_NODES = 20
SMOKE_MAKESPAN_SLEEP = (0.001, 0.005)
SCALE_SIZES = (5000, 20000, 50000)
SCALE_OPS = ("validate", "rollout-cold", "plan", "noop")
SUPERLINEAR_RATIO = 1.25  # a segment's slope this much above the previous one...
SUPERLINEAR_MIN_EXCESS_S = 0.1  # ...and costing at least this much more in total
SUPERLINEAR_MIN_EXCESS_MB = 5.0
EDIT_SUFFIX = b"# edited by bench/run.py\n"


@contextlib.contextmanager
def edited(path: str):
    """The one-file edit: EDIT_SUFFIX appended to `path`, its bytes put back after."""
    with open(path, "rb") as f:
        original = f.read()
    try:
        with open(path, "wb") as f:
            f.write(original + EDIT_SUFFIX)
        yield
    finally:
        with open(path, "wb") as f:
            f.write(original)
DASK_NODES = 500
SMOKE_DASK_NODES = 40
DASK_JOBS = 4
DASK_TOOLS = ("atmosbuild-local", "atmosbuild-dask")
REMOTE_TOOLS = ("ninja", "atmosbuild-cold-empty", "atmosbuild-cold-warm", "atmosbuild-noop")
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}


def base_tool(name: str) -> str:
    """`atmosbuild-eager` -> `atmosbuild`: the program behind a table row."""
    return name.split("-")[0]


def rotated(items, r: int) -> list:
    k = r % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


def display(argv: list[str]) -> str:
    if measure.ATMOSBUILD_LAUNCHER in argv:
        argv = ["atmosbuild"] + argv[argv.index(measure.ATMOSBUILD_LAUNCHER) + 1:]
    return shlex.join(argv)


class Collector:
    """Runs measured commands and keeps their samples (or their first failure)."""

    def __init__(self, logs: str, timeout: float) -> None:
        self.logs = logs
        self.timeout = timeout
        self.samples: dict[tuple[str, str], list[measure.Measurement]] = {}
        self.commands: dict[tuple[str, str], str] = {}
        self.errors: dict[tuple[str, str], str] = {}

    def run(self, scenario: str, tool: str, argv: list[str], cwd: str) -> bool:
        key = (scenario, tool)
        if key in self.errors:
            return False
        log = os.path.join(self.logs, f"{scenario}-{tool}.log".replace(":", "-"))
        self.commands[key] = display(argv)
        m = measure.run_timed(argv, cwd, log, self.timeout)
        status = "ok" if m.ok else ("TIMEOUT" if m.timed_out else f"exit {m.exit_code}")
        rss = "?" if m.peak_rss_mb is None else f"{m.peak_rss_mb:.1f}"
        print(f"  {scenario:<14} {tool:<17} {m.seconds:8.3f} s {rss:>7} MB  {status}", flush=True)
        if not m.ok:
            why = f"timed out after {self.timeout:.0f} s" if m.timed_out else f"exit {m.exit_code}"
            self.errors[key] = f"{why}: {display(argv)}\n{measure.log_tail(log)}\n(log: {log})"
            return False
        self.samples.setdefault(key, []).append(m)
        return True

    def fail(self, scenario: str, tool: str, message: str) -> None:
        self.errors.setdefault((scenario, tool), message)

    def entry(self, scenario: str, tool: str) -> dict:
        key = (scenario, tool)
        if key in self.errors:
            return report.error_entry(self.errors[key], self.commands.get(key, ""))
        runs = self.samples.get(key)
        if not runs:
            return report.error_entry("no successful run", self.commands.get(key, ""))
        return report.entry_from_runs(
            [m.seconds for m in runs], [m.peak_rss_mb for m in runs], self.commands[key]
        )


class Bench:
    def __init__(self, args: argparse.Namespace, tools: measure.Tools) -> None:
        self.args = args
        self.tools = tools
        self.c = Collector(os.path.join(args.out, "logs"), args.timeout)
        self.scenarios: dict[str, dict[str, dict]] = {}
        self.extra: dict = {}

    def unavailable(self, tool: str) -> str | None:
        """Why a tool (or table row like `atmosbuild-dsl`) cannot run, else None."""
        if base_tool(tool) not in self.args.tools:
            return "n/a: not selected (--tools)"
        if getattr(self.tools, base_tool(tool)) is None:
            return self.tools.versions.get(base_tool(tool), f"n/a: {base_tool(tool)} not found")
        return None

    def _collect(self, scenario: str, tool_names) -> None:
        entries = {}
        for tool in tool_names:
            why = self.unavailable(tool)
            entries[tool] = report.na_entry(why) if why else self.c.entry(scenario, tool)
        self.scenarios[scenario] = entries

    # --- cold / no-op / edit ------------------------------------------------------

    def incremental(self, ws: str, g: generate.Graph, wanted: set[str]) -> None:
        mid = len(g.nodes) // 2
        edit_rel = g.source_files(mid)[0]
        edit_path = os.path.join(ws, edit_rel)
        rebuilt = 1 + len(descendants(g, mid))
        self.extra["edit"] = {"component": g.component_id(mid), "file": edit_rel, "rebuilds": rebuilt}
        tools = [t for t in INCREMENTAL_TOOLS if not self.unavailable(t)]
        for r in range(self.args.runs):
            print(f"round {r + 1}/{self.args.runs}: cold/no-op/edit", flush=True)
            for tool in rotated(tools, r):
                measure.reset_state(tool, ws)
                argv = measure.build_argv(self.tools, tool, ws, JOBS)
                if not self.c.run("cold", tool, argv, ws):
                    for s in wanted:
                        self.c.fail(s, tool, "cold run failed: " + self.c.errors[("cold", tool)])
                    continue
                if "noop" in wanted and not self.c.run("noop", tool, argv, ws):
                    continue
                if "edit" in wanted:
                    with edited(edit_path):
                        self.c.run("edit", tool, argv, ws)
        for s in ("cold", "noop", "edit"):
            if s in wanted:
                self._collect(s, INCREMENTAL_TOOLS)
        if "edit" in self.scenarios:
            for e in self.scenarios["edit"].values():
                if e["status"] == "ok":
                    e["note"] = f"edits {g.component_id(mid)}: {rebuilt} of {len(g.nodes)} nodes re-run"

    # --- load -----------------------------------------------------------------------

    def load(self, ws: str) -> None:
        t = self.tools
        argvs = {
            "ninja": lambda: t.ninja + ["-C", ws, "-t", "targets", "all"],
            "doit": lambda: t.doit + ["list"],
            "atmosbuild-yaml": lambda: t.atmosbuild + ["-C", ws, "validate", f"//{generate.YAML_PACKAGE}:dev"],
            "atmosbuild-dsl": lambda: t.atmosbuild + ["-C", ws, "validate", f"//{generate.DSL_PACKAGE}:dev"],
            "atmosbuild-yaml-cold": lambda: ["env", "ATMOS_NO_CACHE=1", *t.atmosbuild, "-C", ws,
                                             "validate", f"//{generate.YAML_PACKAGE}:dev"],
            "atmosbuild-dsl-cold": lambda: ["env", "ATMOS_NO_CACHE=1", *t.atmosbuild, "-C", ws,
                                            "validate", f"//{generate.DSL_PACKAGE}:dev"],
        }
        tools = [name for name in LOAD_TOOLS if not self.unavailable(name)]
        for r in range(self.args.runs):
            print(f"round {r + 1}/{self.args.runs}: load", flush=True)
            for tool in rotated(tools, r):
                self.c.run("load", tool, argvs[tool](), ws)
        self._collect("load", LOAD_TOOLS)

    # --- makespan ---------------------------------------------------------------------

    def makespan(self, ws: str, g: generate.Graph) -> None:
        durations = [n.sleep for n in g.nodes]
        deps = [n.deps for n in g.nodes]
        slots = MAKESPAN_SLOTS
        info = {
            "nodes": len(g.nodes),
            "slots": slots,
            "waves": len(bounds.waves(deps)),
            "total_work_s": sum(durations),
            "critical_path_s": bounds.critical_path(durations, deps),
            "lower_bound_s": bounds.lower_bound(durations, deps, slots),
            "ideal_waves_s": bounds.ideal_waves(durations, deps, slots),
            "ideal_eager_s": bounds.ideal_eager(durations, deps, slots),
        }
        self.extra["makespan_graph"] = info
        spans: dict[str, list[float]] = {}
        tools = [name for name in MAKESPAN_TOOLS if not self.unavailable(name)]
        for r in range(self.args.runs):
            print(f"round {r + 1}/{self.args.runs}: makespan", flush=True)
            for name in rotated(tools, r):
                tool = base_tool(name)
                extra: tuple[str, ...] = ()
                report_path = os.path.join(self.c.logs, f"makespan-{name}-report.json")
                if tool == "atmosbuild":
                    schedule = name.split("-")[1]
                    extra = ("--schedule", schedule, "--report", report_path)
                    measure.remove_file(report_path)
                measure.reset_state(tool, ws)
                argv = measure.build_argv(self.tools, tool, ws, slots, extra)
                if self.c.run("makespan", name, argv, ws) and tool == "atmosbuild":
                    span = report_makespan(report_path)
                    if span is not None:
                        spans.setdefault(name, []).append(span)
        self._collect("makespan", MAKESPAN_TOOLS)
        for name, e in self.scenarios["makespan"].items():
            if e["status"] != "ok":
                continue
            e["ratio_lower_bound"] = e["median_s"] / info["lower_bound_s"]
            note = f"{e['ratio_lower_bound']:.2f}x lower bound"
            reference = info["ideal_waves_s"] if name == "atmosbuild-waves" else info["lower_bound_s"]
            if name == "atmosbuild-waves":
                e["ratio_ideal_waves"] = e["median_s"] / reference
                note += f", {e['ratio_ideal_waves']:.2f}x ideal waves"
            e["target_ratio"] = e["median_s"] / reference
            if spans.get(name):
                # The report's own node times leave out interpreter start-up and loading.
                e["report_makespan_s"] = statistics.median(spans[name])
                e["target_ratio"] = e["report_makespan_s"] / reference
                note += f" (from report: {e['target_ratio']:.2f}x)"
            e["note"] = note

    # --- dask -----------------------------------------------------------------------------

    def dask(self, root: str, n: int) -> None:
        """The same cold rollout of n no-op actions (`true`, one source file
        each, the generated DAG) at -j4, locally and on a loopback Dask
        cluster (a scheduler and two workers of 2 threads, tests/daskcluster.py).
        Per-action overhead = (dask - local) / n, from wall time and from the
        reports' first start to last finish (which leaves out start-up)."""
        why = self.unavailable("atmosbuild")
        try:
            import distributed  # noqa: F401
        except ImportError:
            why = why or "n/a: distributed not installed (pip install 'atmosbuild[dask]')"
        if why:
            self.scenarios["dask"] = {t: report.na_entry(why) for t in DASK_TOOLS}
            return
        sys.path.insert(0, os.path.join(os.path.dirname(BENCH_DIR), "tests"))
        from daskcluster import Cluster, free_port

        spaces = {}
        for name in DASK_TOOLS:
            spaces[name] = os.path.join(root, f"dask-{name.split('-')[1]}")
            generate.generate(spaces[name], n, 1, SEED)
        cluster = Cluster(free_port(), Path(root) / "dask-cluster")
        shutil.rmtree(cluster.dir, ignore_errors=True)
        cluster.dir.mkdir(parents=True)
        spans: dict[str, list[float]] = {}
        try:
            cluster.start_scheduler()
            for w in ("w1", "w2"):
                cluster.start_worker(w)
            with open(os.path.join(spaces["atmosbuild-dask"], "atmos.yaml"), "w") as fh:
                fh.write(f"executor: {cluster.executor}\n")
            for r in range(self.args.runs):
                print(f"round {r + 1}/{self.args.runs}: dask", flush=True)
                for name in rotated(list(DASK_TOOLS), r):
                    ws = spaces[name]
                    report_path = os.path.join(self.c.logs, f"dask-{name}-report.json")
                    measure.remove_file(report_path)
                    measure.reset_state("atmosbuild", ws)
                    argv = measure.build_argv(self.tools, "atmosbuild", ws, DASK_JOBS, ("--report", report_path))
                    if self.c.run("dask", name, argv, ws):
                        span = report_makespan(report_path)
                        if span is not None:
                            spans.setdefault(name, []).append(span)
        finally:
            cluster.stop()
        self._collect("dask", DASK_TOOLS)
        entries = self.scenarios["dask"]
        local, remote = entries["atmosbuild-local"], entries["atmosbuild-dask"]
        info: dict = {"nodes": n, "jobs": DASK_JOBS, "workers": 2, "threads_per_worker": 2}
        if local["status"] == remote["status"] == "ok":
            info["overhead_ms_wall"] = (remote["median_s"] - local["median_s"]) / n * 1000
            if spans.get("atmosbuild-local") and spans.get("atmosbuild-dask"):
                for name in DASK_TOOLS:
                    entries[name]["report_makespan_s"] = statistics.median(spans[name])
                info["overhead_ms_report"] = ((entries["atmosbuild-dask"]["report_makespan_s"]
                                               - entries["atmosbuild-local"]["report_makespan_s"]) / n * 1000)
            remote["note"] = (f"{info['overhead_ms_wall']:.1f} ms/action over local (wall)"
                              + (f", {info['overhead_ms_report']:.1f} ms from the reports"
                                 if "overhead_ms_report" in info else ""))
        self.extra["dask"] = info

    # --- postgres: the shared store against the embedded one --------------------------

    def postgres(self, root: str) -> None:
        """The same workspace twice, one on SQLite and one on a loopback
        PostgreSQL (fsync on, as a real server): one cold rollout each, then
        per round a no-op and the one-file edit (then a settling run after the
        edit is undone, not measured)."""
        tools = ("atmosbuild-sqlite", "atmosbuild-postgres")
        why = self.unavailable("atmosbuild")
        server = None
        if not why:
            sys.path.insert(0, os.path.join(os.path.dirname(BENCH_DIR), "tests"))
            try:
                import pgserver  # noqa: E402  (the tests' throwaway server)

                bindir = pgserver.find_bindir()
                if bindir is None:
                    why = "n/a: no PostgreSQL server binaries (initdb)"
                else:
                    import psycopg  # noqa: F401
            except ImportError as exc:
                why = f"n/a: {exc}"
        if why:
            self.scenarios.update({s: {t: report.na_entry(why) for t in tools}
                                   for s in ("postgres-noop", "postgres-edit")})
            return
        try:
            server = pgserver.PgServer(bindir)
            server.start(fsync=True)
            url = server.url(server.create_database())
            spaces = {}
            for tool in tools:
                ws = os.path.join(root, tool)
                g = generate.generate(ws, self.args.n, self.args.files, SEED)
                if tool.endswith("postgres"):
                    with open(os.path.join(ws, "atmos.yaml"), "w") as f:
                        f.write(f"state: {json.dumps(url)}\n")
                spaces[tool] = ws
            mid = len(g.nodes) // 2
            rebuilt = 1 + len(descendants(g, mid))
            edit_rel = g.source_files(mid)[0]
            argvs = {tool: measure.build_argv(self.tools, "atmosbuild", ws, JOBS) for tool, ws in spaces.items()}
            for tool, ws in spaces.items():
                print(f"postgres: cold rollout ({tool})", flush=True)
                self.c.run("postgres-cold", tool, argvs[tool], ws)
            for r in range(self.args.runs):
                print(f"round {r + 1}/{self.args.runs}: postgres no-op/edit", flush=True)
                for tool in rotated(tools, r):
                    ws, argv = spaces[tool], argvs[tool]
                    if not self.c.run("postgres-noop", tool, argv, ws):
                        continue
                    with edited(os.path.join(ws, edit_rel)):
                        self.c.run("postgres-edit", tool, argv, ws)
                    self.c.run("postgres-settle", tool, argv, ws)
        finally:
            if server is not None:
                server.destroy()
            for tool in tools:
                shutil.rmtree(os.path.join(root, tool), ignore_errors=True)
        for s in ("postgres-noop", "postgres-edit"):
            self._collect(s, tools)
        for e in self.scenarios["postgres-edit"].values():
            if e["status"] == "ok":
                e["note"] = f"{rebuilt} of {len(g.nodes)} nodes re-run"
        for s in ("postgres-noop", "postgres-edit"):
            sqlite = self.scenarios[s]["atmosbuild-sqlite"].get("median_s")
            e = self.scenarios[s]["atmosbuild-postgres"]
            if e.get("median_s") is not None and sqlite:
                e["ratio_sqlite"] = e["median_s"] / sqlite
                e["note"] = (e.get("note", "") + f"; {e['ratio_sqlite']:.2f}x SQLite").lstrip("; ")

    # --- scale --------------------------------------------------------------------------

    def scale(self, root: str, sizes: list[int]) -> None:
        t = self.tools
        ops = {op: {} for op in SCALE_OPS}
        generated = {}
        why = self.unavailable("atmosbuild")
        for size in sizes:
            ws = os.path.join(root, f"scale-{size}")
            print(f"scale n={size}: generating", flush=True)
            t0 = time.perf_counter()
            generate.generate(ws, size, 1, SEED)
            generated[size] = round(time.perf_counter() - t0, 3)
            scenario = f"scale-{size}"
            if not why:
                label = f"//{generate.YAML_PACKAGE}:dev"
                rollout = measure.build_argv(t, "atmosbuild", ws, JOBS)
                for _ in range(self.args.runs):
                    self.c.run(scenario, "validate", t.atmosbuild + ["-C", ws, "validate", label], ws)
                if self.c.run(scenario, "rollout-cold", rollout, ws):
                    for _ in range(self.args.runs):
                        self.c.run(scenario, "plan", t.atmosbuild + ["-C", ws, "plan", label], ws)
                        self.c.run(scenario, "noop", rollout, ws)
                else:
                    for op in ("plan", "noop"):
                        self.c.fail(scenario, op, "cold rollout failed")
            for op in SCALE_OPS:
                ops[op][str(size)] = report.na_entry(why) if why else self.c.entry(scenario, op)
            shutil.rmtree(ws, ignore_errors=True)
        self.extra["scale"] = {
            "sizes": sizes,
            "generate_s": {str(k): v for k, v in generated.items()},
            "ops": ops,
            "slopes": {op: slopes(sizes, ops[op]) for op in SCALE_OPS},
        }


    # --- remote ---------------------------------------------------------------------

    def remote(self, root: str) -> None:
        """The bench graph with every source in one commit of a git
        repository (`git::file://ORIGIN//src/cNNNNN?ref=v1`): a cold rollout
        with an empty vendor cache (one fetch, one checkout of the commit),
        a cold one with the vendor cache kept (state, logs and caches gone),
        and a no-op. Ninja's cold build of the same graph is the reference."""
        import re
        import subprocess

        ws = os.path.join(root, "remote")
        origin = os.path.join(root, "remote-origin")
        shutil.rmtree(origin, ignore_errors=True)
        generate.generate(ws, self.args.n, self.args.files, SEED)
        shutil.copytree(os.path.join(ws, "src"), os.path.join(origin, "src"))
        env = dict(os.environ, **GIT_ENV)
        for argv in (["git", "-c", "init.defaultBranch=main", "init", "-q"], ["git", "add", "-A"],
                     ["git", "commit", "-q", "-m", "components"], ["git", "tag", "v1"]):
            subprocess.run(argv, cwd=origin, env=env, check=True, capture_output=True)
        path = os.path.join(ws, generate.YAML_PACKAGE, "deployment.yaml")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(re.sub(r"source: src/(c\d+)", lambda m: f'source: "git::file://{origin}//src/{m.group(1)}?ref=v1"',
                           text))
        state = os.path.join(ws, ".atmos")
        tools = [t for t in REMOTE_TOOLS if not self.unavailable(t)]
        for r in range(self.args.runs):
            print(f"round {r + 1}/{self.args.runs}: remote", flush=True)
            if "ninja" in tools:
                measure.reset_state("ninja", ws)
                self.c.run("remote", "ninja", measure.build_argv(self.tools, "ninja", ws, JOBS), ws)
            if "atmosbuild-cold-empty" not in tools:
                continue
            argv = measure.build_argv(self.tools, "atmosbuild", ws, JOBS)
            measure.reset_state("atmosbuild", ws)
            if not self.c.run("remote", "atmosbuild-cold-empty", argv, ws):
                break
            for name in os.listdir(state):  # keep only the vendor cache
                if name != "vendor-cache":
                    # (ignore_errors: the last rollout's detached removal may still be emptying trash/)
                    target = os.path.join(state, name)
                    shutil.rmtree(target, ignore_errors=True) if os.path.isdir(target) else os.remove(target)
            if self.c.run("remote", "atmosbuild-cold-warm", argv, ws):
                self.c.run("remote", "atmosbuild-noop", argv, ws)
        self._collect("remote", REMOTE_TOOLS)
        shutil.rmtree(origin, ignore_errors=True)


def descendants(g: generate.Graph, i: int) -> set[int]:
    dependents: dict[int, list[int]] = {}
    for node in g.nodes:
        for d in node.deps:
            dependents.setdefault(d, []).append(node.index)
    seen: set[int] = set()
    stack = [i]
    while stack:
        for j in dependents.get(stack.pop(), ()):
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return seen


def slopes(sizes: list[int], by_size: dict[str, dict]) -> list[dict]:
    """Seconds and MB per 1k components between consecutive sizes.

    A segment is flagged superlinear when its slope is SUPERLINEAR_RATIO times
    the previous segment's and that costs a noticeable amount in total.
    """
    out: list[dict] = []
    for a, b in zip(sizes, sizes[1:]):
        ea, eb = by_size[str(a)], by_size[str(b)]
        if ea.get("median_s") is None or eb.get("median_s") is None:
            continue
        k = (b - a) / 1000.0
        seg = {
            "from": a,
            "to": b,
            "s_per_1k": (eb["median_s"] - ea["median_s"]) / k,
            "mb_per_1k": (eb["peak_rss_mb"] - ea["peak_rss_mb"]) / k,
            "superlinear": False,
        }
        if out and out[-1]["to"] == a:
            prev = out[-1]
            slower = (seg["s_per_1k"] > SUPERLINEAR_RATIO * max(prev["s_per_1k"], 0.0)
                      and (seg["s_per_1k"] - prev["s_per_1k"]) * k > SUPERLINEAR_MIN_EXCESS_S)
            bigger = (seg["mb_per_1k"] > SUPERLINEAR_RATIO * max(prev["mb_per_1k"], 0.0)
                      and (seg["mb_per_1k"] - prev["mb_per_1k"]) * k > SUPERLINEAR_MIN_EXCESS_MB)
            seg["superlinear"] = slower or bigger
        out.append(seg)
    return out


def report_makespan(path: str) -> float | None:
    """Last finish minus first start over the nodes of an atmosbuild --report file."""
    try:
        with open(path) as f:
            nodes = json.load(f)["nodes"]
        starts = [_when(n["started"]) for n in nodes if n.get("started") is not None]
        ends = [_when(n["finished"]) for n in nodes if n.get("finished") is not None]
        return max(ends) - min(starts) if starts and ends else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _when(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except ValueError:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="atmosbuild vs Ninja, doit and Make (bench/README.md)")
    p.add_argument("--n", type=int, default=5000, help="components (default 5000)")
    p.add_argument("--files", type=int, default=5, help="source files per component (default 5)")
    p.add_argument("--runs", type=int, default=5, help="rounds; each number is the median (default 5)")
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "out"), help="results and logs (default bench/out)")
    p.add_argument("--workdir", help="where the generated workspaces go (default OUT/ws)")
    p.add_argument("--only", help="comma list of " + ",".join(SCENARIOS) + " (default: all but scale, remote and postgres)")
    p.add_argument("--tools", default=",".join(INCREMENTAL_TOOLS),
                   help="comma list of tools to measure (default: ninja,doit,make,atmosbuild)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round, no scale: seconds")
    p.add_argument("--scale-sizes", default=",".join(map(str, SCALE_SIZES)), help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per command before it is killed")
    args = p.parse_args(argv)
    wanted = args.only.split(",") if args.only else list(DEFAULT_SCENARIOS)
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {', '.join(unknown)} (choose from {', '.join(SCENARIOS)})")
    args.tools = args.tools.split(",")
    bad_tools = [t for t in args.tools if t not in INCREMENTAL_TOOLS]
    if bad_tools:
        p.error(f"unknown tool {', '.join(bad_tools)} (choose from {', '.join(INCREMENTAL_TOOLS)})")
    if args.smoke:
        args.n, args.files, args.runs = 30, 2, 1
        wanted = [s for s in wanted if s != "scale"]
    if args.n < 2 or args.files < 1 or args.runs < 1:
        p.error("--n must be >= 2, --files and --runs >= 1")
    args.wanted = [s for s in SCENARIOS if s in wanted]
    args.out = os.path.abspath(args.out)
    args.workdir = os.path.abspath(args.workdir or os.path.join(args.out, "ws"))
    args.scale_sizes = [int(s) for s in args.scale_sizes.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    shutil.rmtree(os.path.join(args.out, "logs"), ignore_errors=True)
    tools = measure.find_tools()
    for name in INCREMENTAL_TOOLS:
        if name not in args.tools:
            tools.versions[name] = "not selected (--tools): " + tools.versions.get(name, "")
    bench = Bench(args, tools)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for name, version in tools.versions.items():
        print(f"{name}: {version}", flush=True)

    wanted = set(args.wanted)
    # Makespan first: it measures scheduling, and after the cold rounds have
    # freed ~65,000 inodes each, every create on a journal-less ext4 pays for
    # scanning them (bench/README.md, "where the time goes").
    if "makespan" in wanted:
        ws = os.path.join(args.workdir, "makespan")
        n, sleep = (SMOKE_MAKESPAN_NODES, SMOKE_MAKESPAN_SLEEP) if args.smoke else (MAKESPAN_NODES, MAKESPAN_SLEEP)
        bench.makespan(ws, generate.generate(ws, n, 1, MAKESPAN_SEED, sleep))
    if wanted & {"cold", "noop", "edit", "load"}:
        ws = os.path.join(args.workdir, "main")
        t0 = time.perf_counter()
        g = generate.generate(ws, args.n, args.files, SEED)
        print(f"generated {args.n} x {args.files} in {time.perf_counter() - t0:.2f} s: {ws}", flush=True)
        if wanted & {"cold", "noop", "edit"}:
            bench.incremental(ws, g, wanted & {"cold", "noop", "edit"})
        if "load" in wanted:
            bench.load(ws)
    if "scale" in wanted:
        bench.scale(args.workdir, args.scale_sizes)
    if "dask" in wanted:
        bench.dask(args.workdir, SMOKE_DASK_NODES if args.smoke else DASK_NODES)
    if "remote" in wanted:
        bench.remote(args.workdir)
    terraform_results = None
    if "terraform" in wanted:  # bench/terraform.py: its own rounds and numbers
        import terraform as tfbench

        n, real, runs = (10, 2, 1) if args.smoke else (200, 20, min(args.runs, 3))
        terraform_results = tfbench.run(os.path.join(args.workdir, "terraform"), n, real, runs)
        print(tfbench.text(terraform_results), flush=True)
    lifecycle_results = None
    if "lifecycle" in wanted:  # bench/lifecycle.py: preview/check beside the no-op; check of N terraform
        import lifecycle as lcbench

        cli, why = measure.find_atmosbuild()
        n, tf_n, runs = (50, 5, 1) if args.smoke else (args.n, 100, args.runs)
        lifecycle_results = lcbench.run(os.path.join(args.workdir, "lifecycle"), cli, n, args.files, runs,
                                        tf_n, 4, 0.1)
        print(lcbench.text(lifecycle_results) if lifecycle_results else f"lifecycle: {why}", flush=True)
    if "postgres" in wanted:
        bench.postgres(args.workdir)

    report.add_ratios(bench.scenarios)
    results = {
        "meta": {
            "command": "python bench/run.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "started": started,
            "n": args.n,
            "files": args.files,
            "runs": args.runs,
            "jobs": JOBS,
            "seed": SEED,
            "smoke": args.smoke,
            "scenarios": args.wanted,
            "cpus": os.cpu_count(),
            "loadavg": loadavg,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "workdir": args.workdir,
            "tools": tools.versions,
            "peak_rss": measure.RSS_METHOD,
            **({"edit": bench.extra["edit"]} if "edit" in bench.extra else {}),
        },
        "scenarios": bench.scenarios,
    }
    if "makespan_graph" in bench.extra:
        results["makespan_graph"] = bench.extra["makespan_graph"]
    if "scale" in bench.extra:
        results["scale"] = bench.extra["scale"]
    if "dask" in bench.extra:
        results["dask"] = bench.extra["dask"]
    results["targets"] = report.targets(results)
    if terraform_results is not None:
        results["terraform"] = terraform_results
    if lifecycle_results is not None:
        results["lifecycle"] = lifecycle_results
    report.write(results, args.out)
    print()
    print(report.summary_text(results))
    print(f"\nwrote {os.path.join(args.out, 'results.json')} and results.md")
    failed = [
        f"{s}/{t}" for s, entries in bench.scenarios.items() for t, e in entries.items() if e["status"] == "error"
    ] + [
        f"scale/{op}@{size}" for op, by_size in results.get("scale", {}).get("ops", {}).items()
        for size, e in by_size.items() if e["status"] == "error"
    ]
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
