"""DB-API 2.0 behaviour of borealdb.connect() against a real writer instance.

In the spirit of the dbapi20 compliance suite: module globals, connect/close,
cursor description/rowcount/lastrowid, fetch*, executemany, transactions, parameter
styles, value round trips, error classes, and that the session and database stay
usable after each error. Uses the `sql_cluster` fixture of tests/conftest.py (a
writer on a 6-storage-node cluster; `.url` is boreal://127.0.0.1:PORT/).
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys

import pytest

pytest.importorskip(
    "borealdb.nodes.instance.server",
    reason="the SQL instance server (borealdb.nodes.instance.server) is not part of this build yet",
)

import borealdb  # noqa: E402
import borealdb.aio  # noqa: E402

pytestmark = pytest.mark.integration

_names = itertools.count()


@pytest.fixture
def url(sql_cluster):
    return sql_cluster.url


@pytest.fixture
def conn(url):
    c = borealdb.connect(url, client_name="test_dbapi")
    yield c
    c.close()


@pytest.fixture
def table(conn):
    """A fresh table t(id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INTEGER NOT NULL DEFAULT 0)."""
    name = f"t_{next(_names)}"
    conn.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INTEGER NOT NULL DEFAULT 0)")
    return name


def count(conn, table):
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# ---- module and connection ---------------------------------------------------------


def test_module_globals():
    assert (borealdb.apilevel, borealdb.threadsafety, borealdb.paramstyle) == ("2.0", 1, "qmark")
    assert issubclass(borealdb.IntegrityError, borealdb.DatabaseError)


def test_connect_close(url):
    c = borealdb.connect(url)
    assert c.session_id and c.role == "writer" and not c.in_transaction
    cur = c.cursor()
    c.close()
    c.close()  # idempotent
    for call in (c.cursor, c.commit, c.rollback, lambda: cur.execute("SELECT 1"), lambda: c.execute("SELECT 1")):
        with pytest.raises(borealdb.InterfaceError):
            call()


def test_connections_to_one_server_share_a_channel_until_the_last_goes(url, table, conn):
    from borealdb import dbapi

    target = conn.address.target
    users = dbapi._CHANNELS.users(target)
    a, b = borealdb.connect(url), borealdb.connect(url)
    assert a._channel is b._channel is conn._channel and dbapi._CHANNELS.users(target) == users + 2
    assert a.session_id != b.session_id, "each connection is its own session"
    a.execute("BEGIN")
    a.execute(f"INSERT INTO {table}(name) VALUES ('a')")
    assert count(b, table) == 0, "sessions stay isolated on a shared channel"
    a.close()
    assert count(b, table) == 0, "closing one connection rolled back its transaction, nothing else"
    b.execute(f"INSERT INTO {table}(name) VALUES ('b')")
    del b  # dropped without close(): collected, it gives its share back
    import gc

    gc.collect()
    assert dbapi._CHANNELS.users(target) == users
    assert count(conn, table) == 1


def test_connect_from_environment(url, monkeypatch):
    monkeypatch.setenv("BOREAL_URL", url)
    with borealdb.connect() as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    c.close()


# ---- cursor -------------------------------------------------------------------------


def test_description_rowcount_lastrowid(conn, table):
    cur = conn.cursor()
    assert cur.description is None and cur.rowcount == -1 and cur.arraysize == 1
    cur.execute(f"INSERT INTO {table} (name) VALUES ('a')")
    assert cur.description is None
    assert cur.rowcount == 1
    first = cur.lastrowid
    cur.execute(f"INSERT INTO {table} (name) VALUES ('b')")
    assert cur.lastrowid == first + 1
    cur.execute(f"UPDATE {table} SET n = n + 1")
    assert cur.rowcount == 2
    cur.execute(f"SELECT id, name, n, n * 2 AS twice FROM {table} ORDER BY id")
    assert [d[0] for d in cur.description] == ["id", "name", "n", "twice"]
    assert all(len(d) == 7 for d in cur.description)
    assert cur.description[0][1] == "INTEGER" and cur.description[1][1] == "TEXT" and cur.description[3][1] == ""
    assert cur.description[0][1] == borealdb.NUMBER and cur.description[1][1] == borealdb.STRING
    assert cur.rowcount == -1
    cur.execute(f"DELETE FROM {table} WHERE name = 'nobody'")
    assert cur.rowcount == 0


def test_fetch(conn, table):
    conn.executemany(f"INSERT INTO {table} (id, name) VALUES (?, ?)", [(i, f"n{i}") for i in range(1, 11)])
    cur = conn.cursor()
    with pytest.raises(borealdb.ProgrammingError):
        cur.fetchone()  # nothing executed
    cur.execute(f"SELECT id FROM {table} ORDER BY id")
    assert cur.fetchone() == (1,)
    assert cur.fetchmany() == [(2,)]
    cur.arraysize = 3
    assert cur.fetchmany() == [(3,), (4,), (5,)]
    assert cur.fetchmany(2) == [(6,), (7,)]
    assert cur.fetchall() == [(8,), (9,), (10,)]
    assert cur.fetchone() is None and cur.fetchmany() == [] and cur.fetchall() == []
    assert [r[0] for r in cur.execute(f"SELECT id FROM {table} WHERE id > 8 ORDER BY id")] == [9, 10]
    cur.execute(f"SELECT id, name FROM {table} WHERE id = ?", (99,))   # no rows: still a result set
    assert [d[0] for d in cur.description] == ["id", "name"] and cur.fetchone() is None
    cur.execute(f"DELETE FROM {table} WHERE id = 1")
    with pytest.raises(borealdb.ProgrammingError):
        cur.fetchall()  # the statement returns no rows
    cur.close()
    cur.close()
    with pytest.raises(borealdb.InterfaceError):
        cur.execute("SELECT 1")


def test_large_result_streams(conn, table):
    n = 20_000
    conn.executemany(f"INSERT INTO {table} (id, name) VALUES (?, ?)", [(i, "x" * 50 + str(i)) for i in range(n)])
    cur = conn.execute(f"SELECT id, name FROM {table} ORDER BY id")
    assert sum(1 for _ in cur) == n
    # Another statement while a result is half read: the rest of it stays readable.
    cur = conn.execute(f"SELECT id FROM {table} ORDER BY id")
    assert cur.fetchmany(5) == [(i,) for i in range(5)]
    conn.execute(f"INSERT INTO {table} (id, name) VALUES (?, ?)", (n, "late"))
    assert len(cur.fetchall()) == n - 5


def test_one_message_results_and_their_fallback_to_the_stream(conn, table, url):
    """ExecuteOne answers small results in one message; a read too large for one message
    is refused with STREAM_REQUIRED having changed nothing, and the client streams it."""
    import grpc

    from borealdb.protos import sql_pb2, sql_pb2_grpc

    conn.executemany(f"INSERT INTO {table} (id, name) VALUES (?, ?)", [(i, f"n{i}") for i in range(1200)])
    with grpc.insecure_channel(url.removeprefix("boreal://").rstrip("/")) as channel:
        stub = sql_pb2_grpc.InstanceStub(channel)
        sid = stub.OpenSession(sql_pb2.OpenSessionRequest(client_name="raw")).session_id
        one = stub.ExecuteOne(sql_pb2.ExecuteRequest(session_id=sid, sql=f"SELECT count(*) FROM {table}"))
        assert one.last and [c.name for c in one.columns] == ["count(*)"] and one.rows[0].values[0].integer == 1200
        with pytest.raises(grpc.RpcError) as e:
            stub.ExecuteOne(sql_pb2.ExecuteRequest(session_id=sid, sql=f"SELECT id FROM {table}", batch_rows=100))
        assert dict(e.value.trailing_metadata())["boreal-error"] == "STREAM_REQUIRED"
        # the session is still usable, and a write through ExecuteOne commits durably
        done = stub.ExecuteOne(sql_pb2.ExecuteRequest(session_id=sid, sql=f"INSERT INTO {table} (name) VALUES ('one')"))
        assert done.last and done.rows_affected == 1 and done.commit_lsn > 0
    assert len(conn.execute(f"SELECT id FROM {table}").fetchall()) == 1201      # streamed by the client
    rows = conn.execute(f"UPDATE {table} SET n = n + 1 WHERE id < 700 RETURNING id").fetchall()
    assert len(rows) == 700                                                     # a write: never run twice
    assert conn.execute(f"SELECT sum(n) FROM {table}").fetchone() == (700,)


def test_executemany(conn, table):
    cur = conn.cursor()
    cur.executemany(f"INSERT INTO {table} (name, n) VALUES (?, ?)", [("a", 1), ("b", 2), ("c", 3)])
    assert cur.rowcount == 3
    cur.executemany(f"UPDATE {table} SET n = :n WHERE name = :name", [{"n": 10, "name": "a"}, {"n": 20, "name": "b"}])
    assert cur.rowcount == 2
    cur.executemany(f"INSERT INTO {table} (name) VALUES (?)", iter([]))
    assert cur.rowcount == 0
    assert conn.execute(f"SELECT name, n FROM {table} ORDER BY name").fetchall() == [("a", 10), ("b", 20), ("c", 3)]
    # In autocommit mode a failing batch changes nothing.
    with pytest.raises(borealdb.IntegrityError):
        cur.executemany(f"INSERT INTO {table} (name) VALUES (?)", [("d",), ("a",)])
    assert count(conn, table) == 3


# ---- transactions -------------------------------------------------------------------


def test_autocommit_is_durable_for_other_sessions(conn, table, url):
    conn.execute(f"INSERT INTO {table} (name) VALUES ('x')")
    with borealdb.connect(url) as other:
        assert count(other, table) == 1
    other.close()


def test_commit_and_rollback(conn, table, url):
    conn.commit()  # no transaction: a no-op
    conn.rollback()
    conn.begin()
    assert conn.in_transaction
    conn.execute(f"INSERT INTO {table} (name) VALUES ('rolled back')")
    conn.rollback()
    assert not conn.in_transaction and count(conn, table) == 0
    conn.execute("BEGIN")
    assert conn.in_transaction
    conn.execute(f"INSERT INTO {table} (name) VALUES ('kept')")
    conn.commit()
    assert not conn.in_transaction
    other = borealdb.connect(url)
    try:
        assert other.execute(f"SELECT name FROM {table}").fetchall() == [("kept",)]
    finally:
        other.close()


def test_context_manager_commits_or_rolls_back_and_does_not_close(conn, table):
    with conn:
        conn.begin()
        conn.execute(f"INSERT INTO {table} (name) VALUES ('a')")
    assert not conn.in_transaction and count(conn, table) == 1
    with pytest.raises(ZeroDivisionError):
        with conn:
            conn.begin()
            conn.execute(f"INSERT INTO {table} (name) VALUES ('b')")
            1 / 0
    assert not conn.in_transaction and count(conn, table) == 1
    assert not conn.closed


def test_close_rolls_back(url, table, conn):
    c = borealdb.connect(url)
    c.begin()
    c.execute(f"INSERT INTO {table} (name) VALUES ('lost')")
    c.close()
    assert count(conn, table) == 0


def test_nested_begin_is_a_programming_error(conn):
    conn.begin()
    with pytest.raises(borealdb.ProgrammingError):
        conn.begin()
    conn.rollback()
    with pytest.raises(borealdb.ProgrammingError):
        conn.execute("COMMIT")  # no transaction open


# ---- parameters and values ----------------------------------------------------------


def test_parameter_styles(conn):
    assert conn.execute("SELECT ?, ?", (1, "a")).fetchone() == (1, "a")
    assert conn.execute("SELECT ?, ?", [1, "a"]).fetchone() == (1, "a")
    assert conn.execute("SELECT :x, :y, :x", {"x": 1, "y": 2}).fetchone() == (1, 2, 1)


@pytest.mark.parametrize("value", [
    None, 0, -1, 2**63 - 1, -(2**63), 3.25, -1e300, "", "unicode: héllo ✓ 𝄞 中文", "nul\x00inside",
    b"", b"\x00\x01\xff" * 1000, "x" * 1_000_000,
])
def test_values_round_trip(conn, value):
    got = conn.execute("SELECT ?", (value,)).fetchone()[0]
    assert got == value and type(got) is type(value)


def test_values_round_trip_through_a_table(conn):
    name = f"v_{next(_names)}"
    conn.execute(f"CREATE TABLE {name} (i INTEGER, r REAL, t TEXT, b BLOB, x)")
    row = (2**62, 0.5, "texte", b"\x00blob", None)
    conn.execute(f"INSERT INTO {name} VALUES (?, ?, ?, ?, ?)", row)
    assert conn.execute(f"SELECT * FROM {name}").fetchone() == row
    assert conn.execute("SELECT ?, ?", (True, bytearray(b"ba"))).fetchone() == (1, b"ba")


def test_bad_parameters_are_caught_before_sending(conn):
    with pytest.raises(borealdb.DataError, match="64 bits"):
        conn.execute("SELECT ?", (2**63,))
    with pytest.raises(borealdb.ProgrammingError, match="parameter #2"):
        conn.execute("SELECT ?, ?", (1, object()))
    assert conn.execute("SELECT 1").fetchone() == (1,)


# ---- errors -------------------------------------------------------------------------


def test_error_classes_and_recovery(conn, table):
    conn.execute(f"INSERT INTO {table} (name) VALUES ('a')")
    cases = [
        ("SELEC 1", (), borealdb.OperationalError, "SYNTAX_ERROR"),
        ("SELECT * FROM no_such_table", (), borealdb.OperationalError, "SQL_ERROR"),
        (f"INSERT INTO {table} (name) VALUES ('a')", (), borealdb.IntegrityError, "CONSTRAINT_VIOLATION"),
        (f"INSERT INTO {table} (name, n) VALUES ('b', NULL)", (), borealdb.IntegrityError, "CONSTRAINT_VIOLATION"),
        ("SELECT ?", (1, 2), borealdb.ProgrammingError, "BAD_PARAMETERS"),
        ("SELECT ?, ?", (1,), borealdb.ProgrammingError, "BAD_PARAMETERS"),
    ]
    for sql, params, cls, code in cases:
        with pytest.raises(cls) as e:
            conn.execute(sql, params)
        assert e.value.code == code, sql
        assert str(e.value), sql
        # The session and the database remain usable.
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert not conn.in_transaction
    assert count(conn, table) == 1
    with pytest.raises(borealdb.OperationalError) as e:
        conn.execute("SELECT * FROM no_such_table")
    assert "no such table" in str(e.value) and e.value.sqlite_code is not None


def test_error_inside_a_transaction_keeps_it(conn, table):
    conn.begin()
    conn.execute(f"INSERT INTO {table} (name) VALUES ('a')")
    with pytest.raises(borealdb.IntegrityError):
        conn.execute(f"INSERT INTO {table} (name) VALUES ('a')")
    assert conn.in_transaction
    conn.execute(f"INSERT INTO {table} (name) VALUES ('b')")
    conn.commit()
    assert count(conn, table) == 2


def test_statements_share_one_stream_that_outlives_errors(conn, table):
    """Single-message statements travel on one Statements stream per connection; a
    statement error comes back inside it and leaves it open."""
    conn.execute(f"INSERT INTO {table} (name) VALUES ('a')")
    stream = conn._stream
    assert stream is not None and stream.usable()
    with pytest.raises(borealdb.IntegrityError) as e:
        conn.execute(f"INSERT INTO {table} (name) VALUES ('a')")
    assert e.value.code == "CONSTRAINT_VIOLATION" and e.value.sqlite_code is not None
    with pytest.raises(borealdb.OperationalError):
        conn.execute("SELEC 1")
    conn.begin()
    conn.execute(f"INSERT INTO {table} (name) VALUES ('b')")
    conn.commit()
    assert count(conn, table) == 2
    assert conn._stream is stream and stream.usable()


def test_a_writer_that_stops_answering_times_out_and_the_connection_recovers(sql_cluster, url, table):
    """The stream has no per-message deadline: the client's watchdog cancels it after
    timeout_s, and the statement fails as a unary call past its deadline would."""
    c = borealdb.connect(url, timeout_s=1.0)
    try:
        assert count(c, table) == 0
        sql_cluster.writer.pause()
        try:
            with pytest.raises(borealdb.Unavailable):
                c.execute(f"SELECT count(*) FROM {table}")
            with pytest.raises(borealdb.OutcomeUnknown):
                c.execute(f"INSERT INTO {table} (name) VALUES ('maybe')")
        finally:
            sql_cluster.writer.resume()
        c.timeout_s = 30.0
        assert count(c, table) in (0, 1)  # the unknown outcome: either, never an error
    finally:
        c.close()

    async def main():
        a = await borealdb.aio.connect(url, timeout_s=1.0)
        try:
            sql_cluster.writer.pause()
            try:
                with pytest.raises(borealdb.Unavailable):
                    await a.execute(f"SELECT count(*) FROM {table}")
            finally:
                sql_cluster.writer.resume()
            a.timeout_s = 30.0
            assert (await (await a.execute("SELECT 1")).fetchone()) == (1,)
        finally:
            await a.close()

    asyncio.run(main())


# ---- asyncio ------------------------------------------------------------------------


def test_aio(url):
    async def main():
        async with await borealdb.aio.connect(url) as c:
            name = f"a_{next(_names)}"
            await c.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, v)")
            cur = await c.executemany(f"INSERT INTO {name} (v) VALUES (?)", [(i,) for i in range(100)])
            assert cur.rowcount == 100
            cur = await c.execute(f"SELECT v FROM {name} WHERE v >= :m ORDER BY v", {"m": 97})
            assert cur.description[0][0] == "v"
            assert [r async for r in cur] == [(97,), (98,), (99,)]
            await c.begin()
            await c.execute(f"DELETE FROM {name}")
            await c.rollback()
            assert await (await c.execute(f"SELECT count(*) FROM {name}")).fetchone() == (100,)
            with pytest.raises(borealdb.OperationalError):
                await c.execute("SELEC")
            assert await (await c.execute("SELECT 1")).fetchall() == [(1,)]
        assert c.closed

    asyncio.run(main())


# ---- boreal sql ---------------------------------------------------------------------


def test_boreal_sql_command(url):
    def boreal_sql(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "borealdb.nodes.cli", "sql", url, *args],
                              input=stdin, capture_output=True, text=True, timeout=60)

    name = f"s_{next(_names)}"
    p = boreal_sql("-c", f"CREATE TABLE {name} (id INTEGER, v TEXT); INSERT INTO {name} VALUES (1, NULL); "
                         f"SELECT * FROM {name}")
    assert p.returncode == 0, p.stderr
    assert "NULL" in p.stdout and "(1 row)" in p.stdout
    p = boreal_sql(stdin=f"SELECT count(*) AS c FROM {name};\nSELECT * FROM nope;\nSELECT 2;\n")
    assert p.returncode == 1
    assert p.stderr.startswith("Error: ") and "no such table" in p.stderr and "Traceback" not in p.stderr
    assert "(1 row)" in p.stdout


# ---- sessions across a writer restart -----------------------------------------------


def test_writer_restart_reopens_the_session_or_reports_the_lost_transaction(sql_cluster, conn, table):
    conn.execute(f"INSERT INTO {table} (name) VALUES ('before')")
    old_session = conn.session_id
    sql_cluster.writer.restart()
    # Outside a transaction: a new session, transparently.
    assert count(conn, table) == 1
    assert conn.session_id != old_session
    conn.begin()
    conn.execute(f"INSERT INTO {table} (name) VALUES ('lost')")
    sql_cluster.writer.restart()
    with pytest.raises(borealdb.SessionExpired):
        conn.execute(f"INSERT INTO {table} (name) VALUES ('after')")
    assert not conn.in_transaction
    conn.rollback()  # nothing open any more: a no-op
    assert conn.execute(f"SELECT name FROM {table}").fetchall() == [("before",)]
