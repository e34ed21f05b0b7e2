"""The thin libpq client under the PostgreSQL store (atmosbuild/state/pq.py),
against the real throwaway server: values go in and come back as they were,
errors carry their SQLSTATE and leave the session usable, Ctrl-C interrupts a
statement at once, two threads share one session safely, a connect that gets
no answer gives up at its deadline."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pgserver import PASSWORD, USER

pq = pytest.importorskip("atmosbuild.state.pq")


@pytest.fixture
def conn(pg_server, pg_db):
    c = pq.Connection({"host": "127.0.0.1", "port": str(pg_server.port), "user": USER,
                       "password": PASSWORD, "dbname": pg_db, "client_encoding": "UTF8"},
                      timeout=10)
    yield c
    c.close()


# text as PostgreSQL stores it: anything but NUL (and lone surrogates, which
# are not UTF-8)
texts = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, number=st.integers(-(2 ** 63), 2 ** 63 - 1),
       real=st.floats(allow_nan=False, allow_infinity=False), flag=st.booleans(),
       items=st.lists(texts, max_size=5))
def test_parameters_come_back_as_they_went_in(conn, text, number, real, flag, items):
    [row] = conn.execute("SELECT %s::text, %s::bigint, %s::double precision, %s::boolean, "
                         "%s::text[] = %s, cardinality(%s::text[])",
                         (text, number, real, flag, items, items, items))
    assert row[:4] == (text, number, real, flag)
    assert row[4] is True and row[5] == len(items)
    assert [r[0] for r in conn.execute("SELECT unnest(%s::text[])", (items,))] == items


def test_null_and_the_empty_string_are_told_apart(conn):
    rows = conn.execute("SELECT * FROM (VALUES (1, ''), (2, NULL), (3, 'x')) AS v(n, s) ORDER BY n")
    assert rows == [(1, ""), (2, None), (3, "x")]
    assert conn.execute("SELECT NULL::bigint, NULL::double precision, %s::text", (None,)) == [
        (None, None, None)]
    assert conn.execute("SELECT 1 WHERE false") == []


def test_percent_signs_and_placeholders(conn):
    assert conn.execute("SELECT '100%%' || %s, %s || '%%'", ("a", "b")) == [("100%a", "b%")]
    assert conn.execute("SELECT '50%'") == [("50%",)]  # no parameters: the text as it is
    with pytest.raises(ValueError):
        conn.execute("SELECT %d", (1,))


def test_a_failed_statement_names_its_sqlstate_and_the_session_goes_on(conn):
    with pytest.raises(pq.Error) as failed:
        conn.execute("SELECT * FROM no_such_table")
    assert failed.value.sqlstate == "42P01" and "no_such_table" in str(failed.value)
    assert conn.execute("SELECT %s::int + 1", (1,)) == [(2,)]


def test_a_transaction_commits_or_rolls_back_whole(conn):
    conn.execute("CREATE TABLE t (n int PRIMARY KEY)")
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(pq.Error):
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (2)")
            conn.execute("INSERT INTO t VALUES (1)")  # a duplicate: the whole transaction goes
    assert conn.execute("SELECT n FROM t") == [(1,)]


def test_ctrl_c_interrupts_a_statement_at_once_and_the_session_survives(conn):
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            conn.execute("SELECT pg_sleep(30)")
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10
    assert conn.execute("SELECT 'still here'") == [("still here",)]


def test_two_threads_share_one_session(conn):
    errors = []

    def work(n):
        try:
            for i in range(100):
                assert conn.execute("SELECT %s::int * 2", (n * 1000 + i,)) == [((n * 1000 + i) * 2,)]
        except BaseException as exc:  # (reported below, in the test's own thread)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_a_server_that_never_answers_times_out():
    with socket.socket() as listener:  # accepts the TCP connection (backlog), says nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        started = time.monotonic()
        with pytest.raises(pq.Error, match="timeout"):
            pq.Connection({"host": "127.0.0.1", "port": str(listener.getsockname()[1]),
                           "user": "x", "dbname": "x", "sslmode": "disable"}, timeout=0.5)
        assert time.monotonic() - started < 5


def test_a_closed_connection_refuses_statements(conn):
    conn.close()
    conn.close()  # (twice is fine)
    with pytest.raises(pq.Error, match="closed"):
        conn.execute("SELECT 1")
