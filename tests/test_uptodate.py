"""The up-to-date record (run/uptodate.py): a rollout that left everything up
to date lets the next rollout of the same selection skip compiling and
deciding when, and only when, nothing it was made with changed. These run
the real CLI; sources are let settle first (the clock moves past the racy
window, see conftest.settle), since files newer than that are (rightly)
never trusted (see test_tree_cache.py)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import sqlite3

import pytest

from conftest import RECORD, ran, settle, settle_argv, write_chain
from atmosbuild.run.lock import lock_path



def _settled_first_run(ws, *args: str) -> None:
    settle()
    proc = ws.run("rollout", "//app:dev", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran(ws)


def _records(ws) -> list:
    return sorted((ws.state / "cache").glob("uptodate-*.marshal"))


def _normalized(stdout: str) -> str:
    stdout = re.sub(r"deployment-[0-9a-f-]{36}", "deployment-UUID", stdout)
    return re.sub(r" in [0-9.]+ s", " in T s", stdout)


@pytest.mark.parametrize("args", [("-j1", "--schedule", "waves"), ("-j2", "--schedule", "eager")])
def test_a_settled_no_op_compiles_nothing_and_prints_what_the_full_path_prints(ws, args):
    write_chain(ws)
    _settled_first_run(ws, *args)
    assert len(_records(ws)) == 1
    for cached in (ws.state / "cache").glob("structure-*"):
        cached.unlink()
    fast = ws.run("rollout", "//app:dev", *args)
    assert fast.returncode == 0 and ran(ws) == []
    assert not list((ws.state / "cache").glob("structure-*"))  # nothing was compiled
    full = ws.run("rollout", "//app:dev", *args, env={"ATMOS_NO_CACHE": "1"})
    assert full.returncode == 0 and ran(ws) == []
    assert _normalized(fast.stdout) == _normalized(full.stdout)
    assert "4 cached" in fast.stdout


def _same_size_edit(ws):
    path = ws.root / "src/app/lib/util.sh"
    old = path.stat()
    path.write_text("UTIL\n")
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))


def _drop_applied_row(ws):
    with sqlite3.connect(ws.state / "state.db") as db:
        db.execute("DELETE FROM applied WHERE component = 'command/app'")


CHANGES = {
    "same-size edit, mtime put back": (_same_size_edit, ["command/app", "command/edge"]),
    "file added": (lambda ws: ws.write("src/base/new.sh", "new\n"),
                   ["command/app", "command/base", "command/edge"]),
    "directory removed": (lambda ws: [p.unlink() for p in (ws.root / "src/solo/lib").iterdir()]
                          + [(ws.root / "src/solo/lib").rmdir()], ["command/solo"]),
    "applied row gone": (_drop_applied_row, ["command/app"]),
    "state cleaned": (lambda ws: ws.run("clean", "--cache"),
                      ["command/app", "command/base", "command/edge", "command/solo"]),
    "deployment edited": (lambda ws: write_chain(ws, {"solo": {"source": "src/solo", "run": RECORD + "; true"}}),
                          ["command/solo"]),
    "one component forced since": (lambda ws: ws.run("rollout", "//app:dev", "--only", "command/app", "--force")
                                   and ran(ws), []),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_any_change_behind_a_record_is_seen(ws, change):
    write_chain(ws)
    _settled_first_run(ws)
    assert _records(ws)
    apply, expected = CHANGES[change]
    apply(ws)
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ran(ws) == expected
    proc = ws.run("rollout", "//app:dev")
    assert ran(ws) == []  # and what just ran is up to date


def test_a_cache_false_component_is_never_recorded_and_always_runs(ws):
    write_chain(ws, {"always": {"run": RECORD, "cache": False}})
    _settled_first_run(ws)
    assert _records(ws) == []
    ws.run("rollout", "//app:dev")
    assert ran(ws) == ["command/always"]


def test_the_lock_holds_for_an_up_to_date_rollout_too(ws):
    write_chain(ws)
    _settled_first_run(ws)
    fd = os.open(lock_path(str(ws.state), "app", "dev"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = ws.run("rollout", "//app:dev")
    finally:
        os.close(fd)
    assert proc.returncode == 3 and "locked" in proc.stderr
    assert "Workspace:" not in proc.stdout


def test_sources_too_new_when_a_rollout_began_are_read_again_at_its_end(ws):
    """As git re-hashes racily clean entries: files written just before a
    rollout cannot be trusted when it starts, but if they have settled and
    still hold the planned bytes when it ends, the record is written."""
    write_chain(ws, {"slow": {"run": settle_argv()}})  # (the sources settle while it runs)
    proc = ws.run("rollout", "//app:dev", "-j1")  # no settling first
    assert proc.returncode == 0 and len(ran(ws)) == 4
    assert len(_records(ws)) == 1
    for cached in (ws.state / "cache").glob("structure-*"):
        cached.unlink()
    ws.run("rollout", "//app:dev", "-j1")
    assert ran(ws) == [] and not list((ws.state / "cache").glob("structure-*"))


@pytest.mark.parametrize("settle_first", [True, False])
def test_a_source_changed_while_its_rollout_ran_runs_again(ws, settle_first):
    """Settled at the start: the record holds the signatures the keys were
    computed from, which the edit changed. Too new at the start: the re-read
    at the end sees other bytes than planned, so there is no record."""
    # Edited early, then left to settle: only the bytes tell it changed.
    edit = (f'{RECORD}; echo edited-meanwhile >> "$ATMOS_ROOT/src/solo/main.sh"; '
            + " ".join(shlex.quote(arg) for arg in settle_argv()))
    write_chain(ws, {"solo": {"source": "src/solo", "run": edit}})
    if settle_first:
        settle()
    ws.run("rollout", "//app:dev", "-j1")
    ran(ws)
    if not settle_first:
        assert _records(ws) == []
    ws.run("rollout", "//app:dev", "-j1")
    assert ran(ws) == ["command/solo"]


def _inputswrite_chain(ws, patterns) -> None:
    comps = {"gen": {"run": RECORD, "inputs": patterns}, "after": {"run": RECORD}}
    ws.write("app/deployment.yaml", json.dumps(
        {"deployment": {"targets": {"dev": {}}, "components": {"command": comps}}}))
    ws.write("tools/gen.py", "print('gen')\n")
    ws.write("tools/sub/x.py", "x = 1\n")


INPUT_CHANGES = {
    "matched file edited": (["tools/**/*.py"], lambda ws: ws.write("tools/sub/x.py", "x = 2\n"),
                            ["command/gen"]),
    "new match deep down": (["tools/**/*.py"], lambda ws: ws.write("tools/sub/deeper/y.py", "y\n"),
                            ["command/gen"]),
    "unmatched file added": (["tools/**/*.py"], lambda ws: ws.write("tools/sub/notes.txt", "n\n"), []),
    # (tools/, not the root: the tests' ran.log keeps the root's mtime fresh)
    "prefix created": (["tools/new/*.py"], lambda ws: ws.write("tools/new/a.py", "a\n"), ["command/gen"]),
    "matched file removed": (["tools/*.py", "tools/sub/*.py"],
                             lambda ws: (ws.root / "tools/sub/x.py").unlink(), ["command/gen"]),
}


@pytest.mark.parametrize("change", sorted(INPUT_CHANGES))
def test_inputs_globs_are_recorded_and_any_change_to_their_matches_is_seen(ws, change):
    patterns, apply, expected = INPUT_CHANGES[change]
    _inputswrite_chain(ws, patterns)
    _settled_first_run(ws)
    assert len(_records(ws)) == 1
    for cached in (ws.state / "cache").glob("structure-*"):
        cached.unlink()
    ws.run("rollout", "//app:dev")
    assert ran(ws) == [] and not list((ws.state / "cache").glob("structure-*"))  # up-to-date path
    apply(ws)
    ws.run("rollout", "//app:dev")
    assert ran(ws) == expected


def test_inputs_below_a_symlinked_directory_are_never_recorded(ws):
    """glob may follow the link into a tree whose changes nothing here sees."""
    _inputswrite_chain(ws, ["tools/**/*.py"])
    (ws.root / "tools/linked").symlink_to(ws.root / "tools/sub")
    _settled_first_run(ws)
    assert _records(ws) == []
