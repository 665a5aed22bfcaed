"""`boreal up --detach` / `status` / `down` and foreground `up`, end to end through the
real command line, on 127.0.0.1 with a free base port and a temporary data dir.

Each test runs against the stand-in servers of test_launcher_harness.py ("stand-in"),
the real storage node with the stand-in writer ("storage"), and, once they exist, the
real storage node and the real writer instance ("real")."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from borealdb.nodes.cluster import local
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
NODE_IDS = ["s-a1", "s-a2", "s-b1", "s-b2", "s-c1", "s-c2"]
ALL_IDS = [*NODE_IDS, "i-a1", "i-b1", "i-c1"]  # the writer i-a1 on BASE+10, readers i-b1, i-c1 on BASE+11, 12


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


@pytest.fixture(params=["stand-in", "storage", "real"])
def server_env(request):
    env = dict(os.environ)
    env.pop("BOREAL_STORAGE_SERVER_MODULE", None)
    env.pop("BOREAL_INSTANCE_SERVER_MODULE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE), env.get("PYTHONPATH")] if p)
    if request.param == "stand-in":
        env["BOREAL_STORAGE_SERVER_MODULE"] = "test_launcher_harness"
    elif not _has_module("borealdb.nodes.storage.server"):
        pytest.skip("borealdb.nodes.storage.server does not exist yet")
    if request.param in ("stand-in", "storage"):
        env["BOREAL_INSTANCE_SERVER_MODULE"] = "test_launcher_harness:serve_instance"
    elif not _has_module("borealdb.nodes.instance.server"):
        pytest.skip("borealdb.nodes.instance.server does not exist yet")
    return env


def boreal(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "borealdb.nodes.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "boreal-data"
    yield d
    # Whatever a test left running is stopped here.
    try:
        state = local.load_cluster_state(d)
    except local.ClusterError:
        return
    for n in state.running():
        local.terminate_pid(n.pid, grace_s=5)


def test_up_detach_status_down(server_env, data_dir):
    base = local.find_free_base_port()
    r = boreal(server_env, "up", "--detach", "--data", str(data_dir), "--base-port", str(base))
    assert r.returncode == 0, r.stderr + r.stdout
    for i, node_id in enumerate(NODE_IDS):
        assert node_id in r.stdout and f"127.0.0.1:{base + i}" in r.stdout
    assert "i-a1" in r.stdout and "writer" in r.stdout
    assert f"boreal sql --data {data_dir}" in r.stdout and f"boreal://127.0.0.1:{base + 10}/" in r.stdout
    assert "boreal down" in r.stdout

    # The nodes outlived the CLI process.
    state = local.load_cluster_state(data_dir)
    assert [n.node_id for n in state.running()] == ALL_IDS
    assert [n.address for n in state.nodes] == [f"127.0.0.1:{base + i}" for i in [*range(6), 10, 11, 12]]
    assert [n.metrics_address for n in state.nodes] == [f"127.0.0.1:{base + 100 + i}" for i in [*range(6), 10, 11, 12]]
    assert [n.role for n in state.nodes] == ["storage"] * 6 + ["writer", "reader", "reader"]
    assert state.writer_address() == f"127.0.0.1:{base + 10}"
    real = {"storage": "BOREAL_STORAGE_SERVER_MODULE" not in server_env,
            "writer": "BOREAL_INSTANCE_SERVER_MODULE" not in server_env}
    real["reader"] = real["writer"]
    for n in state.nodes:  # each leads a process group, in the launcher's session (one scheduling group)
        assert (os.getpgid(n.pid), os.getsid(n.pid)) == (n.pid, os.getsid(0))
        if real[n.role]:
            def started(log=Path(n.log_path)):  # logged just after the node first answers
                return [json.loads(line) for line in log.read_text().splitlines()
                        if line.endswith("}") and '_started"' in line]
            [line] = wait_until(started, 30, f"{n.node_id} logging that it started")
            assert line["gc_frozen_objects"] > 1000, "startup objects are out of the collector's reach"
            os.kill(n.pid, signal.SIGHUP)  # as when the terminal closes: nodes outlive it (status below)

    r = boreal(server_env, "status", "--data", str(data_dir))
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stdout.count(" up ") == 9
    writer_row = next(line for line in r.stdout.splitlines() if line.startswith("i-a1"))
    assert writer_row.split()[:5] == ["i-a1", "writer", "a", f"127.0.0.1:{base + 10}", "up"]

    r = boreal(server_env, "status", "--data", str(data_dir), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [n["node_id"] for n in report["nodes"] if n["up"]] == ALL_IDS
    [writer] = [n for n in report["nodes"] if n["role"] == "writer"]
    assert writer["epoch"] >= 1 and writer["vdl"] is not None and writer["sessions"] is not None

    r = boreal(server_env, "up", "--detach", "--data", str(data_dir), "--base-port", str(base))
    assert r.returncode == 1 and "already running" in r.stderr

    # One node down: status says so and exits 1.
    victim = state.node("s-b2")
    os.kill(victim.pid, signal.SIGKILL)
    assert local.wait_pid_gone(victim.pid, 10)
    r = boreal(server_env, "status", "--data", str(data_dir))
    assert r.returncode == 1 and "s-b2" in r.stderr and "down" in r.stdout

    r = boreal(server_env, "down", "--data", str(data_dir))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("stopped") >= 6 and "s-b2" not in r.stdout
    assert r.stdout.splitlines()[0].startswith("i-a1")  # the writer is stopped first
    assert all(not local.pid_alive(n.pid) for n in state.nodes)
    assert local.load_cluster_state(data_dir).running() == []

    r = boreal(server_env, "down", "--data", str(data_dir))
    assert r.returncode == 0 and "nothing running" in r.stdout


def test_foreground_up_stops_everything_on_sigterm(server_env, data_dir):
    base = local.find_free_base_port()
    proc = subprocess.Popen([sys.executable, "-m", "borealdb.nodes.cli", "up", "--data", str(data_dir), "--base-port", str(base)],
                            env=server_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        lines = []
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # returns at EOF if `up` fails
            lines.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert any("Press Ctrl-C" in line for line in lines), "".join(lines)
        pids = [n.pid for n in local.load_cluster_state(data_dir).running()]
        assert len(pids) == 9
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped 9 node(s)" in out
        assert not any(local.pid_alive(p) for p in pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_again_reuses_the_ports_of_the_data_dir(server_env, data_dir):
    base = local.find_free_base_port()
    r = boreal(server_env, "up", "--detach", "--data", str(data_dir), "--base-port", str(base))
    assert r.returncode == 0, r.stderr + r.stdout
    r = boreal(server_env, "down", "--data", str(data_dir))
    assert r.returncode == 0, r.stderr
    r = boreal(server_env, "up", "--detach", "--data", str(data_dir))  # no --base-port
    assert r.returncode == 0, r.stderr + r.stdout
    state = local.load_cluster_state(data_dir)
    assert [n.address for n in state.running()] == [f"127.0.0.1:{base + i}" for i in [*range(6), 10, 11, 12]]
    r = boreal(server_env, "down", "--data", str(data_dir))
    assert r.returncode == 0 and r.stdout.count("stopped") >= 9


def test_up_storage_only(server_env, data_dir):
    base = local.find_free_base_port()
    r = boreal(server_env, "up", "--detach", "--storage-only", "--data", str(data_dir), "--base-port", str(base))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "i-a1" not in r.stdout and "boreal sql" not in r.stdout
    state = local.load_cluster_state(data_dir)
    assert [n.node_id for n in state.running()] == NODE_IDS
    r = boreal(server_env, "status", "--data", str(data_dir))
    assert r.returncode == 0 and "INSTANCE" not in r.stdout
    # A later `up` with the writer reuses the storage ports and puts the writer on BASE+10.
    r = boreal(server_env, "down", "--data", str(data_dir))
    assert r.returncode == 0, r.stderr
    r = boreal(server_env, "up", "--detach", "--data", str(data_dir))
    assert r.returncode == 0, r.stderr + r.stdout
    assert local.load_cluster_state(data_dir).writer_address() == f"127.0.0.1:{base + 10}"
    r = boreal(server_env, "down", "--data", str(data_dir))
    assert r.returncode == 0 and r.stdout.count("stopped") >= 9
