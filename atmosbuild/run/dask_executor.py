"""The Dask executor: a Runner (events.py) whose actions run on a Dask cluster.

atmosbuild keeps every decision: the schedulers (schedule.py) decide what
starts and when, at most `-j N` at once, so at most N futures are
outstanding; each result is recorded by the rollout the moment it arrives.
The cluster only executes: one Dask task per action (remote.run_action).

Per action, in one of our reused threads (process.WorkerPool):
 - `prepare` runs here, on the client, as locally: the source is
   materialized into the rollout's workspace, the vars file written;
 - the action's directory and its files in the workspace's `.atmos/` that
   its environment or argv name are packed into a tar (refused above
   SHIP_LIMIT bytes) and submitted with the environment the action adds
   (every variable whose value differs from this process's environment),
   its steps, timeout, retries and secrets, and its `resources`;
 - lines stream back as Dask events on this rollout's topic and go to the
   log file and the console as they arrive; the result brings the whole log
   (it replaces the streamed copy), the outputs file and captured stdout;
   `collect` runs here.

A monitor thread asks the scheduler for its workers every CHECK_SECONDS
while actions run: an action whose worker left fails (or is retried per
`retries`, as a fresh task), and an action whose `resources` no worker
offers fails after RESOURCE_WAIT seconds instead of waiting forever.

Stops (fail-fast, Ctrl-C, SIGTERM) reach running actions through
remote.stop_actions on every worker (signal the group, grace, SIGKILL);
a task not started yet is also cancelled. The Finished event of a stopped
action comes when its worker says the process is gone.
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Sequence

from ..errors import AtmosError
from ..fileops import write_atomic
from .events import CANCELLED, FAILED, SUCCEEDED, Finished
from .process import ActionSpec, RunnerBase, _log_tail, make_masker
from .remote import LOST, Result, Task, run_action, running_tokens, stop_actions
from .ui import Console
from .workspace import META_DIR

CONNECT_TIMEOUT = 5.0  # seconds to reach the scheduler before giving up
CHECK_SECONDS = 0.5  # how often the scheduler is asked which workers are alive
RESOURCE_WAIT = 10.0  # an action whose resources no worker offers fails after this long
SHIP_LIMIT = 64 * 2**20  # bytes of files an action may ship to a worker
PIP_HINT = "pip install 'atmosbuild[dask]'"
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # atmosbuild/, as in argv


class ExecutorError(AtmosError):
    """The executor cannot be used: Dask missing, scheduler unreachable (exit 2)."""


def scheduler_address(executor: str) -> str:
    """`dask://HOST:PORT` -> the scheduler's `tcp://HOST:PORT`."""
    return "tcp://" + executor[len("dask://"):]


def connect(executor: str, timeout: float = CONNECT_TIMEOUT):
    """A distributed.Client of the scheduler of `executor`, or ExecutorError."""
    try:
        from distributed import Client
    except ImportError:
        raise ExecutorError(f"executor {executor} needs the Dask client (distributed), "
                            f"which is not installed: {PIP_HINT}") from None
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # our messages say what failed
    try:
        return Client(scheduler_address(executor), timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ExecutorError(f"cannot reach the Dask scheduler of executor {executor} "
                            f"within {timeout:g} s: {exc}") from None


@dataclass(eq=False)
class _Remote:
    """A node on the cluster. Mutable fields are guarded by the runner's lock."""

    spec: ActionSpec
    mask: Callable[[str], str]
    started: float
    task: Task | None = None
    future: Any = None  # the current submission's distributed.Future
    worker: str = ""  # where the current submission runs, once it said so
    attempts: int = 0  # attempts used by earlier submissions (lost workers)
    stop_signal: int | None = None
    done: bool = False  # its Finished was posted
    shown: int = 0  # console lines of the current submission shown so far
    log: Any = None  # the log file, streamed into while the action runs
    unavailable_since: float | None = None  # no worker offers its resources since
    resources: dict = field(default_factory=dict)
    remote_attempts: int = 0  # attempts the current submission has begun, as its worker said
    earlier_log: str = ""  # the log of submissions lost with their worker, kept above the last one's
    # Held while lines go to the log and console: the streamed ones and, at
    # the end, the rest from the result, so they never overtake each other.
    io_lock: threading.Lock = field(default_factory=threading.Lock)


class DaskRunner(RunnerBase):
    """Runner over a Dask scheduler at `executor` (`dask://HOST:PORT`)."""

    ship_limit = SHIP_LIMIT

    def __init__(self, spec_for: Callable[[str], ActionSpec], console: Console,
                 grace_period: float = 10.0, *, executor: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(spec_for, console, grace_period, clock)
        self.executor = executor
        self._by_token: dict[str, _Remote] = {}
        self._claims: list[str] = []
        self._base_env = dict(os.environ)
        self._client = None
        self._topic = ""
        self._closing = threading.Event()
        self._monitor: threading.Thread | None = None
        self._seq = 0
        self._on_remote: Callable[[str], None] | None = None

    # -- the Runner protocol --------------------------------------------------

    def setup(self, *, keep_fds: Sequence[int] = (),
              on_processes: Callable[[Mapping[str, int]], None] | None = None,
              on_remote: Callable[[str], None] | None = None) -> None:
        """Catch Ctrl-C. The scheduler is reached when the first action
        starts: a rollout with nothing to run needs no cluster. `keep_fds` and
        `on_processes` concern local processes: remote ones cannot inherit
        the deployment lock. `on_remote(where)` is told this rollout's
        executor and task prefix before its first task is submitted (the
        lock file keeps it: a rollout after a kill -9 of this one waits for
        its tasks, `wait_for_predecessor`), and "" once none runs."""
        self._on_remote = on_remote
        super().setup()

    def _connect(self) -> None:
        """Connect (CONNECT_TIMEOUT at most), listen for the actions' lines,
        start watching the workers."""
        self._client = connect(self.executor)
        self._topic = "atmosbuild-" + os.urandom(8).hex()
        if self._on_remote is not None:
            self._on_remote(f"{self.executor} {self._topic}")
        self._client.subscribe_topic(self._topic, self._on_event)
        self._monitor = threading.Thread(target=self._watch, name="atmosbuild dask monitor", daemon=True)
        self._monitor.start()

    def _closed(self) -> None:
        connected = self._client is not None
        self._close()
        if connected and self._on_remote is not None:
            self._on_remote("")  # nothing of ours runs on the cluster any more

    def start(self, node: str) -> None:
        if self._client is None:
            self._connect()
        super().start(node)

    def _new_action(self, spec: ActionSpec) -> _Remote:
        return _Remote(spec, make_masker(spec.secrets), self._clock(),
                       resources=dict(getattr(spec, "resources", None) or {}))

    def stop(self, nodes: Collection[str], signum: int | None = None) -> None:
        """Stop running nodes: their processes on the workers get `signum`
        (SIGTERM) once and SIGKILL after the grace period; tasks not started
        yet are cancelled."""
        self._stop(nodes, signum or signal.SIGTERM, self.grace_period)

    def kill_all(self) -> None:
        with self._lock:
            nodes = [n for n, a in self._running.items() if not a.done]
            for node in nodes:
                self._running[node].stop_signal = None  # escalate those asked already
        self._stop(nodes, signal.SIGKILL, 0.0)

    # -- stopping ------------------------------------------------------------------

    def _stop(self, nodes: Collection[str], signum: int, grace: float) -> None:
        tokens, cancel = [], []
        with self._lock:
            for node in nodes:
                action = self._running.get(node)
                if action is None or action.done or action.stop_signal is not None:
                    continue
                action.stop_signal = signum
                if action.task is not None:
                    tokens.append(action.task.token)
                    if not action.worker and action.future is not None:
                        cancel.append(action.future)  # not started: it need not start
        if tokens and self._client is not None:
            try:
                self._client.run(stop_actions, tokens, signum, grace, wait=False)
            except Exception:
                pass  # the scheduler is gone: so are the results; the futures say so
        for future in cancel:
            try:
                future.cancel()
            except Exception:
                pass

    # -- one action ------------------------------------------------------------------

    def _launch(self, action: _Remote) -> Finished | None:
        """Prepare here, pack, submit. A Finished if it ended before running."""
        spec = action.spec
        try:
            os.makedirs(os.path.dirname(spec.log_path) or ".", exist_ok=True)
            action.log = open(spec.log_path, "w", encoding="utf-8", errors="replace", buffering=1)
        except OSError as exc:
            return self._end(action, FAILED, message=f"cannot write log {spec.log_path}: {exc.strerror}")
        try:
            if spec.prepare is not None:
                try:
                    spec.prepare()
                except Exception as exc:
                    return self._fail_early(action, f"prepare failed: {_describe(exc)}", _describe(exc))
            if self._stopping(action):
                return self._end(action, CANCELLED, message="cancelled")
            try:
                task = self._task(action)
            except _TooBig as exc:
                return self._fail_early(action, str(exc), str(exc))
            self._submit(action, task)
            return None
        except BaseException as exc:
            return self._end(action, FAILED, message=f"internal error: {_describe(exc)}")

    def _fail_early(self, action: _Remote, logged: str, message: str) -> Finished | None:
        self._append_log(action, logged)
        return self._end(action, FAILED, message=message)

    def _task(self, action: _Remote) -> Task:
        spec = action.spec
        env = dict(spec.env)
        workspace = env.get("ATMOS_WORKSPACE") or spec.cwd
        if spec.cwd != workspace and not spec.cwd.startswith(workspace + os.sep):
            workspace = spec.cwd
        archive = pack(workspace, spec.cwd, [*env.values(), *(a for s in spec.steps for a in s.argv)],
                       self.ship_limit)
        return Task(
            node=spec.node, token="", topic=self._topic, archive=archive, workspace=workspace,
            cwd=spec.cwd, env={k: v for k, v in env.items() if self._base_env.get(k) != v},
            steps=[(tuple(s.argv), s.capture, s.log) for s in spec.steps],
            outputs_path=env.get("ATMOS_OUTPUTS", os.path.join(workspace, META_DIR, "outputs.json")),
            timeout=spec.timeout, retries=spec.retries, secrets=tuple(spec.secrets),
            grace=self.grace_period, returns=tuple(getattr(spec, "returns", ())),
            python=sys.executable, package=_PACKAGE)

    def _submit(self, action: _Remote, task: Task) -> None:
        with self._lock:
            self._seq += 1
            token = f"{self._topic}-{self._seq}"
            task.token, task.claim = token, f"claim-{token}"
            task.retries = max(action.spec.retries - action.attempts, 0)
            action.task, action.worker, action.shown, action.remote_attempts = task, "", 0, 0
            action.unavailable_since = None
            self._by_token[token] = action
            self._claims.append(task.claim)
        safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", action.spec.node)
        future = self._client.submit(run_action, task, key=f"atmosbuild-{safe_name}-{token}", pure=False,
                                     resources=action.resources or None)
        with self._lock:
            action.future = future
            stopped = action.stop_signal
        future.add_done_callback(lambda f: self._pool.submit(lambda: self._finish(action, f)))
        if stopped is not None:  # stop() came while we submitted: it did not see this task
            with self._lock:
                action.stop_signal = None
            self._stop([action.spec.node], stopped, self.grace_period)

    def _finish(self, action: _Remote, future) -> Finished | None:
        with self._lock:
            if future is not action.future or action.done:
                return None  # a submission we gave up on (its worker was lost)
        try:
            result: Result = future.result()
        except BaseException as exc:
            if future.cancelled() and self._stopping(action):
                return self._end(action, CANCELLED, message="cancelled")
            return self._end(action, FAILED, message=self._remote_error(exc))
        finally:
            with self._lock:
                action.future = None
        if result.message == LOST:
            return self._lost(action, action.worker or "a worker", action.task.token)
        return self._complete(action, result)

    def _pushed(self, action: _Remote, token: str, fields: dict) -> Finished | None:
        """The result came with the stream (remote.PUSH_LIMIT): no need to
        fetch it from the worker; the future's own callback is ignored."""
        with self._lock:
            if action.done or action.task is None or action.task.token != token:
                return None
            action.future = None
        result = Result(**fields)
        if result.message == LOST:
            return self._lost(action, action.worker or "a worker", token)
        return self._complete(action, result)

    def _complete(self, action: _Remote, result: Result) -> Finished | None:
        try:
            self._write_log(action, result)
            value = None
            status, message = result.status, result.message
            if status == SUCCEEDED:
                outputs = action.spec.env.get("ATMOS_OUTPUTS")
                if outputs and result.outputs is not None:
                    with open(outputs, "wb") as fh:
                        fh.write(result.outputs)
                for path, content in result.returned.items():  # files the steps wrote there
                    if path in action.spec.returns:
                        write_atomic(path, content)
                if action.spec.collect is not None:
                    try:
                        value = action.spec.collect(result.captured)
                    except Exception as exc:
                        self._append_log(action, f"collect failed: {_describe(exc)}")
                        status, message = FAILED, _describe(exc)
        except BaseException as exc:
            return self._end(action, FAILED, message=f"internal error: {_describe(exc)}", worker=result.worker)
        return self._end(action, status, result.exit_code, message, value, result.worker)

    def _lost(self, action: _Remote, worker: str, token: str) -> Finished | None:
        """The worker running `action` (as `token`) left: retry as a new task, or fail."""
        with self._lock:
            if action.done or action.task is None or action.task.token != token:
                return None  # told already
            future, action.future = action.future, None
            used = action.attempts + max(action.remote_attempts, 1)
            action.attempts = used
            retry = used <= action.spec.retries and action.stop_signal is None
        if future is not None:
            try:
                future.cancel()
            except Exception:
                pass
        reason = f"worker {worker} died while running it"
        if retry:
            note = f"retry {used}/{action.spec.retries} ({reason})"
            self._append_log(action, f"--- {note}")
            self._console.component_line(action.spec.node, note)
            with action.io_lock:
                if action.log is not None:
                    action.log.flush()
                    with open(action.spec.log_path, encoding="utf-8", errors="replace") as fh:
                        action.earlier_log = fh.read()
            try:
                self._submit(action, action.task)
                return None
            except BaseException as exc:
                return self._end(action, FAILED, message=self._remote_error(exc))
        self._append_log(action, reason)
        return self._end(action, FAILED, message=reason, worker=worker)

    def _end(self, action: _Remote, status: str, exit_code: int | None = None, message: str = "",
             value: Any = None, worker: str = "") -> Finished | None:
        """Post-process once: log closed, console told, Finished returned."""
        spec = action.spec
        with self._lock:
            if action.done:
                return None
            action.done = True
            self._running.pop(spec.node, None)
            if action.task is not None:
                self._by_token.pop(action.task.token, None)
        finished = self._clock()
        tail: tuple[str, ...] = ()
        try:
            with action.io_lock:
                if action.log is not None:
                    action.log.close()
                    action.log = None
            message = action.mask(message)
            if status in (FAILED, "timeout"):
                tail = _log_tail(spec.log_path)
            self._console.finished(spec.node, status, finished - action.started, message)
            if status in (FAILED, "timeout"):
                self._console.failure(spec.node, message, spec.log_path, tail)
        except BaseException as exc:
            status, message = FAILED, f"internal error: {_describe(exc)}"
        return Finished(spec.node, status, action.started, finished, exit_code, message,
                        value if status == SUCCEEDED else None, tail, worker=worker or action.worker)

    def _remote_error(self, exc: BaseException) -> str:
        text = _describe(exc)
        if isinstance(exc, ImportError) or "deserializ" in text:
            first = text.splitlines()[0] if text else type(exc).__name__
            return (f"the Dask cluster cannot run atmosbuild actions ({first}): the scheduler and "
                    f"every worker need atmosbuild, of this version: {PIP_HINT} there")
        return f"the Dask task failed: {type(exc).__name__}: {text}"

    # -- the log and the console -----------------------------------------------------

    def _on_event(self, event) -> None:
        """A message from a worker (in the client's event-loop thread)."""
        try:
            _, msg = event
            kind, token = msg[0], msg[1]
            with self._lock:
                action = self._by_token.get(token)
                if action is None or action.done:
                    return
                if kind == "start":
                    # The first to start it: a Dask rerun elsewhere (its worker lost) says
                    # so too before it finds the claim taken, and must not take its place.
                    action.worker = action.worker or msg[2]
                    return
                if kind == "attempt":
                    action.remote_attempts = msg[2]
                    return
                if kind == "result":
                    self._pool.submit(lambda: self._pushed(action, token, msg[2]))
                    return
                if kind != "lines":
                    return
            with action.io_lock:
                first, lines = msg[2], msg[3]
                if first != action.shown or action.log is None:
                    return  # out of order, repeated or late: the result brings them all
                action.shown += len(lines)
                for line in lines:
                    action.log.write(line + "\n")
                    self._console.component_line(action.spec.node, line)
        except Exception:
            pass  # a line lost from the stream still comes back with the result

    def _write_log(self, action: _Remote, result: Result) -> None:
        """The whole log replaces what streamed; lines not shown yet are shown."""
        with action.io_lock:
            shown, action.shown = action.shown, len(result.shown)
            log, action.log = action.log, None
            if log is not None:
                log.close()
            with open(action.spec.log_path, "w", encoding="utf-8", errors="replace") as fh:
                fh.write(action.earlier_log + result.log)
            for line in result.shown[shown:]:
                self._console.component_line(action.spec.node, line)

    def _append_log(self, action: _Remote, line: str) -> None:
        try:
            with action.io_lock:
                if action.log is not None:
                    action.log.write(action.mask(line) + "\n")
                    return
                with open(action.spec.log_path, "a", encoding="utf-8", errors="replace") as fh:
                    fh.write(action.mask(line) + "\n")
        except (OSError, ValueError):
            pass

    def _stopping(self, action: _Remote) -> bool:
        with self._lock:
            return action.stop_signal is not None

    # -- watching the cluster --------------------------------------------------------

    def _watch(self) -> None:
        """Workers that left, resources nobody offers (see the module doc)."""
        while not self._closing.wait(CHECK_SECONDS):
            with self._lock:
                waiting = [a for a in self._running.values() if a.future is not None and not a.done]
            if not waiting:
                continue
            try:
                workers = self._client.scheduler_info(n_workers=-1).get("workers", {})
            except Exception:
                continue  # the futures will say the scheduler is gone
            now = self._clock()
            for action in waiting:
                if action.worker and action.worker not in workers:
                    self._pool.submit(lambda a=action, w=action.worker, t=action.task.token: self._lost(a, w, t))
                elif not action.worker and action.resources:
                    self._check_resources(action, workers, now)

    def _check_resources(self, action: _Remote, workers: Mapping[str, Any], now: float) -> None:
        offered = [w.get("resources") or {} for w in workers.values()]
        if any(all(res.get(k, 0) >= n for k, n in action.resources.items()) for res in offered):
            action.unavailable_since = None
            return
        if action.unavailable_since is None:
            action.unavailable_since = now
            return
        if now - action.unavailable_since < RESOURCE_WAIT:
            return
        wanted = ", ".join(f"{k}={_number(n)}" for k, n in sorted(action.resources.items()))
        have = sorted({f"{k}={_number(n)}" for res in offered for k, n in res.items()})
        reason = (f"no Dask worker offers resources {wanted} (waited {RESOURCE_WAIT:g} s; workers offer "
                  f"{', '.join(have) or 'no resources'}): start one with `dask worker ... --resources "
                  f"\"{wanted.replace(', ', ',')}\"`")

        def fail() -> Finished | None:
            with self._lock:
                future, action.future = action.future, None
            if future is not None:
                future.cancel()
            self._append_log(action, reason)
            return self._end(action, FAILED, message=reason)

        self._pool.submit(fail)

    def _close(self) -> None:
        self._closing.set()
        client, self._client = self._client, None
        if client is None:
            return
        claims, self._claims = self._claims, []
        # (No unsubscribe_topic: it travels apart from this call and, arriving
        # after it, would make the scheduler keep an empty topic again.)
        try:
            client.run_on_scheduler(_forget, self._topic, claims)
        except Exception:
            pass
        try:
            client.close(timeout=CONNECT_TIMEOUT)
        except Exception:
            pass


PREDECESSOR_WAIT = 60.0  # seconds a rollout waits for a killed one's tasks to stop


def wait_for_predecessor(record: str, label: str, on_wait: Callable[[str], None] | None = None,
                         bound: float = PREDECESSOR_WAIT) -> None:
    """`record` ("EXECUTOR TOPIC", lock.py) names the tasks of a rollout that
    held this lock and ended without saying they were all over (it was
    killed). Its workers stop them once they see that no client wants them
    (remote.py), after the grace period at most: wait until none of them
    runs on any worker, `bound` seconds at most (then LockedError, exit 3).
    A cluster that cannot be asked is said so and not waited for."""
    from ..errors import LockedError

    executor, _, topic = record.partition(" ")
    if not executor.startswith("dask://") or not topic:
        return
    try:
        client = connect(executor)
    except ExecutorError as exc:
        if on_wait is not None:
            on_wait(f"a killed rollout of {label} ran actions on {executor}, which cannot be asked "
                    f"whether they still run ({exc}); going on")
        return
    try:
        deadline = time.monotonic() + bound
        told = False
        while True:
            try:
                found = client.run(running_tokens, topic + "-")
            except Exception:
                return  # the cluster went away: so did its actions
            left = sorted(f"{node} on {worker}" for worker, items in found.items() for _, node in items)
            if not left:
                return
            if time.monotonic() > deadline:
                raise LockedError(f"{label}: actions of a killed rollout still run on the Dask cluster "
                                  f"{executor} after {bound:g} s: {', '.join(left)}; stop them there, "
                                  "then run again")
            if not told and on_wait is not None:
                on_wait(f"waiting for the actions of a killed rollout of {label} to stop on "
                        f"{executor}: {', '.join(left)}")
                told = True
            time.sleep(0.2)
    finally:
        try:
            client.close(timeout=CONNECT_TIMEOUT)
        except Exception:
            pass


def _forget(topic: str, claims: Sequence[str], dask_scheduler=None) -> None:
    """On the scheduler, after a rollout: drop its claim Events and the
    events kept for its topic (the scheduler keeps up to 1,000 per topic,
    and every rollout has a topic of its own)."""
    if dask_scheduler is None:
        return
    extension = dask_scheduler.extensions.get("events")
    if extension is not None:
        for name in claims:
            extension.event_clear(name=name)
    # (distributed keeps them in its Broker; no public call drops a topic)
    topics = getattr(getattr(dask_scheduler, "_broker", None), "_topics", None)
    if isinstance(topics, dict):
        topics.pop(topic, None)


class _TooBig(Exception):
    pass


def pack(workspace: str, workdir: str, mentions: Sequence[str], limit: int = SHIP_LIMIT) -> bytes:
    """A tar of what one action reads from the workspace: its directory and
    the files of ours in `.atmos/` (vars, tfvars) that its environment or
    argv name (`mentions`). Paths are relative to `workspace`."""
    meta = os.path.join(workspace, META_DIR) + os.sep
    extra = set()
    for text in mentions:
        start = text.find(meta)
        while start >= 0:
            end = start + len(meta)
            while end < len(text) and text[end] not in " \t\n'\",;:=":
                end += 1
            extra.add(text[start:end])
            start = text.find(meta, end)
    files = [p for p in sorted(extra) if os.path.isfile(p)]
    size = sum(os.path.getsize(p) for p in files)
    if os.path.isdir(workdir):
        for base, _, names in os.walk(workdir):
            for name in names:
                try:
                    size += os.lstat(os.path.join(base, name)).st_size
                except OSError:
                    pass
            if size > limit:
                break
    if size > limit:
        raise _TooBig(f"its files in the workspace exceed {limit / 2**20:g} MiB, the most an action ships "
                      "to a Dask worker: make its source smaller, or run it with `executor: local`")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        real = os.path.realpath(workdir)
        if os.path.islink(workdir) and real.startswith(os.path.realpath(workspace) + os.sep):
            # A link to a tree elsewhere in the workspace (terraform's mirror
            # of the root's layout): that tree, and the link made relative.
            inside = os.path.relpath(real, os.path.realpath(workspace)).split(os.sep)
            top = inside[:2] if inside[0] == META_DIR else inside  # the whole mirror: its modules too
            tar.add(os.path.join(os.path.realpath(workspace), *top), arcname=os.path.join(*top))
            link = tarfile.TarInfo(os.path.relpath(workdir, workspace))
            link.type, link.linkname = tarfile.SYMTYPE, os.path.relpath(real, os.path.dirname(
                os.path.join(os.path.realpath(workspace), os.path.relpath(workdir, workspace))))
            tar.addfile(link)
        elif os.path.isdir(workdir):
            tar.add(workdir, arcname=os.path.relpath(workdir, workspace))
        for path in files:
            tar.add(path, arcname=os.path.relpath(path, workspace))
    return buf.getvalue()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _number(n) -> str:
    return f"{n:g}" if isinstance(n, float) else str(n)
