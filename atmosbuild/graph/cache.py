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

import os
import pickle

import xxhash

from ..config.document import Document
from ..config.doccache import _LazyLocate, code_stamp
from ..config.labels import Label
from ..config.workspace import _parse_dsl, package_file
from ..config.yaml import parse_yaml

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
            os.makedirs(self.dir, exist_ok=True)
            path = os.path.join(self.dir, f"structure-{key}.pickle")
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "wb") as fh:
                pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
            entries = sorted((e for e in os.scandir(self.dir) if e.name.startswith("structure-")),
                             key=lambda e: e.stat().st_mtime)
            for old in entries[:-KEEP]:
                os.unlink(old.path)
        except Exception:  # an unwritable cache only costs speed
            pass


def picklable_document(doc: Document) -> Document:
    """The parts of a document errors need, re-parsed lazily when used."""
    parse = _parse_dsl if doc.kind == "dsl" else parse_yaml
    return Document(data={}, file=doc.file, text=doc.text,
                    locate=_LazyLocate(parse, doc.text, doc.file), kind=doc.kind)
