"""Destroy's order as a property (SPEC 10), in-process through the real
Destroy rollout with a fake runner (tests/fakes.py) over random DAGs:

- a component is destroyed only after everything that (transitively)
  depends on it was destroyed;
- never more than -j at once;
- with -k, a failed destroy keeps exactly its (transitive) dependencies
  standing: they are skipped and stay applied; everything else goes.
"""

from __future__ import annotations

import io
import json
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atmosbuild.components import TYPES
from atmosbuild.config.labels import parse_label
from atmosbuild.config.workspace import expand, load_settings, load_specs
from atmosbuild.graph.actions import compile_graph
from atmosbuild.run.lifecycle import Destroy
from atmosbuild.run.rollout import Rollout, RolloutOptions
from atmosbuild.run.ui import Console
from atmosbuild.state.files import FileDigester
from atmosbuild.state.store import MemoryStore
from fakes import FakeRunnerFactory


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 8))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)]
    return {
        "deps": deps,
        "durations": [draw(st.integers(1, 4)) for _ in range(n)],
        "failures": draw(st.sets(st.integers(0, n - 1), max_size=2)),
        "parallelism": draw(st.integers(1, 4)),
        "policy": draw(st.sampled_from(["waves", "eager"])),
        "keep_going": draw(st.booleans()),
    }


def nid(i: int) -> str:
    return f"command/c{i}"


def write(root: str, deps) -> None:
    comps = {f"c{i}": {"run": ["true"], "destroy": ["true"],
                       "metadata": {"depends_on": [nid(d) for d in ds]}} for i, ds in enumerate(deps)}
    os.makedirs(os.path.join(root, "app"), exist_ok=True)
    with open(os.path.join(root, "atmos.yaml"), "w") as fh:
        fh.write("{}\n")
    with open(os.path.join(root, "app", "deployment.yaml"), "w") as fh:
        json.dump({"deployment": {"targets": {"dev": {}}, "components": {"command": comps}}}, fh)


def run(cls, root, store, sc, factory):
    labels = expand(root, [parse_label("//app:dev")], TYPES)
    graph = compile_graph(root, labels, FileDigester(root, {}), specs=lambda: load_specs(root, labels, TYPES),
                          settings=lambda: load_settings(root))
    options = RolloutOptions(parallelism=sc["parallelism"], schedule=sc["policy"],
                             keep_going=sc["keep_going"], verb="destroy" if cls is Destroy else "apply")
    console = Console(io.StringIO(), io.StringIO(), prefix=False, live=False, color=False)
    rollout = Rollout(root, os.path.join(root, ".atmos"), graph, store, options, console, runner_factory=factory,
                      verb=Destroy() if cls is Destroy else None)
    return rollout.run(), rollout


def closure(edges, i) -> set[int]:
    """Brute force: the nodes reachable from `i` along `edges` (a list per node)."""
    out, todo = set(), [i]
    while todo:
        for d in edges[todo.pop()]:
            if d not in out:
                out.add(d)
                todo.append(d)
    return out


def dependents_closure(deps, i) -> set[int]:
    return closure([[m for m, ds in enumerate(deps) if n in ds] for n in range(len(deps))], i)


def dependencies_closure(deps, i) -> set[int]:
    return closure(deps, i)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_destroy_goes_after_every_dependent_keeps_the_bound_and_keeps_needed_ones_standing(sc):
    deps = sc["deps"]
    n = len(deps)
    with tempfile.TemporaryDirectory() as root:
        write(root, deps)
        store = MemoryStore()
        code, _ = run(Rollout, root, store, {**sc, "keep_going": False}, FakeRunnerFactory())
        assert code == 0
        factory = FakeRunnerFactory({nid(i): d for i, d in enumerate(sc["durations"])},
                                    failures={nid(i) for i in sc["failures"]})
        code, destroy = run(Destroy, root, store, sc, factory)
        runner = factory.runners[-1]
        starts, finishes = runner.start_times, runner.finish_times
        assert runner.max_running <= sc["parallelism"]
        for node, started in starts.items():
            i = int(node.split("/c")[1])
            for j in dependents_closure(deps, i):
                # every dependent was destroyed (not failed) and finished first
                assert nid(j) in finishes and finishes[nid(j)] <= started, (node, nid(j))
                assert nid(j) not in {nid(f) for f in sc["failures"]}
        applied = {c for (_, _, c) in store.applied}
        started = {int(s.split("/c")[1]) for s in starts}
        failed = {f for f in sc["failures"] if f in started}
        assert (code == 0) == (not failed)
        if sc["keep_going"]:
            standing = set().union(*(dependencies_closure(deps, f) for f in failed)) if failed else set()
            # exactly the dependencies of a failed destroy are skipped and stay applied
            assert started == set(range(n)) - standing
            assert applied == {nid(i) for i in standing | failed}
        else:  # fail-fast: what finished destroyed is gone, the rest stands
            ok = {e.node for e in runner.log if e.kind == "finish" and e.detail.ok}
            assert applied == {nid(i) for i in range(n)} - ok
        for i in set(range(n)) - {int(c.split("/c")[1]) for c in applied}:
            assert store.removals[(destroy.graph.nodes[nid(i)].deployment, "dev", nid(i))].kind == "destroyed"
