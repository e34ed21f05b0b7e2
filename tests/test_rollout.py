"""The executor on real processes (SPEC 6, 7): parallelism, waves, failure
policies, timeouts, retries, Ctrl-C, locks, workspaces, logs and the report.

Actions append `start ID T` / `end ID T` lines to `times` at the root, so a
test can replay what overlapped with what.
"""

from __future__ import annotations

import json
import os
import uuid
import re
import signal
import sqlite3
import time
from pathlib import Path

from conftest import RECORD, ran, rollout_with_report, start_cli, wait_for



def timed(seconds: float, extra: str = "") -> str:
    """A `run` (shell string) that logs its start and end around a sleep."""
    return ('echo "start $ATMOS_COMPONENT $(date +%s.%N)" >> "$ATMOS_ROOT/times"; '
            f'{extra}sleep {seconds}; '
            'echo "end $ATMOS_COMPONENT $(date +%s.%N)" >> "$ATMOS_ROOT/times"')


def intervals(ws) -> dict[str, tuple[float, float]]:
    starts, ends = {}, {}
    for line in (ws.root / "times").read_text().splitlines():
        kind, cid, t = line.split()
        (starts if kind == "start" else ends)[cid] = float(t)
    assert starts.keys() == ends.keys(), (starts, ends)
    return {cid: (starts[cid], ends[cid]) for cid in starts}


def max_overlap(spans) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    # an end at the same instant as a start frees the slot first
    events.sort(key=lambda ev: (ev[0], ev[1]))
    most = now = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most




def deployment(ws, components: dict[str, dict], pkg: str = "app", targets=("dev",)) -> None:
    """Write a deployment of command components: {name: {"run": ..., ...}}."""
    doc = {"deployment": {"targets": {t: {} for t in targets},
                          "components": {"command": components}}}
    ws.write(f"{pkg}/deployment.yaml", json.dumps(doc, indent=2) + "\n")  # JSON is YAML


def after(*names: str) -> dict:
    return {"metadata": {"depends_on": [f"command/{n}" for n in names]}}




rollout = rollout_with_report


def statuses(report) -> dict[str, str]:
    return {n["id"]: n["status"] for n in report["nodes"]}






def alive(pid: int) -> bool:
    """Running and not a zombie (PID 1 in a container may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until_applied(ws, component: str, timeout: float = 30.0) -> None:
    """Poll the live state database (WAL: readers never block the writer)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db = sqlite3.connect(f"file:{ws.state / 'state.db'}?mode=ro", uri=True)
            try:
                if db.execute("SELECT 1 FROM applied WHERE component=?", (component,)).fetchone():
                    return
            finally:
                db.close()
        except sqlite3.OperationalError:
            pass  # not created yet
        assert time.monotonic() < deadline, f"{component} was never recorded"
        time.sleep(0.05)


def hold_until(flag: str, note: str = "") -> str:
    """A `run` that marks itself started (`NOTE.started`) then waits for FLAG."""
    marker = f'touch "$ATMOS_ROOT/{note}.started"; ' if note else ""
    return (f'{marker}i=0; while [ ! -e "$ATMOS_ROOT/{flag}" ] && [ $i -lt 600 ]; do '
            'sleep 0.05; i=$((i+1)); done')


# -- parallelism and waves ---------------------------------------------------------

def test_concurrency_reaches_j_and_never_exceeds_it(ws):
    deployment(ws, {f"n{i}": {"run": timed(0.8)} for i in range(8)})
    proc, report = rollout(ws, "//app:dev", "-j3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spans = intervals(ws)
    assert len(spans) == 8
    assert max_overlap(spans.values()) == 3


def test_j1_is_strictly_serial_and_unprefixed(ws):
    deployment(ws, {f"n{i}": {"run": timed(0.05, 'echo "hello from $ATMOS_COMPONENT"; ')}
                    for i in range(4)})
    proc, _ = rollout(ws, "//app:dev", "-j1")
    assert proc.returncode == 0
    spans = sorted(intervals(ws).values())
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start
    assert "\nhello from command/n0\n" in proc.stdout


def test_no_node_of_wave_k_plus_1_starts_before_every_node_of_wave_k_ended(ws):
    deployment(ws, {
        "slow": {"run": timed(1.2)},
        "fast": {"run": timed(0.05)},
        "after_fast": {"run": timed(0.05), **after("fast")},
        "third": {"run": timed(0.05), **after("after_fast")},
    })
    proc, report = rollout(ws, "//app:dev", "-j4")
    assert proc.returncode == 0
    spans = intervals(ws)
    assert spans["command/after_fast"][0] >= spans["command/slow"][1]
    assert spans["command/third"][0] >= spans["command/after_fast"][1]
    assert {n["id"]: n["wave"] for n in report["nodes"]} == {
        "command/slow": 1, "command/fast": 1, "command/after_fast": 2, "command/third": 3}
    assert "Wave 1/3 (2 components): " in proc.stdout
    # [command/x] prefixes when -j > 1
    assert "[command/slow] started" in proc.stdout

    (ws.root / "times").unlink()
    proc, _ = rollout(ws, "//app:dev", "-j4", "--schedule", "eager", "--force")
    spans = intervals(ws)
    assert spans["command/after_fast"][0] < spans["command/slow"][1], "eager does not wait for the wave"


# -- failures --------------------------------------------------------------------------

def nixpacks_standin(ws, script: str) -> None:
    """A `nixpacks` (a build-mode component type) that runs `script` (sh)."""
    tool = ws.root.parent / "bin" / "nixpacks"
    tool.parent.mkdir(exist_ok=True)
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(0o755)
    ws.write("atmos.yaml", json.dumps({"toolchain": {"nixpacks": str(tool)}}))


def test_fail_fast_lets_running_applies_finish_stops_builds_skips_the_rest_and_exits_1(ws):
    """SPEC 6 (changed: it stopped every running action): a running
    apply-mode action (a command, terraform apply) is left to finish and is
    recorded; a running build-mode one (nixpack) is stopped."""
    nixpacks_standin(ws, 'touch "$ATMOS_ROOT/build.started"; [ -e "$ATMOS_ROOT/slow" ] && exec sleep 30; true')
    ws.write("slow", "")
    deployment(ws, {
        "bad": {"run": 'while [ ! -e "$ATMOS_ROOT/build.started" ]; do sleep 0.05; done; '
                       'touch "$ATMOS_ROOT/bad.failing"; echo about to fail; exit 3'},
        # Still running when bad fails: it waits for that, then works on.
        "long": {"run": f'{RECORD}; while [ ! -e "$ATMOS_ROOT/bad.failing" ]; do sleep 0.05; done; '
                        'sleep 2; touch "$ATMOS_ROOT/long.done"'},
        "later": {"run": RECORD, **after("long")},
        "other": {"run": RECORD, **after("bad")},
    })
    ws.write("app/deployment.yaml", (ws.root / "app/deployment.yaml").read_text().replace(
        '"components": {', '"components": {"nixpack": {"image": {"source": "img"}}, ', 1))
    ws.write("img/Dockerfile", "FROM scratch\n")
    started = time.monotonic()
    proc, report = rollout(ws, "//app:dev", "-j3")
    assert time.monotonic() - started < 15, "the running build was not stopped"
    nodes = {n["id"]: n for n in report["nodes"]}
    assert statuses(report) == {"command/bad": "failed", "command/long": "succeeded",
                                "command/later": "skipped", "command/other": "skipped",
                                "nixpack/image": "cancelled"}, report
    assert (ws.root / "long.done").exists(), "the apply-mode action did not run to its end"
    assert nodes["command/bad"]["exit_code"] == 3
    assert nodes["command/bad"]["reason"] == "exit code 3"
    assert "command/bad" in nodes["nixpack/image"]["reason"]
    assert report["result"] == "failure"
    assert "FAILED: command/bad: exit code 3" in proc.stderr
    assert "| about to fail" in proc.stderr  # the failing log's last lines
    assert "1 failed" in proc.stdout
    assert ("Stopping: command/bad failed; letting 1 running apply-mode action finish: command/long"
            in proc.stdout + proc.stderr)
    assert ran(ws) == ["command/long"]
    assert proc.returncode == 1
    # The finished apply was recorded: the next rollout does not run it again.
    (ws.root / "slow").unlink()
    (ws.root / "app/deployment.yaml").write_text(
        (ws.root / "app/deployment.yaml").read_text().replace("exit 3", "exit 0"))
    again, report = rollout(ws, "//app:dev", "-j3")
    assert statuses(report)["command/long"] == "cached", report


def test_keep_going_skips_exactly_the_dependents_of_a_failure(ws):
    deployment(ws, {
        "bad": {"run": "exit 1"},
        "child": {"run": RECORD, **after("bad")},
        "grandchild": {"run": RECORD, **after("child")},
        "free": {"run": RECORD},
        "free_child": {"run": RECORD, **after("free")},
        "mixed": {"run": RECORD, **after("free", "bad")},
    })
    proc, report = rollout(ws, "//app:dev", "-j2", "-k")
    nodes = {n["id"]: n for n in report["nodes"]}
    assert statuses(report) == {
        "command/bad": "failed", "command/child": "skipped", "command/grandchild": "skipped",
        "command/free": "succeeded", "command/free_child": "succeeded", "command/mixed": "skipped"}
    for cid in ("command/child", "command/grandchild", "command/mixed"):
        assert "command/bad" in nodes[cid]["reason"], nodes[cid]
    assert ran(ws) == ["command/free", "command/free_child"]
    assert proc.returncode == 1


def test_a_timeout_fails_the_component_and_kills_its_process_group(ws):
    deployment(ws, {
        "slow": {"run": 'sleep 60 & echo $! > "$ATMOS_ROOT/child.pid"; sleep 60', "timeout": 1},
    })
    started = time.monotonic()
    proc, report = rollout(ws, "//app:dev")
    assert time.monotonic() - started < 20
    node = report["nodes"][0]
    assert node["status"] == "failed"
    assert "timed out after 1 s" in node["reason"]
    assert "timed out" in proc.stderr
    child = int((ws.root / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the timed-out action's child survived"
    assert proc.returncode == 1


def test_retries_run_a_failing_component_again(ws):
    flaky = ('n=$(cat "$ATMOS_ROOT/count-$1" 2>/dev/null || echo 0); n=$((n+1)); '
             'echo $n > "$ATMOS_ROOT/count-$1"; echo "attempt $n"; [ $n -ge 3 ]')
    deployment(ws, {
        "flaky": {"run": ["sh", "-c", flaky, "sh", "flaky"], "retries": 2},
        "hopeless": {"run": ["sh", "-c", flaky.replace("-ge 3", "-ge 99"), "sh", "hopeless"],
                     "retries": 1},
    })
    proc, report = rollout(ws, "//app:dev", "-j2", "-k")
    assert statuses(report) == {"command/flaky": "succeeded", "command/hopeless": "failed"}
    assert (ws.root / "count-flaky").read_text().strip() == "3"
    assert (ws.root / "count-hopeless").read_text().strip() == "2"
    log = Path(next(n["log"] for n in report["nodes"] if n["id"] == "command/flaky")).read_text()
    assert "retry 1/2" in log and "retry 2/2" in log and "attempt 3" in log
    assert proc.returncode == 1


# -- Ctrl-C ---------------------------------------------------------------------------

def test_sigint_stops_everything_leaves_no_orphan_keeps_successes_and_exits_130(ws):
    deployment(ws, {
        "quick": {"run": RECORD},
        # The background `sleep 60` ignores SIGINT (sh does that to `&` jobs):
        # only the sweep of the action's process group can take it down.
        "hang": {"run": f'{RECORD}; if [ -e "$ATMOS_ROOT/hang" ]; then '
                        'sleep 60 >/dev/null 2>&1 & echo $! > "$ATMOS_ROOT/sleep.pid"; '
                        # (a plain `sleep` obeys SIGINT at once; Python's time.sleep can
                        # miss a signal that lands just before its syscall)
                        'exec sleep 61; fi'},
        "after": {"run": RECORD, **after("hang")},
    })
    ws.write("hang", "")
    report = ws.root.parent / "report.json"
    proc = start_cli(ws, "rollout", "//app:dev", "-j2", "--report", str(report))
    try:
        wait_for(ws.root / "sleep.pid")
        wait_until_applied(ws, "command/quick")
        proc.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        out, err = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - signalled
    finally:
        proc.kill()
    pid = int((ws.root / "sleep.pid").read_text())
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "sleep 60 outlived the interrupted rollout"
    assert stopped_in < 8, "the action obeyed SIGINT at once, yet the rollout waited the grace period"
    assert "Traceback" not in err
    data = json.loads(report.read_text())
    assert data["result"] == "interrupted"
    assert statuses(data) == {"command/quick": "succeeded", "command/hang": "cancelled",
                              "command/after": "cancelled"}
    assert ran(ws) == ["command/hang", "command/quick"]
    (ws.root / "hang").unlink()
    again, data = rollout(ws, "//app:dev")
    assert statuses(data)["command/quick"] == "cached", "the finished success was not recorded"
    assert ran(ws) == ["command/after", "command/hang"]
    assert proc.returncode == 130, out + err


def test_a_background_child_holding_the_output_pipe_does_not_outlive_its_action(ws):
    """The leader exits at once; what it left in its process group is swept
    then, not waited for (`nothing outlives its action`)."""
    deployment(ws, {"daemonish": {"run": 'sleep 6 & echo $! > "$ATMOS_ROOT/bg.pid"; echo done'}})
    started = time.monotonic()
    proc, report = rollout(ws, "//app:dev")
    took = time.monotonic() - started
    pid = int((ws.root / "bg.pid").read_text())
    assert not alive(pid)
    assert statuses(report) == {"command/daemonish": "succeeded"}
    assert took < 4, f"the rollout waited {took:.0f} s for a leftover background child"


# -- locks ------------------------------------------------------------------------------

def test_a_second_rollout_of_the_same_label_exits_3_naming_the_holder_and_wait_waits(ws):
    deployment(ws, {"hold": {"run": hold_until("release", "hold") + '; [ -e "$ATMOS_ROOT/first.end" ] || date +%s.%N > "$ATMOS_ROOT/first.end"'},
                    "mark": {"run": 'date +%s.%N >> "$ATMOS_ROOT/marks"'}}, targets=("dev",))
    first = start_cli(ws, "rollout", "//app:dev", "-j2")
    waiter = None
    try:
        wait_for(ws.root / "hold.started")
        second = ws.run("rollout", "//app:dev")
        assert second.returncode == 3, second.stdout + second.stderr
        assert re.search(rf"error: .*locked by pid {first.pid}\b", second.stderr), second.stderr
        assert "Workspace:" not in second.stdout
        assert len(list((ws.state / "workspaces").iterdir())) == 1  # the first one's only

        waiter = start_cli(ws, "rollout", "//app:dev", "--wait", "--force")
        time.sleep(1.0)
        assert waiter.poll() is None, "--wait did not wait"
        (ws.root / "release").write_text("")
        out, err = first.communicate(timeout=30)
        assert first.returncode == 0, out + err
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, out + err
        assert "waiting for //app:dev" in out + err
    finally:
        for p in (first, waiter):
            if p is not None:
                p.kill()
    marks = [float(x) for x in (ws.root / "marks").read_text().split()]
    assert len(marks) == 2 and marks[1] >= float((ws.root / "first.end").read_text())


def test_two_targets_roll_out_in_parallel(ws):
    # dev's component waits until prod's has started, and the other way round:
    # this only finishes if both run at the same time.
    meet = ('touch "$ATMOS_ROOT/$ATMOS_TARGET.started"; other=$1; i=0; '
            'while [ ! -e "$ATMOS_ROOT/$other.started" ]; do i=$((i+1)); '
            '[ $i -gt 400 ] && exit 1; sleep 0.05; done')
    ws.write("app/deployment.yaml", json.dumps({"deployment": {
        "targets": {"dev": {"vars": {"other": "prod"}}, "prod": {"vars": {"other": "dev"}}},
        "components": {"command": {"meet": {"run": ["sh", "-c", meet, "sh", "${var.other}"]}}},
    }}))
    procs = [start_cli(ws, "rollout", label) for label in ("//app:dev", "//app:prod")]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and "1 ran" in out, out + err


# -- workspaces -------------------------------------------------------------------------

def test_the_workspace_is_created_printed_and_removed_or_kept(ws):
    where = 'echo "$ATMOS_WORKSPACE" > "$ATMOS_ROOT/ws.txt"; pwd > "$ATMOS_ROOT/pwd.txt"'
    deployment(ws, {"look": {"run": where, "cache": False}})
    proc, report = rollout(ws, "//app:dev")
    shown = re.search(r"^Workspace: (.+)$", proc.stdout, re.M).group(1)
    workspace = (ws.root / "ws.txt").read_text().strip()
    assert os.path.realpath(shown) == os.path.realpath(workspace) == report["workspace"]
    assert Path(workspace).parent == ws.state / "workspaces"
    assert Path(workspace).name.startswith("deployment-")
    assert uuid.UUID(Path(workspace).name[len("deployment-"):]).version == 4
    assert (ws.root / "pwd.txt").read_text().strip() == os.path.join(workspace, "command", "look")
    assert not Path(workspace).exists()

    proc, report = rollout(ws, "//app:dev", "--keep-workspace")
    kept = (ws.root / "ws.txt").read_text().strip()
    assert kept != workspace and Path(kept, "command", "look").is_dir()
    assert f"Kept workspace: {kept}" in proc.stdout


def test_an_action_editing_its_copy_in_place_never_touches_the_source(ws):
    ws.write("src/edit/data.txt", "original\n")
    tamper = ("import os; f = open('data.txt', 'r+'); seen = f.read(); f.seek(0); "
              "f.write('HACKED!!\\n'); f.close(); "
              "open(os.path.join(os.environ['ATMOS_ROOT'], 'seen.txt'), 'a').write(seen)")
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "command": {"edit": {"source": "src/edit", "run": ["python3", "-c", tamper]}}}}}))
    source_before = ws.snapshot_tree()
    for args in ((), ("--force",)):
        proc, _ = rollout(ws, "//app:dev", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # A local source is copied once, straight into the workspace (SPEC 12:
    # the vendor cache is for remote sources).
    assert not (ws.state / "vendor-cache").exists()
    assert (ws.root / "src/edit/data.txt").read_text() == "original\n"
    assert (ws.root / "seen.txt").read_text() == "original\n" * 2  # every run saw the pristine copy
    assert {k: v for k, v in ws.snapshot_tree().items() if k.startswith("src/")} == \
        {k: v for k, v in source_before.items() if k.startswith("src/")}
    proc, report = rollout(ws, "//app:dev")
    assert statuses(report) == {"command/edit": "cached"}


def test_waves_start_the_longest_known_action_of_a_wave_first_above_j1_and_by_id_at_j1(ws):
    """SPEC 6 (changed: -j1 used durations too, so a serial log changed
    order between runs): behind a wave barrier only the wave's own durations
    matter, so once durations are recorded a wave above -j1 starts longest
    first (LPT); at -j1, and before anything is recorded, by id."""
    deployment(ws, {"a-short": {"run": ["sleep", "0.05"]}, "b-long": {"run": ["sleep", "0.6"]},
                    "c-mid": {"run": ["sleep", "0.3"]}})

    def start_order(report):
        return [n["id"] for n in sorted(report["nodes"], key=lambda n: n["started"])]

    by_id = ["command/a-short", "command/b-long", "command/c-mid"]
    _, first = rollout(ws, "//app:dev", "-j1", "--schedule", "waves")
    assert start_order(first) == by_id
    _, again = rollout(ws, "//app:dev", "-j1", "--schedule", "waves", "--force")
    assert start_order(again) == by_id, "a serial wave keeps id order once durations are known"
    _, wide = rollout(ws, "//app:dev", "-j2", "--schedule", "waves", "--force")
    # The two longest take both slots; the short one waits for the first to end.
    order = start_order(wide)
    assert set(order[:2]) == {"command/b-long", "command/c-mid"} and order[2] == "command/a-short", order


# -- selection and several labels ----------------------------------------------------------

def test_only_selects_a_component_and_what_it_depends_on(ws):
    deployment(ws, {"a": {"run": RECORD}, "b": {"run": RECORD, **after("a")},
                    "c": {"run": RECORD, **after("b")}, "d": {"run": RECORD}})
    proc, report = rollout(ws, "//app:dev", "--only", "command/b")
    assert proc.returncode == 0
    assert ran(ws) == ["command/a", "command/b"]
    assert [n["id"] for n in report["nodes"]] == ["command/a", "command/b"]
    proc, _ = rollout(ws, "//app:dev", "--only", "command/d", "--only", "command/c")
    assert ran(ws) == ["command/c", "command/d"]


def test_several_labels_in_one_rollout(ws):
    deployment(ws, {"a": {"run": RECORD}, "b": {"run": RECORD, **after("a")}}, pkg="app")
    deployment(ws, {"a": {"run": RECORD}}, pkg="web")
    proc, report = rollout(ws, "//app:dev", "//web:dev", "-j2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(statuses(report).values()) == ["succeeded"] * 3
    assert proc.stdout.count("Workspace: ") == 2
    assert len(ran(ws)) == 3
    for node in report["nodes"]:
        assert Path(node["log"]).is_file()
    proc, report = rollout(ws, "//...:dev")
    assert sorted(statuses(report).values()) == ["cached"] * 3


# -- report and logs ---------------------------------------------------------------------------

NODE_KEYS = {"id", "wave", "status", "key", "started", "finished", "duration_s", "exit_code",
             "log", "worker", "reason"}


def test_report_json_and_log_files(ws):
    deployment(ws, {"hello": {"run": 'echo "hello out"; echo "hello err" >&2'},
                    "bye": {"run": "echo bye", **after("hello")}})
    proc, report = rollout(ws, "//app:dev", "-j2")
    assert proc.returncode == 0
    assert {"label", "workspace", "result", "duration_s", "nodes"} <= set(report)
    assert report["label"] == "//app:dev" and report["result"] == "success"
    assert isinstance(report["duration_s"], float)
    run_ids = os.listdir(ws.state / "logs")
    assert len(run_ids) == 1
    for node in report["nodes"]:
        assert set(node) == NODE_KEYS
        assert node["status"] == "succeeded" and node["exit_code"] == 0
        assert re.fullmatch(r"[0-9a-f]{32}", node["key"])
        assert node["started"] <= node["finished"]
        assert isinstance(node["duration_s"], float)
        type_, name = node["id"].split("/", 1)
        assert node["log"] == str(ws.state / "logs" / run_ids[0] / type_ / f"{name}.log")
    assert [n["wave"] for n in report["nodes"]] == [1, 2]
    log = (ws.state / "logs" / run_ids[0] / "command" / "hello.log").read_text()
    assert "hello out" in log and "hello err" in log
    assert "[command/hello] hello out" in proc.stdout

    proc, report = rollout(ws, "//app:dev")
    for node in report["nodes"]:
        assert node["status"] == "cached" and node["reason"] == "up to date"
        assert node["exit_code"] is None and node["log"] is None


def test_keep_going_and_schedule_can_come_from_atmos_yaml(ws):
    """Workspace settings apply when the flags are not given (SPEC 7)."""
    ws.write("atmos.yaml", "keep_going: true\nschedule: eager\nparallelism: 1\n")
    deployment(ws, {
        "bad": {"run": ["sh", "-c", "exit 3"]},
        "after_bad": {"run": ["sh", "-c", RECORD], **after("bad")},
        "independent": {"run": ["sh", "-c", RECORD]},
    })
    proc, report = rollout(ws, "//app:dev")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert statuses(report) == {"command/bad": "failed", "command/after_bad": "skipped",
                                "command/independent": "succeeded"}
    assert ran(ws) == ["command/independent"]


# -- the runner seam ---------------------------------------------------------------------

def _fake_rollout_of_a_then_b(ws, **kwargs):
    """The one Rollout, in process, of `b` after `a` over the fake runner."""
    import io

    from atmosbuild.components import TYPES
    from atmosbuild.config.labels import parse_label
    from atmosbuild.config.workspace import expand, load_settings, load_specs
    from atmosbuild.graph.actions import compile_graph
    from atmosbuild.run.rollout import Rollout, RolloutOptions
    from atmosbuild.run.ui import Console
    from atmosbuild.state.files import FileDigester
    from atmosbuild.state.store import MemoryStore
    from fakes import FakeRunnerFactory

    deployment(ws, {"a": {"run": ["true"]}, "b": {"run": ["true"], **after("a")}})
    root, state = str(ws.root), str(ws.state)
    store = MemoryStore()
    labels = expand(root, [parse_label("//app:dev")], TYPES)
    graph = compile_graph(root, labels, FileDigester(root, store.file_cache()),
                          specs=lambda: load_specs(root, labels, TYPES), settings=lambda: load_settings(root))
    factory = FakeRunnerFactory()
    console = Console(io.StringIO(), io.StringIO(), prefix=False, live=False, color=False)
    rollout = Rollout(root, state, graph, store, RolloutOptions(parallelism=2), console,
                      runner_factory=factory, **kwargs)
    return rollout, factory, store


def test_the_rollout_sets_the_runner_up_with_the_lock_descriptors_and_tears_it_down(ws):
    """Any runner (here the fake) gets setup() with the descriptors of the
    locks it must keep held, and teardown() once the schedule is over."""
    rollout, factory, _ = _fake_rollout_of_a_then_b(ws)
    assert rollout.run() == 0
    runner = factory.runners[-1]
    assert runner.started_order == ["command/a", "command/b"]
    assert len(runner.setups) == 1 and runner.teardowns == 1
    (kept,) = runner.setups[0]["keep_fds"]
    assert kept >= 3 and callable(runner.setups[0]["on_processes"])


def test_a_new_verb_is_a_verb_handed_to_the_one_rollout(ws):
    """A verb says what differs (order, what runs, what is recorded, the exit
    code); the one Rollout does the rest. Here: every node, dependents
    first, nothing recorded, exit 7."""
    from atmosbuild.run.lifecycle import reversed_dag
    from atmosbuild.run.rollout import Verb

    class Audit(Verb):
        name = "audit"

        def dag(self):
            return reversed_dag(self.rollout.graph.dag)

        def needs_run(self, nid: str) -> bool:
            return True

        def finished(self, fin) -> None:
            pass

        def exit_code(self, outcome) -> int:
            return 7 if outcome.result == "success" else 1

    rollout, factory, store = _fake_rollout_of_a_then_b(ws, verb=Audit())
    assert rollout.run() == 7
    assert factory.runners[-1].started_order == ["command/b", "command/a"]
    assert store.applied == {} and store.attempts == {} and store.log == []
