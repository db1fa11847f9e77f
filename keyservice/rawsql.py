"""SQL on the request path, run on the DBAPI connection itself.

SQLAlchemy's statement machinery costs about 40 µs per statement; the rate-limit
hit and the use of a ``remaining`` key run a few statements on every request, so
they skip it. Statements are written with ``:name`` parameters (sqlite3's own
style) and rewritten once for drivers that want ``%(name)s`` (psycopg).

SQLite lets one connection write at a time, and a connection that finds the
database locked sleeps (1 ms, then longer) before it tries again: with every
worker writing on every request, those sleeps would cost more than the writes.
So on SQLite the workers of a machine queue for these transactions on a file
lock beside the database, which the kernel hands over the moment it is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError


@functools.lru_cache(maxsize=64)
def _for_driver(sql: str, paramstyle: str) -> str:
    # sqlite3 takes :name whatever paramstyle SQLAlchemy uses with it.
    return re.sub(r":(\w+)", r"%(\1)s", sql) if paramstyle in ("pyformat", "format") else sql


class RawTransaction:
    """One transaction on a pooled DBAPI connection."""

    def __init__(self, connection: Any, paramstyle: str) -> None:
        self._cursor = connection.cursor()
        self._paramstyle = paramstyle

    def execute(self, sql: str, params: dict[str, Any]) -> Any:
        """Run ``sql``; return the cursor (for ``fetchone`` and ``rowcount``)."""
        self._cursor.execute(_for_driver(sql, self._paramstyle), params)
        return self._cursor


_lock_files: dict[tuple[int, str], int] = {}


def _lock_file(engine: Engine) -> int | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    # One descriptor per process: a lock taken through a descriptor inherited over fork is shared.
    key = (os.getpid(), database)
    if key not in _lock_files:
        try:
            _lock_files[key] = os.open(f"{database}.writers", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return None  # the queue only saves time: SQLite's own locking still holds
    return _lock_files[key]


@contextmanager
def _sqlite_writer_queue(engine: Engine) -> Iterator[None]:
    lock_file = _lock_file(engine)
    if lock_file is None:
        yield
        return
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)


_held = threading.local()


def _connection(engine: Engine) -> Any:
    """This thread's DBAPI connection for ``engine``, checked out of the pool once and kept:
    checking one out and back in for every request costs more than the statements."""
    held: dict[int, Any] = _held.__dict__.setdefault("connections", {})
    if id(engine) not in held or held[id(engine)][0] != os.getpid():
        held[id(engine)] = (os.getpid(), engine.raw_connection())
    return held[id(engine)][1]


def _drop_connection(engine: Engine) -> None:
    pid, connection = _held.__dict__.get("connections", {}).pop(id(engine), (None, None))
    if connection is not None and pid == os.getpid():
        connection.invalidate()  # after an error it may be broken: the pool makes a new one


@contextmanager
def raw_transaction(engine: Engine, writes: bool = True) -> Iterator[RawTransaction]:
    """A transaction on this thread's DBAPI connection: committed at the end, rolled back on
    error. One that ``writes`` queues with the other writers on SQLite.

    Driver errors are raised as SQLAlchemy's ``DBAPIError``, as everywhere else.
    """
    driver_error = engine.dialect.loaded_dbapi.Error
    try:
        connection = _connection(engine)
        with _sqlite_writer_queue(engine) if writes else contextlib.nullcontext():
            yield RawTransaction(connection, engine.dialect.paramstyle)
            connection.commit()
    except driver_error as error:
        _drop_connection(engine)
        raise DBAPIError.instance(None, None, error, driver_error) from error
    except BaseException:
        _drop_connection(engine)
        raise
