"""borealdb: an Aurora-style database cluster. The public client API lives here.

Server-side code is under `borealdb.nodes`; nothing in this package starts servers.
"""

from borealdb.errors import (
    DatabaseError,
    Error,
    InterfaceError,
    InvalidRequest,
    NotWriter,
    OperationalError,
    ProgrammingError,
    QuorumLost,
    ReadOnly,
    StaleEpoch,
    Unavailable,
    VolumeFull,
)

__version__ = "0.1.0"

__all__ = [
    "DatabaseError",
    "Error",
    "InterfaceError",
    "InvalidRequest",
    "NotWriter",
    "OperationalError",
    "ProgrammingError",
    "QuorumLost",
    "ReadOnly",
    "StaleEpoch",
    "Unavailable",
    "VolumeFull",
    "__version__",
]
