"""`boreal bench`: single-row INSERT commits through the SQL client, and the same against PostgreSQL.

Every client has its own connection and loops on one autocommit
`INSERT INTO bench_kv(v) VALUES (?)` with a 100-byte value: each statement is a
transaction that returns only once durable (on borealdb: VDL >= its commit LSN, i.e.
4 of 6 storage segments have it). Printed per concurrency level: commits/s, p50/p99
latency and, for borealdb, bytes sent from the writer to storage per commit
(serialized Append requests to all 6 segments), redo payload bytes per commit, and CPU
time per commit of the writer process and of all node processes together (from their
Prometheus endpoints; the clients, in this process, have a column of their own).

By default it starts a private cluster (6 storage nodes, 2 per AZ, and a writer) on
127.0.0.1 in a temporary directory and stops it afterwards. `--url boreal://H:P/`
uses a running writer instead (add `--metrics H:P` for its byte counts and CPU).
`--target postgresql://...` runs the same workload against PostgreSQL (psycopg 3) in
the same run and prints borealdb / PostgreSQL ratios.

`--client threads` (the default) runs each client on a thread of its own with the
synchronous drivers (borealdb.connect, psycopg.connect), as the anchor's figure of
about 4,000 commits/s at 32 psycopg connections was measured. `--client asyncio` runs
all clients as tasks of one event loop with the asyncio drivers (borealdb.aio,
psycopg.AsyncConnection), for both systems alike. The clients run in this process,
on the same cores as the servers; their CPU per commit while they ran is the "client
CPU" column (this process's CPU time, not counted in the node columns).

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from borealdb.nodes.benchutil import percentile, print_table, private_cluster, run_workers

VALUE = "v" * 100


@dataclass
class LevelResult:
    system: str
    clients: int
    commits: int
    duration_s: float
    commits_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    wire_bytes_per_commit: float | None = None
    redo_bytes_per_commit: float | None = None
    writer_cpu_ms_per_commit: float | None = None   # the writer process's CPU time
    nodes_cpu_ms_per_commit: float | None = None    # every node process of the private cluster
    client: str = "threads"                          # --client: threads or asyncio
    client_cpu_ms_per_commit: float | None = None    # this process (the clients), while they ran


def _metrics(address: str | None) -> dict[str, float]:
    """Sum of each sample name on the Prometheus endpoint at `address`."""
    if not address:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:  # loopback only
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


class _Tally:
    """Latencies (seconds) and errors of the clients of one level; each client writes only its own slot."""

    def __init__(self, clients: int):
        self.latencies: list[list[float]] = [[] for _ in range(clients)]
        self.errors = [0] * clients

    def failed(self, i: int, exc: Exception) -> None:
        self.errors[i] += 1
        if self.errors[i] == 1:  # shown once per client
            print(f"  client {i}: {type(exc).__name__}: {exc}", file=sys.stderr)

    def result(self, elapsed: float, cpu_s: float) -> tuple[list[float], int, float, float]:
        return sorted(x for per in self.latencies for x in per), sum(self.errors), elapsed, cpu_s


def _process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _run_threads(clients: int, duration_s: float, make_conn, insert) -> tuple[list[float], int, float, float]:
    tally = _Tally(clients)
    conns: list[Any] = []
    try:
        for _ in range(clients):
            conns.append(make_conn())

        def worker(i: int, deadline: float) -> None:
            conn, mine = conns[i], tally.latencies[i]
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    insert(conn)
                except Exception as exc:  # noqa: BLE001 - counted
                    tally.failed(i, exc)
                    continue
                mine.append(time.perf_counter() - t0)

        cpu0 = _process_cpu_s()
        elapsed = run_workers(clients, duration_s, worker)
        cpu_s = _process_cpu_s() - cpu0
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()
    return tally.result(elapsed, cpu_s)


def _run_asyncio(clients: int, duration_s: float, make_conn, insert) -> tuple[list[float], int, float, float]:
    """_run_threads with every client a task of one new event loop (make_conn, insert and
    the connections' close() are coroutines)."""

    async def run() -> tuple[list[float], int, float, float]:
        tally = _Tally(clients)
        opened = await asyncio.gather(*(make_conn() for _ in range(clients)), return_exceptions=True)
        conns = [c for c in opened if not isinstance(c, BaseException)]
        try:
            for c in opened:
                if isinstance(c, BaseException):
                    raise c

            async def worker(i: int, deadline: float) -> None:
                conn, mine = conns[i], tally.latencies[i]
                while time.monotonic() < deadline:
                    t0 = time.perf_counter()
                    try:
                        await insert(conn)
                    except Exception as exc:  # noqa: BLE001 - counted
                        tally.failed(i, exc)
                        await asyncio.sleep(0)  # a call that fails without awaiting must not starve the others
                        continue
                    mine.append(time.perf_counter() - t0)

            start, cpu0 = time.monotonic(), _process_cpu_s()
            await asyncio.gather(*(worker(i, start + duration_s) for i in range(clients)))
            elapsed, cpu_s = time.monotonic() - start, _process_cpu_s() - cpu0
        finally:
            for c in conns:
                with contextlib.suppress(Exception):
                    await c.close()
        return tally.result(elapsed, cpu_s)

    return asyncio.run(run())


# --client: how the clients of a level run (make_conn/insert are coroutines for asyncio).
_RUNNERS = {"threads": _run_threads, "asyncio": _run_asyncio}


def _cpu_s(addresses: list[str]) -> float | None:
    """CPU seconds so far of the node processes behind these metrics endpoints."""
    if not addresses:
        return None
    return sum(_metrics(a).get("process_cpu_seconds_total", 0.0) for a in addresses)


def bench_boreal(url: str, metrics_address: str | None, clients: int, duration_s: float,
                 node_metrics: list[str] | None = None, client: str = "threads") -> LevelResult:
    import borealdb
    import borealdb.aio

    sql = "INSERT INTO bench_kv(v) VALUES (?)"
    if client == "asyncio":
        async def make_conn():
            return await borealdb.aio.connect(url, client_name="boreal-bench")

        async def insert(conn):
            await conn.execute(sql, (VALUE,))
    else:
        def make_conn():
            return borealdb.connect(url, client_name="boreal-bench")

        def insert(conn):
            conn.cursor().execute(sql, (VALUE,))

    # Sampled around the whole level, connection set-up included (a few calls per client).
    before, nodes_before = _metrics(metrics_address), _cpu_s(node_metrics or [])
    lat, errors, elapsed, client_cpu_s = _RUNNERS[client](clients, duration_s, make_conn, insert)
    after, nodes_after = _metrics(metrics_address), _cpu_s(node_metrics or [])
    commits = len(lat)

    def per_commit(key: str, scale: float, digits: int) -> float | None:
        if not (before and after and commits):
            return None
        return round((after.get(key, 0) - before.get(key, 0)) * scale / commits, digits)

    nodes_cpu = None
    if nodes_before is not None and nodes_after is not None and commits:
        nodes_cpu = round((nodes_after - nodes_before) * 1000 / commits, 2)
    return LevelResult("borealdb", clients, commits, round(elapsed, 2), round(commits / elapsed, 1),
                       round(percentile(lat, 0.5) * 1000, 2), round(percentile(lat, 0.99) * 1000, 2), errors,
                       per_commit("boreal_volume_bytes_sent_total", 1, 1), per_commit("boreal_sql_redo_bytes_total", 1, 1),
                       per_commit("process_cpu_seconds_total", 1000, 2), nodes_cpu, client,
                       _client_cpu_ms(client_cpu_s, commits))


def bench_postgres(dsn: str, clients: int, duration_s: float, client: str = "threads") -> LevelResult:
    try:
        import psycopg
    except ImportError:
        raise SystemExit("--target postgresql:// needs psycopg 3: pip install 'psycopg[binary]'") from None

    sql = "INSERT INTO bench_kv(v) VALUES (%s)"
    if client == "asyncio":
        async def make_conn():
            return await psycopg.AsyncConnection.connect(dsn, autocommit=True)

        async def insert(conn):
            await conn.execute(sql, (VALUE,))
    else:
        def make_conn():
            return psycopg.connect(dsn, autocommit=True)

        def insert(conn):
            conn.execute(sql, (VALUE,))

    lat, errors, elapsed, client_cpu_s = _RUNNERS[client](clients, duration_s, make_conn, insert)
    commits = len(lat)
    return LevelResult("postgresql", clients, commits, round(elapsed, 2), round(commits / elapsed, 1),
                       round(percentile(lat, 0.5) * 1000, 2), round(percentile(lat, 0.99) * 1000, 2), errors,
                       client=client, client_cpu_ms_per_commit=_client_cpu_ms(client_cpu_s, commits))


def _client_cpu_ms(cpu_s: float, commits: int) -> float | None:
    return round(cpu_s * 1000 / commits, 3) if commits else None


def _prepare_boreal(url: str) -> None:
    import borealdb

    with borealdb.connect(url, client_name="boreal-bench") as conn:
        cur = conn.cursor()
        cur.execute("DROP TABLE IF EXISTS bench_kv")
        cur.execute("CREATE TABLE bench_kv(k INTEGER PRIMARY KEY, v TEXT)")
    conn.close()


def _prepare_postgres(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_kv")
        conn.execute("CREATE TABLE bench_kv(k bigserial PRIMARY KEY, v text)")


def _print_table(results: list[LevelResult]) -> None:
    header = ["system", "clients", "commits/s", "p50 ms", "p99 ms", "wire B/commit", "redo B/commit",
              "writer CPU ms/commit", "nodes CPU ms/commit", "client CPU ms/commit", "commits", "errors"]

    def shown(value: float | None) -> Any:
        return "n/a" if value is None else value

    rows = [[r.system, r.clients, r.commits_per_s, r.p50_ms, r.p99_ms, shown(r.wire_bytes_per_commit),
             shown(r.redo_bytes_per_commit), shown(r.writer_cpu_ms_per_commit), shown(r.nodes_cpu_ms_per_commit),
             shown(r.client_cpu_ms_per_commit),
             r.commits, r.errors]
            for r in results]
    print_table(header, rows)
    by = {(r.system, r.clients): r for r in results}
    ratios = [(c, by[("borealdb", c)].commits_per_s / by[("postgresql", c)].commits_per_s)
              for (s, c) in by if s == "borealdb" and ("postgresql", c) in by and by[("postgresql", c)].commits_per_s]
    for clients, ratio in ratios:
        print(f"borealdb / PostgreSQL at {clients} clients: {ratio:.2f}x")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="boreal bench", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running writer (boreal://HOST:PORT/); default: start a private cluster")
    p.add_argument("--metrics", help="HOST:PORT of that writer's metrics endpoint (for bytes and writer CPU per commit)")
    p.add_argument("--target", help="also run against PostgreSQL at this DSN (postgresql://...)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated connection counts (default: 1,8,32)")
    p.add_argument("--duration-s", type=float, default=10.0, help="seconds per level (default: 10)")
    p.add_argument("--client", choices=("threads", "asyncio"), default="threads",
                   help="a thread and a sync connection per client (default), or tasks of one event loop with "
                        "the asyncio drivers; the same for both systems")
    p.add_argument("--json", action="store_true", help="one JSON object per level instead of a table")
    args = p.parse_args(argv)
    try:
        args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        p.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if not args.levels or min(args.levels) < 1 or max(args.levels) > 512:
        p.error("--concurrency levels must be between 1 and 512")
    if args.duration_s <= 0:
        p.error("--duration-s must be positive")
    if args.url and not args.url.startswith("boreal://"):
        p.error("--url must look like boreal://HOST:PORT/")
    if args.target and not args.target.startswith(("postgresql://", "postgres://")):
        p.error("--target must be a postgresql:// DSN")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        url, metrics, node_metrics = args.url, args.metrics, []
        if url is None:
            cluster = stack.enter_context(private_cluster("6 storage nodes + writer"))
            writer = next(n for n in cluster.nodes if n.role == "writer")
            url, metrics = f"boreal://{writer.address}/", writer.metrics_address
            node_metrics = [n.metrics_address for n in cluster.nodes if n.metrics_address]
        _prepare_boreal(url)
        if args.target:
            _prepare_postgres(args.target)
        results: list[LevelResult] = []
        for level in args.levels:
            runs = [bench_boreal(url, metrics, level, args.duration_s, node_metrics, args.client)]
            if args.target:
                runs.append(bench_postgres(args.target, level, args.duration_s, args.client))
            for r in runs:
                results.append(r)
                if args.json:
                    print(json.dumps(asdict(r)), flush=True)
        if not args.json:
            print(f"clients: {'one thread each, sync drivers' if args.client == 'threads' else 'tasks of one event loop, asyncio drivers'} (--client {args.client})")
            _print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
