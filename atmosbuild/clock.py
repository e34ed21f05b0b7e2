"""The one wall clock that time checks on files read, and the racy window.

A stat signature is trusted only once the file has *settled*: it changed
more than the racy window before the pass that reads it (see state/files.py).
Both checks ask this module, so tests move the clock instead of sleeping:

- `ATMOS_TEST_CLOCK`: the clock reads no earlier than a given point (ns since
  the epoch), either the number itself or the path of a file holding it (read
  on every call, so a test — or an action it runs — can move the clock while
  a rollout runs). Time then goes on at its own pace from whichever is later.
  A test seam: nothing sets it in normal use.
- `ATMOS_RACY_WINDOW`: the window in seconds (default 2). Timestamps on some
  filesystems are coarser than on ext4 or APFS (FAT: 2 s; some network
  filesystems cache attributes for longer): widen it there.
"""

from __future__ import annotations

import os
import time

RACY_WINDOW_S = 2.0


def now_ns() -> int:
    real = time.time_ns()
    moved = os.environ.get("ATMOS_TEST_CLOCK")
    if not moved:
        return real
    try:
        if moved[:1].isdigit():
            floor = int(moved)
        else:
            with open(moved, encoding="ascii") as fh:
                floor = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return real
    return max(real, floor)


def racy_window_ns() -> int:
    text = os.environ.get("ATMOS_RACY_WINDOW")
    if not text:
        return int(RACY_WINDOW_S * 1e9)
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 1e6:
        from .errors import UsageError

        raise UsageError(f"ATMOS_RACY_WINDOW must be a number of seconds >= 0, got {text!r}")
    return int(seconds * 1e9)
