"""The DB-API 2.0 (PEP 249) client: `borealdb.connect()` -> Connection -> Cursor.

    import borealdb

    with borealdb.connect("boreal://127.0.0.1:7300/") as conn:   # commits on success
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        cur = conn.cursor()
        cur.execute("INSERT INTO t (name) VALUES (?)", ("ada",))
        for row in cur.execute("SELECT id, name FROM t WHERE name = :n", {"n": "ada"}):
            print(row)
    conn.close()

Transactions (simpler than sqlite3's legacy rules): a connection is in *autocommit*
mode by default: each statement is its own transaction, durable when execute()
returns. `conn.begin()`, or executing "BEGIN" yourself, starts an explicit
transaction; `commit()` / `rollback()` end it, and are no-ops when none is open.
`with conn:` commits at the end of the block, or rolls back if it raised; it does
not close the connection. Closing a connection rolls back an open transaction.

Sessions: a connection is a server-side session (OpenSession). The server forgets
idle sessions; outside a transaction the client opens a new one transparently and
retries the statement once. Inside a transaction the transaction is gone: the
statement raises SessionExpired.

Results stream from the server in batches as they are fetched, so a large SELECT
does not have to fit in memory. One result streams at a time per connection: when
another statement is sent on the same connection while a cursor still has unread
rows, those rows are read into that cursor's memory first (so iterating over one
cursor while writing with another works, as with sqlite3).

Statements whose result fits one message (all but large reads and writes with
RETURNING) travel on one long-lived Statements stream per connection, which costs
the server less than a call per statement, driven by the calling thread itself
(borealdb._stream); a transport failure ends the stream (the statement in flight
fails as its own call would have) and the next statement opens a new one. A
statement sent on a stream that died since the last one (the server restarted) was
never written out, and goes once more on a new stream. Against a server without
that stream, each is a unary call.
The connections of one process to the same server share one gRPC channel (one
HTTP/2 connection); each keeps its own session and stream, and a transport failure
fails the statements in flight on all of them.

Errors follow PEP 249 and sqlite3 (see borealdb.errors); when the connection is
lost while a COMMIT (or a write in autocommit mode) is in flight, the outcome is
unknown and OutcomeUnknown is raised.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
import grpc.experimental

from borealdb import _wire, errors
from borealdb._stream import StatementStream
from borealdb.protos import sql_pb2, sql_pb2_grpc

apilevel = "2.0"
threadsafety = 1  # threads may share the module, not connections
paramstyle = "qmark"  # also "named" (:name) when the parameters are a mapping

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_CLIENT_NAME = "borealdb-python"
_ROWCOUNT_KEYWORDS = {"INSERT", "UPDATE", "DELETE", "REPLACE", "WITH"}
_LASTROWID_KEYWORDS = {"INSERT", "REPLACE"}
# Execute streams its result: with SingleThreadedUnaryStream the calling thread drives the
# call itself instead of handing every message over from grpc's channel-spin thread
# (two thread switches and GIL hand-offs per statement saved).
_SYNC_CHANNEL_OPTIONS = _wire.CHANNEL_OPTIONS + [(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]


class _SharedChannels:
    """One gRPC channel per server address and process, shared by the connections to it.

    Why: a channel carries every call of its connections over one HTTP/2 connection
    (one socket, one set-up and one keepalive for all of them), and has one thread that
    hands the answers of gRPC's multi-threaded calls to their callers. When the
    Statements streams were such calls, a channel per connection kept 32 of those
    threads waking one another at 32 connections, and sharing measured +5-12% commits/s
    (3 interleaved pairs, `boreal bench`); the streams are now driven by their callers
    (borealdb._stream). Each connection keeps its own session and
    Statements stream; the last connection to release a channel closes it. The price:
    a transport failure (the server going away) fails the statements in flight of all
    the process's connections to that server at once, as it would have anyway.

    A connection dropped without close() releases its share from a finalizer, which
    may run inside acquire() (the garbage collector runs anywhere) or on any thread:
    it only queues the release, and acquire()/release() settle the queue under the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, list] = {}  # target -> [channel, users]
        self._dropped: deque = deque()         # (target, channel) released by finalizers
        self._pid = os.getpid()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list]:
        """Hold the lock, with the releases finalizers queued settled. Yields the list of
        channels left without users (the caller may add one); they are closed after the
        lock is released."""
        to_close: list = []
        try:
            with self._lock:
                while self._dropped:
                    target, channel = self._dropped.popleft()
                    if self._release_locked(target, channel):
                        to_close.append(channel)
                yield to_close
        finally:
            for channel in to_close:
                channel.close()

    def acquire(self, target: str) -> grpc.Channel:
        with self._locked():
            entry = self._channels.get(target)
            if entry is None:
                entry = self._channels[target] = [grpc.insecure_channel(target, options=_SYNC_CHANNEL_OPTIONS), 0]
            entry[1] += 1
            return entry[0]

    def release(self, target: str, channel: grpc.Channel) -> None:
        if os.getpid() != self._pid:
            return  # a connection inherited across fork(): the channel is the parent's
        with self._locked() as to_close:
            if self._release_locked(target, channel):
                to_close.append(channel)

    def release_later(self, target: str, channel: grpc.Channel) -> None:
        """From a finalizer: queue the release (takes no lock, closes nothing)."""
        self._dropped.append((target, channel))

    def _release_locked(self, target: str, channel: grpc.Channel) -> bool:
        """True if that was the last user: the caller closes the channel (outside the lock)."""
        entry = self._channels.get(target)
        if entry is None or entry[0] is not channel:
            return False  # not ours
        entry[1] -= 1
        if entry[1] > 0:
            return False
        del self._channels[target]
        return True

    def users(self, target: str) -> int:
        with self._locked():
            entry = self._channels.get(target)
            return entry[1] if entry is not None else 0


_CHANNELS = _SharedChannels()


def _new_channels_in_child() -> None:
    # A forked child cannot use its parent's channels, and the pool's lock may have
    # been held by another thread of the parent at the fork.
    global _CHANNELS
    _CHANNELS = _SharedChannels()


os.register_at_fork(after_in_child=_new_channels_in_child)


def connect(
    url: str | None = None,
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    client_name: str = DEFAULT_CLIENT_NAME,
) -> "Connection":
    """Open a session on the instance at `url` (`boreal://HOST:PORT/`).

    Without `url`: $BOREAL_URL, else the writer of the local cluster started by
    `boreal up` in ./boreal-data. `timeout_s` bounds every request (a statement
    including the streaming of its rows, a commit); None waits forever.
    Raises InterfaceError for a bad URL, Unavailable if the server cannot be reached."""
    address = _wire.resolve_url(url)
    return Connection(address, timeout_s=timeout_s, client_name=client_name)


class Connection:
    """A session on one instance node. Not thread-safe (PEP 249 threadsafety 1)."""

    # PEP 249 optional extension: the exception classes as connection attributes.
    Error = errors.Error
    Warning = errors.Warning
    InterfaceError = errors.InterfaceError
    DatabaseError = errors.DatabaseError
    DataError = errors.DataError
    OperationalError = errors.OperationalError
    IntegrityError = errors.IntegrityError
    InternalError = errors.InternalError
    ProgrammingError = errors.ProgrammingError
    NotSupportedError = errors.NotSupportedError

    def __init__(self, address: _wire.Address, *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                 client_name: str = DEFAULT_CLIENT_NAME):
        self.address = address
        self.url = address.url
        self.timeout_s = timeout_s
        self.client_name = client_name
        self.session_id: str | None = None
        self.node_id = ""
        self.role = ""
        self.epoch = 0
        self._in_tx = False
        self._closed = False
        self._active: Cursor | None = None  # the cursor whose result is streaming
        self._execute_one = True  # the server has ExecuteOne (single-message results)
        self._use_stream = True  # ... and the Statements stream that carries them
        self._stream: StatementStream | None = None
        channels = _CHANNELS
        self._channel = channels.acquire(address.target)
        self._channels = channels
        # A connection dropped without close() gives its share back when collected.
        self._dropped_channel = weakref.finalize(self, channels.release_later, address.target, self._channel)
        self._stub = sql_pb2_grpc.InstanceStub(self._channel)
        try:
            self._open_session()
        except BaseException:
            self._release_channel()
            self._closed = True
            raise

    def _release_channel(self) -> None:
        if self._dropped_channel.detach() is not None:  # once, whoever comes first
            self._channels.release(self.address.target, self._channel)

    # -- state
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_transaction(self) -> bool:
        """True while an explicit transaction is open (after BEGIN, until COMMIT/ROLLBACK)."""
        return self._in_tx

    @property
    def autocommit(self) -> bool:
        """True when no explicit transaction is open: each statement commits on its own."""
        return not self._in_tx

    def _check_open(self) -> None:
        if self._closed:
            raise errors.InterfaceError("the connection is closed")

    # -- sessions and requests
    def _open_session(self) -> str:
        try:
            resp = self._stub.OpenSession(sql_pb2.OpenSessionRequest(client_name=self.client_name), timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise _wire.error_from_rpc(e, what=f"cannot open a session on {self.url}") from e
        return _wire.session_opened(self, resp)

    def _request(self, send: Any, *, outcome_unknown: bool = False, what: str = "") -> Any:
        """send(session_id) with error mapping; reopens an expired session once outside a transaction."""
        self._check_open()
        for attempt in range(2):
            in_tx_before = self._in_tx
            sid = self.session_id or self._open_session()
            try:
                return send(sid)
            except grpc.RpcError as e:
                exc = _wire.request_failed(self, e, in_tx_before=in_tx_before, may_retry=attempt == 0,
                                           outcome_unknown=outcome_unknown, what=what)
                if exc is not None:
                    raise exc from e
        raise AssertionError("unreachable: the second attempt may not retry")

    def _execute_one_request(self, request: sql_pb2.ExecuteRequest) -> sql_pb2.ExecuteResponse:
        """An ExecuteOne, sent on the connection's Statements stream (opened on first use,
        and again after a transport failure); as a unary call to a server without streams.

        A stream that died since its last statement (the server restarted) fails the send
        of the next one: that statement never left, so it goes once more on a new stream."""
        if self._use_stream:
            stream = self._stream
            fresh = stream is None or not stream.usable()
            while True:
                if fresh:
                    if stream is not None:
                        stream.close()
                    stream = self._stream = StatementStream(self._channel)
                try:
                    return stream.execute(request, self.timeout_s)
                except grpc.RpcError as e:
                    if _wire.streams_unsupported(e):
                        self._use_stream = False
                        break
                    if fresh or not getattr(e, "never_sent", False):
                        raise
                    fresh = True
        return self._stub.ExecuteOne(request, timeout=self.timeout_s)

    def _before_request(self, cursor: "Cursor | None") -> None:
        """One result streams at a time: finish the one in flight before sending more."""
        active = self._active
        if active is None:
            return
        if active is cursor:
            active._cancel()
        else:
            active._drain()

    def _run(self, sql: str, *, outcome_unknown: bool) -> None:
        """Execute a statement with no result rows (BEGIN, COMMIT, ROLLBACK) to its end."""
        self._check_open()
        self._before_request(None)
        what = sql.split()[0].upper()

        def send(sid: str) -> None:
            resp = self._execute_one_request(sql_pb2.ExecuteRequest(session_id=sid, sql=sql))
            self._in_tx = resp.in_transaction

        self._request(send, outcome_unknown=outcome_unknown, what=what)

    # -- PEP 249
    def cursor(self) -> "Cursor":
        self._check_open()
        return Cursor(self)

    def begin(self) -> None:
        """Start an explicit transaction (ProgrammingError if one is already open)."""
        self._run("BEGIN", outcome_unknown=False)

    def commit(self) -> None:
        """Commit the open transaction; a no-op in autocommit mode.

        Raises OutcomeUnknown if the connection is lost while the COMMIT is in flight."""
        self._check_open()
        self._before_request(None)
        if self._in_tx:
            self._run("COMMIT", outcome_unknown=True)

    def rollback(self) -> None:
        """Roll back the open transaction; a no-op in autocommit mode."""
        self._check_open()
        self._before_request(None)
        if self._in_tx:
            self._run("ROLLBACK", outcome_unknown=False)

    def close(self) -> None:
        """Close the session (rolling back an open transaction) and release the channel
        (shared with this process's other connections to the same server). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._active is not None:
            self._active._cancel()
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        try:
            if self.session_id:
                self._stub.CloseSession(sql_pb2.CloseSessionRequest(session_id=self.session_id),
                                        timeout=min(self.timeout_s or 5.0, 5.0))
        except grpc.RpcError:
            pass  # the server forgets the session on its own (idle timeout)
        finally:
            self.session_id = None
            self._in_tx = False
            self._release_channel()

    # -- conveniences (as in sqlite3)
    def execute(self, sql: str, params: Any = ()) -> "Cursor":
        """cursor().execute(sql, params); returns the cursor."""
        return self.cursor().execute(sql, params)

    def executemany(self, sql: str, seq_of_params: Iterable[Any]) -> "Cursor":
        return self.cursor().executemany(sql, seq_of_params)

    def __enter__(self) -> "Connection":
        self._check_open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        elif not self._closed:
            try:
                self.rollback()
            except errors.Error:
                pass  # the original exception matters more

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("in transaction" if self._in_tx else "autocommit")
        return f"<borealdb.Connection {self.url} {state}>"


class _CursorBase:
    """Result-stream bookkeeping shared by Cursor and borealdb.aio.AsyncCursor;
    subclasses add the I/O (reading the next message, synchronously or not)."""

    def __init__(self, connection: Any):
        self.connection = connection
        self.arraysize = 1
        self.description: tuple[tuple, ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        self._call: Any = None
        self._rows: deque[tuple] = deque()
        self._done = True
        self._error: errors.Error | None = None
        self._keyword = ""
        self._outcome_unknown = False
        self.description = None
        self.rowcount = -1

    def _check_open(self) -> None:
        if self._closed:
            raise errors.InterfaceError("the cursor is closed")
        self.connection._check_open()

    def _absorb(self, resp: sql_pb2.ExecuteResponse) -> None:
        if resp.columns and self.description is None:
            self.description = tuple((c.name, c.decl_type, None, None, None, None, None) for c in resp.columns)
        if resp.rows:
            self._rows.extend(_wire.decode_row(r) for r in resp.rows)
        if resp.last:
            self._finish()
            self.connection._in_tx = resp.in_transaction
            if self.description is None or self._keyword in _ROWCOUNT_KEYWORDS:
                self.rowcount = resp.rows_affected
            if self._keyword in _LASTROWID_KEYWORDS:
                self.lastrowid = resp.last_insert_rowid

    def _finish(self) -> None:
        self._done = True
        self._call = None
        if self.connection._active is self:
            self.connection._active = None

    def _stream_ended_early(self) -> bool:
        self._finish()
        self._error = errors.InterfaceError("the server ended the result without its final message")
        return False

    def _stream_failed(self, e: grpc.RpcError) -> bool:
        self._finish()
        self._error = _wire.error_from_rpc(e, outcome_unknown=self._outcome_unknown, what="reading the result")
        if self._error.in_transaction is not None:
            self.connection._in_tx = self._error.in_transaction
        return False

    def _cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._finish()

    def _raise_pending(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def _require_result(self) -> None:
        self._check_open()
        if self.description is None:
            self._raise_pending()
            raise errors.ProgrammingError("no result set: the last statement returns no rows (or none was executed)")


class Cursor(_CursorBase):
    """PEP 249 cursor. Rows are tuples; results stream lazily from the server."""

    def _read_batch(self) -> bool:
        """Read one more message of the result; False once it is complete."""
        if self._done:
            return False
        try:
            resp = next(self._call)
        except StopIteration:
            return self._stream_ended_early()
        except grpc.RpcError as e:
            return self._stream_failed(e)
        self._absorb(resp)
        return True

    def _drain(self) -> None:
        while self._read_batch():
            pass

    # -- PEP 249
    def execute(self, sql: str, params: Any = ()) -> "Cursor":
        """Run one statement. `params`: a sequence for ? placeholders, a mapping for :name."""
        self._check_open()
        if not isinstance(sql, str):
            raise errors.ProgrammingError(f"sql must be a str, not {type(sql).__name__}")
        positional, named = _wire.encode_params(params)
        conn = self.connection
        conn._before_request(self)
        self._reset()
        self._keyword = keyword = _wire.first_keyword(sql)
        self._outcome_unknown = keyword in _wire._COMMIT_KEYWORDS or (
            not conn._in_tx and keyword not in _wire._READ_KEYWORDS)

        def send(sid: str) -> None:
            req = sql_pb2.ExecuteRequest(session_id=sid, sql=sql, params=positional, named_params=named)
            if conn._execute_one and _wire.one_message(sql):
                try:
                    resp = conn._execute_one_request(req)
                except grpc.RpcError as e:
                    _wire.after_execute_one_failed(conn, e)
                else:
                    self._absorb(resp)
                    return
            call = conn._stub.Execute(req, timeout=conn.timeout_s)
            try:
                first = next(call)
            except StopIteration:
                raise errors.InterfaceError("the server ended the result without any message") from None
            self._call, self._done = call, False
            conn._active = self
            # The first message carries the columns or, for a statement without rows,
            # the outcome: errors in the statement surface here, not at the first fetch.
            self._absorb(first)
            if self.description is None:
                self._drain()

        conn._request(send, outcome_unknown=self._outcome_unknown, what=self._keyword or "the statement")
        self._raise_pending()
        return self

    def executemany(self, sql: str, seq_of_params: Iterable[Any]) -> "Cursor":
        """Run one statement for every parameter set, in one request (ExecuteMany).

        In autocommit mode the whole batch is one transaction."""
        self._check_open()
        sets = [_wire.param_set(p, i) for i, p in enumerate(seq_of_params, 1)]
        conn = self.connection
        conn._before_request(self)
        self._reset()
        self._keyword = _wire.first_keyword(sql)
        if not sets:
            self.rowcount = 0
            return self
        outcome_unknown = not conn._in_tx and _wire.may_write(sql)

        def send(sid: str) -> sql_pb2.ExecuteManyResponse:
            req = sql_pb2.ExecuteManyRequest(session_id=sid, sql=sql, param_sets=sets)
            return conn._stub.ExecuteMany(req, timeout=conn.timeout_s)

        resp = conn._request(send, outcome_unknown=outcome_unknown, what=self._keyword or "the statement")
        conn._in_tx = resp.in_transaction
        self.rowcount = resp.rows_affected
        if self._keyword in _LASTROWID_KEYWORDS:
            self.lastrowid = resp.last_insert_rowid
        return self

    def fetchone(self) -> tuple | None:
        self._require_result()
        while not self._rows and self._read_batch():
            pass
        if self._rows:
            return self._rows.popleft()
        self._raise_pending()
        return None

    def fetchmany(self, size: int | None = None) -> list[tuple]:
        self._require_result()
        n = self.arraysize if size is None else size
        while len(self._rows) < n and self._read_batch():
            pass
        out = [self._rows.popleft() for _ in range(min(n, len(self._rows)))]
        if not out:
            self._raise_pending()
        return out

    def fetchall(self) -> list[tuple]:
        self._require_result()
        self._drain()
        out = list(self._rows)
        self._rows.clear()
        self._raise_pending()
        return out

    def __iter__(self) -> Iterator[tuple]:
        return self

    def __next__(self) -> tuple:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        """Discard the rest of the result. Idempotent; later use raises InterfaceError."""
        if self._closed:
            return
        self._cancel()
        self._rows.clear()
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def setinputsizes(self, sizes: Any) -> None:
        """Does nothing (PEP 249)."""

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        """Does nothing (PEP 249)."""

    def __enter__(self) -> "Cursor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
