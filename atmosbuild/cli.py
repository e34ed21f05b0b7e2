"""The command line. Commands only: each parses its flags, calls the library
API (api.py), and prints what it returns. Every AtmosError becomes one
`error:` line and its exit code here, and nowhere else; no traceback ever
reaches a user. Nothing of the pipeline is imported here: api.py imports it
where it is used, so `--help` and completion load only click and the API."""

from __future__ import annotations

import gc
import os
import sys

import click

from . import api
from .errors import AtmosError, UsageError

SCHEDULES = ("waves", "eager")
FORMATS = ("dot", "json", "mermaid")
_complete_labels = api.complete_labels  # (completion.py is imported only when a shell asks)
_complete_components = api.complete_components


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "--root", "root", metavar="DIR", help="Workspace root (default: nearest atmos.yaml).")
@click.version_option(version=api.__version__, prog_name="atmosbuild", message="atmosbuild %(version)s")
@click.pass_context
def cli(ctx: click.Context, root: str | None) -> None:
    """atmosbuild: declarative, incremental, parallel deployments."""
    ctx.obj = root


def _root(ctx: click.Context) -> api.Workspace:
    ws = api.Workspace(ctx.obj)
    ctx.call_on_close(ws.mark_state_dir)
    return ws


def _echo(text: str, output: str | None = None) -> None:
    """Text to FILE (--output), else to stdout as it is."""
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)


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
    ws = _root(ctx)
    parallelism = ws.parallelism(parallelism)
    runs = dict(parallelism=parallelism, schedule=schedule, keep_going=keep_going,
                keep_workspace=keep_workspace, only=only, wait=wait, report=report, profile=profile)
    if from_preview is not None:
        if dry_run or force:
            raise UsageError("--from-preview applies a reviewed preview: it takes no --dry-run or --force")
        ctx.exit(api.apply_preview(ws, labels, from_preview, **runs).exit_code)
    if graph_format and not dry_run:
        raise UsageError("--graph needs --dry-run (use `atmosbuild graph LABEL` to export a plan)")
    if output and not graph_format:
        raise UsageError("--output goes with --graph")
    if dry_run:
        planned = api.plan(ws, labels, only=only, force=force)
        _echo(planned.export(graph_format) if graph_format else planned.text(), output)
        return
    ctx.exit(api.rollout(ws, labels, force=force, **runs).exit_code)


@cli.command()
@click.argument("labels", nargs=-1, required=True, shell_complete=_complete_labels)
@click.option("-j", "--parallelism", type=int, help="Run at most N previews at once (default: CPU count).")
@click.option("--only", multiple=True, metavar="TYPE/NAME", shell_complete=_complete_components,
              help="Select components (and what they depend on).")
@_run_options
@click.pass_context
def preview(ctx, labels, parallelism, only, wait, report, profile):
    """What a rollout of LABEL... would change, nothing applied; saves the plans (SPEC 10)."""
    ws = _root(ctx)
    ctx.exit(api.preview(ws, labels, parallelism=ws.parallelism(parallelism), only=only,
                         report=report, profile=profile, wait=wait).exit_code)


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
    ws = _root(ctx)
    parallelism = ws.parallelism(parallelism)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not yes and not interactive:
        raise UsageError("destroy asks for confirmation: not on a terminal, pass --yes to destroy")

    def confirm(doomed: list[str]) -> bool:
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

    ctx.exit(api.destroy(ws, labels, parallelism=parallelism, only=only, report=report, profile=profile,
                         schedule=schedule, keep_going=keep_going, wait=wait, confirm=confirm).exit_code)


@cli.command()
@click.argument("labels", nargs=-1, required=True, shell_complete=_complete_labels)
@click.option("-j", "--parallelism", type=int, help="Run at most N checks at once.")
@click.option("--only", multiple=True, metavar="TYPE/NAME", shell_complete=_complete_components,
              help="Select components (and what they depend on).")
@_run_options
@click.pass_context
def check(ctx, labels, parallelism, only, wait, report, profile):
    """Drift: does the infrastructure still match what was applied? Exit 4 if not (SPEC 10)."""
    ws = _root(ctx)
    ctx.exit(api.check(ws, labels, parallelism=ws.parallelism(parallelism), only=only,
                       report=report, profile=profile, wait=wait).exit_code)


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
    result = api.outputs(_root(ctx), label, component, show_sensitive=show_sensitive)
    if key is not None:
        click.echo(result.value_text(key))
        return
    click.echo(result.json() if as_json or fmt_ == "json" else result.text(), nl=False)


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
    planned = api.plan(_root(ctx), [label], only=only, force=force)
    click.echo(planned.json() if out_format == "json" else planned.text(), nl=False)


@cli.command()
@click.argument("label", shell_complete=_complete_labels)
@click.option("--format", "graph_format", type=click.Choice(FORMATS), default="dot", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
@click.option("--only", multiple=True, metavar="TYPE/NAME", shell_complete=_complete_components)
@click.pass_context
def graph(ctx, label, graph_format, output, only):
    """Export the planned graph of LABEL (DOT, JSON or Mermaid)."""
    _echo(api.plan(_root(ctx), [label], only=only).export(graph_format), output)


# -- status / explain ------------------------------------------------------------

@cli.command()
@click.argument("label", shell_complete=_complete_labels)
@click.option("--format", "out_format", type=TEXT_JSON, default="text", help=FORMAT_HELP)
@click.option("--history", is_flag=True, help="The last attempts of each component instead.")
@click.option("--last", "last", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --history: how many attempts per component (default 10).")
@click.pass_context
def status(ctx, label, out_format, history, last):
    """Per component: last applied key, when, and whether it is up to date."""
    if last is not None and not history:
        raise UsageError("--last N goes with --history")
    result = (api.history(_root(ctx), label, last or 10) if history
              else api.status(_root(ctx), label))
    click.echo(result.json() if out_format == "json" else result.text(), nl=False)


@cli.command()
@click.argument("label", shell_complete=_complete_labels)
@click.argument("component", shell_complete=_complete_components)
@click.option("--format", "out_format", type=TEXT_JSON, default="text", help=FORMAT_HELP)
@click.pass_context
def explain(ctx, label, component, out_format):
    """Why COMPONENT (TYPE/NAME) of LABEL would run: what changed."""
    result = api.explain(_root(ctx), label, component)
    click.echo(result.json() if out_format == "json" else result.text(), nl=False)


# -- validate / fmt / convert -----------------------------------------------------

@cli.command()
@click.argument("labels", nargs=-1, shell_complete=_complete_labels)
@click.pass_context
def validate(ctx, labels):
    """Check deployments (all packages when no LABEL/PATTERN is given)."""
    for checked in api.validate(_root(ctx), labels):
        click.echo(checked.text(), nl=False)


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if a file is not formatted.")
@click.option("--diff", is_flag=True, help="Print a unified diff of the changes.")
def fmt(files, check, diff):
    """Rewrite BUILD.atmos FILE... in the canonical DSL layout (`-`: stdin to stdout)."""
    # Every file is read and formatted before any is written: a parse error
    # anywhere changes nothing anywhere.
    unformatted = []
    for job in api.format_files(files):
        if diff and job.changed:
            click.echo(job.diff(), nl=False)
        if job.path == "-":
            if job.changed:
                unformatted.append(job.shown)
            if not check and not diff:
                click.echo(job.new, nl=False)
            continue
        if not job.changed:
            continue
        unformatted.append(job.path)
        if not check:
            api.write_formatted(job)
            if not diff:
                click.echo(f"formatted {job.path}")
    if check and unformatted:
        for path in unformatted:
            click.echo(f"would reformat {path}", err=True)
        sys.exit(1)


@cli.command()
@click.argument("file")
@click.option("--to", "to", type=click.Choice(("dsl", "yaml")), required=True)
def convert(file, to):
    """Print FILE converted to the DSL or to YAML (lossless)."""
    click.echo(api.convert(file, to), nl=False)


# -- vendor / affected (SPEC 12) -------------------------------------------------------

@cli.group()
def vendor():
    """The vendor cache of remote (git::) sources."""


@vendor.command("pull")
@click.argument("labels", nargs=-1)
@click.pass_context
def vendor_pull(ctx, labels):
    """Fetch the git sources of LABEL/PATTERN... (default: every package and
    target) into the vendor cache, so later rollouts need no network."""
    seen = False
    for fetched in api.vendor_pull(_root(ctx), labels):
        seen = True
        click.echo(fetched.text(), nl=False)
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
    result = api.affected(_root(ctx), base, head, patterns)
    click.echo(result.json() if fmt_ == "json" else result.text(), nl=False)


# -- clean (what each flag removes, and what never: api.CLEAN_*) --------------------------

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
    what = dict(workspaces=workspaces, cache=cache, all_=all_, terraform_state=terraform_state)
    api.clean_names(**what)  # (a flag problem before anything is looked at)
    for line in api.clean(_root(ctx), **what):
        click.echo(line)


# -- entry point ------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    # Loading a deployment allocates hundreds of thousands of objects and makes
    # no garbage cycles; the cyclic collector's repeated passes over them made
    # loading superlinear (20,000 components: libyaml compose 3.1 s with the
    # collector, 0.7 s without). Rollouts switch it back on (freezing the
    # loaded graph) before they start running actions.
    gc.disable()
    if "_ATMOSBUILD_COMPLETE" in os.environ:  # a shell asking for completions (SPEC 13)
        api.install_completion()
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
    api.close_stores()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    entry()
