"""A cache of compiled structure: specs, resolved components, the DAG and
each node's canonical configuration, for one set of labels.

All of it is a pure function of the deployment files' bytes (and the labels,
`--only` and atmosbuild's version), so the cache key is a digest of exactly
those: a no-op rollout of a big deployment neither parses, validates nor
resolves anything. File digests are *not* cached here: every run stats the
sources again (the stat cache in the store makes that cheap). Only commands
that write state (rollout) write this cache; any command may read it.
"""

from __future__ import annotations

import marshal
import os
import pickle

import xxhash

from ..config.doccache import code_stamp
from ..config.labels import Label
from ..config.workspace import package_file
from ..fileops import keep_newest, write_atomic

KEEP = 8  # cached structures kept per workspace
# Modules whose classes or logic shape what is pickled: a change to any of
# them (a checkout between releases) must not meet an old pickle.
PICKLED_MODULES = ("config/model.py", "config/resolve.py", "config/document.py",
                   "config/labels.py", "config/doccache.py", "graph/dag.py",
                   "graph/actions.py", "graph/keys.py", "components/__init__.py")


class StructureCache:
    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "cache")

    def key(self, root: str, labels: list[Label], only) -> str | None:
        stamp = code_stamp(*PICKLED_MODULES)
        h = xxhash.xxh3_128(f"{stamp}\0{root}\0{sorted(only or [])}\0".encode())
        for label in labels:
            h.update(f"{label}\0".encode())
        for package in sorted({label.package for label in labels}):
            path = package_file(root, package)
            if path is None:
                return None
            with open(path, "rb") as fh:
                h.update(path.encode() + b"\0" + fh.read() + b"\0")
        return h.hexdigest()

    def load(self, key: str | None):
        if key is None or os.environ.get("ATMOS_NO_CACHE"):
            return None
        try:
            with open(os.path.join(self.dir, f"structure-{key}.pickle"), "rb") as fh:
                return pickle.load(fh)
        except Exception:  # missing, truncated or from another version: rebuild
            return None

    def save(self, key: str | None, value) -> None:
        if key is None or os.environ.get("ATMOS_NO_CACHE"):
            return
        try:
            write_atomic(os.path.join(self.dir, f"structure-{key}.pickle"),
                         pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            self._prune("structure-")
        except Exception:  # an unwritable cache only costs speed
            pass

    # -- node packs --------------------------------------------------------------
    # The same structure cut per node, for a rollout that compiles only a few
    # nodes (run/uptodate.py): one marshal dict of small pickles, so loading it
    # costs a copy of bytes and only the nodes asked for are unpickled. Keyed
    # by the structure key: written once per set of deployment files.

    def _nodes_path(self, key: str) -> str:
        return os.path.join(self.dir, f"nodes-{key}.marshal")

    def has_nodes(self, key: str) -> bool:
        return os.environ.get("ATMOS_NO_CACHE") is not None or os.path.exists(self._nodes_path(key))

    def save_nodes(self, key: str, st, configs) -> None:
        ids = {str(label): tuple(spec.components) for label, spec in st.specs.items()}
        nodes = {}
        for nid in st.dag.order:
            label, cid = st.where[nid]
            nodes[nid] = pickle.dumps((label, cid, st.resolved[label][cid], configs[nid]),
                                      protocol=pickle.HIGHEST_PROTOCOL)
        try:
            write_atomic(self._nodes_path(key), marshal.dumps((NODES_VERSION, ids, nodes)))
            self._prune("nodes-")
        except OSError:  # an unwritable cache only costs speed
            pass

    def load_nodes(self, key: str | None) -> "NodePack | None":
        if key is None or os.environ.get("ATMOS_NO_CACHE"):
            return None
        try:
            with open(self._nodes_path(key), "rb") as fh:
                version, ids, nodes = marshal.loads(fh.read())
        except (OSError, ValueError, EOFError, TypeError):
            return None
        return NodePack(ids, nodes) if version == NODES_VERSION else None

    def _prune(self, prefix: str) -> None:
        keep_newest(self.dir, lambda name: name.startswith(prefix), KEEP)


NODES_VERSION = 1


class NodePack:
    """Per node: (label, component id, resolved component, (config, its
    canonical text)), unpickled on demand; per label: its component ids."""

    def __init__(self, ids: dict, nodes: dict) -> None:
        self.ids = {label: frozenset(names) for label, names in ids.items()}
        self._nodes = nodes
        self._loaded: dict[str, tuple] = {}

    def __contains__(self, nid: str) -> bool:
        return nid in self._nodes

    def get(self, nid: str) -> tuple:
        hit = self._loaded.get(nid)
        if hit is None:
            hit = self._loaded[nid] = pickle.loads(self._nodes[nid])
        return hit


def picklable_document(doc):
    """The parts of a document errors need, re-parsed lazily when used."""
    from ..config.doccache import _LazyLocate
    from ..config.document import Document
    from ..config.workspace import _parse_dsl
    from ..config.yaml import parse_yaml

    parse = _parse_dsl if doc.kind == "dsl" else parse_yaml
    return Document(data={}, file=doc.file, text=doc.text,
                    locate=_LazyLocate(parse, doc.text, doc.file), kind=doc.kind)
