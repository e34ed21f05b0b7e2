"""The library API: every command of the CLI as a function.

    ws = api.Workspace("/path/to/root")            # atmos.yaml, settings, state dir
    result = api.rollout(ws, ["//app:dev"], parallelism=4)
    result.exit_code                                 # 0, 1 (a failure), 3 (locked), 130
    print(api.status(ws, "//app:dev").text())

A run (`rollout`, `preview`, `destroy`, `check`, `apply_preview`, all through
`execute`) loads the selection, compiles it, decides it and executes it
with its *verb* on an *executor* (`executor=`; default the `executor`
setting or $ATMOS_EXECUTOR for apply, local processes for the other verbs)
against the workspace's *store* (SQLite in the state dir, or PostgreSQL from
the `state` setting / $ATMOS_STATE); it prints through a `run.ui.Console`
(one made for it unless given) and returns a `RunResult`. The read-only
commands return plain results: named tuples of plain values, each with
`text()` (what the CLI prints) and, where the CLI offers `--format json`,
`json()`.

Bad input raises an `errors.AtmosError` (its `exit_code` is the CLI's);
nothing here calls `sys.exit`. A function that writes (a run, `fmt`, `clean`)
writes only once its input checked out.

Importing this module imports nothing of the pipeline: `atmosbuild --help`
and shell completion load only this file, and a no-op rollout only what its
path needs. Every import of a pipeline module is inside the function using it.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterator, NamedTuple, Sequence

from . import __version__
from .errors import ConfigError, UsageError

__all__ = [
    "__version__", "Workspace", "RunResult", "VERBS", "execute", "rollout", "preview", "destroy", "check",
    "apply_preview", "plan", "PlanResult", "status", "StatusRow", "StatusResult", "explain",
    "ExplainResult", "outputs", "OutputsResult", "validate", "Validated", "format_files", "Formatted",
    "write_formatted", "convert", "vendor_pull", "Fetched", "affected", "AffectedResult", "clean_names",
    "clean", "complete_labels", "complete_components", "install_completion", "close_stores",
]

VERBS = ("apply", "preview", "destroy", "check")


# -- the workspace -------------------------------------------------------------------


class Workspace:
    """One workspace: its root (`root`, else the nearest atmos.yaml above the
    working directory), its settings and its state directory. Choosing the
    store (`state:` / $ATMOS_STATE) happens here, once per workspace."""

    def __init__(self, root: str | None = None) -> None:
        from .config.workspace import find_root, load_settings

        self.root = find_root(root)
        self.settings = load_settings(self.root)
        self.state_dir = os.path.join(self.root, self.settings.state_dir)
        if self.settings.state is not None:  # every open_store of this state dir uses it
            from .state.sqlite import configure_store

            configure_store(self.state_dir, self.settings.state)
        self.state_was_there = os.path.lexists(self.state_dir)
        self._remote = None

    def mark_state_dir(self) -> None:
        """If this command made the state directory (whatever part of it
        wrote there first: a store, a lock, a tool's cache), mark it as
        atmosbuild's, so that `clean` may act there. Call it when done."""
        if not self.state_was_there:
            from .fileops import mark_state_dir

            mark_state_dir(self.state_dir)

    def labels(self, texts: Sequence[str], *, allow_pattern: bool = True, single: bool = False) -> list:
        """The labels LABEL/PATTERN texts name (patterns expanded)."""
        from .components import TYPES
        from .config.labels import parse_label
        from .config.workspace import expand

        if single and len(texts) != 1:
            raise UsageError("exactly one label is needed")
        parsed = [parse_label(t, allow_pattern=allow_pattern) for t in texts]
        return expand(self.root, parsed, TYPES)

    def every_label(self, texts: Sequence[str]) -> list:
        """Labels for LABEL/PATTERN texts; none given: every target of every package."""
        from .components import TYPES
        from .config.labels import Label
        from .config.workspace import discover_packages, load_package

        if texts:
            return self.labels(texts)
        return [Label(pkg, target) for pkg in discover_packages(self.root)
                for target in load_package(self.root, pkg, TYPES).targets]

    def parallelism(self, parallelism: int | None = None) -> int:
        """-j: given, else the `parallelism` setting, else the CPU count."""
        if parallelism is None:
            parallelism = self.settings.parallelism or os.cpu_count() or 1
        if parallelism < 1:
            raise UsageError(f"-j/--parallelism must be at least 1, got {parallelism}")
        return parallelism

    def open_store(self, *, readonly: bool = False):
        """The store of this workspace (state/sqlite.open_store picks the backend)."""
        from .state.sqlite import open_store

        return open_store(self.state_dir, readonly=readonly)

    def remote(self):
        """The git vendor cache (sources/git.py): one per workspace object,
        so a branch is resolved once per command."""
        if self._remote is None:
            from .sources.git import GitVendor

            self._remote = GitVendor(self.state_dir)
        return self._remote

    def compile(self, labels, *, only=None, readonly: bool = True, write_cache: bool = False):
        """(graph, store, digester) for resolved `labels`: the compiled
        ActionGraph, the store it was decided against (open: close it) and
        the file digester holding what it read."""
        from .components import TYPES
        from .config.workspace import load_specs
        from .graph.actions import compile_graph
        from .graph.cache import StructureCache
        from .state.files import FileDigester, load_trees

        store = self.open_store(readonly=readonly)
        digester = FileDigester(self.root, load_cache=store.file_cache,
                                trees=load_trees(self.state_dir, self.root))
        graph = compile_graph(self.root, labels, digester, only=only,
                              specs=lambda: load_specs(self.root, labels, TYPES),
                              settings=lambda: self.settings,
                              cache=StructureCache(self.state_dir), write_cache=write_cache,
                              remote=self.remote())
        if write_cache:  # a run, past every check of its input: the state dir, marked
            from .fileops import ensure_state_dir

            ensure_state_dir(self.state_dir)
        return graph, store, digester


# -- runs: rollout / preview / destroy / check -----------------------------------------


class RunResult(NamedTuple):
    """What a run ends with. Everything else it printed on its console and
    wrote to the store, the logs and any --report/--profile file."""

    exit_code: int  # 0 ok, 1 a failure, 3 locked, 4 drift (check), 130 interrupted


def execute(ws: Workspace, verb: str, labels: Sequence[str], *, parallelism: int | None = None,
            schedule: str | None = None, keep_going: bool | None = None, keep_workspace: bool = False,
            force: bool = False, only: Sequence[str] = (), wait: bool = False, report: str | None = None,
            profile: str | None = None, executor: str | None = None, from_preview: str | None = None,
            confirm: Callable[[list[str]], bool] | None = None, console=None) -> RunResult:
    """Run `verb` (apply | preview | destroy | check) over the components
    `labels` select (`only`: TYPE/NAME ids and what they depend on). Unset
    options come from the settings. `force` (apply only) runs every selected
    component; `from_preview` (apply only) applies exactly a saved preview;
    `confirm` (destroy only) gets the ids about to be destroyed, in order
    (maybe none), and says whether to go on: no callback, no question."""
    if verb not in VERBS:
        raise UsageError(f"unknown verb '{verb}': expected one of {', '.join(VERBS)}")
    if force and verb != "apply":
        raise UsageError(f"--force goes with a rollout, not with {verb}")
    if force and from_preview is not None:
        raise UsageError("--from-preview applies a reviewed preview: it takes no --dry-run or --force")
    parallelism = ws.parallelism(parallelism)
    if verb == "apply" and from_preview is None:
        return RunResult(_apply(ws, labels, parallelism=parallelism, schedule=schedule,
                                keep_going=keep_going, keep_workspace=keep_workspace, force=force,
                                only=only, wait=wait, report=report, profile=profile, executor=executor,
                                console=console))
    return RunResult(_lifecycle(ws, verb, labels, parallelism=parallelism, schedule=schedule,
                                keep_going=keep_going, keep_workspace=keep_workspace, only=only, wait=wait,
                                report=report, profile=profile, executor=executor,
                                from_preview=from_preview, confirm=confirm, console=console))


def rollout(ws: Workspace, labels: Sequence[str], **options) -> RunResult:
    """Apply what changed (SPEC 6): `execute(ws, "apply", labels, ...)`."""
    return execute(ws, "apply", labels, **options)


def preview(ws: Workspace, labels: Sequence[str], **options) -> RunResult:
    """What a rollout would change, nothing applied; the plans are saved (SPEC 10)."""
    return execute(ws, "preview", labels, **options)


def destroy(ws: Workspace, labels: Sequence[str], **options) -> RunResult:
    """Tear down in reverse dependency order (SPEC 10); see `execute`'s `confirm`."""
    return execute(ws, "destroy", labels, **options)


def check(ws: Workspace, labels: Sequence[str], **options) -> RunResult:
    """Drift: exit code 4 when the infrastructure no longer matches what was applied."""
    return execute(ws, "check", labels, **options)


def apply_preview(ws: Workspace, labels: Sequence[str], preview_id: str, **options) -> RunResult:
    """Apply exactly the plans `preview` saved as `preview_id` (refused if anything moved)."""
    return execute(ws, "apply", labels, from_preview=preview_id, **options)


def _defaults(ws: Workspace, schedule, keep_going) -> tuple[str, bool]:
    schedule = schedule or ws.settings.schedule or "waves"
    if keep_going is None:
        keep_going = bool(ws.settings.keep_going)
    return schedule, keep_going


def _apply(ws: Workspace, labels, *, parallelism, schedule, keep_going, keep_workspace, force, only, wait,
           report, profile, executor, console) -> int:
    schedule, keep_going = _defaults(ws, schedule, keep_going)
    resolved = ws.labels(labels)
    from .config.workspace import executor_setting
    from .run import uptodate
    from .run.rollout import Rollout, RolloutOptions
    from .run.ui import Console
    from .state.sqlite import open_store

    if console is None:
        console = Console(prefix=parallelism > 1)
    options = RolloutOptions(parallelism=parallelism, schedule=schedule, keep_going=keep_going,
                             keep_workspace=keep_workspace, force=force, wait=wait, report=report,
                             profile=profile, toolchain=dict(ws.settings.toolchain),
                             settings={"terraform": dict(ws.settings.terraform)},
                             executor=executor or executor_setting(ws.settings, os.environ))
    # Read once, before compiling (as the structure cache's own key is): the
    # selection's up-to-date record is looked up and, after a rollout, saved
    # under it.
    record_keys = uptodate.record_key(ws.state_dir, ws.root, resolved, list(only))
    if not (force or report or profile):  # (a report describes each node's decision: the full path)
        code = uptodate.rollout_if_up_to_date(record_keys, ws.root, ws.state_dir, options, console,
                                              open_store)
        if code is not None:
            return code
    # Compile against a read-only view first: bad input must leave no state behind.
    graph, store, digester = ws.compile(resolved, only=list(only), readonly=True, write_cache=True)
    store.close()
    store = ws.open_store()
    store.save_file_cache(digester.changed)
    if digester.trees_changed:
        from .state.files import save_trees

        save_trees(ws.state_dir, ws.root, digester.trees)
    run = Rollout(ws.root, ws.state_dir, graph, store, options, console)
    run.on_up_to_date = lambda done: uptodate.record_after(
        ws.state_dir, record_keys, done.graph, digester.trees, done.store, ws.root)
    try:
        return run.run()
    finally:
        store.close()


def _lifecycle(ws: Workspace, verb, labels, *, parallelism, schedule, keep_going, keep_workspace, only, wait,
               report, profile, executor, from_preview, confirm, console) -> int:
    """preview / destroy / check / apply of a preview: the rollout's
    pipeline with the verb's Rollout (run/lifecycle.py)."""
    from .run import lifecycle
    from .run.rollout import Rollout, RolloutOptions
    from .run.ui import Console
    from .state.sqlite import open_store

    schedule, keep_going = _defaults(ws, schedule, keep_going)
    resolved = ws.labels(labels)
    manifest = None
    if from_preview is not None:
        manifest = lifecycle.load_manifest(ws.state_dir, from_preview)
        if sorted(manifest.get("labels") or []) != sorted(str(l) for l in resolved) or \
                sorted(manifest.get("only") or []) != sorted(only):
            raise UsageError(f"preview {from_preview} was made for "
                             f"{' '.join(manifest.get('labels') or [])}"
                             + (f" --only {' --only '.join(manifest['only'])}" if manifest.get("only") else "")
                             + "; give the same selection")
    if console is None:
        console = Console(prefix=parallelism > 1)
    options = RolloutOptions(parallelism=parallelism, schedule=schedule, keep_going=keep_going,
                             keep_workspace=keep_workspace, wait=wait, report=report, profile=profile,
                             toolchain=dict(ws.settings.toolchain),
                             settings={"terraform": dict(ws.settings.terraform)}, verb=verb,
                             from_preview=from_preview)
    if executor is not None:
        options.executor = executor
    if verb in ("preview", "check") and not (report or profile):  # (a report describes each node)
        from .run import uptodate

        keys = uptodate.record_key(ws.state_dir, ws.root, resolved, list(only))
        code = lifecycle.run_if_up_to_date(verb, keys, ws.root, ws.state_dir, options, console,
                                           open_store, only)
        if code is not None:
            return code
    # Compile against a read-only view first: bad input must leave no state behind.
    graph, store, digester = ws.compile(resolved, only=None if verb == "destroy" else list(only),
                                        readonly=True, write_cache=True)
    extra = {}
    if verb == "destroy":
        graph, extra["standing"] = lifecycle.destroy_selection(graph, list(only))
        if confirm is not None and not confirm(lifecycle.applied_nodes(graph, store)):
            store.close()
            return 0
    store.close()
    store = ws.open_store()
    store.save_file_cache(digester.changed)
    if manifest is not None:
        run = lifecycle.FromPreview(ws.root, ws.state_dir, graph, store, options, console, manifest=manifest)
    else:
        run = lifecycle.VERBS.get(verb, Rollout)(ws.root, ws.state_dir, graph, store, options, console, **extra)
        if verb == "preview":
            run.only = list(only)
    try:
        return run.run()
    finally:
        store.close()


# -- plan / graph ------------------------------------------------------------------------


class PlanResult(NamedTuple):
    """What a rollout of the selection would do, and why: `plan` maps each
    node id to its graph.plan.PlannedNode (status run | cached | blocked,
    reason, key, wave)."""

    graph: object  # the compiled graph.actions.ActionGraph
    plan: dict

    def text(self) -> str:
        """The plan table (`atmosbuild plan`)."""
        from .graph.export import plan_table

        return plan_table(self.graph, self.plan)

    def export(self, fmt: str) -> str:
        """The graph and plan as dot, json or mermaid (`atmosbuild graph`)."""
        from .graph.export import EXPORTERS

        return EXPORTERS[fmt](self.graph, self.plan)

    def json(self) -> str:
        from .jsonout import dumps, plan_data

        return dumps(plan_data(self.graph, self.plan))


def plan(ws: Workspace, labels: Sequence[str], *, only: Sequence[str] = (), force: bool = False) -> PlanResult:
    """Decide the selection against the store; run nothing, write nothing."""
    from .graph.plan import make_plan
    from .state.rebuild import Rebuilder

    graph, store, _ = ws.compile(ws.labels(labels), only=list(only))
    return PlanResult(graph, make_plan(graph, Rebuilder(graph, store, force=force)))


# -- status / explain / output -------------------------------------------------------------


class StatusRow(NamedTuple):
    id: str
    mode: str  # apply | build
    applied_key: str | None  # the key last applied here, None if none
    applied_at: float | None  # when (seconds since the epoch)
    duration: float | None  # how long it took (s)
    up_to_date: bool
    reason: str  # why it is out of date ("" when up to date)
    destroyed_by: str | None  # the run that destroyed it (when not applied since)


class StatusResult(NamedTuple):
    label: str
    rows: list  # StatusRow, in dependency order

    def text(self) -> str:
        import time

        table = [("COMPONENT", "MODE", "APPLIED", "WHEN", "TOOK", "STATE")]
        for row in self.rows:
            state = "up to date" if row.up_to_date else f"out of date: {row.reason}"
            if row.applied_key is not None:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.applied_at))
                table.append((row.id, row.mode, row.applied_key[:12], when, f"{row.duration:.1f}s", state))
            else:
                if row.destroyed_by is not None:  # (SPEC 10) the next rollout applies it again
                    state = f"destroyed (by run {row.destroyed_by}): the next rollout applies it again"
                table.append((row.id, row.mode, "-", "-", "-", state))
        widths = [max(len(line[i]) for line in table) for i in range(5)]
        return "".join("  ".join(c.ljust(w) for c, w in zip(line[:5], widths)) + "  " + line[5] + "\n"
                       for line in table)

    def json(self) -> str:
        from .jsonout import dumps, status_data

        return dumps(status_data(self))


def status(ws: Workspace, label: str) -> StatusResult:
    """Per component of LABEL: what was last applied, when, and whether it is up to date."""
    from .graph.plan import CACHED, make_plan
    from .state.rebuild import Rebuilder

    graph, store, _ = ws.compile(ws.labels([label], allow_pattern=False))
    rebuilder = Rebuilder(graph, store)
    planned = make_plan(graph, rebuilder)
    rows = []
    for nid in graph.dag.order:
        node = graph.nodes[nid]
        last = rebuilder.applied(node)
        p = planned[nid]
        destroyed_by = None
        if last is None:
            removal = rebuilder.snapshot(node).removals.get(node.cid)
            if removal is not None and removal.kind == "destroyed":
                destroyed_by = removal.run_id
        rows.append(StatusRow(nid, node.mode, last.key if last else None, last.finished if last else None,
                              last.duration if last else None, p.status == CACHED, p.reason, destroyed_by))
    return StatusResult(_label_text(graph), rows)


def _label_text(graph) -> str:
    return " ".join(str(label) for label in graph.labels)


class ExplainResult(NamedTuple):
    label: str
    component: str
    status: str  # run | cached | blocked
    key: str  # its key now (the local part, for a blocked one)
    reason: str  # "; "-separated reasons to run, or what a blocked one waits for
    applied_key: str | None

    def text(self) -> str:
        lines = []
        if self.applied_key:
            lines.append(f"{self.component}: last applied key {self.applied_key[:12]}")
        if self.status == "cached":
            lines.append(f"{self.component} is up to date (key {self.key[:12]}): it would not run.")
        elif self.status == "blocked":
            lines.append(f"{self.component} has no changes of its own; it {self.reason}.")
        else:
            lines.append(f"{self.component} would run because:")
            lines.extend(f"  - {reason}" for reason in self.reason.split("; "))
        return "".join(line + "\n" for line in lines)

    def json(self) -> str:
        from .jsonout import dumps, explain_data

        return dumps(explain_data(self))


def _node(graph, label: str, component: str):
    from .errors import did_you_mean

    if component not in graph.nodes:
        raise UsageError(f"no component '{component}' in {label}" + did_you_mean(component, graph.nodes))
    return graph.nodes[component]


def explain(ws: Workspace, label: str, component: str) -> ExplainResult:
    """Why COMPONENT (TYPE/NAME) of LABEL would run: what changed."""
    from .graph.plan import make_plan
    from .state.rebuild import Rebuilder

    graph, store, _ = ws.compile(ws.labels([label], allow_pattern=False))
    node = _node(graph, label, component)
    rebuilder = Rebuilder(graph, store)
    p = make_plan(graph, rebuilder)[component]
    last = rebuilder.applied(node)
    return ExplainResult(_label_text(graph), component, p.status, p.key, p.reason, last.key if last else None)


class OutputsResult(NamedTuple):
    component: str
    outputs: dict  # name -> value (a sensitive one is its name's marker unless shown)
    sensitive: frozenset  # names hidden as "<sensitive>"

    def value(self, key: str):
        """One output's value; a UsageError if there is none or it is sensitive."""
        from .errors import did_you_mean

        if key not in self.outputs:
            raise UsageError(f"{self.component} has no output '{key}'" + did_you_mean(key, self.outputs)
                             + f"; outputs: {', '.join(sorted(self.outputs)) or 'none'}")
        if key in self.sensitive:
            raise UsageError(f"output '{key}' of {self.component} is sensitive: "
                             "add --show-sensitive to print it")
        return self.outputs[key]

    def value_text(self, key: str) -> str:
        """`output LABEL COMPONENT KEY`: a string raw, anything else as JSON."""
        import json

        value = self.value(key)
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    def shown(self) -> dict:
        return {k: ("<sensitive>" if k in self.sensitive else v) for k, v in sorted(self.outputs.items())}

    def text(self) -> str:
        import json

        return "".join(f"{k} = {v if k in self.sensitive else json.dumps(v, sort_keys=True)}\n"
                       for k, v in self.shown().items())

    def json(self) -> str:
        import json

        return json.dumps(self.shown(), indent=2, sort_keys=True) + "\n"


def outputs(ws: Workspace, label: str, component: str, *, show_sensitive: bool = False) -> OutputsResult:
    """A component's recorded outputs at LABEL (SPEC 10); the sensitive ones
    read back from its state with `show_sensitive`."""
    graph, store, _ = ws.compile(ws.labels([label], allow_pattern=False))
    node = _node(graph, label, component)
    snap = store.snapshot(node.deployment, node.target, components=[node.cid])
    last = snap.applied.get(node.cid)
    if last is None:
        removal = snap.removals.get(node.cid)
        raise UsageError(f"{component} has no outputs at {label}: "
                         + (removal.reason if removal else "never applied"))
    values = dict(last.outputs)
    sensitive = set((node.extra or {}).get("sensitive_outputs") or ()) & set(values)
    if show_sensitive and sensitive:
        recovered = _recover_outputs(ws, node)
        if recovered is None:
            raise UsageError(f"cannot read the sensitive outputs of {component} back from its state")
        values.update({k: recovered[k] for k in sensitive if k in recovered})
        sensitive = set()
    return OutputsResult(component, values, frozenset(sensitive))


def _recover_outputs(ws: Workspace, node):
    from .components.base import ActionContext

    comp = node.component
    ctx = ActionContext(component_id=node.cid, name=comp.name, target=node.target,
                        deployment=node.deployment, key="", workdir="", vars={}, run=None,
                        outputs_path="", vars_path="", toolchain=dict(ws.settings.toolchain),
                        state_dir=os.path.abspath(ws.state_dir), root=ws.root, component=comp,
                        ingredients=node.local, extra=node.extra,
                        settings=dict(ws.settings.terraform) if comp.type == "terraform" else {})
    return node.ctype.recover_outputs(ctx)


# -- validate / fmt / convert ------------------------------------------------------------


class Validated(NamedTuple):
    package: str
    deployment: str
    components: int
    targets: list

    def text(self) -> str:
        return (f"ok //{self.package}: deployment '{self.deployment}', {self.components} components, "
                f"targets {', '.join(self.targets) or '(none)'}\n")


def validate(ws: Workspace, labels: Sequence[str] = ()) -> Iterator[Validated]:
    """Check the packages `labels` name (all of them when none is given),
    one at a time: each is yielded once it checked out, and the first
    problem raises (a ConfigError pointing at it)."""
    from .components import TYPES, ComponentType
    from .config.labels import Label
    from .config.workspace import discover_packages, load_package, load_specs
    from .graph.actions import SourceChecker, build_structure, compile_graph
    from .state.files import FileDigester

    if labels:
        targets = ws.labels(labels)
        packages = sorted({label.package for label in targets})
    else:
        packages = discover_packages(ws.root)
        targets = None
        if not packages:
            raise UsageError(f"no packages (BUILD.atmos or deployment.yaml) under {ws.root}")
    sources = SourceChecker(ws.root)
    for pkg in packages:
        spec = load_package(ws.root, pkg, TYPES)
        names = [l.target for l in targets if l.package == pkg] if targets else list(spec.targets)
        for target in names:
            label = Label(pkg, target)
            specs = load_specs(ws.root, [label], TYPES, {pkg: spec})
            st = build_structure(specs, [label])
            for comp in st.resolved[label].values():
                sources.check(spec, comp, label)
            if any(type(TYPES[c.type]).compile is not ComponentType.compile
                   for c in st.resolved[label].values()):
                # A type that reads its sources (terraform: declared vars,
                # local modules) finds its errors only with them at hand.
                compile_graph(ws.root, [label], FileDigester(ws.root, cache={}), specs=lambda: specs,
                              settings=lambda: ws.settings)
        yield Validated(pkg, spec.name, len(spec.components), names)


class Formatted(NamedTuple):
    path: str  # as given ("-": stdin)
    old: str
    new: str

    @property
    def shown(self) -> str:
        return "<stdin>" if self.path == "-" else self.path

    @property
    def changed(self) -> bool:
        return self.new != self.old

    def diff(self) -> str:
        """A unified diff of the change ("" if none)."""
        import difflib

        def lines(text):
            out = text.splitlines(keepends=True)
            if out and not out[-1].endswith("\n"):
                out[-1] += "\n\\ No newline at end of file\n"
            return out

        return "".join(difflib.unified_diff(lines(self.old), lines(self.new), f"a/{self.shown}",
                                            f"b/{self.shown}"))


def format_files(paths: Sequence[str]) -> list[Formatted]:
    """Read and format every BUILD.atmos of `paths` ("-": stdin) in the
    canonical DSL layout; nothing is written (see `write_formatted`), so a
    parse error anywhere changes nothing anywhere."""
    from .config.dsl import parse_dsl
    from .config.fmt import format_dsl

    jobs = []
    for path in dict.fromkeys(paths):
        if path != "-" and not path.endswith(".atmos"):
            raise UsageError(f"{path}: fmt formats DSL files (BUILD.atmos); "
                             "use `atmosbuild convert FILE --to dsl` for YAML")
        shown = "<stdin>" if path == "-" else path
        try:
            if path == "-":
                raw = sys.stdin.buffer.read()
            else:
                with open(path, "rb") as fh:
                    raw = fh.read()
            text = raw.decode("utf-8")
        except FileNotFoundError:
            raise UsageError(f"no such file: {path}") from None
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory; fmt formats BUILD.atmos files") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=shown) from None
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        doc = parse_dsl(text, shown)
        jobs.append(Formatted(path, text, format_dsl(doc.data, getattr(doc, "comments", None))))
    return jobs


def write_formatted(job: Formatted) -> None:
    """Write a formatted file in place, atomically (a symlinked BUILD.atmos stays a link)."""
    from .fileops import write_atomic

    target = os.path.realpath(job.path)
    write_atomic(target, job.new.encode("utf-8"), mode=os.stat(target).st_mode & 0o7777, durable=True)


def _read_document(path: str):
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path}")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if path.endswith(".atmos"):
        from .config.dsl import parse_dsl

        return parse_dsl(text, path)
    if path.endswith((".yaml", ".yml")):
        from .config.yaml import parse_yaml

        return parse_yaml(text, path)
    raise UsageError(f"{path}: expected a BUILD.atmos (DSL) or deployment.yaml (YAML) file")


def convert(path: str, to: str) -> str:
    """A valid deployment file converted to the DSL (`to="dsl"`) or YAML, losslessly."""
    from .components import TYPES
    from .config.fmt import format_dsl, format_yaml
    from .config.model import compile_document

    doc = _read_document(path)
    compile_document(doc, "", "converted", TYPES)  # convert valid deployments only
    return format_dsl(doc.data) if to == "dsl" else format_yaml(doc.data)


# -- vendor / affected (SPEC 12) ---------------------------------------------------------


class Fetched(NamedTuple):
    how: str  # fetched | cached
    source: str  # as shown (credentials masked)
    commit: str
    files: int

    def text(self) -> str:
        return f"{self.how} {self.source} -> {self.commit[:12]} ({self.files} files)\n"


def vendor_pull(ws: Workspace, labels: Sequence[str] = ()) -> Iterator[Fetched]:
    """Fetch the git sources of LABEL/PATTERN... (default: every package and
    target) into the vendor cache, each yielded as it is there."""
    from .components import TYPES
    from .config.workspace import load_specs
    from .graph.actions import build_structure, source_error
    from .sources import is_remote
    from .sources.git import SourceError, parse_git_source

    vendor_ = ws.remote()
    seen = set()
    for label in ws.every_label(labels):
        specs = load_specs(ws.root, [label], TYPES)
        st = build_structure(specs, [label])
        spec = specs[label]
        for comp in st.resolved[label].values():
            if not is_remote(comp.source) or comp.source in seen:
                continue
            seen.add(comp.source)
            try:
                src = parse_git_source(comp.source)
                before = len(vendor_.fetched)
                tree = vendor_.tree(src)
            except SourceError as exc:
                raise source_error(spec, label, comp, exc) from None
            how = "fetched" if len(vendor_.fetched) > before else "cached"
            yield Fetched(how, src.shown, tree.commit, len(tree.entries))


class AffectedResult(NamedTuple):
    doc: dict  # the JSON document (README "affected")

    def text(self) -> str:
        from .affected import render_text

        return render_text(self.doc)

    def json(self) -> str:
        import json

        return json.dumps(self.doc, indent=2) + "\n"


def affected(ws: Workspace, base: str, head: str | None = None, patterns: Sequence[str] = ()) -> AffectedResult:
    """Components whose keys differ between commits `base` and `head` (None:
    the working tree), their dependents, and the ones added or removed."""
    from .affected import affected as compute

    return AffectedResult(compute(ws.root, ws.state_dir, base, head, list(patterns)))


# -- clean ----------------------------------------------------------------------------------
# What each flag removes: only entries atmosbuild makes in its state directory,
# and only in a directory holding its marker (fileops.MARKER). Never removed:
# tfstate/ (Terraform state is user data: it maps real resources; only
# --terraform-state removes it), locks/ (a rollout waiting on a lock file holds
# it open: removing it would let that rollout and a new one run one target at
# once) and anything else found there (the user's).
CLEAN_WORKSPACES = ("workspaces", "trash")  # trash/: what workspace removals left (run/workspace.py)
CLEAN_CACHE = ("state.db", "state.db-wal", "state.db-shm", "cache", "vendor-cache", "logs", "terraform")
CLEAN_ALL = CLEAN_WORKSPACES + CLEAN_CACHE + ("previews",)
TERRAFORM_STATE = "tfstate"


def clean_names(*, workspaces: bool = False, cache: bool = False, all_: bool = False,
                terraform_state: bool = False) -> tuple[str, ...]:
    """The state-directory entries the clean flags name (a UsageError for none)."""
    if not (workspaces or cache or all_ or terraform_state):
        raise UsageError("say what to clean: --workspaces, --cache, --all or --terraform-state")
    names = CLEAN_ALL if all_ else (CLEAN_WORKSPACES if workspaces else ()) + (CLEAN_CACHE if cache else ())
    if terraform_state:
        names += (TERRAFORM_STATE,)
    return tuple(dict.fromkeys(names))


def clean(ws: Workspace, *, workspaces: bool = False, cache: bool = False, all_: bool = False,
          terraform_state: bool = False) -> Iterator[str]:
    """Remove what the flags name (clean_names) from the state directory,
    holding every deployment+target lock meanwhile (a LockedError, nothing
    removed, if a rollout holds one); yields one line per thing done."""
    import shutil  # (only here: every other command starts faster without it)
    from contextlib import ExitStack

    from .errors import LockedError
    from .fileops import MARKER, is_state_dir

    names = clean_names(workspaces=workspaces, cache=cache, all_=all_, terraform_state=terraform_state)
    shown = os.path.relpath(ws.state_dir, ws.root)
    if not os.path.lexists(ws.state_dir):
        yield f"nothing to clean: no {shown}/"
        return
    if not os.path.isdir(ws.state_dir) or os.path.islink(ws.state_dir) or not is_state_dir(ws.state_dir):
        raise UsageError(f"{shown}/ has no {MARKER} marker: atmosbuild did not create it, so clean "
                         "removes nothing there (if it did, an older version made it: remove it by hand)")
    with ExitStack() as held:
        for deployment, target, label in _lockable(ws):
            try:
                held.enter_context(_lock(ws.state_dir, deployment, target, label))
            except LockedError as exc:
                raise LockedError(exc.message.split("; use --wait")[0] + "; nothing removed") from None
        for name in names:
            path = os.path.join(ws.state_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, onerror=_vanished_meanwhile)
                yield f"removed {os.path.join(shown, name)}/"
            elif os.path.lexists(path):
                os.unlink(path)
                yield f"removed {os.path.join(shown, name)}"
    if all_ and not terraform_state and os.path.isdir(os.path.join(ws.state_dir, TERRAFORM_STATE)):
        yield (f"kept {os.path.join(shown, TERRAFORM_STATE)}/ (Terraform state: the resources it "
               "tracks; `clean --terraform-state` removes it)")


def _vanished_meanwhile(func, path, exc_info):
    """rmtree's onerror: a workspace's detached removal (run/workspace.py)
    may be emptying the trash at the same time; what is gone already is fine."""
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


def _lock(state_dir, deployment, target, label):
    from .run.lock import deployment_lock

    return deployment_lock(state_dir, deployment, target, label)


def _lockable(ws: Workspace) -> list[tuple[str, str, str]]:
    """Every deployment+target a rollout could hold while clean deletes, as
    (deployment, target, label): each lock file there is, and each target of
    every package here that loads (one that does not cannot roll out)."""
    from .components import TYPES
    from .config.workspace import discover_packages, load_package
    from .errors import AtmosError

    found: dict[tuple[str, str], str] = {}
    for package in discover_packages(ws.root):
        try:
            spec = load_package(ws.root, package, TYPES)
        except AtmosError:
            continue
        for target in spec.targets:
            found.setdefault((spec.name, target), f"//{package}:{target}")
    locks = os.path.join(ws.state_dir, "locks")
    for name in sorted(os.listdir(locks)) if os.path.isdir(locks) else []:
        if name.endswith(".lock") and "@" in name:
            safe, _, target = name[:-len(".lock")].rpartition("@")
            deployment = safe.replace("%2F", "/")
            found.setdefault((deployment, target), f"{deployment}@{target}")
    return [(deployment, target, label) for (deployment, target), label in sorted(found.items())]


# -- shell completion and process end ---------------------------------------------------------


def complete_labels(ctx, param, incomplete):
    """click's shell_complete for a LABEL argument (completion.py, only when a shell asks)."""
    from .completion import complete_labels as complete

    return complete(ctx, param, incomplete)


def complete_components(ctx, param, incomplete):
    """click's shell_complete for a TYPE/NAME argument or --only."""
    from .completion import complete_components as complete

    return complete(ctx, param, incomplete)


def install_completion() -> None:
    from .completion import install

    install()


def close_stores() -> None:
    """Close every store this process opened (before leaving with os._exit)."""
    for name in ("atmosbuild.state.sqlite", "atmosbuild.state.postgres"):
        stores = sys.modules.get(name)
        if stores is not None:
            stores.close_all()
