"""File digests behind a stat cache.

A file is re-read only when its (size, mtime_ns, ctime_ns, inode) moved since
the digest was taken, so a no-op run costs one stat per file. ctime is part
of the signature because a same-size rewrite with its mtime restored (touch
-d, rsync -t, some editors) still moves ctime, which user code cannot set.
"""

from __future__ import annotations

import os
import stat as stat_mod
from typing import Iterable

import xxhash

# Directories never part of a component's source tree.
EXCLUDED_DIRS = frozenset({".git", ".terraform", ".atmos"})

FileEntry = tuple  # (relpath, kind, digest, executable) with kind "f" or "l"


def file_digest(path: str) -> str:
    """xxh3-128 of a file's bytes, read in 1 MiB chunks."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class FileDigester:
    """Digests files under `root`, with a cache of earlier digests.

    `cache` maps root-relative path -> (size, mtime_ns, ctime_ns, inode, digest);
    `changed` collects entries to write back to the store.
    """

    def __init__(self, root: str, cache: dict | None = None) -> None:
        self.root = root
        self.cache = cache if cache is not None else {}
        self.changed: dict[str, tuple] = {}
        self.reads = 0  # how many files were actually read (for tests and benchmarks)

    def digest(self, rel: str, st: os.stat_result) -> str:
        hit = self.cache.get(rel)
        if (hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns
                and hit[2] == st.st_ctime_ns and hit[3] == st.st_ino):
            return hit[4]
        sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        digest = file_digest(os.path.join(self.root, rel))
        self.reads += 1
        entry = (*sig, digest)
        self.cache[rel] = entry
        self.changed[rel] = entry
        return digest

    def tree(self, rel_dir: str) -> list[FileEntry]:
        """Every file under `rel_dir` (root-relative), sorted by path, with
        paths relative to `rel_dir`. Symlinks are recorded, not followed."""
        out: list[FileEntry] = []
        base = f"{self.root}/{rel_dir}" if rel_dir != "." else self.root
        stack = [("", base)]
        while stack:
            prefix, path = stack.pop()
            with os.scandir(path) as it:
                for entry in it:
                    rel = prefix + entry.name
                    if entry.is_symlink():
                        out.append((rel, "l", os.readlink(entry.path), False))
                    elif entry.is_dir():
                        if entry.name not in EXCLUDED_DIRS:
                            stack.append((rel + "/", entry.path))
                    else:
                        st = entry.stat()
                        if not stat_mod.S_ISREG(st.st_mode):
                            continue
                        digest = self.digest(f"{rel_dir}/{rel}" if rel_dir != "." else rel, st)
                        out.append((rel, "f", digest, bool(st.st_mode & 0o111)))
        out.sort()
        return out

    def files(self, rels: Iterable[str]) -> list[FileEntry]:
        """Digests of the given root-relative regular files, sorted."""
        out = []
        for rel in sorted(set(rels)):
            st = os.stat(os.path.join(self.root, rel))
            out.append((rel, "f", self.digest(rel, st), bool(st.st_mode & 0o111)))
        return out
