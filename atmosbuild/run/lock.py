"""One rollout per deployment+target: an OS file lock (flock), released by
the kernel when the last process holding it exits or dies, so a crash never
leaves it stale.

The lock is held until every action the rollout started has exited, even if
atmosbuild itself is killed (`kill -9`; SPEC 6): the runner passes the lock's
file descriptor to every action process (`HeldLock.fds`). An flock belongs to
the open file description, not to a process, so while any action (or anything
it spawned that kept the descriptor) still runs, the description stays open
and the lock stays taken. The descriptor sits at a high number (>= 64) so that
a script's own `exec 3>…` does not close it by accident. Out of reach: a
process that closes every descriptor it inherited (a daemonizing tool) no
longer holds the lock once it did.

The lock file names its holder (pid, start time, label) and the actions it
runs (id and pid), for the message a second rollout prints: if the holder has
died and its actions still run, the message says so.

Actions on a Dask cluster cannot inherit the descriptor. Their holder notes
its executor and task prefix (`remote: EXECUTOR TOPIC`) before the first is
submitted and clears it once none runs; a rollout that takes the lock and
finds the note (the holder was killed) waits until the cluster says none of
those tasks runs any more before it goes on (their workers stop them when
they see their client gone: run/remote.py), so the two never overlap.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

from ..errors import LockedError

_HIGH_FD = 64  # the lock's descriptor goes at or above this number
_RUNNING = "running: "
_REMOTE = "remote: "  # EXECUTOR TOPIC: the holder's actions run on a cluster (dask_executor.py)


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


class HeldLock:
    """A deployment lock this process holds.

    `fds`: descriptors an action process must inherit to keep the lock held
    while it runs (empty for a lock that cannot be inherited).
    `note_running(processes)` rewrites the list of running actions (id -> pid,
    0 for one being spawned) in the lock file; it may be called from any thread.
    """

    def __init__(self, fd: int, holder: str) -> None:
        self.fd = fd
        self.fds: tuple[int, ...] = (fd,)
        self._holder = holder
        self._write_lock = threading.Lock()
        self._remote = ""
        self._processes: Mapping[str, int] = {}

    def note_running(self, processes: Mapping[str, int]) -> None:
        with self._write_lock:
            self._processes = dict(processes)
            self._write()

    def note_remote(self, where: str) -> None:
        """`EXECUTOR TOPIC` of the holder's actions on a cluster; "" once none runs."""
        with self._write_lock:
            self._remote = where
            self._write()

    def _write(self) -> None:
        lines = [self._holder] + [f"{_RUNNING}{node} ({f'pid {pid}' if pid else 'starting'})"
                                  for node, pid in self._processes.items()]
        if self._remote:
            lines.append(_REMOTE + self._remote)
        data = ("\n".join(lines) + "\n").encode()
        try:
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
        except OSError:
            pass  # the running notes are for people; the remote note is best effort


def _high(fd: int) -> int:
    """`fd` moved to a number >= _HIGH_FD (close-on-exec, like every fd we open)."""
    try:
        high = fcntl.fcntl(fd, getattr(fcntl, "F_DUPFD_CLOEXEC", fcntl.F_DUPFD), _HIGH_FD)
    except OSError:
        return fd  # too few descriptors allowed: keep the one we have
    os.set_inheritable(high, False)
    os.close(fd)
    return high


def describe_holder(text: str) -> str:
    """What holds a lock, from its file's text: the rollout, and what it runs.

    `text` as the holder wrote it (`HeldLock.note_running`); empty when it
    wrote nothing yet."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(_REMOTE)]
    head = next((line for line in lines if not line.startswith(_RUNNING)), "")
    running = [line[len(_RUNNING):] for line in lines if line.startswith(_RUNNING)]
    if not head:
        return "another rollout"
    words = head.split()
    pid = int(words[1]) if len(words) > 1 and words[0] == "pid" and words[1].isdigit() else None
    from ..procs import alive

    if pid is not None and not alive(pid):
        what = ", ".join(running) if running else "a process it started (it keeps the lock file open)"
        return f"{head}, which has exited, but actions it started still run: {what}"
    if running:
        return f"{head}, running {', '.join(running)}"
    return head


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 65536, 0).decode("utf-8", "replace")
    except OSError:
        text = ""
    return describe_holder(text)


def _after_remote_holder(fd: int, label: str, on_wait: Callable[[str], None] | None) -> None:
    """The last holder was killed while its actions ran on a cluster: wait
    for them to stop there (see the module doc) before holding the lock."""
    try:
        text = os.pread(fd, 65536, 0).decode("utf-8", "replace")
    except OSError:
        return
    for line in text.splitlines():
        if line.startswith(_REMOTE):
            from .dask_executor import wait_for_predecessor

            wait_for_predecessor(line[len(_REMOTE):].strip(), label, on_wait)


@contextmanager
def deployment_lock(state_dir: str, deployment: str, target: str, label: str, *,
                    wait: bool = False, on_wait: Callable[[str], None] | None = None) -> Iterator[HeldLock]:
    path = lock_path(state_dir, deployment, target)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = _high(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
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
        _after_remote_holder(fd, label, on_wait)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        held = HeldLock(fd, f"pid {os.getpid()} (started {started}, {label})")
        held.note_running({})
        yield held
    finally:
        os.close(fd)  # the last close of the description releases the flock
