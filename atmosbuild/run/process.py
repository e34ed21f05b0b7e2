"""The real runner: actions as subprocesses, one worker thread per running action.

Every step runs in its own session, hence its own process group, so that
 - Ctrl-C at the terminal reaches only us, never terraform directly (no double
   SIGINT, Terragrunt #1677), and
 - one `killpg` reaches the step and everything it spawned: stop and timeout
   signal the group once, wait a grace period, then SIGKILL the group, and
   once a step's leader has exited whatever it left behind in its group is
   killed too. Nothing outlives its action.

The leader is waited for with `waitid(WNOWAIT)` before the group is swept, so
the group id cannot be recycled under our `killpg` (a zombie leader keeps it).

The leader's exit, not the EOF of its output pipe, ends a step: a background
child may hold the pipe as long as it lives. The pipe and a pidfd of the
leader are polled together; once the leader has exited and its group is swept,
what is left in the pipe is read for at most DRAIN_SECONDS (a process that left
the group with setsid may still hold it; the log says so).

Output is read in binary, split into lines, decoded with errors="replace", masked
(secrets -> `***`) and written to the action's log (without ANSI colour codes)
and the console. Steps
marked `capture` keep their raw stdout for `collect` (e.g. `terraform output
-json`); that stdout goes to the log only and their stderr is kept apart, so
warnings never corrupt the JSON.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import IO, Any, Callable, Collection, Mapping, Sequence

from .events import CANCELLED, FAILED, SUCCEEDED, TIMEOUT, Event, Finished, InterruptRequested
from .ui import Console

TAIL_LINES = 20
IDLE_WORKER_SECONDS = 2.0  # an idle worker thread waits this long for the next action
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


@dataclass
class ActionSpec:
    """Everything needed to run one node. `env` is the complete environment.

    `prepare` runs in the worker before the first step (once, not per retry);
    `collect` runs after every step succeeded, gets the captured stdout (None
    if no step captures) and returns the action's value. An exception in
    either fails the action with the exception's message.
    """

    node: str
    steps: Sequence[Step]
    cwd: str
    env: Mapping[str, str]
    log_path: str
    timeout: float | None = None  # seconds for one attempt, all steps together
    retries: int = 0
    secrets: Sequence[str] = ()
    prepare: Callable[[], None] | None = None
    collect: Callable[[str | None], Any] | None = None


@dataclass
class _Outcome:
    status: str
    exit_code: int | None = None
    message: str = ""
    value: Any = None


@dataclass(eq=False)
class _Action:
    """A running node. Fields below `spec` are guarded by the runner's lock."""

    spec: ActionSpec
    mask: Callable[[str], str]
    proc: subprocess.Popen | None = None  # the current step, until reaped
    stop_signal: int | None = None  # set once stop() was asked
    attempt: int = 0
    timed_out: bool = False
    alarms: list[list] = field(default_factory=list)  # pending _Alarms entries


def make_masker(secrets: Sequence[str]) -> Callable[[str], str]:
    """A function replacing every secret value with `***`.

    Output is masked line by line, so each line of a multi-line secret (a PEM
    key) is masked on its own as well.
    """
    parts = {p for s in secrets if s for p in [s, *s.splitlines()] if p}
    if not parts:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(p) for p in sorted(parts, key=len, reverse=True)))
    return lambda text: pattern.sub("***", text)


_resolved: dict[tuple[str, str | None], str | None] = {}


def _resolve(name: str, path: str | None) -> str | None:
    """The absolute path `execvpe` would run for `name`, looked up once per
    (name, PATH) instead of once per process: without it every spawn tries
    each PATH entry in turn (a dozen failed execve with a long PATH). None
    leaves the search to the exec as before: a name with a slash, a PATH with
    relative entries (they depend on each action's cwd), or no match (so the
    error stays the exec's own)."""
    key = (name, path)
    if key not in _resolved:
        found = None
        if "/" not in name and path is not None and all(os.path.isabs(d) for d in path.split(os.pathsep)):
            found = shutil.which(name, path=path)
        _resolved[key] = found
    return _resolved[key]


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _seconds(value: float) -> str:
    return f"{value:g}"


class _Alarms:
    """One thread calling callbacks at deadlines (timeouts, grace-period kills).

    A `threading.Timer` per attempt would start a thread per action (~0.2 ms
    here); one shared thread with a heap costs a push. Callbacks run without
    any lock held and must check that what they act on still exists.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[list] = []  # [deadline, seq, callback or None, args]
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, seconds: float, callback: Callable, *args: Any) -> list:
        entry = [time.monotonic() + seconds, next(self._seq), callback, args]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="atmosbuild alarms", daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()
        return entry

    @staticmethod
    def cancel(entry: list) -> None:
        entry[2] = None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2] is None:
                        heapq.heappop(self._heap)
                    delay = self._heap[0][0] - time.monotonic() if self._heap else None
                    if delay is not None and delay <= 0:
                        _, _, callback, args = heapq.heappop(self._heap)
                        break
                    self._cond.wait(delay)
            try:
                callback(*args)
            except Exception:  # pragma: no cover - a callback bug must not stop all alarms
                pass


_ALARMS = _Alarms()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Lines:
    """Output bytes -> masked lines in the log, and on the console or (`capture`) kept raw."""

    __slots__ = ("_node", "_mask", "_log", "_console", "_kept", "_pending", "_logged")

    def __init__(self, node: str, mask: Callable[[str], str], log: IO[str], console: Console, capture: bool,
                 logged: bool = True) -> None:
        self._node, self._mask, self._log, self._console = node, mask, log, console
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
            self._console.component_line(self._node, line)


class _Output:
    """A step's stdout pipe, read until the step's leader exits, then drained.

    The leader's exit, not the pipe's EOF, ends a step: a background child
    holds the pipe for as long as it lives. One `poll` in the worker's own
    thread (no thread per step) watches the pipe and, once the step has run
    for `_QUICK_SECONDS`, a pidfd of the leader: most steps of a big graph end
    sooner, and so never pay for the pidfd. Without pidfds the leader is
    checked every `_EXIT_POLL_MS` instead.
    """

    __slots__ = ("_proc", "_lines", "_fd", "_pidfd", "_poll", "_eof")

    def __init__(self, proc: subprocess.Popen, lines: _Lines) -> None:
        self._proc, self._lines = proc, lines
        self._fd = proc.stdout.fileno()
        self._pidfd = -1
        self._eof = False
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def until_exit(self) -> None:
        """Copy output until the leader has exited or everyone closed the pipe."""
        pipe, pid = self._fd, self._proc.pid
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
            if watching and self._pidfd < 0 and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                return

    def _watch_leader(self) -> float | None:
        """Poll a pidfd of the leader from now on; the poll timeout to use."""
        try:
            self._pidfd = os.pidfd_open(self._proc.pid)  # also works on a zombie: no race
        except (AttributeError, OSError):  # not Linux >= 5.3: check on a timeout
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


class ProcessRunner:
    """Runner (see events.py) over real processes.

    `spec_for(node)` is called in start(), in the caller's thread.
    """

    timeout_grace = 2.0  # seconds between SIGTERM and SIGKILL on timeout

    def __init__(
        self,
        spec_for: Callable[[str], ActionSpec],
        console: Console,
        grace_period: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spec_for = spec_for
        self._console = console
        self.grace_period = grace_period
        self._clock = clock
        self._events: SimpleQueue[Event] = SimpleQueue()
        self._lock = threading.Lock()
        self._running: dict[str, _Action] = {}
        self._interrupts = 0
        self._saved_handlers: dict[int, Any] = {}
        # Worker threads are reused: starting a thread per action costs more
        # than the `true` it runs. `_idle` counts waiting, unclaimed workers.
        self._jobs: SimpleQueue[_Action] = SimpleQueue()
        self._idle = 0
        self._log_dirs: set[str] = set()  # made already: one mkdir per directory, not per action

    # -- the Runner protocol --------------------------------------------------

    def start(self, node: str) -> None:
        spec = self._spec_for(node)
        action = _Action(spec, make_masker(spec.secrets))
        with self._lock:
            if node in self._running:
                raise RuntimeError(f"{node} is already running")
            self._running[node] = action
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._console.started(node)
        self._jobs.put(action)
        if spawn:
            threading.Thread(target=self._worker, name="atmosbuild worker", daemon=True).start()

    def wait(self) -> Event:
        event = self._events.get()
        if isinstance(event, InterruptRequested) and self._interrupts > 1:
            self.kill_all()  # a second Ctrl-C: the user will not wait for the grace period
        return event

    def stop(self, nodes: Collection[str], signum: int | None = None) -> None:
        """Signal each running node's group once; SIGKILL it after the grace period."""
        signum = signum or signal.SIGTERM
        with self._lock:
            for node in nodes:
                action = self._running.get(node)
                if action is None or action.stop_signal is not None:
                    continue
                action.stop_signal = signum
                if action.proc is not None:
                    _killpg(action.proc.pid, signum)
                self._after(action, self.grace_period, self._kill_current, action)

    # -- signals -------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM become InterruptRequested events (main thread only)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._saved_handlers[signum] = signal.signal(signum, self._on_signal)

    def restore_signal_handlers(self) -> None:
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, handler)
        self._saved_handlers.clear()

    def __enter__(self) -> "ProcessRunner":
        self.install_signal_handlers()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore_signal_handlers()
        self.kill_all()  # only does something if the caller bailed out early

    def kill_all(self) -> None:
        """SIGKILL every running action's group now; their Finished events still come."""
        with self._lock:
            for action in self._running.values():
                if action.stop_signal is None:
                    action.stop_signal = signal.SIGKILL
                if action.proc is not None:
                    _killpg(action.proc.pid, signal.SIGKILL)

    def _on_signal(self, signum: int, frame: object) -> None:
        # Runs in the main thread between bytecodes: touch no lock here.
        self._interrupts += 1
        self._events.put(InterruptRequested(signum))

    # -- the worker ------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            try:
                action = self._jobs.get(timeout=IDLE_WORKER_SECONDS)
            except Empty:
                with self._lock:
                    if self._idle:  # more idle workers than queued actions: leave
                        self._idle -= 1
                        return
                continue  # start() claimed this worker: its action is on the way
            try:
                finished = self._work(action)
            except BaseException as exc:  # e.g. the console's pipe broke: still report
                with self._lock:
                    self._running.pop(action.spec.node, None)
                finished = Finished(action.spec.node, FAILED, message=f"internal error: {_describe(exc)}")
            with self._lock:
                self._idle += 1  # before the event, so the next start() reuses us
            self._events.put(finished)

    def _work(self, action: _Action) -> Finished:
        spec = action.spec
        started = self._clock()
        try:
            outcome = self._run_action(action)
        except BaseException as exc:  # never leave the scheduler waiting
            outcome = _Outcome(FAILED, message=f"internal error: {_describe(exc)}")
        outcome.message = action.mask(outcome.message)
        tail: tuple[str, ...] = ()
        if outcome.status in (FAILED, TIMEOUT):
            tail = self._log_tail(spec.log_path)
        finished = self._clock()
        with self._lock:
            del self._running[spec.node]
            for alarm in action.alarms:
                _ALARMS.cancel(alarm)
        self._console.finished(spec.node, outcome.status, finished - started, outcome.message)
        if outcome.status in (FAILED, TIMEOUT):
            self._console.failure(spec.node, outcome.message, spec.log_path, tail)
        return Finished(
            spec.node, outcome.status, started, finished, outcome.exit_code,
            outcome.message, outcome.value, tail,
        )

    def _run_action(self, action: _Action) -> _Outcome:
        spec = action.spec
        try:
            log_dir = os.path.dirname(spec.log_path) or "."
            if log_dir not in self._log_dirs:
                os.makedirs(log_dir, exist_ok=True)
                self._log_dirs.add(log_dir)
            log = open(spec.log_path, "w", encoding="utf-8", errors="replace", buffering=1)
        except OSError as exc:
            return _Outcome(FAILED, message=f"cannot write log {spec.log_path}: {exc.strerror}")
        with log:
            if spec.prepare is not None:
                try:
                    spec.prepare()
                except Exception as exc:
                    log.write(action.mask(f"prepare failed: {_describe(exc)}") + "\n")
                    return _Outcome(FAILED, message=_describe(exc))
            outcome, captured = self._attempt(action, 0, log)
            for attempt in range(1, spec.retries + 1):
                if outcome.status not in (FAILED, TIMEOUT) or self._stopping(action):
                    break
                note = f"retry {attempt}/{spec.retries} ({outcome.message})"
                log.write(f"--- {note}\n")
                self._console.component_line(spec.node, note)
                outcome, captured = self._attempt(action, attempt, log)
            if outcome.status != SUCCEEDED or spec.collect is None:
                return outcome
            try:
                outcome.value = spec.collect(captured)
            except Exception as exc:
                log.write(action.mask(f"collect failed: {_describe(exc)}") + "\n")
                return _Outcome(FAILED, message=_describe(exc))
            return outcome

    def _attempt(self, action: _Action, attempt: int, log: IO[str]) -> tuple[_Outcome, str | None]:
        spec = action.spec
        with self._lock:
            action.attempt, action.timed_out = attempt, False
            if spec.timeout is not None:
                self._after(action, spec.timeout, self._on_timeout, action, attempt)
        captured: list[bytes] | None = None
        for step in spec.steps:
            if self._stopping(action):
                return _Outcome(CANCELLED, message="cancelled"), None
            if action.timed_out:
                break
            code, message, out = self._run_step(action, step, log)
            if self._stopping(action):
                return _Outcome(CANCELLED, code, "cancelled"), None
            if action.timed_out:
                break
            if message:
                return _Outcome(FAILED, code, message), None
            if out is not None:
                captured = (captured or []) + [out]
        else:
            text = None if captured is None else b"".join(captured).decode("utf-8", "replace")
            return _Outcome(SUCCEEDED, 0), text
        return _Outcome(TIMEOUT, message=f"timed out after {_seconds(spec.timeout)} s"), None

    def _stopping(self, action: _Action) -> bool:
        with self._lock:
            return action.stop_signal is not None

    def _run_step(
        self, action: _Action, step: Step, log: IO[str]
    ) -> tuple[int | None, str, bytes | None]:
        """Run one process to the end: (exit code, failure message or "", captured stdout)."""
        spec, mask = action.spec, action.mask
        log.write(mask("$ " + shlex.join(map(str, step.argv))) + "\n")
        errors = None
        if step.capture:
            import tempfile

            errors = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(
                step.argv, executable=_resolve(step.argv[0], spec.env.get("PATH")),
                cwd=spec.cwd, env=spec.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT if errors is None else errors,
                start_new_session=True,
            )
        except OSError as exc:
            if errors is not None:
                errors.close()
            message = self._spawn_error(exc, step, spec.cwd)
            log.write(mask(message) + "\n")
            return None, message, None
        with self._lock:
            action.proc = proc
            if action.stop_signal is not None:  # stop() came while we were spawning
                _killpg(proc.pid, action.stop_signal)
        lines = _Lines(spec.node, mask, log, self._console, step.capture, step.log)
        output = _Output(proc, lines)
        try:
            try:
                output.until_exit()
            except BaseException:
                _killpg(proc.pid, signal.SIGKILL)
                raise
            finally:
                # The leader is done but stays a zombie (WNOWAIT), so its group id
                # cannot be reused while we sweep up what it left in the group.
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                with self._lock:
                    _killpg(proc.pid, signal.SIGKILL)
                    code = proc.wait()
                    action.proc = None
            if not output.drain(DRAIN_SECONDS):
                log.write(f"--- the output pipe was still held open {_seconds(DRAIN_SECONDS)} s after the step "
                          "exited (by a process outside its process group): stopped reading it\n")
        finally:
            output.close()
        out = lines.captured()
        if not step.log and out is not None:
            log.write(f"--- {len(out)} bytes of output captured, not logged (they may hold secrets)\n")
        if errors is not None:
            with errors:
                errors.seek(0)
                self._pump(errors, spec.node, mask, log)
        if code == 0:
            return 0, "", out
        if code < 0:
            return code, f"killed by signal {signal.Signals(-code).name}", out
        return code, f"exit code {code}", out

    def _pump(self, stream: IO[bytes], node: str, mask: Callable[[str], str], log: IO[str]) -> None:
        """Copy the lines of a file to log and console."""
        lines = _Lines(node, mask, log, self._console, False)
        for raw in iter(lambda: stream.read(_CHUNK), b""):
            lines.feed(raw)
        lines.end()

    @staticmethod
    def _spawn_error(exc: OSError, step: Step, cwd: str) -> str:
        if isinstance(exc, FileNotFoundError):
            if exc.filename == cwd:
                return f"working directory not found: {cwd}"
            return f"command not found: {step.argv[0]}"
        if isinstance(exc, PermissionError):
            return f"permission denied: {step.argv[0]}"
        return f"cannot run {step.argv[0]}: {exc.strerror or exc}"

    # -- alarms (callbacks take the lock themselves) ------------------------------

    def _after(self, action: _Action, seconds: float, callback: Callable, *args: Any) -> None:
        """Call `callback(*args)` in `seconds`, unless the action ended first."""
        action.alarms.append(_ALARMS.call_later(seconds, callback, *args))

    def _on_timeout(self, action: _Action, attempt: int) -> None:
        with self._lock:
            if action.attempt != attempt or action.stop_signal is not None:
                return
            if self._running.get(action.spec.node) is not action:
                return
            action.timed_out = True
            if action.proc is not None:
                _killpg(action.proc.pid, signal.SIGTERM)
                self._after(action, self.timeout_grace, self._kill_current, action, action.proc)

    def _kill_current(self, action: _Action, proc: subprocess.Popen | None = None) -> None:
        """SIGKILL the group of the current step (only `proc`'s, if given)."""
        with self._lock:
            if action.proc is not None and (proc is None or action.proc is proc):
                _killpg(action.proc.pid, signal.SIGKILL)

    @staticmethod
    def _log_tail(path: str) -> tuple[str, ...]:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return tuple(line.rstrip("\n") for line in deque(f, TAIL_LINES))
        except OSError:
            return ()
