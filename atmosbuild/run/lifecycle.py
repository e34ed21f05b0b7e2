"""The lifecycle verbs (SPEC 10): preview, apply what was reviewed, destroy,
check. Each is a `Rollout` that changes only what its verb changes -- the
order (destroy: the reversed graph), how a node is decided, which of its
type's invocations run, and what is recorded -- and shares everything else
with the rollout: the locks, the workspace, the scheduler, the runner, the
console, the logs, the report, Ctrl-C.

    Preview      a rollout's decisions; each node that would run goes through
                 its type's preview (terraform plan -out + show -json); nothing
                 recorded; plans and a manifest under STATE_DIR/previews/ID/
    FromPreview  a rollout that first proves every key is still the previewed
                 one (else exit 2, nothing run) and applies the saved plans
    Destroy      the reversed DAG; each applied node's destroy; recorded as a
                 removal (status: destroyed; the next rollout applies it again)
    Check        each terraform node the keys say is up to date: plan
                 -detailed-exitcode; a drifted one is recorded as a removal
                 (explain: drift: N resources changed outside atmosbuild)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

from ..errors import UsageError
from ..state.store import Removal
from .rollout import EXIT_OK, Rollout, _Result
from .workspace import META_DIR, meta_stem

EXIT_DRIFT = 4
PREVIEWS = "previews"
MANIFEST = "manifest.json"

# Report statuses beyond SPEC 7's (README: "Lifecycle").
WOULD_CHANGE, NO_CHANGE, NEEDS_UPSTREAM, DESTROYED, DRIFTED = (
    "would-change", "no-change", "needs-upstream", "destroyed", "drifted")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + ("  " + r[-1] if r[-1] else "")
            for r in rows]


def _local_digest(node) -> str:
    from ..graph.keys import digest

    return digest(["local", node.local_canonical])


# -- preview -----------------------------------------------------------------------

def previews_dir(state_dir: str) -> str:
    return os.path.join(state_dir, PREVIEWS)


class Preview(Rollout):
    """What a rollout would do, with each changing node's own preview."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.preview_id = self.run_id
        self.dir = os.path.join(previews_dir(self.state_dir), self.preview_id)
        self.found: dict[str, dict] = {}  # node -> {"status", "changes", "outputs", "pending", ...}
        self.only: list[str] = []  # --only, kept in the manifest

    def verb_run(self, comp):
        return getattr(comp, "preview", None)

    def plan_file(self, nid: str) -> str:
        node = self.graph.nodes[nid]
        if not node.ctype.has_preview(node.component):
            return ""
        return os.path.join(os.path.abspath(self.dir), meta_stem(nid.replace(" ", "@")) + ".tfplan")

    def verb_invocations(self, node, ctx):
        os.makedirs(self.dir, exist_ok=True)
        return node.ctype.preview_invocations(ctx)

    def verb_collect(self, nid, node, ctx, captured):
        found = node.ctype.read_preview(ctx, captured)
        node.ctype.after_lifecycle(ctx)
        return found

    def _needs_run(self, nid: str) -> bool:
        node = self.graph.nodes[nid]
        needs, pending = [], []
        for d in node.deps:
            up = self.found[d]
            if up["status"] == NEEDS_UPSTREAM or (up["status"] == WOULD_CHANGE and not up["applied"]):
                needs.append(self.graph.nodes[d].cid)
            elif up.get("changed_outputs"):
                cid = self.graph.nodes[d].cid
                refs = [path.split(".")[0] for up_id, path in node.component.output_refs if up_id == cid]
                changed = up["changed_outputs"]
                keys = sorted({k for k in refs if k in changed or changed == ["*"]})
                pending += [f"{cid}.{k}" for k in keys] or [cid]
        last = self.rebuilder.applied(node)
        entry = {"applied": last is not None, "pending": pending, "changes": None, "plan": None}
        self.found[nid] = entry
        if needs:
            entry.update(status=NEEDS_UPSTREAM, reason="needs upstream: " + ", ".join(needs))
            self.results[nid] = _Result("", {})
            return False
        upstream = {self.graph.nodes[d].cid: self.results[d].result for d in node.deps}
        decision = self.rebuilder.decide(node, upstream)
        if pending and not decision.run:  # with the upstream's new outputs it would run
            decision = replace(decision, run=True, reasons=("inputs pending",))
        self.decisions[nid] = decision
        if not decision.run:
            entry.update(status=NO_CHANGE, reason=decision.reason)
            self.results[nid] = _Result(decision.result, dict(decision.outputs or {}))
            return False
        entry.update(status=WOULD_CHANGE, reason=decision.reason)
        if not node.ctype.has_preview(node.component):
            entry["changes"] = "would build" if node.mode == "build" else "would run"
            self._expect(nid, node, decision, None)
            return False
        return True

    def _expect(self, nid, node, decision, changed_outputs) -> None:
        """The result its dependents see: exact when its outputs would not
        change, else its current outputs (they are marked pending)."""
        from ..graph.keys import result_digest

        last = self.rebuilder.applied(node)
        outputs = dict(last.outputs) if last else {}
        if changed_outputs is None and outputs:
            changed_outputs = ["*"]  # the type cannot tell: any of them may change
        entry = self.found[nid]
        entry["changed_outputs"] = changed_outputs or []
        if last is None:  # never applied: its dependents need it first (needs upstream)
            self.results[nid] = _Result("", {})
        elif changed_outputs:
            self.results[nid] = _Result(last.result, outputs)
        else:
            self.results[nid] = _Result(result_digest(decision.key, outputs), outputs)

    def node_cached(self, node: str) -> None:
        entry = self.found[node]
        self.done += 1
        if entry["status"] == NO_CHANGE:
            self.console.finished(node, "cached", 0.0)
        else:
            self.console.finished(node, "skipped" if entry["status"] == NEEDS_UPSTREAM else "cached",
                                  0.0, entry["reason"] if entry["status"] == NEEDS_UPSTREAM
                                  else entry["changes"])

    def node_finished(self, fin) -> None:
        node = self.graph.nodes[fin.node]
        if fin.node in self.running:
            self.running.remove(fin.node)
        self.done += 1
        entry = self.found[fin.node]
        if fin.ok:
            found = fin.value or {}
            if found.get("add") is not None:
                entry["changes"] = f"+{found['add']} ~{found['change']} -{found['destroy']}"
            else:
                entry["changes"] = "previewed"
            entry["plan"] = self.plan_file(fin.node) or None
            self._expect(fin.node, node, self.decisions[fin.node], found.get("outputs"))
            if found.get("outputs") is not None:
                entry["outputs_change"] = bool(found["outputs"])
        else:
            entry.update(status="failed", changes=None)
            self.results[fin.node] = _Result("", {})
        self.console.progress(self.done, len(self.graph.nodes), self.running)

    def node_status(self, nid, status):
        entry = self.found.get(nid)
        if entry is None or status in ("failed", "cancelled", "skipped") and entry["status"] != NEEDS_UPSTREAM:
            return status, ""
        return entry["status"], entry.get("reason", "")

    def after_run(self, outcome, duration) -> None:
        rows = [("COMPONENT", "PREVIEW", "CHANGES", "NOTE")]
        counts = {WOULD_CHANGE: 0, NO_CHANGE: 0, NEEDS_UPSTREAM: 0}
        nodes = {}
        for nid in self.graph.dag.order:
            node = self.graph.nodes[nid]
            entry = self.found.get(nid)
            status = outcome.nodes[nid].status
            if entry is None or status in ("failed", "cancelled") or \
                    (status == "skipped" and entry["status"] != NEEDS_UPSTREAM):
                rows.append((nid, status, "-", outcome.nodes[nid].reason))
                continue
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
            notes = []
            if entry.get("outputs_change"):
                notes.append("outputs change: " + ", ".join(entry["changed_outputs"]))
            if entry["pending"]:
                notes.append("inputs pending: " + " ".join(entry["pending"]))
            if entry["status"] == NEEDS_UPSTREAM:
                notes.append(entry["reason"])
            rows.append((nid, entry["status"], entry["changes"] or "-", "; ".join(notes)))
            decision = self.decisions.get(nid)
            last = self.rebuilder.applied(node)
            from ..state.rebuild import storable_ingredients

            nodes[nid] = {
                "deployment": node.deployment, "target": node.target, "component": node.cid,
                "status": entry["status"], "key": decision.key if decision else None,
                "local": _local_digest(node), "ingredients": storable_ingredients(node),
                "applied": [last.key, last.result] if last else None,
                "plan": entry["plan"], "pending": entry["pending"], "changes": entry["changes"],
            }
        for line in _table(rows):
            self.console.info(line)
        self.console.info(f"Preview {self.preview_id}: {counts[WOULD_CHANGE]} would change, "
                          f"{counts[NO_CHANGE]} no change, {counts[NEEDS_UPSTREAM]} need upstream")
        if outcome.result != "success":
            return
        from ..fileops import write_atomic

        manifest = {"id": self.preview_id, "labels": [str(l) for l in self.graph.labels],
                    "only": list(self.only), "created": time.time(),
                    "nodes": nodes}
        os.makedirs(self.dir, exist_ok=True)
        write_atomic(os.path.join(self.dir, MANIFEST), json.dumps(manifest, indent=1).encode())
        self.console.info(f"Saved preview {self.preview_id}: apply exactly it with "
                          f"`atmosbuild rollout {' '.join(manifest['labels'])} --from-preview {self.preview_id}`")

    def exit_code(self, outcome) -> int:
        return super().exit_code(outcome)


# -- rollout --from-preview ---------------------------------------------------------

def load_manifest(state_dir: str, preview_id: str) -> dict:
    if not preview_id or "/" in preview_id or preview_id.startswith("."):
        raise UsageError(f"unknown preview '{preview_id}'")
    path = os.path.join(previews_dir(state_dir), preview_id, MANIFEST)
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
    except FileNotFoundError:
        known = sorted(os.listdir(previews_dir(state_dir))) if os.path.isdir(previews_dir(state_dir)) else []
        raise UsageError(f"unknown preview '{preview_id}'"
                         + (f"; saved previews: {', '.join(known[-5:])}" if known else
                            "; run `atmosbuild preview LABEL` first")) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"preview '{preview_id}' is unreadable ({exc}); run preview again") from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
        raise UsageError(f"preview '{preview_id}' is unreadable; run preview again")
    return data


class FromPreview(Rollout):
    """A rollout that applies the reviewed plans, or refuses before anything runs."""

    def __init__(self, *args, manifest: dict, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.manifest = manifest
        self.refused: dict[str, str] = {}

    def read_state(self) -> None:
        super().read_state()  # under the locks: nothing can move between this check and the run
        from ..state.rebuild import describe_changes, storable_ingredients

        pid = self.manifest["id"]
        want = self.manifest["nodes"]
        problems = []
        for nid in self.graph.dag.order:
            node = self.graph.nodes[nid]
            m = want.get(nid)
            if m is None:
                problems.append(f"{nid}: not in the preview")
                continue
            if m["local"] is None:  # saved from the up-to-date record: its key is the proof
                from ..graph.keys import action_key

                deps = {self.graph.nodes[d].cid: (want.get(d) or {}).get("applied", [None, None])[1]
                        for d in node.deps}
                if action_key(node.local_canonical, deps) != m["key"]:
                    problems.append(f"{nid}: its code, vars or upstreams changed")
            elif m["local"] != _local_digest(node):
                what = describe_changes(m.get("ingredients") or {}, storable_ingredients(node), None)
                problems.append(f"{nid}: {', '.join(what) or 'its code or vars changed'}")
            last = self.rebuilder.applied(node)
            now = [last.key, last.result] if last else None
            if now != m["applied"]:
                problems.append(f"{nid}: applied by another run since the preview" if now else
                                f"{nid}: no longer applied (destroyed or drifted) since the preview")
        for nid in want:
            if nid not in self.graph.nodes:
                problems.append(f"{nid}: in the preview, not in the selection")
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise UsageError(f"preview {pid} is stale, nothing was run: {shown}; run preview again")

    def _needs_run(self, nid: str) -> bool:
        run = super()._needs_run(nid)
        if run:
            m = self.manifest["nodes"][nid]
            key = self.decisions[nid].key
            if m["status"] == NEEDS_UPSTREAM or key != m["key"]:
                ups = ", ".join(m["pending"]) if m["pending"] else "its upstream"
                self.refused[nid] = (f"not in the reviewed preview {self.manifest['id']}: its inputs "
                                     f"({ups}) are known only now; run preview again to review it")
        return run

    def after_run(self, outcome, duration) -> None:
        if outcome.result != "success":
            return
        # Applied: the plans are spent (Terraform refuses a stale plan anyway),
        # and they hold values as the state does. The manifest stays as a record.
        for m in self.manifest["nodes"].values():
            if m.get("plan"):
                try:
                    os.unlink(m["plan"])
                except OSError:
                    pass

    def plan_file(self, nid: str) -> str:
        m = self.manifest["nodes"].get(nid) or {}
        return m.get("plan") or "" if nid not in self.refused else ""

    def verb_invocations(self, node, ctx):
        nid = next(n for n, v in self.graph.nodes.items() if v is node or v.cid == ctx.component_id
                   and v.label == node.label)
        if nid in self.refused:
            raise ValueError(self.refused[nid])
        if ctx.plan_file and not os.path.isfile(ctx.plan_file):
            raise ValueError(f"the saved plan {ctx.plan_file} is gone; run preview again")
        return super().verb_invocations(node, ctx)


# -- destroy -------------------------------------------------------------------------

def destroy_selection(graph, only: list[str]):
    """`destroy --only X`: X and everything that depends on it (it must go
    first), never what X depends on. Returns (graph, the nodes it depends on
    that stay standing)."""
    if not only:
        return graph, {}
    from ..errors import did_you_mean
    from ..graph.actions import ActionGraph

    chosen = set()
    for item in only:
        hits = [nid for nid, node in graph.nodes.items() if nid == item or node.cid == item]
        if not hits:
            raise UsageError(f"--only {item}: no such component" + did_you_mean(item, graph.nodes))
        chosen.update(hits)
    keep = chosen | set(graph.dag.downstream(chosen))
    sub = ActionGraph(graph.labels, graph.specs, {n: graph.nodes[n] for n in keep},
                      graph.dag.subgraph(keep))
    # What the selection depends on stays standing; its recorded outputs
    # still render the selection's vars.
    return sub, {d: graph.nodes[d] for n in keep for d in graph.dag.deps[n] if d not in keep}


def applied_nodes(graph, store) -> list[str]:
    """What destroy would tear down, in its order."""
    from ..state.rebuild import Rebuilder

    rebuilder = Rebuilder(graph, store)
    reverse = reversed_dag(graph.dag)
    return [nid for nid in reverse.order if rebuilder.applied(graph.nodes[nid]) is not None]


def reversed_dag(dag):
    from ..graph.dag import build_dag

    return build_dag({n: dag.dependents[n] for n in dag.order})


class Destroy(Rollout):
    def __init__(self, *args, standing: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.standing = dict(standing or {})  # node -> ActionNode: outside the selection, depended on
        self._reversed = reversed_dag(self.graph.dag)
        self.outcome_of: dict[str, str] = {}  # node -> destroyed | not applied

    def schedule_dag(self):
        return self._reversed

    def read_state(self) -> None:
        super().read_state()
        # A component's destroy renders its vars with its upstreams' recorded outputs.
        for nid, node in [*self.graph.nodes.items(), *self.standing.items()]:
            last = self.rebuilder.applied(node)
            self.results[nid] = _Result(last.result, dict(last.outputs)) if last else _Result("", {})

    def dep_outputs(self, node) -> dict:
        return {self.dep_node(d).cid: self.results[d].outputs for d in node.deps}

    def dep_node(self, dep: str):
        return self.graph.nodes.get(dep) or self.standing.get(dep)

    def _upstream_key(self, dep: str) -> str:
        # A sensitive output an upstream's state holds only a marker for is
        # read back from its Terraform state (Rollout._recover) and checked
        # against the result recorded with this key: its upstreams go after
        # it, so the key is the applied one, not a decision of this run.
        return self.rebuilder.applied(self.dep_node(dep)).key

    def _materialize(self, node, workdir: str):
        # That read-back copied the upstream's source here first; its own
        # destroy comes later and copies it afresh.
        if os.path.isdir(workdir):
            import shutil

            shutil.rmtree(workdir)
        return super()._materialize(node, workdir)

    def verb_run(self, comp):
        return getattr(comp, "destroy", None)

    def verb_invocations(self, node, ctx):
        return node.ctype.destroy_invocations(ctx)

    def verb_collect(self, nid, node, ctx, captured):
        node.ctype.after_lifecycle(ctx)
        return {}

    def _needs_run(self, nid: str) -> bool:
        from ..state.rebuild import Decision

        node = self.graph.nodes[nid]
        last = self.rebuilder.applied(node)
        if last is None:
            self.decisions[nid] = Decision(False, "", ("not applied: nothing to destroy",))
            self.outcome_of[nid] = "not applied"
            return False
        self.decisions[nid] = Decision(True, last.key, (f"destroy (applied key {last.key[:12]})",))
        if not node.ctype.has_destroy(node.component):
            self._record(nid)  # nothing to run (nixpack, command without `destroy:`)
            return False
        return True

    def _record(self, nid: str) -> None:
        node = self.graph.nodes[nid]
        self.store.record_removal(node.deployment, node.target, node.cid, Removal(
            "destroyed", self.run_id, f"destroyed by run {self.run_id}", self.decisions[nid].key,
            time.time()))
        self.outcome_of[nid] = DESTROYED

    def node_cached(self, node: str) -> None:
        self.done += 1
        if self.outcome_of.get(node) == DESTROYED:
            self.console.finished(node, "succeeded", 0.0, "destroyed (nothing to run)")
        else:
            self.console.finished(node, "cached", 0.0, "not applied")

    def node_finished(self, fin) -> None:
        if fin.node in self.running:
            self.running.remove(fin.node)
        self.done += 1
        if fin.ok:
            self._record(fin.node)  # the moment it is known
        self.console.progress(self.done, len(self.graph.nodes), self.running)

    def node_status(self, nid, status):
        if status in ("succeeded", "cached") and self.outcome_of.get(nid) == DESTROYED:
            return DESTROYED, f"destroyed by run {self.run_id}"
        if status == "cached":
            return "cached", "not applied: nothing to destroy"
        return status, ""

    def after_run(self, outcome, duration) -> None:
        gone = sum(1 for v in self.outcome_of.values() if v == DESTROYED)
        self.console.info(f"Destroyed {_plural(gone, 'component')}")


# -- check (drift) -----------------------------------------------------------------

class Check(Rollout):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drift: dict[str, list[str]] = {}
        self.checked: set[str] = set()
        self.stale: set[str] = set()

    def verb_run(self, comp):
        return None

    def plan_file(self, nid: str) -> str:
        node = self.graph.nodes[nid]
        return os.path.join(self.workspaces[node.label], META_DIR, meta_stem(node.cid) + ".check.tfplan")

    def verb_invocations(self, node, ctx):
        return node.ctype.check_invocations(ctx)

    def verb_collect(self, nid, node, ctx, captured):
        drifted = node.ctype.read_check(ctx, captured)
        node.ctype.after_lifecycle(ctx)
        return {"drift": drifted}

    def _needs_run(self, nid: str) -> bool:
        node = self.graph.nodes[nid]
        upstream = {self.graph.nodes[d].cid: self.results[d].result for d in node.deps}
        decision = self.rebuilder.decide(node, upstream)
        self.decisions[nid] = decision
        if decision.run:  # out of date: a rollout applies it anyway; not a drift question
            last = self.rebuilder.applied(node)
            self.results[nid] = _Result(last.result, dict(last.outputs)) if last else _Result("", {})
            self.stale.add(nid)
            return False
        self.results[nid] = _Result(decision.result, dict(decision.outputs or {}))
        return node.ctype.has_check(node.component) and node.mode != "build"

    def node_cached(self, node: str) -> None:
        self.done += 1
        if node in self.stale:
            self.console.finished(node, "skipped", 0.0, "out of date: not checked (a rollout applies it)")
        else:
            self.console.finished(node, "cached", 0.0)

    def node_finished(self, fin) -> None:
        node = self.graph.nodes[fin.node]
        if fin.node in self.running:
            self.running.remove(fin.node)
        self.done += 1
        if fin.ok:
            self.checked.add(fin.node)
            drifted = (fin.value or {}).get("drift") or []
            if drifted:
                self.drift[fin.node] = drifted
                n = len(drifted)
                self.store.record_removal(node.deployment, node.target, node.cid, Removal(
                    "drifted", self.run_id,
                    f"drift: {n} resource{'s' if n != 1 else ''} changed outside atmosbuild "
                    f"(check {self.run_id}: {', '.join(drifted[:5])}{' …' if n > 5 else ''})",
                    self.decisions[fin.node].key, time.time()))
        self.console.progress(self.done, len(self.graph.nodes), self.running)

    def node_status(self, nid, status):
        if nid in self.drift:
            return DRIFTED, f"drift: {', '.join(self.drift[nid])}"
        if status == "succeeded":
            return NO_CHANGE, "checked: no drift"
        if status == "cached" and nid in self.stale:
            return "skipped", "out of date: not checked"
        return status, ""

    def after_run(self, outcome, duration) -> None:
        if self.drift:
            for nid in sorted(self.drift):
                self.console.info(f"drift: {nid}: {', '.join(self.drift[nid])}")
            self.console.info(f"Drift in {_plural(len(self.drift), 'component')} of "
                              f"{len(self.checked)} checked: the next rollout re-applies "
                              f"{'it' if len(self.drift) == 1 else 'them'}")
        else:
            self.console.info(f"No drift: {_plural(len(self.checked), 'terraform component')} checked")

    def exit_code(self, outcome) -> int:
        code = super().exit_code(outcome)
        if code == EXIT_OK and self.drift:
            return EXIT_DRIFT
        return code


VERBS = {"preview": Preview, "destroy": Destroy, "check": Check}


# -- the up-to-date shortcut (run/uptodate.py) ----------------------------------------
# When the selection's up-to-date record proves every key unchanged, a
# preview has nothing to preview and a check of a selection without terraform
# components nothing to check: both cost what a no-op rollout costs.

def _recorded(cls_name: str):
    from . import uptodate

    class _Base(uptodate.RecordedRollout):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.only: list[str] = []

        def node_status(self, nid, status):
            return (NO_CHANGE, "up to date") if status == "cached" else (status, "")

    class RecordedPreview(_Base):
        def after_run(self, outcome, duration) -> None:
            from ..fileops import write_atomic

            n = len(self.graph.nodes)
            self.console.info(f"Preview {self.run_id}: 0 would change, {n} no change, 0 need upstream")
            if outcome.result != "success":
                return
            nodes = {}
            for nid, node in self.graph.nodes.items():
                key, result, _ = self.rows[(node.deployment, node.target)][node.cid]
                nodes[nid] = {"deployment": node.deployment, "target": node.target, "component": node.cid,
                              "status": NO_CHANGE, "key": key, "local": None, "applied": [key, result],
                              "plan": None, "pending": [], "changes": None}
            manifest = {"id": self.run_id, "labels": [str(l) for l in self.graph.labels],
                        "only": list(self.only), "created": time.time(), "nodes": nodes}
            path = os.path.join(previews_dir(self.state_dir), self.run_id, MANIFEST)
            write_atomic(path, json.dumps(manifest, separators=(",", ":")).encode())
            self.console.info(f"Saved preview {self.run_id}: nothing would change")

    class RecordedCheck(_Base):
        def after_run(self, outcome, duration) -> None:
            self.console.info("No drift: 0 terraform components checked")

    return {"preview": RecordedPreview, "check": RecordedCheck}[cls_name]


def run_if_up_to_date(verb: str, keys, root: str, state_dir: str, options, console, open_store,
                      only) -> int | None:
    """preview/check from the up-to-date record, when it proves that nothing
    changed (and, for check, that no terraform component is selected); None
    when the full path must run (nothing printed, nothing written)."""
    from . import uptodate

    record = uptodate.load(state_dir, keys)
    if record is None or uptodate.changed_paths(record):
        return None
    if verb == "check" and any(n.cid.startswith("terraform/") for n in record.graph.nodes.values()):
        return None
    store = open_store(state_dir, readonly=True)
    run = _recorded(verb)(root, state_dir, record, store, options, console)
    run.only = list(only)
    try:
        return run.run()
    except uptodate.Stale:
        return None
    finally:
        store.close()
