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


def _stream_send(transport, address, req, timeout_s=2.0):
    """send_append over the transport; returns (response, error) once the callback ran."""
    import threading

    from borealdb.nodes.volume.transport import send_append

    done = threading.Event()
    out = []

    def callback(resp, exc):
        out.append((resp, exc))
        done.set()

    send_append(transport, address, pb.AppendStreamRequest(append=req), timeout_s, callback)
    assert done.wait(10)
    assert len(out) == 1
    return out[0]


def _record(lsn, pg_prev, epoch, page=1):
    return redo.seal_record(pb.RedoRecord(lsn=lsn, pg=0, page=page, pg_prev_lsn=pg_prev, kind=pb.FULL_PAGE,
                                          payload=bytes([lsn % 251]) * PAGE, consistency_point=True, epoch=epoch))


def test_append_stream_acks_errors_and_keeps_going(cluster):
    infos, engines, servers, transport = cluster
    vol = Volume.create(_config(infos), transport)
    vol.wait_durable(vol.append_group([PageChange(page=1, kind=redo.FULL_PAGE, payload=bytes(PAGE))]), 10)
    addr, engine = infos[0].address, engines[0]
    epoch, base = vol.epoch, vol.next_lsn + 100  # far above the volume's own LSNs
    vol.close()

    # durable and indexed before the ack, with the SCL of the PG
    resp, exc = _stream_send(transport, addr, pb.AppendRequest(volume_id="g1", epoch=epoch,
                                                               records=[_record(base, 0, epoch)]))
    assert exc is None and [(a.pg, a.scl) for a in resp.acks] == [(0, engine.segment("g1", 0).scl)]
    assert base in engine.segment("g1", 0).records

    # a rejected request answers the same StorageError as a unary Append, writes nothing,
    # and the stream keeps serving the next request
    bad = _record(base + 1, base, epoch)
    bad.crc32 ^= 1
    resp, exc = _stream_send(transport, addr, pb.AppendRequest(volume_id="g1", epoch=epoch, records=[bad]))
    assert resp is None and isinstance(exc, StorageError)
    assert exc.reason == pb.CHECKSUM_MISMATCH and exc.code == grpc.StatusCode.INVALID_ARGUMENT
    assert base + 1 not in engine.segment("g1", 0).records
    resp, exc = _stream_send(transport, addr, pb.AppendRequest(volume_id="g1", epoch=epoch + 1))
    assert exc is not None and exc.reason == pb.EPOCH_AHEAD and exc.code == grpc.StatusCode.FAILED_PRECONDITION
    resp, exc = _stream_send(transport, addr, pb.AppendRequest(volume_id="g1", epoch=epoch - 1))
    assert exc is not None and exc.reason == pb.STALE_EPOCH
    resp, exc = _stream_send(transport, addr, pb.AppendRequest(volume_id="g1", epoch=epoch,
                                                               records=[_record(base + 1, base, epoch)]))
    assert exc is None and base + 1 in engine.segment("g1", 0).records
    stream = transport._streams[addr]
    seq = stream.seq

    # one stream per node, reused by every request
    for i in range(2, 6):
        resp, exc = _stream_send(transport, addr, pb.AppendRequest(volume_id="g1", epoch=epoch,
                                                                   records=[_record(base + i, base + i - 1, epoch)]))
        assert exc is None
    assert transport._streams[addr] is stream and stream.seq == seq + 4

    # a node going away fails the stream's requests with NodeUnavailable; the next send
    # opens a new stream once the node is back
    servers[0].stop(0).wait()
    resp, exc = _stream_send(transport, addr, pb.AppendRequest(volume_id="g1", epoch=epoch), timeout_s=1.0)
    assert isinstance(exc, NodeUnavailable)
    assert transport._streams.get(addr) is not stream


def test_append_stream_unanswered_request_times_out(cluster):
    infos, engines, servers, transport = cluster
    vol = Volume.create(_config(infos), transport)
    vol.wait_durable(vol.append_group([PageChange(page=1, kind=redo.FULL_PAGE, payload=bytes(PAGE))]), 10)
    epoch = vol.epoch
    vol.close()
    engine = engines[1]
    original = engine.append_begin
    gate = __import__("threading").Event()

    def slow_begin(req):  # runs on the server's loop: blocks it, so no answer comes back in time
        gate.wait(1.5)
        return original(req)

    engine.append_begin = slow_begin
    try:
        resp, exc = _stream_send(transport, infos[1].address, pb.AppendRequest(volume_id="g1", epoch=epoch),
                                 timeout_s=0.3)
        assert isinstance(exc, NodeUnavailable) and "DEADLINE" in str(exc)
    finally:
        gate.set()
        engine.append_begin = original
    resp, exc = _stream_send(transport, infos[1].address, pb.AppendRequest(volume_id="g1", epoch=epoch))
    assert exc is None


def test_append_falls_back_to_unary_without_append_stream(cluster):
    """A node whose server has no AppendStream (an older version) is served by unary Appends."""
    infos, engines, servers, transport = cluster
    from borealdb.nodes.storage import server as server_mod

    servers[5].stop(0).wait()
    saved = server_mod.StorageServicer.AppendStream
    del server_mod.StorageServicer.AppendStream  # the generated base class answers UNIMPLEMENTED
    try:
        server, _port = start_server(engines[5], infos[5].address)
    finally:
        server_mod.StorageServicer.AppendStream = saved
    servers[5] = server
    vol = Volume.create(_config(infos), transport)
    lsn = 0
    for i in range(5):
        lsn = vol.append_group([PageChange(page=i, kind=redo.FULL_PAGE, payload=bytes([i]) * PAGE)])
    assert vol.wait_durable(lsn, 10) >= lsn
    deadline = __import__("time").monotonic() + 10
    while engines[5].segment("g1", 0).scl < lsn and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.05)
    assert engines[5].segment("g1", 0).scl == lsn
    assert infos[5].address in transport._unary_only
    vol.close()
