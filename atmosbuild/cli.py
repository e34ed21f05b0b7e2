"""The command line. Commands only: each parses its flags, calls into the
pipeline, and prints. Every AtmosError becomes one `error:` line and its exit
code here, and nowhere else; no traceback ever reaches a user."""

from __future__ import annotations

import gc
import os
import sys

import click

from . import __version__
from .errors import AtmosError, ConfigError, UsageError

SCHEDULES = ("waves", "eager")
FORMATS = ("dot", "json", "mermaid")


def _complete_labels(ctx, param, incomplete):
    from .completion import complete_labels  # (only when a shell asks)

    return complete_labels(ctx, param, incomplete)


def _complete_components(ctx, param, incomplete):
    from .completion import complete_components

    return complete_components(ctx, param, incomplete)


class _Root:
    def __init__(self, root_opt: str | None) -> None:
        from .config.workspace import find_root, load_settings

        self.root = find_root(root_opt)
        self.settings = load_settings(self.root)
        self.state_dir = os.path.join(self.root, self.settings.state_dir)
        if self.settings.state is not None:  # every open_store of this state dir uses it
            from .state.sqlite import configure_store

            configure_store(self.state_dir, self.settings.state)
        self.state_was_there = os.path.lexists(self.state_dir)

    def mark_state_dir(self) -> None:
        """If this command made the state directory (whatever part of it
        wrote there first: a store, a lock, a tool's cache), mark it as
        atmosbuild's, so that `clean` may act there."""
        if not self.state_was_there:
            from .fileops import mark_state_dir

            mark_state_dir(self.state_dir)

    def labels(self, texts, *, allow_pattern=True, single=False):
        from .components import TYPES
        from .config.labels import parse_label
        from .config.workspace import expand

        if single and len(texts) != 1:
            raise UsageError("exactly one label is needed")
        parsed = [parse_label(t, allow_pattern=allow_pattern) for t in texts]
        return expand(self.root, parsed, TYPES)

    def remote(self):
        """The git vendor cache (sources/git.py): one per command, so a
        branch is resolved once per rollout."""
        if getattr(self, "_remote", None) is None:
            from .sources.git import GitVendor

            self._remote = GitVendor(self.state_dir)
        return self._remote

    def graph(self, labels, *, only=None, readonly=True, write_cache=False):
        from .components import TYPES
        from .config.workspace import load_specs
        from .graph.actions import compile_graph
        from .graph.cache import StructureCache
        from .state.files import FileDigester, load_trees
        from .state.sqlite import open_store

        store = open_store(self.state_dir, readonly=readonly)
        digester = FileDigester(self.root, load_cache=store.file_cache,
                                trees=load_trees(self.state_dir, self.root))
        graph = compile_graph(self.root, labels, digester, only=only,
                              specs=lambda: load_specs(self.root, labels, TYPES),
                              settings=lambda: self.settings,
                              cache=StructureCache(self.state_dir), write_cache=write_cache,
                              remote=self.remote())
        if write_cache:  # a rollout, past every check of its input: the state dir, marked
            from .fileops import ensure_state_dir

            ensure_state_dir(self.state_dir)
        return graph, store, digester


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "--root", "root", metavar="DIR", help="Workspace root (default: nearest atmos.yaml).")
@click.version_option(version=__version__, prog_name="atmosbuild", message="atmosbuild %(version)s")
@click.pass_context
def cli(ctx: click.Context, root: str | None) -> None:
    """atmosbuild: declarative, incremental, parallel deployments."""
    ctx.obj = root


def _root(ctx: click.Context) -> _Root:
    r = _Root(ctx.obj)
    ctx.call_on_close(r.mark_state_dir)
    return r


# -- rollout / plan / graph ------------------------------------------------------


def _run_options(command):
    """--wait, --report and --profile: the same on every command that runs actions."""
    for option in reversed((
        click.option("--wait", is_flag=True, help="Wait for a rollout holding the lock instead of exiting 3."),
        click.option("--report", type=click.Path(dir_okay=False),
                     help="Write a run report to FILE: JSON, or one self-contained page for a .html name."),
        click.option("--profile", type=click.Path(dir_okay=False),
                     help="Write the run as Chrome trace-event JSON to FILE (Perfetto, chrome://tracing)."),
    )):
        command = option(command)
    return command


@cli.command()
@click.argument("labels", nargs=-1, required=True, shell_complete=_complete_labels)
@click.option("-j", "--parallelism", type=int, help="Run at most N actions at once (default: CPU count).")
@click.option("--schedule", type=click.Choice(SCHEDULES), help="waves (default) or eager.")
@click.option("-k", "--keep-going", is_flag=True, default=None, help="Run everything not downstream of a failure.")
@click.option("--dry-run", is_flag=True, help="Plan only: run nothing, write nothing.")
@click.option("--graph", "graph_format", type=click.Choice(FORMATS), help="With --dry-run: export the plan.")
@click.option("--output", type=click.Path(dir_okay=False), help="Write --graph output to FILE.")
@click.option("--keep-workspace", is_flag=True, help="Keep the rollout workspace for debugging.")
@click.option("--force", is_flag=True, help="Run every selected component, up to date or not.")
@click.option("--only", multiple=True, metavar="TYPE/NAME", shell_complete=_complete_components,
              help="Select components (and what they depend on).")
@_run_options
@click.option("--from-preview", "from_preview", metavar="PREVIEW_ID",
              help="Apply exactly the plans saved by `atmosbuild preview` (refused if anything moved).")
@click.pass_context
def rollout(ctx, labels, parallelism, schedule, keep_going, dry_run, graph_format, output,
            keep_workspace, force, only, wait, report, profile, from_preview):
    """Roll out LABEL... (e.g. //api:dev, //...:dev)."""
    r = _root(ctx)
    parallelism = _parallelism(r, parallelism)
    if from_preview is not None:
        if dry_run or force:
            raise UsageError("--from-preview applies a reviewed preview: it takes no --dry-run or --force")
        code = _lifecycle(r, "apply", labels, parallelism=parallelism, only=only, report=report,
                          profile=profile, schedule=schedule, keep_going=keep_going, keep_workspace=keep_workspace,
                          wait=wait, from_preview=from_preview)
        ctx.exit(code)
    if graph_format and not dry_run:
        raise UsageError("--graph needs --dry-run (use `atmosbuild graph LABEL` to export a plan)")
    if output and not graph_format:
        raise UsageError("--output goes with --graph")
    schedule = schedule or r.settings.schedule or "waves"
    if keep_going is None:
        keep_going = bool(r.settings.keep_going)
    resolved = r.labels(labels)
    if dry_run:
        graph, store, _ = r.graph(resolved, only=list(only), readonly=True)
        _show_plan(graph, store, graph_format, output, force=force)
        return
    from .config.workspace import executor_setting
    from .run import uptodate
    from .run.rollout import Rollout, RolloutOptions
    from .run.ui import Console
    from .state.sqlite import open_store

    console = Console(prefix=parallelism > 1)
    options = RolloutOptions(parallelism=parallelism, schedule=schedule, keep_going=keep_going,
                             keep_workspace=keep_workspace, force=force, wait=wait, report=report,
                             profile=profile, toolchain=dict(r.settings.toolchain),
                             settings={"terraform": dict(r.settings.terraform)},
                             executor=executor_setting(r.settings, os.environ))
    # Read once, before compiling (as the structure cache's own key is): the
    # selection's up-to-date record is looked up and, after a rollout, saved
    # under it.
    record_keys = uptodate.record_key(r.state_dir, r.root, resolved, list(only))
    if not (force or report or profile):  # (a report describes each node's decision: the full path)
        code = uptodate.rollout_if_up_to_date(record_keys, r.root, r.state_dir, options, console,
                                              open_store)
        if code is not None:
            ctx.exit(code)
    # Compile against a read-only view first: bad input must leave no state behind.
    graph, store, digester = r.graph(resolved, only=list(only), readonly=True, write_cache=True)
    store.close()
    store = open_store(r.state_dir)
    store.save_file_cache(digester.changed)
    if digester.trees_changed:
        from .state.files import save_trees

        save_trees(r.state_dir, r.root, digester.trees)
    rollout_ = Rollout(r.root, r.state_dir, graph, store, options, console)
    rollout_.on_up_to_date = lambda done: uptodate.record_after(
        r.state_dir, record_keys, done.graph, digester.trees, done.store, r.root)
    try:
        code = rollout_.run()
    finally:
        store.close()
    ctx.exit(code)


def _parallelism(r, parallelism):
    if parallelism is None:
        parallelism = r.settings.parallelism or os.cpu_count() or 1
    if parallelism < 1:
        raise UsageError(f"-j/--parallelism must be at least 1, got {parallelism}")
    return parallelism


def _lifecycle(r, verb, labels, *, parallelism, only=(), report=None, profile=None, schedule=None,
               keep_going=None,
               keep_workspace=False, wait=False, from_preview=None, confirm=None) -> int:
    """preview / destroy / check / rollout --from-preview: the rollout's
    pipeline with the verb's Rollout (run/lifecycle.py)."""
    from .run import lifecycle
    from .run.rollout import Rollout, RolloutOptions
    from .run.ui import Console
    from .state.sqlite import open_store

    schedule = schedule or r.settings.schedule or "waves"
    if keep_going is None:
        keep_going = bool(r.settings.keep_going)
    resolved = r.labels(labels)
    manifest = None
    if from_preview is not None:
        manifest = lifecycle.load_manifest(r.state_dir, from_preview)
        if sorted(manifest.get("labels") or []) != sorted(str(l) for l in resolved) or \
                sorted(manifest.get("only") or []) != sorted(only):
            raise UsageError(f"preview {from_preview} was made for "
                             f"{' '.join(manifest.get('labels') or [])}"
                             + (f" --only {' --only '.join(manifest['only'])}" if manifest.get("only") else "")
                             + "; give the same selection")
    console = Console(prefix=parallelism > 1)
    options = RolloutOptions(parallelism=parallelism, schedule=schedule, keep_going=keep_going,
                             keep_workspace=keep_workspace, wait=wait, report=report, profile=profile,
                             toolchain=dict(r.settings.toolchain),
                             settings={"terraform": dict(r.settings.terraform)}, verb=verb,
                             from_preview=from_preview)
    if verb in ("preview", "check") and not (report or profile):  # (a report describes each node)
        from .run import uptodate

        keys = uptodate.record_key(r.state_dir, r.root, resolved, list(only))
        code = lifecycle.run_if_up_to_date(verb, keys, r.root, r.state_dir, options, console,
                                           open_store, only)
        if code is not None:
            return code
    # Compile against a read-only view first: bad input must leave no state behind.
    graph, store, digester = r.graph(resolved, only=None if verb == "destroy" else list(only),
                                     readonly=True, write_cache=True)
    extra = {}
    if verb == "destroy":
        graph, extra["standing"] = lifecycle.destroy_selection(graph, list(only))
    if confirm is not None:
        if not confirm(graph, store):
            store.close()
            return 0
    store.close()
    store = open_store(r.state_dir)
    store.save_file_cache(digester.changed)
    if manifest is not None:
        run = lifecycle.FromPreview(r.root, r.state_dir, graph, store, options, console, manifest=manifest)
    else:
        run = lifecycle.VERBS.get(verb, Rollout)(r.root, r.state_dir, graph, store, options, console, **extra)
        if verb == "preview":
            run.only = list(only)
    try:
        return run.run()
    finally:
        store.close()


@cli.command()
@click.argument("labels", nargs=-1, required=True, shell_complete=_complete_labels)
@click.option("-j", "--parallelism", type=int, help="Run at most N previews at once (default: CPU count).")
@click.option("--only", multiple=True, metavar="TYPE/NAME", shell_complete=_complete_components,
              help="Select components (and what they depend on).")
@_run_options
@click.pass_context
def preview(ctx, labels, parallelism, only, wait, report, profile):
    """What a rollout of LABEL... would change, nothing applied; saves the plans (SPEC 10)."""
    r = _root(ctx)
    ctx.exit(_lifecycle(r, "preview", labels, parallelism=_parallelism(r, parallelism), only=only,
                        report=report, profile=profile, wait=wait))


@cli.command()
@click.argument("labels", nargs=-1, required=True, shell_complete=_complete_labels)
@click.option("-j", "--parallelism", type=int, help="Destroy at most N components at once.")
@click.option("--schedule", type=click.Choice(SCHEDULES), help="waves (default, reversed) or eager.")
@click.option("-k", "--keep-going", is_flag=True, default=None,
              help="After a failure, destroy everything that nothing standing needs.")
@click.option("--only", multiple=True, metavar="TYPE/NAME", shell_complete=_complete_components,
              help="Destroy these components (and what depends on them, first).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed off a terminal).")
@_run_options
@click.pass_context
def destroy(ctx, labels, parallelism, schedule, keep_going, only, yes, wait, report, profile):
    """Tear down LABEL... in reverse dependency order (SPEC 10)."""
    r = _root(ctx)
    parallelism = _parallelism(r, parallelism)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not yes and not interactive:
        raise UsageError("destroy asks for confirmation: not on a terminal, pass --yes to destroy")

    def confirm(graph, store) -> bool:
        from .run.lifecycle import applied_nodes

        doomed = applied_nodes(graph, store)
        if not doomed:
            click.echo("Nothing to destroy: no component of the selection is applied.")
            return False
        if yes:
            return True
        click.echo(f"This destroys {len(doomed)} component{'s' if len(doomed) != 1 else ''}, in this order:")
        for nid in doomed:
            click.echo(f"  {nid}")
        if click.confirm("Destroy them?", default=False):
            return True
        click.echo("Nothing destroyed.")
        return False

    ctx.exit(_lifecycle(r, "destroy", labels, parallelism=parallelism, only=only, report=report,
                        profile=profile, schedule=schedule, keep_going=keep_going, wait=wait, confirm=confirm))


@cli.command()
@click.argument("labels", nargs=-1, required=True, shell_complete=_complete_labels)
@click.option("-j", "--parallelism", type=int, help="Run at most N checks at once.")
@click.option("--only", multiple=True, metavar="TYPE/NAME", shell_complete=_complete_components,
              help="Select components (and what they depend on).")
@_run_options
@click.pass_context
def check(ctx, labels, parallelism, only, wait, report, profile):
    """Drift: does the infrastructure still match what was applied? Exit 4 if not (SPEC 10)."""
    r = _root(ctx)
    ctx.exit(_lifecycle(r, "check", labels, parallelism=_parallelism(r, parallelism), only=only,
                        report=report, profile=profile, wait=wait))


@cli.command()
@click.argument("label", shell_complete=_complete_labels)
@click.argument("component", shell_complete=_complete_components)
@click.argument("key", required=False)
@click.option("--json", "as_json", is_flag=True, help="All outputs as one JSON object.")
@click.option("--format", "fmt_", type=click.Choice(("text", "json")), default="text", show_default=True)
@click.option("--show-sensitive", is_flag=True, help="Show sensitive values (read from the Terraform state).")
@click.pass_context
def output(ctx, label, component, key, as_json, fmt_, show_sensitive):
    """A component's recorded outputs; KEY alone prints one value raw (SPEC 10)."""
    import json

    from .errors import did_you_mean

    r = _root(ctx)
    graph_, store, _ = r.graph(r.labels([label], allow_pattern=False))
    if component not in graph_.nodes:
        raise UsageError(f"no component '{component}' in {label}" + did_you_mean(component, graph_.nodes))
    node = graph_.nodes[component]
    snap = store.snapshot(node.deployment, node.target, components=[node.cid])
    last = snap.applied.get(node.cid)
    if last is None:
        removal = snap.removals.get(node.cid)
        raise UsageError(f"{component} has no outputs at {label}: "
                         + (removal.reason if removal else "never applied"))
    outputs = dict(last.outputs)
    sensitive = set((node.extra or {}).get("sensitive_outputs") or ()) & set(outputs)
    if show_sensitive and sensitive:
        recovered = _recover_outputs(r, node)
        if recovered is None:
            raise UsageError(f"cannot read the sensitive outputs of {component} back from its state")
        outputs.update({k: recovered[k] for k in sensitive if k in recovered})
        sensitive = set()
    if key is not None:
        if key not in outputs:
            raise UsageError(f"{component} has no output '{key}'" + did_you_mean(key, outputs)
                             + f"; outputs: {', '.join(sorted(outputs)) or 'none'}")
        if key in sensitive:
            raise UsageError(f"output '{key}' of {component} is sensitive: add --show-sensitive to print it")
        value = outputs[key]
        click.echo(value if isinstance(value, str) else json.dumps(value, sort_keys=True))
        return
    shown = {k: ("<sensitive>" if k in sensitive else v) for k, v in sorted(outputs.items())}
    if as_json or fmt_ == "json":
        click.echo(json.dumps(shown, indent=2, sort_keys=True))
        return
    for k, v in shown.items():
        click.echo(f"{k} = {v if k in sensitive else json.dumps(v, sort_keys=True)}")


def _recover_outputs(r, node):
    from .components.base import ActionContext

    comp = node.component
    ctx = ActionContext(component_id=node.cid, name=comp.name, target=node.target,
                        deployment=node.deployment, key="", workdir="", vars={}, run=None,
                        outputs_path="", vars_path="", toolchain=dict(r.settings.toolchain),
                        state_dir=os.path.abspath(r.state_dir), root=r.root, component=comp,
                        ingredients=node.local, extra=node.extra,
                        settings=dict(r.settings.terraform) if comp.type == "terraform" else {})
    return node.ctype.recover_outputs(ctx)


def _show_plan(graph, store, graph_format, output, *, force=False):
    from .graph.export import EXPORTERS, plan_table
    from .graph.plan import make_plan
    from .state.rebuild import Rebuilder

    plan = make_plan(graph, Rebuilder(graph, store, force=force))
    text = EXPORTERS[graph_format](graph, plan) if graph_format else plan_table(graph, plan)
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)


TEXT_JSON = click.Choice(("text", "json"))
FORMAT_HELP = "text (default) or json: one JSON document on stdout, for scripts."


@cli.command()
@click.argument("label", shell_complete=_complete_labels)
@click.option("--force", is_flag=True, help="Plan as if --force were given.")
@click.option("--only", multiple=True, metavar="TYPE/NAME", shell_complete=_complete_components)
@click.option("--format", "out_format", type=TEXT_JSON, default="text", help=FORMAT_HELP)
@click.pass_context
def plan(ctx, label, force, only, out_format):
    """Show what a rollout of LABEL would do, and why."""
    r = _root(ctx)
    graph, store, _ = r.graph(r.labels([label]), only=list(only))
    if out_format == "json":
        from .graph.plan import make_plan
        from .jsonout import dumps, plan_data
        from .state.rebuild import Rebuilder

        click.echo(dumps(plan_data(graph, make_plan(graph, Rebuilder(graph, store, force=force)))),
                   nl=False)
        return
    _show_plan(graph, store, None, None, force=force)


@cli.command()
@click.argument("label", shell_complete=_complete_labels)
@click.option("--format", "graph_format", type=click.Choice(FORMATS), default="dot", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
@click.option("--only", multiple=True, metavar="TYPE/NAME", shell_complete=_complete_components)
@click.pass_context
def graph(ctx, label, graph_format, output, only):
    """Export the planned graph of LABEL (DOT, JSON or Mermaid)."""
    r = _root(ctx)
    graph_, store, _ = r.graph(r.labels([label]), only=list(only))
    _show_plan(graph_, store, graph_format, output)


# -- status / explain ------------------------------------------------------------

@cli.command()
@click.argument("label", shell_complete=_complete_labels)
@click.option("--format", "out_format", type=TEXT_JSON, default="text", help=FORMAT_HELP)
@click.pass_context
def status(ctx, label, out_format):
    """Per component: last applied key, when, and whether it is up to date."""
    import time

    from .graph.plan import CACHED, make_plan
    from .state.rebuild import Rebuilder

    r = _root(ctx)
    graph_, store, _ = r.graph(r.labels([label], allow_pattern=False))
    rebuilder = Rebuilder(graph_, store)
    planned = make_plan(graph_, rebuilder)
    if out_format == "json":
        from .jsonout import dumps, status_data, status_row

        rows_ = [status_row(nid, graph_.nodes[nid], rebuilder.applied(graph_.nodes[nid]), planned[nid])
                 for nid in graph_.dag.order]
        click.echo(dumps(status_data(graph_, rows_)), nl=False)
        return
    rows = [("COMPONENT", "MODE", "APPLIED", "WHEN", "TOOK", "STATE")]
    for nid in graph_.dag.order:
        node = graph_.nodes[nid]
        last = rebuilder.applied(node)
        p = planned[nid]
        state = "up to date" if p.status == CACHED else f"out of date: {p.reason}"
        if last:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.finished))
            rows.append((nid, node.mode, last.key[:12], when, f"{last.duration:.1f}s", state))
        else:
            removal = rebuilder.snapshot(node).removals.get(node.cid)
            if removal is not None and removal.kind == "destroyed":
                # (SPEC 10) the next rollout applies it again
                state = f"destroyed (by run {removal.run_id}): the next rollout applies it again"
            rows.append((nid, node.mode, "-", "-", "-", state))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5])


@cli.command()
@click.argument("label", shell_complete=_complete_labels)
@click.argument("component", shell_complete=_complete_components)
@click.option("--format", "out_format", type=TEXT_JSON, default="text", help=FORMAT_HELP)
@click.pass_context
def explain(ctx, label, component, out_format):
    """Why COMPONENT (TYPE/NAME) of LABEL would run: what changed."""
    from .errors import did_you_mean
    from .graph.plan import BLOCKED, CACHED, make_plan
    from .state.rebuild import Rebuilder

    r = _root(ctx)
    graph_, store, _ = r.graph(r.labels([label], allow_pattern=False))
    if component not in graph_.nodes:
        raise UsageError(f"no component '{component}' in {label}" + did_you_mean(component, graph_.nodes))
    rebuilder = Rebuilder(graph_, store)
    p = make_plan(graph_, rebuilder)[component]
    node = graph_.nodes[component]
    last = rebuilder.applied(node)
    if out_format == "json":
        from .jsonout import dumps, explain_data

        click.echo(dumps(explain_data(graph_, component, p, last)), nl=False)
        return
    if last:
        click.echo(f"{component}: last applied key {last.key[:12]}")
    if p.status == CACHED:
        click.echo(f"{component} is up to date (key {p.key[:12]}): it would not run.")
        return
    if p.status == BLOCKED:
        click.echo(f"{component} has no changes of its own; it {p.reason}.")
        return
    click.echo(f"{component} would run because:")
    for reason in p.reason.split("; "):
        click.echo(f"  - {reason}")


# -- validate / fmt / convert -----------------------------------------------------

@cli.command()
@click.argument("labels", nargs=-1, shell_complete=_complete_labels)
@click.pass_context
def validate(ctx, labels):
    """Check deployments (all packages when no LABEL/PATTERN is given)."""
    from .config.labels import Label
    from .config.workspace import discover_packages, load_package, load_specs
    from .components import TYPES, ComponentType
    from .graph.actions import SourceChecker, build_structure, compile_graph
    from .state.files import FileDigester

    r = _root(ctx)
    if labels:
        targets = r.labels(labels)
        packages = sorted({label.package for label in targets})
    else:
        packages = discover_packages(r.root)
        targets = None
        if not packages:
            raise UsageError(f"no packages (BUILD.atmos or deployment.yaml) under {r.root}")
    sources = SourceChecker(r.root)
    for pkg in packages:
        spec = load_package(r.root, pkg, TYPES)
        names = [l.target for l in targets if l.package == pkg] if targets else list(spec.targets)
        for target in names:
            label = Label(pkg, target)
            specs = load_specs(r.root, [label], TYPES, {pkg: spec})
            st = build_structure(specs, [label])
            for comp in st.resolved[label].values():
                sources.check(spec, comp, label)
            if any(type(TYPES[c.type]).compile is not ComponentType.compile
                   for c in st.resolved[label].values()):
                # A type that reads its sources (terraform: declared vars,
                # local modules) finds its errors only with them at hand.
                compile_graph(r.root, [label], FileDigester(r.root, cache={}), specs=lambda: specs,
                              settings=lambda: r.settings)
        click.echo(f"ok //{pkg}: deployment '{spec.name}', {len(spec.components)} components, "
                   f"targets {', '.join(names) or '(none)'}")


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


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if a file is not formatted.")
@click.option("--diff", is_flag=True, help="Print a unified diff of the changes.")
def fmt(files, check, diff):
    """Rewrite BUILD.atmos FILE... in the canonical DSL layout (`-`: stdin to stdout)."""
    from .config.fmt import format_dsl
    from .fileops import write_atomic

    # Every file is read and formatted before any is written: a parse error
    # anywhere changes nothing anywhere.
    from .config.dsl import parse_dsl

    jobs = []
    for path in dict.fromkeys(files):
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
        jobs.append((path, text, format_dsl(doc.data, getattr(doc, "comments", None))))
    unformatted = []
    for path, old, new in jobs:
        if diff and new != old:
            click.echo(_unified_diff(old, new, "<stdin>" if path == "-" else path), nl=False)
        if path == "-":
            if new != old:
                unformatted.append("<stdin>")
            if not check and not diff:
                click.echo(new, nl=False)
            continue
        if new == old:
            continue
        unformatted.append(path)
        if not check:
            target = os.path.realpath(path)  # (a symlinked BUILD.atmos stays a link)
            write_atomic(target, new.encode("utf-8"), mode=os.stat(target).st_mode & 0o7777,
                         durable=True)
            if not diff:
                click.echo(f"formatted {path}")
    if check and unformatted:
        for path in unformatted:
            click.echo(f"would reformat {path}", err=True)
        sys.exit(1)


def _unified_diff(old: str, new: str, name: str) -> str:
    import difflib

    def lines(text):
        out = text.splitlines(keepends=True)
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n\\ No newline at end of file\n"
        return out

    return "".join(difflib.unified_diff(lines(old), lines(new), f"a/{name}", f"b/{name}"))


@cli.command()
@click.argument("file")
@click.option("--to", "to", type=click.Choice(("dsl", "yaml")), required=True)
def convert(file, to):
    """Print FILE converted to the DSL or to YAML (lossless)."""
    from .components import TYPES
    from .config.fmt import format_dsl, format_yaml
    from .config.model import compile_document

    doc = _read_document(file)
    compile_document(doc, "", "converted", TYPES)  # convert valid deployments only
    click.echo(format_dsl(doc.data) if to == "dsl" else format_yaml(doc.data), nl=False)


# -- vendor / affected (SPEC 12) -------------------------------------------------------

def _every_label(root: str, texts) -> list:
    """Labels for LABEL/PATTERN texts; none given: every target of every package."""
    from .components import TYPES
    from .config.labels import Label, parse_label
    from .config.workspace import discover_packages, expand, load_package

    if texts:
        return expand(root, [parse_label(t, allow_pattern=True) for t in texts], TYPES)
    return [Label(pkg, target) for pkg in discover_packages(root)
            for target in load_package(root, pkg, TYPES).targets]


@cli.group()
def vendor():
    """The vendor cache of remote (git::) sources."""


@vendor.command("pull")
@click.argument("labels", nargs=-1)
@click.pass_context
def vendor_pull(ctx, labels):
    """Fetch the git sources of LABEL/PATTERN... (default: every package and
    target) into the vendor cache, so later rollouts need no network."""
    from .components import TYPES
    from .config.workspace import load_specs
    from .graph.actions import build_structure, source_error
    from .sources import is_remote
    from .sources.git import SourceError, parse_git_source

    r = _root(ctx)
    vendor_ = r.remote()
    seen = set()
    for label in _every_label(r.root, labels):
        specs = load_specs(r.root, [label], TYPES)
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
            click.echo(f"{how} {src.shown} -> {tree.commit[:12]} ({len(tree.entries)} files)")
    if not seen:
        click.echo("no git sources in the selection")


@cli.command()
@click.option("--base", "base", required=True, metavar="REF", help="The commit to compare against.")
@click.option("--head", "head", metavar="REF", help="The commit to compare (default: the working tree).")
@click.option("--format", "fmt_", type=click.Choice(("text", "json")), default="text", show_default=True)
@click.argument("patterns", nargs=-1)
@click.pass_context
def affected(ctx, base, head, fmt_, patterns):
    """Components whose keys differ between two commits (PATTERN...: labels
    or //PREFIX/...:TARGET; default every target of every package), their
    dependents, and the ones added or removed."""
    import json

    from .affected import affected as compute, render_text

    r = _root(ctx)
    doc = compute(r.root, r.state_dir, base, head, list(patterns))
    if fmt_ == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(render_text(doc), nl=False)


# -- clean ------------------------------------------------------------------------
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


@cli.command()
@click.option("--workspaces", is_flag=True, help="Remove rollout workspaces left behind.")
@click.option("--cache", is_flag=True,
              help="Remove the state database (what was applied), caches, vendor cache and logs.")
@click.option("--all", "all_", is_flag=True,
              help="Remove everything atmosbuild made in the state directory but Terraform state.")
@click.option("--terraform-state", is_flag=True,
              help="Also remove the local Terraform state (tfstate/): the resources it tracks are forgotten.")
@click.pass_context
def clean(ctx, workspaces, cache, all_, terraform_state):
    """Remove state atmosbuild made (refused while a rollout holds a lock)."""
    import shutil  # (only here: every other command starts faster without it)
    from contextlib import ExitStack

    from .errors import LockedError
    from .fileops import MARKER, is_state_dir

    if not (workspaces or cache or all_ or terraform_state):
        raise UsageError("say what to clean: --workspaces, --cache, --all or --terraform-state")
    r = _root(ctx)
    shown = os.path.relpath(r.state_dir, r.root)
    if not os.path.lexists(r.state_dir):
        click.echo(f"nothing to clean: no {shown}/")
        return
    if not os.path.isdir(r.state_dir) or os.path.islink(r.state_dir) or not is_state_dir(r.state_dir):
        raise UsageError(f"{shown}/ has no {MARKER} marker: atmosbuild did not create it, so clean "
                         "removes nothing there (if it did, an older version made it: remove it by hand)")
    names = CLEAN_ALL if all_ else (CLEAN_WORKSPACES if workspaces else ()) + (CLEAN_CACHE if cache else ())
    if terraform_state:
        names += (TERRAFORM_STATE,)
    with ExitStack() as held:
        for deployment, target, label in _lockable(r):
            try:
                held.enter_context(_lock(r.state_dir, deployment, target, label))
            except LockedError as exc:
                raise LockedError(exc.message.split("; use --wait")[0] + "; nothing removed") from None
        for name in dict.fromkeys(names):
            path = os.path.join(r.state_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, onerror=_vanished_meanwhile)
                click.echo(f"removed {os.path.join(shown, name)}/")
            elif os.path.lexists(path):
                os.unlink(path)
                click.echo(f"removed {os.path.join(shown, name)}")
    if all_ and not terraform_state and os.path.isdir(os.path.join(r.state_dir, TERRAFORM_STATE)):
        click.echo(f"kept {os.path.join(shown, TERRAFORM_STATE)}/ (Terraform state: the resources it "
                   "tracks; `clean --terraform-state` removes it)")


def _vanished_meanwhile(func, path, exc_info):
    """rmtree's onerror: a workspace's detached removal (run/workspace.py)
    may be emptying the trash at the same time; what is gone already is fine."""
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


def _lock(state_dir, deployment, target, label):
    from .run.lock import deployment_lock

    return deployment_lock(state_dir, deployment, target, label)


def _lockable(r: _Root) -> list[tuple[str, str, str]]:
    """Every deployment+target a rollout could hold while clean deletes, as
    (deployment, target, label): each lock file there is, and each target of
    every package here that loads (one that does not cannot roll out)."""
    from .components import TYPES
    from .config.workspace import discover_packages, load_package
    from .errors import AtmosError

    found: dict[tuple[str, str], str] = {}
    for package in discover_packages(r.root):
        try:
            spec = load_package(r.root, package, TYPES)
        except AtmosError:
            continue
        for target in spec.targets:
            found.setdefault((spec.name, target), f"//{package}:{target}")
    locks = os.path.join(r.state_dir, "locks")
    for name in sorted(os.listdir(locks)) if os.path.isdir(locks) else []:
        if name.endswith(".lock") and "@" in name:
            safe, _, target = name[:-len(".lock")].rpartition("@")
            deployment = safe.replace("%2F", "/")
            found.setdefault((deployment, target), f"{deployment}@{target}")
    return [(deployment, target, label) for (deployment, target), label in sorted(found.items())]


# -- entry point ------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    # Loading a deployment allocates hundreds of thousands of objects and makes
    # no garbage cycles; the cyclic collector's repeated passes over them made
    # loading superlinear (20,000 components: libyaml compose 3.1 s with the
    # collector, 0.7 s without). Rollouts switch it back on (freezing the
    # loaded graph) before they start running actions.
    gc.disable()
    if "_ATMOSBUILD_COMPLETE" in os.environ:  # a shell asking for completions (SPEC 13)
        from .completion import install

        install()
    try:
        # With standalone_mode=False, click returns ctx.exit()'s code instead of raising.
        code = cli.main(args=argv, prog_name="atmosbuild", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except AtmosError as exc:
        click.echo(exc.render(), err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as exc:  # a bug: say so in one line; ATMOS_DEBUG=1 shows the traceback
        if os.environ.get("ATMOS_DEBUG"):
            raise
        click.echo(f"error: internal error ({type(exc).__name__}: {exc}); this is a bug in "
                   "atmosbuild — rerun with ATMOS_DEBUG=1 for details", err=True)
        sys.exit(70)


def entry() -> None:
    """The `atmosbuild` command: main(), then leave without tearing the heap down.

    Interpreter shutdown frees a loaded graph object by object (~0.1 s for
    5,000 components). By the time main() returns everything worth keeping is
    written: the store commits each success as it happens, workspaces are
    cleaned, reports and exports are closed files. So flush the standard
    streams and exit at once.
    """
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for name in ("atmosbuild.state.sqlite", "atmosbuild.state.postgres"):
        stores = sys.modules.get(name)
        if stores is not None:
            stores.close_all()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    entry()
