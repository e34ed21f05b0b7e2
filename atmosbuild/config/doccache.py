"""A content-addressed cache of parsed deployment files.

Parsing is the slowest part of loading a big deployment (libyaml or lark on
every run); the data it yields is a pure function of the file's bytes. So the
data is kept, keyed by a digest of (this code, syntax, text), in the
per-user cache directory (like lark's grammar cache; never in the project's
state). A hit costs one read, one xxh3, one `marshal.loads` and the check
that what it read is plain data (`fileops.plain_data`: marshal can also
build code objects, and nothing read from a cache may be code). An edited file
has a new digest, so a stale entry can never be used. Errors are never cached:
bad input is parsed, and reported, every time.
"""

from __future__ import annotations

import functools
import marshal
import os
from typing import Callable

import xxhash

from ..fileops import keep_newest, load_plain, write_atomic
from .document import Document

MAX_ENTRIES = 256


@functools.lru_cache(maxsize=None)
def code_stamp() -> str:
    """This code's identity: a digest of every source file of the package
    (and of the grammar beside it), by (path, size, mtime_ns). A cached entry
    made by other code (a checkout between releases, an edit to any module,
    a component type's new version) is never reused. About 60 stats, once
    per process. (The release is in it too: `__version__` is written in
    atmosbuild/__init__.py, one of those files; config imports nothing of
    the package above it.)"""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    h = xxhash.xxh3_64()
    for base in (package, os.path.join(os.path.dirname(package), "grammar")):
        stack = [base]
        while stack:
            directory = stack.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name == "__pycache__":
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.name.endswith((".py", ".lark")):
                    st = entry.stat()
                    h.update(f"{entry.path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def cache_dir() -> str | None:
    # (os.path, not pathlib: pathlib costs every command ~5 ms of imports)
    if os.environ.get("ATMOS_NO_CACHE"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "atmosbuild", "documents")


class _LazyLocate:
    """Positions for a cached document: parse again only when an error needs one."""

    def __init__(self, parse: Callable[[str, str], Document], text: str, file: str) -> None:
        self.parse, self.text, self.file = parse, text, file
        self.doc: Document | None = None

    def __call__(self, path):
        if self.doc is None:
            self.doc = self.parse(self.text, self.file)
        return self.doc.locate(path)


def load(text: str, file: str, kind: str, parse: Callable[[str, str], Document]) -> Document:
    directory = cache_dir()
    if directory is None:
        return parse(text, file)
    stamp = code_stamp()
    digest = xxhash.xxh3_128_hexdigest(f"{stamp}\0{kind}\0{text}".encode("utf-8", "surrogatepass"))
    entry = os.path.join(directory, f"{digest}.marshal")
    try:
        with open(entry, "rb") as fh:
            data = load_plain(fh.read())
    except (OSError, ValueError, EOFError, TypeError):
        data = None
    if data is not None:
        return Document(data=data, file=file, text=text, locate=_LazyLocate(parse, text, file),
                        kind=kind)
    doc = parse(text, file)
    if not _may_hold_secrets(doc.data):  # SPEC 14: no cache holds a secret
        _store(directory, entry, doc.data)
    return doc


def _may_hold_secrets(data) -> bool:
    """Whether a document may hold a sensitive value: a `sensitive:` list, or
    any key named like a secret (resolve.is_sensitive_name), anywhere."""
    from .resolve import is_sensitive_name

    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and (k == "sensitive" or is_sensitive_name(k)):
                    return True
                stack.append(v)
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return False


def _store(directory: str, entry: str, data) -> None:
    try:
        write_atomic(entry, marshal.dumps(data))
        keep_newest(directory, lambda name: name.endswith(".marshal"), MAX_ENTRIES)
    except (OSError, ValueError):
        pass  # an unwritable or full cache only costs speed
