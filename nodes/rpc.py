"""gRPC settings shared by every borealdb process."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

from borealdb import _grpc_env

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def node_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` for a node process, with the gRPC poller settings of client/_grpc_env.py
    (borealdb._grpc_env) that it does not set itself. gRPC reads them when it is
    imported, so the launchers put them in each node's environment."""
    _grpc_env.with_settings(env)
    return env


def freeze_startup_objects() -> int:
    """Call once a node is ready to serve: the objects made so far (modules, classes,
    protobuf descriptors, gRPC, the node's long-lived structures) move out of the cyclic
    garbage collector's reach, so a full collection walks only what serving allocated.
    Why: full collections stopped a writer's loop for 15-17 ms several times a minute,
    a tail of replica lag (`boreal bench lag`); after this, 5.5 ms. Returns how many.
    Only for a node's own process (its main thread): a node run in a thread of another
    program leaves that program's heap alone (returns 0)."""
    if threading.current_thread() is not threading.main_thread():
        return 0
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

# Client channels to other nodes. gRPC core shares subchannels across every channel
# of a process by default, so a new channel to a node that was down inherits the old
# connection's reconnect backoff, which grows to 120 s: a restarted storage node
# would stay "unreachable" for minutes. Each channel gets its own subchannels, and
# reconnect attempts stay frequent (nodes come back after a restart in about a second).
CLIENT_CHANNEL_OPTIONS = [
    *SERVER_OPTIONS,
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
]


class AioServer:
    """Handle of a grpc.aio server running on an event-loop thread, with the calls of a
    synchronous grpc.Server: stop(grace).wait(), wait_for_termination()."""

    def __init__(self, server: Any, loop: asyncio.AbstractEventLoop, pools: list[Any],
                 before_stop: Any = None):
        self._server, self._loop, self._pools = server, loop, pools  # each has shutdown(wait, cancel_futures)
        self._before_stop = before_stop  # called on the loop just before the server stops
        self._stopped = threading.Event()

    async def _stop(self, grace: float | None) -> None:
        if self._before_stop is not None:
            self._before_stop()
        await self._server.stop(grace)

    def stop(self, grace: float | None) -> threading.Event:
        if not self._stopped.is_set():
            try:
                asyncio.run_coroutine_threadsafe(self._stop(grace), self._loop).result(timeout=(grace or 0) + 10)
            except Exception:  # noqa: BLE001 - stopping is best effort
                pass
            for pool in self._pools:
                pool.shutdown(wait=False, cancel_futures=True)
            self._stopped.set()
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)
