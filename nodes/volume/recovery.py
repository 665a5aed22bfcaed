"""Crash recovery of a volume from its storage nodes alone (Volume.open).

Steps (DESIGN.md "Recovery"):
 1. ListSegments on every configured node; the descriptor is the highest version in a
    read quorum (3/6) of PG 0; current epoch E = max seen; truncations = union.
 2. Fence: Seal(E+1, known truncations) on every segment. From here no older writer
    can reach a write quorum, so what we read next cannot change under us.
 3. From a read quorum (>= 3 sealed segments) of every PG: SCLs and RecordSummaries
    after H = the highest vdl_hint seen (a CPL that was durable). LSNs are dense, so
    VCL = end of the run of LSNs above max(H, X) that are held by some segment or
    inside a truncation range (X = min over PGs of the PG's best SCL: every LSN <= X
    exists). VDL = highest CPL <= VCL (else H).
 4. Truncate (E+1, VDL+1, T) with T = max(VDL, highest truncated LSN) + LAL, which
    covers every LSN an earlier writer may have issued; Seal(E+1, all truncations)
    on every segment; 4 acks per PG, else read-only.
 5. Wait (bounded) until every PG's PGCL reaches its last record <= VDL; segments
    that lag are sent the missing records (FetchRecords from a peer + Append).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from borealdb.errors import InvalidRequest, QuorumLost, Unavailable
from borealdb.nodes.volume.tracker import READ_QUORUM, WRITE_QUORUM, LsnTracker
from borealdb.protos import storage_pb2 as pb

if TYPE_CHECKING:
    from borealdb.nodes.volume.volume import RecoveryReport, Volume


def recover(vol: "Volume", create_if_missing: bool) -> "RecoveryReport | None":
    from borealdb.nodes.volume.volume import RecoveryReport, _trunc_key

    t0 = time.monotonic()
    cfg = vol.config
    notes: list[str] = []
    listed = vol._list_all()
    segs: dict[tuple[int, str], pb.SegmentInfo] = {}
    for addr, resp in listed.items():
        if isinstance(resp, Exception):
            notes.append(f"{addr}: unreachable")
            continue
        for info in resp.segments:
            if info.volume_id == vol.volume_id:
                segs[(info.pg, addr)] = info
    if not segs:
        reachable = sum(1 for r in listed.values() if not isinstance(r, Exception))
        if create_if_missing and reachable >= WRITE_QUORUM:
            return None
        if create_if_missing:
            raise QuorumLost(f"volume {vol.volume_id!r}: only {reachable} storage nodes reachable; not creating")
        raise InvalidRequest(f"volume {vol.volume_id!r} not found on {reachable} reachable storage nodes")

    # 1. descriptor from a read quorum of PG 0
    pg0 = [info for (pg, _a), info in segs.items() if pg == 0]
    if len(pg0) < READ_QUORUM:
        raise QuorumLost(f"volume {vol.volume_id!r}: only {len(pg0)} PG 0 segments reachable, need {READ_QUORUM}")
    desc = max((i.descriptor for i in pg0 if i.descriptor.version), key=lambda d: d.version, default=None)
    if desc is None:
        raise QuorumLost(f"volume {vol.volume_id!r}: no descriptor on the reachable PG 0 segments")
    if desc.page_size != cfg.page_size or desc.pg_size_pages != cfg.pg_size_pages:
        raise InvalidRequest(
            f"volume {vol.volume_id!r} has page_size {desc.page_size}, pg_size_pages {desc.pg_size_pages}; "
            f"config says {cfg.page_size}, {cfg.pg_size_pages}"
        )
    old_epoch = max(i.epoch for i in segs.values())
    truncs = {(_trunc_key(t)) for i in segs.values() for t in i.truncations}
    hint = max(i.vdl_hint for i in segs.values())
    members = {p.pg: [s.address for s in p.segments] for p in desc.pgs}
    for pg, addrs in members.items():
        have = [a for a in addrs if (pg, a) in segs]
        if len(have) < READ_QUORUM:
            raise QuorumLost(f"pg {pg}: {len(have)}/6 segments reachable, need {READ_QUORUM} to recover")
    epoch = old_epoch + 1
    vol._epoch = epoch
    vol._descriptor = desc

    def seal_all(trunc_list):
        calls, keys = [], []
        for pg, addrs in members.items():
            for a in addrs:
                calls.append((a, "Seal", pb.SealRequest(
                    volume_id=vol.volume_id, pg=pg, epoch=epoch,
                    truncations=[pb.TruncationRange(epoch=e, first_lsn=f, last_lsn=l) for e, f, l in sorted(trunc_list)])))
                keys.append((pg, a))
        ok, errs = vol._gather(calls, need=len(calls), timeout_s=cfg.rpc_timeout_s, keys=keys)
        by_pg: dict[int, dict[str, pb.SealResponse]] = {pg: {} for pg in members}
        for (pg, a), resp in ok.items():
            by_pg[pg][a] = resp
        return by_pg, errs

    # 2. fence older writers
    sealed, _errs = seal_all(truncs)
    for pg, got in sealed.items():
        if len(got) < READ_QUORUM:
            raise QuorumLost(f"pg {pg}: only {len(got)}/6 segments accepted epoch {epoch}, need {READ_QUORUM}")

    # 3. summaries above H from the sealed segments of every PG
    summaries: dict[int, dict[int, tuple[int, bool]]] = {pg: {} for pg in members}  # pg -> lsn -> (prev, cpl)
    best_scl: dict[int, int] = {}
    for pg, got in sealed.items():
        best = 0
        for a in got:
            after = hint
            while True:
                fut = vol.transport.call(a, "RecordSummaries", pb.RecordSummaryRequest(
                    volume_id=vol.volume_id, pg=pg, epoch=epoch, after_lsn=after), cfg.rpc_timeout_s)
                try:
                    resp = fut.result()
                except Exception as exc:  # noqa: BLE001
                    notes.append(f"pg {pg} {a}: RecordSummaries failed: {exc}")
                    break
                best = max(best, resp.scl)
                for r in resp.records:
                    summaries[pg][r.lsn] = (r.pg_prev_lsn, r.consistency_point)
                if not resp.truncated_reply or not resp.records:
                    break
                after = resp.records[-1].lsn
        best_scl[pg] = max(best, max(r.scl for r in got.values()))
    x = min(best_scl.values()) if best_scl else 0
    held: dict[int, int] = {}  # lsn -> pg
    for pg, recs in summaries.items():
        for lsn in recs:
            held[lsn] = pg
    ranges = sorted(truncs, key=lambda t: t[1])
    cur = max(x, hint)
    while True:
        nxt = cur + 1
        if nxt in held:
            cur = nxt
            continue
        covering = [t for t in ranges if t[1] <= nxt <= t[2]]
        if covering:
            cur = max(t[2] for t in covering)
            continue
        break
    vcl = cur
    cpls = [lsn for pg, recs in summaries.items() for lsn, (_p, c) in recs.items() if c and lsn <= vcl]
    vdl = max(cpls + [hint])
    if vdl > vcl:  # the hint itself is a durable CPL: the VCL is at least there
        vcl = vdl

    # 4. truncate above the VDL and seal with the complete list
    lal = cfg.lsn_allocation_limit
    highest_truncated = max((t[2] for t in truncs), default=0)
    trunc_last = max(vdl, highest_truncated) + lal
    new_range = (epoch, vdl + 1, trunc_last)
    all_truncs = set(truncs) | {new_range}
    sealed2, errs2 = seal_all(all_truncs)
    read_only = [pg for pg, got in sealed2.items() if len(got) < WRITE_QUORUM]

    # per-PG tip: last record <= VDL
    tips: dict[int, int] = {}
    for pg in members:
        recs = summaries[pg]
        below = [lsn for lsn in recs if lsn <= vdl]
        if below:
            tips[pg] = max(below)
        elif recs:
            tips[pg] = recs[min(recs)][0]
        else:
            tips[pg] = min(best_scl[pg], vdl) if best_scl[pg] <= vdl else max(
                (segs[(pg, a)].highest_lsn for a in members[pg] if (pg, a) in segs and segs[(pg, a)].highest_lsn <= vdl),
                default=0,
            )

    tracker = LsnTracker(start_lsn=vdl)
    for pg, addrs in members.items():
        scls = {}
        for a, resp in sealed2[pg].items():
            scls[a] = min(resp.scl, vdl)
            if resp.scl > vdl:
                notes.append(f"pg {pg} {a}: scl {resp.scl} above vdl {vdl} after truncation")
        tracker.add_pg(pg, addrs, scls)
    with vol._lock:
        vol._truncations = [pb.TruncationRange(epoch=e, first_lsn=f, last_lsn=l) for e, f, l in sorted(all_truncs)]
        vol._tracker = tracker
        vol._vdl_cache = vol._vcl_cache = vdl
        vol._next_lsn = trunc_last + 1
        vol._epoch_base = trunc_last
        vol._pg_last = dict(tips)
        vol._pg_lsns = {pg: ([tip] if tip else []) for pg, tip in tips.items()}
        if read_only:
            vol._read_only_reason = (
                f"pg(s) {read_only} have fewer than {WRITE_QUORUM} segments sealed at epoch {epoch}"
            )
    for a in vol._all_addresses():
        vol._sender(a)

    # 5. bring every PG's PGCL up to its tip
    deadline = time.monotonic() + cfg.recovery_timeout_s
    repaired = 0
    while True:
        # writable: a write quorum must hold each PG's chain before new records link to it;
        # read-only: one segment per PG that can serve reads at the VDL is enough
        if read_only:
            lagging = {pg: tip for pg, tip in tips.items() if max(tracker.scls(pg).values()) < tip}
        else:
            lagging = {pg: tip for pg, tip in tips.items() if tracker.pgcl(pg) < tip}
        if not lagging:
            break
        if time.monotonic() >= deadline:
            msg = ", ".join(f"pg {pg}: pgcl {tracker.pgcl(pg)} < {tip}" for pg, tip in sorted(lagging.items()))
            if read_only:
                notes.append(f"not caught up: {msg}")
                break
            raise Unavailable(f"recovery: segments did not catch up within {cfg.recovery_timeout_s}s: {msg}")
        repaired += _repair_round(vol, lagging)
        _heartbeat_round(vol)
    duration_ms = (time.monotonic() - t0) * 1000
    report = RecoveryReport(
        volume_id=vol.volume_id,
        epoch=epoch,
        vcl=vcl,
        vdl=vdl,
        truncation=new_range,
        next_lsn=trunc_last + 1,
        pg_scls={pg: tracker.scls(pg) for pg in members},
        read_only=bool(read_only),
        created=False,
        duration_ms=duration_ms,
        notes=notes,
    )
    vol._log.info(
        "volume_recovered", epoch=epoch, old_epoch=old_epoch, vdl=vdl, vcl=vcl, vdl_hint=hint, x=x,
        truncation=new_range, read_only=bool(read_only), repaired_records=repaired, duration_ms=round(duration_ms, 1),
    )
    return report


def _heartbeat_round(vol: "Volume") -> None:
    """One synchronous empty Append to every node: fresh SCLs into the tracker."""
    req = pb.AppendRequest(volume_id=vol.volume_id, epoch=vol._epoch, vdl=vol._vdl_cache, min_read_point=vol._vdl_cache)
    hosting = {s.address for p in vol._descriptor.pgs for s in p.segments}
    calls = [(a, "Append", req) for a in sorted(hosting)]
    ok, _errs = vol._gather(calls, need=len(calls), timeout_s=vol.config.rpc_timeout_s)
    for addr, resp in ok.items():
        vol._on_acks(addr, resp.acks)


def _repair_round(vol: "Volume", lagging: dict[int, int]) -> int:
    """Copy the records a lagging segment lacks from the best peer (the writer as courier)."""
    cfg = vol.config
    moved = 0
    for pg, tip in lagging.items():
        scls = vol._tracker.scls(pg)
        source = max(scls, key=lambda a: scls[a])
        if scls[source] < tip:
            # nobody is known to have the full chain: ask everyone for what they hold
            source = None
        for target, scl in scls.items():
            if scl >= tip or target == source:
                continue
            sources = [source] if source else [a for a in scls if a != target]
            for src in sources:
                try:
                    resp = vol.transport.call(src, "FetchRecords", pb.FetchRecordsRequest(
                        volume_id=vol.volume_id, pg=pg, epoch=vol._epoch, after_lsn=scl, up_to_lsn=tip,
                        requester_node_id="writer", requester_scl=scl), cfg.rpc_timeout_s).result()
                except Exception:  # noqa: BLE001 - a peer that cannot help; try the next
                    continue
                if not resp.records:
                    continue
                req = pb.AppendRequest(volume_id=vol.volume_id, epoch=vol._epoch, records=resp.records,
                                       vdl=vol._vdl_cache, min_read_point=vol._vdl_cache)
                try:
                    ack = vol.transport.call(target, "Append", req, cfg.rpc_timeout_s).result()
                except Exception as exc:  # noqa: BLE001
                    vol._log.info("recovery_repair_failed", pg=pg, target=target, error=str(exc))
                    continue
                moved += len(resp.records)
                vol._on_acks(target, ack.acks)
    return moved
