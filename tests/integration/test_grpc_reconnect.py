"""A client channel whose connection was refused reaches a server that comes up later
without waiting for gRPC's 5 s backup poll (client/_grpc_env.py).

Both sides are fresh processes, started without the GRPC_* settings, that import
borealdb first, as `boreal` and user programs do. The bound below is not a performance
figure: a channel that waited for the default backup poll answered 4-5 s after the
server listened; with borealdb's settings it is at most one reconnect backoff (1 s)
plus a probe interval.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from borealdb._grpc_env import SETTINGS

pytestmark = pytest.mark.integration

SERVER = r"""
import borealdb, sys, time
import grpc
from concurrent import futures
port = int(sys.argv[1])
sys.stdin.readline()  # the client says when: after its first attempt was refused
server = grpc.server(futures.ThreadPoolExecutor(2))
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
    "t.T", {"Ping": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"pong")})])
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
print("listening", flush=True)
sys.stdin.readline()
"""

CLIENT = r"""
import borealdb, subprocess, sys, time
import grpc
from borealdb.nodes.cluster.local import free_port
from borealdb.nodes.rpc import CLIENT_CHANNEL_OPTIONS
port = free_port()
server = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(port)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
try:
    ping = grpc.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_CHANNEL_OPTIONS).unary_unary("/t.T/Ping")
    try:
        ping(b"", timeout=1.0)
        raise SystemExit("answered before the server listened")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e
    server.stdin.write("go\n"); server.stdin.flush()
    assert server.stdout.readline().strip() == "listening"
    listening_at = time.monotonic()
    while True:
        try:
            assert ping(b"", timeout=1.0) == b"pong"
            break
        except grpc.RpcError as e:
            if time.monotonic() - listening_at > 30:
                raise
            time.sleep(0.05)
    print(f"{time.monotonic() - listening_at:.3f}")
finally:
    server.kill(); server.wait()
"""


def test_a_refused_channel_reaches_a_server_that_starts_later_within_a_backoff():
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    out = subprocess.run([sys.executable, "-c", CLIENT, SERVER], capture_output=True, text=True, timeout=90, env=env)
    assert out.returncode == 0, out.stderr
    answered_after_s = float(out.stdout.strip())
    assert answered_after_s < 3.0, f"answered {answered_after_s:.2f} s after the server listened (backup poll?)"
