"""deploy/chaos.py retries a `docker pause` that runc could not complete (no Docker needed)."""

from __future__ import annotations

import pytest

from tests.deploy.conftest import chaos


def _docker_failing(times: int, message: str, calls: list):
    def docker(*args, **_kw):
        calls.append(args)
        if len(calls) <= times:
            raise chaos.ChaosError(f"docker {' '.join(args)} exited with 1: {message}")
        return ""
    return docker


def test_pause_is_tried_again_when_runc_cannot_freeze(monkeypatch):
    calls: list = []
    monkeypatch.setattr(chaos, "docker", _docker_failing(2, "OCI runtime pause failed: unable to freeze: unknown", calls))
    monkeypatch.setattr(chaos.time, "sleep", lambda _s: None)
    chaos.docker_pause("abc")
    assert calls == [("pause", "abc")] * 3


def test_pause_gives_up_after_its_attempts_and_on_other_errors(monkeypatch):
    monkeypatch.setattr(chaos.time, "sleep", lambda _s: None)
    calls: list = []
    monkeypatch.setattr(chaos, "docker", _docker_failing(99, "unable to freeze", calls))
    with pytest.raises(chaos.ChaosError, match="unable to freeze"):
        chaos.docker_pause("abc")
    assert len(calls) == chaos.PAUSE_ATTEMPTS
    calls.clear()
    monkeypatch.setattr(chaos, "docker", _docker_failing(1, "No such container: abc", calls))
    with pytest.raises(chaos.ChaosError, match="No such container"):
        chaos.docker_pause("abc")
    assert len(calls) == 1
