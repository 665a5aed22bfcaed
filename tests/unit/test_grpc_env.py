"""The gRPC poller choice (borealdb/_grpc_env.py): made before grpc is imported, never over the user's."""

from __future__ import annotations

import os
import subprocess
import sys

from borealdb._grpc_env import EXPERIMENTS
from borealdb.nodes.rpc import NODE_GRPC_EXPERIMENTS, node_environment


def _seen_by_a_fresh_process(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run([sys.executable, "-c", code + "; import os; print(repr(os.environ.get('GRPC_EXPERIMENTS')))"],
                         env={**base, **env}, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_importing_borealdb_chooses_the_poller_unless_the_environment_or_grpc_came_first():
    assert _seen_by_a_fresh_process("import borealdb") == repr(EXPERIMENTS)
    assert _seen_by_a_fresh_process("import borealdb", GRPC_EXPERIMENTS="") == repr("")
    assert _seen_by_a_fresh_process("import grpc, borealdb") == "None", "too late to matter: left alone"


def test_node_processes_get_the_poller_unless_their_environment_chose_one():
    assert node_environment({"A": "1"}) == {"A": "1", "GRPC_EXPERIMENTS": NODE_GRPC_EXPERIMENTS}
    assert node_environment({"GRPC_EXPERIMENTS": ""}) == {"GRPC_EXPERIMENTS": ""}
