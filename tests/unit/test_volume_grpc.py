"""Volume client over real gRPC (servers in this process on 127.0.0.1, no subprocesses):
error reasons decoded from trailing metadata, unreachable nodes, fencing, recovery."""

from __future__ import annotations

import os
import random

import grpc
import pytest

from borealdb.errors import StaleEpoch
from borealdb.nodes import redo
from borealdb.nodes.storage.engine import StorageEngine, StorageError, StorageOptions
from borealdb.nodes.storage.server import start_server
from borealdb.nodes.volume import GrpcTransport, NodeUnavailable, PageChange, Volume, VolumeConfig
from borealdb.protos import storage_pb2 as pb

PAGE = 1024


@pytest.fixture
def cluster(tmp_path):
    engines, servers, infos = [], [], []
    for i, az in enumerate("aabbcc"):
        e = StorageEngine(f"s{i}", az, "", os.path.join(tmp_path, f"s{i}"), StorageOptions()).open()
        server, port = start_server(e, "127.0.0.1:0")
        e.address = f"127.0.0.1:{port}"
        engines.append(e)
        servers.append(server)
        infos.append(pb.StorageNodeInfo(node_id=f"s{i}", az=az, address=e.address))
    transport = GrpcTransport()
    yield infos, engines, servers, transport
    transport.close()
    for s in servers:
        s.stop(0).wait()
    for e in engines:
        e.close()


def _config(infos, **kw):
    return VolumeConfig(volume_id="g1", nodes=infos, page_size=PAGE, pg_size_pages=16,
                        max_size_bytes=PAGE * 16 * 8, rpc_timeout_s=2.0, heartbeat_interval_s=0.2, **kw)


def test_grpc_write_read_fence_recover(cluster):
    infos, engines, servers, transport = cluster
    vol = Volume.create(_config(infos), transport)
    rng = random.Random(11)
    model = {}
    lsn = 0
    for i in range(40):
        p = rng.randrange(40)
        img = rng.randbytes(PAGE)
        model[p] = img
        lsn = vol.append_group([PageChange(page=p, kind=redo.FULL_PAGE, payload=img)])
    assert vol.wait_durable(lsn, 10) >= lsn
    for p, img in model.items():
        assert vol.read_page(p)[0] == img

    # an application error keeps its reason across the wire
    fut = transport.call(infos[0].address, "Append",
                         pb.AppendRequest(volume_id="g1", epoch=0), 2.0)
    with pytest.raises(StorageError) as ei:
        fut.result(5)
    assert ei.value.reason == pb.STALE_EPOCH and ei.value.code == grpc.StatusCode.FAILED_PRECONDITION

    # a stopped server is NodeUnavailable, and 2 of them do not stop commits
    servers[0].stop(0).wait()
    servers[2].stop(0).wait()
    with pytest.raises(NodeUnavailable):
        transport.call(infos[0].address, "NodeStatus", pb.NodeStatusRequest(), 1.0).result(5)
    img = rng.randbytes(PAGE)
    model[3] = img
    lsn = vol.append_group([PageChange(page=3, kind=redo.FULL_PAGE, payload=img)])
    assert vol.wait_durable(lsn, 10) >= lsn

    # a second writer (same 4 reachable nodes) recovers and fences the first
    vol2 = Volume.open(_config(infos, recovery_timeout_s=10), transport)
    assert vol2.vdl == lsn
    for p, img in model.items():
        assert vol2.read_page(p)[0] == img
    stale = vol.append_group([PageChange(page=4, kind=redo.FULL_PAGE, payload=bytes(PAGE))])
    with pytest.raises(StaleEpoch):
        vol.wait_durable(stale, 10)
    vol.close()
    vol2.close()
