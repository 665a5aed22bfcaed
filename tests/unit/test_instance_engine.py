"""SQL on the volume without processes: real StorageEngines through InProcessTransport.

Covers the versioned page cache, the VFS (atomic commit groups, snapshots at read
points, recovery) and the SQL engine's sessions, routing, locking and errors.
"""

from __future__ import annotations

import threading

import pytest

from borealdb.nodes.instance.engine import InstanceOptions, SqlEngine, SqlError
from borealdb.nodes.instance.vfs import PageVersions, VolumeDatabase

from tests.unit.inprocess import PAGE, run

@pytest.fixture
def make_engine(storage):
    engines: list[SqlEngine] = []

    def factory(options: InstanceOptions | None = None, **volume_overrides) -> SqlEngine:
        vol = storage.volume(**volume_overrides)
        engine = SqlEngine(VolumeDatabase(vol, cache_capacity_bytes=4 << 20), node_id="i-test", options=options)
        engines.append(engine)
        return engine

    yield factory
    for e in engines:
        e.close()


# ---- PageVersions ------------------------------------------------------------------------


def test_page_versions_serve_each_read_point_and_know_their_limits():
    cache = PageVersions(1 << 20)
    cache.put_fetched(3, page_lsn=5, data=b"a" * PAGE, read_lsn=10, vdl=10)
    assert cache.get(3, 7) == b"a" * PAGE
    assert cache.get(3, 10) == b"a" * PAGE
    assert cache.get(3, 11) is None, "a fetched image is only known current up to its read point"
    assert cache.get(3, 4) is None, "nothing known below the oldest version"
    cache.put_written(3, 12, b"b" * PAGE, vdl=10)
    assert cache.get(3, 11) == b"a" * PAGE  # the writer's new version proves a was current until 11
    assert cache.get(3, 10**9) == b"b" * PAGE
    cache.trim_below(12)
    assert cache.get(3, 11) is None and cache.get(3, 12) == b"b" * PAGE


def test_page_cache_never_evicts_versions_above_the_vdl():
    cache = PageVersions(1 << 16)  # room for 16 pages
    for page in range(40):
        cache.put_written(page, 100 + page, bytes([page]) * PAGE, vdl=0)
    assert all(cache.get(page, 10**9) == bytes([page]) * PAGE for page in range(40))
    cache.put_written(99, 200, b"x" * PAGE, vdl=10**9)  # now everything is durable: eviction can proceed
    assert cache.size_bytes <= 1 << 16


# ---- VFS ---------------------------------------------------------------------------------


def test_each_commit_is_one_atomic_group_and_small(storage):
    vol = storage.volume()
    db = VolumeDatabase(vol)
    w = db.open_writer()
    w.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
    first = db.commits
    lsns = []
    for i in range(50):
        w.execute("INSERT INTO kv(v) VALUES (?)", ("x" * 100,))
        lsns.append(db.last_commit_lsn)
    assert db.commits - first == 50
    assert lsns == sorted(set(lsns)), "every commit gets a new, higher commit LSN"
    vol.wait_durable(lsns[-1], timeout_s=10)
    per_commit = db.redo_bytes / db.commits
    assert per_commit < PAGE / 4, f"redo per single-row commit is {per_commit:.0f} bytes"
    db.close()


def test_snapshot_keeps_its_view_while_the_writer_rewrites_the_same_pages(storage):
    vol = storage.volume()
    db = VolumeDatabase(vol)
    w = db.open_writer()
    w.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, balance INTEGER)")
    w.executemany("INSERT INTO acct VALUES (?, ?)", [(i, 100) for i in range(20)])
    vol.wait_durable(db.last_commit_lsn, timeout_s=10)
    with db.snapshot() as snap:
        before = snap.execute("SELECT sum(balance), count(*) FROM acct").fetchone()
        for i in range(200):
            w.execute("UPDATE acct SET balance = balance + 1 WHERE id = ?", (i % 20,))
        vol.wait_durable(db.last_commit_lsn, timeout_s=10)
        assert snap.execute("SELECT sum(balance), count(*) FROM acct").fetchone() == before
    with db.snapshot() as snap:
        assert snap.execute("SELECT sum(balance) FROM acct").fetchone()[0] == before[0] + 200
    db.close()


def test_database_survives_a_writer_restart_with_recovery(storage):
    vol = storage.volume()
    db = VolumeDatabase(vol)
    w = db.open_writer()
    w.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    for i in range(300):
        w.execute("INSERT INTO t(v) VALUES (randomblob(200))")
    vol.wait_durable(db.last_commit_lsn, timeout_s=10)
    db.close()
    vol.close()
    vol2 = storage.volume()
    assert vol2.recovery.epoch > vol.epoch
    db2 = VolumeDatabase(vol2)
    w2 = db2.open_writer()
    assert w2.execute("SELECT count(*) FROM t").fetchone()[0] == 300
    assert w2.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db2.close()


def test_new_pages_commit_without_reading_storage_and_a_regrown_file_stays_correct(storage, monkeypatch):
    def recording_reads(vol) -> list[int]:
        reads: list[int] = []
        real_read_page = vol.read_page
        monkeypatch.setattr(vol, "read_page", lambda page, lsn: (reads.append(page), real_read_page(page, lsn))[1])
        return reads

    vol = storage.volume()
    db = VolumeDatabase(vol)
    w = db.open_writer()
    w.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    reads = recording_reads(vol)
    pages_before = w.execute("PRAGMA page_count").fetchone()[0]
    for _ in range(200):
        w.execute("INSERT INTO t(v) VALUES (randomblob(200))")
    grown = w.execute("PRAGMA page_count").fetchone()[0]
    assert grown > pages_before + 5
    assert reads == [], "a page the file did not have at the last commit has no base on storage to read"
    w.execute("DELETE FROM t")
    w.execute("VACUUM")
    shrunk = w.execute("PRAGMA page_count").fetchone()[0]
    assert shrunk < grown
    vol.wait_durable(db.last_commit_lsn, timeout_s=10)
    db.close()
    vol.close()
    # A new writer (nothing cached) grows the file again over the pages it lost. Those
    # still have old versions on storage; they go as full images, never read or diffed.
    vol2 = storage.volume()
    db2 = VolumeDatabase(vol2)
    w2 = db2.open_writer()
    reads2 = recording_reads(vol2)
    for _ in range(150):
        w2.execute("INSERT INTO t(v) VALUES (zeroblob(200))")
    assert w2.execute("PRAGMA page_count").fetchone()[0] > shrunk + 5
    assert [p for p in reads2 if p >= shrunk] == []
    vol2.wait_durable(db2.last_commit_lsn, timeout_s=10)
    db2.close()
    vol2.close()
    vol3 = storage.volume()
    db3 = VolumeDatabase(vol3)  # every page now comes from storage
    w3 = db3.open_writer()
    assert w3.execute("SELECT count(*), sum(length(v)), max(v) FROM t").fetchone() == (150, 150 * 200, bytes(200))
    assert w3.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db3.close()
    vol3.close()


# ---- SQL engine ---------------------------------------------------------------------------


def test_autocommit_write_then_read_your_writes(make_engine):
    eng = make_engine()
    sid = eng.open_session("t").session_id
    run(eng, sid, "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)")
    _rows, out = run(eng, sid, "INSERT INTO kv(v) VALUES (?)", ("a",))
    assert out.rows_affected == 1 and out.last_insert_rowid == 1 and out.commit_lsn > 0
    assert eng.volume.vdl >= out.commit_lsn, "a commit is acknowledged only once durable"
    rows, out2 = run(eng, sid, "SELECT k, v FROM kv")
    assert rows == [(1, "a")]
    assert out2.read_lsn >= out.commit_lsn, "reads start at or after the session's last commit"


def test_explicit_transaction_is_isolated_and_rollback_discards(make_engine):
    eng = make_engine()
    a = eng.open_session("a").session_id
    b = eng.open_session("b").session_id
    run(eng, a, "CREATE TABLE t(x)")
    run(eng, a, "BEGIN")
    run(eng, a, "INSERT INTO t VALUES (1)")
    assert run(eng, a, "SELECT count(*) FROM t")[0] == [(1,)]
    assert run(eng, b, "SELECT count(*) FROM t")[0] == [(0,)], "uncommitted rows are invisible to others"
    run(eng, a, "ROLLBACK")
    assert run(eng, a, "SELECT count(*) FROM t")[0] == [(0,)]
    run(eng, a, "BEGIN")
    run(eng, a, "INSERT INTO t VALUES (2)")
    _r, out = run(eng, a, "COMMIT")
    assert out.commit_lsn > 0
    assert run(eng, b, "SELECT x FROM t")[0] == [(2,)]


def test_write_lock_timeout_is_a_clear_error_and_session_close_releases_it(make_engine):
    eng = make_engine(InstanceOptions(lock_timeout_s=0.2))
    a = eng.open_session("a").session_id
    b = eng.open_session("b").session_id
    run(eng, a, "CREATE TABLE t(x)")
    run(eng, a, "BEGIN")
    run(eng, a, "INSERT INTO t VALUES (1)")
    with pytest.raises(SqlError) as err:
        run(eng, b, "INSERT INTO t VALUES (2)")
    assert err.value.code == "LOCK_TIMEOUT"
    assert run(eng, b, "SELECT count(*) FROM t")[0] == [(0,)], "reads do not wait for writes"
    eng.close_session(a)  # a client that vanished: its transaction is rolled back
    run(eng, b, "INSERT INTO t VALUES (2)")
    assert run(eng, b, "SELECT x FROM t")[0] == [(2,)]


@pytest.mark.parametrize(
    "sql, params, code",
    [
        ("SELEC 1", (), "SYNTAX_ERROR"),
        ("SELECT * FROM missing", (), "SQL_ERROR"),
        ("INSERT INTO t(id) VALUES (1)", (), "CONSTRAINT_VIOLATION"),
        ("INSERT INTO t(id) VALUES (?)", (1, 2), "BAD_PARAMETERS"),
        ("SELECT 1; SELECT 2", (), "MISUSE"),
        ("COMMIT", (), "MISUSE"),
        ("PRAGMA journal_mode=WAL", (), "SQL_ERROR"),
        ("ATTACH 'x.db' AS x", (), "SQL_ERROR"),
        ("   ", (), "SYNTAX_ERROR"),
    ],
)
def test_bad_statements_get_precise_errors_and_change_nothing(make_engine, sql, params, code):
    eng = make_engine()
    sid = eng.open_session("t").session_id
    run(eng, sid, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    run(eng, sid, "INSERT INTO t VALUES (1)")
    lsn = eng.db.last_commit_lsn
    with pytest.raises(SqlError) as err:
        run(eng, sid, sql, params)
    assert err.value.code == code, err.value.message
    assert eng.db.last_commit_lsn == lsn
    assert run(eng, sid, "SELECT id FROM t")[0] == [(1,)], "the session and database stay usable"


def test_oversized_statement_is_refused(make_engine):
    eng = make_engine(InstanceOptions(max_statement_bytes=1000))
    sid = eng.open_session("t").session_id
    with pytest.raises(SqlError) as err:
        run(eng, sid, "SELECT '" + "x" * 2000 + "'")
    assert err.value.code == "TOO_LARGE"


def test_volume_full_is_reported_and_the_database_stays_usable(make_engine):
    eng = make_engine(max_size_bytes=64 * PAGE)
    sid = eng.open_session("t").session_id
    run(eng, sid, "CREATE TABLE t(v BLOB)")
    with pytest.raises(SqlError) as err:
        for _ in range(200):
            run(eng, sid, "INSERT INTO t VALUES (randomblob(3000))")
    assert err.value.code == "VOLUME_FULL"
    count = run(eng, sid, "SELECT count(*) FROM t")[0][0][0]
    run(eng, sid, "DELETE FROM t WHERE rowid % 2 = 0")
    assert run(eng, sid, "SELECT count(*) FROM t")[0][0][0] == count - count // 2
    assert run(eng, sid, "PRAGMA integrity_check")[0] == [("ok",)]


def test_execute_many_is_atomic(make_engine):
    eng = make_engine()
    sid = eng.open_session("t").session_id
    run(eng, sid, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    out = eng.execute_many(sid, "INSERT INTO t VALUES (?)", [(i,) for i in range(10)])
    assert out.rows_affected == 10 and out.commit_lsn > 0
    with pytest.raises(SqlError) as err:
        eng.execute_many(sid, "INSERT INTO t VALUES (?)", [(100,), (5,)])
    assert err.value.code == "CONSTRAINT_VIOLATION"
    assert run(eng, sid, "SELECT count(*) FROM t")[0] == [(10,)]


def test_concurrent_sessions_transfer_without_losing_money(make_engine):
    eng = make_engine()
    setup = eng.open_session("setup").session_id
    run(eng, setup, "CREATE TABLE acct(id INTEGER PRIMARY KEY, balance INTEGER)")
    eng.execute_many(setup, "INSERT INTO acct VALUES (?, 1000)", [(i,) for i in range(10)])
    errors = []

    def worker(seed: int):
        sid = eng.open_session(f"w{seed}").session_id
        try:
            for i in range(30):
                a, b = (seed + i) % 10, (seed + 3 * i + 1) % 10
                if a == b:
                    continue
                run(eng, sid, "BEGIN")
                run(eng, sid, "UPDATE acct SET balance = balance - 7 WHERE id = ?", (a,))
                run(eng, sid, "UPDATE acct SET balance = balance + 7 WHERE id = ?", (b,))
                run(eng, sid, "COMMIT")
                total = run(eng, sid, "SELECT sum(balance) FROM acct")[0][0][0]
                if total != 10_000:
                    errors.append(total)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_snapshots_never_read_a_commit_whose_pages_are_not_yet_cached(storage):
    """Acks can make a group durable before xSync has put its page versions in the
    cache; a snapshot taken in that window must read below the group, not a mix."""
    vol = storage.volume()
    db = VolumeDatabase(vol)
    w = db.open_writer()
    w.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    w.execute("INSERT INTO t(v) VALUES ('before')")
    vol.wait_durable(db.last_commit_lsn, timeout_s=10)
    seen = []
    real_append = vol.append_group

    def append_then_race(changes, timeout_s=None):
        lsn = real_append(changes, timeout_s)
        vol.wait_durable(lsn, timeout_s=10)  # the acks won the race: VDL >= lsn already
        visible = db.visible_lsn()
        with db.snapshot(visible) as snap:
            seen.append((lsn, visible, snap.execute("SELECT group_concat(v) FROM t").fetchone()[0]))
        return lsn

    vol.append_group = append_then_race
    w.execute("UPDATE t SET v = 'after'")
    vol.append_group = real_append
    (lsn, visible, value), = seen
    assert visible < lsn and value == "before"
    with db.snapshot() as snap:
        assert snap.execute("SELECT group_concat(v) FROM t").fetchone()[0] == "after"
    db.close()


def test_an_empty_result_still_has_its_columns(make_engine):
    """DB-API: a SELECT with no rows has a description (fetchone() -> None, not an error)."""
    engine = make_engine()
    sid = engine.open_session().session_id
    run(engine, sid, "CREATE TABLE e(id INTEGER PRIMARY KEY, name TEXT)")
    snapshot = list(engine.execute(sid, "SELECT id, name FROM e WHERE id = ?", (7,)))
    assert snapshot[0][0] == [("id", "INTEGER"), ("name", "TEXT")] and snapshot[-1][1] == []
    run(engine, sid, "BEGIN")   # inside a transaction the read runs on the writer connection
    on_writer = list(engine.execute(sid, "SELECT name FROM e WHERE id = 7"))
    run(engine, sid, "COMMIT")
    assert on_writer[0][0] == [("name", "TEXT")] and on_writer[-1][1] == []
    assert list(engine.execute(sid, "DELETE FROM e WHERE id = 7"))[0][0] == []   # no result set at all


def test_inline_reads_run_only_when_nothing_would_block(make_engine):
    """The server's event-loop fast path: a cached point read runs inline; a page to
    fetch or a long statement stops the attempt (nothing done) so it can go to a thread."""
    from borealdb.nodes.instance import vfs
    from borealdb.nodes.instance.engine import Deferred

    engine = make_engine()
    sid = engine.open_session().session_id
    run(engine, sid, "CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT)")
    run(engine, sid, "INSERT INTO big(v) SELECT hex(randomblob(50)) FROM "
                     "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<3000) SELECT i FROM n)")

    def attempt(sql, params=()):
        with vfs.inline_only():
            try:
                return list(engine.execute(sid, sql, params, deferred=Deferred())), False
            except Exception:  # noqa: BLE001 - what the server does: blocked -> retry in a thread
                if vfs.inline_blocked():
                    return None, True
                raise

    assert attempt("SELECT 1")[1], "no snapshot connection is free yet (opening one is not done inline)"
    run(engine, sid, "SELECT 1")  # opens one (in a thread, as the server would)
    rows, blocked = attempt("SELECT v FROM big WHERE id = ?", (1234,))
    assert not blocked and len(rows[-1][1]) == 1, "a point read on cached pages runs inline"
    assert attempt("SELECT count(*), max(length(v)) FROM big")[1], "a long scan is moved off the loop"
    engine.db.cache = type(engine.db.cache)(4 << 20)   # a cold cache: the next read needs storage
    assert attempt("SELECT v FROM big WHERE id = ?", (7,))[1], "a page fetch is never done inline"
    rows, _ = run(engine, sid, "SELECT count(*) FROM big")  # and the session is fine afterwards
    assert rows == [(3000,)]
