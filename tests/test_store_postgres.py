"""Team state on PostgreSQL (SPEC 11), told as a team lives it: the real CLI
in two checkouts of one repository ("machines": two roots, each with its own
.atmos) sharing one real PostgreSQL server (tests/pgserver.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings, strategies as st

from conftest import REPO, RECORD, Workspace, wait_for
from pgserver import PASSWORD


def team_repo(root: Path, url: str | None, *, slow: str | None = None) -> Workspace:
    """//app with base -> api -> web and solo, targets dev and prod. `slow`:
    that component writes $ATMOS_ROOT/NAME.started and waits for
    $ATMOS_ROOT/go before it finishes."""
    ws = Workspace(root)
    if url is not None:
        ws.write("atmos.yaml", f"state: {json.dumps(url)}\n")
    comps = {
        "base": {"source": "src/base", "run": RECORD},
        "api": {"source": "src/api", "run": RECORD, "metadata": {"depends_on": ["command/base"]}},
        "web": {"source": "src/web", "run": RECORD, "metadata": {"depends_on": ["command/api"]}},
        "solo": {"source": "src/solo", "run": RECORD},
    }
    if slow:
        name = slow.split("/")[1]
        comps[name]["run"] = (f'echo $$ > "$ATMOS_ROOT/{name}.pid"; touch "$ATMOS_ROOT/{name}.started"; '
                              f'while [ ! -f "$ATMOS_ROOT/go" ]; do sleep 0.05; done; ' + RECORD)
    ws.write("app/deployment.yaml", json.dumps(
        {"deployment": {"targets": {"dev": {}, "prod": {}}, "components": {"command": comps}}}))
    for name in ("base", "api", "web", "solo"):
        ws.write(f"src/{name}/main.sh", f"echo {name}\n")
    return ws


def ran(ws: Workspace) -> list[str]:
    path = ws.root / "ran.log"
    if not path.exists():
        return []
    lines = sorted(path.read_text().split())
    path.unlink()
    return lines


def background(ws: Workspace, *args: str, env: dict | None = None) -> subprocess.Popen:
    full = dict(os.environ, PYTHONPATH=str(REPO))
    full.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "atmosbuild", "-C", str(ws.root), *args], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def no_traceback(*procs) -> None:
    for proc in procs:
        assert "Traceback" not in proc.stderr, proc.stderr


KNOWN_KEY = -8282357856317912293  # lock_key("atmosbuild", "app", "dev")
ALL = ["command/api", "command/base", "command/solo", "command/web"]


# -- two checkouts, one record -------------------------------------------------------

def test_a_second_checkout_after_the_first_is_a_no_op(tmp_path, pg_url):
    a = team_repo(tmp_path / "laptop" / "repo", pg_url)
    b = team_repo(tmp_path / "ci" / "checkout", pg_url)  # the same repository, elsewhere
    first = a.run("rollout", "//app:dev")
    assert first.returncode == 0, first.stderr
    assert ran(a) == ALL
    second = b.run("rollout", "//app:dev")
    assert second.returncode == 0, second.stderr
    assert ran(b) == []
    assert "0 ran, 4 cached" in second.stdout
    status = b.run("status", "//app:dev")
    assert status.stdout.count("up to date") == 4, status.stdout

    # An edit in B re-runs exactly what the edit touches, and A then sees it.
    b.write("src/api/main.sh", "echo api v2\n")
    edited = b.run("rollout", "//app:dev")
    assert edited.returncode == 0, edited.stderr
    assert ran(b) == ["command/api", "command/web"]
    a.write("src/api/main.sh", "echo api v2\n")  # A pulls the same commit
    pulled = a.run("rollout", "//app:dev")
    assert pulled.returncode == 0 and ran(a) == []
    again = b.run("rollout", "//app:dev")  # and B's own up-to-date record still holds
    assert again.returncode == 0 and ran(b) == []


def test_dev_from_one_machine_and_prod_from_another_at_once(tmp_path, pg_url):
    a = team_repo(tmp_path / "m1" / "repo", pg_url, slow="command/api")
    b = team_repo(tmp_path / "m2" / "repo", pg_url, slow="command/api")
    pa = background(a, "rollout", "//app:dev")
    pb = background(b, "rollout", "//app:prod")
    wait_for(a.root / "api.started", proc=pa)
    wait_for(b.root / "api.started", proc=pb)  # both hold their target's lock at the same time
    (a.root / "go").touch()
    (b.root / "go").touch()
    out_a, err_a = pa.communicate(timeout=120)
    out_b, err_b = pb.communicate(timeout=120)
    assert pa.returncode == 0, err_a
    assert pb.returncode == 0, err_b
    assert ran(a) == ALL and ran(b) == ALL
    for ws, target in ((b, "dev"), (a, "prod")):  # each sees the other's record
        again = ws.run("rollout", f"//app:{target}")
        assert again.returncode == 0 and "0 ran, 4 cached" in again.stdout, again.stdout


# -- the lock across machines ----------------------------------------------------------

def test_the_lock_names_its_holder_across_machines_and_wait_waits(tmp_path, pg_url):
    import socket

    a = team_repo(tmp_path / "m1" / "repo", pg_url, slow="command/api")
    b = team_repo(tmp_path / "m2" / "repo", pg_url, slow="command/api")  # the same repository
    (b.root / "go").touch()  # (B's own copy of api does not wait)
    holder = background(a, "rollout", "//app:dev")
    wait_for(a.root / "api.started")
    locked = b.run("rollout", "//app:dev")
    assert locked.returncode == 3, locked.stderr
    line = locked.stderr.strip()
    assert line.startswith("error: //app:dev is locked by ")
    assert f"pid {holder.pid} on host {socket.gethostname()} (started 20" in line
    assert "use --wait" in line and len(locked.stderr.strip().splitlines()) == 1
    other = b.run("rollout", "//app:prod")  # another target is free
    assert other.returncode == 0, other.stderr

    waiter = background(b, "rollout", "//app:dev", "--wait")
    time.sleep(1.5)
    assert waiter.poll() is None  # still waiting
    (a.root / "go").touch()
    assert holder.wait(60) == 0
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert "waiting for //app:dev, locked by pid" in out + err
    assert "0 ran, 4 cached" in out  # it read what the holder recorded


def wait_until_zombie(proc: subprocess.Popen) -> None:
    """Until `proc` has exited but is not reaped (a zombie); reaped where
    there is no /proc to tell."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{proc.pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            proc.wait()
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {proc.pid} did not exit")


def test_kill_9_of_the_holder_keeps_the_lock_until_its_action_exits(tmp_path, pg_url):
    """SPEC 6 across machines: the killed holder's action still runs, so no
    other machine may start; once it exits the lock is free within seconds."""
    a = team_repo(tmp_path / "m1" / "repo", pg_url, slow="command/api")
    b = team_repo(tmp_path / "m2" / "repo", pg_url, slow="command/api")
    (b.root / "go").touch()
    holder = background(a, "rollout", "//app:dev", "-j2")
    wait_for(a.root / "api.started")
    action = int((a.root / "api.pid").read_text())
    holder.kill()
    wait_until_zombie(holder)  # killed, not yet reaped: it has exited all the same
    try:
        locked = b.run("rollout", "//app:dev")
        assert locked.returncode == 3, locked.stderr
        assert f"pid {holder.pid} on host" in locked.stderr
        assert "which has exited, but actions it started still run" in locked.stderr
        holder.wait()
        os.killpg(action, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            proc = b.run("rollout", "//app:dev")
            if proc.returncode != 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert proc.returncode == 0, proc.stderr
        # base and solo were committed by the killed holder; api never was.
        assert ran(b) == ["command/api", "command/web"]
    finally:
        try:
            os.killpg(action, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- losing the server ----------------------------------------------------------------

def test_server_stopped_mid_rollout_fails_cleanly_and_the_next_rollout_resumes(tmp_path, pg_server, pg_db):
    url = pg_server.url(pg_db)
    ws = team_repo(tmp_path / "repo", url, slow="command/api")
    proc = background(ws, "rollout", "//app:dev", "-j1")
    wait_for(ws.root / "api.started")
    pg_server.stop()
    try:
        (ws.root / "go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        pg_server.start()
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(err.strip().splitlines()) == 1, err
    assert "state store postgresql://atmos:***@" in errors[0]
    assert "recording command/api failed" in errors[0] or "connection was lost" in errors[0]
    assert PASSWORD not in out + err
    first = ran(ws)
    assert "command/base" in first and "command/web" not in first
    again = ws.run("rollout", "//app:dev", "-j1")
    assert again.returncode == 0, again.stderr
    resumed = ran(ws)
    assert "command/base" not in resumed  # committed before the server went away
    assert "command/api" in resumed and "command/web" in resumed
    assert "0 ran, 4 cached" in ws.run("rollout", "//app:dev").stdout


# -- the password -----------------------------------------------------------------------

def test_the_password_is_never_printed_or_written(tmp_path, pg_server, pg_db):
    cache = tmp_path / "xdg-cache"
    env = {"XDG_CACHE_HOME": str(cache)}
    ws = team_repo(tmp_path / "repo", pg_server.url(pg_db))
    outputs = []
    for args in (["rollout", "//app:dev"], ["rollout", "//app:dev"], ["status", "//app:dev"],
                 ["plan", "//app:dev"], ["explain", "//app:dev", "command/api"],
                 ["rollout", "//app:prod", "--dry-run"], ["graph", "//app:dev", "--format", "json"]):
        proc = ws.run(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    bad = {"wrong port": pg_server.url(pg_db, port=1),
           "wrong password": pg_server.url(pg_db).replace(quote(PASSWORD, safe=""), "not-" + quote(PASSWORD, safe="")),
           "unknown database": pg_server.url("nosuchdb"),
           "bad option": pg_server.url(pg_db) + "?nosuchoption=1"}
    for what, url in bad.items():
        for via in ("env", "file"):
            if via == "env":
                proc = ws.run("rollout", "//app:dev", env={**env, "ATMOS_STATE": url})
            else:
                ws.write("atmos.yaml", f"state: {json.dumps(url)}\n")
                proc = ws.run("rollout", "//app:dev", env=env)
            assert proc.returncode == 2, (what, proc.stderr)
            assert proc.stderr.startswith("error: cannot connect to the state store postgresql://atmos:***@"), proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            outputs.append(proc.stdout + proc.stderr)
    # Given in the environment: the actions do not inherit it (an `env` in a
    # component would print it into its log).
    dump = Workspace(tmp_path / "dump")
    dump.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "command": {"env": {"run": "env; echo STATE=$${ATMOS_STATE:-unset}"}}}}}))
    proc = dump.run("rollout", "//app:dev", env={**env, "ATMOS_STATE": pg_server.url(pg_db)})
    assert proc.returncode == 0, proc.stderr
    assert "STATE=unset" in proc.stdout
    outputs.append(proc.stdout + proc.stderr)
    secrets = [PASSWORD, quote(PASSWORD, safe=""), "Xq7"]
    for text in outputs:
        assert not any(s in text for s in secrets), text
    for base in (ws.state, dump.state, cache):
        for dirpath, _, files in os.walk(base):
            for name in files:
                data = Path(dirpath, name).read_bytes()
                assert not any(s.encode() in data for s in secrets), Path(dirpath, name)


def test_password_from_pgpassword(tmp_path, pg_server, pg_db):
    ws = team_repo(tmp_path / "repo", pg_server.url(pg_db, password=False))
    missing = ws.run("rollout", "//app:dev", env={"PGPASSWORD": "", "PGPASSFILE": str(tmp_path / "none")})
    assert missing.returncode == 2
    assert "no password supplied (give it in the URL, PGPASSWORD or ~/.pgpass)" in missing.stderr
    assert not ws.state.exists()  # a store that cannot be opened: nothing created, nothing run
    proc = ws.run("rollout", "//app:dev", env={"PGPASSWORD": PASSWORD})
    assert proc.returncode == 0, proc.stderr
    assert ran(ws) == ALL


def test_password_from_pgpass(tmp_path, pg_server, pg_db):
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_server.port}:*:atmos:{PASSWORD}\n")
    pgpass.chmod(0o600)
    ws = team_repo(tmp_path / "repo", pg_server.url(pg_db, password=False))
    proc = ws.run("rollout", "//app:dev", env={"PGPASSFILE": str(pgpass)})
    assert proc.returncode == 0, proc.stderr


# -- configuration ------------------------------------------------------------------------

def test_atmos_state_wins_over_atmos_yaml(tmp_path, pg_url):
    ws = team_repo(tmp_path / "repo", "sqlite")
    proc = ws.run("rollout", "//app:dev", env={"ATMOS_STATE": pg_url})
    assert proc.returncode == 0, proc.stderr
    assert ran(ws) == ALL
    other = team_repo(tmp_path / "other", None)
    assert "0 ran, 4 cached" in other.run("rollout", "//app:dev", env={"ATMOS_STATE": pg_url}).stdout
    local = ws.run("rollout", "//app:dev")  # state: sqlite: this machine's record is empty
    assert ran(ws) == ALL and local.returncode == 0


def test_a_bad_state_setting_is_one_error_line(tmp_path):
    ws = team_repo(tmp_path / "repo", "mysql://root:hunter2@db/x")
    proc = ws.run("rollout", "//app:dev")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "atmos.yaml:1:" in proc.stderr
    assert "state must be 'sqlite' or postgresql://" in proc.stderr
    assert "hunter2" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    ws.write("atmos.yaml", "{}\n")
    env_bad = ws.run("rollout", "//app:dev", env={"ATMOS_STATE": "mysql://root:hunter2@db/x"})
    assert env_bad.returncode == 2 and "ATMOS_STATE" in env_bad.stderr and "hunter2" not in env_bad.stderr
    assert not ws.state.exists()  # bad input: nothing created


def test_reading_commands_create_no_schema(tmp_path, pg_url):
    import psycopg

    ws = team_repo(tmp_path / "repo", pg_url)
    for args in (["plan", "//app:dev"], ["status", "//app:dev"], ["rollout", "//app:dev", "--dry-run"]):
        proc = ws.run(*args)
        assert proc.returncode == 0, proc.stderr
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'atmosbuild'").fetchone() is None


def test_without_psycopg_the_error_names_the_extra(tmp_path, pg_url):
    """A Python where psycopg is not installed: the venv's packages but psycopg."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    bare = tmp_path / "site"
    bare.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith("psycopg") and not entry.name.endswith(".pth"):
            (bare / entry.name).symlink_to(entry)
    ws = team_repo(tmp_path / "repo", pg_url)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{bare}")
    proc = subprocess.run([sys.executable, "-S", "-m", "atmosbuild", "-C", str(ws.root), "rollout", "//app:dev"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("error: state: a postgresql:// URL needs psycopg: "
                                   "pip install 'atmosbuild[postgres]'")


def test_losing_the_server_while_an_action_runs_stops_it_as_ctrl_c_would(tmp_path, pg_server, pg_db):
    """The lock went with the session: the action must not run on unlocked
    until it happens to finish (here: never)."""
    ws = team_repo(tmp_path / "repo", pg_server.url(pg_db), slow="command/api")
    proc = background(ws, "rollout", "//app:dev", "-j1")
    wait_for(ws.root / "api.started")
    pid = int((ws.root / "api.pid").read_text())
    pg_server.stop()
    try:
        out, err = proc.communicate(timeout=60)  # api waits for a `go` that never comes
    finally:
        pg_server.start()
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: state store postgresql://atmos:***@") and "connection was lost" in err
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the action was stopped
    assert ran(ws) == ["command/base", "command/solo"]
    (ws.root / "go").touch()
    again = ws.run("rollout", "//app:dev", "-j1")
    assert again.returncode == 0, again.stderr
    assert ran(ws) == ["command/api", "command/web"]


def test_a_sqlite_rollout_never_imports_the_postgres_driver(tmp_path):
    ws = team_repo(tmp_path / "repo", None)
    code = ("import sys\nfrom atmosbuild.cli import main\n"
            f"try:\n    main(['-C', {str(ws.root)!r}, 'rollout', '//app:dev'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "bad = [m for m in ('psycopg', 'atmosbuild.state.postgres') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_postgres_rollout_never_imports_psycopg(tmp_path, pg_url):
    """The store talks to libpq itself (state/pq.py): importing psycopg
    would cost a no-op 0.1 s, half of it."""
    ws = team_repo(tmp_path / "repo", pg_url)
    code = ("import sys\nfrom atmosbuild.cli import main\n"
            f"for _ in range(2):\n  try:\n    main(['-C', {str(ws.root)!r}, 'rollout', '//app:dev'])\n"
            "  except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'atmosbuild.state.postgres' in sys.modules\n"
            "bad = [m for m in ('psycopg', 'asyncio') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert ran(ws) == ["command/api", "command/base", "command/solo", "command/web"]  # once


@pytest.mark.parametrize("url, shown, conninfo, password, schema", [
    ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db", "postgresql://u@h:5432/db", "p@ss", "atmosbuild"),
    ("postgres://u@h/db?schema=team&sslmode=require", "postgres://u@h/db?schema=team&sslmode=require",
     "postgresql://u@h/db?sslmode=require", None, "team"),
    ("postgresql://u@h1:1,h2:2/db?password=sekret", "postgresql://u:***@h1:1,h2:2/db?password=***",
     "postgresql://u@h1:1,h2:2/db", "sekret", "atmosbuild"),
    ("postgresql:///db", "postgresql:///db", "postgresql:///db", None, "atmosbuild"),
])
def test_state_urls_are_taken_apart_and_masked(url, shown, conninfo, password, schema):
    from atmosbuild.state.postgres import StateURL

    parsed = StateURL(url)
    assert (parsed.shown, parsed.conninfo, parsed.password, parsed.schema) == (shown, conninfo, password, schema)
    if password:
        assert parsed.scrub(f"failed for {url} with {password}") .count(password) == 0


def test_the_lock_key_is_stable_across_machines_and_versions():
    """Two atmosbuild versions on two machines must compute the same key, or
    they would not exclude each other: the value is part of the contract."""
    from atmosbuild.state.postgres import lock_key

    key = lock_key("atmosbuild", "app", "dev")
    assert key == KNOWN_KEY
    assert -(1 << 63) <= key < (1 << 63)
    assert len({lock_key(s, d, t) for s in ("atmosbuild", "b") for d in ("app", "api")
                for t in ("dev", "prod")}) == 8


def test_the_bench_postgres_scenario_runs(tmp_path, pg_server):
    """bench/run.py --only postgres at smoke size: both stores measured, the
    target computed (timings never asserted)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--only", "postgres",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for scenario in ("postgres-noop", "postgres-edit"):
        for tool in ("atmosbuild-sqlite", "atmosbuild-postgres"):
            assert results["scenarios"][scenario][tool]["status"] == "ok"
    target = [t for t in results["targets"] if t["target"].startswith("no-op on PostgreSQL")]
    assert len(target) == 1 and target[0]["value"] is not None


def test_a_no_op_costs_a_few_statements_not_one_per_component(tmp_path, pg_server, pg_db):
    """The server's own statement log (log_statement = all) over a no-op of
    300 components: a handful of statements, on the up-to-date record's path
    and on the full path alike (no query per node)."""
    import psycopg

    with psycopg.connect(pg_server.url(pg_db), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{pg_db}" SET log_statement = \'all\'')
    ws = Workspace(tmp_path / "repo")
    ws.write("atmos.yaml", f"state: {json.dumps(pg_server.url(pg_db))}\n")
    comps = {f"c{i:03d}": {"run": "true", **({"metadata": {"depends_on": [f"command/c{i - 1:03d}"]}}
                                            if i % 10 else {})} for i in range(300)}
    ws.write("app/deployment.yaml", json.dumps(
        {"deployment": {"targets": {"dev": {}}, "components": {"command": comps}}}))
    assert ws.run("rollout", "//app:dev").returncode == 0

    def statements(*args, env=None) -> list[str]:
        with open(pg_server.log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            start = fh.tell()
        proc = ws.run("rollout", "//app:dev", *args, env=env)
        assert proc.returncode == 0 and "0 ran, 300 cached" in proc.stdout, proc.stdout + proc.stderr
        with open(pg_server.log, "rb") as fh:
            fh.seek(start)
            # (simple protocol: "statement: ..."; with parameters: "execute <unnamed>: ...")
            return [line for line in fh.read().decode(errors="replace").splitlines()
                    if "LOG:  statement: " in line or "LOG:  execute " in line]

    statements()  # (this one writes the up-to-date record)
    recorded = statements()
    full = statements(env={"ATMOS_NO_CACHE": "1"})
    assert 0 < len(recorded) <= 6, recorded  # meta, lock, applied rows, unlock
    assert 0 < len(full) <= 10, full  # + the snapshot (applied, attempts, builds)
    assert any("applied" in line for line in recorded) and any("advisory" in line for line in recorded)


def test_a_destroy_on_one_machine_is_seen_by_the_other(tmp_path, pg_url):
    """Destroy marks are shared like the applied records (SPEC 10, 11)."""
    a = team_repo(tmp_path / "m1" / "repo", pg_url)
    b = team_repo(tmp_path / "m2" / "repo", pg_url)
    assert a.run("rollout", "//app:dev").returncode == 0
    ran(a)
    gone = a.run("destroy", "//app:dev", "--yes")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    status = b.run("status", "//app:dev")
    assert status.returncode == 0 and status.stdout.count("destroyed") >= 4, status.stdout
    again = b.run("rollout", "//app:dev")
    assert again.returncode == 0, again.stderr
    assert ran(b) == ALL  # applied again, from the other machine
    assert "0 ran, 4 cached" in a.run("rollout", "//app:dev").stdout


# -- atmos.yaml with a state URL: cached masked, read as written -------------------------

_PASSWORD_CHARS = st.text(alphabet="aZ9%@:/?#&=+!$' \"\\,[]{}é-_.~", min_size=0, max_size=12)


@settings(max_examples=150, deadline=None)
@given(password=_PASSWORD_CHARS, style=st.sampled_from(["plain", "single", "double"]),
       param=st.booleans(), comment=st.booleans(), second=st.booleans())
def test_settings_with_a_state_url_read_as_written_and_cache_no_password(
        tmp_path_factory, password, style, param, comment, second):
    """The settings parse cache sees atmos.yaml with every postgresql:// URL
    masked (workspace._load_masking_urls): the values are the file's, and no
    cache entry holds the password, whatever its characters and quoting."""
    import yaml as pyyaml

    from atmosbuild.config import workspace
    from atmosbuild.config.yaml import parse_yaml

    secret = "Sx7q" + password
    url = f"postgresql://atmos:{secret}@db.example:5432/team"
    if param:
        url = f"postgresql://atmos@h1:1,h2:2/team?sslmode=require&password={secret}"
    scalar = {"plain": url, "single": "'" + url.replace("'", "''") + "'",
              "double": json.dumps(url)}[style]
    text = f"state: {scalar}\n" + ("# the team's store\n" if comment else "")
    if second:
        text += f"terraform:\n  backend:\n    conn_str: {json.dumps(url)}\n"
    try:
        expected = parse_yaml(text, "atmos.yaml").data
    except Exception:  # not YAML as written (a plain scalar with ': ', ' #'...)
        return
    if pyyaml.safe_load(text) != expected:
        return
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        for _ in range(2):  # a miss, then a hit
            assert workspace._load_masking_urls(text, "atmos.yaml").data == expected
    finally:
        os.environ["XDG_CACHE_HOME"] = old
    for dirpath, _, files in os.walk(cache):
        for name in files:
            data = Path(dirpath, name).read_bytes()
            assert secret.encode() not in data and secret.encode("unicode_escape") not in data
