#!/usr/bin/env python3
"""Container health check for a borealdb node: one status RPC, exit 0 if the node answers as ready.

    boreal-healthcheck storage [HOST:PORT]     NodeStatus   (default 127.0.0.1:7101)
    boreal-healthcheck instance [HOST:PORT]    InstanceStatus (default 127.0.0.1:7111); an instance
                                               answers with its node id only once it has recovered
                                               (writer) or attached (reader) the volume

The image installs it as /opt/venv/bin/boreal-healthcheck; docker-compose.yml uses it as
each service's healthcheck. Exit codes: 0 healthy, 1 not (the reason on stderr), 2 bad arguments.
A plain TCP connect is not enough: an instance may accept connections before it is ready.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("storage", "instance") or len(argv) > 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    kind = argv[0]
    address = argv[1] if len(argv) > 1 else ("127.0.0.1:7101" if kind == "storage" else "127.0.0.1:7111")
    import grpc

    from borealdb.protos import sql_pb2, sql_pb2_grpc, storage_pb2, storage_pb2_grpc

    try:
        with grpc.insecure_channel(address) as ch:
            if kind == "storage":
                resp = storage_pb2_grpc.StorageNodeStub(ch).NodeStatus(storage_pb2.NodeStatusRequest(), timeout=2)
            else:
                resp = sql_pb2_grpc.InstanceStub(ch).InstanceStatus(sql_pb2.InstanceStatusRequest(), timeout=2)
    except grpc.RpcError as e:
        print(f"{kind} node at {address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    if not resp.node_id:
        print(f"{kind} node at {address}: still starting (no node id yet)", file=sys.stderr)
        return 1
    print(f"{resp.node_id} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
