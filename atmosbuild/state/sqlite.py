"""The embedded store: one SQLite database, `STATE_DIR/state.db`.

WAL mode so readers never block the writer; every success is its own short
transaction committed the moment it is known (kill -9 loses at most the
action that was running); a busy timeout so concurrent rollouts of other
targets queue for the write lock instead of failing. The database carries an
application id so a foreign or corrupt file is refused with a clear error.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Mapping

from ..errors import StateError
from .store import Applied, Attempt, Built, Snapshot

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
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, digest TEXT NOT NULL) WITHOUT ROWID;
"""


def db_path(state_dir: str) -> str:
    return os.path.join(state_dir, "state.db")


class SqliteStore:
    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        try:
            if readonly:
                uri = "file:" + os.path.abspath(path) + "?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                                          isolation_level=None)
            else:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000,
                                          isolation_level=None)
            self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._check_or_init()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state database {path} is unreadable ({exc}); it is corrupt or not "
                             "an atmosbuild database: move it away or run `atmosbuild clean "
                             "--cache`") from None

    def _check_or_init(self) -> None:
        app_id = self.db.execute("PRAGMA application_id").fetchone()[0]
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and tables == 0 and not self.readonly:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have initialised it while we waited.
                if self.db.execute("PRAGMA application_id").fetchone()[0] == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self.db.execute(statement)
                    self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            app_id, version = APPLICATION_ID, SCHEMA_VERSION
        if app_id != APPLICATION_ID:
            raise StateError(f"{self.path} is not an atmosbuild state database (application id "
                             f"{app_id:#x}); move it away or set state_dir in atmos.yaml")
        if version != SCHEMA_VERSION:
            raise StateError(f"{self.path} has state schema {version}, this atmosbuild reads "
                             f"{SCHEMA_VERSION}; run `atmosbuild clean --cache` to start afresh")
        if not self.readonly:
            self.db.execute("PRAGMA synchronous=NORMAL")

    # -- reads ---------------------------------------------------------------

    def snapshot(self, deployment: str, target: str) -> Snapshot:
        snap = Snapshot()
        for row in self.db.execute(
                "SELECT component, key, result, outputs, ingredients, finished, duration "
                "FROM applied WHERE deployment=? AND target=?", (deployment, target)):
            snap.applied[row[0]] = Applied(row[1], row[2], json.loads(row[3]), json.loads(row[4]),
                                           row[5], row[6])
        for row in self.db.execute(
                "SELECT component, key, status, run_id, finished, duration FROM attempts "
                "WHERE deployment=? AND target=?", (deployment, target)):
            snap.attempts[row[0]] = Attempt(*row[1:])
        return snap

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

    def file_cache(self) -> dict[str, tuple]:
        return {row[0]: row[1:] for row in self.db.execute(
            "SELECT path, size, mtime_ns, ctime_ns, inode, digest FROM files")}

    def history(self, deployment: str, target: str, component: str, limit: int = 20) -> list[tuple]:
        return self.db.execute(
            "SELECT run_id, key, status, finished, duration FROM history WHERE deployment=? AND "
            "target=? AND component=? ORDER BY rowid DESC LIMIT ?",
            (deployment, target, component, limit)).fetchall()

    # -- writes: each is one short transaction --------------------------------

    def _write(self, statements) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                self.db.execute(sql, args)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

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
        self._write(stmts)

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

    def save_file_cache(self, entries: Mapping[str, tuple]) -> None:
        if not entries:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?)",
                                [(path, *entry) for path, entry in entries.items()])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()


def open_store(state_dir: str, *, readonly: bool = False):
    """The store for a workspace. Read-only callers (plan, graph, status,
    explain, dry runs) never create the database: with none yet they get an
    empty in-memory store."""
    path = db_path(state_dir)
    if readonly and not os.path.exists(path):
        from .store import MemoryStore

        return MemoryStore()
    return SqliteStore(path, readonly=readonly)
