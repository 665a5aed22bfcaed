"""Storage engine: recovery, coalescing + reads, GC, gossip, scrub and repair."""

from __future__ import annotations

import os
import random

import pytest

from borealdb.nodes.storage.engine import StorageEngine, StorageOptions
from borealdb.nodes.storage.testing import VOLUME, Cluster, PgWriter, append
from borealdb.protos import storage_pb2 as pb


def kill(e: StorageEngine) -> None:
    """Like kill -9: no checkpoint, no clean close."""
    e.is_open = False
    for seg in e._all_segments():
        seg.close()


def read(e, page, lsn, pg=0, epoch=1):
    return e.read_page(pb.ReadPageRequest(volume_id=VOLUME, epoch=epoch, pg=pg, page=page, read_lsn=lsn))


def info(e, pg=0):
    return next(s for s in e.list_segments(pb.ListSegmentsRequest()).segments if s.pg == pg)


def check_reads(e, w, points, pages=None):
    for r in points:
        for page in pages or range(w.first_page, w.first_page + w.page_count):
            resp = read(e, page, r)
            assert resp.status == pb.READ_OK, (page, r, resp.status)
            data, lsn = w.expected(page, r)
            assert resp.page_lsn == lsn and resp.data == data, (page, r)


# ---- recovery ------------------------------------------------------------------------
def test_reopen_after_kill_keeps_every_acked_record_and_cuts_torn_tail(tmp_path):
    d = str(tmp_path / "d")
    e = StorageEngine("s", "a", "x:1", d).open()
    w = PgWriter()
    e.create_segment(w.create_request())
    recs = w.records(50)
    for i in range(0, 50, 7):
        append(e, recs[i:i + 7])
    seg = e.segment(VOLUME, 0)
    chunk, size = seg.log.end_position()
    path = os.path.join(seg.log.directory, f"{chunk:06d}.log")
    kill(e)
    with open(path, "ab") as f:  # a frame torn by the crash (never acked)
        f.write(b"GLRB\x40\x00\x00\x00partial")
    e2 = StorageEngine("s", "a", "x:1", d).open()
    assert info(e2).scl == 50 and info(e2).record_count == 50
    assert os.path.getsize(path) == size  # the torn frame was cut off
    more = w.records(5)
    assert append(e2, more).acks[0].scl == 55
    check_reads(e2, w, [10, 55])
    e2.close()


def test_restart_replays_only_the_log_tail_after_a_checkpoint(tmp_path):
    d = str(tmp_path / "d")
    e = StorageEngine("s", "a", "x:1", d).open()
    w = PgWriter()
    e.create_segment(w.create_request())
    for _ in range(20):
        append(e, w.records(50))
    e.checkpoint_once()
    append(e, w.records(7))
    kill(e)
    e2 = StorageEngine("s", "a", "x:1", d).open()
    assert e2.frames_replayed == 7
    assert info(e2).scl == 1007 and info(e2).record_count == 1007
    check_reads(e2, w, [500, 1007], pages=[0, 1, 2])
    e2.close()
    # and without a checkpoint everything is replayed (the test can fail)
    os.remove(os.path.join(e2.segment(VOLUME, 0).dir, "index.ckpt"))
    e3 = StorageEngine("s", "a", "x:1", d).open()
    assert e3.frames_replayed == 1007 and info(e3).scl == 1007
    e3.close()


# ---- coalescing and reads --------------------------------------------------------------
def test_coalesce_and_read_match_model_at_many_read_points(tmp_path):
    e = StorageEngine("s", "a", "x:1", str(tmp_path)).open()
    w = PgWriter(page_count=6, seed=7)
    e.create_segment(w.create_request())
    recs = [w.record(full=(i % 13 == 5)) for i in range(120)]
    rng = random.Random(3)
    shuffled = recs[:]
    rng.shuffle(shuffled)
    for i in range(0, 120, 10):
        append(e, shuffled[i:i + 10], vdl=60)
    assert info(e).scl == 120
    assert e.coalesce_once() > 0
    seg = e.segment(VOLUME, 0)
    assert all(v.lsn <= 60 for vs in seg.versions.values() for v in vs)  # never above the VDL
    check_reads(e, w, [1, 30, 59, 60, 61, 90, 120])
    append(e, [], vdl=120)
    e.coalesce_once()
    assert max(v.lsn for vs in seg.versions.values() for v in vs) > 60
    check_reads(e, w, [1, 60, 100, 120])
    assert read(e, 0, 121).status == pb.READ_BEHIND
    e.close()


# ---- GC ---------------------------------------------------------------------------------
def test_gc_respects_min_read_point_and_retention(tmp_path):
    opts = StorageOptions(retention_s=3600)
    e = StorageEngine("s", "a", "x:1", str(tmp_path), opts).open()
    w = PgWriter(page_count=4)
    e.create_segment(w.create_request())
    append(e, w.records(40), vdl=40, mrp=0)
    e.coalesce_once()
    assert e.gc_once() == 0 and info(e).gc_floor_lsn == 0  # no read point told: nothing goes
    append(e, w.records(20), vdl=60, mrp=30)
    e.coalesce_once()
    e.gc_once()
    assert info(e).gc_floor_lsn == 0  # everything is inside the retention window
    e.options.retention_s = 0
    e.gc_once()
    i = info(e)
    assert i.gc_floor_lsn == 30 and i.record_count < 60
    assert read(e, 0, 29).status == pb.READ_GARBAGE_COLLECTED
    check_reads(e, w, [30, 45, 60])
    # the floor never passes the read point even when more is coalesced
    append(e, w.records(10), vdl=70, mrp=30)
    e.coalesce_once()
    e.gc_once()
    assert info(e).gc_floor_lsn == 30
    check_reads(e, w, [30, 70])
    e.close()


def test_gc_keeps_records_a_behind_peer_needs(tmp_path):
    e = StorageEngine("s", "a", "x:1", str(tmp_path), StorageOptions(retention_s=0)).open()
    w = PgWriter(page_count=4)
    e.create_segment(w.create_request())
    append(e, w.records(40), vdl=40, mrp=40)
    e.fetch_records(pb.FetchRecordsRequest(volume_id=VOLUME, pg=0, epoch=1, after_lsn=10,
                                           requester_node_id="peer", requester_scl=10, max_bytes=1))
    e.coalesce_once()
    e.gc_once()
    assert info(e).gc_floor_lsn == 10
    got = e.fetch_records(pb.FetchRecordsRequest(volume_id=VOLUME, pg=0, epoch=1, after_lsn=10))
    assert [r.lsn for r in got.records] == list(range(11, 41))
    e.close()


# ---- gossip ------------------------------------------------------------------------------
@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, n=6)
    yield c
    c.close()


def test_gossip_fills_gaps_and_catches_up_after_restart(cluster):
    w = PgWriter()
    for e in cluster.engines.values():
        e.create_segment(w.create_request(peers=cluster.infos))
    engines = list(cluster.engines.values())
    recs = w.records(60)
    rng = random.Random(5)
    for i in range(0, 60, 5):
        batch = recs[i:i + 5]
        for e in rng.sample(engines, 4):  # a write quorum of 4/6
            append(e, batch, vdl=batch[0].lsn - 1)
    down = engines[5]
    cluster.stop(down.address, clean=False)
    more = w.records(20)
    for e in engines[:4]:
        append(e, more, vdl=80)
    for e in engines[:5]:
        e.gossip_once()
    for e in engines[:5]:
        assert info(e).scl == 80, e.node_id
    back = cluster.start(down.address)
    assert info(back).scl < 80
    back.gossip_once()
    assert info(back).scl == 80 and info(back).record_count == 80
    check_reads(back, w, [40, 80])


def test_gossip_learns_epoch_and_truncation_from_peers(cluster):
    w = PgWriter()
    engines = list(cluster.engines.values())
    for e in engines:
        e.create_segment(w.create_request(peers=cluster.infos))
    recs = w.records(10)
    for e in engines:
        append(e, recs)
    trunc = [pb.TruncationRange(epoch=2, first_lsn=6, last_lsn=2**64 - 1)]
    for e in engines[:4]:
        e.seal(pb.SealRequest(volume_id=VOLUME, pg=0, epoch=2, truncations=trunc))
    lagging = engines[5]
    assert info(lagging).epoch == 1 and info(lagging).scl == 10
    lagging.gossip_once()
    i = info(lagging)
    assert i.epoch == 2 and list(i.truncations) == trunc and i.scl == 5 and i.record_count == 5


# ---- scrub and repair -----------------------------------------------------------------
def _flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def test_bit_flip_in_record_is_never_served_and_repaired_from_peer(cluster):
    w = PgWriter(page_count=2)
    engines = list(cluster.engines.values())
    for e in engines:
        e.create_segment(w.create_request(peers=cluster.infos))
    recs = w.records(20)
    for e in engines:
        append(e, recs)
    victim = engines[0]
    seg = victim.segment(VOLUME, 0)
    m = seg.records[7]
    _flip_byte(os.path.join(seg.log.directory, f"{m.chunk:06d}.log"), m.off + m.flen - 3)
    # the read path verifies before serving
    assert read(victim, m.page, 20).status == pb.READ_CORRUPT
    got = victim.fetch_records(pb.FetchRecordsRequest(volume_id=VOLUME, pg=0, epoch=1))
    assert 7 not in [r.lsn for r in got.records]
    assert info(victim).corrupt_records == 1
    victim.gossip_once()  # repair from a peer
    assert info(victim).corrupt_records == 0
    assert victim.scrub_once() == 0
    check_reads(victim, w, [7, 20])


def test_scrub_finds_flip_before_any_read(cluster):
    w = PgWriter(page_count=2)
    engines = list(cluster.engines.values())
    for e in engines:
        e.create_segment(w.create_request(peers=cluster.infos))
    for e in engines:
        append(e, w.records(10) if e is engines[0] else [])
    w2 = PgWriter(page_count=2)
    recs = w2.records(10)
    for e in engines:
        append(e, recs)
    victim = engines[1]
    seg = victim.segment(VOLUME, 0)
    m = seg.records[3]
    _flip_byte(os.path.join(seg.log.directory, f"{m.chunk:06d}.log"), m.off + 20)
    assert victim.scrub_once() == 1
    assert info(victim).corrupt_records == 1
    assert victim.repair_once() == 1
    assert victim.scrub_once() == 0
    check_reads(victim, w2, [10])


def test_bit_flip_in_page_version_is_not_served(tmp_path):
    e = StorageEngine("s", "a", "x:1", str(tmp_path)).open()
    w = PgWriter(page_count=2)
    e.create_segment(w.create_request())
    append(e, w.records(10), vdl=10)
    e.coalesce_once()
    seg = e.segment(VOLUME, 0)
    page, vs = next(iter(seg.versions.items()))
    v = vs[-1]
    _flip_byte(os.path.join(seg.ver.directory, f"{v.chunk:06d}.log"), v.off + v.flen // 2)
    check_reads(e, w, [10])  # the bad version is dropped; the page is rebuilt from records
    assert all(x.lsn != v.lsn or x.off != v.off for x in seg.versions.get(page, []))
    e.coalesce_once()
    assert e.scrub_once() == 0
    check_reads(e, w, [10])
    e.close()


def test_gc_reclaims_log_chunks_and_reopen_still_reads(tmp_path):
    d = str(tmp_path / "d")
    opts = StorageOptions(retention_s=0, chunk_size_bytes=8 * 1024)
    e = StorageEngine("s", "a", "x:1", d, opts).open()
    w = PgWriter(page_count=4)
    e.create_segment(w.create_request())
    for _ in range(20):
        append(e, w.records(10, full=True), vdl=w.last_lsn)
        e.coalesce_once()
    seg = e.segment(VOLUME, 0)
    before = seg.log.chunk_numbers()
    assert len(before) > 5
    append(e, [], vdl=200, mrp=190)
    e.coalesce_once()
    e.gc_once()
    e.checkpoint_once()
    after = seg.log.chunk_numbers()
    assert len(after) < len(before) / 2, (before, after)
    assert info(e).gc_floor_lsn == 190
    check_reads(e, w, [190, 200])
    kill(e)
    e2 = StorageEngine("s", "a", "x:1", d, opts).open()
    assert info(e2).scl == 200 and info(e2).gc_floor_lsn == 190
    check_reads(e2, w, [190, 200])
    e2.close()


def test_concurrent_appends_share_fsyncs(tmp_path):
    import threading

    from borealdb.nodes.storage import stats

    e = StorageEngine("gc-node", "a", "x:1", str(tmp_path)).open()
    writers = [PgWriter(pg=i, first_page=16 * i, seed=i) for i in range(8)]
    for w in writers:
        e.create_segment(w.create_request())
    batches = {w.pg: [w.records(1) for _ in range(25)] for w in writers}
    fs = stats.FSYNCS.labels("gc-node")
    start = fs._value.get()

    def run(pg):
        for b in batches[pg]:
            append(e, b)

    threads = [threading.Thread(target=run, args=(w.pg,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in writers:
        assert info(e, w.pg).scl == 25
    assert fs._value.get() - start <= 200  # never more than one fsync per append; usually far fewer
    e.close()


def test_background_threads_fill_a_gap_without_explicit_calls(tmp_path):
    import time

    opts = StorageOptions(gossip_interval_s=0.02, gossip_idle_interval_s=0.05, coalesce_interval_s=0.02)
    c = Cluster(tmp_path, n=3, options=opts)
    try:
        w = PgWriter()
        engines = list(c.engines.values())
        for e in engines:
            e.create_segment(w.create_request(peers=c.infos))
        recs = w.records(30)
        append(engines[0], recs, vdl=30)
        append(engines[1], recs, vdl=30)
        append(engines[2], recs[20:], vdl=30)  # missed the first 20
        for e in engines:
            e.start_background(c.factory)
        deadline = time.monotonic() + 10
        while info(engines[2]).scl < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert info(engines[2]).scl == 30
        deadline = time.monotonic() + 10
        while not engines[2].segment(VOLUME, 0).versions and time.monotonic() < deadline:
            time.sleep(0.01)
        check_reads(engines[2], w, [30])
    finally:
        c.close()


def test_background_scrub_is_paced_and_resumes_where_it_stopped(tmp_path):
    opts = StorageOptions(scrub_batch_records=10, scrub_interval_s=3600)
    e = StorageEngine("s", "a", "x:1", str(tmp_path), opts).open()
    w = PgWriter(page_count=4)
    e.create_segment(w.create_request())
    append(e, w.records(50))
    seg = e.segment(VOLUME, 0)
    m = seg.records[35]
    _flip_byte(os.path.join(seg.log.directory, f"{m.chunk:06d}.log"), m.off + 20)
    assert e.scrub_step(20) == 0              # records 1..20: the flip is not reached yet
    assert info(e).corrupt_records == 0
    assert e.scrub_step(20) == 1              # 21..40: found, and marked
    assert info(e).corrupt_records == 1
    assert e.scrub_step(1000) == 0            # the rest; the pass is done
    m2 = seg.records[5]
    _flip_byte(os.path.join(seg.log.directory, f"{m2.chunk:06d}.log"), m2.off + 20)
    assert e.scrub_step(1000) == 0            # the next pass waits for scrub_interval_s
    e.options.scrub_interval_s = 0
    assert e.scrub_step(1000) == 1            # a new pass from the start finds the new flip
    assert e.scrub_once() == 0                # both already marked: nothing new
    e.close()
