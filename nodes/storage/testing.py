"""Helpers for tests: build valid record chains and wire engines in-process."""

from __future__ import annotations

import os
import random

from borealdb.nodes import redo
from borealdb.protos import storage_pb2 as pb

from .engine import LocalPeer, StorageEngine, StorageOptions

VOLUME = "vol1"


class PgWriter:
    """Generates a PG's record chain like the writer does, and keeps a model of pages."""

    def __init__(self, pg: int = 0, first_page: int = 0, page_count: int = 16, page_size: int = 512,
                 epoch: int = 1, seed: int = 1, start_lsn: int = 1):
        self.pg, self.first_page, self.page_count, self.page_size = pg, first_page, page_count, page_size
        self.epoch = epoch
        self.next_lsn = start_lsn
        self.last_lsn = 0
        self.page_last: dict[int, int] = {}
        self.model: dict[int, list[tuple[int, bytes]]] = {}  # page -> [(lsn, image)]
        self.rng = random.Random(seed)

    def record(self, page: int | None = None, full: bool | None = None, cpl: bool = True,
               lsn: int | None = None) -> pb.RedoRecord:
        if page is None:
            page = self.first_page + self.rng.randrange(self.page_count)
        lsn = lsn or self.next_lsn
        self.next_lsn = lsn + 1
        hist = self.model.setdefault(page, [])
        old = hist[-1][1] if hist else bytes(self.page_size)
        new = bytearray(old)
        for _ in range(self.rng.randint(1, 4)):
            off = self.rng.randrange(self.page_size - 8)
            new[off:off + 8] = self.rng.randbytes(8)
        new = bytes(new)
        delta = None if full or not hist else redo.encode_delta(old, new)
        if full is None and not hist:
            delta = redo.encode_delta(old, new)  # a delta against the zero page
        kind, payload = (pb.PAGE_DELTA, delta) if delta else (pb.FULL_PAGE, new)
        rec = redo.seal_record(pb.RedoRecord(lsn=lsn, pg=self.pg, page=page, pg_prev_lsn=self.last_lsn,
                                             page_prev_lsn=self.page_last.get(page, 0), kind=kind, payload=payload,
                                             consistency_point=cpl, epoch=self.epoch))
        self.last_lsn = lsn
        self.page_last[page] = lsn
        hist.append((lsn, new))
        return rec

    def records(self, n: int, **kw) -> list[pb.RedoRecord]:
        return [self.record(**kw) for _ in range(n)]

    def expected(self, page: int, read_lsn: int) -> tuple[bytes, int]:
        best = (b"", 0)
        for lsn, image in self.model.get(page, []):
            if lsn <= read_lsn:
                best = (image, lsn)
        return best

    def create_request(self, peers=(), epoch: int | None = None) -> pb.CreateSegmentRequest:
        return pb.CreateSegmentRequest(volume_id=VOLUME, epoch=self.epoch if epoch is None else epoch, pg=self.pg,
                                       first_page=self.first_page, page_count=self.page_count,
                                       page_size=self.page_size, peers=list(peers))


def append(engine: StorageEngine, records, epoch: int = 1, vdl: int = 0, mrp: int = 0) -> pb.AppendResponse:
    return engine.append(pb.AppendRequest(volume_id=VOLUME, epoch=epoch, records=list(records), vdl=vdl,
                                          min_read_point=mrp))


class Cluster:
    """N engines in one process, wired through LocalPeer (no gRPC)."""

    def __init__(self, root, n: int = 6, options: StorageOptions | None = None):
        self.root = str(root)
        self.options = options or StorageOptions()
        self.infos = [pb.StorageNodeInfo(node_id=f"s{i}", az="abc"[i % 3], address=f"local:{i}") for i in range(n)]
        self.engines: dict[str, StorageEngine] = {}
        for info in self.infos:
            self.start(info.address)

    def factory(self, address: str):
        return _LazyPeer(self, address)

    def start(self, address: str) -> StorageEngine:
        info = next(i for i in self.infos if i.address == address)
        e = StorageEngine(info.node_id, info.az, address, os.path.join(self.root, info.node_id), self.options).open()
        e._peer_factory = self.factory
        self.engines[address] = e
        return e

    def stop(self, address: str, clean: bool = True) -> None:
        e = self.engines[address]
        if clean:
            e.close()
        else:  # simulate kill -9: drop it without checkpointing
            e.is_open = False
            for seg in e._all_segments():
                seg.close()

    def close(self) -> None:
        for e in self.engines.values():
            if e.is_open:
                e.close()


class _LazyPeer:
    def __init__(self, cluster: Cluster, address: str):
        self.cluster, self.address = cluster, address

    def _engine(self):
        e = self.cluster.engines[self.address]
        if not e.is_open:
            raise ConnectionError(f"{self.address} is down")
        return e

    def fetch_records(self, req, timeout_s):
        return LocalPeer(self._engine()).fetch_records(req, timeout_s)

    def list_segments(self, req, timeout_s):
        return LocalPeer(self._engine()).list_segments(req, timeout_s)
