"""`--profile FILE`: a run as Chrome trace-event JSON (Perfetto, chrome://tracing).

The object form, `{"traceEvents": [...], "displayTimeUnit": "ms"}`, as the
Trace Event Format document describes it:

- one complete event (`"ph": "X"`, `ts`/`dur` in microseconds since the run
  started) per action that ran, succeeded, failed or was stopped, named by
  its component id, `args` = status, key, reason, exit code;
- each on the lane (`tid`) of the slot that ran it. The runner does not say
  which worker ran what, so lanes are computed after the fact from the
  intervals (`assign_lanes`): greedy interval colouring, which uses exactly
  as many lanes as actions ever overlapped — never more than `-j`;
- a global instant event (`"ph": "i"`, `"s": "g"`) when each wave opened;
- metadata events (`"ph": "M"`) naming the process (the label) and each
  lane (`slot 1`, `slot 2`, ...).

Cached, skipped and never-started nodes are omitted: they took no slot and
no time. Each wave marker's `args` counts what the wave ran and what it
found cached, so nothing is invisible in the count.
"""

from __future__ import annotations

import heapq
from typing import Sequence

from .report import RunReport

PID = 1


def assign_lanes(intervals: Sequence[tuple[int, int]], limit: int) -> list[int]:
    """A lane (0-based) per [start, end) interval: no two intervals of one
    lane overlap, and at most `limit` lanes are used.

    Greedy colouring in start order, reusing the lowest free lane, is
    optimal (lanes = the largest number of intervals alive at one instant);
    the scheduler keeps that at most -j. Should measured times ever say
    otherwise (clock noise), an interval goes to the lane that frees first
    rather than opening lane limit+1.
    """
    order = sorted(range(len(intervals)), key=lambda i: (intervals[i][0], intervals[i][1], i))
    lanes = [0] * len(intervals)
    free: list[int] = []  # free lane numbers (heap)
    busy: list[tuple[int, int]] = []  # (end, lane) of the intervals alive (heap)
    opened = 0
    for i in order:
        start, end = intervals[i]
        while busy and busy[0][0] <= start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        elif opened < limit:
            lane, opened = opened, opened + 1
        else:
            lane = heapq.heappop(busy)[1]
        lanes[i] = lane
        heapq.heappush(busy, (end, lane))
    return lanes


def _us(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def to_trace(report: RunReport) -> dict:
    ran = [n for n in report.nodes if n.ran]
    spans = []
    for n in ran:
        ts = max(_us(n.started), 0)
        spans.append((ts, max(_us(n.finished), ts + 1)))  # a slice is at least 1 µs
    lanes = assign_lanes(spans, max(report.parallelism, 1))
    events: list[dict] = [
        {"ph": "M", "pid": PID, "tid": 0, "ts": 0, "name": "process_name",
         "args": {"name": f"atmosbuild {report.label}"}},
        {"ph": "M", "pid": PID, "tid": 0, "ts": 0, "name": "thread_name", "args": {"name": "waves"}},
        {"ph": "M", "pid": PID, "tid": 0, "ts": 0, "name": "thread_sort_index",
         "args": {"sort_index": 0}},
    ]
    for lane in sorted(set(lanes)):
        events.append({"ph": "M", "pid": PID, "tid": lane + 1, "ts": 0, "name": "thread_name",
                       "args": {"name": f"slot {lane + 1}"}})
        events.append({"ph": "M", "pid": PID, "tid": lane + 1, "ts": 0, "name": "thread_sort_index",
                       "args": {"sort_index": lane + 1}})
    waves = report.waves()
    for wave, at in report.wave_marks:
        members = waves[wave - 1] if 0 < wave <= len(waves) else []
        events.append({
            "ph": "i", "s": "g", "pid": PID, "tid": 0, "ts": max(_us(at), 0),
            "name": f"wave {wave}", "cat": "wave",
            "args": {"wave": wave, "nodes": len(members),
                     "ran": sum(1 for m in members if m.ran),
                     "cached": sum(1 for m in members if m.status == "cached")}})
    for n, (ts, end), lane in zip(ran, spans, lanes):
        events.append({
            "ph": "X", "pid": PID, "tid": lane + 1, "ts": ts, "dur": end - ts,
            "name": n.id, "cat": n.status,
            "args": {"status": n.status, "key": n.key, "reason": n.reason,
                     "wave": n.wave, "exit_code": n.exit_code},
        })
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"label": report.label, "result": report.result,
                      "run_id": report.run_id, "parallelism": report.parallelism,
                      "schedule": report.schedule, "duration_s": round(report.duration_s, 3)},
    }
