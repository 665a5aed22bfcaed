"""The borealdb exception hierarchy.

It follows PEP 249 (DB-API 2.0) so that database clients can catch the usual
classes, and adds precise subclasses for the failures of a distributed volume:

    Error
    ├── InterfaceError                 misuse of the client library
    └── DatabaseError
        ├── ProgrammingError
        │   └── InvalidRequest         malformed or oversized request; nothing was changed
        ├── IntegrityError
        ├── DataError
        ├── NotSupportedError
        ├── InternalError
        └── OperationalError
            ├── Unavailable            a node could not be reached; the request may be retried
            ├── QuorumLost             too few segments answered: a write or read quorum is missing
            ├── StaleEpoch             a newer writer took over: this one is fenced
            ├── VolumeFull             the volume reached its configured maximum size
            ├── NotWriter              a write was sent to a node that is not the writer
            └── ReadOnly               the node or volume only serves reads

Every class carries a stable `code` string that the wire protocol and logs use.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every borealdb error (PEP 249 `Error`)."""

    code = "ERROR"

    def __init__(self, message: str = "", *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class Warning(Exception):  # noqa: A001 - the name is required by PEP 249
    """PEP 249 `Warning`."""


class InterfaceError(Error):
    code = "INTERFACE"


class DatabaseError(Error):
    code = "DATABASE"


class ProgrammingError(DatabaseError):
    code = "PROGRAMMING"


class InvalidRequest(ProgrammingError):
    """A malformed, out-of-range or oversized request. Nothing was changed."""

    code = "INVALID_REQUEST"


class IntegrityError(DatabaseError):
    code = "INTEGRITY"


class DataError(DatabaseError):
    code = "DATA"


class NotSupportedError(DatabaseError):
    code = "NOT_SUPPORTED"


class InternalError(DatabaseError):
    code = "INTERNAL"


class OperationalError(DatabaseError):
    code = "OPERATIONAL"


class Unavailable(OperationalError):
    code = "UNAVAILABLE"


class QuorumLost(OperationalError):
    code = "QUORUM_LOST"


class StaleEpoch(OperationalError):
    code = "STALE_EPOCH"


class VolumeFull(OperationalError):
    code = "VOLUME_FULL"


class NotWriter(OperationalError):
    code = "NOT_WRITER"


class ReadOnly(OperationalError):
    code = "READ_ONLY"


__all__ = [
    "Error",
    "Warning",
    "InterfaceError",
    "DatabaseError",
    "ProgrammingError",
    "InvalidRequest",
    "IntegrityError",
    "DataError",
    "NotSupportedError",
    "InternalError",
    "OperationalError",
    "Unavailable",
    "QuorumLost",
    "StaleEpoch",
    "VolumeFull",
    "NotWriter",
    "ReadOnly",
]
