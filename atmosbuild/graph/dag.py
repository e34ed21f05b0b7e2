"""The dependency graph over component ids: cycles, waves, critical paths.

Pure functions over plain data. A node is a component id ("terraform/ecr/api");
`deps[a]` holds the nodes `a` depends on, which must be done before `a` runs.

Invariants of a `Dag` (`build_dag` establishes them; nothing mutates them):

- `deps` and `dependents` mirror each other, are keyed by every node, and hold
  sorted tuples without duplicates.
- `waves` partition the nodes (SPEC 6, longest-path layering):
  `wave_of[n] = 1 + max(wave_of[d] for d in deps[n])`, or 1 without deps.
  So every edge goes from a lower wave to a higher one, and every node of wave
  k > 1 has a dependency in wave k-1.
- `order` lists every node once, after all its dependencies: wave by wave,
  ids sorted inside a wave.
- Everything depends only on the graph, never on the order the caller
  happened to insert nodes or list dependencies in.

Why no recursion anywhere: graphs of 100,000 nodes (a long chain among them)
must not hit Python's recursion limit. Every pass is linear in nodes + edges,
apart from sorting ids once.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

from atmosbuild.errors import CycleError

__all__ = ["Dag", "build_dag", "critical_path"]


@dataclass(frozen=True)
class Dag:
    """An acyclic dependency graph, layered into waves. Build it with `build_dag`."""

    deps: Mapping[str, tuple[str, ...]]  # node -> what it depends on
    dependents: Mapping[str, tuple[str, ...]]  # node -> what depends on it
    waves: tuple[tuple[str, ...], ...]  # waves[0] is wave 1
    wave_of: Mapping[str, int]  # node -> 1-based wave number
    order: tuple[str, ...]  # a deterministic topological order

    def __len__(self) -> int:
        return len(self.order)

    def __contains__(self, node: object) -> bool:
        return node in self.deps

    def __reduce__(self):  # read-only views do not pickle; their contents do
        return (_restore, (dict(self.deps), dict(self.dependents), self.waves,
                           dict(self.wave_of), self.order))

    def __repr__(self) -> str:  # the full maps are unreadable at 50,000 nodes
        return f"Dag(nodes={len(self.order)}, waves={len(self.waves)})"

    def subgraph(self, nodes: Iterable[str]) -> Dag:
        """The graph induced by `nodes`, re-layered into its own waves."""
        keep = self._known(nodes)
        return build_dag({n: [d for d in self.deps[n] if d in keep] for n in keep})

    def closure(self, nodes: Iterable[str]) -> frozenset[str]:
        """`nodes` plus everything they transitively depend on (`--only`)."""
        start = self._known(nodes)
        return frozenset(start) | _reachable(self.deps, start)

    def downstream(self, nodes: Iterable[str]) -> frozenset[str]:
        """Everything that transitively depends on `nodes`.

        A node of `nodes` is included only if it depends on another one."""
        return _reachable(self.dependents, self._known(nodes))

    def _known(self, nodes: Iterable[str]) -> set[str]:
        keep = set(nodes)
        for n in keep:
            if n not in self.deps:
                raise KeyError(n)
        return keep


def build_dag(deps: Mapping[str, Iterable[str]]) -> Dag:
    """Check `deps` for cycles and layer it into waves.

    Every dependency must itself be a key of `deps` (the caller resolves ids
    first). Raises `CycleError` with a real cycle, see `_find_cycle`.
    """
    fwd = {node: tuple(sorted(set(ds))) for node, ds in deps.items()}
    assert (bad := _first_unknown_dependency(fwd)) is None, "%s depends on unknown node %s" % bad

    nodes = sorted(fwd)
    rev: dict[str, list[str]] = {n: [] for n in nodes}
    for n in nodes:  # visiting nodes sorted keeps every dependents list sorted
        for d in fwd[n]:
            rev[d].append(n)

    # Kahn's algorithm. A node is appended to `done` only after all its
    # dependencies, so its wave is final by then.
    missing = {n: len(fwd[n]) for n in nodes}
    wave_of = dict.fromkeys(nodes, 1)
    done = [n for n in nodes if not missing[n]]
    for n in done:  # `done` grows while we walk it
        below = wave_of[n] + 1
        for m in rev[n]:
            if wave_of[m] < below:
                wave_of[m] = below
            missing[m] -= 1
            if not missing[m]:
                done.append(m)
    if len(done) < len(nodes):
        raise CycleError(_find_cycle(fwd, {n for n in nodes if missing[n]}))

    buckets: list[list[str]] = [[] for _ in range(max(wave_of.values(), default=0))]
    for n in nodes:  # sorted, so each wave comes out sorted
        buckets[wave_of[n] - 1].append(n)
    waves = tuple(tuple(b) for b in buckets)
    return Dag(
        deps=MappingProxyType({n: fwd[n] for n in nodes}),
        dependents=MappingProxyType({n: tuple(rev[n]) for n in nodes}),
        waves=waves,
        wave_of=MappingProxyType(wave_of),
        order=tuple(n for wave in waves for n in wave),
    )


def _restore(deps, dependents, waves, wave_of, order) -> Dag:
    return Dag(MappingProxyType(deps), MappingProxyType(dependents), waves,
               MappingProxyType(wave_of), order)


def critical_path(dag: Dag, weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """For each node, the heaviest path from it to a sink, its own weight included.

    `cp[n] = w[n] + max(cp[m] for m in dependents[n])` (0 for a sink); a node
    without a weight weighs 1. The eager scheduler starts the node with the
    longest remaining path first.
    """
    w = weights or {}
    cp: dict[str, float] = {}
    for n in reversed(dag.order):  # dependents before their dependencies
        cp[n] = float(w.get(n, 1.0)) + max((cp[m] for m in dag.dependents[n]), default=0.0)
    return cp


def _first_unknown_dependency(fwd: Mapping[str, Sequence[str]]) -> tuple[str, str] | None:
    for node, ds in fwd.items():
        for d in ds:
            if d not in fwd:
                return node, d
    return None


def _reachable(edges: Mapping[str, Sequence[str]], start: Iterable[str]) -> frozenset[str]:
    """Nodes reachable from `start` in one or more steps along `edges`."""
    seen: set[str] = set()
    stack = list(start)
    while stack:
        for m in edges[stack.pop()]:
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return frozenset(seen)


def _find_cycle(fwd: Mapping[str, Sequence[str]], stuck: set[str]) -> list[str]:
    """A cycle to report: the shortest one through the smallest node on any cycle.

    `stuck` are the nodes Kahn's algorithm could not finish: the cycles and
    whatever depends on them. Tarjan's algorithm (iterative) tells which of
    them lie on a cycle; a breadth-first search from the smallest of those,
    inside its strongly connected component, finds a shortest way back to it.
    The result is `[s, ..., s]` with each element depending on the next, and it
    depends only on the graph, never on input order.
    """
    component = _cyclic_components(fwd, stuck)
    start = min(component)
    if start in fwd[start]:
        return [start, start]
    members = component[start]
    parent: dict[str, str] = {start: start}
    queue = [start]
    for v in queue:  # `queue` grows while we walk it
        for m in fwd[v]:
            if m == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if m in members and m not in parent:
                parent[m] = v
                queue.append(m)
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def _cyclic_components(fwd: Mapping[str, Sequence[str]], within: set[str]) -> dict[str, frozenset[str]]:
    """node -> its strongly connected component, for nodes that lie on a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cyclic: dict[str, frozenset[str]] = {}

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)

    for root in sorted(within):
        if root in index:
            continue
        visit(root)
        work = [(root, iter(fwd[root]))]
        while work:
            v, edges = work[-1]
            for m in edges:
                if m not in within:
                    continue
                if m not in index:
                    visit(m)
                    work.append((m, iter(fwd[m])))
                    break
                if m in on_stack:
                    low[v] = min(low[v], index[m])
            else:  # every edge of v explored
                work.pop()
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
                if low[v] == index[v]:
                    members = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        members.append(m)
                        if m == v:
                            break
                    if len(members) > 1 or v in fwd[v]:
                        scc = frozenset(members)
                        cyclic.update(dict.fromkeys(members, scc))
    return cyclic
