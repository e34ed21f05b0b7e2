"""The worker side of the Dask executor: one action, from data to result.

`run_action(task)` is what dask_executor.py submits; it runs in a thread of
a Dask worker (which must have atmosbuild installed, `pip install
'atmosbuild[dask]'`). Everything the action needs travels in the `Task`: its
materialized source as a tar archive (no shared filesystem needed), the
environment it adds to the worker's own, its steps, timeout, retries and the
secrets to mask. The archive is unpacked into a temporary directory under
the worker's local directory; every path of the client's workspace in the
environment, the argv and the working directory is rewritten to that copy.

The steps run with run_step (step.py), as the local runner runs them: each in
its own process group, a timeout signals the group once (SIGTERM) and kills
it `timeout_grace` seconds later, failures are retried per `retries`
(retry_again). Lines are masked here, on the worker, before they go
anywhere: into the log returned at the end, and (streaming) to the client as
Dask events on the rollout's topic, a batch every STREAM_SECONDS.

An action outlives no client: Dask releases a task's key when the client
that wanted it is gone (a `kill -9` closes its connection; the worker's
state for the key turns `cancelled` within milliseconds), and a watcher
here asks every WANTED_SECONDS whether each running action's key is still
wanted; one that is not is stopped as on Ctrl-C (signal, the task's grace
period, SIGKILL). `running_tokens` says which actions of a rollout still run
here (dask_executor.wait_for_predecessor).

A stop (Ctrl-C on the client) reaches a running action through
`stop_action`, which the client runs on every worker (`Client.run`, outside
the task queue, so a worker whose threads are all busy still hears it): it
signals the step's group once and SIGKILLs it after the grace period. A stop
that arrives before its action started is remembered, so the action, if it
starts after all, ends at once as cancelled.

This module imports no Dask at import time; `run_action` reaches the worker
through `distributed.get_worker()`, and `execute` is the same without Dask
(the unit tests call it directly).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from queue import SimpleQueue
from typing import Any, Callable, Sequence

from ..components.base import CLUSTER_LOCK, WORKER_DIR
from .alarms import Alarm, Alarms
from .events import CANCELLED, FAILED, SUCCEEDED, TIMEOUT
from .process import make_masker, retry_again
from .step import Executables, Step, Supervisor, killpg, run_step, sweep_and_reap

WANTED_SECONDS = 0.5  # how often a running action checks that its client still wants it
STREAM_SECONDS = 0.1  # console lines are sent to the client in batches at most this old
STOPPED_MEMORY_SECONDS = 3600.0  # how long a stop for an action not (yet) started is remembered
TIMEOUT_GRACE = 2.0  # as ProcessRunner.timeout_grace: SIGTERM on timeout, SIGKILL this much later
WORKER_ENV = "ATMOS_WORKER"  # set in each remote action's environment: the worker's address
# A result this small (log, lines, outputs) also goes to the client with the
# stream, which saves it a round trip to fetch it; larger ones are fetched.
PUSH_LIMIT = 64 * 1024
LOST = "the worker running this action was lost"

_ALARMS = Alarms()
_EXECUTABLES = Executables()
_LOCK = threading.Lock()
_RUNNING: dict[str, "_Running"] = {}  # token -> the action running under it, on this worker
_STOPPED: dict[str, float] = {}  # tokens stopped before they ran here -> when


@dataclass
class Task:
    """One attempt series of one action, as shipped to a worker (pickled).

    Paths (`workspace`, `cwd`, `outputs_path`, and those inside `env` and the
    steps' argv) are the client's; the worker rewrites `workspace` to its
    own copy. `env` is what the action sets on top of the worker's environment.
    """

    node: str
    token: str  # unique per submission: the stop and event address of this run
    topic: str  # the Dask event topic the client listens on ("" = no streaming)
    archive: bytes  # tar of the action's files, paths relative to `workspace`
    workspace: str
    cwd: str
    env: dict[str, str]
    steps: Sequence[tuple]  # (argv, capture, log): step.Step's fields
    outputs_path: str  # $ATMOS_OUTPUTS: its content comes back with the result
    timeout: float | None = None
    retries: int = 0
    secrets: Sequence[str] = ()
    claim: str = ""  # a Dask Event name: set when the action starts (see run_action)
    grace: float = 10.0  # SIGTERM, then SIGKILL this much later, when it is stopped
    returns: Sequence[str] = ()  # files (client paths, in the workspace) that come back after a success
    python: str = ""  # the client's interpreter and atmosbuild package directory: in argv,
    package: str = ""  # they become the worker's (our helper scripts: flockrun.py, exitmap.py)


@dataclass
class Result:
    """What comes back. `log` is the whole log, masked; `shown` the lines for
    the console, in order (the client shows those the stream did not bring)."""

    status: str
    exit_code: int | None
    message: str
    worker: str
    log: str = ""
    shown: list[str] = field(default_factory=list)
    captured: str | None = None  # the stdout of the `capture` steps, joined
    outputs: bytes | None = None  # the outputs file ($ATMOS_OUTPUTS), if written
    returned: dict = field(default_factory=dict)  # Task.returns (client path) -> content, those that exist
    attempts: int = 0
    started: float = 0.0  # the worker's wall clock
    finished: float = 0.0


class _Running(Supervisor):
    """An action running on this worker; fields below `mask` guarded by _LOCK."""

    def __init__(self, token: str, node: str = "", wanted: Callable[[], bool] | None = None,
                 grace: float = 10.0) -> None:
        self.token = token
        self.node = node
        self.wanted = wanted  # whether a client still waits for this action (None: always)
        self.grace = grace
        self.proc: subprocess.Popen | None = None
        self.stop_signal: int | None = None
        self.attempt = 0
        self.timed_out = False
        self.alarms: list[Alarm] = []

    def spawned(self, proc: subprocess.Popen) -> None:
        with _LOCK:
            self.proc = proc
            if self.stop_signal is not None:  # the stop came while we were spawning
                killpg(proc.pid, self.stop_signal)

    def reap(self, proc: subprocess.Popen) -> int:
        with _LOCK:  # no stop or alarm signals a reaped group
            code = sweep_and_reap(proc)
            self.proc = None
        return code

    def stopping(self) -> bool:
        with _LOCK:
            return self.stop_signal is not None


class _Stream:
    """Console lines to the client: batched, in order, numbered from 0."""

    def __init__(self, publish: Callable[[Any], None] | None, token: str) -> None:
        self._publish, self._token = publish, token
        self._lock = threading.Lock()
        self.lines: list[str] = []
        self._sent = 0
        self._alarm: Alarm | None = None

    def show(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)
            if self._publish is not None and self._alarm is None:
                self._alarm = _ALARMS.call_later(STREAM_SECONDS, self.flush)

    def flush(self) -> None:
        with self._lock:
            self._alarm = None
            batch, first = self.lines[self._sent:], self._sent
            self._sent = len(self.lines)
        if batch and self._publish is not None:
            try:
                self._publish(["lines", self._token, first, batch])
            except Exception:  # the lines still come back with the result
                pass

    def close(self) -> None:
        with self._lock:
            if self._alarm is not None:
                self._alarm.cancel()
                self._alarm = None


def unpack(archive: bytes, into: str) -> None:
    """Extract the action's files. The archive comes from the client that
    also sends the commands to run, so the `tar` filter (no absolute or
    escaping member paths, no device files) is safety enough."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        tar.extractall(into, filter="tar")


def execute(task: Task, *, where: str, local_dir: str | None = None,
            publish: Callable[[Any], None] | None = None, base_env: dict | None = None,
            gate: Callable[[], bool] | None = None, wanted: Callable[[], bool] | None = None,
            hold: Callable | None = None) -> Result:
    """Run the task's steps in a private copy of its files; never raises for
    what the action does (a failure is a Result). `gate()`, asked after the
    files are unpacked and before anything runs, may refuse (see run_action).
    `wanted()`, asked every WANTED_SECONDS while it runs: False stops it.
    `hold(names, give_up)`: a context manager holding the named cluster
    locks a step asks for (CLUSTER_LOCK), True once held, False if
    `give_up()` said so first (default: locks of this process only)."""
    started = time.time()
    mask = make_masker(task.secrets)
    running = _Running(task.token, task.node, wanted, task.grace)
    with _LOCK:
        if _STOPPED.pop(task.token, None) is not None:
            return Result(CANCELLED, None, "cancelled", where, started=started, finished=started)
        _RUNNING[task.token] = running
    if wanted is not None:
        _WATCHER.ensure()
    stream = _Stream(publish, task.token)
    log = io.StringIO()
    ws = tempfile.mkdtemp(prefix="atmos-action-", dir=local_dir)
    try:
        try:
            unpack(task.archive, ws)
        except (OSError, tarfile.TarError) as exc:
            message = f"cannot unpack the action's source on {where}: {exc}"
            log.write(mask(message) + "\n")
            return Result(FAILED, None, mask(message), where, log.getvalue(), started=started,
                          finished=time.time())

        if gate is not None and not gate():
            return Result(FAILED, None, LOST, where, started=started, finished=time.time())

        mine = os.path.join(local_dir or tempfile.gettempdir(), "atmosbuild")

        def local(text: str) -> str:
            return text.replace(task.workspace, ws).replace(WORKER_DIR, mine)

        env = dict(os.environ if base_env is None else base_env)
        env.update({k: local(v) for k, v in task.env.items()})
        env[WORKER_ENV] = where
        steps, holds = [], []
        for argv, *flags in task.steps:
            argv, names = _cluster_locks(_own_tools(task, tuple(local(a) for a in argv)))
            steps.append(Step(argv, *flags))
            holds.append(names)
        plan = _Plan(steps, holds, hold or _local_hold)
        cwd = local(task.cwd)
        missing = _missing_tool(steps, env, where)
        if missing:
            log.write(mask(missing) + "\n")
            return Result(FAILED, None, mask(missing), where, log.getvalue(), started=started,
                          finished=time.time())
        for name, value in task.env.items():  # WORKER_DIR in the env names directories: made here
            if WORKER_DIR in value:
                os.makedirs(env[name], exist_ok=True)
        attempt = 0
        status, code, message, captured = _attempt(task, running, plan, cwd, env, log, mask, stream)
        while retry_again(status, attempt, task.retries) and not running.stopping():
            attempt += 1
            note = f"retry {attempt}/{task.retries} ({message})"
            log.write(f"--- {note}\n")
            stream.show(note)
            status, code, message, captured = _attempt(task, running, plan, cwd, env, log, mask, stream)
        outputs = None
        if status == SUCCEEDED:
            try:
                with open(local(task.outputs_path), "rb") as fh:
                    outputs = fh.read()
            except FileNotFoundError:
                pass
            except OSError as exc:
                status, message = FAILED, f"cannot read the outputs file on {where}: {exc.strerror}"
        returned = {}
        if status == SUCCEEDED:
            for path in task.returns:
                try:
                    with open(local(path), "rb") as fh:
                        returned[path] = fh.read()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    status, message = FAILED, f"cannot read {os.path.basename(path)} on {where}: {exc.strerror}"
        stream.close()
        stream.flush()
        return Result(status, code, mask(message), where, log.getvalue(), list(stream.lines), captured,
                      outputs, returned, attempt + 1, started, time.time())
    finally:
        stream.close()
        with _LOCK:
            _RUNNING.pop(task.token, None)
            for alarm in running.alarms:
                alarm.cancel()
        _JANITOR.remove(ws)


_HELPERS = ("flockrun.py", "exitmap.py")  # our wrappers: `python -S -E HELPER ... -- ARGV`


def _own_tools(task: Task, argv: tuple) -> tuple:
    """The client's interpreter and our helper scripts in `argv` become this
    worker's (the same atmosbuild, installed elsewhere maybe)."""
    if not task.python or not argv or argv[0] != task.python:
        return argv
    import sys

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the atmosbuild package
    return (sys.executable, *(here + a[len(task.package):] if task.package and a.startswith(task.package + os.sep)
                              else a for a in argv[1:]))


def _wrapped(argv: tuple) -> int | None:
    """Where the wrapped argv starts, if `argv` is one of our wrappers."""
    if len(argv) > 2 and "--" in argv and any(a.endswith(os.sep + h) for a in argv[1:4] for h in _HELPERS):
        return argv.index("--") + 1
    return None


def _tool(argv: tuple) -> str:
    """The program a step runs: argv[0], or what our wrappers around it run."""
    start = _wrapped(argv)
    while start is not None and start < len(argv):
        argv = argv[start:]
        start = _wrapped(argv)
    return argv[0]


def _cluster_locks(argv: tuple) -> tuple[tuple, tuple[str, ...]]:
    """flockrun.py's CLUSTER_LOCK arguments are locks of the cluster (held
    by `hold` around the step, so steps on every worker take turns), not
    files: (argv without them, their names)."""
    start = _wrapped(argv)
    if start is None:
        return argv, ()
    head, rest = argv[:start - 1], argv[start:]  # (python, -S, -E, flockrun.py, LOCK...), ARGV
    names = tuple(a[len(CLUSTER_LOCK):] for a in head if a.startswith(CLUSTER_LOCK))
    if not names:
        return argv, ()
    kept = tuple(a for a in head if not a.startswith(CLUSTER_LOCK))
    if kept[-1].endswith(os.sep + "flockrun.py"):
        return rest, names  # no file lock left for flockrun: the command itself
    return kept + ("--",) + rest, names


def _missing_tool(steps: Sequence[Step], env: dict, where: str) -> str:
    """Why a step cannot start on this worker (its program is not here), or "".
    (A PATH with relative entries depends on each step's cwd: the exec tells.)"""
    if not all(os.path.isabs(d) for d in env.get("PATH", "").split(os.pathsep) if d):
        return ""
    for step in steps:
        tool = _tool(step.argv)
        if os.sep in tool:
            if os.path.isabs(tool) and not os.access(tool, os.X_OK):
                return (f"{tool} is not on worker {where} (or is not executable there): install it "
                        "there, or give the component `resources:` that only workers with it offer")
            continue
        if _EXECUTABLES.find(tool, env.get("PATH")) is None and shutil.which(tool, path=env.get("PATH")) is None:
            return (f"{tool!r} was not found on PATH on worker {where}: install it there, or give the "
                    "component `resources:` that only workers with it offer")
    return ""


class _Janitor:
    """Removes the actions' temporary copies on one thread of its own, after
    their results went back: a directory tree costs milliseconds to remove
    on some disks, and the client need wait for nothing but the result."""

    def __init__(self) -> None:
        self._queue: SimpleQueue = SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def remove(self, path: str) -> None:
        self._put(path)

    def drain(self) -> None:
        """Wait until everything handed over so far is removed."""
        done = threading.Event()
        self._put(done)
        done.wait()

    def _put(self, item) -> None:
        self._queue.put(item)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="atmosbuild janitor", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
            else:
                shutil.rmtree(item, ignore_errors=True)


_JANITOR = _Janitor()


@dataclass
class _Plan:
    steps: list  # step.Step
    holds: list  # per step: the cluster locks it holds while it runs
    hold: Callable  # (names, give_up) -> context manager (see execute)


_LOCAL_HOLDS: dict[str, threading.Lock] = {}


@contextmanager
def _hold_in_order(locks: Sequence[Any], poll: float, give_up: Callable[[], bool]):
    """Acquire `locks` in the order given (callers sort them, so no two holders
    wait on each other in a cycle), each polled every `poll` s so that
    `give_up()` (stopped, no longer wanted) is heard; yields whether all
    are held, and releases what was taken."""
    held = []
    try:
        for lock in locks:
            while not lock.acquire(timeout=poll):
                if give_up():
                    yield False
                    return
            held.append(lock)
        yield True
    finally:
        for lock in reversed(held):
            try:
                lock.release()
            except Exception:
                pass  # (a cluster lock lost with the scheduler: nobody holds it any more)


def _local_hold(names: Sequence[str], give_up: Callable[[], bool]):
    """`hold` without a cluster: the named locks of this process."""
    with _LOCK:
        locks = [_LOCAL_HOLDS.setdefault(n, threading.Lock()) for n in sorted(names)]
    return _hold_in_order(locks, 0.2, give_up)


def _attempt(task: Task, running: _Running, plan: _Plan, cwd: str, env: dict, log, mask,
             stream: _Stream) -> tuple[str, int | None, str, str | None]:
    with _LOCK:
        running.attempt, running.timed_out = running.attempt + 1, False
        if task.timeout is not None:
            running.alarms.append(_ALARMS.call_later(task.timeout, _on_timeout, running, running.attempt))
    if task.topic and stream._publish is not None:
        try:
            stream._publish(["attempt", task.token, running.attempt])
        except Exception:
            pass
    captured: list[bytes] | None = None
    for step, names in zip(plan.steps, plan.holds):
        if running.stopping():
            return CANCELLED, None, "cancelled", None
        if running.timed_out:
            break
        with plan.hold(names, lambda: running.stopping() or running.timed_out) if names \
                else nullcontext(True) as held:
            if not held:
                if running.stopping():
                    return CANCELLED, None, "cancelled", None
                break  # timed out while it waited
            code, message, out = run_step(
                step, cwd=cwd, env=env, log=log, mask=mask, show=stream.show, supervisor=running,
                executable=_EXECUTABLES.find(step.argv[0], env.get("PATH")))
        if running.stopping():
            return CANCELLED, code, "cancelled", None
        if running.timed_out:
            break
        if message:
            return FAILED, code, message, None
        if out is not None:
            captured = (captured or []) + [out]
    else:
        text = None if captured is None else b"".join(captured).decode("utf-8", "replace")
        return SUCCEEDED, 0, "", text
    return TIMEOUT, None, f"timed out after {task.timeout:g} s", None


def _on_timeout(running: _Running, attempt: int) -> None:
    with _LOCK:
        if running.attempt != attempt or running.stop_signal is not None or running.token not in _RUNNING:
            return
        running.timed_out = True
        if running.proc is not None:
            killpg(running.proc.pid, signal.SIGTERM)
            running.alarms.append(_ALARMS.call_later(TIMEOUT_GRACE, _kill, running, running.proc))


def _kill(running: _Running, proc: subprocess.Popen | None = None) -> None:
    """SIGKILL the group of the action's current step (only `proc`'s, if given)."""
    with _LOCK:
        if running.proc is not None and (proc is None or running.proc is proc):
            killpg(running.proc.pid, signal.SIGKILL)


class _Watcher:
    """One thread per worker process, started with the first action that has
    a client to outlive: stops the running actions no client wants."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ensure(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="atmosbuild wanted", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(WANTED_SECONDS)
            with _LOCK:
                watched = [r for r in _RUNNING.values() if r.wanted is not None and r.stop_signal is None]
            for running in watched:
                try:
                    gone = not running.wanted()
                except Exception:
                    gone = False  # cannot tell: keep it (the client's stop still reaches it)
                if gone:
                    stop_action([running.token], signal.SIGTERM, running.grace, remember=False)


_WATCHER = _Watcher()


def running_tokens(prefix: str) -> list[tuple[str, str]]:
    """(token, node) of the actions running here whose token starts with
    `prefix` (one rollout's: its topic). Called via Client.run."""
    with _LOCK:
        return sorted((t, r.node) for t, r in _RUNNING.items() if t.startswith(prefix))


def stop_action(tokens: Sequence[str], signum: int = signal.SIGTERM, grace: float = 10.0, *,
                remember: bool = True) -> int:
    """Stop the actions running here under `tokens`: signal each step's
    group once, SIGKILL it after `grace` seconds. A token not running here
    is remembered, so that run ends at once if it starts later. Returns how
    many ran here. (Called by the client on every worker via Client.run.)"""
    now = time.monotonic()
    found = 0
    with _LOCK:
        for token in tokens:
            running = _RUNNING.get(token)
            if running is None:
                if remember:
                    _STOPPED[token] = now
                continue
            found += 1
            if running.stop_signal is None or signum == signal.SIGKILL:
                running.stop_signal = signum
                if running.proc is not None:
                    killpg(running.proc.pid, signum)
                if signum != signal.SIGKILL:
                    running.alarms.append(_ALARMS.call_later(grace, _kill, running))
        for token, when in list(_STOPPED.items()):
            if now - when > STOPPED_MEMORY_SECONDS:
                del _STOPPED[token]
    return found


async def stop_actions(tokens: Sequence[str], signum: int = signal.SIGTERM, grace: float = 10.0) -> int:
    """stop_action as a coroutine: what `Client.run(..., wait=False)` accepts
    (it runs in the worker's event loop; stop_action only signals and returns)."""
    return stop_action(tokens, signum, grace)


def run_action(task: Task) -> Result:
    """The Dask task: run `task` on this worker.

    Dask reruns a task whose worker died on another worker; an action must
    not run twice unasked (an apply may have gone half-way). So the first
    run sets the Dask Event `task.claim`, and a run that finds it set runs
    nothing and says the first worker was lost; the client retries per
    `retries` with a fresh task. The claim is made on the worker's event
    loop while the files are unpacked, and awaited before the first step.
    """
    from distributed import get_worker

    worker = get_worker()
    where = worker.address
    key = worker.get_current_task()

    def wanted() -> bool:
        # executing (or resumed: released, then wanted again); `cancelled`
        # once no client wants the key, e.g. when its client died.
        state = worker.state.tasks.get(key)
        return state is not None and state.state in ("executing", "long-running", "resumed")

    gate = None
    if task.claim:
        claim = _claim(worker, task.claim)

        def gate() -> bool:
            return claim.result()

    publish = None
    if task.topic:
        def publish(msg: Any) -> None:
            worker.log_event(task.topic, msg)

        publish(["start", task.token, where])
    result = execute(task, where=where, local_dir=worker.local_directory, publish=publish, gate=gate,
                     wanted=wanted, hold=_cluster_hold)
    if publish is not None and _size(result) <= PUSH_LIMIT:
        try:
            publish(["result", task.token, asdict(result)])
        except Exception:
            pass  # the client fetches it
    return result


def _cluster_hold(names: Sequence[str], give_up: Callable[[], bool]):
    """Dask Locks (on the scheduler: every worker sees them), in sorted
    order; a worker that dies loses its leases after Dask's lease timeout."""
    from distributed import Lock

    return _hold_in_order([Lock("atmosbuild-" + name) for name in sorted(names)], 0.5, give_up)


def _claim(worker, name: str):
    """Test-and-set the Event `name` on the scheduler, from the worker's loop:
    a concurrent future of True if this run is the first."""
    import asyncio

    async def first() -> bool:
        if await worker.scheduler.event_is_set(name=name):
            return False
        await worker.scheduler.event_set(name=name)
        return True

    return asyncio.run_coroutine_threadsafe(first(), worker.loop.asyncio_loop)


def _size(result: Result) -> int:
    return (len(result.log) + sum(len(line) for line in result.shown) + len(result.captured or "")
            + len(result.outputs or b"") + len(result.message))
