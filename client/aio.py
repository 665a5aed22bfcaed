"""The asyncio flavour of the client (grpc.aio), with the semantics of borealdb.dbapi.

    import borealdb.aio

    async with await borealdb.aio.connect("boreal://127.0.0.1:7300/") as conn:
        cur = await conn.execute("SELECT id, name FROM t WHERE id > ?", (10,))
        async for row in cur:
            print(row)
        await conn.begin()
        await conn.execute("UPDATE t SET name = ? WHERE id = ?", ("x", 1))
        await conn.commit()

`async with conn` commits on success and rolls back on an exception, then closes
the connection (an async context manager is the natural place to release it;
the sync Connection, like sqlite3, does not close). Transactions, session expiry,
error mapping and lazy streaming are as in borealdb.dbapi.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
import grpc.aio

from borealdb import _wire, errors
from borealdb.dbapi import _LASTROWID_KEYWORDS, DEFAULT_CLIENT_NAME, DEFAULT_TIMEOUT_S, _CursorBase
from borealdb.protos import sql_pb2, sql_pb2_grpc


async def connect(
    url: str | None = None,
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    client_name: str = DEFAULT_CLIENT_NAME,
) -> "AsyncConnection":
    """Open a session; the URL rules are those of borealdb.connect()."""
    conn = AsyncConnection(_wire.resolve_url(url), timeout_s=timeout_s, client_name=client_name)
    try:
        await conn._open_session()
    except BaseException:
        await conn._channel.close()
        conn._closed = True
        raise
    return conn


class AsyncConnection:
    def __init__(self, address: _wire.Address, *, timeout_s: float | None, client_name: str):
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
        self._active: AsyncCursor | None = None
        self._execute_one = True  # the server has ExecuteOne (single-message results)
        self._use_stream = True  # ... and the Statements stream that carries them
        self._stream: Any = None  # the open Statements call (grpc.aio StreamStreamCall)
        self._channel = grpc.aio.insecure_channel(address.target, options=_wire.CHANNEL_OPTIONS)
        self._stub = sql_pb2_grpc.InstanceStub(self._channel)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

    def _check_open(self) -> None:
        if self._closed:
            raise errors.InterfaceError("the connection is closed")

    async def _open_session(self) -> str:
        try:
            resp = await self._stub.OpenSession(sql_pb2.OpenSessionRequest(client_name=self.client_name), timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise _wire.error_from_rpc(e, what=f"cannot open a session on {self.url}") from e
        return _wire.session_opened(self, resp)

    async def _request(self, send: Any, *, outcome_unknown: bool = False, what: str = "") -> Any:
        self._check_open()
        for attempt in range(2):
            in_tx_before = self._in_tx
            sid = self.session_id or await self._open_session()
            try:
                return await send(sid)
            except grpc.RpcError as e:
                exc = _wire.request_failed(self, e, in_tx_before=in_tx_before, may_retry=attempt == 0,
                                           outcome_unknown=outcome_unknown, what=what)
                if exc is not None:
                    raise exc from e
        raise AssertionError("unreachable: the second attempt may not retry")

    async def _execute_one_request(self, request: sql_pb2.ExecuteRequest) -> sql_pb2.ExecuteResponse:
        """An ExecuteOne, sent on the connection's Statements stream (opened on first use and
        after a failure; see borealdb._stream for why); as a unary call to an older server."""
        if self._use_stream:
            call = self._stream
            if call is None or call.done():
                call = self._stream = self._stub.Statements()
            # The stream is dropped unless the answer comes in: an interrupted wait (an
            # error, a timeout, a cancelled task) leaves an answer on its way that the next
            # statement would take for its own.
            self._stream = None
            try:
                async with asyncio.timeout(self.timeout_s):  # no task per statement, as wait_for makes
                    await call.write(request)
                    resp = await call.read()
            except asyncio.TimeoutError:
                call.cancel()
                raise _wire.statement_timed_out(self.timeout_s or 0.0) from None
            except grpc.RpcError as e:
                call.cancel()
                if not _wire.streams_unsupported(e):
                    raise
                self._use_stream = False
            except BaseException:
                call.cancel()
                raise
            else:
                if resp is grpc.aio.EOF:
                    raise _wire.stream_ended()
                self._stream = call
                return _wire.statement_result(resp)
        return await self._stub.ExecuteOne(request, timeout=self.timeout_s)

    async def _before_request(self, cursor: "AsyncCursor | None") -> None:
        active = self._active
        if active is None:
            return
        if active is cursor:
            active._cancel()
        else:
            await active._drain()

    async def _run(self, sql: str, *, outcome_unknown: bool) -> None:
        self._check_open()
        await self._before_request(None)

        async def send(sid: str) -> None:
            resp = await self._execute_one_request(sql_pb2.ExecuteRequest(session_id=sid, sql=sql))
            self._in_tx = resp.in_transaction

        await self._request(send, outcome_unknown=outcome_unknown, what=sql)

    def cursor(self) -> "AsyncCursor":
        self._check_open()
        return AsyncCursor(self)

    async def execute(self, sql: str, params: Any = ()) -> "AsyncCursor":
        return await self.cursor().execute(sql, params)

    async def executemany(self, sql: str, seq_of_params: Iterable[Any]) -> "AsyncCursor":
        return await self.cursor().executemany(sql, seq_of_params)

    async def begin(self) -> None:
        await self._run("BEGIN", outcome_unknown=False)

    async def commit(self) -> None:
        self._check_open()
        await self._before_request(None)
        if self._in_tx:
            await self._run("COMMIT", outcome_unknown=True)

    async def rollback(self) -> None:
        self._check_open()
        await self._before_request(None)
        if self._in_tx:
            await self._run("ROLLBACK", outcome_unknown=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._active is not None:
            self._active._cancel()
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None
        try:
            if self.session_id:
                await self._stub.CloseSession(sql_pb2.CloseSessionRequest(session_id=self.session_id),
                                              timeout=min(self.timeout_s or 5.0, 5.0))
        except grpc.RpcError:
            pass
        finally:
            self.session_id = None
            self._in_tx = False
            await self._channel.close()

    async def __aenter__(self) -> "AsyncConnection":
        self._check_open()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                await self.commit()
            elif not self._closed:
                try:
                    await self.rollback()
                except errors.Error:
                    pass
        finally:
            await self.close()


class AsyncCursor(_CursorBase):
    """The asyncio flavour of borealdb.Cursor: same bookkeeping, awaited I/O."""

    async def _read_batch(self) -> bool:
        if self._done:
            return False
        try:
            resp = await self._call.read()
        except grpc.RpcError as e:
            return self._stream_failed(e)
        if resp is grpc.aio.EOF:
            return self._stream_ended_early()
        self._absorb(resp)
        return True

    async def _drain(self) -> None:
        while await self._read_batch():
            pass

    async def execute(self, sql: str, params: Any = ()) -> "AsyncCursor":
        self._check_open()
        if not isinstance(sql, str):
            raise errors.ProgrammingError(f"sql must be a str, not {type(sql).__name__}")
        positional, named = _wire.encode_params(params)
        conn = self.connection
        await conn._before_request(self)
        self._reset()
        self._keyword = _wire.first_keyword(sql)
        self._outcome_unknown = _wire.is_commit(sql) or (not conn._in_tx and _wire.may_write(sql))

        async def send(sid: str) -> None:
            req = sql_pb2.ExecuteRequest(session_id=sid, sql=sql, params=positional, named_params=named)
            if conn._execute_one and _wire.one_message(sql):
                try:
                    resp = await conn._execute_one_request(req)
                except grpc.RpcError as e:
                    _wire.after_execute_one_failed(conn, e)
                else:
                    self._absorb(resp)
                    return
            call = conn._stub.Execute(req, timeout=conn.timeout_s)
            first = await call.read()
            if first is grpc.aio.EOF:
                raise errors.InterfaceError("the server ended the result without any message")
            self._call, self._done = call, False
            conn._active = self
            self._absorb(first)
            if self.description is None:
                await self._drain()

        await conn._request(send, outcome_unknown=self._outcome_unknown, what=self._keyword or "the statement")
        self._raise_pending()
        return self

    async def executemany(self, sql: str, seq_of_params: Iterable[Any]) -> "AsyncCursor":
        self._check_open()
        sets = [_wire.param_set(p, i) for i, p in enumerate(seq_of_params, 1)]
        conn = self.connection
        await conn._before_request(self)
        self._reset()
        self._keyword = _wire.first_keyword(sql)
        if not sets:
            self.rowcount = 0
            return self
        outcome_unknown = not conn._in_tx and _wire.may_write(sql)

        async def send(sid: str) -> sql_pb2.ExecuteManyResponse:
            req = sql_pb2.ExecuteManyRequest(session_id=sid, sql=sql, param_sets=sets)
            return await conn._stub.ExecuteMany(req, timeout=conn.timeout_s)

        resp = await conn._request(send, outcome_unknown=outcome_unknown, what=self._keyword or "the statement")
        conn._in_tx = resp.in_transaction
        self.rowcount = resp.rows_affected
        if self._keyword in _LASTROWID_KEYWORDS:
            self.lastrowid = resp.last_insert_rowid
        return self

    async def fetchone(self) -> tuple | None:
        self._require_result()
        while not self._rows and await self._read_batch():
            pass
        if self._rows:
            return self._rows.popleft()
        self._raise_pending()
        return None

    async def fetchmany(self, size: int | None = None) -> list[tuple]:
        self._require_result()
        n = self.arraysize if size is None else size
        while len(self._rows) < n and await self._read_batch():
            pass
        out = [self._rows.popleft() for _ in range(min(n, len(self._rows)))]
        if not out:
            self._raise_pending()
        return out

    async def fetchall(self) -> list[tuple]:
        self._require_result()
        await self._drain()
        out = list(self._rows)
        self._rows.clear()
        self._raise_pending()
        return out

    def __aiter__(self) -> "AsyncCursor":
        return self

    async def __anext__(self) -> tuple:
        row = await self.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def close(self) -> None:
        if self._closed:
            return
        self._cancel()
        self._rows.clear()
        self._closed = True

    async def __aenter__(self) -> "AsyncCursor":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


__all__ = ["AsyncConnection", "AsyncCursor", "connect"]
