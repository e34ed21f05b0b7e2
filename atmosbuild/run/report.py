"""The result of one run, and its written views.

A rollout ends with one `RunReport`; the console summary, the `--report`
JSON (SPEC 7), the `--report FILE.html` page (html_report.py) and the
`--profile` trace (trace.py) are renderings of it. Times inside it are
seconds since the run started (the runner's monotonic clock), plus the wall
clock time of that start: the views need exact intervals, the JSON needs ISO
dates.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone

from ..fileops import write_atomic

# SPEC 7: the node statuses of a report.
RAN_STATUSES = ("succeeded", "failed", "cancelled")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class NodeRun:
    id: str
    wave: int
    status: str  # succeeded | cached | failed | skipped | cancelled
    key: str | None
    reason: str
    deps: tuple[str, ...]
    # Seconds since the run started; None for a node that never ran.
    started: float | None = None
    finished: float | None = None
    exit_code: int | None = None
    log: str | None = None
    worker: str | None = None  # where it ran: "local", or the Dask worker's address

    @property
    def ran(self) -> bool:
        return self.started is not None and self.finished is not None

    @property
    def duration(self) -> float:
        return max(self.finished - self.started, 0.0) if self.ran else 0.0


@dataclass(frozen=True)
class RunReport:
    label: str
    workspace: str | list
    result: str  # success | failure | interrupted
    duration_s: float
    run_id: str
    parallelism: int
    schedule: str
    wall_start: float  # time.time() at the run's start (its `0.0`)
    nodes: tuple[NodeRun, ...]  # by wave, then in wave order
    # (wave number, seconds since the start) each time a wave opened (waves
    # schedule only; a wave in which nothing ran does not open).
    wave_marks: tuple[tuple[int, float], ...] = ()

    def by_id(self) -> dict[str, NodeRun]:
        return {n.id: n for n in self.nodes}

    def waves(self) -> list[list[NodeRun]]:
        out: dict[int, list[NodeRun]] = {}
        for n in self.nodes:
            out.setdefault(n.wave, []).append(n)
        return [out[k] for k in sorted(out)]

    def critical_path(self) -> list[str]:
        """The chain of dependencies that ended last, first node first: from
        the action that finished last, back through the dependency (among
        those that ran) that finished last, and so on. Empty if nothing ran."""
        nodes = self.by_id()
        ran = [n for n in self.nodes if n.ran]
        if not ran:
            return []
        node = max(ran, key=lambda n: (n.finished, n.id))
        chain = [node.id]
        while True:
            deps = [nodes[d] for d in node.deps if d in nodes and nodes[d].ran]
            if not deps:
                break
            node = max(deps, key=lambda n: (n.finished, n.id))
            chain.append(node.id)
        chain.reverse()
        return chain

    def to_json_data(self) -> dict:
        """The `--report FILE` JSON of SPEC 7."""
        def at(t: float | None) -> str | None:
            return iso(self.wall_start + t) if t is not None else None

        nodes = [{
            "id": n.id, "wave": n.wave, "status": n.status, "key": n.key,
            "started": at(n.started), "finished": at(n.finished),
            "duration_s": round(n.finished - n.started, 3) if n.ran else 0.0,
            "exit_code": n.exit_code, "log": n.log, "worker": n.worker, "reason": n.reason,
        } for n in self.nodes]
        return {
            "label": self.label,
            "workspace": self.workspace,
            "result": self.result,
            "duration_s": round(self.duration_s, 3),
            "run_id": self.run_id,
            "nodes": nodes,
        }


def write_report(path: str, report: RunReport) -> None:
    """`--report FILE`: the HTML page for a name ending in .html, else JSON."""
    if path.lower().endswith((".html", ".htm")):
        from .html_report import render_html

        data = render_html(report).encode("utf-8")
    else:
        data = (json.dumps(report.to_json_data(), indent=2) + "\n").encode("utf-8")
    write_atomic(os.path.abspath(path), data)


def write_profile(path: str, report: RunReport) -> None:
    """`--profile FILE`: the run as Chrome trace-event JSON."""
    from .trace import to_trace

    write_atomic(os.path.abspath(path), (json.dumps(to_trace(report)) + "\n").encode("utf-8"))
