"""In-process storage for unit tests: six real StorageEngines (2 per AZ) behind an
InProcessTransport, in a temporary directory; no processes, no sockets."""

from __future__ import annotations

import os

from borealdb.nodes.instance.engine import SqlEngine
from borealdb.nodes.storage.engine import StorageEngine, StorageOptions
from borealdb.nodes.volume import InProcessTransport, Volume, VolumeConfig
from borealdb.protos import storage_pb2 as pb

PAGE = 4096


class Storage:
    """Six storage engines, 2 per AZ, in tmp_path."""

    def __init__(self, root: str):
        self.infos = [pb.StorageNodeInfo(node_id=f"s-{az}{i}", az=az, address=f"mem:{az}{i}") for az in "abc" for i in range(2)]
        self.engines = {
            i.address: StorageEngine(i.node_id, i.az, i.address, os.path.join(root, i.node_id), StorageOptions()).open()
            for i in self.infos
        }
        self.transport = InProcessTransport(self.engines)
        self.volumes: list[Volume] = []

    def volume(self, **overrides) -> Volume:
        kw = dict(volume_id="db", nodes=self.infos, page_size=PAGE, pg_size_pages=64, rpc_timeout_s=1.0, recovery_timeout_s=10.0)
        kw.update(overrides)
        vol = Volume.open(VolumeConfig(**kw), self.transport, create_if_missing=True)
        self.volumes.append(vol)
        return vol

    def close(self):
        for v in self.volumes:
            v.close(flush_timeout_s=1.0)
        self.transport.close()
        for e in self.engines.values():
            if e.is_open:
                e.close()


def run(engine: SqlEngine, sid: str, sql: str, params=()):
    rows, outcome = [], None
    for _cols, batch, out in engine.execute(sid, sql, params):
        rows.extend(batch)
        outcome = out or outcome
    return rows, outcome
