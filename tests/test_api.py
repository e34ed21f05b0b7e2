"""The library API (atmosbuild/api.py), driven in this process: real files,
real processes for the actions, no CLI subprocess.

What a caller relies on: a run returns the CLI's exit code and leaves the
store as the CLI would; the read-only calls return plain results that tell
the same story (plan, status, explain, outputs); bad input raises an
AtmosError with the CLI's exit code and leaves nothing behind.
"""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys

import pytest

from atmosbuild import api
from atmosbuild.errors import AtmosError, ConfigError, UsageError
from atmosbuild.run.ui import Console
from conftest import RECORD, REPO, ran, write_chain

CHAIN = ["command/app", "command/base", "command/edge", "command/solo"]


@pytest.fixture(autouse=True)
def _collector():
    """A rollout freezes the loaded graph and turns the collector on (the CLI
    turned it off): undo that after each test, as the process would end."""
    yield
    gc.enable()
    gc.unfreeze()


def console() -> tuple[Console, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Console(out, err, prefix=False, live=False, color=False), out, err


def test_rollout_runs_everything_then_a_second_run_runs_nothing(ws):
    write_chain(ws)
    workspace = api.Workspace(str(ws.root))
    con, out, _ = console()
    result = api.rollout(workspace, ["//app:dev"], parallelism=2, console=con)
    assert result == api.RunResult(0)
    assert ran(ws) == CHAIN
    assert "Summary: 4 ran, 0 cached, 0 failed, 0 skipped" in out.getvalue()

    ws.settle()
    con, out, _ = console()
    again = api.rollout(api.Workspace(str(ws.root)), ["//app:dev"], parallelism=2, console=con)
    assert again.exit_code == 0
    assert ran(ws) == []
    assert "Summary: 0 ran, 4 cached, 0 failed, 0 skipped" in out.getvalue()


def test_plan_and_status_follow_the_rollout(ws):
    write_chain(ws)
    workspace = api.Workspace(str(ws.root))
    before = api.plan(workspace, ["//app:dev"])
    assert {nid: p.status for nid, p in before.plan.items()} == {nid: "run" for nid in CHAIN}
    assert json.loads(before.json())["counts"] == {"run": 4, "cached": 0, "blocked": 0}
    fresh = api.status(workspace, "//app:dev")
    assert [row.applied_key for row in fresh.rows] == [None] * 4
    assert not any(row.up_to_date for row in fresh.rows)

    con, _, _ = console()
    assert api.rollout(workspace, ["//app:dev"], parallelism=1, console=con).exit_code == 0
    ran(ws)
    after = api.plan(workspace, ["//app:dev"])
    assert {nid: p.status for nid, p in after.plan.items()} == {nid: "cached" for nid in CHAIN}
    done = api.status(workspace, "//app:dev")
    assert sorted(row.id for row in done.rows) == CHAIN
    assert all(row.up_to_date for row in done.rows)
    assert {row.id: row.applied_key for row in done.rows} == {nid: p.key for nid, p in after.plan.items()}
    # The text and the JSON are renderings of the same rows.
    doc = json.loads(done.json())
    assert doc["label"] == "//app:dev"
    assert [c["applied_key"] for c in doc["components"]] == [row.applied_key for row in done.rows]
    assert all(line.endswith("up to date") for line in done.text().splitlines()[1:])
    # A forced plan would run everything again; nothing ran to find that out.
    forced = api.plan(workspace, ["//app:dev"], force=True)
    assert {p.status for p in forced.plan.values()} == {"run"}
    assert ran(ws) == []


def test_an_edit_is_explained_and_only_its_component_runs_again(ws):
    write_chain(ws)
    workspace = api.Workspace(str(ws.root))
    con, _, _ = console()
    assert api.rollout(workspace, ["//app:dev"], parallelism=2, console=con).exit_code == 0
    ran(ws)
    ws.write("src/solo/main.sh", "echo solo, edited\n")
    why = api.explain(workspace, "//app:dev", "command/solo")
    assert why.status == "run" and why.applied_key is not None
    assert "main.sh" in why.reason
    assert json.loads(why.json())["run"] is True
    assert api.explain(workspace, "//app:dev", "command/base").status == "cached"

    con, out, _ = console()
    assert api.rollout(workspace, ["//app:dev"], parallelism=2, console=con).exit_code == 0
    assert ran(ws) == ["command/solo"]
    assert "1 ran, 3 cached" in out.getvalue()


def test_outputs_are_read_back_and_a_failure_is_exit_code_1(ws):
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "command": {
            "maker": {"run": 'printf \'{"url": "http://x", "port": 8080}\' > "$ATMOS_OUTPUTS"'},
            "broken": {"run": f"{RECORD}; exit 3", "metadata": {"depends_on": ["command/maker"]}},
        }}}}))
    workspace = api.Workspace(str(ws.root))
    con, _, err = console()
    result = api.rollout(workspace, ["//app:dev"], parallelism=1, console=con)
    assert result.exit_code == 1
    assert "command/broken" in err.getvalue()
    assert ran(ws) == ["command/broken"]
    got = api.outputs(workspace, "//app:dev", "command/maker")
    assert got.outputs == {"url": "http://x", "port": 8080}
    assert got.value_text("url") == "http://x" and got.value_text("port") == "8080"
    assert json.loads(got.json()) == {"port": 8080, "url": "http://x"}
    with pytest.raises(UsageError, match="has no output 'host'"):
        got.value("host")
    with pytest.raises(UsageError, match="never applied"):
        api.outputs(workspace, "//app:dev", "command/broken")
    rows = {row.id: row for row in api.status(workspace, "//app:dev").rows}
    assert rows["command/maker"].up_to_date and not rows["command/broken"].up_to_date


def test_bad_input_raises_the_cli_error_and_leaves_nothing_behind(ws):
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "command": {"a": {"run": RECORD, "metadata": {"depends_on": ["command/nowhere"]}}}}}}))
    before = ws.snapshot_tree()
    workspace = api.Workspace(str(ws.root))
    con, out, _ = console()
    with pytest.raises(ConfigError) as caught:
        api.rollout(workspace, ["//app:dev"], console=con)
    assert caught.value.exit_code == 2
    assert "command/nowhere" in caught.value.render()
    with pytest.raises(AtmosError) as unknown:
        api.plan(workspace, ["//nosuch:dev"])
    assert unknown.value.exit_code == 2
    with pytest.raises(UsageError, match="at least 1"):
        api.rollout(workspace, ["//app:dev"], parallelism=0)
    with pytest.raises(UsageError, match="say what to clean"):
        api.clean_names()
    with pytest.raises(ConfigError):
        list(api.validate(workspace))
    assert ws.snapshot_tree() == before
    assert not ws.state.exists() and out.getvalue() == ""


def test_validate_and_clean_yield_what_they_did(ws):
    write_chain(ws)
    workspace = api.Workspace(str(ws.root))
    checked = list(api.validate(workspace))
    assert checked == [api.Validated("app", "app", 4, ["dev"])]
    assert list(api.clean(workspace, workspaces=True)) == ["nothing to clean: no .atmos/"]
    con, _, _ = console()
    assert api.rollout(workspace, ["//app:dev"], parallelism=1, keep_workspace=True, console=con).exit_code == 0
    workspace.mark_state_dir()
    assert (ws.state / "workspaces").is_dir()
    assert list(api.clean(workspace, workspaces=True)) == ["removed .atmos/workspaces/"]
    assert not (ws.state / "workspaces").exists() and (ws.state / "state.db").exists()


def test_destroy_asks_its_callback_with_the_ids_in_order(ws):
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "command": {
            "base": {"run": RECORD, "destroy": 'echo "destroy $ATMOS_COMPONENT" >> "$ATMOS_ROOT/ran.log"'},
            "top": {"run": RECORD, "destroy": 'echo "destroy $ATMOS_COMPONENT" >> "$ATMOS_ROOT/ran.log"',
                    "metadata": {"depends_on": ["command/base"]}},
        }}}}))
    workspace = api.Workspace(str(ws.root))
    asked = []
    con, _, _ = console()
    nothing = api.destroy(workspace, ["//app:dev"], console=con, confirm=lambda ids: asked.append(ids))
    assert nothing.exit_code == 0 and asked == [[]]
    assert api.rollout(workspace, ["//app:dev"], parallelism=1, console=con).exit_code == 0
    ran(ws)
    asked.clear()
    refused = api.destroy(workspace, ["//app:dev"], console=con, confirm=lambda ids: asked.append(ids))
    assert refused.exit_code == 0 and asked == [["command/top", "command/base"]]
    assert ran(ws) == []
    done = api.destroy(workspace, ["//app:dev"], parallelism=1, console=con, confirm=lambda ids: True)
    assert done.exit_code == 0
    assert (ws.root / "ran.log").read_text().split("\n")[:2] == ["destroy command/top", "destroy command/base"]
    assert not any(row.applied_key for row in api.status(workspace, "//app:dev").rows)


def test_format_files_formats_nothing_until_asked(ws):
    path = ws.write("app/BUILD.atmos", 'deployment "app" {\ntargets = ["dev"]\n}\n')
    original = path.read_text()
    [job] = api.format_files([str(path)])
    assert job.old == original and path.read_text() == original and job.changed
    assert job.diff().startswith(f"--- a/{path}")
    api.write_formatted(job)
    assert path.read_text() == job.new
    assert not api.format_files([str(path)])[0].changed


def test_the_cli_loads_nothing_of_the_pipeline_to_start():
    """`atmosbuild --help` and completion: click, the CLI, the API, errors."""
    code = "import sys, atmosbuild.cli; print(sorted(m for m in sys.modules if m.startswith('atmosbuild')))"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted(["atmosbuild", "atmosbuild.api", "atmosbuild.cli",
                                              "atmosbuild.errors"]))
