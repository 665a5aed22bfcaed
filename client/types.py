"""PEP 249 type objects and constructors.

`Cursor.description[i][1]` (the type code) is the column's declared type from the
schema, as written in CREATE TABLE ("INTEGER", "VARCHAR(20)", ...; "" for an
expression). The type objects compare equal to the declared types that SQLite's
type-affinity rules map to them (https://sqlite.org/datatype3.html#affinity_name_examples):

    NUMBER    declared type contains INT, REAL, FLOA, DOUB, NUM or DEC
    STRING    contains CHAR, CLOB or TEXT
    BINARY    contains BLOB
    DATETIME  contains DATE or TIME
    ROWID     is INTEGER (the only type a rowid alias column can have)

SQLite stores dates and times as text: Date(), Time() and Timestamp() build
`datetime` objects, which the client sends as ISO 8601 text (as sqlite3's default
adapters did), and values come back as `str`.
"""

from __future__ import annotations

import datetime
import time


class DBAPITypeObject:
    """Compares equal to every declared column type containing one of `markers`."""

    def __init__(self, name: str, *markers: str, exact: tuple[str, ...] = ()):
        self.name = name
        self._markers = markers
        self._exact = exact

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DBAPITypeObject):
            return other is self
        if not isinstance(other, str):
            return NotImplemented
        decl = other.upper()
        if decl.strip() in self._exact:
            return True
        return any(m in decl for m in self._markers)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<borealdb type {self.name}>"


STRING = DBAPITypeObject("STRING", "CHAR", "CLOB", "TEXT")
BINARY = DBAPITypeObject("BINARY", "BLOB")
NUMBER = DBAPITypeObject("NUMBER", "INT", "REAL", "FLOA", "DOUB", "NUM", "DEC")
DATETIME = DBAPITypeObject("DATETIME", "DATE", "TIME")
ROWID = DBAPITypeObject("ROWID", exact=("INTEGER",))

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime


def DateFromTicks(ticks: float) -> datetime.date:  # noqa: N802 - PEP 249 name
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:  # noqa: N802 - PEP 249 name
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:  # noqa: N802 - PEP 249 name
    return Timestamp(*time.localtime(ticks)[:6])


def Binary(data: bytes | bytearray | memoryview) -> bytes:  # noqa: N802 - PEP 249 name
    """A value to bind as a BLOB."""
    return bytes(data)


__all__ = [
    "BINARY",
    "Binary",
    "DATETIME",
    "Date",
    "DateFromTicks",
    "NUMBER",
    "ROWID",
    "STRING",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
]
