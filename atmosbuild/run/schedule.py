"""The two schedulers, waves and eager: one loop, two admission policies.

Pure: no subprocess, no clock, no threads. `execute` drives a `Runner`
(events.py) and asks the caller, through `needs_run`, whether each node is up
to date; the rebuilder (keys, state store) is the caller's business.

Life of a node:

    pending --(deps done, policy admits it)--> needs_run(node)?
        False: cached   (no slot; its dependents may become ready at once)
        True:  queued --(a slot is free)--> running --(Finished)--> final

The policies differ only in when a ready node is *admitted* (needs_run asked):

- waves (`_Waves`): wave k+1 is admitted once every node of wave k has a final
  status. A node whose deps finished early still waits for its wave.
- eager (`_Eager`): a node is admitted the moment its last dependency is done.

Queued nodes wait in one heap ordered by (priority descending, id), so both
policies start in a deterministic order and eager never leaves a slot idle
while a node is ready. Everything is linear in nodes + edges (times log n for
the heap): a 50,000-node graph schedules in about a second of CPU, fake
runner included (tests/test_schedule.py::test_50k_nodes_schedule_fast).

Failure (failed, timeout, or a cancel nobody asked for):
- fail-fast: start and admit nothing more, stop the running *build*-mode
  nodes (once), let the running *apply*-mode ones finish (stopping
  `terraform apply` half-way taints resources; SPEC 6), drain; pending nodes
  end `skipped`.
- keep-going: everything downstream of the failure ends `skipped` right away;
  the rest carries on.
Interrupt: start and admit nothing more, `stop(running, signum)` once, drain;
pending nodes end `cancelled`.

Exceptions raised by `needs_run`, the hooks or the runner propagate unchanged;
whatever still runs is then the runner's to clean up.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Literal, Mapping, NamedTuple, Sequence

from atmosbuild.graph.dag import Dag, critical_path
from atmosbuild.run.events import (
    CANCELLED,
    SUCCEEDED,
    TIMEOUT,
    FAILED,
    Finished,
    InterruptRequested,
    Runner,
)

__all__ = [
    "POLICIES", "STATUSES", "RESULTS", "Policy", "APPLY", "BUILD",
    "ScheduleHooks", "NodeOutcome", "ScheduleOutcome", "execute", "priorities",
]

Policy = Literal["waves", "eager"]
# A node's mode (SPEC 4), as far as scheduling cares: on fail-fast a running
# build-mode node is stopped, a running apply-mode node is left to finish.
# The same strings as the component types' modes (the scheduler imports no
# component code; tests/test_schedule.py checks they agree).
APPLY = "apply"
BUILD = "build"
POLICIES: tuple[str, ...] = ("waves", "eager")

# Final statuses of a node (SPEC 7, --report) and overall results.
CACHED = "cached"
SKIPPED = "skipped"
STATUSES = (SUCCEEDED, CACHED, FAILED, SKIPPED, CANCELLED)
RESULTS = ("success", "failure", "interrupted")

# Transient states, never in an outcome.
_PENDING = "pending"
_QUEUED = "queued"
_RUNNING = "running"


class ScheduleHooks:
    """What a schedule reports as it goes; override what you need (all no-ops).

    Called synchronously from the scheduling loop, in event order.
    """

    def wave_started(self, index: int, total: int, nodes_to_run: Sequence[str]) -> None:
        """waves only: wave `index` of `total` opens; `nodes_to_run` in start order.

        Not called for a wave in which nothing runs (all cached or skipped).
        Every needs_run of the wave has been asked by now; its node_cached
        calls follow right after this one."""

    def node_started(self, node: str) -> None:
        """`node` is about to start (called just before runner.start)."""

    def node_cached(self, node: str) -> None:
        """needs_run(node) said no: `node` is done without running."""

    def node_finished(self, finished: Finished) -> None:
        """A started node reported, any status. Called the moment the event
        arrives, before any dependent is admitted or anything starts: record
        successes to the store here."""

    def node_skipped(self, node: str, reason: str) -> None:
        """`node` will never run: a failure upstream, or fail-fast."""

    def failing_fast(self, reason: str, stopped: Sequence[str], finishing: Sequence[str]) -> None:
        """fail-fast halted the schedule (`reason`: "X failed"): `stopped`
        build-mode nodes were asked to stop, `finishing` apply-mode nodes are
        left to finish. Called once, after the skips."""


class NodeOutcome(NamedTuple):  # (a tuple: one per node, built at the end of every rollout)
    status: str  # one of STATUSES
    reason: str = ""  # set for failed, skipped and cancelled nodes
    finished: Finished | None = None  # the runner's event, for nodes that ran


@dataclass(frozen=True)
class ScheduleOutcome:
    nodes: Mapping[str, NodeOutcome]  # every node of the dag, in dag.order
    started: tuple[str, ...]  # start order
    interrupted: bool
    result: str  # one of RESULTS

    def with_status(self, status: str) -> tuple[str, ...]:
        """The nodes that ended with `status`, in dag order."""
        return tuple(n for n, o in self.nodes.items() if o.status == status)

    def counts(self) -> dict[str, int]:
        """status -> number of nodes, every status present (for the summary)."""
        counts = dict.fromkeys(STATUSES, 0)
        for o in self.nodes.values():
            counts[o.status] += 1
        return counts


def priorities(
    dag: Dag, policy: Policy, parallelism: int, durations: Mapping[str, float | None]
) -> dict[str, float]:
    """The start order of queued nodes (SPEC 6) from recorded durations
    (None: never recorded).

    waves: behind a wave barrier only the wave's own durations matter, so
    above -j1 a wave starts longest first (LPT), unknown durations count as
    1 s, ties go by id; at -j1 order cannot shorten the wave, so it is by id
    and a serial log reads the same from run to run. eager: the longest
    remaining path (weighted by those durations) first, then id.
    """
    if policy == "waves" and parallelism == 1:
        return {}
    weights = {n: (max(d, 0.001) if d is not None else 1.0) for n, d in durations.items()}
    if policy == "waves":
        return weights
    return critical_path(dag, weights)


def execute(
    dag: Dag,
    runner: Runner,
    *,
    policy: Policy,
    parallelism: int,
    needs_run: Callable[[str], bool],
    keep_going: bool = False,
    priority: Mapping[str, float] | None = None,
    hooks: ScheduleHooks | None = None,
    modes: Mapping[str, str] | None = None,
) -> ScheduleOutcome:
    """Run `dag` through `runner` under `policy`, at most `parallelism` at once.

    `needs_run(node)` is asked exactly once per admitted node, only after all
    its dependencies succeeded or were cached. `priority` orders queued nodes
    (higher first, then by id); absent, the unit-weight critical path is used,
    nodes missing from it count as 0. `modes` maps nodes to APPLY or BUILD;
    a node missing from it (or every node, without it) counts as BUILD.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown schedule policy {policy!r}; expected one of {POLICIES}")
    if parallelism < 1:
        raise ValueError(f"parallelism must be at least 1, got {parallelism}")
    run = _Run(
        dag, runner, parallelism, needs_run, keep_going,
        critical_path(dag) if priority is None else priority,
        hooks or ScheduleHooks(), modes or {},
    )
    run.policy = _Waves(run) if policy == "waves" else _Eager(run)
    return run.execute()


class _Run:
    """The state of one schedule. The policy decides admission, nothing else."""

    policy: _Waves | _Eager

    def __init__(self, dag, runner, parallelism, needs_run, keep_going, priority, hooks, modes):
        self.dag = dag
        self.runner = runner
        self.parallelism = parallelism
        self.needs_run = needs_run
        self.keep_going = keep_going
        self.priority = priority
        self.hooks = hooks
        self.modes = modes

        self.state: dict[str, str] = dict.fromkeys(dag.order, _PENDING)
        self.reason: dict[str, str] = {}
        self.events: dict[str, Finished] = {}
        self.missing = {n: len(dag.deps[n]) for n in dag.order}  # deps not yet done
        self.unsettled = [len(w) for w in dag.waves]  # per wave: nodes not yet final
        self.queue: list[tuple[float, str]] = []  # heap of (-priority, node)
        self.running: dict[str, None] = {}  # an insertion-ordered set
        self.started: list[str] = []
        self.halted = False  # fail-fast or interrupt: admit and start nothing more
        self.halt_reason = ""  # why a node stopped by the halt came back cancelled
        self.failed = False
        self.interrupted = False

    # -- the loop ----------------------------------------------------------

    def execute(self) -> ScheduleOutcome:
        self.policy.advance()
        self.fill_slots()
        while self.running:
            event = self.runner.wait()
            if isinstance(event, InterruptRequested):
                self.on_interrupt(event)
                continue
            self.on_finished(event)
            if not self.halted:
                self.policy.advance()
                self.fill_slots()
        return self.outcome()

    def fill_slots(self) -> None:
        while self.queue and len(self.running) < self.parallelism and not self.halted:
            _, node = heapq.heappop(self.queue)
            if self.state[node] != _QUEUED:  # skipped while it waited
                continue
            self.state[node] = _RUNNING
            self.running[node] = None
            self.started.append(node)
            self.hooks.node_started(node)
            self.runner.start(node)

    # -- admission (called by the policies) ---------------------------------

    def sort_key(self, node: str) -> tuple[float, str]:
        return (-self.priority.get(node, 0.0), node)

    def ask(self, node: str) -> bool:
        """needs_run(node); if not, the node is cached (hook not yet called)."""
        assert self.state[node] == _PENDING and not self.missing[node], node
        if self.needs_run(node):
            self.state[node] = _QUEUED
            heapq.heappush(self.queue, self.sort_key(node))
            return True
        self.settle(node, CACHED)
        return False

    def done_ok(self, node: str) -> None:
        """`node` succeeded or was cached: its dependents lose one missing dep."""
        missing, state = self.missing, self.state  # hot: once per edge
        for m in self.dag.dependents[node]:
            missing[m] -= 1
            if not missing[m] and state[m] == _PENDING:
                self.policy.became_ready(m)

    def settle(self, node: str, status: str, reason: str = "") -> None:
        self.state[node] = status
        if reason:
            self.reason[node] = reason
        self.unsettled[self.dag.wave_of[node] - 1] -= 1

    # -- events ------------------------------------------------------------

    def on_finished(self, event: Finished) -> None:
        node = event.node
        if node not in self.running:
            raise RuntimeError(f"runner reported {node!r}, which is not running")
        del self.running[node]
        self.events[node] = event
        status, reason, failure = self.classify(event)
        self.settle(node, status, reason)
        self.hooks.node_finished(event)
        if status == SUCCEEDED:
            self.done_ok(node)
        elif failure:
            self.on_failure(node, failure)

    def classify(self, event: Finished) -> tuple[str, str, str]:
        """(final status, reason, verb naming the failure for others or '')."""
        message = event.message
        if event.status == SUCCEEDED:
            return SUCCEEDED, "", ""
        if event.status == TIMEOUT:
            if not message.startswith("timed out"):
                message = f"timed out ({message})" if message else "timed out"
            return FAILED, message, "timed out"
        if event.status == FAILED:
            if not message:
                message = "failed" if event.exit_code is None else f"exit code {event.exit_code}"
            return FAILED, message, "failed"
        if event.status == CANCELLED:
            if self.halted:  # we asked for it
                return CANCELLED, self.halt_reason, ""
            return CANCELLED, message or "cancelled by the runner", "was cancelled"
        return FAILED, f"runner reported status {event.status!r}", "failed"

    def on_failure(self, node: str, verb: str) -> None:
        self.failed = True
        self.skip(self.unstarted_downstream(node), f"dependency {node} {verb}")
        if self.keep_going or self.halted:
            return
        self.halt(f"stopped: {node} {verb}")
        self.skip(self.dag.order, f"not started: {node} {verb}")
        # Apply-mode nodes finish and are recorded as usual: only build-mode
        # work is safe to throw away half-way.
        stoppable = tuple(n for n in self.running if self.modes.get(n, BUILD) == BUILD)
        if stoppable:
            self.runner.stop(stoppable)
        finishing = tuple(n for n in self.running if n not in stoppable)
        self.hooks.failing_fast(f"{node} {verb}", stoppable, finishing)

    def on_interrupt(self, event: InterruptRequested) -> None:
        if self.interrupted:  # stop once; the runner escalates on its own
            return
        self.interrupted = True
        self.halt("interrupted")
        for node in self.dag.order:
            if self.state[node] in (_PENDING, _QUEUED):
                self.settle(node, CANCELLED, "interrupted before it started")
        if self.running:
            self.runner.stop(tuple(self.running), event.signum)

    def halt(self, reason: str) -> None:
        if not self.halted:  # the first cause explains the cancels
            self.halted = True
            self.halt_reason = reason

    def unstarted_downstream(self, node: str) -> list[str]:
        """The not-yet-started nodes downstream of `node`.

        The walk stops at nodes already final: whatever depends on a skipped
        node was skipped with it, so several failures cost linear time in all.
        """
        found: set[str] = set()
        stack = [node]
        while stack:
            for m in self.dag.dependents[stack.pop()]:
                if m not in found and self.state[m] in (_PENDING, _QUEUED):
                    found.add(m)
                    stack.append(m)
        return list(found)

    def skip(self, nodes, reason: str) -> None:
        """Skip those of `nodes` that have not started; hooks in (wave, id) order."""
        wave_of = self.dag.wave_of
        doomed = [n for n in nodes if self.state[n] in (_PENDING, _QUEUED)]
        doomed.sort(key=lambda n: (wave_of[n], n))
        for n in doomed:
            self.settle(n, SKIPPED, reason)
            self.hooks.node_skipped(n, reason)

    def outcome(self) -> ScheduleOutcome:
        left = [n for n, s in self.state.items() if s in (_PENDING, _QUEUED, _RUNNING)]
        assert not left, f"schedule ended with unfinished nodes: {left[:5]}"
        state, reason, event = self.state, self.reason.get, self.events.get
        nodes = {n: NodeOutcome(state[n], reason(n, ""), event(n)) for n in self.dag.order}
        if self.interrupted:
            result = "interrupted"
        else:
            result = "failure" if self.failed else "success"
        return ScheduleOutcome(
            nodes=MappingProxyType(nodes),
            started=tuple(self.started),
            interrupted=self.interrupted,
            result=result,
        )


class _Eager:
    """Admit each node the moment its last dependency is done."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        roots = [n for n in run.dag.order if not run.dag.deps[n]]
        self.ready = deque(sorted(roots, key=run.sort_key))

    def became_ready(self, node: str) -> None:
        self.ready.append(node)

    def advance(self) -> None:
        # A worklist, not recursion: a long chain of cached nodes cascades here.
        run = self.run
        while self.ready and not run.halted:
            node = self.ready.popleft()
            if run.state[node] == _PENDING and not run.ask(node):
                run.hooks.node_cached(node)
                run.done_ok(node)


class _Waves:
    """Admit wave k+1 once every node of wave k has a final status."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.opened = 0  # waves admitted so far

    def became_ready(self, node: str) -> None:
        pass  # it waits for its wave

    def advance(self) -> None:
        run, waves = self.run, self.run.dag.waves
        while (
            not run.halted
            and self.opened < len(waves)
            and (self.opened == 0 or not run.unsettled[self.opened - 1])
        ):
            self.opened += 1
            self.open(self.opened, waves[self.opened - 1])

    def open(self, index: int, wave: Sequence[str]) -> None:
        run = self.run
        pending = sorted((n for n in wave if run.state[n] == _PENDING), key=run.sort_key)
        to_run = [n for n in pending if run.ask(n)]
        if to_run:
            run.hooks.wave_started(index, len(run.dag.waves), to_run)
        for n in pending:
            if run.state[n] == CACHED:
                run.hooks.node_cached(n)
                run.done_ok(n)
