"""The synchronous client's Statements stream: one long-lived bidirectional call per
connection that carries its single-message statements (what ExecuteOne would carry).

Why: a message on an open stream costs the server about 40% of the CPU of a unary
call (no call set-up, metadata or status per statement; `boreal bench rpc`), and the
writer's CPU is what limits commits/s. The price is on the client: gRPC's synchronous
API feeds a stream's requests from a thread of its own, and a stream has no
per-message deadline. So each statement's timeout is kept by one process-wide
watchdog thread (`_Watchdog`), which cancels the stream of a statement that ran past
it; the caller then sees the failure a unary call's deadline would have given.
Each open stream keeps one gRPC feeding thread (blocked on its queue) until the
connection is closed or dropped.
"""

from __future__ import annotations

import heapq
import itertools
import os
import queue
import threading
import time
import weakref
from typing import Any

import grpc

from borealdb import _wire
from borealdb.protos import sql_pb2

# Lazily deleted entries (statements answered in time) stay in the watchdog's heap until
# they reach its head; past this many the heap is rebuilt without them.
_WATCHDOG_COMPACT_AT = 65536


class _Watchdog:
    """Cancels streams whose statement was not answered by its deadline. One daemon
    thread, started on first use, asleep until the earliest deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[list] = []  # [deadline_monotonic, seq, stream or None once answered]
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, stream: "StatementStream") -> list:
        entry = [deadline, next(self._seq), stream]
        with self._cond:
            heap = self._heap
            if len(heap) >= _WATCHDOG_COMPACT_AT:
                heap[:] = [e for e in heap if e[2] is not None]
                heapq.heapify(heap)
            heapq.heappush(heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="borealdb-statement-watchdog", daemon=True)
                self._thread.start()
            elif heap[0] is entry:
                self._cond.notify()  # an earlier deadline than the one it sleeps towards
        return entry

    def _run(self) -> None:
        heap = self._heap
        while True:
            with self._cond:
                while True:
                    while heap and heap[0][2] is None:
                        heapq.heappop(heap)
                    if not heap:
                        self._cond.wait()
                        continue
                    left = heap[0][0] - time.monotonic()
                    if left <= 0:
                        entry = heapq.heappop(heap)
                        break
                    self._cond.wait(left)
            stream = entry[2]
            if stream is not None:
                try:
                    stream._expire(entry)
                except Exception:  # noqa: BLE001 - the one watchdog must outlive any one stream
                    pass


_WATCHDOG = _Watchdog()


def _new_watchdog_in_child() -> None:
    # A forked child inherits the watchdog's state but not its thread.
    global _WATCHDOG
    _WATCHDOG = _Watchdog()


os.register_at_fork(after_in_child=_new_watchdog_in_child)


class StatementStream:
    """One open Statements call. `execute(request, timeout_s)` sends one statement and
    returns its ExecuteResponse; raises StatementFailed (the stream stays usable),
    StreamFailed or grpc.RpcError (the stream is then `broken`: open a new one)."""

    def __init__(self, stub: Any):
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._call = stub.Statements(_feed(self._requests))
        self._lock = threading.Lock()
        self._pending: list | None = None  # the watchdog entry of the statement in flight
        self._expired = False
        self.broken = False
        # A connection dropped without close() must not leave gRPC's feeding thread
        # blocked on the queue forever: ending the feed half-closes the stream.
        self._finalizer = weakref.finalize(self, _end_feed, self._requests, self._call)

    def execute(self, request: sql_pb2.ExecuteRequest, timeout_s: float | None) -> sql_pb2.ExecuteResponse:
        assert not self.broken, "a broken stream is not reused"
        # Broken until the answer is in: whatever interrupts the wait (an error, a
        # KeyboardInterrupt) leaves an answer on its way that the next statement would
        # take for its own, so such a stream is cancelled and never used again.
        self.broken = True
        entry = _WATCHDOG.watch(time.monotonic() + timeout_s, self) if timeout_s is not None else None
        self._pending = entry
        answered = False
        try:
            self._requests.put(request)
            resp = next(self._call)
            answered = True
        except StopIteration:
            raise _wire.stream_ended() from None
        except grpc.RpcError:
            if self._expired:
                raise _wire.statement_timed_out(timeout_s or 0.0) from None
            raise
        finally:
            if entry is not None:
                entry[2] = None  # answered (or failed): the watchdog skips it
            with self._lock:
                self._pending = None
                expired = self._expired
            if not answered:
                self._finalizer()  # cancel the call and end gRPC's feeding thread now
        # Cancelled by the watchdog just as the answer came: the answer stands, the stream does not.
        self.broken = expired
        return _wire.statement_result(resp)

    def usable(self) -> bool:
        """False once the stream failed or ended, even if no statement noticed yet (the
        server restarted between two statements): then a new stream is opened, and the
        statement reaches the server instead of failing with the old stream."""
        return not self.broken and not self._call.done()

    def _expire(self, entry: list) -> None:
        """The watchdog's call: `entry`'s deadline passed."""
        with self._lock:
            if self._pending is not entry:
                return  # answered meanwhile
            self._expired = True
        self._call.cancel()

    def close(self) -> None:
        self.broken = True
        self._finalizer()


def _feed(requests: queue.SimpleQueue):
    while True:
        request = requests.get()
        if request is None:
            return
        yield request


def _end_feed(requests: queue.SimpleQueue, call: Any) -> None:
    requests.put(None)
    call.cancel()
