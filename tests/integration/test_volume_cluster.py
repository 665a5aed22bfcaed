"""The storage volume end to end: real storage-node processes, real gRPC on 127.0.0.1.

Each test starts its own 6-node cluster (2 storage nodes in each of AZs a, b, c), so
every protection group has a segment on every node, writes through the real volume
client, and breaks things the way production does: kill -9, SIGSTOP, bit flips.
Waits are on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import grpc
import pytest


from borealdb import QuorumLost, StaleEpoch
from borealdb.nodes import redo
from borealdb.nodes.volume.transport import GrpcTransport
from borealdb.nodes.volume.volume import PageChange, Volume, VolumeConfig
from borealdb.protos import storage_pb2 as pb
from borealdb.protos import storage_pb2_grpc as pbg
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

PAGE_SIZE = 4096
PG_SIZE_PAGES = 16  # small PGs: a test volume spans several PGs
STORAGE_ARGS = ["--gossip-interval-s", "0.1", "--scrub-interval-s", "0.5"]


class PageModel:
    """What the volume must contain: the expected image of every page written."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.pages: dict[int, bytes] = {}

    def group(self, pages: list[int]) -> tuple[list[PageChange], dict[int, bytes]]:
        changes, after = [], {}
        for page in pages:
            old = after.get(page, self.pages.get(page))
            if old is None:
                new = self.rng.randbytes(PAGE_SIZE)
                changes.append(PageChange(page, redo.FULL_PAGE, new))
            else:
                new = bytearray(old)
                off = self.rng.randrange(PAGE_SIZE - 64)
                new[off : off + 64] = self.rng.randbytes(64)
                new = bytes(new)
                changes.append(PageChange(page, redo.PAGE_DELTA, redo.encode_delta(old, new)))
            after[page] = new
        return changes, after

    def commit(self, after: dict[int, bytes]) -> None:
        self.pages.update(after)


def _config(cluster, **overrides) -> VolumeConfig:
    kwargs = dict(volume_id="itest", nodes=cluster.storage_node_infos(), page_size=PAGE_SIZE, pg_size_pages=PG_SIZE_PAGES,
                  rpc_timeout_s=1.0, recovery_timeout_s=20.0)
    kwargs.update(overrides)
    return VolumeConfig(**kwargs)


@pytest.fixture
def cluster(make_cluster):
    return make_cluster(storage_args=STORAGE_ARGS, metrics=False)


@pytest.fixture
def open_volume():
    opened: list[tuple[Volume, GrpcTransport]] = []

    def factory(cluster, **overrides) -> Volume:
        transport = GrpcTransport()
        vol = Volume.open(_config(cluster, **overrides), transport, create_if_missing=True)
        opened.append((vol, transport))
        return vol

    yield factory
    for vol, transport in reversed(opened):
        vol.close(flush_timeout_s=1.0)
        transport.close()


def write_groups(vol: Volume, model: PageModel, count: int, pages_span: int = 64) -> int:
    """Write `count` atomic groups of 1-3 pages, each acknowledged before the next."""
    lsn = 0
    for _ in range(count):
        pages = model.rng.sample(range(pages_span), model.rng.randint(1, 3))
        changes, after = model.group(pages)
        lsn = vol.append_group(changes)
        vol.wait_durable(lsn, timeout_s=20)
        model.commit(after)
    return lsn


def assert_volume_matches(vol: Volume, model: PageModel) -> None:
    for page, expected in sorted(model.pages.items()):
        data, page_lsn = vol.read_page(page)
        assert page_lsn > 0, f"page {page} lost"
        assert data == expected, f"page {page} differs at read point {vol.vdl}"


def node_stub(node) -> pbg.StorageNodeStub:
    return pbg.StorageNodeStub(node.channel())


def segments_of(node, volume_id: str = "itest") -> dict[int, pb.SegmentInfo]:
    resp = node_stub(node).ListSegments(pb.ListSegmentsRequest(volume_id=volume_id), timeout=5)
    return {s.pg: s for s in resp.segments}


@pytest.mark.parametrize("victims", [("s-a1", "s-a2"), ("s-b1", "s-c2")], ids=["whole-az-a", "one-in-b-one-in-c"])
def test_writes_are_acknowledged_with_any_two_nodes_killed(cluster, open_volume, victims):
    vol = open_volume(cluster)
    model = PageModel(1)
    write_groups(vol, model, 20)
    for node_id in victims:
        cluster.node(node_id).kill()
    write_groups(vol, model, 40)  # every wait_durable succeeds with 4 of 6 segments
    assert_volume_matches(vol, model)
    assert vol.descriptor().pgs and len(vol.descriptor().pgs) >= 3, "the test volume should span several PGs"


def test_three_segments_down_blocks_acks_but_reads_and_recovery_work(cluster, open_volume):
    vol = open_volume(cluster)
    model = PageModel(2)
    acked_lsn = write_groups(vol, model, 30)
    acked_vdl = vol.vdl
    for node_id in ("s-a1", "s-b1", "s-c1"):
        cluster.node(node_id).kill()
    changes, unacked_after = model.group([1, 2])
    unacked_lsn = vol.append_group(changes)
    with pytest.raises(QuorumLost):
        vol.wait_durable(unacked_lsn, timeout_s=2.0)
    assert vol.vdl == acked_vdl
    # Reads at the VDL still work from the 3 surviving segments.
    assert_volume_matches(vol, model)
    vol.close(flush_timeout_s=0.5)

    # A new writer recovers from the 3 survivors alone: read-only, but with a VDL
    # covering every acknowledged commit, and never past what was issued.
    recovered = open_volume(cluster)
    report = recovered.recovery
    assert report.read_only
    assert acked_lsn <= report.vdl <= unacked_lsn
    # The unacknowledged group is all or nothing.
    if report.vdl >= unacked_lsn:
        model.commit(unacked_after)
    assert_volume_matches(recovered, model)
    recovered.close(flush_timeout_s=0.5)

    for node_id in ("s-a1", "s-b1", "s-c1"):
        cluster.node(node_id).start()
    for node_id in ("s-a1", "s-b1", "s-c1"):
        cluster.node(node_id).wait_ready(timeout_s=30)
    writable = open_volume(cluster)
    assert not writable.recovery.read_only
    assert writable.recovery.vdl == report.vdl, "a later recovery must not move the VDL an earlier one served"
    assert_volume_matches(writable, model)
    write_groups(writable, model, 5)
    assert_volume_matches(writable, model)


def test_killed_node_catches_up_by_gossip_alone(cluster, open_volume):
    vol = open_volume(cluster)
    model = PageModel(3)
    write_groups(vol, model, 10)
    laggard = cluster.node("s-b2")
    laggard.kill()
    write_groups(vol, model, 60)
    expected_scl = {}
    for node in cluster.storage_nodes():
        if node is laggard:
            continue
        for pg, seg in segments_of(node).items():
            expected_scl[pg] = max(expected_scl.get(pg, 0), seg.scl)
    # Close the writer first: nothing but the storage nodes' gossip may fill the gap.
    vol.close(flush_timeout_s=2.0)
    laggard.start()
    laggard.wait_ready(timeout_s=30)

    def caught_up():
        segs = segments_of(laggard)
        return all(pg in segs and segs[pg].scl >= scl for pg, scl in expected_scl.items())

    wait_until(caught_up, timeout_s=60, what="s-b2 to catch up by gossip")
    # The laggard now serves the latest version of every page by itself.
    stub = node_stub(laggard)
    segs = segments_of(laggard)
    for page, expected in model.pages.items():
        pg = page // PG_SIZE_PAGES
        resp = stub.ReadPage(pb.ReadPageRequest(volume_id="itest", epoch=segs[pg].epoch, pg=pg, page=page, read_lsn=segs[pg].scl), timeout=5)
        assert resp.status == pb.READ_OK and resp.data == expected, f"page {page}"


def _flip_byte_in_log(node_dir: Path, marker: bytes) -> Path:
    """Flip one bit inside `marker` where it is stored in a segment's record log."""
    for path in sorted(node_dir.rglob("log/*.log")):
        data = path.read_bytes()
        at = data.find(marker)
        if at >= 0:
            with open(path, "r+b") as f:
                f.seek(at + len(marker) // 2)
                f.write(bytes([data[at + len(marker) // 2] ^ 0x10]))
                f.flush()
                os.fsync(f.fileno())
            return path
    raise AssertionError(f"marker not found in any record log under {node_dir}")


def test_bit_flip_is_detected_never_served_and_repaired(cluster, open_volume):
    vol = open_volume(cluster)
    model = PageModel(4)
    write_groups(vol, model, 5)
    # A full page image with a recognisable body, followed by more records so the
    # damaged one sits in the middle of the log (not a torn tail).
    page = 7
    marker = b"BOREAL-BITFLIP-" * 8
    image = marker + bytes(PAGE_SIZE - len(marker))
    lsn = vol.append_group([PageChange(page, redo.FULL_PAGE, image)])
    vol.wait_durable(lsn, timeout_s=20)
    model.pages[page] = image
    write_groups(vol, model, 10, pages_span=6)  # pages 0-5: page 7 keeps the image
    vol.close(flush_timeout_s=2.0)

    victim = cluster.node("s-c1")
    pg = page // PG_SIZE_PAGES
    # The writer only waits for 4 of 6 segments: make sure the victim holds the record.
    wait_until(lambda: segments_of(victim)[pg].scl >= lsn, timeout_s=30, what="s-c1 to hold the marked record")
    victim.stop()
    _flip_byte_in_log(victim.data_dir, marker)
    victim.start()
    victim.wait_ready(timeout_s=30)

    stub = node_stub(victim)

    def read_from_victim():
        seg = segments_of(victim)[pg]
        resp = stub.ReadPage(pb.ReadPageRequest(volume_id="itest", epoch=seg.epoch, pg=pg, page=page, read_lsn=seg.scl), timeout=5)
        # The corrupted bytes must never come back: either a clear refusal or the right page.
        assert resp.status in (pb.READ_OK, pb.READ_CORRUPT), pb.ReadStatus.Name(resp.status)
        if resp.status == pb.READ_OK:
            assert resp.data == image, "a corrupted page image was served"
        return resp.status == pb.READ_OK

    def corruption_logged():
        return "corrupt" in victim.log_path.read_text()

    wait_until(corruption_logged, timeout_s=30, what="the scrubber or a read to detect the flipped bit")
    wait_until(read_from_victim, timeout_s=30, what="the corrupted record to be repaired from peers")
    wait_until(lambda: segments_of(victim)[pg].corrupt_records == 0, timeout_s=30, what="no corrupt records left")
    assert "records_repaired" in victim.log_path.read_text()


def test_request_with_old_epoch_is_rejected_and_changes_nothing(cluster, open_volume):
    old_writer = open_volume(cluster)
    model = PageModel(5)
    write_groups(old_writer, model, 10)
    old_epoch = old_writer.epoch

    new_writer = open_volume(cluster)  # recovery raises the epoch on every PG
    assert new_writer.epoch > old_epoch
    node = cluster.node("s-a1")
    before = segments_of(node)

    # A raw Append at the old epoch, straight to a storage node.
    seg0 = before[0]
    rec = redo.seal_record(pb.RedoRecord(lsn=new_writer.next_lsn, pg=0, page=0, pg_prev_lsn=seg0.scl, kind=pb.FULL_PAGE,
                                         payload=bytes(PAGE_SIZE), consistency_point=True, epoch=old_epoch))
    with pytest.raises(grpc.RpcError) as err:
        node_stub(node).Append(pb.AppendRequest(volume_id="itest", epoch=old_epoch, records=[rec]), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ("boreal-reason", "STALE_EPOCH") in tuple(err.value.trailing_metadata())
    after = segments_of(node)
    assert {pg: (s.scl, s.highest_lsn, s.record_count, s.epoch) for pg, s in after.items()} == {
        pg: (s.scl, s.highest_lsn, s.record_count, s.epoch) for pg, s in before.items()
    }

    # The deposed writer, through the volume client: fenced, says so, writes nothing.
    changes, _after = model.group([3])
    with pytest.raises(StaleEpoch):
        lsn = old_writer.append_group(changes)
        old_writer.wait_durable(lsn, timeout_s=10)
    assert old_writer.fenced
    assert_volume_matches(new_writer, model)


def test_kill_9_of_every_node_loses_no_acknowledged_commit(cluster, open_volume):
    vol = open_volume(cluster)
    model = PageModel(6)
    write_groups(vol, model, 30)
    # Keep a stream of commits going and kill every node at once in the middle of it.
    # Each in-flight group gets pages of its own, so its deltas apply to the committed state.
    pages = model.rng.sample(range(64), 40)
    inflight = []
    for i in range(20):
        changes, after = model.group(pages[2 * i : 2 * i + 2])
        inflight.append((vol.append_group(changes), after))
    for node in cluster.storage_nodes():
        node.kill()
    vdl_at_kill = vol.vdl
    acked = [after for lsn, after in inflight if lsn <= vdl_at_kill]
    for after in acked:
        model.commit(after)
    vol.close(flush_timeout_s=0.5)
    for node in cluster.storage_nodes():
        node.start()
    for node in cluster.storage_nodes():
        node.wait_ready(timeout_s=30)
    recovered = open_volume(cluster)
    assert recovered.recovery.vdl >= vdl_at_kill
    # Every acknowledged group is there; unacknowledged ones are each all-or-nothing.
    for lsn, after in inflight[len(acked):]:
        if lsn <= recovered.recovery.vdl:
            model.commit(after)
    assert_volume_matches(recovered, model)
