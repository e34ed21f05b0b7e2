"""One process of an action, from spawn to reap: `run_step`.

Every step runs in its own session, hence its own process group, so that
 - Ctrl-C at the terminal reaches only us, never terraform directly (no double
   SIGINT, Terragrunt #1677), and
 - one `killpg` reaches the step and everything it spawned; once a step's
   leader has exited, whatever it left behind in its group is killed too.

The leader's exit, not the EOF of its output pipe, ends a step: a background
child may hold the pipe as long as it lives. The pipe and (Linux) a pidfd of
the leader are polled together; without pidfds the leader is checked every
_EXIT_POLL_MS. Once the leader has exited and its group is swept, what is
left in the pipe is read for at most DRAIN_SECONDS (a process that left the
group with setsid may still hold it; the log says so).

Portability: where `os.waitid` exists (Linux; macOS from Python 3.13) the
leader is waited for with WNOWAIT before its group is swept, so the group id
cannot be recycled under our `killpg` (a zombie leader keeps it). Elsewhere
(macOS on Python 3.11/3.12) the leader is reaped first, then the group swept:
a group that still has members keeps its id, so the only race left is an
empty group whose id is reused within that instant. `os.pidfd_open` (Linux)
only saves wakeups. Both are looked up at call time; tests run this module
with both removed (tests/test_portable.py).

Output is read in binary, split into lines, decoded with errors="replace",
masked (secrets -> `***`) and written to the action's log (without ANSI
colour codes) and the console.
Steps marked `capture` keep their raw stdout for `collect` (e.g. `terraform
output -json`); that stdout goes to the log only and their stderr is kept
apart in a temporary file, so warnings never corrupt the JSON.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Mapping, NamedTuple, Sequence

DRAIN_SECONDS = 1.0  # after a step's group was swept, wait this long at most for its output's EOF
_CHUNK = 65536
_QUICK_SECONDS = 0.01  # a step still running after this gets its leader watched with a pidfd
_EXIT_POLL_MS = 50  # without pidfds: how often to check whether the leader has exited


@dataclass(frozen=True)
class Step:
    """One process of an action. `capture`: hand its stdout to `collect`."""

    argv: tuple[str, ...]
    capture: bool = False
    log: bool = True  # False (with capture): the stdout is not written to the log either


class StepResult(NamedTuple):
    exit_code: int | None
    message: str  # "" on success, else why it failed
    captured: bytes | None  # the raw stdout of a `capture` step


class Supervisor:
    """What run_step tells its caller, who may signal the step meanwhile.

    `spawned(proc)`: the step runs; from now on the caller may killpg it.
    `reap(proc)`: the leader has exited (still a zombie where waitid exists):
    sweep its group and reap it, atomically with respect to the caller's
    signals; returns the exit status (Popen.returncode).
    """

    def spawned(self, proc: subprocess.Popen) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def reap(self, proc: subprocess.Popen) -> int:  # pragma: no cover - interface
        raise NotImplementedError


def killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def sweep_and_reap(proc: subprocess.Popen) -> int:
    """SIGKILL what is left in the leader's group and reap the leader."""
    if proc.returncode is None:  # a zombie still (waitid): its group id cannot be reused
        killpg(proc.pid, signal.SIGKILL)
        return proc.wait()
    # Reaped already (no waitid): a group with members left keeps its id.
    killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def echo_line(argv: Sequence[str], mask: Callable[[str], str]) -> str:
    """The `$ argv` line of the log, masked as written.

    Each argument is masked before quoting (quoting a secret that holds a
    `'` splits it, so the quoted line would no longer contain it), the parts
    around each `***` quoted on their own, and the whole line masked once
    more (a secret spanning arguments)."""
    words = []
    for arg in map(str, argv):
        masked = mask(arg)
        if masked == arg:
            words.append(shlex.quote(arg))
        else:
            words.append("***".join(shlex.quote(part) if part else "" for part in masked.split("***")))
    return mask("$ " + " ".join(words))


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Lines:
    """Output bytes -> masked lines in the log, and on the console or (`capture`) kept raw.

    `logged=False` (capture only): the kept output is not written to the log either."""

    __slots__ = ("_mask", "_log", "_show", "_kept", "_pending", "_logged")

    def __init__(self, mask: Callable[[str], str], log: IO[str], show: Callable[[str], None],
                 capture: bool, logged: bool = True) -> None:
        self._mask, self._log, self._show = mask, log, show
        self._kept: list[bytes] | None = [] if capture else None
        self._pending: list[bytes] = []  # the start of an unfinished line
        self._logged = logged or not capture

    def feed(self, data: bytes) -> None:
        if self._kept is not None:
            self._kept.append(data)
        *lines, rest = data.split(b"\n")
        if lines:
            if self._pending:
                self._pending.append(lines[0])
                lines[0] = b"".join(self._pending)
                self._pending.clear()
            for raw in lines:
                self._emit(raw)
        if rest:
            self._pending.append(rest)

    def end(self) -> None:
        """The output ended: a last line without a newline is still a line."""
        if self._pending:
            raw = b"".join(self._pending)
            self._pending.clear()
            self._emit(raw)

    def captured(self) -> bytes | None:
        return None if self._kept is None else b"".join(self._kept)

    def _emit(self, raw: bytes) -> None:
        if not self._logged:
            return
        line = self._mask(raw.decode("utf-8", "replace").rstrip("\r\n"))
        # Logs hold no colour codes, whatever a tool printed for the console.
        self._log.write((_ANSI.sub("", line) if "\x1b" in line else line) + "\n")
        if self._kept is None:
            self._show(line)


class _Output:
    """A step's stdout pipe, read until the step's leader exits, then drained.

    One `poll` in the worker's own thread (no thread per step) watches the
    pipe and, once the step has run for `_QUICK_SECONDS`, a pidfd of the
    leader: most steps of a big graph end sooner, and so never pay for it.
    """

    __slots__ = ("_proc", "_lines", "_fd", "_pidfd", "_poll", "_eof")

    def __init__(self, proc: subprocess.Popen, lines: Lines) -> None:
        self._proc, self._lines = proc, lines
        self._fd = proc.stdout.fileno()
        self._pidfd = -1
        self._eof = False
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def until_exit(self) -> None:
        """Copy output until the leader has exited or everyone closed the pipe."""
        pipe = self._fd
        watch_from = time.monotonic() + _QUICK_SECONDS
        timeout: float | None = _QUICK_SECONDS * 1000
        watching = False
        while not self._eof:
            ready = self._poll.poll(timeout)
            for fd, _ in ready:
                if fd != pipe:
                    return  # the pidfd: the leader has exited
                self._read()
            if not watching and (not ready or time.monotonic() >= watch_from):
                watching = True
                timeout = self._watch_leader()
            if watching and self._pidfd < 0 and self._exited():
                return

    def _exited(self) -> bool:
        waitid = getattr(os, "waitid", None)
        if waitid is not None:
            return waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        return self._proc.poll() is not None  # reaps: see sweep_and_reap

    def wait_exit(self) -> None:
        """Block until the leader has exited (kept a zombie where waitid exists)."""
        waitid = getattr(os, "waitid", None)
        if waitid is not None:
            waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOWAIT)
        else:
            self._proc.wait()

    def _watch_leader(self) -> float | None:
        """Poll a pidfd of the leader from now on; the poll timeout to use."""
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            return _EXIT_POLL_MS
        try:
            self._pidfd = pidfd_open(self._proc.pid)  # also works on a zombie: no race
        except OSError:  # Linux < 5.3, or a seccomp filter
            return _EXIT_POLL_MS
        self._poll.register(self._pidfd, select.POLLIN)
        return None

    def drain(self, seconds: float) -> bool:
        """After the sweep: copy the rest until EOF, waiting `seconds` at most.

        False if the pipe is still open then: something that left the group
        (setsid) holds it. What was already in the pipe is copied regardless.
        """
        if self._pidfd >= 0:
            self._poll.unregister(self._pidfd)
        deadline = time.monotonic() + seconds
        late_reads = 16  # past the deadline, a writer that escaped must not keep us
        while not self._eof:
            left = deadline - time.monotonic()
            if left <= 0:
                late_reads -= 1
                if late_reads < 0:
                    break
            if not self._poll.poll(max(left, 0) * 1000):
                break
            self._read()
        self._lines.end()
        return self._eof

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        self._proc.stdout.close()

    def _read(self) -> None:
        data = os.read(self._fd, _CHUNK)
        if data:
            self._lines.feed(data)
        else:
            self._eof = True
            self._poll.unregister(self._fd)


class Executables:
    """The absolute path `execvpe` would run for a name, looked up once per
    (name, PATH) instead of once per process: without it every spawn tries
    each PATH entry in turn (a dozen failed execve with a long PATH). None
    leaves the search to the exec: a name with a slash, a PATH with relative
    entries (they depend on each action's cwd), or no match (so the error
    stays the exec's own). Safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: dict[tuple[str, str | None], str | None] = {}

    def find(self, name: str, path: str | None) -> str | None:
        key = (name, path)
        with self._lock:
            if key in self._found:
                return self._found[key]
        found = None
        if "/" not in name and path is not None and all(os.path.isabs(d) for d in path.split(os.pathsep)):
            found = shutil.which(name, path=path)
        with self._lock:
            self._found[key] = found
        return found


def spawn_error(exc: OSError | ValueError, argv0: str, cwd: str) -> str:
    if isinstance(exc, FileNotFoundError):
        if exc.filename == cwd:
            return f"working directory not found: {cwd}"
        return f"command not found: {argv0}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {argv0}"
    return f"cannot run {argv0}: {getattr(exc, 'strerror', None) or exc}"


def run_step(step: Step, *, cwd: str, env: Mapping[str, str], log: IO[str], mask: Callable[[str], str],
             show: Callable[[str], None], supervisor: Supervisor, executable: str | None = None,
             keep_fds: Sequence[int] = ()) -> StepResult:
    """Run one process to the end (spawn, copy output, reap, sweep its group).

    `show(line)` puts an output line on the console; `keep_fds` are inherited
    by the process (the deployment lock, lock.py). Timeouts and stops are the
    supervisor's: it signals the group between `spawned` and `reap`.
    """
    log.write(echo_line(step.argv, mask) + "\n")
    errors = None
    if step.capture:
        import tempfile  # here: most rollouts capture nothing, and the no-op path never gets here

        errors = tempfile.TemporaryFile()
    try:
        try:
            proc = subprocess.Popen(
                step.argv, executable=executable, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT if errors is None else errors,
                start_new_session=True, pass_fds=tuple(keep_fds),
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
            message = spawn_error(exc, step.argv[0], cwd)
            log.write(mask(message) + "\n")
            return StepResult(None, message, None)
        supervisor.spawned(proc)
        lines = Lines(mask, log, show, step.capture, step.log)
        output = _Output(proc, lines)
        try:
            try:
                output.until_exit()
            except BaseException:
                killpg(proc.pid, signal.SIGKILL)
                raise
            finally:
                output.wait_exit()
                code = supervisor.reap(proc)
            if not output.drain(DRAIN_SECONDS):
                log.write(f"--- the output pipe was still held open {DRAIN_SECONDS:g} s after the step "
                          "exited (by a process outside its process group): stopped reading it\n")
        finally:
            output.close()
        out = lines.captured()
        if not step.log and out is not None:
            log.write(f"--- {len(out)} bytes of output captured, not logged (they may hold secrets)\n")
        if errors is not None:
            errors.seek(0)
            pump(errors, mask, log, show)
    finally:
        if errors is not None:
            errors.close()
    if code == 0:
        return StepResult(0, "", out)
    if code < 0:
        return StepResult(code, f"killed by signal {signal.Signals(-code).name}", out)
    return StepResult(code, f"exit code {code}", out)


def pump(stream: IO[bytes], mask: Callable[[str], str], log: IO[str], show: Callable[[str], None]) -> None:
    """Copy the lines of a file to log and console."""
    lines = Lines(mask, log, show, False)
    for raw in iter(lambda: stream.read(_CHUNK), b""):
        lines.feed(raw)
    lines.end()
