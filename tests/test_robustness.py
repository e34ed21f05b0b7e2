"""The state survives what users do to it: kill -9 mid-rollout, concurrent
rollouts, corrupt or foreign database files, bad input. Real CLI processes."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import RECORD, ran, start_cli, wait_for









def kill_pid_file(path: Path) -> None:
    try:
        os.kill(int(path.read_text().split()[0]), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


# -- kill -9 ------------------------------------------------------------------------

CHAIN = f"""\
deployment:
  targets: {{dev: {{}}}}
  components:
    command:
      one: {{run: ["sh", "-c", '{RECORD}']}}
      side: {{run: ["sh", "-c", '{RECORD}']}}
      two:
        run: ["sh", "-c", '{RECORD}; if [ -e "$ATMOS_ROOT/hang" ]; then echo $$ > "$ATMOS_ROOT/two.pid"; exec sleep 60; fi']
        metadata: {{depends_on: [command/one]}}
      three:
        run: ["sh", "-c", '{RECORD}']
        metadata: {{depends_on: [command/two]}}
"""


def test_kill_9_mid_rollout_keeps_what_finished_and_the_next_run_does_the_rest(ws):
    ws.write("app/deployment.yaml", CHAIN)
    ws.write("hang", "")
    proc = start_cli(ws, "rollout", "//app:dev", "-j2")
    try:
        wait_for(ws.root / "two.pid")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        kill_pid_file(ws.root / "two.pid")  # the orphan a kill -9 cannot take with it
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert ran(ws) == ["command/one", "command/side", "command/two"]

    status = ws.run("status", "//app:dev")
    assert status.returncode == 0, status.stderr
    rows = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    assert rows["command/one"].endswith("up to date")
    assert rows["command/side"].endswith("up to date")
    assert "never applied" in rows["command/two"]

    (ws.root / "hang").unlink()
    again = ws.run("rollout", "//app:dev", "-j2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert ran(ws) == ["command/three", "command/two"]
    assert ws.run("rollout", "//app:dev").returncode == 0 and ran(ws) == []


HOLD = """\
deployment:
  targets: {dev: {}}
  components:
    command:
      hold:
        run: ["sh", "-c", 'echo $$ > "$ATMOS_ROOT/hold.pid"; echo "start $(date +%s.%N)" >> "$ATMOS_ROOT/times"; SLEEP; echo "end $(date +%s.%N)" >> "$ATMOS_ROOT/times"']
"""


def spans(path: Path) -> list[tuple[float, float]]:
    """(start, end) of each run of the action, from its `times` lines."""
    out, start = [], None
    for kind, t in (line.split() for line in path.read_text().splitlines()):
        if kind == "start":
            assert start is None, "two runs of the component overlapped"
            start = float(t)
        else:
            out.append((start, float(t)))
            start = None
    return out


def test_kill_9_of_atmosbuild_keeps_the_lock_until_its_action_has_exited(ws):
    """SPEC 6: the lock is held until every action the rollout started has
    exited, even when atmosbuild is killed: the action inherited the lock's
    descriptor. A second rollout exits 3 naming what still runs; with
    --wait it waits, and the component never runs twice at once."""
    wait_for_release = ('i=0; while [ ! -e "$ATMOS_ROOT/release" ] && [ $i -lt 600 ]; do '
                        'sleep 0.05; i=$((i+1)); done')
    ws.write("app/deployment.yaml", HOLD.replace("SLEEP", wait_for_release))
    proc = start_cli(ws, "rollout", "//app:dev")
    waiter, finished = None, False
    try:
        wait_for(ws.root / "hold.pid")
        pid = int((ws.root / "hold.pid").read_text())
        lock = next((ws.state / "locks").iterdir())
        deadline = time.monotonic() + 10  # the pid is noted just after the spawn
        while f"(pid {pid})" not in lock.read_text():
            assert time.monotonic() < deadline, lock.read_text()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL

        second = ws.run("rollout", "//app:dev")
        assert second.returncode == 3, second.stdout + second.stderr
        message = second.stderr.strip()
        assert message.startswith("error: //app:dev is locked by pid "), message
        assert f"locked by pid {proc.pid} " in message
        assert "which has exited, but actions it started still run" in message
        assert f"command/hold (pid {pid})" in message
        assert "--wait" in message and len(second.stderr.splitlines()) == 1
        assert "Workspace:" not in second.stdout

        waiter = start_cli(ws, "rollout", "//app:dev", "--wait")
        time.sleep(1.0)
        assert waiter.poll() is None, "--wait did not wait for the orphaned action"
        (ws.root / "release").write_text("")
        out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, out + err
        assert "waiting for //app:dev" in out + err
        finished = True
    finally:
        if not finished:  # an orphan a kill -9 cannot take with it (the pid is stale otherwise)
            kill_pid_file(ws.root / "hold.pid")
        for p in (proc, waiter):
            if p is not None:
                p.kill()
                p.communicate()
    runs = spans(ws.root / "times")
    assert len(runs) == 2, runs  # the orphan ran to its end, then the waiter's run
    (_, first_end), (second_start, _) = runs
    assert second_start >= first_end, "the component ran twice at once"


def test_without_a_kill_the_lock_is_free_the_moment_the_rollout_ends(ws):
    """The inherited descriptor keeps nothing locked once the actions ended."""
    ws.write("app/deployment.yaml", HOLD.replace("SLEEP", "true"))
    assert ws.run("rollout", "//app:dev").returncode == 0
    again = ws.run("rollout", "//app:dev", "--force")
    assert again.returncode == 0, again.stderr


# -- concurrent rollouts ------------------------------------------------------------

def many(n: int) -> str:
    lines = []
    for i in range(n):
        dep = f", metadata: {{depends_on: [command/c{i - 1}]}}" if i % 3 else ""
        lines.append(f"      c{i}: {{run: [\"sh\", \"-c\", '{RECORD}; echo $ATMOS_TARGET >> \"$ATMOS_ROOT/ran-$ATMOS_TARGET.log\"']{dep}}}")
    return "\n".join(lines)


def test_rollouts_of_different_targets_started_together_both_succeed_and_lose_nothing(ws):
    ws.write("app/deployment.yaml", f"""\
deployment:
  targets: {{dev: {{}}, prod: {{}}}}
  components:
    command:
{many(9)}
""")
    ws.write("web/deployment.yaml", f"""\
deployment:
  targets: {{dev: {{}}}}
  components:
    command:
{many(6)}
""")
    procs = [start_cli(ws, "rollout", label, "-j3") for label in ("//app:dev", "//app:prod", "//web:dev")]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
        assert "Traceback" not in err
    assert len(ran(ws)) == 9 + 9 + 6

    db = sqlite3.connect(ws.state / "state.db")
    try:
        counts = dict(db.execute("SELECT deployment || ':' || target, count(*) FROM applied GROUP BY 1"))
    finally:
        db.close()
    assert counts == {"app:dev": 9, "app:prod": 9, "web:dev": 6}
    procs = [start_cli(ws, "rollout", label) for label in ("//app:dev", "//app:prod", "//web:dev")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "0 ran" in out, out + err
    assert ran(ws) == []


def test_rollouts_and_readers_started_together_on_a_fresh_workspace_all_succeed(ws):
    """The state database is created by whoever comes first; nobody may see
    it half made (no schema yet, or not yet in WAL mode)."""
    ws.write("app/deployment.yaml", f"""\
deployment:
  targets: {{dev: {{}}, prod: {{}}, qa: {{}}}}
  components:
    command:
      a: {{run: ["sh", "-c", '{RECORD}']}}
""")
    for attempt in range(6):
        if ws.state.exists():
            shutil.rmtree(ws.state)
        procs = [start_cli(ws, "rollout", f"//app:{t}") for t in ("dev", "prod", "qa")]
        procs += [start_cli(ws, "status", "//app:dev"), start_cli(ws, "plan", "//app:prod")]
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, (attempt, p.args[-2:], out, err)
    assert len(ran(ws)) == 3 * 6


# -- corrupt and foreign state ------------------------------------------------------

def garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 200)


def foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT);"
                     "INSERT INTO notes (text) VALUES ('my other app');")
    db.close()


def malformed_pages(path: Path) -> None:
    """A valid header, everything past the first page overwritten."""
    data = bytearray(path.read_bytes())
    for i in range(4096 + 100, len(data)):
        data[i] = 0x5A
    path.write_bytes(bytes(data))


def newer_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()


@pytest.mark.parametrize("damage", [garbage, foreign, malformed_pages, newer_schema],
                         ids=lambda f: f.__name__)
def test_a_corrupt_or_foreign_state_db_gives_one_clear_error_and_exit_2(ws, damage):
    ws.write("app/deployment.yaml", CHAIN)
    if damage in (malformed_pages, newer_schema):
        assert ws.run("rollout", "//app:dev").returncode == 0  # a real, checkpointed db
        ran(ws)
    else:
        ws.state.mkdir()
    db = ws.state / "state.db"
    damage(db)
    before = db.read_bytes()

    for args in (["rollout", "//app:dev"], ["plan", "//app:dev"], ["status", "//app:dev"],
                 ["explain", "//app:dev", "command/one"], ["rollout", "//app:dev", "--dry-run"]):
        proc = ws.run(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
        assert "state.db" in lines[0]
    assert ran(ws) == []
    assert db.read_bytes() == before
    assert not (ws.state / "workspaces").exists() or not list((ws.state / "workspaces").iterdir())


# -- bad input leaves the state untouched ---------------------------------------------

def test_bad_config_creates_no_state(ws):
    ws.write("app/deployment.yaml", "deployment:\n  targets: {dev: {}}\n  components:\n"
                                   "    command:\n      a: {run: [\"true\"], bogus: 1}\n")
    before = ws.snapshot_tree()
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert ws.snapshot_tree() == before, "a bad rollout created state"


def test_bad_config_leaves_existing_state_untouched(ws):
    ws.write("app/deployment.yaml", CHAIN)
    assert ws.run("rollout", "//app:dev").returncode == 0
    ws.write("app/deployment.yaml", CHAIN.replace("depends_on: [command/one]", "depends_on: [command/three]"))
    before = ws.snapshot_tree()
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 2 and "cycle" in proc.stderr
    assert ws.snapshot_tree() == before
