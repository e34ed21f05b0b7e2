"""One rollout per deployment+target: an OS file lock (flock), released by
the kernel when the holder exits or dies, so a crash never leaves it stale.
The lock file names its holder (pid, start time, label) for the message a
second rollout prints."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from ..errors import LockedError


def lock_path(state_dir: str, deployment: str, target: str) -> str:
    safe = deployment.replace("/", "%2F")
    return os.path.join(state_dir, "locks", f"{safe}@{target}.lock")


def held_locks(state_dir: str) -> list[str]:
    """The deployment+target locks some rollout holds now (`DEPLOYMENT@TARGET`)."""
    locks = os.path.join(state_dir, "locks")
    held = []
    for name in sorted(os.listdir(locks)) if os.path.isdir(locks) else []:
        fd = os.open(os.path.join(locks, name), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(name[:-len(".lock")])
        finally:
            os.close(fd)
    return held


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another rollout"


@contextmanager
def deployment_lock(state_dir: str, deployment: str, target: str, label: str, *,
                    wait: bool = False, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    path = lock_path(state_dir, deployment, target)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise LockedError(f"{label} is locked by {holder}; use --wait to wait for it") from None
            if on_wait:
                on_wait(f"waiting for {label}, locked by {holder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} (started {started}, {label})\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock
