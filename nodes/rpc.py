"""gRPC settings shared by every borealdb process."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

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
