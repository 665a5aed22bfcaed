"""The volume client: the writer's library for a quorum-replicated volume (see DESIGN.md)."""

from borealdb.nodes.volume.tracker import LsnTracker
from borealdb.nodes.volume.transport import GrpcTransport, InProcessTransport, NodeUnavailable, Transport
from borealdb.nodes.volume.volume import PageChange, RecoveryReport, Volume, VolumeConfig, place_pg

__all__ = [
    "GrpcTransport",
    "InProcessTransport",
    "LsnTracker",
    "NodeUnavailable",
    "PageChange",
    "RecoveryReport",
    "Transport",
    "Volume",
    "VolumeConfig",
    "place_pg",
]
