"""SQL on the request path, run on the DBAPI connection itself.

SQLAlchemy's statement machinery costs about 40 µs per statement, and a pool's
checkout and check-in about 15 µs more; the use of a ``remaining`` key writes on
every request, and each worker reads each key's row after a start, so they skip
both: one statement, in autocommit mode, on the thread's own SQLite connection or
a pooled PostgreSQL one. Statements are
written with ``:name`` parameters (sqlite3's own style) and rewritten once for
drivers that want ``%(name)s`` (psycopg).

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
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Dialect, Engine
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


class _OwnConnections(threading.local):
    """A thread's own SQLite connections in autocommit mode, one per engine and process."""

    def __init__(self) -> None:
        self.by_engine: weakref.WeakKeyDictionary[Engine, tuple[int, Any]] = weakref.WeakKeyDictionary()


_own = _OwnConnections()


def _own_sqlite_connection(engine: Engine) -> Any:
    # Out of the pool for good: a checkout and check-in would cost more than the statement.
    # The engine's connect hooks have run on it (WAL, busy timeout).
    owned = _own.by_engine.get(engine)
    if owned is None or owned[0] != os.getpid():
        pooled = engine.raw_connection()
        pooled.detach()
        connection = cast(Any, pooled.dbapi_connection)
        connection.isolation_level = None  # autocommit: the statement is its own transaction
        owned = _own.by_engine[engine] = (os.getpid(), connection)
    return owned[1]


def _forget_own_connection(engine: Engine) -> None:
    owned = _own.by_engine.pop(engine, None)
    if owned is not None and owned[0] == os.getpid():
        with contextlib.suppress(Exception):
            owned[1].close()


def writers_queue(engine: Engine) -> contextlib.AbstractContextManager[None]:
    """This machine's place in the queue of the engine's writers, to hold with ``with``
    (SQLite; elsewhere nothing)."""
    return _writers_queue(engine) or contextlib.nullcontext()


def execute(engine: Engine, sql: str, params: dict[str, Any], writes: bool = True) -> list[tuple[Any, ...]]:
    """Run ``sql`` as a transaction of its own (autocommit: one round trip, no BEGIN or COMMIT);
    return its rows. One that ``writes`` queues with the other writers on SQLite.

    On SQLite the statement runs on the calling thread's own connection; on PostgreSQL, on
    one of the pool's. Driver errors are raised as SQLAlchemy's ``DBAPIError``, as everywhere else.
    The values are the driver's: see :func:`result_processors`.
    """
    driver_error = engine.dialect.loaded_dbapi.Error
    if engine.dialect.name == "sqlite":
        try:
            connection = _own_sqlite_connection(engine)
            with writers_queue(engine) if writes else contextlib.nullcontext():
                # All of it: the autocommit transaction ends when the statement has run to its end.
                return [tuple(row) for row in connection.execute(sql, params).fetchall()]
        except driver_error as error:
            _forget_own_connection(engine)  # it may be broken
            raise DBAPIError.instance(None, None, error, driver_error) from error
    pooled = None
    try:
        pooled = engine.raw_connection()
        # The driver's own connection: every call through the pool's proxy costs a lookup.
        connection = cast(Any, pooled.dbapi_connection)
        connection.autocommit = True
        try:
            cursor = connection.cursor()
            cursor.execute(_for_driver(sql) if engine.dialect.paramstyle in ("pyformat", "format") else sql, params)
            rows = [tuple(row) for row in cursor.fetchall()] if cursor.description is not None else []
        finally:
            connection.autocommit = False  # as the pool hands it to everyone else
    except driver_error as error:
        if pooled is not None:
            pooled.invalidate()  # it may be broken: closed, not pooled again
        raise DBAPIError.instance(None, None, error, driver_error) from error
    except BaseException:
        if pooled is not None:
            pooled.invalidate()
        raise
    pooled.close()  # back to the pool
    return rows


class Transaction:
    """Statements run in one transaction by :func:`transaction`; raise anything to roll it back."""

    def __init__(self, run: Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]) -> None:
        self.run = run


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Transaction]:
    """Several statements as one transaction on the driver's connection (as :func:`execute`: the
    thread's own SQLite connection, after the machine's other writers, its write lock taken at
    BEGIN; a pooled PostgreSQL one). Committed when the block ends, rolled back if it raises."""
    driver_error = engine.dialect.loaded_dbapi.Error
    if engine.dialect.name == "sqlite":
        try:
            connection = _own_sqlite_connection(engine)
            with writers_queue(engine):
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield Transaction(lambda sql, params: [tuple(row) for row in connection.execute(sql, params)])
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
        except driver_error as error:
            _forget_own_connection(engine)
            raise DBAPIError.instance(None, None, error, driver_error) from error
        return
    pooled = engine.raw_connection()
    connection = cast(Any, pooled.dbapi_connection)
    try:
        cursor = connection.cursor()

        def run(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
            cursor.execute(_for_driver(sql), params)
            return [tuple(row) for row in cursor.fetchall()] if cursor.description is not None else []

        try:
            yield Transaction(run)
        except driver_error:
            raise  # the connection may be broken: invalidated below
        except BaseException:
            connection.rollback()  # the caller's refusal: the connection is sound, back to the pool
            pooled.close()
            raise
        connection.commit()
    except driver_error as error:
        pooled.invalidate()
        raise DBAPIError.instance(None, None, error, driver_error) from error
    pooled.close()


def execute_one(engine: Engine, sql: str, params: dict[str, Any], writes: bool = True) -> tuple[Any, ...] | None:
    """:func:`execute`, for its first row, or None."""
    rows = execute(engine, sql, params, writes)
    return rows[0] if rows else None


def result_processors(dialect: Dialect, columns: Sequence[ColumnElement[Any]]) -> list[Callable[[Any], Any]]:
    """For each of ``columns``, what turns the driver's value into the column type's (as
    SQLAlchemy's results do: a SQLite JSON text or timestamp string, say)."""
    processors = [column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns]
    return [processor or _as_it_is for processor in processors]


def _as_it_is(value: Any) -> Any:
    return value
