"""The instance node process: the SQL engine behind the `Instance` gRPC service (protos/sql.proto).

    boreal instance-node --id i-a1 --az a --role writer --listen 127.0.0.1:7111 \\
        --storage-nodes s-a1@a@127.0.0.1:7101,s-a2@a@127.0.0.1:7102,...

Start-up opens the volume (recovery from a read quorum of every PG: truncate above
the VDL, raise the epoch, which fences any previous writer), then serves. Its
duration depends on the in-flight window, not on the database size.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from borealdb.nodes.instance.engine import InstanceOptions, SqlEngine, SqlError
from borealdb.nodes.instance.replica import ReaderEngine, RedoPublisher, ReplicaDatabase, ReplicaFollower
from borealdb.nodes.instance.vfs import VolumeDatabase
from borealdb.nodes.log import configure_logging
from borealdb.nodes.metrics import start_metrics_server
from borealdb.nodes.rpc import SERVER_OPTIONS
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


class InstanceService(pbg.InstanceServicer):
    def __init__(self, engine: SqlEngine, node_id: str, az: str, role: str):
        self.engine = engine
        self.node_id = node_id
        self.az = az
        self.role = role
        self.started_s = time.monotonic()
        self.publisher = None  # the writer's replica.RedoPublisher (for the list of its replicas)

    def _abort(self, context: grpc.ServicerContext, err: SqlError) -> None:
        M_STATEMENTS.labels(err.code).inc()
        md = [(ERROR_KEY, err.code), (IN_TRANSACTION_KEY, "1" if err.in_transaction else "0")]
        if err.sqlite_code is not None:
            md.append((SQLITE_CODE_KEY, str(err.sqlite_code)))
        context.set_trailing_metadata(tuple(md))
        context.abort(_STATUS.get(err.code, grpc.StatusCode.UNKNOWN), err.message)

    def OpenSession(self, request, context):
        try:
            s = self.engine.open_session(request.client_name)
        except SqlError as err:
            self._abort(context, err)
        M_SESSIONS.set(self.engine.session_count())
        return pb.OpenSessionResponse(session_id=s.session_id, node_id=self.node_id, role=self.role,
                                      idle_timeout_ms=int(self.engine.options.session_idle_timeout_s * 1000),
                                      epoch=self.engine.volume.epoch)

    def CloseSession(self, request, context):
        self.engine.close_session(request.session_id)
        M_SESSIONS.set(self.engine.session_count())
        return pb.CloseSessionResponse()

    def Execute(self, request, context):
        t0 = time.perf_counter()
        try:
            params = _params(request.params, request.named_params)
            for columns, rows, outcome in self.engine.execute(request.session_id, request.sql, params, request.batch_rows):
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
                yield msg
        except SqlError as err:
            self._abort(context, err)
        _OK.inc()
        M_LATENCY.observe(time.perf_counter() - t0)

    def ExecuteMany(self, request, context):
        try:
            sets = [_params(ps.params, ps.named_params) for ps in request.param_sets]
            out = self.engine.execute_many(request.session_id, request.sql, sets)
        except SqlError as err:
            self._abort(context, err)
        _OK.inc()
        return pb.ExecuteManyResponse(rows_affected=out.rows_affected, last_insert_rowid=out.last_insert_rowid,
                                      in_transaction=out.in_transaction, commit_lsn=out.commit_lsn)

    def InstanceStatus(self, request, context):
        st = self.engine.status()
        return pb.InstanceStatusResponse(
            node_id=self.node_id, az=self.az, role=self.role, epoch=st["epoch"], vdl=st["vdl"], vcl=st["vcl"],
            fenced=st["fenced"], read_only=st["read_only"], sessions=st["sessions"], commits=st["commits"],
            uptime_ms=int((time.monotonic() - self.started_s) * 1000), volume_id=self.engine.volume.volume_id,
            replica_lag_lsn=st.get("replica_lag_lsn", 0), replica_lag_ms=st.get("replica_lag_ms", 0.0),
            writer_address=st.get("writer_address", ""), stream_connected=st.get("stream_connected", False),
            read_lsn=st.get("read_lsn", 0),
            replicas=[pb.ReplicaStatus(**r) for r in (self.publisher.replicas() if self.publisher else ())],
        )


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
    # Read replicas: up to 15 redo streams, each holding one worker thread (plus its report reader).
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=options.grpc_workers + 16, thread_name_prefix="sql"),
                         options=SERVER_OPTIONS, maximum_concurrent_rpcs=options.grpc_workers * 4)
    service = InstanceService(engine, node_id, az, "writer")
    service.publisher = engine.publisher = RedoPublisher(db, node_id)
    pbg.add_InstanceServicer_to_server(service, server)
    rpbg.add_RedoStreamServicer_to_server(service.publisher, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        engine.close()
        volume.close()
        transport.close()
        raise OSError(f"cannot listen on {listen}")
    server.start()
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
    follower = ReplicaFollower(db, writer, node_id=node_id, az=az, address=listen).start()
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
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=options.grpc_workers, thread_name_prefix="sql"),
                         options=SERVER_OPTIONS, maximum_concurrent_rpcs=options.grpc_workers * 4)
    pbg.add_InstanceServicer_to_server(InstanceService(engine, node_id, az, "reader"), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        engine.close()
        transport.close()
        raise OSError(f"cannot listen on {listen}")
    server.start()
    return server, port, engine, transport


def serve(node_id: str, az: str, listen: str, storage_nodes: list, volume_id: str = "main",
          metrics_listen: str | None = None, options: InstanceOptions | None = None,
          stop_event: threading.Event | None = None, role: str = "writer", writer: str | None = None) -> None:
    """Run a writer (or, with role="reader" and writer=HOST:PORT, a read replica) until SIGTERM/SIGINT."""
    log = configure_logging(node_id=node_id, az=az, role=role)
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    if role == "reader":
        return _serve_reader(log, node_id, az, listen, storage_nodes, writer, volume_id, metrics_listen, options, stop)
    t0 = time.monotonic()
    server, port, engine, transport = start_instance(node_id, az, listen, storage_nodes, volume_id=volume_id, options=options)
    metrics_port = start_metrics_server(metrics_listen) if metrics_listen else None
    rec = engine.volume.recovery
    log.info("instance_started", listen=listen, port=port, metrics_port=metrics_port, volume=volume_id,
             epoch=engine.volume.epoch, vdl=engine.volume.vdl, read_only=engine.volume.read_only,
             recovery_ms=round(rec.duration_ms, 1) if rec else None, startup_ms=round((time.monotonic() - t0) * 1000, 1))
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
    log.info("instance_started", listen=listen, port=port, metrics_port=metrics_port, volume=volume_id, writer=writer,
             epoch=engine.db.epoch, read_lsn=engine.db.view, startup_ms=round((time.monotonic() - t0) * 1000, 1))
    try:
        stop.wait()
    finally:
        log.info("instance_stopping")
        server.stop(grace=2).wait()
        engine.close()
        engine.volume.close()
        transport.close()
        log.info("instance_stopped")
