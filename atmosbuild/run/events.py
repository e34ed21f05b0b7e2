"""The seam between the pure schedulers and whatever runs actions.

The schedulers (schedule.py) never touch processes or clocks: they call a
`Runner` to start a node and wait for the next event. The real runner
(process.py) runs subprocesses in their own process groups; tests drive the
schedulers with a fake runner and a fake clock (tests/fakes.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence, Union

# Terminal statuses of one action attempt, as a runner reports them.
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMEOUT = "timeout"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class Finished:
    """A started node has finished (after its retries, if any)."""

    node: str
    status: str  # SUCCEEDED | FAILED | TIMEOUT | CANCELLED
    started: float = 0.0
    finished: float = 0.0
    exit_code: int | None = None
    message: str = ""  # human detail: "exit code 2", "timed out after 300 s"
    value: Any = None  # what the action produced (its outputs), on success
    log_tail: tuple[str, ...] = field(default=(), compare=False)
    worker: str = ""  # where it ran, if not here (the Dask worker's address)

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED


@dataclass(frozen=True)
class InterruptRequested:
    """SIGINT/SIGTERM arrived: stop scheduling, stop what runs."""

    signum: int


Event = Union[Finished, InterruptRequested]


class Runner(Protocol):
    """What runs actions. The caller (rollout.py) calls setup() before the
    schedule and teardown() after it, whatever happened; the schedulers only
    start, wait and stop."""

    def setup(self, *, keep_fds: Sequence[int] = (),
              on_processes: Callable[[Mapping[str, int]], None] | None = None,
              on_remote: Callable[[str], None] | None = None) -> None:
        """Get ready to run: e.g. catch Ctrl-C. Every process an action runs
        inherits the descriptors `keep_fds` (the deployment locks, lock.py);
        `on_processes(node -> pid)` hears which action runs in which process
        (pid 0: a process of it is being spawned); `on_remote(where)` hears
        where actions run that cannot inherit them (a cluster's executor
        and this rollout's tasks; "" once none runs)."""

    def teardown(self) -> None:
        """The schedule is over: undo setup; nothing may be left running."""

    def start(self, node: str) -> None:
        """Begin running `node`; its Finished event comes later from wait()."""

    def wait(self) -> Event:
        """Block until the next event. Only called while something runs."""

    def stop(self, nodes: Collection[str], signum: int | None = None) -> None:
        """Ask running `nodes` to stop (their Finished events still come)."""
