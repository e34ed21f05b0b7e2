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
    if os.geteuid() == 0:
        pytest.skip("root may signal every process")
    assert alive(1)  # init: not ours to signal, but it runs
