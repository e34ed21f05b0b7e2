"""A throwaway PostgreSQL server for the tests: real binaries, no mocks.

One server per test session (`pg_server`, session-scoped), a fresh database
per test (`pg_url`). initdb refuses to run as root, so under root (as in
.ci/run) the cluster belongs to the unprivileged `nobody` and the server
runs as that user. The superuser `atmos` authenticates over TCP with a
password (scram-sha-256), so the tests see real password handling; the
server listens on 127.0.0.1 only, on a free port.

Where no server binaries exist (no `initdb` under /usr/lib/postgresql/*/bin
or on PATH) or psycopg is missing, tests that need the server are skipped.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

USER = "atmos"
PASSWORD = "pw-Xq7!z9@secret"  # with characters a URL must percent-encode
_counter = itertools.count(1)


def find_bindir() -> str | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return os.path.dirname(candidate)
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A cluster in a temporary directory; start(), stop(), url(db)."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        # Under root the server runs as `nobody`, who must reach the cluster:
        # /tmp, not a TMPDIR only root can enter.
        root = os.geteuid() == 0
        self.base = tempfile.mkdtemp(prefix="atmos-pg-", dir="/tmp" if root and os.path.isdir("/tmp") else None)
        os.chmod(self.base, 0o755)
        self.data = os.path.join(self.base, "data")
        self.sockets = os.path.join(self.base, "sock")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(self.base, "server.log")
        if root:
            entry = pwd.getpwnam("nobody")  # (KeyError: the fixture skips)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        else:
            self.uid = self.gid = None
        for path in (self.data, self.sockets):
            os.mkdir(path, 0o700)
            if self.uid is not None:
                os.chown(path, self.uid, self.gid)
        pwfile = os.path.join(self.base, "pwfile")
        with open(pwfile, "w") as fh:
            fh.write(PASSWORD + "\n")
        if self.uid is not None:
            os.chown(pwfile, self.uid, self.gid)
        self._as_owner([os.path.join(bindir, "initdb"), "-D", self.data, "-U", USER,
                        f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust",
                        "-E", "UTF8", "--locale=C", "--no-sync"])
        os.unlink(pwfile)

    def _as_owner(self, argv, **kw):
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.PIPE)
        if self.uid is not None:
            kw.update(user=self.uid, group=self.gid, extra_groups=[])
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
        proc = subprocess.run(argv, env=env, cwd=self.base, **kw)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {proc.stderr.decode(errors='replace')}")
        return proc

    # -- running --------------------------------------------------------------

    def start(self, *, fsync: bool = False) -> None:
        """fsync off by default: the tests kill clients, never the machine
        (the benchmark turns it on)."""
        assert self.proc is None
        log = open(self.log, "ab")
        kw = {}
        if self.uid is not None:
            kw.update(user=self.uid, group=self.gid, extra_groups=[])
        self.proc = subprocess.Popen(
            [os.path.join(self.bindir, "postgres"), "-D", self.data, "-h", "127.0.0.1",
             "-p", str(self.port), "-k", self.sockets, "-c", f"fsync={'on' if fsync else 'off'}",
             "-c", "max_connections=60", "-c", "shared_buffers=16MB"],
            stdout=log, stderr=log, cwd=self.base, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, **kw)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                conn = self.admin()
                conn.close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {self.tail()}")
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, the server exits."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def tail(self) -> str:
        try:
            with open(self.log, errors="replace") as fh:
                return fh.read()[-2000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- using it -----------------------------------------------------------------

    def url(self, db: str, *, password: bool = True, port: int | None = None) -> str:
        from urllib.parse import quote

        auth = f"{USER}:{quote(PASSWORD, safe='')}" if password else USER
        return f"postgresql://{auth}@127.0.0.1:{port or self.port}/{db}"

    def admin(self, db: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD,
                               dbname=db, autocommit=True, connect_timeout=5)

    def create_database(self) -> str:
        name = f"t{os.getpid()}_{next(_counter)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="session")
def pg_server():
    pytest.importorskip("psycopg")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    try:
        server = PgServer(bindir)
    except KeyError:  # root, and no `nobody` to run the server as
        pytest.skip("running as root with no unprivileged `nobody` user for initdb")
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_db(pg_server) -> str:
    """A fresh, empty database on the session's server: its name."""
    if pg_server.proc is None:  # a test stopped it and failed before restarting
        pg_server.start()
    return pg_server.create_database()


@pytest.fixture
def pg_url(pg_server, pg_db) -> str:
    """The state URL of a fresh database (password in the URL)."""
    return pg_server.url(pg_db)
