"""`boreal bench volume`: commit throughput and latency of the storage volume.

Each client thread loops: append one atomic group of redo records (page deltas of
--payload-bytes on random pages), then wait until the VDL covers it. That is what
a SQL commit costs at the storage tier. Printed per concurrency level: commits/s,
p50/p99 commit latency, records per Append RPC and bytes on the wire per record
(serialized AppendRequest bytes sent to all 6 segments, divided by records).

By default it starts a private 6-node cluster (2 storage nodes in each of 3 AZs) on
127.0.0.1 in a temporary directory and stops it afterwards; `--data DIR` uses the
cluster that `boreal up --data DIR` started instead (it writes a volume named
`bench-<time>` there).

Figures are printed, never asserted: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client import REGISTRY

from borealdb.nodes import redo
from borealdb.nodes.benchutil import percentile, print_table, private_cluster, run_workers


@dataclass
class BenchResult:
    concurrency: int
    commits: int
    duration_s: float
    commits_per_s: float
    p50_ms: float
    p99_ms: float
    records_per_commit: int
    records_per_rpc: float
    wire_bytes_per_record: float
    errors: int


def _sample(name: str, volume_id: str) -> float:
    value = REGISTRY.get_sample_value(name, {"volume": volume_id})
    return float(value or 0.0)


def _delta_payload(rng: random.Random, payload_bytes: int, page_size: int) -> bytes:
    offset = rng.randrange(0, page_size - payload_bytes)
    return struct.pack("<HH", offset, payload_bytes) + rng.randbytes(payload_bytes)


def run_level(volume, *, concurrency: int, duration_s: float, records_per_commit: int, payload_bytes: int, pages: int) -> BenchResult:
    from borealdb.nodes.volume.volume import PageChange

    # The clients are the writer's sessions here: the same group commit hint as a writer
    # (each waits for its commit), so a closed loop sends its batch once all are in.
    volume.set_commit_hint(lambda: concurrency > volume.undurable_commits)
    desc = volume.descriptor()
    vid = desc.volume_id
    page_size = desc.page_size
    latencies_s: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def client(i: int, deadline: float) -> None:
        rng = random.Random(i)
        mine = latencies_s[i]
        while time.monotonic() < deadline:
            changes = [PageChange(rng.randrange(pages), redo.PAGE_DELTA, _delta_payload(rng, payload_bytes, page_size)) for _ in range(records_per_commit)]
            t0 = time.perf_counter()
            try:
                lsn = volume.append_group(changes)
                volume.wait_durable(lsn, timeout_s=30.0)
            except Exception as e:  # counted and printed: a benchmark reports, it does not stop
                errors[i] += 1
                if errors[i] == 1:
                    print(f"  client {i}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            mine.append(time.perf_counter() - t0)

    rpcs0 = _sample("boreal_volume_records_per_append_rpc_count", vid)
    rpc_records0 = _sample("boreal_volume_records_per_append_rpc_sum", vid)
    wire0 = _sample("boreal_volume_bytes_sent_total", vid)
    records0 = _sample("boreal_volume_records_total", vid)
    elapsed_s = run_workers(concurrency, duration_s, client)
    rpcs = _sample("boreal_volume_records_per_append_rpc_count", vid) - rpcs0
    rpc_records = _sample("boreal_volume_records_per_append_rpc_sum", vid) - rpc_records0
    wire = _sample("boreal_volume_bytes_sent_total", vid) - wire0
    records = _sample("boreal_volume_records_total", vid) - records0
    all_lat = sorted(x for per in latencies_s for x in per)
    return BenchResult(
        concurrency=concurrency,
        commits=len(all_lat),
        duration_s=round(elapsed_s, 2),
        commits_per_s=round(len(all_lat) / elapsed_s, 1),
        p50_ms=round(percentile(all_lat, 0.50) * 1000, 2),
        p99_ms=round(percentile(all_lat, 0.99) * 1000, 2),
        records_per_commit=records_per_commit,
        records_per_rpc=round(rpc_records / rpcs, 2) if rpcs else 0.0,
        wire_bytes_per_record=round(wire / records, 1) if records else 0.0,
        errors=sum(errors),
    )


def _print_table(results: list[BenchResult]) -> None:
    header = ["clients", "commits/s", "p50 ms", "p99 ms", "records/commit", "records/RPC", "wire B/record", "commits", "errors"]
    rows = [
        [r.concurrency, r.commits_per_s, r.p50_ms, r.p99_ms, r.records_per_commit, r.records_per_rpc, r.wire_bytes_per_record, r.commits, r.errors]
        for r in results
    ]
    print_table(header, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="boreal bench volume", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", help="use the running cluster started by `boreal up --data DIR` (default: start a private one)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client thread counts (default: 1,8,32)")
    p.add_argument("--duration-s", type=float, default=10.0, help="seconds per concurrency level (default: 10)")
    p.add_argument("--records-per-commit", type=int, default=2, help="redo records per atomic group (default: 2)")
    p.add_argument("--payload-bytes", type=int, default=100, help="changed bytes per page delta (default: 100)")
    p.add_argument("--pages", type=int, default=4096, help="pages the workload writes to (default: 4096)")
    p.add_argument("--pg-size-pages", type=int, default=1024, help="pages per protection group (default: 1024, so the volume spans several PGs)")
    p.add_argument("--json", action="store_true", help="print one JSON object per level instead of a table")
    args = p.parse_args(argv)
    try:
        args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        p.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if not args.levels or min(args.levels) < 1 or max(args.levels) > 1024:
        p.error("--concurrency levels must be between 1 and 1024")
    if args.duration_s <= 0 or args.records_per_commit < 1 or args.pages < 1:
        p.error("--duration-s, --records-per-commit and --pages must be positive")
    if not 1 <= args.payload_bytes <= 4000:
        p.error("--payload-bytes must be between 1 and 4000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from borealdb.nodes.cluster.local import load_cluster_state
    from borealdb.nodes.volume.transport import GrpcTransport
    from borealdb.nodes.volume.volume import Volume, VolumeConfig

    with contextlib.ExitStack() as stack:
        if args.data:
            nodes = load_cluster_state(Path(args.data)).storage_node_infos()
        else:
            cluster = stack.enter_context(private_cluster("6 storage nodes", timeout_s=60, metrics=False,
                                                          instances=False))
            nodes = cluster.storage_node_infos()
        config = VolumeConfig(volume_id=f"bench-{int(time.time())}", nodes=nodes, pg_size_pages=args.pg_size_pages)
        transport = GrpcTransport()
        volume = Volume.open(config, transport, create_if_missing=True)
        try:
            print(
                f"volume {config.volume_id}: 6 storage nodes, write quorum 4/6, page {config.page_size} B, "
                f"{args.records_per_commit} x {args.payload_bytes}-byte page deltas per commit, {args.duration_s:g} s per level",
                file=sys.stderr,
            )
            results = []
            for level in args.levels:
                r = run_level(
                    volume,
                    concurrency=level,
                    duration_s=args.duration_s,
                    records_per_commit=args.records_per_commit,
                    payload_bytes=args.payload_bytes,
                    pages=args.pages,
                )
                results.append(r)
                if args.json:
                    print(json.dumps(asdict(r)), flush=True)
            if not args.json:
                _print_table(results)
        finally:
            volume.close()
            transport.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
