"""The gRPC poller borealdb runs with, chosen before grpc is first imported.

gRPC core's EventEngine I/O (the default of grpcio 1.85 for client channels and
listeners) hands every message between its own threads before Python sees it; the
older poller reads it on the thread that polls. Measured here with `boreal bench rpc`:
a message on a stream cost 0.17-0.19 ms of CPU on each side instead of 0.19-0.29 ms,
and one stream carried 3,600-4,300 messages/s instead of 2,200-2,400; `boreal bench`
at 32 connections gained 10-17% from the client side alone (3 interleaved pairs).

gRPC reads GRPC_EXPERIMENTS once, when it is imported. So importing borealdb sets it,
unless the environment already sets it (even to "": gRPC's own default) or grpc was
imported before borealdb (then it is left alone). Node launchers put it in every node
process's environment (borealdb.nodes.rpc.node_environment).
"""

from __future__ import annotations

import os
import sys

EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def choose_poller() -> None:
    if "grpc" not in sys.modules:
        os.environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)
