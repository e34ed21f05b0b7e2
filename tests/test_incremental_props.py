"""Properties of incremental rollouts (SPEC 5), in the SPEC's own words, over
random DAGs and random edits.

Each example writes a real deployment to a temporary workspace and rolls it
out in-process through `Rollout` with a fake runner (`runner_factory`), so
keys, the rebuilder, the scheduler and the store are the real ones while no
process is started. The fake runner's outputs stand for what each action
would write to $ATMOS_OUTPUTS.

- minimality: the second run executes exactly the nodes whose keys changed;
- early cutoff: a node behind an upstream that re-ran to the same outputs
  is not run (its key did not change);
- no-op: a repeat run executes nothing;
- build mode: reverting every edit makes build-mode nodes reuse their first
  build, while apply-mode nodes whose key moved apply again.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atmosbuild.components import TYPES
from atmosbuild.config.labels import parse_label
from atmosbuild.config.workspace import expand, load_settings, load_specs
from atmosbuild.graph.actions import compile_graph
from atmosbuild.run.rollout import Rollout, RolloutOptions
from atmosbuild.run.ui import Console
from atmosbuild.state.files import FileDigester
from atmosbuild.state.store import MemoryStore
from fakes import FakeRunnerFactory


@dataclass
class Scenario:
    kinds: list[str]  # "command" (apply) or "nixpack" (build), per node
    deps: list[list[int]]
    has_outputs: list[bool]
    file_edits: dict[int, str]  # node -> "grow" | "same-size" (mtime restored)
    var_edits: set[int]
    output_changes: set[int]  # nodes whose outputs differ when they run again
    policy: str
    parallelism: int

    def nid(self, i: int) -> str:
        return f"{self.kinds[i]}/c{i}"


@st.composite
def scenarios(draw) -> Scenario:
    n = draw(st.integers(1, 7))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)]
    nodes = st.integers(0, n - 1)
    return Scenario(
        kinds=[draw(st.sampled_from(["command", "command", "nixpack"])) for _ in range(n)],
        deps=deps,
        has_outputs=[draw(st.booleans()) for _ in range(n)],
        file_edits=draw(st.dictionaries(nodes, st.sampled_from(["grow", "same-size"]))),
        var_edits=draw(st.sets(nodes)),
        output_changes=draw(st.sets(nodes)),
        policy=draw(st.sampled_from(["waves", "eager"])),
        parallelism=draw(st.integers(1, 4)),
    )


class World:
    """A workspace on disk plus the store that survives between rollouts."""

    def __init__(self, root: str, sc: Scenario) -> None:
        self.root, self.sc = root, sc
        self.store = MemoryStore()
        self.state_dir = os.path.join(root, ".atmos")
        self.vars = [0] * len(sc.kinds)
        self.out_version = [0] * len(sc.kinds)
        with open(os.path.join(root, "atmos.yaml"), "w") as fh:
            fh.write("{}\n")
        for i in range(len(sc.kinds)):
            self.write_source(i, "v0")
        self.write_deployment()

    def write_source(self, i: int, text: str) -> None:
        path = os.path.join(self.root, "src", f"c{i}", "f.txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text)

    def edit_source(self, i: int, how: str, revert: bool = False) -> None:
        path = os.path.join(self.root, "src", f"c{i}", "f.txt")
        before = os.stat(path)
        if how == "grow":
            self.write_source(i, "v0" if revert else "v0 and then some")
        else:  # same size, mtime put back: only ctime (and content) tell
            self.write_source(i, "v0" if revert else "v1")
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    def write_deployment(self) -> None:
        comps: dict[str, dict] = {"command": {}, "nixpack": {}}
        for i, kind in enumerate(self.sc.kinds):
            # nixpack keys read only `image` from vars: edit what the type reads.
            edited = {"v": self.vars[i]} if kind == "command" else {"image": {"name": f"i{self.vars[i]}"}}
            comp = {"source": f"src/c{i}", "vars": edited,
                    "metadata": {"depends_on": [self.sc.nid(d) for d in self.sc.deps[i]]}}
            if kind == "command":
                comp["run"] = ["true"]
            comps[kind][f"c{i}"] = comp
        doc = {"deployment": {"targets": {"dev": {}},
                              "components": {k: v for k, v in comps.items() if v}}}
        os.makedirs(os.path.join(self.root, "app"), exist_ok=True)
        with open(os.path.join(self.root, "app", "deployment.yaml"), "w") as fh:
            json.dump(doc, fh)

    def outputs(self) -> dict:
        return {self.sc.nid(i): ({"out": self.out_version[i]} if self.sc.has_outputs[i] else None)
                for i in range(len(self.sc.kinds))}

    def rollout(self) -> tuple[list[str], dict[str, str], Rollout]:
        """One rollout: (nodes executed, key of every node, the rollout)."""
        labels = expand(self.root, [parse_label("//app:dev")], TYPES)
        digester = FileDigester(self.root, self.store.file_cache())
        graph = compile_graph(self.root, labels, digester,
                              specs=lambda: load_specs(self.root, labels, TYPES),
                              settings=lambda: load_settings(self.root))
        self.store.save_file_cache(digester.changed)
        factory = FakeRunnerFactory(outputs=self.outputs())
        options = RolloutOptions(parallelism=self.sc.parallelism, schedule=self.sc.policy)
        console = Console(io.StringIO(), io.StringIO(), prefix=False, live=False, color=False)
        rollout = Rollout(self.root, self.state_dir, graph, self.store, options, console,
                          runner_factory=factory)
        assert rollout.run() == 0
        executed = factory.runners[-1].started_order if factory.runners else []
        return executed, {nid: d.key for nid, d in rollout.decisions.items()}, rollout


def expected_second_run(sc: Scenario) -> set[str]:
    """The model: whose key changes after the edits (SPEC 5, by induction)."""
    key_changed: list[bool] = []
    result_changed: list[bool] = []
    for i in range(len(sc.kinds)):
        changed = (i in sc.file_edits or i in sc.var_edits
                   or any(result_changed[d] for d in sc.deps[i]))
        key_changed.append(changed)
        # Result digest = outputs' digest if any, else the key.
        result_changed.append(changed and (not sc.has_outputs[i] or i in sc.output_changes))
    return {sc.nid(i) for i, c in enumerate(key_changed) if c}


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_reruns_are_minimal_cut_off_early_and_a_repeat_run_does_nothing(sc: Scenario):
    with tempfile.TemporaryDirectory() as root:
        world = World(root, sc)
        all_nodes = {sc.nid(i) for i in range(len(sc.kinds))}

        first, keys1, _ = world.rollout()
        assert sorted(first) == sorted(all_nodes)
        repeat, keys, _ = world.rollout()
        assert repeat == [] and keys == keys1

        for i, how in sc.file_edits.items():
            world.edit_source(i, how)
        for i in sc.var_edits:
            world.vars[i] = 1
        for i in sc.output_changes:
            world.out_version[i] = 1
        world.write_deployment()

        second, keys2, _ = world.rollout()
        # Minimality, in the SPEC's words and in the model's.
        assert set(second) == {n for n in all_nodes if keys2[n] != keys1[n]}
        assert set(second) == expected_second_run(sc)
        assert len(second) == len(set(second))

        repeat, keys, _ = world.rollout()
        assert repeat == [] and keys == keys2

        # Revert every edit: every key returns to its first value. Build-mode
        # nodes find their first build and reuse it; apply-mode nodes whose
        # key moved in between apply again.
        for i, how in sc.file_edits.items():
            world.edit_source(i, how, revert=True)
        world.vars = [0] * len(sc.kinds)
        world.out_version = [0] * len(sc.kinds)
        world.write_deployment()

        third, keys3, _ = world.rollout()
        assert keys3 == keys1
        assert set(third) == {n for n in all_nodes
                              if n.startswith("command/") and keys2[n] != keys1[n]}

        repeat, _, _ = world.rollout()
        assert repeat == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 6), st.sets(st.integers(0, 5)), st.data())
def test_a_chain_behind_an_upstream_with_unchanged_outputs_never_runs(n, edited, data):
    """Early cutoff on the worst case: a chain where every node declares
    outputs and every node's own source is edited upstream of the last."""
    edited = {i for i in edited if i < n}
    sc = Scenario(kinds=["command"] * n, deps=[[i - 1] if i else [] for i in range(n)],
                  has_outputs=[True] * n, file_edits={i: "grow" for i in edited},
                  var_edits=set(), output_changes=set(),
                  policy=data.draw(st.sampled_from(["waves", "eager"])), parallelism=2)
    with tempfile.TemporaryDirectory() as root:
        world = World(root, sc)
        world.rollout()
        for i in edited:
            world.edit_source(i, "grow")
        second, _, rollout = world.rollout()
        # Only the edited nodes run: each re-ran to the same outputs, so
        # nothing downstream of it saw a change.
        assert set(second) == {sc.nid(i) for i in edited}
        for i in range(n):
            reason = rollout.decisions[sc.nid(i)].reason
            assert ("file `src/c%d/f.txt` changed" % i in reason) == (i in edited)
