"""Export a plan: DOT (Graphviz), JSON (SPEC 7), Mermaid, and the plan table."""

from __future__ import annotations

import json

from .actions import ActionGraph
from .plan import BLOCKED, CACHED, RUN, PlannedNode

COLOURS = {RUN: "#f6b26b", CACHED: "#93c47d", BLOCKED: "#d9d9d9"}
STATUS_WORDS = {RUN: "will run", CACHED: "cached", BLOCKED: "blocked (runs if an upstream result changes)"}


def _waves(graph: ActionGraph) -> list[list[str]]:
    return [list(w) for w in graph.dag.waves]


def _edges(graph: ActionGraph) -> list[list[str]]:
    return [[dep, nid] for nid in graph.dag.order for dep in graph.dag.deps[nid]]


def to_json_data(graph: ActionGraph, plan: dict[str, PlannedNode]) -> dict:
    labels = [str(label) for label in graph.labels]
    single = len(graph.labels) == 1
    first = graph.labels[0]
    nodes = []
    for wave in graph.dag.waves:
        for nid in wave:
            node, p = graph.nodes[nid], plan[nid]
            nodes.append({
                "id": nid, "type": node.component.type, "name": node.component.name,
                "wave": p.wave, "depends_on": list(graph.dag.deps[nid]),
                "key": p.key, "status": p.status, "reason": p.reason,
            })
    data = {
        "label": labels[0] if single else " ".join(labels),
        "deployment": graph.specs[first].name if single else None,
        "target": first.target if single else None,
        "waves": _waves(graph),
        "nodes": nodes,
        "edges": _edges(graph),
    }
    if not single:
        data["labels"] = labels
    return data


def to_json(graph: ActionGraph, plan: dict[str, PlannedNode]) -> str:
    return json.dumps(to_json_data(graph, plan), indent=2) + "\n"


def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: ActionGraph, plan: dict[str, PlannedNode]) -> str:
    title = " ".join(str(label) for label in graph.labels)
    out = [f"digraph {_dot_str(title)} {{",
           "  rankdir=LR;",
           '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
           f"  label={_dot_str(title + '  (orange: will run, green: cached, grey: blocked)')};",
           "  labelloc=t;"]
    for k, wave in enumerate(graph.dag.waves, 1):
        out.append(f"  subgraph cluster_wave_{k} {{")
        out.append(f"    label={_dot_str(f'Wave {k}')}; style=dashed; color=\"#999999\";")
        for nid in wave:
            p = plan[nid]
            tip = f"{STATUS_WORDS[p.status]}: {p.reason}"
            out.append(f"    {_dot_str(nid)} [label={_dot_str(nid + chr(10) + p.status)}, "
                       f"fillcolor={_dot_str(COLOURS[p.status])}, tooltip={_dot_str(tip)}];")
        out.append("  }")
    for dep, nid in _edges(graph):
        out.append(f"  {_dot_str(dep)} -> {_dot_str(nid)};")
    out.append("}")
    return "\n".join(out) + "\n"


def to_mermaid(graph: ActionGraph, plan: dict[str, PlannedNode]) -> str:
    ids = {nid: f"n{i}" for i, nid in enumerate(graph.dag.order)}
    out = ["flowchart LR"]
    for k, wave in enumerate(graph.dag.waves, 1):
        out.append(f'  subgraph wave_{k}["Wave {k}"]')
        for nid in wave:
            text = nid.replace('"', "#quot;")
            out.append(f'    {ids[nid]}["{text}"]:::{plan[nid].status}')
        out.append("  end")
    for dep, nid in _edges(graph):
        out.append(f"  {ids[dep]} --> {ids[nid]}")
    for status, colour in COLOURS.items():
        out.append(f"  classDef {status} fill:{colour},stroke:#555")
    return "\n".join(out) + "\n"


EXPORTERS = {"dot": to_dot, "json": to_json, "mermaid": to_mermaid}


def plan_table(graph: ActionGraph, plan: dict[str, PlannedNode]) -> str:
    rows = [(str(p.wave), nid, p.status, p.reason)
            for wave in graph.dag.waves for nid in wave for p in [plan[nid]]]
    head = ("WAVE", "COMPONENT", "ACTION", "WHY")
    widths = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(3)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head[:3], widths)) + "  " + head[3]]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    counts = {s: sum(1 for p in plan.values() if p.status == s) for s in (RUN, CACHED, BLOCKED)}
    lines.append(f"Plan: {counts[RUN]} to run, {counts[CACHED]} cached, "
                 f"{counts[BLOCKED]} blocked on upstream results")
    return "\n".join(lines) + "\n"
