"""Rollouts on a real Dask cluster (tests/daskcluster.py): a scheduler and
worker processes on 127.0.0.1, the real CLI, real processes on the workers.

Actions write what they saw (their worker, start and end times, pids) into
a scratch directory every worker may write to (`shared`), outside the
workspace root, which one worker (`iso`) cannot read at all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, Workspace, rollout_with_report, start_cli, wait_for
from daskcluster import (DROP_READ_ANYTHING, can_isolate, dask_cluster, free_port,  # noqa: F401
                         live_in_group, lock_out, stop_process)

pytest.importorskip("distributed")

# Each action records its worker and when it ran: $SHARED/NAME.json.
STAMP = ('s=$(python3 -c "import time; print(time.time())"); {body}; '
         'e=$(python3 -c "import time; print(time.time())"); '
         'printf \'{{"worker": "%s", "start": %s, "end": %s}}\' "$ATMOS_WORKER" "$s" "$e" '
         '> "$SHARED/$(echo "$ATMOS_COMPONENT" | tr / _).json"')


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    path = tmp_path.parent / f"{tmp_path.name}-shared"
    path.mkdir()
    path.chmod(0o1777)
    return path


def deploy(ws: Workspace, cluster, shared: Path, components: dict, *, executor: bool = True) -> None:
    if executor:
        ws.write("atmos.yaml", f"executor: {cluster.executor}\n")
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "env": {"SHARED": str(shared)},
        "targets": {"dev": {}}, "components": {"command": components}}}))


def stamp(shared: Path, name: str) -> dict:
    return json.loads((shared / f"command_{name}.json").read_text())


def test_dag_runs_in_dependency_order_across_workers_with_outputs_flowing(ws, dask_cluster, shared):
    deploy(ws, dask_cluster, shared, {
        "a": {"run": STAMP.format(body='echo "{\\"v\\": \\"from-a\\"}" > "$ATMOS_OUTPUTS"'),
              "resources": {"terraform": 1}},
        "b": {"run": STAMP.format(body='echo "{\\"v\\": \\"${outputs.command/a.v}+b\\"}" > "$ATMOS_OUTPUTS"'),
              "resources": {"isolated": 1}},
        "c": {"run": STAMP.format(body='echo "{\\"v\\": \\"${outputs.command/a.v}+c\\"}" > "$ATMOS_OUTPUTS"'),
              "resources": {"terraform": 1}},
        "d": {"run": STAMP.format(body='echo "${outputs.command/b.v} ${outputs.command/c.v}" > "$SHARED/d.txt"'),
              "resources": {"isolated": 1}},
    })
    proc, report = rollout_with_report(ws, "//app:dev", "-j4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (shared / "d.txt").read_text().split() == ["from-a+b", "from-a+c"]
    s = {n: stamp(shared, n) for n in "abcd"}
    for node, deps in {"b": "a", "c": "a", "d": "bc"}.items():
        for dep in deps:
            assert s[node]["start"] >= s[dep]["end"], (node, dep, s)
    workers = {n["id"]: n["worker"] for n in report["nodes"]}
    assert workers == {f"command/{n}": s[n]["worker"] for n in "abcd"}  # the report names where each ran
    assert workers["command/a"] == workers["command/c"] == dask_cluster.workers["tf"]
    assert workers["command/b"] == workers["command/d"] == dask_cluster.workers["iso"]


def test_parallelism_bound_holds_across_the_cluster(ws, dask_cluster, shared):
    # The cluster has 4 threads (2 workers x 2); -j3 must never run a fourth.
    deploy(ws, dask_cluster, shared, {
        f"n{i}": {"run": STAMP.format(body="sleep 0.4")} for i in range(9)})
    proc = ws.run("rollout", "//app:dev", "-j3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spans = [stamp(shared, f"n{i}") for i in range(9)]
    edges = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    assert 2 <= most <= 3, spans
    assert len({s["worker"] for s in spans}) == 2  # both workers took part


def test_resources_route_actions_to_the_workers_offering_them(ws, dask_cluster, shared):
    deploy(ws, dask_cluster, shared, {
        **{f"tf{i}": {"run": STAMP.format(body="true"), "resources": {"terraform": 1}} for i in range(3)},
        **{f"iso{i}": {"run": STAMP.format(body="true"), "resources": {"isolated": 1}} for i in range(3)},
    })
    proc, report = rollout_with_report(ws, "//app:dev", "-j4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for i in range(3):
        assert stamp(shared, f"tf{i}")["worker"] == dask_cluster.workers["tf"]
        assert stamp(shared, f"iso{i}")["worker"] == dask_cluster.workers["iso"]
    assert {n["id"]: n["worker"] for n in report["nodes"]} == {
        **{f"command/tf{i}": dask_cluster.workers["tf"] for i in range(3)},
        **{f"command/iso{i}": dask_cluster.workers["iso"] for i in range(3)}}


def test_resources_no_worker_offers_fail_with_a_reason_after_a_bounded_wait(ws, dask_cluster, shared):
    deploy(ws, dask_cluster, shared, {
        "gpu": {"run": "true", "resources": {"gpu": 2}},
        "other": {"run": STAMP.format(body="true")},
    })
    started = time.monotonic()
    proc = ws.run("rollout", "//app:dev", "-j2", "-k")
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[command/gpu] failed" in proc.stdout
    assert "no Dask worker offers resources gpu=2" in proc.stdout
    assert "isolated=1" in proc.stdout and "terraform=1" in proc.stdout  # what the workers do offer
    assert stamp(shared, "other")  # -k: the rest went on
    assert took < 40
    again = ws.run("rollout", "//app:dev", "-j2", "-k")  # nothing was recorded for it: it is tried again
    assert "[command/gpu] failed" in again.stdout and "[command/other] cached" in again.stdout


@pytest.mark.skipif(not can_isolate(), reason="needs root and setpriv to run a worker that cannot read the root")
def test_source_reaches_a_worker_that_cannot_read_the_workspace_root(ws, dask_cluster, shared):
    ws.write("src/tool/bin/run.sh", """\
        cat ../data/greeting.txt
        if cat "$ATMOS_ROOT/atmos.yaml" 2>/dev/null; then echo "root readable"; else echo "root unreadable"; fi
        echo "{\\"greeting\\": \\"$(cat ../data/greeting.txt)\\"}" > "$ATMOS_OUTPUTS"
        """, mode=0o755)
    ws.write("src/tool/data/greeting.txt", "hello from the source\n")
    deploy(ws, dask_cluster, shared, {
        "tool": {"source": "src/tool", "run": "cd bin && ./run.sh", "resources": {"isolated": 1}},
        "after": {"run": 'echo ${outputs.command/tool.greeting} > "$SHARED/after.txt"',
                  "resources": {"terraform": 1}},
    })
    lock_out(ws.root)
    probe = subprocess.run(DROP_READ_ANYTHING + ["cat", str(ws.root / "atmos.yaml")], capture_output=True)
    assert probe.returncode != 0  # the isolated worker's view: the root is closed to it
    proc = ws.run("rollout", "//app:dev", "-j2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[command/tool] hello from the source" in proc.stdout
    assert "[command/tool] root unreadable" in proc.stdout
    assert (shared / "after.txt").read_text() == "hello from the source\n"


def test_ctrl_c_leaves_no_process_behind_on_any_worker(ws, dask_cluster, shared):
    body = 'echo $$ > "$SHARED/{name}.pid"; sleep 60 & sleep 60'
    deploy(ws, dask_cluster, shared, {
        "tf": {"run": body.format(name="tf"), "resources": {"terraform": 1}},
        "iso": {"run": body.format(name="iso"), "resources": {"isolated": 1}},
        "later": {"run": "true", "metadata": {"depends_on": ["command/tf"]}},
    })
    cli = start_cli(ws, "rollout", "//app:dev", "-j2")
    try:
        for name in ("tf", "iso"):
            wait_for(shared / f"{name}.pid")
        time.sleep(0.3)
        pids = [int((shared / f"{n}.pid").read_text()) for n in ("tf", "iso")]
        for pid in pids:
            os.killpg(pid, 0)  # running, each in its own process group
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, out + err
    assert "Traceback" not in err
    for pid in pids:
        assert live_in_group(pid) == []  # the step and everything in its group are gone
    assert "succeeded" not in out
    status = ws.run("status", "//app:dev")
    assert "command/tf" in status.stdout and "out of date" in status.stdout


def _victim(cluster, name: str):
    proc = cluster.start_worker(name, "--resources", "victim=1", nanny=False, threads=1)
    return proc, cluster.worker_pid(name)


def test_a_worker_killed_mid_action_fails_it_with_a_reason_and_a_later_rollout_reruns_it(
        ws, dask_cluster, shared):
    deploy(ws, dask_cluster, shared, {
        "v": {"run": 'echo $$ > "$SHARED/v.pid"; sleep 30; echo done', "resources": {"victim": 1}},
        "w": {"run": STAMP.format(body="sleep 1"), "resources": {"terraform": 1}},
    })
    worker, pid = _victim(dask_cluster, "victim1")
    orphan = None
    try:
        cli = start_cli(ws, "rollout", "//app:dev", "-j2", "-k")
        wait_for(shared / "v.pid")
        orphan = int((shared / "v.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 1, out + err
        address = dask_cluster.workers["victim1"]
        assert f"[command/v] failed" in out and f"worker {address} died while running it" in out, out
        assert stamp(shared, "w")  # the rest went on (-k)
        report = ws.run("status", "//app:dev").stdout
        assert "command/v" in report and "out of date" in report
    finally:
        if orphan is not None:  # a machine that dies takes its processes along; here they stay
            try:
                os.killpg(orphan, signal.SIGKILL)
            except ProcessLookupError:
                pass
        worker.wait()
    dask_cluster.procs.remove(worker)
    (shared / "v.pid").unlink()
    ws.write("app/deployment.yaml", (ws.root / "app/deployment.yaml").read_text().replace("sleep 30; ", ""))
    worker2, _ = _victim(dask_cluster, "victim2")
    try:
        again = ws.run("rollout", "//app:dev", "-j2")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "[command/v] done" in again.stdout and "[command/w] cached" in again.stdout
    finally:
        stop_process(worker2)
        dask_cluster.procs.remove(worker2)


def test_a_worker_killed_mid_action_is_retried_per_retries_on_another(ws, dask_cluster, shared):
    deploy(ws, dask_cluster, shared, {
        "v": {"run": 'if [ -e "$SHARED/v.pid" ]; then echo second; else echo $$ > "$SHARED/v.pid"; sleep 30; fi',
              "resources": {"victim": 1}, "retries": 1},
    })
    victims = [_victim(dask_cluster, f"retry{i}") for i in range(2)]
    orphan = None
    try:
        cli = start_cli(ws, "rollout", "//app:dev", "-j2")
        wait_for(shared / "v.pid")
        orphan = int((shared / "v.pid").read_text())
        # Kill whichever victim runs the step: its parent.
        ppid = int(Path(f"/proc/{orphan}/stat").read_text().rsplit(")", 1)[1].split()[1])
        killed = [w for w in victims if w[1] == ppid]
        assert killed, (ppid, victims)
        os.kill(ppid, signal.SIGKILL)
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, out + err
        name = f"retry{victims.index(killed[0])}"
        assert f"retry 1/1 (worker {dask_cluster.workers[name]} died while running it)" in out, out
        assert "[command/v] second" in out
        log = next((ws.state / "logs").glob("*/command/v.log")).read_text()
        assert log.index("died while running it") < log.index("second")  # both submissions' logs
    finally:
        if orphan is not None:
            try:
                os.killpg(orphan, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc, _ in victims:
            stop_process(proc)
            dask_cluster.procs.remove(proc)


def test_secrets_are_masked_in_the_logs_that_come_back_from_workers(ws, dask_cluster, shared):
    deploy(ws, dask_cluster, shared, {
        "s": {"env": {"API_TOKEN": "hunter2-very-secret", "PLAIN": "visible"},
              "run": 'echo "token=$API_TOKEN plain=$PLAIN"; sleep 0.3; echo "again $API_TOKEN" >&2',
              "resources": {"isolated": 1}},
    })
    proc, report = rollout_with_report(ws, "//app:dev", "-j2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = Path(report["nodes"][0]["log"]).read_text()
    for text in (proc.stdout, proc.stderr, log, json.dumps(report)):
        assert "hunter2-very-secret" not in text
    assert "token=*** plain=visible" in proc.stdout and "again ***" in proc.stdout
    assert "token=*** plain=visible" in log and "again ***" in log


def test_lines_stream_to_the_console_while_the_remote_action_runs(ws, dask_cluster, shared):
    deploy(ws, dask_cluster, shared, {
        "slow": {"run": 'echo first; sleep 2; echo second', "resources": {"terraform": 1}}})
    cli = start_cli(ws, "rollout", "//app:dev", "-j2")
    seen = {}
    for line in cli.stdout:
        for word in ("first", "second", "succeeded"):
            if f"[command/slow] {word}" in line:
                seen[word] = time.monotonic()
    cli.wait(timeout=60)
    assert cli.returncode == 0
    assert seen["second"] - seen["first"] > 1.0  # "first" came while the action still ran


def test_an_unreachable_scheduler_is_one_error_line_exit_2_and_nothing_recorded(ws):
    port = free_port()
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "targets": {"dev": {}}, "components": {"command": {"a": {"run": "echo hello-from-a"}}}}}))
    proc = ws.run("rollout", "//app:dev", env={"ATMOS_EXECUTOR": f"dask://127.0.0.1:{port}"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Dask scheduler"), proc.stderr
    assert f"dask://127.0.0.1:{port}" in lines[0]
    assert "hello-from-a" not in proc.stdout
    assert not list((ws.state / "workspaces").iterdir())
    local = ws.run("rollout", "//app:dev")  # nothing was recorded: it runs now
    assert local.returncode == 0 and "hello-from-a" in local.stdout
    # With nothing to run, no cluster is needed: the rollout never connects.
    cached = ws.run("rollout", "//app:dev", "-j1",
                    env={"ATMOS_EXECUTOR": f"dask://127.0.0.1:{port}"})
    assert cached.returncode == 0 and "cached" in cached.stdout and cached.stderr == ""


def test_without_distributed_the_error_names_the_extra(ws):
    ws.write("atmos.yaml", "executor: dask://127.0.0.1:8786\n")
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "targets": {"dev": {}}, "components": {"command": {"a": {"run": "true"}}}}}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = ("import sys; sys.modules['distributed'] = None\n"  # as if it were not installed
            "from atmosbuild.cli import entry; entry()")
    proc = subprocess.run([sys.executable, "-c", code, "-C", str(ws.root), "rollout", "//app:dev"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "pip install 'atmosbuild[dask]'" in lines[0]


NOW = 'python3 -c "import time; print(time.time())"'


def test_a_client_killed_with_sigkill_takes_its_remote_actions_along_and_the_next_rollout_waits(
        ws, dask_cluster, shared):
    # The first run's step takes 6 s to stop (its TERM trap); the second run
    # must start only after that, though the first client's lock is gone at once.
    first = (f'echo $$ > "$SHARED/v.pid"; trap \'sleep 6; {NOW} > "$SHARED/v.stopped"; exit 1\' TERM; '
             'sleep 60 & wait')
    deploy(ws, dask_cluster, shared, {
        "v": {"run": f'if [ -e "$SHARED/v.pid" ]; then {NOW} > "$SHARED/v.second"; echo second; '
                     f'else {first}; fi', "resources": {"terraform": 1}}})
    # (the `if` runs before the pid file exists: the first run takes the else branch)
    cli = start_cli(ws, "rollout", "//app:dev", "-j1")
    wait_for(shared / "v.pid")
    time.sleep(0.3)
    pid = int((shared / "v.pid").read_text())
    assert live_in_group(pid)
    lock = ws.state / "locks" / "app@dev.lock"
    assert f"remote: {dask_cluster.executor} atmosbuild-" in lock.read_text()  # the holder said where
    cli.kill()
    cli.wait()
    killed = time.monotonic()
    again = start_cli(ws, "rollout", "//app:dev", "-j1")
    try:
        while live_in_group(pid):
            assert time.monotonic() - killed < 15, "the action outlived its client"
            time.sleep(0.05)
        out, err = again.communicate(timeout=60)
    finally:
        if again.poll() is None:
            again.kill()
    assert again.returncode == 0, out + err
    assert "waiting for the actions of a killed rollout of //app:dev to stop" in out + err
    assert "command/v on " + dask_cluster.workers["tf"] in out + err
    assert "second" in out.splitlines()
    stopped = float((shared / "v.stopped").read_text())
    assert float((shared / "v.second").read_text()) >= stopped  # no overlap
    assert "remote:" not in lock.read_text()  # a rollout that ended says nothing runs
    third = ws.run("rollout", "//app:dev", "-j1")  # and the next one need not ask the cluster
    assert third.returncode == 0 and "waiting" not in third.stdout + third.stderr


def test_a_killed_rollouts_note_naming_a_cluster_that_is_gone_is_said_and_passed(ws):
    # The note a killed Dask rollout left in the lock file, its cluster gone since.
    port = free_port()
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "targets": {"dev": {}}, "components": {"command": {"a": {"run": "echo ran-locally"}}}}}))
    lock = ws.state / "locks" / "app@dev.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"pid 999999 (started 2026-01-01 00:00:00, //app:dev)\n"
                    f"remote: dask://127.0.0.1:{port} atmosbuild-0123456789abcdef\n")
    proc = ws.run("rollout", "//app:dev", "-j1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (f"a killed rollout of //app:dev ran actions on dask://127.0.0.1:{port}, which cannot be "
            "asked whether they still run") in proc.stdout + proc.stderr
    assert "ran-locally" in proc.stdout
    assert "remote:" not in lock.read_text()
