"""Shared pytest fixtures: local clusters of real node processes on 127.0.0.1.

    def test_something(storage_cluster):        # 6 storage nodes, 2 per AZ, ready
        storage_cluster.node("s-a1").kill()

    def test_custom(make_cluster):              # any topology or node flags; storage only
        c = make_cluster(storage_args=["--gossip-interval-s", "0.1"])
        c = make_cluster(instances=True)        # ... plus the writer i-a1

    def test_sql(sql_cluster):                  # 6 storage nodes + the writer, ready
        connect(sql_cluster.url)                # "boreal://127.0.0.1:PORT/"
        sql_cluster.cluster.writer().restart()

Every cluster lives in the test's tmp_path, listens on free ports, and is stopped
after the test whether it passed or failed (and killed at exit, or when pytest
itself dies, by the launcher's own safeguards).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import pytest

from borealdb.nodes.cluster.local import LocalCluster, Node

READY_TIMEOUT_S = 60.0
INSTANCE_SERVER = "borealdb.nodes.instance.server"


@dataclass
class SqlCluster:
    """What `sql_cluster` yields: the cluster (storage nodes + writer) and the writer's URL."""

    cluster: LocalCluster
    url: str  # "boreal://127.0.0.1:PORT/"

    @property
    def writer(self) -> Node:
        return self.cluster.writer()


@pytest.fixture
def make_cluster(tmp_path):
    """Factory: make_cluster(topology=None, *, start=True, instances=False, **LocalCluster kwargs)
    -> LocalCluster. Storage nodes only unless instances=True (the writer i-a1) or a list of
    instance specs is given."""
    clusters: list[LocalCluster] = []

    def factory(topology=None, *, start: bool = True, name: str | None = None, instances=False,
                **kwargs) -> LocalCluster:
        base = tmp_path / (name or f"cluster{len(clusters)}")
        cluster = LocalCluster(base, topology, instances=instances, **kwargs)
        clusters.append(cluster)
        if start:
            cluster.start(timeout_s=READY_TIMEOUT_S)
        return cluster

    yield factory
    for cluster in reversed(clusters):
        cluster.stop_all(grace_s=10.0)


@pytest.fixture
def storage_cluster(make_cluster) -> LocalCluster:
    """The default storage topology (s-a1, s-a2, s-b1, s-b2, s-c1, s-c2), started and ready; no writer."""
    return make_cluster(name="cluster")


@pytest.fixture
def sql_cluster(make_cluster) -> SqlCluster:
    """The default topology with the writer: 6 storage nodes, then the writer i-a1 (AZ a) on
    volume "main", started and ready; stopped after the test (writer first). Skips the test
    if this build has no instance node."""
    try:
        found = importlib.util.find_spec(INSTANCE_SERVER) is not None
    except ImportError:
        found = False
    if not found:
        pytest.skip(f"{INSTANCE_SERVER} does not exist yet")
    cluster = make_cluster(name="sql", instances=True)
    return SqlCluster(cluster=cluster, url=cluster.writer_url())
