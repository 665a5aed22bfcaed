"""The sync client's per-process channel sharing (borealdb.dbapi._SharedChannels), without a server."""

from __future__ import annotations

import os

from borealdb import dbapi
from borealdb.dbapi import _SharedChannels

T1, T2 = "127.0.0.1:1", "127.0.0.1:2"


def _closing_recorded(monkeypatch, channel, closed: list) -> None:
    real_close = channel.close
    monkeypatch.setattr(channel, "close", lambda: (closed.append(channel), real_close()))


def test_one_channel_per_target_closed_by_its_last_user(monkeypatch):
    pool = _SharedChannels()
    closed: list = []
    a = pool.acquire(T1)
    _closing_recorded(monkeypatch, a, closed)
    assert pool.acquire(T1) is a and pool.users(T1) == 2
    other = pool.acquire(T2)
    assert other is not a
    pool.release(T1, a)
    assert closed == [] and pool.users(T1) == 1
    pool.release(T1, a)
    assert closed == [a] and pool.users(T1) == 0
    fresh = pool.acquire(T1)
    assert fresh is not a, "a closed channel is never handed out again"
    pool.release(T1, a)  # a stale release changes nothing
    assert pool.users(T1) == 1
    for ch, target in ((fresh, T1), (other, T2)):
        pool.release(target, ch)


def test_a_finalizer_only_queues_its_release_and_the_next_call_settles_it(monkeypatch):
    pool = _SharedChannels()
    closed: list = []
    a = pool.acquire(T1)
    _closing_recorded(monkeypatch, a, closed)
    with pool._lock:  # as when the garbage collector runs inside acquire(): must not block
        pool.release_later(T1, a)
    assert closed == []
    assert pool.users(T1) == 0 and closed == [a], "settled (and closed outside the lock) by the next call"


def test_a_forked_child_gets_a_pool_of_its_own_and_leaves_the_parents_channels_alone(monkeypatch):
    parent_pool = dbapi._CHANNELS
    closed: list = []
    a = parent_pool.acquire(T1)
    _closing_recorded(monkeypatch, a, closed)
    with monkeypatch.context() as child:
        child.setattr(os, "getpid", lambda: -1)  # as seen from a child
        child.setattr(dbapi, "_CHANNELS", dbapi._CHANNELS)  # restored on leaving
        dbapi._new_channels_in_child()  # what os.register_at_fork runs in the child
        assert dbapi._CHANNELS is not parent_pool and dbapi._CHANNELS.users(T1) == 0
        parent_pool.release(T1, a)  # an inherited connection closing in the child
        assert closed == [] and parent_pool._channels[T1][1] == 1, "the parent's channel is not the child's to close"
    assert dbapi._CHANNELS is parent_pool
    parent_pool.release(T1, a)
    assert closed == [a]
