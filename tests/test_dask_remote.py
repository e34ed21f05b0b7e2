"""The worker side (run/remote.py) and the packing of an action's files,
without a cluster: `execute` is what a Dask worker runs for each task."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from atmosbuild.run.dask_executor import _TooBig, pack
from atmosbuild.run.events import CANCELLED, SUCCEEDED, TIMEOUT
from atmosbuild.run.remote import _JANITOR, Task, execute, stop_action
from daskcluster import live_in_group

ENV = {"PATH": os.environ["PATH"], "LC_ALL": "C"}


def workspace(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A client workspace: WS/command/a (the action's directory) and WS/.atmos/ files."""
    ws = tmp_path / "client-ws"
    workdir = ws / "command" / "a"
    (workdir / "lib").mkdir(parents=True)
    (workdir / "lib" / "data.txt").write_text("payload\n")
    (workdir / "run.sh").write_text("echo script\n")
    (workdir / "run.sh").chmod(0o755)
    meta = ws / ".atmos"
    meta.mkdir()
    (meta / "command%2Fa.vars.json").write_text('{"x": 1}')
    (meta / "command%2Fa.b.vars.json").write_text('{"other": "component"}')
    return ws, workdir, meta


def task(ws: Path, workdir: Path, script: str, **kw) -> Task:
    meta = ws / ".atmos"
    env = {"ATMOS_WORKSPACE": str(ws), "ATMOS_VARS_FILE": str(meta / "command%2Fa.vars.json"),
           "ATMOS_OUTPUTS": str(meta / "command%2Fa.outputs.json"), **kw.pop("env", {})}
    steps = [(("sh", "-c", script), False)]
    archive = pack(str(ws), str(workdir), [*env.values(), *steps[0][0]])
    return Task(node="command/a", token=kw.pop("token", "t-" + os.urandom(4).hex()), topic="",
                archive=archive, workspace=str(ws), cwd=str(workdir), env=env, steps=steps,
                outputs_path=env["ATMOS_OUTPUTS"], **kw)


def test_the_action_runs_in_a_private_copy_with_the_workspace_paths_rewritten(tmp_path):
    ws, workdir, _ = workspace(tmp_path)
    local = tmp_path / "worker-dir"
    local.mkdir()
    script = ('pwd; cat lib/data.txt; ./run.sh; cat "$ATMOS_VARS_FILE"; echo; echo "ws=$ATMOS_WORKSPACE"; '
              'ls "$ATMOS_WORKSPACE/.atmos"; echo \'{"out": 7}\' > "$ATMOS_OUTPUTS"')
    result = execute(task(ws, workdir, script), where="tcp://w:1", local_dir=str(local), base_env=ENV)
    assert result.status == SUCCEEDED, result.log
    cwd = result.shown[0]
    assert cwd.startswith(str(local)) and cwd.endswith("/command/a")
    assert result.shown[1:4] == ["payload", "script", '{"x": 1}']
    assert result.shown[4] == "ws=" + cwd[: -len("/command/a")]
    assert result.shown[5:] == ["command%2Fa.vars.json"]  # not another component's files
    assert result.outputs == b'{"out": 7}\n'
    assert result.worker == "tcp://w:1" and result.attempts == 1
    _JANITOR.drain()
    assert list(local.iterdir()) == []  # the temporary copy is gone (removed after the result)
    assert str(ws) not in result.log.replace(f"$ sh -c", "")  # nothing ran against the client's paths


def test_the_worker_env_is_the_base_plus_the_actions_own(tmp_path):
    ws, workdir, _ = workspace(tmp_path)
    result = execute(task(ws, workdir, 'echo "$ONLY_WORKER $MINE $ATMOS_WORKER"', env={"MINE": "m"}),
                     where="tcp://w:2", base_env={**ENV, "ONLY_WORKER": "w"})
    assert result.shown == ["w m tcp://w:2"]


def test_timeouts_are_retried_and_masking_happens_on_the_worker(tmp_path):
    ws, workdir, _ = workspace(tmp_path)
    t = task(ws, workdir, 'echo "secret is $TOKEN"; sleep 30', env={"TOKEN": "s3cr3t-value"},
             timeout=0.3, retries=1, secrets=("s3cr3t-value",))
    started = time.monotonic()
    result = execute(t, where="w", base_env=ENV)
    assert time.monotonic() - started < 10
    assert result.status == TIMEOUT and result.message == "timed out after 0.3 s"
    assert result.attempts == 2 and "--- retry 1/1 (timed out after 0.3 s)" in result.log
    assert "s3cr3t-value" not in result.log + "".join(result.shown)
    assert result.shown.count("secret is ***") == 2


def test_a_stop_signals_the_group_and_the_action_ends_cancelled(tmp_path):
    ws, workdir, _ = workspace(tmp_path)
    pidfile = tmp_path / "pid"
    t = task(ws, workdir, f'echo $$ > {pidfile}; sleep 30 & wait')
    out = {}
    thread = threading.Thread(target=lambda: out.update(r=execute(t, where="w", base_env=ENV)))
    thread.start()
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pgid = int(pidfile.read_text())
    assert stop_action([t.token], signal.SIGTERM, 5.0) == 1
    thread.join(10)
    assert out["r"].status == CANCELLED
    assert live_in_group(pgid) == []  # the background sleep went with its group


def test_a_stop_that_comes_first_means_the_action_never_starts(tmp_path):
    ws, workdir, _ = workspace(tmp_path)
    marker = tmp_path / "ran"
    t = task(ws, workdir, f"touch {marker}")
    assert stop_action([t.token]) == 0
    result = execute(t, where="w", base_env=ENV)
    assert result.status == CANCELLED and not marker.exists()


def test_failures_come_back_with_exit_code_and_log(tmp_path):
    ws, workdir, _ = workspace(tmp_path)
    result = execute(task(ws, workdir, "echo oops >&2; exit 3"), where="w", base_env=ENV)
    assert (result.status, result.exit_code, result.message) == ("failed", 3, "exit code 3")
    assert "oops" in result.log and result.outputs is None


def test_an_action_above_the_shipping_limit_is_refused(tmp_path):
    ws, workdir, _ = workspace(tmp_path)
    (workdir / "big.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(_TooBig, match="exceed .* MiB, the most an action ships to a Dask worker"):
        pack(str(ws), str(workdir), [], limit=4000)
    assert pack(str(ws), str(workdir), [], limit=10_000)


def test_steps_holding_one_cluster_lock_take_turns_and_the_tool_is_checked_inside_the_wrappers(tmp_path):
    import sys

    from atmosbuild.components.base import CLUSTER_LOCK
    from atmosbuild.run.remote import _cluster_locks

    flockrun = str(Path(__file__).resolve().parents[1] / "atmosbuild" / "components" / "flockrun.py")
    spans = tmp_path / "spans"
    spans.mkdir()
    now = 'python3 -c "import time; print(time.time())"'
    body = f'{now} > "{spans}/$N.start"; sleep 0.3; {now} > "{spans}/$N.end"'
    argv = (sys.executable, "-S", "-E", flockrun, CLUSTER_LOCK + "db", "--", "sh", "-c", body)
    assert _cluster_locks(argv) == (("sh", "-c", body), ("db",))  # a lock of the cluster, not a file
    results = {}

    def run(n: str) -> None:
        ws, workdir, _ = workspace(tmp_path / n)
        t = task(ws, workdir, "true", env={"N": n})
        t.steps = [(argv, False)]
        results[n] = execute(t, where="w", base_env=ENV)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(r.status == SUCCEEDED for r in results.values()), results
    a, b = ([float((spans / f"{n}.{e}").read_text()) for e in ("start", "end")] for n in "ab")
    assert a[1] <= b[0] or b[1] <= a[0], (a, b)  # one after the other

    ws, workdir, _ = workspace(tmp_path / "missing")
    t = task(ws, workdir, "true")
    t.steps = [((sys.executable, "-S", "-E", flockrun, "/tmp/x.lock", "--", "no-such-tool-xyz", "init"), False)]
    result = execute(t, where="tcp://w:9", base_env=ENV)
    assert result.status == "failed"
    assert result.message.startswith("'no-such-tool-xyz' was not found on PATH on worker tcp://w:9")
