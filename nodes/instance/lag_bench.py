"""`boreal bench lag`: read replica lag and replica read throughput (optionally vs a PostgreSQL standby).

Lag is measured as the PostgreSQL anchor measures it (shared/anchors/pg_lag.py): a
probe connection INSERTs a row on the writer and, once the INSERT is acknowledged,
polls one replica (alternating) with a point SELECT until the row is visible; lag =
visible - acknowledged, so the final poll's round trip is included. A probe every
20 ms while a separate process (so that its threads do not share the probe's
interpreter lock) loads the writer with plain INSERTs (no RETURNING, as the anchor's
load does) at a paced rate, then unpaced at the
highest rate its threads reach. Then 8 connections spread over the replicas run point
SELECTs by primary key for a fixed time.

By default a private cluster (6 storage nodes, writer i-a1, readers i-b1 and i-c1)
is started on 127.0.0.1 in a temporary directory. `--url boreal://W/ --replicas
boreal://R1/,boreal://R2/` uses running nodes. `--target postgresql://primary
--standby postgresql://standby` runs the same against PostgreSQL streaming
replication in the same run. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import sys
import contextlib
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from borealdb.nodes.benchutil import percentile, print_table, private_cluster, run_workers

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
    polls_per_probe: float = float("nan")   # SELECTs until the row was visible (1: at the first)
    final_poll_p50_ms: float = float("nan")  # round trip of the SELECT that saw the row (part of the lag)


@dataclass
class SelectResult:
    system: str
    connections: int
    selects_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


PROBE_GAP_S = 0.02      # between lag probes, as the PostgreSQL anchor's pg_lag.py
PROBE_TIMEOUT_S = 10.0  # a row not visible on a replica after this counts as an error


def _connect(spec: tuple[str, str]):
    """A connection from a picklable spec: ("borealdb", URL) or ("postgresql", DSN)."""
    kind, address = spec
    if kind == "borealdb":
        import borealdb

        return borealdb.connect(address, client_name="boreal-bench-lag")
    import psycopg

    return psycopg.connect(address, autocommit=True)


class _Driver:
    def __init__(self, system: str, writer: tuple[str, str], replicas: list[tuple[str, str]], placeholder: str):
        self.system = system
        self.writer = writer
        self.replicas = replicas
        self.ph = placeholder

    def connect_writer(self):
        return _connect(self.writer)

    @property
    def connect_replicas(self) -> list[Callable[[], Any]]:
        return [lambda spec=spec: _connect(spec) for spec in self.replicas]

    def insert(self, conn) -> int:
        cur = conn.cursor()
        cur.execute(f"INSERT INTO lag_kv(v) VALUES ({self.ph}) RETURNING id", (VALUE,))
        return cur.fetchone()[0]

    def load_insert(self, conn) -> None:
        """The load's write: no RETURNING, as the anchor's load (only the probe needs the key)."""
        conn.cursor().execute(f"INSERT INTO lag_kv(v) VALUES ({self.ph})", (VALUE,))

    def visible(self, conn, key: int) -> bool:
        cur = conn.cursor()
        cur.execute(f"SELECT 1 FROM lag_kv WHERE id = {self.ph}", (key,))
        return cur.fetchone() is not None

    def max_id(self, conn) -> int:
        cur = conn.cursor()
        cur.execute("SELECT max(id) FROM lag_kv")
        return cur.fetchone()[0] or 0

    def point(self, conn, key: int) -> None:
        cur = conn.cursor()
        cur.execute(f"SELECT v FROM lag_kv WHERE id = {self.ph}", (key,))
        cur.fetchall()


def _load(writer: tuple[str, str], placeholder: str, rate: float | None, threads: int, duration_s: float,
          out, ready) -> None:
    """The load process: `threads` connections INSERT for duration_s (paced to `rate` in
    total, or as fast as they go); puts (inserts, errors) on `out`."""
    d = _Driver("", writer, [], placeholder)
    done, errors = [0], [0]
    lock = threading.Lock()

    def worker(i: int, deadline: float) -> None:
        conn = d.connect_writer()
        interval = threads / rate if rate else 0.0
        next_t = time.perf_counter() + random.random() * interval
        while time.monotonic() < deadline:
            if interval:
                delay = next_t - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_t += interval
            try:
                d.load_insert(conn)
            except Exception:  # noqa: BLE001 - counted
                errors[0] += 1
                continue
            with lock:
                done[0] += 1
        conn.close()

    ready.set()
    run_workers(threads, duration_s, worker)
    out.put((done[0], errors[0]))


def _measure_lag(d: _Driver, load: str, rate: float | None, writers: int, duration_s: float) -> LagResult:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of our threads and channels
    out, ready = ctx.Queue(), ctx.Event()
    loader = ctx.Process(target=_load, args=(d.writer, d.ph, rate, writers, duration_s, out, ready), daemon=True)
    loader.start()
    if not ready.wait(60):
        loader.terminate()
        raise RuntimeError("the load process did not start")
    writer = d.connect_writer()
    replicas = [make() for make in d.connect_replicas]
    lags: list[float] = []
    final_polls: list[float] = []
    polls = 0
    errors = 0
    probes = 0
    t0 = time.monotonic()
    deadline = t0 + duration_s
    try:
        while time.monotonic() < deadline and loader.is_alive():
            replica = replicas[probes % len(replicas)]
            probes += 1
            try:
                key = d.insert(writer)
                acked = time.perf_counter()
                while True:
                    polled = time.perf_counter()
                    polls += 1
                    if d.visible(replica, key):
                        break
                    if polled - acked > PROBE_TIMEOUT_S:
                        raise TimeoutError(f"row {key} not visible on a replica after {PROBE_TIMEOUT_S:g}s")
                seen = time.perf_counter()
                lags.append((seen - acked) * 1000)
                final_polls.append((seen - polled) * 1000)
            except Exception as exc:  # noqa: BLE001 - counted
                errors += 1
                if errors == 1:
                    print(f"  lag probe: {type(exc).__name__}: {exc}", file=sys.stderr)
            time.sleep(PROBE_GAP_S)
        elapsed = time.monotonic() - t0
        try:
            inserts, load_errors = out.get(timeout=duration_s + 60)
        except queue.Empty:
            inserts, load_errors = 0, 1
        loader.join(timeout=10)
    finally:
        if loader.is_alive():
            loader.terminate()
        for c in [writer, *replicas]:
            c.close()
    lags.sort()
    final_polls.sort()
    return LagResult(d.system, load, round((inserts + probes) / elapsed, 1), len(lags), round(percentile(lags, 0.5), 2),
                     round(percentile(lags, 0.99), 2), round(lags[-1], 2) if lags else float("nan"),
                     errors + load_errors, round(polls / max(1, probes), 2), round(percentile(final_polls, 0.5), 2))


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
    d = _Driver("borealdb", ("borealdb", url), [("borealdb", u) for u in replica_urls], "?")
    w = d.connect_writer()
    w.cursor().execute("CREATE TABLE IF NOT EXISTS lag_kv(id INTEGER PRIMARY KEY, v TEXT)")
    w.close()
    return d


def _postgres_driver(primary: str, standby: str) -> _Driver:
    try:
        import psycopg
    except ImportError:
        raise SystemExit("--target postgresql:// needs psycopg 3: pip install 'psycopg[binary]'") from None
    with psycopg.connect(primary, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS lag_kv(id BIGSERIAL PRIMARY KEY, v TEXT)")
    return _Driver("postgresql", ("postgresql", primary), [("postgresql", standby)], "%s")


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
        _measure_lag(d, f"{args.rate:g} writes/s", args.rate, args.writers, args.duration_s),
        _measure_lag(d, "max (unpaced)", None, args.max_writers, args.duration_s),
    ]
    sel = _measure_selects(d, args.connections, args.duration_s)
    return results, sel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="boreal bench lag", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running writer boreal://HOST:PORT/ (default: start a private cluster)")
    p.add_argument("--replicas", help="comma-separated replica URLs (with --url)")
    p.add_argument("--rate", type=float, default=1000.0, help="paced write rate (default 1000/s)")
    p.add_argument("--writers", type=int, default=16, help="writer threads at the paced rate (default 16)")
    p.add_argument("--max-writers", type=int, default=32, help="writer threads unpaced (default 32)")
    p.add_argument("--connections", type=int, default=8, help="SELECT connections across replicas (default 8)")
    p.add_argument("--duration-s", type=float, default=5.0, help="seconds per measurement (default 5)")
    p.add_argument("--target", help="PostgreSQL primary DSN postgresql://... (needs --standby)")
    p.add_argument("--standby", help="PostgreSQL standby DSN")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.target and not args.standby:
        p.error("--target needs --standby (the DSN of a streaming-replication standby)")

    with contextlib.ExitStack() as stack:
        if args.url:
            if not args.replicas:
                p.error("--url needs --replicas")
            url, replica_urls = args.url, args.replicas.split(",")
        else:
            from borealdb.nodes.cluster.local import UP_INSTANCES

            cluster = stack.enter_context(private_cluster("6 storage nodes, writer, 2 readers",
                                                          timeout_s=60, instances=UP_INSTANCES))
            url = cluster.writer_url()
            replica_urls = [f"boreal://{n.address}/" for n in cluster.readers()]
        lag, sel = _run(_boreal_driver(url, replica_urls), args)
        if args.target:
            pg_lag, pg_sel = _run(_postgres_driver(args.target, args.standby), args)
            lag += pg_lag
            sel = [sel, pg_sel]
        else:
            sel = [sel]
    if args.json:
        print(json.dumps({"lag": [asdict(r) for r in lag], "selects": [asdict(s) for s in sel]}, indent=2))
        return 0
    print("\nreplica lag: INSERT acknowledged by the writer -> row visible on a replica "
          f"(a probe every {PROBE_GAP_S * 1000:g} ms, polling until visible; LOAD from a separate process)")
    print_table(["SYSTEM", "LOAD", "WRITES/S", "SAMPLES", "P50 MS", "P99 MS", "MAX MS", "POLLS/PROBE", "LAST POLL P50 MS",
                 "ERRORS"],
                [[r.system, r.load, r.writes_per_s, r.samples, r.lag_p50_ms, r.lag_p99_ms, r.lag_max_ms, r.polls_per_probe,
                  r.final_poll_p50_ms, r.errors] for r in lag])
    print("(LAST POLL: the round trip of the SELECT that found the row, included in the lag; "
          "POLLS/PROBE 1.0: always visible at the first SELECT)")
    print(f"\npoint SELECTs by primary key on the replicas, {args.connections} connections")
    print_table(["SYSTEM", "CONNS", "SELECTS/S", "P50 MS", "P99 MS", "ERRORS"],
                [[s.system, s.connections, s.selects_per_s, s.p50_ms, s.p99_ms, s.errors] for s in sel])
    return 0


if __name__ == "__main__":
    sys.exit(main())
