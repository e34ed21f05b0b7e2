"""`affected --base REF [--head REF]` (SPEC 12): the components whose action
keys differ between two commits, and what depends on them.

Each side is compiled by the ordinary pipeline (graph.actions.compile_graph)
over that commit's tree, checked out into a temporary directory through a
private index (`git read-tree` + `checkout-index` with GIT_INDEX_FILE set
to a temporary file): the user's working tree, index and refs are never
touched. `--head` omitted means the working tree as it is, uncommitted and
untracked files included — what a rollout there would see.

Compared is the *local* part of each key (type and version, resolved vars,
env, run, source and its commit, every file of the source tree and local
modules, `inputs`, timeout) and the component's dependencies; upstream
results are not known before running, so a component whose dependency is
affected is listed as `dependency changed` (transitively). That is exactly
what a rollout at head after one at base would run, for components that
write no outputs; an upstream whose outputs come out the same (early cutoff)
may spare some of the dependents listed here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from .config.labels import Label, Pattern, parse_label
from .errors import AtmosError, UsageError

CHANGED, DEPENDENCY, ADDED, REMOVED = "changed", "dependency changed", "added", "removed"


@dataclass(frozen=True)
class AffectedComponent:
    label: str
    deployment: str
    target: str
    id: str
    reason: str  # changed | dependency changed | added | removed
    changes: list = field(default_factory=list)

    def as_json(self) -> dict:
        return {"label": self.label, "deployment": self.deployment, "target": self.target,
                "id": self.id, "reason": self.reason, "changes": list(self.changes)}


@dataclass(frozen=True)
class _Side:
    """One side's compiled components: (label text, component id) -> node."""
    nodes: dict
    order: list  # keys in dependency order (label by label)


def _git(top: str, *args: str, env: dict | None = None) -> str:
    from .sources.git import LOCAL_TIMEOUT, SourceError, run_git

    try:
        return run_git(["-C", top, *args], timeout=LOCAL_TIMEOUT, env=env)
    except SourceError as exc:
        raise UsageError(str(exc)) from None


def repository(root: str) -> tuple[str, str]:
    """(the git top level holding `root`, root's path inside it with a
    trailing slash, or "")."""
    from .sources.git import LOCAL_TIMEOUT, SourceError, run_git

    try:
        top = run_git(["-C", root, "rev-parse", "--show-toplevel"], timeout=LOCAL_TIMEOUT).strip()
        prefix = run_git(["-C", root, "rev-parse", "--show-prefix"], timeout=LOCAL_TIMEOUT).strip()
    except SourceError:
        raise UsageError(f"affected compares git commits, and {root} is not in a git repository") from None
    return top, prefix


def commit_of(top: str, ref: str, flag: str) -> str:
    if not ref or ref.startswith("-"):
        raise UsageError(f"{flag} needs a git revision")
    try:
        return _git(top, "rev-parse", "--verify", "--quiet", "--end-of-options",
                    f"{ref}^{{commit}}").strip()
    except UsageError:
        raise UsageError(f"{flag} {ref}: no such commit in {top}") from None


@contextmanager
def checked_out(top: str, commit: str, prefix: str) -> Iterator[str]:
    """The workspace root as of `commit`, in a temporary directory removed
    afterwards; nothing of the repository's own index or work tree moves."""
    tmp = tempfile.mkdtemp(prefix="atmos-affected-")
    try:
        tree = os.path.join(tmp, "tree")
        os.mkdir(tree)
        env = _env_with_index(os.path.join(tmp, "index"))
        _git(top, "read-tree", commit, env=env)
        _git(top, "--work-tree", tree, "-c", "core.autocrlf=false", "checkout-index", "--all",
             "--force", "--quiet", env=env)
        yield os.path.join(tree, prefix.rstrip("/")) if prefix else tree
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _env_with_index(index: str) -> dict:
    from .sources.git import _git_env

    env = _git_env()
    env["GIT_INDEX_FILE"] = index
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    return env


def labels_in(root: str, patterns: list) -> list[Label]:
    """The labels the patterns name in the tree at `root` (none: every
    target of every package). A label whose package or target the tree does
    not have is left out: at that side it is added or removed."""
    from .components import TYPES
    from .config.workspace import discover_packages, load_package, package_file

    if not os.path.isdir(root):
        return []
    specs = {}

    def spec(pkg):
        if pkg not in specs:
            specs[pkg] = load_package(root, pkg, TYPES)
        return specs[pkg]

    out: list[Label] = []
    items = patterns or [Pattern("", "*")]
    for item in items:
        if isinstance(item, Label):
            found = [item] if package_file(root, item.package) and item.target in spec(item.package).targets else []
        else:
            found = [Label(pkg, target) for pkg in discover_packages(root, item.prefix)
                     for target in spec(pkg).targets if item.target in ("*", target)]
        out += [label for label in found if label not in out]
    return out


def compile_side(root: str, patterns: list, remote, where: str) -> _Side:
    """Compile every selected label in the tree at `root`; errors are named
    by the side they come from (`where`) and the file's path in the tree."""
    from .components import TYPES
    from .config.workspace import load_settings, load_specs
    from .graph.actions import compile_graph
    from .state.files import FileDigester

    try:
        labels = labels_in(root, patterns)
        nodes, order = {}, []
        for label in labels:  # one by one: node ids are plain component ids
            specs = load_specs(root, [label], TYPES)
            graph = compile_graph(root, [label], FileDigester(root, cache={}),
                                  specs=lambda: specs, settings=lambda: load_settings(root),
                                  remote=remote)
            for nid in graph.dag.order:
                key = (str(label), graph.nodes[nid].cid)
                nodes[key] = graph.nodes[nid]
                order.append(key)
    except AtmosError as exc:
        if where:
            exc.message = f"at {where}: {exc.message}"
            if exc.file and os.path.abspath(exc.file).startswith(root + os.sep):
                exc.file = os.path.relpath(os.path.abspath(exc.file), root)
        raise
    return _Side(nodes, order)


def compare(base: _Side, head: _Side) -> list[AffectedComponent]:
    """Affected components: head's in dependency order, then the removed ones."""
    from .state.rebuild import describe_changes, storable_ingredients

    out: dict[tuple, AffectedComponent] = {}

    def entry(key, node, reason, changes):
        out[key] = AffectedComponent(key[0], node.deployment, node.target, node.cid, reason, changes)

    for key in head.order:
        node = head.nodes[key]
        old = base.nodes.get(key)
        deps = sorted(node.deps)  # single-label graphs: node ids are component ids
        if old is None:
            entry(key, node, ADDED, [])
            continue
        old_deps = sorted(old.deps)
        same = old.local_canonical == node.local_canonical and old_deps == deps
        if not same:
            changes = describe_changes(storable_ingredients(old), storable_ingredients(node), None)
            for dep in sorted(set(old_deps) ^ set(deps)):
                changes.append(f"dependency `{dep}` " + ("added" if dep in deps else "removed"))
            entry(key, node, CHANGED, changes or ["key changed"])
            continue
        moved = [d for d in deps if (key[0], d) in out]
        if moved:
            entry(key, node, DEPENDENCY, [f"upstream `{d}` {out[(key[0], d)].reason}" for d in moved])
    for key in base.order:
        if key not in head.nodes:
            entry(key, base.nodes[key], REMOVED, [])
    return list(out.values())


def affected(root: str, state_dir: str, base_ref: str, head_ref: str | None,
             pattern_texts) -> dict:
    """The `--format json` document (see README: affected)."""
    from .sources.git import GitVendor

    patterns = [parse_label(t, allow_pattern=True) for t in pattern_texts]
    top, prefix = repository(root)
    base_commit = commit_of(top, base_ref, "--base")
    head_commit = commit_of(top, head_ref, "--head") if head_ref is not None else None
    remote = GitVendor(state_dir)  # one per command: a branch source resolves once
    with checked_out(top, base_commit, prefix) as base_root:
        base = compile_side(base_root, patterns, remote, f"--base {base_ref}")
    if head_commit is None:
        head = compile_side(root, patterns, remote, "")
    else:
        with checked_out(top, head_commit, prefix) as head_root:
            head = compile_side(head_root, patterns, remote, f"--head {head_ref}")
    if patterns and not base.nodes and not head.nodes:
        raise UsageError(f"{', '.join(pattern_texts)} names no deployment at either commit")
    return {"base": base_ref, "base_commit": base_commit,
            "head": head_ref, "head_commit": head_commit,
            "affected": [a.as_json() for a in compare(base, head)]}


def render_text(doc: dict) -> str:
    """One line per component: `LABEL TYPE/NAME  reason: what changed`."""
    lines = []
    for a in doc["affected"]:
        detail = f": {'; '.join(a['changes'])}" if a["changes"] else ""
        lines.append(f"{a['label']} {a['id']}  {a['reason']}{detail}")
    head = doc["head"] or "the working tree"
    count = len(doc["affected"])
    lines.append(f"{count} component{'s' if count != 1 else ''} affected between "
                 f"{doc['base']} ({doc['base_commit'][:12]}) and {head}"
                 + (f" ({doc['head_commit'][:12]})" if doc["head_commit"] else ""))
    return "\n".join(lines) + "\n"
