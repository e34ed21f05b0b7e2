"""Test doubles of our own seams: a fake clock and a fake Runner.

`FakeRunner` implements the Runner protocol (atmosbuild/run/events.py) on a
`FakeClock`: nothing sleeps, each node simply takes `durations[node]` units of
fake time. It checks the protocol as it goes (wait() with nothing running,
starting a node that runs, stopping one that does not) by raising
AssertionError, and records everything in `log` so tests can replay a
schedule: concurrency, start times, what happened after a failure.

    clock = FakeClock()
    runner = FakeRunner({"a": 2, "b": 1}, failures={"b"}, clock=clock)
    outcome = execute(dag, runner, policy="eager", parallelism=2, needs_run=...)
    runner.max_running, runner.start_times, clock.now
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any, Collection, Mapping, NamedTuple, Sequence

from atmosbuild.run.events import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    TIMEOUT,
    Event,
    Finished,
    InterruptRequested,
)

SIGINT = 2


class FakeClock:
    """Time that moves only when told to. Call it for the current time."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance_to(self, t: float) -> None:
        if t < self.now:
            raise AssertionError(f"fake clock cannot go back from {self.now} to {t}")
        self.now = t

    def advance(self, dt: float) -> None:
        self.advance_to(self.now + dt)


class LogEntry(NamedTuple):
    """One thing that happened. `detail` by kind:

    start: None | wait: frozenset of running nodes at the call |
    finish: the Finished event returned | interrupt: signum |
    stop: (nodes, signum). Tests may append their own kinds (hooks...).
    """

    kind: str
    time: float
    node: str | None = None
    detail: Any = None


class FakeRunner:
    """A Runner whose nodes take `durations[node]` fake seconds (default 1).

    - `failures` finish with status failed (exit code 1), `timeouts` with
      status timeout; the others succeed with value `outputs.get(node)`.
    - wait() advances the clock to the earliest finishing node and returns its
      Finished; ties go to the node started first.
    - stop(nodes, signum) cancels those nodes now: their Finished (status
      cancelled, finished = now) come from the next wait() calls, before
      anything else. Nodes in `ignores_stop` keep running and finish normally.
    - setup(**kwargs) and teardown() do nothing but count (`setups` keeps
      each call's arguments, `teardowns` the number of calls).
    - `interrupt_at` (a time or several): wait() returns
      InterruptRequested(interrupt_signum) once per time, when the clock would
      reach or pass it.
    """

    def __init__(
        self,
        durations: Mapping[str, float],
        failures: Collection[str] = (),
        clock: FakeClock | None = None,
        *,
        timeouts: Collection[str] = (),
        outputs: Mapping[str, Any] | None = None,
        interrupt_at: float | Sequence[float] | None = None,
        interrupt_signum: int = SIGINT,
        ignores_stop: Collection[str] = (),
        default_duration: float = 1.0,
    ) -> None:
        self.durations = durations
        self.failures = frozenset(failures)
        self.timeouts = frozenset(timeouts)
        self.outputs = outputs or {}
        self.clock = clock or FakeClock()
        if interrupt_at is None:
            interrupt_at = ()
        elif isinstance(interrupt_at, (int, float)):
            interrupt_at = (interrupt_at,)
        self._interrupts = deque(sorted(interrupt_at))  # times still to deliver
        self.interrupt_signum = interrupt_signum
        self.ignores_stop = frozenset(ignores_stop)
        self.default_duration = default_duration

        # History, for assertions.
        self.log: list[LogEntry] = []
        self.starts: list[tuple[str, float]] = []  # (node, time), in start order
        self.finishes: list[Finished] = []  # in delivery order
        self.stops: list[tuple[float, tuple[str, ...], int | None]] = []
        self.max_running = 0
        self.interrupts = 0  # delivered so far
        self.setups: list[dict] = []  # setup(**kwargs) calls
        self.teardowns = 0

        # Protocol view: started and Finished not yet delivered.
        self._started_at: dict[str, float] = {}
        self._run_id: dict[str, int] = {}  # node -> seq of its current run
        self._due: list[tuple[float, int, str]] = []  # heap (finish time, seq, node)
        self._cancelled: deque[str] = deque()  # stopped, to deliver next
        self._seq = 0

    # -- the Runner protocol --------------------------------------------------

    def setup(self, **kwargs: Any) -> None:
        self.setups.append(kwargs)  # nothing to get ready: fake actions spawn nothing

    def teardown(self) -> None:
        self.teardowns += 1

    def start(self, node: str) -> None:
        if node in self._started_at:
            raise AssertionError(f"start({node!r}) while it is running")
        now = self.clock.now
        self._started_at[node] = now
        self._seq += 1
        self._run_id[node] = self._seq
        heapq.heappush(self._due, (now + self.duration(node), self._seq, node))
        self.starts.append((node, now))
        self.log.append(LogEntry("start", now, node))
        self.max_running = max(self.max_running, len(self._started_at))

    def wait(self) -> Event:
        if not self._started_at:
            raise AssertionError("wait() called with nothing running")
        self.log.append(LogEntry("wait", self.clock.now, None, frozenset(self._started_at)))
        next_time = self.clock.now if self._cancelled else self._next_due()[0]
        if self._interrupts and self._interrupts[0] <= next_time:
            self.interrupts += 1
            self.clock.advance_to(max(self.clock.now, self._interrupts.popleft()))
            self.log.append(LogEntry("interrupt", self.clock.now, None, self.interrupt_signum))
            return InterruptRequested(self.interrupt_signum)
        if self._cancelled:
            node = self._cancelled.popleft()
            event = self._finished(node, CANCELLED, exit_code=None, message="cancelled")
        else:
            t, _, node = heapq.heappop(self._due)
            self.clock.advance_to(t)
            event = self._finished(node, *self._verdict(node))
        self.finishes.append(event)
        self.log.append(LogEntry("finish", self.clock.now, node, event))
        return event

    def stop(self, nodes: Collection[str], signum: int | None = None) -> None:
        nodes = tuple(nodes)
        self.stops.append((self.clock.now, nodes, signum))
        self.log.append(LogEntry("stop", self.clock.now, None, (nodes, signum)))
        for node in nodes:
            if node not in self._started_at:
                raise AssertionError(f"stop({node!r}) but it is not running")
            if node in self.ignores_stop or node in self._cancelled:
                continue
            self._cancelled.append(node)

    # -- history helpers ----------------------------------------------------------

    @property
    def running(self) -> frozenset[str]:
        """Started and not yet reported by wait()."""
        return frozenset(self._started_at)

    @property
    def start_times(self) -> dict[str, float]:
        return {node: t for node, t in self.starts}

    @property
    def finish_times(self) -> dict[str, float]:
        return {f.node: f.finished for f in self.finishes}

    @property
    def started_order(self) -> list[str]:
        return [node for node, _ in self.starts]

    def duration(self, node: str) -> float:
        return float(self.durations.get(node, self.default_duration))

    # -- internals ---------------------------------------------------------------

    def _next_due(self) -> tuple[float, int, str]:
        while True:
            _, seq, node = self._due[0]
            if node in self._started_at and self._run_id[node] == seq and node not in self._cancelled:
                return self._due[0]
            heapq.heappop(self._due)  # stopped: its cancel is delivered instead

    def _verdict(self, node: str) -> tuple[str, int | None, str]:
        if node in self.timeouts:
            return TIMEOUT, None, f"timed out after {self.duration(node):g} s"
        if node in self.failures:
            return FAILED, 1, "exit code 1"
        return SUCCEEDED, 0, ""

    def _finished(self, node: str, status: str, exit_code: int | None, message: str) -> Finished:
        started = self._started_at.pop(node)
        return Finished(
            node=node,
            status=status,
            started=started,
            finished=self.clock.now,
            exit_code=exit_code,
            message=message,
            value=self.outputs.get(node) if status == SUCCEEDED else None,
        )


class FakeRunnerFactory:
    """A `Rollout(runner_factory=...)` that hands out FakeRunners.

    Rollout calls `factory(spec_for, console, grace_period)` once per run; the
    FakeRunner built from `kwargs` ignores the real action specs and returns
    `outputs[node]` as each success's value (the component's outputs; None
    means none). `runners` keeps every runner handed out, newest last.

        factory = FakeRunnerFactory(outputs={"command/a": {"url": "x"}})
        Rollout(..., runner_factory=factory).run()
        factory.runners[-1].started_order
    """

    def __init__(self, durations: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        self.durations = durations or {}
        self.kwargs = kwargs
        self.runners: list[FakeRunner] = []

    def __call__(self, spec_for: Any, console: Any, grace_period: float = 0.0) -> FakeRunner:
        runner = FakeRunner(self.durations, **self.kwargs)
        self.runners.append(runner)
        return runner
