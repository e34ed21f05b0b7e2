"""Whether a process runs: one answer for the local lock (run/lock.py) and
the shared store's lock holder (state/postgres.py), which both say "the
holder has exited, but actions it started still run"."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether `pid` runs on this machine (a zombie counts as dead: it has
    exited, only its parent has not reaped it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # somebody else's: it runs
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we can tell
