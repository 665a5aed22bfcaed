"""The storage_cluster fixture and `boreal status` against real storage nodes."""

from __future__ import annotations

import grpc
import pytest

from borealdb.nodes import cli
from borealdb.protos import storage_pb2 as pb
from borealdb.protos import storage_pb2_grpc

pytestmark = pytest.mark.integration
pytest.importorskip("borealdb.nodes.storage.server")


def test_storage_cluster_fixture_and_status(storage_cluster):
    infos = storage_cluster.storage_node_infos()
    assert [i.az for i in infos] == ["a", "a", "b", "b", "c", "c"]
    for node in storage_cluster.storage_nodes():
        with grpc.insecure_channel(node.address) as ch:
            stub = storage_pb2_grpc.StorageNodeStub(ch)
            stub.CreateSegment(pb.CreateSegmentRequest(volume_id="vol", epoch=1, pg=0, first_page=0, page_count=16,
                                                       page_size=4096, peers=infos), timeout=10)
    report = cli.collect_status(storage_cluster.base_dir, 2.0)
    assert all(n["up"] for n in report["nodes"])
    [pg] = report["pgs"]
    assert (pg["volume_id"], pg["pg"], pg["pgcl"], pg["reporting"], pg["epochs"]) == ("vol", 0, 0, 6, [1])
    assert sorted(pg["members"]) == sorted(i.node_id for i in infos)

    storage_cluster.node("s-a1").kill()
    text = cli.format_status(cli.collect_status(storage_cluster.base_dir, 1.0))
    assert ">=0" in text and "down" in text
    storage_cluster.node("s-a1").restart()
    assert all(n["up"] for n in cli.collect_status(storage_cluster.base_dir, 2.0)["nodes"])
