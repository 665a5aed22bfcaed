"""Small helpers shared by the `boreal bench` benchmarks (printing only; no timing logic)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence


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
