"""The synchronous client's Statements stream against a scripted gRPC server in this
process (on 127.0.0.1): answers, in-band errors, the statement watchdog, transport
failures, interrupted waits, and streams that must not be reused."""

from __future__ import annotations

import gc
import queue
import signal
import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc._cython import cygrpc

import borealdb
from borealdb import _stream, _wire, errors
from borealdb.protos import sql_pb2

NEVER = object()  # an answer that never comes (a paused server)


class ScriptedServer:
    """A gRPC server with Instance's Statements (unless statements=False) and the
    sessions a borealdb.connect() opens; each statement is answered with what
    `answer(request, context)` returns (NEVER: no answer until the call ends; None: the
    stream ends unanswered, with status OK).
    `calls` holds, per stream, the SQL it received; `ended` gets one item per stream
    whose call is over (ended by the client, cancelled or failed)."""

    def __init__(self, answer, *, statements: bool = True, port: int = 0):
        self.answer = answer
        self.calls: list[list[str]] = []
        self.ended: queue.SimpleQueue = queue.SimpleQueue()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="scripted-server"))
        handlers = {  # sessions, for a borealdb.connect() to this server
            "OpenSession": grpc.unary_unary_rpc_method_handler(
                lambda request, context: sql_pb2.OpenSessionResponse(session_id="s1", node_id="i-1", role="writer",
                                                                     epoch=1),
                request_deserializer=sql_pb2.OpenSessionRequest.FromString,
                response_serializer=sql_pb2.OpenSessionResponse.SerializeToString),
            "CloseSession": grpc.unary_unary_rpc_method_handler(
                lambda request, context: sql_pb2.CloseSessionResponse(),
                request_deserializer=sql_pb2.CloseSessionRequest.FromString,
                response_serializer=sql_pb2.CloseSessionResponse.SerializeToString),
        }
        if statements:
            handlers["Statements"] = grpc.stream_stream_rpc_method_handler(
                self._statements, request_deserializer=sql_pb2.ExecuteRequest.FromString,
                response_serializer=sql_pb2.StatementResponse.SerializeToString)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("borealdb.sql.v1.Instance", handlers),))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    def _statements(self, requests, context):
        seen: list[str] = []
        self.calls.append(seen)
        over = threading.Event()
        context.add_callback(over.set)
        context.add_callback(lambda: self.ended.put(seen))
        for request in requests:
            seen.append(request.sql)
            reply = self.answer(request, context)
            if reply is NEVER:
                over.wait()  # the server's side of a paused writer, until the call ends
                return
            if reply is None:
                return
            yield reply

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


@pytest.fixture
def serve():
    servers: list[ScriptedServer] = []
    channels: list[grpc.Channel] = []

    def start(answer, **kwargs):
        server = ScriptedServer(answer, **kwargs)
        servers.append(server)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        channels.append(channel)
        return server, channel

    yield start
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop()


def _ok(request, context):
    return sql_pb2.StatementResponse(result=sql_pb2.ExecuteResponse(last=True, rows_affected=1,
                                                                    last_insert_rowid=len(request.sql)))


def _req(sql="INSERT INTO t VALUES (1)"):
    return sql_pb2.ExecuteRequest(session_id="s1", sql=sql)


def test_statements_are_answered_in_order_on_one_stream(serve):
    server, channel = serve(_ok)
    stream = _stream.StatementStream(channel)
    for sql in ("a", "bb", "ccc"):
        assert stream.execute(_req(sql), timeout_s=30).last_insert_rowid == len(sql)
    assert stream.usable() and server.calls == [["a", "bb", "ccc"]]
    stream.close()


def _client_threads() -> int:
    return sum(not t.name.startswith("scripted-server") for t in threading.enumerate())


def test_streams_need_no_thread_of_their_own(serve):
    """The caller drives its stream: eight open streams add no threads (gRPC's stream
    API kept one feeding thread per stream)."""
    _server, channel = serve(_ok)
    first = _stream.StatementStream(channel)
    first.execute(_req(), timeout_s=30)  # the channel is connected, the watchdog started
    before = _client_threads()
    streams = [_stream.StatementStream(channel) for _ in range(8)]
    for s in streams:
        s.execute(_req(), timeout_s=30)
    assert _client_threads() == before
    for s in [first, *streams]:
        s.close()


def test_an_error_in_the_answer_maps_like_a_unary_failure_and_keeps_the_stream(serve):
    def answer(request, context):
        return sql_pb2.StatementResponse(error=sql_pb2.StatementError(
            code=sql_pb2.CONSTRAINT_VIOLATION, message="UNIQUE constraint failed: t.id",
            in_transaction=True, sqlite_code=2067))

    _server, channel = serve(answer)
    stream = _stream.StatementStream(channel)
    with pytest.raises(_wire.StatementFailed) as info:
        stream.execute(_req(), timeout_s=30)
    exc = _wire.error_from_rpc(info.value, outcome_unknown=True, what="INSERT")
    assert isinstance(exc, errors.IntegrityError)
    assert (exc.code, exc.sqlite_code, exc.in_transaction) == ("CONSTRAINT_VIOLATION", 2067, True)
    assert "UNIQUE constraint failed" in str(exc)
    assert stream.usable()
    stream.close()


def test_an_error_without_a_sqlite_code_has_none():
    err = _wire.StatementFailed(sql_pb2.StatementError(code=sql_pb2.STREAM_REQUIRED, message="too big"))
    assert _wire.stream_required(err)
    assert not _wire.streams_unsupported(err)
    assert _wire.error_from_rpc(err).sqlite_code is None


def test_a_statement_past_its_timeout_is_cancelled_and_reported_as_a_deadline(serve):
    server, channel = serve(lambda request, context: NEVER)
    stream = _stream.StatementStream(channel)
    with pytest.raises(_wire.StreamFailed) as info:
        stream.execute(_req(), timeout_s=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.ended.get(timeout=10) == [_req().sql]  # the server saw the call end
    assert not stream.usable()
    # A write whose answer never came: its outcome is unknown; a read is just unavailable.
    assert isinstance(_wire.error_from_rpc(info.value, outcome_unknown=True), errors.OutcomeUnknown)
    assert isinstance(_wire.error_from_rpc(info.value), errors.Unavailable)


def test_the_watchdog_leaves_answered_statements_alone(serve):
    server, channel = serve(_ok)
    stream = _stream.StatementStream(channel)
    stale = _stream._WATCHDOG.watch(0.0, stream)  # as an entry of an answered statement
    stream.execute(_req(), timeout_s=30)
    stream._expire(stale)  # the watchdog reaching it late must not touch the stream
    assert stream.usable()
    assert stream.execute(_req("b"), timeout_s=30).last_insert_rowid == 1
    stale[2] = None
    stream.close()
    # while another statement is pending, a stale entry still changes nothing
    _slow, slow_channel = serve(lambda request, context: NEVER)
    pending = _stream.StatementStream(slow_channel)
    stale = [0.0, -1, pending]
    done = threading.Event()

    def expire_while_pending():
        while pending._pending is None:
            done.wait(0.001)
        pending._expire(stale)
        done.set()

    threading.Thread(target=expire_while_pending, daemon=True).start()
    with pytest.raises(_wire.StreamFailed, match="no answer within 0.5s"):
        pending.execute(_req(), timeout_s=0.5)  # only its own deadline ends it
    assert done.is_set()


def test_a_failed_call_breaks_the_stream_with_its_status(serve):
    def answer(request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "the writer is shutting down")

    _server, channel = serve(answer)
    stream = _stream.StatementStream(channel)
    with pytest.raises(grpc.RpcError) as info:
        stream.execute(_req(), timeout_s=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in info.value.details()
    assert not info.value.never_sent  # the server read it: its outcome stays unknown
    assert isinstance(_wire.error_from_rpc(info.value, outcome_unknown=True), errors.OutcomeUnknown)
    assert not stream.usable()
    with pytest.raises(AssertionError):
        stream.execute(_req(), timeout_s=30)


def test_a_stream_the_server_ended_is_reported_and_not_reused(serve):
    """The server ends the stream without answering (it shuts down cleanly)."""
    _server, channel = serve(lambda request, context: _ok(request, context) if request.sql == "a" else None)
    stream = _stream.StatementStream(channel)
    assert stream.execute(_req("a"), timeout_s=30).rows_affected == 1
    with pytest.raises(_wire.StreamFailed, match="closed the statement stream") as info:
        stream.execute(_req("b"), timeout_s=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not info.value.never_sent  # the server read it: never sent again
    assert not stream.usable()


def test_a_server_without_the_stream_is_recognised(serve):
    _server, channel = serve(_ok, statements=False)
    stream = _stream.StatementStream(channel)
    with pytest.raises(grpc.RpcError) as info:
        stream.execute(_req(), timeout_s=30)
    assert _wire.streams_unsupported(info.value)
    assert not _wire.streams_unsupported(_wire.StreamFailed(grpc.StatusCode.UNAVAILABLE, "down"))


class Interrupted(BaseException):
    pass


def test_an_interrupted_wait_cancels_the_stream(serve):
    """A signal handler raising in the middle of the wait (as Ctrl-C does): gRPC frees
    the call; its answer may still come, so the stream is never used again."""
    server, channel = serve(lambda request, context: NEVER)
    stream = _stream.StatementStream(channel)

    _interrupted(stream, after_s=0.3)
    assert not stream.usable()
    assert server.ended.get(timeout=10) == [_req().sql]
    stream.close()  # nothing left to free: must not wait on the freed queue


def test_an_interrupt_that_lands_as_the_answer_comes_cancels_the_stream(serve):
    """The signal arrives during the wait, but gRPC only looks for signals every 200 ms:
    the handler then runs just after the answer was taken, and the call, not freed by
    gRPC, must still be cancelled (else it stays open on the server)."""
    def late(request, context):
        time.sleep(0.05)
        return _ok(request, context)

    server, channel = serve(late)
    stream = _stream.StatementStream(channel)
    _interrupted(stream, after_s=0.01)
    assert not stream.usable()
    assert server.ended.get(timeout=10) == [_req().sql]
    stream.close()


def _interrupted(stream, after_s: float) -> None:
    """Run a statement on `stream` that a signal handler interrupts after `after_s`."""
    def interrupt(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(after_s, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(Interrupted):
            stream.execute(_req(), timeout_s=30)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, old)


def test_a_dropped_stream_ends_its_call(serve):
    server, channel = serve(_ok)
    stream = _stream.StatementStream(channel)
    stream.execute(_req(), timeout_s=30)
    del stream
    gc.collect()
    assert server.ended.get(timeout=10) == [_req().sql]


def test_close_ends_the_call(serve):
    server, channel = serve(_ok)
    stream = _stream.StatementStream(channel)
    stream.execute(_req(), timeout_s=30)
    stream.close()
    assert server.ended.get(timeout=10) == [_req().sql]
    assert not stream.usable()
    stream.close()  # idempotent


def test_a_stream_whose_connection_was_lost_fails_its_next_send_as_never_sent(serve):
    """The server restarts between two statements: the old stream is dead, which its
    caller learns only at the next statement, whose message gRPC does not write out.
    Such a statement is safe to send again (the connection does, on a new stream), and
    a write that failed so is not reported as of unknown outcome."""
    server, channel = serve(_ok)
    stream = _stream.StatementStream(channel)
    stream.execute(_req(), timeout_s=30)
    server.stop()
    _wait_disconnected(channel)
    restarted, _ = serve(_ok, port=server.port)
    with pytest.raises(_wire.StreamFailed) as info:
        stream.execute(_req("lost"), timeout_s=30)
    assert info.value.never_sent and not stream.usable()
    assert isinstance(_wire.error_from_rpc(info.value, outcome_unknown=True), errors.Unavailable)
    assert not isinstance(_wire.error_from_rpc(info.value, outcome_unknown=True), errors.OutcomeUnknown)
    fresh = _stream.StatementStream(channel)
    assert fresh.execute(_req("again"), timeout_s=30).rows_affected == 1
    assert restarted.calls == [["again"]]
    fresh.close()
    stream.close()


def _wait_disconnected(channel: grpc.Channel, timeout_s: float = 10.0) -> None:
    """Until the client has seen its connection go (as it has when a server restarts
    between two statements, seconds apart)."""
    deadline = time.monotonic() + timeout_s
    while channel._channel.check_connectivity_state(False) == cygrpc.ConnectivityState.ready:
        assert time.monotonic() < deadline, "the channel still looks connected"
        time.sleep(0.01)


def test_a_connection_sends_again_what_its_dead_stream_never_sent():
    """Through borealdb.connect(): a write after the server restarted goes through on a
    new stream, and reaches the server exactly once."""
    server = ScriptedServer(_ok)
    restarted = None
    conn = borealdb.connect(f"boreal://127.0.0.1:{server.port}/")
    try:
        conn.execute("INSERT INTO t VALUES (1)")
        server.stop()
        _wait_disconnected(conn._channel)
        restarted = ScriptedServer(_ok, port=server.port)
        assert conn.execute("INSERT INTO t VALUES (2)").rowcount == 1
        assert restarted.calls == [["INSERT INTO t VALUES (2)"]]
    finally:
        conn.close()
        for s in (server, restarted):
            if s is not None:
                s.stop()


def test_a_connection_never_sends_again_what_may_have_reached_the_server():
    """The call fails after the write went out: the write is not sent again, and its
    outcome is unknown."""
    def answer(request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "the writer went away")

    server = ScriptedServer(answer)
    conn = borealdb.connect(f"boreal://127.0.0.1:{server.port}/")
    try:
        with pytest.raises(errors.OutcomeUnknown):
            conn.execute("INSERT INTO t VALUES (1)")
        assert server.calls == [["INSERT INTO t VALUES (1)"]]
    finally:
        conn.close()
        server.stop()
