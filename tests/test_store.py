"""The state store's own suite, run against every backend (as Terraform runs
one backend suite against local, pg and s3, and doit its dependency tests
against dbm, json and sqlite): SQLite (the embedded default) and PostgreSQL
(a real server, tests/pgserver.py). MemoryStore, the tests' double, is held
to the same operations.

Every store operation; a success recorded is there for the next reader;
a killed writer loses nothing it committed; concurrent writers lose no
update; the schema guard refuses what is not ours and changes nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atmosbuild.errors import LockedError, StateError
from atmosbuild.state.sqlite import open_store
from atmosbuild.state.store import Applied, Attempt, Built, MemoryStore
from conftest import REPO


class Backend:
    """Opens stores on one location: `open()` as often as a test needs."""

    def __init__(self, name: str, state_dir: str, url: str | None = None) -> None:
        self.name, self.state_dir, self.url = name, state_dir, url
        self.opened = []

    def open(self, readonly: bool = False):
        store = open_store(self.state_dir, readonly=readonly, state=self.url or "sqlite")
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    state_dir = str(tmp_path / "state")
    if request.param == "postgres":
        be = Backend("postgres", state_dir, request.getfixturevalue("pg_url"))
    else:
        be = Backend("sqlite", state_dir)
    yield be
    be.close_all()


def applied(key="k1", result="r1", outputs=None, ingredients=None, finished=1000.5, duration=2.25):
    return Applied(key, result, outputs if outputs is not None else {"url": "https://x", "n": 3},
                   ingredients if ingredients is not None else {"vars": {"a": "ü"}, "upstream": {}},
                   finished, duration)


# -- every operation ------------------------------------------------------------

def test_empty_store_reads_nothing(backend):
    store = backend.open()
    snap = store.snapshot("d", "dev")
    assert snap.applied == {} and snap.attempts == {}
    assert store.applied_summary("d", "dev") == {}
    assert store.builds(["nope"]) == {}
    assert store.builds([]) == {}
    assert store.file_cache() == {}


def test_a_success_is_read_back_by_another_store(backend):
    writer = backend.open()
    rec = applied(outputs={"url": "https://x", "nested": {"list": [1, 2.5, None, True]}})
    writer.record_success("d", "dev", "command/a", rec, "run-1", build=False)
    reader = backend.open()  # a second session / connection
    snap = reader.snapshot("d", "dev")
    assert snap.applied == {"command/a": rec}
    assert snap.applied["command/a"].outputs["nested"] == {"list": [1, 2.5, None, True]}
    assert snap.applied["command/a"].ingredients["vars"] == {"a": "ü"}
    assert snap.attempts["command/a"] == Attempt("k1", "succeeded", "run-1", 1000.5, 2.25)
    assert reader.applied_summary("d", "dev") == {"command/a": ("k1", "r1", 2.25)}
    assert reader.builds(["k1"]) == {}  # build=False: no build cache entry


def test_build_success_is_reusable_by_key_at_any_target(backend):
    store = backend.open()
    store.record_success("d", "dev", "nixpack/img", applied(key="bk", result="br", outputs={"image": "i:1"}),
                         "run-1", build=True)
    hits = backend.open().builds(["bk", "other"])
    assert hits == {"bk": Built("bk", "nixpack/img", "br", {"image": "i:1"}, 1000.5, 2.25)}


def test_builds_read_after_a_snapshot_see_builds_recorded_since(backend):
    """A reader that took its snapshot first still finds what another
    machine built afterwards, and its own applied builds as recorded."""
    a, b = backend.open(), backend.open()
    a.record_success("d", "dev", "nixpack/img", applied(key="old", outputs={"v": 1}), "r1", build=True)
    b.snapshot("d", "dev")
    a.record_success("d", "prod", "nixpack/img", applied(key="new", outputs={"v": 2}), "r2", build=True)
    hits = b.builds(["old", "new", "none"])
    assert {k: v.outputs for k, v in hits.items()} == {"old": {"v": 1}, "new": {"v": 2}}


def test_the_latest_success_replaces_the_applied_record(backend):
    store = backend.open()
    store.record_success("d", "dev", "command/a", applied(key="k1"), "run-1", build=False)
    store.record_success("d", "dev", "command/a", applied(key="k2", result="r2"), "run-2", build=False)
    snap = backend.open().snapshot("d", "dev")
    assert snap.applied["command/a"].key == "k2"
    assert snap.attempts["command/a"].run_id == "run-2"


def test_a_failed_attempt_keeps_the_last_applied_record(backend):
    store = backend.open()
    store.record_success("d", "dev", "command/a", applied(key="k1"), "run-1", build=False)
    store.record_attempt("d", "dev", "command/a", Attempt("k2", "failed", "run-2", 2000.0, 1.0))
    snap = backend.open().snapshot("d", "dev")
    assert snap.applied["command/a"].key == "k1"
    assert snap.attempts["command/a"] == Attempt("k2", "failed", "run-2", 2000.0, 1.0)


def test_records_are_kept_per_deployment_and_target(backend):
    store = backend.open()
    store.record_success("d", "dev", "command/a", applied(key="dev"), "r", build=False)
    store.record_success("d", "prod", "command/a", applied(key="prod"), "r", build=False)
    store.record_success("e", "dev", "command/a", applied(key="other"), "r", build=False)
    assert backend.open().applied_summary("d", "dev") == {"command/a": ("dev", "r1", 2.25)}
    assert set(store.snapshot("d", "prod").applied) == {"command/a"}
    assert store.snapshot("d", "prod").applied["command/a"].key == "prod"
    assert store.snapshot("nope", "dev").applied == {}


def test_snapshot_of_some_components(backend):
    store = backend.open()
    for i in range(600):  # past SQLite's 500-variable chunk
        store.record_success("d", "dev", f"command/c{i}", applied(key=f"k{i}"), "r", build=False)
    wanted = [f"command/c{i}" for i in range(0, 600, 2)] + ["command/missing"]
    snap = backend.open().snapshot("d", "dev", components=wanted)
    assert set(snap.applied) == {f"command/c{i}" for i in range(0, 600, 2)}
    assert set(snap.attempts) == set(snap.applied)
    assert backend.open().snapshot("d", "dev", components=["command/c7"]).applied["command/c7"].key == "k7"
    assert len(store.applied_summary("d", "dev")) == 600
    keys = [f"k{i}" for i in range(600)]
    assert store.builds(keys) == {}


def test_history_lists_attempts_newest_first(backend):
    store = backend.open()
    store.record_attempt("d", "dev", "command/a", Attempt("k1", "failed", "run-1", 1.0, 0.5))
    store.record_success("d", "dev", "command/a", applied(key="k2", finished=2.0), "run-2", build=False)
    rows = backend.open().history("d", "dev", "command/a")
    assert [(r[0], r[1], r[2]) for r in rows] == [("run-2", "k2", "succeeded"), ("run-1", "k1", "failed")]


def test_history_holds_removals_too_and_keeps_to_its_limit(backend):
    from atmosbuild.state.store import HistoryEntry, Removal

    stores = [backend.open(), MemoryStore()]
    for store in stores:
        store.record_success("d", "dev", "command/a", applied(key="k1", finished=1.0), "run-1", build=False)
        store.record_attempt("d", "dev", "command/b", Attempt("kb", "failed", "run-1", 1.5, 0.5))
        store.record_removal("d", "dev", "command/a", Removal("destroyed", "run-2", "destroyed by run run-2", "k1", 2.0))
        store.record_attempt("d", "dev", "command/a", Attempt("k2", "timeout", "run-3", 3.0, 9.0))
    for store in (backend.open(), stores[1]):
        assert store.history("d", "dev", "command/a", 2) == [
            HistoryEntry("run-3", "k2", "timeout", 3.0, 9.0), HistoryEntry("run-2", "k1", "destroyed", 2.0, 0.0)]
        assert [e.status for e in store.history("d", "dev", "command/a")] == ["timeout", "destroyed", "succeeded"]
        assert store.history("d", "prod", "command/a") == []


def test_a_removal_drops_the_applied_record_until_the_next_success(backend):
    from atmosbuild.state.store import Removal

    store = backend.open()
    store.record_success("d", "dev", "terraform/db", applied(key="k1"), "run-1", build=False)
    store.record_removal("d", "dev", "terraform/db", Removal("destroyed", "run-2", "destroyed by run run-2", "k1", 5.0))
    snap = backend.open().snapshot("d", "dev")
    assert "terraform/db" not in snap.applied
    assert snap.removals["terraform/db"] == Removal("destroyed", "run-2", "destroyed by run run-2", "k1", 5.0)
    assert backend.open().applied_summary("d", "dev") == {}
    store.record_success("d", "dev", "terraform/db", applied(key="k1"), "run-3", build=False)
    snap = backend.open().snapshot("d", "dev")
    assert snap.removals == {} and snap.applied["terraform/db"].key == "k1"


def test_the_stat_cache_stays_on_this_machine(backend, tmp_path):
    store = backend.open()
    store.save_file_cache({"/ws/a.txt": (10, 111, 222, 7, "d1")})
    store.save_file_cache({})
    assert backend.open().file_cache() == {"/ws/a.txt": (10, 111, 222, 7, "d1")}
    # In STATE_DIR/state.db, for either backend: another machine (another
    # state dir on the same shared store) has its own.
    assert os.path.exists(os.path.join(backend.state_dir, "state.db"))
    other = Backend(backend.name, str(tmp_path / "elsewhere"), backend.url)
    try:
        assert other.open().file_cache() == {}
    finally:
        other.close_all()


def test_read_only_opening_creates_nothing(backend):
    store = backend.open(readonly=True)
    assert isinstance(store, MemoryStore)  # nothing there yet: an empty store
    assert not os.path.exists(backend.state_dir)
    if backend.url:
        assert "atmosbuild" not in schemas(backend.url)
    writer = backend.open()
    writer.record_success("d", "dev", "command/a", applied(), "r", build=False)
    reader = backend.open(readonly=True)
    assert not isinstance(reader, MemoryStore)
    assert reader.snapshot("d", "dev").applied["command/a"] == applied()


# what PostgreSQL's text holds: anything but NUL (and lone surrogates, not UTF-8)
_stored_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                       max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.dictionaries(
    _stored_text | st.sampled_from(["a\x1fb", "c\x1ed", "\x1f", "\x1e\x1f"]),
    st.tuples(_stored_text | st.just("k\x1e"), _stored_text,
              st.floats(allow_nan=False, allow_infinity=False)), max_size=6))
def test_property_the_applied_summary_reads_back_any_ids_keys_and_durations(backend, rows):
    """(PostgreSQL reads the summary as one text value split at control
    characters: ids, keys or digests holding them must still read back.)"""
    deployment = f"d-{uuid.uuid4().hex[:8]}"
    store = open_store(backend.state_dir, state=backend.url or "sqlite")
    try:
        for comp, (key, result, duration) in rows.items():
            store.record_success(deployment, "dev", comp, Applied(key, result, {}, {}, 1.0, duration),
                                 "run", build=False)
        assert store.applied_summary(deployment, "dev") == rows
    finally:
        store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(
    st.sampled_from(["success", "build", "attempt"]),
    st.sampled_from(["dev", "prod"]),
    st.sampled_from(["command/a", "command/b", "nixpack/c"]),
    st.sampled_from(["k1", "k2", "k3"]),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(-5, 5), st.text(max_size=8)), max_size=3),
), max_size=12))
def test_property_a_store_reads_back_what_a_model_store_holds(backend, ops):
    """After any sequence of writes, every read answers as MemoryStore does."""
    deployment = f"d-{uuid.uuid4().hex[:8]}"  # a fresh place per example
    store, model = backend.open(), MemoryStore()
    for n, (op, target, comp, key, outputs) in enumerate(ops):
        rec = Applied(key, f"r-{key}", outputs, {"upstream": {}, "n": n}, float(n), 0.5)
        for s in (store, model):
            if op == "attempt":
                s.record_attempt(deployment, target, comp, Attempt(key, "failed", f"run{n}", float(n), 0.1))
            else:
                s.record_success(deployment, target, comp, rec, f"run{n}", build=op == "build")
    reader = backend.open()
    for target in ("dev", "prod"):
        got, want = reader.snapshot(deployment, target), model.snapshot(deployment, target)
        assert got.applied == want.applied
        assert got.attempts == want.attempts
        assert reader.applied_summary(deployment, target) == model.applied_summary(deployment, target)
    # The build cache is keyed by key alone (shared by examples): compare the
    # keys this example wrote last.
    last_build = {}
    for op, _, comp, key, outputs in ops:
        if op == "build":
            last_build[key] = (comp, outputs)
    hits = reader.builds(list(last_build))
    assert set(hits) == set(last_build)


# -- crash safety and concurrency ------------------------------------------------

WRITER = """
import sys
from atmosbuild.state.sqlite import open_store
from atmosbuild.state.store import Applied
state_dir, url, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = open_store(state_dir, state=url)
for i in range(count):
    store.record_success("d", "dev", f"{prefix}{i}", Applied(f"k{i}", "r", {"i": i}, {}, 1.0, 1.0),
                         "run", build=(i % 3 == 0))
    print(i, flush=True)
"""


def writer(backend, prefix: str, count: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", WRITER, backend.state_dir, backend.url or "sqlite",
                             prefix, str(count)], env=env, stdout=subprocess.PIPE, text=True)


def test_a_killed_writer_loses_nothing_it_committed(backend):
    proc = writer(backend, "command/c", 100_000)
    committed = []
    while len(committed) < 40:
        committed.append(int(proc.stdout.readline()))
    proc.kill()  # kill -9, mid-stream
    proc.wait()
    rows = backend.open().applied_summary("d", "dev")
    for i in committed:
        assert rows[f"command/c{i}"][0] == f"k{i}"
    assert backend.open().builds([f"k{i}" for i in committed if i % 3 == 0]).keys() == \
        {f"k{i}" for i in committed if i % 3 == 0}


def test_concurrent_writers_lose_no_update(backend):
    backend.open().record_success("d", "dev", "command/first", applied(), "r", build=False)  # schema made
    procs = [writer(backend, f"command/w{n}-", 150) for n in range(3)]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
    rows = backend.open().applied_summary("d", "dev")
    assert len(rows) == 1 + 3 * 150
    assert all(f"command/w{n}-{i}" in rows for n in range(3) for i in range(150))


# -- PostgreSQL only: the schema guard, first use, the lock -------------------------

def schemas(url: str) -> set[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")}


def pg_exec(url: str, *statements: str):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        result = None
        for sql in statements:
            cur = conn.execute(sql)
            result = cur.fetchall() if cur.description else None
        return result


def dump(url: str, schema: str = "atmosbuild") -> list:
    """Every table of `schema` and its rows (to prove nothing changed)."""
    import psycopg

    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,))]
        return [(t, sorted(map(repr, conn.execute(f'SELECT * FROM "{schema}"."{t}"')))) for t in tables]


def test_pg_a_foreign_schema_is_refused_and_untouched(pg_url, tmp_path):
    pg_exec(pg_url, "CREATE SCHEMA atmosbuild", "CREATE TABLE atmosbuild.applied (x int)",
            "INSERT INTO atmosbuild.applied VALUES (42)")
    before = dump(pg_url)
    for readonly in (False, True):
        with pytest.raises(StateError) as info:
            open_store(str(tmp_path), readonly=readonly, state=pg_url)
        assert "not atmosbuild's" in info.value.message
        assert "***" in info.value.message and "pw-" not in info.value.message
    assert dump(pg_url) == before


def test_pg_a_foreign_meta_table_is_refused(pg_url, tmp_path):
    pg_exec(pg_url, "CREATE SCHEMA atmosbuild", "CREATE TABLE atmosbuild.meta (id int, note text)")
    before = dump(pg_url)
    with pytest.raises(StateError, match="not atmosbuild's"):
        open_store(str(tmp_path), state=pg_url)
    assert dump(pg_url) == before


def test_pg_a_newer_schema_is_refused_and_untouched(pg_url, tmp_path):
    store = open_store(str(tmp_path), state=pg_url)
    store.record_success("d", "dev", "command/a", applied(), "r", build=False)
    store.close()
    pg_exec(pg_url, "UPDATE atmosbuild.meta SET value = '99' WHERE name = 'version'")
    before = dump(pg_url)
    with pytest.raises(StateError, match="version 99.*upgrade atmosbuild"):
        open_store(str(tmp_path), state=pg_url)
    assert dump(pg_url) == before


def test_pg_schema_is_settable_and_versioned(pg_url, tmp_path):
    url = pg_url + "?schema=team_b"
    store = open_store(str(tmp_path), state=url)
    store.record_success("d", "dev", "command/a", applied(), "r", build=False)
    store.close()
    assert "team_b" in schemas(pg_url) and "atmosbuild" not in schemas(pg_url)
    from atmosbuild.state.postgres import SCHEMA_VERSION

    assert dict(pg_exec(pg_url, "SELECT name, value FROM team_b.meta")) == {
        "application": "atmosbuild", "version": str(SCHEMA_VERSION)}
    with pytest.raises(StateError, match="plain SQL name"):
        open_store(str(tmp_path), state=pg_url + "?schema=a;drop")


FIRST_USE = """
import sys
from atmosbuild.state.sqlite import open_store
from atmosbuild.state.store import Applied
store = open_store(sys.argv[1], state=sys.argv[2])
store.record_success("d", "dev", sys.argv[3], Applied("k", "r", {}, {}, 1.0, 1.0), "run", build=False)
"""


def test_pg_first_users_at_once_do_not_race(pg_url, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_USE, str(tmp_path / f"m{n}"), pg_url, f"command/c{n}"],
                              env=env, stderr=subprocess.PIPE, text=True) for n in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert len(open_store(str(tmp_path), state=pg_url).applied_summary("d", "dev")) == 4


def test_pg_lock_names_its_holder_and_is_per_target(pg_url, tmp_path):
    import socket

    a = open_store(str(tmp_path / "a"), state=pg_url)
    b = open_store(str(tmp_path / "b"), state=pg_url)
    try:
        with a.deployment_lock("d", "dev", "//app:dev"):
            with pytest.raises(LockedError) as info:
                with b.deployment_lock("d", "dev", "//app:dev"):
                    pass
            message = info.value.message
            assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
            assert "started 20" in message and "//app:dev" in message
            with b.deployment_lock("d", "prod", "//app:prod"):  # another target: free
                pass
        with b.deployment_lock("d", "dev", "//app:dev"):  # released
            pass
    finally:
        a.close()
        b.close()


def test_pg_connection_errors_never_show_the_password(pg_server, pg_db, tmp_path):
    from pgserver import PASSWORD

    cases = [pg_server.url(pg_db, port=1), pg_server.url(pg_db).replace("pw-", "wrong-pw-"),
             pg_server.url(pg_db) + "&bogus=1".replace("&", "?")]
    for url in cases:
        with pytest.raises(StateError) as info:
            open_store(str(tmp_path), state=url)
        text = info.value.render()
        assert PASSWORD not in text and "Xq7" not in text, text
        assert "postgresql://atmos:***@127.0.0.1:" in text, text
        assert "\n" not in text


HOLDER = """
import os, signal, subprocess, sys
from atmosbuild.state.sqlite import open_store
store = open_store(sys.argv[1], state=sys.argv[2])
with store.deployment_lock("d", "dev", "//app:dev") as held:
    child = subprocess.Popen(["sleep", "600"], pass_fds=held.fds, start_new_session=True)
    print(child.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 while the action runs
"""


def test_pg_lock_outlives_a_killed_holder_while_its_action_runs(pg_url, tmp_path):
    """The action inherits the session's socket (HeldSession.fds): the
    server keeps the session, and the lock, until the action exits too."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "a"), pg_url], env=env,
                            stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    proc.wait()
    other = open_store(str(tmp_path / "b"), state=pg_url)
    try:
        with pytest.raises(LockedError) as info:
            with other.deployment_lock("d", "dev", "//app:dev"):
                pass
        assert f"pid {proc.pid} on host" in info.value.message
        assert "which has exited, but actions it started still run" in info.value.message
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with other.deployment_lock("d", "dev", "//app:dev"):
                    break
            except LockedError:
                assert time.monotonic() < deadline, "the lock was not released after the action exited"
                time.sleep(0.1)
    finally:
        other.close()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_pg_an_older_schema_is_migrated_forward_keeping_its_rows(pg_url, tmp_path):
    store = open_store(str(tmp_path), state=pg_url)
    store.record_success("d", "dev", "command/a", applied(), "r", build=False)
    store.close()
    pg_exec(pg_url, "DROP TABLE atmosbuild.removed", "UPDATE atmosbuild.meta SET value = '1' WHERE name = 'version'")
    reader = open_store(str(tmp_path), readonly=True, state=pg_url)  # reads it as it is
    try:
        assert reader.snapshot("d", "dev").applied["command/a"] == applied()
        assert dict(pg_exec(pg_url, "SELECT name, value FROM atmosbuild.meta"))["version"] == "1"
    finally:
        reader.close()
    store = open_store(str(tmp_path), state=pg_url)  # a writer migrates
    try:
        assert store.snapshot("d", "dev").applied["command/a"] == applied()
        assert dict(pg_exec(pg_url, "SELECT name, value FROM atmosbuild.meta"))["version"] == "2"
        assert pg_exec(pg_url, "SELECT count(*) FROM atmosbuild.removed") == [(0,)]
    finally:
        store.close()
