"""A key's remaining uses: one taken per valid request, in one SQL statement, refill included.

A key with ``remaining`` gives one use per valid request, taken by one atomic
``UPDATE ... RETURNING`` run through ``rawsql.py`` (no ORM, no pool checkout):
it never goes below zero, however many workers and threads take at once. A key
with a refill gets ``refill_amount`` back once per interval (at the day's or the
month's start, UTC) in that same statement, before the use is taken. A rotated
key's uses are its successor's (``quota_key_id``), looked up in the statement too.

The uses a worker's threads take of one key at the same moment are taken together,
in one statement (``groupcommit.py``); when fewer are left than the group wants,
each of its threads takes its own.

When a key is out of uses, ``on_exhausted`` (the store's
``announce_usage_exhausted``) is told, in a transaction of its own, at most once a
second per key in a worker: a flood of refusals is no flood of writes.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cachetools import TTLCache
from sqlalchemy import DateTime, Dialect, Engine
from sqlalchemy.orm import Session

from ..core import rawsql
from ..core.models import ApiKey, utcnow
from ..core.outcomes import KeyRecord
from .groupcommit import GroupCommit

# updated_at is for changes of settings, not for uses: these leave it as it is. A rotated key's
# uses are its successor's (quota_key_id), looked up in the same statement, never from a copy.
_QUOTA_KEY = f"COALESCE((SELECT quota_key_id FROM {ApiKey.__tablename__} WHERE id = :key_id), :key_id)"
_TAKE_USES = (
    f"UPDATE {ApiKey.__tablename__} SET remaining = remaining - :cost, usage_exhausted_at = NULL"
    f" WHERE id = {_QUOTA_KEY} AND (remaining IS NULL OR remaining >= :cost) RETURNING remaining"
)
# A refill due (once per interval: past the day's or month's start) and the use in the same
# statement: the use is taken from the refilled amount.
_REFILL_DUE = "refill_amount IS NOT NULL AND (refilled_at IS NULL OR refilled_at < :boundary)"
_REFILLED = f"CASE WHEN {_REFILL_DUE} THEN refill_amount ELSE remaining END"
_REFILL_AND_TAKE_USES = (
    f"UPDATE {ApiKey.__tablename__}"
    f" SET remaining = {_REFILLED} - :cost,"
    f" refilled_at = CASE WHEN {_REFILL_DUE} THEN :now ELSE refilled_at END"
    f" WHERE id = {_QUOTA_KEY} AND (remaining IS NULL OR {_REFILLED} >= :cost) RETURNING remaining"
)
# PostgreSQL commits a use without waiting for its WAL to reach the disk: the WAL writer
# flushes it within 3 x wal_writer_delay (200 ms). A crash of the server can lose the uses
# of that last moment (they come back to the key), never count one twice. For this
# transaction only (the statement's own, in autocommit mode), set from within the statement
# itself: no extra round trip.
_WITHOUT_WAITING_FOR_THE_WAL = {
    "postgresql": " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit",
    "sqlite": "",
}


@functools.lru_cache(maxsize=8)
def quota_statement(sql: str, dialect: str) -> str:
    """``sql`` (an ``UPDATE ... WHERE``) committed without waiting for the WAL on PostgreSQL."""
    head, returning = sql.split(" WHERE ", 1)
    return f"{head}{_WITHOUT_WAITING_FOR_THE_WAL[dialect]} WHERE {returning}"


@functools.lru_cache(maxsize=4)
def timestamp_binder(dialect: Dialect) -> Callable[[datetime], Any]:
    """How the dialect stores a timestamp column's value (SQLite: a string of its own format)."""
    return DateTime(timezone=True).bind_processor(dialect) or (lambda value: value)


def refill_boundary(now: datetime, interval: str) -> datetime:
    """The start (UTC) of the day or month ``now`` is in: a refill is due once past it."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if interval == "daily" else day.replace(day=1)


def take_uses(dialect: Dialect, record: KeyRecord, cost: int) -> tuple[str, dict[str, Any]]:
    """The statement, and its parameters, that takes ``cost`` uses of ``record``'s key (a due
    refill first) and answers what is left, or no row when fewer than ``cost`` are left."""
    params: dict[str, Any] = {"key_id": record.id, "cost": cost}
    sql = _TAKE_USES
    if record.refill_interval is not None:
        now = utcnow()
        as_column = timestamp_binder(dialect)
        params |= {"now": as_column(now), "boundary": as_column(refill_boundary(now, record.refill_interval))}
        sql = _REFILL_AND_TAKE_USES
    return quota_statement(sql, dialect.name), params


class Quota:
    """Takes keys' uses from the database ``engine()`` returns; see the module docstring.

    ``on_exhausted(session, key_id)`` is told when a key is out of uses; ``size`` bounds the
    keys this worker remembers having told it about.
    """

    def __init__(
        self, engine: Callable[[], Engine], on_exhausted: Callable[[Session, str], None] | None, size: int
    ) -> None:
        self._engine = engine
        self._on_exhausted = on_exhausted
        self._told: TTLCache[str, bool] = TTLCache(maxsize=size, ttl=1.0)
        self._lock = threading.Lock()
        self._writes: GroupCommit[tuple[Any, ...] | None] = GroupCommit()

    def take_one(self, record: KeyRecord) -> tuple[bool, int | None]:
        """Atomically take one use of ``record``'s key: whether one was left, and how many are
        left after it (None if the key has become unlimited). A due refill comes first. A key
        out of uses is announced (see the module docstring)."""
        engine = self._engine()

        def take(uses: int) -> tuple[Any, ...] | None:
            return rawsql.execute_one(engine, *take_uses(engine.dialect, record, uses))

        row, uses, place = self._writes.run(record.id, take)
        if row is None and uses > 1:
            row = take(1)  # fewer left than the group wanted: each takes its own, in turn
        elif row is not None and row[0] is not None:
            row = (row[0] + uses - 1 - place,)  # what was left after this caller's use
        if row is None:
            self.announce_exhausted(record.id)
            return False, 0
        return True, row[0]

    def announce_exhausted(self, key_id: str) -> None:
        """Tell ``on_exhausted`` that key ``key_id`` is out of uses (at most once a second here)."""
        engine = self._engine()
        if self._on_exhausted is None:
            return
        with self._lock:
            if key_id in self._told:
                return
            self._told[key_id] = True
        with Session(engine) as session, session.begin():
            self._on_exhausted(session, key_id)
