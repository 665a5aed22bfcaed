"""The borealdb exception hierarchy.

It follows PEP 249 (DB-API 2.0) so that database clients can catch the usual
classes, and adds precise subclasses for the failures of a distributed volume:

    Error
    ├── InterfaceError                 misuse of the client library
    └── DatabaseError
        ├── ProgrammingError           misuse of SQL (e.g. COMMIT with no transaction, MISUSE)
        │   └── InvalidRequest         malformed or oversized request; nothing was changed
        │       ├── TooLarge           statement, parameters or result over the limits (TOO_LARGE)
        │       └── BadParameters      wrong number, names or types of parameters (BAD_PARAMETERS)
        ├── IntegrityError             a UNIQUE, NOT NULL, CHECK or FOREIGN KEY constraint failed
        ├── DataError                  a value out of range (e.g. an int beyond 64 bits)
        ├── NotSupportedError
        ├── InternalError
        └── OperationalError           SQL errors as sqlite3 reports them (syntax error, no such table)
            ├── Unavailable            a node could not be reached or is overloaded; the request may be retried
            ├── QuorumLost             too few segments answered: a write or read quorum is missing
            ├── StaleEpoch             a newer writer took over: this one is fenced
            ├── VolumeFull             the volume reached its configured maximum size
            ├── NotWriter              a write was sent to a node that is not the writer
            ├── ReadOnly               the node or volume only serves reads
            ├── LockTimeout            waited too long for the write lock of another session's transaction
            ├── SessionExpired         the server forgot the session (idle timeout, restart); a
            │                          transaction open in it is gone
            └── OutcomeUnknown         the connection was lost while a COMMIT (or an autocommit
                                       write) was in flight: it may or may not have committed

Every class carries a stable `code` string that the wire protocol and logs use; an
error raised from a server answer has the server's code (e.g. "SYNTAX_ERROR") as
`code`, the server's message as its text, and `sqlite_code` (the SQLite extended
result code) when the server sent one.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every borealdb error (PEP 249 `Error`)."""

    code = "ERROR"
    sqlite_code: int | None = None

    def __init__(self, message: str = "", *, code: str | None = None, sqlite_code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if sqlite_code is not None:
            self.sqlite_code = sqlite_code


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


class TooLarge(InvalidRequest):
    """A statement, its parameters or its result is over the size limits. Nothing was changed."""

    code = "TOO_LARGE"


class BadParameters(InvalidRequest):
    """Wrong number, names or types of parameters. Nothing was changed."""

    code = "BAD_PARAMETERS"


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


class LockTimeout(OperationalError):
    """Waited too long for the write lock held by another session's transaction."""

    code = "LOCK_TIMEOUT"


class SessionExpired(OperationalError):
    """The server does not know the session any more (idle timeout, restart, failover).

    Raised only inside an explicit transaction, which is gone (rolled back): outside
    one, the client opens a new session transparently."""

    code = "SESSION_EXPIRED"


class OutcomeUnknown(OperationalError):
    """The connection was lost during COMMIT: the transaction may or may not have committed.

    Also raised when an autocommit write statement (its own transaction) was in flight.
    Read the data back to find out; do not blindly retry a non-idempotent write."""

    code = "OUTCOME_UNKNOWN"


__all__ = [
    "BadParameters",
    "Error",
    "LockTimeout",
    "OutcomeUnknown",
    "SessionExpired",
    "TooLarge",
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
