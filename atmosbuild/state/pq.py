"""A thin PostgreSQL client over libpq (ctypes): what postgres.py runs, no more.

Why not psycopg's API: importing psycopg costs 0.10-0.15 s (its adapters,
asyncio, logging, importlib.metadata...), half of a 5,000-component no-op,
while the store runs a dozen fixed statements with text, integer, float and
text-array parameters. libpq does the hard parts (connecting, auth, SSL,
PGPASSWORD and ~/.pgpass, keepalives, the protocol); this module only sends
statements and reads their rows: ctypes and libpq load in ~5 ms.

Which libpq: the one psycopg would use. psycopg[binary] (the `postgres`
extra) bundles its own in the psycopg_binary wheel; a psycopg without the
binary wheel uses the system's. With neither psycopg installed, `load`
raises `Missing` (postgres.py names the extra).

Waits happen in Python (select on the session's socket), as psycopg does:
Ctrl-C interrupts a connect or a query at once; an interrupted query is
cancelled and its results drained, so the session stays usable. One lock per
connection: the store's watch thread and the rollout share the session.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time

# libpq's enums (libpq-fe.h)
CONNECTION_OK, CONNECTION_BAD = 0, 1
POLLING_FAILED, POLLING_READING, POLLING_WRITING, POLLING_OK = 0, 1, 2, 3
PGRES_EMPTY_QUERY, PGRES_COMMAND_OK, PGRES_TUPLES_OK = 0, 1, 2
PGRES_COPY_OUT, PGRES_COPY_IN, PGRES_BAD_RESPONSE = 3, 4, 5
DIAG_SQLSTATE, DIAG_MESSAGE_PRIMARY = ord("C"), ord("M")

# Parameter types (pg_type oids): a str goes as `unknown`, so the server types
# it from where it is used (as psycopg sends it).
OID_UNKNOWN, OID_BOOL, OID_INT8, OID_FLOAT8, OID_TEXT_ARRAY = 0, 16, 20, 701, 1009
_INT_OIDS = frozenset((20, 21, 23, 26))  # int8, int2, int4, oid
_FLOAT_OIDS = frozenset((700, 701))


class Error(Exception):
    """A failed connect or statement: the server's (or libpq's) message, and
    the SQLSTATE when the server sent one."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class Missing(Exception):
    """No libpq to be found: psycopg is not installed (empty message), or it
    is and its libpq is not where psycopg would load it from."""


# -- finding and binding libpq ---------------------------------------------------------

_LIB = None


def _candidates() -> list[str]:
    """libpq as the psycopg_binary wheel ships it (auditwheel: next to the
    package in psycopg_binary.libs; delocate on macOS: psycopg_binary/.dylibs),
    then the system's when psycopg itself is installed."""
    found = []
    for entry in sys.path:
        for sub in ("psycopg_binary.libs", os.path.join("psycopg_binary", ".dylibs")):
            folder = os.path.join(entry or ".", sub)
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            found += sorted(os.path.join(folder, n) for n in names if n.startswith("libpq"))
        if found:
            return found
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        return []
    if sys.platform == "darwin":
        return ["libpq.5.dylib", "libpq.dylib"]
    if sys.platform == "win32":
        return ["libpq.dll"]
    return ["libpq.so.5", "libpq.so"]


def load():
    """libpq, bound (once per process)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    import ctypes

    lib = None
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError:
            continue
    if lib is None:
        import importlib.util

        if importlib.util.find_spec("psycopg") is not None:  # (a libpq under another name)
            import ctypes.util

            name = ctypes.util.find_library("pq")
            if name:
                try:
                    lib = ctypes.CDLL(name)
                except OSError:
                    pass
        if lib is None:
            raise Missing("no libpq found" if importlib.util.find_spec("psycopg") else "")
    P, I, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    signatures = {
        "PQconnectStartParams": (P, [P, P, I]),
        "PQconnectPoll": (I, [P]),
        "PQstatus": (I, [P]),
        "PQerrorMessage": (S, [P]),
        "PQsocket": (I, [P]),
        "PQfinish": (None, [P]),
        "PQsetnonblocking": (I, [P, I]),
        "PQsendQuery": (I, [P, S]),
        "PQsendQueryParams": (I, [P, S, I, P, P, P, P, I]),
        "PQflush": (I, [P]),
        "PQconsumeInput": (I, [P]),
        "PQisBusy": (I, [P]),
        "PQgetResult": (P, [P]),
        "PQresultStatus": (I, [P]),
        "PQresultErrorField": (S, [P, I]),
        "PQresultErrorMessage": (S, [P]),
        "PQntuples": (I, [P]),
        "PQnfields": (I, [P]),
        "PQftype": (ctypes.c_uint, [P, I]),
        "PQgetvalue": (S, [P, I, I]),
        "PQgetisnull": (I, [P, I, I]),
        "PQclear": (None, [P]),
        "PQgetCancel": (P, [P]),
        "PQcancel": (I, [P, S, I]),
        "PQfreeCancel": (None, [P]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    lib.ctypes = ctypes
    _LIB = lib
    return lib


# -- parameters -----------------------------------------------------------------------

def _array_item(value) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _param(value) -> tuple[int, bytes | None]:
    if value is None:
        return OID_UNKNOWN, None
    if isinstance(value, bool):
        return OID_BOOL, b"t" if value else b"f"
    if isinstance(value, int):
        return OID_INT8, str(value).encode()
    if isinstance(value, float):
        return OID_FLOAT8, repr(value).encode()
    if isinstance(value, (list, tuple)):
        return OID_TEXT_ARRAY, ("{" + ",".join(map(_array_item, value)) + "}").encode()
    return OID_UNKNOWN, str(value).encode()


def _placeholders(sql: str) -> str:
    """psycopg's `%s` (and `%%`) as libpq's `$1`, `$2`..."""
    parts = sql.split("%")
    out, n, i = [parts[0]], 0, 1
    while i < len(parts):
        part = parts[i]
        if part == "" and i + 1 < len(parts):  # %%
            out.append("%" + parts[i + 1])
            i += 2
            continue
        if not part.startswith("s"):
            raise ValueError(f"only %s placeholders are supported: {sql!r}")
        n += 1
        out.append(f"${n}{part[1:]}")
        i += 1
    return "".join(out)


# -- a session -------------------------------------------------------------------------

def _wait(fd: int, write: bool, deadline: float | None) -> bool:
    """Wait until `fd` is readable (or writable); False when past `deadline`.
    True also when it is readable while we wait to write (the caller reads)."""
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    if hasattr(select, "poll"):  # (select() cannot take a descriptor above 1023)
        poller = select.poll()
        poller.register(fd, select.POLLIN | (select.POLLOUT if write else 0))
        return bool(poller.poll(None if timeout is None else timeout * 1000))
    readable, writable, _ = select.select([fd], [fd] if write else [], [], timeout)
    return bool(readable or writable)


class Connection:
    """One session. `execute(sql, args)` -> the rows of its (last) result, as
    tuples of str, int, float, bool or None."""

    def __init__(self, params: dict[str, str], *, timeout: float | None = None) -> None:
        lib = self._lib = load()
        ctypes = lib.ctypes
        self._lock = threading.Lock()
        self.closed = True
        items = [(k, str(v)) for k, v in params.items() if v is not None]
        keys = (ctypes.c_char_p * (len(items) + 1))(*[k.encode() for k, _ in items], None)
        values = (ctypes.c_char_p * (len(items) + 1))(*[v.encode() for _, v in items], None)
        self._conn = lib.PQconnectStartParams(keys, values, 1)
        if not self._conn:
            raise MemoryError("libpq could not allocate a connection")
        self.closed = False
        try:
            self._connect(timeout)
            if lib.PQsetnonblocking(self._conn, 1) != 0:
                raise self._conn_error()
        except BaseException:
            self.close()
            raise

    def _connect(self, timeout: float | None) -> None:
        lib, conn = self._lib, self._conn
        if lib.PQstatus(conn) == CONNECTION_BAD:
            raise self._conn_error()
        deadline = None if timeout is None else time.monotonic() + timeout
        state = POLLING_WRITING
        while state != POLLING_OK:
            if state == POLLING_FAILED:
                raise self._conn_error()
            if not _wait(lib.PQsocket(conn), state == POLLING_WRITING, deadline):
                raise Error("timeout expired")
            state = lib.PQconnectPoll(conn)

    def _conn_error(self) -> Error:
        message = self._lib.PQerrorMessage(self._conn) or b""
        return Error(message.decode("utf-8", "replace").strip() or "connection failed")

    def fileno(self) -> int:
        fd = self._lib.PQsocket(self._conn) if not self.closed else -1
        if fd < 0:
            raise Error("the connection is closed")
        return fd

    def execute(self, sql: str, args=()) -> list[tuple]:
        with self._lock:
            if self.closed:
                raise Error("the connection is closed")
            lib, conn = self._lib, self._conn
            if args:
                ctypes = lib.ctypes
                typed = [_param(a) for a in args]
                n = len(typed)
                oids = (ctypes.c_uint * n)(*[t for t, _ in typed])
                values = (ctypes.c_char_p * n)(*[v for _, v in typed])
                sent = lib.PQsendQueryParams(conn, _placeholders(sql).encode(), n,
                                             ctypes.cast(oids, ctypes.c_void_p),
                                             ctypes.cast(values, ctypes.c_void_p), None, None, 0)
            else:
                sent = lib.PQsendQuery(conn, sql.encode())
            if not sent:
                raise self._conn_error()
            try:
                results = self._results()
            except KeyboardInterrupt:
                self._cancel()
                raise
            return self._rows(results)

    def _results(self) -> list[int]:
        """Flush the statement, then collect every result (caller clears)."""
        lib, conn = self._lib, self._conn
        fd = lib.PQsocket(conn)
        while True:
            flushed = lib.PQflush(conn)
            if flushed == 0:
                break
            if flushed < 0:
                raise self._conn_error()
            _wait(fd, True, None)
            if not lib.PQconsumeInput(conn):
                raise self._conn_error()
        results = []
        try:
            while True:
                while lib.PQisBusy(conn):
                    _wait(fd, False, None)
                    if not lib.PQconsumeInput(conn):
                        raise self._conn_error()
                res = lib.PQgetResult(conn)
                if not res:
                    return results
                results.append(res)
        except BaseException:
            for res in results:
                lib.PQclear(res)
            raise

    def _rows(self, results: list[int]) -> list[tuple]:
        lib = self._lib
        try:
            failed = None
            for res in results:
                status = lib.PQresultStatus(res)
                if status not in (PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY):
                    failed = failed or self._result_error(res)
            if failed:
                raise failed
            if not results:
                raise self._conn_error()
            return self._read(results[-1])
        finally:
            for res in results:
                lib.PQclear(res)

    def _result_error(self, res) -> Error:
        lib = self._lib
        state = lib.PQresultErrorField(res, DIAG_SQLSTATE)
        message = lib.PQresultErrorField(res, DIAG_MESSAGE_PRIMARY)
        if not message:  # not from the server (the connection broke): libpq's own words
            message = lib.PQresultErrorMessage(res) or lib.PQerrorMessage(self._conn) or b""
        return Error(message.decode("utf-8", "replace").strip() or "the statement failed",
                     state.decode() if state else None)

    def _read(self, res) -> list[tuple]:
        """The rows, column by column: one libpq call per value, and one
        decode per column (text-format values hold no NUL: joined by NULs,
        decoded, split), which is what keeps 5,000 rows at a few ms."""
        lib = self._lib
        count, fields = lib.PQntuples(res), lib.PQnfields(res)
        if not count or not fields:
            return []
        value, isnull = lib.PQgetvalue, lib.PQgetisnull
        rows = range(count)
        columns = []
        for j in range(fields):
            oid = lib.PQftype(res, j)
            raw = [value(res, i, j) for i in rows]
            column = b"\0".join(raw).decode("utf-8").split("\0")
            if oid in _INT_OIDS:
                column = [int(v) if v else v for v in column]
            elif oid in _FLOAT_OIDS:
                column = [float(v) if v else v for v in column]
            elif oid == OID_BOOL:
                column = [v == "t" if v else v for v in column]
            if b"" in raw:  # an empty value: NULL, or an empty string
                column = [None if not r and isnull(res, i, j) else v
                          for i, r, v in zip(rows, raw, column)]
            columns.append(column)
        return list(zip(*columns))

    def _cancel(self) -> None:
        """After Ctrl-C mid-statement: ask the server to cancel it and drain
        its results (as psycopg does), so the session stays usable; if that
        fails too, the session is closed."""
        lib, conn = self._lib, self._conn
        try:
            cancel = lib.PQgetCancel(conn)
            if cancel:
                buf = lib.ctypes.create_string_buffer(256)
                lib.PQcancel(cancel, buf, 256)
                lib.PQfreeCancel(cancel)
            deadline = time.monotonic() + 5
            fd = lib.PQsocket(conn)
            while True:
                while lib.PQisBusy(conn):
                    if not _wait(fd, False, deadline) or not lib.PQconsumeInput(conn):
                        raise Error("cancel")
                res = lib.PQgetResult(conn)
                if not res:
                    return
                lib.PQclear(res)
        except BaseException:
            self._finish()

    def _finish(self) -> None:
        if not self.closed:
            self.closed = True
            self._lib.PQfinish(self._conn)  # (sends Terminate: the session ends)
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._finish()

    def transaction(self):
        return _Transaction(self)


class _Transaction:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __enter__(self) -> Connection:
        self.conn.execute("BEGIN")
        return self.conn

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.conn.execute("COMMIT")
            return
        try:
            self.conn.execute("ROLLBACK")
        except Error:
            pass  # the session is gone: so is the transaction
