"""Two small file operations every cache and report here needs.

`write_atomic`: a reader sees the old file or the new one, never half of
one (a private temporary name, then a rename). `keep_newest`: a cache
directory trimmed to its most recently written entries of one kind.
"""

from __future__ import annotations

import os
from typing import Callable


def write_atomic(path: str, data: bytes) -> None:
    """Replace `path` with `data` whole, making its directory if needed.
    On any error the temporary file is removed and the error raised."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
