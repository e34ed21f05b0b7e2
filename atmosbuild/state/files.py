"""File digests behind two stat caches.

A file is re-read only when its (size, mtime_ns, ctime_ns, inode) moved since
the digest was taken, so a no-op run costs one stat per file. ctime is part
of the signature because a same-size rewrite with its mtime restored (touch
-d, rsync -t, some editors) still moves ctime, which user code cannot set.

The *tree cache* goes one step further for whole source trees: it keeps, per
source directory, the stat signature of every directory and file in it and
the listing they gave. A directory's mtime moves whenever an entry is added,
removed or renamed in it, so a tree whose every path keeps its signature is
the same tree: one lstat per path, no scandir, no digest lookups, no sorting.

Racy entries (git's "racily clean" problem): timestamps have a coarse tick,
so a file rewritten twice within one tick, with a read in between, could keep
its signature with new bytes. A signature newer than the racy window (2 s,
atmosbuild/clock.py) before the scan started is therefore never trusted
later: such files are read again next time.
"""

from __future__ import annotations

import marshal
import operator
import os
import stat as stat_mod
import threading
from typing import Callable, Iterable, NamedTuple

import xxhash

from .. import clock as clock_mod
from ..fileops import load_plain, write_atomic

# Directories never part of a component's source tree.
EXCLUDED_DIRS = frozenset({".git", ".terraform", ".atmos"})
TREE_CACHE_VERSION = 2

FileEntry = tuple  # (relpath, kind, digest, executable) with kind "f" or "l"


class Tree(NamedTuple):
    """What the tree cache holds for one source directory (FileDigester.tree)."""

    trusted: bool  # nothing in it was too new to trust when it was listed
    paths: tuple  # every directory, file and link seen: the directory itself first
    sigs: tuple  # their signatures
    digests: tuple  # a file's digest, else None (and None for a file too new to trust)
    entries: list  # the listing: FileEntry, sorted


def file_digest(path: str) -> str:
    """xxh3-128 of a file's bytes, read in 1 MiB chunks."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# A path's stat signature: what moves when its bytes (a directory: its
# entries) change. An attrgetter, so a whole list is compared at C speed.
signature = operator.attrgetter("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino")


def signature_since(sig: tuple, ns: int) -> bool:
    """The signature's mtime or ctime is at or after `ns`."""
    return sig[1] >= ns or sig[2] >= ns


CHUNK = 1024  # paths per pass in signatures_unchanged: a change stops the check early


def signatures_unchanged(paths, sigs, *, follow: bool = False) -> bool:
    """Every path still has its signature (a missing one has not). `follow`:
    stat through symlinks (a source directory may be one), else lstat."""
    stat = os.stat if follow else os.lstat
    try:
        for start in range(0, len(paths), CHUNK):
            end = start + CHUNK
            if list(map(signature, map(stat, paths[start:end]))) != list(sigs[start:end]):
                return False
    except OSError:
        return False
    return True


# Checking a few thousand signatures is worth a second process: each lstat
# from Python costs twice the syscall (the stat_result it builds holds the
# GIL, so threads do not help); git's preload-index does the same with threads.
PARALLEL_MIN = 4096  # paths per worker


def changed_in(groups, *, workers: int | None = None) -> list[str]:
    """The paths whose signature moved (or that are gone), in order, over
    (paths, sigs, follow) groups: `follow` stats through symlinks.

    `workers`: how many processes share the work (default: one per CPU we
    may run on, each with at least PARALLEL_MIN paths). Helpers are forked
    only while this process has no other thread, and anything that goes
    wrong with one means its share is checked here."""
    if workers is None:
        workers = min(_cpus(), sum(len(group[0]) for group in groups) // PARALLEL_MIN)
    if workers > 1 and hasattr(os, "fork") and threading.active_count() == 1:
        return _changed_forked(groups, workers)
    return [path for paths, sigs, follow in groups for path in _changed(paths, sigs, follow)]


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _share(groups, part: int, workers: int, indices: bool = False) -> list:
    """Worker `part`'s slice of every group, checked: paths, or (group, index)."""
    out = []
    for number, (paths, sigs, follow) in enumerate(groups):
        size = -(-len(paths) // workers)
        start = part * size
        found = _changed(paths[start:start + size], sigs[start:start + size], follow, indices)
        out += [(number, start + i) for i in found] if indices else found
    return out


def _changed_forked(groups, workers: int) -> list[str]:
    helpers = []  # (part, pid, read fd): pid None when the fork failed
    try:
        for part in range(1, workers):
            try:
                read_fd, write_fd = os.pipe()
            except OSError:
                helpers.append((part, None, None))
                continue
            try:
                pid = os.fork()
            except OSError:
                os.close(read_fd), os.close(write_fd)
                helpers.append((part, None, None))
                continue
            if pid == 0:  # the helper: its share, as indices, then leave at once
                code = 1
                try:
                    os.close(read_fd)
                    found = _share(groups, part, workers, indices=True)
                    with os.fdopen(write_fd, "wb") as out:
                        out.write(marshal.dumps(found))
                    code = 0
                finally:
                    os._exit(code)
            os.close(write_fd)
            helpers.append((part, pid, read_fd))
        shares = {0: _share(groups, 0, workers, indices=True)}
        for slot, (part, pid, read_fd) in enumerate(helpers):
            found = None
            if pid is not None:
                with os.fdopen(read_fd, "rb") as result:
                    helpers[slot] = (part, pid, None)  # the fd is closed with `result`
                    data = result.read()
                _, status = os.waitpid(pid, 0)
                helpers[slot] = (part, None, None)
                if status == 0:
                    try:
                        found = [(number, index) for number, index in marshal.loads(data)]
                    except (ValueError, EOFError, TypeError):
                        found = None
            shares[part] = found if found is not None else _share(groups, part, workers, indices=True)
    finally:
        # Raised out of here (Ctrl-C, an error): no helper is left behind
        # as a zombie, no pipe stays open.
        for part, pid, read_fd in helpers:
            if read_fd is not None:
                try:
                    os.close(read_fd)
                except OSError:
                    pass
            if pid is not None:
                try:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                except OSError:
                    pass
    # In the order a single pass gives: group by group, path by path.
    hits = sorted(hit for found in shares.values() for hit in found)
    return [groups[number][0][index] for number, index in hits]


def _changed(paths, sigs, follow: bool, indices: bool = False) -> list:
    """The serial check: one C-level pass per chunk, then path by path only
    inside a chunk that differs. `indices`: positions instead of paths."""
    stat = os.stat if follow else os.lstat
    out = []
    for start in range(0, len(paths), CHUNK):
        end = start + CHUNK
        chunk, want = paths[start:end], sigs[start:end]
        try:
            if list(map(signature, map(stat, chunk))) == list(want):
                continue
        except OSError:
            pass
        for offset, (path, sig) in enumerate(zip(chunk, want)):
            try:
                same = signature(stat(path)) == tuple(sig)
            except OSError:
                same = False
            if not same:
                out.append(start + offset if indices else path)
    return out


class FileDigester:
    """Digests files under `root`, with a cache of earlier digests.

    `cache` maps root-relative path -> (size, mtime_ns, ctime_ns, inode, digest);
    when it is None, `load_cache()` supplies it the first time a digest is
    not found in the tree cache (a no-op run never needs it). `changed`
    collects entries to write back to the store. `trees` is the tree cache
    (see module doc), loaded and saved with load_trees/save_trees.
    `clock` (wall time in ns; atmosbuild.clock by default) decides which
    signatures are too new to trust.
    """

    def __init__(self, root: str, cache: dict | None = None,
                 load_cache: Callable[[], dict] | None = None,
                 trees: dict | None = None, clock: Callable[[], int] = clock_mod.now_ns) -> None:
        self.root = root
        self.cache = cache
        self._load_cache = load_cache
        self.changed: dict[str, tuple] = {}
        self.trees: dict[str, tuple] = trees if trees is not None else {}
        self.trees_changed = False
        self.reads = 0  # how many files were actually read (for tests and benchmarks)
        self.racy_after = clock() - clock_mod.racy_window_ns()

    def _cached(self, rel: str) -> tuple | None:
        if self.cache is None:
            self.cache = self._load_cache() if self._load_cache is not None else {}
        return self.cache.get(rel)

    def digest(self, rel: str, st: os.stat_result, lookup: bool = True) -> str:
        """`lookup=False`: the caller knows no cache has it (read it now)."""
        sig = signature(st)
        if lookup:
            hit = self._cached(rel)
            if hit is not None and hit[:4] == sig:
                return hit[4]
        digest = file_digest(os.path.join(self.root, rel))
        self.reads += 1
        if not self.racy(st):
            entry = (*sig, digest)
            if self.cache is not None:
                self.cache[rel] = entry
            self.changed[rel] = entry
        return digest

    def racy(self, st: os.stat_result) -> bool:
        """Too new to trust: changed less than the racy window before this pass began."""
        return st.st_mtime_ns >= self.racy_after or st.st_ctime_ns >= self.racy_after

    def racy_signature(self, sig: tuple) -> bool:
        """`racy` for a signature taken earlier in this pass."""
        return signature_since(sig, self.racy_after)

    def tree(self, rel_dir: str) -> list[FileEntry]:
        """Every file under `rel_dir` (root-relative), sorted by path, with
        paths relative to `rel_dir`. Symlinks are recorded, not followed."""
        record = self.trees.get(rel_dir)
        if (record is not None and record.trusted
                and signatures_unchanged(record.paths[:1], record.sigs[:1], follow=True)
                and signatures_unchanged(record.paths[1:], record.sigs[1:])):
            return record.entries
        earlier = ({path: (sig, digest) for path, sig, digest in zip(record.paths, record.sigs, record.digests)
                    if digest}
                   if record is not None else {})
        out: list[FileEntry] = []
        # Every directory, file and link seen: its path, signature and digest (or None).
        paths: list[str] = []
        sigs: list[tuple] = []
        digests: list[str | None] = []
        trusted = True
        base = f"{self.root}/{rel_dir}" if rel_dir != "." else self.root
        stack = [("", base)]
        while stack:
            prefix, path = stack.pop()
            st = os.stat(path)  # the source directory itself may be a symlink
            paths.append(path), sigs.append(signature(st)), digests.append(None)
            trusted = trusted and not self.racy(st)
            with os.scandir(path) as it:
                for entry in it:
                    rel = prefix + entry.name
                    if entry.is_symlink():
                        st = entry.stat(follow_symlinks=False)
                        paths.append(entry.path), sigs.append(signature(st)), digests.append(None)
                        trusted = trusted and not self.racy(st)
                        out.append((rel, "l", os.readlink(entry.path), False))
                    elif entry.is_dir():
                        if entry.name not in EXCLUDED_DIRS:
                            stack.append((rel + "/", entry.path))
                    else:
                        st = entry.stat()
                        if not stat_mod.S_ISREG(st.st_mode):
                            continue
                        sig = signature(st)
                        old = earlier.get(entry.path)
                        if old is not None and old[0] == sig:
                            digest = old[1]
                        else:  # with a record, the store cannot know better than it
                            digest = self.digest(f"{rel_dir}/{rel}" if rel_dir != "." else rel, st,
                                                 lookup=record is None)
                        racy = self.racy(st)
                        trusted = trusted and not racy
                        paths.append(entry.path), sigs.append(sig), digests.append(None if racy else digest)
                        out.append((rel, "f", digest, bool(st.st_mode & 0o111)))
        out.sort()
        # An untrusted record is still kept for the digests of its settled files.
        self.trees[rel_dir] = Tree(trusted, tuple(paths), tuple(sigs), tuple(digests), out)
        self.trees_changed = True
        return out

    def files(self, rels: Iterable[str]) -> list[FileEntry]:
        """Digests of the given root-relative regular files, sorted."""
        out = []
        for rel in sorted(set(rels)):
            st = os.stat(os.path.join(self.root, rel))
            out.append((rel, "f", self.digest(rel, st), bool(st.st_mode & 0o111)))
        return out


# -- the tree cache on disk ---------------------------------------------------------
# One marshal file per state directory, for one root: a cache, so any error
# reading it means "no cache", and writing it is best effort (atomic rename).
# Plain data only: what a file there holds is checked before it is used.

def _trees_path(state_dir: str) -> str:
    return os.path.join(state_dir, "cache", "trees.marshal")


def load_trees(state_dir: str, root: str) -> dict:
    if os.environ.get("ATMOS_NO_CACHE"):
        return {}
    try:
        with open(_trees_path(state_dir), "rb") as fh:
            version, cached_root, trees = load_plain(fh.read())
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    if version != TREE_CACHE_VERSION or cached_root != root or not isinstance(trees, dict):
        return {}
    try:
        return {rel: Tree._make(tree) for rel, tree in trees.items()}
    except TypeError:  # not five fields: no cache
        return {}


def save_trees(state_dir: str, root: str, trees: dict) -> None:
    if os.environ.get("ATMOS_NO_CACHE"):
        return
    try:
        # (marshal writes plain tuples only: each Tree as one)
        plain = {rel: tuple(tree) for rel, tree in trees.items()}
        write_atomic(_trees_path(state_dir), marshal.dumps((TREE_CACHE_VERSION, root, plain)))
    except (OSError, ValueError):  # an unwritable cache only costs speed
        pass
