"""borealdb: an Aurora-style database cluster. The public client API lives here.

    import borealdb
    conn = borealdb.connect("boreal://127.0.0.1:7300/")   # PEP 249 (DB-API 2.0)
    conn = await borealdb.aio.connect(...)                 # asyncio flavour (borealdb.aio)

Server-side code is under `borealdb.nodes`; nothing in this package starts servers
or imports it.
"""

from borealdb import _grpc_env

_grpc_env.choose_poller()  # before anything imports grpc

from borealdb.dbapi import Connection, Cursor, apilevel, connect, paramstyle, threadsafety
from borealdb.errors import (
    BadParameters,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    InvalidRequest,
    LockTimeout,
    NotSupportedError,
    NotWriter,
    OperationalError,
    OutcomeUnknown,
    ProgrammingError,
    QuorumLost,
    ReadOnly,
    SessionExpired,
    StaleEpoch,
    TooLarge,
    Unavailable,
    VolumeFull,
    Warning,
)
from borealdb.types import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # `borealdb.aio` without importing grpc.aio for programs that do not use it.
    if name == "aio":
        import importlib

        return importlib.import_module("borealdb.aio")
    raise AttributeError(f"module 'borealdb' has no attribute {name!r}")


__all__ = [
    "BINARY",
    "BadParameters",
    "Binary",
    "Connection",
    "Cursor",
    "DATETIME",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "InvalidRequest",
    "LockTimeout",
    "NUMBER",
    "NotSupportedError",
    "NotWriter",
    "OperationalError",
    "OutcomeUnknown",
    "ProgrammingError",
    "QuorumLost",
    "ROWID",
    "ReadOnly",
    "STRING",
    "SessionExpired",
    "StaleEpoch",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "TooLarge",
    "Unavailable",
    "VolumeFull",
    "Warning",
    "__version__",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
