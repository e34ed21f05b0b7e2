"""A rollout, end to end: lock, workspace, schedule, run, record, report.

This is the one place where the pure pieces (graph, rebuilder, scheduler)
meet the I/O ones (store, workspace, processes, console).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import time
from contextlib import ExitStack
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from ..errors import StoreLost
from ..state.store import Applied, Attempt, Store
from .events import Finished
from .lock import deployment_lock
from .process import ActionSpec, ProcessRunner, Step
from .report import NodeRun, RunReport, write_profile, write_report
from .schedule import ScheduleHooks, execute, priorities
from .ui import Console
from .workspace import (META_DIR, SourceChanged, materialize, meta_stem, new_workspace, remove_workspace,
                        spread_out)

if TYPE_CHECKING:
    from ..components.base import ActionContext
    from ..graph.actions import ActionGraph, ActionNode
    from ..state.rebuild import Decision, Rebuilder

# Compiling, deciding and running need the config, graph and component
# modules; a rollout that is up to date (uptodate.py) needs none of them, so
# they are imported where they are used.

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
WAVE_NAMES_SHOWN = 8  # a wave line names this many components, then counts the rest


@dataclass
class RolloutOptions:
    parallelism: int
    schedule: str = "waves"
    keep_going: bool = False
    keep_workspace: bool = False
    force: bool = False
    wait: bool = False
    report: str | None = None  # JSON, or the HTML page for a .html name
    profile: str | None = None  # Chrome trace-event JSON
    grace_period: float = 10.0
    toolchain: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # atmos.yaml per component type: {"terraform": {...}}
    verb: str = "apply"  # apply | preview | destroy | check: which Rollout (run/lifecycle.py, SPEC 10)
    from_preview: str | None = None  # rollout --from-preview ID
    executor: str = "local"  # or dask://HOST:PORT (config/workspace.py)


def runner_for(executor: str):
    """The runner factory of an executor: local processes, or a Dask cluster."""
    if executor == "local":
        return ProcessRunner
    from functools import partial

    from .dask_executor import DaskRunner

    return partial(DaskRunner, executor=executor)


@dataclass
class _Result:
    result: str  # result digest
    outputs: dict  # from state (cached): sensitive ones are markers (state/rebuild)
    sensitive: frozenset = frozenset()  # names of the sensitive outputs


def _local_component(root: str, comp, src_dir: str | None):
    """The component as its type sees it at run time: a git source as the
    root-relative path of its tree in the vendor cache (as at compile time,
    graph.actions._remote_node), so a type laying out local modules finds
    them inside the commit."""
    from ..sources import is_remote

    if not is_remote(comp.source):
        return comp
    from dataclasses import replace

    from ..graph.actions import local_source

    return replace(comp, source=local_source(root, src_dir))


class Rollout(ScheduleHooks):
    def __init__(self, root: str, state_dir: str, graph: ActionGraph, store: Store,
                 options: RolloutOptions, console: Console, runner_factory=None) -> None:
        # runner_factory(spec_for, console, grace_period) -> Runner: the test
        # seam; the default is the executor's (runner_for).
        self.runner_factory = runner_factory or runner_for(options.executor)
        self.root, self.state_dir, self.graph = root, state_dir, graph
        self.store, self.options, self.console = store, options, console
        self.run_id = time.strftime("%Y%m%d-%H%M%S-") + os.urandom(4).hex()
        self.log_dir = os.path.join(state_dir, "logs", self.run_id)
        self.multi = len(graph.labels) > 1
        self.workspaces: dict = {}
        self.locks: list = []  # the deployment locks held (lock.HeldLock)
        self.copied = 0  # entries materialized into the workspaces (how big they are to remove)
        self.decisions: dict[str, Decision] = {}
        self.results: dict[str, _Result] = {}
        self._added: dict[str, dict] = {}  # node -> files its action added to its source
        self._secrets: dict[str, list] = {}  # node -> its secret texts (filled as it prepares)
        self.done = 0
        self.running: list[str] = []
        self.rebuilder: Rebuilder | None = None
        self.wall_offset = time.time() - time.monotonic()
        self.started_at = time.monotonic()  # the run's 0.0 in its report (set again as it starts)
        self.wave_marks: list[tuple[int, float]] = []  # (wave, when it opened), for the views
        # Copied once: reading os.environ decodes every entry on each access.
        self.base_env = dict(os.environ)
        self.base_env.pop("ATMOS_STATE", None)  # the store's URL (and password) is ours alone
        # Every node succeeded or was cached (set by _summarize); then
        # on_up_to_date(rollout), if given, runs before the locks are released.
        self.everything_up_to_date = False
        self.on_up_to_date: Callable[["Rollout"], None] | None = None
        # Reading back an upstream's sensitive outputs (workers of its
        # dependents may ask at once): once per upstream and rollout.
        self._recover_lock = threading.Lock()

    # -- the run ----------------------------------------------------------------

    def run(self) -> int:
        with ExitStack() as stack:
            stack.callback(self.console.flush)  # whatever happens, no line is held back
            for label in sorted(self.graph.labels, key=lambda l: (self.graph.specs[l].name, l.target)):
                self._lock(stack, self.graph.specs[label].name, label.target, str(label))
            # Read the store only once we hold the locks: the previous holder's
            # successes must be visible to us.
            self.read_state()
            logs = os.path.join(self.state_dir, "logs")
            os.makedirs(logs, exist_ok=True)
            spread_out(logs)  # each run's log directory in its own block group (workspace.py)
            for label in self.graph.labels:
                ws = new_workspace(self.state_dir)
                os.mkdir(os.path.join(ws, META_DIR))
                self.workspaces[label] = ws
                stack.callback(self._cleanup, ws)
                shown = os.path.relpath(ws, os.getcwd()) if ws.startswith(os.getcwd() + os.sep) else ws
                self.console.info(f"Workspace: {shown}" + (f"  ({label})" if self.multi else ""))
            code = self._execute()
            if self.everything_up_to_date and self.on_up_to_date is not None:
                try:
                    self.on_up_to_date(self)  # still under the locks: the store is as we left it
                except StoreLost:
                    pass  # (the run is recorded; only the shortcut for the next one is lost)
            return code

    def _lock(self, stack: ExitStack, deployment: str, target: str, label: str) -> None:
        """This machine's lock (held by the actions too, even past a kill -9
        of atmosbuild), then the store's own when it is shared (PostgreSQL:
        an advisory lock that other machines see). Always in this order, so
        two rollouts never wait for each other."""
        self.locks.append(stack.enter_context(deployment_lock(
            self.state_dir, deployment, target, label, wait=self.options.wait,
            on_wait=self.console.info)))
        shared = getattr(self.store, "deployment_lock", None)
        if shared is not None:
            self.locks.append(stack.enter_context(shared(
                deployment, target, label, wait=self.options.wait, on_wait=self.console.info)))

    def read_state(self) -> None:
        """Read the store, under the locks, before anything is created or
        printed (a subclass may refuse to go on from here)."""
        from ..state.rebuild import Rebuilder

        self.rebuilder = Rebuilder(self.graph, self.store, force=self.options.force)

    def recorded_duration(self, node) -> float | None:
        """How long the node's last success took, if it ever succeeded here."""
        last = self.rebuilder.applied(node)
        return last.duration if last else None

    def _cleanup(self, ws: str) -> None:
        if self.options.keep_workspace:
            self.console.info(f"Kept workspace: {ws}")
        else:
            remove_workspace(self.state_dir, ws, self.copied + len(self.graph.nodes))

    # -- what a verb changes (run/lifecycle.py): the order, the argv, the record --

    def schedule_dag(self):
        """The graph the scheduler runs (destroy: reversed)."""
        return self.graph.dag

    def verb_run(self, comp):
        """The component's own argv this verb renders into ctx.run."""
        return comp.run

    def dep_outputs(self, node) -> dict:
        """Upstream id -> outputs, for rendering the node's vars, env and run."""
        return {self.graph.nodes[d].cid: self.results[d].outputs for d in node.deps}

    def dep_node(self, dep: str):
        """The action node of dependency `dep` (destroy: also one outside
        the selection, left standing), or None."""
        return self.graph.nodes.get(dep)

    def verb_invocations(self, node, ctx):
        return node.ctype.invocations(ctx)

    def plan_file(self, nid: str) -> str:
        return ""

    def verb_collect(self, nid: str, node, ctx, captured):
        """(outputs, the names of the sensitive ones) for a rollout."""
        from ..state.rebuild import sensitive_output_names

        outputs = node.ctype.outputs(ctx, captured)
        typed = node.ctype.sensitive_outputs(ctx, captured)
        added = node.ctype.source_additions(ctx)
        if added:
            self._added[nid] = added
        return outputs, sensitive_output_names(node.component, outputs, typed,
                                                self._secrets.get(nid, ()))

    def node_status(self, nid: str, status: str) -> tuple[str, str]:
        """The report's status and reason for a node ("" keeps the reason)."""
        return status, ""

    def exit_code(self, outcome) -> int:
        if outcome.result == "success":
            return EXIT_OK
        if outcome.result == "interrupted":
            return EXIT_INTERRUPTED
        return EXIT_FAILED

    def after_run(self, outcome, duration: float) -> None:
        """After the summary, before the report (preview: the table and the manifest)."""

    def _execute(self) -> int:
        dag = self.schedule_dag()
        nodes = self.graph.nodes
        durations = {nid: self.recorded_duration(node) for nid, node in nodes.items()}
        priority = priorities(dag, self.options.schedule, self.options.parallelism, durations)
        # The CLI loads with the collector off; a rollout can run for hours,
        # so collect again from here, skipping the graph loaded so far.
        gc.freeze()
        gc.enable()
        runner = self.runner_factory(self._spec_for, self.console, self.options.grace_period)
        started = self.started_at = time.monotonic()
        # Every action process inherits the lock descriptors (this machine's
        # flock, a shared store's session): the locks stay held until the
        # last of them exits, even if we are killed (lock.py, postgres.py).
        runner.setup(keep_fds=[fd for lock in self.locks for fd in getattr(lock, "fds", ())],
                     on_processes=self._note_processes)
        unwatch = None
        watch = getattr(self.store, "watch", None)  # a shared store's session
        if watch is not None and isinstance(runner, ProcessRunner):
            # Its loss stops the run as Ctrl-C would (the runner's signal path).
            unwatch = watch(lambda: os.kill(os.getpid(), signal.SIGTERM))
        try:
            outcome = execute(dag, runner, policy=self.options.schedule,
                              parallelism=self.options.parallelism, needs_run=self._needs_run,
                              keep_going=self.options.keep_going, priority=priority, hooks=self,
                              modes={nid: node.mode for nid, node in nodes.items()})
        finally:
            # (A StoreLost from a hook lands here too: teardown stops what
            # still runs as Ctrl-C does and waits for it.)
            if unwatch is not None:
                unwatch()
            runner.teardown()
        duration = time.monotonic() - started
        self._summarize(outcome, duration)
        lost = getattr(self.store, "lost", None)
        if lost:
            raise StoreLost(lost)
        return self.exit_code(outcome)

    def _note_processes(self, processes) -> None:
        for lock in self.locks:
            note = getattr(lock, "note_running", None)
            if note is not None:
                note(processes)

    # -- scheduler callbacks --------------------------------------------------

    def _needs_run(self, nid: str) -> bool:
        node = self.graph.nodes[nid]
        upstream = {self.graph.nodes[d].cid: self.results[d].result for d in node.deps}
        decision = self.rebuilder.decide(node, upstream)
        self.decisions[nid] = decision
        if decision.run:
            return True
        from ..state.rebuild import marked_outputs

        outputs = dict(decision.outputs or {})
        self.results[nid] = _Result(decision.result, outputs, marked_outputs(outputs))
        last = self.rebuilder.applied(node)
        if decision.reused_build is not None and (last is None or last.key != decision.key):
            # This target now uses that build: record it, so status and
            # explain at this target see it as applied here.
            b = decision.reused_build
            self.store.record_success(node.deployment, node.target, node.cid, Applied(
                decision.key, b.result, b.outputs, self._ingredients(node, upstream),
                time.time(), 0.0), self.run_id, build=False)
        return False

    def wave_started(self, index: int, total: int, nodes) -> None:
        self.wave_marks.append((index, time.monotonic() - self.started_at))
        nodes = list(nodes)
        word = "component" if len(nodes) == 1 else "components"
        shown = ", ".join(nodes[:WAVE_NAMES_SHOWN])
        if len(nodes) > WAVE_NAMES_SHOWN:
            shown += f", … and {len(nodes) - WAVE_NAMES_SHOWN} more"
        self.console.info(f"Wave {index}/{total} ({len(nodes)} {word}): {shown}")

    def node_started(self, node: str) -> None:
        self.running.append(node)
        self.console.progress(self.done, len(self.graph.nodes), self.running)

    def node_cached(self, node: str) -> None:
        self.done += 1
        self.console.finished(node, "cached", 0.0)

    def node_finished(self, fin: Finished) -> None:
        node = self.graph.nodes[fin.node]
        decision = self.decisions[fin.node]
        duration = max(fin.finished - fin.started, 0.0)
        if fin.node in self.running:
            self.running.remove(fin.node)
        self.done += 1
        if fin.ok:
            from ..graph.keys import result_digest
            from ..state.rebuild import sensitive_output_names, storable_outputs

            if isinstance(fin.value, tuple):  # what collect() returns
                outputs, sensitive = fin.value
            else:  # a runner that hands the outputs alone (a test double)
                outputs = fin.value or {}
                sensitive = sensitive_output_names(node.component, outputs)
            added = self._added.pop(fin.node, None)
            if added:
                node, decision = self._with_added_files(fin.node, node, decision, added)
            # The result digest is over the real values (early cutoff); state
            # keeps a marker for each sensitive one (SPEC 14).
            result = result_digest(decision.key, outputs)
            self.results[fin.node] = _Result(result, outputs, sensitive)
            upstream = {self.graph.nodes[d].cid: self.results[d].result for d in node.deps}
            # Recorded the moment it is known: an interrupted or crashed
            # rollout keeps every success it had.
            self.store.record_success(node.deployment, node.target, node.cid, Applied(
                decision.key, result, storable_outputs(outputs, sensitive),
                self._ingredients(node, upstream), time.time(), duration), self.run_id,
                build=node.mode == "build")
        else:
            self.store.record_attempt(node.deployment, node.target, node.cid, Attempt(
                decision.key, fin.status, self.run_id, time.time(), duration))
        self.console.progress(self.done, len(self.graph.nodes), self.running)

    def failing_fast(self, reason: str, stopped, finishing) -> None:
        if finishing:
            word = "action" if len(finishing) == 1 else "actions"
            self.console.info(f"Stopping: {reason}; letting {len(finishing)} running apply-mode "
                              f"{word} finish: {', '.join(finishing)}")

    def _with_added_files(self, nid: str, node: ActionNode, decision: Decision, added: dict):
        """The action wrote files into its source (terraform's lock file):
        the key recorded is the one the next compile computes with them, so
        writing them does not re-run it (SPEC 9)."""
        from dataclasses import replace

        from ..graph.keys import action_key, canonical, local_canonical

        files = {**node.local["files"], **added}
        config = {k: v for k, v in node.local.items() if k != "files"}
        node = replace(node, local={**node.local, "files": files},
                       local_canonical=local_canonical(canonical(config), files))
        upstream = {self.graph.nodes[d].cid: self.results[d].result for d in node.deps}
        decision = replace(decision, key=action_key(node.local_canonical, upstream))
        self.graph.nodes[nid] = node
        self.decisions[nid] = decision
        return node, decision

    def node_skipped(self, node: str, reason: str) -> None:
        self.done += 1
        self.console.finished(node, "skipped", 0.0, reason)

    # -- one action --------------------------------------------------------------

    def _ingredients(self, node: ActionNode, upstream) -> dict:
        # Stored in the clear database: no secret values (storable_ingredients).
        from ..state.rebuild import storable_ingredients

        return {**storable_ingredients(node), "upstream": dict(upstream)}

    def _log_path(self, node: ActionNode) -> str:
        parts = [self.log_dir]
        if self.multi:
            parts.append(f"{node.deployment.replace('/', '%2F')}@{node.target}")
        return os.path.join(*parts, *node.cid.split("/")) + ".log"

    def _context(self, node, decision_key: str, vars_, plan_file: str = "",
                 src_dir: str | None = None) -> "ActionContext":
        from ..components.base import ActionContext

        label = node.label
        workdir = os.path.join(self.workspaces[label], *node.cid.split("/"))
        meta = os.path.join(self.workspaces[label], META_DIR, meta_stem(node.cid))
        comp = node.component
        return ActionContext(
            component_id=node.cid, name=comp.name, target=node.target,
            deployment=node.deployment, key=decision_key, workdir=workdir, vars=vars_,
            run=None, outputs_path=meta + ".outputs.json", vars_path=meta + ".vars.json",
            meta_prefix=meta, toolchain=self.options.toolchain,
            state_dir=os.path.abspath(self.state_dir), root=self.root,
            component=_local_component(self.root, comp, src_dir),
            ingredients=node.local, extra=node.extra, settings=self.options.settings.get(comp.type, {}),
            color=bool(getattr(self.console, "color", False)), verb=self.options.verb,
            plan_file=plan_file)

    def _materialize(self, node, workdir: str) -> str | None:
        """Copy the node's source into `workdir`; its source directory."""
        from ..sources import is_remote, shown_source, source_dir

        comp = node.component
        try:
            src_dir = source_dir(self.root, self.state_dir, comp.source, node.local)
            self.copied += materialize(src_dir, workdir, node.local["files"], shown_source(comp.source))
        except SourceChanged as exc:
            if is_remote(comp.source):  # the vendor cache's tree, not the user's files
                raise ValueError(f"{exc.args[0].split(' changed during')[0]} no longer matches "
                                 "the commit in the vendor cache (edited or removed by hand?); "
                                 "`atmosbuild clean --cache` fetches it again") from None
            raise ValueError(str(exc)) from None
        return src_dir

    def _upstream_outputs(self, node, refs) -> dict:
        """Each dependency's outputs as this node renders them: sensitive
        ones that state keeps only a marker for (the upstream is cached) are
        read back from the upstream's type (recover_outputs), once per
        rollout, checked against its recorded result digest."""
        from ..state.rebuild import is_marker

        outputs = self.dep_outputs(node)
        if not refs:
            return outputs
        for dep in node.deps:
            up = self.dep_node(dep)
            res = self.results.get(dep)
            if up is None or res is None:
                continue
            needed = sorted(key for cid, key in refs if cid == up.cid
                            and is_marker(res.outputs.get(key.split(".", 1)[0])))
            if needed:
                with self._recover_lock:
                    res = self.results[dep]
                    if any(is_marker(res.outputs.get(k.split(".", 1)[0])) for k in needed):
                        res = self._recover(node, dep, up, res, needed[0])
                outputs[up.cid] = res.outputs
        return outputs

    def _recover(self, node, dep: str, up, res: _Result, output: str) -> _Result:
        from ..graph.keys import result_digest

        hint = (f"needs the sensitive output '{output.split('.', 1)[0]}' of {up.cid}, which state never "
                f"holds in clear, and {up.cid} did not run in this rollout")
        again = (f"run both again: atmosbuild rollout {node.label} --force --only {node.cid} "
                 f"(runs {node.cid} and what it depends on)")
        recovered = None
        up = self._compiled_upstream(dep, up)
        key = self._upstream_key(dep)
        if getattr(up, "ctype", None) is not None:
            workdir = os.path.join(self.workspaces[up.label], *up.cid.split("/"))
            ctx = self._context(up, key, dict(up.component.vars), "", self._materialize(up, workdir))
            recovered = up.ctype.recover_outputs(ctx)
        if recovered is None:
            raise ValueError(f"{hint}; its type cannot read it back: {again}")
        if result_digest(key, recovered) != res.result:
            raise ValueError(f"{hint}; the outputs read back from it differ from the recorded "
                             f"ones (it changed outside atmosbuild): {again}")
        fresh = _Result(res.result, dict(recovered), res.sensitive)
        self.results[dep] = fresh
        return fresh

    def _recorded_secrets(self, nid: str) -> list[str]:
        """The node's own sensitive outputs as its last apply left them
        (state holds markers), read back from its type: Terraform's plan of
        it -- an apply, a preview, a check, a destroy -- prints the
        attributes they were built from, in clear."""
        from ..state.rebuild import _texts, is_marker, marked_outputs

        node = self.graph.nodes[nid]
        last = self.rebuilder.applied(node) if getattr(node, "ctype", None) is not None else None
        names = marked_outputs(last.outputs) if last is not None else ()
        if not names:
            return []
        res = self.results.get(nid)  # (destroy: a dependent may have read them back already)
        outputs = res.outputs if res is not None else {}
        if any(outputs.get(n) is None or is_marker(outputs.get(n)) for n in names):
            from ..sources import source_dir

            src = source_dir(self.root, self.state_dir, node.component.source, node.local)
            ctx = self._context(node, last.key, dict(node.component.vars), "", src)
            outputs = node.ctype.recover_outputs(ctx) or {}
        texts: list[str] = []
        for name in names:
            if outputs.get(name) is not None and not is_marker(outputs[name]):
                _texts(outputs[name], texts)
        return texts + [json.dumps(t)[1:-1] for t in texts]

    def _compiled_upstream(self, dep: str, up):
        """The action node of dependency `dep` (a recorded rollout may hold
        only its record)."""
        return up

    def _upstream_key(self, dep: str) -> str:
        return self.decisions[dep].key

    def verb_values(self, comp) -> dict:
        """The values (ATMOS_V_n) that the verb's own string-form argv
        expands: `run`'s, or the lifecycle verb's `preview:`/`destroy:`."""
        own = self.verb_run(comp)
        if own is None or own is comp.run:
            return dict(comp.run_env) if own is not None else {}
        for verb in ("preview", "destroy"):
            if own is getattr(comp, verb, None):
                return dict(comp.verb_env.get(verb, {}))
        return {}

    def _spec_for(self, nid: str) -> ActionSpec:
        from ..config.resolve import RenderError, as_text, render
        from ..state.rebuild import marked_outputs, secret_values, sensitive_refs

        node = self.graph.nodes[nid]
        comp = node.component
        decision = self.decisions[nid]
        label = node.label
        ids = self.graph.specs[label].components
        own_run = self.verb_run(comp)
        upstream_sensitive = {cid: marked_outputs(outs) for cid, outs in self.dep_outputs(node).items()}
        for d in node.deps:
            up = self.graph.nodes.get(d)
            if up is not None and d in self.results:
                upstream_sensitive[up.cid] = upstream_sensitive.get(up.cid, frozenset()) | self.results[d].sensitive
        refs = sensitive_refs(comp, upstream_sensitive)
        # Completed by prepare() before any step runs (the runner builds its
        # masker after prepare): every secret text of this action, in the
        # clear, as the action gets it; the type's own (backend settings) now.
        secrets: list[str] = list(node.ctype.config_secrets(
            comp, self.options.settings.get(comp.type, {}), node.deployment, node.target))
        self._secrets[nid] = secrets
        # Rendering can fail (a missing upstream output); that must fail this
        # action, not the scheduler, so it happens inside `prepare`.
        state: dict[str, Any] = {}

        def ctx() -> ActionContext:
            return state["ctx"]

        def prepare() -> None:
            secrets.extend(self._recorded_secrets(nid))
            outputs = self._upstream_outputs(node, refs)
            try:
                vars_ = render(comp.vars, outputs, ids)
                env = render(dict(comp.env), outputs, ids)
                run = render(own_run, outputs, ids)
                values = {k: as_text(v) for k, v in render(self.verb_values(comp), outputs, ids).items()}
                # (the run's own values too, for what is secret: taint is known per run item)
                main_run = run if own_run is comp.run else render(comp.run, outputs, ids)
                run_env = {k: as_text(v) for k, v in render(dict(comp.run_env), outputs, ids).items()}
            except RenderError as exc:
                raise ValueError(str(exc)) from None
            secrets.extend(secret_values(comp, {"vars": vars_, "env": env, "run": main_run,
                                                "run_env": run_env}, refs, outputs))
            workdir = os.path.join(self.workspaces[label], *node.cid.split("/"))
            src_dir = self._materialize(node, workdir)
            action_ctx = replace(self._context(node, decision.key, vars_, self.plan_file(nid), src_dir),
                                 run=run)
            # Readable by its owner only: it may hold secrets, and a workspace
            # outlives a rollout that was killed (until `clean`).
            fd = os.open(action_ctx.vars_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w", encoding="utf-8") as fh:
                json.dump(vars_, fh, indent=2, sort_keys=True)
            node.ctype.prepare(action_ctx)
            state["ctx"] = action_ctx
            full_env = self.base_env.copy()
            full_env.update({k: as_text(v) for k, v in env.items()})
            full_env.update(node.ctype.extra_env(action_ctx))
            full_env.update(values)
            full_env.update({
                "ATMOS_ROOT": self.root, "ATMOS_DEPLOYMENT": node.deployment,
                "ATMOS_TARGET": node.target, "ATMOS_COMPONENT": node.cid,
                "ATMOS_WORKSPACE": self.workspaces[label], "ATMOS_ACTION_KEY": decision.key,
                "ATMOS_VARS_FILE": action_ctx.vars_path, "ATMOS_OUTPUTS": action_ctx.outputs_path,
            })
            spec.env = full_env
            spec.steps = [Step(tuple(i.argv), i.capture, i.log) for i in self.verb_invocations(node, action_ctx)]

        def collect(captured: str | None):
            return self.verb_collect(nid, node, ctx(), captured)

        spec = ActionSpec(node=nid, steps=[], cwd=os.path.join(self.workspaces[label], *node.cid.split("/")),
                          env={}, log_path=self._log_path(node),
                          timeout=comp.timeout, retries=comp.retries, secrets=secrets,
                          prepare=prepare, collect=collect, resources=comp.resources)
        return spec

    # -- the end ------------------------------------------------------------------

    def _summarize(self, outcome, duration: float) -> None:
        counts = {s: 0 for s in ("succeeded", "cached", "failed", "skipped", "cancelled")}
        for n in outcome.nodes.values():
            counts[n.status] = counts.get(n.status, 0) + 1
        self.console.summary(counts["succeeded"], counts["cached"], counts["failed"],
                             counts["skipped"], counts["cancelled"], duration)
        self.everything_up_to_date = (outcome.result == "success"
                                      and counts["succeeded"] + counts["cached"] == len(outcome.nodes))
        self.after_run(outcome, duration)
        if self.options.report or self.options.profile:
            report = self._report(outcome, duration)
            if self.options.report:
                write_report(self.options.report, report)
            if self.options.profile:
                write_profile(self.options.profile, report)

    def _report(self, outcome, duration: float) -> RunReport:
        """The one result of the run that every written view renders."""
        where = "local" if self.options.executor == "local" else None
        nodes = []
        dag = self.schedule_dag()
        for wave in dag.waves:
            for nid in wave:
                node = self.graph.nodes[nid]
                fin = outcome.nodes[nid].finished
                decision = self.decisions.get(nid)
                status, why = self.node_status(nid, outcome.nodes[nid].status)
                # The schedule's reason says why a node was cancelled ("stopped:
                # X failed", "interrupted"); the runner's only that it was.
                reason = why or outcome.nodes[nid].reason
                if not reason and fin is not None and status in ("failed", "cancelled"):
                    reason = fin.message
                if not reason:
                    reason = decision.reason if decision else ""
                ran = fin is not None
                nodes.append(NodeRun(
                    id=nid, wave=dag.wave_of[nid], status=status,
                    key=decision.key if decision else None, reason=reason,
                    deps=tuple(dag.deps[nid]),
                    started=fin.started - self.started_at if ran else None,
                    finished=fin.finished - self.started_at if ran else None,
                    exit_code=fin.exit_code if ran else None,
                    log=self._log_path(node) if ran else None,
                    worker=(fin.worker or where) if ran else None))
        labels = [str(label) for label in self.graph.labels]
        workspaces = list(self.workspaces.values())
        return RunReport(
            label=labels[0] if len(labels) == 1 else " ".join(labels),
            workspace=workspaces[0] if len(workspaces) == 1 else workspaces,
            result=outcome.result, duration_s=duration, run_id=self.run_id,
            parallelism=self.options.parallelism, schedule=self.options.schedule,
            wall_start=self.started_at + self.wall_offset, nodes=tuple(nodes),
            wave_marks=tuple(self.wave_marks))
