from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PageRecord(_message.Message):
    __slots__ = ("page", "lsn", "kind", "payload")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    page: int
    lsn: int
    kind: int
    payload: bytes
    def __init__(self, page: _Optional[int] = ..., lsn: _Optional[int] = ..., kind: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class RedoGroup(_message.Message):
    __slots__ = ("commit_lsn", "commit_time_us", "records")
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    commit_lsn: int
    commit_time_us: int
    records: _containers.RepeatedCompositeFieldContainer[PageRecord]
    def __init__(self, commit_lsn: _Optional[int] = ..., commit_time_us: _Optional[int] = ..., records: _Optional[_Iterable[_Union[PageRecord, _Mapping]]] = ...) -> None: ...

class PgTip(_message.Message):
    __slots__ = ("pg", "lsn")
    PG_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    pg: int
    lsn: int
    def __init__(self, pg: _Optional[int] = ..., lsn: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("writer_id", "epoch", "start_lsn", "pg_tips", "page_size", "pg_size_pages")
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    PG_TIPS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PG_SIZE_PAGES_FIELD_NUMBER: _ClassVar[int]
    writer_id: str
    epoch: int
    start_lsn: int
    pg_tips: _containers.RepeatedCompositeFieldContainer[PgTip]
    page_size: int
    pg_size_pages: int
    def __init__(self, writer_id: _Optional[str] = ..., epoch: _Optional[int] = ..., start_lsn: _Optional[int] = ..., pg_tips: _Optional[_Iterable[_Union[PgTip, _Mapping]]] = ..., page_size: _Optional[int] = ..., pg_size_pages: _Optional[int] = ...) -> None: ...

class RedoMessage(_message.Message):
    __slots__ = ("hello", "groups", "vdl", "writer_time_us")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    VDL_FIELD_NUMBER: _ClassVar[int]
    WRITER_TIME_US_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    groups: _containers.RepeatedCompositeFieldContainer[RedoGroup]
    vdl: int
    writer_time_us: int
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., groups: _Optional[_Iterable[_Union[RedoGroup, _Mapping]]] = ..., vdl: _Optional[int] = ..., writer_time_us: _Optional[int] = ...) -> None: ...

class ReplicaMessage(_message.Message):
    __slots__ = ("replica_id", "az", "min_read_point", "applied_lsn", "lag_ms", "address")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    MIN_READ_POINT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LSN_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    az: str
    min_read_point: int
    applied_lsn: int
    lag_ms: float
    address: str
    def __init__(self, replica_id: _Optional[str] = ..., az: _Optional[str] = ..., min_read_point: _Optional[int] = ..., applied_lsn: _Optional[int] = ..., lag_ms: _Optional[float] = ..., address: _Optional[str] = ...) -> None: ...
