"""Seeded randomized test of the LSN tracker against a brute-force model.

Every step the model recomputes PGCL, VCL and VDL from scratch from every SCL
reported so far; the tracker must agree exactly. Segments receive records in random
order and report the SCL of their unbroken chain (as storage does); up to 2 segments
per PG lose records or die, which must never stop the VCL once 4 have everything.
"""

from __future__ import annotations

import random

import pytest

from borealdb.nodes.volume.tracker import LsnTracker


def _model(records, reported, start):
    """records: list of (lsn, pg, cpl) ascending; reported: {pg: {member: scl}}."""
    pgcl = {pg: sorted(s.values(), reverse=True)[3] for pg, s in reported.items()}
    vcl, vdl = start, start
    for lsn, pg, cpl in records:
        if lsn > pgcl[pg]:
            break
        vcl = lsn
        if cpl:
            vdl = lsn
    return pgcl, vcl, vdl


class _Segment:
    def __init__(self, mode: str):
        self.mode = mode  # "ok", "lossy", "dead"
        self.held: set[int] = set()
        self.inbox: list[int] = []


def _chain_scl(pg_records: list[tuple[int, int]], held: set[int], base: int) -> int:
    """pg_records: (lsn, pg_prev) of one PG in order; SCL = end of the unbroken chain."""
    scl = base
    for lsn, prev in pg_records:
        if prev != scl and not (prev <= base and scl == base):
            break
        if lsn not in held:
            break
        scl = lsn
    return scl


@pytest.mark.parametrize("seed", [1, 2, 3, 7, 42, 1234, 99991, 31337])
def test_tracker_matches_model(seed):
    rng = random.Random(seed)
    n_pgs = rng.randint(1, 5)
    start = rng.choice([0, 0, 1000, 5_000_000])
    tracker = LsnTracker(start_lsn=start)
    segs: dict[int, dict[str, _Segment]] = {}
    reported: dict[int, dict[str, int]] = {}
    pg_records: dict[int, list[tuple[int, int]]] = {}
    pg_last: dict[int, int] = {}
    for pg in range(n_pgs):
        members = [f"n{pg}-{i}" for i in range(6)]
        bad = rng.sample(members, rng.randint(0, 2))
        segs[pg] = {m: _Segment(rng.choice(["lossy", "dead"]) if m in bad else "ok") for m in members}
        tracker.add_pg(pg, members)
        reported[pg] = {m: 0 for m in members}
        pg_records[pg] = []
        pg_last[pg] = 0
    records: list[tuple[int, int, bool]] = []
    next_lsn = start + 1
    prev_vcl, prev_vdl = tracker.vcl, tracker.vdl
    prev_pgcl = {pg: 0 for pg in range(n_pgs)}

    def check():
        nonlocal prev_vcl, prev_vdl
        pgcl, vcl, vdl = _model(records, reported, start)
        for pg in range(n_pgs):
            assert tracker.pgcl(pg) == pgcl[pg], (seed, pg)
            assert tracker.pgcl(pg) >= prev_pgcl[pg]
            prev_pgcl[pg] = tracker.pgcl(pg)
        assert (tracker.vcl, tracker.vdl) == (vcl, vdl), seed
        assert tracker.vdl <= tracker.vcl <= tracker.last_lsn
        assert tracker.vcl >= prev_vcl and tracker.vdl >= prev_vdl
        prev_vcl, prev_vdl = tracker.vcl, tracker.vdl

    for _step in range(4000):
        r = rng.random()
        if r < 0.35:
            # writer: an atomic group of 1..4 records on random PGs, CPL on the last
            n = rng.randint(1, 4)
            for i in range(n):
                pg = rng.randrange(n_pgs)
                lsn = next_lsn
                next_lsn += 1
                cpl = i == n - 1
                tracker.add_record(lsn, pg, cpl)
                records.append((lsn, pg, cpl))
                pg_records[pg].append((lsn, pg_last[pg]))
                pg_last[pg] = lsn
                for seg in segs[pg].values():
                    seg.inbox.append(lsn)
        else:
            # deliver a random queued record to a random segment, in random order
            pg = rng.randrange(n_pgs)
            member = rng.choice(sorted(segs[pg]))
            seg = segs[pg][member]
            if seg.inbox:
                lsn = seg.inbox.pop(rng.randrange(len(seg.inbox)))
                if seg.mode == "ok" or (seg.mode == "lossy" and rng.random() < 0.5):
                    seg.held.add(lsn)
            if seg.mode == "dead":
                continue
            scl = _chain_scl(pg_records[pg], seg.held, 0)
            # acks may arrive reordered: sometimes report an older SCL
            if rng.random() < 0.1:
                scl = rng.randint(0, scl) if scl else 0
            reported[pg][member] = max(reported[pg][member], scl)
            tracker.ack(pg, member, scl)
        check()

    # drain: every healthy segment gets everything; 4+ healthy per PG => all complete
    for pg in range(n_pgs):
        for member, seg in segs[pg].items():
            if seg.mode == "ok":
                seg.held.update(seg.inbox)
                seg.inbox.clear()
                scl = _chain_scl(pg_records[pg], seg.held, 0)
                reported[pg][member] = max(reported[pg][member], scl)
                tracker.ack(pg, member, scl)
                check()
    assert tracker.vcl == tracker.last_lsn
    last_cpl = max((lsn for lsn, _pg, cpl in records if cpl), default=start)
    assert tracker.vdl == last_cpl
    assert tracker.pending_count() == 0


def test_tracker_three_down_blocks_pg_only():
    t = LsnTracker()
    t.add_pg(0, [f"a{i}" for i in range(6)])
    t.add_pg(1, [f"b{i}" for i in range(6)])
    t.add_record(1, 0, True)
    t.add_record(2, 1, True)
    for i in range(3):
        t.ack(0, f"a{i}", 1)
        t.ack(1, f"b{i}", 2)
    assert (t.vcl, t.vdl) == (0, 0)
    t.ack(1, "b3", 2)
    assert t.pgcl(1) == 2 and t.vcl == 0  # record 1 (pg 0) holds the VCL back
    t.ack(0, "a5", 1)
    assert (t.vcl, t.vdl) == (2, 2)


def test_tracker_vdl_is_highest_cpl():
    t = LsnTracker()
    t.add_pg(0, [f"a{i}" for i in range(6)])
    t.add_record(1, 0, False)
    t.add_record(2, 0, False)
    t.add_record(3, 0, True)
    t.add_record(4, 0, False)
    for i in range(4):
        t.ack(0, f"a{i}", 2)
    assert (t.vcl, t.vdl) == (2, 0)
    for i in range(4):
        t.ack(0, f"a{i}", 4)
    assert (t.vcl, t.vdl) == (4, 3)


def test_tracker_asserts_lsn_growth():
    t = LsnTracker(start_lsn=10)
    t.add_pg(0, [f"a{i}" for i in range(6)])
    t.add_record(11, 0, True)
    with pytest.raises(AssertionError):
        t.add_record(11, 0, True)
    with pytest.raises(AssertionError):
        t.ack(0, "a0", 12)
