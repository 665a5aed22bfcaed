"""An append-only, chunked, framed log: the durable home of a segment's records.

Each frame is a 16-byte header followed by a body (a serialized RedoRecord):

    magic u32 | body_length u32 | body_crc32 u32 | header_crc32 u32 (over the first 12 bytes)

Frames are only ever appended. The log is split into chunk files
(`000001.log`, `000002.log`, ...); a new chunk starts once the current one reaches
`chunk_size_bytes`. A chunk is deleted as a whole once nothing live remains in it
(see StorageEngine.checkpoint_once), which is how log space is reclaimed.

A frame's location is (chunk_no, offset, frame_length). Writes use pwrite on a raw fd
(no user-space buffer), so durability is exactly "fsync returned" (sync()).
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Iterator

MAGIC = 0x42524C47  # "BRLG"
_HDR = struct.Struct("<IIII")
HEADER_SIZE = _HDR.size
MAX_FRAME_BODY_BYTES = 256 * 1024 * 1024


class FrameCorrupt(Exception):
    """A frame whose header or body does not match its checksum."""


def encode_frame(body: bytes) -> bytes:
    head = struct.pack("<III", MAGIC, len(body), zlib.crc32(body))
    return head + struct.pack("<I", zlib.crc32(head)) + body


def decode_header(buf: bytes) -> int | None:
    """Body length of a well-formed header, or None."""
    if len(buf) < HEADER_SIZE:
        return None
    magic, length, _body_crc, head_crc = _HDR.unpack_from(buf, 0)
    if magic != MAGIC or head_crc != zlib.crc32(buf[:12]) or length > MAX_FRAME_BODY_BYTES:
        return None
    return length


def check_frame(frame: bytes) -> bytes:
    """The body of a complete frame, or FrameCorrupt."""
    length = decode_header(frame)
    if length is None:
        raise FrameCorrupt("bad frame header")
    if len(frame) != HEADER_SIZE + length:
        raise FrameCorrupt(f"frame is {len(frame)} bytes, header says {HEADER_SIZE + length}")
    body = frame[HEADER_SIZE:]
    if zlib.crc32(body) != _HDR.unpack_from(frame, 0)[2]:
        raise FrameCorrupt("frame body checksum mismatch")
    return bytes(body)


@dataclass(frozen=True)
class ScannedFrame:
    chunk: int
    offset: int
    length: int          # whole frame, header included
    body: bytes | None   # None: the frame is corrupt (length known, checksum wrong)


class ChunkedLog:
    """One directory of chunk files. Callers serialize appends; reads are lock-free (pread)."""

    def __init__(self, directory: str, chunk_size_bytes: int):
        self.directory = directory
        self.chunk_size_bytes = chunk_size_bytes
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()  # guards _fds / current chunk switch
        self._cur = 0
        self._cur_size = 0
        os.makedirs(directory, exist_ok=True)

    # ---- files ----------------------------------------------------------------
    def _path(self, chunk: int) -> str:
        return os.path.join(self.directory, f"{chunk:06d}.log")

    def chunk_numbers(self) -> list[int]:
        out = []
        for name in os.listdir(self.directory):
            if name.endswith(".log") and name[:-4].isdigit():
                out.append(int(name[:-4]))
        return sorted(out)

    def _fd(self, chunk: int) -> int:
        fd = self._fds.get(chunk)
        if fd is None:
            with self._lock:
                fd = self._fds.get(chunk)
                if fd is None:
                    fd = os.open(self._path(chunk), os.O_RDWR | os.O_CREAT, 0o644)
                    self._fds[chunk] = fd
        return fd

    def open(self) -> None:
        chunks = self.chunk_numbers()
        self._cur = chunks[-1] if chunks else 1
        fd = self._fd(self._cur)
        self._cur_size = os.fstat(fd).st_size
        if not chunks:
            fsync_dir(self.directory)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds.clear()

    def end_position(self) -> tuple[int, int]:
        return (self._cur, self._cur_size)

    def size_bytes(self) -> int:
        total = 0
        for c in self.chunk_numbers():
            try:
                total += os.path.getsize(self._path(c))
            except OSError:
                pass
        return total

    # ---- writing ----------------------------------------------------------------
    def append(self, bodies: list[bytes]) -> list[tuple[int, int, int]]:
        """Write frames (not yet durable: call sync()). Returns their locations.

        On an OSError nothing of this call remains in the file (it is cut back)."""
        locs: list[tuple[int, int, int]] = []
        frames = [encode_frame(b) for b in bodies]
        start_chunk, start_size = self._cur, self._cur_size
        try:
            for frame in frames:
                if self._cur_size > 0 and self._cur_size + len(frame) > self.chunk_size_bytes:
                    self._rotate()
                fd = self._fd(self._cur)
                written = os.pwrite(fd, frame, self._cur_size)
                if written != len(frame):
                    raise OSError(errno.ENOSPC, "short write")
                locs.append((self._cur, self._cur_size, len(frame)))
                self._cur_size += len(frame)
        except OSError:
            self._cut_back(start_chunk, start_size)
            raise
        return locs

    def _rotate(self) -> None:
        os.fsync(self._fd(self._cur))  # the old chunk is complete and durable
        self._cur += 1
        self._cur_size = 0
        self._fd(self._cur)
        fsync_dir(self.directory)

    def _cut_back(self, chunk: int, size: int) -> None:
        try:
            for c in list(self._fds):
                if c > chunk:
                    os.close(self._fds.pop(c))
                    os.unlink(self._path(c))
            os.ftruncate(self._fd(chunk), size)
        except OSError:
            pass
        self._cur, self._cur_size = chunk, size

    def sync(self) -> None:
        fd = self._fds.get(self._cur)
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as exc:  # a chunk deleted concurrently: nothing to sync
            if exc.errno != errno.EBADF:
                raise

    def delete_chunk(self, chunk: int) -> None:
        if chunk == self._cur:
            raise ValueError("cannot delete the current chunk")
        with self._lock:
            fd = self._fds.pop(chunk, None)
            if fd is not None:
                os.close(fd)
        try:
            os.unlink(self._path(chunk))
        except FileNotFoundError:
            pass
        fsync_dir(self.directory)

    # ---- reading ----------------------------------------------------------------
    def read(self, chunk: int, offset: int, length: int) -> bytes:
        try:
            frame = os.pread(self._fd(chunk), length, offset)
        except OSError as exc:
            raise FrameCorrupt(f"cannot read chunk {chunk}: {exc}") from exc
        return check_frame(frame)

    def scan(self, from_chunk: int, from_offset: int) -> Iterator[ScannedFrame]:
        """Frames at or after (from_chunk, from_offset), in order.

        A torn tail (crash during a write that was never acknowledged) in the last
        chunk is cut off. A frame with a good header but a bad body in the middle is
        reported with body=None."""
        chunks = [c for c in self.chunk_numbers() if c >= from_chunk]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            fd = self._fd(chunk)
            size = os.fstat(fd).st_size
            pos = from_offset if chunk == from_chunk else 0
            while pos < size:
                head = os.pread(fd, HEADER_SIZE, pos)
                length = decode_header(head)
                if length is None or pos + HEADER_SIZE + length > size:
                    if last:
                        os.ftruncate(fd, pos)
                        os.fsync(fd)
                        size = pos
                        break
                    # a bad header in a completed chunk: the rest of it is unreadable
                    yield ScannedFrame(chunk, pos, size - pos, None)
                    break
                frame = os.pread(fd, HEADER_SIZE + length, pos)
                try:
                    body = check_frame(frame)
                except FrameCorrupt:
                    body = None
                    if last and pos + len(frame) == size:
                        # the last frame of the log with a bad body: a torn write
                        os.ftruncate(fd, pos)
                        os.fsync(fd)
                        size = pos
                        break
                yield ScannedFrame(chunk, pos, len(frame), body)
                pos += len(frame)
            if last:
                self._cur, self._cur_size = chunk, size


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """tmp + fsync + rename + directory fsync."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")
