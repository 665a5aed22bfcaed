"""Volume client against real StorageEngine instances through InProcessTransport.

6 (or 9) storage nodes in 3 AZs, each an engine in tmp_path; no processes, no sockets.
Waits are on conditions with deadlines (wait_durable, futures), never bare sleeps.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from borealdb.errors import InvalidRequest, QuorumLost, StaleEpoch, Unavailable, VolumeFull
from borealdb.nodes import redo
from borealdb.nodes.storage.engine import StorageEngine, StorageOptions
from borealdb.nodes.volume import InProcessTransport, PageChange, Volume, VolumeConfig, place_pg
from borealdb.protos import storage_pb2 as pb
from tests.waiting import wait_until

PAGE = 512


class Nodes:
    def __init__(self, root, per_az: int = 2, azs: str = "abc"):
        self.root = root
        self.infos = [
            pb.StorageNodeInfo(node_id=f"s-{az}{i}", az=az, address=f"mem:{az}{i}")
            for az in azs
            for i in range(per_az)
        ]
        self.engines = {}
        for info in self.infos:
            self.engines[info.address] = self._engine(info)
        self.transport = InProcessTransport(self.engines)

    def _engine(self, info):
        return StorageEngine(info.node_id, info.az, info.address, os.path.join(self.root, info.node_id),
                             StorageOptions()).open()

    def config(self, **kw) -> VolumeConfig:
        base = dict(volume_id="v1", nodes=list(self.infos), page_size=PAGE, pg_size_pages=8,
                    max_size_bytes=PAGE * 8 * 64, lsn_allocation_limit=10_000, rpc_timeout_s=1.0,
                    read_hedge_after_s=0.05, heartbeat_interval_s=0.2, recovery_timeout_s=10.0)
        base.update(kw)
        return VolumeConfig(**base)

    def close(self):
        self.transport.close()
        for e in self.engines.values():
            if e.is_open:
                e.close()


@pytest.fixture
def nodes(tmp_path):
    n = Nodes(str(tmp_path))
    yield n
    n.close()


def page_image(rng: random.Random) -> bytes:
    return rng.randbytes(PAGE)


def write(vol: Volume, model: dict, rng: random.Random, pages: list[int], n_groups: int = 1) -> int:
    lsn = 0
    for _ in range(n_groups):
        changes = []
        for p in pages:
            img = page_image(rng)
            changes.append(PageChange(page=p, kind=redo.FULL_PAGE, payload=img))
            model[p] = img
        lsn = vol.append_group(changes)
    return lsn


def write_delta(vol: Volume, model: dict, rng: random.Random, page: int) -> int:
    old = model.get(page, bytes(PAGE))
    new = bytearray(old)
    off = rng.randrange(PAGE - 16)
    new[off:off + 16] = rng.randbytes(16)
    new = bytes(new)
    delta = redo.encode_delta(old, new)
    model[page] = new
    return vol.append_group([PageChange(page=page, kind=redo.PAGE_DELTA, payload=delta)])


def check_reads(vol: Volume, model: dict):
    for p, img in model.items():
        data, page_lsn = vol.read_page(p)
        assert data == img, f"page {p}"
        assert page_lsn > 0


def pg_nodes(vol: Volume, pg: int) -> list[pb.StorageNodeInfo]:
    return list(vol.descriptor().pgs[pg].segments)


# ---- placement ------------------------------------------------------------------------


def test_placement_two_per_az_and_striping(tmp_path):
    infos = [pb.StorageNodeInfo(node_id=f"{az}{i}", az=az, address=f"{az}{i}") for az in "abc" for i in range(4)]
    load: dict[str, int] = {}
    for pg in range(12):
        chosen = place_pg(pg, infos, load)
        assert len(chosen) == 6 and len({c.address for c in chosen}) == 6
        assert sorted(c.az for c in chosen) == ["a", "a", "b", "b", "c", "c"]
        for c in chosen:
            load[c.address] = load.get(c.address, 0) + 1
    # 12 PGs x 6 segments over 12 nodes: perfectly striped
    assert sorted(load.values()) == [6] * 12


def test_placement_errors_are_clear():
    two_azs = [pb.StorageNodeInfo(node_id=f"{az}{i}", az=az, address=f"{az}{i}") for az in "ab" for i in range(3)]
    with pytest.raises(InvalidRequest, match="3 AZs"):
        place_pg(0, two_azs, {})
    thin = [pb.StorageNodeInfo(node_id=f"{az}{i}", az=az, address=f"{az}{i}") for az in "abc" for i in range(2)][:-1]
    with pytest.raises(InvalidRequest, match="c: 1"):
        place_pg(0, thin, {})


def test_growth_striping_and_volume_full(tmp_path):
    n = Nodes(str(tmp_path), per_az=3)
    try:
        vol = Volume.create(n.config(max_size_bytes=PAGE * 8 * 6), n.transport)
        rng = random.Random(5)
        model: dict[int, bytes] = {}
        lsn = write(vol, model, rng, [p * 8 + 3 for p in range(6)])  # one page in each of 6 PGs
        vol.wait_durable(lsn, 5)
        desc = vol.descriptor()
        assert len(desc.pgs) == 6 and desc.version == 6
        hosted = {}
        for p in desc.pgs:
            assert sorted(s.az for s in p.segments) == ["a", "a", "b", "b", "c", "c"]
            for s in p.segments:
                hosted[s.address] = hosted.get(s.address, 0) + 1
        assert sorted(hosted.values()) == [4] * 9  # 36 segments over 9 nodes
        before = vol.next_lsn
        with pytest.raises(VolumeFull):
            vol.append_group([PageChange(page=0, kind=redo.FULL_PAGE, payload=bytes(PAGE)),
                              PageChange(page=8 * 6, kind=redo.FULL_PAGE, payload=bytes(PAGE))])
        assert vol.next_lsn == before  # nothing written
        check_reads(vol, model)
        vol.close()
    finally:
        n.close()


# ---- writes with failures ---------------------------------------------------------------


def test_writes_acked_with_two_nodes_down(nodes):
    vol = Volume.create(nodes.config(), nodes.transport)
    rng = random.Random(1)
    model: dict[int, bytes] = {}
    vol.wait_durable(write(vol, model, rng, [0, 1, 2]), 5)
    # both nodes of AZ "a" down
    nodes.transport.set_down("mem:a0")
    nodes.transport.set_down("mem:a1")
    for _ in range(20):
        lsn = write(vol, model, rng, [rng.randrange(8)])
        lsn = write_delta(vol, model, rng, 1)
    assert vol.wait_durable(lsn, 5) >= lsn
    check_reads(vol, model)
    # one from "a" and one from "b"
    nodes.transport.set_down("mem:a0", False)
    nodes.transport.set_down("mem:b1")
    lsn = write(vol, model, rng, [5, 6], n_groups=10)
    assert vol.wait_durable(lsn, 5) >= lsn
    st = vol.status()
    assert st["vdl"] >= lsn and st["pgs"][0]["pgcl"] >= lsn
    check_reads(vol, model)
    vol.close()


def test_three_down_no_ack_reads_and_recovery(nodes):
    vol = Volume.create(nodes.config(), nodes.transport)
    rng = random.Random(2)
    model: dict[int, bytes] = {}
    acked = write(vol, model, rng, [0, 1, 2, 3], n_groups=3)
    vol.wait_durable(acked, 5)
    durable_model = dict(model)
    for a in ("mem:a0", "mem:b0", "mem:c0"):
        nodes.transport.set_down(a)
    pending = {}
    issued = write(vol, pending, rng, [0, 4], n_groups=3)
    with pytest.raises(QuorumLost):
        vol.wait_durable(issued, 0.5)
    assert vol.vdl == acked
    # reads at the VDL still work (3 segments hold everything up to it)
    check_reads(vol, durable_model)
    vol.close(flush_timeout_s=0)

    # a new writer recovers from the 3 reachable nodes: read-only, VDL in [acked, issued]
    vol2 = Volume.open(nodes.config(), nodes.transport)
    rep = vol2.recovery
    assert acked <= rep.vdl <= issued
    assert rep.read_only
    with pytest.raises(QuorumLost):
        vol2.append_group([PageChange(page=0, kind=redo.FULL_PAGE, payload=bytes(PAGE))])
    expect = dict(durable_model)
    if rep.vdl == issued:
        expect.update(pending)
    check_reads(vol2, expect)
    vol2.close()

    # the nodes come back: a third open is writable, and agrees
    for a in ("mem:a0", "mem:b0", "mem:c0"):
        nodes.transport.set_down(a, False)
    vol3 = Volume.open(nodes.config(), nodes.transport)
    assert not vol3.recovery.read_only
    assert vol3.vdl == rep.vdl
    check_reads(vol3, expect)
    lsn = write(vol3, expect, rng, [0, 9])
    vol3.wait_durable(lsn, 5)
    check_reads(vol3, expect)
    vol3.close()


def test_old_writer_is_fenced(nodes):
    vol = Volume.create(nodes.config(), nodes.transport)
    rng = random.Random(3)
    model: dict[int, bytes] = {}
    vol.wait_durable(write(vol, model, rng, [0, 1]), 5)
    vol2 = Volume.open(nodes.config(), nodes.transport)
    assert vol2.epoch == vol.epoch + 1
    assert vol2.vdl == vol.vdl
    lsn = write(vol, {}, rng, [2])
    with pytest.raises(StaleEpoch):
        vol.wait_durable(lsn, 5)
    with pytest.raises(StaleEpoch):
        vol.append_group([PageChange(page=0, kind=redo.FULL_PAGE, payload=bytes(PAGE))])
    with pytest.raises(StaleEpoch):
        vol.read_page(0)
    # the new writer is unaffected and the fenced write is gone
    check_reads(vol2, model)
    assert vol2.read_page(2) == (b"", 0)
    vol2.wait_durable(write(vol2, model, rng, [2]), 5)
    check_reads(vol2, model)
    vol.close()
    vol2.close()


def test_recovery_truncates_unacked_partial_group(tmp_path):
    """A group whose first record (PG 0) met its quorum but whose CPL record (PG 1) did not:
    recovery must discard the whole group, including the record that was durable."""
    n = Nodes(str(tmp_path), per_az=3)
    try:
        vol = Volume.create(n.config(), n.transport)
        rng = random.Random(4)
        model: dict[int, bytes] = {}
        acked = write(vol, model, rng, [0, 8])  # PG 0 and PG 1
        vol.wait_durable(acked, 5)
        pg0 = {s.address for s in pg_nodes(vol, 0)}
        pg1 = {s.address for s in pg_nodes(vol, 1)}
        shared = sorted(pg0 & pg1)
        only1 = sorted(pg1 - pg0)
        assert len(shared) == 3 and len(only1) == 3, (pg0, pg1)  # striping over 9 nodes
        holders, spare = shared[:2], shared[2]
        # PG 1 reachable on 2 segments only; PG 0 on 5
        for a in only1 + [spare]:
            n.transport.set_down(a)
        partial = vol.append_group([PageChange(page=1, kind=redo.FULL_PAGE, payload=page_image(rng)),
                                    PageChange(page=9, kind=redo.FULL_PAGE, payload=page_image(rng))])
        with pytest.raises(QuorumLost):
            vol.wait_durable(partial, 0.5)
        st = vol.status()
        assert st["pgs"][0]["pgcl"] == partial - 1  # the PG 0 record is at quorum ...
        assert st["vcl"] == partial - 1 and st["vdl"] == acked  # ... but the group is not durable
        vol.close(flush_timeout_s=0)
        # recovery without the two segments that hold the CPL record
        for a in only1 + [spare]:
            n.transport.set_down(a, False)
        for a in holders:
            n.transport.set_down(a)
        vol2 = Volume.open(n.config(), n.transport)
        assert not vol2.recovery.read_only
        assert vol2.vdl == acked
        _epoch, first, last = vol2.recovery.truncation
        assert first == acked + 1 and last >= partial
        assert vol2.read_page(1) == (b"", 0)
        assert vol2.read_page(9) == (b"", 0)
        check_reads(vol2, model)
        lsn = write(vol2, model, rng, [1, 9])
        vol2.wait_durable(lsn, 5)
        # the holders come back: they are sealed (EPOCH_AHEAD), drop the truncated records, catch up
        for a in holders:
            n.transport.set_down(a, False)
        lsn = write(vol2, model, rng, [2, 10], n_groups=3)
        vol2.wait_durable(lsn, 5)
        deadline = time.monotonic() + 5
        while any(n.engines[a].segment("v1", pg).epoch != vol2.epoch for a in holders for pg in (0, 1)):
            assert time.monotonic() < deadline
            vol2.heartbeat()
            vol2.wait_durable(lsn, 1)
        for a in holders:
            seg = n.engines[a].segment("v1", 1)
            assert partial not in seg.records
        check_reads(vol2, model)
        vol2.close()
    finally:
        n.close()


def test_read_hedging_when_one_node_is_slow(nodes):
    vol = Volume.create(nodes.config(local_az="a", read_hedge_after_s=0.02), nodes.transport)
    rng = random.Random(7)
    model: dict[int, bytes] = {}
    vol.wait_durable(write(vol, model, rng, [0, 1, 2]), 5)
    vol.heartbeat()
    deadline = time.monotonic() + 5
    while min(vol.status()["pgs"][0]["segments"], key=lambda s: s["scl"])["scl"] < vol.vdl:
        assert time.monotonic() < deadline, vol.status()
        vol.wait_durable(vol.vdl, 1)
        vol.heartbeat()
        nodes.transport.calls.clear()
    # both AZ "a" nodes answer reads only after 2 s: reads must still be fast
    nodes.transport.set_delay("mem:a0", 2.0, ["ReadPage"])
    nodes.transport.set_delay("mem:a1", 2.0, ["ReadPage"])
    t0 = time.monotonic()
    check_reads(vol, model)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, elapsed
    nodes.transport.set_delay("mem:a0", 0)
    nodes.transport.set_delay("mem:a1", 0)
    vol.close()


def test_epoch_ahead_segment_is_sealed_and_caught_up(nodes):
    vol = Volume.create(nodes.config(), nodes.transport)
    rng = random.Random(8)
    model: dict[int, bytes] = {}
    vol.wait_durable(write(vol, model, rng, [0, 1]), 5)
    vol.close()
    nodes.transport.set_down("mem:c1")  # misses the seal of the next open
    vol2 = Volume.open(nodes.config(), nodes.transport)
    nodes.transport.set_down("mem:c1", False)
    lsn = write(vol2, model, rng, [3], n_groups=5)
    vol2.wait_durable(lsn, 5)
    # c1 gets EPOCH_AHEAD, is sealed by the writer, then receives the records
    deadline = time.monotonic() + 5
    while vol2.status()["pgs"][0]["segments"][-1]["scl"] < lsn and any(
        s["address"] == "mem:c1" and s["scl"] < lsn for s in vol2.status()["pgs"][0]["segments"]
    ):
        assert time.monotonic() < deadline, vol2.status()
        vol2.heartbeat()
        vol2.wait_durable(lsn, 1)
    seg = nodes.engines["mem:c1"].segment("v1", 0)
    assert seg.epoch == vol2.epoch
    vol2.close()


def test_backpressure_lal(nodes):
    vol = Volume.create(nodes.config(lsn_allocation_limit=5), nodes.transport)
    for a in ("mem:a0", "mem:b0", "mem:c0"):
        nodes.transport.set_down(a)
    for i in range(5):
        vol.append_group([PageChange(page=i, kind=redo.FULL_PAGE, payload=bytes(PAGE))])
    with pytest.raises(Unavailable, match="allocation limit"):
        vol.append_group([PageChange(page=0, kind=redo.FULL_PAGE, payload=bytes(PAGE))], timeout_s=0.2)
    for a in ("mem:a0", "mem:b0", "mem:c0"):
        nodes.transport.set_down(a, False)
    lsn = vol.append_group([PageChange(page=0, kind=redo.FULL_PAGE, payload=bytes(PAGE))], timeout_s=5)
    vol.wait_durable(lsn, 5)
    vol.close()


def test_bad_requests(nodes):
    vol = Volume.create(nodes.config(), nodes.transport)
    with pytest.raises(InvalidRequest):
        vol.append_group([])
    with pytest.raises(InvalidRequest):
        vol.append_group([PageChange(page=0, kind=redo.FULL_PAGE, payload=b"short")])
    with pytest.raises(InvalidRequest):
        vol.append_group([PageChange(page=0, kind=redo.PAGE_DELTA, payload=b"\x00")])
    with pytest.raises(InvalidRequest):
        vol.read_page(0, read_lsn=vol.vdl + 1)
    with pytest.raises(InvalidRequest, match="exists"):
        Volume.create(nodes.config(), nodes.transport)
    vol.close()


def test_open_create_if_missing_and_durable_future(nodes):
    vol = Volume.open(nodes.config(), nodes.transport, create_if_missing=True)
    assert vol.recovery.created and vol.epoch == 1
    futs = []
    rng = random.Random(9)
    model: dict[int, bytes] = {}
    for i in range(50):
        lsn = write(vol, model, rng, [i % 16])
        futs.append((lsn, vol.durable_future(lsn)))
    for lsn, f in futs:
        assert f.result(5) >= lsn
    check_reads(vol, model)
    st = vol.status()
    assert st["vdl"] == st["vcl"] == futs[-1][0]
    vol.close()
    vol2 = Volume.open(nodes.config(), nodes.transport)
    assert vol2.vdl == futs[-1][0]
    check_reads(vol2, model)
    vol2.close()


def test_vdl_listeners_run_before_the_commits_waiting_for_that_vdl_are_released(nodes):
    """The replicas' streams (VDL listeners) are woken before the committers' replies,
    so a replica learns of a commit no later than its client."""
    vol = Volume.open(nodes.config(), nodes.transport, create_if_missing=True)
    released_first: list[int] = []   # VDLs whose waiting commits were released before the listener ran
    waiting: list = []               # (lsn, durable future) of the commit in flight
    advances = [0]

    def listener(vdl: int) -> None:
        advances[0] += 1
        if any(f.done() for lsn, f in list(waiting) if lsn <= vdl):
            released_first.append(vdl)

    vol.add_vdl_listener(listener)
    rng = random.Random(3)
    model: dict[int, bytes] = {}
    for i in range(30):
        lsn = write(vol, model, rng, [i % 4])
        fut = vol.durable_future(lsn)
        if not fut.done():  # else its advance (and listener call) may be under way already
            waiting.append((lsn, fut))
        fut.result(5)
        waiting.clear()
    assert advances[0] >= 10, advances
    assert released_first == []
    vol.close()


def test_a_failing_vdl_listener_does_not_hold_back_durable_commits(nodes):
    vol = Volume.open(nodes.config(), nodes.transport, create_if_missing=True)
    calls = []

    def broken(vdl: int) -> None:
        calls.append(vdl)
        raise RuntimeError("listener bug")

    vol.add_vdl_listener(broken)
    model: dict[int, bytes] = {}
    lsn = write(vol, model, random.Random(4), [1])
    assert vol.durable_future(lsn).result(5) >= lsn
    assert calls
    vol.close()


class TimerTransport(InProcessTransport):
    """InProcessTransport with the timer the group commit delay needs; timers fire only when
    the test says so."""

    def __init__(self, engines):
        super().__init__(engines)
        self.timers: list[tuple[float, object]] = []

    def call_later(self, delay_s, fn):
        self.timers.append((delay_s, fn))

    def fire_all(self):
        timers, self.timers = self.timers, []
        for _delay, fn in timers:
            fn()


def _timer_volume(nodes, **kw) -> tuple[Volume, TimerTransport]:
    transport = TimerTransport(nodes.engines)
    return Volume.open(nodes.config(**kw), transport, create_if_missing=True), transport


def test_group_commit_delay_never_delays_a_lone_client(nodes):
    vol, transport = _timer_volume(nodes, group_commit_delay_s=1.0, group_commit_siblings=3,
                                   group_commit_delay_per_group_s=0)
    try:
        rng, model = random.Random(3), {}
        for i in range(10):  # one commit at a time, each waited for: nothing overlaps
            lsn = write(vol, model, rng, [i % 8])
            assert vol.wait_durable(lsn, 5) >= lsn
        assert transport.timers == []
    finally:
        vol.close()
        transport.close()


def _hold_three_groups(vol: Volume, transport, infos, model: dict, rng: random.Random, pages: list[int]):
    """Commit one group, then 3 more while its batch is still in flight, so that the 3 wait
    for the group commit delay on every node of their PG (pages[0]'s). Returns the last
    LSN of the 3 and those nodes' senders."""
    for info in infos:
        transport.set_delay(info.address, 0.1, ["Append"])
    first = write(vol, model, rng, [pages[0]])
    held = write(vol, model, rng, [pages[1]], n_groups=3)
    for info in infos:
        transport.set_delay(info.address, 0)
    assert vol.wait_durable(first, 5) >= first
    senders = [vol._senders[i.address] for i in pg_nodes(vol, pages[0] // vol.config.pg_size_pages)]
    wait_until(lambda: all(s.inflight == 0 and s.delay_armed for s in senders), 5, "the delay armed on every node")
    return held, senders


def test_group_commit_delay_holds_overlapping_commits_for_one_batch(nodes):
    vol, transport = _timer_volume(nodes, group_commit_delay_s=1.0, group_commit_siblings=3,
                                   group_commit_delay_per_group_s=0)
    # Without the ticker (which would send once the second is over), only the timer sends
    # the held batch: the test does not race the clock.
    vol._tick_stop.set()
    vol._ticker.join(5)
    try:
        rng, model = random.Random(4), {}
        last, senders = _hold_three_groups(vol, transport, nodes.infos, model, rng, [0, 1])
        # 3 groups queued on each node: they wait for the delay's timer, not for an RPC
        assert all(len(s.queue) == 3 for s in senders) and vol.vdl < last
        assert len(transport.timers) == len(senders) and all(0 < d <= 1.0 for d, _ in transport.timers)
        transport.fire_all()  # the delay is over: one batch of 3 groups per node
        assert vol.wait_durable(last, 5) >= last
        assert all(s.last_batch_groups == 3 for s in senders)
        check_reads(vol, model)
    finally:
        vol.close()
        transport.close()


def test_a_held_batch_goes_once_the_hint_says_nothing_more_can_come(nodes):
    vol, transport = _timer_volume(nodes, group_commit_delay_s=1.0, group_commit_siblings=3,
                                   group_commit_delay_per_group_s=0)
    vol._tick_stop.set()  # only timers and commits pump: the test does not race the ticker
    vol._ticker.join(5)
    more = [True]
    vol.set_commit_hint(lambda: more[0])
    try:
        rng, model = random.Random(5), {}
        held, senders = _hold_three_groups(vol, transport, nodes.infos, model, rng, [0, 1])
        assert vol.vdl < held
        more[0] = False  # the last session commits: nothing more can join, so no timer is needed
        last = write(vol, model, rng, [2])
        assert vol.wait_durable(last, 5) >= last
        wait_until(lambda: all(s.inflight == 0 for s in senders), 5, "every node answered")
        stale, transport.timers = transport.timers, []
        more[0] = True
        after = write(vol, model, rng, [3])  # overlapping again: held by a new delay
        assert all(s.delay_armed for s in senders) and vol.vdl < after
        for _delay_s, fn in stale:  # the timers of the batch that went early must not send this one
            fn()
        assert all(s.delay_armed for s in senders) and vol.vdl < after
        transport.fire_all()  # its own delay is over
        assert vol.wait_durable(after, 5) >= after
        check_reads(vol, model)
    finally:
        vol.close()
        transport.close()



def test_the_hint_also_sends_batches_held_on_nodes_the_last_commit_did_not_touch(tmp_path):
    wide = Nodes(str(tmp_path), per_az=4)  # 12 nodes: each PG on 6 of them
    transport = TimerTransport(wide.engines)
    vol = Volume.open(wide.config(group_commit_delay_s=1.0, group_commit_siblings=3, group_commit_delay_per_group_s=0),
                      transport, create_if_missing=True)
    vol._tick_stop.set()  # only timers and commits pump
    vol._ticker.join(5)
    more = [True]
    vol.set_commit_hint(lambda: more[0])
    try:
        rng, model = random.Random(6), {}
        assert vol.wait_durable(write(vol, model, rng, [0, 8]), 5)  # PGs 0 and 1 exist now
        members = {pg: {n.address for n in pg_nodes(vol, pg)} for pg in (0, 1)}
        assert len(members[0] & members[1]) < 4  # PG 1's commit alone cannot complete PG 0's held ones
        held, _senders = _hold_three_groups(vol, transport, wide.infos, model, rng, [0, 1])  # in PG 0
        more[0] = False  # the last session commits, into PG 1: the held batch goes too
        last = write(vol, model, rng, [8])
        assert vol.wait_durable(last, 5) >= last >= held  # without a timer firing
        check_reads(vol, model)
    finally:
        vol.close()
        transport.close()
        wide.close()

def test_group_commit_delay_grows_with_the_overlap_up_to_its_cap(nodes):
    vol, transport = _timer_volume(nodes, group_commit_delay_s=0.020, group_commit_delay_per_group_s=0.0015,
                                   group_commit_siblings=3)
    try:
        sender = next(iter(vol._senders.values()))
        with sender.lock:  # the ticker's pumps wait meanwhile; the state is put back below
            saved = sender.queue, sender.last_send, sender.last_batch_groups, sender.inflight
            try:
                sender.queue = type(saved[0])([pb.RedoRecord(lsn=10**9, consistency_point=True)])
                sender.inflight, sender.last_send = 0, 1000.0
                for groups, wait_s in ((2, 0.0), (3, 0.0045), (8, 0.012), (13, 0.0195), (14, 0.020), (40, 0.020)):
                    sender.last_batch_groups = groups
                    assert sender._group_commit_wait(1000.0) == pytest.approx(wait_s), groups
                sender.last_batch_groups = 8
                assert sender._group_commit_wait(1000.005) == pytest.approx(0.007)  # counted from the last send
                assert sender._group_commit_wait(1000.012) == 0.0
            finally:
                sender.queue, sender.last_send, sender.last_batch_groups, sender.inflight = saved
    finally:
        vol.close()
        transport.close()


def test_group_commit_delay_bad_config():
    with pytest.raises(InvalidRequest, match="group_commit_delay_s"):
        VolumeConfig(volume_id="v", nodes=[], group_commit_delay_s=-1).validate()
    with pytest.raises(InvalidRequest, match="group_commit_siblings"):
        VolumeConfig(volume_id="v", nodes=[], group_commit_siblings=0).validate()
    with pytest.raises(InvalidRequest, match="group_commit_delay_per_group_s"):
        VolumeConfig(volume_id="v", nodes=[], group_commit_delay_per_group_s=-0.001).validate()
