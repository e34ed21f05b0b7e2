"""What a perfect scheduler could do with a DAG of known durations (pure).

The makespan scenario compares measured wall times with these numbers:

- lower_bound: no schedule on `slots` workers beats max(critical path,
  total work / slots).
- ideal_waves: the best the *waves* schedule (SPEC section 6) can do when
  each wave is list-scheduled greedily, in id order, on `slots` workers and
  waves run one after another: the sum of the per-wave makespans.
- ideal_eager: an event simulation of eager list scheduling that prefers the
  longest remaining path (what `--schedule eager` promises); usually within
  a few percent of lower_bound.

A graph here is `deps`: deps[i] lists the nodes i depends on, all < i
(generate.py only draws dependencies among earlier nodes).
"""

from __future__ import annotations

import heapq
from typing import Sequence

Deps = Sequence[Sequence[int]]


def wave_numbers(deps: Deps) -> list[int]:
    """Wave of each node, 1-based: 1 + the deepest dependency's wave."""
    wave = [0] * len(deps)
    for i, ds in enumerate(deps):
        wave[i] = 1 + max((wave[d] for d in ds), default=0)
    return wave


def waves(deps: Deps) -> list[list[int]]:
    numbers = wave_numbers(deps)
    out: list[list[int]] = [[] for _ in range(max(numbers, default=0))]
    for i, w in enumerate(numbers):
        out[w - 1].append(i)
    return out


def remaining_path(durations: Sequence[float], deps: Deps) -> list[float]:
    """Longest path from each node to the end of the graph, itself included."""
    rest = list(durations)
    for i in range(len(deps) - 1, -1, -1):
        for d in deps[i]:
            rest[d] = max(rest[d], durations[d] + rest[i])
    return rest


def critical_path(durations: Sequence[float], deps: Deps) -> float:
    return max(remaining_path(durations, deps), default=0.0)


def lower_bound(durations: Sequence[float], deps: Deps, slots: int) -> float:
    return max(critical_path(durations, deps), sum(durations) / slots)


def list_schedule(durations: Sequence[float], slots: int) -> float:
    """Makespan of independent jobs started in the given order on the first free slot."""
    free = [0.0] * slots
    for d in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + d)
    return max(free)


def ideal_waves(durations: Sequence[float], deps: Deps, slots: int) -> float:
    return sum(list_schedule([durations[i] for i in wave], slots) for wave in waves(deps))


def ideal_eager(durations: Sequence[float], deps: Deps, slots: int) -> float:
    """Eager list scheduling, longest remaining path first (ties: lower id)."""
    n = len(deps)
    rest = remaining_path(durations, deps)
    waiting = [len(ds) for ds in deps]
    dependents: list[list[int]] = [[] for _ in range(n)]
    for i, ds in enumerate(deps):
        for d in ds:
            dependents[d].append(i)
    ready = [(-rest[i], i) for i in range(n) if waiting[i] == 0]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []  # (finish time, node)
    now = 0.0
    done = 0
    while done < n:
        while ready and len(running) < slots:
            _, i = heapq.heappop(ready)
            heapq.heappush(running, (now + durations[i], i))
        now, i = heapq.heappop(running)
        done += 1
        for j in dependents[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, (-rest[j], j))
    return now
