"""Rollouts decided from a record instead of a compiled graph.

A rollout in which every component succeeded or was cached leaves, for its
selection (labels, `--only`, the deployment files' bytes, this code), a
record of what made it so:

  - the stat signature of every directory and file of every source tree its
    keys were computed from (files still too new to trust by their
    signature — racily clean, as git calls it — are recorded with their
    digest and read again), and
  - the store's applied rows for those components (key, result digest,
    duration) and the build keys build-mode components stand on.

The next rollout of the same selection stats every recorded path (one C-level
pass of lstat) and, under the deployment locks, checks the store still holds
the same rows. Then:

  - nothing moved: every key is what it was; the rollout runs with nothing
    to decide (the same locks, workspace, scheduler order, lines and summary
    as the full path) without compiling 5,000 action nodes first;
  - some source trees moved: only the components on those trees, and what
    depends on them, are compiled (from the structure's node pack) and
    decided as the full path decides them; everything else is what the
    record says. The record is then brought up to date for those trees.

Anything else — a change that no source tree accounts for (an `inputs`
glob's files), too many changed components, a row the record does not know —
sends the rollout down the full path; a record can cost a check, never a
wrong answer. Not recorded (always the full path): selections with a
`cache: false` component (it always runs), or `inputs` globs that cannot be
watched (a symlinked directory below the glob's fixed prefix).
"""

from __future__ import annotations

import marshal
import os
import stat as stat_mod
import struct
from itertools import chain
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import Callable, NamedTuple

from .. import clock
from ..components.base import BUILD
from ..config.doccache import code_stamp
from ..config.labels import Label
from ..fileops import keep_newest, load_plain, write_atomic
from ..graph.dag import Dag
from ..state.files import FileDigester, changed_in, file_digest, signature
from .rollout import Rollout, _Result

VERSION = 5
KEEP = 8  # records kept per workspace (one per selection)
# A partial rollout decides at most a quarter of the selection again (or
# PARTIAL_MIN nodes); past that, compiling the whole graph in one go is as
# cheap as node by node.
PARTIAL_SHARE = 4
PARTIAL_MIN = 256


@dataclass(frozen=True)
class RecordedSpec:
    name: str
    components: frozenset = frozenset()  # its component ids (from the node pack, when needed)


class RecordedNode(NamedTuple):  # a tuple: 5,000 of them load from marshal in a blink
    deployment: str
    target: str
    cid: str
    mode: str
    source: str | None = None


@dataclass
class RecordedGraph:
    """What a rollout needs of the graph for the nodes it does not decide."""

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
    paths: tuple[str, ...]  # everything below them and every inputs match (lstat)
    sigs: tuple
    racy: tuple  # (path, signature, digest): paths above too new to trust by signature alone
    watched: frozenset  # the paths above recorded for `inputs` globs
    applied: dict[tuple[str, str], dict[str, tuple]]  # (deployment, target) -> cid -> (key, result, duration)
    build_keys: tuple[str, ...]
    # The file it was read from, and the delta (see save_delta) applied on top.
    token: str = ""
    delta: Delta | None = None


@dataclass
class Delta:
    """What partial rollouts changed in a record since it was written whole:
    new signatures of existing paths, the racy entries now, applied rows."""

    sigs: dict = field(default_factory=dict)  # path -> signature
    racy: tuple = ()
    rows: dict = field(default_factory=dict)  # (deployment, target) -> cid -> row


DELTA_MAX = 4096  # signatures a delta holds before the record is written whole again


class Keys(NamedTuple):
    record: str  # the record's own key
    structure: str  # the structure cache's key (node pack)


class Stale(Exception):
    """The store no longer holds what the record was made with."""


def record_key(state_dir: str, root: str, labels, only) -> Keys | None:
    from ..graph.cache import StructureCache

    structure = StructureCache(state_dir).key(root, labels, only)
    if structure is None:
        return None
    import xxhash

    # atmos.yaml too: its toolchain and terraform backend enter terraform keys.
    try:
        with open(os.path.join(root, "atmos.yaml"), "rb") as fh:
            settings = fh.read()
    except OSError:
        settings = b""
    key = xxhash.xxh3_128_hexdigest(f"{structure}\0{code_stamp()}\0{VERSION}\0".encode() + settings)
    return Keys(key, structure)


# On disk: one marshal file per record (plain tuples and dicts, the fastest
# format Python reads and writes), written whole, plus a small delta file a
# partial rollout writes when only file contents moved (an edit), so an edit
# does not rewrite 30,000 signatures. The delta names the record file it
# applies to (its token); one that does not match is ignored. Both are read
# through fileops.load_plain: plain data or nothing (marshal could also hold
# code objects, and nothing read from the state directory may be code).

def _path(state_dir: str, key: str, part: str = "marshal") -> str:
    return os.path.join(state_dir, "cache", f"uptodate-{key}.{part}")


def load(state_dir: str, keys: Keys | None) -> Record | None:
    if keys is None or os.environ.get("ATMOS_NO_CACHE"):
        return None
    try:
        with open(_path(state_dir, keys.record), "rb") as fh:
            version, token, graph, *fields = load_plain(fh.read())
        if version != VERSION:
            return None
        record = Record(_graph_from(graph), *_unpacked(fields), token=token)
    except Exception:  # missing, truncated, from other code: the full path
        return None
    try:
        with open(_path(state_dir, keys.record, "delta"), "rb") as fh:
            version, token, sigs, racy, rows = load_plain(fh.read())
        if version != VERSION or token != record.token:
            return record
    except Exception:  # none, or torn: the record as written whole
        return record
    index = {path: i for i, path in enumerate(record.paths)}
    if any(path not in index for path in sigs):
        return None
    updated_sigs = list(record.sigs)
    for path, sig in sigs.items():
        updated_sigs[index[path]] = sig
    record.sigs = tuple(updated_sigs)
    record.racy = racy
    for place, cids in rows.items():
        record.applied[place].update(cids)
    record.delta = Delta(sigs, racy, rows)
    return record


def save(state_dir: str, keys: Keys | None, record: Record | None) -> None:
    if keys is None or os.environ.get("ATMOS_NO_CACHE"):
        return
    path = _path(state_dir, keys.record)
    if record is None:  # this selection cannot be recorded (now): drop an old record
        for stale in (path, _path(state_dir, keys.record, "delta")):
            try:
                os.unlink(stale)
            except OSError:
                pass
        return
    try:
        fields = [getattr(record, f.name) for f in dataclass_fields(Record)
                  if f.name not in ("graph", "token", "delta")]
        token = os.urandom(8).hex()
        write_atomic(path, marshal.dumps((VERSION, token, _graph_data(record.graph), *_packed(fields))))
        for old in keep_newest(os.path.dirname(path),
                               lambda name: name.startswith("uptodate-") and name.endswith(".marshal"), KEEP):
            try:
                os.unlink(old[:-len("marshal")] + "delta")
            except FileNotFoundError:
                pass
    except (OSError, ValueError):  # an unwritable cache only costs speed
        pass


def save_delta(state_dir: str, keys: Keys, record: Record, delta: Delta) -> None:
    try:
        write_atomic(_path(state_dir, keys.record, "delta"),
               marshal.dumps((VERSION, record.token, delta.sigs, delta.racy, delta.rows)))
    except (OSError, ValueError):
        pass


# The four big fields (every path and signature of every source tree: 25,000
# of each at 5,000 components) are packed, paths as one NUL-joined string
# and signatures as one block of 64-bit integers: one object each for
# fileops.load_plain to check instead of 150,000, and unpacked at C speed.
_PACKED_PATHS = (0, 2)  # roots, paths: positions among the fields written
_PACKED_SIGS = (1, 3)  # root_sigs, sigs
_SIG = struct.Struct("<4q")


def _packed(fields: list) -> list:
    out = list(fields)
    for i in _PACKED_PATHS:
        out[i] = "\0".join(fields[i])
    for i in _PACKED_SIGS:
        out[i] = struct.pack(f"<{4 * len(fields[i])}q", *chain.from_iterable(fields[i]))
    return out


def _unpacked(fields: list) -> list:
    out = list(fields)
    for i in _PACKED_PATHS:
        out[i] = tuple(fields[i].split("\0")) if fields[i] else ()
    for i in _PACKED_SIGS:
        out[i] = tuple(_SIG.iter_unpack(fields[i]))
    if len(out[0]) != len(out[1]) or len(out[2]) != len(out[3]):
        raise ValueError("a record whose paths and signatures do not pair up")
    return out


def _graph_data(graph: RecordedGraph) -> tuple:
    dag = graph.dag
    return (tuple((label.package, label.target) for label in graph.labels),
            tuple((label.package, label.target, spec.name) for label, spec in graph.specs.items()),
            {nid: tuple(node) for nid, node in graph.nodes.items()},
            (dict(dag.deps), dict(dag.dependents), dag.waves, dict(dag.wave_of), dag.order))


def _graph_from(data: tuple) -> RecordedGraph:
    from ..graph.dag import _restore

    labels, specs, nodes, dag = data
    make_node = RecordedNode._make
    return RecordedGraph(tuple(Label(*label) for label in labels),
                         {Label(package, target): RecordedSpec(name) for package, target, name in specs},
                         {nid: make_node(node) for nid, node in nodes.items()},
                         _restore(*dag))


# -- making a record ---------------------------------------------------------------

@dataclass
class _Paths:
    """The paths of a record being made."""

    roots: list = field(default_factory=list)
    root_sigs: list = field(default_factory=list)
    files: list = field(default_factory=list)  # (path, signature)
    racy: list = field(default_factory=list)  # (path, signature, digest)
    regular: set = field(default_factory=set)  # the regular files among `files`
    watched: set = field(default_factory=set)


def make(graph, trees: dict, store, root: str) -> Record | None:
    """The record of a rollout that just left every node of `graph` up to
    date (call it under the locks), or None when the selection cannot be
    recorded. `trees` is the tree cache its keys were computed with."""
    settled = FileDigester(root, cache={})  # for trees too new to trust when the rollout began
    out = _Paths()
    seen: set[str] = set()
    nodes: dict[str, RecordedNode] = {}
    for nid, node in graph.nodes.items():
        comp = node.component
        if not comp.cache:
            return None
        nodes[nid] = RecordedNode(node.deployment, node.target, node.cid, node.mode, comp.source)
        if comp.inputs:
            watched = _inputs_watch(root, comp.inputs, node.local["files"], settled)
            if watched is None:
                return None
            for path, sig, followed in watched:
                out.watched.add(path)
                if followed:
                    out.roots.append(path)
                    out.root_sigs.append(sig)
                else:
                    out.files.append((path, sig))
        if comp.source is None or comp.source in seen:
            continue
        seen.add(comp.source)
        if not _add_tree(out, comp.source, trees.get(comp.source), settled):
            return None
    if not _add_terraform(out, graph, trees, settled, root):
        return None
    recorded = RecordedGraph(tuple(graph.labels), {label: RecordedSpec(spec.name)
                                                   for label, spec in graph.specs.items()},
                             nodes, graph.dag)
    return _finish(recorded, out, store)


def _add_terraform(out: _Paths, graph, trees: dict, settled: FileDigester, root: str) -> bool:
    """Terraform keys also stand on local modules outside the component's
    source and on the binary's identity: their trees and the binary are
    watched, and a change in them takes the full path (no node's source
    accounts for it). False (no record) when a module lies inside some
    component's source: a change there would be pinned on that one only."""
    sources = {node.component.source for node in graph.nodes.values()
               if node.component.source is not None}
    bases = tuple("" if s == "." else s + "/" for s in sources)
    modules: set[str] = set()
    binaries: set[str] = set()
    for node in graph.nodes.values():
        mods = node.local.get("modules") if hasattr(node.local, "get") else None
        own = node.component.source
        for mod in mods or ():
            if own is not None and (own == "." or mod == own or mod.startswith(own + "/")):
                continue
            modules.add(mod)
        binary = (getattr(node, "extra", None) or {}).get("binary")
        if binary:
            binaries.add(binary)
    for mod in sorted(modules):
        if any((mod + "/").startswith(base) for base in bases):
            return False
        if not _add_tree(out, mod, trees.get(mod), settled):
            return False
    for binary in sorted(binaries):  # an upgrade in place moves its signature
        try:
            out.files.append((binary, signature(os.lstat(binary))))
        except OSError:
            return False
        out.watched.add(binary)
    return True


def _add_tree(out: _Paths, source: str, tree, settled: FileDigester) -> bool:
    """Add the paths of one source tree, as the keys saw it; False when it
    cannot be recorded."""
    if tree is None:
        return False
    if not tree[0]:
        # Racily new when the keys were computed (as git re-hashes racily
        # clean entries): read the tree again now. It must hold exactly what
        # the keys were computed from; files still racy are recorded with
        # their digest, to be read again by the next check.
        if settled.tree(source) != tree[4]:
            return False
        tree = settled.trees[source]
    paths, sigs = tree[1], tree[2]
    if not tree[0] and settled.racy_signature(sigs[0]):
        return False
    out.roots.append(paths[0])
    out.root_sigs.append(sigs[0])
    base = paths[0]
    digests = {f"{base}/{rel}": digest for rel, kind, digest, _ in tree[4] if kind == "f"}
    out.regular.update(digests)
    if tree[0]:
        out.files.extend(zip(paths[1:], sigs[1:]))
        return True
    for path, sig in zip(paths[1:], sigs[1:]):
        if settled.racy_signature(sig):
            if path not in digests:  # a directory or link just changed: no bytes to check
                return False
            out.racy.append((path, sig, digests[path]))  # checked by its bytes as well
        out.files.append((path, sig))
    return True


def _finish(graph: RecordedGraph, out: _Paths, store, summaries: dict | None = None) -> Record | None:
    """`summaries`: (deployment, target) -> store.applied_summary, when the
    caller has them current; else they are read here."""
    if summaries is None:
        summaries = {(spec.name, label.target): store.applied_summary(spec.name, label.target)
                     for label, spec in graph.specs.items()}
    applied: dict[tuple[str, str], dict[str, tuple]] = {place: {} for place in summaries}
    build_keys = []
    for node in graph.nodes.values():
        place = (node.deployment, node.target)
        row = summaries[place].get(node.cid)
        if row is None:
            return None
        applied[place][node.cid] = row
        if node.mode == BUILD:
            build_keys.append(row[0])
    return Record(graph, tuple(out.roots), tuple(out.root_sigs),
                  tuple(path for path, _ in out.files), tuple(sig for _, sig in out.files),
                  tuple(out.racy), frozenset(out.watched), applied, tuple(build_keys))


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


def record_after(state_dir: str, keys: Keys | None, graph, trees: dict, store, root: str) -> None:
    """Record (or drop) the up-to-date record once a rollout left `graph` up
    to date. A source that vanished meanwhile just means no record."""
    if keys is None:
        return
    try:
        record = make(graph, trees, store, root)
    except OSError:
        record = None
    save(state_dir, keys, record)


# -- checking a record ---------------------------------------------------------------

def changed_paths(record: Record) -> list[str]:
    """Every recorded path that no longer is what the record says."""
    out = changed_in([(record.roots, record.root_sigs, True), (record.paths, record.sigs, False)])
    for path, sig, digest in record.racy:  # (their signatures are among the paths' too)
        try:
            same = signature(os.lstat(path)) == sig and file_digest(path) == digest
        except OSError:
            same = False
        if not same:
            out.append(path)
    return list(dict.fromkeys(out))


def dirty_nodes(record: Record, root: str, changed: list[str]) -> set[str] | None:
    """The nodes whose source tree holds a changed path (every tree that
    holds it: sources can nest), or None when a change is not accounted for
    by source trees alone (an `inputs` glob watches it)."""
    by_base: dict[str, list[str]] = {}
    for nid, node in record.graph.nodes.items():
        if node.source is not None:
            base = root if node.source == "." else f"{root}/{node.source}"
            by_base.setdefault(base, []).append(nid)
    dirty: set[str] = set()
    for path in changed:
        if path in record.watched:
            return None
        found, here = False, path
        while True:
            nids = by_base.get(here)
            if nids:
                dirty.update(nids)
                found = True
            parent = os.path.dirname(here)
            if parent == here or len(here) <= len(root):
                break
            here = parent
        if not found:
            return None
    return dirty


def record_partial(state_dir: str, keys: Keys, record: Record, dirty: set[str], changed: list[str],
                   trees: dict, rollout: "RecordedRollout", root: str, checked_at: int) -> None:
    """Bring the record along after a partial rollout left everything up to
    date (call it under the locks): the trees of the dirty nodes as their keys
    saw them (`trees`, that rollout's tree cache), everything else as it was,
    the store's rows as read under the locks with the decided ones read
    again. When only files' contents moved, that is a delta; else the record
    is written whole."""
    sources = {record.graph.nodes[nid].source for nid in dirty}
    bases = frozenset(root if source == "." else f"{root}/{source}" for source in sources)
    under = tuple(base + "/" for base in bases)
    # Racy entries outside the dirty trees stay, unless they had settled when
    # this rollout's check read their bytes: any later write moves their
    # signature, so from here on the signature is enough.
    settled_by = checked_at - clock.racy_window_ns()
    record.racy = tuple(entry for entry in record.racy if not entry[0].startswith(under)
                        and (entry[1][1] >= settled_by or entry[1][2] >= settled_by))
    out = _Paths(watched=set(record.watched))
    settled = FileDigester(root, cache={})
    try:
        if not all(_add_tree(out, source, trees.get(source), settled) for source in sorted(sources)):
            save(state_dir, keys, None)
            return
    except OSError:  # a source vanished meanwhile: no record
        save(state_dir, keys, None)
        return
    rows: dict[tuple[str, str], dict[str, tuple]] = {}
    decided: dict[tuple[str, str], list[str]] = {}
    for nid in rollout.decisions:
        node = rollout.graph.nodes[nid]
        decided.setdefault((node.deployment, node.target), []).append(node.cid)
    for place, cids in decided.items():
        rows[place] = {cid: (row.key, row.result, row.duration)
                       for cid, row in rollout.store.snapshot(*place, components=cids).applied.items()}
    builds = any(rollout.graph.nodes[nid].mode == BUILD for nid in rollout.decisions)
    delta = None if builds else _delta(record, out, rows, changed, bases)
    if delta is not None:
        save_delta(state_dir, keys, record, delta)
        return
    keep_roots = [(path, sig) for path, sig in zip(record.roots, record.root_sigs) if path not in bases]
    out.roots += [path for path, _ in keep_roots]
    out.root_sigs += [sig for _, sig in keep_roots]
    out.files += [(path, sig) for path, sig in zip(record.paths, record.sigs)
                  if not path.startswith(under)]
    out.racy += record.racy
    summaries = {place: {**current, **rows.get(place, {})} for place, current in rollout.rows.items()}
    save(state_dir, keys, _finish(record.graph, out, rollout.store, summaries))


def _delta(record: Record, out: _Paths, rows: dict, changed: list[str], bases) -> Delta | None:
    """The delta when every changed path is a regular file still in a dirty
    tree (an edit, a chmod): the record's paths stay as they are. None when
    an entry was added, removed or renamed (a directory or root moved)."""
    if not record.token or any(path in bases for path in changed):
        return None
    now = dict(out.files)
    if any(path not in now or path not in out.regular for path in changed):
        return None
    before = record.delta or Delta()
    sigs = {**before.sigs, **{path: now[path] for path in changed}}
    if len(sigs) > DELTA_MAX:
        return None
    racy = record.racy + tuple(out.racy)
    merged = {place: dict(cids) for place, cids in before.rows.items()}
    for place, cids in rows.items():
        merged.setdefault(place, {}).update(cids)
    return Delta(sigs, racy, merged)


# -- rolling out from a record ---------------------------------------------------------

class RecordedRollout(Rollout):
    """A rollout of a recorded selection. `compiled` holds the nodes that may
    have to be decided again (those on changed trees, `dirty`, and what
    depends on them); every other node is what the record says, and
    `read_state` proves, under the locks, that the store agrees. A compiled
    node is decided only if it is dirty or an upstream's result moved."""

    def __init__(self, root, state_dir, record: Record, store, options, console,
                 compiled: dict | None = None, dirty: set[str] | None = None,
                 components: dict | None = None) -> None:
        graph = record.graph
        if compiled:  # a graph of our own: decided nodes replace recorded ones in it
            specs = {label: replace(spec, components=components[str(label)])
                     for label, spec in graph.specs.items()}
            graph = RecordedGraph(graph.labels, specs, dict(graph.nodes), graph.dag)
        super().__init__(root, state_dir, graph, store, options, console)
        self.record = record
        self.compiled = compiled or {}
        self.dirty = dirty or set()
        self.moved: set[str] = set()  # decided nodes whose result is not the recorded one
        self.upstreams = {d for node in self.compiled.values() for d in node.deps}
        self.compiler = None  # set by rollout_if_up_to_date when it compiled nodes

    def read_state(self) -> None:
        # Keys, results and durations only: the rows' outputs and ingredients
        # (kilobytes each) are not needed for nodes that are not decided.
        self.rows = {place: self.store.applied_summary(*place) for place in self.record.applied}
        for place, rows in self.record.applied.items():
            current = self.rows[place]
            if any(current.get(cid) != row for cid, row in rows.items()):
                raise Stale()
        keys = self.record.build_keys
        if keys and len(self.store.builds(list(keys))) != len(set(keys)):
            raise Stale()
        if self.compiled:
            from ..state.rebuild import Rebuilder

            # Full rows (outputs, ingredients, last attempt) for the nodes that
            # may be decided and for their upstreams (whose outputs they render).
            wanted: dict[tuple[str, str], set[str]] = {}
            for node in self.compiled.values():
                cids = wanted.setdefault((node.deployment, node.target), set())
                cids.add(node.cid)
                cids.update(self.graph.nodes[d].cid for d in node.deps)
            snapshots = {place: self.store.snapshot(*place, components=cids)
                         for place, cids in wanted.items()}
            self.rebuilder = Rebuilder(self.graph, self.store, force=False, snapshots=snapshots)

    def recorded_duration(self, node) -> float | None:
        return self.rows[(node.deployment, node.target)][node.cid][2]

    def _needs_run(self, nid: str) -> bool:
        node = self.compiled.get(nid)
        if node is not None and (nid in self.dirty or any(d in self.moved for d in node.deps)):
            self.graph.nodes[nid] = node
            run = super()._needs_run(nid)
            if not run and self.results[nid].result != self._recorded_result(nid):
                self.moved.add(nid)
            return run
        if nid in self.upstreams:  # what a decided dependent keys on and renders from
            recorded = self.graph.nodes[nid]
            place = (recorded.deployment, recorded.target)
            applied = self.rebuilder.snapshots[place].applied.get(recorded.cid)
            self.results[nid] = _Result(self.rows[place][recorded.cid][1],
                                        dict(applied.outputs) if applied is not None else {})
        return False

    def node_finished(self, fin) -> None:
        super().node_finished(fin)
        if fin.ok and self.results[fin.node].result != self._recorded_result(fin.node):
            self.moved.add(fin.node)

    def _compiled_upstream(self, dep: str, up):
        # A dependent needs a sensitive output read back from this upstream's
        # type: compile it (from the node pack) to have one.
        if getattr(up, "ctype", None) is None and self.compiler is not None:
            from ..graph.actions import NeedsFullCompile

            try:
                return self.compiler.node(dep)
            except (NeedsFullCompile, OSError):
                return up
        return up

    def _upstream_key(self, dep: str) -> str:
        if dep in self.decisions:
            return self.decisions[dep].key
        node = self.graph.nodes[dep]
        return self.rows[(node.deployment, node.target)][node.cid][0]

    def _recorded_result(self, nid: str) -> str:
        node = self.graph.nodes[nid]
        return self.rows[(node.deployment, node.target)][node.cid][1]


def rollout_if_up_to_date(keys: Keys | None, root: str, state_dir: str, options, console,
                          open_store: Callable) -> int | None:
    """Run the rollout from the record under `keys` (record_key) if it can
    be decided from there; None (nothing printed, nothing written) when the
    full path must run."""
    record = load(state_dir, keys)
    if record is None:
        return None
    checked_at = clock.now_ns()
    changed = changed_paths(record)
    compiled: dict = {}
    dirty: set[str] = set()
    components = None
    trees: dict = {}
    if changed:
        from ..graph.actions import NeedsFullCompile, NodeCompiler
        from ..graph.cache import DamagedCache, StructureCache

        dirty = dirty_nodes(record, root, changed)
        if dirty is None:
            return None
        dag = record.graph.dag
        affected = dirty | dag.downstream(dirty)
        if len(affected) > max(PARTIAL_MIN, len(record.graph.nodes) // PARTIAL_SHARE):
            return None
        pack = StructureCache(state_dir).load_nodes(keys.structure)
        if pack is None or any(nid not in pack for nid in affected):
            return None
        components = pack.ids
        # A few trees: reading their files costs less than loading the stat cache.
        digester = FileDigester(root, cache={}, trees=trees)
        names = {label: spec.name for label, spec in record.graph.specs.items()}
        from ..config.workspace import load_settings

        compiler = NodeCompiler(root, None, pack.get, dag, digester, lambda: load_settings(root),
                                names=names)
        try:
            compiled = {nid: compiler.node(nid) for nid in dag.order if nid in affected}
        except (NeedsFullCompile, DamagedCache, OSError):  # the full path says what is wrong, and where
            return None
    store = open_store(state_dir, readonly=not compiled)
    rollout = RecordedRollout(root, state_dir, record, store, options, console,
                              compiled, dirty, components)
    if compiled:
        rollout.compiler = compiler
    if compiled:
        rollout.on_up_to_date = lambda done: record_partial(
            state_dir, keys, record, dirty, changed, trees, done, root, checked_at)
    try:
        return rollout.run()
    except Stale:
        return None
    finally:
        store.close()
