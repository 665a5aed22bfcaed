"""`boreal bench lag`: read replica lag and replica read throughput (optionally vs a PostgreSQL standby).

Lag is measured end to end through the client library: writer threads insert rows
into `lag_kv` at a paced rate (and then unpaced, at the highest rate they reach) and
note when each INSERT was acknowledged; one poller connection per replica runs
`SELECT max(id) FROM lag_kv` in a loop and notes when each id first became visible.
Lag = visible on the replica - acknowledged by the writer (a row may be visible
before its ack reaches the client: such samples count as 0). The poll loop's own
round trip bounds the resolution. Then 8 connections spread over the replicas run
point SELECTs by primary key for a fixed time.

By default a private cluster (6 storage nodes, writer i-a1, readers i-b1 and i-c1)
is started on 127.0.0.1 in a temporary directory. `--url boreal://W/ --replicas
boreal://R1/,boreal://R2/` uses running nodes. `--target postgresql://primary
--standby postgresql://standby` runs the same against PostgreSQL streaming
replication in the same run. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from borealdb.nodes.benchutil import percentile, print_table, run_workers

VALUE = "v" * 100


@dataclass
class LagResult:
    system: str
    load: str
    writes_per_s: float
    samples: int
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    errors: int


@dataclass
class SelectResult:
    system: str
    connections: int
    selects_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


class _Driver:
    """What differs between borealdb and PostgreSQL."""

    def __init__(self, system: str, connect_writer: Callable[[], Any], connect_replicas: list[Callable[[], Any]],
                 placeholder: str):
        self.system = system
        self.connect_writer = connect_writer
        self.connect_replicas = connect_replicas
        self.ph = placeholder

    def insert(self, conn) -> int:
        cur = conn.cursor()
        cur.execute(f"INSERT INTO lag_kv(v) VALUES ({self.ph}) RETURNING id", (VALUE,))
        return cur.fetchone()[0]

    def max_id(self, conn) -> int:
        cur = conn.cursor()
        cur.execute("SELECT max(id) FROM lag_kv")
        return cur.fetchone()[0] or 0

    def point(self, conn, key: int) -> None:
        cur = conn.cursor()
        cur.execute(f"SELECT v FROM lag_kv WHERE id = {self.ph}", (key,))
        cur.fetchall()


def _measure_lag(d: _Driver, load: str, rate: float | None, writers: int, duration_s: float) -> LagResult:
    acked: dict[int, float] = {}
    seen: list[dict[int, float]] = [dict() for _ in d.connect_replicas]
    errors = [0]
    lock = threading.Lock()
    stop = threading.Event()
    start_id = [0]
    conn0 = d.connect_writer()
    start_id[0] = d.max_id(conn0)
    conn0.close()

    def writer(i: int) -> None:
        conn = d.connect_writer()
        interval = writers / rate if rate else 0.0
        next_t = time.perf_counter() + random.random() * interval
        while not stop.is_set():
            if interval:
                delay = next_t - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_t += interval
            try:
                key = d.insert(conn)
            except Exception as exc:  # noqa: BLE001 - counted
                errors[0] += 1
                if errors[0] == 1:
                    print(f"  writer: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            t = time.perf_counter()
            with lock:
                acked[key] = t
        conn.close()

    def poller(j: int) -> None:
        conn = d.connect_replicas[j]()
        mine = seen[j]
        last = start_id[0]
        while not stop.is_set():
            try:
                top = d.max_id(conn)
            except Exception:  # noqa: BLE001
                errors[0] += 1
                continue
            t = time.perf_counter()
            for key in range(last + 1, top + 1):
                mine[key] = t
            last = max(last, top)
        conn.close()

    threads = [threading.Thread(target=poller, args=(j,), daemon=True) for j in range(len(d.connect_replicas))]
    threads += [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(writers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    time.sleep(duration_s)
    elapsed = time.perf_counter() - t0
    stop_writers_at = len(acked)
    # let the pollers see the last rows (bounded)
    deadline = time.monotonic() + 5
    with lock:
        top = max(acked) if acked else 0
    while time.monotonic() < deadline and any(top and top not in s for s in seen):
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    lags = sorted(max(0.0, s[k] - a) * 1000 for k, a in acked.items() for s in seen if k in s)
    return LagResult(d.system, load, round(stop_writers_at / elapsed, 1), len(lags), round(percentile(lags, 0.5), 2),
                     round(percentile(lags, 0.99), 2), round(lags[-1], 2) if lags else float("nan"), errors[0])


def _measure_selects(d: _Driver, connections: int, duration_s: float) -> SelectResult:
    conn0 = d.connect_replicas[0]()
    top = max(1, d.max_id(conn0))
    conn0.close()
    lat: list[list[float]] = [[] for _ in range(connections)]
    errors = [0]
    conns = [d.connect_replicas[i % len(d.connect_replicas)]() for i in range(connections)]

    def worker(i: int, deadline: float) -> None:
        conn, rnd, mine = conns[i], random.Random(i), lat[i]
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                d.point(conn, rnd.randint(1, top))
            except Exception:  # noqa: BLE001
                errors[0] += 1
                continue
            mine.append(time.perf_counter() - t)

    elapsed = run_workers(connections, duration_s, worker)
    for conn in conns:
        conn.close()
    all_lat = sorted(x for per in lat for x in per)
    return SelectResult(d.system, connections, round(len(all_lat) / elapsed, 1), round(percentile(all_lat, 0.5) * 1000, 3),
                        round(percentile(all_lat, 0.99) * 1000, 3), errors[0])


def _boreal_driver(url: str, replica_urls: list[str]) -> _Driver:
    import borealdb

    def conn(u: str):
        return lambda: borealdb.connect(u, client_name="boreal-bench-lag")

    w = borealdb.connect(url)
    w.cursor().execute("CREATE TABLE IF NOT EXISTS lag_kv(id INTEGER PRIMARY KEY, v TEXT)")
    w.close()
    return _Driver("borealdb", conn(url), [conn(u) for u in replica_urls], "?")


def _postgres_driver(primary: str, standby: str) -> _Driver:
    try:
        import psycopg
    except ImportError:
        raise SystemExit("--target postgresql:// needs psycopg 3: pip install 'psycopg[binary]'") from None
    with psycopg.connect(primary, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS lag_kv(id BIGSERIAL PRIMARY KEY, v TEXT)")
    return _Driver("postgresql", lambda: psycopg.connect(primary, autocommit=True),
                   [lambda: psycopg.connect(standby, autocommit=True)], "%s")


def _wait_visible(d: _Driver) -> None:
    """Wait until the replicas have the table (bounded)."""
    deadline = time.monotonic() + 30
    for make in d.connect_replicas:
        while True:
            try:
                c = make()
                d.max_id(c)
                c.close()
                break
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _run(d: _Driver, args) -> tuple[list[LagResult], SelectResult]:
    _wait_visible(d)
    results = [
        _measure_lag(d, f"{args.rate:g} writes/s", args.rate, args.writers, args.duration),
        _measure_lag(d, "max (unpaced)", None, args.max_writers, args.duration),
    ]
    sel = _measure_selects(d, args.connections, args.duration)
    return results, sel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="boreal bench lag", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running writer boreal://HOST:PORT/ (default: start a private cluster)")
    p.add_argument("--replicas", help="comma-separated replica URLs (with --url)")
    p.add_argument("--rate", type=float, default=1000.0, help="paced write rate (default 1000/s)")
    p.add_argument("--writers", type=int, default=16, help="writer threads at the paced rate (default 16)")
    p.add_argument("--max-writers", type=int, default=32, help="writer threads unpaced (default 32)")
    p.add_argument("--connections", type=int, default=8, help="SELECT connections across replicas (default 8)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    p.add_argument("--target", help="PostgreSQL primary DSN postgresql://... (needs --standby)")
    p.add_argument("--standby", help="PostgreSQL standby DSN")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.target and not args.standby:
        p.error("--target needs --standby (the DSN of a streaming-replication standby)")

    cluster = tmp = None
    try:
        if args.url:
            if not args.replicas:
                p.error("--url needs --replicas")
            url, replica_urls = args.url, args.replicas.split(",")
        else:
            from borealdb.nodes.cluster.local import UP_INSTANCES, LocalCluster

            tmp = tempfile.TemporaryDirectory(prefix="boreal-bench-lag-")
            print(f"starting a private cluster in {tmp.name} ...", file=sys.stderr, flush=True)
            cluster = LocalCluster(tmp.name, instances=UP_INSTANCES)
            cluster.start(timeout_s=60)
            url = cluster.writer_url()
            replica_urls = [f"boreal://{n.address}/" for n in cluster.readers()]
        lag, sel = _run(_boreal_driver(url, replica_urls), args)
        if args.target:
            pg_lag, pg_sel = _run(_postgres_driver(args.target, args.standby), args)
            lag += pg_lag
            sel = [sel, pg_sel]
        else:
            sel = [sel]
    finally:
        if cluster is not None:
            cluster.stop_all()
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        print(json.dumps({"lag": [asdict(r) for r in lag], "selects": [asdict(s) for s in sel]}, indent=2))
        return 0
    print("\nreplica lag: INSERT acknowledged by the writer -> row visible on a replica (polled via the client)")
    print_table(["SYSTEM", "LOAD", "WRITES/S", "SAMPLES", "P50 MS", "P99 MS", "MAX MS", "ERRORS"],
                [[r.system, r.load, r.writes_per_s, r.samples, r.lag_p50_ms, r.lag_p99_ms, r.lag_max_ms, r.errors] for r in lag])
    print(f"\npoint SELECTs by primary key on the replicas, {args.connections} connections")
    print_table(["SYSTEM", "CONNS", "SELECTS/S", "P50 MS", "P99 MS", "ERRORS"],
                [[s.system, s.connections, s.selects_per_s, s.p50_ms, s.p99_ms, s.errors] for s in sel])
    return 0


if __name__ == "__main__":
    sys.exit(main())
