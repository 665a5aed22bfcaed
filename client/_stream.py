"""The synchronous client's Statements stream: one long-lived bidirectional call per
connection that carries its single-message statements (what ExecuteOne would carry).

Why a stream: a message on an open stream costs the server about 40% of the CPU of a
unary call (no call set-up, metadata or status per statement; `boreal bench rpc`), and
the writer's CPU is what limits commits/s.

Why the calling thread drives it: gRPC's synchronous stream API feeds requests from a
thread of its own per call, waits for each send to complete, and hands every event
over from the channel's spin thread, so a statement woke three threads and the caller
twice. Here the stream is a gRPC "segregated" call with a completion queue of its
own, as gRPC's own single-threaded unary-stream calls use (_SingleThreadedRendezvous): the caller starts the send and the
receive and waits on that queue itself, with the interpreter lock released; nothing
else runs for it. At 32 connections (`boreal bench`) the client went from 32 to 12
context switches and from 0.20 to 0.11 ms of CPU per commit. This uses gRPC's Cython layer (grpc._cython.cygrpc
and Channel._channel), which is not public API: grpcio is pinned in pyproject.toml, and
tests/unit/test_client_stream.py runs it against a real server.

A stream has no per-message deadline, so each statement's timeout is kept by one
process-wide watchdog thread (`_Watchdog`), which cancels the stream of a statement
that ran past it; the caller then sees the failure a unary call's deadline would have
given.

A stream's end is only seen by its caller, at its next statement: a stream whose
connection was lost between two statements (the server restarted) fails that
statement's send. gRPC fails a send only if the message was not handed to the
transport in full (a send succeeds once the message is framed, before the socket
write), and a server cannot run part of a message; so such a failure is raised with
`never_sent` set, and the connection sends the statement again on a new stream
(nothing reached the server, so even a write is safe to send again).
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
import weakref
from typing import Any

import grpc
from grpc import _common as _grpc_common
from grpc._cython import cygrpc

from borealdb import _wire
from borealdb.protos import sql_pb2

STATEMENTS_METHOD = b"/borealdb.sql.v1.Instance/Statements"

# Lazily deleted entries (statements answered in time) stay in the watchdog's heap until
# they reach its head; past this many the heap is rebuilt without them.
_WATCHDOG_COMPACT_AT = 65536

# Tags of the call's operations in its completion queue; each is pending at most once.
_INITIAL_METADATA_SENT, _STATUS, _INITIAL_METADATA, _SENT, _RECEIVED = range(5)
_RECEIVE_MESSAGE = cygrpc.OperationType.receive_message
_RECEIVE_STATUS = cygrpc.OperationType.receive_status_on_client
_CANCELLED = _grpc_common.STATUS_CODE_TO_CYGRPC_STATUS_CODE[grpc.StatusCode.CANCELLED]


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


class _Call:
    """The segregated call and the tags of its operations still in its completion queue.
    gRPC frees the queue once the last one is taken, so next_event() is called only
    while `due` is not empty. A tag is added before its operation starts (a signal
    between the two must not leave gRPC waiting for a tag we forgot)."""

    __slots__ = ("call", "due", "status")

    def __init__(self, channel: grpc.Channel):
        operations = (
            ((cygrpc.SendInitialMetadataOperation(None, 0),), _INITIAL_METADATA_SENT),
            ((cygrpc.ReceiveStatusOnClientOperation(0),), _STATUS),
            ((cygrpc.ReceiveInitialMetadataOperation(0),), _INITIAL_METADATA),
        )
        self.call = channel._channel.segregated_call(
            cygrpc.PropagationConstants.GRPC_PROPAGATE_DEFAULTS, STATEMENTS_METHOD, None, None, None, None,
            operations, None, None)
        self.due = {_INITIAL_METADATA_SENT, _STATUS, _INITIAL_METADATA}
        self.status: _wire.StreamFailed | None = None  # how the call ended, once known

    def next_event(self) -> tuple[Any, bool, bytes | None]:
        """The next completed operation (blocking, the interpreter lock released): its
        tag, whether it succeeded, and the message it received, if any."""
        try:
            event = self.call.next_event()
        except BaseException:
            # Interrupted (a signal handler raised). Inside the wait, gRPC freed the call
            # and its queue, and this cancel does nothing; just after an event was taken,
            # the call still runs and is cancelled here. Which tag that event was is lost,
            # so the queue cannot be drained: it stays allocated (a few hundred bytes)
            # until the channel closes, rather than risk a wait on a freed queue.
            self.call.cancel(_CANCELLED, "the client was interrupted")
            self.due.clear()
            raise
        self.due.discard(event.tag)
        message = None
        for op in event.batch_operations:
            kind = op.type()
            if kind == _RECEIVE_MESSAGE:
                message = op.message()
            elif kind == _RECEIVE_STATUS:
                code = _grpc_common.CYGRPC_STATUS_CODE_TO_STATUS_CODE.get(op.code(), grpc.StatusCode.UNKNOWN)
                if code is grpc.StatusCode.OK:
                    self.status = _wire.stream_ended()
                else:
                    self.status = _wire.StreamFailed(code, _grpc_common.decode(op.details()),
                                                     tuple(op.trailing_metadata() or ()))
        return event.tag, event.success, message

    def end(self) -> None:
        """Cancel the call if it still runs, and take what is left in its queue (promptly:
        a cancelled call completes every operation at once), so that gRPC frees it."""
        if self.due:
            self.call.cancel(_CANCELLED, "the client closed the statement stream")
        while self.due:
            self.next_event()


def _as_never_sent(failure: _wire.StreamFailed) -> _wire.StreamFailed:
    """The failure of a statement whose message gRPC did not write out."""
    return _wire.StreamFailed(failure.code(), failure.details(), failure.trailing_metadata(), never_sent=True)


class StatementStream:
    """One open Statements call on `channel`. `execute(request, timeout_s)` sends one
    statement and returns its ExecuteResponse; raises StatementFailed (the stream stays
    usable) or StreamFailed (an RpcError: the stream is then `broken`: open a new one;
    with `never_sent` set if the statement was not sent).
    Used by one thread at a time (the connection's)."""

    def __init__(self, channel: grpc.Channel):
        self._call = _Call(channel)
        self._lock = threading.Lock()
        self._pending: list | None = None  # the watchdog entry of the statement in flight
        self._expired = False
        self.broken = False
        # A connection dropped without close() must not leave the call open on the server
        # nor its queue allocated. Not at exit: gRPC may be gone by then.
        self._finalizer = weakref.finalize(self, _Call.end, self._call)
        self._finalizer.atexit = False

    def execute(self, request: sql_pb2.ExecuteRequest, timeout_s: float | None) -> sql_pb2.ExecuteResponse:
        assert not self.broken, "a broken stream is not reused"
        # Broken until the answer is in: whatever interrupts the wait (an error, a
        # KeyboardInterrupt) may leave an answer on its way that the next statement would
        # take for its own, so such a stream is cancelled and never used again.
        self.broken = True
        entry = _WATCHDOG.watch(time.monotonic() + timeout_s, self) if timeout_s is not None else None
        self._pending = entry
        answered = False
        try:
            message = self._round_trip(request.SerializeToString())
            try:
                resp = sql_pb2.StatementResponse.FromString(message)
            except Exception as exc:  # noqa: BLE001 - a garbled answer: the stream cannot be trusted
                raise _wire.StreamFailed(grpc.StatusCode.INTERNAL, f"cannot parse the server's answer: {exc}") from None
            answered = True
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
                self._finalizer()  # cancel the call and free it now
        # Cancelled by the watchdog just as the answer came: the answer stands, the stream does not.
        self.broken = expired
        return _wire.statement_result(resp)

    def _round_trip(self, request: bytes) -> bytes:
        c = self._call
        call, due = c.call, c.due
        # operate() is False once gRPC has freed the call (every operation, the status
        # included, was taken): nothing was sent.
        due.add(_SENT)
        if not call.operate((cygrpc.SendMessageOperation(request, 0),), _SENT):
            due.discard(_SENT)
            raise _as_never_sent(c.status or _wire.stream_ended())
        due.add(_RECEIVED)
        if not call.operate((cygrpc.ReceiveMessageOperation(0),), _RECEIVED):
            due.discard(_RECEIVED)
        answer, sent = None, False
        # Both operations are taken before returning: the next statement's send may only
        # start once this one's completed.
        while _SENT in due or _RECEIVED in due:
            tag, success, message = c.next_event()
            if tag == _SENT:
                sent = success
            elif message is not None:
                answer = message
        if answer is None:  # the call ended unanswered: its status says how
            while c.status is None and due:
                c.next_event()
            failure = c.status or _wire.stream_ended()
            raise failure if sent else _as_never_sent(failure)
        return answer

    def usable(self) -> bool:
        """False once a statement saw the stream fail or end."""
        return not self.broken and self._call.status is None

    def _expire(self, entry: list) -> None:
        """The watchdog's call: `entry`'s deadline passed."""
        with self._lock:
            if self._pending is not entry:
                return  # answered meanwhile
            self._expired = True
            self._call.call.cancel(_CANCELLED, "the statement ran past its timeout")

    def close(self) -> None:
        self.broken = True
        self._finalizer()
