"""Shared pytest fixtures: local clusters of real node processes on 127.0.0.1.

    def test_something(storage_cluster):        # 6 storage nodes, 2 per AZ, ready
        storage_cluster.node("s-a1").kill()

    def test_custom(make_cluster):              # any topology or node flags
        c = make_cluster(storage_args=["--gossip-interval-s", "0.1"])

Every cluster lives in the test's tmp_path, listens on free ports, and is stopped
after the test whether it passed or failed (and killed at exit, or when pytest
itself dies, by the launcher's own safeguards).
"""

from __future__ import annotations

import pytest

from borealdb.nodes.cluster.local import LocalCluster

READY_TIMEOUT_S = 60.0


@pytest.fixture
def make_cluster(tmp_path):
    """Factory: make_cluster(topology=None, *, start=True, **LocalCluster kwargs) -> LocalCluster."""
    clusters: list[LocalCluster] = []

    def factory(topology=None, *, start: bool = True, name: str | None = None, **kwargs) -> LocalCluster:
        base = tmp_path / (name or f"cluster{len(clusters)}")
        cluster = LocalCluster(base, topology, **kwargs)
        clusters.append(cluster)
        if start:
            cluster.start(timeout_s=READY_TIMEOUT_S)
        return cluster

    yield factory
    for cluster in reversed(clusters):
        cluster.stop_all(grace_s=10.0)


@pytest.fixture
def storage_cluster(make_cluster) -> LocalCluster:
    """The default topology (s-a1, s-a2, s-b1, s-b2, s-c1, s-c2), started and ready."""
    return make_cluster(name="cluster")
