"""The storage node process: gRPC StorageNode service over a StorageEngine.

    python -m borealdb.nodes.storage.server --id s-a1 --az a --listen 127.0.0.1:7101 --data DIR \
        [--metrics-listen 127.0.0.1:9101]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import threading
from collections import deque
from concurrent import futures

import grpc

from borealdb.nodes.rpc import CLIENT_CHANNEL_OPTIONS, SERVER_OPTIONS, AioServer, freeze_startup_objects

from borealdb.nodes.log import configure_logging
from borealdb.nodes.metrics import start_metrics_server
from borealdb.protos import storage_pb2 as pb
from borealdb.protos import storage_pb2_grpc as pb_grpc

from .engine import StorageEngine, StorageError, StorageOptions

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = SERVER_OPTIONS
SERVER_WORKERS = 32  # threads for the RPCs other than Append (which holds no thread while it waits)


def _metadata(exc: StorageError) -> tuple[tuple[str, str], ...]:
    md = [("boreal-reason", pb.ErrorReason.Name(exc.reason))]
    if exc.pg is not None:
        md.append(("boreal-pg", str(exc.pg)))
    if exc.segment_epoch is not None:
        md.append(("boreal-segment-epoch", str(exc.segment_epoch)))
    return tuple(md)


def stream_error(seq: int, exc: StorageError) -> pb.AppendStreamResponse:
    """The AppendStream answer for a request that a unary Append would have failed with `exc`."""
    return pb.AppendStreamResponse(
        seq=seq, error_reason=exc.reason, error_code=exc.code.value[0], error_message=exc.message,
        error_pg=0 if exc.pg is None else exc.pg + 1,
        error_segment_epoch=0 if exc.segment_epoch is None else exc.segment_epoch + 1)


def _call(context, fn, req):
    """Synchronous servicer helper (kept for in-process callers and tests)."""
    try:
        return fn(req)
    except StorageError as exc:
        context.set_trailing_metadata(_metadata(exc))
        context.abort(exc.code, exc.message)


class StorageServicer(pb_grpc.StorageNodeServicer):
    """The StorageNode service on grpc.aio, all RPCs on one event-loop thread.

    Append runs its validate + write step on the loop, then awaits the group commit
    (the committer's fsync thread resolves every covered Append at once), then indexes
    and acks on the loop: no thread handoff per request, one per fsync batch. The other
    RPCs may block (disk reads, meta.json fsyncs) and run in a thread pool.
    """

    def __init__(self, engine: StorageEngine, executor: futures.ThreadPoolExecutor):
        self.e = engine
        self._pool = executor

    @staticmethod
    async def _abort(context, exc: StorageError):
        context.set_trailing_metadata(_metadata(exc))
        await context.abort(exc.code, exc.message)

    async def _offload(self, context, fn, req):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, req)
        except StorageError as exc:
            await self._abort(context, exc)

    async def Append(self, request, context):
        e = self.e
        try:
            st = e.append_begin(request)
        except StorageError as exc:
            await self._abort(context, exc)
            return None
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not e.committer.sync_async(st.ticket, loop, fut):
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                # the caller went away: the frames are written, so still index them once
                # durable (else they would stay pending and block a retry of the same LSNs)
                fut.add_done_callback(lambda f: None if f.cancelled() or f.exception() else e.append_finish(st))
                raise
        return e.append_finish(st)

    async def AppendStream(self, request_iterator, context):
        """Appends of one writer, in order, on one long-lived stream (see storage.proto).

        A reader task validates and writes each request as it arrives (append_begin, on
        the loop); this coroutine waits for the group fsync covering everything written
        so far (one wait per batch of requests, not per request), then indexes and acks
        each request in order. A rejected request gets an error answer; the stream goes on.
        """
        e = self.e
        loop = asyncio.get_running_loop()
        ready: deque = deque()            # (seq, _AppendState | StorageError), in arrival order
        kick = asyncio.Event()
        ended = [False]

        async def read() -> None:
            try:
                async for sreq in request_iterator:
                    try:
                        ready.append((sreq.seq, e.append_begin(sreq.append)))
                    except StorageError as exc:
                        ready.append((sreq.seq, exc))
                    kick.set()
            finally:
                ended[0] = True
                kick.set()

        reader = loop.create_task(read())
        batch: list = []
        try:
            while True:
                if not ready:
                    if ended[0]:
                        break
                    kick.clear()
                    await kick.wait()
                    continue
                batch = list(ready)
                ready.clear()
                ticket = max((st.ticket for _seq, st in batch if not isinstance(st, StorageError)), default=0)
                if ticket and not e.committer.try_sync_inline(ticket):
                    fut = loop.create_future()
                    if not e.committer.sync_async(ticket, loop, fut):
                        await asyncio.shield(fut)
                for seq, st in batch:
                    if isinstance(st, StorageError):
                        await context.write(stream_error(seq, st))
                    else:
                        await context.write(pb.AppendStreamResponse(seq=seq, append=e.append_finish(st)))
                batch = []
            await reader  # re-raise a failure of the request stream
        except BaseException:
            reader.cancel()
            # the caller went away (or the fsync failed): frames already written are still
            # indexed once durable, else they would stay pending and block a retry of their LSNs
            self._finish_when_durable([st for _seq, st in itertools.chain(batch, ready)
                                       if not isinstance(st, StorageError)])
            raise

    def _finish_when_durable(self, states: list) -> None:
        e = self.e
        if not states:
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def finish(f=None) -> None:
            if f is not None and (f.cancelled() or f.exception() is not None):
                return
            for st in states:
                try:
                    e.append_finish(st)
                except Exception:  # noqa: BLE001 - best effort for an abandoned request
                    pass

        if e.committer.sync_async(max(st.ticket for st in states), loop, fut):
            finish()
        else:
            fut.add_done_callback(finish)

    async def ReadPage(self, request, context):
        return await self._offload(context, self.e.read_page, request)

    async def CreateSegment(self, request, context):
        return await self._offload(context, self.e.create_segment, request)

    async def PutDescriptor(self, request, context):
        return await self._offload(context, self.e.put_descriptor, request)

    async def Seal(self, request, context):
        return await self._offload(context, self.e.seal, request)

    async def ListSegments(self, request, context):
        return await self._offload(context, self.e.list_segments, request)

    async def RecordSummaries(self, request, context):
        return await self._offload(context, self.e.record_summaries, request)

    async def FetchRecords(self, request, context):
        return await self._offload(context, self.e.fetch_records, request)

    async def NodeStatus(self, request, context):
        return await self._offload(context, self.e.node_status, request)


class _ServerLoop:
    """One asyncio loop thread per process that hosts every aio server started here."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid = 0

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid() or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="storage-grpc-loop", daemon=True).start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop


def start_server(engine: StorageEngine, listen: str) -> tuple[AioServer, int]:
    loop = _ServerLoop.get()
    pool = futures.ThreadPoolExecutor(max_workers=SERVER_WORKERS, thread_name_prefix="storage-rpc")

    async def _start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=GRPC_OPTIONS)
        pb_grpc.add_StorageNodeServicer_to_server(StorageServicer(engine, pool), server)
        port = server.add_insecure_port(listen)
        if port == 0:
            raise RuntimeError(f"cannot listen on {listen}")
        await server.start()
        return server, port

    try:
        server, port = asyncio.run_coroutine_threadsafe(_start(), loop).result(timeout=30)
    except BaseException:
        pool.shutdown(wait=False)
        raise
    return AioServer(server, loop, [pool]), port


class GrpcPeer:
    """peer_factory target for real servers: a channel per peer address."""

    def __init__(self, address: str):
        self.address = address
        self.channel = grpc.insecure_channel(address, options=CLIENT_CHANNEL_OPTIONS)
        self.stub = pb_grpc.StorageNodeStub(self.channel)

    def fetch_records(self, req: pb.FetchRecordsRequest, timeout_s: float) -> pb.FetchRecordsResponse:
        return self.stub.FetchRecords(req, timeout=timeout_s)

    def list_segments(self, req: pb.ListSegmentsRequest, timeout_s: float) -> pb.ListSegmentsResponse:
        return self.stub.ListSegments(req, timeout=timeout_s)

    def close(self) -> None:
        self.channel.close()


def serve(node_id: str, az: str, listen: str, data_dir: str, metrics_listen: str | None = None,
          options: StorageOptions | None = None, stop_event: threading.Event | None = None) -> None:
    """Run a storage node until SIGTERM/SIGINT (or stop_event), then shut down cleanly."""
    log = configure_logging(node_id=node_id, az=az, role="storage")
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():  # before it answers: a stop then stops it cleanly
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # outlive the terminal (nodes share its session)
    engine = StorageEngine(node_id, az, listen, data_dir, options or StorageOptions()).open()
    server, port = start_server(engine, listen)
    engine.address = listen if not listen.endswith(":0") else f"{listen.rsplit(':', 1)[0]}:{port}"
    metrics_port = start_metrics_server(metrics_listen) if metrics_listen else None
    engine.start_background(GrpcPeer)
    frozen = freeze_startup_objects()
    log.info("storage_node_started", listen=listen, port=port, metrics_port=metrics_port, data=data_dir,
             segments=len(engine._all_segments()), gc_frozen_objects=frozen)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        log.info("storage_node_stopping")
        server.stop(grace=2).wait()
        engine.close()
        log.info("storage_node_stopped")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m borealdb.nodes.storage.server")
    ap.add_argument("--id", required=True)
    ap.add_argument("--az", required=True)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--metrics-listen", default=None)
    args = ap.parse_args(argv)
    serve(args.id, args.az, args.listen, args.data, metrics_listen=args.metrics_listen)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

