"""The SQL writer end to end: real storage nodes, a real writer process, the real client.

- kill -9 of the writer in the middle of a stream of acknowledged transactions,
  at random points: after a restart every acknowledged transaction is there, no
  transaction is partly visible, and `PRAGMA integrity_check` is ok.
- A whole AZ (2 storage nodes) killed under load: clients see no error.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.waiting import wait_until

pytest.importorskip("borealdb.nodes.instance.server", reason="the instance node is not built yet")

import borealdb  # noqa: E402
from borealdb import Error  # noqa: E402

pytestmark = pytest.mark.integration

ROWS_PER_TXN = 3


def _connect(url: str, deadline_s: float = 60.0):
    """Connect, retrying while the writer restarts (bounded by deadline_s)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return borealdb.connect(url, timeout_s=30)
        except Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Writers:
    """Client threads committing transactions of ROWS_PER_TXN rows, remembering which were acknowledged."""

    def __init__(self, url: str, threads: int):
        self.url = url
        self.acked: set[int] = set()
        self.uncertain: set[int] = set()
        self.errors: list[str] = []
        self._ids = iter(range(1, 10**9))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            txn = self._next_id()
            try:
                if conn is None:
                    conn = _connect(self.url)
                cur = conn.cursor()
                cur.execute("BEGIN")
                for i in range(ROWS_PER_TXN):
                    cur.execute("INSERT INTO t(txn, i, pad) VALUES (?, ?, ?)", (txn, i, "p" * 200))
                conn.commit()
                with self._lock:
                    self.acked.add(txn)
            except Error as exc:
                with self._lock:
                    self.uncertain.add(txn)
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                try:
                    if conn is not None:
                        conn.close()
                except Error:
                    pass
                conn = None

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def wait_for_acks(self, count: int, timeout_s: float = 60.0) -> None:
        start = len(self.acked)
        wait_until(lambda: len(self.acked) >= start + count, timeout_s,
                   f"{count} acknowledged transactions (errors: {self.errors[-3:]})")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _check_database(url: str, acked: set[int]) -> None:
    conn = _connect(url)
    cur = conn.cursor()
    cur.execute("SELECT txn, count(*) FROM t GROUP BY txn")
    counts = dict(cur.fetchall())
    missing = sorted(t for t in acked if counts.get(t) != ROWS_PER_TXN)
    assert not missing, f"acknowledged transactions lost or partial: {missing[:10]}"
    partial = {t: c for t, c in counts.items() if c != ROWS_PER_TXN}
    assert not partial, f"partly visible transactions: {partial}"
    cur.execute("PRAGMA integrity_check")
    assert cur.fetchall() == [("ok",)]
    conn.close()


def _create_table(url: str) -> None:
    conn = _connect(url)
    conn.cursor().execute("CREATE TABLE t(txn INTEGER, i INTEGER, pad TEXT, PRIMARY KEY (txn, i))")
    conn.close()


def test_writer_kill_9_loses_no_acknowledged_transaction(sql_cluster):
    url, cluster = sql_cluster.url, sql_cluster.cluster
    writer = next(n for n in cluster.nodes if n.role == "writer")
    _create_table(url)
    rng = random.Random(7)
    writers = Writers(url, threads=4)
    writers.start()
    try:
        for round_ in range(3):
            writers.wait_for_acks(rng.randint(5, 60))
            time.sleep(rng.uniform(0, 0.05))  # a random point inside the stream, not a wait for a mechanism
            writer.kill()
            writer.start()
            writer.wait_ready(timeout_s=60)
            writers.wait_for_acks(5)  # clients reconnect by themselves and go on
    finally:
        writers.stop()
    assert writers.acked
    _check_database(url, writers.acked)


def test_losing_a_whole_az_under_load_is_invisible_to_clients(sql_cluster):
    url, cluster = sql_cluster.url, sql_cluster.cluster
    _create_table(url)
    writers = Writers(url, threads=4)
    writers.start()
    try:
        writers.wait_for_acks(20)
        for node in cluster.nodes:
            if node.role == "storage" and node.az == "b":
                node.kill()
        writers.wait_for_acks(100)
    finally:
        writers.stop()
    assert writers.errors == [], writers.errors[:5]
    _check_database(url, writers.acked)


def test_a_deposed_writer_is_fenced_for_reads_and_writes(sql_cluster, tmp_path):
    from borealdb.nodes.cluster.local import Node, NodeSpec, free_port

    url, cluster = sql_cluster.url, sql_cluster.cluster
    _create_table(url)
    old = _connect(url)
    cur = old.cursor()
    cur.execute("INSERT INTO t(txn, i, pad) VALUES (1, 0, 'x')")
    # A second writer on the same volume: its recovery raises the epoch on every PG.
    spec = NodeSpec("i-b9", "b", role="writer", listen=f"127.0.0.1:{free_port()}", data_dir=tmp_path / "i-b9",
                    storage_nodes=cluster.storage_node_infos())
    new_writer = Node(spec)
    new_writer.start()
    try:
        new_writer.wait_ready(timeout_s=60)
        # The old writer either answers STALE_EPOCH or has already stopped (its heartbeat
        # to storage noticed the new epoch): both are refusals, and neither writes. If it
        # stops just as the INSERT reaches its open statement stream, the client cannot
        # know whether it ran: OutcomeUnknown, and the check below shows it did not.
        with pytest.raises((borealdb.StaleEpoch, borealdb.Unavailable, borealdb.OutcomeUnknown)):
            cur.execute("INSERT INTO t(txn, i, pad) VALUES (2, 0, 'y')")
        with pytest.raises((borealdb.StaleEpoch, borealdb.Unavailable)):
            cur.execute("SELECT count(*) FROM t")  # its cache may be stale: it must not answer
        fresh = _connect(f"boreal://{new_writer.address}/")
        c2 = fresh.cursor()
        c2.execute("SELECT txn FROM t")
        assert c2.fetchall() == [(1,)], "the fenced write changed nothing"
        fresh.close()
        old_writer = cluster.writer()
        deadline = time.monotonic() + 30
        while old_writer.is_running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not old_writer.is_running, "a fenced writer stops serving"
    finally:
        new_writer.stop()


@pytest.mark.parametrize("client", ["threads", "asyncio"])
def test_bench_commits_are_real_rows_with_either_client(sql_cluster, client):
    # `boreal bench`'s borealdb side, briefly: every commit it counts is a row in the table.
    from borealdb.nodes.instance.bench import _prepare_boreal, bench_boreal

    _prepare_boreal(sql_cluster.url)
    result = bench_boreal(sql_cluster.url, sql_cluster.writer.metrics_address, 3, 0.5, client=client)
    assert result.client == client and result.errors == 0 and result.commits > 0
    assert result.redo_bytes_per_commit and result.redo_bytes_per_commit > 0
    assert result.client_cpu_ms_per_commit and result.client_cpu_ms_per_commit > 0
    conn = borealdb.connect(sql_cluster.url)
    try:
        assert conn.cursor().execute("SELECT count(*) FROM bench_kv").fetchone()[0] == result.commits
    finally:
        conn.close()
