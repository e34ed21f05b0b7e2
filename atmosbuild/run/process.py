"""The real runner: actions as subprocesses, on a pool of reused worker threads.

In small parts:
 - `WorkerPool`: reused threads (a thread per action costs more than `true`);
 - `run_step` (step.py): one process from spawn to reap, in its own process
   group, output to log and console;
 - `retry_again`: the retry policy;
 - `Alarms` (alarms.py): timeouts and grace-period kills on one thread;
 - `RunnerBase`: what every Runner (events.py) shares: start, wait,
   Ctrl-C, a teardown that leaves nothing running (dask_executor.py's
   DaskRunner is the other one);
 - `ProcessRunner`: the Runner over those: which action runs, stop and
   timeout (signal the group once, wait, SIGKILL).

An action's processes inherit the descriptors given to `setup(keep_fds=…)`:
the deployment lock's, so that the lock stays held while any of them runs,
even if atmosbuild dies (lock.py). `setup(on_processes=…)` is told which
action runs in which pid (the lock file names them for a second rollout).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import IO, Any, Callable, Collection, Mapping, Sequence

from .alarms import Alarm, Alarms
from .events import CANCELLED, FAILED, SUCCEEDED, TIMEOUT, Event, Finished, InterruptRequested
from .step import Executables, Step, Supervisor, killpg, run_step, sweep_and_reap
from .ui import Console

__all__ = ["ActionSpec", "ProcessRunner", "RunnerBase", "Step", "WorkerPool", "make_masker", "retry_again"]

TAIL_LINES = 20
IDLE_WORKER_SECONDS = 2.0  # an idle worker thread waits this long for the next action

_ALARMS = Alarms()  # shared by every runner (it locks its own state)


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
    resources: Mapping[str, float] = field(default_factory=dict)  # Dask worker resources it needs
    returns: Sequence[str] = ()  # files in the workspace that come back from a remote worker


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
    alarm_error: str | None = None  # an alarm of this action failed: the action fails
    alarms: list[Alarm] = field(default_factory=list)


def make_masker(secrets: Sequence[str]) -> Callable[[str], str]:
    """A function replacing every secret value with `***`.

    Output is masked line by line, so each line of a multi-line secret (a PEM
    key) is masked on its own as well.
    """
    parts = {p for s in secrets if s for p in [s, *s.splitlines()] if p}
    if not parts:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(p) for p in sorted(parts, key=len, reverse=True)))

    def mask(text: str) -> str:
        # Again until nothing matches: `***` next to what is left of the text
        # can spell a secret anew (secret `**x*` in `**x**x*`). Each pass
        # shortens the text unless a secret is 3 characters or fewer.
        for _ in range(8):
            masked = pattern.sub("***", text)
            if masked == text:
                break
            text = masked
        return text

    return mask


def retry_again(status: str, attempt: int, retries: int) -> bool:
    """After attempt `attempt` (0 = the first) ended `status`: run another?
    Failures and timeouts are retried, `retries` times at most; a cancel never."""
    return status in (FAILED, TIMEOUT) and attempt < retries


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _seconds(value: float) -> str:
    return f"{value:g}"


class WorkerPool:
    """Reused daemon threads, each running one job at a time.

    `submit(job)`: run `job()` on an idle worker or a new one; its result
    goes to `done(result)` once the worker is idle again (so a submit made
    in reaction to that result reuses it). A job must not raise.
    """

    def __init__(self, done: Callable[[Any], None], idle_seconds: float = IDLE_WORKER_SECONDS) -> None:
        self._done = done
        self._idle_seconds = idle_seconds
        self._jobs: SimpleQueue[Callable[[], Any]] = SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # waiting, unclaimed workers

    def submit(self, job: Callable[[], Any]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._worker, name="atmosbuild worker", daemon=True).start()

    def _worker(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self._idle_seconds)
            except Empty:
                with self._lock:
                    if self._idle:  # more idle workers than queued jobs: leave
                        self._idle -= 1
                        return
                continue  # submit() claimed this worker: its job is on the way
            result = job()
            with self._lock:
                self._idle += 1
            self._done(result)


STARTING = 0  # the pid noted for a step about to be spawned


class _ProcessNotes:
    """Which action runs in which pid (STARTING: about to be spawned), told
    to `listener` on every change, one snapshot at a time and in order (from
    any worker thread)."""

    def __init__(self, listener: Callable[[Mapping[str, int]], None] | None) -> None:
        self._listener = listener
        self._lock = threading.Lock()
        self._pids: dict[str, int] = {}

    def note(self, node: str, pid: int | None) -> None:
        if self._listener is None:
            return
        with self._lock:
            if pid is None:
                self._pids.pop(node, None)
            else:
                self._pids[node] = pid
            self._listener(dict(self._pids))


class _Interrupts:
    """SIGINT/SIGTERM become InterruptRequested events while installed
    (install and restore in the main thread); `count` says how many came."""

    def __init__(self, events: SimpleQueue) -> None:
        self._events = events
        self._saved: dict[int, Any] = {}
        self.count = 0

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._saved[signum] = signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()

    def _on_signal(self, signum: int, frame: object) -> None:
        # Runs in the main thread between bytecodes: touch no lock here.
        self.count += 1
        self._events.put(InterruptRequested(signum))


class _Watch(Supervisor):
    """run_step's view of one action: the runner may signal the step while it runs."""

    __slots__ = ("runner", "action")

    def __init__(self, runner: "ProcessRunner", action: _Action) -> None:
        self.runner, self.action = runner, action

    def spawned(self, proc: subprocess.Popen) -> None:
        with self.runner._lock:
            self.action.proc = proc
            if self.action.stop_signal is not None:  # stop() came while we were spawning
                killpg(proc.pid, self.action.stop_signal)
        self.runner._processes.note(self.action.spec.node, proc.pid)

    def reap(self, proc: subprocess.Popen) -> int:
        with self.runner._lock:  # no stop() or alarm signals a reaped group
            code = sweep_and_reap(proc)
            self.action.proc = None
        self.runner._processes.note(self.action.spec.node, None)
        return code


class RunnerBase:
    """What every Runner (events.py) shares: which nodes run, the events
    queue the scheduler waits on, Ctrl-C as InterruptRequested (a second one
    kills at once), and the teardown that leaves nothing running.

    A runner says how one action runs: `_new_action(spec)` (its record in
    `_running`, under `_lock`), `_launch(action)` (in a pool thread: returns
    its Finished, or None when that is posted later by `_post`),
    `stop`, `kill_all`, and `_closed()` (the last thing teardown does).
    `spec_for(node)` is called in start(), in the caller's thread.
    """

    def __init__(self, spec_for: Callable[[str], ActionSpec], console: Console,
                 grace_period: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._spec_for = spec_for
        self._console = console
        self.grace_period = grace_period
        self._clock = clock
        self._events: SimpleQueue[Event] = SimpleQueue()
        self._pool = WorkerPool(self._post)
        self._lock = threading.Lock()
        self._running: dict[str, Any] = {}  # node -> its action, until its Finished is made
        self._interrupts = _Interrupts(self._events)
        self._outstanding = 0  # started, Finished not yet returned by wait() (caller's thread only)

    # -- the Runner protocol --------------------------------------------------

    def setup(self, *, keep_fds: Sequence[int] = (),
              on_processes: Callable[[Mapping[str, int]], None] | None = None,
              on_remote: Callable[[str], None] | None = None) -> None:
        """Before the first start (main thread): SIGINT/SIGTERM become
        InterruptRequested events."""
        self._interrupts.install()

    def teardown(self) -> None:
        """After the last event: the old signal handlers back. If the caller
        bailed out early (an exception in the schedule), what still runs is
        stopped as on Ctrl-C (one signal to each group, the grace period,
        SIGKILL; a second Ctrl-C kills at once) and waited for first, so no
        action is left running unwatched."""
        try:
            with self._lock:
                running = list(self._running)
            if running:
                self.stop(running)
            while self._outstanding:
                self.wait()
        finally:
            self._interrupts.restore()
            self._closed()

    def start(self, node: str) -> None:
        spec = self._spec_for(node)
        action = self._new_action(spec)
        with self._lock:
            if node in self._running:
                raise RuntimeError(f"{node} is already running")
            self._running[node] = action
        self._outstanding += 1
        self._console.started(node)
        self._pool.submit(lambda: self._launch(action))

    def wait(self) -> Event:
        event = self._events.get()
        if isinstance(event, InterruptRequested):
            if self._interrupts.count > 1:
                self.kill_all()  # a second Ctrl-C: the user will not wait for the grace period
        else:
            self._outstanding -= 1
        return event

    def __enter__(self):
        self.setup()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.teardown()

    # -- what each runner says ----------------------------------------------------

    def stop(self, nodes: Collection[str], signum: int | None = None) -> None:
        raise NotImplementedError

    def kill_all(self) -> None:
        raise NotImplementedError

    def _new_action(self, spec: ActionSpec) -> Any:
        raise NotImplementedError

    def _launch(self, action: Any) -> Finished | None:
        raise NotImplementedError

    def _closed(self) -> None:
        """The last step of teardown."""

    def _post(self, finished: Finished | None) -> None:
        if finished is not None:
            self._events.put(finished)


class ProcessRunner(RunnerBase):
    """Runner (see events.py) over real processes.

    `setup()` (signal handlers, inherited descriptors) before the first
    start, `teardown()` after the last event; `with runner:` does both.
    """

    timeout_grace = 2.0  # seconds between SIGTERM and SIGKILL on timeout

    def __init__(
        self,
        spec_for: Callable[[str], ActionSpec],
        console: Console,
        grace_period: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        alarms: Alarms | None = None,
    ) -> None:
        super().__init__(spec_for, console, grace_period, clock)
        self._alarms = alarms or _ALARMS
        self._keep_fds: tuple[int, ...] = ()
        self._processes = _ProcessNotes(None)
        self._executables = Executables()
        self._log_dirs: set[str] = set()  # guarded by _lock: one mkdir per directory, not per action

    def setup(self, *, keep_fds: Sequence[int] = (),
              on_processes: Callable[[Mapping[str, int]], None] | None = None,
              on_remote: Callable[[str], None] | None = None) -> None:
        """Before the first start (main thread): SIGINT/SIGTERM become
        InterruptRequested events; every action process inherits `keep_fds`;
        `on_processes(node -> pid)` hears of each step that starts or ends."""
        self._keep_fds = tuple(keep_fds)
        self._processes = _ProcessNotes(on_processes)
        super().setup()

    def _closed(self) -> None:
        self.kill_all()

    def _new_action(self, spec: ActionSpec) -> _Action:
        return _Action(spec, make_masker(spec.secrets))

    def _launch(self, action: _Action) -> Finished:
        return self._work(action)

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
                    killpg(action.proc.pid, signum)
                self._after(action, self.grace_period, self._kill_current, action)

    def kill_all(self) -> None:
        """SIGKILL every running action's group now; their Finished events still come."""
        with self._lock:
            for action in self._running.values():
                if action.stop_signal is None:
                    action.stop_signal = signal.SIGKILL
                if action.proc is not None:
                    killpg(action.proc.pid, signal.SIGKILL)

    # -- one action, in a worker ------------------------------------------------

    def _work(self, action: _Action) -> Finished:
        """Run the action; never raises (the scheduler waits for this event)."""
        spec = action.spec
        started = self._clock()
        try:
            outcome = self._run_action(action)
        except BaseException as exc:  # e.g. the console's pipe broke: still report
            outcome = _Outcome(FAILED, message=f"internal error: {_describe(exc)}")
        tail: tuple[str, ...] = ()
        finished = started
        try:
            outcome.message = action.mask(outcome.message)
            if outcome.status in (FAILED, TIMEOUT):
                tail = _log_tail(spec.log_path)
            finished = self._clock()
        except BaseException as exc:
            outcome = _Outcome(FAILED, message=f"internal error: {_describe(exc)}")
        with self._lock:
            self._running.pop(spec.node, None)
            for alarm in action.alarms:
                alarm.cancel()
        try:
            self._console.finished(spec.node, outcome.status, finished - started, outcome.message)
            if outcome.status in (FAILED, TIMEOUT):
                self._console.failure(spec.node, outcome.message, spec.log_path, tail)
        except BaseException as exc:
            outcome = _Outcome(FAILED, message=f"internal error: {_describe(exc)}")
        return Finished(
            spec.node, outcome.status, started, finished, outcome.exit_code,
            outcome.message, outcome.value, tail,
        )

    def _open_log(self, path: str) -> IO[str]:
        log_dir = os.path.dirname(path) or "."
        with self._lock:
            made = log_dir in self._log_dirs
        if not made:
            os.makedirs(log_dir, exist_ok=True)
            with self._lock:
                self._log_dirs.add(log_dir)
        return open(path, "w", encoding="utf-8", errors="replace", buffering=1)

    def _run_action(self, action: _Action) -> _Outcome:
        spec = action.spec
        try:
            log = self._open_log(spec.log_path)
        except OSError as exc:
            return _Outcome(FAILED, message=f"cannot write log {spec.log_path}: {exc.strerror}")
        with log:
            if spec.prepare is not None:
                try:
                    spec.prepare()
                except Exception as exc:
                    action.mask = make_masker(spec.secrets)
                    log.write(action.mask(f"prepare failed: {_describe(exc)}") + "\n")
                    return _Outcome(FAILED, message=_describe(exc))
                # prepare may add secrets (values known only once rendered)
                action.mask = make_masker(spec.secrets)
            attempt = 0
            outcome, captured = self._attempt(action, attempt, log)
            while retry_again(outcome.status, attempt, spec.retries) and not self._stopping(action):
                attempt += 1
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
            if action.timed_out or action.alarm_error:
                break
            # Named before it can run: a kill -9 right after the spawn still
            # leaves the action named in the lock file (its pid follows).
            self._processes.note(spec.node, STARTING)
            code, message, out = run_step(
                step, cwd=spec.cwd, env=spec.env, log=log, mask=action.mask,
                show=lambda line: self._console.component_line(spec.node, line),
                supervisor=_Watch(self, action),
                executable=self._executables.find(step.argv[0], spec.env.get("PATH")),
                keep_fds=self._keep_fds)
            if self._stopping(action):
                return _Outcome(CANCELLED, code, "cancelled"), None
            if action.timed_out or action.alarm_error:
                break
            if message:
                return _Outcome(FAILED, code, message), None
            if out is not None:
                captured = (captured or []) + [out]
        else:
            text = None if captured is None else b"".join(captured).decode("utf-8", "replace")
            return _Outcome(SUCCEEDED, 0), text
        if action.alarm_error:
            log.write(action.alarm_error + "\n")
            return _Outcome(FAILED, message=action.alarm_error), None
        return _Outcome(TIMEOUT, message=f"timed out after {_seconds(spec.timeout)} s"), None

    def _stopping(self, action: _Action) -> bool:
        with self._lock:
            return action.stop_signal is not None

    # -- alarms (callbacks take the lock themselves) ------------------------------

    def _after(self, action: _Action, seconds: float, callback: Callable, *args: Any) -> None:
        """Call `callback(*args)` in `seconds`, unless the action ended first.
        Caller holds the lock. If the callback fails, the action fails."""
        action.alarms.append(self._alarms.call_later(
            seconds, callback, *args, on_error=lambda exc: self._alarm_failed(action, exc)))

    def _alarm_failed(self, action: _Action, exc: BaseException) -> None:
        """A timeout or kill could not be carried out: never let the action
        run on unwatched. Kill its step; the action fails, saying why."""
        with self._lock:
            if action.alarm_error is None:
                action.alarm_error = f"internal error: a timer of this action failed: {_describe(exc)}"
            if action.proc is not None:
                killpg(action.proc.pid, signal.SIGKILL)

    def _on_timeout(self, action: _Action, attempt: int) -> None:
        with self._lock:
            if action.attempt != attempt or action.stop_signal is not None:
                return
            if self._running.get(action.spec.node) is not action:
                return
            action.timed_out = True
            if action.proc is not None:
                killpg(action.proc.pid, signal.SIGTERM)
                self._after(action, self.timeout_grace, self._kill_current, action, action.proc)

    def _kill_current(self, action: _Action, proc: subprocess.Popen | None = None) -> None:
        """SIGKILL the group of the current step (only `proc`'s, if given)."""
        with self._lock:
            if action.proc is not None and (proc is None or action.proc is proc):
                killpg(action.proc.pid, signal.SIGKILL)


def _log_tail(path: str) -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return tuple(line.rstrip("\n") for line in deque(f, TAIL_LINES))
    except OSError:
        return ()
