"""`--format json` of `plan`, `status` and `explain` (SPEC 7): one JSON
document on stdout, for scripts. The shapes are documented in README.md
("JSON output") and stable: fields may be added, never renamed or removed.

Each builder takes the result the command's text output is made from (the
api's PlanResult, StatusResult, ExplainResult), so the two renderings cannot
tell different stories.
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


def status_data(status) -> dict:
    """{"label", "components": [{"id","mode","applied_key","applied_at","duration_s",
    "up_to_date","reason"}]}, from an api.StatusResult."""
    return {"label": status.label, "components": [
        {"id": row.id, "mode": row.mode, "applied_key": row.applied_key,
         "applied_at": _iso(row.applied_at),
         "duration_s": round(row.duration, 3) if row.duration is not None else None,
         "up_to_date": row.up_to_date, "reason": row.reason}
        for row in status.rows]}


def explain_data(explained) -> dict:
    """{"label","component","run","status","key","applied_key","reasons":[...]},
    from an api.ExplainResult: `run` is true when the component would run; a
    blocked one (it runs only if an upstream's result changes) has run false
    and its wait as reason."""
    from .graph.plan import BLOCKED, CACHED, RUN

    if explained.status == RUN:
        reasons = explained.reason.split("; ")
    elif explained.status == BLOCKED:
        reasons = [explained.reason]
    else:
        reasons = []
    return {
        "label": explained.label, "component": explained.component,
        "run": explained.status == RUN, "status": explained.status,
        "key": explained.key, "applied_key": explained.applied_key,
        "reasons": reasons if explained.status != CACHED else [],
    }
