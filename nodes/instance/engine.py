"""The SQL engine of a writer instance: sessions over one VolumeDatabase.

Where each statement runs
- Autocommit reads run on a snapshot connection at the VDL: everything they can see
  is already durable, so their rows stream out at once, and they never wait for the
  writer. A session's reads start at a VDL at or above its own last commit, so a
  session always reads its own writes (and reads are monotonic per session).
- Writes and explicit transactions run on the single writer connection, one session
  at a time (the write lock; waiting longer than lock_timeout_s is LOCK_TIMEOUT).
  Statements are routed by trying the snapshot connection first, where SQLite's
  query_only refuses any write before it changes anything; statements that are
  obviously writes skip that attempt.

Commit is asynchronous (Aurora): the writer connection's COMMIT hands the redo to
the volume and returns; the session releases the write lock and only then waits
until the VDL covers its commit LSN, so other sessions' transactions run while this
one's redo is on its way to the storage quorum.

No client sees data that could still be lost: anything read through the writer
connection (inside a transaction, or by a write statement) may include other
sessions' committed-but-not-yet-durable changes, so the reply waits until the VDL
covers the writer's last commit LSN as of the end of the statement.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

import apsw

from borealdb.errors import Error as BorealError
from borealdb.errors import QuorumLost, StaleEpoch, Unavailable, VolumeFull
from borealdb.nodes.instance.vfs import VolumeDatabase
from borealdb.nodes.log import get_logger

_log = get_logger(component="sql")

# Error codes that mean the volume, not the statement, failed (nothing was read that a
# client could take for durable, and a transaction cannot go on after them).
_VOLUME_FAILURES = frozenset({"VOLUME_FULL", "QUORUM_LOST", "STALE_EPOCH", "UNAVAILABLE", "INTERNAL"})
# Statements that certainly write: sent to the writer without a snapshot attempt.
_WRITE_KEYWORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "VACUUM", "REINDEX", "ANALYZE"})
_LEADING = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)
_WORD = re.compile(r"[A-Za-z]+")


@dataclass
class InstanceOptions:
    session_idle_timeout_s: float = 300.0       # an idle session is closed after this
    transaction_idle_timeout_s: float = 60.0    # an idle session holding the write lock is rolled back sooner
    lock_timeout_s: float = 10.0                # wait for the write lock at most this long
    commit_timeout_s: float = 30.0              # wait for the VDL to cover a commit at most this long
    max_statement_bytes: int = 1 << 20
    max_parameters: int = 32766                 # SQLite's own limit
    max_result_bytes: int = 64 << 20            # per statement
    max_sessions: int = 10_000
    batch_rows: int = 500                       # rows per streamed message by default
    cache_capacity_bytes: int = 256 << 20       # versioned page cache
    snapshot_pool_size: int = 16
    max_concurrent_rpcs: int = 256            # more in flight are refused (RESOURCE_EXHAUSTED)


class SqlError(Exception):
    """A statement failed; `code` is a SqlErrorCode name (protos/sql.proto)."""

    def __init__(self, code: str, message: str, *, sqlite_code: int | None = None, in_transaction: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.sqlite_code = sqlite_code
        self.in_transaction = in_transaction


@dataclass
class Outcome:
    rows_affected: int = -1
    last_insert_rowid: int = 0
    in_transaction: bool = False
    commit_lsn: int = 0
    read_lsn: int = 0


@dataclass
class Deferred:
    """A request whose caller (the asyncio server) waits for durability itself.

    The engine then never blocks a thread on the volume or on the write lock: it notes
    the LSN the reply must wait for, and raises WriteLockBusy / RouteToWriter /
    WaitDurable for the caller to wait (asynchronously) and retry."""

    durable_lsn: int = 0   # the reply may leave only once VDL >= this


class WriteLockBusy(Exception):
    """Deferred mode: another session's transaction holds the write lock; nothing was done."""


class RouteToWriter(Exception):
    """Deferred mode: a statement tried on a snapshot writes; nothing was done, run it on the writer."""


class WaitDurable(Exception):
    """Deferred mode: the session's last commit is not durable yet; nothing was done."""

    def __init__(self, lsn: int):
        super().__init__(lsn)
        self.lsn = lsn


@dataclass
class Session:
    session_id: str
    client_name: str
    created_s: float
    last_used_s: float
    in_transaction: bool = False
    last_commit_lsn: int = 0
    busy: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    deferred: Deferred | None = None   # set for the duration of a deferred request
    serial: Any = None                  # the asyncio server's per-session lock
    closing: Any = None                 # the asyncio server: an abandoned result still closing


_PRAGMA = re.compile(r"\s*PRAGMA\s+(?:\w+\.)?(?P<name>\w+)\s*(?P<arg>[=(])?", re.I)
# PRAGMAs that take an argument without changing a connection or storage setting
# (the header fields user_version and application_id are ordinary writes).
_PRAGMAS_WITH_ARGUMENTS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list",
    "foreign_key_check", "integrity_check", "quick_check", "user_version", "application_id",
})


# A session counts as one that may still commit into a batch (the group commit hint) if it
# started a request this recently: an idle pooled connection must not hold every batch for
# the full delay. Far above the gap between statements of a session that keeps working,
# and above a commit's usual wait; a session whose statement or commit takes longer ages
# out while its commit still counts as undurable, so a batch may go without waiting for
# another session: that costs batching, never safety.
COMMIT_HINT_ACTIVE_S = 1.0


class _RecentSessions:
    """The sessions that ran a request in the last window_s, counted in O(1) amortized
    (oldest first, so a count drops the stale ones from the front)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._last_s: OrderedDict[str, float] = OrderedDict()

    def touch(self, session_id: str, now_s: float) -> None:
        with self._lock:
            self._last_s[session_id] = now_s
            self._last_s.move_to_end(session_id)

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._last_s.pop(session_id, None)

    def count(self, now_s: float) -> int:
        with self._lock:
            last = self._last_s
            while last:
                sid = next(iter(last))
                if now_s - last[sid] <= self.window_s:
                    break
                del last[sid]
            return len(last)


class _NeedsWriter(Exception):
    """Raised by the exec tracer when a statement routed to a snapshot would write."""


class _OneStatementTrace:
    """An apsw exec tracer: refuses a second statement, (readonly) stops before any
    write, and keeps the statement's columns. They are read here, before the first
    step: once a statement has completed (a SELECT with no rows) apsw no longer
    describes it, but DB-API clients still need the columns of an empty result."""

    def __init__(self, *, readonly: bool):
        self.readonly = readonly
        self.count = 0
        self.description: tuple = ()

    def __call__(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        self.count += 1
        if self.count > 1:
            raise SqlError("MISUSE", "one statement per execute: split the script into statements")
        if self.readonly and not cursor.is_readonly:
            raise _NeedsWriter()
        self.description = cursor.get_description()
        return True


def _one_statement_trace(*, readonly: bool) -> _OneStatementTrace:
    return _OneStatementTrace(readonly=readonly)


def _first_word(sql: str) -> str:
    m = _WORD.match(sql, _LEADING.match(sql).end())
    return m.group(0).upper() if m else ""


def _is_savepoint_rollback(sql: str) -> bool:
    return re.search(r"\bTO\b", sql, re.I) is not None


class SqlEngine:
    FEEDS_COMMIT_HINT = True  # a writer's engine (more_commits_possible); ReaderEngine: False

    def __init__(self, db: VolumeDatabase, *, node_id: str, options: InstanceOptions | None = None):
        self.db = db
        self.volume = db.volume
        self.node_id = node_id
        self.options = options or InstanceOptions()
        self._writer = self._open_writer()
        self._write_lock = threading.Lock()
        self._write_owner: str | None = None     # session id holding the lock across statements
        self._sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        # Only an engine that commits keeps the hint's bookkeeping (a replica's reads skip it).
        self._recent = _RecentSessions(COMMIT_HINT_ACTIVE_S) if self.FEEDS_COMMIT_HINT else None
        self._ids = itertools.count(1)
        self.commits = 0
        self.fenced_reason: str | None = None
        self.on_write_lock_released: Any = None  # called (any thread) after each release of the write lock
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="session-reaper", daemon=True)
        self._reaper.start()

    def _open_writer(self) -> apsw.Connection:
        """The writer connection (a read replica's engine overrides this: it has none)."""
        return self.db.open_writer()

    # ---- sessions ------------------------------------------------------------------
    def open_session(self, client_name: str = "") -> Session:
        now = time.monotonic()
        with self._sessions_lock:
            if len(self._sessions) >= self.options.max_sessions:
                raise SqlError("UNAVAILABLE", f"too many sessions ({self.options.max_sessions}); close some and retry")
            sid = f"{self.node_id}-{next(self._ids)}-{secrets.token_hex(8)}"
            session = Session(sid, client_name[:200], now, now)
            self._sessions[sid] = session
        if self._recent is not None:
            self._recent.touch(sid, now)
        _log.info("session_opened", session=sid, client=client_name[:200])
        return session

    def session(self, session_id: str) -> Session:
        with self._sessions_lock:
            session = self._sessions.get(session_id)
        if session is None or session.closed:
            raise SqlError("SESSION_EXPIRED", f"session {session_id!r} is unknown or expired; open a new session")
        return session

    def close_session(self, session_id: str) -> None:
        with self._sessions_lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return
        with session.busy:
            session.closed = True
            if self._recent is not None:  # under busy: a request that got in first has touched it
                self._recent.forget(session_id)
            if session.in_transaction:
                self._abort_transaction(session, "session closed")
        _log.info("session_closed", session=session_id)

    def session_count(self) -> int:
        with self._sessions_lock:
            return len(self._sessions)

    def more_commits_possible(self) -> bool:
        """The writer's group commit hint (Volume.set_commit_hint): whether some session
        that ran a request in the last COMMIT_HINT_ACTIVE_S has no commit waiting to be
        durable, so could still commit into the batch. A session waits for its commit
        before its next statement, so it usually has at most one (a commit that timed
        out, or whose client went away, stays counted until durable); a wrong answer
        only moves one batch's send time."""
        if self._recent is None:
            return True  # no bookkeeping: the delay applies as configured
        return self._recent.count(time.monotonic()) > self.volume.undurable_commits

    def _reap_loop(self) -> None:
        while not self._stop.wait(1.0):
            now = time.monotonic()
            with self._sessions_lock:
                expired = [
                    s.session_id
                    for s in self._sessions.values()
                    if not s.busy.locked()
                    and now - s.last_used_s > (self.options.transaction_idle_timeout_s if s.in_transaction else self.options.session_idle_timeout_s)
                ]
            for sid in expired:
                _log.info("session_expired", session=sid)
                self.close_session(sid)

    # ---- execution -------------------------------------------------------------------
    @contextlib.contextmanager
    def _session_request(self, session_id: str, sql: str, params: Any,
                         deferred: Deferred | None = None) -> Iterator[Session]:
        """One request of a session: checked, one at a time per session, idle clock reset."""
        session = self.session(session_id)
        self._check_statement(sql, params)
        # A deferred caller serializes a session's requests itself: never block its thread.
        if not session.busy.acquire(timeout=0 if deferred is not None else self.options.lock_timeout_s):
            raise SqlError("LOCK_TIMEOUT", "another request of this session is still running")
        try:
            session.last_used_s = time.monotonic()
            if self._recent is not None and not session.closed:  # closed meanwhile (reaped): stays forgotten
                self._recent.touch(session_id, session.last_used_s)
            session.deferred = deferred
            yield session
        finally:
            session.deferred = None
            session.last_used_s = time.monotonic()
            session.busy.release()

    def runs_on_writer(self, session_id: str, sql: str) -> bool:
        """Whether execute() would use the writer connection (routing for the asyncio server;
        a statement routed to a snapshot that turns out to write raises RouteToWriter)."""
        session = self.session(session_id)
        word = _first_word(sql)
        return (session.in_transaction or word in ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE")
                or word in _WRITE_KEYWORDS or (word == "PRAGMA" and "=" in sql))

    def execute(self, session_id: str, sql: str, params: Any = None, batch_rows: int = 0,
                deferred: Deferred | None = None) -> Iterator[tuple[list[tuple[str, str]] | None, list[tuple], Outcome | None]]:
        """Run one statement; yields (columns or None, rows, outcome or None), outcome last.

        With `deferred`, nothing blocks: see Deferred."""
        with self._session_request(session_id, sql, params, deferred) as session:
            word = _first_word(sql)
            self._refuse_unsupported(word, sql)
            if word == "BEGIN":
                yield None, [], self._begin(session, sql)
            elif word in ("COMMIT", "END"):
                yield None, [], self._commit(session, sql)
            elif word == "ROLLBACK" and not _is_savepoint_rollback(sql):
                yield None, [], self._rollback(session, sql)
            elif session.in_transaction:
                yield from self._run_on_writer(session, sql, params, batch_rows, autocommit=False)
            elif word in ("SAVEPOINT", "RELEASE", "ROLLBACK"):
                raise SqlError("MISUSE", f"{word} outside a transaction: send BEGIN first")
            elif word in _WRITE_KEYWORDS or word == "PRAGMA" and "=" in sql:
                yield from self._run_on_writer(session, sql, params, batch_rows, autocommit=True)
            else:
                yield from self._run_autocommit_read(session, sql, params, batch_rows)

    def execute_many(self, session_id: str, sql: str, param_sets: list[Any], deferred: Deferred | None = None) -> Outcome:
        with self._session_request(session_id, sql, None, deferred) as session:
            for params in param_sets:
                self._check_params(params)
            autocommit = not session.in_transaction
            if autocommit:  # inside an explicit transaction the session holds the lock already
                self._acquire_writer(session)
            total = 0
            try:
                if autocommit:
                    # All rows commit together or not at all, like sqlite3's executemany in one transaction.
                    self._writer.execute("BEGIN")
                cursor = self._writer.cursor()
                for params in param_sets:
                    before = self._writer.total_changes()
                    for _row in cursor.execute(sql, params):
                        pass
                    total += self._writer.total_changes() - before
                if autocommit:
                    self._writer.execute("COMMIT")
            except (apsw.Error, BorealError) as exc:
                if autocommit and self._writer.in_transaction:
                    self._safe_rollback()
                error = self._sql_error(exc, session)
            else:
                error = None
            finally:
                rowid = self._writer.last_insert_rowid()
                if autocommit:
                    self._release_writer(session)
            if error is not None:  # after releasing the lock: the error may have to wait for durability
                raise self._writer_error(error, session) from None
            visible = self.db.last_commit_lsn
            commit_lsn = visible if autocommit else 0
            self._wait_durable(visible, session)
            if commit_lsn:
                session.last_commit_lsn = max(session.last_commit_lsn, commit_lsn)
            return Outcome(rows_affected=total, last_insert_rowid=rowid, in_transaction=session.in_transaction, commit_lsn=commit_lsn)

    # ---- statement kinds ----------------------------------------------------------------
    def _begin(self, session: Session, sql: str) -> Outcome:
        if session.in_transaction:
            raise SqlError("MISUSE", "a transaction is already open in this session", in_transaction=True)
        self._acquire_writer(session)
        try:
            self._writer.execute(sql)
        except (apsw.Error, BorealError) as exc:
            self._release_writer(session)
            raise self._sql_error(exc, session) from None
        session.in_transaction = True
        self._write_owner = session.session_id
        return Outcome(in_transaction=True)

    def _commit(self, session: Session, sql: str) -> Outcome:
        if not session.in_transaction:
            raise SqlError("MISUSE", "COMMIT with no open transaction")
        before = self.db.last_commit_lsn
        try:
            self._writer.execute(sql)
        except (apsw.Error, BorealError) as exc:
            error = self._sql_error(exc, session)
            if self._writer.in_transaction and error.code not in _VOLUME_FAILURES:
                # e.g. a deferred foreign key violation: the transaction stays open, as in SQLite.
                error = self._writer_error(error, session)
                error.in_transaction = True
                raise error from None
            self._end_transaction(session)
            error.in_transaction = False
            raise error from None
        self._end_transaction(session)
        commit_lsn = self.db.last_commit_lsn
        if commit_lsn > before:
            self._wait_durable(commit_lsn, session)
            session.last_commit_lsn = commit_lsn
            self.commits += 1
        return Outcome(commit_lsn=commit_lsn if commit_lsn > before else 0)

    def _rollback(self, session: Session, sql: str) -> Outcome:
        if not session.in_transaction:
            raise SqlError("MISUSE", "ROLLBACK with no open transaction")
        try:
            self._writer.execute(sql)
        except (apsw.Error, BorealError) as exc:
            raise self._sql_error(exc, session) from None
        finally:
            self._end_transaction(session)
        return Outcome()

    def _run_autocommit_read(self, session: Session, sql: str, params: Any, batch_rows: int):
        if self.volume.fenced:
            # A newer writer owns the volume: this cache may already be stale.
            self._fence("the volume epoch was raised by a newer writer")
            raise SqlError("STALE_EPOCH", "this instance is no longer the writer; reconnect to the current writer")
        if session.last_commit_lsn > self.volume.vdl:
            if session.deferred is not None:
                raise WaitDurable(session.last_commit_lsn)
            self._wait_durable(session.last_commit_lsn, session)
        try:
            read_lsn = self.db.visible_lsn()
            yield from self._snapshot_rows(read_lsn, sql, params, batch_rows, Outcome(rows_affected=-1, read_lsn=read_lsn))
            return
        except _NeedsWriter:
            pass
        except (apsw.Error, BorealError) as exc:
            raise self._sql_error(exc, session, from_writer=False) from None
        # The statement writes: run it on the writer.
        if session.deferred is not None:
            raise RouteToWriter()
        yield from self._run_on_writer(session, sql, params, batch_rows, autocommit=True)

    def _run_on_writer(self, session: Session, sql: str, params: Any, batch_rows: int, *, autocommit: bool):
        if autocommit:
            self._acquire_writer(session)
        before = self.db.last_commit_lsn
        rows: list[tuple] = []
        columns: list[tuple[str, str]] = []
        try:
            changes_before = self._writer.total_changes()
            cursor = self._writer.cursor()
            cursor.exec_trace = _one_statement_trace(readonly=False)
            result = cursor.execute(sql, params)
            columns = self._columns(cursor)
            size = 0
            for row in result:
                size += sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in row)
                if size > self.options.max_result_bytes:
                    raise SqlError("TOO_LARGE", f"result exceeds {self.options.max_result_bytes} bytes; add a LIMIT",
                                   in_transaction=session.in_transaction)
                rows.append(row)
            changed = self._writer.total_changes() - changes_before
            rowid = self._writer.last_insert_rowid()
        except SqlError as err:
            if autocommit and self._writer.in_transaction:
                self._safe_rollback()
            error = err
        except (apsw.Error, BorealError) as exc:
            if autocommit and self._writer.in_transaction:
                self._safe_rollback()
            error = self._sql_error(exc, session)
        else:
            error = None
        finally:
            if autocommit:
                self._release_writer(session)
                if self.db.writer_needs_reopen:
                    self._reopen_writer()
        if error is not None:  # after releasing the lock: the error may have to wait for durability
            raise self._writer_error(error, session) from None
        # Everything this statement read is covered once the VDL reaches the writer's
        # last commit; for an autocommit write, that includes its own commit.
        visible = self.db.last_commit_lsn
        self._wait_durable(visible, session)
        commit_lsn = visible if autocommit and visible > before else 0
        if commit_lsn:
            session.last_commit_lsn = commit_lsn
            self.commits += 1
        outcome = Outcome(rows_affected=changed if not columns or changed else -1, last_insert_rowid=rowid,
                          in_transaction=session.in_transaction, commit_lsn=commit_lsn)
        yield from self._stream(columns, iter(rows), batch_rows, outcome)

    # ---- helpers --------------------------------------------------------------------------
    def _snapshot_rows(self, lsn: int, sql: str, params: Any, batch_rows: int, outcome: Outcome):
        """Run a read-only statement on a snapshot connection at `lsn` and stream its chunks.
        Raises _NeedsWriter (before yielding anything) if the statement would write."""
        with self.db.snapshot(lsn) as conn:
            cursor = conn.cursor()
            try:
                cursor.exec_trace = _one_statement_trace(readonly=True)
                rows = cursor.execute(sql, params)
                columns = self._columns(cursor)
                yield from self._stream(columns, rows if columns else iter(()), batch_rows, outcome)
            finally:
                # A result abandoned mid-way leaves its statement active: end it (and
                # SQLite's read transaction) before the connection goes back to the pool.
                cursor.close(force=True)

    def _stream(self, columns, rows, batch_rows: int, outcome: Outcome):
        """Yield (columns, rows, outcome) chunks; a result that fits one batch is one chunk."""
        batch_rows = batch_rows or self.options.batch_rows
        batch: list[tuple] = []
        size = 0
        first = True
        for row in rows:
            batch.append(row)
            size += sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in row)
            if len(batch) >= batch_rows or size > 1 << 20:
                yield (columns if first else None), batch, None
                first = False
                batch, size = [], 0
        yield (columns if first else None), batch, outcome

    @staticmethod
    def _columns(cursor: apsw.Cursor) -> list[tuple[str, str]]:
        try:
            description = cursor.get_description()
        except apsw.ExecutionCompleteError:  # done already (no rows): the tracer kept the columns
            trace = cursor.exec_trace
            description = trace.description if isinstance(trace, _OneStatementTrace) else ()
        return [(name, decl or "") for name, decl in description]

    @staticmethod
    def _refuse_unsupported(word: str, sql: str) -> None:
        if word in ("ATTACH", "DETACH"):
            raise SqlError("SQL_ERROR", f"{word} is not supported: a borealdb database is one volume")
        if word == "PRAGMA":
            m = _PRAGMA.match(sql)
            if m and m.group("arg") and m.group("name").lower() not in _PRAGMAS_WITH_ARGUMENTS:
                raise SqlError("SQL_ERROR", f"PRAGMA {m.group('name')} cannot be changed: borealdb manages the "
                               f"connection and storage settings (allowed: {', '.join(sorted(_PRAGMAS_WITH_ARGUMENTS))})")
        if word == "VACUUM" and re.search(r"\bINTO\b", sql, re.I):
            raise SqlError("SQL_ERROR", "VACUUM INTO is not supported: it writes a file on the instance node")

    def _check_statement(self, sql: str, params: Any) -> None:
        if not isinstance(sql, str) or not sql.strip():
            raise SqlError("SYNTAX_ERROR", "empty statement")
        if len(sql.encode()) > self.options.max_statement_bytes:
            raise SqlError("TOO_LARGE", f"statement of {len(sql.encode())} bytes exceeds {self.options.max_statement_bytes}")
        if params is not None:
            self._check_params(params)

    def _check_params(self, params: Any) -> None:
        if params is not None and len(params) > self.options.max_parameters:
            raise SqlError("TOO_LARGE", f"{len(params)} parameters exceed {self.options.max_parameters}")

    def _acquire_writer(self, session: Session) -> None:
        if self.fenced_reason is not None or self.volume.fenced:
            raise SqlError("STALE_EPOCH", f"this instance is no longer the writer: {self.fenced_reason or 'fenced by a newer epoch'}")
        if self.volume.read_only:
            raise SqlError("READ_ONLY", "the volume is open read-only (no write quorum at recovery)")
        if session.deferred is not None:
            if not self._write_lock.acquire(blocking=False):
                raise WriteLockBusy()
            return
        if not self._write_lock.acquire(timeout=self.options.lock_timeout_s):
            raise SqlError("LOCK_TIMEOUT", f"waited {self.options.lock_timeout_s:g}s for the write lock "
                           f"(held by a transaction of another session)")

    def _release_writer(self, session: Session) -> None:
        self._write_owner = None
        self._write_lock.release()
        if self.on_write_lock_released is not None:
            self.on_write_lock_released()

    def write_lock_held(self) -> bool:
        return self._write_lock.locked()

    def _end_transaction(self, session: Session) -> None:
        session.in_transaction = False
        self._release_writer(session)
        if self.db.writer_needs_reopen:
            self._reopen_writer()

    def _abort_transaction(self, session: Session, why: str) -> None:
        self._safe_rollback()
        _log.info("transaction_rolled_back", session=session.session_id, reason=why)
        self._end_transaction(session)

    def _safe_rollback(self) -> None:
        try:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
        except (apsw.Error, BorealError) as exc:
            _log.warning("rollback_failed", error=str(exc))
            self.db.writer_needs_reopen = True

    def _reopen_writer(self) -> None:
        """After a failed commit SQLite's cache may hold pages that never reached the volume."""
        try:
            self._writer.close()
        except apsw.Error:
            pass
        self._writer = self.db.open_writer()
        _log.info("writer_connection_reopened", vdl=self.volume.vdl)

    def _wait_durable(self, lsn: int, session: Session) -> None:
        if lsn <= 0:
            return
        if session.deferred is not None:
            session.deferred.durable_lsn = max(session.deferred.durable_lsn, lsn)
            return
        try:
            self.volume.wait_durable(lsn, timeout_s=self.options.commit_timeout_s)
        except (StaleEpoch, QuorumLost, Unavailable) as exc:
            raise self.durability_error(exc, lsn, session) from None

    def _writer_error(self, error: SqlError, session: Session) -> SqlError:
        """The error of a statement on the writer connection, once it may leave.

        An error can reveal what the statement read (a UNIQUE violation says a row
        exists): the statement may have read other sessions' commits that are not
        durable yet, so it leaves only when the VDL covers the writer's last commit,
        like a result. If that wait fails, the wait's error is the answer."""
        if error.code in _VOLUME_FAILURES:
            return error  # the volume failed: nothing was read that a client could take for durable
        try:
            self._wait_durable(self.db.last_commit_lsn, session)
        except SqlError as wait_error:
            return wait_error
        return error

    def durability_error(self, exc: BaseException, lsn: int, session: Session) -> SqlError:
        """The SqlError for a failed wait for VDL >= lsn (fences this writer on StaleEpoch)."""
        if isinstance(exc, StaleEpoch):
            self._fence(str(exc))
            return SqlError("STALE_EPOCH", f"this writer was fenced before LSN {lsn} became durable; outcome unknown: {exc}",
                            in_transaction=session.in_transaction)
        return SqlError("QUORUM_LOST", f"LSN {lsn} is not durable yet (outcome unknown): {exc}",
                        in_transaction=session.in_transaction)

    def _fence(self, reason: str) -> None:
        if self.fenced_reason is None:
            self.fenced_reason = reason
            _log.error("writer_fenced", reason=reason, epoch=self.volume.epoch, vdl=self.volume.vdl)

    def _sql_error(self, exc: BaseException, session: Session, *, from_writer: bool = True) -> SqlError:
        # A volume error raised inside a VFS call reaches us either as itself (apsw
        # re-raises it) or as an SQLite I/O error with the cause kept by the VFS. Only
        # the writer connection's commit error is ours to take (a snapshot read failing
        # meanwhile must not steal it).
        cause = self.db.take_commit_error() if from_writer else None
        if isinstance(exc, BorealError):
            cause = exc
        in_txn = session.in_transaction and self._writer.in_transaction
        sqlite_code = getattr(exc, "extendedresult", None)
        if isinstance(cause, VolumeFull):
            return SqlError("VOLUME_FULL", str(cause), sqlite_code=sqlite_code, in_transaction=in_txn)
        if isinstance(cause, StaleEpoch):
            self._fence(str(cause))
            return SqlError("STALE_EPOCH", f"this instance is no longer the writer: {cause}", sqlite_code=sqlite_code)
        if isinstance(cause, QuorumLost):
            return SqlError("QUORUM_LOST", str(cause), sqlite_code=sqlite_code, in_transaction=in_txn)
        if cause is not None:
            return SqlError("UNAVAILABLE", f"storage volume error: {cause}", sqlite_code=sqlite_code, in_transaction=in_txn)
        message = str(exc)
        if isinstance(exc, apsw.ConstraintError):
            code = "CONSTRAINT_VIOLATION"
        elif isinstance(exc, apsw.BindingsError):
            code = "BAD_PARAMETERS"
        elif isinstance(exc, apsw.TooBigError):
            code = "TOO_LARGE"
        elif isinstance(exc, apsw.ReadOnlyError):
            code = "READ_ONLY"
        elif isinstance(exc, apsw.SQLError) and "syntax error" in message:
            code = "SYNTAX_ERROR"
        elif isinstance(exc, (apsw.SQLError, apsw.MismatchError, apsw.RangeError)):
            code = "SQL_ERROR"
        elif isinstance(exc, (apsw.IOError, apsw.CorruptError, apsw.FullError)):
            code = "INTERNAL"
        else:
            code = "SQL_ERROR"
        return SqlError(code, message, sqlite_code=sqlite_code, in_transaction=in_txn)

    def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "epoch": self.volume.epoch,
            "vdl": self.volume.vdl,
            "vcl": self.volume.vcl,
            "fenced": self.fenced_reason is not None or self.volume.fenced,
            "read_only": self.volume.read_only,
            "sessions": self.session_count(),
            "commits": self.commits,
            "cache_hits": self.db.cache.hits,
            "cache_misses": self.db.cache.misses,
        }

    def close(self) -> None:
        self._stop.set()
        with self._sessions_lock:
            sids = list(self._sessions)
        for sid in sids:
            self.close_session(sid)
        self._writer.close()
        self.db.close()
