"""The state directory and `clean` (SPEC 7, 14): `state_dir` must be inside
the root and not the root; `clean` removes only what atmosbuild made, in a
directory it made (its marker), and holds every lock while it deletes.

These run the real CLI on real files; the lock race is watched through the
kernel's own table of locks (/proc/locks), so the watcher never takes one."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time

import pytest

from conftest import RECORD, ran, start_cli
from atmosbuild.fileops import MARKER
from atmosbuild.run.lock import lock_path

COMMANDS = [
    ("rollout", "//app:dev"), ("rollout", "//app:dev", "--dry-run"), ("plan", "//app:dev"),
    ("status", "//app:dev"), ("explain", "//app:dev", "command/a"), ("graph", "//app:dev"),
    ("validate",), ("clean", "--all"), ("clean", "--cache"), ("clean", "--workspaces"),
]


def _deployment(ws) -> None:
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "targets": {"dev": {}, "prod": {}},
        "components": {"command": {"a": {"source": "src/a", "run": RECORD}}}}}))
    ws.write("src/a/main.sh", "echo a\n")


def _tree(path) -> dict:
    """Every entry under `path` (links not followed) with its bytes or kind."""
    out = {}
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(base, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir",)
            else:
                with open(full, "rb") as fh:
                    out[rel] = fh.read()
    return out


def _bad_state_dirs(ws, outside):
    yield "root itself", ".", "is the workspace root itself"
    yield "root with a slash", "./", "is the workspace root itself"
    yield "root through a detour", "app/..", "is the workspace root itself"
    yield "root, absolute", str(ws.root), "is the workspace root itself"
    yield "filesystem root", "/", "resolves outside the workspace root"
    yield "parent", "..", "resolves outside the workspace root"
    yield "absolute elsewhere", str(outside / "state"), "resolves outside the workspace root"
    yield "beside the root", f"../{outside.name}/state", "resolves outside the workspace root"
    (ws.root / "escape").symlink_to(outside)
    yield "a link out", "escape/state", "resolves outside the workspace root"
    yield "a link out, itself", "escape", "resolves outside the workspace root"


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_a_state_dir_outside_the_root_or_equal_to_it_is_a_config_error_for_every_command(
        ws, tmp_path, command):
    _deployment(ws)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me\n")
    for name, state_dir, message in list(_bad_state_dirs(ws, outside)):
        settings = f"# workspace settings\nparallelism: 2\nstate_dir: {json.dumps(state_dir)}\n"
        ws.write("atmos.yaml", settings)
        before, before_outside = _tree(ws.root), _tree(outside)
        proc = ws.run(*command)
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        first = proc.stderr.splitlines()[0]
        assert re.match(r"error: .*atmos\.yaml:3:\d+: state_dir ", first), (name, proc.stderr)
        assert message in first, (name, first)
        assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
        assert _tree(ws.root) == before, f"{name}: the workspace changed"
        assert _tree(outside) == before_outside, f"{name}: outside the root changed"


def test_the_default_state_dir_may_not_be_a_link_out_of_the_root(ws, tmp_path):
    _deployment(ws)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (ws.root / ".atmos").symlink_to(outside)
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 2 and "state_dir '.atmos' resolves outside" in proc.stderr
    assert os.listdir(outside) == [] and ran(ws) == []


@pytest.mark.parametrize("state_dir", ["state", "var/atmos", "ABSOLUTE"])
def test_a_state_dir_inside_the_root_is_used_and_marked(ws, state_dir):
    _deployment(ws)
    if state_dir == "ABSOLUTE":
        state_dir = str(ws.root / "abs-state")
    ws.write("atmos.yaml", f"state_dir: {json.dumps(state_dir)}\n")
    assert ws.run("rollout", "//app:dev").returncode == 0
    state = ws.root / state_dir
    assert (state / "state.db").exists() and (state / MARKER).is_file()
    assert not (ws.root / ".atmos").exists()
    assert ws.run("rollout", "//app:dev").returncode == 0
    assert ran(ws) == ["command/a"]  # once: the second run was cached from that state


# -- clean --------------------------------------------------------------------------------

def _rolled_out(ws) -> None:
    _deployment(ws)
    proc = ws.run("rollout", "//app:dev", "--keep-workspace")
    assert proc.returncode == 0, proc.stderr
    ran(ws)
    # What the Terraform helper keeps there: state that maps real resources.
    ws.write(".atmos/tfstate/app/terraform/net/dev.tfstate", '{"serial": 7}\n')
    ws.write(".atmos/notes.txt", "the user's own file\n")


def test_clean_refuses_a_state_dir_atmosbuild_did_not_make(ws):
    """`state_dir: data` names the user's own directory: clean must not
    touch it, whatever names it holds."""
    _deployment(ws)
    ws.write("atmos.yaml", "state_dir: data\n")
    for name in ("workspaces/w/x.txt", "cache/c", "logs/l", "state.db", "vendor-cache/v", "keep.csv"):
        ws.write(f"data/{name}", "user data\n")
    before = _tree(ws.root)
    for flags in (["--all"], ["--cache"], ["--workspaces"], ["--all", "--terraform-state"]):
        proc = ws.run("clean", *flags)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
        assert f"no {MARKER} marker" in proc.stderr
        assert _tree(ws.root) == before


def test_clean_removes_only_what_each_flag_names_and_never_terraform_state_unasked(ws):
    _rolled_out(ws)
    state = ws.state
    assert ws.run("clean", "--workspaces").returncode == 0
    assert not (state / "workspaces").exists() and (state / "state.db").exists()

    proc = ws.run("clean", "--cache")
    assert proc.returncode == 0, proc.stderr
    for gone in ("state.db", "cache", "logs"):
        assert not (state / gone).exists(), gone
    assert (state / "tfstate/app/terraform/net/dev.tfstate").read_text() == '{"serial": 7}\n'

    assert ws.run("rollout", "//app:dev", "--keep-workspace").returncode == 0
    proc = ws.run("clean", "--all")
    assert proc.returncode == 0, proc.stderr
    assert "kept .atmos/tfstate/" in proc.stdout
    left = sorted(p.name for p in state.iterdir())
    assert left == [MARKER, "locks", "notes.txt", "tfstate"]
    assert (state / "notes.txt").read_text() == "the user's own file\n"
    assert (state / "tfstate/app/terraform/net/dev.tfstate").exists()

    proc = ws.run("clean", "--all", "--terraform-state")
    assert proc.returncode == 0, proc.stderr
    assert not (state / "tfstate").exists() and (state / "notes.txt").exists()
    assert ws.run("clean", "--all").returncode == 0  # the marker is still there: clean works again


def test_clean_never_follows_a_link_inside_the_state_dir(ws, tmp_path):
    _rolled_out(ws)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep\n")
    shutil.rmtree(ws.state / "logs")
    (ws.state / "logs").symlink_to(elsewhere)
    assert ws.run("clean", "--cache").returncode == 0
    assert not os.path.lexists(ws.state / "logs")
    assert (elsewhere / "precious.txt").read_text() == "keep\n"


def test_clean_with_nothing_there_creates_nothing(ws):
    _deployment(ws)
    proc = ws.run("clean", "--all")
    assert proc.returncode == 0 and "nothing to clean" in proc.stdout
    assert not ws.state.exists()


def test_a_held_lock_stops_clean_before_it_deletes_anything(ws):
    _rolled_out(ws)
    before = _tree(ws.state)
    fd = os.open(lock_path(str(ws.state), "app", "prod"), os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"pid 4242 (a rollout of //app:prod)\n")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for flags in (["--workspaces"], ["--cache"], ["--all"]):
            proc = ws.run("clean", *flags)
            assert proc.returncode == 3, proc.stdout + proc.stderr
            assert "pid 4242" in proc.stderr and "nothing removed" in proc.stderr
            assert proc.stderr.count("\n") == 1
    finally:
        os.close(fd)
    after = _tree(ws.state)
    assert {k: v for k, v in after.items() if not k.startswith("locks")} == \
        {k: v for k, v in before.items() if not k.startswith("locks")}


def _flocked_inodes() -> set[int]:
    """Inodes with a FLOCK lock, from the kernel's table (no lock taken to look)."""
    out = set()
    with open("/proc/locks") as fh:
        for line in fh:
            parts = line.split()
            if "FLOCK" in parts:
                out.add(int(parts[-3].split(":")[-1]))
    return out


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux /proc/locks")
def test_clean_holds_every_deployment_lock_while_it_deletes(ws):
    """The locks are held across the deletion, not checked before it: while
    the workspaces are still being removed, the lock of every target of the
    workspace is held (prod never ran, and has no lock file until clean)."""
    _rolled_out(ws)
    many = ws.state / "workspaces" / "deployment-big"
    for d in range(200):
        (many / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (many / f"d{d}" / f"f{f}").write_bytes(b"")
    proc = start_cli(ws, "clean", "--workspaces")
    seen_held_while_deleting = False
    try:
        while proc.poll() is None:
            paths = [lock_path(str(ws.state), "app", t) for t in ("dev", "prod")]
            if all(os.path.exists(p) for p in paths):
                inodes = {os.stat(p).st_ino for p in paths}
                held = _flocked_inodes()
                if inodes <= held and many.exists():
                    seen_held_while_deleting = True
                    break
            time.sleep(0.001)
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert seen_held_while_deleting
    assert not (ws.state / "workspaces").exists()
