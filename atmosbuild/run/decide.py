"""The decider: the one place a rollout asks whether a node runs.

The rollout (run/rollout.py) asks `decide(nid, upstream)` once per node,
when its dependencies are done, whatever its verb and whatever path it
took. Without an up-to-date record every answer is the rebuilder's
(state/rebuild.py). With a record (run/uptodate.py) the record answers where
it proves the answer -- the node's tree did not move and no upstream result
differs from the recorded one, so its key and its "cached" are the recorded
ones -- and the rebuilder answers the rest, over the store's rows of just
those nodes and their upstreams. Either way the graph the rollout runs is
the one it was given: nothing is rewritten while it runs.

Kept free of the config, graph and component modules (and of the rebuilder,
which imports them): a rollout decided from the record alone never imports
them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

from ..state.store import Decision

if TYPE_CHECKING:
    from ..state.rebuild import Rebuilder
    from ..state.store import Applied
    from .uptodate import Record

UP_TO_DATE = ("up to date",)


class Stale(Exception):
    """The store no longer holds what the up-to-date record was made with."""


class Decider:
    """Every decision of one rollout.

    `record`: the selection's up-to-date record, when the rollout is decided
    from it; then `graph` holds action nodes for `compiled` (the nodes on
    changed trees, `dirty`, and what depends on them) and recorded nodes for
    everything else. `read()` runs under the deployment locks: it reads the
    store (and, with a record, proves the store still holds its rows, or
    raises Stale)."""

    def __init__(self, graph, store, *, force: bool = False, record: "Record | None" = None,
                 compiled: frozenset = frozenset(), dirty: frozenset = frozenset(),
                 compile_node: Callable | None = None) -> None:
        self.graph, self.store, self.force = graph, store, force
        self.record = record
        self.compiled, self.dirty = compiled, dirty
        # compile_node(nid) -> ActionNode: an upstream that is only a record,
        # for reading a sensitive output back (None: cannot compile).
        self.compile_node = compile_node
        self.rebuilder: Rebuilder | None = None
        self.rows: dict[tuple[str, str], dict] = {}  # (deployment, target) -> cid -> recorded row, as read
        self.decided: set[str] = set()  # what the rebuilder decided (with a record)
        self._upstreams: frozenset = frozenset()  # recorded nodes a compiled one renders from

    # -- under the locks ---------------------------------------------------------------

    def read(self) -> None:
        if self.record is None:
            from ..state.rebuild import Rebuilder

            self.rebuilder = Rebuilder(self.graph, self.store, force=self.force)
            return
        record = self.record
        # Keys, results and durations only: the rows' outputs and ingredients
        # (kilobytes each) are not needed for nodes that are not decided.
        self.rows = {place: self.store.applied_summary(*place) for place in record.applied}
        for place, rows in record.applied.items():
            current = self.rows[place]
            if any(current.get(cid) != row for cid, row in rows.items()):
                raise Stale()
        keys = record.build_keys
        if keys and len(self.store.builds(list(keys))) != len(set(keys)):
            raise Stale()
        if not self.compiled:
            return
        # Full rows (outputs, ingredients, last attempt) for the nodes that
        # may be decided and for their upstreams (whose outputs they render).
        nodes, deps = self.graph.nodes, self.graph.dag.deps
        self._upstreams = frozenset(d for nid in self.compiled for d in deps[nid])
        wanted: dict[tuple[str, str], set[str]] = {}
        for nid in self.compiled:
            node = nodes[nid]
            cids = wanted.setdefault((node.deployment, node.target), set())
            cids.add(node.cid)
            cids.update(nodes[d].cid for d in deps[nid])
        snapshots = {place: self.store.snapshot(*place, components=cids) for place, cids in wanted.items()}
        from ..state.rebuild import Rebuilder

        self.rebuilder = Rebuilder(self.graph, self.store, force=False, snapshots=snapshots)

    # -- while it runs -------------------------------------------------------------------

    def decide(self, nid: str, upstream: Callable[[str], Mapping[str, str]]) -> "Decision":
        """`upstream(nid)`: dependency component id -> result digest (asked
        only when the answer depends on it)."""
        node = self.graph.nodes[nid]
        if self.record is None:
            return self.rebuilder.decide(node, upstream(nid))
        if nid in self.compiled:
            results = upstream(nid)
            if nid in self.dirty or self._moved(nid, results):
                self.decided.add(nid)
                return self.rebuilder.decide(node, results)
        place = (node.deployment, node.target)
        key, result, _ = self.rows[place][node.cid]
        outputs = None
        if nid in self._upstreams:  # what a decided dependent renders from
            applied = self.rebuilder.snapshots[place].applied.get(node.cid)
            outputs = applied.outputs if applied is not None else None
        return Decision(False, key, UP_TO_DATE, outputs, result)

    def _moved(self, nid: str, results: Mapping[str, str]) -> bool:
        """An upstream's result is not the recorded one."""
        nodes = self.graph.nodes
        for d in self.graph.dag.deps[nid]:
            up = nodes[d]
            if results[up.cid] != self.recorded_result(up):
                return True
        return False

    def recorded_result(self, node) -> str:
        return self.rows[(node.deployment, node.target)][node.cid][1]

    def applied(self, node) -> "Applied | None":
        """The node's applied row, in full (outputs, ingredients)."""
        return self.rebuilder.applied(node) if self.rebuilder is not None else None

    def duration(self, node) -> float | None:
        """How long the node's last success took, if it ever succeeded here."""
        if self.record is not None:
            return self.rows[(node.deployment, node.target)][node.cid][2]
        last = self.rebuilder.applied(node)
        return last.duration if last else None

    def action_node(self, nid: str):
        """The action node of `nid` (compiled now if the graph holds only its
        record), or what the graph holds when it cannot be compiled."""
        node = self.graph.nodes[nid]
        if getattr(node, "ctype", None) is None and self.compile_node is not None:
            from ..graph.actions import NeedsFullCompile

            try:
                return self.compile_node(nid)
            except (NeedsFullCompile, OSError):
                return node
        return node
