"""The storage node process: gRPC StorageNode service over a StorageEngine.

    python -m borealdb.nodes.storage.server --id s-a1 --az a --listen 127.0.0.1:7101 --data DIR \
        [--metrics-listen 127.0.0.1:9101]
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures

import grpc

from borealdb.nodes.log import configure_logging
from borealdb.nodes.metrics import start_metrics_server
from borealdb.protos import storage_pb2 as pb
from borealdb.protos import storage_pb2_grpc as pb_grpc

from .engine import StorageEngine, StorageError, StorageOptions

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
SERVER_WORKERS = 32  # bounds concurrent requests (and so the group-commit queue)


def _call(context, fn, req):
    try:
        return fn(req)
    except StorageError as exc:
        md = [("boreal-reason", pb.ErrorReason.Name(exc.reason))]
        if exc.pg is not None:
            md.append(("boreal-pg", str(exc.pg)))
        if exc.segment_epoch is not None:
            md.append(("boreal-segment-epoch", str(exc.segment_epoch)))
        context.set_trailing_metadata(tuple(md))
        context.abort(exc.code, exc.message)


class StorageServicer(pb_grpc.StorageNodeServicer):
    def __init__(self, engine: StorageEngine):
        self.e = engine

    def Append(self, request, context):
        return _call(context, self.e.append, request)

    def ReadPage(self, request, context):
        return _call(context, self.e.read_page, request)

    def CreateSegment(self, request, context):
        return _call(context, self.e.create_segment, request)

    def PutDescriptor(self, request, context):
        return _call(context, self.e.put_descriptor, request)

    def Seal(self, request, context):
        return _call(context, self.e.seal, request)

    def ListSegments(self, request, context):
        return _call(context, self.e.list_segments, request)

    def RecordSummaries(self, request, context):
        return _call(context, self.e.record_summaries, request)

    def FetchRecords(self, request, context):
        return _call(context, self.e.fetch_records, request)

    def NodeStatus(self, request, context):
        return _call(context, self.e.node_status, request)


class GrpcPeer:
    """peer_factory target for real servers: a channel per peer address."""

    def __init__(self, address: str):
        self.address = address
        self.channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
        self.stub = pb_grpc.StorageNodeStub(self.channel)

    def fetch_records(self, req: pb.FetchRecordsRequest, timeout_s: float) -> pb.FetchRecordsResponse:
        return self.stub.FetchRecords(req, timeout=timeout_s)

    def list_segments(self, req: pb.ListSegmentsRequest, timeout_s: float) -> pb.ListSegmentsResponse:
        return self.stub.ListSegments(req, timeout=timeout_s)

    def close(self) -> None:
        self.channel.close()


def start_server(engine: StorageEngine, listen: str) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_WORKERS, thread_name_prefix="storage-rpc"),
                         options=GRPC_OPTIONS)
    pb_grpc.add_StorageNodeServicer_to_server(StorageServicer(engine), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    server.start()
    return server, port


def serve(node_id: str, az: str, listen: str, data_dir: str, metrics_listen: str | None = None,
          options: StorageOptions | None = None, stop_event: threading.Event | None = None) -> None:
    """Run a storage node until SIGTERM/SIGINT (or stop_event), then shut down cleanly."""
    log = configure_logging(node_id=node_id, az=az, role="storage")
    engine = StorageEngine(node_id, az, listen, data_dir, options or StorageOptions()).open()
    stop = stop_event or threading.Event()
    server, port = start_server(engine, listen)
    engine.address = listen if not listen.endswith(":0") else f"{listen.rsplit(':', 1)[0]}:{port}"
    metrics_port = start_metrics_server(metrics_listen) if metrics_listen else None
    engine.start_background(GrpcPeer)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    log.info("storage_node_started", listen=listen, port=port, metrics_port=metrics_port, data=data_dir,
             segments=len(engine._all_segments()))
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

