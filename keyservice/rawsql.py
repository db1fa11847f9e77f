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
The threads of one worker (gunicorn's gthread) queue on a lock of the process
first: ``flock`` belongs to the open file, which they share, so it cannot keep
them apart.
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
from typing import Any, cast

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError


# A quoted literal (left as it is), a percent sign, or a :name parameter (not a ::cast).
_TOKEN = re.compile(r"'(?:[^']|'')*'|%|(?<![:\w]):(\w+)")


def _rewritten(match: re.Match[str]) -> str:
    if match[1] is not None:
        return f"%({match[1]})s"
    return match[0].replace("%", "%%")  # psycopg reads % everywhere, literals included


@functools.lru_cache(maxsize=64)
def _for_driver(sql: str) -> str:
    """``sql`` with ``:name`` parameters in the ``%(name)s`` style psycopg reads."""
    return _TOKEN.sub(_rewritten, sql)


class RawTransaction:
    """One transaction on a DBAPI connection of the engine's pool."""

    def __init__(self, connection: Any, rewrite: bool) -> None:
        self._cursor = connection.cursor()
        self._rewrite = rewrite

    def execute(self, sql: str, params: dict[str, Any]) -> Any:
        """Run ``sql``; return the cursor (for ``fetchone`` and ``rowcount``)."""
        self._cursor.execute(_for_driver(sql) if self._rewrite else sql, params)
        return self._cursor


class _WritersQueue:
    """A process's place in the queue of one SQLite database's writers: a lock for its
    threads, then the file lock for its peers."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor = descriptor
        self._threads = threading.Lock()

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        finally:
            self._threads.release()


_queues: dict[tuple[int, str], _WritersQueue | None] = {}
_queues_lock = threading.Lock()


def _writers_queue(engine: Engine) -> _WritersQueue | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    # One descriptor per process: a lock taken through a descriptor inherited over fork is shared.
    key = (os.getpid(), database)
    try:
        return _queues[key]
    except KeyError:
        pass
    with _queues_lock:  # a worker's threads may all write first at once: one descriptor, one lock
        if key not in _queues:
            try:
                _queues[key] = _WritersQueue(os.open(f"{database}.writers", os.O_RDWR | os.O_CREAT, 0o600))
            except OSError:
                _queues[key] = None  # the queue only saves time: SQLite's own locking still holds
        return _queues[key]


@contextmanager
def raw_transaction(engine: Engine, writes: bool = True, one_statement: bool = False) -> Iterator[RawTransaction]:
    """A transaction on a DBAPI connection of the pool: committed at the end, rolled back on
    error. One that ``writes`` queues with the other writers on SQLite. A transaction of
    ``one_statement`` runs in autocommit mode on PostgreSQL: one round trip, not three
    (BEGIN, the statement, COMMIT).

    Driver errors are raised as SQLAlchemy's ``DBAPIError``, as everywhere else.
    """
    driver_error = engine.dialect.loaded_dbapi.Error
    queue = _writers_queue(engine) if writes else None
    pooled = None
    try:
        pooled = engine.raw_connection()
        # The driver's own connection: every call through the pool's proxy costs a lookup.
        connection = cast(Any, pooled.dbapi_connection)
        autocommit = one_statement and engine.dialect.name == "postgresql"
        with queue if queue is not None else contextlib.nullcontext():
            if autocommit:
                connection.autocommit = True
            try:
                # sqlite3 takes :name whatever paramstyle SQLAlchemy uses with it.
                yield RawTransaction(connection, engine.dialect.paramstyle in ("pyformat", "format"))
            finally:
                if autocommit:
                    connection.autocommit = False  # as the pool hands it to everyone else
            connection.commit()
    except driver_error as error:
        if pooled is not None:
            pooled.invalidate()  # it may be broken: closed, not pooled again
        raise DBAPIError.instance(None, None, error, driver_error) from error
    except BaseException:
        if pooled is not None:
            pooled.invalidate()
        raise
    else:
        pooled.close()  # back to the pool
