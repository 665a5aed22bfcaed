"""The gRPC poller borealdb runs with, chosen before grpc is first imported.

gRPC core's EventEngine I/O (the default of grpcio 1.85 for client channels and
listeners) hands every message between its own threads before Python sees it; the
older poller reads it on the thread that polls. Measured here with `boreal bench rpc`:
a message on a stream cost 0.17-0.19 ms of CPU on each side instead of 0.19-0.29 ms,
and one stream carried 3,600-4,300 messages/s instead of 2,200-2,400; `boreal bench`
at 32 connections gained 10-17% from the client side alone (3 interleaved pairs).

With the older poller, a connection attempt that nobody polls for (a channel whose
first attempt was refused, retrying while the server starts) completes only when
gRPC's backup poller runs, every 5 s by default: a node restart looked like a 5 s
outage. A 50 ms backup poll makes it as quick as EventEngine (0.5-0.6 s from refused to
answered in a scratch test against a server process starting up, against 5.05 s).

gRPC reads these variables once, when it is imported. So importing borealdb sets each
one, unless the environment already sets it (GRPC_EXPERIMENTS="" gives gRPC's own
default) or grpc was imported before borealdb (then nothing is changed). Node
launchers put them in every node process's environment
(borealdb.nodes.rpc.node_environment).
"""

from __future__ import annotations

import os
import sys

EXPERIMENTS = "-event_engine_client,-event_engine_listener"
BACKUP_POLL_INTERVAL_MS = 50

SETTINGS = {
    "GRPC_EXPERIMENTS": EXPERIMENTS,
    "GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS": str(BACKUP_POLL_INTERVAL_MS),
}


def with_settings(env: dict[str, str]) -> dict[str, str]:
    """`env` with each of SETTINGS that it does not set already."""
    for name, value in SETTINGS.items():
        env.setdefault(name, value)
    return env


def choose_poller() -> None:
    if "grpc" not in sys.modules:
        with_settings(os.environ)  # type: ignore[arg-type]
