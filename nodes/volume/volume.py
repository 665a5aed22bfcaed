"""The volume client: the writer's view of a quorum-replicated volume.

    vol = Volume.open(config, transport, create_if_missing=True)
    lsn = vol.append_group([PageChange(page=7, kind=redo.FULL_PAGE, payload=img)])
    vol.wait_durable(lsn, timeout_s=5)          # or vol.durable_future(lsn)
    data, page_lsn = vol.read_page(7)           # at the current VDL
    vol.close()

See nodes/volume/DESIGN.md for the reasoning; aurora-facts.md for the vocabulary.
"""

from __future__ import annotations

import concurrent.futures as cf
import bisect
import heapq
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram

from borealdb.errors import InvalidRequest, QuorumLost, StaleEpoch, Unavailable, VolumeFull
from borealdb.nodes import redo
from borealdb.nodes.log import get_logger
from borealdb.nodes.volume.tracker import READ_QUORUM, WRITE_QUORUM, LsnTracker
from borealdb.nodes.volume.transport import NodeUnavailable, Transport, error_reason, send_append
from borealdb.protos import storage_pb2 as pb

GiB = 1024**3
TiB = 1024**4
RECORD_OVERHEAD = 64  # bytes of record header we count against byte budgets

# ---- metrics (module level: one registry entry per process, labelled by volume) -------
M_COMMITS = Counter("boreal_volume_commits_total", "Atomic groups appended", ["volume"])
M_RECORDS = Counter("boreal_volume_records_total", "Redo records appended", ["volume"])
M_BYTES_SENT = Counter("boreal_volume_bytes_sent_total", "Serialized AppendRequest bytes sent to storage nodes (wire bytes less gRPC framing)", ["volume"])
M_RPC_RECORDS = Histogram(
    "boreal_volume_records_per_append_rpc",
    "Records per Append RPC",
    ["volume"],
    buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
M_RPC_LATENCY = Histogram(
    "boreal_volume_append_rpc_seconds",
    "Append RPC latency",
    ["volume"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
M_VDL = Gauge("boreal_volume_vdl", "Volume durable LSN", ["volume"])
M_VCL = Gauge("boreal_volume_vcl", "Volume complete LSN", ["volume"])
M_READS = Counter("boreal_volume_page_reads_total", "Page reads", ["volume", "outcome"])
M_HEDGES = Counter("boreal_volume_read_hedges_total", "Reads sent to a second segment", ["volume"])


class _VolumeMetrics:
    """The labelled children of the module metrics for one volume (looked up once, not per RPC)."""

    def __init__(self, volume_id: str):
        self.commits = M_COMMITS.labels(volume_id)
        self.records = M_RECORDS.labels(volume_id)
        self.bytes_sent = M_BYTES_SENT.labels(volume_id)
        self.rpc_records = M_RPC_RECORDS.labels(volume_id)
        self.rpc_latency = M_RPC_LATENCY.labels(volume_id)


# ---- configuration and value types ---------------------------------------------------


@dataclass
class VolumeConfig:
    volume_id: str
    nodes: list[Any]                          # pb.StorageNodeInfo, (node_id, az, address) or objects with those attrs
    page_size: int = 4096
    pg_size_pages: int = 10 * GiB // 4096     # Aurora: 10 GiB per PG
    max_size_bytes: int = 128 * TiB
    lsn_allocation_limit: int = 1_000_000     # LAL
    max_records_per_rpc: int = 1024
    max_bytes_per_rpc: int = 4 * 1024 * 1024
    max_inflight_rpcs_per_node: int = 4
    # a 2nd..Nth concurrent Append to a node is opened only when at least this many records
    # wait; smaller backlogs wait for the in-flight RPC to complete and then go as one batch
    # (fewer, fuller RPCs: per-RPC CPU dominates on client and storage node)
    pipeline_min_records: int = 256
    # Group commit delay (per node, like PostgreSQL's commit_delay and commit_siblings):
    # while many commits overlap (the last batch to the node, or its queue, holds at least
    # group_commit_siblings groups), a sender waits after its previous send before the
    # next one, so the batch gathers more commits: group_commit_delay_per_group_s per
    # group of the last batch, or of the queue if only it holds enough (the more commits
    # overlap, the more a wait gathers and the more CPU it saves), at most
    # group_commit_delay_s (0 disables; per group 0: always the maximum). Few clients never
    # wait, and no batch waits once the writer's hint (set_commit_hint) says every active
    # session already has its commit in (nothing more can join). Per Append both sides pay
    # a fixed CPU cost (`boreal bench rpc`), so fuller batches leave more CPU to commit
    # with; a longer wait costs latency (why 1.5 ms and 10 ms: DESIGN.md). Applies on
    # transports with a timer (gRPC), not the in-process one.
    group_commit_delay_s: float = 0.010
    group_commit_siblings: int = 3
    group_commit_delay_per_group_s: float = 0.0015
    max_pending_bytes: int = 64 * 1024 * 1024  # bytes of records not yet complete (back-pressure)
    max_node_backlog_bytes: int = 256 * 1024 * 1024  # beyond this, a dead node's complete records are left to gossip
    rpc_timeout_s: float = 2.0
    read_hedge_after_s: float = 0.05
    read_timeout_s: float = 5.0
    heartbeat_interval_s: float = 0.5
    backpressure_timeout_s: float = 30.0
    retry_backoff_s: float = 0.02
    retry_backoff_max_s: float = 1.0
    recovery_timeout_s: float = 30.0
    local_az: str | None = None               # prefer reads from this AZ

    def node_infos(self) -> list[pb.StorageNodeInfo]:
        out = []
        for n in self.nodes:
            if isinstance(n, pb.StorageNodeInfo):
                out.append(pb.StorageNodeInfo(node_id=n.node_id, az=n.az, address=n.address))
            elif isinstance(n, (tuple, list)):
                node_id, az, address = n
                out.append(pb.StorageNodeInfo(node_id=node_id, az=az, address=address))
            else:
                out.append(pb.StorageNodeInfo(node_id=n.node_id, az=n.az, address=n.address))
        addresses = [n.address for n in out]
        if len(set(addresses)) != len(addresses):
            raise InvalidRequest(f"duplicate storage node addresses in {addresses}")
        return out

    def validate(self) -> None:
        if not self.volume_id:
            raise InvalidRequest("volume_id is empty")
        if not (512 <= self.page_size <= redo.MAX_PAGE_SIZE) or self.page_size & (self.page_size - 1):
            raise InvalidRequest(f"page_size {self.page_size} must be a power of two in [512, 65536]")
        if self.pg_size_pages < 1:
            raise InvalidRequest("pg_size_pages must be >= 1")
        if self.max_size_bytes < self.page_size:
            raise InvalidRequest("max_size_bytes < page_size")
        if self.lsn_allocation_limit < 1:
            raise InvalidRequest("lsn_allocation_limit must be >= 1")
        if self.max_inflight_rpcs_per_node < 1 or self.max_records_per_rpc < 1:
            raise InvalidRequest("max_inflight_rpcs_per_node and max_records_per_rpc must be >= 1")
        if not 0 <= self.group_commit_delay_s <= 1:
            raise InvalidRequest(f"group_commit_delay_s {self.group_commit_delay_s} must be in [0, 1]")
        if not 0 <= self.group_commit_delay_per_group_s <= 1:
            raise InvalidRequest(f"group_commit_delay_per_group_s {self.group_commit_delay_per_group_s} "
                                 "must be in [0, 1]")
        if self.group_commit_siblings < 1:
            raise InvalidRequest(f"group_commit_siblings {self.group_commit_siblings} must be >= 1")


@dataclass(frozen=True)
class PageChange:
    page: int
    kind: int                       # redo.FULL_PAGE or redo.PAGE_DELTA
    payload: bytes
    page_prev_lsn: int | None = None  # the caller's knowledge of the page's previous record


@dataclass
class RecoveryReport:
    volume_id: str
    epoch: int
    vcl: int
    vdl: int
    truncation: tuple[int, int, int] | None   # (epoch, first_lsn, last_lsn) recorded by this open
    next_lsn: int
    pg_scls: dict[int, dict[str, int]]
    read_only: bool
    created: bool
    duration_ms: float
    notes: list[str] = field(default_factory=list)


def _trunc_key(t: pb.TruncationRange) -> tuple[int, int, int]:
    return (t.epoch, t.first_lsn, t.last_lsn)


def _exception(fut: cf.Future, address: str) -> BaseException | None:
    """fut.exception(), with a cancelled call (transport shut down) seen as an unreachable node."""
    if fut.cancelled():
        return NodeUnavailable(address, "call cancelled")
    return fut.exception()


# ---- placement --------------------------------------------------------------------------


def place_pg(pg: int, nodes: list[pb.StorageNodeInfo], load: dict[str, int]) -> list[pb.StorageNodeInfo]:
    """6 nodes for a new PG: 2 in each of 3 AZs, least-loaded first, ties rotated by pg."""
    by_az: dict[str, list[pb.StorageNodeInfo]] = {}
    for n in nodes:
        by_az.setdefault(n.az, []).append(n)
    eligible = sorted(az for az, ns in by_az.items() if len(ns) >= 2)
    if len(eligible) < 3:
        detail = ", ".join(f"{az}: {len(ns)}" for az, ns in sorted(by_az.items())) or "none"
        raise InvalidRequest(f"placement needs 3 AZs with >= 2 storage nodes each (have {detail})")

    def az_load(az: str) -> int:
        return sum(load.get(n.address, 0) for n in by_az[az])

    rot = {az: (i - pg) % len(eligible) for i, az in enumerate(eligible)}
    azs = sorted(eligible, key=lambda az: (az_load(az) / len(by_az[az]), rot[az]))[:3]
    chosen: list[pb.StorageNodeInfo] = []
    for az in sorted(azs):
        ns = sorted(by_az[az], key=lambda n: n.address)
        k = len(ns)
        ranked = sorted(range(k), key=lambda i: (load.get(ns[i].address, 0), (i - pg) % k))
        for i in ranked[:2]:
            chosen.append(ns[i])
    return [pb.StorageNodeInfo(node_id=n.node_id, az=n.az, address=n.address) for n in chosen]


# ---- per-node sender --------------------------------------------------------------------


class _Sender:
    """Batches every record queued for one storage node into Append RPCs, up to N in flight.

    No thread of its own: pump() runs on enqueue, on RPC completion and on the
    volume's ticker (retries after backoff, heartbeats). Lock order: the volume lock may
    be held when taking self.lock, never the reverse.
    """

    def __init__(self, vol: "Volume", address: str):
        self.vol = vol
        self.address = address
        self.lock = threading.Lock()
        self.queue: deque[pb.RedoRecord] = deque()
        self.queued_bytes = 0
        self.inflight = 0
        self.failures = 0
        self.backoff_until = 0.0
        self.down = False
        self.fixing = False            # a Seal / CreateSegment repair is running
        self.last_send = 0.0
        self.last_batch_groups = 0     # commit groups (consistency points) in the last batch sent
        self.delay_armed = False       # a group-commit-delay timer will pump this sender
        self.delay_gen = 0             # bumped per send: a timer armed before it is stale
        self.has_timer = callable(getattr(vol.transport, "call_later", None))
        self.rpcs = 0
        self.last_error = ""

    def enqueue(self, rec: pb.RedoRecord) -> None:
        with self.lock:
            self.queue.append(rec)
            self.queued_bytes += len(rec.payload) + RECORD_OVERHEAD

    def _requeue(self, batch: list[pb.RedoRecord]) -> None:
        if not batch:
            return
        merged = sorted(itertools.chain(batch, self.queue), key=lambda r: r.lsn)
        self.queue = deque(merged)
        self.queued_bytes += sum(len(r.payload) + RECORD_OVERHEAD for r in batch)

    def pump(self, heartbeat: bool = False, no_delay: bool = False) -> None:
        vol = self.vol
        if vol._fenced is not None or vol._stopped:
            return
        now = time.monotonic()
        batches: list[list[pb.RedoRecord]] = []
        cfg = vol.config
        with self.lock:
            if self.fixing or now < self.backoff_until:
                return
            limit = 1 if self.down else cfg.max_inflight_rpcs_per_node
            delay_s = 0.0 if no_delay else self._group_commit_wait(now)
            if delay_s > 0:
                if self.delay_armed:
                    return  # the armed timer pumps
                self.delay_armed = True
            while delay_s <= 0 and self.inflight < limit and self.queue:
                if self.inflight and len(self.queue) < cfg.pipeline_min_records:
                    break  # the running RPC's completion pumps again with a fuller batch
                batch: list[pb.RedoRecord] = []
                size = groups = 0
                while self.queue and len(batch) < cfg.max_records_per_rpc:
                    r = self.queue[0]
                    rsize = len(r.payload) + RECORD_OVERHEAD
                    if batch and size + rsize > cfg.max_bytes_per_rpc:
                        break
                    batch.append(self.queue.popleft())
                    size += rsize
                    groups += r.consistency_point
                self.queued_bytes -= size
                self.inflight += 1
                self.last_batch_groups = groups
                batches.append(batch)
            if heartbeat and not batches and self.inflight == 0:
                self.inflight += 1
                batches.append([])
            if batches:
                self.last_send = now
                self.delay_armed = False
                self.delay_gen += 1  # a timer still pending is for a batch already sent: it does nothing
        if delay_s > 0:
            self._arm_delay(delay_s)
        for batch in batches:
            self._send(batch)

    def _group_commit_wait(self, now: float) -> float:
        """Seconds this pump should wait for the group commit delay (0: send now). Caller holds the lock."""
        cfg = self.vol.config
        if (cfg.group_commit_delay_s <= 0 or not self.has_timer or self.inflight or self.down or not self.queue
                or len(self.queue) >= cfg.pipeline_min_records):
            return 0.0
        if now - self.last_send >= cfg.group_commit_delay_s:
            return 0.0
        siblings = cfg.group_commit_siblings
        groups = self.last_batch_groups
        if groups < siblings:
            groups = 0
            for r in self.queue:  # short: fewer than pipeline_min_records
                groups += r.consistency_point
            if groups < siblings:
                return 0.0  # few commits overlap: not worth delaying them
        if not self.vol._commits_may_come():
            return 0.0  # every session waits: nothing more can join the batch
        delay_s = cfg.group_commit_delay_s
        if cfg.group_commit_delay_per_group_s > 0:
            delay_s = min(delay_s, cfg.group_commit_delay_per_group_s * groups)
        wait = self.last_send + delay_s - now
        return wait if wait >= 0.0002 else 0.0  # a shorter wait is not worth a timer

    def _arm_delay(self, delay_s: float) -> None:
        gen = self.delay_gen
        try:
            self.vol.transport.call_later(delay_s, lambda: self._delay_over(gen))
        except Exception:  # noqa: BLE001 - the transport is closing: send now, as without a delay
            with self.lock:
                self.delay_armed = False
            self.pump(no_delay=True)

    def _delay_over(self, gen: int) -> None:
        with self.lock:
            if gen != self.delay_gen:
                return  # its batch went early (the writer's hint): the next batch has its own delay
            self.delay_armed = False
        self.pump(no_delay=True)  # the delay is what just ended

    def _send(self, batch: list[pb.RedoRecord]) -> None:
        vol = self.vol
        sreq = pb.AppendStreamRequest()
        req = sreq.append
        req.volume_id = vol.volume_id
        req.epoch = vol._epoch
        req.vdl = vol._vdl_cache
        req.min_read_point = vol.min_read_point()
        req.records.extend(batch)
        t0 = time.monotonic()
        send_append(vol.transport, self.address, sreq, vol.config.rpc_timeout_s,
                    lambda resp, exc: self._done(batch, resp, exc, t0, sreq))

    def _done(self, batch: list[pb.RedoRecord], resp: Any, exc: BaseException | None, t0: float,
              sreq: pb.AppendStreamRequest | None = None) -> None:
        vol = self.vol
        if exc is None:
            m = vol._m
            m.rpc_latency.observe(time.monotonic() - t0)
            m.rpc_records.observe(len(batch))
            if sreq is not None:
                m.bytes_sent.inc(sreq.append.ByteSize())
            with self.lock:
                self.inflight -= 1
                self.failures = 0
                was_down, self.down = self.down, False
                self.rpcs += 1
            if was_down:
                vol._log.info("storage_node_back", address=self.address, epoch=vol._epoch, vdl=vol._vdl_cache)
            vol._on_acks(self.address, resp.acks)
            self.pump()
            return
        reason = error_reason(exc)
        if reason == pb.STALE_EPOCH:
            with self.lock:
                self.inflight -= 1
                self._requeue(batch)
            vol._fence(f"{self.address} rejected epoch {vol._epoch}: {exc}")
            return
        fix = None
        with self.lock:
            self.inflight -= 1
            self._requeue(batch)
            self.last_error = str(exc)
            if reason == pb.EPOCH_AHEAD:
                fix = "Seal"
            elif reason in (pb.UNKNOWN_SEGMENT, pb.UNKNOWN_VOLUME):
                fix = "CreateSegment"
            else:
                self.failures += 1
                delay = min(vol.config.retry_backoff_max_s, vol.config.retry_backoff_s * (2 ** min(self.failures, 10)))
                self.backoff_until = time.monotonic() + delay
                if isinstance(exc, NodeUnavailable):
                    newly_down = not self.down
                    self.down = True
                else:
                    newly_down = False
            if fix:
                if self.fixing:
                    fix = None
                else:
                    self.fixing = True
            backlog = self.queued_bytes
        if fix:
            vol._log.info("segment_fixup", address=self.address, action=fix, epoch=vol._epoch)
            vol._fix_node(self.address, fix, self._fixed)
            return
        if reason is None and isinstance(exc, NodeUnavailable):
            if newly_down and not vol._stopped:  # closing the transport fails what is in flight
                vol._log.warning("storage_node_down", address=self.address, error=str(exc), epoch=vol._epoch,
                                 vdl=vol._vdl_cache, vcl=vol._vcl_cache)
            if backlog > vol.config.max_node_backlog_bytes:
                self._drop_complete()
        else:
            vol._log.error("append_rejected", address=self.address, reason=pb.ErrorReason.Name(reason or 0), error=str(exc))

    def _fixed(self) -> None:
        with self.lock:
            self.fixing = False
        self.pump()

    def _drop_complete(self) -> None:
        """Forget records this dead node missed that already met their PG's quorum (gossip repairs them)."""
        vol = self.vol
        with vol._lock:
            pgcl = {pg: vol._tracker.pgcl(pg) for pg in vol._tracker.pgs()}
        with self.lock:
            keep = deque(r for r in self.queue if r.lsn > pgcl.get(r.pg, 0))
            dropped = len(self.queue) - len(keep)
            self.queue = keep
            self.queued_bytes = sum(len(r.payload) + RECORD_OVERHEAD for r in keep)
        if dropped:
            vol._log.info("backlog_left_to_gossip", address=self.address, records=dropped)


# ---- the volume ---------------------------------------------------------------------------


class Volume:
    """Writer-side client of one volume. Thread-safe. Build with create() or open()."""

    def __init__(self, config: VolumeConfig, transport: Transport):
        config.validate()
        self.config = config
        self.transport = transport
        self.volume_id = config.volume_id
        self._nodes = config.node_infos()
        self._log = get_logger(component="volume", volume=config.volume_id)
        self._m = _VolumeMetrics(config.volume_id)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._grow_lock = threading.Lock()
        self._epoch = 0
        self._descriptor = pb.VolumeDescriptor(
            volume_id=config.volume_id,
            version=0,
            page_size=config.page_size,
            pg_size_pages=config.pg_size_pages,
            max_size_bytes=config.max_size_bytes,
            lsn_allocation_limit=config.lsn_allocation_limit,
        )
        self._truncations: list[pb.TruncationRange] = []
        self._tracker = LsnTracker(0)
        self._next_lsn = 1
        self._epoch_base = 0            # LSNs <= this were reserved by recovery (truncated gap)
        self._pg_last: dict[int, int] = {}
        # per PG: LSNs of its records (pruned below the oldest read point). A segment's SCL
        # only reaches its own PG's last record, so a read at R is sent as a read at the
        # PG's last record <= R (the same page versions).
        self._pg_lsns: dict[int, list[int]] = {}
        self._page_last: dict[int, int] = {}
        self._page_last_cap = 1_000_000
        self._sizes: deque[tuple[int, int]] = deque()  # (lsn, bytes) not yet complete
        self._undurable_commits: deque[int] = deque()  # commit LSNs of appended groups > VDL
        self._pending_bytes = 0
        self._waiters: list[tuple[int, int, cf.Future]] = []
        self._waiter_seq = itertools.count()
        self._vdl_listeners: list[Any] = []
        self._more_commits_possible: Callable[[], bool] | None = None
        self._hint_failed = False
        self._read_points: dict[int, int] = {}
        self._read_seq = itertools.count(1)
        self._senders: dict[str, _Sender] = {}
        self._fenced: Exception | None = None
        self._read_only_reason: str | None = None
        self._stopped = False
        self._vdl_cache = 0
        self._vcl_cache = 0
        self._ticker: threading.Thread | None = None
        self._tick_stop = threading.Event()
        self.recovery: RecoveryReport | None = None

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def create(cls, config: VolumeConfig, transport: Transport) -> "Volume":
        """A new volume: epoch 1, descriptor version 1 holding PG 0."""
        t0 = time.monotonic()
        vol = cls(config, transport)
        place_pg(0, vol._nodes, {})  # fail early on a bad topology
        listed = vol._list_all()
        if any(resp.segments for resp in listed.values() if not isinstance(resp, Exception)):
            raise InvalidRequest(f"volume {config.volume_id!r} already exists; use Volume.open")
        vol._epoch = 1
        vol._ensure_pgs(0)
        vol._start()
        vol.recovery = RecoveryReport(
            volume_id=vol.volume_id, epoch=1, vcl=0, vdl=0, truncation=None, next_lsn=1,
            pg_scls={0: vol._tracker.scls(0)}, read_only=False, created=True,
            duration_ms=(time.monotonic() - t0) * 1000,
        )
        vol._log.info("volume_created", epoch=1, vdl=0, vcl=0, pgs=1)
        return vol

    @classmethod
    def open(cls, config: VolumeConfig, transport: Transport, *, create_if_missing: bool = False) -> "Volume":
        """Recover the volume from the storage nodes alone, fence older writers, and return it."""
        vol = cls(config, transport)
        report = vol._recover(create_if_missing)
        if report is None:
            return cls.create(config, transport)
        vol.recovery = report
        vol._start()
        return vol

    def _start(self) -> None:
        for n in self._all_addresses():
            self._sender(n)
        self._publish_metrics()
        self._ticker = threading.Thread(target=self._tick_loop, name=f"volume-{self.volume_id}-ticker", daemon=True)
        self._ticker.start()

    # ---- public properties --------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def vdl(self) -> int:
        return self._vdl_cache

    @property
    def vcl(self) -> int:
        return self._vcl_cache

    @property
    def next_lsn(self) -> int:
        return self._next_lsn

    @property
    def read_only(self) -> bool:
        return self._read_only_reason is not None

    @property
    def fenced(self) -> bool:
        return self._fenced is not None

    def descriptor(self) -> pb.VolumeDescriptor:
        with self._lock:
            d = pb.VolumeDescriptor()
            d.CopyFrom(self._descriptor)
            return d

    def pg_of(self, page: int) -> int:
        return page // self.config.pg_size_pages

    # ---- write path ---------------------------------------------------------------------

    def append_group(self, changes: list[PageChange], timeout_s: float | None = None) -> int:
        """Append one atomic group of page changes; return its commit LSN (a CPL).

        Returns once the records are queued for the storage nodes; durability is
        wait_durable() / durable_future(). Blocks (up to timeout_s, default
        backpressure_timeout_s) while the LSN allocation limit or the pending-bytes
        budget is exhausted.
        """
        if not changes:
            raise InvalidRequest("append_group needs at least one change")
        cfg = self.config
        size = 0
        max_pg = 0
        for ch in changes:
            if not isinstance(ch.page, int) or ch.page < 0:
                raise InvalidRequest(f"bad page number {ch.page!r}")
            if (ch.page + 1) * cfg.page_size > cfg.max_size_bytes:
                raise VolumeFull(
                    f"page {ch.page} is beyond the volume's maximum size {cfg.max_size_bytes} bytes"
                )
            try:
                redo.check_payload(ch.kind, ch.payload, cfg.page_size)
            except redo.DeltaError as exc:
                raise InvalidRequest(f"page {ch.page}: {exc}") from exc
            if len(ch.payload) + RECORD_OVERHEAD > cfg.max_bytes_per_rpc:
                raise InvalidRequest(f"page {ch.page}: payload of {len(ch.payload)} bytes exceeds max_bytes_per_rpc")
            size += len(ch.payload) + RECORD_OVERHEAD
            max_pg = max(max_pg, self.pg_of(ch.page))
        self._check_writable()
        self._ensure_pgs(max_pg)
        n = len(changes)
        lal = cfg.lsn_allocation_limit
        if n > lal:
            raise InvalidRequest(f"group of {n} records exceeds the LSN allocation limit {lal}")
        deadline = time.monotonic() + (cfg.backpressure_timeout_s if timeout_s is None else timeout_s)
        touched: set[str] = set()
        with self._cond:
            while True:
                self._check_writable()
                last = self._next_lsn + n - 1
                lal_ok = last <= max(self._tracker.vdl, self._epoch_base) + lal
                bytes_ok = self._pending_bytes == 0 or self._pending_bytes + size <= cfg.max_pending_bytes
                if lal_ok and bytes_ok:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    what = "LSN allocation limit" if not lal_ok else "pending-bytes budget"
                    raise Unavailable(
                        f"back-pressure: {what} exhausted for {deadline - time.monotonic() + remaining:.1f}s "
                        f"(next lsn {self._next_lsn}, vdl {self._tracker.vdl}, pending {self._pending_bytes} bytes)"
                    )
                self._cond.wait(remaining)
            epoch = self._epoch
            for i, ch in enumerate(changes):
                lsn = self._next_lsn
                self._next_lsn += 1
                pg = self.pg_of(ch.page)
                prev_page = self._page_last.get(ch.page)
                if prev_page is None:
                    prev_page = ch.page_prev_lsn or 0
                rec = pb.RedoRecord(
                    lsn=lsn,
                    pg=pg,
                    page=ch.page,
                    pg_prev_lsn=self._pg_last.get(pg, 0),
                    page_prev_lsn=prev_page,
                    kind=ch.kind,
                    payload=ch.payload,
                    consistency_point=(i == n - 1),
                    epoch=epoch,
                )
                redo.seal_record(rec)
                self._pg_last[pg] = lsn
                lsns = self._pg_lsns.setdefault(pg, [])
                lsns.append(lsn)
                if len(lsns) > 4096:
                    self._prune_pg_lsns(lsns)
                if len(self._page_last) >= self._page_last_cap:
                    self._page_last.clear()
                self._page_last[ch.page] = lsn
                self._tracker.add_record(lsn, pg, rec.consistency_point)
                rsize = len(ch.payload) + RECORD_OVERHEAD
                self._sizes.append((lsn, rsize))
                self._pending_bytes += rsize
                for addr in self._tracker.members(pg):
                    self._sender(addr).enqueue(rec)
                    touched.add(addr)
            commit_lsn = self._next_lsn - 1
            self._undurable_commits.append(commit_lsn)
        self._m.commits.inc()
        self._m.records.inc(n)
        for addr in touched:
            self._senders[addr].pump()
        if self._more_commits_possible is not None and len(self._senders) > len(touched):
            # A sender this group did not touch may hold earlier commits for a delay that
            # can now gather nothing; the VDL needs them too.
            armed = [snd for addr, snd in list(self._senders.items()) if snd.delay_armed and addr not in touched]
            if armed and not self._commits_may_come():
                for snd in armed:
                    snd.pump()
        return commit_lsn

    def durable_future(self, lsn: int) -> cf.Future:
        """A future resolving to the VDL once VDL >= lsn (or failing with StaleEpoch / Unavailable)."""
        fut: cf.Future = cf.Future()
        with self._lock:
            if self._tracker.vdl >= lsn:
                fut.set_result(self._tracker.vdl)
                return fut
            if self._fenced is not None:
                fut.set_exception(self._fenced)
                return fut
            if self._stopped:
                fut.set_exception(Unavailable("volume is closed"))
                return fut
            if lsn >= self._next_lsn:
                raise InvalidRequest(f"lsn {lsn} was never issued (next lsn {self._next_lsn})")
            heapq.heappush(self._waiters, (lsn, next(self._waiter_seq), fut))
        return fut

    def wait_durable(self, lsn: int, timeout_s: float | None = None) -> int:
        """Block until VDL >= lsn; return the VDL. QuorumLost / Unavailable on timeout."""
        fut = self.durable_future(lsn)
        try:
            return fut.result(timeout_s)
        except cf.TimeoutError:
            raise self.durability_timeout_error(lsn, timeout_s) from None

    def durability_timeout_error(self, lsn: int, timeout_s: float | None) -> Exception:
        """What a wait for VDL >= lsn that timed out means: QuorumLost (naming the PGs
        without a reachable write quorum) or Unavailable."""
        lacking = self._pgs_without_write_quorum()
        msg = f"lsn {lsn} not durable after {timeout_s}s (vdl {self.vdl}, vcl {self.vcl})"
        if lacking:
            return QuorumLost(f"{msg}: fewer than {WRITE_QUORUM} reachable segments in pg(s) {lacking}")
        return Unavailable(msg)

    def add_vdl_listener(self, fn) -> None:
        """Call fn(vdl) after every VDL advance, on the thread that processed the acks
        (the transport's), before the commits waiting for that VDL are released:
        cheaper than a durable_future per commit for a follower of every advance (the
        replicas' redo streams). fn must not block; an exception it raises is logged."""
        self._vdl_listeners.append(fn)

    def _commits_may_come(self) -> bool:
        """The commit hint's answer; True without a hint or if it raises (logged once)."""
        hint = self._more_commits_possible
        if hint is None:
            return True
        try:
            return bool(hint())
        except Exception as exc:  # noqa: BLE001 - a broken hint must not stall commits
            if not self._hint_failed:
                self._hint_failed = True
                self._log.error("commit_hint_failed", error=repr(exc))
            return True

    @property
    def undurable_commits(self) -> int:
        """Commit groups appended whose LSN the VDL has not reached yet (no lock: a
        snapshot for a hint, not for correctness)."""
        return len(self._undurable_commits)

    def set_commit_hint(self, more_commits_possible: Callable[[], bool] | None) -> None:
        """The writer's answer to "could a commit not yet appended still come?", asked
        before each group commit delay. False (every session that may commit already has
        its commit appended and waits for it) means a delay would gather nothing, so the
        batch goes at once. It is called under a sender's lock, on any thread: it must be cheap and
        not block; if it raises, the delay applies as configured (logged once). None
        (the default): the delay always applies as configured."""
        self._more_commits_possible = more_commits_possible

    def _prune_pg_lsns(self, lsns: list[int]) -> None:
        floor = min(self._read_points.values()) if self._read_points else self._tracker.vdl
        i = bisect.bisect_right(lsns, floor) - 1
        if i > 0:
            del lsns[:i]

    def _pg_read_lsn(self, pg: int, read_lsn: int) -> int:
        """The PG's last record <= read_lsn (0: none). Caller holds the lock."""
        lsns = self._pg_lsns.get(pg, [])
        i = bisect.bisect_right(lsns, read_lsn)
        return lsns[i - 1] if i else 0

    def _pgs_without_write_quorum(self) -> list[int]:
        with self._lock:
            out = []
            for pg in self._tracker.pgs():
                up = sum(1 for a in self._tracker.members(pg) if not self._sender(a).down)
                if up < WRITE_QUORUM:
                    out.append(pg)
            return out

    def _check_writable(self) -> None:
        if self._fenced is not None:
            raise self._fenced
        if self._stopped:
            raise Unavailable("volume is closed")
        if self._read_only_reason is not None:
            raise QuorumLost(f"volume opened read-only: {self._read_only_reason}")

    # ---- acks, waiters, fencing ----------------------------------------------------------

    def _on_acks(self, address: str, acks: Iterable[pb.SegmentAck]) -> None:
        done: list[tuple[cf.Future, int]] = []
        with self._cond:
            moved = False
            for ack in acks:
                if not self._tracker.has_pg(ack.pg) or address not in self._tracker.members(ack.pg):
                    continue
                if ack.scl > self._tracker.last_lsn:
                    self._log.warning("scl_above_last_lsn", address=address, pg=ack.pg, scl=ack.scl,
                                      last_lsn=self._tracker.last_lsn)
                    continue
                moved |= self._tracker.ack(ack.pg, address, ack.scl)
            before = self._vdl_cache
            if moved:
                done = self._after_advance()
            advanced = self._vdl_cache > before
        # Listeners first: they only wake the replicas' redo streams, which then send
        # before the commits' replies are written (a replica sees a row sooner after
        # its client was told; `boreal bench lag`). A failing listener must not keep
        # durable commits waiting.
        if advanced:
            for fn in self._vdl_listeners:
                try:
                    fn(self._vdl_cache)
                except Exception as exc:  # noqa: BLE001 - logged; the commits go on
                    self._log.error("vdl_listener_failed", error=repr(exc), vdl=self._vdl_cache)
        for fut, vdl in done:
            if not fut.done():
                fut.set_result(vdl)

    def _after_advance(self) -> list[tuple[cf.Future, int]]:
        """Under the lock: publish VCL/VDL, release byte budget, collect satisfied waiters."""
        t = self._tracker
        self._vcl_cache, self._vdl_cache = t.vcl, t.vdl
        while self._sizes and self._sizes[0][0] <= t.vcl:
            self._pending_bytes -= self._sizes.popleft()[1]
        while self._undurable_commits and self._undurable_commits[0] <= t.vdl:
            self._undurable_commits.popleft()
        done = []
        while self._waiters and self._waiters[0][0] <= t.vdl:
            _lsn, _seq, fut = heapq.heappop(self._waiters)
            done.append((fut, t.vdl))
        self._cond.notify_all()
        return done

    def _fence(self, why: str) -> None:
        with self._cond:
            if self._fenced is not None:
                return
            self._fenced = StaleEpoch(f"volume {self.volume_id} epoch {self._epoch} is fenced: {why}")
            waiters, self._waiters = self._waiters, []
            self._undurable_commits.clear()  # they fail with the waiters: nobody waits for them
            self._cond.notify_all()
        self._log.warning("volume_fenced", epoch=self._epoch, vdl=self._vdl_cache, vcl=self._vcl_cache, why=why)
        for _lsn, _seq, fut in waiters:
            if not fut.done():
                fut.set_exception(self._fenced)

    # ---- read path -------------------------------------------------------------------------

    def register_read_point(self, lsn: int | None = None) -> int:
        """Open a read at `lsn` (default: the VDL); storage keeps versions it needs. Returns a token."""
        with self._lock:
            lsn = self._tracker.vdl if lsn is None else lsn
            token = next(self._read_seq)
            self._read_points[token] = lsn
            return token

    def release_read_point(self, token: int) -> None:
        with self._lock:
            self._read_points.pop(token, None)

    def min_read_point(self) -> int:
        """PGMRPL sent to storage: the oldest open read point, or the VDL when none is open."""
        with self._lock:
            if self._read_points:
                return min(self._read_points.values())
            return self._tracker.vdl

    def read_page(self, page: int, read_lsn: int | None = None, timeout_s: float | None = None) -> tuple[bytes, int]:
        """The page image at read_lsn (default: VDL) and the LSN of its newest record <= read_lsn.

        Data is b"" for a page never written. One segment whose SCL >= read_lsn is asked
        (same AZ first); a slow or unhelpful answer is hedged to the next one.
        """
        cfg = self.config
        if not isinstance(page, int) or page < 0 or (page + 1) * cfg.page_size > cfg.max_size_bytes:
            raise InvalidRequest(f"page {page!r} is outside the volume")
        pg = self.pg_of(page)
        with self._lock:
            if self._fenced is not None:
                raise self._fenced
            vdl = self._tracker.vdl
            if read_lsn is None:
                read_lsn = vdl
            if read_lsn > vdl:
                raise InvalidRequest(f"read_lsn {read_lsn} is above the VDL {vdl}")
            if not self._tracker.has_pg(pg):
                return b"", 0
            user_read_lsn = read_lsn
            read_lsn = self._pg_read_lsn(pg, read_lsn)
            if read_lsn == 0:
                return b"", 0  # no record of this PG at or below the read point
            scls = self._tracker.scls(pg)
            members = self._tracker.members(pg)
            azs = {p.pg: p for p in self._descriptor.pgs}
            az_of = {s.address: s.az for s in azs[pg].segments} if pg in azs else {}
        local = cfg.local_az

        def rank(addr: str):
            able = scls.get(addr, 0) >= read_lsn
            s = self._senders.get(addr)
            return (not able, bool(s and s.down), local is not None and az_of.get(addr) != local, -scls.get(addr, 0), addr)

        candidates = sorted(members, key=rank)
        req = pb.ReadPageRequest(volume_id=self.volume_id, epoch=self._epoch, pg=pg, page=page, read_lsn=read_lsn)
        deadline = time.monotonic() + (cfg.read_timeout_s if timeout_s is None else timeout_s)
        pending: dict[cf.Future, str] = {}
        errors: dict[str, str] = {}
        launched = 0

        def launch() -> None:
            nonlocal launched
            addr = candidates[launched]
            launched += 1
            if launched > 1:
                M_HEDGES.labels(self.volume_id).inc()
            rpc_timeout = max(0.001, min(cfg.rpc_timeout_s, deadline - time.monotonic()))
            pending[self.transport.call(addr, "ReadPage", req, rpc_timeout)] = addr

        launch()
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            wait_for = deadline - now
            if launched < len(candidates):
                wait_for = min(wait_for, cfg.read_hedge_after_s)
            done, _ = cf.wait(list(pending), timeout=wait_for, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                addr = pending.pop(fut)
                exc = _exception(fut, addr)
                if exc is not None:
                    if error_reason(exc) == pb.STALE_EPOCH:
                        self._fence(f"{addr} rejected a read at epoch {self._epoch}: {exc}")
                        raise self._fenced  # type: ignore[misc]
                    errors[addr] = str(exc)
                    continue
                resp = fut.result()
                if resp.scl:
                    self._on_acks(addr, [pb.SegmentAck(pg=pg, scl=resp.scl)])
                if resp.status == pb.READ_OK:
                    M_READS.labels(self.volume_id, "ok" if launched == 1 else "hedged").inc()
                    return resp.data, resp.page_lsn
                errors[addr] = pb.ReadStatus.Name(resp.status)
            if launched < len(candidates) and (not done or not pending):
                launch()
            elif not pending and launched >= len(candidates):
                break
        M_READS.labels(self.volume_id, "failed").inc()
        raise Unavailable(f"page {page} (pg {pg}) at lsn {user_read_lsn} (pg lsn {read_lsn}): no segment could serve it: {errors or 'timeout'}")

    # ---- growth ------------------------------------------------------------------------------

    def _ensure_pgs(self, max_pg: int) -> None:
        if self._tracker.has_pg(max_pg) and all(self._tracker.has_pg(p) for p in range(max_pg)):
            return
        with self._grow_lock:
            while len(self._descriptor.pgs) <= max_pg:
                self._check_writable_for_growth()
                self._add_pg(len(self._descriptor.pgs))

    def _check_writable_for_growth(self) -> None:
        if self._fenced is not None:
            raise self._fenced
        if self._read_only_reason is not None:
            raise QuorumLost(f"volume opened read-only: {self._read_only_reason}")

    def _add_pg(self, pg: int) -> None:
        cfg = self.config
        if pg * cfg.pg_size_pages * cfg.page_size >= cfg.max_size_bytes:
            raise VolumeFull(f"pg {pg} would start beyond max_size_bytes {cfg.max_size_bytes}")
        load: dict[str, int] = {}
        for p in self._descriptor.pgs:
            for s in p.segments:
                load[s.address] = load.get(s.address, 0) + 1
        members = place_pg(pg, self._nodes, load)
        first = pg * cfg.pg_size_pages
        count = min(cfg.pg_size_pages, cfg.max_size_bytes // cfg.page_size - first)
        calls = [
            (m.address, "CreateSegment", pb.CreateSegmentRequest(
                volume_id=self.volume_id, epoch=self._epoch, pg=pg, first_page=first, page_count=count,
                page_size=cfg.page_size, peers=members))
            for m in members
        ]
        ok, errs = self._gather(calls, need=len(calls), timeout_s=cfg.rpc_timeout_s)
        if len(ok) < WRITE_QUORUM:
            raise QuorumLost(f"pg {pg}: CreateSegment reached {len(ok)}/6 nodes: {errs}")
        new = pb.VolumeDescriptor()
        new.CopyFrom(self._descriptor)
        new.version += 1
        new.pgs.add(pg=pg, segments=members)
        pg0 = list(new.pgs[0].segments)
        calls = [(s.address, "PutDescriptor", pb.PutDescriptorRequest(epoch=self._epoch, descriptor=new)) for s in pg0]
        ok2, errs2 = self._gather(calls, need=len(calls), timeout_s=cfg.rpc_timeout_s)
        if len(ok2) < WRITE_QUORUM:
            raise QuorumLost(f"descriptor v{new.version}: stored on {len(ok2)}/6 PG 0 segments: {errs2}")
        with self._lock:
            self._descriptor = new
            self._tracker.add_pg(pg, [m.address for m in members])
            for m in members:
                self._sender(m.address)
        self._log.info("pg_added", pg=pg, version=new.version, nodes=[m.address for m in members], epoch=self._epoch,
                       vdl=self._vdl_cache, vcl=self._vcl_cache)

    # ---- RPC helpers ---------------------------------------------------------------------------

    def _sender(self, address: str) -> _Sender:
        s = self._senders.get(address)
        if s is None:
            with self._lock:
                s = self._senders.get(address)
                if s is None:
                    s = self._senders[address] = _Sender(self, address)
        return s

    def _all_addresses(self) -> list[str]:
        out = {n.address for n in self._nodes}
        for p in self._descriptor.pgs:
            out.update(s.address for s in p.segments)
        return sorted(out)

    def _gather(
        self, calls: list[tuple[str, str, Any]], need: int, timeout_s: float, keys: list | None = None
    ) -> tuple[dict, dict]:
        """Issue calls in parallel; return once `need` succeeded, all finished, or timeout.

        Returns ({key: response}, {key: error string}); keys default to the addresses
        (which must then be distinct). A STALE_EPOCH answer fences us.
        """
        futs: dict[cf.Future, Any] = {}
        if keys is None:
            keys = [c[0] for c in calls]
        assert len(set(keys)) == len(keys), "duplicate keys in _gather"
        for key, (addr, method, req) in zip(keys, calls):
            try:
                futs[self.transport.call(addr, method, req, timeout_s)] = key
            except Exception as exc:  # noqa: BLE001
                f: cf.Future = cf.Future()
                f.set_exception(NodeUnavailable(addr, str(exc)))
                futs[f] = key
        ok: dict = {}
        errs: dict = {}
        deadline = time.monotonic() + timeout_s + 0.5
        remaining = set(futs)
        while remaining and len(ok) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            done, remaining = cf.wait(remaining, timeout=left, return_when=cf.FIRST_COMPLETED)
            for f in done:
                exc = _exception(f, "?")
                if exc is None:
                    ok[futs[f]] = f.result()
                else:
                    if error_reason(exc) == pb.STALE_EPOCH and self._epoch:
                        self._fence(f"{futs[f]}: {exc}")
                        raise self._fenced  # type: ignore[misc]
                    errs[futs[f]] = f"{type(exc).__name__}: {exc}"
        for f in remaining:
            errs.setdefault(futs[f], "no answer yet")
        return ok, errs

    def _list_all(self) -> dict[str, Any]:
        calls = [(n.address, "ListSegments", pb.ListSegmentsRequest(volume_id=self.volume_id)) for n in self._nodes]
        ok, errs = self._gather(calls, need=len(calls), timeout_s=self.config.rpc_timeout_s)
        out: dict[str, Any] = dict(ok)
        for addr, e in errs.items():
            out[addr] = Unavailable(e)
        return out

    def _fix_node(self, address: str, action: str, then) -> None:
        """Seal (EPOCH_AHEAD) or create (UNKNOWN_SEGMENT) every segment of ours on `address`, then `then()`."""
        with self._lock:
            placements = [p for p in self._descriptor.pgs if any(s.address == address for s in p.segments)]
            truncs = list(self._truncations)
            epoch = self._epoch
        cfg = self.config
        reqs = []
        for p in placements:
            if action == "Seal":
                reqs.append(pb.SealRequest(volume_id=self.volume_id, pg=p.pg, epoch=epoch, truncations=truncs))
            else:
                first = p.pg * cfg.pg_size_pages
                count = min(cfg.pg_size_pages, cfg.max_size_bytes // cfg.page_size - first)
                reqs.append(pb.CreateSegmentRequest(
                    volume_id=self.volume_id, epoch=epoch, pg=p.pg, first_page=first, page_count=count,
                    page_size=cfg.page_size, peers=p.segments))
        if not reqs:
            then()
            return
        left = [len(reqs)]
        lock = threading.Lock()

        def one_done(f: cf.Future) -> None:
            exc = _exception(f, address)
            if exc is not None:
                if error_reason(exc) == pb.STALE_EPOCH:
                    self._fence(f"{address}: {exc}")
                else:
                    self._log.warning("segment_fixup_failed", address=address, action=action, error=str(exc))
            # (a Seal's answer needs no handling: the SCL arrives with the next Append ack)
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                then()

        for req in reqs:
            try:
                fut = self.transport.call(address, action, req, cfg.rpc_timeout_s)
            except Exception as exc:  # noqa: BLE001
                fut = cf.Future()
                fut.set_exception(NodeUnavailable(address, str(exc)))
            fut.add_done_callback(one_done)

    # ---- background ticker ---------------------------------------------------------------------

    def _tick_loop(self) -> None:
        cfg = self.config
        tick = max(0.005, min(cfg.heartbeat_interval_s / 2, cfg.retry_backoff_s, 0.05))
        while not self._tick_stop.wait(tick):
            if self._fenced is not None:
                break
            now = time.monotonic()
            with self._lock:
                hosting = {s.address for p in self._descriptor.pgs for s in p.segments}
            for s in list(self._senders.values()):
                try:
                    idle = s.address in hosting and now - s.last_send >= cfg.heartbeat_interval_s
                    if s.queue or idle:
                        s.pump(heartbeat=idle)
                except Exception as exc:  # noqa: BLE001 - never let the ticker die
                    self._log.error("ticker_error", address=s.address, error=repr(exc))
            self._publish_metrics()

    def _publish_metrics(self) -> None:
        M_VDL.labels(self.volume_id).set(self._vdl_cache)
        M_VCL.labels(self.volume_id).set(self._vcl_cache)

    def heartbeat(self) -> None:
        """Send an empty Append to every node hosting a segment (tells storage the VDL / min read point)."""
        with self._lock:
            hosting = {s.address for p in self._descriptor.pgs for s in p.segments}
        for s in list(self._senders.values()):
            if s.address in hosting:
                s.pump(heartbeat=True)

    # ---- status and shutdown ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            pgs = []
            for p in self._descriptor.pgs:
                if not self._tracker.has_pg(p.pg):
                    continue
                scls = self._tracker.scls(p.pg)
                pgs.append({
                    "pg": p.pg,
                    "segments": [
                        {"node_id": s.node_id, "az": s.az, "address": s.address, "scl": scls.get(s.address, 0),
                         "down": self._sender(s.address).down}
                        for s in p.segments
                    ],
                    "pgcl": self._tracker.pgcl(p.pg),
                    "last_lsn": self._pg_last.get(p.pg, 0),
                })
            return {
                "volume_id": self.volume_id,
                "epoch": self._epoch,
                "descriptor_version": self._descriptor.version,
                "vcl": self._tracker.vcl,
                "vdl": self._tracker.vdl,
                "next_lsn": self._next_lsn,
                "pending_bytes": self._pending_bytes,
                "read_only": self._read_only_reason,
                "fenced": str(self._fenced) if self._fenced else None,
                "truncations": [_trunc_key(t) for t in self._truncations],
                "pgs": pgs,
            }

    def close(self, flush_timeout_s: float = 5.0) -> None:
        """Wait (bounded) for issued records to become durable, stop, fail remaining waiters."""
        if self._stopped:
            return
        last = self._next_lsn - 1
        if self._fenced is None and self._read_only_reason is None and last > self._tracker.vdl and flush_timeout_s > 0:
            try:
                self.wait_durable(self._last_cpl(), flush_timeout_s)
            except Exception as exc:  # noqa: BLE001
                self._log.warning("close_flush_incomplete", error=str(exc), vdl=self.vdl, vcl=self.vcl)
        with self._cond:
            self._stopped = True
            waiters, self._waiters = self._waiters, []
            self._cond.notify_all()
        self._tick_stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(timeout=5)
        err = Unavailable(f"volume {self.volume_id} closed before these LSNs became durable (vdl {self.vdl})")
        for _lsn, _seq, fut in waiters:
            if not fut.done():
                fut.set_exception(err)
        self._log.info("volume_closed", epoch=self._epoch, vdl=self.vdl, vcl=self.vcl)

    def _last_cpl(self) -> int:
        # every group ends with a CPL, so the last LSN issued is a CPL (or the start)
        return self._next_lsn - 1 if self._next_lsn - 1 > self._epoch_base else self._tracker.vdl

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- recovery -----------------------------------------------------------------------------

    def _recover(self, create_if_missing: bool) -> RecoveryReport | None:
        from borealdb.nodes.volume.recovery import recover

        return recover(self, create_if_missing)

    # ---- read replicas: read-only attach (no recovery, no epoch change, never writes) ------------
    # Used only by nodes/instance/replica.py; nothing above depends on it.

    @classmethod
    def attach_reader(cls, config: VolumeConfig, transport: Transport) -> "Volume":
        """A read-only view of an existing volume for a read replica.

        Learns the descriptor and the current epoch from ListSegments (a read quorum of
        PG 0). Runs no recovery, sends no Seal, never raises the epoch, starts no ticker,
        and append_group refuses. The replica reads pages itself at read points it learns
        from the writer's redo stream, with `epoch` and `descriptor()` from here; call
        `reader_refresh()` after a new epoch or for a PG it does not know yet."""
        vol = cls(config, transport)
        vol._read_only_reason = "attached as a read replica"
        vol.reader_refresh()
        return vol

    def reader_refresh(self) -> int:
        """(Read replicas) re-read the descriptor and the epoch from the storage nodes; returns the epoch."""
        listed = self._list_all()
        infos = [info for resp in listed.values() if not isinstance(resp, Exception)
                 for info in resp.segments if info.volume_id == self.volume_id]
        pg0 = [i for i in infos if i.pg == 0]
        if len(pg0) < READ_QUORUM:
            raise QuorumLost(f"volume {self.volume_id!r}: only {len(pg0)} PG 0 segments reachable, need {READ_QUORUM}")
        desc = max((i.descriptor for i in pg0 if i.descriptor.version), key=lambda d: d.version, default=None)
        if desc is None:
            raise QuorumLost(f"volume {self.volume_id!r}: no descriptor on the reachable PG 0 segments")
        with self._lock:
            if desc.version >= self._descriptor.version:
                self._descriptor = desc
            self._epoch = max(self._epoch, max(i.epoch for i in infos))
            return self._epoch

    def reader_note_epoch(self, epoch: int) -> None:
        """(Read replicas) the writer told us its epoch."""
        with self._lock:
            self._epoch = max(self._epoch, epoch)

    def pg_tips(self, lsn: int) -> dict[int, int]:
        """(Writer) per PG, its last record <= lsn (0: none): what a read replica needs to read at lsn."""
        with self._lock:
            return {pg: self._pg_read_lsn(pg, lsn) for pg in self._tracker.pgs()}
