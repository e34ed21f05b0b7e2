"""The embedded store: one SQLite database, `STATE_DIR/state.db`.

WAL mode so readers never block the writer; every success is its own short
transaction committed the moment it is known (kill -9 loses at most the
action that was running); a busy timeout so concurrent rollouts of other
targets queue for the write lock instead of failing. The database carries an
application id so a foreign or corrupt file is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from typing import Mapping

from ..errors import StateError
from .store import Applied, AppliedRow, Attempt, Built, HistoryEntry, Removal, Snapshot

APPLICATION_ID = 0x41544D42  # "ATMB"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (
    deployment TEXT NOT NULL, target TEXT NOT NULL, component TEXT NOT NULL,
    key TEXT NOT NULL, result TEXT NOT NULL, outputs TEXT NOT NULL,
    ingredients TEXT NOT NULL, finished REAL NOT NULL, duration REAL NOT NULL,
    PRIMARY KEY (deployment, target, component)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS builds (
    key TEXT PRIMARY KEY, component TEXT NOT NULL, result TEXT NOT NULL,
    outputs TEXT NOT NULL, finished REAL NOT NULL, duration REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    deployment TEXT NOT NULL, target TEXT NOT NULL, component TEXT NOT NULL,
    key TEXT NOT NULL, status TEXT NOT NULL, run_id TEXT NOT NULL,
    finished REAL NOT NULL, duration REAL NOT NULL,
    PRIMARY KEY (deployment, target, component)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT NOT NULL, deployment TEXT NOT NULL, target TEXT NOT NULL,
    component TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL,
    finished REAL NOT NULL, duration REAL NOT NULL);
CREATE INDEX IF NOT EXISTS history_by_component ON history (deployment, target, component);
CREATE TABLE IF NOT EXISTS removed (
    deployment TEXT NOT NULL, target TEXT NOT NULL, component TEXT NOT NULL,
    kind TEXT NOT NULL, run_id TEXT NOT NULL, reason TEXT NOT NULL, key TEXT NOT NULL,
    finished REAL NOT NULL,
    PRIMARY KEY (deployment, target, component)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, digest TEXT NOT NULL) WITHOUT ROWID;
"""


_HISTORY_INDEX = next(s.strip() for s in _SCHEMA.split(";") if "history_by_component" in s)


def db_path(state_dir: str) -> str:
    return os.path.join(state_dir, "state.db")


def _connect(path: str, mode: str) -> sqlite3.Connection:
    """Open an existing database (`mode` rw or ro: never create it)."""
    uri = f"file:{_quote(os.path.abspath(path))}?mode={mode}"
    db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return db


def _write_schema(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _create(path: str) -> None:
    """Create the database whole (schema, application id, WAL) under a
    private name, then link it into place: rollouts starting together never
    see a half-made database. The first link wins; the others use it."""
    from ..fileops import ensure_state_dir

    ensure_state_dir(os.path.dirname(path) or ".")  # (with its marker, when made here)
    tmp = f"{path}.new-{os.getpid()}-{os.urandom(4).hex()}"
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN")
        _write_schema(db)
        db.execute("COMMIT")
    finally:
        db.close()  # the only connection: its -wal is folded in and removed
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # no hard links here: a rename, which can only lose a race
        if not os.path.exists(path):
            os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass


def _unreadable(path: str, exc: Exception) -> StateError:
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return StateError(f"state database {path} is locked by another process ({exc}); "
                          "try again")
    return StateError(f"state database {path} is unreadable ({exc}); it is corrupt or not an "
                      "atmosbuild database: move it away or run `atmosbuild clean --cache`")


def _guarded(method):
    """A corrupt page may only show when a query touches it, long after the
    header checks in __init__ passed: every query must fail as cleanly."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise _unreadable(self.path, exc) from None

    return wrapper


# Every store not yet closed (strong references: sqlite3's statement cache
# makes each connection part of a reference cycle, so a dropped store would
# keep its connection open until a collection). The CLI closes them before
# its fast exit: a connection left open to a WAL database leaves `-wal` and
# `-shm` files behind.
_OPEN: "set[SqliteStore]" = set()


def close_all() -> None:
    for store in list(_OPEN):
        store.close()


def _quote(path: str) -> str:
    """Percent-encode a path for a file: URI (as urllib.parse.quote does,
    without importing it)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "/-_.~") else
                   "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
                   for c in path)


class SqliteStore:
    def __init__(self, path: str, *, readonly: bool = False) -> None:
        _OPEN.add(self)
        self.path = path
        self.readonly = readonly
        self.uninitialized = False  # read-only, and the file holds no schema yet
        try:
            if readonly:
                self.db = self._connect_readonly(path)
            else:
                if not os.path.exists(path):
                    _create(path)
                self.db = _connect(path, "rw")
            self._check_or_init()
        except sqlite3.DatabaseError as exc:
            raise _unreadable(path, exc) from None

    @staticmethod
    def _connect_readonly(path: str) -> sqlite3.Connection:
        """A connection that never writes (query_only) and never creates the
        file (mode=rw). Not mode=ro where avoidable: a read-only connection
        to a WAL database leaves `-wal` and `-shm` files behind, and plan,
        status or a refused rollout must leave the state directory as it was.
        mode=ro remains the fallback for a database the user cannot write."""
        try:
            db = _connect(path, "rw")
            db.execute("PRAGMA query_only=ON")
            db.execute("PRAGMA application_id").fetchone()
            return db
        except sqlite3.OperationalError:
            return _connect(path, "ro")

    def _check_or_init(self) -> None:
        # One read transaction: three autocommit reads could straddle another
        # process's initialisation (application id 0, yet tables).
        self.db.execute("BEGIN")
        try:
            app_id = self.db.execute("PRAGMA application_id").fetchone()[0]
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            self.has_removed = self.db.execute(
                "SELECT count(*) FROM sqlite_master WHERE name='removed'").fetchone()[0] > 0
            self.has_history_index = self.db.execute(
                "SELECT count(*) FROM sqlite_master WHERE name='history_by_component'").fetchone()[0] > 0
        finally:
            self.db.execute("COMMIT")
        if app_id == 0 and tables == 0 and self.readonly:
            # An empty file: no state yet (an older atmosbuild made it empty).
            self.uninitialized = True
            return
        if app_id == 0 and tables == 0:
            self._init_in_place()
            app_id, version = APPLICATION_ID, SCHEMA_VERSION
            self.has_removed = True
        if app_id != APPLICATION_ID:
            raise StateError(f"{self.path} is not an atmosbuild state database (application id "
                             f"{app_id:#x}); move it away or set state_dir in atmos.yaml")
        if version != SCHEMA_VERSION:
            raise StateError(f"{self.path} has state schema {version}, this atmosbuild reads "
                             f"{SCHEMA_VERSION}; run `atmosbuild clean --cache` to start afresh")
        if not self.readonly:
            self.db.execute("PRAGMA synchronous=NORMAL")
            if not self.has_removed:  # a database from before SPEC 10: same schema plus a table
                with self._transaction():
                    self.db.execute(_SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS removed"):
                                            _SCHEMA.index("CREATE TABLE IF NOT EXISTS files")].rstrip().rstrip(";"))
                self.has_removed = True
            if not self.has_history_index:  # (`status --history` reads it per component)
                with self._transaction():
                    self.db.execute(_HISTORY_INDEX)
                self.has_history_index = True

    def _init_in_place(self) -> None:
        """Give an existing empty file the schema (new files get it in _create)."""
        with self._transaction():
            # Another process may have initialised it while we waited.
            if self.db.execute("PRAGMA application_id").fetchone()[0] == 0:
                _write_schema(self.db)
        # Switching to WAL needs the file to itself, and SQLite answers "locked"
        # at once rather than wait while another process reads it: retry.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    # -- reads ---------------------------------------------------------------

    @_guarded
    def snapshot(self, deployment: str, target: str, components=None) -> Snapshot:
        snap = Snapshot()
        where, args = "deployment=? AND target=?", [deployment, target]
        if components is not None:
            components = sorted(set(components))
            if len(components) > 500:  # SQLite's variable limit: filter here instead
                wanted = frozenset(components)
                full = self.snapshot(deployment, target)
                snap.applied = {c: a for c, a in full.applied.items() if c in wanted}
                snap.attempts = {c: a for c, a in full.attempts.items() if c in wanted}
                snap.removals = {c: a for c, a in full.removals.items() if c in wanted}
                return snap
            where += f" AND component IN ({','.join('?' * len(components))})"
            args += components
        for row in self.db.execute(
                "SELECT component, key, result, outputs, ingredients, finished, duration "
                f"FROM applied WHERE {where}", args):
            snap.applied[row[0]] = Applied(row[1], row[2], row[3], row[4],
                                           row[5], row[6])
        for row in self.db.execute(
                f"SELECT component, key, status, run_id, finished, duration FROM attempts WHERE {where}",
                args):
            snap.attempts[row[0]] = Attempt(*row[1:])
        if self.has_removed:
            for row in self.db.execute(
                    f"SELECT component, kind, run_id, reason, key, finished FROM removed WHERE {where}",
                    args):
                snap.removals[row[0]] = Removal(*row[1:])
        return snap

    @_guarded
    def applied_summary(self, deployment: str, target: str) -> dict[str, AppliedRow]:
        # (plain tuples, in AppliedRow's order: 5,000 of them on every no-op)
        return {row[0]: row[1:] for row in self.db.execute(
            "SELECT component, key, result, duration FROM applied WHERE deployment=? AND target=?",
            (deployment, target))}

    @_guarded
    def builds(self, keys: list[str]) -> dict[str, Built]:
        out: dict[str, Built] = {}
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                    "SELECT key, component, result, outputs, finished, duration FROM builds "
                    f"WHERE key IN ({marks})", chunk):
                out[row[0]] = Built(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])
        return out

    @_guarded
    def file_cache(self) -> dict[str, tuple]:
        return {row[0]: row[1:] for row in self.db.execute(
            "SELECT path, size, mtime_ns, ctime_ns, inode, digest FROM files")}

    @_guarded
    def history(self, deployment: str, target: str, component: str, limit: int = 20) -> list[HistoryEntry]:
        return [HistoryEntry._make(row) for row in self.db.execute(
            "SELECT run_id, key, status, finished, duration FROM history WHERE deployment=? AND "
            "target=? AND component=? ORDER BY rowid DESC LIMIT ?",
            (deployment, target, component, limit))]

    # -- writes: each is one short transaction --------------------------------

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction, taken up front (IMMEDIATE) so a concurrent
        writer waits on the busy timeout here, not halfway through."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _write(self, statements) -> None:
        with self._transaction():
            for sql, args in statements:
                self.db.execute(sql, args)

    @_guarded
    def record_success(self, deployment, target, component, applied: Applied, run_id: str,
                       build: bool) -> None:
        outputs = json.dumps(applied.outputs, sort_keys=True)
        stmts = [(
            "INSERT OR REPLACE INTO applied VALUES (?,?,?,?,?,?,?,?,?)",
            (deployment, target, component, applied.key, applied.result, outputs,
             json.dumps(applied.ingredients, sort_keys=True), applied.finished, applied.duration),
        )]
        if build:
            stmts.append(("INSERT OR REPLACE INTO builds VALUES (?,?,?,?,?,?)",
                          (applied.key, component, applied.result, outputs, applied.finished,
                           applied.duration)))
        attempt = Attempt(applied.key, "succeeded", run_id, applied.finished, applied.duration)
        stmts += self._attempt_statements(deployment, target, component, attempt)
        if self.has_removed:
            stmts.append(("DELETE FROM removed WHERE deployment=? AND target=? AND component=?",
                          (deployment, target, component)))
        self._write(stmts)

    @_guarded
    def record_removal(self, deployment, target, component, removal: Removal) -> None:
        place = (deployment, target, component)
        self._write([
            ("DELETE FROM applied WHERE deployment=? AND target=? AND component=?", place),
            ("INSERT OR REPLACE INTO removed VALUES (?,?,?,?,?,?,?,?)",
             (*place, removal.kind, removal.run_id, removal.reason, removal.key, removal.finished)),
            ("INSERT INTO history VALUES (?,?,?,?,?,?,?,?)",
             (removal.run_id, *place, removal.key, removal.kind, removal.finished, 0.0)),
        ])

    @_guarded
    def record_attempt(self, deployment, target, component, attempt: Attempt) -> None:
        self._write(self._attempt_statements(deployment, target, component, attempt))

    @staticmethod
    def _attempt_statements(deployment, target, component, a: Attempt):
        return [
            ("INSERT OR REPLACE INTO attempts VALUES (?,?,?,?,?,?,?,?)",
             (deployment, target, component, a.key, a.status, a.run_id, a.finished, a.duration)),
            ("INSERT INTO history VALUES (?,?,?,?,?,?,?,?)",
             (a.run_id, deployment, target, component, a.key, a.status, a.finished, a.duration)),
        ]

    @_guarded
    def save_file_cache(self, entries: Mapping[str, tuple]) -> None:
        if not entries:
            return
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?)",
                                [(path, *entry) for path, entry in entries.items()])

    def close(self) -> None:
        _OPEN.discard(self)
        db = getattr(self, "db", None)
        if db is not None:
            db.close()


def open_local(state_dir: str, *, readonly: bool = False):
    """The SQLite store of this machine. Read-only callers (plan, graph,
    status, explain, dry runs) never create the database: with none yet they
    get an empty in-memory store."""
    from .store import MemoryStore

    path = db_path(state_dir)
    if readonly and not os.path.exists(path):
        return MemoryStore()
    store = SqliteStore(path, readonly=readonly)
    if store.uninitialized:  # another rollout is creating it: nothing stored yet
        store.close()
        return MemoryStore()
    return store


# state dir -> atmos.yaml's `state:` for it (configure_store, called where the
# settings are read), so every command's open_store opens the same store.
_CONFIGURED: dict[str, str] = {}


def configure_store(state_dir: str, state: str) -> None:
    _CONFIGURED[state_dir] = state


def open_store(state_dir: str, *, readonly: bool = False, state: str | None = None):
    """The store a workspace is configured with: `state` (else what
    configure_store recorded for `state_dir`: atmos.yaml's `state:`),
    overridden by ATMOS_STATE: `sqlite` (the default, this machine's
    STATE_DIR/state.db) or a postgresql:// URL (postgres.py, a store shared
    by every machine pointed at it; its stat cache stays here). Read-only
    callers never create anything: with no state yet they get an empty
    in-memory store."""
    state = os.environ.get("ATMOS_STATE") or state or _CONFIGURED.get(state_dir) or "sqlite"
    if state == "sqlite":
        return open_local(state_dir, readonly=readonly)
    if not state.startswith(("postgresql://", "postgres://")):
        where = "ATMOS_STATE" if os.environ.get("ATMOS_STATE") else "state"
        raise StateError(f"{where}: expected 'sqlite' or postgresql://USER@HOST:PORT/DB")
    from .postgres import PostgresStore
    from .store import MemoryStore

    store = PostgresStore(state, state_dir, readonly=readonly)
    if store.uninitialized:  # no schema yet: nothing stored
        store.close()
        return MemoryStore()
    return store
