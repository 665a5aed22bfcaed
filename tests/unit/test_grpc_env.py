"""The gRPC poller choice (client/_grpc_env.py, borealdb._grpc_env): made before grpc
is imported, never over the user's, and the same in the container image."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from borealdb._grpc_env import SETTINGS
from borealdb.nodes.rpc import node_environment

_SHOW = "; import os; print(repr({n: os.environ.get(n) for n in %r}))" % (sorted(SETTINGS),)
REPO = Path(__file__).resolve().parents[2]


def _seen_by_a_fresh_process(code: str, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    out = subprocess.run([sys.executable, "-c", code + _SHOW],
                         env={**base, **env}, capture_output=True, text=True, timeout=60, check=True)
    return ast.literal_eval(out.stdout.strip())


def test_importing_borealdb_chooses_the_poller_unless_the_environment_or_grpc_came_first():
    assert _seen_by_a_fresh_process("import borealdb") == SETTINGS
    assert _seen_by_a_fresh_process("import borealdb", GRPC_EXPERIMENTS="") == {
        **SETTINGS, "GRPC_EXPERIMENTS": ""}, "a variable the user set is kept; the others are still set"
    assert _seen_by_a_fresh_process("import grpc, borealdb") == {n: None for n in SETTINGS}, \
        "too late to matter: left alone"


def test_node_processes_get_the_settings_unless_their_environment_chose_them():
    assert node_environment({"A": "1"}) == {"A": "1", **SETTINGS}
    assert node_environment({"GRPC_EXPERIMENTS": ""}) == {**SETTINGS, "GRPC_EXPERIMENTS": ""}
    assert node_environment({"GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS": "200"}) == {
        **SETTINGS, "GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS": "200"}


def test_an_empty_backup_poll_interval_counts_as_unset():
    # gRPC reads "" as a bad number and falls back to its 5 s default (and says so on stderr).
    assert node_environment({"GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS": ""}) == SETTINGS
    assert _seen_by_a_fresh_process("import borealdb", GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS="") == SETTINGS


def test_the_container_image_sets_the_same_values():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    for name, value in SETTINGS.items():
        assert re.search(rf"^\s*{name}={re.escape(value)}\s*\\?$", dockerfile, re.M), f"{name}={value} in deploy/Dockerfile"
