"""The launcher/harness (nodes/cluster/local.py) against stand-in servers.

The stand-in storage node (`serve` below) answers NodeStatus only, and the stand-in
instance (`serve_instance`) answers InstanceStatus only, so these tests check the
process management itself - start order, readiness, kill, stop, pause, restart, the
state file, cleanup when the parent dies, `boreal status` - whatever the state of the
real nodes. The child imports this file as a module through
BOREAL_STORAGE_SERVER_MODULE / BOREAL_INSTANCE_SERVER_MODULE.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MODULE = Path(__file__).stem


# ---- the stand-in server (runs in the child process) --------------------------------


def serve(node_id, az, listen, data_dir, metrics_listen=None, options=None):
    import grpc

    from borealdb.protos import storage_pb2, storage_pb2_grpc

    mode = os.environ.get("FAKE_STORAGE_MODE", "ok")
    if mode == "crash":
        print("fake storage: crashing on purpose", file=sys.stderr, flush=True)
        raise SystemExit(3)
    started = time.monotonic()
    # A deterministic SCL per node: s-a1 -> 10, s-a2 -> 20, ... so the PGCL is known.
    order = ["s-a1", "s-a2", "s-b1", "s-b2", "s-c1", "s-c2"]
    peers = [storage_pb2.StorageNodeInfo(node_id=n, az=n[2], address="") for n in order]

    class Servicer(storage_pb2_grpc.StorageNodeServicer):
        def NodeStatus(self, request, context):
            scl = 10 * (order.index(node_id) + 1) if node_id in order else 0
            seg = storage_pb2.SegmentInfo(volume_id="vol", pg=0, epoch=1, scl=scl, vdl_hint=scl - 5, peers=peers)
            return storage_pb2.NodeStatusResponse(
                node_id=node_id, az=az, address=listen, uptime_ms=int((time.monotonic() - started) * 1000),
                segments=[seg],
            )

    # Block the stop signals in every thread (gRPC's included) and take them with
    # sigwait: a handler could run in no thread while the main one sits in a lock.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    if mode == "silent":  # alive but never serving
        signal.sigwait(stop_signals)
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    storage_pb2_grpc.add_StorageNodeServicer_to_server(Servicer(), server)
    server.add_insecure_port(listen)
    server.start()
    print(f"fake storage {node_id} serving on {listen}", file=sys.stderr, flush=True)
    signal.sigwait(stop_signals)
    server.stop(grace=1).wait()


def _storage_reachable(storage_nodes) -> int:
    import grpc

    from borealdb.protos import storage_pb2, storage_pb2_grpc

    up = 0
    for info in storage_nodes:
        try:
            with grpc.insecure_channel(info.address) as ch:
                storage_pb2_grpc.StorageNodeStub(ch).NodeStatus(storage_pb2.NodeStatusRequest(), timeout=1)
            up += 1
        except grpc.RpcError:
            pass
    return up


def serve_instance(node_id, az, listen, storage_nodes, volume_id="main", metrics_listen=None, options=None,
                   role="writer", writer=None):
    """Stand-in instance node: checks that its storage nodes are up (they start first), answers
    InstanceStatus, and logs whether the storage nodes were still up when it was stopped."""
    import grpc

    from borealdb.protos import sql_pb2, sql_pb2_grpc

    mode = os.environ.get("FAKE_INSTANCE_MODE", "ok")
    print(f"fake instance {node_id}: storage nodes "
          + ",".join(f"{i.node_id}@{i.az}@{i.address}" for i in storage_nodes) + f" volume {volume_id}",
          file=sys.stderr, flush=True)
    if mode == "crash":
        print("fake instance: crashing on purpose", file=sys.stderr, flush=True)
        raise SystemExit(5)
    up = _storage_reachable(storage_nodes)
    if up != len(storage_nodes):
        print(f"fake instance: only {up}/{len(storage_nodes)} storage nodes up at start", file=sys.stderr, flush=True)
        raise SystemExit(4)
    started = time.monotonic()

    class Servicer(sql_pb2_grpc.InstanceServicer):
        def InstanceStatus(self, request, context):
            if mode == "noid" and time.monotonic() - started < 0.5:  # "recovering": no node id yet
                return sql_pb2.InstanceStatusResponse()
            return sql_pb2.InstanceStatusResponse(
                node_id=node_id, az=az, role=role, epoch=3, vdl=1234, vcl=1240, sessions=2,
                uptime_ms=int((time.monotonic() - started) * 1000), volume_id=volume_id)

    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    sql_pb2_grpc.add_InstanceServicer_to_server(Servicer(), server)
    server.add_insecure_port(listen)
    server.start()
    signal.sigwait(stop_signals)
    up = _storage_reachable(storage_nodes)
    print(f"fake instance: {up}/{len(storage_nodes)} storage nodes up at shutdown", file=sys.stderr, flush=True)
    server.stop(grace=1).wait()


# ---- tests ------------------------------------------------------------------------

pytestmark = pytest.mark.integration

from borealdb.nodes.cluster import local  # noqa: E402
from borealdb.nodes.cluster.local import LocalCluster, NodeSpec, NodeStartError, load_cluster_state  # noqa: E402
from borealdb._grpc_env import SETTINGS as GRPC_SETTINGS  # noqa: E402


def fake_env(mode: str = "ok", instance_mode: str = "ok") -> dict[str, str]:
    # Without the gRPC settings this process has (it imported borealdb): the launcher adds them.
    env = {k: v for k, v in os.environ.items() if k not in GRPC_SETTINGS}
    env["BOREAL_STORAGE_SERVER_MODULE"] = MODULE
    env["BOREAL_INSTANCE_SERVER_MODULE"] = f"{MODULE}:serve_instance"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["FAKE_STORAGE_MODE"] = mode
    env["FAKE_INSTANCE_MODE"] = instance_mode
    return env


def wait_for(cond, timeout_s=10.0, what="condition"):
    from tests.waiting import wait_until  # here: this file also runs as a fake node's script

    return wait_until(cond, timeout_s, what)


@pytest.fixture
def fake_cluster(tmp_path):
    cluster = LocalCluster(tmp_path / "c", env=fake_env())
    with cluster:
        yield cluster
    assert not cluster.running_nodes()


def test_default_topology_starts_and_records_state(fake_cluster):
    c = fake_cluster
    assert [n.node_id for n in c.nodes] == ["s-a1", "s-a2", "s-b1", "s-b2", "s-c1", "s-c2", "i-a1"]
    assert [n.node_id for n in c.nodes_in_az("b")] == ["s-b1", "s-b2"]
    assert len(c.storage_nodes()) == 6
    assert [n.node_id for n in c.instance_nodes()] == ["i-a1"] and c.writer().role == "writer"
    assert all(n.is_running and n.address.startswith("127.0.0.1:") for n in c.nodes)
    assert len({n.address for n in c.nodes}) == 7
    infos = c.storage_node_infos()
    assert [(i.node_id, i.az) for i in infos] == [("s-a1", "a"), ("s-a2", "a"), ("s-b1", "b"), ("s-b2", "b"), ("s-c1", "c"), ("s-c2", "c")]
    state = load_cluster_state(c.base_dir)
    assert [n.pid for n in state.nodes] == [n.pid for n in c.nodes]
    assert [n.node_id for n in state.running()] == [n.node_id for n in c.nodes]
    assert state.storage_node_infos() == infos
    raw = json.loads((c.base_dir / "cluster.json").read_text())
    assert raw["nodes"][0]["log_path"].endswith("s-a1/node.log")
    assert c.node("s-c2").node_status().node_id == "s-c2"
    environ = Path(f"/proc/{c.node('s-a1').pid}/environ").read_bytes().split(b"\0")
    for name, value in GRPC_SETTINGS.items():
        assert f"{name}={value}".encode() in environ, "the launcher gives nodes the settings of client/_grpc_env.py"


def test_writer_is_recorded_and_answers(fake_cluster):
    c = fake_cluster
    w = c.writer()
    assert w.node_id == "i-a1" and w.az == "a" and w.is_instance
    assert c.writer_url() == f"boreal://{w.address}/"
    st = w.instance_status()
    assert (st.node_id, st.role, st.epoch, st.vdl, st.sessions) == ("i-a1", "writer", 3, 1234, 2)
    # The writer was given every storage node of the cluster, and the volume.
    log = w.log_path.read_text()
    expected = ",".join(f"{n.node_id}@{n.az}@{n.address}" for n in c.storage_nodes())
    assert f"storage nodes {expected} volume main" in log
    state = load_cluster_state(c.base_dir)
    rec = state.node("i-a1")
    assert (rec.role, rec.address, rec.pid) == ("writer", w.address, w.pid)
    assert state.writer_address() == w.address
    assert [r.node_id for r in state.instance_records()] == ["i-a1"]
    assert state.storage_node_infos() == c.storage_node_infos()  # the writer is no storage node
    # A killed writer restarts on the same address.
    w.kill()
    assert not w.is_running
    w.restart(timeout_s=20)
    assert w.instance_status().node_id == "i-a1"


def test_stop_all_stops_the_writer_before_storage(tmp_path):
    c = LocalCluster(tmp_path / "c", env=fake_env())
    c.start(timeout_s=30)
    codes = c.stop_all()
    assert list(codes) == [n.node_id for n in c.nodes] and all(v == 0 for v in codes.values())
    assert "6/6 storage nodes up at shutdown" in c.writer().log_path.read_text()


def test_stop_cluster_stops_the_writer_before_storage(tmp_path):
    c = LocalCluster(tmp_path / "c", env=fake_env(), exit_with_parent=False)
    c.start(timeout_s=30)
    try:
        c.detach()
        results = local.stop_cluster(c.base_dir)
        assert [n.node_id for n, _ in results] == ["i-a1", "s-a1", "s-a2", "s-b1", "s-b2", "s-c1", "s-c2"]
        assert all(outcome == "stopped" for _, outcome in results)
        assert "6/6 storage nodes up at shutdown" in c.writer().log_path.read_text()
    finally:
        c.kill_all()


def test_storage_only_cluster(tmp_path):
    with LocalCluster(tmp_path / "c", [("s-a1", "a"), ("s-b1", "b")], env=fake_env(), instances=False) as c:
        assert [n.node_id for n in c.nodes] == ["s-a1", "s-b1"] and c.instance_nodes() == []
        with pytest.raises(local.ClusterError, match="no writer"):
            c.writer()
        with pytest.raises(local.ClusterError, match="no writer"):
            load_cluster_state(c.base_dir).writer_address()


def test_instance_waits_for_its_node_id(tmp_path):
    with LocalCluster(tmp_path / "c", [("s-a1", "a")], env=fake_env(instance_mode="noid")) as c:
        assert c.writer().instance_status().node_id == "i-a1"


def test_writer_failing_to_start_stops_everything(tmp_path):
    c = LocalCluster(tmp_path / "c", [("s-a1", "a"), ("s-b1", "b")], env=fake_env(instance_mode="crash"))
    with pytest.raises(NodeStartError) as e:
        c.start(timeout_s=10)
    assert "i-a1 exited with code 5" in str(e.value) and "crashing on purpose" in str(e.value)
    assert not c.running_nodes()


def test_kill_restart_pause_resume(fake_cluster):
    import grpc

    n = fake_cluster.node("s-b1")
    old_pid = n.pid
    n.kill()
    assert not n.is_running and n.pid is None
    assert load_cluster_state(fake_cluster.base_dir).node("s-b1").pid is None
    with pytest.raises(grpc.RpcError):
        n.node_status(timeout_s=0.5)
    n.start()
    n.wait_ready(10)
    assert n.pid != old_pid
    assert load_cluster_state(fake_cluster.base_dir).node("s-b1").pid == n.pid

    n.pause()
    with pytest.raises(grpc.RpcError) as e:
        n.node_status(timeout_s=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert n.is_running
    n.resume()
    assert n.wait_ready(10).node_id == "s-b1"

    pid = n.pid
    n.restart(timeout_s=10)
    assert n.is_running and n.pid != pid
    assert n.stop() == 0  # SIGTERM: a clean exit


def test_stop_paused_node_is_clean(fake_cluster):
    n = fake_cluster.node("s-a2")
    n.pause()
    assert n.stop(grace_s=5) == 0


def test_node_exiting_early_reports_log_tail(tmp_path):
    c = LocalCluster(tmp_path, [("s-a1", "a")], env=fake_env("crash"))
    with pytest.raises(NodeStartError) as e:
        c.start(timeout_s=10)
    msg = str(e.value)
    assert "s-a1 exited with code" in msg and "crashing on purpose" in msg
    assert not c.running_nodes()


def test_bad_data_dir_is_reported(tmp_path):
    (tmp_path / "file").write_text("x")
    spec = NodeSpec("s-a1", "a", listen=f"127.0.0.1:{local.free_port()}", data_dir=tmp_path / "file" / "sub")
    node = local.Node(spec, env=fake_env())
    with pytest.raises(OSError):
        node.start()


def test_readiness_timeout_names_node(tmp_path):
    c = LocalCluster(tmp_path, [("s-a1", "a"), ("s-b1", "b")], env=fake_env("silent"))
    t0 = time.monotonic()
    with pytest.raises(NodeStartError) as e:
        c.start(timeout_s=1.5)
    assert time.monotonic() - t0 < 10  # nodes are waited for in parallel
    assert "s-a1" in str(e.value) and "s-b1" in str(e.value) and "not ready" in str(e.value)
    assert not c.running_nodes()


def test_refuses_second_cluster_in_same_dir(fake_cluster):
    other = LocalCluster(fake_cluster.base_dir, env=fake_env())
    with pytest.raises(local.ClusterError, match="already running"):
        other.start_all()


def test_children_die_with_their_parent(tmp_path):
    script = f"""
import os, sys, time
sys.path.insert(0, {str(HERE)!r})
from test_launcher_harness import fake_env
from borealdb.nodes.cluster.local import LocalCluster
c = LocalCluster({str(tmp_path)!r}, [("s-a1", "a"), ("s-b1", "b")], env=fake_env())
c.start(timeout_s=20)
print(" ".join(str(n.pid) for n in c.nodes), flush=True)
sys.stdin.read()
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 3 and all(local.pid_alive(p) for p in pids)  # s-a1, s-b1 and the writer i-a1
        parent.kill()  # no atexit, no cleanup: only the pipe tells the children
        parent.wait()
        wait_for(lambda: not any(local.pid_alive(p) for p in pids), 15, "children to exit")
    finally:
        parent.kill()
        parent.wait()
        for p in local.load_cluster_state(tmp_path).nodes:
            if p.pid and local.is_boreal_process(p.pid, p.node_id):
                os.kill(p.pid, signal.SIGKILL)


def test_status_reports_pgcl_and_down_nodes(fake_cluster):
    from borealdb.nodes import cli

    report = cli.collect_status(fake_cluster.base_dir, 1.0)
    assert all(n["up"] for n in report["nodes"])
    [pg] = report["pgs"]
    assert pg["volume_id"] == "vol" and pg["scl"]["s-c2"] == 60
    assert pg["pgcl"] == 30  # SCLs 10..60: the 4th highest is 30
    assert pg["vdl_hint"] == 55
    fake_cluster.node("s-c2").kill()
    report = cli.collect_status(fake_cluster.base_dir, 1.0)
    assert [n["node_id"] for n in report["nodes"] if not n["up"]] == ["s-c2"]
    text = cli.format_status(report)
    assert "down" in text and ">=20" in text


def test_status_reports_the_writer(fake_cluster):
    from borealdb.nodes import cli

    report = cli.collect_status(fake_cluster.base_dir, 1.0)
    [w] = [n for n in report["nodes"] if n["role"] == "writer"]
    assert (w["node_id"], w["up"], w["epoch"], w["vdl"], w["sessions"], w["volume_id"]) == ("i-a1", True, 3, 1234, 2, "main")
    assert w["url"] == fake_cluster.writer_url()
    [pg] = report["pgs"]
    assert "i-a1" not in pg["scl"]
    text = cli.format_status(report)
    row = next(line for line in text.splitlines() if line.startswith("i-a1"))
    # The writer has no replica lag of its own: "-" in the REPLICA_LAG column.
    assert row.split() == ["i-a1", "writer", "a", fake_cluster.writer().address, "up", row.split()[5], "3", "1234", "2", "-"]
    header = next(line for line in text.splitlines() if line.startswith("VOLUME"))
    assert "i-a1" not in header
    fake_cluster.writer().kill()
    report = cli.collect_status(fake_cluster.base_dir, 1.0)
    assert [n["node_id"] for n in report["nodes"] if not n["up"]] == ["i-a1"]
    row = next(line for line in cli.format_status(report).splitlines() if line.startswith("i-a1"))
    assert "down" in row

