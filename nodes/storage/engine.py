"""The storage engine: every RPC of storage.proto as a method, plus the background steps.

Foreground (on the request path): validate, append frames to segment logs, group
commit (one fsync covers every concurrent caller), index, ack with the SCL.
Background: gossip (fill gaps from peers, learn epochs/truncations), coalesce
records into page versions, checkpoint the index, garbage-collect, scrub.

Thread safety: the engine lock guards the segment map; each segment has its own
lock; a request touching several segments locks them in (volume, pg) order. fsync
happens outside every lock (GroupCommitter).
"""

from __future__ import annotations

import bisect
import os
import re
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

import grpc

from borealdb.nodes import redo
from borealdb.nodes.log import get_logger
from borealdb.protos import storage_pb2 as pb

from . import stats
from .segment import RecMeta, Segment, SegmentParams, VerMeta, union_ranges
from .segment_log import fsync_dir, write_atomic

R = pb.ErrorReason
_VOLUME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclass
class _ScrubPass:
    """Where one segment's scrub pass stands: records up to next_lsn are done, then the
    versions of pages[:page_index]."""
    started_s: float
    next_lsn: int = 0
    pages: list[int] | None = None  # the pages with versions when the versions' turn came
    page_index: int = 0
    done: bool = False


@dataclass
class StorageOptions:
    gossip_interval_s: float = 0.25            # when a segment is behind or has gaps
    gossip_idle_interval_s: float = 2.0        # otherwise
    gossip_timeout_s: float = 1.0              # per peer RPC
    gossip_max_bytes: int = 3 * 1024 * 1024    # reply budget asked of a peer
    gossip_max_rounds: int = 8                 # FetchRecords calls per peer per pass
    peer_backoff_max_s: float = 5.0            # a down peer is skipped for up to this long
    peer_memory_s: float = 60.0                # a peer's reported SCL holds back GC this long
    scrub_interval_s: float = 60.0             # a segment's next scrub pass starts this long after its last began
    scrub_frames_per_s: int = 2000             # the background scrub's pace: frames verified per second per node
    scrub_batch_records: int = 200             # frames verified per lock hold (appends wait for the lock)
    retention_s: float = 300.0
    coalesce_interval_s: float = 0.5
    coalesce_max_pages: int = 2000             # per segment per pass
    checkpoint_interval_s: float = 30.0
    gc_interval_s: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024
    max_records_per_append: int = 100_000
    max_record_payload_bytes: int = 1024 * 1024
    summaries_max_records: int = 100_000
    fetch_max_bytes: int = 3 * 1024 * 1024
    fetch_max_records: int = 50_000
    chunk_size_bytes: int = 64 * 1024 * 1024   # segment log chunk file size


class StorageError(Exception):
    """A rejected request: gRPC status code + ErrorReason. Nothing was written."""

    def __init__(self, code: grpc.StatusCode, reason: int, message: str, *, pg: int | None = None,
                 segment_epoch: int | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.pg = pg
        self.segment_epoch = segment_epoch

    def __str__(self) -> str:
        return f"{R.Name(self.reason)}: {self.message}"


def _err(code, reason, msg, **kw) -> StorageError:
    return StorageError(code, reason, msg, **kw)


def _bad(msg: str, reason=R.BAD_RECORD) -> StorageError:
    return _err(grpc.StatusCode.INVALID_ARGUMENT, reason, msg)


class GroupCommitter:
    """Leader-based group commit: the first caller to need an fsync syncs every log
    written so far; callers arriving meanwhile wait and are covered by the next sync.

    Two ways to wait: sync(ticket) blocks the calling thread (it may become the
    leader); sync_async(ticket, loop, fut) never blocks: a dedicated syncer thread
    does the fsync and resolves every covered future with one call_soon_threadsafe
    per loop and batch (the asyncio gRPC server uses it, so no RPC holds a thread)."""

    def __init__(self, node_id: str):
        lock = threading.Lock()
        self._cv = threading.Condition(lock)    # an fsync finished (sync() callers, the syncer)
        self._work = threading.Condition(lock)  # the syncer has new async waiters (or must stop)
        self._written = 0
        self._synced = 0
        self._syncing = False
        self._dirty: dict[int, Any] = {}
        self._node = node_id
        self._fsyncs = stats.FSYNCS.labels(node_id)
        self._async: list[tuple[int, Any, Any]] = []  # (ticket, loop, asyncio future)
        self._syncer: threading.Thread | None = None
        self._stopping = False

    def note_write(self, log) -> int:
        with self._cv:
            self._written += 1
            self._dirty[id(log)] = log
            return self._written

    def current(self) -> int:
        with self._cv:
            return self._written

    def _sync_locked(self) -> None:
        """Caller holds _cv and has set _syncing; fsync everything written so far."""
        target, dirty = self._written, self._dirty
        self._dirty = {}
        self._cv.release()
        ok = False
        try:
            for log in dirty.values():
                log.sync()
            ok = True
        finally:
            self._cv.acquire()
            self._syncing = False
            self._cv.notify_all()
            if not ok:  # nothing of this batch counts as durable: the next sync retries these logs
                for k, log in dirty.items():
                    self._dirty.setdefault(k, log)
        if dirty:
            self._fsyncs.inc(len(dirty))
        self._synced = max(self._synced, target)

    def sync(self, ticket: int) -> None:
        with self._cv:
            while self._synced < ticket:
                if self._syncing:
                    self._cv.wait()
                    continue
                self._syncing = True
                self._sync_locked()

    def try_sync_inline(self, ticket: int) -> bool:
        """Make `ticket` durable in the calling thread if no fsync is running; True if it
        is durable now, False if another thread is syncing (then use sync_async).

        For the event loop: an fsync on the loop costs ~0.2 ms of stall, while handing
        it to the syncer thread and back cost more CPU (two thread switches) per batch."""
        with self._cv:
            if self._synced >= ticket:
                return True
            if self._syncing:
                return False
            self._syncing = True
            self._sync_locked()
            return self._synced >= ticket

    def sync_async(self, ticket: int, loop, fut) -> bool:
        """True if `ticket` is already durable; else `fut` (an asyncio future of `loop`)
        gets set_result(None) once it is (or an exception if the fsync failed)."""
        with self._cv:
            if self._synced >= ticket:
                return True
            self._async.append((ticket, loop, fut))
            if self._syncer is None:
                self._syncer = threading.Thread(target=self._syncer_loop, name=f"storage-fsync-{self._node}",
                                                daemon=True)
                self._syncer.start()
            self._work.notify()
            return False

    def _syncer_loop(self) -> None:
        with self._cv:
            while True:
                error: BaseException | None = None
                if self._async and not self._syncing and self._synced < max(t for t, _l, _f in self._async):
                    self._syncing = True
                    try:
                        self._sync_locked()
                    except BaseException as exc:  # noqa: BLE001 - fail the waiters, never ack
                        error = exc
                if self._async:
                    if error is not None:
                        ready, self._async = self._async, []
                    else:
                        ready = [w for w in self._async if w[0] <= self._synced]
                        if ready:
                            self._async = [w for w in self._async if w[0] > self._synced]
                    if ready:
                        self._cv.release()
                        try:
                            _resolve(ready, error)
                        finally:
                            self._cv.acquire()
                        continue
                if self._stopping and not self._async:
                    return
                if self._async and self._syncing:
                    self._cv.wait()  # another thread is syncing: it notifies when done
                elif not self._async:
                    self._work.wait()  # idle: not woken by every fsync of the loop's inline syncs

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            self._work.notify_all()
            t = self._syncer
        if t is not None:
            t.join(timeout=10)
        with self._cv:
            self._stopping = False
            self._syncer = None


def _resolve(ready: list[tuple[int, Any, Any]], error: BaseException | None) -> None:
    by_loop: dict[int, tuple[Any, list]] = {}
    for _t, loop, fut in ready:
        by_loop.setdefault(id(loop), (loop, []))[1].append(fut)
    for loop, futs in by_loop.values():
        try:
            loop.call_soon_threadsafe(_set_futures, futs, error)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more


def _set_futures(futs: list, error: BaseException | None) -> None:
    for f in futs:
        if not f.done():
            if error is None:
                f.set_result(None)
            else:
                f.set_exception(error)


class LocalPeer:
    """peer_factory target for in-process engines (tests): same calls as GrpcPeer."""

    def __init__(self, engine: "StorageEngine"):
        self.engine = engine

    def _check(self):
        if not self.engine.is_open:
            raise ConnectionError(f"{self.engine.node_id} is down")

    def fetch_records(self, req, timeout_s):
        self._check()
        return self.engine.fetch_records(req)

    def list_segments(self, req, timeout_s):
        self._check()
        return self.engine.list_segments(req)


class _AppendState:
    """An Append between append_begin (validated + written) and append_finish (indexed + acked)."""

    __slots__ = ("t0", "ticket", "segs", "by_pg", "targets", "written", "epoch", "vdl", "min_read_point")

    def __init__(self, t0, ticket, segs, by_pg, targets, written, epoch, vdl, min_read_point):
        self.t0, self.ticket, self.segs, self.by_pg, self.targets = t0, ticket, segs, by_pg, targets
        self.written, self.epoch, self.vdl, self.min_read_point = written, epoch, vdl, min_read_point


class StorageEngine:
    def __init__(self, node_id: str, az: str, address: str, data_dir: str, options: StorageOptions | None = None):
        self.node_id, self.az, self.address = node_id, az, address
        self.data_dir = data_dir
        self.options = options or StorageOptions()
        self.log = get_logger(component="storage", node_id=node_id)
        self._lock = threading.Lock()
        self._segments: dict[tuple[str, int], Segment] = {}
        self._committer = GroupCommitter(node_id)
        # metric children resolved once (labels() is a dict lookup under a lock per call)
        self._append_latency = stats.APPEND_LATENCY.labels(node_id)
        self._records_appended = stats.RECORDS_APPENDED.labels(node_id, "append")
        self._bytes_appended = stats.BYTES_APPENDED.labels(node_id)
        self._scl_gauges: dict[tuple[str, int], Any] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._peer_factory: Callable[[str], Any] | None = None
        self._peers: dict[str, Any] = {}
        self._peer_down_until: dict[str, tuple[float, float]] = {}
        self._started = time.monotonic()
        self._last: dict[str, float] = {}
        self._scrub_passes: dict[tuple[str, int], _ScrubPass] = {}  # maintenance thread only
        self.is_open = False
        self.frames_replayed = 0

    # ---- lifecycle ----------------------------------------------------------------
    def open(self) -> "StorageEngine":
        root = os.path.join(self.data_dir, "volumes")
        os.makedirs(root, exist_ok=True)
        t0 = time.monotonic()
        for vol in sorted(os.listdir(root)):
            vdir = os.path.join(root, vol)
            for name in sorted(os.listdir(vdir)):
                sdir = os.path.join(vdir, name)
                if not name.startswith("pg-") or not os.path.exists(os.path.join(sdir, "meta.json")):
                    continue
                params, doc = Segment.load_params(sdir)
                seg = Segment(sdir, params, self.options.chunk_size_bytes)
                seg.apply_meta(doc)
                seg.open()
                self.frames_replayed += seg.frames_replayed
                self._segments[seg.key] = seg
                stats.SEGMENT_SCL.labels(self.node_id, params.volume_id, str(params.pg)).set(seg.scl)
        self.is_open = True
        self.log.info("storage_opened", segments=len(self._segments), frames_replayed=self.frames_replayed,
                      open_ms=round((time.monotonic() - t0) * 1000, 1))
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        if self.is_open:
            try:
                self.checkpoint_once()
            except Exception:  # noqa: BLE001
                self.log.exception("checkpoint_on_close_failed")
        self.is_open = False
        self._committer.stop()
        for seg in self._all_segments():
            seg.close()

    def start_background(self, peer_factory: Callable[[str], Any] | None) -> None:
        self._peer_factory = peer_factory
        self._stop.clear()
        for name, fn in (("gossip", self._gossip_loop), ("maintenance", self._maintenance_loop)):
            t = threading.Thread(target=fn, name=f"storage-{name}-{self.node_id}", daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def committer(self) -> GroupCommitter:
        return self._committer

    # ---- lookups ------------------------------------------------------------------
    def _all_segments(self) -> list[Segment]:
        with self._lock:
            return [self._segments[k] for k in sorted(self._segments)]

    def _volume_segments(self, volume_id: str) -> dict[int, Segment]:
        with self._lock:
            segs = {pg: s for (v, pg), s in self._segments.items() if v == volume_id}
        if not segs:
            raise _err(grpc.StatusCode.NOT_FOUND, R.UNKNOWN_VOLUME, f"no segment of volume {volume_id!r} here")
        return segs

    def _segment(self, volume_id: str, pg: int) -> Segment:
        segs = self._volume_segments(volume_id)
        seg = segs.get(pg)
        if seg is None:
            raise _err(grpc.StatusCode.NOT_FOUND, R.UNKNOWN_SEGMENT, f"no segment of {volume_id!r} pg {pg} here", pg=pg)
        return seg

    def segment(self, volume_id: str, pg: int) -> Segment:
        """The Segment object (tests and diagnostics)."""
        return self._segment(volume_id, pg)

    @staticmethod
    def _check_epoch(seg: Segment, epoch: int) -> None:
        if epoch < seg.epoch:
            raise _err(grpc.StatusCode.FAILED_PRECONDITION, R.STALE_EPOCH,
                       f"pg {seg.params.pg}: request epoch {epoch} < segment epoch {seg.epoch}",
                       pg=seg.params.pg, segment_epoch=seg.epoch)
        if epoch > seg.epoch:
            raise _err(grpc.StatusCode.FAILED_PRECONDITION, R.EPOCH_AHEAD,
                       f"pg {seg.params.pg}: request epoch {epoch} > segment epoch {seg.epoch}: Seal first",
                       pg=seg.params.pg, segment_epoch=seg.epoch)

    def _reject(self, exc: StorageError) -> StorageError:
        stats.REJECTED.labels(self.node_id, R.Name(exc.reason)).inc()
        return exc

    # ---- validation and storing -----------------------------------------------------
    def _validate(self, seg: Segment, rec: pb.RedoRecord, batch: dict[int, pb.RedoRecord]) -> bool:
        """Raise StorageError for a bad record; False if it needs no write (duplicate,
        truncated or already collected); True if it must be stored."""
        p = seg.params
        if not redo.record_ok(rec):
            raise _bad(f"record lsn {rec.lsn}: crc32 does not match its content", R.CHECKSUM_MISMATCH)
        if rec.lsn == 0:
            raise _bad("record lsn 0 (0 means none)")
        if rec.pg_prev_lsn >= rec.lsn:
            raise _bad(f"record lsn {rec.lsn}: pg_prev_lsn {rec.pg_prev_lsn} >= lsn")
        if rec.page_prev_lsn >= rec.lsn:
            raise _bad(f"record lsn {rec.lsn}: page_prev_lsn {rec.page_prev_lsn} >= lsn")
        if not p.first_page <= rec.page < p.first_page + p.page_count:
            raise _bad(f"record lsn {rec.lsn}: page {rec.page} outside pg {p.pg} "
                       f"[{p.first_page}, {p.first_page + p.page_count})")
        if rec.kind not in (pb.FULL_PAGE, pb.PAGE_DELTA):
            raise _bad(f"record lsn {rec.lsn}: bad kind {rec.kind}")
        if len(rec.payload) > self.options.max_record_payload_bytes:
            raise _err(grpc.StatusCode.INVALID_ARGUMENT, R.PAYLOAD_TOO_LARGE,
                       f"record lsn {rec.lsn}: payload {len(rec.payload)} bytes > "
                       f"{self.options.max_record_payload_bytes}")
        try:
            redo.check_payload(rec.kind, rec.payload, p.page_size)
        except redo.DeltaError as exc:
            raise _bad(f"record lsn {rec.lsn}: {exc}", R.BAD_DELTA) from None
        prior = batch.get(rec.lsn)
        if prior is not None:
            if prior != rec:
                raise _err(grpc.StatusCode.ALREADY_EXISTS, R.LSN_CONFLICT, f"two different records at lsn {rec.lsn}")
            return False
        held = seg.records.get(rec.lsn)
        if held is not None:
            if not held.same_record(rec):
                raise _err(grpc.StatusCode.ALREADY_EXISTS, R.LSN_CONFLICT,
                           f"pg {p.pg}: a different record is stored at lsn {rec.lsn}")
            return False
        pend = seg.pending.get(rec.lsn)
        if pend is not None:
            if pend[0] != rec:
                raise _err(grpc.StatusCode.ALREADY_EXISTS, R.LSN_CONFLICT,
                           f"pg {p.pg}: a different record is being stored at lsn {rec.lsn}")
            return False
        if seg.is_truncated(rec.lsn, rec.epoch) or rec.lsn <= seg.gc_chain_lsn:
            return False
        return True

    def _write(self, seg: Segment, recs: list[pb.RedoRecord]) -> tuple[int, list[int]]:
        """Append validated records to the segment log (caller holds seg.lock)."""
        try:
            locs = seg.log.append([r.SerializeToString() for r in recs])
        except OSError as exc:
            raise _err(grpc.StatusCode.RESOURCE_EXHAUSTED, R.DISK_FULL, f"pg {seg.params.pg}: write failed: {exc}") from None
        now = time.time()
        for r, loc in zip(recs, locs):
            seg.pending[r.lsn] = (r, loc, now)
        self._bytes_appended.inc(sum(loc[2] for loc in locs))
        return self._committer.note_write(seg.log), [r.lsn for r in recs]

    def _index_pending(self, seg: Segment, lsns: list[int]) -> int:
        """After fsync: make the records visible (caller holds seg.lock)."""
        n = 0
        for lsn in lsns:
            entry = seg.pending.pop(lsn, None)
            if entry is None:
                continue  # truncated while being written
            rec, loc, ts = entry
            seg.index_record(RecMeta.of(rec, loc, ts))
            n += 1
        seg.check_invariants()
        self._scl_gauge(seg).set(seg.scl)
        return n

    def _scl_gauge(self, seg: Segment):
        g = self._scl_gauges.get(seg.key)
        if g is None:
            g = self._scl_gauges[seg.key] = stats.SEGMENT_SCL.labels(self.node_id, seg.params.volume_id,
                                                                     str(seg.params.pg))
        return g

    # ---- RPCs -----------------------------------------------------------------------
    def append(self, req: pb.AppendRequest) -> pb.AppendResponse:
        st = self.append_begin(req)
        try:
            self._committer.sync(st.ticket)
        except BaseException:
            self._append_latency.observe(time.monotonic() - st.t0)
            raise
        return self.append_finish(st)

    def append_begin(self, req: pb.AppendRequest) -> "_AppendState":
        """Validate the whole request, then write its new frames (not yet durable).

        Next: wait until the committer has synced `state.ticket` (sync / sync_async),
        then append_finish(state) indexes the records and builds the ack. Raises
        StorageError (counted as rejected) with nothing written."""
        t0 = time.monotonic()
        try:
            size = req.ByteSize()
            if size > self.options.max_message_bytes:
                raise _err(grpc.StatusCode.RESOURCE_EXHAUSTED, R.PAYLOAD_TOO_LARGE,
                           f"append of {size} bytes > {self.options.max_message_bytes}")
            if len(req.records) > self.options.max_records_per_append:
                raise _err(grpc.StatusCode.RESOURCE_EXHAUSTED, R.PAYLOAD_TOO_LARGE,
                           f"{len(req.records)} records > {self.options.max_records_per_append} per append")
            segs = self._volume_segments(req.volume_id)
            by_pg: dict[int, list[pb.RedoRecord]] = {}
            for rec in req.records:
                lst = by_pg.get(rec.pg)
                if lst is None:
                    lst = by_pg[rec.pg] = []
                lst.append(rec)
            for pg in by_pg:
                if pg not in segs:
                    raise _err(grpc.StatusCode.NOT_FOUND, R.UNKNOWN_SEGMENT,
                               f"record for {req.volume_id!r} pg {pg}: no such segment here", pg=pg)
            targets = [segs[pg] for pg in sorted(by_pg)] if by_pg else [segs[pg] for pg in sorted(segs)]
            written: list[tuple[Segment, list[int]]] = []
            ticket = 0
            req_epoch, req_vdl, req_mrp = req.epoch, req.vdl, req.min_read_point
            with ExitStack() as stack:
                for seg in targets:
                    stack.enter_context(seg.lock)
                for seg in targets:
                    self._check_epoch(seg, req_epoch)
                plan: list[tuple[Segment, list[pb.RedoRecord]]] = []
                for seg in targets:
                    batch: dict[int, pb.RedoRecord] = {}
                    todo = []
                    for rec in by_pg.get(seg.params.pg, ()):
                        if rec.epoch > req_epoch:
                            raise _bad(f"record lsn {rec.lsn}: epoch {rec.epoch} > request epoch {req_epoch}")
                        if self._validate(seg, rec, batch):
                            todo.append(rec)
                        batch[rec.lsn] = rec
                    plan.append((seg, todo))
                # everything is valid: now write
                for seg, todo in plan:
                    if todo:
                        ticket, lsns = self._write(seg, todo)
                        written.append((seg, lsns))
                    if req_vdl > seg.vdl_hint:
                        seg.vdl_hint = req_vdl
                    if req_mrp and req_mrp > seg.min_read_point:
                        seg.min_read_point = req_mrp
                ticket = max(ticket, self._committer.current())
            return _AppendState(t0, ticket, segs, by_pg, targets, written, req_epoch, req_vdl, req_mrp)
        except StorageError as exc:
            self._append_latency.observe(time.monotonic() - t0)
            raise self._reject(exc) from None

    def append_finish(self, st: "_AppendState") -> pb.AppendResponse:
        """After the committer synced st.ticket: index the records, ack every target's SCL."""
        try:
            resp = pb.AppendResponse()
            acks = resp.acks
            n_total = 0
            for seg in st.targets:
                with seg.lock:
                    for s, lsns in st.written:
                        if s is seg:
                            n_total += self._index_pending(seg, lsns)
                    acks.add(pg=seg.params.pg, scl=seg.scl)
            if n_total:
                self._records_appended.inc(n_total)
            # the VDL and read point are volume-wide: tell the volume's other segments too
            by_pg = st.by_pg
            if by_pg:
                for pg, seg in st.segs.items():
                    if pg not in by_pg:
                        with seg.lock:
                            if seg.epoch == st.epoch:
                                if st.vdl > seg.vdl_hint:
                                    seg.vdl_hint = st.vdl
                                if st.min_read_point and st.min_read_point > seg.min_read_point:
                                    seg.min_read_point = st.min_read_point
            return resp
        finally:
            self._append_latency.observe(time.monotonic() - st.t0)

    def read_page(self, req: pb.ReadPageRequest) -> pb.ReadPageResponse:
        try:
            seg = self._segment(req.volume_id, req.pg)
            with seg.lock:
                self._check_epoch(seg, req.epoch)
                p = seg.params
                if not p.first_page <= req.page < p.first_page + p.page_count:
                    raise _bad(f"page {req.page} outside pg {p.pg} [{p.first_page}, {p.first_page + p.page_count})")
                return self._read_locked(seg, req.page, req.read_lsn)
        except StorageError as exc:
            raise self._reject(exc) from None

    def _read_locked(self, seg: Segment, page: int, read_lsn: int) -> pb.ReadPageResponse:
        if read_lsn > seg.scl:
            return pb.ReadPageResponse(status=pb.READ_BEHIND, scl=seg.scl)
        if read_lsn < seg.gc_floor:
            return pb.ReadPageResponse(status=pb.READ_GARBAGE_COLLECTED, scl=seg.scl)
        if page in seg.lost_pages:
            return pb.ReadPageResponse(status=pb.READ_CORRUPT, scl=seg.scl)
        base: bytes | None = None
        base_lsn = 0
        vs = seg.versions.get(page, [])
        i = bisect.bisect_right([v.lsn for v in vs], read_lsn)
        while i > 0:
            v = vs[i - 1]
            data = seg.load_version(page, v)
            if data is not None:
                base, base_lsn = data, v.lsn
                break
            self._drop_corrupt_version(seg, page, v, "read")
            i -= 1
        if page in seg.lost_pages:
            return pb.ReadPageResponse(status=pb.READ_CORRUPT, scl=seg.scl)
        pl = seg.page_lsns.get(page, [])
        lo = bisect.bisect_right(pl, base_lsn)
        hi = bisect.bisect_right(pl, read_lsn)
        page_lsn = base_lsn
        for lsn in pl[lo:hi]:
            rec = seg.load_record(seg.records[lsn])
            if rec is None:
                stats.SCRUB_CORRUPT.labels(self.node_id, "record").inc()
                return pb.ReadPageResponse(status=pb.READ_CORRUPT, scl=seg.scl)
            base = redo.materialize(base, rec.kind, rec.payload, seg.params.page_size)
            page_lsn = lsn
        if page_lsn == 0:
            return pb.ReadPageResponse(status=pb.READ_OK, data=b"", page_lsn=0, scl=seg.scl)
        return pb.ReadPageResponse(status=pb.READ_OK, data=base, page_lsn=page_lsn, scl=seg.scl)

    @staticmethod
    def _history_complete(seg: Segment, page: int) -> bool:
        """Without any page version, can the page be rebuilt from its held records alone?"""
        if seg.gc_chain_lsn == 0:
            return True  # nothing was ever collected in this segment
        pl = seg.page_lsns.get(page)
        return bool(pl) and seg.records[pl[0]].kind == pb.FULL_PAGE

    def _drop_corrupt_version(self, seg: Segment, page: int, v: VerMeta, where: str) -> None:
        """Forget a corrupt page version; if nothing can rebuild the page, mark it lost
        (durably): reads of it answer READ_CORRUPT so the caller asks another segment."""
        self.log.warning("page_version_corrupt", where=where, volume=seg.params.volume_id, pg=seg.params.pg,
                         page=page, lsn=v.lsn)
        stats.SCRUB_CORRUPT.labels(self.node_id, "version").inc()
        seg.drop_version(page, v)
        if page not in seg.versions and not self._history_complete(seg, page):
            seg.lost_pages.add(page)
            seg.save_meta()

    def create_segment(self, req: pb.CreateSegmentRequest) -> pb.CreateSegmentResponse:
        try:
            if not _VOLUME_RE.match(req.volume_id):
                raise _bad(f"bad volume id {req.volume_id!r}", R.ERROR_REASON_UNSPECIFIED)
            if not 512 <= req.page_size <= redo.MAX_PAGE_SIZE or req.page_size & (req.page_size - 1):
                raise _bad(f"bad page size {req.page_size}", R.ERROR_REASON_UNSPECIFIED)
            if req.page_count == 0:
                raise _bad("page_count 0", R.ERROR_REASON_UNSPECIFIED)
            params = SegmentParams(req.volume_id, req.pg, req.first_page, req.page_count, req.page_size)
            with self._lock:
                seg = self._segments.get((req.volume_id, req.pg))
                if seg is None:
                    sdir = os.path.join(self.data_dir, "volumes", req.volume_id, f"pg-{req.pg:06d}")
                    os.makedirs(sdir, exist_ok=True)
                    seg = Segment(sdir, params, self.options.chunk_size_bytes)
                    seg.peers = list(req.peers)
                    seg.epoch = req.epoch
                    seg.open()
                    seg.save_meta()
                    fsync_dir(os.path.dirname(sdir))
                    fsync_dir(os.path.dirname(os.path.dirname(sdir)))
                    self._segments[seg.key] = seg
                    self.log.info("segment_created", volume=req.volume_id, pg=req.pg, epoch=req.epoch,
                                  first_page=req.first_page, page_count=req.page_count)
                    return pb.CreateSegmentResponse(created=True)
            with seg.lock:
                if seg.params != params:
                    raise _err(grpc.StatusCode.ALREADY_EXISTS, R.SEGMENT_EXISTS,
                               f"{req.volume_id!r} pg {req.pg} exists with {seg.params}", pg=req.pg)
                if req.epoch < seg.epoch:
                    self._check_epoch(seg, req.epoch)
                changed = False
                if req.epoch > seg.epoch:
                    seg.epoch, changed = req.epoch, True
                if req.peers and list(seg.peers) != list(req.peers):
                    seg.peers, changed = list(req.peers), True
                if changed:
                    seg.save_meta()
            return pb.CreateSegmentResponse(created=False)
        except StorageError as exc:
            raise self._reject(exc) from None

    def put_descriptor(self, req: pb.PutDescriptorRequest) -> pb.PutDescriptorResponse:
        try:
            seg = self._segment(req.descriptor.volume_id, 0)
            with seg.lock:
                if req.epoch < seg.epoch:
                    self._check_epoch(seg, req.epoch)
                changed = req.epoch > seg.epoch
                seg.epoch = max(seg.epoch, req.epoch)
                if seg.descriptor is None or req.descriptor.version > seg.descriptor.version:
                    seg.descriptor = pb.VolumeDescriptor()
                    seg.descriptor.CopyFrom(req.descriptor)
                    changed = True
                if changed:
                    seg.save_meta()
                return pb.PutDescriptorResponse(stored_version=seg.descriptor.version)
        except StorageError as exc:
            raise self._reject(exc) from None

    def seal(self, req: pb.SealRequest) -> pb.SealResponse:
        try:
            seg = self._segment(req.volume_id, req.pg)
            with seg.lock:
                if req.epoch < seg.epoch:
                    self._check_epoch(seg, req.epoch)
                self._adopt(seg, req.epoch, req.truncations, source="seal")
                return pb.SealResponse(epoch=seg.epoch, scl=seg.scl)
        except StorageError as exc:
            raise self._reject(exc) from None

    def _adopt(self, seg: Segment, epoch: int, truncations, source: str) -> None:
        """Raise the epoch and union truncation ranges, durably (caller holds seg.lock)."""
        new = union_ranges(seg.truncations, truncations)
        if epoch <= seg.epoch and len(new) == len(seg.truncations):
            return
        old_epoch, old_scl = seg.epoch, seg.scl
        seg.epoch = max(seg.epoch, epoch)
        seg.truncations = new
        dropped = seg.apply_truncations()
        seg.save_meta()
        assert seg.epoch >= old_epoch
        self.log.info("segment_sealed", source=source, volume=seg.params.volume_id, pg=seg.params.pg,
                      epoch=seg.epoch, old_epoch=old_epoch, dropped=dropped, scl=seg.scl, old_scl=old_scl,
                      truncations=[(t.epoch, t.first_lsn, t.last_lsn) for t in seg.truncations])
        stats.SEGMENT_SCL.labels(self.node_id, seg.params.volume_id, str(seg.params.pg)).set(seg.scl)

    def _info(self, seg: Segment) -> pb.SegmentInfo:
        p = seg.params
        info = pb.SegmentInfo(
            volume_id=p.volume_id, pg=p.pg, first_page=p.first_page, page_count=p.page_count, page_size=p.page_size,
            peers=seg.peers, epoch=seg.epoch, truncations=seg.truncations, scl=seg.scl,
            highest_lsn=seg.highest_lsn(), vdl_hint=seg.vdl_hint, gc_floor_lsn=seg.gc_floor,
            record_count=len(seg.records), corrupt_records=sum(1 for m in seg.records.values() if m.corrupt),
        )
        if p.pg == 0 and seg.descriptor is not None:
            info.descriptor.CopyFrom(seg.descriptor)
        return info

    def list_segments(self, req: pb.ListSegmentsRequest) -> pb.ListSegmentsResponse:
        resp = pb.ListSegmentsResponse(node_id=self.node_id, az=self.az)
        for seg in self._all_segments():
            if req.volume_id and seg.params.volume_id != req.volume_id:
                continue
            with seg.lock:
                resp.segments.append(self._info(seg))
        return resp

    def node_status(self, req: pb.NodeStatusRequest | None = None) -> pb.NodeStatusResponse:
        resp = pb.NodeStatusResponse(node_id=self.node_id, az=self.az, address=self.address,
                                     uptime_ms=int((time.monotonic() - self._started) * 1000))
        total = 0
        for seg in self._all_segments():
            with seg.lock:
                resp.segments.append(self._info(seg))
            total += seg.log.size_bytes() + seg.ver.size_bytes()
        resp.data_size_bytes = total
        return resp

    def record_summaries(self, req: pb.RecordSummaryRequest) -> pb.RecordSummaryResponse:
        try:
            seg = self._segment(req.volume_id, req.pg)
            limit = min(req.max_records or self.options.summaries_max_records, self.options.summaries_max_records)
            with seg.lock:
                self._check_epoch(seg, req.epoch)
                resp = pb.RecordSummaryResponse(scl=seg.scl)
                i = bisect.bisect_right(seg.lsns, req.after_lsn)
                for lsn in seg.lsns[i:]:
                    if len(resp.records) >= limit:
                        resp.truncated_reply = True
                        break
                    m = seg.records[lsn]
                    resp.records.add(lsn=lsn, pg_prev_lsn=m.prev, consistency_point=m.cpl)
                return resp
        except StorageError as exc:
            raise self._reject(exc) from None

    def fetch_records(self, req: pb.FetchRecordsRequest) -> pb.FetchRecordsResponse:
        try:
            seg = self._segment(req.volume_id, req.pg)
        except StorageError as exc:
            raise self._reject(exc) from None
        budget = min(req.max_bytes or self.options.fetch_max_bytes, self.options.max_message_bytes // 2)
        with seg.lock:
            if req.requester_node_id:
                seg.peer_scl[req.requester_node_id] = (req.requester_scl, time.monotonic())
            resp = pb.FetchRecordsResponse(scl=seg.scl, epoch=seg.epoch, truncations=seg.truncations)
            if req.lsns:
                wanted = sorted(set(req.lsns))[: self.options.fetch_max_records]
            else:
                i = bisect.bisect_right(seg.lsns, req.after_lsn)
                j = bisect.bisect_right(seg.lsns, req.up_to_lsn) if req.up_to_lsn else len(seg.lsns)
                wanted = seg.lsns[i:j]
            used = 0
            for n, lsn in enumerate(wanted):
                m = seg.records.get(lsn)
                if m is None:
                    continue
                rec = seg.load_record(m)
                if rec is None:
                    continue  # corrupt: never served
                size = rec.ByteSize() + 8
                if resp.records and (used + size > budget or len(resp.records) >= self.options.fetch_max_records):
                    resp.more = True
                    break
                resp.records.append(rec)
                used += size
            return resp

    # ---- gossip & repair ------------------------------------------------------------
    def _peer(self, address: str):
        if self._peer_factory is None:
            return None
        p = self._peers.get(address)
        if p is None:
            p = self._peers[address] = self._peer_factory(address)
        return p

    def _peer_usable(self, address: str) -> bool:
        until, _ = self._peer_down_until.get(address, (0.0, 0.0))
        return time.monotonic() >= until

    def _peer_failed(self, address: str, exc: Exception) -> None:
        _, backoff = self._peer_down_until.get(address, (0.0, 0.0))
        backoff = min(self.options.peer_backoff_max_s, max(self.options.gossip_interval_s, backoff * 2))
        self._peer_down_until[address] = (time.monotonic() + backoff, backoff)
        self.log.debug("peer_unreachable", peer=address, error=str(exc)[:200], backoff_s=backoff)

    def _peer_ok(self, address: str) -> None:
        self._peer_down_until.pop(address, None)

    def _other_peers(self, seg: Segment) -> list[pb.StorageNodeInfo]:
        return [p for p in seg.peers if p.node_id != self.node_id and p.address != self.address]

    def gossip_once(self) -> int:
        """One gossip pass over every segment; returns the number of records stored."""
        return self._gossip_segments(self._all_segments())

    def _gossip_segments(self, segments: list[Segment]) -> int:
        stored = 0
        for seg in segments:
            if self._stop.is_set() and self._threads:
                break
            stored += self._repair_segment(seg)
            for peer in self._other_peers(seg):
                if not self._peer_usable(peer.address):
                    continue
                client = self._peer(peer.address)
                if client is None:
                    continue
                with seg.lock:
                    after = seg.scl
                for _ in range(self.options.gossip_max_rounds):
                    with seg.lock:
                        req = pb.FetchRecordsRequest(
                            volume_id=seg.params.volume_id, pg=seg.params.pg, epoch=seg.epoch, after_lsn=after,
                            max_bytes=self.options.gossip_max_bytes, requester_node_id=self.node_id,
                            requester_scl=seg.scl)
                    try:
                        resp = client.fetch_records(req, self.options.gossip_timeout_s)
                    except Exception as exc:  # noqa: BLE001 - any peer failure: skip it for a while
                        self._peer_failed(peer.address, exc)
                        break
                    self._peer_ok(peer.address)
                    stored += self._absorb(seg, resp, source=peer.node_id)
                    if not resp.more or not resp.records:
                        break
                    after = resp.records[-1].lsn
        return stored

    def _absorb(self, seg: Segment, resp: pb.FetchRecordsResponse, source: str, repair: bool = False) -> int:
        """Store records fetched from a peer (same validation as Append; bad ones skipped)."""
        with seg.lock:
            if resp.epoch >= seg.epoch and (resp.epoch > seg.epoch or resp.truncations):
                self._adopt(seg, resp.epoch, resp.truncations, source=f"gossip:{source}")
            todo, batch = [], {}
            for rec in resp.records:
                if rec.pg != seg.params.pg or rec.epoch > seg.epoch:
                    continue
                try:
                    if self._validate(seg, rec, batch):
                        todo.append(rec)
                except StorageError as exc:
                    self.log.warning("gossip_record_rejected", peer=source, volume=seg.params.volume_id,
                                     pg=seg.params.pg, lsn=rec.lsn, reason=R.Name(exc.reason), error=exc.message)
                    continue
                batch[rec.lsn] = rec
            if not todo:
                return 0
            ticket, lsns = self._write(seg, todo)
        self._committer.sync(ticket)
        with seg.lock:
            n = self._index_pending(seg, lsns)
        stats.GOSSIP_FETCHED.labels(self.node_id).inc(n)
        stats.RECORDS_APPENDED.labels(self.node_id, "gossip").inc(n)
        if n:
            self.log.debug("gossip_stored", peer=source, volume=seg.params.volume_id, pg=seg.params.pg,
                           records=n, first_lsn=lsns[0], last_lsn=lsns[-1], scl=seg.scl)
        return n

    def _repair_segment(self, seg: Segment) -> int:
        """Replace corrupt records with verified copies from peers."""
        with seg.lock:
            bad = seg.corrupt_lsns()[: self.options.fetch_max_records]
        if not bad:
            return 0
        repaired = 0
        for peer in self._other_peers(seg):
            if not bad or not self._peer_usable(peer.address):
                continue
            client = self._peer(peer.address)
            if client is None:
                continue
            with seg.lock:
                req = pb.FetchRecordsRequest(volume_id=seg.params.volume_id, pg=seg.params.pg, epoch=seg.epoch,
                                             lsns=bad, max_bytes=self.options.gossip_max_bytes,
                                             requester_node_id=self.node_id, requester_scl=seg.scl)
            try:
                resp = client.fetch_records(req, self.options.gossip_timeout_s)
            except Exception as exc:  # noqa: BLE001
                self._peer_failed(peer.address, exc)
                continue
            self._peer_ok(peer.address)
            with seg.lock:
                fixes = []
                for rec in resp.records:
                    m = seg.records.get(rec.lsn)
                    if m is not None and m.corrupt and redo.record_ok(rec) and m.same_record(rec):
                        fixes.append(rec)
                if not fixes:
                    continue
                locs = seg.log.append([r.SerializeToString() for r in fixes])
                ticket = self._committer.note_write(seg.log)
            self._committer.sync(ticket)
            with seg.lock:
                for rec, loc in zip(fixes, locs):
                    m = seg.records.get(rec.lsn)
                    if m is not None and m.corrupt:
                        m.chunk, m.off, m.flen, m.corrupt = loc[0], loc[1], loc[2], False
                        repaired += 1
                        seg.dirty_pages.add(m.page)
                bad = seg.corrupt_lsns()
        if repaired:
            stats.REPAIRED.labels(self.node_id).inc(repaired)
            self.log.info("records_repaired", volume=seg.params.volume_id, pg=seg.params.pg, records=repaired)
        return repaired

    def repair_once(self) -> int:
        return sum(self._repair_segment(seg) for seg in self._all_segments())

    @staticmethod
    def _has_corrupt(seg: Segment) -> bool:
        """Caller holds seg.lock. O(1) unless something was marked corrupt since the last check."""
        if not seg.corrupt_hint:
            return False
        if any(m.corrupt for m in seg.records.values()):
            return True
        seg.corrupt_hint = False
        return False

    def _lag_target(self, seg: Segment) -> int:
        """The highest LSN this segment knows it misses (<= SCL: none). Caller holds seg.lock."""
        target = max(seg.vdl_hint, seg.highest_lsn())
        if seg.succ:
            target = max(target, max(seg.succ.values()))
        return target

    def _behind(self) -> bool:
        for seg in self._all_segments():
            with seg.lock:
                if seg.succ or self._lag_target(seg) > seg.scl or self._has_corrupt(seg):
                    return True
        return False

    def _gossip_loop(self) -> None:
        """Full gossip pass every gossip_idle_interval_s. In between, every gossip_interval_s,
        gossip only the segments that are really behind: corrupt records, or an SCL that
        has still not reached what the segment already missed at the previous check (a
        live writer fills a lag in flight within an interval; asking 5 peers each time
        a segment is momentarily behind costs more than the Appends themselves)."""
        o = self.options
        seen: dict[tuple[str, int], int] = {}  # segment -> lag target at the previous check
        only: list[Segment] | None = None      # None: full pass
        last_full = 0.0
        while not self._stop.is_set():
            try:
                if only is None:
                    self.gossip_once()
                    last_full = time.monotonic()
                elif only:
                    self._gossip_segments(only)
                only, checking = [], False
                for seg in self._all_segments():
                    with seg.lock:
                        target, scl, corrupt = self._lag_target(seg), seg.scl, self._has_corrupt(seg)
                    prev = seen.get(seg.key)
                    if corrupt or (prev is not None and scl < prev):
                        only.append(seg)
                    if scl < target:
                        checking = True
                        seen[seg.key] = target if prev is None or scl >= prev else prev
                    else:
                        seen.pop(seg.key, None)
                behind = checking or bool(only)
            except Exception:  # noqa: BLE001
                self.log.exception("gossip_failed")
                behind, only = True, None
            wait = o.gossip_interval_s if behind else o.gossip_idle_interval_s
            if time.monotonic() + wait - last_full >= o.gossip_idle_interval_s:
                only = None
            self._stop.wait(wait)

    # ---- coalescing -----------------------------------------------------------------
    def coalesce_once(self) -> int:
        """Materialize page versions for records <= min(SCL, vdl_hint); returns versions made."""
        made = 0
        for seg in self._all_segments():
            with seg.lock:
                limit = min(seg.scl, seg.vdl_hint)
                new: list[tuple[int, int, int]] = []  # (page, lsn, crc)
                bodies: list[bytes] = []
                for page in sorted(seg.dirty_pages)[: self.options.coalesce_max_pages]:
                    pl = seg.page_lsns.get(page, [])
                    vs = seg.versions.get(page, [])
                    last_v = vs[-1].lsn if vs else 0
                    if not pl or pl[-1] <= last_v:
                        seg.dirty_pages.discard(page)
                        continue
                    hi = bisect.bisect_right(pl, limit)
                    lo = bisect.bisect_right(pl, last_v)
                    if hi <= lo:
                        continue  # nothing coalescible yet
                    if page in seg.lost_pages:
                        continue
                    base = None
                    if vs:
                        base = seg.load_version(page, vs[-1])
                        if base is None:
                            self._drop_corrupt_version(seg, page, vs[-1], "coalesce")
                            continue
                    ok = True
                    for lsn in pl[lo:hi]:
                        rec = seg.load_record(seg.records[lsn])
                        if rec is None:
                            ok = False
                            break
                        base = redo.materialize(base, rec.kind, rec.payload, seg.params.page_size)
                    if not ok:
                        continue
                    vrec = redo.seal_record(pb.RedoRecord(lsn=pl[hi - 1], pg=seg.params.pg, page=page,
                                                          kind=pb.FULL_PAGE, payload=base))
                    new.append((page, vrec.lsn, vrec.crc32))
                    bodies.append(vrec.SerializeToString())
                    if hi == len(pl):
                        seg.dirty_pages.discard(page)
                if not bodies:
                    continue
                locs = seg.ver.append(bodies)
            seg.ver.sync()
            now = time.time()
            with seg.lock:
                for (page, lsn, crc), loc in zip(new, locs):
                    if lsn not in seg.records:
                        continue  # truncated meanwhile
                    vs = seg.versions.setdefault(page, [])
                    if vs and vs[-1].lsn >= lsn:
                        continue
                    vs.append(VerMeta(lsn, loc[0], loc[1], loc[2], crc, now))
                    made += 1
        return made

    # ---- garbage collection --------------------------------------------------------
    def _image_at(self, seg: Segment, page: int, lsn: int) -> bytes | None:
        """The page image at `lsn` from the newest good version <= lsn plus records (None: corrupt)."""
        vs = seg.versions.get(page, [])
        i = bisect.bisect_right([v.lsn for v in vs], lsn)
        base, base_lsn = None, 0
        if i:
            base = seg.load_version(page, vs[i - 1])
            if base is None:
                self._drop_corrupt_version(seg, page, vs[i - 1], "gc")
                return None
            base_lsn = vs[i - 1].lsn
        elif not self._history_complete(seg, page):
            return None
        pl = seg.page_lsns.get(page, [])
        for rl in pl[bisect.bisect_right(pl, base_lsn):bisect.bisect_right(pl, lsn)]:
            rec = seg.load_record(seg.records[rl])
            if rec is None:
                return None
            base = redo.materialize(base, rec.kind, rec.payload, seg.params.page_size)
        return base

    def _gc_floor(self, seg: Segment) -> int:
        """The LSN below which no reader, peer or retention rule needs versions (caller holds lock)."""
        if seg.min_read_point == 0:
            return 0  # the writer never told us its read points
        floor = min(seg.min_read_point, seg.vdl_hint, seg.scl)
        now_mono = time.monotonic()
        for peer_scl, when in seg.peer_scl.values():
            if now_mono - when <= self.options.peer_memory_s:
                floor = min(floor, peer_scl)
        cutoff = time.time() - self.options.retention_s
        for m in seg.records.values():
            if m.lsn <= floor and m.ts > cutoff:
                floor = m.lsn - 1
        return floor

    def gc_once(self) -> int:
        """Drop versions and records no reader can need; returns how many versions dropped.

        For each page, the image at its newest record <= the floor is kept (written as
        a version if the coalescer has not made exactly that one); older versions and
        the records it covers go. Reads below the floor answer READ_GARBAGE_COLLECTED."""
        dropped_versions = 0
        for seg in self._all_segments():
            with seg.lock:
                floor = self._gc_floor(seg)
                if floor <= seg.gc_floor:
                    continue
                need: list[tuple[int, int, int]] = []
                bodies: list[bytes] = []
                for page, pl in seg.page_lsns.items():
                    hi = bisect.bisect_right(pl, floor)
                    if not hi:
                        continue
                    keep = pl[hi - 1]
                    if any(v.lsn == keep for v in seg.versions.get(page, [])):
                        continue
                    image = self._image_at(seg, page, keep)
                    if image is None:
                        continue  # corrupt input: this page keeps everything until repaired
                    vrec = redo.seal_record(pb.RedoRecord(lsn=keep, pg=seg.params.pg, page=page,
                                                          kind=pb.FULL_PAGE, payload=image))
                    need.append((page, keep, vrec.crc32))
                    bodies.append(vrec.SerializeToString())
                locs = seg.ver.append(bodies) if bodies else []
            if bodies:
                seg.ver.sync()
            with seg.lock:
                if self._gc_floor(seg) < floor:
                    continue  # state moved backwards meanwhile (a seal): retry next pass
                now = time.time()
                for (page, lsn, crc), loc in zip(need, locs):
                    if lsn in seg.records:
                        vs = seg.versions.setdefault(page, [])
                        bisect.insort(vs, VerMeta(lsn, loc[0], loc[1], loc[2], crc, now), key=lambda v: v.lsn)
                drec = 0
                for page in set(seg.page_lsns) | set(seg.versions):
                    pl = seg.page_lsns.get(page, [])
                    vs = seg.versions.get(page, [])
                    hi = bisect.bisect_right(pl, floor)
                    if hi:
                        keep = pl[hi - 1]
                        vi = next((k for k, v in enumerate(vs) if v.lsn == keep), None)
                        if vi is None:
                            continue  # no version at the floor (corrupt input): keep everything of this page
                    else:
                        # no record <= floor held: the newest version <= floor stays
                        vi = bisect.bisect_right([v.lsn for v in vs], floor) - 1
                        if vi <= 0:
                            continue
                    dropped_versions += vi
                    seg.versions[page] = vs[vi:]
                    for lsn in pl[:hi]:
                        seg.drop_record(lsn)
                        seg.gc_chain_lsn = max(seg.gc_chain_lsn, lsn)
                        drec += 1
                seg.gc_floor = floor
                seg.save_meta()
                seg.check_invariants()
                stats.GC_RECORDS.labels(self.node_id).inc(drec)
                self.log.debug("gc", volume=seg.params.volume_id, pg=seg.params.pg, gc_floor=floor, records=drec)
        stats.GC_VERSIONS.labels(self.node_id).inc(dropped_versions)
        return dropped_versions

    # ---- checkpoint -----------------------------------------------------------------
    def checkpoint_once(self) -> None:
        """Write each segment's index checkpoint, then delete log chunks nothing live uses."""
        for seg in self._all_segments():
            with seg.lock:
                seg.log.sync()
                seg.ver.sync()
                data = seg.snapshot()
                log_pos, ver_pos = seg.log.end_position(), seg.ver.end_position()
                live_log = {m.chunk for m in seg.records.values()} | {loc[0] for _r, loc, _t in seg.pending.values()}
                live_ver = {v.chunk for vs in seg.versions.values() for v in vs}
            write_atomic(os.path.join(seg.dir, "index.ckpt"), data)
            with seg.lock:
                for log, pos, live in ((seg.log, log_pos, live_log), (seg.ver, ver_pos, live_ver)):
                    for c in log.chunk_numbers():
                        if c < pos[0] and c not in live and c != log.end_position()[0]:
                            log.delete_chunk(c)
                            self.log.info("log_chunk_deleted", volume=seg.params.volume_id, pg=seg.params.pg,
                                          dir=os.path.basename(log.directory), chunk=c)

    # ---- scrub ----------------------------------------------------------------------
    def scrub_once(self) -> int:
        """Verify every record frame and page version now (a whole pass over every
        segment, unpaced); returns corruptions found."""
        found = 0
        for seg in self._all_segments():
            scrub = _ScrubPass(time.monotonic())
            while not scrub.done:
                found += self._scrub_batch(seg, scrub, self.options.scrub_batch_records)[1]
        return found

    def scrub_step(self, budget_frames: int) -> int:
        """The background scrub: verify up to budget_frames frames, going on with each
        segment's current pass, and start a segment's next pass scrub_interval_s after its
        last one began. Returns corruptions found."""
        found = 0
        now = time.monotonic()
        segments = self._all_segments()
        live = {(seg.params.volume_id, seg.params.pg) for seg in segments}
        for key in [k for k in self._scrub_passes if k not in live]:
            del self._scrub_passes[key]  # dropped segments
        for seg in segments:
            key = (seg.params.volume_id, seg.params.pg)
            scrub = self._scrub_passes.get(key)
            if scrub is None or (scrub.done and now - scrub.started_s >= self.options.scrub_interval_s):
                scrub = self._scrub_passes[key] = _ScrubPass(now)
            while not scrub.done and budget_frames > 0:
                verified, corrupt = self._scrub_batch(seg, scrub, min(budget_frames, self.options.scrub_batch_records))
                budget_frames -= max(1, verified)
                found += corrupt
            if budget_frames <= 0:
                break
        return found

    def _scrub_batch(self, seg: Segment, scrub: "_ScrubPass", limit: int) -> tuple[int, int]:
        """Verify up to `limit` frames of `seg` from where `scrub` stands, under one hold of
        the segment's lock: records in LSN order, then page versions in page order.
        Returns (frames verified, corruptions found)."""
        verified = corrupt = 0
        with seg.lock:
            if scrub.pages is None:
                i = bisect.bisect_right(seg.lsns, scrub.next_lsn)
                chunk = seg.lsns[i:i + limit]
                for lsn in chunk:
                    m = seg.records.get(lsn)
                    if m is None or m.corrupt:
                        continue
                    verified += 1
                    if seg.load_record(m) is None:
                        corrupt += 1
                        stats.SCRUB_CORRUPT.labels(self.node_id, "record").inc()
                if chunk:
                    scrub.next_lsn = chunk[-1]
                    return verified, corrupt
                scrub.pages = sorted(seg.versions)
            while scrub.page_index < len(scrub.pages):
                page = scrub.pages[scrub.page_index]
                scrub.page_index += 1
                for v in list(seg.versions.get(page, ())):
                    verified += 1
                    if seg.load_version(page, v) is None:
                        corrupt += 1
                        self._drop_corrupt_version(seg, page, v, "scrub")
                if verified >= limit:
                    return verified, corrupt
            scrub.done = True
        return verified, corrupt

    def _maintenance_loop(self) -> None:
        o = self.options
        steps = (("coalesce", o.coalesce_interval_s, self.coalesce_once), ("gc", o.gc_interval_s, self.gc_once),
                 ("checkpoint", o.checkpoint_interval_s, self.checkpoint_once))
        start = time.monotonic()
        last = {name: start for name, _i, _f in steps}
        tick = max(0.01, min(i for _n, i, _f in steps) / 2)
        last_scrub = start
        while not self._stop.wait(tick):
            for name, interval, fn in steps:
                if time.monotonic() - last[name] >= interval:
                    try:
                        fn()
                    except Exception:  # noqa: BLE001
                        self.log.exception("background_step_failed", step=name)
                    last[name] = time.monotonic()
            # Scrub at a steady pace instead of a whole pass at once: a pass over every
            # record held (retention_s of writes) took seconds of CPU in one burst.
            now = time.monotonic()
            budget = int(o.scrub_frames_per_s * min(1.0, now - last_scrub))
            if budget > 0:
                last_scrub = now
                try:
                    self.scrub_step(budget)
                except Exception:  # noqa: BLE001
                    self.log.exception("background_step_failed", step="scrub")
