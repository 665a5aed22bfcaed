"""Small helpers shared by the `boreal bench` benchmarks: percentiles, tables, timed workers, a private cluster."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterator, Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank; NaN when empty."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Right-aligned columns, one line per row."""
    widths = [max(len(str(h)), *(len(str(row[i])) for row in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths)))


def run_workers(count: int, duration_s: float, loop: Callable[[int, float], None]) -> float:
    """Run loop(i, deadline) on `count` threads that start together; return the elapsed seconds.

    Each loop runs until time.monotonic() passes `deadline` (the same for all)."""
    barrier = threading.Barrier(count + 1)
    deadline = [0.0]

    def run(i: int) -> None:
        barrier.wait()
        loop(i, deadline[0])

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + duration_s
    t0 = time.monotonic()
    barrier.wait()
    for t in threads:
        t.join()
    return time.monotonic() - t0


@contextlib.contextmanager
def private_cluster(what: str, *, timeout_s: float = 120.0, **cluster_kwargs: Any) -> Iterator[Any]:
    """A LocalCluster in a temporary directory for one benchmark run; stopped and
    removed afterwards, whatever happens. `what` names it on stderr."""
    from borealdb.nodes.cluster.local import LocalCluster

    with tempfile.TemporaryDirectory(prefix="boreal-bench-") as tmp:
        print(f"starting a private cluster ({what}) in {tmp} ...", file=sys.stderr, flush=True)
        cluster = LocalCluster(tmp, **cluster_kwargs)
        try:
            cluster.start(timeout_s=timeout_s)
            yield cluster
        finally:
            cluster.stop_all()
