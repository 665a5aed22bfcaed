"""docker-compose.yml for real: build the image, start the project, write and read through the
published ports, and take nodes, a whole AZ and the writer away under a writer load.

Skipped without a Docker engine or a base image (see conftest.py). One project serves the
whole module (about 30 s to build from cache and start); each test undoes its faults.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

import borealdb
from tests.deploy.conftest import REPO, chaos
from tests.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

HOLD_S = 5.0


def _count(url: str, table: str) -> int:
    conn = chaos.connect_retrying(url, 30)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def _run_load_around(compose, fault, heal, *, hold_s: float = HOLD_S, writers: int = 4):
    """Start a writer load, inject `fault`, hold, `heal`, wait until storage caught up, stop.
    Returns (load, commits while the fault lasted)."""
    load = chaos.WriterLoad(compose.url("i-a1"), writers=writers).start()
    try:
        wait_until(lambda: len(load.acked) >= 20, 30, "the load's first commits")
        t0 = time.monotonic()
        fault()
        time.sleep(hold_s)
        during = load.commits_between(t0, time.monotonic())
        heal()
        compose.wait_healthy(timeout=120)
        compose.wait_caught_up(timeout=120)
        wait_until(lambda: load.commits_between(time.monotonic() - 1, time.monotonic() + 1) > 0, 30,
                   "commits after the fault was healed", interval_s=0.2)
    finally:
        load.stop()
    return load, during


def _assert_nothing_lost(compose, load) -> None:
    lost = load.lost(compose.url("i-a1"))
    assert not lost, f"{len(lost)} acknowledged rows missing on the writer, e.g. {lost[:5]}"
    writer_rows = load.rows_on(compose.url("i-a1"))
    assert load.acked <= writer_rows
    for reader in chaos.READERS:
        wait_until(lambda: load.rows_on(compose.url(reader)) == writer_rows, 30,
                   f"{reader} to show the writer's {len(writer_rows)} rows", interval_s=0.5)


def test_round_trip_writer_to_readers(healthy):
    compose = healthy
    writer = borealdb.connect(compose.url("i-a1"))
    try:
        writer.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
        writer.execute("INSERT INTO notes (body) VALUES (?), (?)", ("hello", "from the host"))
        want = writer.execute("SELECT id, body FROM notes ORDER BY id").fetchall()
    finally:
        writer.close()
    assert [r[1] for r in want[-2:]] == ["hello", "from the host"]
    for reader in chaos.READERS:
        conn = chaos.connect_retrying(compose.url(reader))
        try:
            wait_until(lambda: conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall() == want, 30,
                       f"{reader} to show the writer's rows", interval_s=0.1, tolerate=(borealdb.Error,))
            with pytest.raises(borealdb.ReadOnly):
                conn.execute("INSERT INTO notes (body) VALUES ('no')")
        finally:
            conn.close()
    # The shell, as a user runs it from the host.
    out = subprocess.run([str(REPO / ".venv/bin/boreal"), "sql", compose.url("i-b1"), "-c", "SELECT count(*) FROM notes"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert str(len(want)) in out.stdout


def test_status_of_the_compose_cluster(healthy):
    """`chaos.py status` = `boreal status` on a cluster.json naming the containers."""
    out = subprocess.run([sys.executable, str(REPO / "deploy/chaos.py"), "-p", healthy.name, "status"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    for node in chaos.ALL_SERVICES:
        line = next(l for l in out.stdout.splitlines() if l.startswith(node + " "))
        assert " up " in line, line
    report = healthy.status()
    assert all(n["up"] for n in report["nodes"])
    assert report["pgs"] and all(pg["reporting"] == 6 for pg in report["pgs"])


def test_az_outage_under_writes_loses_nothing(healthy):
    """Both storage nodes of AZ b stopped while 4 clients write: every write still commits
    (4 of 6 segments left), no client sees an error, and once the AZ is back gossip brings
    its segments up to the writer's VDL."""
    compose = healthy
    nodes = chaos.STORAGE_SERVICES["b"]
    t0 = time.monotonic()
    load, during = _run_load_around(compose, lambda: compose.stop(*nodes), lambda: compose.start(*nodes))
    elapsed = time.monotonic() - t0
    print(f"\nAZ b outage: {during} commits in the {HOLD_S:.0f}s outage, {len(load.acked)} in all, test {elapsed:.1f}s")
    assert not load.events, f"client errors during the AZ outage: {[e.detail for e in load.events[:5]]}"
    assert during > 0, "no write committed while AZ b was down"
    _assert_nothing_lost(compose, load)


def test_az_cut_off_the_network_under_writes(healthy):
    """AZ c's storage nodes and reader disconnected from the `storage` network: writes go on
    (quorum in a and b); after reconnecting, AZ c catches up and its reader sees every row."""
    compose = healthy
    load, during = _run_load_around(compose, lambda: compose.cut_az("c"), lambda: compose.heal_az("c"))
    assert not load.events, f"client errors while AZ c was cut off: {[e.detail for e in load.events[:5]]}"
    assert during > 0
    _assert_nothing_lost(compose, load)


def test_pause_and_unpause(healthy):
    """A frozen storage node is invisible to clients; a frozen writer holds a request,
    which completes once it thaws."""
    compose = healthy
    load, during = _run_load_around(compose, lambda: compose.pause("s-a1"), lambda: compose.unpause("s-a1"))
    assert not load.events, f"client errors while s-a1 was paused: {[e.detail for e in load.events[:5]]}"
    assert during > 0
    _assert_nothing_lost(compose, load)

    conn = chaos.connect_retrying(compose.url("i-a1"))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS paused (id INTEGER PRIMARY KEY, v TEXT)")
        compose.pause("i-a1")
        try:
            result = {}

            def insert():
                try:
                    conn.execute("INSERT INTO paused (v) VALUES ('while frozen')")
                    result["ok"] = time.monotonic()
                except borealdb.Error as e:  # pragma: no cover - reported below
                    result["error"] = e

            t = threading.Thread(target=insert)
            t.start()
            time.sleep(2.0)
            assert not result, f"the insert finished while the writer was frozen: {result}"
            t_unpause = time.monotonic()
        finally:
            compose.unpause("i-a1")
        t.join(30)
        assert "error" not in result, result.get("error")
        assert result.get("ok", 0) >= t_unpause
        assert conn.execute("SELECT count(*) FROM paused WHERE v = 'while frozen'").fetchone()[0] >= 1
    finally:
        conn.close()


def test_writer_crash_keeps_every_acknowledged_row(healthy):
    """docker kill of the writer under load: clients see errors while it is down (no writer
    failover yet), but every row acknowledged before the crash is there after it recovers."""
    compose = healthy
    load, _ = _run_load_around(compose, lambda: compose.kill("i-a1"), lambda: compose.start("i-a1"), hold_s=2)
    assert load.events, "expected client errors while the writer was down"
    _assert_nothing_lost(compose, load)


def test_chaos_cli_run(healthy):
    """The chaos script end to end, as documented: a short fault schedule, exit 0, PASS."""
    out = subprocess.run([sys.executable, str(REPO / "deploy/chaos.py"), "-p", healthy.name, "run",
                          "--faults", "kill-storage,pause-reader", "--hold-s", "2", "--writers", "2", "--seed", "7"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS" in out.stdout and "lost (acknowledged but missing on the writer): 0" in out.stdout
