"""The sync client's per-process channel sharing (borealdb.dbapi._SharedChannels), without a server."""

from __future__ import annotations

import os

from borealdb.dbapi import _SharedChannels


def test_one_channel_per_target_closed_by_its_last_user(monkeypatch):
    pool = _SharedChannels()
    closed = []
    a = pool.acquire("127.0.0.1:1")
    monkeypatch.setattr(a, "close", lambda: closed.append(a))
    assert pool.acquire("127.0.0.1:1") is a and pool.users("127.0.0.1:1") == 2
    other = pool.acquire("127.0.0.1:2")
    assert other is not a
    pool.release("127.0.0.1:1", a)
    assert closed == [] and pool.users("127.0.0.1:1") == 1
    pool.release("127.0.0.1:1", a)
    assert closed == [a] and pool.users("127.0.0.1:1") == 0
    fresh = pool.acquire("127.0.0.1:1")
    assert fresh is not a, "a closed channel is never handed out again"
    pool.release("127.0.0.1:1", a)  # a stale release changes nothing
    assert pool.users("127.0.0.1:1") == 1
    for ch, target in ((fresh, "127.0.0.1:1"), (other, "127.0.0.1:2")):
        pool.release(target, ch)


def test_a_forked_child_gets_channels_of_its_own(monkeypatch):
    pool = _SharedChannels()
    parent = pool.acquire("127.0.0.1:1")
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as seen from a child
    assert pool.users("127.0.0.1:1") == 0
    child = pool.acquire("127.0.0.1:1")
    assert child is not parent
    pool.release("127.0.0.1:1", parent)  # the parent's channel is not the child's to close
    assert pool.users("127.0.0.1:1") == 1
    pool.release("127.0.0.1:1", child)
    parent.close()
