"""The shared store: a team's record of what is applied, on PostgreSQL.

`state: postgresql://USER@HOST:PORT/DB[?schema=NAME]` (atmos.yaml, or
ATMOS_STATE). Everything that decides skipping lives in one PostgreSQL
schema (`atmosbuild` unless `?schema=` names another), shared by every
checkout that points there: applied records, the build cache, attempts and
their history. The stat cache is per machine and stays in the local SQLite
database (`file_cache`), opened only when asked for.

- Driver: pq.py, a thin client over libpq (the one psycopg ships or uses):
  psycopg's own API would cost every rollout 0.1 s of imports.
- Connection: one session per store, held for the rollout. The password
  comes from the URL (handed to libpq as a parameter, never inside a
  connection string we print), PGPASSWORD or ~/.pgpass (libpq's own
  lookup). Every message shows the URL masked and is scrubbed of the
  password (libpq's errors can quote connection parameters).
- Schema: created on first use in one transaction under a transaction-level
  advisory lock, so two first users do not race; a `meta` table holds the
  owner and the version. A newer version, or a schema whose tables are not
  ours, is refused with one `error:` line and never altered. Older versions
  are migrated forward (MIGRATIONS).
- Writes: each success is one statement (data-modifying CTEs: the applied
  row, the build, the attempt and its history line), so one round trip and
  one transaction; UPSERTs, so concurrent rollouts never lose an update.
- Reads: a rollout reads the applied rows of a deployment+target in one
  query (`snapshot`, `applied_summary`), builds by key in one query.
- Lock (`deployment_lock`): `pg_try_advisory_lock` on this same session, so
  the lock dies with the session (holder exits, is killed, or loses its
  connection; server-side TCP keepalives bound the last case) and no write
  can happen after the lock is gone. The holder's host, pid, start time and
  label go into `locks`, so a second rollout names it. Actions inherit a
  duplicate of the session's socket (`HeldSession.fds`, as they inherit the
  local lock's descriptor): after a kill -9 of atmosbuild the server keeps
  the session, and the lock, until the last action exits.
- Losing the server: any failure of a query after the store was opened is
  `StoreLost` (one `error:` line; the rollout stops its actions as for
  Ctrl-C). Nothing committed is lost: every success was its own commit.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Callable, Iterator, Mapping

from ..errors import LockedError, StateError, StoreLost
from .store import Applied, Attempt, Built, HistoryEntry, Removal, Snapshot

DEFAULT_SCHEMA = "atmosbuild"
APPLICATION = "atmosbuild"
SCHEMA_VERSION = 2
LOCK_POLL_SECONDS = 0.25
WATCH_SECONDS = 5.0  # while actions run, the session is checked this often
INSTALL_HINT = "pip install 'atmosbuild[postgres]'"
# Server-side keepalives (user-settable): a holder whose machine vanishes
# without closing its connection loses the lock in about 25 s, not the
# operating system's default of two hours. Floats as the shortest text that
# reads back exactly (PostgreSQL 12's default, which a server may lower).
SESSION_OPTIONS = ("-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 "
                   "-c tcp_keepalives_count=3 -c extra_float_digits=3")
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")

# The tables of each version, in order. A migration from version N to N+1 is
# MIGRATIONS[N] (MIGRATIONS[0] creates version 1 from nothing).
MIGRATIONS: list[list[str]] = [[
    """CREATE TABLE {s}.meta (name text PRIMARY KEY, value text NOT NULL)""",
    """CREATE TABLE {s}.applied (
        deployment text NOT NULL, target text NOT NULL, component text NOT NULL,
        key text NOT NULL, result text NOT NULL, outputs text NOT NULL,
        ingredients text NOT NULL, finished double precision NOT NULL,
        duration double precision NOT NULL,
        PRIMARY KEY (deployment, target, component))""",
    """CREATE TABLE {s}.builds (
        key text PRIMARY KEY, component text NOT NULL, result text NOT NULL,
        outputs text NOT NULL, finished double precision NOT NULL,
        duration double precision NOT NULL)""",
    """CREATE TABLE {s}.attempts (
        deployment text NOT NULL, target text NOT NULL, component text NOT NULL,
        key text NOT NULL, status text NOT NULL, run_id text NOT NULL,
        finished double precision NOT NULL, duration double precision NOT NULL,
        PRIMARY KEY (deployment, target, component))""",
    """CREATE TABLE {s}.history (
        id bigserial PRIMARY KEY, run_id text NOT NULL, deployment text NOT NULL,
        target text NOT NULL, component text NOT NULL, key text NOT NULL,
        status text NOT NULL, finished double precision NOT NULL,
        duration double precision NOT NULL)""",
    """CREATE INDEX ON {s}.history (deployment, target, component, id)""",
    """CREATE TABLE {s}.locks (
        deployment text NOT NULL, target text NOT NULL, backend_pid integer NOT NULL,
        host text NOT NULL, pid integer NOT NULL, started double precision NOT NULL,
        label text NOT NULL, PRIMARY KEY (deployment, target))""",
], [  # 1 -> 2: why a component is no longer applied (destroy, drift: SPEC 10)
    """CREATE TABLE {s}.removed (
        deployment text NOT NULL, target text NOT NULL, component text NOT NULL,
        kind text NOT NULL, run_id text NOT NULL, reason text NOT NULL, key text NOT NULL,
        finished double precision NOT NULL, PRIMARY KEY (deployment, target, component))""",
]]
assert len(MIGRATIONS) == SCHEMA_VERSION


# -- the URL ---------------------------------------------------------------------

class StateURL:
    """A `postgresql://` state URL taken apart: what libpq gets (without the
    password and our own `schema` parameter), the password, the schema, and
    the URL as shown to people (password masked)."""

    def __init__(self, url: str) -> None:
        from urllib.parse import parse_qsl, quote, unquote, urlencode

        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("postgresql", "postgres"):
            raise StateError("state: expected 'sqlite' or postgresql://USER@HOST:PORT/DB")
        netloc, slash, path = rest.partition("/")
        path, _, query = path.partition("?")
        userinfo, at, hosts = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        params = parse_qsl(query, keep_blank_values=True)
        self.password = unquote(password) if colon else None
        self.secrets = [s for s in (password, self.password) if s]
        self.schema = DEFAULT_SCHEMA
        kept = []
        for name, value in params:
            if name == "schema":
                self.schema = value
            elif name == "password":
                self.password = value
                self.secrets += [value, quote(value, safe="")]
            else:
                kept.append((name, value))
        self.secrets = sorted({s for s in self.secrets if s}, key=len, reverse=True)
        auth = f"{user}{at}" if at else ""
        query = f"?{urlencode(kept)}" if kept else ""
        self.conninfo = f"postgresql://{auth}{hosts}{slash}{path}{query}"
        masked_auth = f"{user}:***@" if self.password is not None else auth
        shown = [(n, "***" if n == "password" else v) for n, v in params]
        self.shown = (f"{scheme}://{masked_auth}{hosts}{slash}{path}"
                      + (f"?{urlencode(shown, safe='*')}" if shown else ""))
        if not _SCHEMA_NAME.match(self.schema):
            raise StateError(f"state {self.shown}: schema must be a plain SQL name "
                             "(letters, digits, _; at most 63)")

    def scrub(self, text: str) -> str:
        """`text` with every trace of the password replaced."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def describe(self, exc: BaseException) -> str:
        """A driver error as one line, without the password."""
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return self.scrub("; ".join(lines) or type(exc).__name__)


def _hostname() -> str:
    """This machine's name (as socket.gethostname, without importing socket)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def _version(meta: Mapping[str, str]) -> int:
    try:
        return int(meta.get("version", ""))
    except ValueError:
        return 0


def lock_key(schema: str, deployment: str, target: str) -> int:
    """The advisory lock of a deployment+target: a stable signed 64-bit hash."""
    import xxhash

    value = xxhash.xxh3_64_intdigest(f"atmosbuild\0{schema}\0{deployment}\0{target}".encode())
    return value - (1 << 64) if value >= 1 << 63 else value


# -- the store ----------------------------------------------------------------------

class HeldSession:
    """A deployment lock held on a PostgreSQL session: `fds` are what an
    action process inherits to keep it held (as run/lock.py's HeldLock)."""

    def __init__(self, fds: tuple[int, ...]) -> None:
        self.fds = fds


_OPEN: "set[PostgresStore]" = set()


def close_all() -> None:
    for store in list(_OPEN):
        store.close()


def _driver():
    from . import pq

    try:
        pq.load()
    except pq.Missing as exc:
        if str(exc):
            raise StateError(f"state: a postgresql:// URL needs libpq, which psycopg is installed "
                             f"without ({exc}): {INSTALL_HINT}") from None
        raise StateError(f"state: a postgresql:// URL needs psycopg: {INSTALL_HINT}") from None
    return pq


# SQLSTATEs the schema check tells apart
UNDEFINED_TABLE, INVALID_SCHEMA_NAME = "42P01", "3F000"
UNDEFINED_COLUMN, DATATYPE_MISMATCH = "42703", "42804"


class PostgresStore:
    """The Store interface (store.py) on one PostgreSQL session."""

    def __init__(self, url: str, state_dir: str, *, readonly: bool = False) -> None:
        self.url = StateURL(url)
        self.state_dir = state_dir
        self.readonly = readonly
        self.uninitialized = False  # read-only, and no schema yet: nothing stored
        self._local = None  # the local SQLite store, for the stat cache
        self._locks: list[int] = []
        self.lost: str | None = None  # why the session was found gone (watch)
        self._known_builds: dict[str, tuple] = {}  # key -> builds row, read with a snapshot
        self._dup_fd: int | None = None  # the socket, for actions to inherit (_session_fds)
        self.version = SCHEMA_VERSION
        pq = self.pq = _driver()
        self.s = f'"{self.url.schema}"'
        try:
            self.db = pq.Connection({
                "dbname": self.url.conninfo,  # (expanded by libpq; what follows overrides it)
                "password": self.url.password, "connect_timeout": "10",
                "application_name": f"atmosbuild {_hostname()} pid {os.getpid()}"[:63],
                "options": SESSION_OPTIONS, "client_encoding": "UTF8",
                # (client side too: a query to a vanished server fails in ~25 s)
                "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
                "keepalives_count": "3"}, timeout=10)
        except pq.Error as exc:
            reason = self.url.describe(exc)
            if "no password supplied" in reason:
                reason += " (give it in the URL, PGPASSWORD or ~/.pgpass)"
            raise StateError(f"cannot connect to the state store {self.url.shown}: {reason}") from None
        _OPEN.add(self)
        try:
            self._check_or_init()
        except pq.Error as exc:
            self.close()
            raise StateError(f"state store {self.url.shown}: {self.url.describe(exc)}") from None
        except BaseException:
            self.close()
            raise

    # -- the schema ------------------------------------------------------------

    def _meta(self) -> dict[str, str] | None:
        """The meta rows, or None when the schema or its meta table is missing."""
        try:
            rows = self.db.execute(f"SELECT name, value FROM {self.s}.meta")
        except self.pq.Error as exc:
            if exc.sqlstate in (UNDEFINED_TABLE, INVALID_SCHEMA_NAME):
                return None
            if exc.sqlstate in (UNDEFINED_COLUMN, DATATYPE_MISMATCH):
                return {}  # a `meta` table, not ours
            raise
        return {str(name): str(value) for name, value in rows}

    def _check_or_init(self) -> None:
        meta = self._meta()  # the common case: one query, no lock
        if meta is None and self.readonly:
            if not self._schema_tables():  # no schema, or an empty one
                self.uninitialized = True
                return
            meta = {}  # tables, but not ours: refused below
        if meta is None or (meta.get("application") == APPLICATION
                            and _version(meta) < SCHEMA_VERSION and not self.readonly):
            meta = self._create_or_migrate()
        self._check_meta(meta)

    def _schema_tables(self) -> list[str] | None:
        """The schema's tables (None when there is no schema)."""
        found = self.db.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                (self.url.schema,))
        if not found:
            return None
        return [r[0] for r in self.db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.url.schema,))]

    def _check_meta(self, meta: Mapping[str, str]) -> None:
        where = f"state store {self.url.shown}, schema {self.url.schema}"
        if meta.get("application") != APPLICATION:
            raise StateError(f"{where} holds tables that are not atmosbuild's; nothing was "
                             "changed: use another schema (?schema=NAME in the state URL)")
        version = _version(meta)
        if version < 1:
            raise StateError(f"{where} has no valid version; nothing was changed: use another "
                             "schema (?schema=NAME in the state URL)")
        if version > SCHEMA_VERSION:
            raise StateError(f"{where} has state schema version {version}, this atmosbuild "
                             f"reads up to {SCHEMA_VERSION}: upgrade atmosbuild (nothing was changed)")
        self.version = version  # below SCHEMA_VERSION only for readers: the next writer migrates

    def _create_or_migrate(self) -> dict[str, str]:
        """Create the schema, or bring it forward, in one transaction that
        first takes an advisory lock: concurrent first users queue here, and
        each looks again once it holds the lock."""
        with self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)",
                            (lock_key(self.url.schema, "", "schema"),))
            meta = self._meta_in_transaction()
            if meta is None:
                tables = self._schema_tables()
                if tables:  # somebody else's schema: touch nothing
                    return {}
                if tables is None:
                    self.db.execute(f"CREATE SCHEMA {self.s}")
                version = 0
            else:
                if meta.get("application") != APPLICATION:
                    return meta
                version = _version(meta)
                if version >= SCHEMA_VERSION or version < 1:
                    return meta
            for step in MIGRATIONS[version:]:
                for statement in step:
                    self.db.execute(statement.format(s=self.s))
            self.db.execute(
                f"INSERT INTO {self.s}.meta VALUES ('application', %s), ('version', %s) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (APPLICATION, str(SCHEMA_VERSION)))
        return {"application": APPLICATION, "version": str(SCHEMA_VERSION)}

    def _meta_in_transaction(self) -> dict[str, str] | None:
        # A failed statement would abort the transaction: ask the catalog first.
        columns = {r[0] for r in self.db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = 'meta'", (self.url.schema,))}
        if not columns:
            return None
        if not {"name", "value"} <= columns:
            return {}  # a `meta` table, not ours
        return {str(n): str(v) for n, v in self.db.execute(f"SELECT name, value FROM {self.s}.meta")}

    # -- failures -----------------------------------------------------------------

    @contextlib.contextmanager
    def _query(self, what: str) -> Iterator[None]:
        try:
            yield
        except self.pq.Error as exc:
            if self.lost:  # the watch saw it first: say it as it did
                raise StoreLost(self.lost) from None
            raise StoreLost(f"state store {self.url.shown}: {what} failed: "
                            f"{self.url.describe(exc)} (what was recorded before stays; the next "
                            "rollout resumes from there)") from None

    # -- reads ------------------------------------------------------------------

    def snapshot(self, deployment: str, target: str, components=None) -> Snapshot:
        snap = Snapshot()
        where, args = "deployment = %s AND target = %s", [deployment, target]
        if components is not None:
            where += " AND component = ANY(%s)"
            args.append(sorted(set(components)))
        with self._query("reading the applied records"):
            for row in self.db.execute(
                    "SELECT component, key, result, outputs, ingredients, finished, duration "
                    f"FROM {self.s}.applied WHERE {where}", args):
                snap.applied[row[0]] = Applied(row[1], row[2], row[3], row[4], row[5], row[6])
            for row in self.db.execute(
                    "SELECT component, key, status, run_id, finished, duration "
                    f"FROM {self.s}.attempts WHERE {where}", args):
                snap.attempts[row[0]] = Attempt(*row[1:])
            if self.version >= 2:  # (a reader leaves an older schema as it is)
                for row in self.db.execute(
                        "SELECT component, kind, run_id, reason, key, finished "
                        f"FROM {self.s}.removed WHERE {where}", args):
                    snap.removals[row[0]] = Removal(*row[1:])
            # The builds behind these rows, for `builds`: a build-mode node
            # that is up to date asks for exactly its applied key, and one
            # round trip per node would cost a 5,000-node rollout seconds.
            # (A build never changes under its key: safe to keep.)
            for row in self.db.execute(
                    "SELECT key, component, result, outputs, finished, duration "
                    f"FROM {self.s}.builds WHERE key IN (SELECT key FROM {self.s}.applied "
                    f"WHERE {where})", args):
                self._known_builds[row[0]] = row
        return snap

    def applied_summary(self, deployment: str, target: str) -> dict[str, tuple[str, str, float]]:
        """Every no-op reads this: thousands of rows as one text value (one
        libpq call, then str.split, instead of a call per value, ~20 ms at
        5,000 rows), fields and rows joined by ASCII's unit and record
        separators. The server says whether any value holds one of them
        (none of ours does: ids have no control characters, keys and
        digests are hex); then the rows come one by one instead."""
        where = "FROM {}.applied WHERE deployment = %s AND target = %s".format(self.s)
        args = (deployment, target)
        with self._query("reading the applied records"):
            [(clash, text)] = self.db.execute(
                "SELECT coalesce(bool_or(strpos(component || key || result, E'\\x1f') > 0 "
                "OR strpos(component || key || result, E'\\x1e') > 0), false), "
                "string_agg(concat_ws(E'\\x1f', component, key, result, duration), E'\\x1e') "
                + where, args)
            if clash:
                return {row[0]: row[1:] for row in self.db.execute(
                    "SELECT component, key, result, duration " + where, args)}
        if text is None:
            return {}
        out = {}
        for record in text.split("\x1e"):
            component, key, result, duration = record.split("\x1f")
            out[component] = (key, result, float(duration))
        return out

    def builds(self, keys: list[str]) -> dict[str, Built]:
        import json

        known = self._known_builds
        rows = [known[k] for k in keys if k in known]
        missing = [k for k in keys if k not in known]
        if missing:
            with self._query("reading the build cache"):
                rows += self.db.execute(
                    "SELECT key, component, result, outputs, finished, duration "
                    f"FROM {self.s}.builds WHERE key = ANY(%s)", (missing,))
        return {r[0]: Built(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows}

    def history(self, deployment: str, target: str, component: str, limit: int = 20) -> list[HistoryEntry]:
        with self._query("reading the history"):
            return [HistoryEntry._make(row) for row in self.db.execute(
                f"SELECT run_id, key, status, finished, duration FROM {self.s}.history "
                "WHERE deployment = %s AND target = %s AND component = %s ORDER BY id DESC LIMIT %s",
                (deployment, target, component, limit))]

    # -- writes: each success is one statement, one transaction -----------------

    def _attempt_ctes(self, deployment, target, component, a: Attempt) -> tuple[list[str], list]:
        return ([
            f"""t AS (INSERT INTO {self.s}.attempts VALUES (%s,%s,%s,%s,%s,%s,%s,%s)
                ON CONFLICT (deployment, target, component) DO UPDATE SET key = excluded.key,
                status = excluded.status, run_id = excluded.run_id, finished = excluded.finished,
                duration = excluded.duration)""",
            f"""h AS (INSERT INTO {self.s}.history
                (run_id, deployment, target, component, key, status, finished, duration)
                VALUES (%s,%s,%s,%s,%s,%s,%s,%s))""",
        ], [deployment, target, component, a.key, a.status, a.run_id, a.finished, a.duration,
            a.run_id, deployment, target, component, a.key, a.status, a.finished, a.duration])

    def record_success(self, deployment, target, component, applied: Applied, run_id: str,
                       build: bool) -> None:
        import json

        outputs = json.dumps(applied.outputs, sort_keys=True)
        ctes = [f"""a AS (INSERT INTO {self.s}.applied VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)
            ON CONFLICT (deployment, target, component) DO UPDATE SET key = excluded.key,
            result = excluded.result, outputs = excluded.outputs,
            ingredients = excluded.ingredients, finished = excluded.finished,
            duration = excluded.duration)"""]
        args = [deployment, target, component, applied.key, applied.result, outputs,
                json.dumps(applied.ingredients, sort_keys=True), applied.finished, applied.duration]
        if build:
            ctes.append(f"""b AS (INSERT INTO {self.s}.builds VALUES (%s,%s,%s,%s,%s,%s)
                ON CONFLICT (key) DO UPDATE SET component = excluded.component,
                result = excluded.result, outputs = excluded.outputs,
                finished = excluded.finished, duration = excluded.duration)""")
            args += [applied.key, component, applied.result, outputs, applied.finished,
                     applied.duration]
        attempt = Attempt(applied.key, "succeeded", run_id, applied.finished, applied.duration)
        more, more_args = self._attempt_ctes(deployment, target, component, attempt)
        ctes.append(f"""r AS (DELETE FROM {self.s}.removed WHERE deployment = %s AND target = %s
            AND component = %s)""")
        args += [deployment, target, component]
        self._write(ctes + more, args + more_args, f"recording {component}")

    def record_removal(self, deployment, target, component, removal: Removal) -> None:
        place = [deployment, target, component]
        self._write([
            f"""a AS (DELETE FROM {self.s}.applied WHERE deployment = %s AND target = %s
                AND component = %s)""",
            f"""r AS (INSERT INTO {self.s}.removed VALUES (%s,%s,%s,%s,%s,%s,%s,%s)
                ON CONFLICT (deployment, target, component) DO UPDATE SET kind = excluded.kind,
                run_id = excluded.run_id, reason = excluded.reason, key = excluded.key,
                finished = excluded.finished)""",
            f"""h AS (INSERT INTO {self.s}.history
                (run_id, deployment, target, component, key, status, finished, duration)
                VALUES (%s,%s,%s,%s,%s,%s,%s,0))""",
        ], [*place, *place, removal.kind, removal.run_id, removal.reason, removal.key, removal.finished,
            removal.run_id, *place, removal.key, removal.kind, removal.finished],
            f"recording the removal of {component}")

    def record_attempt(self, deployment, target, component, attempt: Attempt) -> None:
        ctes, args = self._attempt_ctes(deployment, target, component, attempt)
        self._write(ctes, args, f"recording the attempt of {component}")

    def _write(self, ctes: list[str], args: list, what: str) -> None:
        # One statement: PostgreSQL runs every data-modifying CTE, atomically.
        with self._query(what):
            self.db.execute("WITH " + ",\n".join(ctes) + " SELECT 1", args)

    # -- the per-machine stat cache: local ---------------------------------------

    def _local_store(self):
        if self._local is None:
            from .sqlite import open_local

            self._local = open_local(self.state_dir, readonly=self.readonly)
        return self._local

    def file_cache(self) -> dict[str, tuple]:
        return self._local_store().file_cache()

    def save_file_cache(self, entries: Mapping[str, tuple]) -> None:
        if entries:
            self._local_store().save_file_cache(entries)

    # -- noticing a lost session while actions run ----------------------------------

    def watch(self, on_lost: Callable[[], None], interval: float = WATCH_SECONDS) -> Callable[[], None]:
        """Check the session every `interval` seconds from a thread; when it
        is gone (and the lock with it), set `lost` and call `on_lost` once.
        Without this a long action would run on, unrecorded and unlocked,
        until it finished. Returns the function that stops watching."""
        import threading

        stopped = threading.Event()
        guard = threading.Lock()  # once stop() returns, on_lost is never called

        def loop() -> None:
            while not stopped.wait(interval):
                try:
                    self.db.execute("SELECT 1")
                except self.pq.Error as exc:
                    with guard:
                        if stopped.is_set():
                            return
                        self.lost = (f"state store {self.url.shown}: the connection was lost: "
                                     f"{self.url.describe(exc)} (what was recorded before stays; "
                                     "the next rollout resumes from there)")
                        on_lost()
                    return

        def stop() -> None:
            with guard:
                stopped.set()

        threading.Thread(target=loop, name="atmosbuild store watch", daemon=True).start()
        return stop

    # -- the deployment+target lock ------------------------------------------------

    @contextlib.contextmanager
    def deployment_lock(self, deployment: str, target: str, label: str, *, wait: bool = False,
                        on_wait: Callable[[str], None] | None = None) -> Iterator["HeldSession"]:
        key = lock_key(self.url.schema, deployment, target)
        who = (deployment, target, _hostname(), os.getpid(), time.time(), label)
        got = self._try_lock(key, who, "taking the lock")
        if not got:
            holder = self._holder(deployment, target, key)
            if not wait:
                raise LockedError(f"{label} is locked by {holder}; use --wait to wait for it")
            if on_wait:
                on_wait(f"waiting for {label}, locked by {holder}")
            while not got:
                time.sleep(LOCK_POLL_SECONDS)
                got = self._try_lock(key, who, "waiting for the lock")
        self._locks.append(key)
        try:
            yield HeldSession(self._session_fds())
        finally:
            self._unlock(key)

    def _try_lock(self, key: int, who: tuple, what: str) -> bool:
        """Take the advisory lock and, if it was free, name its holder in
        `locks`: one statement, one round trip (the holder's row is not
        worth a disk flush: a lost one only blurs a message)."""
        try:
            with self._query(what):
                row = self.db.execute(
                    "WITH got AS (SELECT pg_try_advisory_lock(%s) AS ok, "
                    "set_config('synchronous_commit', 'off', true)) "
                    f"INSERT INTO {self.s}.locks SELECT %s, %s, pg_backend_pid(), %s, %s, %s, %s "
                    "FROM got WHERE ok ON CONFLICT (deployment, target) DO UPDATE SET "
                    "backend_pid = excluded.backend_pid, host = excluded.host, pid = excluded.pid, "
                    "started = excluded.started, label = excluded.label RETURNING 1",
                    (key, *who))
        except StoreLost:
            self._unlock(key)  # (a session lock outlives a failed statement)
            raise
        return bool(row)

    def _session_fds(self) -> tuple[int, ...]:
        """A duplicate of the session's socket, for the actions to inherit
        (as they inherit the local lock's descriptor, run/lock.py): if
        atmosbuild is killed, the connection, and with it the advisory lock,
        stays open until the last action exits; the server sees the session
        end only then. A normal close sends libpq's Terminate message, which
        ends the session whoever still holds the socket. At or above 64,
        where a script's own `exec 3>…` does not reach."""
        if self._dup_fd is None:
            import fcntl

            try:
                self._dup_fd = fcntl.fcntl(self.db.fileno(), fcntl.F_DUPFD_CLOEXEC, 64)
            except (OSError, self.pq.Error):
                return ()
        return (self._dup_fd,)

    def _unlock(self, key: int) -> None:
        if key in self._locks:
            self._locks.remove(key)
        if self.db.closed:
            return
        try:
            self.db.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except self.pq.Error:
            pass  # the session is gone, and the lock with it

    def _holder(self, deployment: str, target: str, key: int) -> str:
        """Who holds the lock: the row its holder wrote, if the session that
        holds the lock now is the one that wrote it."""
        if self.uninitialized:
            return "another rollout"
        with self._query("reading the lock holder"):
            row = self.db.execute(
                f"SELECT host, pid, started, label FROM {self.s}.locks WHERE deployment = %s "
                "AND target = %s AND backend_pid IN (SELECT pid FROM pg_locks WHERE "
                "locktype = 'advisory' AND granted AND objsubid = 1 AND classid = %s::bigint::oid "
                "AND objid = %s::bigint::oid)",
                (deployment, target, (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF))
        if not row:
            return "another rollout"
        host, pid, started, holder_label = row[0]
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
        holder = f"pid {pid} on host {host} (started {when}, {holder_label})"
        from ..procs import alive

        if host == _hostname() and not alive(pid):
            holder += ", which has exited, but actions it started still run"
        return holder

    def close(self) -> None:
        _OPEN.discard(self)
        db = getattr(self, "db", None)
        if db is not None and not db.closed:
            try:
                db.close()  # (Terminate first: the session ends even if a child holds the socket)
            except Exception:
                pass
        if getattr(self, "_dup_fd", None) is not None:
            os.close(self._dup_fd)
            self._dup_fd = None
        if self._local is not None:
            self._local.close()
            self._local = None
