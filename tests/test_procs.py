"""procs.alive: the one liveness check of both locks (run/lock.py, and the
PostgreSQL store's holder). A zombie has exited: its lock's message must say
so even before its parent reaps it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from atmosbuild.procs import alive


def test_a_running_process_is_alive_and_an_exited_one_is_not():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert alive(child.pid)
    finally:
        child.kill()
    child.wait()
    assert not alive(child.pid)
    assert alive(os.getpid())


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to tell a zombie")
def test_a_zombie_counts_as_exited():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(f"/proc/{child.pid}/stat") as fh:  # not reaped yet: still in the table
            assert fh.read().rsplit(")", 1)[1].split()[0] == "Z"
        assert not alive(child.pid)
    finally:
        child.wait()


def test_somebody_elses_process_is_alive():
    if os.geteuid() != 0:
        assert alive(1)  # init: not ours to signal, but it runs
        return
    # Root may signal every process: ask as `nobody` (kill(0) gets EPERM),
    # through the system's Python, which nobody can run (our venv may be private).
    import shutil

    import atmosbuild.procs as procs

    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    check = f"exec(open({procs.__file__!r}).read()); print(alive(1), alive({os.getpid()}))"
    proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           python, "-S", "-c", check], capture_output=True, text=True)
    if proc.returncode != 0 and ("nobody" in proc.stderr or "Permission denied" in proc.stderr):
        pytest.skip(f"cannot run a check as nobody: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]  # init and this test: both somebody else's
