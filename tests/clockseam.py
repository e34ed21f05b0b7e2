"""The test side of atmosbuild's clock seam (atmosbuild/clock.py).

atmosbuild trusts a file's stat signature only once it is older than the
racy window (2 s). Instead of sleeping that long, a test *moves the clock*:
`settle()` sets the point the clock atmosbuild reads can be no earlier than
(the file named by ATMOS_TEST_CLOCK, which conftest sets for the whole
session) to just past the window after now. Everything written before the
call is then settled, everything written after it is as new as ever — the
same as waiting 2 s, without the wait.

Also a script, so that an action of a rollout can move the clock while the
rollout runs: `python tests/clockseam.py CLOCK_FILE`.
"""

from __future__ import annotations

import os
import sys
import time


def window_ns() -> int:
    text = os.environ.get("ATMOS_RACY_WINDOW")
    return int(float(text) * 1e9) if text else 2_000_000_000


def settle(clock: str | None = None) -> None:
    """Everything written so far has settled, by the clock atmosbuild reads."""
    clock = clock or os.environ["ATMOS_TEST_CLOCK"]
    now = time.time_ns()
    tmp = f"{clock}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(str(now + window_ns() + 1))
    os.replace(tmp, clock)
    # File timestamps come from the kernel's coarse clock, which can lag
    # time.time_ns() by a tick: wait (a few ms) until it has passed `now`,
    # so that whatever is written from here on is newer than the point
    # everything before it settled at.
    probe = f"{clock}.probe"
    while True:
        with open(probe, "w"):
            pass
        if os.stat(probe).st_mtime_ns > now:
            return
        time.sleep(0.001)


if __name__ == "__main__":
    settle(sys.argv[1] if len(sys.argv) > 1 else None)
