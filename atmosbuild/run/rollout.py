"""A rollout, end to end: lock, workspace, schedule, run, record, report.

This is the one place where the pure pieces (graph, decider, scheduler)
meet the I/O ones (store, workspace, processes, console). One `Rollout`
runs every verb: it is handed a `Verb` (what runs per node, in which order,
what is recorded: apply here, preview/destroy/check in run/lifecycle.py) and
a `Decider` (run/decide.py: the rebuilder, or the up-to-date record with the
rebuilder behind it).
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
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

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
    from ..state.store import Decision
    from .decide import Decider

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
    verb: str = "apply"  # apply | preview | destroy | check: which Verb (run/lifecycle.py, SPEC 10)
    from_preview: str | None = None  # rollout --from-preview ID
    executor: str = "local"  # or dask://HOST:PORT (config/workspace.py)


def runner_for(executor: str):
    """The runner factory of an executor: local processes, or a Dask cluster."""
    if executor == "local":
        return ProcessRunner
    from functools import partial

    from .dask_executor import DaskRunner

    return partial(DaskRunner, executor=executor)


class NodeResult(NamedTuple):
    """A node's result as its dependents see it."""

    result: str  # result digest
    outputs: dict  # from state (cached): sensitive ones are markers (state/rebuild)
    sensitive: frozenset = frozenset()  # names of the sensitive outputs


NO_RESULT = NodeResult("", {})  # (a dict nobody writes to: results are replaced, never edited)


# -- the verb: what a rollout changes per verb -----------------------------------------

class Verb:
    """What one verb changes in the rollout; this one applies (`rollout`).

    The rollout binds its verb once (`bind`) and asks it: after the store is
    read under the locks (`read_state`), for the graph to schedule (`dag`),
    per node whether it runs (`needs_run`, from the rollout's decider), the
    argv and values it renders (`own_run`, `own_values`), the invocations,
    plan file and collected value of a running node, what a cached or
    finished node records and prints (`cached`, `finished`), and at the end
    the report status, the closing lines and the exit code. A new verb is a
    subclass of this (not of Rollout) in a module of its own."""

    name = "apply"
    rollout: "Rollout"

    def bind(self, rollout: "Rollout") -> None:
        self.rollout = rollout

    def read_state(self) -> None:
        """Under the locks, after the decider read the store (a verb may
        refuse to go on from here)."""

    def dag(self):
        """The graph the scheduler runs (destroy: reversed)."""
        return self.rollout.graph.dag

    def needs_run(self, nid: str) -> bool:
        r = self.rollout
        decision = r.decide(nid)
        if decision.run:
            return True
        r.keep_cached(nid, decision)
        if decision.reused_build is not None:
            r.record_reused_build(nid, decision)
        return False

    def dep_node(self, dep: str):
        """The node of dependency `dep` (destroy: also one outside the
        selection, left standing), or None."""
        return self.rollout.graph.nodes.get(dep)

    def upstream_key(self, dep: str) -> str:
        """The key an upstream's recorded result was made with (its
        decision in this rollout; destroy: the applied one)."""
        return self.rollout.decisions[dep].key

    def own_run(self, comp):
        """The component's own argv this verb renders into ctx.run."""
        return comp.run

    def own_values(self, comp) -> dict:
        """The values (ATMOS_V_n) that the verb's own string-form argv
        expands: `run`'s, or the lifecycle verb's `preview:`/`destroy:`."""
        own = self.own_run(comp)
        if own is None or own is comp.run:
            return dict(comp.run_env) if own is not None else {}
        for verb in ("preview", "destroy"):
            if own is getattr(comp, verb, None):
                return dict(comp.verb_env.get(verb, {}))
        return {}

    def plan_file(self, nid: str) -> str:
        return ""

    def invocations(self, node, ctx):
        return node.ctype.invocations(ctx)

    def collect(self, nid: str, node, ctx, captured):
        """(outputs, the names of the sensitive ones) for a rollout."""
        from ..state.rebuild import sensitive_output_names

        r = self.rollout
        outputs = node.ctype.outputs(ctx, captured)
        typed = node.ctype.sensitive_outputs(ctx, captured)
        added = node.ctype.source_additions(ctx)
        if added:
            r.added[nid] = added
        return outputs, sensitive_output_names(node.component, outputs, typed, r.secrets.get(nid, ()))

    def cached(self, nid: str) -> None:
        self.rollout.console.finished(nid, "cached", 0.0)

    def finished(self, fin: Finished) -> None:
        """Record a finished action, the moment it is known."""
        r = self.rollout
        if fin.ok:
            r.record_success(fin)
        else:
            r.record_failure(fin)

    def status(self, nid: str, status: str) -> tuple[str, str]:
        """The report's status and reason for a node ("" keeps the reason)."""
        return status, ""

    def after_run(self, outcome, duration: float) -> None:
        """After the summary, before the report (preview: the table and the manifest)."""

    def exit_code(self, outcome) -> int:
        if outcome.result == "success":
            return EXIT_OK
        if outcome.result == "interrupted":
            return EXIT_INTERRUPTED
        return EXIT_FAILED


Apply = Verb


# -- one action, prepared ------------------------------------------------------------------

class ActionSite(NamedTuple):
    """Where an action runs and what its rollout gives every action."""

    root: str
    state_dir: str
    workspace: str  # its label's workspace
    base_env: Mapping[str, str]
    toolchain: Mapping[str, str]
    settings: Mapping[str, Any]  # atmos.yaml per component type
    color: bool
    verb: str  # options.verb
    executor: str  # options.executor


class Prepared(NamedTuple):
    ctx: "ActionContext"
    env: dict
    steps: list
    returns: Any  # the files a remote executor brings back (the type's returned_files)


def _local_component(root: str, comp, src_dir: str | None):
    """The component as its type sees it at run time: a git source as the
    root-relative path of its tree in the vendor cache (as at compile time,
    graph.actions._remote_node), so a type laying out local modules finds
    them inside the commit."""
    from ..sources import is_remote

    if not is_remote(comp.source):
        return comp
    from ..graph.actions import local_source

    return replace(comp, source=local_source(root, src_dir))


def action_workdir(site: ActionSite, node) -> str:
    return os.path.join(site.workspace, *node.cid.split("/"))


def action_context(node, key: str, vars_, site: ActionSite, plan_file: str = "",
                   src_dir: str | None = None) -> "ActionContext":
    from ..components.base import ActionContext

    meta = os.path.join(site.workspace, META_DIR, meta_stem(node.cid))
    comp = node.component
    return ActionContext(
        component_id=node.cid, name=comp.name, target=node.target,
        deployment=node.deployment, key=key, workdir=action_workdir(site, node), vars=vars_,
        run=None, outputs_path=meta + ".outputs.json", vars_path=meta + ".vars.json",
        meta_prefix=meta, toolchain=site.toolchain,
        state_dir=os.path.abspath(site.state_dir), root=site.root,
        component=_local_component(site.root, comp, src_dir),
        ingredients=node.local, extra=node.extra, settings=site.settings.get(comp.type, {}),
        color=site.color, verb=site.verb, plan_file=plan_file, executor=site.executor)


def prepare_action(node, decision: "Decision", site: ActionSite, outputs: Mapping[str, Any], *,
                   verb: Verb, plan_file: str, ids, refs, secrets: list[str],
                   materialize: Callable[[Any, str], str | None]) -> Prepared:
    """Everything one action needs before its first step, from the node, its
    decision, where it runs and its upstreams' outputs (component id ->
    outputs, as it renders them): vars, env and argv rendered, the source
    copied into its directory (`materialize(node, workdir)` -> its source
    directory), the vars file written, the type's own preparation done.
    Every secret text found is added to `secrets` as soon as it is known
    (the runner masks with it, a failure here included). A rendering error
    (a missing upstream output) is a ValueError: it fails this action."""
    from ..config.resolve import RenderError, as_text, render
    from ..state.rebuild import secret_values

    comp = node.component
    own_run = verb.own_run(comp)
    try:
        vars_ = render(comp.vars, outputs, ids)
        env = render(dict(comp.env), outputs, ids)
        run = render(own_run, outputs, ids)
        values = {k: as_text(v) for k, v in render(verb.own_values(comp), outputs, ids).items()}
        # (the run's own values too, for what is secret: taint is known per run item)
        main_run = run if own_run is comp.run else render(comp.run, outputs, ids)
        run_env = {k: as_text(v) for k, v in render(dict(comp.run_env), outputs, ids).items()}
    except RenderError as exc:
        raise ValueError(str(exc)) from None
    secrets.extend(secret_values(comp, {"vars": vars_, "env": env, "run": main_run,
                                        "run_env": run_env}, refs, outputs))
    src_dir = materialize(node, action_workdir(site, node))
    ctx = replace(action_context(node, decision.key, vars_, site, plan_file, src_dir),
                  run=run)
    # Readable by its owner only: it may hold secrets, and a workspace
    # outlives a rollout that was killed (until `clean`).
    fd = os.open(ctx.vars_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        json.dump(vars_, fh, indent=2, sort_keys=True)
    node.ctype.prepare(ctx)
    full_env = dict(site.base_env)
    full_env.update({k: as_text(v) for k, v in env.items()})
    full_env.update(node.ctype.extra_env(ctx))
    full_env.update(values)
    full_env.update({
        "ATMOS_ROOT": site.root, "ATMOS_DEPLOYMENT": node.deployment,
        "ATMOS_TARGET": node.target, "ATMOS_COMPONENT": node.cid,
        "ATMOS_WORKSPACE": site.workspace, "ATMOS_ACTION_KEY": decision.key,
        "ATMOS_VARS_FILE": ctx.vars_path, "ATMOS_OUTPUTS": ctx.outputs_path,
    })
    steps = [Step(tuple(i.argv), i.capture, i.log) for i in verb.invocations(node, ctx)]
    return Prepared(ctx, full_env, steps, node.ctype.returned_files(ctx))


# -- the rollout ---------------------------------------------------------------------------

class Rollout(ScheduleHooks):
    def __init__(self, root: str, state_dir: str, graph: ActionGraph, store: Store,
                 options: RolloutOptions, console: Console, runner_factory=None, *,
                 verb: Verb | None = None, decider: Decider | None = None,
                 on_up_to_date: Callable[["Rollout"], None] | None = None) -> None:
        # runner_factory(spec_for, console, grace_period) -> Runner: the test
        # seam; the default is the executor's (runner_for).
        self.runner_factory = runner_factory or runner_for(options.executor)
        self.root, self.state_dir, self.graph = root, state_dir, graph
        self.store, self.options, self.console = store, options, console
        if decider is None:
            from .decide import Decider

            decider = Decider(graph, store, force=options.force)
        self.decider = decider
        self.run_id = time.strftime("%Y%m%d-%H%M%S-") + os.urandom(4).hex()
        self.log_dir = os.path.join(state_dir, "logs", self.run_id)
        self.multi = len(graph.labels) > 1
        self.workspaces: dict = {}
        self.locks: list = []  # the deployment locks held (lock.HeldLock)
        self.copied = 0  # entries materialized into the workspaces (how big they are to remove)
        self.decisions: dict[str, Decision] = {}
        self.results: dict[str, NodeResult] = {}
        self.added: dict[str, dict] = {}  # node -> files its action added to its source
        self.secrets: dict[str, list] = {}  # node -> its secret texts (filled as it prepares)
        self.contexts: dict[str, ActionContext] = {}  # node -> its prepared context (for collect)
        self.done = 0
        self.running: list[str] = []
        self.wall_offset = time.time() - time.monotonic()
        self.started_at = time.monotonic()  # the run's 0.0 in its report (set again as it starts)
        self.wave_marks: list[tuple[int, float]] = []  # (wave, when it opened), for the views
        # Copied once: reading os.environ decodes every entry on each access.
        self.base_env = dict(os.environ)
        self.base_env.pop("ATMOS_STATE", None)  # the store's URL (and password) is ours alone
        # Every node succeeded or was cached (set by _summarize); then
        # on_up_to_date(rollout), if given, runs before the locks are released.
        self.everything_up_to_date = False
        self.on_up_to_date = on_up_to_date
        # Reading back an upstream's sensitive outputs (workers of its
        # dependents may ask at once): once per upstream and rollout.
        self._recover_lock = threading.Lock()
        self._read_back: set[str] = set()  # workdirs copied for that (made afresh if the node runs)
        self.verb = verb if verb is not None else Verb()
        self.verb.bind(self)

    # -- the run ----------------------------------------------------------------

    def run(self) -> int:
        if self.options.executor != "local":
            self._check_remote()
        with ExitStack() as stack:
            stack.callback(self.console.flush)  # whatever happens, no line is held back
            for label in sorted(self.graph.labels, key=lambda l: (self.graph.specs[l].name, l.target)):
                self._lock(stack, self.graph.specs[label].name, label.target, str(label))
            # Read the store only once we hold the locks: the previous holder's
            # successes must be visible to us.
            self.decider.read()
            self.verb.read_state()
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

    def _check_remote(self) -> None:
        """Before anything runs or is recorded: every component can run on
        the remote executor (a terraform one on the default local backend
        would leave its state on a worker)."""
        from ..errors import ConfigError

        verb = "apply --from-preview" if self.options.from_preview else self.options.verb
        for nid in sorted(self.graph.nodes):
            node = self.graph.nodes[nid]
            if getattr(node, "ctype", None) is None:
                continue  # (a recorded node: its record only)
            comp = node.component
            problem = node.ctype.remote_problem(comp, self.options.settings.get(comp.type, {}),
                                                node.deployment, node.target, verb)
            if problem:
                raise ConfigError(f"{node.cid} at {node.label} cannot run on executor "
                                  f"{self.options.executor}: {problem}")

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

    def _cleanup(self, ws: str) -> None:
        if self.options.keep_workspace:
            self.console.info(f"Kept workspace: {ws}")
        else:
            remove_workspace(self.state_dir, ws, self.copied + len(self.graph.nodes))

    def _execute(self) -> int:
        dag = self.verb.dag()
        nodes = self.graph.nodes
        duration_of = self.decider.duration
        durations = {nid: duration_of(node) for nid, node in nodes.items()}
        priority = priorities(dag, self.options.schedule, self.options.parallelism, durations)
        # The CLI loads with the collector off; a rollout can run for hours,
        # so collect again from here, skipping the graph loaded so far.
        gc.freeze()
        gc.enable()
        runner = self.runner_factory(self.spec_for, self.console, self.options.grace_period)
        started = self.started_at = time.monotonic()
        # Every action process inherits the lock descriptors (this machine's
        # flock, a shared store's session): the locks stay held until the
        # last of them exits, even if we are killed (lock.py, postgres.py).
        runner.setup(keep_fds=[fd for lock in self.locks for fd in getattr(lock, "fds", ())],
                     on_processes=self._note_processes, on_remote=self._note_remote)
        unwatch = None
        watch = getattr(self.store, "watch", None)  # a shared store's session
        if watch is not None and isinstance(runner, ProcessRunner):
            # Its loss stops the run as Ctrl-C would (the runner's signal path).
            unwatch = watch(lambda: os.kill(os.getpid(), signal.SIGTERM))
        try:
            outcome = execute(dag, runner, policy=self.options.schedule,
                              parallelism=self.options.parallelism, needs_run=self.verb.needs_run,
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
        return self.verb.exit_code(outcome)

    def _note_processes(self, processes) -> None:
        for lock in self.locks:
            note = getattr(lock, "note_running", None)
            if note is not None:
                note(processes)

    def _note_remote(self, where: str) -> None:
        """The actions run on a cluster (lock.py: a rollout after a kill -9 of this one waits for them)."""
        for lock in self.locks:
            note = getattr(lock, "note_remote", None)
            if note is not None:
                note(where)

    # -- deciding (for the verb) --------------------------------------------------

    def upstream(self, nid: str) -> dict[str, str]:
        """Dependency component id -> its result digest in this rollout."""
        nodes, results = self.graph.nodes, self.results
        return {nodes[d].cid: results[d].result for d in self.graph.dag.deps[nid]}

    def decide(self, nid: str) -> Decision:
        """The decider's answer for `nid` (kept for the report and the record)."""
        decision = self.decisions[nid] = self.decider.decide(nid, self.upstream)
        return decision

    def keep_cached(self, nid: str, decision: Decision) -> None:
        """A cached node's result, for its dependents."""
        outputs = decision.outputs
        if outputs:
            from ..state.rebuild import marked_outputs

            outputs = dict(outputs)
            self.results[nid] = NodeResult(decision.result, outputs, marked_outputs(outputs))
        else:
            self.results[nid] = NodeResult(decision.result, {})

    def record_reused_build(self, nid: str, decision: Decision) -> None:
        """This target now uses a build made elsewhere: record it, so status
        and explain at this target see it as applied here."""
        node = self.graph.nodes[nid]
        last = self.decider.applied(node)
        if last is not None and last.key == decision.key:
            return
        b = decision.reused_build
        self.store.record_success(node.deployment, node.target, node.cid, Applied(
            decision.key, b.result, b.outputs, self._ingredients(node, self.upstream(nid)),
            time.time(), 0.0), self.run_id, build=False)

    def record_success(self, fin: Finished) -> None:
        from ..graph.keys import result_digest
        from ..state.rebuild import sensitive_output_names, storable_outputs

        node = self.graph.nodes[fin.node]
        decision = self.decisions[fin.node]
        if isinstance(fin.value, tuple):  # what collect() returns
            outputs, sensitive = fin.value
        else:  # a runner that hands the outputs alone (a test double)
            outputs = fin.value or {}
            sensitive = sensitive_output_names(node.component, outputs)
        added = self.added.pop(fin.node, None)
        if added:
            node, decision = self._with_added_files(fin.node, node, decision, added)
        # The result digest is over the real values (early cutoff); state
        # keeps a marker for each sensitive one (SPEC 14).
        result = result_digest(decision.key, outputs)
        self.results[fin.node] = NodeResult(result, outputs, sensitive)
        # Recorded the moment it is known: an interrupted or crashed
        # rollout keeps every success it had.
        self.store.record_success(node.deployment, node.target, node.cid, Applied(
            decision.key, result, storable_outputs(outputs, sensitive),
            self._ingredients(node, self.upstream(fin.node)), time.time(), _duration(fin)),
            self.run_id, build=node.mode == "build")

    def record_failure(self, fin: Finished) -> None:
        node = self.graph.nodes[fin.node]
        self.store.record_attempt(node.deployment, node.target, node.cid, Attempt(
            self.decisions[fin.node].key, fin.status, self.run_id, time.time(), _duration(fin)))

    def _with_added_files(self, nid: str, node: ActionNode, decision: Decision, added: dict):
        """The action wrote files into its source (terraform's lock file):
        the key recorded is the one the next compile computes with them, so
        writing them does not re-run it (SPEC 9). The graph keeps its node;
        the decision kept is the one recorded."""
        from ..graph.keys import action_key, canonical, local_canonical

        files = {**node.local["files"], **added}
        config = {k: v for k, v in node.local.items() if k != "files"}
        node = replace(node, local={**node.local, "files": files},
                       local_canonical=local_canonical(canonical(config), files))
        decision = decision._replace(key=action_key(node.local_canonical, self.upstream(nid)))
        self.decisions[nid] = decision
        return node, decision

    # -- scheduler callbacks --------------------------------------------------

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
        self.verb.cached(node)

    def node_finished(self, fin: Finished) -> None:
        if fin.node in self.running:
            self.running.remove(fin.node)
        self.done += 1
        self.verb.finished(fin)
        self.console.progress(self.done, len(self.graph.nodes), self.running)

    def failing_fast(self, reason: str, stopped, finishing) -> None:
        if finishing:
            word = "action" if len(finishing) == 1 else "actions"
            self.console.info(f"Stopping: {reason}; letting {len(finishing)} running apply-mode "
                              f"{word} finish: {', '.join(finishing)}")

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

    def site(self, node) -> ActionSite:
        return ActionSite(self.root, self.state_dir, self.workspaces[node.label], self.base_env,
                          self.options.toolchain, self.options.settings,
                          bool(getattr(self.console, "color", False)), self.options.verb,
                          self.options.executor)

    def materialize(self, node, workdir: str) -> str | None:
        """Copy the node's source into `workdir`; its source directory. A
        copy already there was made to read an output back (destroy: before
        the node's own turn): it is made afresh."""
        from ..sources import is_remote, shown_source, source_dir

        comp = node.component
        if workdir in self._read_back:
            import shutil

            self._read_back.discard(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
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

    def dep_outputs(self, node, deps) -> dict:
        """Upstream id -> outputs, for rendering the node's vars, env and run."""
        dep_node, results = self.verb.dep_node, self.results
        return {dep_node(d).cid: results[d].outputs for d in deps}

    def _upstream_outputs(self, node, deps, refs) -> dict:
        """Each dependency's outputs as this node renders them: sensitive
        ones that state keeps only a marker for (the upstream is cached) are
        read back from the upstream's type (recover_outputs), once per
        rollout, checked against its recorded result digest."""
        from ..state.rebuild import is_marker

        outputs = self.dep_outputs(node, deps)
        if not refs:
            return outputs
        for dep in deps:
            up = self.verb.dep_node(dep)
            res = self.results.get(dep)
            if up is None or res is None:
                continue
            needed = sorted(key for cid, key in refs if cid == up.cid
                            and is_marker(res.outputs.get(key.split(".", 1)[0])))
            if needed:
                with self._recover_lock:
                    res = self.results[dep]
                    if any(is_marker(res.outputs.get(k.split(".", 1)[0])) for k in needed):
                        res = self._recover(node, dep, res, needed[0])
                outputs[up.cid] = res.outputs
        return outputs

    def _recover(self, node, dep: str, res: NodeResult, output: str) -> NodeResult:
        from ..graph.keys import result_digest

        up = self.verb.dep_node(dep)
        hint = (f"needs the sensitive output '{output.split('.', 1)[0]}' of {up.cid}, which state never "
                f"holds in clear, and {up.cid} did not run in this rollout")
        again = (f"run both again: atmosbuild rollout {node.label} --force --only {node.cid} "
                 f"(runs {node.cid} and what it depends on)")
        recovered = None
        if dep in self.graph.nodes:
            up = self.decider.action_node(dep)  # (a record compiles it now)
        key = self.verb.upstream_key(dep)
        if getattr(up, "ctype", None) is not None:
            site = self.site(up)
            workdir = action_workdir(site, up)
            ctx = action_context(up, key, dict(up.component.vars), site, "", self.materialize(up, workdir))
            self._read_back.add(workdir)
            recovered = up.ctype.recover_outputs(ctx)
        if recovered is None:
            raise ValueError(f"{hint}; its type cannot read it back: {again}")
        if result_digest(key, recovered) != res.result:
            raise ValueError(f"{hint}; the outputs read back from it differ from the recorded "
                             f"ones (it changed outside atmosbuild): {again}")
        fresh = res._replace(outputs=dict(recovered))
        self.results[dep] = fresh
        return fresh

    def spec_for(self, nid: str) -> ActionSpec:
        from functools import partial

        from ..state.rebuild import marked_outputs, sensitive_refs

        node = self.graph.nodes[nid]
        comp = node.component
        deps = node.deps  # (destroy: also those standing outside the selection)
        upstream_sensitive = {cid: marked_outputs(outs) for cid, outs in self.dep_outputs(node, deps).items()}
        for d in deps:
            up = self.graph.nodes.get(d)
            if up is not None and d in self.results:
                upstream_sensitive[up.cid] = upstream_sensitive.get(up.cid, frozenset()) | self.results[d].sensitive
        refs = sensitive_refs(comp, upstream_sensitive)
        # Completed by prepare() before any step runs (the runner builds its
        # masker after prepare): every secret text of this action, in the
        # clear, as the action gets it; the type's own (backend settings) now.
        secrets: list[str] = list(node.ctype.config_secrets(
            comp, self.options.settings.get(comp.type, {}), node.deployment, node.target))
        self.secrets[nid] = secrets
        spec = ActionSpec(node=nid, steps=[], cwd=os.path.join(self.workspaces[node.label], *node.cid.split("/")),
                          env={}, log_path=self._log_path(node),
                          timeout=comp.timeout, retries=comp.retries, secrets=secrets,
                          resources=comp.resources)
        # Rendering can fail (a missing upstream output); that must fail this
        # action, not the scheduler, so it happens inside `prepare`.
        spec.prepare = partial(self._prepare, spec, nid, refs)
        spec.collect = partial(self._collect, nid)
        return spec

    def _recorded_secrets(self, nid: str) -> list[str]:
        """The node's own sensitive outputs as its last apply left them
        (state holds markers), read back from its type: Terraform's plan of
        it -- an apply, a preview, a check, a destroy -- prints the
        attributes they were built from, in clear."""
        from ..state.rebuild import _texts, is_marker, marked_outputs

        node = self.graph.nodes[nid]
        last = self.decider.applied(node) if getattr(node, "ctype", None) is not None else None
        names = marked_outputs(last.outputs) if last is not None else ()
        if not names:
            return []
        res = self.results.get(nid)  # (destroy: a dependent may have read them back already)
        outputs = res.outputs if res is not None else {}
        if any(outputs.get(n) is None or is_marker(outputs.get(n)) for n in names):
            from ..sources import source_dir

            src = source_dir(self.root, self.state_dir, node.component.source, node.local)
            ctx = action_context(node, last.key, dict(node.component.vars), self.site(node), "", src)
            recovered = node.ctype.recover_outputs(ctx)
            if recovered is None and ctx.remote:  # unmasked on the worker otherwise
                raise ValueError(f"its sensitive outputs ({', '.join(sorted(names))}) must be masked in "
                                 f"what it prints, and cannot be read back here to know them: run it "
                                 f"with the local executor, or install {node.ctype.name} here")
            outputs = recovered or {}
        texts: list[str] = []
        for name in names:
            if outputs.get(name) is not None and not is_marker(outputs[name]):
                _texts(outputs[name], texts)
        return texts + [json.dumps(t)[1:-1] for t in texts]

    def _prepare(self, spec: ActionSpec, nid: str, refs) -> None:
        self.secrets[nid].extend(self._recorded_secrets(nid))
        node = self.graph.nodes[nid]
        outputs = self._upstream_outputs(node, node.deps, refs)
        prepared = prepare_action(
            node, self.decisions[nid], self.site(node), outputs, verb=self.verb,
            plan_file=self.verb.plan_file(nid), ids=self.graph.specs[node.label].components,
            refs=refs, secrets=self.secrets[nid], materialize=self.materialize)
        self.contexts[nid] = prepared.ctx
        spec.env, spec.steps, spec.returns = prepared.env, prepared.steps, prepared.returns

    def _collect(self, nid: str, captured: str | None):
        return self.verb.collect(nid, self.graph.nodes[nid], self.contexts[nid], captured)

    # -- the end ------------------------------------------------------------------

    def _summarize(self, outcome, duration: float) -> None:
        counts = {s: 0 for s in ("succeeded", "cached", "failed", "skipped", "cancelled")}
        for n in outcome.nodes.values():
            counts[n.status] = counts.get(n.status, 0) + 1
        self.console.summary(counts["succeeded"], counts["cached"], counts["failed"],
                             counts["skipped"], counts["cancelled"], duration)
        self.everything_up_to_date = (outcome.result == "success"
                                      and counts["succeeded"] + counts["cached"] == len(outcome.nodes))
        self.verb.after_run(outcome, duration)
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
        dag = self.verb.dag()
        for wave in dag.waves:
            for nid in wave:
                node = self.graph.nodes[nid]
                fin = outcome.nodes[nid].finished
                decision = self.decisions.get(nid)
                status, why = self.verb.status(nid, outcome.nodes[nid].status)
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


def _duration(fin: Finished) -> float:
    return max(fin.finished - fin.started, 0.0)
