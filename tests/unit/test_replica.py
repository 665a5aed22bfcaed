"""Read replicas without processes: real StorageEngines through InProcessTransport, the
writer's RedoPublisher feeding a ReplicaDatabase in the same process."""

from __future__ import annotations

import asyncio
import threading

import pytest

from borealdb.nodes import redo
from borealdb.nodes.instance.engine import SqlEngine, SqlError
from borealdb.nodes.instance.replica import ReaderEngine, RedoPublisher, ReplicaDatabase, _Wakeup
from borealdb.nodes.instance.vfs import _INF, PageVersions, VolumeDatabase
from borealdb.nodes.volume import Volume, VolumeConfig
from borealdb.nodes.volume.volume import PageChange
from borealdb.protos import replica_pb2 as rpb

from tests.unit.inprocess import PAGE, Storage, run


def attach(storage: Storage, vol: Volume) -> ReplicaDatabase:
    cfg = VolumeConfig(volume_id=vol.volume_id, nodes=storage.infos, page_size=PAGE, pg_size_pages=64, local_az="b")
    return ReplicaDatabase(Volume.attach_reader(cfg, storage.transport), local_az="b", cache_capacity_bytes=4 << 20)


def page(byte: int) -> bytes:
    return bytes([byte]) * PAGE


def group(commit_lsn: int, *records: tuple[int, bytes]) -> rpb.RedoGroup:
    g = rpb.RedoGroup(commit_lsn=commit_lsn, commit_time_us=1)
    first = commit_lsn - len(records) + 1
    for i, (p, img) in enumerate(records):
        g.records.add(page=p, lsn=first + i, kind=redo.FULL_PAGE, payload=img)
    return g


def subscribed(storage) -> tuple[Volume, ReplicaDatabase]:
    vol = storage.volume()
    db = attach(storage, vol)
    db.on_hello(rpb.Hello(epoch=vol.epoch, start_lsn=0))
    db.on_message(rpb.RedoMessage(vdl=0))
    assert db.ready and db.view == 0
    return vol, db


def test_applies_only_cached_pages_and_only_groups_at_or_below_the_vdl(storage):
    _vol, db = subscribed(storage)
    db.cache.put_fetched(5, 0, page(1), _INF, _INF)          # page 5 is cached, page 6 is not
    g = group(2, (5, page(2)), (6, page(3)))
    g.records[1].kind, g.records[1].payload = redo.PAGE_DELTA, _small_delta()
    db.on_message(rpb.RedoMessage(groups=[g], vdl=0))
    assert db.view == 0 and db.cache.newest(5).data == page(1)  # above the VDL: not applied yet
    db.on_message(rpb.RedoMessage(vdl=2))
    assert db.view == 2
    assert db.cache.get(5, 2) == page(2) and db.cache.get(5, 1) == page(1)
    assert db.cache.newest(6) is None and db.groups_dropped == 1  # a delta needs a base it lacks


def test_a_full_image_of_a_page_not_cached_is_kept_from_its_group_on(storage):
    """A new page (a growing table's next leaf) is read at the view from the cache, not
    from storage; a read point below its group still goes to storage."""
    _vol, db = subscribed(storage)
    db.on_message(rpb.RedoMessage(groups=[group(3, (9, page(7)))], vdl=3))
    assert db.view == 3 and db.groups_dropped == 0
    assert db.cache.get(9, 3) == page(7) and db.cache.get(9, 2) is None
    db.on_message(rpb.RedoMessage(groups=[group(4, (9, page(8)))], vdl=4))  # and later groups apply to it
    assert db.cache.get(9, 4) == page(8) and db.cache.get(9, 3) == page(7)
    db.on_message(rpb.RedoMessage(groups=[group(6, (10, page(6)))], vdl=5))  # above the VDL: not yet
    assert db.cache.newest(10) is None


def test_a_fetch_below_a_kept_image_does_not_hide_a_dropped_delta(storage):
    """Page 7: a delta at b the replica dropped (not cached), then a full image at c it
    kept. A read pinned at a < b fetches page 7 as of a, which lands in front of c's
    version: a read at b must not get it (it lacks b's delta), but fetch as of b."""
    vol = storage.volume()
    a = vol.append_group([PageChange(7, redo.FULL_PAGE, page(1))])
    vol.wait_durable(a, 5)
    at_b = b"\x09\x09" + page(1)[2:]
    delta = redo.encode_delta(page(1), at_b)
    b = vol.append_group([PageChange(7, redo.PAGE_DELTA, delta)])
    c = vol.append_group([PageChange(7, redo.FULL_PAGE, page(3))])
    vol.wait_durable(c, 5)
    db = attach(storage, vol)
    db.on_hello(rpb.Hello(epoch=vol.epoch, start_lsn=a, pg_tips=[rpb.PgTip(pg=0, lsn=a)]))
    db.on_message(rpb.RedoMessage(vdl=a))
    g = group(b, (7, delta))
    g.records[0].kind = redo.PAGE_DELTA
    db.on_message(rpb.RedoMessage(groups=[g], vdl=b))                    # dropped: page 7 not cached
    db.on_message(rpb.RedoMessage(groups=[group(c, (7, page(3)))], vdl=c))  # kept
    assert db.page_at(7, a) == page(1)
    assert db.page_at(7, b) == at_b
    assert db.page_at(7, c) == page(3)


def test_a_fetched_version_serves_only_up_to_its_read_point_even_below_a_newer_one():
    versions = PageVersions(1 << 20)
    versions.put_fetched(7, 3, page(3), _INF, _INF)  # fetched current: changed at 3
    versions.put_fetched(7, 1, page(1), 1, _INF)     # fetched at read point 1 (it changed at 2 and 3)
    assert versions.get(7, 1) == page(1)
    assert versions.get(7, 2) is None and versions.get(7, 3) == page(3)


def test_a_group_becomes_visible_as_a_unit(storage):
    _vol, db = subscribed(storage)
    for p in (3, 4):
        db.cache.put_fetched(p, 0, page(0), _INF, _INF)
    db.on_message(rpb.RedoMessage(groups=[group(2, (3, page(7)), (4, page(8))), group(4, (3, page(9)), (4, page(9)))],
                                  vdl=2))
    # the view moved to 2 only: both pages of the first group, none of the second
    assert db.view == 2
    assert [db.cache.get(p, db.view) for p in (3, 4)] == [page(7), page(8)]
    assert [db.cache.get(p, 0) for p in (3, 4)] == [page(0), page(0)]
    db.on_message(rpb.RedoMessage(vdl=4))
    assert [db.cache.get(p, 4) for p in (3, 4)] == [page(9), page(9)]


def test_a_group_that_fails_to_apply_drops_the_cache_and_the_stream_starts_afresh(storage):
    vol, db = subscribed(storage)
    for p in (3, 4):
        db.cache.put_fetched(p, 0, page(0), _INF, _INF)
    g = group(2, (3, page(7)), (4, b"not a delta"))
    g.records[1].kind = redo.PAGE_DELTA
    with pytest.raises(redo.DeltaError):                  # the malformed record, not some other failure
        db.on_message(rpb.RedoMessage(groups=[g], vdl=2))
    assert db.view == 0                                   # the group never became visible
    assert db.cache.newest(3) is None                     # nor its first page, applied alone
    assert db.cache_drops == 1
    assert not db.on_hello(rpb.Hello(epoch=vol.epoch, start_lsn=2)), "a resubscription must not continue it"
    db.on_message(rpb.RedoMessage(vdl=2))
    assert db.view == 2


def _small_delta() -> bytes:
    return redo.encode_delta(page(0), b"\x01\x02" + page(0)[2:])


def test_a_page_fetched_below_a_group_that_touched_it_is_not_kept_current(storage):
    _vol, db = subscribed(storage)
    g = group(3, (7, page(5)))
    g.records[0].kind, g.records[0].payload = redo.PAGE_DELTA, _small_delta()
    db.on_message(rpb.RedoMessage(groups=[g], vdl=3))  # page 7 not cached: its delta is dropped
    db.page_at(7, 0)                     # a read pinned at LSN 0 fetches page 7 as of 0
    assert db.cache.get(7, 0) == b""     # good for that read point ...
    assert db.cache.get(7, 3) is None    # ... but it missed the group at 3: never served as current


def test_a_new_epoch_or_a_gap_drops_the_cache(storage):
    vol, db = subscribed(storage)
    db.cache.put_fetched(5, 0, page(1), _INF, _INF)
    assert db.on_hello(rpb.Hello(epoch=vol.epoch, start_lsn=0))          # continues exactly: kept
    assert db.cache.newest(5) is not None
    assert not db.on_hello(rpb.Hello(epoch=vol.epoch, start_lsn=10))     # a gap: dropped
    assert db.cache.newest(5) is None and db.view == 0
    db.on_message(rpb.RedoMessage(vdl=5))
    assert db.view == 0                  # never a view inside the gap
    db.on_message(rpb.RedoMessage(vdl=10))
    assert db.view == 10


class _Ctx:
    def peer(self):
        return "in-process"

    async def abort(self, code, message):
        raise RuntimeError(f"{code}: {message}")


@pytest.fixture
def pair(storage):
    """A writer SqlEngine with a RedoPublisher and a ReaderEngine following it in-process
    (the publisher's stream runs on an event loop thread, as in the server)."""
    vol = storage.volume()
    writer = SqlEngine(VolumeDatabase(vol, cache_capacity_bytes=4 << 20), node_id="i-w")
    publisher = RedoPublisher(writer.db, "i-w", heartbeat_s=0.02)
    db = attach(storage, vol)
    loop = asyncio.new_event_loop()
    stopped = asyncio.Event()

    async def reports():
        yield rpb.ReplicaMessage(replica_id="i-r")
        await stopped.wait()

    async def follow():
        async for msg in publisher.Subscribe(reports(), _Ctx()):
            if msg.HasField("hello"):
                db.on_hello(msg.hello)
            db.on_message(msg)
            if stopped.is_set():
                break

    t = threading.Thread(target=loop.run_until_complete, args=(follow(),), daemon=True)
    t.start()
    db.wait_view(0, 10)
    reader = ReaderEngine(db, None, node_id="i-r")
    yield writer, reader, publisher
    loop.call_soon_threadsafe(stopped.set)
    publisher.stop()
    t.join(5)
    reader.close()
    writer.close()


def test_end_to_end_reads_follow_the_writer_and_writes_are_read_only(pair):
    writer, reader, publisher = pair
    w = writer.open_session().session_id
    run(writer, w, "CREATE TABLE acct(id INTEGER PRIMARY KEY, balance INTEGER)")
    run(writer, w, "INSERT INTO acct(balance) SELECT 100 FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<50) SELECT i FROM n)")
    lsn = writer.db.last_commit_lsn
    r = reader.open_session().session_id
    reader.db.wait_view(lsn, 10)
    assert run(reader, r, "SELECT count(*), sum(balance) FROM acct")[0] == [(50, 5000)]
    empty = list(reader.execute(r, "SELECT id, balance FROM acct WHERE id = -1"))
    assert empty[0][0] == [("id", "INTEGER"), ("balance", "INTEGER")] and empty[-1][1] == []
    for sql in ("INSERT INTO acct(balance) VALUES (1)", "UPDATE acct SET balance = 0", "CREATE TABLE x(a)"):
        with pytest.raises(SqlError) as e:
            run(reader, r, sql)
        assert e.value.code == "READ_ONLY"
    with pytest.raises(SqlError) as e:
        reader.execute_many(r, "INSERT INTO acct(balance) VALUES (?)", [(1,)])
    assert e.value.code == "READ_ONLY"
    assert [x["node_id"] for x in publisher.replicas()] == ["i-r"]


def test_a_read_transaction_keeps_one_snapshot_while_the_writer_rewrites_pages(pair):
    writer, reader, _ = pair
    w = writer.open_session().session_id
    run(writer, w, "CREATE TABLE acct(id INTEGER PRIMARY KEY, balance INTEGER)")
    run(writer, w, "INSERT INTO acct(balance) SELECT 100 FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<20) SELECT i FROM n)")
    reader.db.wait_view(writer.db.last_commit_lsn, 10)
    r = reader.open_session().session_id
    run(reader, r, "BEGIN")
    before = run(reader, r, "SELECT id, balance FROM acct ORDER BY id")[0]
    for k in range(30):                   # rewrite the same pages many times, total preserved
        run(writer, w, "BEGIN")
        run(writer, w, "UPDATE acct SET balance = balance - 7 WHERE id = ?", (k % 20 + 1,))
        run(writer, w, "UPDATE acct SET balance = balance + 7 WHERE id = ?", ((k + 1) % 20 + 1,))
        run(writer, w, "COMMIT")
        assert run(reader, r, "SELECT id, balance FROM acct ORDER BY id")[0] == before
    reader.db.wait_view(writer.db.last_commit_lsn, 10)
    assert run(reader, r, "SELECT id, balance FROM acct ORDER BY id")[0] == before   # still pinned
    run(reader, r, "COMMIT")
    after = run(reader, r, "SELECT id, balance FROM acct ORDER BY id")[0]
    assert after != before and sum(b for _, b in after) == 2000
    # monotonic: a session never reads below what it read before
    assert reader.session(r).last_commit_lsn >= writer.db.last_commit_lsn


def test_a_replica_that_falls_too_far_behind_is_cut_off_and_the_writer_goes_on(storage):
    """The writer never waits for a replica: one whose buffered redo passes
    max_buffer_bytes is cut off (RESOURCE_EXHAUSTED) and must resubscribe."""
    vol = storage.volume()
    writer = SqlEngine(VolumeDatabase(vol, cache_capacity_bytes=4 << 20), node_id="i-w")
    publisher = RedoPublisher(writer.db, "i-w", heartbeat_s=0.02, max_buffer_bytes=4096)
    w = writer.open_session().session_id
    run(writer, w, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    loop = asyncio.new_event_loop()

    async def reports():
        yield rpb.ReplicaMessage(replica_id="i-slow")
        await asyncio.sleep(3600)

    async def scenario():
        stream = publisher.Subscribe(reports(), _Ctx())
        hello = await stream.__anext__()                 # subscribed; now it reads nothing for a while
        assert hello.HasField("hello")
        for i in range(40):                              # the writer commits on, never blocked
            await loop.run_in_executor(None, run, writer, w, "INSERT INTO t(v) VALUES (?)", ("x" * 300,))
        with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED.*fell more than 4096 bytes"):
            while True:
                await stream.__anext__()
        assert publisher.replicas() == []               # dropped: its read point no longer pins storage
        rows = await loop.run_in_executor(None, run, writer, w, "SELECT count(*) FROM t")
        assert rows[0] == [(40,)]

    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), 60))
    finally:
        loop.close()
        publisher.stop()
        writer.close()


def test_a_kept_image_replaces_what_was_cached_and_starts_cold():
    versions = PageVersions(1 << 20)
    versions.put_fetched(7, 1, page(1), 2, _INF)
    versions.put_fetched(8, 1, page(2), _INF, _INF)
    versions.put_image(7, 5, page(5))
    assert next(iter(versions._pages)) == 7  # the cold end: evicted first unless read
    assert versions.size_bytes == 2 * PAGE
    assert versions.get(7, 2) is None and versions.get(7, 5) == page(5)  # below it: fetch again
    assert next(iter(versions._pages)) == 8  # read: now the hot end


def test_a_stream_wakeup_is_kept_until_cleared_and_a_wait_times_out():
    async def scenario():
        loop = asyncio.get_running_loop()
        wake = _Wakeup(loop)
        assert await wake.wait(0.001) is False          # nothing to send: the heartbeat's timeout
        wake.set()
        assert await wake.wait(10) is True              # set before the wait: returns at once
        wake.clear()
        waiter = asyncio.ensure_future(wake.wait(10))
        await asyncio.sleep(0)                          # the stream now waits
        loop.call_soon(wake.set)                        # as a VDL advance on the loop does
        assert await asyncio.wait_for(waiter, 5) is True
        assert wake._waiter is None                     # its timer is cancelled with it
        wake.clear()
        waiter = asyncio.ensure_future(wake.wait(10))   # a stream closed while it waits
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert wake._waiter is None
        wake.set()                                      # a later advance finds no waiter: no error

    asyncio.run(scenario())
