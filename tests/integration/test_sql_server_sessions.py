"""The instance server's handling of sessions with results in flight, over real gRPC:
abandoned streams, results nobody reads, closing a busy session, execute-many inside a
transaction. Each test would hang or fail with LOCK_TIMEOUT / UNAVAILABLE without the
mechanism it names.

Uses raw gRPC stubs where the DB-API client would hide the situation (it reads ahead
and cancels its own streams).
"""

from __future__ import annotations

from concurrent import futures
from contextlib import closing

import grpc
import pytest

pytest.importorskip("borealdb.nodes.instance.server")

import borealdb  # noqa: E402
from borealdb.protos import sql_pb2, sql_pb2_grpc  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.integration

ROW_BYTES = 2000
ROWS = 3000  # 6 MB: more than gRPC's flow-control window, so an unread stream stalls the server


def _stub(url: str) -> tuple[grpc.Channel, sql_pb2_grpc.InstanceStub]:
    # No bandwidth-delay probing: it grows the flow-control window as fast as loopback
    # carries data, past the 6 MB an unread result must exceed to stall the server.
    channel = grpc.insecure_channel(url.removeprefix("boreal://").rstrip("/"), options=[("grpc.http2.bdp_probe", 0)])
    return channel, sql_pb2_grpc.InstanceStub(channel)


def _session(stub) -> str:
    return stub.OpenSession(sql_pb2.OpenSessionRequest(client_name="test")).session_id


def _big_table(url: str, name: str) -> None:
    with closing(borealdb.connect(url)) as conn:
        conn.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, body BLOB)")
        for start in range(0, ROWS, 500):
            conn.executemany(f"INSERT INTO {name} (id, body) VALUES (?, zeroblob(?))",
                             [(i, ROW_BYTES) for i in range(start, start + 500)])


def _select_all(sid: str, name: str) -> sql_pb2.ExecuteRequest:
    return sql_pb2.ExecuteRequest(session_id=sid, sql=f"SELECT id, body FROM {name} ORDER BY id", batch_rows=10)


def _rows(call) -> int:
    return sum(len(msg.rows) for msg in call)


@pytest.fixture
def small_pool(make_cluster):
    """A writer with 2 snapshot connections (and so 2 read threads)."""
    cluster = make_cluster(name="pool2", instances=True, instance_args=["--option", "snapshot_pool_size=2"])
    url = cluster.writer_url()
    _big_table(url, "big")
    return url


def test_a_stream_abandoned_mid_result_frees_its_session_for_the_next_request(sql_cluster):
    _big_table(sql_cluster.url, "big")
    channel, stub = _stub(sql_cluster.url)
    with channel:
        sid = _session(stub)
        for _ in range(10):
            call = stub.Execute(_select_all(sid, "big"))
            assert len(next(call).rows) == 10
            call.cancel()
            # At once, on the same session: the abandoned result is closed first, in order.
            one = stub.ExecuteOne(sql_pb2.ExecuteRequest(session_id=sid, sql="SELECT count(*) FROM big"))
            assert one.rows[0].values[0].integer == ROWS


def test_reads_waiting_for_a_snapshot_never_starve_the_streams_that_hold_them(small_pool):
    """Two unread streams hold both snapshots; two more reads arrive. The newcomers must
    wait without taking the read threads that the holders need to finish."""
    channel, stub = _stub(small_pool)
    with channel, futures.ThreadPoolExecutor(4) as pool:
        holders = [stub.Execute(_select_all(_session(stub), "big")) for _ in range(2)]
        first = [len(next(call).rows) for call in holders]   # both hold a snapshot now
        assert first == [10, 10]
        waiting = [pool.submit(_rows, stub.Execute(_select_all(_session(stub), "big"))) for _ in range(2)]
        waiting.append(pool.submit(stub.ExecuteOne, sql_pb2.ExecuteRequest(session_id=_session(stub),
                                                                           sql="SELECT count(*) FROM big")))
        done, _ = futures.wait(waiting, timeout=1.0)  # let them reach the server (they cannot finish yet)
        assert not done
        for call in holders:
            assert _rows(call) == ROWS - 10
        assert [f.result(timeout=120) for f in waiting[:2]] == [ROWS, ROWS]
        assert waiting[2].result(timeout=120).rows[0].values[0].integer == ROWS


def test_closing_a_session_with_an_unread_result_does_not_stall_other_sessions(small_pool):
    channel, stub = _stub(small_pool)
    with channel, closing(borealdb.connect(small_pool)) as other, futures.ThreadPoolExecutor(1) as pool:
        other.execute("CREATE TABLE w (v INTEGER)")
        sid = _session(stub)
        holder = stub.Execute(_select_all(sid, "big"))
        assert len(next(holder).rows) == 10
        close_call = pool.submit(stub.CloseSession, sql_pb2.CloseSessionRequest(session_id=sid))
        # The close waits for the session's result; the writer keeps serving everyone else.
        for i in range(20):
            other.execute("INSERT INTO w VALUES (?)", (i,))
        assert other.execute("SELECT count(*) FROM w").fetchone() == (20,)
        assert not close_call.done()
        holder.cancel()
        close_call.result(timeout=60)
        with pytest.raises(grpc.RpcError) as e:
            stub.ExecuteOne(sql_pb2.ExecuteRequest(session_id=sid, sql="SELECT 1"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND  # SESSION_EXPIRED


def test_executemany_inside_a_transaction_uses_the_transactions_lock(sql_cluster):
    with closing(borealdb.connect(sql_cluster.url)) as conn:
        conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
        conn.begin()
        conn.execute("INSERT INTO m (v) VALUES ('first')")
        cur = conn.cursor()
        cur.executemany("INSERT INTO m (v) VALUES (?)", [("a",), ("b",), ("c",)])
        assert cur.rowcount == 3
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM m").fetchone() == (0,)
        conn.begin()
        cur.executemany("INSERT INTO m (v) VALUES (?)", [("a",), ("b",)])
        with pytest.raises(borealdb.IntegrityError):  # the transaction stays open, as in SQLite
            cur.executemany("INSERT INTO m (v) VALUES (?)", [("c",), ("a",)])
        assert conn.in_transaction
        conn.commit()
        assert [r[0] for r in conn.execute("SELECT v FROM m ORDER BY v")] in (["a", "b"], ["a", "b", "c"])


def test_an_error_that_reveals_a_row_leaves_only_once_that_row_is_durable(sql_cluster):
    """A UNIQUE violation tells that a row exists. With 3 of 6 storage nodes paused (no
    write quorum), two sessions insert the same key: one commits (and waits for the
    quorum), the other's violation reveals that commit, so it must wait just as long."""
    url = sql_cluster.url
    cluster = sql_cluster.cluster
    conns = [borealdb.connect(url) for _ in range(2)]
    conns[0].execute("CREATE TABLE u (k INTEGER PRIMARY KEY)")
    paused = cluster.nodes_in_az("b") + cluster.nodes_in_az("c")[:1]
    try:
        for node in paused:
            node.pause()
        with futures.ThreadPoolExecutor(2) as pool:
            inserts = [pool.submit(c.execute, "INSERT INTO u (k) VALUES (1)") for c in conns]
            done, _ = futures.wait(inserts, timeout=1.0)
            assert not done, "a reply left while the change it saw was not durable"
            for node in paused:
                node.resume()
            paused = []
            outcomes = sorted(type(f.exception(timeout=60)).__name__ for f in inserts)
        assert outcomes == ["IntegrityError", "NoneType"]
        assert conns[1].execute("SELECT k FROM u").fetchall() == [(1,)]
    finally:
        for node in paused:
            node.resume()
        for c in conns:
            c.close()


def test_open_statement_streams_do_not_use_up_the_rpc_limit_but_statements_in_flight_do(make_cluster):
    """Every client connection holds a Statements stream for its lifetime. With an RPC
    limit of 1, many connections still work; a statement beyond the limit of statements
    in flight is answered UNAVAILABLE, and the connection stays usable; a session inside
    a transaction is never refused, so the lock holder can always commit."""
    cluster = make_cluster(name="rpc1", instances=True, instance_args=["--option", "max_concurrent_rpcs=1"])
    url = cluster.writer_url()
    conns = [borealdb.connect(url, client_name=f"c{i}") for i in range(6)]
    try:
        for c in conns:  # each opens its stream and keeps it
            assert c.execute("SELECT 1").fetchone() == (1,)
        holder, waiter, third = conns[:3]
        holder.execute("CREATE TABLE t (x)")
        holder.begin()
        holder.execute("INSERT INTO t VALUES (1)")  # holds the write lock
        with futures.ThreadPoolExecutor(1) as pool:
            blocked = pool.submit(waiter.execute, "INSERT INTO t VALUES (2)")  # waits for the lock: in flight

            def refused() -> bool:
                try:
                    third.execute("SELECT 1")
                except borealdb.Unavailable as e:
                    assert "statements in flight" in str(e)
                    return True
                return False

            wait_until(refused, 30, "a statement beyond the limit refused while another waits for the lock")
            holder.commit()  # in a transaction: let through, and it frees the waiter
            blocked.result(timeout=30)
        assert third.execute("SELECT count(*) FROM t").fetchone() == (2,)
    finally:
        for c in conns:
            c.close()
