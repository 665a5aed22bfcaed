"""The writer's group commit hint: a delay is skipped when every active session is
already waiting for durability (no commit can join the batch), and applies otherwise."""

from __future__ import annotations

import time

import pytest

from borealdb.nodes import redo
from borealdb.nodes.instance.engine import COMMIT_HINT_ACTIVE_S, SqlEngine, _RecentSessions
from borealdb.nodes.instance.vfs import VolumeDatabase
from borealdb.nodes.volume import PageChange
from borealdb.protos import storage_pb2 as pb
from tests.unit.inprocess import PAGE


def _delay_s(vol, groups: int) -> float:
    """What a sender's group commit rule answers for a last batch of `groups` groups."""
    sender = next(iter(vol._senders.values()))
    with sender.lock:  # the ticker's pumps wait meanwhile; the state is put back below
        saved = sender.queue, sender.last_send, sender.last_batch_groups, sender.inflight
        try:
            sender.queue = type(saved[0])([pb.RedoRecord(lsn=10**9, consistency_point=True)])
            sender.inflight, sender.last_send, sender.last_batch_groups = 0, 1000.0, groups
            return sender._group_commit_wait(1000.0)
        finally:
            sender.queue, sender.last_send, sender.last_batch_groups, sender.inflight = saved


def test_the_delay_is_skipped_only_when_the_hint_says_no_commit_can_come(storage):
    vol = storage.volume(group_commit_delay_s=0.020, group_commit_delay_per_group_s=0.001, group_commit_siblings=3)
    for sender in vol._senders.values():
        sender.has_timer = True  # the in-process transport has no timer; the rule is what is tested
    assert _delay_s(vol, 8) == pytest.approx(0.008)  # no hint: delays as configured
    vol.set_commit_hint(lambda: True)
    assert _delay_s(vol, 8) == pytest.approx(0.008)
    assert _delay_s(vol, 2) == 0.0  # too few siblings: never delayed, whatever the hint
    vol.set_commit_hint(lambda: False)
    assert _delay_s(vol, 8) == 0.0

    def broken() -> bool:
        raise RuntimeError("hint bug")

    vol.set_commit_hint(broken)
    assert _delay_s(vol, 8) == pytest.approx(0.008)  # a broken hint delays as configured, never stalls


def test_the_writer_hint_counts_sessions_whose_commit_is_not_durable_yet(storage):
    vol = storage.volume()
    engine = SqlEngine(VolumeDatabase(vol, cache_capacity_bytes=4 << 20), node_id="i-test")
    try:
        first = engine.open_session("a")
        assert vol.undurable_commits == 0 and engine.more_commits_possible()
        for info in storage.infos:  # the next group cannot be durable until they are back
            storage.transport.set_down(info.address)
        lsn = vol.append_group([PageChange(page=63, kind=redo.FULL_PAGE, payload=b"x" * PAGE)])
        assert vol.vdl < lsn and vol.undurable_commits == 1
        assert not engine.more_commits_possible()  # its only session waits: nothing can join
        b = engine.open_session("b")
        assert engine.more_commits_possible()  # another session could still commit
        engine._recent = _RecentSessions(COMMIT_HINT_ACTIVE_S)  # as if b had been idle for the window
        engine._recent.touch(first.session_id, time.monotonic())
        assert not engine.more_commits_possible()  # an idle session is not waited for
        with engine._session_request(b.session_id, "SELECT 1", None):
            pass  # a request (any statement) makes it one that may commit again
        assert engine.more_commits_possible()
        engine.close_session(b.session_id)
        assert not engine.more_commits_possible()
        for info in storage.infos:
            storage.transport.set_down(info.address, False)
        assert vol.wait_durable(lsn, 30) >= lsn
        assert vol.undurable_commits == 0 and engine.more_commits_possible()
    finally:
        engine.close()


def test_recent_sessions_count_only_the_window_and_forget_closed_ones():
    recent = _RecentSessions(0.1)  # window_s
    recent.touch("a", 10.0)
    recent.touch("b", 10.05)
    recent.touch("a", 10.12)  # a is the newest now
    assert recent.count(10.12) == 2
    assert recent.count(10.16) == 1  # b's last request was 0.11 s ago
    recent.forget("a")
    assert recent.count(10.16) == 0
    recent.touch("c", 11.0)
    assert recent.count(11.0) == 1

