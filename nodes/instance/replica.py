"""Read replicas: the writer's redo stream and the reader instance (protos/replica.proto).

Writer side (`RedoPublisher`, served as the `RedoStream` gRPC service)
- After each commit group (`_WriterFile.xSync`, once append_group returned and the
  page versions are cached) the VFS calls `publish(commit_lsn, changes)`: the group's
  redo payloads (deltas or images, not pages) with their LSNs and the commit time go
  into every subscriber's bounded buffer. With no subscriber this only records the LSN.
- Each subscriber's stream sends its buffered groups and the VDL, never above the last
  group already enqueued (acks can make a group durable before it was published).
  A subscriber whose buffer overflows is cut off (RESOURCE_EXHAUSTED); it resubscribes
  with an empty cache. The writer never waits for a replica.
- Replicas report their oldest open read point; the writer registers it with its
  volume, so it is part of the PGMRPL sent to storage (storage keeps those versions).

Reader side (`ReplicaDatabase`, `ReplicaFollower`, `ReaderEngine`)
- The volume is attached read-only (`Volume.attach_reader`: no recovery, no Seal, no
  epoch change, never a write). Pages come from its own versioned cache
  (`PageVersions`) or from one storage segment at the read point (hedged).
- A group is applied only once the VDL covers it, as a unit: each cached page that the
  group touches gets a new version at the group's commit LSN, built on its newest
  version; a full image of a page not cached is kept too (it needs no base: above all
  the new pages a growing table allocates, which the next reads want); other records
  for pages not cached are dropped. Only then does the read view move to the VDL, so a
  snapshot sees all of a group or none of it.
- A page read from storage at R is kept as current only if no group after R touched it
  (else it serves reads at R only): the cache never holds a page that missed a record.
- Snapshots are `vfs.SnapshotDatabase` connections pinned at a view LSN (page 1's change
  counter from the read point). Sessions read monotonically; writes answer READ_ONLY.
- Loss of the stream, a writer restart or a cut-off: reconnect with backoff; if the new
  stream does not continue exactly where the old one stopped (or the epoch changed) the
  cache is dropped. Reads go on at the last view meanwhile.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures as cf
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import apsw
import grpc
from prometheus_client import Gauge, Histogram

from borealdb.errors import Error as BorealError
from borealdb.errors import Unavailable
from borealdb.nodes import redo
from borealdb.nodes.instance.engine import (
    _WRITE_KEYWORDS,
    InstanceOptions,
    Outcome,
    Session,
    SqlEngine,
    SqlError,
    _first_word,
    _is_savepoint_rollback,
    _NeedsWriter,
)
from borealdb.nodes.instance.vfs import _INF, PageVersions, SnapshotDatabase, check_may_block
from borealdb.nodes.log import get_logger
from borealdb.nodes.rpc import CLIENT_CHANNEL_OPTIONS
from borealdb.nodes.volume.transport import NodeUnavailable, error_reason
from borealdb.protos import replica_pb2 as rpb
from borealdb.protos import replica_pb2_grpc as rpbg
from borealdb.protos import storage_pb2 as spb

_log = get_logger(component="replica")

M_LAG_LSN = Gauge("boreal_replica_lag_lsn", "Reader: newest LSN heard from the writer minus the LSN reads are served at")
M_LAG_MS = Gauge("boreal_replica_lag_ms", "Reader: writer commit -> visible here, last group (ms)")
M_LAG = Histogram("boreal_replica_lag_seconds", "Reader: writer commit -> visible here, per group",
                  buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
M_WRITER_REPLICA_LAG_LSN = Gauge("boreal_writer_replica_lag_lsn", "Writer: VDL minus a replica's read view", ["replica"])
M_WRITER_REPLICA_LAG_MS = Gauge("boreal_writer_replica_lag_ms", "Writer: a replica's reported lag (ms)", ["replica"])


def _now_us() -> int:
    return int(time.time() * 1_000_000)


# ==== writer side ==========================================================================


class _Wakeup:
    """asyncio.Event for one waiter with a timeout, without wait_for's extra task: set()
    resumes the waiting stream at the loop's next turn, ahead of work queued after it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._is_set = False
        self._waiter: asyncio.Future | None = None

    def set(self) -> None:  # on the loop
        self._is_set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def clear(self) -> None:
        self._is_set = False

    async def wait(self, timeout_s: float) -> bool:
        """True if set, False after timeout_s."""
        if self._is_set:
            return True
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout_s, lambda: waiter.done() or waiter.set_result(False))
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None


@dataclass
class _Subscriber:
    replica_id: str
    az: str = ""
    address: str = ""
    applied_lsn: int = 0
    lag_ms: float = 0.0
    min_read_point: int = 0
    token: Any = None
    lost: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        self.groups: deque[rpb.RedoGroup] = deque()
        self.bytes = 0
        self.wake: _Wakeup | None = None          # set on the loop: something to send
        self.wake_pending = False                 # a cross-thread wake-up is already queued


class RedoPublisher(rpbg.RedoStreamServicer):
    """Ships commit groups and VDL advances to subscribed replicas (one per writer).

    The RedoStream service runs on the event loop that also receives the storage acks,
    so a VDL advance reaches the replicas' streams without a thread hand-off; groups
    published by the writer thread wake a stream once per batch, not per commit."""

    def __init__(self, db: Any, node_id: str, *, max_buffer_bytes: int = 64 << 20, heartbeat_s: float = 0.1,
                 max_replicas: int = 15):
        self.db = db
        self.volume = db.volume
        self.node_id = node_id
        self.max_buffer_bytes = max_buffer_bytes
        self.heartbeat_s = heartbeat_s
        self.max_replicas = max_replicas
        self._lock = threading.Lock()
        self._subs: list[_Subscriber] = []
        self.last_published = 0
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_tid = 0
        db.publisher = self
        # Streams wake on VDL advances only: a group is sent with the VDL that makes it
        # visible, one message per advance instead of one per commit plus one per advance.
        self.volume.add_vdl_listener(self._wake)

    # ---- the hook (called by the writer connection's xSync) --------------------------------
    def publish(self, commit_lsn: int, changes: list) -> None:
        with self._lock:
            self.last_published = commit_lsn
            if not self._subs:
                return
            first = commit_lsn - len(changes) + 1
            group = rpb.RedoGroup(commit_lsn=commit_lsn, commit_time_us=_now_us())
            size = 0
            for i, ch in enumerate(changes):
                group.records.add(page=ch.page, lsn=first + i, kind=ch.kind, payload=ch.payload)
                size += len(ch.payload) + 32
            for sub in self._subs:
                if sub.lost:
                    continue
                sub.groups.append(group)
                sub.bytes += size
                if sub.bytes > self.max_buffer_bytes:
                    sub.lost = True
                    sub.groups.clear()
                    sub.bytes = 0
        if self.volume.vdl >= commit_lsn:
            self._wake()  # the acks beat this call: their VDL advance found the group not yet here

    def _wake(self, _fut: Any = None) -> None:
        """Wake every stream; from any thread (on the loop itself without a hand-off)."""
        loop = self._loop
        if loop is None:
            return
        on_loop = threading.get_ident() == self._loop_tid
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            if sub.wake is None:
                continue
            if on_loop:
                sub.wake.set()
            elif not sub.wake_pending:
                sub.wake_pending = True
                try:
                    loop.call_soon_threadsafe(self._wake_on_loop, sub)
                except RuntimeError:  # the loop is closed: the process is stopping
                    pass

    @staticmethod
    def _wake_on_loop(sub: _Subscriber) -> None:
        sub.wake_pending = False
        if sub.wake is not None:
            sub.wake.set()

    # ---- the RedoStream service -------------------------------------------------------------
    async def Subscribe(self, request_iterator, context):
        self._loop, self._loop_tid = asyncio.get_running_loop(), threading.get_ident()
        reports = request_iterator.__aiter__()
        try:
            first = await reports.__anext__()
        except StopAsyncIteration:
            return
        sub = _Subscriber(first.replica_id or context.peer(), first.az, first.address)
        sub.wake = _Wakeup(asyncio.get_running_loop())
        with self._lock:
            full = len([s for s in self._subs if not s.closed]) >= self.max_replicas
            if not full:
                start = max(self.last_published, self.volume.vdl)
                tips = self.volume.pg_tips(start)
                for old in self._subs:
                    if old.replica_id == sub.replica_id:
                        old.closed = True  # the same replica resubscribed: its old stream is dead
                self._subs = [s for s in self._subs if s.replica_id != sub.replica_id] + [sub]
        if full:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"this writer already serves {self.max_replicas} replicas")
        self._note_report(sub, first)
        reader = asyncio.ensure_future(self._read_reports(sub, reports))
        _log.info("replica_subscribed", replica=sub.replica_id, az=sub.az, start_lsn=start, epoch=self.volume.epoch)
        desc = self.volume.descriptor()
        hello = rpb.Hello(writer_id=self.node_id, epoch=self.volume.epoch, start_lsn=start,
                          page_size=desc.page_size, pg_size_pages=desc.pg_size_pages)
        hello.pg_tips.extend(rpb.PgTip(pg=pg, lsn=lsn) for pg, lsn in sorted(tips.items()))
        try:
            yield rpb.RedoMessage(hello=hello, vdl=min(self.volume.vdl, start), writer_time_us=_now_us())
            sent_vdl = 0
            while not self._stopped and not sub.closed:
                vdl = min(self.volume.vdl, max(self.last_published, start))
                if not (sub.groups or sub.lost or vdl > sent_vdl):
                    sub.wake.clear()
                    # With nothing new, a heartbeat (the VDL again) every heartbeat_s.
                    await sub.wake.wait(self.heartbeat_s)
                    vdl = min(self.volume.vdl, max(self.last_published, start))
                if self._stopped or sub.closed or sub.lost:
                    break
                with self._lock:
                    # Re-checked under the lock: an overflow between the check above and
                    # here clears the buffer, and a VDL sent without those groups would
                    # make the replica skip them.
                    if sub.lost:
                        break
                    groups = list(sub.groups)
                    sub.groups.clear()
                    sub.bytes = 0
                msg = rpb.RedoMessage(vdl=vdl, writer_time_us=_now_us())
                msg.groups.extend(groups)
                sent_vdl = vdl
                yield msg
            if sub.lost:
                _log.warning("replica_cut_off", replica=sub.replica_id, reason="buffer overflow",
                             max_buffer_bytes=self.max_buffer_bytes)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"replica {sub.replica_id} fell more than {self.max_buffer_bytes} bytes of redo behind; resubscribe")
        finally:
            reader.cancel()
            self._drop(sub)

    async def _read_reports(self, sub: _Subscriber, reports) -> None:
        try:
            async for msg in reports:
                self._note_report(sub, msg)
        except Exception:  # noqa: BLE001 - the stream ended
            pass
        finally:
            sub.closed = True
            if sub.wake is not None:
                sub.wake.set()

    def _note_report(self, sub: _Subscriber, msg: rpb.ReplicaMessage) -> None:
        sub.applied_lsn = max(sub.applied_lsn, msg.applied_lsn)
        sub.lag_ms = msg.lag_ms
        if msg.address:
            sub.address = msg.address
        # Storage must keep what the replica's open reads need, and what its next reads
        # (at its view or later) need: register the lower of the two with our volume.
        point = min(msg.min_read_point or msg.applied_lsn, msg.applied_lsn) if msg.applied_lsn else msg.min_read_point
        if point and point != sub.min_read_point:
            token = self.volume.register_read_point(point)
            old, sub.token, sub.min_read_point = sub.token, token, point
            if old is not None:
                self.volume.release_read_point(old)
        M_WRITER_REPLICA_LAG_LSN.labels(sub.replica_id).set(max(0, self.volume.vdl - sub.applied_lsn))
        M_WRITER_REPLICA_LAG_MS.labels(sub.replica_id).set(sub.lag_ms)

    def _drop(self, sub: _Subscriber) -> None:
        sub.closed = True
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
        if sub.token is not None:
            self.volume.release_read_point(sub.token)
            sub.token = None
        _log.info("replica_unsubscribed", replica=sub.replica_id, applied_lsn=sub.applied_lsn)

    def replicas(self) -> list[dict[str, Any]]:
        vdl = self.volume.vdl
        with self._lock:
            subs = list(self._subs)
        return [{"node_id": s.replica_id, "az": s.az, "address": s.address, "applied_lsn": s.applied_lsn,
                 "lag_lsn": max(0, vdl - s.applied_lsn), "lag_ms": s.lag_ms, "min_read_point": s.min_read_point}
                for s in subs]

    def stop(self) -> None:
        self._stopped = True
        self._wake()


# ==== reader side: the page source ============================================================


class ReplicaDatabase(SnapshotDatabase):
    """A read replica's view of the shared volume: versioned page cache + snapshots at a VDL."""

    def __init__(self, volume: Any, *, local_az: str | None = None, cache_capacity_bytes: int = 256 << 20,
                 snapshot_pool_size: int = 16, sqlite_cache_pages: int = 4096, read_timeout_s: float = 5.0,
                 hedge_after_s: float = 0.05):
        self.volume = volume
        desc = volume.descriptor()
        self.pg_size_pages = desc.pg_size_pages
        self.local_az = local_az
        self.read_timeout_s = read_timeout_s
        self.hedge_after_s = hedge_after_s
        self.cache_capacity_bytes = cache_capacity_bytes
        self.cache = PageVersions(cache_capacity_bytes)
        self._cond = threading.Condition()
        self.ready = False           # a first subscription has delivered a view
        self.view = 0                # reads are served at this LSN; every group <= it is applied
        self.epoch = 0
        self.received_lsn = 0        # the last group received (or the subscription's start)
        self._min_next_view = 0      # after a gap, the view may not move before this LSN
        self._pending: deque[rpb.RedoGroup] = deque()
        self._pg_lsns: dict[int, list[int]] = {}
        self._page_last: dict[int, int] = {}
        self._page_last_floor = 0
        self._page_last_cap = 1_000_000
        self._generation = 0         # bumped whenever the cache is dropped
        self._read_points: dict[int, int] = {}
        self._read_seq = 0
        self.latest_lsn = 0          # newest LSN heard of from the writer
        self.lag_ms = 0.0
        self.groups_applied = 0
        self.groups_dropped = 0      # records for pages not cached
        self.cache_drops = 0
        self._init_snapshots(page_size=desc.page_size, name=f"{desc.volume_id}-replica",
                             snapshot_pool_size=snapshot_pool_size, sqlite_cache_pages=sqlite_cache_pages)

    # ---- read points ----------------------------------------------------------------------------
    def default_read_lsn(self) -> int:
        return self.view

    def register_read_point(self, lsn: int) -> int:
        with self._cond:
            self._read_seq += 1
            self._read_points[self._read_seq] = lsn
            return self._read_seq

    def release_read_point(self, token: Any) -> None:
        with self._cond:
            self._read_points.pop(token, None)

    def min_read_point(self) -> int:
        with self._cond:
            return min(self._read_points.values()) if self._read_points else 0

    def wait_view(self, lsn: int, timeout_s: float) -> int:
        """Block until the view reaches lsn (and a first view exists); return the view."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if not self.ready or self.view < lsn:
                check_may_block()
            while not self.ready or self.view < lsn:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(f"replica view {self.view} has not reached LSN {lsn} after {timeout_s:g}s "
                                      f"(stream from the writer lost or lagging)")
                self._cond.wait(left)
            return self.view

    # ---- the stream --------------------------------------------------------------------------------
    def on_hello(self, hello: rpb.Hello) -> bool:
        """A (re)subscription. Returns True if the cache was kept (the stream continues exactly)."""
        with self._cond:
            keep = self.ready and hello.epoch == self.epoch and hello.start_lsn == self.received_lsn
            if not keep:
                self._drop_cache_locked(f"resubscribed at {hello.start_lsn} (had {self.received_lsn}, epoch "
                                        f"{self.epoch} -> {hello.epoch})" if self.ready else "")
                self._pending.clear()
                self._page_last.clear()
                self._page_last_floor = hello.start_lsn
                self.received_lsn = hello.start_lsn
                self._min_next_view = hello.start_lsn
                for tip in hello.pg_tips:
                    if tip.lsn:
                        lsns = self._pg_lsns.setdefault(tip.pg, [])
                        i = bisect.bisect_left(lsns, tip.lsn)
                        if i == len(lsns) or lsns[i] != tip.lsn:
                            lsns.insert(i, tip.lsn)
            if hello.epoch != self.epoch:
                self.volume.reader_note_epoch(hello.epoch)
                self.epoch = hello.epoch
            self.latest_lsn = max(self.latest_lsn, hello.start_lsn)
            return keep

    def _drop_cache_locked(self, why: str) -> None:
        self.cache = PageVersions(self.cache_capacity_bytes)
        self._generation += 1
        if why:
            self.cache_drops += 1
            _log.info("replica_cache_dropped", reason=why)

    def on_message(self, msg: rpb.RedoMessage) -> None:
        now_us = _now_us()
        with self._cond:
            for g in msg.groups:
                if g.commit_lsn > self.received_lsn:
                    self._pending.append(g)
                    self.received_lsn = g.commit_lsn
            self.latest_lsn = max(self.latest_lsn, self.received_lsn, msg.vdl)
            vdl = msg.vdl
            if vdl < self._min_next_view or (vdl <= self.view and self.ready):
                return
            last = None
            try:
                while self._pending and self._pending[0].commit_lsn <= vdl:
                    last = self._pending.popleft()
                    self._apply_locked(last)
                    M_LAG.observe(max(0.0, (now_us - last.commit_time_us) / 1e6))
            except BaseException:
                # Part of a group may be in the cache: that breaks "all of a group or
                # none". Reads go on at the view from storage; the next subscription
                # starts afresh (received_lsn matches no start_lsn), never continues.
                self._drop_cache_locked(f"a redo group failed to apply (commit lsn {last.commit_lsn if last else '?'})")
                self._pending.clear()
                self.received_lsn = -1
                raise
            if last is not None:
                self.lag_ms = max(0.0, (now_us - last.commit_time_us) / 1000)
            self.view = max(self.view, vdl)
            self.ready = True
            M_LAG_LSN.set(self.latest_lsn - self.view)
            M_LAG_MS.set(self.lag_ms)
            self._cond.notify_all()

    def _apply_locked(self, g: rpb.RedoGroup) -> None:
        """Apply one atomic group (<= VDL) to the cached pages it touches; drop the rest."""
        cache = self.cache
        for r in g.records:
            page = r.page
            pg = page // self.pg_size_pages
            self._pg_lsns.setdefault(pg, []).append(r.lsn)
            if len(self._page_last) >= self._page_last_cap:
                self._page_last.clear()
                self._page_last_floor = g.commit_lsn
            self._page_last[page] = r.lsn
            newest = cache.newest(page)
            if newest is None:
                if r.kind == redo.FULL_PAGE:
                    # The page's whole content from this group on. Without it, reads of the
                    # newest rows went to storage (and off the loop) once per new page: at
                    # 1,000 inserts/s nearly every lag probe (`boreal bench lag`).
                    cache.put_image(page, g.commit_lsn, redo.materialize(None, r.kind, r.payload, self.page_size))
                else:
                    self.groups_dropped += 1
                continue
            if newest.valid_to != _INF:
                continue  # known only at an older read point: later reads fetch it again
            data = redo.materialize(newest.data or None, r.kind, r.payload, self.page_size)
            cache.put_written(page, g.commit_lsn, data, _INF)
        self.groups_applied += 1

    def trim(self) -> None:
        """Forget page versions and PG LSNs no open or future read needs."""
        with self._cond:
            floor = min([self.view, *self._read_points.values()])
            for lsns in self._pg_lsns.values():
                i = bisect.bisect_right(lsns, floor) - 1
                if i > 0:
                    del lsns[:i]
            cache = self.cache
        cache.trim_below(floor)

    # ---- pages ----------------------------------------------------------------------------------
    def page_at(self, page: int, read_lsn: int) -> bytes:
        cache = self.cache
        data = cache.get(page, read_lsn)
        if data is not None:
            return data
        pg = page // self.pg_size_pages
        with self._cond:
            lsns = self._pg_lsns.get(pg, [])
            i = bisect.bisect_right(lsns, read_lsn)
            pg_read_lsn = lsns[i - 1] if i else 0
            generation = self._generation
        if pg_read_lsn == 0:
            data, page_lsn = b"", 0
        else:
            check_may_block()
            data, page_lsn = self._read_storage(page, pg, pg_read_lsn)
        with self._cond:
            if generation == self._generation:
                current = self._page_last.get(page, self._page_last_floor) <= read_lsn
                # current: no group after read_lsn touched the page, so this image is the
                # page's newest and every later group will be applied to it.
                self.cache.put_fetched(page, page_lsn, data, _INF if current else read_lsn, _INF)
        return data

    def _read_storage(self, page: int, pg: int, pg_read_lsn: int) -> tuple[bytes, int]:
        for attempt in range(2):
            members = self._members(pg)
            local = self.local_az
            members.sort(key=lambda s: (local is not None and s.az != local, s.address))
            req = spb.ReadPageRequest(volume_id=self.volume.volume_id, epoch=self.volume.epoch, pg=pg, page=page,
                                      read_lsn=pg_read_lsn)
            errors: dict[str, str] = {}
            epoch_trouble = False
            deadline = time.monotonic() + self.read_timeout_s
            pending: dict[cf.Future, str] = {}
            launched = 0

            def launch() -> None:
                nonlocal launched
                addr = members[launched].address
                launched += 1
                timeout = max(0.001, min(2.0, deadline - time.monotonic()))
                try:
                    pending[self.volume.transport.call(addr, "ReadPage", req, timeout)] = addr
                except Exception as exc:  # noqa: BLE001
                    f: cf.Future = cf.Future()
                    f.set_exception(NodeUnavailable(addr, str(exc)))
                    pending[f] = addr

            launch()
            while pending or launched < len(members):
                if not pending:
                    launch()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait = min(left, self.hedge_after_s) if launched < len(members) else left
                done, _ = cf.wait(list(pending), timeout=wait, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    addr = pending.pop(fut)
                    exc = None if not fut.cancelled() else NodeUnavailable(addr, "cancelled")
                    exc = exc or fut.exception()
                    if exc is not None:
                        if error_reason(exc) in (spb.STALE_EPOCH, spb.EPOCH_AHEAD):
                            epoch_trouble = True
                        errors[addr] = str(exc)
                        continue
                    resp = fut.result()
                    if resp.status == spb.READ_OK:
                        return resp.data, resp.page_lsn
                    errors[addr] = spb.ReadStatus.Name(resp.status)
                if not done and launched < len(members):
                    launch()  # hedge a slow read
            if attempt == 0 and epoch_trouble:
                self.volume.reader_refresh()  # a new writer raised the epoch: learn it and retry
                continue
            break
        raise Unavailable(f"replica: page {page} (pg {pg}) at lsn {pg_read_lsn}: no segment could serve it: "
                          f"{errors or 'timeout'}")

    def _members(self, pg: int) -> list:
        for refresh in (False, True):
            if refresh:
                self.volume.reader_refresh()
            for p in self.volume.descriptor().pgs:
                if p.pg == pg:
                    return list(p.segments)
        raise Unavailable(f"replica: pg {pg} is not in the volume descriptor")


# ==== reader side: following the writer =========================================================


class ReplicaFollower:
    """Keeps a ReplicaDatabase subscribed to the writer's redo stream, reconnecting as needed.

    The stream is a grpc.aio call on the reader's event loop (the one its SQL server and
    volume transport use): messages are applied where they arrive, without a thread of
    their own, and reports to the writer go out on the same call every report_interval_s."""

    def __init__(self, db: ReplicaDatabase, writer_address: str, *, node_id: str, az: str,
                 loop: asyncio.AbstractEventLoop, address: str = "", report_interval_s: float = 0.05,
                 backoff_max_s: float = 1.0):
        self.db = db
        self.writer_address = writer_address
        self.node_id = node_id
        self.az = az
        self.address = address
        self.report_interval_s = report_interval_s
        self.backoff_max_s = backoff_max_s
        self.connected = False
        self.subscriptions = 0
        self._loop = loop
        self._task: asyncio.Task | None = None

    def start(self) -> "ReplicaFollower":
        async def spawn() -> asyncio.Task:
            return asyncio.ensure_future(self._run())

        self._task = asyncio.run_coroutine_threadsafe(spawn(), self._loop).result(timeout=10)
        return self

    def _report(self) -> rpb.ReplicaMessage:
        db = self.db
        return rpb.ReplicaMessage(replica_id=self.node_id, az=self.az, address=self.address,
                                  min_read_point=db.min_read_point(), applied_lsn=db.view, lag_ms=db.lag_ms)

    async def _send_reports(self, call) -> None:
        try:
            while True:
                await asyncio.sleep(self.report_interval_s)
                await call.write(self._report())
        except (grpc.RpcError, asyncio.InvalidStateError):
            pass  # the call ended: the reading side sees why and resubscribes

    async def _run(self) -> None:
        """Until cancelled (stop()): subscribe, apply, and resubscribe with backoff."""
        backoff = 0.02
        while True:
            channel = grpc.aio.insecure_channel(self.writer_address, options=CLIENT_CHANNEL_OPTIONS)
            reporter = None
            try:
                call = rpbg.RedoStreamStub(channel).Subscribe()
                await call.write(self._report())
                reporter = asyncio.ensure_future(self._send_reports(call))
                last_trim = time.monotonic()
                async for msg in call:
                    if msg.HasField("hello"):
                        kept = self.db.on_hello(msg.hello)
                        self.connected = True
                        self.subscriptions += 1
                        backoff = 0.02
                        _log.info("replica_stream_connected", writer=self.writer_address, epoch=msg.hello.epoch,
                                  start_lsn=msg.hello.start_lsn, cache_kept=kept)
                    self.db.on_message(msg)
                    if time.monotonic() - last_trim > 1.0:
                        self.db.trim()
                        last_trim = time.monotonic()
            except asyncio.CancelledError:
                raise
            except grpc.RpcError as exc:
                _log.info("replica_stream_lost", writer=self.writer_address, code=exc.code().name,
                          details=exc.details())
            except Exception as exc:  # noqa: BLE001 - never let the follower die
                _log.error("replica_stream_error", error=repr(exc))
            finally:
                self.connected = False
                if reporter is not None:
                    reporter.cancel()
                await channel.close()
            await asyncio.sleep(backoff)  # before resubscribing (stop() cancels it)
            backoff = min(self.backoff_max_s, backoff * 2)

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the stream and wait (bounded) until the follower's task has ended (its
        channel closed), not merely until the cancellation was requested."""
        task, self._task = self._task, None
        if task is None:
            return
        ended = threading.Event()

        def cancel() -> None:
            task.add_done_callback(lambda _t: ended.set())
            task.cancel()

        try:
            self._loop.call_soon_threadsafe(cancel)
        except RuntimeError:  # the loop is closed: nothing runs any more
            return
        if not ended.wait(timeout_s):
            _log.warning("replica_follower_stop_timeout", writer=self.writer_address, timeout_s=timeout_s)


# ==== reader side: SQL ===========================================================================


class _NoWriter:
    in_transaction = False

    def close(self) -> None:
        pass


class ReaderEngine(SqlEngine):
    """The SQL engine of a read replica: every statement on a snapshot; writes -> READ_ONLY.

    Autocommit reads run at the current view; BEGIN pins one view for the whole
    transaction. Per session, reads never go to a lower LSN than before."""

    FEEDS_COMMIT_HINT = False  # it never commits: its requests skip that bookkeeping

    def __init__(self, db: ReplicaDatabase, follower: ReplicaFollower | None, *, node_id: str,
                 options: InstanceOptions | None = None):
        self.follower = follower
        super().__init__(db, node_id=node_id, options=options)  # type: ignore[arg-type]

    def _open_writer(self) -> Any:
        return _NoWriter()

    def runs_on_writer(self, session_id: str, sql: str) -> bool:
        self.session(session_id)
        return False  # a replica has no writer connection: every statement runs on a snapshot

    def execute(self, session_id: str, sql: str, params: Any = None, batch_rows: int = 0, deferred: Any = None):
        with self._session_request(session_id, sql, params, deferred) as session:
            word = _first_word(sql)
            self._refuse_unsupported(word, sql)
            if word == "BEGIN":
                if session.in_transaction:
                    raise SqlError("MISUSE", "a transaction is already open in this session", in_transaction=True)
                if any(w in sql.upper().split() for w in ("IMMEDIATE", "EXCLUSIVE")):
                    raise self._read_only()
                lsn = self._read_lsn(session)
                session.pinned = (lsn, self.db.register_read_point(lsn))  # type: ignore[attr-defined]
                session.in_transaction = True
                yield None, [], Outcome(in_transaction=True, read_lsn=lsn)
            elif word in ("COMMIT", "END") or (word == "ROLLBACK" and not _is_savepoint_rollback(sql)):
                if not session.in_transaction:
                    raise SqlError("MISUSE", f"{word} with no open transaction")
                self._end_read_transaction(session)
                yield None, [], Outcome()
            elif word in ("SAVEPOINT", "RELEASE", "ROLLBACK"):
                if not session.in_transaction:
                    raise SqlError("MISUSE", f"{word} outside a transaction: send BEGIN first")
                yield None, [], Outcome(in_transaction=True)
            elif word in _WRITE_KEYWORDS or word == "PRAGMA" and "=" in sql:
                raise self._read_only(session)
            else:
                yield from self._read(session, sql, params, batch_rows)

    def execute_many(self, session_id: str, sql: str, param_sets: list[Any], deferred: Any = None) -> Outcome:
        session = self.session(session_id)
        raise self._read_only(session)

    def _read_only(self, session: Session | None = None) -> SqlError:
        return SqlError("READ_ONLY", f"{self.node_id} is a read replica: send writes to the writer "
                        f"({self.follower.writer_address if self.follower else 'the cluster endpoint'})",
                        in_transaction=bool(session and session.in_transaction))

    def _read_lsn(self, session: Session) -> int:
        """The view to read at: the current one, never below what this session read before."""
        floor = session.last_commit_lsn  # on a replica: the highest LSN this session read at
        try:
            lsn = self.db.wait_view(floor, self.options.commit_timeout_s)
        except Unavailable as exc:
            raise SqlError("UNAVAILABLE", str(exc), in_transaction=session.in_transaction) from None
        session.last_commit_lsn = lsn
        return lsn

    def _read(self, session: Session, sql: str, params: Any, batch_rows: int):
        pinned = getattr(session, "pinned", None) if session.in_transaction else None
        lsn = pinned[0] if pinned else self._read_lsn(session)
        try:
            yield from self._snapshot_rows(lsn, sql, params, batch_rows,
                                           Outcome(rows_affected=-1, read_lsn=lsn, in_transaction=session.in_transaction))
        except _NeedsWriter:
            raise self._read_only(session) from None
        except (apsw.Error, BorealError) as exc:
            err = self._sql_error(exc, session, from_writer=False)
            err.in_transaction = session.in_transaction
            raise err from None

    def _end_read_transaction(self, session: Session) -> None:
        pinned = getattr(session, "pinned", None)
        if pinned:
            self.db.release_read_point(pinned[1])
            session.pinned = None  # type: ignore[attr-defined]
        session.in_transaction = False

    def _abort_transaction(self, session: Session, why: str) -> None:
        self._end_read_transaction(session)

    def status(self) -> dict[str, Any]:
        db: ReplicaDatabase = self.db  # type: ignore[assignment]
        f = self.follower
        return {
            "node_id": self.node_id,
            "epoch": db.epoch,
            "vdl": db.view,
            "vcl": 0,
            "fenced": False,
            "read_only": True,
            "sessions": self.session_count(),
            "commits": 0,
            "cache_hits": db.cache.hits,
            "cache_misses": db.cache.misses,
            "replica_lag_lsn": max(0, db.latest_lsn - db.view),
            "replica_lag_ms": db.lag_ms,
            "read_lsn": db.view,
            "writer_address": f.writer_address if f else "",
            "stream_connected": bool(f and f.connected),
        }

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        super().close()
