"""`--format json` of `plan`, `status` and `explain` (SPEC 7): one JSON
document on stdout, for scripts. The shapes are documented in README.md
("JSON output") and stable: fields may be added, never renamed or removed.

Each builder takes what the command's text output is made from, so the two
renderings cannot tell different stories.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone


def dumps(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _label(graph) -> str:
    return " ".join(str(label) for label in graph.labels)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def plan_data(graph, plan) -> dict:
    """{"label", "waves": [[id...]...], "nodes": [{"id","wave","status","reason","key"}],
    "counts": {"run","cached","blocked"}}; status is run | cached | blocked."""
    nodes = []
    counts = {"run": 0, "cached": 0, "blocked": 0}
    for wave in graph.dag.waves:
        for nid in wave:
            p = plan[nid]
            counts[p.status] = counts.get(p.status, 0) + 1
            nodes.append({"id": nid, "wave": p.wave, "status": p.status, "reason": p.reason,
                          "key": p.key})
    return {"label": _label(graph), "waves": [list(w) for w in graph.dag.waves],
            "nodes": nodes, "counts": counts}


def status_row(nid: str, node, last, planned) -> dict:
    """One component of `status`: what was last applied here, and whether
    the current inputs still match it."""
    from .graph.plan import CACHED

    return {
        "id": nid, "mode": node.mode,
        "applied_key": last.key if last else None,
        "applied_at": _iso(last.finished) if last else None,
        "duration_s": round(last.duration, 3) if last else None,
        "up_to_date": planned.status == CACHED,
        "reason": planned.reason,
    }


def status_data(graph, rows: list[dict]) -> dict:
    """{"label", "components": [{"id","mode","applied_key","applied_at","duration_s",
    "up_to_date","reason"}]}"""
    return {"label": _label(graph), "components": rows}


def explain_data(graph, component: str, planned, last) -> dict:
    """{"label","component","run","status","key","applied_key","reasons":[...]}:
    `run` is true when the component would run; a blocked one (it runs only
    if an upstream's result changes) has run false and its wait as reason."""
    from .graph.plan import BLOCKED, CACHED, RUN

    if planned.status == RUN:
        reasons = planned.reason.split("; ")
    elif planned.status == BLOCKED:
        reasons = [planned.reason]
    else:
        reasons = []
    return {
        "label": _label(graph), "component": component,
        "run": planned.status == RUN, "status": planned.status,
        "key": planned.key, "applied_key": last.key if last else None,
        "reasons": reasons if planned.status != CACHED else [],
    }
