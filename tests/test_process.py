"""The process runner against real processes: what runs, what is logged and
shown, and that stop and timeout leave nothing behind."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from atmosbuild.run.alarms import Alarms
from atmosbuild.run.events import CANCELLED, FAILED, SUCCEEDED, TIMEOUT, Finished, InterruptRequested
from atmosbuild.run.process import ActionSpec, ProcessRunner, Step, make_masker
from atmosbuild.run.ui import Console

ENV = {"PATH": os.environ["PATH"], "LC_ALL": "C"}


def sh(script: str, capture: bool = False) -> Step:
    return Step(("sh", "-c", script), capture)


class Rig:
    """A runner over specs registered by node id, printing into a StringIO."""

    def __init__(self, tmp: Path, grace_period: float = 5.0) -> None:
        self.tmp = tmp
        self.specs: dict[str, ActionSpec] = {}
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.console = Console(self.out, self.err, prefix=True, live=False, color=False)
        self.runner = ProcessRunner(self.specs.__getitem__, self.console, grace_period=grace_period)

    def add(self, node: str, *steps: Step, **kw) -> ActionSpec:
        kw.setdefault("cwd", str(self.tmp))
        kw.setdefault("env", ENV)
        kw.setdefault("log_path", str(self.tmp / "logs" / f"{node}.log"))
        self.specs[node] = ActionSpec(node, steps, **kw)
        return self.specs[node]

    def run(self, *nodes: str) -> dict[str, Finished]:
        for node in nodes:
            self.runner.start(node)
        return self.collect(len(nodes))

    def collect(self, count: int) -> dict[str, Finished]:
        done: dict[str, Finished] = {}
        while len(done) < count:
            event = self.runner.wait()
            assert isinstance(event, Finished), event
            done[event.node] = event
        return done

    def log(self, node: str) -> str:
        return Path(self.specs[node].log_path).read_text()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for a reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def eventually(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def read_pid(path: Path) -> int:
    assert eventually(lambda: path.exists() and path.read_text().strip()), f"{path} never written"
    return int(path.read_text())


# -- what runs --------------------------------------------------------------


def test_argv_reaches_the_program_intact_and_nothing_is_shell_expanded(rig, tmp_path):
    args = ["two words", "it's", '"quoted"', "$(touch pwned)", "*", "", "tab\there"]
    program = "import json, sys; print(json.dumps(sys.argv[1:]))"
    rig.add("command/argv", Step((sys.executable, "-c", program, *args), capture=True),
            collect=json.loads)
    result = rig.run("command/argv")["command/argv"]
    assert result.status == SUCCEEDED, result
    assert result.value == args
    assert not (tmp_path / "pwned").exists()


def test_the_spec_env_is_the_complete_environment_and_cwd_is_the_workspace(rig, tmp_path):
    work = tmp_path / "ws" / "command" / "x"
    work.mkdir(parents=True)
    rig.add("command/x", sh('echo "$GREETING"; pwd; echo "${HOME-no home}"', capture=True),
            cwd=str(work), env={**ENV, "GREETING": "hello there"}, collect=str.splitlines)
    result = rig.run("command/x")["command/x"]
    assert result.value == ["hello there", str(work), "no home"]


def test_a_non_zero_exit_fails_the_action_and_stops_its_steps(rig, tmp_path):
    rig.add("command/x", sh("echo before; exit 7"), sh("touch second-step-ran"))
    result = rig.run("command/x")["command/x"]
    assert (result.status, result.exit_code, result.message) == (FAILED, 7, "exit code 7")
    assert not (tmp_path / "second-step-ran").exists()
    assert result.log_tail[-1] == "before"
    assert "FAILED: command/x: exit code 7" in rig.err.getvalue()


def test_a_missing_binary_is_reported_as_command_not_found(rig):
    rig.add("terraform/x", Step(("no-such-terraform-binary", "init")))
    result = rig.run("terraform/x")["terraform/x"]
    assert (result.status, result.message) == (FAILED, "command not found: no-such-terraform-binary")


def test_output_goes_to_the_log_file_and_to_the_console_prefixed(rig, tmp_path):
    spec = rig.add("terraform/ecr/api", sh("echo one; echo two >&2; printf 'no newline'"))
    spec.log_path = str(tmp_path / "logs" / "run-1" / "terraform" / "ecr" / "api.log")
    assert rig.run("terraform/ecr/api")["terraform/ecr/api"].ok
    assert rig.log("terraform/ecr/api").splitlines()[1:] == ["one", "two", "no newline"]
    console = rig.out.getvalue().splitlines()
    for line in ("one", "two", "no newline"):
        assert f"[terraform/ecr/api] {line}" in console
    assert console[0] == "[terraform/ecr/api] started"
    assert console[-1].startswith("[terraform/ecr/api] succeeded in ")


def test_invalid_utf8_output_is_replaced_not_fatal(rig):
    rig.add("command/x", sh(r"printf 'caf\351\n'"))
    assert rig.run("command/x")["command/x"].ok
    assert "caf\ufffd" in rig.log("command/x")


def test_actions_run_concurrently(rig):
    nodes = [f"command/{i}" for i in range(4)]
    for node in nodes:
        rig.add(node, sh("date +%s.%N; sleep 0.3; date +%s.%N", capture=True),
                collect=lambda out: [float(x) for x in out.split()])
    began = time.monotonic()
    results = rig.run(*nodes)
    elapsed = time.monotonic() - began
    spans = [results[n].value for n in nodes]
    assert max(start for start, _ in spans) < min(end for _, end in spans)
    assert elapsed < 4 * 0.3


# -- stop, timeout, no orphans ------------------------------------------------


def test_timeout_kills_the_whole_process_group(rig, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    rig.add("command/slow", sh(f"sleep 60 & echo $! > {pidfile}; wait"), timeout=0.3)
    began = time.monotonic()
    result = rig.run("command/slow")["command/slow"]
    assert (result.status, result.message) == (TIMEOUT, "timed out after 0.3 s")
    assert time.monotonic() - began < 2
    assert eventually(lambda: not alive(read_pid(pidfile)))


def test_timeout_sigkills_a_child_that_ignores_sigterm(rig, tmp_path):
    rig.runner.timeout_grace = 0.3
    pidfile = tmp_path / "grandchild.pid"
    rig.add("command/stubborn", sh(f"trap '' TERM; sleep 60 & echo $! > {pidfile}; wait"),
            timeout=0.2)
    result = rig.run("command/stubborn")["command/stubborn"]
    assert result.status == TIMEOUT
    assert eventually(lambda: not alive(read_pid(pidfile)))


def test_stop_lets_a_child_that_handles_sigterm_exit_cleanly(rig, tmp_path):
    ready = tmp_path / "ready"
    rig.add("terraform/x", sh(f"trap 'echo cleaning up; exit 0' TERM; touch {ready}; "
                              "sleep 30 & wait"))
    rig.runner.start("terraform/x")
    assert eventually(ready.exists)
    began = time.monotonic()
    rig.runner.stop(["terraform/x"])
    result = rig.collect(1)["terraform/x"]
    assert result.status == CANCELLED
    assert time.monotonic() - began < 2  # well inside the 5 s grace period
    assert "cleaning up" in rig.log("terraform/x")


def test_stop_sigkills_what_ignores_sigterm_after_the_grace_period(tmp_path):
    rig = Rig(tmp_path, grace_period=0.5)
    pidfile = tmp_path / "grandchild.pid"
    rig.add("command/stubborn", sh(f"trap '' TERM; sleep 60 & echo $! > {pidfile}; wait"))
    rig.runner.start("command/stubborn")
    grandchild = read_pid(pidfile)
    began = time.monotonic()
    rig.runner.stop(["command/stubborn"])
    result = rig.collect(1)["command/stubborn"]
    waited = time.monotonic() - began
    assert result.status == CANCELLED
    assert 0.4 < waited < 3
    assert eventually(lambda: not alive(grandchild))


def test_stop_signals_each_group_once(rig, tmp_path):
    ready = tmp_path / "ready"
    rig.add("command/x", sh(f"n=0; trap 'n=$((n+1)); echo got $n' INT; touch {ready}; "
                            "while [ $n -lt 2 ]; do sleep 0.05; done"), )
    rig.runner.start("command/x")
    assert eventually(ready.exists)
    rig.runner.stop(["command/x"], signal.SIGINT)
    rig.runner.stop(["command/x"], signal.SIGINT)
    time.sleep(0.3)
    rig.runner.kill_all()
    result = rig.collect(1)["command/x"]
    assert result.status == CANCELLED
    assert rig.log("command/x").splitlines().count("got 1") == 1
    assert "got 2" not in rig.log("command/x")


def test_leftovers_of_a_finished_step_are_killed(rig, tmp_path):
    pidfile = tmp_path / "daemon.pid"
    rig.add("command/x", sh(f"sleep 60 >/dev/null 2>&1 & echo $! > {pidfile}"))
    assert rig.run("command/x")["command/x"].ok
    assert eventually(lambda: not alive(read_pid(pidfile)))


def test_the_leaders_exit_ends_the_step_not_a_background_child_holding_the_pipe(rig, tmp_path):
    pidfile = tmp_path / "bg.pid"
    rig.add("command/x", sh(f"sleep 30 & echo $! > {pidfile}; echo hi"), sh("echo next"))
    began = time.monotonic()
    result = rig.run("command/x")["command/x"]
    assert time.monotonic() - began < 2.5
    assert result.ok, result
    assert rig.log("command/x").splitlines()[1:] == ["hi", "$ sh -c 'echo next'", "next"]
    assert "[command/x] hi" in rig.out.getvalue()
    assert eventually(lambda: not alive(read_pid(pidfile)), timeout=1)


def test_stop_does_not_wait_the_grace_period_for_a_child_left_holding_the_pipe(rig, tmp_path):
    ready, pidfile = tmp_path / "ready", tmp_path / "bg.pid"
    rig.add("command/x", sh(f"trap 'echo bye; exit 0' TERM; (trap '' TERM; sleep 30; :) & "
                            f"echo $! > {pidfile}; touch {ready}; wait"))
    rig.runner.start("command/x")
    assert eventually(ready.exists)
    began = time.monotonic()
    rig.runner.stop(["command/x"])
    result = rig.collect(1)["command/x"]
    assert time.monotonic() - began < 2.5  # the grace period is 5 s
    assert result.status == CANCELLED
    assert "bye" in rig.log("command/x")
    assert eventually(lambda: not alive(read_pid(pidfile)), timeout=1)


def test_a_child_that_left_the_group_holding_the_pipe_is_not_waited_for(rig, tmp_path):
    pidfile = tmp_path / "escaped.pid"
    escape = f"import os, time; os.setsid(); print(os.getpid(), file=open({str(pidfile)!r}, 'w')); time.sleep(30)"
    rig.add("command/x", sh(f"{sys.executable} -c \"{escape}\" & "
                            f"while [ ! -s {pidfile} ]; do sleep 0.01; done; printf 'last words'"))
    began = time.monotonic()
    try:
        result = rig.run("command/x")["command/x"]
        assert time.monotonic() - began < 4
        assert result.ok, result
        log = rig.log("command/x").splitlines()
        assert log[1] == "last words"
        assert log[2].startswith("--- the output pipe was still held open 1 s after the step exited")
    finally:
        os.kill(read_pid(pidfile), signal.SIGKILL)


def test_without_pidfds_the_leaders_exit_still_ends_the_step(rig, tmp_path, monkeypatch):
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    pidfile = tmp_path / "bg.pid"
    rig.add("command/x", sh(f"sleep 30 & echo $! > {pidfile}; echo hi"))
    began = time.monotonic()
    assert rig.run("command/x")["command/x"].ok
    assert time.monotonic() - began < 2.5
    assert "hi" in rig.log("command/x").splitlines()
    assert eventually(lambda: not alive(read_pid(pidfile)), timeout=1)


def test_long_lines_and_lines_split_across_reads_stay_whole(rig):
    program = ("import sys, time; out = sys.stdout.buffer; out.write(b'a' * 200000 + b'\\nhal');"
               " out.flush(); time.sleep(0.05); out.write(b'f\\r\\nend'); out.flush()")
    rig.add("command/x", Step((sys.executable, "-c", program)),
            Step((sys.executable, "-c", program), capture=True), collect=len)
    result = rig.run("command/x")["command/x"]
    assert result.value == 200000 + len("\nhalf\r\nend")
    lines = rig.log("command/x").splitlines()
    assert [lines[1], *lines[2:4]] == ["a" * 200000, "half", "end"]
    assert lines[5:] == ["a" * 200000, "half", "end"]


def test_stop_of_an_unknown_or_finished_node_is_ignored(rig):
    rig.add("command/x", sh("true"))
    rig.run("command/x")
    rig.runner.stop(["command/x", "command/never-started"])


def test_a_second_interrupt_kills_at_once(tmp_path):
    rig = Rig(tmp_path, grace_period=30)
    ready = tmp_path / "ready"
    rig.add("command/stubborn", sh(f"trap '' TERM INT; touch {ready}; sleep 60 & wait"))
    with rig.runner:
        rig.runner.start("command/stubborn")
        assert eventually(ready.exists)
        os.kill(os.getpid(), signal.SIGINT)
        assert rig.runner.wait() == InterruptRequested(signal.SIGINT)
        rig.runner.stop(["command/stubborn"])
        began = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)
        assert rig.runner.wait() == InterruptRequested(signal.SIGINT)
        result = rig.collect(1)["command/stubborn"]
    assert result.status == CANCELLED
    assert time.monotonic() - began < 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- retries, hooks, secrets, log tail -------------------------------------------


def test_a_flaky_step_succeeds_on_retry(rig, tmp_path):
    counter = tmp_path / "attempts"
    rig.add("command/flaky", sh(f"echo x >> {counter}; [ $(wc -l < {counter}) -ge 2 ] || exit 3"),
            retries=2)
    result = rig.run("command/flaky")["command/flaky"]
    assert result.ok
    assert counter.read_text().count("x") == 2
    assert "retry 1/2 (exit code 3)" in rig.log("command/flaky")
    assert "retry 2/2" not in rig.log("command/flaky")


def test_retries_run_out(rig):
    rig.add("command/broken", sh("echo attempt; exit 3"), retries=2)
    result = rig.run("command/broken")["command/broken"]
    assert (result.status, result.message) == (FAILED, "exit code 3")
    log = rig.log("command/broken")
    assert log.splitlines().count("attempt") == 3 and "retry 2/2" in log


def test_a_timed_out_attempt_is_retried(rig, tmp_path):
    counter = tmp_path / "attempts"
    rig.add("command/x", sh(f"echo x >> {counter}; [ $(wc -l < {counter}) -ge 2 ] || sleep 5"),
            timeout=0.3, retries=1)
    result = rig.run("command/x")["command/x"]
    assert result.ok, result
    assert "retry 1/1 (timed out after 0.3 s)" in rig.log("command/x")


def test_prepare_runs_before_the_steps_and_collect_gets_captured_stdout(rig, tmp_path):
    work = tmp_path / "work"

    def prepare():
        work.mkdir()
        (work / "main.tf").write_text("resource {}\n")

    rig.add("terraform/x", sh("ls"), sh("echo '{\"url\": \"https://x\"}'", capture=True),
            cwd=str(work), prepare=prepare, collect=json.loads)
    result = rig.run("terraform/x")["terraform/x"]
    assert result.value == {"url": "https://x"}
    assert "[terraform/x] main.tf" in rig.out.getvalue()
    assert '"url"' not in rig.out.getvalue()  # captured stdout: log only
    assert '{"url": "https://x"}' in rig.log("terraform/x")


def test_stderr_of_a_captured_step_does_not_reach_collect(rig):
    rig.add("terraform/x", sh("echo warning >&2; echo '{}'", capture=True), collect=json.loads)
    result = rig.run("terraform/x")["terraform/x"]
    assert result.value == {}
    assert "[terraform/x] warning" in rig.out.getvalue()


def test_collect_gets_none_without_a_capturing_step(rig):
    rig.add("command/x", sh("true"), collect=lambda out: ("got", out))
    assert rig.run("command/x")["command/x"].value == ("got", None)


def test_an_exception_in_prepare_fails_the_action_before_any_step(rig, tmp_path):
    def prepare():
        raise OSError("source directory vanished")

    rig.add("command/x", sh("touch ran"), prepare=prepare)
    result = rig.run("command/x")["command/x"]
    assert (result.status, result.message) == (FAILED, "source directory vanished")
    assert not (tmp_path / "ran").exists()


def test_an_exception_in_collect_fails_the_action(rig):
    def collect(out):
        raise ValueError(f"outputs file is not valid JSON: {out.strip()}")

    rig.add("command/x", sh("echo nope", capture=True), collect=collect)
    result = rig.run("command/x")["command/x"]
    assert (result.status, result.message) == (FAILED, "outputs file is not valid JSON: nope")
    assert result.log_tail[-1] == "collect failed: outputs file is not valid JSON: nope"


def test_secrets_are_masked_in_log_console_and_messages(rig):
    rig.add("command/x", sh('echo "token=$TOKEN"; echo "$TOKEN" >&2; exit 1'),
            env={**ENV, "TOKEN": "hunter2"}, secrets=["hunter2", ""])
    result = rig.run("command/x")["command/x"]
    everything = rig.log("command/x") + rig.out.getvalue() + rig.err.getvalue() + str(result)
    assert "hunter2" not in everything
    assert "[command/x] token=***" in rig.out.getvalue()
    assert result.log_tail[-2:] == ("token=***", "***")


def test_secrets_in_argv_are_masked_in_the_log(rig):
    rig.add("command/x", Step(("echo", "--password", "s3cr3t")), secrets=["s3cr3t"])
    assert rig.run("command/x")["command/x"].ok
    assert rig.log("command/x").splitlines() == ["$ echo --password ***", "--password ***"]


def test_each_line_of_a_multi_line_secret_is_masked():
    mask = make_masker(["-----KEY-----\nAAAA\nBBBB", "ab"])
    assert [mask(line) for line in ["AAAA", "x BBBB y", "abc", "other"]] == [
        "***", "x *** y", "***c", "other"]
    assert make_masker(["", ""])("untouched") == "untouched"


def test_log_tail_is_the_last_20_lines(rig):
    rig.add("command/x", sh("for i in $(seq 1 30); do echo line $i; done; exit 2"))
    result = rig.run("command/x")["command/x"]
    assert len(result.log_tail) == 20
    assert result.log_tail[-1] == "line 30" and result.log_tail[0] == "line 11"
    assert "  | line 30" in rig.err.getvalue()


def test_a_successful_action_has_no_log_tail(rig):
    rig.add("command/x", sh("echo fine"))
    assert rig.run("command/x")["command/x"].log_tail == ()


def test_a_missing_working_directory_is_named(rig, tmp_path):
    rig.add("command/x", sh("true"), cwd=str(tmp_path / "gone"))
    result = rig.run("command/x")["command/x"]
    assert result.message == f"working directory not found: {tmp_path / 'gone'}"


def test_stop_during_prepare_cancels_before_any_step(rig, tmp_path):
    preparing, release = threading.Event(), threading.Event()

    def prepare():
        preparing.set()
        release.wait(5)

    rig.add("command/x", sh("touch ran"), prepare=prepare)
    rig.runner.start("command/x")
    assert preparing.wait(5)
    rig.runner.stop(["command/x"])
    release.set()
    assert rig.collect(1)["command/x"].status == CANCELLED
    assert not (tmp_path / "ran").exists()


def test_the_timeout_covers_all_steps_of_an_attempt(rig, tmp_path):
    rig.add("command/x", sh("sleep 0.2"), sh("sleep 0.2"), sh("touch third-ran"), timeout=0.3)
    assert rig.run("command/x")["command/x"].status == TIMEOUT
    assert not (tmp_path / "third-ran").exists()


def test_worker_threads_are_reused(rig):
    nodes = [f"command/{i}" for i in range(30)]
    for node in nodes:
        rig.add(node, Step(("true",)))
    before = threading.active_count()
    for pair in zip(nodes[::2], nodes[1::2]):
        assert all(f.ok for f in rig.run(*pair).values())
    assert threading.active_count() - before <= 3  # two workers (+ the shared alarm thread)


# -- what must not go wrong quietly ------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/dev/fd"))


class BrokenConsole(Console):
    """A console whose output breaks (a closed pipe), as a real one can."""

    def component_line(self, node, line):
        raise BrokenPipeError("the console went away")


def test_a_capture_steps_temporary_file_is_closed_whatever_happens(tmp_path):
    rig = Rig(tmp_path)
    broken = Rig(tmp_path)
    broken.runner = ProcessRunner(broken.specs.__getitem__, BrokenConsole(io.StringIO(), io.StringIO(),
                                  prefix=True, live=False, color=False))
    for i in range(5):  # warm up: worker threads, the log directory
        rig.add(f"command/ok{i}", sh("echo fine", capture=True))
        rig.run(f"command/ok{i}")
    before = open_fds()
    for i in range(5):
        rig.add(f"command/nul{i}", sh("true", capture=True), env={**ENV, "BAD": "a\0b"})
        result = rig.run(f"command/nul{i}")[f"command/nul{i}"]
        assert result.status == FAILED and "null byte" in result.message, result
        broken.add(f"command/pipe{i}", sh("echo warning >&2", capture=True))
        result = broken.run(f"command/pipe{i}")[f"command/pipe{i}"]
        assert result.status == FAILED and "the console went away" in result.message, result
    assert open_fds() <= before, "a temporary file (or pipe) leaked"


class BrokenAlarms(Alarms):
    """Alarms whose callbacks fail, as a bug in one would."""

    def call_later(self, seconds, callback, *args, on_error=None):
        def broken(*_):
            raise RuntimeError("the alarm broke")

        return super().call_later(seconds, broken, *args, on_error=on_error)


def test_an_alarm_error_is_handed_on_and_the_other_alarms_still_fire():
    alarms = Alarms()
    errors, fired = [], threading.Event()
    alarms.call_later(0.01, lambda: 1 / 0, on_error=errors.append)
    alarms.call_later(0.05, fired.set)
    assert fired.wait(3)
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)


def test_a_timeout_that_cannot_fire_fails_the_action_saying_why(tmp_path):
    rig = Rig(tmp_path)
    rig.runner = ProcessRunner(rig.specs.__getitem__, rig.console, alarms=BrokenAlarms())
    rig.add("command/x", sh("sleep 30"), timeout=0.2)
    began = time.monotonic()
    result = rig.run("command/x")["command/x"]
    assert time.monotonic() - began < 5, "the action ran on with a broken timeout"
    assert result.status == FAILED
    assert "the alarm broke" in result.message and "timer" in result.message
    assert "the alarm broke" in rig.log("command/x")


AWKWARD_SECRET = "a'b\"c\\d\ne f $HOME `x` ;"


def assert_secret_absent(data: bytes, secret: str) -> None:
    for piece in {secret, *secret.splitlines(), shlex.quote(secret)}:
        if piece.strip():
            assert piece.encode() not in data, (piece, data)


def test_a_secret_with_quotes_backslashes_and_newlines_is_masked_on_the_echoed_line(rig):
    secret = AWKWARD_SECRET
    rig.add("command/x", Step(("sh", "-c", "true", "sh", secret, f"--token={secret}")),
            secrets=[secret])
    assert rig.run("command/x")["command/x"].ok
    data = Path(rig.specs["command/x"].log_path).read_bytes()
    assert_secret_absent(data, secret)
    assert data.decode().splitlines()[0] == "$ sh -c true sh *** --token=***"


@settings(max_examples=40, deadline=None)
@given(secret=st.text(alphabet=st.sampled_from("ab'\"\\\n $`;&|(){}#é日 -"), min_size=3, max_size=20)
       .filter(lambda s: all(len(line.strip()) >= 3 for line in s.splitlines())))
def test_any_secret_in_argv_never_reaches_the_log(secret):
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp))
        rig.add("command/x", Step(("sh", "-c", 'printf "%s\\n" "$1"', "sh", secret, "x" + secret)),
                secrets=[secret])
        assert rig.run("command/x")["command/x"].ok
        data = Path(rig.specs["command/x"].log_path).read_bytes() + rig.out.getvalue().encode()
        assert_secret_absent(data, secret)


def test_teardown_with_an_action_still_running_stops_it_gently_and_waits(tmp_path):
    """A caller that bails out early (an exception in the schedule) leaves
    nothing running unwatched, and does not SIGKILL what could stop cleanly."""
    rig = Rig(tmp_path, grace_period=5)
    ready, stopped = tmp_path / "ready", tmp_path / "stopped"
    rig.add("command/x", sh(f"trap 'echo TERM > {stopped}; exit 0' TERM; touch {ready}; "
                            "while :; do sleep 0.05; done"))
    rig.runner.setup()
    rig.runner.start("command/x")
    assert eventually(ready.exists)
    rig.runner.teardown()
    assert stopped.read_text() == "TERM\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_actions_inherit_the_kept_descriptors_and_their_pids_are_told(rig, tmp_path):
    """What keeps the deployment lock held while an action runs (lock.py)."""
    import fcntl

    read_end, write_end = os.pipe()
    kept = fcntl.fcntl(write_end, fcntl.F_DUPFD_CLOEXEC, 70)
    os.close(write_end)
    seen: list[dict] = []
    write = f"import os; os.write({kept}, b'inherited\\n')"
    rig.add("command/x", sh(f'echo $$ > {tmp_path / "pid"}; exec {sys.executable} -c "{write}"'))
    rig.runner.setup(keep_fds=[kept], on_processes=seen.append)
    try:
        assert rig.run("command/x")["command/x"].ok, rig.log("command/x")
    finally:
        rig.runner.teardown()
        os.close(kept)
    assert os.read(read_end, 100) == b"inherited\n"
    os.close(read_end)
    assert seen == [{"command/x": 0}, {"command/x": read_pid(tmp_path / "pid")}, {}]  # 0: being spawned
