"""Small file operations every cache, report and state writer here needs.

`write_atomic`: a reader sees the old file or the new one, never half of
one (a private temporary name, then a rename). `keep_newest`: a cache
directory trimmed to its most recently written entries of one kind.
`ensure_state_dir` / `is_state_dir`: the state directory and the marker
that says atmosbuild made it (`clean` deletes nothing without it).
`plain_data`: whether a value read from a cache is data and nothing else.
"""

from __future__ import annotations

import os
import sys
import threading
from itertools import chain, compress
from typing import Callable


def write_atomic(path: str, data: bytes, *, mode: int | None = None, durable: bool = False) -> None:
    """Replace `path` with `data` whole, making its directory if needed.
    On any error the temporary file is removed and the error raised.

    The temporary name is private to this process *and* thread (and random
    on top), so two writers of one path never share it. `mode`: the new
    file's permission bits (default: as a new file gets them). `durable`:
    the bytes and the rename reach the disk before this returns (fsync), so
    a power cut leaves the old file or the new one: for files users edit."""
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}"
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else 0o600)
        with open(fd, "wb") as fh:
            fh.write(data)
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


def keep_newest(directory: str, selects: Callable[[str], bool], keep: int) -> list[str]:
    """Remove all but the `keep` most recently modified files of `directory`
    whose name `selects` picks; the paths removed (some may have gone already)."""
    entries = sorted((e for e in os.scandir(directory) if selects(e.name)),
                     key=lambda e: e.stat().st_mtime)
    removed = []
    for old in entries[:max(len(entries) - keep, 0)]:
        try:
            os.unlink(old.path)
        except FileNotFoundError:
            pass
        removed.append(old.path)
    return removed


# -- the state directory's marker -----------------------------------------------------
# `clean` removes entries of a state directory only when this file says
# atmosbuild made the directory: a `state_dir` pointed at a directory of
# the user's (or an old one made before the marker existed) is never emptied.

MARKER = "ATMOSBUILD"
MARKER_TEXT = ("atmosbuild state directory: atmosbuild created it and `atmosbuild clean` may\n"
               "remove the entries it makes here (never tfstate/ unless asked to).\n")


def ensure_state_dir(state_dir: str) -> None:
    """Make the state directory, with its marker, if it does not exist yet.
    A directory that exists without the marker is left as it is (it may be
    the user's): only a directory made here is marked."""
    try:
        os.mkdir(state_dir)
    except FileExistsError:
        return
    except FileNotFoundError:
        os.makedirs(state_dir, exist_ok=True)  # (its parents are inside the root: checked)
    write_atomic(os.path.join(state_dir, MARKER), MARKER_TEXT.encode())


def mark_state_dir(state_dir: str) -> None:
    """Mark a state directory this process saw made (by any writer of ours)."""
    if os.path.isdir(state_dir) and not os.path.islink(state_dir) and not is_state_dir(state_dir):
        try:
            write_atomic(os.path.join(state_dir, MARKER), MARKER_TEXT.encode())
        except OSError:
            pass


def is_state_dir(state_dir: str) -> bool:
    """The directory holds atmosbuild's marker (a regular file, our text)."""
    path = os.path.join(state_dir, MARKER)
    try:
        if os.path.islink(path):
            return False
        with open(path, "rb") as fh:  # (its first line: later versions may say more)
            return fh.readline(256).decode("utf-8", "replace") == MARKER_TEXT.splitlines(True)[0]
    except OSError:
        return False


# -- data, never code ------------------------------------------------------------------
# marshal reads and writes plain data at C speed, but it can also build code
# objects. Whatever a cache file under the state directory (which may come
# with a clone) holds is checked with `plain_data` before it is used: only
# None, bools, numbers, str, bytes and containers of them pass.

_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_SEQUENCES = frozenset({tuple, list, frozenset, set})
_DICTS = frozenset({dict})
_ALLOWED = _SCALARS | _SEQUENCES | _DICTS


def plain_data(value, budget: int | None = None) -> bool:
    """`value` holds nothing but plain data (exact types, no subclasses).

    Checked breadth first, every step at C speed (`map(type)`, `compress`,
    `chain`): no Python code runs per item, so a record of 30,000 signatures
    checks in a few milliseconds. A level of a few containers with much below
    them is split (each is checked on its own), so that a tuple of paths and
    a tuple of signatures side by side each stay homogeneous. `budget`: at
    most this many items in all (marshal can share one object many times
    over; a file crafted to nest shared containers must not keep this busy)."""
    kind = type(value)
    if kind not in _ALLOWED:
        return False
    if kind in _SCALARS:
        return True
    left = budget if budget is not None else -1
    stack = [([value], {kind}, None)]  # levels to check: containers, their types (and each one's)
    while stack:
        level, level_kinds, level_types = stack.pop()
        if left >= 0:
            left -= sum(map(len, level))  # (a dict's pair counts once: bound enough)
            if left < 0:
                return False
        # One pass for the types below; a level of scalars is done with that.
        kinds = set(map(type, _children(level, level_kinds, level_types)))
        if not kinds <= _ALLOWED:
            return False
        if kinds <= _SCALARS:
            continue
        children = list(_children(level, level_kinds, level_types))
        containers = kinds - _SCALARS
        types = None
        if len(containers) != len(kinds):  # scalars among them: keep the containers
            children = list(compress(children, map(_CONTAINERS.__contains__, map(type, children))))
        if len(containers) > 1:
            types = list(map(type, children))
        if 1 < len(children) < _SPLIT:
            stack.extend(([c], {type(c)}, None) for c in children)
        else:
            stack.append((children, containers, types))
    return True


# A level of fewer containers than _SPLIT is checked container by container.
_SPLIT = 16
_CONTAINERS = _SEQUENCES | _DICTS


def _children(level: list, kinds: set, types: list | None):
    """Every item directly inside the containers of `level` (of `kinds`;
    `types`, each one's type, when there are several)."""
    if dict not in kinds:
        return chain.from_iterable(level)
    if len(kinds) == 1:
        return chain(chain.from_iterable(map(dict.keys, level)),
                     chain.from_iterable(map(dict.values, level)))
    seqs = compress(level, map(_SEQUENCES.__contains__, types))
    dicts = list(compress(level, map(_DICTS.__contains__, types)))
    return chain(chain.from_iterable(seqs), chain.from_iterable(map(dict.keys, dicts)),
                 chain.from_iterable(map(dict.values, dicts)))


def load_plain(data: bytes):
    """`marshal.loads(data)` when it is plain data (`plain_data`), else
    ValueError: the one way cache files under the state directory are read.
    (Python 3.13's `allow_code=False` refuses code objects in C; what else
    marshal builds is data, so no walk is needed there.)"""
    import marshal

    if _ALLOW_CODE_FLAG:
        return marshal.loads(data, allow_code=False)
    value = marshal.loads(data)
    if not plain_data(value, budget=16 * len(data) + 4096):
        raise ValueError("not plain data")
    return value


_ALLOW_CODE_FLAG = sys.version_info >= (3, 13)


class JsonCache:
    """A dict kept in one JSON file (data, never code): read on first use,
    an unreadable or foreign file counts as empty, written whole through
    `write_atomic` by `save()` only when something changed; ATMOS_NO_CACHE
    turns it off. Subclasses say how the dict sits in the file."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._data: dict | None = None
        self.dirty = False

    def unwrap(self, raw) -> dict:
        """The dict inside what the file held (anything else: empty)."""
        return raw if isinstance(raw, dict) else {}

    def wrap(self, data: dict):
        """What the file holds for `data`."""
        return data

    def _load(self) -> dict:
        if self._data is None:
            self._data = {}
            if self.path and not os.environ.get("ATMOS_NO_CACHE"):
                import json

                try:
                    with open(self.path, "rb") as fh:
                        self._data = self.unwrap(json.loads(fh.read()))
                except (OSError, ValueError):
                    pass
        return self._data

    def save(self) -> None:
        if not (self.dirty and self.path) or os.environ.get("ATMOS_NO_CACHE"):
            return
        import json

        try:
            write_atomic(self.path, json.dumps(self.wrap(self._load())).encode())
        except OSError:
            pass
        self.dirty = False
