"""Redo records: checksums and the page-delta format shared by writer and storage.

A page delta is a sequence of patches, each `<offset u16><length u16><bytes>`
(little endian), applied in order to the previous version of the page. Offsets and
lengths are 16-bit because SQLite pages are at most 65536 bytes; a change that
would need a 65536-byte patch is sent as a full page instead.
"""

from __future__ import annotations

import re
import struct
import zlib

from borealdb.protos import storage_pb2 as pb

FULL_PAGE = pb.FULL_PAGE
PAGE_DELTA = pb.PAGE_DELTA

_HEADER = struct.Struct("<QIQQQiBQ")  # lsn, pg, page, pg_prev, page_prev, kind, cpl, epoch
_PATCH = struct.Struct("<HH")
# Patches separated by at most _MERGE_GAP equal bytes are merged (a patch header costs 4 bytes).
_MERGE_GAP = 8
_GAP = b"\0" * (_MERGE_GAP + 1)
MAX_PAGE_SIZE = 65536


class DeltaError(ValueError):
    """A page delta that is malformed or does not fit the page."""


def record_crc(rec: pb.RedoRecord) -> int:
    """CRC-32 over every field of the record except the crc itself."""
    header = _HEADER.pack(
        rec.lsn, rec.pg, rec.page, rec.pg_prev_lsn, rec.page_prev_lsn, rec.kind, 1 if rec.consistency_point else 0, rec.epoch
    )
    return zlib.crc32(rec.payload, zlib.crc32(header))


def seal_record(rec: pb.RedoRecord) -> pb.RedoRecord:
    """Set the record's checksum (call after every other field is final)."""
    rec.crc32 = record_crc(rec)
    return rec


def record_ok(rec: pb.RedoRecord) -> bool:
    return rec.crc32 == record_crc(rec)


_NONZERO = re.compile(rb"[^\x00]")


def encode_delta(old: bytes, new: bytes) -> bytes | None:
    """Delta turning `old` into `new` (same length), or None if a full page is smaller.

    The differing bytes are found in C, not by a Python loop: XOR the pages (as big
    integers), then strip and search the zero runs of the result. Changed bytes closer
    than _MERGE_GAP go in one patch (a patch header costs 4 bytes)."""
    size = len(new)
    if len(old) != size:
        raise ValueError(f"page sizes differ: {len(old)} != {size}")
    if size > MAX_PAGE_SIZE:
        raise ValueError(f"page size {size} > {MAX_PAGE_SIZE}")
    if old == new:
        return b""
    x = (int.from_bytes(old, "little") ^ int.from_bytes(new, "little")).to_bytes(size, "little")
    pos = size - len(x.lstrip(b"\0"))   # first changed byte
    stop = len(x.rstrip(b"\0"))         # one past the last changed byte
    parts: list[bytes] = []
    total = 0
    while pos < stop:
        gap = x.find(_GAP, pos, stop)      # a run of zeros long enough to end the patch
        end = stop if gap < 0 else gap
        length = end - pos
        if length >= 65536:
            return None
        parts.append(_PATCH.pack(pos, length))
        parts.append(new[pos:end])
        total += _PATCH.size + length
        if total >= size:
            return None
        if gap < 0:
            break
        pos = _NONZERO.search(x, gap, stop).start()  # x[stop - 1] is nonzero: always found
    return b"".join(parts)


def apply_delta(base: bytes | None, delta: bytes, page_size: int) -> bytes:
    """Apply `delta` to `base` (None or empty: a zero page) and return the new page."""
    if base:
        if len(base) != page_size:
            raise DeltaError(f"base page is {len(base)} bytes, expected {page_size}")
        page = bytearray(base)
    else:
        page = bytearray(page_size)
    view = memoryview(delta)
    pos, end = 0, len(delta)
    while pos < end:
        if end - pos < _PATCH.size:
            raise DeltaError(f"truncated patch header at byte {pos}")
        offset, length = _PATCH.unpack_from(view, pos)
        pos += _PATCH.size
        if length == 0 or pos + length > end:
            raise DeltaError(f"patch at byte {pos - _PATCH.size} has bad length {length}")
        if offset + length > page_size:
            raise DeltaError(f"patch [{offset}, {offset + length}) is outside a {page_size}-byte page")
        page[offset : offset + length] = view[pos : pos + length]
        pos += length
    return bytes(page)


def check_delta(delta: bytes, page_size: int) -> None:
    """Raise DeltaError unless apply_delta would accept `delta` (walks the patch headers
    only: storage checks every record it receives, and building a page costs more)."""
    pos, end = 0, len(delta)
    unpack = _PATCH.unpack_from
    while pos < end:
        if end - pos < _PATCH.size:
            raise DeltaError(f"truncated patch header at byte {pos}")
        offset, length = unpack(delta, pos)
        pos += _PATCH.size
        if length == 0 or pos + length > end:
            raise DeltaError(f"patch at byte {pos - _PATCH.size} has bad length {length}")
        if offset + length > page_size:
            raise DeltaError(f"patch [{offset}, {offset + length}) is outside a {page_size}-byte page")
        pos += length


def check_payload(kind: int, payload: bytes, page_size: int) -> None:
    """Raise DeltaError unless the payload is well formed for a page of `page_size`."""
    if kind == FULL_PAGE:
        if len(payload) != page_size:
            raise DeltaError(f"full page image is {len(payload)} bytes, expected {page_size}")
    elif kind == PAGE_DELTA:
        check_delta(payload, page_size)
    else:
        raise DeltaError(f"unknown record kind {kind}")


def materialize(base: bytes | None, kind: int, payload: bytes, page_size: int) -> bytes:
    """The page after applying one record to `base`."""
    if kind == FULL_PAGE:
        if len(payload) != page_size:
            raise DeltaError(f"full page image is {len(payload)} bytes, expected {page_size}")
        return bytes(payload)
    if kind == PAGE_DELTA:
        return apply_delta(base, payload, page_size)
    raise DeltaError(f"unknown record kind {kind}")
