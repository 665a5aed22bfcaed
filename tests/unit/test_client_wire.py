"""The client's wire layer without a server: URLs, values, parameters, error mapping."""

from __future__ import annotations

import datetime
import json

import grpc
import pytest

import borealdb
from borealdb import _wire, errors
from borealdb.protos import sql_pb2


# ---- URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize("url, target", [
    ("boreal://127.0.0.1:7300/", "127.0.0.1:7300"),
    ("boreal://127.0.0.1:7300", "127.0.0.1:7300"),
    ("127.0.0.1:7300", "127.0.0.1:7300"),
    ("boreal://localhost:1/", "localhost:1"),
    ("boreal://[::1]:7300/", "[::1]:7300"),
])
def test_parse_url(url, target):
    assert _wire.parse_url(url).target == target


@pytest.mark.parametrize("url, message", [
    ("", "expected a URL"),
    ("http://127.0.0.1:7300/", "scheme"),
    ("boreal://127.0.0.1/", "no port"),
    ("boreal://:7300/", "no host"),
    ("boreal://127.0.0.1:99999/", "bad URL"),
    ("boreal://127.0.0.1:7300/db", "only boreal://HOST:PORT/"),
])
def test_parse_url_rejects(url, message):
    with pytest.raises(errors.InterfaceError, match=message):
        _wire.parse_url(url)


def test_resolve_url_prefers_argument_then_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOREAL_URL", "boreal://127.0.0.2:9/")
    assert _wire.resolve_url("boreal://127.0.0.1:8/").target == "127.0.0.1:8"
    assert _wire.resolve_url(None).target == "127.0.0.2:9"


def _write_cluster(base, nodes):
    base.mkdir(parents=True, exist_ok=True)
    (base / "cluster.json").write_text(json.dumps({"version": 1, "nodes": nodes}))


def test_resolve_url_falls_back_to_the_local_writer(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BOREAL_URL", raising=False)
    with pytest.raises(errors.InterfaceError, match="boreal up"):
        _wire.resolve_url(None)
    storage = {"node_id": "s-a1", "role": "storage", "address": "127.0.0.1:7101", "pid": 10}
    _write_cluster(tmp_path / "boreal-data", [storage])
    with pytest.raises(errors.InterfaceError, match="no writer"):
        _wire.resolve_url(None)
    writer = {"node_id": "w-1", "role": "writer", "address": "127.0.0.1:7300", "pid": None}
    _write_cluster(tmp_path / "boreal-data", [storage, writer])
    with pytest.raises(errors.InterfaceError, match="not running"):
        _wire.resolve_url(None)
    writer["pid"] = 1234
    _write_cluster(tmp_path / "boreal-data", [storage, writer])
    assert _wire.resolve_url(None).url == "boreal://127.0.0.1:7300/"


def test_connect_to_nothing_is_unavailable_at_once():
    import socket

    with socket.socket() as s:  # a port with no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(borealdb.Unavailable, match="cannot open a session"):
        borealdb.connect(f"boreal://127.0.0.1:{port}/", timeout_s=5)


# ---- values -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 0, 1, -1, 2**63 - 1, -(2**63), 1.5, -0.0, float("inf"), "", "héllo ✓ 𝄞",
                                   b"", b"\x00\xff", "a\x00b"])
def test_values_round_trip(value):
    encoded = _wire.encode_value(value, "parameter #1")
    wire = sql_pb2.Value.FromString(encoded.SerializeToString())
    assert _wire.decode_value(wire) == value
    assert type(_wire.decode_value(wire)) is type(value)


def test_value_conversions():
    assert _wire.decode_value(_wire.encode_value(True, "p")) == 1
    assert _wire.decode_value(_wire.encode_value(bytearray(b"ab"), "p")) == b"ab"
    assert _wire.decode_value(_wire.encode_value(memoryview(b"ab"), "p")) == b"ab"
    assert _wire.decode_value(_wire.encode_value(datetime.date(2024, 2, 29), "p")) == "2024-02-29"
    assert _wire.decode_value(_wire.encode_value(datetime.datetime(2024, 2, 29, 1, 2, 3), "p")) == "2024-02-29 01:02:03"
    assert _wire.decode_value(_wire.encode_value(datetime.time(1, 2, 3), "p")) == "01:02:03"
    assert _wire.decode_value(sql_pb2.Value()) is None


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_out_of_range_ints_are_data_errors(value):
    with pytest.raises(errors.DataError, match=r"parameter #2: integer .* 64 bits"):
        _wire.encode_params([1, value])


def test_unsupported_types_name_the_parameter():
    with pytest.raises(errors.ProgrammingError, match=r"parameter #2: unsupported type object"):
        _wire.encode_params([1, object()])
    with pytest.raises(errors.ProgrammingError, match=r"parameter 'when': unsupported type complex"):
        _wire.encode_params({"when": 1j})
    with pytest.raises(errors.ProgrammingError, match=r"parameter set #3: parameter #1: unsupported type set"):
        [_wire.param_set(p, i) for i, p in enumerate([(1,), (2,), ({3},)], 1)]


def test_params_sequence_and_mapping():
    positional, named = _wire.encode_params((1, "a", None))
    assert [_wire.decode_value(v) for v in positional] == [1, "a", None] and named == {}
    positional, named = _wire.encode_params({"a": 1, ":b": 2, "$c": 3})
    assert positional == [] and {k: _wire.decode_value(v) for k, v in named.items()} == {"a": 1, "b": 2, "c": 3}
    assert _wire.encode_params(None) == ([], {})
    for bad in ("abc", b"abc", 42):
        with pytest.raises(errors.ProgrammingError, match="must be a sequence"):
            _wire.encode_params(bad)
    with pytest.raises(errors.ProgrammingError, match="names must be non-empty strings"):
        _wire.encode_params({1: 2})


# ---- statements ---------------------------------------------------------------------


@pytest.mark.parametrize("sql, keyword, writes", [
    ("SELECT 1", "SELECT", False),
    ("  -- hi\n /* x */ select 1", "SELECT", False),
    ("values (1)", "VALUES", False),
    ("EXPLAIN QUERY PLAN SELECT 1", "EXPLAIN", False),
    ("insert into t values (1)", "INSERT", True),
    ("WITH x AS (SELECT 1) DELETE FROM t", "WITH", True),
    ("commit", "COMMIT", True),
    ("", "", True),
])
def test_statement_classification(sql, keyword, writes):
    assert _wire.first_keyword(sql) == keyword
    assert _wire.may_write(sql) is writes


def test_is_commit():
    assert _wire.is_commit("COMMIT") and _wire.is_commit(" end transaction;") and not _wire.is_commit("ROLLBACK")


# ---- errors -------------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    """What grpc raises: code(), details(), trailing_metadata()."""

    def __init__(self, status, details="", metadata=()):
        self._status, self._details, self._metadata = status, details, tuple(metadata)

    def code(self):
        return self._status

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._metadata


@pytest.mark.parametrize("code, cls", [
    ("SQL_ERROR", errors.OperationalError),
    ("SYNTAX_ERROR", errors.OperationalError),
    ("CONSTRAINT_VIOLATION", errors.IntegrityError),
    ("NOT_WRITER", errors.NotWriter),
    ("READ_ONLY", errors.ReadOnly),
    ("VOLUME_FULL", errors.VolumeFull),
    ("LOCK_TIMEOUT", errors.LockTimeout),
    ("SESSION_EXPIRED", errors.SessionExpired),
    ("TOO_LARGE", errors.TooLarge),
    ("BAD_PARAMETERS", errors.BadParameters),
    ("QUORUM_LOST", errors.QuorumLost),
    ("STALE_EPOCH", errors.StaleEpoch),
    ("INTERNAL", errors.InternalError),
    ("UNAVAILABLE", errors.Unavailable),
    ("MISUSE", errors.ProgrammingError),
])
def test_every_server_code_maps_to_its_class(code, cls):
    assert code in sql_pb2.SqlErrorCode.keys()
    err = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, f"the message for {code}",
                       [("boreal-error", code), ("boreal-sqlite-code", "2067")])
    exc = _wire.error_from_rpc(err, outcome_unknown=True)  # a server answer: the outcome is known
    assert type(exc) is cls
    assert str(exc) == f"the message for {code}"
    assert exc.code == code and exc.sqlite_code == 2067
    assert isinstance(exc, errors.DatabaseError)


def test_every_wire_code_is_mapped():
    assert set(sql_pb2.SqlErrorCode.keys()) - set(_wire.ERROR_CLASSES) == {"SQL_ERROR_CODE_UNSPECIFIED"}


def test_unknown_server_code_is_a_database_error():
    exc = _wire.error_from_rpc(FakeRpcError(grpc.StatusCode.INTERNAL, "new", [("boreal-error", "FUTURE_CODE")]))
    assert type(exc) is errors.DatabaseError and exc.code == "FUTURE_CODE"


def test_in_transaction_metadata():
    err = FakeRpcError(grpc.StatusCode.ABORTED, "x", [("boreal-error", "CONSTRAINT_VIOLATION"), ("boreal-in-transaction", "1")])
    assert _wire.error_from_rpc(err).in_transaction is True
    err = FakeRpcError(grpc.StatusCode.ABORTED, "x", [("boreal-error", "SQL_ERROR"), ("boreal-in-transaction", "false")])
    assert _wire.error_from_rpc(err).in_transaction is False
    assert _wire.error_from_rpc(FakeRpcError(grpc.StatusCode.ABORTED, "x")).in_transaction is None


@pytest.mark.parametrize("status", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_transport_failures(status):
    err = FakeRpcError(status, "Socket closed")
    exc = _wire.error_from_rpc(err)
    assert type(exc) is errors.Unavailable and "Socket closed" in str(exc)
    exc = _wire.error_from_rpc(err, outcome_unknown=True, what="COMMIT")
    assert type(exc) is errors.OutcomeUnknown
    assert "COMMIT" in str(exc) and "may or may not have committed" in str(exc)
    assert isinstance(exc, errors.OperationalError)


def test_a_request_that_never_left_is_unavailable_even_for_a_commit():
    err = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: ...")
    assert type(_wire.error_from_rpc(err, outcome_unknown=True)) is errors.Unavailable


@pytest.mark.parametrize("status, cls", [
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidRequest),
    (grpc.StatusCode.UNIMPLEMENTED, errors.NotSupportedError),
    (grpc.StatusCode.INTERNAL, errors.InternalError),
    (grpc.StatusCode.PERMISSION_DENIED, errors.OperationalError),
])
def test_status_without_server_code(status, cls):
    exc = _wire.error_from_rpc(FakeRpcError(status, "boom"), outcome_unknown=True)
    assert type(exc) is cls and "boom" in str(exc)


@pytest.mark.parametrize("details, cls", [
    ("SERVER: Received message larger than max (70000000 vs. 67108864)", errors.TooLarge),
    ("CLIENT: Sent message larger than max (70000000 vs. 67108864)", errors.TooLarge),
    ("Concurrent RPC limit exceeded!", errors.Unavailable),  # an overloaded server: retry later
])
def test_resource_exhausted_is_too_large_only_for_gRPCs_size_limit(details, cls):
    # The details are gRPC's own (grpcio 1.85, checked against a real server).
    exc = _wire.error_from_rpc(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, details), outcome_unknown=True)
    assert type(exc) is cls and details in str(exc)


def test_bytes_metadata_and_broken_call_objects():
    err = FakeRpcError(grpc.StatusCode.ABORTED, "m", [(b"Boreal-Error", b"LOCK_TIMEOUT")])
    assert type(_wire.error_from_rpc(err)) is errors.LockTimeout

    class Broken(grpc.RpcError):
        def code(self):
            raise RuntimeError

        def details(self):
            raise RuntimeError

        def trailing_metadata(self):
            raise RuntimeError

    assert isinstance(_wire.error_from_rpc(Broken()), errors.Error)


# ---- module -------------------------------------------------------------------------


def test_module_globals():
    assert borealdb.apilevel == "2.0"
    assert borealdb.threadsafety == 1
    assert borealdb.paramstyle == "qmark"
    for name in ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
                 "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError"):
        assert issubclass(getattr(borealdb, name), Exception)
    assert issubclass(borealdb.OutcomeUnknown, borealdb.OperationalError)
    assert issubclass(borealdb.TooLarge, borealdb.ProgrammingError)
    assert issubclass(borealdb.BadParameters, borealdb.ProgrammingError)
    assert borealdb.aio.connect is not None


def test_type_objects():
    assert borealdb.NUMBER == "INTEGER" and borealdb.NUMBER == "real" and borealdb.NUMBER == "DECIMAL(10,2)"
    assert borealdb.STRING == "VARCHAR(20)" and borealdb.STRING == "text" and borealdb.STRING != "INTEGER"
    assert borealdb.BINARY == "BLOB" and borealdb.BINARY != "TEXT"
    assert borealdb.DATETIME == "TIMESTAMP" and borealdb.DATETIME == "date"
    assert borealdb.ROWID == "INTEGER" and borealdb.ROWID != "BIGINT"
    assert borealdb.STRING != "" and borealdb.NUMBER != ""
    assert borealdb.Binary(bytearray(b"x")) == b"x"
    assert borealdb.Date(2024, 1, 2) == datetime.date(2024, 1, 2)
    assert borealdb.TimestampFromTicks(0).year in (1969, 1970)
    assert isinstance(borealdb.DateFromTicks(0), datetime.date) and isinstance(borealdb.TimeFromTicks(0), datetime.time)


def test_error_docstring_tree_names_every_class():
    for name in errors.__all__:
        if name not in ("Warning",):
            assert name in errors.__doc__, name


def test_one_message_unless_returning():
    assert _wire.one_message("INSERT INTO t(v) VALUES (?)")
    assert _wire.one_message("SELECT * FROM t")
    assert not _wire.one_message("DELETE FROM t WHERE id < 5 RETURNING id")
    assert not _wire.one_message("insert into t(v) values (1) returning *")
    assert _wire.one_message("SELECT returning_total FROM t")  # a column name, not the clause


def test_stream_required_is_recognised():
    assert _wire.stream_required(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "x", [("boreal-error", "STREAM_REQUIRED")]))
    assert _wire.stream_required(FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "no ExecuteOne"))
    assert not _wire.stream_required(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "x", [("boreal-error", "MISUSE")]))


class _Conn:
    def __init__(self, in_tx):
        self.session_id, self._in_tx = "s-1", in_tx


def _expired():
    return FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "session s-1 expired", [("boreal-error", "SESSION_EXPIRED")])


def test_request_failed_retries_an_expired_session_once_outside_a_transaction():
    conn = _Conn(in_tx=False)
    assert _wire.request_failed(conn, _expired(), in_tx_before=False, may_retry=True, outcome_unknown=False, what="x") is None
    assert conn.session_id is None  # the next attempt opens a new session
    exc = _wire.request_failed(conn, _expired(), in_tx_before=False, may_retry=False, outcome_unknown=False, what="x")
    assert isinstance(exc, errors.SessionExpired)


def test_request_failed_never_retries_inside_a_transaction():
    conn = _Conn(in_tx=True)
    exc = _wire.request_failed(conn, _expired(), in_tx_before=True, may_retry=True, outcome_unknown=False, what="x")
    assert isinstance(exc, errors.SessionExpired) and "open transaction is gone" in str(exc)
    assert conn.session_id is None and conn._in_tx is False


def test_request_failed_takes_the_servers_transaction_state():
    conn = _Conn(in_tx=True)
    err = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "UNIQUE constraint failed",
                       [("boreal-error", "CONSTRAINT_VIOLATION"), ("boreal-in-transaction", "1")])
    exc = _wire.request_failed(conn, err, in_tx_before=True, may_retry=True, outcome_unknown=False, what="x")
    assert isinstance(exc, errors.IntegrityError) and conn._in_tx is True and conn.session_id == "s-1"
