"""Partial rollouts (run/uptodate.py): when the up-to-date record finds that
only some source trees moved, only their components and what depends on them
are compiled and decided; everything else is what the record says. Whatever
path a rollout takes, it must run exactly what the full path runs and print
what it prints. These run the real CLI on real files."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RECORD, Workspace, ran, settle, write_chain
from atmosbuild.run import uptodate
from atmosbuild.state.files import file_digest, signature



def _deployment(ws, comps: dict) -> None:
    ws.write("app/deployment.yaml", json.dumps(
        {"deployment": {"targets": {"dev": {}}, "components": {"command": comps}}}))


def _chain(ws, base_run: str = RECORD) -> None:
    write_chain(ws, {"base": {"source": "src/base", "run": base_run}})


def _recorded_first_run(ws, *args: str) -> None:
    settle()
    proc = ws.run("rollout", "//app:dev", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran(ws)
    assert list((ws.state / "cache").glob("uptodate-*.marshal")), "no record was written"
    _forget_structure(ws)


def _forget_structure(ws) -> None:
    """Drop the compiled structure: the full path writes it again, the
    record's paths never load or write it (they use the node pack)."""
    for cached in (ws.state / "cache").glob("structure-*"):
        cached.unlink()


def _compiled_everything(ws) -> bool:
    return bool(list((ws.state / "cache").glob("structure-*")))


def _normalized(stdout: str, root) -> str:
    stdout = stdout.replace(str(root), "ROOT")
    stdout = re.sub(r"deployment-[0-9a-f-]{36}", "deployment-UUID", stdout)
    return re.sub(r" in [0-9.]+ s", " in T s", stdout)


@pytest.mark.parametrize("args", [("-j1", "--schedule", "waves"), ("-j2", "--schedule", "eager")])
def test_an_edit_is_decided_from_the_record_as_the_full_path_decides_it(ws, tmp_path, args):
    _chain(ws)
    _recorded_first_run(ws, *args)
    # A twin of the workspace, state and all, rolled out the full way.
    twin = Workspace(tmp_path / "twin")
    shutil.rmtree(twin.root)
    shutil.copytree(ws.root, twin.root, symlinks=True)
    for each in (ws, twin):
        each.write("src/app/lib/util.sh", "util, edited\n")
    partial = ws.run("rollout", "//app:dev", *args)
    full = twin.run("rollout", "//app:dev", *args, env={"ATMOS_NO_CACHE": "1"})
    assert partial.returncode == full.returncode == 0, partial.stderr + full.stderr
    assert ran(ws) == ran(twin) == ["command/app", "command/edge"]
    assert not _compiled_everything(ws)
    assert _normalized(partial.stdout, ws.root) == _normalized(full.stdout, twin.root)
    assert "2 ran, 2 cached" in partial.stdout


def test_the_record_follows_a_partial_rollout(ws):
    _chain(ws)
    _recorded_first_run(ws)
    ws.write("src/base/main.sh", "echo base v2\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/app", "command/base", "command/edge"]
    # Straight after (the edited file is still too new to trust by its
    # signature: it is recorded with its digest), nothing runs or compiles.
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == [] and not _compiled_everything(ws)
    ws.write("src/solo/lib/util.sh", "util v2\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/solo"] and not _compiled_everything(ws)
    # Rewritten to the same bytes: the signature moved, the key did not.
    ws.write("src/solo/lib/util.sh", "util v2\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == [] and not _compiled_everything(ws)


def test_early_cutoff_on_the_partial_path(ws):
    """base declares the same outputs whatever its source says, so after an
    edit it runs and its dependents, keyed on its result, do not."""
    _chain(ws, base_run=RECORD + """; echo '{"port": 8080}' > "$ATMOS_OUTPUTS\"""")
    _recorded_first_run(ws)
    ws.write("src/base/main.sh", "echo base v2\n")
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 0, proc.stderr
    assert ran(ws) == ["command/base"] and not _compiled_everything(ws)
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == []


def test_upstream_outputs_reach_a_dependent_decided_on_the_partial_path(ws):
    """app renders an output of base, which is not decided again: its
    recorded outputs are what app sees."""
    _deployment(ws, {
        "base": {"source": "src/base",
                 "run": RECORD + """; echo '{"port": 8080}' > "$ATMOS_OUTPUTS\""""},
        "app": {"source": "src/app",
                "run": RECORD + '; echo "${outputs.command/base.port}" > "$ATMOS_ROOT/port.txt"'},
    })
    ws.write("src/base/main.sh", "base\n")
    ws.write("src/app/main.sh", "app\n")
    _recorded_first_run(ws)
    (ws.root / "port.txt").unlink()
    ws.write("src/app/main.sh", "app v2\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/app"] and not _compiled_everything(ws)
    assert (ws.root / "port.txt").read_text() == "8080\n"


def test_a_failure_on_the_partial_path_is_run_again_next_time(ws):
    _chain(ws, base_run='if grep -q FAIL main.sh; then exit 1; fi; ' + RECORD)
    _recorded_first_run(ws)
    ws.write("src/base/main.sh", "FAIL\n")
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 1
    assert ran(ws) == []
    assert "command/base failed" in proc.stdout + proc.stderr or "FAILED" in proc.stdout + proc.stderr
    ws.write("src/base/main.sh", "fixed\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/app", "command/base", "command/edge"]
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == []


def test_bad_input_behind_a_record_is_reported_as_the_full_path_reports_it(ws):
    _chain(ws)
    _recorded_first_run(ws)
    shutil.rmtree(ws.root / "src/solo")
    ws.write("src/solo", "now a file\n")
    before = {p for p in os.listdir(ws.state / "workspaces")} if (ws.state / "workspaces").exists() else set()
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    first = proc.stderr.splitlines()[0]  # (then the line it points into, and a caret)
    assert first.startswith("error: ") and proc.stderr.count("error:") == 1
    assert "deployment.yaml:" in first and "is not a directory" in first
    assert "Traceback" not in proc.stderr and "Workspace:" not in proc.stdout
    after = set(os.listdir(ws.state / "workspaces")) if (ws.state / "workspaces").exists() else set()
    assert after == before


def test_a_racily_new_file_is_checked_by_its_bytes(tmp_path):
    """A file recorded while too new to trust by its signature is read
    again: a rewrite within one timestamp tick keeps the signature."""
    path = tmp_path / "f.txt"
    path.write_text("one\n")
    sig = signature(os.lstat(path))
    record = uptodate.Record(graph=None, roots=(), root_sigs=(), paths=(), sigs=(),
                             racy=((str(path), sig, file_digest(str(path))),), watched=frozenset(),
                             applied={}, build_keys=())
    assert uptodate.changed_paths(record) == []
    stale = uptodate.Record(**{**record.__dict__, "racy": ((str(path), sig, file_digest(str(path)) + "0"),)})
    assert uptodate.changed_paths(stale) == [str(path)]  # same signature, other bytes
    path.unlink()
    assert uptodate.changed_paths(record) == [str(path)]


# -- the property: whatever edits, exactly the edited components and their dependents run --

@st.composite
def dags_and_edits(draw):
    n = draw(st.integers(min_value=2, max_value=7))
    deps = [sorted(draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=2))) if i else []
            for i in range(n)]
    rounds = draw(st.lists(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(["edit", "same"])),
                                    max_size=3), min_size=1, max_size=3))
    return n, deps, rounds


def _downstream(deps, nodes: set[int]) -> set[int]:
    out = set(nodes)
    changed = True
    while changed:
        changed = False
        for i, ds in enumerate(deps):
            if i not in out and out.intersection(ds):
                out.add(i)
                changed = True
    return out


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=dags_and_edits())
def test_partial_rollouts_run_exactly_the_edited_components_and_their_dependents(tmp_path_factory, case):
    n, deps, rounds = case
    ws = Workspace(tmp_path_factory.mktemp("prop") / "ws")
    _deployment(ws, {f"c{i}": {"source": f"src/c{i}", "run": RECORD,
                               "metadata": {"depends_on": [f"command/c{d}" for d in deps[i]]}}
                     for i in range(n)})
    for i in range(n):
        ws.write(f"src/c{i}/main.sh", f"c{i} v0\n")
    _recorded_first_run(ws)
    version = 0
    for edits in rounds:
        edited = set()
        for i, kind in edits:
            path = ws.root / f"src/c{i}/main.sh"
            if kind == "edit":
                version += 1
                path.write_text(f"c{i} v{version}\n")
                edited.add(i)
            else:  # the same bytes again: the signature moves, the content does not
                path.write_text(path.read_text())
        proc = ws.run("rollout", "//app:dev", "-j2")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert ran(ws) == sorted(f"command/c{i}" for i in _downstream(deps, edited))
        assert not _compiled_everything(ws)


def test_a_tree_shared_by_two_deployments_is_decided_in_both(ws):
    """Several labels run as one graph; a source tree used by a component
    of each makes both dirty, and nothing else runs."""
    for package in ("api", "web"):
        ws.write(f"{package}/deployment.yaml", json.dumps({"deployment": {
            "targets": {"dev": {}},
            "components": {"command": {
                "shared": {"source": "src/shared", "run": RECORD},
                "own": {"source": f"src/{package}", "run": RECORD,
                        "metadata": {"depends_on": ["command/shared"]}},
            }}}}))
        ws.write(f"src/{package}/main.sh", f"{package}\n")
    ws.write("src/shared/lib.sh", "shared\n")
    settle()
    assert ws.run("rollout", "//...:dev").returncode == 0
    assert len(ran(ws)) == 4
    _forget_structure(ws)
    ws.write("src/shared/lib.sh", "shared v2\n")
    proc = ws.run("rollout", "//...:dev")
    assert proc.returncode == 0, proc.stderr
    assert ran(ws) == ["command/own", "command/own", "command/shared", "command/shared"]
    assert not _compiled_everything(ws)
    ws.write("src/web/main.sh", "web v2\n")
    assert ws.run("rollout", "//...:dev").returncode == 0
    assert ran(ws) == ["command/own"] and not _compiled_everything(ws)


def _record_files(ws) -> tuple[dict, dict]:
    cache = ws.state / "cache"
    whole = {p.name: p.stat().st_mtime_ns for p in cache.glob("uptodate-*.marshal")}
    deltas = {p.name: p.read_bytes() for p in cache.glob("uptodate-*.delta")}
    return whole, deltas


def test_an_edit_writes_a_small_delta_and_a_new_file_rewrites_the_record(ws):
    """An edit moves only signatures: the record is not rewritten (30,000
    signatures at 5,000 components), a delta beside it is. An entry added
    changes the record's paths: it is written whole, and the delta it
    replaces no longer applies."""
    _chain(ws)
    _recorded_first_run(ws)
    whole, deltas = _record_files(ws)
    assert len(whole) == 1 and deltas == {}
    for round_ in range(2):  # deltas accumulate
        ws.write("src/base/lib/util.sh", f"util v{round_}\n")
        assert ws.run("rollout", "//app:dev").returncode == 0
        assert ran(ws) == ["command/app", "command/base", "command/edge"]
        now, deltas = _record_files(ws)
        assert now == whole and len(deltas) == 1
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == [] and not _compiled_everything(ws)
    ws.write("src/solo/lib/util.sh", "util v2\n")  # an edit on top of the delta
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/solo"]
    settle()  # (a new directory entry is recorded only once it is settled)
    ws.write("src/solo/new.sh", "new\n")
    settle()
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/solo"] and not _compiled_everything(ws)
    now, _ = _record_files(ws)
    assert now != whole  # written whole
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == [] and not _compiled_everything(ws)  # the old delta no longer applies


def test_a_delta_for_another_record_file_is_ignored(ws):
    """A delta names the record file it was made on; a crash between
    writing a record whole and the next delta can leave one that does not
    match, and it must not be applied to the new record."""
    _chain(ws)
    _recorded_first_run(ws)
    ws.write("src/base/main.sh", "echo base v2\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    ran(ws)
    cache = ws.state / "cache"
    [delta] = cache.glob("uptodate-*.delta")
    saved = delta.read_bytes()
    settle()
    ws.write("src/base/new.sh", "new\n")  # base moves on, and the record is written whole
    settle()
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/app", "command/base", "command/edge"]
    delta.write_bytes(saved)  # an old delta comes back: its rows are base's old ones
    assert ws.run("rollout", "//app:dev").returncode == 0
    # Applied, it would claim rows the store no longer holds: the full path.
    assert ran(ws) == [] and not _compiled_everything(ws)


def _record(ws):
    from atmosbuild.components import TYPES
    from atmosbuild.config.labels import parse_label
    from atmosbuild.config.workspace import expand

    labels = expand(str(ws.root), [parse_label("//app:dev")], TYPES)
    return uptodate.load(str(ws.state), uptodate.record_key(str(ws.state), str(ws.root), labels, []))


def test_a_racily_new_file_is_trusted_by_its_signature_once_it_has_settled(ws):
    """A file edited just before a rollout is recorded with its digest and
    read again by each check; once a check has read it after it settled, a
    later write must move its signature, so the next record drops the digest."""
    _chain(ws)
    _recorded_first_run(ws)
    edited = str(ws.root / "src/base/main.sh")
    ws.write("src/base/main.sh", "echo base v2\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/app", "command/base", "command/edge"]
    assert [entry[0] for entry in _record(ws).racy] == [edited]
    settle()
    ws.write("src/solo/main.sh", "echo solo v2\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/solo"]
    assert [entry[0] for entry in _record(ws).racy] == [str(ws.root / "src/solo/main.sh")]


def test_an_edit_inside_nested_sources_is_pinned_on_every_tree_that_holds_it(ws):
    _deployment(ws, {
        "outer": {"source": "src/outer", "run": RECORD},
        "inner": {"source": "src/outer/inner", "run": RECORD},
        "other": {"source": "src/other", "run": RECORD},
    })
    ws.write("src/outer/top.sh", "top\n")
    ws.write("src/outer/inner/deep.sh", "deep\n")
    ws.write("src/other/x.sh", "x\n")
    _recorded_first_run(ws)
    ws.write("src/outer/inner/deep.sh", "deep v2\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/inner", "command/outer"] and not _compiled_everything(ws)
    ws.write("src/outer/top.sh", "top v2\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/outer"] and not _compiled_everything(ws)


def test_an_edit_behind_a_symlinked_source_directory_is_seen(ws):
    """A source may be a symlink to a directory elsewhere in the root: the
    record watches the files through it, so an edit made at the real path
    is pinned on that source."""
    _deployment(ws, {"app": {"source": "src/app", "run": RECORD},
                     "solo": {"source": "src/solo", "run": RECORD}})
    ws.write("real/app/main.sh", "app\n")
    ws.write("src/solo/main.sh", "solo\n")
    (ws.root / "src").mkdir(exist_ok=True)
    (ws.root / "src/app").symlink_to(ws.root / "real/app")
    _recorded_first_run(ws)
    ws.write("real/app/main.sh", "app v2\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/app"] and not _compiled_everything(ws)
