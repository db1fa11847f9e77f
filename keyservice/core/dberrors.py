"""Which database errors mean "the storage is unavailable", and how to name one in a log.

An outage is the database not answering (stopped, unreachable, its file gone),
not taking writes (a full disk, a read-only volume, a standby after a failover)
or no connection coming free in time. keyservice answers those 503
``UNAVAILABLE`` with ``Retry-After``; any other database error (a missing
table, a constraint) is a bug and stays a 500.

A database error's text holds the statement and its parameters (key hashes,
names), and a connection error's the server's address: logs name the error's
class only (:func:`error_name`).
"""

from __future__ import annotations

import re

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# SQLite's primary result codes for a database that cannot be read or written now:
# BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL. Not ERROR (1), which
# sqlite3 also raises as OperationalError for a missing table or a syntax error.
_SQLITE_UNAVAILABLE = frozenset({5, 6, 7, 8, 10, 13, 14, 15})
# PostgreSQL SQLSTATE classes: connection exception, insufficient resources (disk full,
# out of memory, too many connections), operator intervention (shutting down), system
# error (I/O); and one code, a read-only transaction (a standby, or a server put read-only).
_SQLSTATE_CLASSES_UNAVAILABLE = frozenset({"08", "53", "57", "58"})
_SQLSTATE_READ_ONLY = "25006"
_CODE = re.compile(r"[A-Z0-9_]{1,40}")


def storage_unavailable(error: BaseException) -> bool:
    """Whether ``error`` (raised by SQLAlchemy) means the database cannot serve the request now."""
    if isinstance(error, PoolTimeout):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated or isinstance(error, InterfaceError):
        return True
    sqlite_code = getattr(error.orig, "sqlite_errorcode", None)
    if sqlite_code is not None:
        return sqlite_code & 0xFF in _SQLITE_UNAVAILABLE
    sqlstate = getattr(error.orig, "sqlstate", None)
    if not sqlstate:
        # No server answered at all (refused, timed out), or a driver error without a code.
        return isinstance(error, OperationalError)
    return sqlstate == _SQLSTATE_READ_ONLY or sqlstate[:2] in _SQLSTATE_CLASSES_UNAVAILABLE


def error_name(error: BaseException) -> str:
    """The driver's class of a database error and its code, if it has one (``OperationalError
    SQLITE_FULL``, ``DiskFull 53100``), else the error's own class: safe to log."""
    original = error.orig if isinstance(error, DBAPIError) else None
    code = getattr(original, "sqlite_errorname", None) or getattr(original, "sqlstate", None)
    name = type(original or error).__name__
    return f"{name} {code}" if isinstance(code, str) and _CODE.fullmatch(code) else name
