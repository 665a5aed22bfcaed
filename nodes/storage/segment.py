"""One segment: a storage node's replica of one protection group (PG).

State on disk (one directory per segment):
    meta.json     parameters, peers, epoch, truncation ranges, gc floor, descriptor
                  (written atomically: tmp + fsync + rename + dir fsync)
    log/          the append-only framed record log (segment_log.ChunkedLog)
    ver/          materialized page versions, framed the same way; each body is a
                  RedoRecord(kind=FULL_PAGE, lsn=version LSN, page=page) with its crc32
    index.ckpt    checkpoint of the in-memory index + the log positions it covers

In memory: the record index (lsn -> RecMeta), the records of each page, the page
versions, and the chain state (SCL + successor map for records above the SCL).

Every method here expects the caller to hold `self.lock`.
"""

from __future__ import annotations

import bisect
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass

from borealdb.nodes.log import get_logger
from borealdb.nodes import redo
from borealdb.protos import storage_pb2 as pb

import threading

from .segment_log import ChunkedLog, FrameCorrupt, write_atomic

_log = get_logger(component="segment")

_REC = struct.Struct("<QQQQBBQIIQId?")
_VER = struct.Struct("<QQIQIId")
_CKPT_MAGIC = b"BRLCKPT1"


class RecMeta:
    __slots__ = ("lsn", "page", "prev", "page_prev", "kind", "cpl", "epoch", "crc", "chunk", "off", "flen", "ts", "corrupt")

    def __init__(self, lsn, page, prev, page_prev, kind, cpl, epoch, crc, chunk, off, flen, ts, corrupt=False):
        self.lsn, self.page, self.prev, self.page_prev = lsn, page, prev, page_prev
        self.kind, self.cpl, self.epoch, self.crc = kind, cpl, epoch, crc
        self.chunk, self.off, self.flen, self.ts, self.corrupt = chunk, off, flen, ts, corrupt

    @classmethod
    def of(cls, rec: pb.RedoRecord, loc: tuple[int, int, int], ts: float) -> "RecMeta":
        return cls(rec.lsn, rec.page, rec.pg_prev_lsn, rec.page_prev_lsn, rec.kind, bool(rec.consistency_point),
                   rec.epoch, rec.crc32, loc[0], loc[1], loc[2], ts)

    def same_record(self, rec: pb.RedoRecord) -> bool:
        return (self.lsn == rec.lsn and self.page == rec.page and self.prev == rec.pg_prev_lsn
                and self.page_prev == rec.page_prev_lsn and self.kind == rec.kind
                and self.cpl == bool(rec.consistency_point) and self.epoch == rec.epoch and self.crc == rec.crc32)


class VerMeta:
    __slots__ = ("lsn", "chunk", "off", "flen", "crc", "ts")

    def __init__(self, lsn, chunk, off, flen, crc, ts):
        self.lsn, self.chunk, self.off, self.flen, self.crc, self.ts = lsn, chunk, off, flen, crc, ts


@dataclass
class SegmentParams:
    volume_id: str
    pg: int
    first_page: int
    page_count: int
    page_size: int


def truncated(ranges, lsn: int, epoch: int) -> bool:
    for t in ranges:
        if epoch < t.epoch and t.first_lsn <= lsn <= t.last_lsn:
            return True
    return False


def union_ranges(old: list[pb.TruncationRange], new) -> list[pb.TruncationRange]:
    seen = {(t.epoch, t.first_lsn, t.last_lsn) for t in old}
    out = list(old)
    for t in new:
        key = (t.epoch, t.first_lsn, t.last_lsn)
        if key not in seen:
            seen.add(key)
            out.append(pb.TruncationRange(epoch=t.epoch, first_lsn=t.first_lsn, last_lsn=t.last_lsn))
    out.sort(key=lambda t: (t.epoch, t.first_lsn, t.last_lsn))
    return out


class Segment:
    def __init__(self, directory: str, params: SegmentParams, chunk_size_bytes: int):
        self.dir = directory
        self.params = params
        self.lock = threading.RLock()
        self.peers: list[pb.StorageNodeInfo] = []
        self.epoch = 0
        self.truncations: list[pb.TruncationRange] = []
        self.gc_floor = 0           # reads below it answer READ_GARBAGE_COLLECTED
        self.gc_chain_lsn = 0       # highest chain LSN whose record was collected (chain base)
        self.descriptor: pb.VolumeDescriptor | None = None
        self.vdl_hint = 0
        self.min_read_point = 0
        self.scl = 0
        self.succ: dict[int, int] = {}          # prev -> lsn, for records above the SCL
        self.records: dict[int, RecMeta] = {}
        self.lsns: list[int] = []               # sorted LSNs of held records
        self.page_lsns: dict[int, list[int]] = {}
        self.versions: dict[int, list[VerMeta]] = {}
        # written to the log, not yet fsynced/indexed: lsn -> (record, location, receive time)
        self.pending: dict[int, tuple[pb.RedoRecord, tuple[int, int, int], float]] = {}
        self.dirty_pages: set[int] = set()      # pages with records above their newest version
        self.lost_pages: set[int] = set()       # a corrupt version that could not be rebuilt
        self.peer_scl: dict[str, tuple[int, float]] = {}  # requester node -> (scl, when)
        self.corrupt_hint = False                # set whenever a record is marked corrupt
        self.log = ChunkedLog(os.path.join(directory, "log"), chunk_size_bytes)
        self.ver = ChunkedLog(os.path.join(directory, "ver"), chunk_size_bytes)
        self.frames_replayed = 0
        self.ckpt_pos: tuple[int, int] = (0, 0)
        self._ver_ckpt_pos: tuple[int, int] = (0, 0)

    # ---- meta -------------------------------------------------------------------
    @property
    def key(self) -> tuple[str, int]:
        return (self.params.volume_id, self.params.pg)

    def save_meta(self) -> None:
        p = self.params
        doc = {
            "volume_id": p.volume_id, "pg": p.pg, "first_page": p.first_page, "page_count": p.page_count,
            "page_size": p.page_size,
            "peers": [{"node_id": n.node_id, "az": n.az, "address": n.address} for n in self.peers],
            "epoch": self.epoch,
            "truncations": [[t.epoch, t.first_lsn, t.last_lsn] for t in self.truncations],
            "gc_floor": self.gc_floor, "gc_chain_lsn": self.gc_chain_lsn, "lost_pages": sorted(self.lost_pages),
            "descriptor": self.descriptor.SerializeToString().hex() if self.descriptor is not None else None,
        }
        write_atomic(os.path.join(self.dir, "meta.json"), json.dumps(doc, sort_keys=True).encode())

    @staticmethod
    def load_params(directory: str) -> tuple[SegmentParams, dict]:
        with open(os.path.join(directory, "meta.json"), "rb") as f:
            doc = json.loads(f.read())
        return SegmentParams(doc["volume_id"], doc["pg"], doc["first_page"], doc["page_count"], doc["page_size"]), doc

    def apply_meta(self, doc: dict) -> None:
        self.peers = [pb.StorageNodeInfo(**n) for n in doc["peers"]]
        self.epoch = doc["epoch"]
        self.truncations = [pb.TruncationRange(epoch=e, first_lsn=a, last_lsn=b) for e, a, b in doc["truncations"]]
        self.gc_floor = doc.get("gc_floor", 0)
        self.gc_chain_lsn = doc.get("gc_chain_lsn", 0)
        self.lost_pages = set(doc.get("lost_pages", []))
        d = doc.get("descriptor")
        self.descriptor = pb.VolumeDescriptor.FromString(bytes.fromhex(d)) if d else None

    # ---- index ------------------------------------------------------------------
    def is_truncated(self, lsn: int, epoch: int) -> bool:
        return truncated(self.truncations, lsn, epoch)

    def highest_lsn(self) -> int:
        return self.lsns[-1] if self.lsns else self.gc_chain_lsn

    def index_record(self, meta: RecMeta) -> None:
        """Add a durable record to the index and advance the SCL."""
        if meta.lsn in self.records:
            return
        self.records[meta.lsn] = meta
        if meta.corrupt:
            self.corrupt_hint = True
        if not self.lsns or meta.lsn > self.lsns[-1]:
            self.lsns.append(meta.lsn)
        else:
            bisect.insort(self.lsns, meta.lsn)
        pl = self.page_lsns.setdefault(meta.page, [])
        if not pl or meta.lsn > pl[-1]:
            pl.append(meta.lsn)
        else:
            bisect.insort(pl, meta.lsn)
        self.dirty_pages.add(meta.page)
        if meta.lsn > self.scl:
            if meta.prev == self.scl:
                self.scl = meta.lsn
                while self.scl in self.succ:
                    self.scl = self.succ.pop(self.scl)
            elif meta.prev > self.scl:
                self.succ[meta.prev] = meta.lsn
            elif meta.prev < self.scl:
                # a backlink into the already-complete chain: only valid as the chain
                # continuation, which it is not (a fork); keep it out of the SCL.
                pass

    def check_invariants(self) -> None:
        """Cheap invariants (tests call this; the engine after every append)."""
        assert self.scl <= max(self.highest_lsn(), self.gc_chain_lsn), (self.scl, self.highest_lsn())
        assert self.gc_chain_lsn <= self.scl or not self.lsns, (self.gc_chain_lsn, self.scl)

    def recompute_chain(self, cap: int | None = None) -> None:
        """Rebuild SCL and successor map (after truncation or reload).

        Every held record at or below the current SCL is part of the chain, so the
        new base is the highest held (or collected) LSN <= min(SCL, cap); the chain
        is then walked forward through the successor map."""
        limit = self.scl if cap is None else min(self.scl, cap)
        i = bisect.bisect_right(self.lsns, limit)
        base = self.lsns[i - 1] if i else 0
        if self.gc_chain_lsn <= limit:
            base = max(base, self.gc_chain_lsn)
        self.scl = base
        self.succ = {self.records[l].prev: l for l in self.lsns[i:]}
        while self.scl in self.succ:
            self.scl = self.succ.pop(self.scl)
        self.succ = {p: l for p, l in self.succ.items() if l > self.scl}

    def drop_record(self, lsn: int) -> RecMeta | None:
        m = self.records.pop(lsn, None)
        if m is None:
            return None
        i = bisect.bisect_left(self.lsns, lsn)
        if i < len(self.lsns) and self.lsns[i] == lsn:
            del self.lsns[i]
        pl = self.page_lsns.get(m.page)
        if pl:
            j = bisect.bisect_left(pl, lsn)
            if j < len(pl) and pl[j] == lsn:
                del pl[j]
            if not pl:
                del self.page_lsns[m.page]
        return m

    def apply_truncations(self) -> int:
        """Drop held records inside truncation ranges; returns how many."""
        dropped = 0
        lowest = None
        for lsn in [l for l, m in self.records.items() if self.is_truncated(l, m.epoch)]:
            m = self.drop_record(lsn)
            dropped += 1
            lowest = lsn if lowest is None else min(lowest, lsn)
            # versions that may include the dropped record are no longer valid
            vs = self.versions.get(m.page)
            if vs:
                self.versions[m.page] = [v for v in vs if v.lsn < lsn]
            self.dirty_pages.add(m.page)
        for lsn in [l for l, (r, _loc, _ts) in self.pending.items() if self.is_truncated(l, r.epoch)]:
            del self.pending[lsn]
        if lowest is not None:
            self.recompute_chain(lowest - 1)
        return dropped

    def corrupt_lsns(self) -> list[int]:
        return sorted(l for l, m in self.records.items() if m.corrupt)

    # ---- reading from disk ------------------------------------------------------
    def load_record(self, m: RecMeta) -> pb.RedoRecord | None:
        """The record from disk, verified; None (and marked corrupt) on any mismatch."""
        if m.corrupt:
            return None
        try:
            body = self.log.read(m.chunk, m.off, m.flen)
            rec = pb.RedoRecord.FromString(body)
            ok = redo.record_ok(rec) and rec.lsn == m.lsn and rec.crc32 == m.crc
        except (FrameCorrupt, Exception):  # noqa: BLE001 - any decode failure is corruption
            ok = False
        if not ok:
            m.corrupt = True
            self.corrupt_hint = True
            _log.warning("record_corrupt", volume=self.params.volume_id, pg=self.params.pg, lsn=m.lsn,
                         chunk=m.chunk, offset=m.off)
            return None
        return rec

    def load_version(self, page: int, v: VerMeta) -> bytes | None:
        try:
            body = self.ver.read(v.chunk, v.off, v.flen)
            rec = pb.RedoRecord.FromString(body)
            ok = (redo.record_ok(rec) and rec.lsn == v.lsn and rec.page == page and rec.crc32 == v.crc
                  and len(rec.payload) == self.params.page_size)
        except Exception:  # noqa: BLE001
            ok = False
        return rec.payload if ok else None

    def drop_version(self, page: int, v: VerMeta) -> None:
        vs = self.versions.get(page)
        if vs and v in vs:
            vs.remove(v)
            if not vs:
                del self.versions[page]
        self.dirty_pages.add(page)

    # ---- checkpoint -------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Serialized index; caller has synced both logs up to their end positions."""
        head = {
            "log_pos": list(self.log.end_position()), "ver_pos": list(self.ver.end_position()),
            "vdl_hint": self.vdl_hint, "min_read_point": self.min_read_point, "scl": self.scl,
            "records": len(self.records) + len(self.pending), "versions": sum(len(v) for v in self.versions.values()),
        }
        parts = []
        for m in self.records.values():
            parts.append(_REC.pack(m.lsn, m.page, m.prev, m.page_prev, m.kind, m.cpl, m.epoch, m.crc, m.chunk, m.off,
                                   m.flen, m.ts, m.corrupt))
        for rec, loc, ts in self.pending.values():
            parts.append(_REC.pack(rec.lsn, rec.page, rec.pg_prev_lsn, rec.page_prev_lsn, rec.kind,
                                   bool(rec.consistency_point), rec.epoch, rec.crc32, loc[0], loc[1], loc[2], ts, False))
        for page, vs in self.versions.items():
            for v in vs:
                parts.append(_VER.pack(page, v.lsn, v.chunk, v.off, v.flen, v.crc, v.ts))
        hj = json.dumps(head).encode()
        body = _CKPT_MAGIC + struct.pack("<I", len(hj)) + hj + b"".join(parts)
        return body + struct.pack("<I", zlib.crc32(body))

    def load_checkpoint(self) -> bool:
        path = os.path.join(self.dir, "index.ckpt")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return False
        if len(data) < 16 or not data.startswith(_CKPT_MAGIC) or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
            return False  # unusable: fall back to a full replay
        (hl,) = struct.unpack_from("<I", data, 8)
        head = json.loads(data[12:12 + hl])
        pos = 12 + hl
        # records at or below the checkpointed SCL were a complete chain then
        self.scl = max(head["scl"], self.gc_chain_lsn)
        for _ in range(head["records"]):
            t = _REC.unpack_from(data, pos)
            pos += _REC.size
            m = RecMeta(*t)
            if not self.is_truncated(m.lsn, m.epoch):
                self.index_record(m)  # (records GC dropped after this checkpoint come back; GC drops them again)
        for _ in range(head["versions"]):
            page, lsn, chunk, off, flen, crc, ts = _VER.unpack_from(data, pos)
            pos += _VER.size
            self.versions.setdefault(page, []).append(VerMeta(lsn, chunk, off, flen, crc, ts))
        for vs in self.versions.values():
            vs.sort(key=lambda v: v.lsn)
        self.vdl_hint = head["vdl_hint"]
        self.min_read_point = head["min_read_point"]
        self.ckpt_pos = tuple(head["log_pos"])
        self._ver_ckpt_pos = tuple(head["ver_pos"])
        return True

    def open(self) -> None:
        """Load the checkpoint, then replay only the log tails written after it."""
        self.log.open()
        self.ver.open()
        if not self.load_checkpoint():
            self.ckpt_pos = (0, 0)
            self._ver_ckpt_pos = (0, 0)
        now = time.time()
        for fr in self.log.scan(*self.ckpt_pos):
            self.frames_replayed += 1
            if fr.body is None:
                continue  # unidentifiable corrupt frame; peers hold the record (gossip refills gaps)
            try:
                rec = pb.RedoRecord.FromString(fr.body)
            except Exception:  # noqa: BLE001
                continue
            if not redo.record_ok(rec) or rec.lsn in self.records:
                continue
            if self.is_truncated(rec.lsn, rec.epoch):
                continue
            self.index_record(RecMeta.of(rec, (fr.chunk, fr.offset, fr.length), now))
        for fr in self.ver.scan(*self._ver_ckpt_pos):
            if fr.body is None:
                continue
            try:
                rec = pb.RedoRecord.FromString(fr.body)
            except Exception:  # noqa: BLE001
                continue
            if not redo.record_ok(rec):
                continue
            vs = self.versions.setdefault(rec.page, [])
            if not any(v.lsn == rec.lsn for v in vs):
                bisect.insort(vs, VerMeta(rec.lsn, fr.chunk, fr.offset, fr.length, rec.crc32, now), key=lambda v: v.lsn)
        # a Seal after the checkpoint may have cut the chain below the saved SCL
        cap = min((t.first_lsn - 1 for t in self.truncations if t.first_lsn <= self.scl), default=None)
        self.recompute_chain(cap)
        # versions that include truncated records are invalid
        for page, vs in list(self.versions.items()):
            self.versions[page] = [v for v in vs if v.lsn <= self.gc_chain_lsn or v.lsn in self.records]
            if not self.versions[page]:
                del self.versions[page]
        self.dirty_pages = set(self.page_lsns)

    def close(self) -> None:
        self.log.close()
        self.ver.close()

