"""A cache of compiled structure: specs, resolved components, the DAG and
each node's canonical configuration, for one set of labels.

All of it is a pure function of the deployment files' bytes (and the labels,
`--only` and this code), so the cache key is a digest of exactly those: a
no-op rollout of a big deployment neither parses, validates nor resolves
anything. File digests are *not* cached here: every run stats the sources
again (the stat cache in the store makes that cheap). Only commands that
write state (rollout) write this cache; any command may read it.

Data, never code (SPEC 14): `.atmos/` lives in the repository and may come
with a clone, so nothing here is a pickle. The structure is written as plain
data through marshal (`encode`): dataclasses as tagged tuples naming their
class, read back only as dataclasses of modules of this package already
loaded, built field by field without running any of their code; documents
as their file, text and syntax (re-parsed only when an error needs a
position). A file is checked to be plain data (`fileops.load_plain`) before
anything is decoded.
"""

from __future__ import annotations

import dataclasses
import marshal
import operator
import os
import sys
from types import MappingProxyType
from typing import Callable

import xxhash

from ..config.doccache import code_stamp
from ..config.labels import Label
from ..config.workspace import package_file
from ..fileops import keep_newest, load_plain, write_atomic

KEEP = 8  # cached structures kept per workspace
FORMAT = 1  # of the encoding below; the code stamp covers every other change


class StructureCache:
    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "cache")
        self.state_dir = state_dir

    def key(self, root: str, labels: list[Label], only) -> str | None:
        h = xxhash.xxh3_128(f"{code_stamp()}\0{FORMAT}\0{root}\0{sorted(only or [])}\0".encode())
        for label in labels:
            h.update(f"{label}\0".encode())
        for package in sorted({label.package for label in labels}):
            path = package_file(root, package)
            if path is None:
                return None
            with open(path, "rb") as fh:
                h.update(path.encode() + b"\0" + fh.read() + b"\0")
        return h.hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, f"structure-{key}.marshal")

    def load(self, key: str | None):
        if key is None or os.environ.get("ATMOS_NO_CACHE"):
            return None
        try:
            with open(self._path(key), "rb") as fh:
                return decode(load_plain(fh.read()))
        except Exception:  # missing, truncated, not plain data, other code: rebuild
            return None

    def save(self, key: str | None, value) -> None:
        if key is None or os.environ.get("ATMOS_NO_CACHE"):
            return
        try:
            data = marshal.dumps(encode(value))
            _ensure(self.state_dir)
            write_atomic(self._path(key), data)
            self._prune("structure-")
        except Exception:  # unencodable or unwritable: a cache only costs speed
            pass

    # -- node packs --------------------------------------------------------------
    # The same structure cut per node, for a rollout that compiles only a few
    # nodes (run/uptodate.py): one marshal dict of per-node encoded bytes, so
    # loading it costs a copy of bytes and only the nodes asked for are
    # decoded. Keyed by the structure key: written once per set of
    # deployment files.

    def _nodes_path(self, key: str) -> str:
        return os.path.join(self.dir, f"nodes-{key}.marshal")

    def has_nodes(self, key: str) -> bool:
        return os.environ.get("ATMOS_NO_CACHE") is not None or os.path.exists(self._nodes_path(key))

    def save_nodes(self, key: str, st, configs) -> None:
        try:
            ids = {str(label): tuple(spec.components) for label, spec in st.specs.items()}
            nodes = {}
            for nid in st.dag.order:
                label, cid = st.where[nid]
                nodes[nid] = marshal.dumps(encode((label, cid, st.resolved[label][cid], configs[nid])))
            data = marshal.dumps((NODES_VERSION, ids, nodes))
            _ensure(self.state_dir)
            write_atomic(self._nodes_path(key), data)
            self._prune("nodes-")
        except Exception:  # unencodable or unwritable: a cache only costs speed
            pass

    def load_nodes(self, key: str | None) -> "NodePack | None":
        if key is None or os.environ.get("ATMOS_NO_CACHE"):
            return None
        try:
            with open(self._nodes_path(key), "rb") as fh:
                version, ids, nodes = load_plain(fh.read())
        except (OSError, ValueError, EOFError, TypeError):
            return None
        if (version != NODES_VERSION or type(ids) is not dict or type(nodes) is not dict
                or not all(type(v) is bytes for v in nodes.values())):
            return None
        return NodePack(ids, nodes)

    def _prune(self, prefix: str) -> None:
        keep_newest(self.dir, lambda name: name.startswith(prefix), KEEP)


def _ensure(state_dir: str) -> None:
    from ..fileops import ensure_state_dir

    ensure_state_dir(state_dir)


NODES_VERSION = 2


class NodePack:
    """Per node: (label, component id, resolved component, (config, its
    canonical text)), decoded on demand; per label: its component ids.
    `get` raises DamagedCache for an entry that is not what it should be."""

    def __init__(self, ids: dict, nodes: dict) -> None:
        self.ids = {label: frozenset(names) for label, names in ids.items()}
        self._nodes = nodes
        self._loaded: dict[str, tuple] = {}

    def __contains__(self, nid: str) -> bool:
        return nid in self._nodes

    def get(self, nid: str) -> tuple:
        hit = self._loaded.get(nid)
        if hit is None:
            try:
                hit = decode(load_plain(self._nodes[nid]))
            except Exception as exc:  # damaged, or not made by this code
                raise DamagedCache(f"node pack entry of {nid}: {exc}") from None
            if type(hit) is not tuple or len(hit) != 4:
                raise DamagedCache(f"node pack entry of {nid} is damaged")
            self._loaded[nid] = hit
        return hit


class DamagedCache(ValueError):
    """A cache entry is not what this code writes: compile it instead."""


# -- the encoding ---------------------------------------------------------------------
# Plain data stays as it is (marshal writes it at C speed, and decoding
# never walks it). Anything else becomes a tuple whose first item is a
# bytes tag, and each container records the positions of its tagged items:
# decoding visits those and nothing else, so no plain value is ever taken
# for a tag. One object met several times (a Label) is encoded once, so
# marshal writes it once and decoding makes it once.

_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})
_CONTAINERS = frozenset({tuple, list, dict, frozenset, set})


class Unencodable(TypeError):
    pass


def encode(value):
    """`value` as plain data for marshal (see above); Unencodable when it
    holds something that is not data (a function, an open file)."""
    encoded, plain = _Encoder().encode(value)
    return (FORMAT, encoded, not plain)


class _Encoder:
    def __init__(self) -> None:
        self.memo: dict[int, tuple] = {}
        self.keep: list = []  # what the memo's ids point at stays alive

    def encode(self, value):
        """(encoded, plain): `plain` when `encoded` is `value` itself."""
        kind = type(value)
        if kind in _PLAIN_SCALARS:
            return value, True
        if kind in _CONTAINERS and _marshals(value):
            return value, True  # plain data (checked at C speed: marshal writes nothing else)
        hit = self.memo.get(id(value))
        if hit is not None:
            return hit, False
        out = self._tagged(value, kind)
        self.memo[id(value)] = out
        self.keep.append(value)
        return out, False

    def _tagged(self, value, kind):
        if kind is tuple or kind is list:
            return (b"T" if kind is tuple else b"L", *self._items(value))
        if kind is dict:
            keys, kidx = self._items(value.keys())
            values, vidx = self._items(value.values())
            return (b"M", keys, kidx, values, vidx)
        if kind is frozenset or kind is set:
            return (b"F" if kind is frozenset else b"S", *self._items(value))
        if kind is MappingProxyType:
            encoded, plain = self.encode(dict(value))
            return (b"P", encoded, not plain)
        from ..config.document import Document
        from .dag import Dag

        if kind is Document:  # its `locate` is a function: keep what makes it again
            return (b"Doc", value.file, value.text, value.kind)
        if kind is Dag:  # (its parts are plain: strings and tuples of them)
            return (b"Dag", dict(value.deps), dict(value.dependents), value.waves,
                    dict(value.wave_of), value.order)
        if dataclasses.is_dataclass(value) and kind.__module__.startswith("atmosbuild."):
            name, fields = _fields_of(kind)
            values = fields(value)
            if _marshals(values):  # (most are: a component's fields are all data)
                return (b"D", name, values, ())
            return (b"D", name, *self._items(values))
        for base in (str, int, float):
            if isinstance(value, base):  # a subclass (a parser's token): its plain value
                return (b"V", base(value))
        raise Unencodable(f"cannot cache a {kind.__name__}")

    def _items(self, values) -> tuple[tuple, tuple]:
        """The encoded items, and the positions of those decoding must visit."""
        out, idx = [], []
        for i, value in enumerate(values):
            if type(value) in _PLAIN_SCALARS:
                out.append(value)
                continue
            encoded, plain = self.encode(value)
            out.append(encoded)
            if not plain:
                idx.append(i)
        return tuple(out), tuple(idx)


_FIELDS: dict[type, tuple] = {}


def _fields_of(cls: type) -> tuple[str, Callable]:
    """A dataclass's "module:qualname" and a function giving its field values as a tuple."""
    hit = _FIELDS.get(cls)
    if hit is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        get = operator.attrgetter(*names) if len(names) > 1 else (
            (lambda obj, n=names[0]: (getattr(obj, n),)) if names else (lambda obj: ()))
        hit = _FIELDS[cls] = (f"{cls.__module__}:{cls.__qualname__}", get)
    return hit


def _marshals(value) -> bool:
    """marshal writes `value`: it holds only plain data (or code, which ours
    never holds), checked at C speed."""
    try:
        marshal.dumps(value)
    except ValueError:
        return False
    return True


def decode(data):
    """The value `encode` gave `data` for. `data` must have passed
    `fileops.plain_data`; ValueError for anything not made by `encode`."""
    if type(data) is not tuple or len(data) != 3 or data[0] != FORMAT:
        raise ValueError("not a cache entry of this format")
    _, encoded, tagged = data
    return _Decoder().decode(encoded) if tagged else encoded


class _Decoder:
    def __init__(self) -> None:
        self.memo: dict[int, object] = {}

    def decode(self, data):
        """`data` is at a position the encoder recorded: a tag."""
        if type(data) is not tuple or not data or type(data[0]) is not bytes:
            raise ValueError("a tag was expected")
        hit = self.memo.get(id(data), _MISSING)
        if hit is not _MISSING:
            return hit
        decoder = _DECODERS.get(data[0])
        if decoder is None:
            raise ValueError(f"unknown tag {data[0]!r}")
        out = self.memo[id(data)] = decoder(self, data)
        return out

    def items(self, values, idx) -> list:
        if type(values) is not tuple or type(idx) is not tuple:
            raise ValueError("bad container")
        out = list(values)
        for i in idx:
            if type(i) is not int:
                raise ValueError("bad position")
            out[i] = self.decode(values[i])
        return out


_MISSING = object()


def _decode_dataclass(dec: _Decoder, data):
    _, name, values, idx = data
    cls, names = _dataclass(name)
    if type(values) is not tuple or len(values) != len(names):
        raise ValueError(f"{name}: {len(values)} values for {len(names)} fields")
    obj = object.__new__(cls)  # no __init__, __post_init__ or __setstate__ runs
    state = dict(zip(names, dec.items(values, idx) if idx else values))
    if hasattr(obj, "__dict__"):
        obj.__dict__.update(state)
    else:
        for n, v in state.items():
            object.__setattr__(obj, n, v)
    return obj


_classes: dict[str, tuple[type, tuple[str, ...]]] = {}


def _dataclass(name) -> tuple[type, tuple[str, ...]]:
    """The dataclass `name` ("module:qualname") names and its field names:
    only a dataclass of a module of this package that is already imported
    (decoding never imports anything)."""
    hit = _classes.get(name)
    if hit is not None:
        return hit
    if type(name) is not str or ":" not in name:
        raise ValueError(f"bad class name {name!r}")
    module_name, _, qualname = name.partition(":")
    obj = sys.modules.get(module_name) if module_name.startswith("atmosbuild.") else None
    for part in qualname.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise ValueError(f"{name} is not a dataclass of atmosbuild")
    hit = _classes[name] = (obj, tuple(f.name for f in dataclasses.fields(obj)))
    return hit


def _decode_document(dec: _Decoder, data):
    from ..config.doccache import _LazyLocate
    from ..config.document import Document
    from ..config.workspace import _parse_dsl
    from ..config.yaml import parse_yaml

    _, file, text, kind = data
    if type(file) is not str or type(text) is not str or kind not in ("dsl", "yaml"):
        raise ValueError("bad document")
    parse = _parse_dsl if kind == "dsl" else parse_yaml
    return Document(data={}, file=file, text=text, locate=_LazyLocate(parse, text, file), kind=kind)


def _decode_dag(dec: _Decoder, data):
    from .dag import _restore

    _, *parts = data
    if len(parts) != 5:
        raise ValueError("bad dag")
    deps, dependents, waves, wave_of, order = parts
    if not (type(deps) is type(dependents) is type(wave_of) is dict
            and type(waves) is type(order) is tuple):
        raise ValueError("bad dag")
    return _restore(deps, dependents, waves, wave_of, order)


def _decode_dict(dec: _Decoder, data):
    _, keys, kidx, values, vidx = data
    return dict(zip(dec.items(keys, kidx), dec.items(values, vidx)))


def _decode_scalar(dec: _Decoder, data):
    if len(data) != 2 or type(data[1]) not in (str, int, float):
        raise ValueError("bad value")
    return data[1]


_DECODERS = {
    b"T": lambda dec, data: tuple(dec.items(*data[1:])),
    b"L": lambda dec, data: dec.items(*data[1:]),
    b"M": _decode_dict,
    b"F": lambda dec, data: frozenset(dec.items(*data[1:])),
    b"S": lambda dec, data: set(dec.items(*data[1:])),
    b"P": lambda dec, data: MappingProxyType(dec.decode(data[1]) if data[2] else data[1]),
    b"V": _decode_scalar,
    b"Doc": _decode_document,
    b"Dag": _decode_dag,
    b"D": _decode_dataclass,
}


def picklable_document(doc):
    """The parts of a document errors need, re-parsed lazily when used."""
    from ..config.doccache import _LazyLocate
    from ..config.document import Document
    from ..config.workspace import _parse_dsl
    from ..config.yaml import parse_yaml

    parse = _parse_dsl if doc.kind == "dsl" else parse_yaml
    return Document(data={}, file=doc.file, text=doc.text,
                    locate=_LazyLocate(parse, doc.text, doc.file), kind=doc.kind)
