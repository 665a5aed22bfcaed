"""The seam between the volume client and the storage nodes.

    fut = transport.call("127.0.0.1:7001", "Append", pb.AppendRequest(...), timeout_s=2.0)
    fut.result()  # the response, or raises StorageError / NodeUnavailable

- `StorageError` (from the storage engine): the node answered and rejected the request;
  `.reason` is a pb.ErrorReason, `.code` a grpc.StatusCode.
- `NodeUnavailable`: the node could not be reached (refused, deadline, down). The
  request may or may not have been applied.

`GrpcTransport` talks to real nodes (one channel per address, no thread per call);
`InProcessTransport` calls StorageEngine objects directly, for fast tests, with
knobs to take a node down, delay its answers or drop them.

The write path uses `send_append(transport, address, stream_request, timeout_s, callback)`:
`callback(response, error)` runs once per request (on the transport's thread). Over gRPC
the requests to one node share one long-lived AppendStream (no per-call setup, no future
per request); any other transport serves it with a unary Append.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import random
import threading
import time
from collections import deque
from typing import Any, Callable, Protocol

import grpc

from borealdb.nodes.rpc import CLIENT_CHANNEL_OPTIONS, MAX_MESSAGE_BYTES  # noqa: F401 - re-exported
from borealdb.protos import storage_pb2 as pb

METHODS = (
    "Append",
    "ReadPage",
    "CreateSegment",
    "PutDescriptor",
    "Seal",
    "ListSegments",
    "RecordSummaries",
    "FetchRecords",
    "NodeStatus",
)
_SNAKE = {
    "Append": "append",
    "ReadPage": "read_page",
    "CreateSegment": "create_segment",
    "PutDescriptor": "put_descriptor",
    "Seal": "seal",
    "ListSegments": "list_segments",
    "RecordSummaries": "record_summaries",
    "FetchRecords": "fetch_records",
    "NodeStatus": "node_status",
}
REASON_KEY = "boreal-reason"


class NodeUnavailable(Exception):
    """The node did not answer: connection refused, deadline exceeded, or down."""

    def __init__(self, address: str, message: str):
        super().__init__(f"{address}: {message}")
        self.address = address


def storage_error_class() -> type[Exception]:
    from borealdb.nodes.storage.engine import StorageError

    return StorageError


def make_storage_error(reason: int, code: grpc.StatusCode, message: str) -> Exception:
    return storage_error_class()(code, reason, message)


def error_reason(exc: BaseException) -> int | None:
    """The pb.ErrorReason of a storage error, None for anything else."""
    reason = getattr(exc, "reason", None)
    return int(reason) if isinstance(reason, int) else None


class Transport(Protocol):
    def call(self, address: str, method: str, request: Any, timeout_s: float) -> cf.Future: ...

    def close(self) -> None: ...


AppendCallback = Callable[[Any, "BaseException | None"], None]


def send_append(transport: Any, address: str, sreq: pb.AppendStreamRequest, timeout_s: float,
                callback: AppendCallback) -> None:
    """Send sreq.append to `address`; callback(AppendResponse, None) or callback(None, error) once.

    Errors are the same as call()'s: StorageError (rejected, nothing written) or
    NodeUnavailable. Transports without a send_append of their own use a unary Append.
    """
    fn = getattr(transport, "send_append", None)
    if fn is not None:
        fn(address, sreq, timeout_s, callback)
        return
    try:
        fut = transport.call(address, "Append", sreq.append, timeout_s)
    except Exception as exc:  # noqa: BLE001 - a transport that raises instead of failing the future
        callback(None, NodeUnavailable(address, f"Append: {exc}"))
        return
    fut.add_done_callback(lambda f: _complete_unary(f, address, callback))


def _complete_unary(fut: cf.Future, address: str, callback: AppendCallback) -> None:
    if fut.cancelled():
        callback(None, NodeUnavailable(address, "Append: cancelled"))
        return
    exc = fut.exception()
    callback(None, exc) if exc is not None else callback(fut.result(), None)


# ---- gRPC ---------------------------------------------------------------------------


class GrpcTransport:
    """gRPC to real storage nodes: grpc.aio channels driven by one event-loop thread.

    call() hands the request to that loop and returns a concurrent.futures.Future,
    so callers never block and no thread is started per call (grpc's synchronous
    `.future()` starts a channel-spin thread whenever a channel falls idle, which
    cost milliseconds per commit). Completion callbacks run on the loop thread: they
    must not block on another call's result. Fork-safe: a child process that inherits
    this object starts its own loop and channels on first use.
    """

    def __init__(self, options: list[tuple[str, Any]] | None = None):
        self._options = CLIENT_CHANNEL_OPTIONS + list(options or [])
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stubs: dict[str, tuple[Any, Any]] = {}  # touched only on the loop thread
        self._streams: dict[str, _AppendStream] = {}    # touched only on the loop thread
        self._unary_only: set[str] = set()               # nodes without AppendStream (older servers)
        self._loop_tid = 0
        self._closed = False

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("transport is closed")
            if self._pid != os.getpid():  # forked: the parent's loop thread does not exist here
                self._loop, self._thread, self._stubs = None, None, {}
                self._streams, self._unary_only = {}, set()
                self._pid = os.getpid()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="grpc-transport", daemon=True)
                thread.start()
                self._loop, self._thread, self._loop_tid = loop, thread, thread.ident or 0
            return self._loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop that drives the channels (an aio server may share it)."""
        return self._ensure_loop()

    def _stub(self, address: str):
        from borealdb.protos import storage_pb2_grpc

        entry = self._stubs.get(address)
        if entry is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            entry = (channel, storage_pb2_grpc.StorageNodeStub(channel))
            self._stubs[address] = entry
        return entry[1]

    async def _call(self, address: str, method: str, request: Any, timeout_s: float) -> Any:
        try:
            return await getattr(self._stub(address), method)(request, timeout=timeout_s)
        except asyncio.CancelledError:
            raise NodeUnavailable(address, f"{method}: cancelled") from None
        except Exception as exc:  # noqa: BLE001 - every failure becomes StorageError or NodeUnavailable
            raise _translate(address, method, exc) from None

    def call(self, address: str, method: str, request: Any, timeout_s: float) -> cf.Future:
        try:
            loop = self._ensure_loop()
            return asyncio.run_coroutine_threadsafe(self._call(address, method, request, timeout_s), loop)
        except Exception as exc:  # noqa: BLE001 - closed transport or loop
            out: cf.Future = cf.Future()
            out.set_running_or_notify_cancel()
            out.set_exception(NodeUnavailable(address, f"{method}: {exc}"))
            return out

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Run fn() on the transport's loop thread after delay_s; from any thread.
        RuntimeError once the transport is closed."""
        loop = self._ensure_loop()
        if threading.get_ident() == self._loop_tid:
            loop.call_later(delay_s, fn)
        else:
            loop.call_soon_threadsafe(loop.call_later, delay_s, fn)

    # -- AppendStream

    def send_append(self, address: str, sreq: pb.AppendStreamRequest, timeout_s: float,
                    callback: AppendCallback) -> None:
        """See send_append(): over this node's AppendStream (a unary Append if it has none)."""
        if threading.get_ident() == self._loop_tid and not self._closed and self._pid == os.getpid():
            self._send_on_loop(address, sreq, timeout_s, callback)
            return
        try:
            loop = self._ensure_loop()
            loop.call_soon_threadsafe(self._send_on_loop, address, sreq, timeout_s, callback)
        except Exception as exc:  # noqa: BLE001 - closed transport or loop
            callback(None, NodeUnavailable(address, f"Append: {exc}"))

    def _send_on_loop(self, address: str, sreq: pb.AppendStreamRequest, timeout_s: float,
                      callback: AppendCallback) -> None:
        if self._closed:
            callback(None, NodeUnavailable(address, "Append: transport closed"))
            return
        if address in self._unary_only:
            fut = asyncio.ensure_future(self._call(address, "Append", sreq.append, timeout_s))
            fut.add_done_callback(lambda f: _complete_unary(f, address, callback))
            return
        stream = self._streams.get(address)
        if stream is None:
            stream = self._streams[address] = _AppendStream(self, address)
        stream.send(sreq, timeout_s, callback)

    def _stream_ended(self, stream: "_AppendStream", unimplemented: bool) -> None:
        if self._streams.get(stream.address) is stream:
            del self._streams[stream.address]
        if unimplemented:
            self._unary_only.add(stream.address)

    def close(self) -> None:
        with self._lock:
            loop, thread, self._closed = self._loop, self._thread, True
            self._loop = self._thread = None
        if loop is None or self._pid != os.getpid():
            return

        async def _close_channels() -> None:
            streams = list(self._streams.values())
            for stream in streams:
                stream.fail(NodeUnavailable(stream.address, "Append: transport closed"))
            if streams:  # let the readers see their cancelled calls end
                await asyncio.wait([s.reader for s in streams], timeout=1.0)
            for channel, _stub in self._stubs.values():
                await channel.close()
            self._stubs.clear()

        try:
            asyncio.run_coroutine_threadsafe(_close_channels(), loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=5)
        loop.close()


_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class _AppendStream:
    """One AppendStream call to one node, driven entirely on the transport's loop thread.

    Requests are written in order by one writer task; a reader task matches each answer
    to its request by seq and runs the request's callback. A request not answered within
    its timeout, or any failure of the call, ends the stream: every pending request gets
    NodeUnavailable (it may or may not have been applied) and the next send opens a new
    stream. A node that does not implement AppendStream is served by unary Appends.
    """

    def __init__(self, transport: GrpcTransport, address: str):
        self.transport = transport
        self.address = address
        self.call = transport._stub(address).AppendStream()
        self.pending: dict[int, tuple[AppendCallback, float]] = {}  # seq -> (callback, deadline); in seq order
        self.outbox: deque[pb.AppendStreamRequest] = deque()
        self.seq = 0
        self.writer: asyncio.Task | None = None  # held: the loop keeps only weak references to tasks
        self.ended = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_deadline = 0.0
        self.reader = asyncio.ensure_future(self._read())

    def send(self, sreq: pb.AppendStreamRequest, timeout_s: float, callback: AppendCallback) -> None:
        self.seq += 1
        sreq.seq = self.seq
        deadline = time.monotonic() + timeout_s
        self.pending[self.seq] = (callback, deadline)
        self.outbox.append(sreq)
        if self.writer is None:
            self.writer = asyncio.ensure_future(self._write())
        if self.timer is None or deadline < self.timer_deadline:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_deadline = deadline
        self.timer = asyncio.get_running_loop().call_at(self._loop_time(deadline), self._check_deadline)

    @staticmethod
    def _loop_time(deadline: float) -> float:
        return asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic())

    def _check_deadline(self) -> None:
        self.timer = None
        if self.ended or not self.pending:
            return
        now = time.monotonic()
        if any(now >= deadline for _cb, deadline in self.pending.values()):
            self.fail(NodeUnavailable(self.address, "Append: DEADLINE_EXCEEDED (no answer on the stream)"))
            return
        self._arm(min(deadline for _cb, deadline in self.pending.values()))

    async def _write(self) -> None:
        try:
            while self.outbox and not self.ended:
                await self.call.write(self.outbox.popleft())
        except asyncio.CancelledError:
            pass  # fail() ended the stream
        except Exception as exc:  # noqa: BLE001 - the call failed: the reader sees why
            self.fail(self._translate(exc))
        finally:
            self.writer = None

    async def _read(self) -> None:
        try:
            while True:
                resp = await self.call.read()
                if resp is grpc.aio.EOF:
                    raise NodeUnavailable(self.address, "AppendStream ended by the node")
                entry = self.pending.pop(resp.seq, None)
                if entry is None:
                    continue
                if resp.error_code:
                    code = _STATUS_BY_NUMBER.get(resp.error_code, grpc.StatusCode.UNKNOWN)
                    entry[0](None, make_storage_error(resp.error_reason, code, resp.error_message))
                else:
                    entry[0](resp.append, None)
        except asyncio.CancelledError:
            self.fail(NodeUnavailable(self.address, "Append: cancelled"))
        except Exception as exc:  # noqa: BLE001 - every failure ends the stream
            self.fail(self._translate(exc))

    def _translate(self, exc: BaseException) -> Exception:
        if isinstance(exc, NodeUnavailable):
            return exc
        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            self.transport._stream_ended(self, unimplemented=True)
        code = exc.code().name if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else type(exc).__name__
        details = exc.details() if isinstance(exc, grpc.RpcError) and hasattr(exc, "details") else str(exc)
        return NodeUnavailable(self.address, f"AppendStream: {code} {details}")

    def fail(self, exc: Exception) -> None:
        """End the stream; every request still waiting gets `exc`."""
        if self.ended:
            return
        self.ended = True
        self.transport._stream_ended(self, unimplemented=False)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.outbox.clear()
        writer = self.writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()  # its write may never complete on a cancelled call
        pending, self.pending = self.pending, {}
        try:
            self.call.cancel()
        except Exception:  # noqa: BLE001
            pass
        for callback, _deadline in pending.values():
            try:
                callback(None, exc)
            except Exception:  # noqa: BLE001 - one broken callback must not starve the others
                pass


# ---- gRPC errors --------------------------------------------------------------------


def _translate(address: str, method: str, exc: BaseException) -> Exception:
    if not isinstance(exc, grpc.RpcError):
        return NodeUnavailable(address, f"{method}: {exc!r}")
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    reason_name = None
    try:
        for key, value in exc.trailing_metadata() or ():
            if key == REASON_KEY:
                reason_name = value
    except Exception:  # noqa: BLE001
        reason_name = None
    if reason_name:
        try:
            reason = pb.ErrorReason.Value(reason_name)
        except ValueError:
            reason = pb.ERROR_REASON_UNSPECIFIED
        return make_storage_error(reason, code, details or "")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return NodeUnavailable(address, f"{method}: {code.name} {details}")
    return make_storage_error(pb.ERROR_REASON_UNSPECIFIED, code, f"{method}: {code.name} {details}")


# ---- in process ---------------------------------------------------------------------


class InProcessTransport:
    """Calls StorageEngine objects in this process through a small thread pool.

    Requests and responses are serialised and parsed, as on the wire, so neither side
    can keep a reference to the other's objects.
    """

    def __init__(self, engines: dict[str, Any], workers: int = 32):
        self._engines = dict(engines)
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inproc-rpc")
        self._lock = threading.Lock()
        self._down: set[str] = set()
        self._delay: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._drop: dict[str, float] = {}
        self._closed = threading.Event()
        self._rng = random.Random(0)
        self.calls: dict[tuple[str, str], int] = {}

    def set_engine(self, address: str, engine: Any) -> None:
        with self._lock:
            self._engines[address] = engine

    def set_down(self, address: str, down: bool = True) -> None:
        with self._lock:
            if down:
                self._down.add(address)
            else:
                self._down.discard(address)

    def set_delay(self, address: str, seconds: float, methods: list[str] | None = None) -> None:
        """Answer calls to `address` (only `methods`, if given) after `seconds`."""
        with self._lock:
            if seconds <= 0:
                self._delay.pop(address, None)
            else:
                self._delay[address] = (seconds, frozenset(methods) if methods else None)

    def set_drop(self, address: str, probability: float) -> None:
        """Lose a fraction of the calls to `address` (after applying them or not, at random)."""
        with self._lock:
            if probability <= 0:
                self._drop.pop(address, None)
            else:
                self._drop[address] = probability

    def call(self, address: str, method: str, request: Any, timeout_s: float) -> cf.Future:
        if self._closed.is_set():
            fut: cf.Future = cf.Future()
            fut.set_exception(NodeUnavailable(address, "transport closed"))
            return fut
        wire = request.SerializeToString()
        with self._lock:
            self.calls[(address, method)] = self.calls.get((address, method), 0) + 1
        return self._pool.submit(self._run, address, method, type(request), wire, timeout_s)

    def _run(self, address, method, req_type, wire, timeout_s):
        start = time.monotonic()
        with self._lock:
            engine = self._engines.get(address)
            down = address in self._down or engine is None
            delay = self._delay.get(address)
            drop = self._drop.get(address, 0.0)
            lost = drop > 0 and self._rng.random() < drop
            apply_lost = self._rng.random() < 0.5
        if down:
            raise NodeUnavailable(address, f"{method}: connection refused")
        if delay is not None and (delay[1] is None or method in delay[1]):
            if self._closed.wait(min(delay[0], timeout_s)) or delay[0] >= timeout_s:
                raise NodeUnavailable(address, f"{method}: DEADLINE_EXCEEDED")
        if lost:
            if apply_lost:
                try:
                    getattr(engine, _SNAKE[method])(req_type.FromString(wire))
                except Exception:  # noqa: BLE001
                    pass
            self._closed.wait(max(0.0, timeout_s - (time.monotonic() - start)))
            raise NodeUnavailable(address, f"{method}: DEADLINE_EXCEEDED (dropped)")
        resp = getattr(engine, _SNAKE[method])(req_type.FromString(wire))
        return type(resp).FromString(resp.SerializeToString())

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
