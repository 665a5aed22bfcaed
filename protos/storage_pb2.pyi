from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    STALE_EPOCH: _ClassVar[ErrorReason]
    EPOCH_AHEAD: _ClassVar[ErrorReason]
    UNKNOWN_VOLUME: _ClassVar[ErrorReason]
    UNKNOWN_SEGMENT: _ClassVar[ErrorReason]
    BAD_RECORD: _ClassVar[ErrorReason]
    CHECKSUM_MISMATCH: _ClassVar[ErrorReason]
    LSN_CONFLICT: _ClassVar[ErrorReason]
    PAYLOAD_TOO_LARGE: _ClassVar[ErrorReason]
    SEGMENT_EXISTS: _ClassVar[ErrorReason]
    BAD_DELTA: _ClassVar[ErrorReason]
    DISK_FULL: _ClassVar[ErrorReason]

class RecordKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORD_KIND_UNSPECIFIED: _ClassVar[RecordKind]
    FULL_PAGE: _ClassVar[RecordKind]
    PAGE_DELTA: _ClassVar[RecordKind]

class ReadStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ_STATUS_UNSPECIFIED: _ClassVar[ReadStatus]
    READ_OK: _ClassVar[ReadStatus]
    READ_BEHIND: _ClassVar[ReadStatus]
    READ_GARBAGE_COLLECTED: _ClassVar[ReadStatus]
    READ_CORRUPT: _ClassVar[ReadStatus]
ERROR_REASON_UNSPECIFIED: ErrorReason
STALE_EPOCH: ErrorReason
EPOCH_AHEAD: ErrorReason
UNKNOWN_VOLUME: ErrorReason
UNKNOWN_SEGMENT: ErrorReason
BAD_RECORD: ErrorReason
CHECKSUM_MISMATCH: ErrorReason
LSN_CONFLICT: ErrorReason
PAYLOAD_TOO_LARGE: ErrorReason
SEGMENT_EXISTS: ErrorReason
BAD_DELTA: ErrorReason
DISK_FULL: ErrorReason
RECORD_KIND_UNSPECIFIED: RecordKind
FULL_PAGE: RecordKind
PAGE_DELTA: RecordKind
READ_STATUS_UNSPECIFIED: ReadStatus
READ_OK: ReadStatus
READ_BEHIND: ReadStatus
READ_GARBAGE_COLLECTED: ReadStatus
READ_CORRUPT: ReadStatus

class RedoRecord(_message.Message):
    __slots__ = ("lsn", "pg", "page", "pg_prev_lsn", "page_prev_lsn", "kind", "payload", "consistency_point", "epoch", "crc32")
    LSN_FIELD_NUMBER: _ClassVar[int]
    PG_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    PG_PREV_LSN_FIELD_NUMBER: _ClassVar[int]
    PAGE_PREV_LSN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_POINT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    pg: int
    page: int
    pg_prev_lsn: int
    page_prev_lsn: int
    kind: RecordKind
    payload: bytes
    consistency_point: bool
    epoch: int
    crc32: int
    def __init__(self, lsn: _Optional[int] = ..., pg: _Optional[int] = ..., page: _Optional[int] = ..., pg_prev_lsn: _Optional[int] = ..., page_prev_lsn: _Optional[int] = ..., kind: _Optional[_Union[RecordKind, str]] = ..., payload: _Optional[bytes] = ..., consistency_point: _Optional[bool] = ..., epoch: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class StorageNodeInfo(_message.Message):
    __slots__ = ("node_id", "az", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    az: str
    address: str
    def __init__(self, node_id: _Optional[str] = ..., az: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class PgPlacement(_message.Message):
    __slots__ = ("pg", "segments")
    PG_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    pg: int
    segments: _containers.RepeatedCompositeFieldContainer[StorageNodeInfo]
    def __init__(self, pg: _Optional[int] = ..., segments: _Optional[_Iterable[_Union[StorageNodeInfo, _Mapping]]] = ...) -> None: ...

class VolumeDescriptor(_message.Message):
    __slots__ = ("volume_id", "version", "page_size", "pg_size_pages", "max_size_bytes", "pgs", "lsn_allocation_limit")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PG_SIZE_PAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PGS_FIELD_NUMBER: _ClassVar[int]
    LSN_ALLOCATION_LIMIT_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    version: int
    page_size: int
    pg_size_pages: int
    max_size_bytes: int
    pgs: _containers.RepeatedCompositeFieldContainer[PgPlacement]
    lsn_allocation_limit: int
    def __init__(self, volume_id: _Optional[str] = ..., version: _Optional[int] = ..., page_size: _Optional[int] = ..., pg_size_pages: _Optional[int] = ..., max_size_bytes: _Optional[int] = ..., pgs: _Optional[_Iterable[_Union[PgPlacement, _Mapping]]] = ..., lsn_allocation_limit: _Optional[int] = ...) -> None: ...

class TruncationRange(_message.Message):
    __slots__ = ("epoch", "first_lsn", "last_lsn")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FIRST_LSN_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    first_lsn: int
    last_lsn: int
    def __init__(self, epoch: _Optional[int] = ..., first_lsn: _Optional[int] = ..., last_lsn: _Optional[int] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("volume_id", "epoch", "records", "vdl", "min_read_point")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    VDL_FIELD_NUMBER: _ClassVar[int]
    MIN_READ_POINT_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    epoch: int
    records: _containers.RepeatedCompositeFieldContainer[RedoRecord]
    vdl: int
    min_read_point: int
    def __init__(self, volume_id: _Optional[str] = ..., epoch: _Optional[int] = ..., records: _Optional[_Iterable[_Union[RedoRecord, _Mapping]]] = ..., vdl: _Optional[int] = ..., min_read_point: _Optional[int] = ...) -> None: ...

class SegmentAck(_message.Message):
    __slots__ = ("pg", "scl")
    PG_FIELD_NUMBER: _ClassVar[int]
    SCL_FIELD_NUMBER: _ClassVar[int]
    pg: int
    scl: int
    def __init__(self, pg: _Optional[int] = ..., scl: _Optional[int] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[SegmentAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[SegmentAck, _Mapping]]] = ...) -> None: ...

class AppendStreamRequest(_message.Message):
    __slots__ = ("seq", "append")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    seq: int
    append: AppendRequest
    def __init__(self, seq: _Optional[int] = ..., append: _Optional[_Union[AppendRequest, _Mapping]] = ...) -> None: ...

class AppendStreamResponse(_message.Message):
    __slots__ = ("seq", "append", "error_reason", "error_code", "error_message", "error_pg", "error_segment_epoch")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_PG_FIELD_NUMBER: _ClassVar[int]
    ERROR_SEGMENT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    append: AppendResponse
    error_reason: ErrorReason
    error_code: int
    error_message: str
    error_pg: int
    error_segment_epoch: int
    def __init__(self, seq: _Optional[int] = ..., append: _Optional[_Union[AppendResponse, _Mapping]] = ..., error_reason: _Optional[_Union[ErrorReason, str]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., error_pg: _Optional[int] = ..., error_segment_epoch: _Optional[int] = ...) -> None: ...

class ReadPageRequest(_message.Message):
    __slots__ = ("volume_id", "epoch", "pg", "page", "read_lsn")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PG_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    READ_LSN_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    epoch: int
    pg: int
    page: int
    read_lsn: int
    def __init__(self, volume_id: _Optional[str] = ..., epoch: _Optional[int] = ..., pg: _Optional[int] = ..., page: _Optional[int] = ..., read_lsn: _Optional[int] = ...) -> None: ...

class ReadPageResponse(_message.Message):
    __slots__ = ("status", "data", "page_lsn", "scl")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PAGE_LSN_FIELD_NUMBER: _ClassVar[int]
    SCL_FIELD_NUMBER: _ClassVar[int]
    status: ReadStatus
    data: bytes
    page_lsn: int
    scl: int
    def __init__(self, status: _Optional[_Union[ReadStatus, str]] = ..., data: _Optional[bytes] = ..., page_lsn: _Optional[int] = ..., scl: _Optional[int] = ...) -> None: ...

class CreateSegmentRequest(_message.Message):
    __slots__ = ("volume_id", "epoch", "pg", "first_page", "page_count", "page_size", "peers")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PG_FIELD_NUMBER: _ClassVar[int]
    FIRST_PAGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    epoch: int
    pg: int
    first_page: int
    page_count: int
    page_size: int
    peers: _containers.RepeatedCompositeFieldContainer[StorageNodeInfo]
    def __init__(self, volume_id: _Optional[str] = ..., epoch: _Optional[int] = ..., pg: _Optional[int] = ..., first_page: _Optional[int] = ..., page_count: _Optional[int] = ..., page_size: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[StorageNodeInfo, _Mapping]]] = ...) -> None: ...

class CreateSegmentResponse(_message.Message):
    __slots__ = ("created",)
    CREATED_FIELD_NUMBER: _ClassVar[int]
    created: bool
    def __init__(self, created: _Optional[bool] = ...) -> None: ...

class PutDescriptorRequest(_message.Message):
    __slots__ = ("epoch", "descriptor")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    descriptor: VolumeDescriptor
    def __init__(self, epoch: _Optional[int] = ..., descriptor: _Optional[_Union[VolumeDescriptor, _Mapping]] = ...) -> None: ...

class PutDescriptorResponse(_message.Message):
    __slots__ = ("stored_version",)
    STORED_VERSION_FIELD_NUMBER: _ClassVar[int]
    stored_version: int
    def __init__(self, stored_version: _Optional[int] = ...) -> None: ...

class SealRequest(_message.Message):
    __slots__ = ("volume_id", "pg", "epoch", "truncations")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PG_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    pg: int
    epoch: int
    truncations: _containers.RepeatedCompositeFieldContainer[TruncationRange]
    def __init__(self, volume_id: _Optional[str] = ..., pg: _Optional[int] = ..., epoch: _Optional[int] = ..., truncations: _Optional[_Iterable[_Union[TruncationRange, _Mapping]]] = ...) -> None: ...

class SealResponse(_message.Message):
    __slots__ = ("epoch", "scl")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SCL_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    scl: int
    def __init__(self, epoch: _Optional[int] = ..., scl: _Optional[int] = ...) -> None: ...

class SegmentInfo(_message.Message):
    __slots__ = ("volume_id", "pg", "first_page", "page_count", "page_size", "peers", "epoch", "truncations", "scl", "highest_lsn", "vdl_hint", "gc_floor_lsn", "record_count", "corrupt_records", "descriptor")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PG_FIELD_NUMBER: _ClassVar[int]
    FIRST_PAGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    SCL_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_LSN_FIELD_NUMBER: _ClassVar[int]
    VDL_HINT_FIELD_NUMBER: _ClassVar[int]
    GC_FLOOR_LSN_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_RECORDS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    pg: int
    first_page: int
    page_count: int
    page_size: int
    peers: _containers.RepeatedCompositeFieldContainer[StorageNodeInfo]
    epoch: int
    truncations: _containers.RepeatedCompositeFieldContainer[TruncationRange]
    scl: int
    highest_lsn: int
    vdl_hint: int
    gc_floor_lsn: int
    record_count: int
    corrupt_records: int
    descriptor: VolumeDescriptor
    def __init__(self, volume_id: _Optional[str] = ..., pg: _Optional[int] = ..., first_page: _Optional[int] = ..., page_count: _Optional[int] = ..., page_size: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[StorageNodeInfo, _Mapping]]] = ..., epoch: _Optional[int] = ..., truncations: _Optional[_Iterable[_Union[TruncationRange, _Mapping]]] = ..., scl: _Optional[int] = ..., highest_lsn: _Optional[int] = ..., vdl_hint: _Optional[int] = ..., gc_floor_lsn: _Optional[int] = ..., record_count: _Optional[int] = ..., corrupt_records: _Optional[int] = ..., descriptor: _Optional[_Union[VolumeDescriptor, _Mapping]] = ...) -> None: ...

class ListSegmentsRequest(_message.Message):
    __slots__ = ("volume_id",)
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    def __init__(self, volume_id: _Optional[str] = ...) -> None: ...

class ListSegmentsResponse(_message.Message):
    __slots__ = ("node_id", "az", "segments")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    az: str
    segments: _containers.RepeatedCompositeFieldContainer[SegmentInfo]
    def __init__(self, node_id: _Optional[str] = ..., az: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[SegmentInfo, _Mapping]]] = ...) -> None: ...

class RecordSummary(_message.Message):
    __slots__ = ("lsn", "pg_prev_lsn", "consistency_point")
    LSN_FIELD_NUMBER: _ClassVar[int]
    PG_PREV_LSN_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_POINT_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    pg_prev_lsn: int
    consistency_point: bool
    def __init__(self, lsn: _Optional[int] = ..., pg_prev_lsn: _Optional[int] = ..., consistency_point: _Optional[bool] = ...) -> None: ...

class RecordSummaryRequest(_message.Message):
    __slots__ = ("volume_id", "pg", "epoch", "after_lsn", "max_records")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PG_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    AFTER_LSN_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    pg: int
    epoch: int
    after_lsn: int
    max_records: int
    def __init__(self, volume_id: _Optional[str] = ..., pg: _Optional[int] = ..., epoch: _Optional[int] = ..., after_lsn: _Optional[int] = ..., max_records: _Optional[int] = ...) -> None: ...

class RecordSummaryResponse(_message.Message):
    __slots__ = ("scl", "records", "truncated_reply")
    SCL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_REPLY_FIELD_NUMBER: _ClassVar[int]
    scl: int
    records: _containers.RepeatedCompositeFieldContainer[RecordSummary]
    truncated_reply: bool
    def __init__(self, scl: _Optional[int] = ..., records: _Optional[_Iterable[_Union[RecordSummary, _Mapping]]] = ..., truncated_reply: _Optional[bool] = ...) -> None: ...

class FetchRecordsRequest(_message.Message):
    __slots__ = ("volume_id", "pg", "epoch", "after_lsn", "up_to_lsn", "lsns", "max_bytes", "requester_node_id", "requester_scl")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PG_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    AFTER_LSN_FIELD_NUMBER: _ClassVar[int]
    UP_TO_LSN_FIELD_NUMBER: _ClassVar[int]
    LSNS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_SCL_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    pg: int
    epoch: int
    after_lsn: int
    up_to_lsn: int
    lsns: _containers.RepeatedScalarFieldContainer[int]
    max_bytes: int
    requester_node_id: str
    requester_scl: int
    def __init__(self, volume_id: _Optional[str] = ..., pg: _Optional[int] = ..., epoch: _Optional[int] = ..., after_lsn: _Optional[int] = ..., up_to_lsn: _Optional[int] = ..., lsns: _Optional[_Iterable[int]] = ..., max_bytes: _Optional[int] = ..., requester_node_id: _Optional[str] = ..., requester_scl: _Optional[int] = ...) -> None: ...

class FetchRecordsResponse(_message.Message):
    __slots__ = ("records", "scl", "epoch", "truncations", "more")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SCL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[RedoRecord]
    scl: int
    epoch: int
    truncations: _containers.RepeatedCompositeFieldContainer[TruncationRange]
    more: bool
    def __init__(self, records: _Optional[_Iterable[_Union[RedoRecord, _Mapping]]] = ..., scl: _Optional[int] = ..., epoch: _Optional[int] = ..., truncations: _Optional[_Iterable[_Union[TruncationRange, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class NodeStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatusResponse(_message.Message):
    __slots__ = ("node_id", "az", "address", "uptime_ms", "segments", "data_size_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    DATA_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    az: str
    address: str
    uptime_ms: int
    segments: _containers.RepeatedCompositeFieldContainer[SegmentInfo]
    data_size_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., az: _Optional[str] = ..., address: _Optional[str] = ..., uptime_ms: _Optional[int] = ..., segments: _Optional[_Iterable[_Union[SegmentInfo, _Mapping]]] = ..., data_size_bytes: _Optional[int] = ...) -> None: ...
