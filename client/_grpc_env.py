"""The gRPC poller borealdb runs with, chosen before grpc is first imported.

gRPC core's EventEngine I/O (the default of grpcio 1.85 for client channels and
listeners) hands every message between its own threads before Python sees it; the
older poller reads it on the thread that polls. Measured here with `boreal bench rpc`
(2026-11-29): a message on a stream cost 0.054-0.062 ms of CPU on each side instead of
0.075-0.105 ms, and a unary call 0.13-0.17 ms on the server instead of 0.15-0.29 ms.
`boreal bench` with and without these settings (nodes and client together, 3
interleaved pairs) gained 7-21% at 8 connections and 1-17% at 32.

With the older poller, a connection attempt that nobody polls for (a channel whose
first attempt was refused, retrying while the server starts) completes only when
gRPC's backup poller runs, every 5 s by default: a node restart looked like a 5 s
outage. A 50 ms backup poll makes it as quick as EventEngine (0.5-0.6 s from refused to
answered in a scratch test against a server process starting up, against 5.05 s).

gRPC reads these variables once, when it is imported. So importing borealdb sets each
one in os.environ, unless the environment already sets it (GRPC_EXPERIMENTS="" gives
gRPC's own default; an empty backup poll interval is not a number to gRPC, so it
counts as unset) or grpc was imported before borealdb (then nothing is changed).
Being in os.environ, they are inherited by the processes the program starts. Node
launchers put them in every node process's environment
(borealdb.nodes.rpc.node_environment). In the repository this module is
client/_grpc_env.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

EXPERIMENTS = "-event_engine_client,-event_engine_listener"
BACKUP_POLL_INTERVAL_MS = 50

SETTINGS = {
    "GRPC_EXPERIMENTS": EXPERIMENTS,
    "GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS": str(BACKUP_POLL_INTERVAL_MS),
}
# Variables where "" is a choice (gRPC's defaults); for the others it is as good as unset.
_EMPTY_IS_A_CHOICE = frozenset({"GRPC_EXPERIMENTS"})


def with_settings(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """`env` with each of SETTINGS that it does not set already (changed in place)."""
    for name, value in SETTINGS.items():
        if name not in env or (env[name] == "" and name not in _EMPTY_IS_A_CHOICE):
            env[name] = value
    return env


def choose_poller() -> None:
    if "grpc" not in sys.modules:
        with_settings(os.environ)
