"""The synchronous client's Statements stream without a server: answers, in-band
errors, the statement watchdog, and streams that must not be reused."""

from __future__ import annotations

import gc
import queue
import threading

import grpc
import pytest

from borealdb import _stream, _wire, errors
from borealdb.protos import sql_pb2


class _Failed(grpc.RpcError):
    def __init__(self, status: grpc.StatusCode, details: str = ""):
        self._status, self._details = status, details

    def code(self):
        return self._status

    def details(self):
        return self._details

    def trailing_metadata(self):
        return ()


class FakeCall:
    """A Statements call: takes requests from the client's feed (in a thread, as gRPC does)
    and answers each with what `answer(request)` returns; None means never answer."""

    def __init__(self, requests, answer):
        self.answer = answer
        self.seen: list = []
        self.answers: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = threading.Event()
        self.fed_to_end = threading.Event()
        self._status = None
        threading.Thread(target=self._consume, args=(requests,), daemon=True).start()

    def _consume(self, requests):
        for request in requests:
            self.seen.append(request)
            reply = self.answer(request)
            if reply is not None:
                self.answers.put(reply)
        self.fed_to_end.set()

    def __next__(self):
        while True:
            try:
                reply = self.answers.get(timeout=0.01)
            except queue.Empty:
                if self.cancelled.is_set():
                    raise _Failed(grpc.StatusCode.CANCELLED, "Locally cancelled by application!") from None
                continue
            if isinstance(reply, Exception):
                self._status = reply
                raise reply
            return reply

    def cancel(self):
        self.cancelled.set()
        return True

    def done(self):
        return self.cancelled.is_set() or self._status is not None


class FakeStub:
    call_class = FakeCall

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[FakeCall] = []

    def Statements(self, requests):
        call = self.call_class(requests, self.answer)
        self.calls.append(call)
        return call


def _ok(request):
    return sql_pb2.StatementResponse(result=sql_pb2.ExecuteResponse(last=True, rows_affected=1,
                                                                    last_insert_rowid=len(request.sql)))


def _req(sql="INSERT INTO t VALUES (1)"):
    return sql_pb2.ExecuteRequest(session_id="s1", sql=sql)


def test_statements_are_answered_in_order_on_one_stream():
    stub = FakeStub(_ok)
    stream = _stream.StatementStream(stub)
    for sql in ("a", "bb", "ccc"):
        assert stream.execute(_req(sql), timeout_s=30).last_insert_rowid == len(sql)
    assert stream.usable() and len(stub.calls) == 1
    assert [r.sql for r in stub.calls[0].seen] == ["a", "bb", "ccc"]


def test_an_error_in_the_answer_maps_like_a_unary_failure_and_keeps_the_stream():
    def answer(request):
        return sql_pb2.StatementResponse(error=sql_pb2.StatementError(
            code=sql_pb2.CONSTRAINT_VIOLATION, message="UNIQUE constraint failed: t.id",
            in_transaction=True, sqlite_code=2067))

    stream = _stream.StatementStream(FakeStub(answer))
    with pytest.raises(_wire.StatementFailed) as info:
        stream.execute(_req(), timeout_s=30)
    exc = _wire.error_from_rpc(info.value, outcome_unknown=True, what="INSERT")
    assert isinstance(exc, errors.IntegrityError)
    assert (exc.code, exc.sqlite_code, exc.in_transaction) == ("CONSTRAINT_VIOLATION", 2067, True)
    assert "UNIQUE constraint failed" in str(exc)
    assert stream.usable()


def test_an_error_without_a_sqlite_code_has_none():
    err = _wire.StatementFailed(sql_pb2.StatementError(code=sql_pb2.STREAM_REQUIRED, message="too big"))
    assert _wire.stream_required(err)
    assert not _wire.streams_unsupported(err)
    assert _wire.error_from_rpc(err).sqlite_code is None


def test_a_statement_past_its_timeout_is_cancelled_and_reported_as_a_deadline():
    stub = FakeStub(lambda request: None)  # a server that never answers (paused)
    stream = _stream.StatementStream(stub)
    with pytest.raises(_wire.StreamFailed) as info:
        stream.execute(_req(), timeout_s=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.calls[0].cancelled.is_set()
    assert not stream.usable()
    # A write whose answer never came: its outcome is unknown; a read is just unavailable.
    assert isinstance(_wire.error_from_rpc(info.value, outcome_unknown=True), errors.OutcomeUnknown)
    assert isinstance(_wire.error_from_rpc(info.value), errors.Unavailable)


def test_the_watchdog_leaves_answered_statements_alone():
    stub = FakeStub(_ok)
    stream = _stream.StatementStream(stub)
    stale = _stream._WATCHDOG.watch(0.0, stream)  # as an entry of an answered statement
    stream.execute(_req(), timeout_s=30)
    stream._expire(stale)  # the watchdog reaching it late must not touch the stream
    assert stream.usable() and not stub.calls[0].cancelled.is_set()
    stale[2] = None
    # while another statement is pending, a stale entry still changes nothing
    slow = FakeStub(lambda request: None)
    pending = _stream.StatementStream(slow)
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


def test_a_transport_failure_breaks_the_stream():
    stub = FakeStub(lambda request: _Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    stream = _stream.StatementStream(stub)
    with pytest.raises(grpc.RpcError) as info:
        stream.execute(_req(), timeout_s=30)
    assert isinstance(_wire.error_from_rpc(info.value, outcome_unknown=True), errors.OutcomeUnknown)
    assert not stream.usable()
    with pytest.raises(AssertionError):
        stream.execute(_req(), timeout_s=30)


class Interrupted(BaseException):
    pass


class InterruptedCall(FakeCall):
    def __next__(self):
        raise Interrupted()  # as a KeyboardInterrupt in the middle of the wait


def test_an_interrupted_wait_cancels_the_stream():
    stub = FakeStub(_ok)
    stub.call_class = InterruptedCall
    stream = _stream.StatementStream(stub)
    with pytest.raises(Interrupted):
        stream.execute(_req(), timeout_s=30)
    # Its answer may still arrive: the next statement must not take it for its own.
    assert stub.calls[0].cancelled.is_set() and not stream.usable()


def test_a_server_without_the_stream_is_recognised():
    assert _wire.streams_unsupported(_Failed(grpc.StatusCode.UNIMPLEMENTED, "Method not found!"))
    assert not _wire.streams_unsupported(_Failed(grpc.StatusCode.UNAVAILABLE, "down"))


def test_a_dropped_stream_ends_its_feed():
    stub = FakeStub(_ok)
    stream = _stream.StatementStream(stub)
    stream.execute(_req(), timeout_s=30)
    call = stub.calls[0]
    del stream
    gc.collect()
    assert call.fed_to_end.wait(5) and call.cancelled.is_set()


def test_close_ends_the_feed():
    stub = FakeStub(_ok)
    stream = _stream.StatementStream(stub)
    stream.close()
    assert stub.calls[0].fed_to_end.wait(5)
    assert not stream.usable()
