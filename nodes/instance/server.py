"""The instance node process: the SQL engine behind the `Instance` gRPC service (protos/sql.proto).

    boreal instance-node --id i-a1 --az a --role writer --listen 127.0.0.1:7111 \\
        --storage-nodes s-a1@a@127.0.0.1:7101,s-a2@a@127.0.0.1:7102,...

Start-up opens the volume (recovery from a read quorum of every PG: truncate above
the VDL, raise the epoch, which fences any previous writer), then serves. Its
duration depends on the in-flight window, not on the database size.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections import deque
from concurrent import futures
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from borealdb.errors import QuorumLost, StaleEpoch, Unavailable
from borealdb.nodes.instance.engine import (
    Deferred,
    InstanceOptions,
    RouteToWriter,
    SqlEngine,
    SqlError,
    WaitDurable,
    WriteLockBusy,
)
from borealdb.nodes.instance import vfs
from borealdb.nodes.instance.replica import ReaderEngine, RedoPublisher, ReplicaDatabase, ReplicaFollower
from borealdb.nodes.instance.vfs import VolumeDatabase
from borealdb.nodes.log import configure_logging
from borealdb.nodes.metrics import start_metrics_server
from borealdb.nodes.rpc import SERVER_OPTIONS, AioServer, freeze_startup_objects
from borealdb.nodes.volume.transport import GrpcTransport
from borealdb.nodes.volume.volume import Volume, VolumeConfig
from borealdb.protos import replica_pb2_grpc as rpbg
from borealdb.protos import sql_pb2 as pb
from borealdb.protos import sql_pb2_grpc as pbg

ERROR_KEY = "boreal-error"
SQLITE_CODE_KEY = "boreal-sqlite-code"
IN_TRANSACTION_KEY = "boreal-in-transaction"

_STATUS = {
    "SQL_ERROR": grpc.StatusCode.INVALID_ARGUMENT,
    "SYNTAX_ERROR": grpc.StatusCode.INVALID_ARGUMENT,
    "BAD_PARAMETERS": grpc.StatusCode.INVALID_ARGUMENT,
    "CONSTRAINT_VIOLATION": grpc.StatusCode.FAILED_PRECONDITION,
    "MISUSE": grpc.StatusCode.FAILED_PRECONDITION,
    "STREAM_REQUIRED": grpc.StatusCode.FAILED_PRECONDITION,
    "NOT_WRITER": grpc.StatusCode.FAILED_PRECONDITION,
    "READ_ONLY": grpc.StatusCode.FAILED_PRECONDITION,
    "STALE_EPOCH": grpc.StatusCode.FAILED_PRECONDITION,
    "VOLUME_FULL": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "TOO_LARGE": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "LOCK_TIMEOUT": grpc.StatusCode.ABORTED,
    "SESSION_EXPIRED": grpc.StatusCode.NOT_FOUND,
    "QUORUM_LOST": grpc.StatusCode.UNAVAILABLE,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}

M_STATEMENTS = Counter("boreal_sql_statements_total", "SQL statements executed", ["outcome"])
M_LATENCY = Histogram("boreal_sql_statement_seconds", "Statement latency including the durability wait",
                      buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
M_SESSIONS = Gauge("boreal_sql_sessions", "Open SQL sessions")
M_INLINE_READS = Counter("boreal_sql_inline_reads_total", "Single-message reads tried on the event loop itself",
                         ["outcome"])
_OK = M_STATEMENTS.labels("ok")


def value_to_python(v: pb.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind is None or kind == "null":
        return None
    return getattr(v, kind)


def python_to_value(x: Any) -> pb.Value:
    if x is None:
        return pb.Value(null=pb.NullValue())
    if isinstance(x, int):
        return pb.Value(integer=x)
    if isinstance(x, float):
        return pb.Value(real=x)
    if isinstance(x, str):
        return pb.Value(text=x)
    return pb.Value(blob=bytes(x))


def _params(params, named) -> Any:
    if named and params:
        raise SqlError("BAD_PARAMETERS", "use either positional or named parameters, not both")
    if named:
        return {k: value_to_python(v) for k, v in named.items()}
    return tuple(value_to_python(v) for v in params)


def _response(columns, rows, outcome) -> pb.ExecuteResponse:
    msg = pb.ExecuteResponse()
    if columns:
        msg.columns.extend(pb.Column(name=n, decl_type=t) for n, t in columns)
    for row in rows:
        msg.rows.add().values.extend(python_to_value(x) for x in row)
    if outcome is not None:
        msg.last = True
        msg.rows_affected = outcome.rows_affected
        msg.last_insert_rowid = outcome.last_insert_rowid
        msg.in_transaction = outcome.in_transaction
        msg.commit_lsn = outcome.commit_lsn
        msg.read_lsn = outcome.read_lsn
    return msg


_END = object()
ONE_MESSAGE_BYTES = 1 << 20  # ExecuteOne: a larger read-only result must be streamed
SNAPSHOT_WAIT_S = 30.0  # a read waits at most this long for a free snapshot connection


def _rows_bytes(rows) -> int:
    return sum(len(v) if isinstance(v, (str, bytes)) else 8 for row in rows for v in row)


class _WriterThread:
    """The one thread that runs everything on the writer connection, in submission order.

    Like a one-worker ThreadPoolExecutor, but completions reach the event loop in batches:
    one wake-up of the loop for all the statements finished since its last turn, instead
    of one per statement (under load the loop is busy and several finish meanwhile)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "sql-writer"):
        self._loop = loop
        self._cond = threading.Condition()
        self._jobs: deque = deque()
        self._done: list = []               # (future, ok, value): guarded by _cond
        self._deliver_pending = False
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def run(self, fn, *args) -> asyncio.Future:
        """On the loop: run fn(*args) on the writer thread; a future of its result."""
        fut = self._loop.create_future()
        with self._cond:
            if self._stopped:
                raise RuntimeError("the writer thread is shut down")
            self._jobs.append((fut, fn, args))
            self._cond.notify()
        return fut

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopped:
                    self._cond.wait()
                if not self._jobs:
                    return
                fut, fn, args = self._jobs.popleft()
            if fut.cancelled():  # its caller went away before it started (a racy read: best effort)
                continue
            try:
                ok, value = True, fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                ok, value = False, exc
            with self._cond:
                self._done.append((fut, ok, value))
                if self._deliver_pending:
                    continue
                self._deliver_pending = True
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _deliver(self) -> None:
        with self._cond:
            done, self._done = self._done, []
            self._deliver_pending = False
        for fut, ok, value in done:
            if fut.cancelled():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._cond:
            self._stopped = True
            dropped = list(self._jobs) if cancel_futures else []
            if cancel_futures:
                self._jobs.clear()
            self._cond.notify_all()
        for fut, _fn, _args in dropped:
            try:
                self._loop.call_soon_threadsafe(fut.cancel)
            except RuntimeError:  # the loop is closed
                break
        if wait:
            self._thread.join()


class InstanceService(pbg.InstanceServicer):
    """The Instance service on a grpc.aio server that shares the volume transport's event loop.

    Why: a thread per in-flight request (the synchronous server) cost ~80 context
    switches per commit here, far more than the SQL itself. Now requests are handled on
    the loop; SQLite runs in threads that never block on the volume: one thread owns
    the writer connection (writes run back to back there), a small pool serves
    snapshot reads. Durability waits are futures resolved on the same loop when storage
    acks advance the VDL, so a commit costs two thread hand-offs, not dozens.
    """

    def __init__(self, engine: SqlEngine, node_id: str, az: str, role: str, loop: asyncio.AbstractEventLoop):
        self.engine = engine
        self.node_id = node_id
        self.az = az
        self.role = role
        self.started_s = time.monotonic()
        self.publisher = None  # the writer's replica.RedoPublisher (for the list of its replicas)
        self.loop = loop
        self._loop_tid = 0
        self.writer_thread = _WriterThread(loop)  # owns the writer connection
        self.read_pool = futures.ThreadPoolExecutor(max_workers=engine.options.snapshot_pool_size,
                                                    thread_name_prefix="sql-read")
        self._lock_waiters = 0
        self._lock_released: asyncio.Event | None = None
        # Requests that hold (or will wait in a read thread for) a snapshot connection: at
        # most one per read thread and per snapshot. Without this limit, streams holding
        # every snapshot between batches and requests waiting for one in every read
        # thread would wait for each other forever.
        self._snapshot_slots = asyncio.Semaphore(engine.options.snapshot_pool_size)
        self._idle_streams: set[asyncio.Task] = set()  # Statements handlers waiting for a request
        self._streams_closing = False
        self._stream_statements = 0  # statements running on Statements streams
        engine.on_write_lock_released = self._write_lock_released

    # ---- plumbing ---------------------------------------------------------------------------
    async def _abort(self, context: grpc.aio.ServicerContext, err: SqlError) -> None:
        M_STATEMENTS.labels(err.code).inc()
        md = [(ERROR_KEY, err.code), (IN_TRANSACTION_KEY, "1" if err.in_transaction else "0")]
        if err.sqlite_code is not None:
            md.append((SQLITE_CODE_KEY, str(err.sqlite_code)))
        context.set_trailing_metadata(tuple(md))
        await context.abort(_STATUS.get(err.code, grpc.StatusCode.UNKNOWN), err.message)

    def _in_thread(self, pool: futures.ThreadPoolExecutor, fn, *args):
        return self.loop.run_in_executor(pool, fn, *args)

    def _write_lock_released(self) -> None:
        # Runs on the thread that released the lock; wakes the loop only if someone waits.
        if self._lock_waiters:
            self.loop.call_soon_threadsafe(self._wake_lock_waiters)

    def _wake_lock_waiters(self) -> None:
        if self._lock_released is not None:
            self._lock_released.set()
            self._lock_released = None

    async def _wait_write_lock(self, deadline: float) -> None:
        """Wait until the write lock was released (or LOCK_TIMEOUT at the deadline)."""
        if self._lock_released is None:
            self._lock_released = asyncio.Event()
        event = self._lock_released
        self._lock_waiters += 1
        try:
            if not self.engine.write_lock_held():
                return  # released since the attempt failed: retry at once
            left = deadline - time.monotonic()
            if left > 0:
                try:
                    await asyncio.wait_for(event.wait(), left)
                    return
                except asyncio.TimeoutError:
                    pass
            timeout_s = self.engine.options.lock_timeout_s
            raise SqlError("LOCK_TIMEOUT", f"waited {timeout_s:g}s for the write lock "
                           f"(held by a transaction of another session)")
        finally:
            self._lock_waiters -= 1

    async def _durable(self, lsn: int, session) -> None:
        """Wait (on the loop) until VDL >= lsn; errors as the engine's blocking wait gives them."""
        volume = self.engine.volume
        if lsn <= 0 or volume.vdl >= lsn:
            return
        loop = self.loop
        fut = loop.create_future()

        def settle(src) -> None:
            if fut.done():
                return
            exc = src.exception()
            fut.set_exception(exc) if exc is not None else fut.set_result(src.result())

        def done(src) -> None:  # usually on the loop thread itself (storage acks arrive there)
            if threading.get_ident() == self._loop_tid:
                settle(src)
            else:
                loop.call_soon_threadsafe(settle, src)

        timeout_s = self.engine.options.commit_timeout_s
        timer = loop.call_later(timeout_s, lambda: fut.done() or fut.set_exception(
            volume.durability_timeout_error(lsn, timeout_s)))
        try:
            volume.durable_future(lsn).add_done_callback(done)
            await fut
        except (StaleEpoch, QuorumLost, Unavailable) as exc:
            raise self.engine.durability_error(exc, lsn, session) from None
        finally:
            timer.cancel()

    def _serial(self, session_id: str) -> asyncio.Lock:
        """One request at a time per session (in arrival order), without holding a thread."""
        session = self.engine.session(session_id)
        if session.serial is None:
            session.serial = asyncio.Lock()
        return session.serial

    async def _snapshot_slot(self) -> None:
        """Take a snapshot slot, or UNAVAILABLE after SNAPSHOT_WAIT_S (every snapshot held by
        results that their clients are not reading)."""
        try:
            await asyncio.wait_for(self._snapshot_slots.acquire(), SNAPSHOT_WAIT_S)
        except asyncio.TimeoutError:
            raise SqlError("UNAVAILABLE", f"all {self.engine.options.snapshot_pool_size} snapshot connections stayed "
                           f"busy for {SNAPSHOT_WAIT_S:g}s (results not being read); retry later") from None

    @staticmethod
    async def _previous_closed(session) -> None:
        """Wait until the session's previous result, if abandoned mid-stream, is closed."""
        closing = session.closing
        if closing is not None and not closing.done():
            await asyncio.wrap_future(closing)

    # ---- RPCs ------------------------------------------------------------------------------------
    async def OpenSession(self, request, context):
        self._loop_tid = threading.get_ident()
        try:
            s = self.engine.open_session(request.client_name)
        except SqlError as err:
            await self._abort(context, err)
        M_SESSIONS.set(self.engine.session_count())
        return pb.OpenSessionResponse(session_id=s.session_id, node_id=self.node_id, role=self.role,
                                      idle_timeout_ms=int(self.engine.options.session_idle_timeout_s * 1000),
                                      epoch=self.engine.volume.epoch)

    async def CloseSession(self, request, context):
        sid = request.session_id
        try:
            session = self.engine.session(sid)
        except SqlError:
            return pb.CloseSessionResponse()  # unknown or expired already: closing is idempotent
        # After the session's running request (and an abandoned result's clean-up): the
        # writer thread must never block on a session that is still busy.
        async with self._serial(sid):
            await self._previous_closed(session)
            if session.in_transaction and self.role == "writer":  # rolled back on the writer connection
                await self.writer_thread.run(self.engine.close_session, sid)
            else:
                self.engine.close_session(sid)
        M_SESSIONS.set(self.engine.session_count())
        return pb.CloseSessionResponse()

    async def Execute(self, request, context):
        t0 = time.perf_counter()
        try:
            params = _params(request.params, request.named_params)
            # aclosing: a client that goes away mid-result closes the chain now, in order,
            # so the session's next request finds it released (not left to the GC).
            async with contextlib.aclosing(self._execute(request.session_id, request.sql, params,
                                                         request.batch_rows)) as messages:
                async for msg in messages:
                    yield msg
        except SqlError as err:
            await self._abort(context, err)
        _OK.inc()
        M_LATENCY.observe(time.perf_counter() - t0)

    async def ExecuteOne(self, request, context):
        t0 = time.perf_counter()
        try:
            msg = await self._execute_one(request)
        except SqlError as err:
            await self._abort(context, err)
        _OK.inc()
        M_LATENCY.observe(time.perf_counter() - t0)
        return msg

    async def _execute_one(self, request) -> pb.ExecuteResponse:
        """A statement's whole result in one message (ExecuteOne, Statements); raises SqlError."""
        params = _params(request.params, request.named_params)
        msg = None
        async for msg in self._execute(request.session_id, request.sql, params, request.batch_rows, one=True):
            pass
        return msg

    async def Statements(self, request_iterator, context):
        """ExecuteOne for each request of the stream, one at a time, answered in order;
        statement errors travel in the answer so that the stream stays open.

        A stream lives as long as its client connection, so streams are not what
        max_concurrent_rpcs limits (the server admits max_sessions more RPCs for them):
        statements in flight over all streams are, and one past that limit is answered
        UNAVAILABLE, unless its session is inside a transaction. At shutdown a stream
        ends after its running statement, and an idle one at once (close_streams)."""
        task = asyncio.current_task()
        requests = request_iterator.__aiter__()
        while not self._streams_closing:
            self._idle_streams.add(task)
            try:
                request = await requests.__anext__()
            except StopAsyncIteration:
                return
            finally:
                self._idle_streams.discard(task)
            t0 = time.perf_counter()
            self._stream_statements += 1
            try:
                if (self._stream_statements > self.engine.options.max_concurrent_rpcs
                        and not self._in_transaction(request.session_id)):
                    raise SqlError("UNAVAILABLE", f"overloaded: more than {self.engine.options.max_concurrent_rpcs} "
                                   "statements in flight; retry later")
                msg = await self._execute_one(request)
            except SqlError as err:
                M_STATEMENTS.labels(err.code).inc()
                yield pb.StatementResponse(error=pb.StatementError(
                    code=err.code, message=err.message, in_transaction=err.in_transaction,
                    sqlite_code=err.sqlite_code))
                continue
            finally:
                self._stream_statements -= 1
            _OK.inc()
            M_LATENCY.observe(time.perf_counter() - t0)
            yield pb.StatementResponse(result=msg)

    def _in_transaction(self, session_id: str) -> bool:
        """Whether the session has an explicit transaction open. Its statements are never
        refused for load: it may hold the write lock that the statements filling the
        limit wait for, and its COMMIT or ROLLBACK is what lets them go on."""
        try:
            return self.engine.session(session_id).in_transaction
        except SqlError:
            return False  # unknown or expired: _execute says so

    def close_streams(self) -> None:
        """On the loop, before the server stops: Statements streams take no new statement,
        and idle ones end now (the server's grace period would otherwise wait for them)."""
        self._streams_closing = True
        for task in list(self._idle_streams):
            task.cancel()

    async def _execute(self, sid: str, sql: str, params, batch_rows: int, *, one: bool = False):
        """Yield the response messages of one statement (one=True: exactly one message)."""
        engine = self.engine
        deadline = time.monotonic() + engine.options.lock_timeout_s
        async with self._serial(sid):
            # Captured once: after the statement ran, a lookup could find the session
            # expired and turn a done commit into an error the client would retry.
            session = engine.session(sid)
            await self._previous_closed(session)
            on_writer = engine.runs_on_writer(sid, sql)
            while True:
                deferred = Deferred()
                try:
                    if on_writer:
                        try:
                            chunks = await self.writer_thread.run(
                                lambda: list(engine.execute(sid, sql, params, batch_rows, deferred)))
                        except SqlError:
                            # An error can tell what the statement read: it waits like a result.
                            await self._durable(deferred.durable_lsn, session)
                            raise
                        if one:
                            chunks = [self._one_chunk(chunks, batch_rows)]
                        await self._durable(deferred.durable_lsn, session)
                        for chunk in chunks:
                            yield _response(*chunk)
                        return
                    if one:
                        chunk = self._read_one_inline(sid, sql, params, batch_rows, deferred)
                        if chunk is None:  # it would have blocked: in a read thread then
                            deferred = Deferred()
                            await self._snapshot_slot()
                            try:
                                chunk = await self._in_thread(self.read_pool, self._read_one, sid, sql, params,
                                                              batch_rows, deferred)
                            finally:
                                self._snapshot_slots.release()
                        yield _response(*chunk)
                        return
                    async with contextlib.aclosing(self._stream_read(session, sql, params, batch_rows,
                                                                     deferred)) as messages:
                        async for msg in messages:
                            yield msg
                    return
                except WriteLockBusy:
                    await self._wait_write_lock(deadline)
                except RouteToWriter:
                    on_writer = True
                except WaitDurable as w:
                    await self._durable(w.lsn, session)

    def _one_limit_rows(self, batch_rows: int) -> int:
        return batch_rows or self.engine.options.batch_rows

    def _one_chunk(self, chunks: list, batch_rows: int):
        """The chunks of a writer-connection statement as one (columns, rows, outcome)."""
        columns = chunks[0][0] if chunks else None
        rows = [row for chunk in chunks for row in chunk[1]]
        outcome = chunks[-1][2]
        changed = outcome.commit_lsn or outcome.rows_affected > 0
        if not changed and (len(rows) > self._one_limit_rows(batch_rows) or _rows_bytes(rows) > ONE_MESSAGE_BYTES):
            raise SqlError("STREAM_REQUIRED", "the result does not fit one message: use Execute",
                           in_transaction=outcome.in_transaction)
        return columns, rows, outcome

    def _read_one_inline(self, sid: str, sql: str, params, batch_rows: int, deferred: Deferred):
        """_read_one on the loop itself (no thread hand-off), or None if it would block
        (a page to fetch, no free snapshot, a long statement): nothing was done then."""
        with vfs.inline_only():
            try:
                return self._read_one(sid, sql, params, batch_rows, deferred)
            except Exception:
                if vfs.inline_blocked():
                    M_INLINE_READS.labels("fell_back").inc()
                    return None
                raise
            finally:
                if not vfs.inline_blocked():
                    M_INLINE_READS.labels("inline").inc()

    def _read_one(self, sid: str, sql: str, params, batch_rows: int, deferred: Deferred):
        """In a read thread: the whole result of a snapshot read, or STREAM_REQUIRED (changing nothing)."""
        limit_rows = self._one_limit_rows(batch_rows)
        gen = self.engine.execute(sid, sql, params, limit_rows, deferred)
        columns, rows, size = None, [], 0
        try:
            for chunk_columns, chunk_rows, outcome in gen:
                if chunk_columns is not None and columns is None:
                    columns = chunk_columns
                rows.extend(chunk_rows)
                size += _rows_bytes(chunk_rows)
                if outcome is not None:
                    return columns, rows, outcome
                if len(rows) > limit_rows or size > ONE_MESSAGE_BYTES:
                    raise SqlError("STREAM_REQUIRED", "the result does not fit one message: use Execute",
                                   in_transaction=self.engine.session(sid).in_transaction)
        finally:
            gen.close()
        raise SqlError("INTERNAL", "the statement ended without an outcome")

    async def _stream_read(self, session, sql: str, params, batch_rows: int, deferred: Deferred):
        """A snapshot read: SQLite steps in a pool thread, one batch of rows per hop.

        Holds one snapshot slot from the first step until the snapshot is given back
        (when the result ends, or when an abandoned result's clean-up has run)."""
        await self._snapshot_slot()
        gen = self.engine.execute(session.session_id, sql, params, batch_rows, deferred)
        stepping = threading.Lock()  # close() must wait for a step still running in its thread

        def step():
            with stepping:
                chunk = next(gen, _END)
                if chunk is not _END and chunk[2] is not None:
                    next(gen, _END)  # the last chunk: let the generator end (and free the session) now
                return chunk

        def close():
            with stepping:
                gen.close()  # releases the snapshot and the session; a no-op once finished

        done = False
        try:
            while True:
                chunk = await self._in_thread(self.read_pool, step)
                if chunk is _END:
                    done = True
                    return
                done = chunk[2] is not None
                yield _response(*chunk)
                if done:
                    return
        finally:
            if done:
                self._snapshot_slots.release()
            else:  # an error, or the client went away mid-result: the session's next
                # request waits for this clean-up (see _execute), and so does the slot
                try:
                    fut = self.read_pool.submit(close)
                except RuntimeError:  # the pool is shut down: the process is stopping
                    self._snapshot_slots.release()
                else:
                    session.closing = fut
                    fut.add_done_callback(lambda _f: self.loop.call_soon_threadsafe(self._snapshot_slots.release))

    async def ExecuteMany(self, request, context):
        engine = self.engine
        sid = request.session_id
        try:
            sets = [_params(ps.params, ps.named_params) for ps in request.param_sets]
            deadline = time.monotonic() + engine.options.lock_timeout_s
            async with self._serial(sid):
                session = engine.session(sid)
                await self._previous_closed(session)
                while True:
                    deferred = Deferred()
                    try:
                        out = await self.writer_thread.run(engine.execute_many, sid, request.sql, sets, deferred)
                        break
                    except WriteLockBusy:
                        await self._wait_write_lock(deadline)
                    except SqlError:
                        await self._durable(deferred.durable_lsn, session)  # as for a result
                        raise
                await self._durable(deferred.durable_lsn, session)
        except SqlError as err:
            await self._abort(context, err)
        _OK.inc()
        return pb.ExecuteManyResponse(rows_affected=out.rows_affected, last_insert_rowid=out.last_insert_rowid,
                                      in_transaction=out.in_transaction, commit_lsn=out.commit_lsn)

    async def InstanceStatus(self, request, context):
        st = await self._in_thread(self.read_pool, self.engine.status)
        return pb.InstanceStatusResponse(
            node_id=self.node_id, az=self.az, role=self.role, epoch=st["epoch"], vdl=st["vdl"], vcl=st["vcl"],
            fenced=st["fenced"], read_only=st["read_only"], sessions=st["sessions"], commits=st["commits"],
            uptime_ms=int((time.monotonic() - self.started_s) * 1000), volume_id=self.engine.volume.volume_id,
            replica_lag_lsn=st.get("replica_lag_lsn", 0), replica_lag_ms=st.get("replica_lag_ms", 0.0),
            writer_address=st.get("writer_address", ""), stream_connected=st.get("stream_connected", False),
            read_lsn=st.get("read_lsn", 0),
            replicas=[pb.ReplicaStatus(**r) for r in (self.publisher.replicas() if self.publisher else ())],
        )

    def close(self) -> None:
        self.writer_thread.shutdown(wait=False, cancel_futures=True)
        self.read_pool.shutdown(wait=False, cancel_futures=True)


_KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000)]


def _start_server(loop: asyncio.AbstractEventLoop, listen: str, service: InstanceService, options: InstanceOptions,
                  publisher: RedoPublisher | None = None) -> tuple[AioServer, int]:
    """Start the aio server on `loop` (the volume transport's). Raises OSError if `listen` is taken."""
    # Read replicas' redo streams are synchronous handlers: each holds one thread of this pool.
    streams_pool = futures.ThreadPoolExecutor(max_workers=(publisher.max_replicas + 2) if publisher else 1,
                                              thread_name_prefix="redo-stream")

    async def _start():
        # Each client connection holds a Statements stream for its lifetime: room for one
        # per session beyond the RPC limit (Statements limits its statements in flight
        # itself), and keepalive pings so that a client host gone silent frees its stream.
        server = grpc.aio.server(migration_thread_pool=streams_pool, options=SERVER_OPTIONS + _KEEPALIVE_OPTIONS,
                                 maximum_concurrent_rpcs=options.max_concurrent_rpcs + options.max_sessions)
        pbg.add_InstanceServicer_to_server(service, server)
        if publisher is not None:
            rpbg.add_RedoStreamServicer_to_server(publisher, server)
        port = server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        await server.start()
        service._loop_tid = threading.get_ident()
        return server, port

    try:
        server, port = asyncio.run_coroutine_threadsafe(_start(), loop).result(timeout=30)
    except BaseException:
        streams_pool.shutdown(wait=False)
        service.close()
        raise
    return AioServer(server, loop, [streams_pool, service.writer_thread, service.read_pool],
                     before_stop=service.close_streams), port


def start_instance(node_id: str, az: str, listen: str, storage_nodes: list, *, volume_id: str = "main",
                   options: InstanceOptions | None = None, volume_overrides: dict | None = None):
    """Open the volume (recovery), the database and the gRPC server. Returns (server, port, engine, transport)."""
    options = options or InstanceOptions()
    transport = GrpcTransport()
    config = VolumeConfig(volume_id=volume_id, nodes=list(storage_nodes), local_az=az, **(volume_overrides or {}))
    volume = Volume.open(config, transport, create_if_missing=True)
    db = VolumeDatabase(volume, cache_capacity_bytes=options.cache_capacity_bytes,
                        snapshot_pool_size=options.snapshot_pool_size)
    engine = SqlEngine(db, node_id=node_id, options=options)
    service = InstanceService(engine, node_id, az, "writer", transport.loop)
    service.publisher = engine.publisher = RedoPublisher(db, node_id)
    volume.set_commit_hint(engine.more_commits_possible)
    try:
        server, port = _start_server(transport.loop, listen, service, options, service.publisher)
    except OSError:
        engine.close()
        volume.close()
        transport.close()
        raise
    return server, port, engine, transport


def start_reader(node_id: str, az: str, listen: str, storage_nodes: list, writer: str, *, volume_id: str = "main",
                 options: InstanceOptions | None = None, ready_timeout_s: float | None = None,
                 stop: threading.Event | None = None):
    """A read replica: attach the volume read-only (no recovery), follow the writer's redo
    stream, and serve once a first view exists. Returns (server, port, engine, transport)."""
    options = options or InstanceOptions()
    transport = GrpcTransport()
    config = VolumeConfig(volume_id=volume_id, nodes=list(storage_nodes), local_az=az)
    stop = stop or threading.Event()
    while True:  # the writer may still be creating the volume
        try:
            volume = Volume.attach_reader(config, transport)
            break
        except Exception as exc:  # noqa: BLE001
            if stop.wait(0.2):
                transport.close()
                raise
            _ = exc
    db = ReplicaDatabase(volume, local_az=az, cache_capacity_bytes=options.cache_capacity_bytes,
                         snapshot_pool_size=options.snapshot_pool_size)
    follower = ReplicaFollower(db, writer, node_id=node_id, az=az, address=listen, loop=transport.loop).start()
    deadline = None if ready_timeout_s is None else time.monotonic() + ready_timeout_s
    while not db.ready:  # the first subscription gives the first view
        if stop.is_set() or (deadline is not None and time.monotonic() > deadline):
            follower.stop()
            transport.close()
            raise TimeoutError(f"no view from the writer at {writer}")
        try:
            db.wait_view(0, 0.2)
        except Exception:  # noqa: BLE001
            pass
    engine = ReaderEngine(db, follower, node_id=node_id, options=options)
    service = InstanceService(engine, node_id, az, "reader", transport.loop)
    try:
        server, port = _start_server(transport.loop, listen, service, options)
    except OSError:
        follower.stop()
        engine.close()
        transport.close()
        raise
    return server, port, engine, transport


def serve(node_id: str, az: str, listen: str, storage_nodes: list, volume_id: str = "main",
          metrics_listen: str | None = None, options: InstanceOptions | None = None,
          stop_event: threading.Event | None = None, role: str = "writer", writer: str | None = None,
          volume_overrides: dict | None = None) -> None:
    """Run a writer (or, with role="reader" and writer=HOST:PORT, a read replica) until SIGTERM/SIGINT.
    volume_overrides: fields of the writer's VolumeConfig (e.g. group_commit_delay_s)."""
    log = configure_logging(node_id=node_id, az=az, role=role)
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # outlive the terminal (nodes share its session)
    if role == "reader":
        return _serve_reader(log, node_id, az, listen, storage_nodes, writer, volume_id, metrics_listen, options, stop)
    t0 = time.monotonic()
    server, port, engine, transport = start_instance(node_id, az, listen, storage_nodes, volume_id=volume_id, options=options,
                                                     volume_overrides=volume_overrides)
    metrics_port = start_metrics_server(metrics_listen) if metrics_listen else None
    rec = engine.volume.recovery
    frozen = freeze_startup_objects()
    log.info("instance_started", listen=listen, port=port, metrics_port=metrics_port, volume=volume_id,
             epoch=engine.volume.epoch, vdl=engine.volume.vdl, read_only=engine.volume.read_only,
             recovery_ms=round(rec.duration_ms, 1) if rec else None, startup_ms=round((time.monotonic() - t0) * 1000, 1),
             gc_frozen_objects=frozen)
    try:
        while not stop.wait(0.5):
            if engine.fenced_reason is not None or engine.volume.fenced:
                log.error("instance_fenced_stopping", reason=engine.fenced_reason, epoch=engine.volume.epoch)
                break
    finally:
        log.info("instance_stopping")
        if getattr(engine, "publisher", None) is not None:
            engine.publisher.stop()  # ends the replicas' redo streams
        server.stop(grace=2).wait()
        engine.close()
        engine.volume.close()
        transport.close()
        log.info("instance_stopped")


def _serve_reader(log, node_id, az, listen, storage_nodes, writer, volume_id, metrics_listen, options, stop) -> None:
    if not writer:
        raise ValueError("a reader needs the writer's address (--writer HOST:PORT)")
    t0 = time.monotonic()
    metrics_port = start_metrics_server(metrics_listen) if metrics_listen else None
    try:
        server, port, engine, transport = start_reader(node_id, az, listen, storage_nodes, writer,
                                                       volume_id=volume_id, options=options, stop=stop)
    except TimeoutError:
        return
    frozen = freeze_startup_objects()
    log.info("instance_started", listen=listen, port=port, metrics_port=metrics_port, volume=volume_id, writer=writer,
             epoch=engine.db.epoch, read_lsn=engine.db.view, startup_ms=round((time.monotonic() - t0) * 1000, 1),
             gc_frozen_objects=frozen)
    try:
        stop.wait()
    finally:
        log.info("instance_stopping")
        server.stop(grace=2).wait()
        engine.close()
        engine.volume.close()
        transport.close()
        log.info("instance_stopped")
