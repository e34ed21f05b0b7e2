"""The deployment lock (SPEC 6): one rollout per deployment+target, held
until every action it started has exited, and a message naming the holder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from atmosbuild.errors import LockedError
from atmosbuild.run.lock import deployment_lock, describe_holder, held_locks


def test_a_process_that_inherited_the_lock_keeps_it_held_after_the_holder_let_go(tmp_path):
    state = str(tmp_path)
    with deployment_lock(state, "app", "dev", "//app:dev") as held:
        assert held.fds and min(held.fds) >= 64  # out of the way of a script's `exec 3>…`
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE, pass_fds=held.fds)
        held.note_running({"command/a": child.pid, "command/b": 0})
    try:
        assert held_locks(state) == ["app@dev"], "the lock went with its first holder"
        with pytest.raises(LockedError) as err:
            with deployment_lock(state, "app", "dev", "//app:dev"):
                pass
        message = str(err.value)
        assert f"locked by pid {os.getpid()} " in message
        assert f"running command/a (pid {child.pid}), command/b (starting)" in message
    finally:
        child.communicate(b"", timeout=10)
    assert held_locks(state) == []
    with deployment_lock(state, "app", "dev", "//app:dev"):
        assert held_locks(state) == ["app@dev"]


def test_the_lock_is_not_inherited_by_processes_not_given_it(tmp_path):
    state = str(tmp_path)
    with deployment_lock(state, "app", "dev", "//app:dev"):
        child = subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=False)
        assert child.stdout.readline() == b"up\n"  # it runs: exec closed what it was not given
    try:
        assert held_locks(state) == []
    finally:
        child.communicate(b"", timeout=10)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_message_says_when_the_holder_died_and_its_actions_still_run():
    pid = dead_pid()
    text = f"pid {pid} (started 2026-12-01 09:00:00, //app:dev)\nrunning: terraform/db (pid 4242)\n"
    assert describe_holder(text) == (
        f"pid {pid} (started 2026-12-01 09:00:00, //app:dev), which has exited, "
        "but actions it started still run: terraform/db (pid 4242)")
    lonely = describe_holder(f"pid {pid} (started 2026-12-01 09:00:00, //app:dev)\n")
    assert lonely.endswith("which has exited, but actions it started still run: "
                           "a process it started (it keeps the lock file open)")
    alive = f"pid {os.getpid()} (started 2026-12-01 09:00:00, //app:dev)\n"
    assert describe_holder(alive) == alive.strip()
    assert describe_holder("") == "another rollout"
