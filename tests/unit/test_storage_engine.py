"""Storage engine foreground: append/ack/SCL, validation, epochs, seal/truncation."""

from __future__ import annotations

import grpc
import pytest

from borealdb.nodes import redo
from borealdb.nodes.storage.engine import StorageEngine, StorageError, StorageOptions
from borealdb.nodes.storage.testing import VOLUME, PgWriter, append
from borealdb.protos import storage_pb2 as pb


@pytest.fixture
def engine(tmp_path):
    e = StorageEngine("s-a1", "a", "127.0.0.1:1", str(tmp_path / "d"), StorageOptions()).open()
    yield e
    e.close()


def make(engine, **kw):
    w = PgWriter(**kw)
    assert engine.create_segment(w.create_request()).created
    return w


def info(engine, pg=0):
    return next(s for s in engine.list_segments(pb.ListSegmentsRequest(volume_id=VOLUME)).segments if s.pg == pg)


def test_scl_with_out_of_order_and_gappy_arrival(engine):
    w = make(engine)
    recs = w.records(10)
    order = [3, 0, 5, 1, 9, 7]  # lsns 4, 1, 6, 2, 10, 8
    expected_scl = [0, 1, 1, 2, 2, 2]
    for idx, want in zip(order, expected_scl):
        resp = append(engine, [recs[idx]])
        assert [(a.pg, a.scl) for a in resp.acks] == [(0, want)]
    assert info(engine).highest_lsn == 10
    resp = append(engine, [recs[2]])  # lsn 3 fills: chain 1..4, 5 missing
    assert resp.acks[0].scl == 4
    resp = append(engine, [recs[4], recs[6], recs[8]])  # 5, 7, 9: complete
    assert resp.acks[0].scl == 10
    i = info(engine)
    assert i.scl == 10 and i.record_count == 10 and i.highest_lsn == 10
    engine.segment(VOLUME, 0).check_invariants()


def test_heartbeat_acks_every_segment_and_records_vdl(engine):
    w0 = make(engine, pg=0, first_page=0)
    make(engine, pg=1, first_page=16)
    append(engine, w0.records(3))
    resp = append(engine, [], vdl=3, mrp=2)
    assert sorted((a.pg, a.scl) for a in resp.acks) == [(0, 3), (1, 0)]
    assert info(engine, 0).vdl_hint == 3 and info(engine, 1).vdl_hint == 3


def test_duplicate_is_idempotent_and_conflict_rejected(engine):
    w = make(engine)
    recs = w.records(3)
    append(engine, recs)
    resp = append(engine, recs + recs)
    assert resp.acks[0].scl == 3 and info(engine).record_count == 3
    other = pb.RedoRecord()
    other.CopyFrom(recs[1])
    other.consistency_point = not other.consistency_point
    redo.seal_record(other)
    with pytest.raises(StorageError) as ei:
        append(engine, [other])
    assert ei.value.reason == pb.LSN_CONFLICT and ei.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(StorageError) as ei:  # two different records for one LSN in one request
        fresh = w.record()
        twin = pb.RedoRecord()
        twin.CopyFrom(fresh)
        twin.page = (twin.page + 1) % 16
        redo.seal_record(twin)
        append(engine, [fresh, twin])
    assert ei.value.reason == pb.LSN_CONFLICT


def _resealed(rec, **changes):
    r = pb.RedoRecord()
    r.CopyFrom(rec)
    for k, v in changes.items():
        setattr(r, k, v)
    return redo.seal_record(r)


@pytest.mark.parametrize("case,reason,code", [
    ("crc", pb.CHECKSUM_MISMATCH, grpc.StatusCode.INVALID_ARGUMENT),
    ("pg_prev", pb.BAD_RECORD, grpc.StatusCode.INVALID_ARGUMENT),
    ("page_prev", pb.BAD_RECORD, grpc.StatusCode.INVALID_ARGUMENT),
    ("page_range", pb.BAD_RECORD, grpc.StatusCode.INVALID_ARGUMENT),
    ("kind", pb.BAD_RECORD, grpc.StatusCode.INVALID_ARGUMENT),
    ("delta", pb.BAD_DELTA, grpc.StatusCode.INVALID_ARGUMENT),
    ("full_size", pb.BAD_DELTA, grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown_pg", pb.UNKNOWN_SEGMENT, grpc.StatusCode.NOT_FOUND),
    ("unknown_volume", pb.UNKNOWN_VOLUME, grpc.StatusCode.NOT_FOUND),
    ("record_epoch", pb.BAD_RECORD, grpc.StatusCode.INVALID_ARGUMENT),
    ("oversized", pb.PAYLOAD_TOO_LARGE, grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_bad_input_rejected_and_nothing_written(tmp_path, case, reason, code):
    e = StorageEngine("s", "a", "x:1", str(tmp_path), StorageOptions(max_message_bytes=64 * 1024)).open()
    try:
        w = make(e)
        good = w.records(2)
        bad = w.record()
        volume = VOLUME
        if case == "crc":
            bad.payload = bad.payload[:-1] + bytes([bad.payload[-1] ^ 1])
        elif case == "pg_prev":
            bad = _resealed(bad, pg_prev_lsn=bad.lsn)
        elif case == "page_prev":
            bad = _resealed(bad, page_prev_lsn=bad.lsn + 5)
        elif case == "page_range":
            bad = _resealed(bad, page=16)
        elif case == "kind":
            bad = _resealed(bad, kind=7)
        elif case == "delta":
            bad = _resealed(bad, kind=pb.PAGE_DELTA, payload=b"\xff\x01\x10\x00" + b"x" * 16)
        elif case == "full_size":
            bad = _resealed(bad, kind=pb.FULL_PAGE, payload=b"x" * 100)
        elif case == "unknown_pg":
            bad = _resealed(bad, pg=5)
        elif case == "unknown_volume":
            volume = "nope"
        elif case == "record_epoch":
            bad = _resealed(bad, epoch=2)
        elif case == "oversized":
            good = good + [_resealed(w.record(full=True), lsn=100 + i, pg_prev_lsn=0, page_prev_lsn=0)
                           for i in range(200)]
        seg = e.segment(VOLUME, 0)
        size_before = seg.log.size_bytes()
        with pytest.raises(StorageError) as ei:
            e.append(pb.AppendRequest(volume_id=volume, epoch=1, records=good + [bad]))
        assert ei.value.reason == reason, ei.value
        assert ei.value.code == code
        assert seg.log.size_bytes() == size_before == 0
        assert info(e).record_count == 0 and info(e).scl == 0
    finally:
        e.close()


def test_epoch_stale_and_ahead(engine):
    w = make(engine)
    append(engine, w.records(2))
    assert engine.seal(pb.SealRequest(volume_id=VOLUME, pg=0, epoch=3)).epoch == 3
    for call in (
        lambda ep: append(engine, [], epoch=ep),
        lambda ep: engine.read_page(pb.ReadPageRequest(volume_id=VOLUME, epoch=ep, pg=0, page=0, read_lsn=1)),
        lambda ep: engine.record_summaries(pb.RecordSummaryRequest(volume_id=VOLUME, pg=0, epoch=ep)),
    ):
        with pytest.raises(StorageError) as ei:
            call(2)
        assert ei.value.reason == pb.STALE_EPOCH and ei.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(StorageError) as ei:
            call(4)
        assert ei.value.reason == pb.EPOCH_AHEAD and ei.value.segment_epoch == 3 and ei.value.pg == 0
        call(3)
    with pytest.raises(StorageError) as ei:
        engine.seal(pb.SealRequest(volume_id=VOLUME, pg=0, epoch=2))
    assert ei.value.reason == pb.STALE_EPOCH
    assert info(engine).epoch == 3  # epochs only grow


def test_seal_truncation_drops_records_lowers_scl_and_survives_reopen(tmp_path):
    d = str(tmp_path / "d")
    e = StorageEngine("s", "a", "x:1", d).open()
    w = make(e)
    recs = w.records(10)
    append(e, recs, vdl=6)
    assert info(e).scl == 10
    trunc = [pb.TruncationRange(epoch=2, first_lsn=7, last_lsn=2**64 - 1)]
    resp = e.seal(pb.SealRequest(volume_id=VOLUME, pg=0, epoch=2, truncations=trunc))
    assert (resp.epoch, resp.scl) == (2, 6)
    summ = e.record_summaries(pb.RecordSummaryRequest(volume_id=VOLUME, pg=0, epoch=2))
    assert [r.lsn for r in summ.records] == [1, 2, 3, 4, 5, 6]
    fetched = e.fetch_records(pb.FetchRecordsRequest(volume_id=VOLUME, pg=0, epoch=2))
    assert [r.lsn for r in fetched.records] == [1, 2, 3, 4, 5, 6] and list(fetched.truncations) == trunc
    # an old-epoch record in the range is dropped, never stored
    append(e, [recs[7]], epoch=2)
    assert info(e).record_count == 6
    # the new writer continues the chain at lsn 7 in epoch 2
    w.epoch, w.last_lsn, w.next_lsn = 2, 6, 7
    new = w.records(2)
    assert append(e, new, epoch=2).acks[0].scl == 8
    e.close()
    e2 = StorageEngine("s", "a", "x:1", d).open()
    i = info(e2)
    assert (i.epoch, i.scl, i.record_count, list(i.truncations)) == (2, 8, 8, trunc)
    # a kill right after the seal (no checkpoint since) also keeps it
    e2.seal(pb.SealRequest(volume_id=VOLUME, pg=0, epoch=3,
                           truncations=[pb.TruncationRange(epoch=3, first_lsn=8, last_lsn=2**64 - 1)]))
    for seg in e2._all_segments():
        seg.close()
    e3 = StorageEngine("s", "a", "x:1", d).open()
    i = info(e3)
    assert (i.epoch, i.scl, i.record_count) == (3, 7, 7)
    e3.close()


def test_create_segment_idempotent_and_conflict(engine):
    w = make(engine)
    assert not engine.create_segment(w.create_request()).created
    req = w.create_request()
    req.page_count = 99
    with pytest.raises(StorageError) as ei:
        engine.create_segment(req)
    assert ei.value.reason == pb.SEGMENT_EXISTS and ei.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_put_descriptor_keeps_highest_version(tmp_path):
    d = str(tmp_path / "d")
    e = StorageEngine("s", "a", "x:1", d).open()
    make(e)
    desc = pb.VolumeDescriptor(volume_id=VOLUME, version=2, page_size=512, pg_size_pages=16)
    assert e.put_descriptor(pb.PutDescriptorRequest(epoch=1, descriptor=desc)).stored_version == 2
    desc.version = 1
    assert e.put_descriptor(pb.PutDescriptorRequest(epoch=1, descriptor=desc)).stored_version == 2
    for seg in e._all_segments():
        seg.close()  # kill
    e2 = StorageEngine("s", "a", "x:1", d).open()
    assert info(e2).descriptor.version == 2
    st = e2.node_status(pb.NodeStatusRequest())
    assert st.node_id == "s" and st.segments[0].descriptor.version == 2
    e2.close()


def test_summaries_bounded(engine):
    w = make(engine)
    append(engine, w.records(10))
    r = engine.record_summaries(pb.RecordSummaryRequest(volume_id=VOLUME, pg=0, epoch=1, after_lsn=2, max_records=3))
    assert [x.lsn for x in r.records] == [3, 4, 5] and r.truncated_reply and r.scl == 10
    assert r.records[0].pg_prev_lsn == 2
