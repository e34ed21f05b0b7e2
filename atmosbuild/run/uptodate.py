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
from types import MappingProxyType
from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple

from .. import clock
from ..components.base import BUILD
from ..config.doccache import code_stamp
from ..config.labels import Label
from ..fileops import keep_newest, load_plain, write_atomic
from ..graph.dag import Dag
from ..state.files import FileDigester, changed_in, file_digest, signature, signature_since
from .decide import Decider, Stale

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


class RacyEntry(NamedTuple):
    """A path too new to trust by its signature alone: checked by its bytes too."""

    path: str
    sig: tuple  # state.files.signature
    digest: str


@dataclass(frozen=True)
class Record:
    graph: RecordedGraph
    # stat follows a symlink here: each source tree's own directory, each inputs prefix
    roots: tuple[str, ...]
    root_sigs: tuple
    paths: tuple[str, ...]  # everything below them and every inputs match (lstat)
    sigs: tuple
    racy: tuple[RacyEntry, ...]  # paths above too new to trust by signature alone
    watched: frozenset  # the paths above recorded for `inputs` globs
    # (deployment, target) -> cid -> its applied row (store.AppliedRow: key, result, duration)
    applied: dict[tuple[str, str], dict[str, tuple]]
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
            (version, token, graph, roots, root_sigs, paths, sigs, racy, watched, applied,
             build_keys) = load_plain(fh.read())
        if version != VERSION:
            return None
        roots, paths = _unpack_paths(roots), _unpack_paths(paths)
        root_sigs, sigs = _unpack_sigs(root_sigs), _unpack_sigs(sigs)
        if len(roots) != len(root_sigs) or len(paths) != len(sigs):
            raise ValueError("a record whose paths and signatures do not pair up")
        record = Record(_graph_from(graph), roots, root_sigs, paths, sigs, _racy_from(racy),
                        watched, applied, build_keys, token=token)
    except Exception:  # missing, truncated, from other code: the full path
        return None
    try:
        with open(_path(state_dir, keys.record, "delta"), "rb") as fh:
            version, token, sigs, racy, rows = load_plain(fh.read())
        if version != VERSION or token != record.token:
            return record
        racy = _racy_from(racy)
    except Exception:  # none, or torn: the record as written whole
        return record
    index = {path: i for i, path in enumerate(record.paths)}
    if any(path not in index for path in sigs):
        return None
    updated_sigs = list(record.sigs)
    for path, sig in sigs.items():
        updated_sigs[index[path]] = sig
    for place, cids in rows.items():
        record.applied[place].update(cids)
    return replace(record, sigs=tuple(updated_sigs), racy=racy, delta=Delta(sigs, racy, rows))


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
        token = os.urandom(8).hex()
        write_atomic(path, marshal.dumps((
            VERSION, token, _graph_data(record.graph),
            _pack_paths(record.roots), _pack_sigs(record.root_sigs),
            _pack_paths(record.paths), _pack_sigs(record.sigs),
            _racy_data(record.racy), record.watched, record.applied, record.build_keys)))
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
                     marshal.dumps((VERSION, record.token, delta.sigs, _racy_data(delta.racy), delta.rows)))
    except (OSError, ValueError):
        pass


# The four big fields (every path and signature of every source tree: 25,000
# of each at 5,000 components) are packed, paths as one NUL-joined string
# and signatures as one block of 64-bit integers: one object each for
# fileops.load_plain to check instead of 150,000, and unpacked at C speed.
# (Marshal writes plain tuples only: named records are written as those.)
_SIG = struct.Struct("<4q")


def _pack_paths(paths) -> str:
    return "\0".join(paths)


def _unpack_paths(packed: str) -> tuple:
    return tuple(packed.split("\0")) if packed else ()


def _pack_sigs(sigs) -> bytes:
    return struct.pack(f"<{4 * len(sigs)}q", *chain.from_iterable(sigs))


def _unpack_sigs(packed: bytes) -> tuple:
    return tuple(_SIG.iter_unpack(packed))


def _racy_data(racy) -> tuple:
    return tuple((entry[0], tuple(entry[1]), entry[2]) for entry in racy)


def _racy_from(data) -> tuple:
    return tuple(RacyEntry(path, tuple(sig), digest) for path, sig, digest in data)


def _graph_data(graph: RecordedGraph) -> tuple:
    dag = graph.dag
    return (tuple((label.package, label.target) for label in graph.labels),
            tuple((label.package, label.target, spec.name) for label, spec in graph.specs.items()),
            {nid: tuple(node) for nid, node in graph.nodes.items()},
            (dict(dag.deps), dict(dag.dependents), dag.waves, dict(dag.wave_of), dag.order))


def _graph_from(data: tuple) -> RecordedGraph:
    labels, specs, nodes, dag = data
    deps, dependents, waves, wave_of, order = dag
    make_node = RecordedNode._make
    return RecordedGraph(tuple(Label(*label) for label in labels),
                         {Label(package, target): RecordedSpec(name) for package, target, name in specs},
                         {nid: make_node(node) for nid, node in nodes.items()},
                         Dag(MappingProxyType(deps), MappingProxyType(dependents), waves,
                             MappingProxyType(wave_of), order))


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
    if not tree.trusted:
        # Racily new when the keys were computed (as git re-hashes racily
        # clean entries): read the tree again now. It must hold exactly what
        # the keys were computed from; files still racy are recorded with
        # their digest, to be read again by the next check.
        if settled.tree(source) != tree.entries:
            return False
        tree = settled.trees[source]
    paths, sigs = tree.paths, tree.sigs
    if not tree.trusted and settled.racy_signature(sigs[0]):
        return False
    out.roots.append(paths[0])
    out.root_sigs.append(sigs[0])
    base = paths[0]
    digests = {f"{base}/{rel}": digest for rel, kind, digest, _ in tree.entries if kind == "f"}
    out.regular.update(digests)
    if tree.trusted:
        out.files.extend(zip(paths[1:], sigs[1:]))
        return True
    for path, sig in zip(paths[1:], sigs[1:]):
        if settled.racy_signature(sig):
            if path not in digests:  # a directory or link just changed: no bytes to check
                return False
            out.racy.append(RacyEntry(path, sig, digests[path]))  # checked by its bytes as well
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
        key, result, duration = row  # (an AppliedRow, written as a plain tuple)
        applied[place][node.cid] = (key, result, duration)
        if node.mode == BUILD:
            build_keys.append(key)
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


class Checked(NamedTuple):
    """What checking a record against the files found: the paths that moved,
    the nodes whose trees hold them, and those compiled again (them and what
    depends on them), with the tree cache their keys were computed with."""

    keys: Keys
    record: Record
    checked_at: int  # when the check began (clock.now_ns)
    changed: list
    dirty: frozenset = frozenset()
    compiled: dict = {}  # node id -> ActionNode
    trees: dict = {}
    components: dict | None = None  # str(label) -> its component ids (from the node pack)
    compiler: object = None  # graph.actions.NodeCompiler: compiles a recorded node on demand


def record_partial(state_dir: str, root: str, check: Checked, decider: Decider) -> None:
    """Bring the record along after a partial rollout left everything up to
    date (call it under the locks): the trees of the dirty nodes as their keys
    saw them (`check.trees`), everything else as it was, the store's rows as
    `decider` read them under the locks, with those it decided read again.
    When only files' contents moved, that is a delta; else the record is
    written whole."""
    keys, record, changed = check.keys, check.record, check.changed
    nodes = record.graph.nodes
    sources = {nodes[nid].source for nid in check.dirty}
    bases = frozenset(root if source == "." else f"{root}/{source}" for source in sources)
    under = tuple(base + "/" for base in bases)
    # Racy entries outside the dirty trees stay, unless they had settled when
    # this rollout's check read their bytes: any later write moves their
    # signature, so from here on the signature is enough.
    settled_by = check.checked_at - clock.racy_window_ns()
    record = replace(record, racy=tuple(
        entry for entry in record.racy if not entry.path.startswith(under) and signature_since(entry.sig, settled_by)))
    out = _Paths(watched=set(record.watched))
    settled = FileDigester(root, cache={})
    try:
        if not all(_add_tree(out, source, check.trees.get(source), settled) for source in sorted(sources)):
            save(state_dir, keys, None)
            return
    except OSError:  # a source vanished meanwhile: no record
        save(state_dir, keys, None)
        return
    rows: dict[tuple[str, str], dict[str, tuple]] = {}
    decided: dict[tuple[str, str], list[str]] = {}
    for nid in decider.decided:
        node = nodes[nid]
        decided.setdefault((node.deployment, node.target), []).append(node.cid)
    store = decider.store
    for place, cids in decided.items():
        rows[place] = {cid: (row.key, row.result, row.duration) for cid, row in store.snapshot(*place, components=cids).applied.items()}
    builds = any(nodes[nid].mode == BUILD for nid in decider.decided)
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
    summaries = {place: {**current, **rows.get(place, {})} for place, current in decider.rows.items()}
    save(state_dir, keys, _finish(record.graph, out, store, summaries))


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

def check_record(keys: Keys | None, root: str, state_dir: str) -> Checked | None:
    """Check the record under `keys` against the files: what moved and,
    when some trees did, their nodes and what depends on them compiled
    (from the structure's node pack, before any lock or workspace, so a
    problem takes the full path and is reported there). None: the full path."""
    record = load(state_dir, keys)
    if record is None:
        return None
    checked_at = clock.now_ns()
    changed = changed_paths(record)
    if not changed:
        return Checked(keys, record, checked_at, changed)
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
    # A few trees: reading their files costs less than loading the stat cache.
    trees: dict = {}
    digester = FileDigester(root, cache={}, trees=trees)
    names = {label: spec.name for label, spec in record.graph.specs.items()}
    from ..config.workspace import load_settings

    compiler = NodeCompiler(root, None, pack.get, dag, digester, lambda: load_settings(root),
                            names=names)
    try:
        compiled = {nid: compiler.node(nid) for nid in dag.order if nid in affected}
    except (NeedsFullCompile, DamagedCache, OSError):  # the full path says what is wrong, and where
        return None
    return Checked(keys, record, checked_at, changed, frozenset(dirty), compiled, trees, pack.ids,
                   compiler)


def checked_graph(check: Checked) -> RecordedGraph:
    """The graph a rollout decided from the record runs: the recorded nodes,
    with the compiled ones in place of theirs."""
    graph = check.record.graph
    if not check.compiled:
        return graph
    specs = {label: replace(spec, components=check.components[str(label)])
             for label, spec in graph.specs.items()}
    return RecordedGraph(graph.labels, specs, {**graph.nodes, **check.compiled}, graph.dag)


def rollout_if_up_to_date(keys: Keys | None, root: str, state_dir: str, options, console,
                          open_store: Callable) -> int | None:
    """Run the rollout from the record under `keys` (record_key) if it can
    be decided from there; None (nothing printed, nothing written) when the
    full path must run."""
    from .rollout import Rollout

    checked = check_record(keys, root, state_dir)
    if checked is None:
        return None
    graph = checked_graph(checked)
    store = open_store(state_dir, readonly=not checked.compiled)
    decider = Decider(graph, store, record=checked.record, compiled=frozenset(checked.compiled),
                      dirty=checked.dirty, compile_node=checked.compiler.node if checked.compiler else None)
    # After a clean partial run the record follows it (under the locks).
    follow = (lambda done: record_partial(state_dir, root, checked, decider)) if checked.compiled else None
    rollout = Rollout(root, state_dir, graph, store, options, console, decider=decider,
                      on_up_to_date=follow)
    try:
        return rollout.run()
    except Stale:
        return None
    finally:
        store.close()
