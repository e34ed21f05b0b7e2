"""The plan: what a rollout would do, decided without running anything.

A node whose dependencies are all up to date has a known key, so it is
`cached` or `run`. A node downstream of one that will run cannot know its key
yet (early cutoff may still spare it): it is `run` when its own inputs
changed, else `blocked` — it runs only if an upstream's result changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

from .actions import ActionGraph, ActionNode

RUN, CACHED, BLOCKED = "run", "cached", "blocked"


class Decision(Protocol):
    run: bool
    key: str
    reason: str
    result: str | None  # the result digest, when cached


class Decider(Protocol):
    """What the plan asks of the rebuilder (state/rebuild.Rebuilder, which
    the caller passes in: graph knows nothing of the store)."""

    def decide(self, node: ActionNode, upstream: Mapping[str, str]) -> Decision:
        """Run or cached, for a node whose upstream results are known."""

    def must_run(self, node: ActionNode) -> str | None:
        """Why the node runs whatever its upstreams do, or None."""

    def local_changes(self, node: ActionNode) -> list[str]:
        """What moved in the node's own ingredients since it last succeeded."""


@dataclass(frozen=True)
class PlannedNode:
    id: str
    wave: int
    status: str  # RUN | CACHED | BLOCKED
    reason: str
    key: str | None  # None while an upstream has yet to run


def make_plan(graph: ActionGraph, rebuilder: Decider) -> dict[str, PlannedNode]:
    planned: dict[str, PlannedNode] = {}
    results: dict[str, str | None] = {}  # node id -> result digest, None if unknown
    for nid in graph.dag.order:
        node = graph.nodes[nid]
        wave = graph.dag.wave_of[nid]
        waiting = [d for d in node.deps if results[d] is None]
        if not waiting:
            upstream = {graph.nodes[d].cid: results[d] for d in node.deps}
            decision = rebuilder.decide(node, upstream)
            status = RUN if decision.run else CACHED
            planned[nid] = PlannedNode(nid, wave, status, decision.reason, decision.key)
            results[nid] = None if decision.run else decision.result
            continue
        forced = rebuilder.must_run(node)
        local_changes = rebuilder.local_changes(node)
        if forced:
            status, reason = RUN, forced
        elif local_changes:
            status, reason = RUN, "; ".join(local_changes)
        else:
            status = BLOCKED
            reason = ("waits for " + ", ".join(graph.nodes[d].cid for d in waiting)
                      + "; runs only if an upstream result changes")
        planned[nid] = PlannedNode(nid, wave, status, reason, None)
        results[nid] = None
    return planned
