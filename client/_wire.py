"""What the sync and asyncio clients share: URLs, channel options, values, errors.

Nothing here does I/O except `resolve_url` (reads an environment variable and, as a
last resort, the local cluster's cluster.json). The client deliberately does not
import `borealdb.nodes`: applications that only talk to a cluster need grpc and
protobuf, not the server side.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from borealdb import errors
from borealdb.protos import sql_pb2

URL_ENV = "BOREAL_URL"
LOCAL_CLUSTER_DIR = "./boreal-data"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# gRPC core shares subchannels between all channels of a process, so a new connection
# to a writer that was down (restart, failover) would inherit the old connection's
# reconnect backoff, which grows to 120 s. Each client channel gets its own
# subchannels and retries the connection every 100..1000 ms instead. Messages may
# be as large as the server accepts (64 MiB): big rows, blobs and executemany batches.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    # Not grpc.min_reconnect_backoff_ms: gRPC also uses it as the minimum connect
    # timeout, and 100 ms made connect() give up on a server slow to answer (paused).
    ("grpc.max_reconnect_backoff_ms", 1000),
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# ---- URLs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @property
    def target(self) -> str:
        """The gRPC target ("host:port", IPv6 hosts in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"boreal://{self.target}/"


def parse_url(url: str) -> Address:
    """`boreal://host:port/` (or plain `host:port`) -> Address. Raises InterfaceError."""
    if not isinstance(url, str) or not url.strip():
        raise errors.InterfaceError(f"expected a URL like boreal://127.0.0.1:7300/, got {url!r}")
    text = url.strip()
    if "://" not in text:
        text = "boreal://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise errors.InterfaceError(f"bad URL {url!r}: {e}") from None
    if parts.scheme != "boreal":
        raise errors.InterfaceError(f"bad URL {url!r}: the scheme must be boreal:// (like boreal://127.0.0.1:7300/)")
    if not parts.hostname:
        raise errors.InterfaceError(f"bad URL {url!r}: no host (expected boreal://HOST:PORT/)")
    if port is None:
        raise errors.InterfaceError(f"bad URL {url!r}: no port (expected boreal://HOST:PORT/)")
    if port == 0:
        raise errors.InterfaceError(f"bad URL {url!r}: port 0")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise errors.InterfaceError(f"bad URL {url!r}: expected only boreal://HOST:PORT/")
    return Address(parts.hostname, port)


def local_writer_address(base_dir: str | os.PathLike = LOCAL_CLUSTER_DIR) -> str:
    """The address of the writer recorded in `<base_dir>/cluster.json` by `boreal up`.

    Reads the file directly (the format of borealdb.nodes.cluster.local: a "nodes" list
    of records with "role", "address" and "pid", pid null when stopped)."""
    path = Path(base_dir) / "cluster.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise errors.InterfaceError(
            f"no URL given, ${URL_ENV} is not set and there is no local cluster ({path} is missing); "
            "pass boreal://HOST:PORT/ or start a cluster with: boreal up"
        ) from None
    except (OSError, ValueError) as e:
        raise errors.InterfaceError(f"cannot read {path}: {e}") from None
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    writers = [n for n in nodes or [] if isinstance(n, dict) and n.get("role") == "writer" and n.get("address")]
    if not writers:
        raise errors.InterfaceError(f"the local cluster in {Path(base_dir)} has no writer instance ({path} names none)")
    running = [n for n in writers if n.get("pid")]
    if not running:
        raise errors.InterfaceError(
            f"the writer of the local cluster in {Path(base_dir)} is not running; start it with: boreal up"
        )
    return str(running[0]["address"])


def resolve_url(url: str | None) -> Address:
    """`url`, else $BOREAL_URL, else the writer of the local cluster in ./boreal-data."""
    if url is None:
        url = os.environ.get(URL_ENV) or None
    if url is None:
        url = local_writer_address()
    return parse_url(url)


# ---- values -----------------------------------------------------------------------


def encode_value(value: Any, where: str) -> sql_pb2.Value:
    """A Python value -> sql_pb2.Value. `where` names the parameter in error messages."""
    if value is None:
        return sql_pb2.Value(null=sql_pb2.NullValue())
    if isinstance(value, int):  # bool included: True -> 1
        if not INT64_MIN <= value <= INT64_MAX:
            raise errors.DataError(f"{where}: integer {value} does not fit in 64 bits (SQLite INTEGER)")
        return sql_pb2.Value(integer=int(value))
    if isinstance(value, float):
        return sql_pb2.Value(real=value)
    if isinstance(value, str):
        return sql_pb2.Value(text=value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return sql_pb2.Value(blob=bytes(value))
    if isinstance(value, (datetime.date, datetime.time)):  # datetime.datetime is a date
        return sql_pb2.Value(text=value.isoformat(" ") if isinstance(value, datetime.datetime) else value.isoformat())
    raise errors.ProgrammingError(
        f"{where}: unsupported type {type(value).__name__} "
        "(use None, int, float, str, bytes, bool, or date/time/datetime)"
    )


def decode_value(value: sql_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "integer":
        return value.integer
    if kind == "text":
        return value.text
    if kind == "real":
        return value.real
    if kind == "blob":
        return value.blob
    return None  # null, or unset


def decode_row(row: sql_pb2.Row) -> tuple:
    return tuple(decode_value(v) for v in row.values)


def encode_params(params: Any, prefix: str = "") -> tuple[list[sql_pb2.Value], dict[str, sql_pb2.Value]]:
    """execute() parameters -> (positional, named). A mapping binds :name parameters."""
    if params is None:
        return [], {}
    if isinstance(params, Mapping):
        named = {}
        for key, value in params.items():
            if not isinstance(key, str) or not key:
                raise errors.ProgrammingError(f"{prefix}parameter names must be non-empty strings, got {key!r}")
            name = key[1:] if key[0] in ":@$" else key
            named[name] = encode_value(value, f"{prefix}parameter {name!r}")
        return [], named
    if isinstance(params, (str, bytes, bytearray, memoryview)) or not isinstance(params, (Sequence, Iterable)):
        raise errors.ProgrammingError(
            f"{prefix}parameters must be a sequence (for ?) or a mapping (for :name), not {type(params).__name__}"
        )
    return [encode_value(v, f"{prefix}parameter #{i}") for i, v in enumerate(params, 1)], {}


def param_set(params: Any, index: int) -> sql_pb2.ParamSet:
    positional, named = encode_params(params, prefix=f"parameter set #{index}: ")
    return sql_pb2.ParamSet(params=positional, named_params=named)


# ---- statements -------------------------------------------------------------------

_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.S)
_READ_KEYWORDS = {"SELECT", "VALUES", "EXPLAIN"}
_COMMIT_KEYWORDS = {"COMMIT", "END"}


_WORD = re.compile(r"[A-Za-z]+")
# Applications run the same statements over and over: remember the keyword of recent
# texts (bounded; cleared when full) instead of scanning each one again per execute().
_KEYWORD_CACHE: dict[str, str] = {}
_KEYWORD_CACHE_MAX = 1024
_KEYWORD_CACHE_MAX_SQL = 4096  # longer texts are scanned every time, not kept


def first_keyword(sql: str) -> str:
    """The statement's first keyword, upper-cased, skipping whitespace and comments."""
    word = _KEYWORD_CACHE.get(sql)
    if word is not None:
        return word
    m = _LEADING.match(sql)
    found = _WORD.match(sql, m.end()) if m else _WORD.match(sql)
    word = found.group(0).upper() if found else ""
    if len(sql) <= _KEYWORD_CACHE_MAX_SQL:
        if len(_KEYWORD_CACHE) >= _KEYWORD_CACHE_MAX:
            _KEYWORD_CACHE.clear()
        _KEYWORD_CACHE[sql] = word
    return word


def is_commit(sql: str) -> bool:
    return first_keyword(sql) in _COMMIT_KEYWORDS


def may_write(sql: str) -> bool:
    """False only for statements that cannot change the database (SELECT, VALUES, EXPLAIN)."""
    return first_keyword(sql) not in _READ_KEYWORDS


_RETURNING = re.compile(r"\bRETURNING\b", re.I)


def one_message(sql: str) -> bool:
    """Whether to send the statement with ExecuteOne (one round trip) rather than the
    Execute stream: everything except writes with a RETURNING clause, whose result may
    be large and must not be run twice. A read whose result turns out too large for one
    message is refused by the server with STREAM_REQUIRED, having changed nothing."""
    return _RETURNING.search(sql) is None


def stream_required(err: Any) -> bool:
    """True if an ExecuteOne failed only because the statement must be sent with Execute
    (its result does not fit one message, or the server predates ExecuteOne)."""
    if rpc_status_name(err) == "UNIMPLEMENTED":
        return True
    return _metadata(err).get("boreal-error", "").strip() == "STREAM_REQUIRED"


def after_execute_one_failed(conn: Any, err: Any) -> None:
    """An ExecuteOne of `conn` failed with `err`: re-raise it unless the statement is to
    be streamed instead (then remember a server without ExecuteOne on the connection)."""
    if not stream_required(err):
        raise err
    if rpc_status_name(err) == "UNIMPLEMENTED":
        conn._execute_one = False  # an older server: streams only


# ---- the Statements stream -----------------------------------------------------------


class StatementFailed(grpc.RpcError):
    """A statement error that arrived inside the Statements stream. It has the interface
    of a failed call (code(), details(), trailing_metadata()) and the metadata ExecuteOne
    would have sent, so that one mapping (error_from_rpc) serves both; the stream stays open."""

    def __init__(self, error: sql_pb2.StatementError):
        super().__init__(error.message)
        self._error = error

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNKNOWN  # the boreal-error code decides the class

    def details(self) -> str:
        return self._error.message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        e = self._error
        try:
            name = sql_pb2.SqlErrorCode.Name(e.code)
        except ValueError:  # a code newer than this client
            name = f"SQL_ERROR_CODE_{e.code}"
        md = [("boreal-error", name), ("boreal-in-transaction", "1" if e.in_transaction else "0")]
        if e.HasField("sqlite_code"):
            md.append(("boreal-sqlite-code", str(e.sqlite_code)))
        return tuple(md)


class StreamFailed(grpc.RpcError):
    """The Statements stream failed (the client gave up waiting, the transport failed, or
    the stream ended unanswered): it has the interface of a failed call, with the status
    of the unary failure it stands for, so that error_from_rpc maps it alike."""

    def __init__(self, status: grpc.StatusCode, details: str, trailing_metadata: tuple = (), *,
                 never_sent: bool = False):
        super().__init__(details)
        self._status, self._details, self._trailing_metadata = status, details, trailing_metadata
        self.never_sent = never_sent  # the statement's message was not written out: nothing reached the server

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing_metadata


def statement_timed_out(timeout_s: float) -> StreamFailed:
    """No answer within the connection's timeout; the client cancelled the stream."""
    return StreamFailed(grpc.StatusCode.DEADLINE_EXCEEDED, f"Deadline Exceeded: no answer within {timeout_s:g}s")


def stream_ended() -> StreamFailed:
    """The server ended the stream without answering (it shut down cleanly)."""
    return StreamFailed(grpc.StatusCode.UNAVAILABLE, "the server closed the statement stream")


def statement_result(resp: sql_pb2.StatementResponse) -> sql_pb2.ExecuteResponse:
    """The ExecuteResponse of a Statements answer; raises StatementFailed for an error."""
    if resp.HasField("error"):
        raise StatementFailed(resp.error)
    return resp.result


def streams_unsupported(err: Any) -> bool:
    """True if the server has no Statements method (it predates it): use ExecuteOne."""
    return rpc_status_name(err) == "UNIMPLEMENTED"  # never a StatementFailed (UNKNOWN)


# ---- the request loop's bookkeeping (shared by the sync and asyncio connections) -------


def session_opened(conn: Any, resp: sql_pb2.OpenSessionResponse) -> str:
    """Record a new session on `conn` (its id, the node's id, role and epoch)."""
    conn.session_id = resp.session_id
    conn.node_id, conn.role, conn.epoch = resp.node_id, resp.role, resp.epoch
    return conn.session_id


def request_failed(conn: Any, err: Any, *, in_tx_before: bool, may_retry: bool, outcome_unknown: bool,
                   what: str) -> errors.Error | None:
    """A request of `conn` failed with the RpcError `err`: update the connection's
    transaction and session state and return the error to raise, or None to send the
    request once more (its session expired outside a transaction: nothing was lost)."""
    exc = error_from_rpc(err, outcome_unknown=outcome_unknown, what=what)
    if exc.in_transaction is not None:
        conn._in_tx = exc.in_transaction
    if isinstance(exc, errors.SessionExpired):
        conn.session_id = None
        if in_tx_before:
            conn._in_tx = False
            return errors.SessionExpired(f"{exc}: the session expired and its open transaction is gone (rolled back)",
                                         code=exc.code, sqlite_code=exc.sqlite_code)
        if may_retry:
            return None
    return exc


# ---- errors -----------------------------------------------------------------------

# The server's stable codes (sql.proto SqlErrorCode) -> classes. SQL errors follow
# sqlite3: syntax errors and "no such table" are OperationalError, constraint
# failures IntegrityError, misuse (COMMIT with no transaction) ProgrammingError.
ERROR_CLASSES: dict[str, type[errors.Error]] = {
    "SQL_ERROR": errors.OperationalError,
    "SYNTAX_ERROR": errors.OperationalError,
    "CONSTRAINT_VIOLATION": errors.IntegrityError,
    "NOT_WRITER": errors.NotWriter,
    "READ_ONLY": errors.ReadOnly,
    "VOLUME_FULL": errors.VolumeFull,
    "LOCK_TIMEOUT": errors.LockTimeout,
    "SESSION_EXPIRED": errors.SessionExpired,
    "TOO_LARGE": errors.TooLarge,
    "BAD_PARAMETERS": errors.BadParameters,
    "QUORUM_LOST": errors.QuorumLost,
    "STALE_EPOCH": errors.StaleEpoch,
    "INTERNAL": errors.InternalError,
    "UNAVAILABLE": errors.Unavailable,
    "MISUSE": errors.ProgrammingError,
    "STREAM_REQUIRED": errors.InterfaceError,  # handled by the client itself (falls back to Execute)
}

# gRPC status names (when the server sent no boreal-error) -> classes.
_STATUS_CLASSES: dict[str, type[errors.Error]] = {
    "UNAVAILABLE": errors.Unavailable,
    "DEADLINE_EXCEEDED": errors.Unavailable,
    "RESOURCE_EXHAUSTED": errors.Unavailable,  # "Concurrent RPC limit exceeded!": retry later (sizes: below)
    "INVALID_ARGUMENT": errors.InvalidRequest,
    "UNIMPLEMENTED": errors.NotSupportedError,
    "INTERNAL": errors.InternalError,
    "UNKNOWN": errors.InternalError,
    "DATA_LOSS": errors.InternalError,
}
_TRANSPORT_STATUSES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN"}


def _metadata(err: Any) -> dict[str, str]:
    try:
        pairs = err.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - a broken call object has no metadata
        pairs = ()
    out = {}
    for pair in pairs:
        key, value = pair[0], pair[1]
        key = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
        out[key.lower()] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out


def rpc_status_name(err: Any) -> str:
    try:
        code = err.code()
    except Exception:  # noqa: BLE001
        return "UNKNOWN"
    return getattr(code, "name", str(code))


def _never_sent(status: str, details: str) -> bool:
    """True when gRPC failed the call before sending it: no connection could be made
    (the channel was in TRANSIENT_FAILURE, gRPC core's "failed to connect to all
    addresses"). Then nothing reached the server and the outcome is known: nothing."""
    return status == "UNAVAILABLE" and details.lower().startswith("failed to connect to all addresses")


def error_from_rpc(err: Any, *, outcome_unknown: bool = False, what: str = "") -> errors.Error:
    """A grpc error (anything with code(), details(), trailing_metadata()) -> a borealdb error.

    `outcome_unknown`: the request was a COMMIT or an autocommit write; a transport
    failure (no server error code) then becomes OutcomeUnknown rather than Unavailable.
    The result has `.in_transaction` (bool, or None when the server did not say)."""
    meta = _metadata(err)
    status = rpc_status_name(err)
    try:
        details = err.details() or ""
    except Exception:  # noqa: BLE001
        details = ""
    code = meta.get("boreal-error", "").strip()
    sqlite_code: int | None = None
    if meta.get("boreal-sqlite-code", "").lstrip("-").isdigit():
        sqlite_code = int(meta["boreal-sqlite-code"])
    in_tx_text = meta.get("boreal-in-transaction", "").strip().lower()
    in_tx = {"1": True, "true": True, "0": False, "false": False}.get(in_tx_text)

    if code and code != "SQL_ERROR_CODE_UNSPECIFIED":
        cls = ERROR_CLASSES.get(code, errors.DatabaseError)
        exc = cls(details or code, code=code, sqlite_code=sqlite_code)
    elif (outcome_unknown and status in _TRANSPORT_STATUSES and not _never_sent(status, details)
          and not getattr(err, "never_sent", False)):
        exc = errors.OutcomeUnknown(
            f"the connection was lost while {what or 'a write'} was in flight: "
            f"it may or may not have committed ({status}: {details})"
        )
    else:
        cls = _STATUS_CLASSES.get(status, errors.OperationalError)
        if status == "RESOURCE_EXHAUSTED" and "larger than max" in details:
            cls = errors.TooLarge  # gRPC's message size limit (64 MiB), either side
        prefix = f"{what}: " if what else ""
        exc = cls(f"{prefix}{status}: {details}" if details else f"{prefix}{status}", sqlite_code=sqlite_code)
    exc.in_transaction = in_tx  # type: ignore[attr-defined]
    exc.grpc_status = status  # type: ignore[attr-defined]
    return exc
