"""The process runner without the Linux-only functions it prefers.

`os.waitid` is missing on macOS before Python 3.13 (the project supports
3.11) and `os.pidfd_open` everywhere but Linux. The runner falls back to
reaping the leader with waitpid and polling for its exit; these tests run
the whole process-runner suite (tests/test_process.py) in an interpreter
from which both functions were deleted at start-up, before atmosbuild was
imported (tests/remove_functions/sitecustomize.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

REMOVED = "os.waitid os.pidfd_open"


def without_linux_functions() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "remove_functions"), str(REPO),
                                         env.get("PYTHONPATH", "")])
    env["ATMOS_TEST_REMOVE"] = REMOVED
    return env


def test_the_interpreter_really_lacks_waitid_and_pidfd_open():
    probe = ("import os, atmosbuild.run.step, atmosbuild.run.process; "
             "print(hasattr(os, 'waitid'), hasattr(os, 'pidfd_open'))")
    out = subprocess.run([sys.executable, "-c", probe], env=without_linux_functions(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_the_process_runner_passes_its_tests_without_waitid_and_pidfd_open():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_process.py", "-q", "-p", "no:cacheprovider",
         "-o", "addopts="],
        cwd=REPO, env=without_linux_functions(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary


def test_rollouts_stop_time_out_and_keep_the_lock_without_waitid_and_pidfd_open():
    """End to end through the CLI (its processes inherit the same start-up):
    Ctrl-C, a timeout, a leftover background child, kill -9 and the lock."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_rollout.py", "tests/test_robustness.py", "-q",
         "-p", "no:cacheprovider", "-o", "addopts=", "-k", "sigint or timeout or background_child or kill_9"],
        cwd=REPO, env=without_linux_functions(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("5 passed"), summary
