"""The clock seam (atmosbuild/clock.py) and the code stamp every cache is
keyed by: time checks read one clock tests can move, the racy window is a
setting, and any change to atmosbuild's own code invalidates every cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import RECORD, REPO, ran, run_cli, settle
from atmosbuild import clock
from atmosbuild.state.files import FileDigester, changed_in, signature


def test_the_clock_reads_no_earlier_than_the_point_a_test_moved_it_to(tmp_path, monkeypatch):
    moved = tmp_path / "clock"
    monkeypatch.setenv("ATMOS_TEST_CLOCK", str(moved))
    before = time.time_ns()
    assert before <= clock.now_ns() <= time.time_ns()  # no file yet: the real clock
    moved.write_text(str(before + 3600 * 10**9))
    assert clock.now_ns() == before + 3600 * 10**9
    monkeypatch.setenv("ATMOS_TEST_CLOCK", str(before + 60 * 10**9))  # the number itself
    assert clock.now_ns() == before + 60 * 10**9
    monkeypatch.setenv("ATMOS_TEST_CLOCK", "1")  # long past: time goes on at its own pace
    assert clock.now_ns() >= before


def test_settle_trusts_what_was_written_before_it_and_nothing_after(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "old.txt").write_text("old\n")
    early = FileDigester(str(tmp_path))
    early.tree("src")
    assert not early.trees["src"][0], "just written: too new to trust"
    settle()
    settled = FileDigester(str(tmp_path))
    settled.tree("src")
    assert settled.trees["src"][0], "written before settle(): trusted"
    (tmp_path / "src" / "new.txt").write_text("new\n")
    fresh = FileDigester(str(tmp_path))
    fresh.tree("src")
    assert not fresh.trees["src"][0], "written after settle(): too new to trust"


@pytest.mark.parametrize("window, trusted", [("0", True), ("3600", False)])
def test_the_racy_window_is_a_setting(tmp_path, monkeypatch, window, trusted):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a\n")
    settle()  # settled for the default window of 2 s ...
    monkeypatch.setenv("ATMOS_RACY_WINDOW", window)
    digester = FileDigester(str(tmp_path))
    digester.tree("src")
    assert digester.trees["src"][0] is trusted  # ... and for 0 s, not for an hour


def test_a_bad_racy_window_is_bad_input(ws):
    ws.write("app/deployment.yaml", json.dumps(
        {"deployment": {"targets": {"dev": {}}, "components": {"command": {"a": {"run": RECORD}}}}}))
    proc = ws.run("rollout", "//app:dev", env={"ATMOS_RACY_WINDOW": "soon"})
    assert proc.returncode == 2 and proc.stderr.startswith("error: ATMOS_RACY_WINDOW")
    assert "Traceback" not in proc.stderr and ran(ws) == []


def test_forked_stat_helpers_are_reaped_when_the_parent_raises(tmp_path):
    """changed_in shares a big check with forked helpers; if this process
    raises while they run (here: a path it cannot even stat), every helper
    is waited for: no zombie, no open pipe is left behind."""
    paths = []
    for i in range(400):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x")
        paths.append(str(path))
    sigs = [signature(os.lstat(p)) for p in paths]
    paths[0] = str(tmp_path / "bad\0name")  # this process's own share raises ValueError
    fds_before = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(ValueError):
        changed_in([(paths, sigs, False)], workers=3)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no child left, reaped or not
    if fds_before is not None:
        assert len(os.listdir("/proc/self/fd")) <= len(fds_before)  # the pipes are closed


# -- the code stamp ---------------------------------------------------------------------

def test_changing_any_module_of_atmosbuild_invalidates_the_caches(tmp_path):
    """The structure cache once listed the modules that shape it by hand and
    missed components/*.py: a new `version` of a type still planned as
    cached. Now the whole package stamps every cache. A copy of the package
    is edited the way a checkout between releases would."""
    code = tmp_path / "code"
    shutil.copytree(REPO / "atmosbuild", code / "atmosbuild",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "grammar", code / "grammar", ignore=shutil.ignore_patterns("__pycache__"))
    root = tmp_path / "ws"
    (root / "app").mkdir(parents=True)
    (root / "atmos.yaml").write_text("{}\n")
    (root / "app" / "deployment.yaml").write_text(json.dumps(
        {"deployment": {"targets": {"dev": {}}, "components": {"command": {"a": {"run": "true"}}}}}))

    def cli(*args):
        env = {**os.environ, "PYTHONPATH": str(code)}
        return subprocess.run([sys.executable, "-m", "atmosbuild", "-C", str(root), *args],
                              env=env, cwd=code, capture_output=True, text=True, timeout=120)

    assert cli("rollout", "//app:dev").returncode == 0
    assert list((root / ".atmos" / "cache").glob("structure-*"))
    assert " cached " in cli("plan", "//app:dev").stdout
    command = code / "atmosbuild" / "components" / "command.py"
    command.write_text(command.read_text().replace('version = "1"', 'version = "2"'))
    plan = cli("plan", "//app:dev")
    assert plan.returncode == 0, plan.stderr
    assert "command/a  run     component type version changed command/1 → command/2" in plan.stdout
