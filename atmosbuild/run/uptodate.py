"""A no-op rollout without per-component work.

A rollout in which every component succeeded or was cached leaves, for its
selection (labels, `--only`, the deployment files' bytes, this code), a
record of what made it so:

  - the stat signature of every directory and file of every source tree its
    keys were computed from (all of them settled: none was racily new), and
  - the store's applied rows for those components (key, result digest,
    duration) and the build keys build-mode components stand on.

The next rollout of the same selection checks exactly that — every path
still has its signature (one C-level pass of lstat), then, under the
deployment locks, the store still holds the same rows — and if so every key
is what it was, every component is up to date, and the rollout is run with
nothing to decide: the same locks, workspace, scheduler order, lines and
summary as the full path, without compiling 5,000 action nodes first. Any
difference sends the rollout down the full path; a record can cost a check,
never a wrong answer. Not recorded (always the full path): selections with a
`cache: false` component (it always runs), or `inputs` globs that cannot be
watched (a symlinked directory below the glob's fixed prefix).
"""

from __future__ import annotations

import os
import pickle
import stat as stat_mod
from dataclasses import dataclass
from typing import Callable

from ..components.base import BUILD
from ..config.doccache import code_stamp
from ..config.labels import Label
from ..graph.dag import Dag
from ..state.files import FileDigester, signature, signatures_unchanged
from .rollout import Rollout

VERSION = 2
KEEP = 8  # records kept per workspace (one per selection)
# Modules whose logic decides "up to date"; with the structure cache's own.
DECISION_MODULES = ("run/uptodate.py", "run/rollout.py", "state/rebuild.py", "graph/keys.py",
                    "state/files.py", "components/base.py", "components/command.py",
                    "components/terraform.py", "components/nixpack.py")

HEAD = 256  # most recently changed files, checked before the record is even read


@dataclass(frozen=True)
class RecordedSpec:
    name: str


@dataclass(frozen=True)
class RecordedNode:
    deployment: str
    target: str
    cid: str
    mode: str


@dataclass
class RecordedGraph:
    """What a rollout needs of the graph when nothing will run."""

    labels: tuple[Label, ...]
    specs: dict[Label, RecordedSpec]
    nodes: dict[str, RecordedNode]
    dag: Dag


@dataclass
class Record:
    graph: RecordedGraph
    # stat follows a symlink here: each source tree's own directory, each inputs prefix
    roots: tuple[str, ...]
    root_sigs: tuple
    paths: tuple[str, ...]  # everything below them and every inputs match (lstat), newest first
    sigs: tuple
    applied: dict[tuple[str, str], dict[str, tuple]]  # (deployment, target) -> cid -> (key, result, duration)
    build_keys: tuple[str, ...]


class Stale(Exception):
    """The store no longer holds what the record was made with."""


def record_key(state_dir: str, root: str, labels, only) -> str | None:
    from ..graph.cache import StructureCache

    structure = StructureCache(state_dir).key(root, labels, only)
    if structure is None:
        return None
    import xxhash

    return xxhash.xxh3_128_hexdigest(f"{structure}\0{code_stamp(*DECISION_MODULES)}".encode())


def _path(state_dir: str, key: str) -> str:
    return os.path.join(state_dir, "cache", f"uptodate-{key}.pickle")


def load(state_dir: str, key: str | None) -> Record | None:
    """The record for `key` if there is one and its most recently changed
    files are unchanged: the file is a small head (those paths) and then the
    record, so a stale record — usually a file just edited again — costs a
    few hundred stats, not the whole record."""
    if key is None or os.environ.get("ATMOS_NO_CACHE"):
        return None
    try:
        with open(_path(state_dir, key), "rb") as fh:
            version, head_paths, head_sigs = pickle.load(fh)
            if version != VERSION or not signatures_unchanged(head_paths, head_sigs):
                return None
            record = pickle.load(fh)
    except Exception:  # missing, truncated, from other code: the full path
        return None
    return record if isinstance(record, Record) else None


def save(state_dir: str, key: str | None, record: Record | None) -> None:
    if key is None or os.environ.get("ATMOS_NO_CACHE"):
        return
    path = _path(state_dir, key)
    if record is None:  # this selection cannot be recorded (now): drop an old record
        try:
            os.unlink(path)
        except OSError:
            pass
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        head = (VERSION, record.paths[:HEAD], record.sigs[:HEAD])
        with open(tmp, "wb") as fh:
            fh.write(pickle.dumps(head, protocol=pickle.HIGHEST_PROTOCOL))
            fh.write(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, path)
        entries = sorted((e for e in os.scandir(os.path.dirname(path)) if e.name.startswith("uptodate-")),
                         key=lambda e: e.stat().st_mtime)
        for old in entries[:-KEEP]:
            os.unlink(old.path)
    except OSError:  # an unwritable cache only costs speed
        try:
            os.unlink(tmp)
        except OSError:
            pass


def make(graph, trees: dict, store, root: str) -> Record | None:
    """The record of a rollout that just left every node of `graph` up to
    date (call it under the locks), or None when the selection cannot be
    recorded. `trees` is the tree cache its keys were computed with."""
    settled = FileDigester(root, cache={})  # for trees too new to trust when the rollout began
    roots, root_sigs, files = [], [], []
    seen: set[str] = set()
    nodes: dict[str, RecordedNode] = {}
    for nid, node in graph.nodes.items():
        comp = node.component
        if not comp.cache:
            return None
        nodes[nid] = RecordedNode(node.deployment, node.target, node.cid, node.mode)
        if comp.inputs:
            watched = _inputs_watch(root, comp.inputs, node.local["files"], settled)
            if watched is None:
                return None
            for path, sig, followed in watched:
                if followed:
                    roots.append(path)
                    root_sigs.append(sig)
                else:
                    files.append((path, sig))
        if comp.source is None or comp.source in seen:
            continue
        seen.add(comp.source)
        tree = trees.get(comp.source)
        if tree is None:
            return None
        if not tree[0]:
            # Racily new when the keys were computed (as git re-hashes racily
            # clean entries): read the tree again now. If it holds exactly
            # what the keys were computed from and has settled since, record it.
            if settled.tree(comp.source) != tree[4] or not settled.trees[comp.source][0]:
                return None
            tree = settled.trees[comp.source]
        roots.append(tree[1][0])
        root_sigs.append(tree[2][0])
        files.extend(zip(tree[1][1:], tree[2][1:]))
    applied: dict[tuple[str, str], dict[str, tuple]] = {}
    build_keys = []
    for label, spec in graph.specs.items():
        summary = store.applied_summary(spec.name, label.target)
        rows = applied.setdefault((spec.name, label.target), {})
        for node in nodes.values():
            if (node.deployment, node.target) != (spec.name, label.target):
                continue
            row = summary.get(node.cid)
            if row is None:
                return None
            rows[node.cid] = row
            if node.mode == BUILD:
                build_keys.append(row[0])
    recorded = RecordedGraph(tuple(graph.labels), {label: RecordedSpec(spec.name)
                                                   for label, spec in graph.specs.items()},
                             nodes, graph.dag)
    # Most recently changed first (by ctime): the file edited last is the one
    # most likely edited next, so a stale record is usually found out within
    # the first chunk instead of after stat-ing half the workspace.
    files.sort(key=lambda entry: entry[1][2], reverse=True)
    paths = tuple(path for path, _ in files)
    sigs = tuple(sig for _, sig in files)
    return Record(recorded, tuple(roots), tuple(root_sigs), paths, sigs, applied, tuple(build_keys))


def _inputs_watch(root: str, patterns, planned: dict, settled) -> list | None:
    """What to watch so that the matches of `inputs` globs cannot change
    unseen: every directory at or below each pattern's fixed prefix (an entry
    added, removed or renamed anywhere there moves a directory's mtime), or,
    where the prefix does not exist, its nearest existing ancestor (creating
    the prefix moves that one), plus every matched file. Taken now, after the
    rollout: the globs are expanded again and must match what the keys were
    computed from, with the same bytes, all settled. None: cannot be watched
    (a symlinked directory below a prefix, something too new to trust)."""
    from glob import has_magic

    from ..graph.keys import InputOutsideRoot, expand_inputs

    watched: list[tuple[str, tuple, bool]] = []
    for pattern in patterns:
        parts = pattern.split("/")
        if ".." in parts or pattern.startswith("/"):
            return None
        fixed = []
        for part in parts[:-1]:
            if has_magic(part):
                break
            fixed.append(part)
        prefix = os.path.join(root, *fixed)
        while not os.path.isdir(prefix):
            if prefix == root:
                return None
            prefix = os.path.dirname(prefix)
            fixed = fixed[:-1]
        st = os.stat(prefix)
        if settled.racy(st):
            return None
        watched.append((prefix, signature(st), True))
        for dirpath, dirnames, _ in os.walk(prefix):
            # glob's `*` and `**` never enter hidden directories (.git, .atmos)
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            for name in dirnames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if stat_mod.S_ISLNK(st.st_mode) or settled.racy(st):
                    return None  # glob may follow a link where we cannot watch
                watched.append((path, signature(st), False))
    try:
        matched = expand_inputs(root, patterns)
    except InputOutsideRoot:
        return None
    expected = {name[len("inputs:"):]: entry for name, entry in planned.items() if name.startswith("inputs:")}
    if set(matched) != set(expected):
        return None
    stats = [os.lstat(os.path.join(root, rel)) for rel in matched]  # before the bytes are read
    for (rel, kind, digest, exe), st in zip(settled.files(matched), stats):
        if [kind, digest, exe] != list(expected[rel]) or settled.racy(st):
            return None
        watched.append((os.path.join(root, rel), signature(st), False))
    return watched


def record_after(state_dir: str, key: str | None, graph, trees: dict, store, root: str) -> None:
    """Record (or drop) the up-to-date record once a rollout left `graph` up
    to date. A source that vanished meanwhile just means no record."""
    try:
        record = make(graph, trees, store, root)
    except OSError:
        record = None
    save(state_dir, key, record)


def files_unchanged(record: Record) -> bool:
    return (signatures_unchanged(record.roots, record.root_sigs, follow=True)
            and signatures_unchanged(record.paths, record.sigs))


class UpToDateRollout(Rollout):
    """A rollout of a recorded selection: nothing is compiled and nothing
    decided; `read_state` proves, under the locks, that nothing needs to."""

    def __init__(self, root, state_dir, record: Record, store, options, console) -> None:
        super().__init__(root, state_dir, record.graph, store, options, console)
        self.record = record

    def read_state(self) -> None:
        # Keys, results and durations only: the rows' outputs and ingredients
        # (kilobytes each) are not needed when nothing will run.
        self.rows = {place: self.store.applied_summary(*place) for place in self.record.applied}
        for place, rows in self.record.applied.items():
            current = self.rows[place]
            if any(current.get(cid) != row for cid, row in rows.items()):
                raise Stale()
        keys = self.record.build_keys
        if keys and len(self.store.builds(list(keys))) != len(set(keys)):
            raise Stale()

    def recorded_duration(self, node) -> float | None:
        return self.rows[(node.deployment, node.target)][node.cid][2]

    def _needs_run(self, nid: str) -> bool:
        return False


def rollout_if_up_to_date(key: str | None, root: str, state_dir: str, options, console,
                          open_store: Callable) -> int | None:
    """Run the rollout from the record under `key` (record_key) if everything
    is provably up to date; None (nothing printed, nothing written) when the
    full path must run."""
    record = load(state_dir, key)
    if record is None or not files_unchanged(record):
        return None
    store = open_store(state_dir, readonly=True)
    try:
        return UpToDateRollout(root, state_dir, record, store, options, console).run()
    except Stale:
        return None
    finally:
        store.close()
