from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SqlErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SQL_ERROR_CODE_UNSPECIFIED: _ClassVar[SqlErrorCode]
    SQL_ERROR: _ClassVar[SqlErrorCode]
    SYNTAX_ERROR: _ClassVar[SqlErrorCode]
    CONSTRAINT_VIOLATION: _ClassVar[SqlErrorCode]
    NOT_WRITER: _ClassVar[SqlErrorCode]
    READ_ONLY: _ClassVar[SqlErrorCode]
    VOLUME_FULL: _ClassVar[SqlErrorCode]
    LOCK_TIMEOUT: _ClassVar[SqlErrorCode]
    SESSION_EXPIRED: _ClassVar[SqlErrorCode]
    TOO_LARGE: _ClassVar[SqlErrorCode]
    BAD_PARAMETERS: _ClassVar[SqlErrorCode]
    QUORUM_LOST: _ClassVar[SqlErrorCode]
    STALE_EPOCH: _ClassVar[SqlErrorCode]
    INTERNAL: _ClassVar[SqlErrorCode]
    UNAVAILABLE: _ClassVar[SqlErrorCode]
    MISUSE: _ClassVar[SqlErrorCode]
    STREAM_REQUIRED: _ClassVar[SqlErrorCode]
SQL_ERROR_CODE_UNSPECIFIED: SqlErrorCode
SQL_ERROR: SqlErrorCode
SYNTAX_ERROR: SqlErrorCode
CONSTRAINT_VIOLATION: SqlErrorCode
NOT_WRITER: SqlErrorCode
READ_ONLY: SqlErrorCode
VOLUME_FULL: SqlErrorCode
LOCK_TIMEOUT: SqlErrorCode
SESSION_EXPIRED: SqlErrorCode
TOO_LARGE: SqlErrorCode
BAD_PARAMETERS: SqlErrorCode
QUORUM_LOST: SqlErrorCode
STALE_EPOCH: SqlErrorCode
INTERNAL: SqlErrorCode
UNAVAILABLE: SqlErrorCode
MISUSE: SqlErrorCode
STREAM_REQUIRED: SqlErrorCode

class NullValue(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Value(_message.Message):
    __slots__ = ("null", "integer", "real", "text", "blob")
    NULL_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    REAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    null: NullValue
    integer: int
    real: float
    text: str
    blob: bytes
    def __init__(self, null: _Optional[_Union[NullValue, _Mapping]] = ..., integer: _Optional[int] = ..., real: _Optional[float] = ..., text: _Optional[str] = ..., blob: _Optional[bytes] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "decl_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DECL_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    decl_type: str
    def __init__(self, name: _Optional[str] = ..., decl_type: _Optional[str] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("client_name",)
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    def __init__(self, client_name: _Optional[str] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session_id", "node_id", "role", "idle_timeout_ms", "epoch")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    node_id: str
    role: str
    idle_timeout_ms: int
    epoch: int
    def __init__(self, session_id: _Optional[str] = ..., node_id: _Optional[str] = ..., role: _Optional[str] = ..., idle_timeout_ms: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("session_id", "sql", "params", "named_params", "batch_rows")
    class NamedParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    NAMED_PARAMS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sql: str
    params: _containers.RepeatedCompositeFieldContainer[Value]
    named_params: _containers.MessageMap[str, Value]
    batch_rows: int
    def __init__(self, session_id: _Optional[str] = ..., sql: _Optional[str] = ..., params: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., named_params: _Optional[_Mapping[str, Value]] = ..., batch_rows: _Optional[int] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("columns", "rows", "last", "rows_affected", "last_insert_rowid", "in_transaction", "commit_lsn", "read_lsn")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    ROWS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_INSERT_ROWID_FIELD_NUMBER: _ClassVar[int]
    IN_TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    READ_LSN_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    last: bool
    rows_affected: int
    last_insert_rowid: int
    in_transaction: bool
    commit_lsn: int
    read_lsn: int
    def __init__(self, columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., last: _Optional[bool] = ..., rows_affected: _Optional[int] = ..., last_insert_rowid: _Optional[int] = ..., in_transaction: _Optional[bool] = ..., commit_lsn: _Optional[int] = ..., read_lsn: _Optional[int] = ...) -> None: ...

class ParamSet(_message.Message):
    __slots__ = ("params", "named_params")
    class NamedParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    NAMED_PARAMS_FIELD_NUMBER: _ClassVar[int]
    params: _containers.RepeatedCompositeFieldContainer[Value]
    named_params: _containers.MessageMap[str, Value]
    def __init__(self, params: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., named_params: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class ExecuteManyRequest(_message.Message):
    __slots__ = ("session_id", "sql", "param_sets")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    PARAM_SETS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sql: str
    param_sets: _containers.RepeatedCompositeFieldContainer[ParamSet]
    def __init__(self, session_id: _Optional[str] = ..., sql: _Optional[str] = ..., param_sets: _Optional[_Iterable[_Union[ParamSet, _Mapping]]] = ...) -> None: ...

class ExecuteManyResponse(_message.Message):
    __slots__ = ("rows_affected", "last_insert_rowid", "in_transaction", "commit_lsn")
    ROWS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_INSERT_ROWID_FIELD_NUMBER: _ClassVar[int]
    IN_TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    rows_affected: int
    last_insert_rowid: int
    in_transaction: bool
    commit_lsn: int
    def __init__(self, rows_affected: _Optional[int] = ..., last_insert_rowid: _Optional[int] = ..., in_transaction: _Optional[bool] = ..., commit_lsn: _Optional[int] = ...) -> None: ...

class StatementError(_message.Message):
    __slots__ = ("code", "message", "in_transaction", "sqlite_code")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IN_TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    SQLITE_CODE_FIELD_NUMBER: _ClassVar[int]
    code: SqlErrorCode
    message: str
    in_transaction: bool
    sqlite_code: int
    def __init__(self, code: _Optional[_Union[SqlErrorCode, str]] = ..., message: _Optional[str] = ..., in_transaction: _Optional[bool] = ..., sqlite_code: _Optional[int] = ...) -> None: ...

class StatementResponse(_message.Message):
    __slots__ = ("result", "error")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    result: ExecuteResponse
    error: StatementError
    def __init__(self, result: _Optional[_Union[ExecuteResponse, _Mapping]] = ..., error: _Optional[_Union[StatementError, _Mapping]] = ...) -> None: ...

class InstanceStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstanceStatusResponse(_message.Message):
    __slots__ = ("node_id", "az", "role", "epoch", "vdl", "vcl", "fenced", "read_only", "sessions", "commits", "uptime_ms", "volume_id", "replica_lag_lsn", "replica_lag_ms", "replicas", "writer_address", "stream_connected", "read_lsn")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VDL_FIELD_NUMBER: _ClassVar[int]
    VCL_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_LAG_LSN_FIELD_NUMBER: _ClassVar[int]
    REPLICA_LAG_MS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    WRITER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STREAM_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    READ_LSN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    az: str
    role: str
    epoch: int
    vdl: int
    vcl: int
    fenced: bool
    read_only: bool
    sessions: int
    commits: int
    uptime_ms: int
    volume_id: str
    replica_lag_lsn: int
    replica_lag_ms: float
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    writer_address: str
    stream_connected: bool
    read_lsn: int
    def __init__(self, node_id: _Optional[str] = ..., az: _Optional[str] = ..., role: _Optional[str] = ..., epoch: _Optional[int] = ..., vdl: _Optional[int] = ..., vcl: _Optional[int] = ..., fenced: _Optional[bool] = ..., read_only: _Optional[bool] = ..., sessions: _Optional[int] = ..., commits: _Optional[int] = ..., uptime_ms: _Optional[int] = ..., volume_id: _Optional[str] = ..., replica_lag_lsn: _Optional[int] = ..., replica_lag_ms: _Optional[float] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., writer_address: _Optional[str] = ..., stream_connected: _Optional[bool] = ..., read_lsn: _Optional[int] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("node_id", "az", "address", "applied_lsn", "lag_lsn", "lag_ms", "min_read_point")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LSN_FIELD_NUMBER: _ClassVar[int]
    LAG_LSN_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_READ_POINT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    az: str
    address: str
    applied_lsn: int
    lag_lsn: int
    lag_ms: float
    min_read_point: int
    def __init__(self, node_id: _Optional[str] = ..., az: _Optional[str] = ..., address: _Optional[str] = ..., applied_lsn: _Optional[int] = ..., lag_lsn: _Optional[int] = ..., lag_ms: _Optional[float] = ..., min_read_point: _Optional[int] = ...) -> None: ...
