"""The instance server's writer thread: one thread, jobs in order, completions to the loop in batches."""

from __future__ import annotations

import asyncio
import threading

import pytest

from borealdb.nodes.instance.server import _WriterThread
from tests.waiting import wait_until


def test_jobs_run_in_order_on_one_thread_and_results_reach_the_loop():
    async def main():
        writer = _WriterThread(asyncio.get_running_loop())
        seen: list[tuple[int, str]] = []

        def job(i):
            seen.append((i, threading.current_thread().name))
            if i == 3:
                raise ValueError("job 3 failed")
            return i * 10

        futs = [writer.run(job, i) for i in range(6)]
        results = await asyncio.gather(*futs, return_exceptions=True)
        writer.shutdown()
        return seen, results

    seen, results = asyncio.run(main())
    assert [i for i, _ in seen] == list(range(6))
    assert {name for _, name in seen} == {"sql-writer"}
    assert results[:3] == [0, 10, 20] and results[4:] == [40, 50]
    assert isinstance(results[3], ValueError)


def test_completions_finished_meanwhile_arrive_in_one_wake_up_of_the_loop():
    async def main():
        loop = asyncio.get_running_loop()
        writer = _WriterThread(loop)
        gate = threading.Event()
        delivered: list[int] = []
        real_deliver = writer._deliver

        def counting_deliver():
            with writer._cond:
                delivered.append(len(writer._done))
            real_deliver()

        writer._deliver = counting_deliver
        first = writer.run(gate.wait, 10)
        rest = [writer.run(lambda i=i: i) for i in range(20)]
        # The loop is held here (no await) while the thread finishes everything.
        gate.set()
        wait_until(lambda: len(writer._done) == 21, 10, "all 21 jobs done", interval_s=0.005)
        await asyncio.gather(first, *rest)
        writer.shutdown()
        return delivered

    delivered = asyncio.run(main())
    assert delivered == [21]  # one call_soon_threadsafe for all 21


def test_shutdown_cancels_queued_jobs_and_refuses_new_ones():
    async def main():
        writer = _WriterThread(asyncio.get_running_loop())
        started, gate = threading.Event(), threading.Event()

        def first():
            started.set()
            return gate.wait(10)

        running = writer.run(first)
        queued = writer.run(lambda: "never")
        assert started.wait(10)  # the first job runs, the second waits in the queue
        writer.shutdown(wait=False, cancel_futures=True)
        gate.set()
        assert await running is True
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(RuntimeError, match="shut down"):
            writer.run(lambda: None)

    asyncio.run(main())
