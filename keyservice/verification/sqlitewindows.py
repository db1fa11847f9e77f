"""The embedded default's rate-limit windows: a SQLite file every worker of the machine shares.

A hit is one SQL statement in autocommit mode: it takes the file's write lock,
reads the window's slots, decides, counts and commits, and releases the lock, all
inside one ``sqlite3_step`` (Python's ``sqlite3`` lets the other threads run
meanwhile). No Python runs while the lock is held, so a worker thread that
waits for its process's interpreter lock never holds up another worker.

The statement is the strategy of ``slidingwindow.py`` in SQL. A window is one
row per slot that counts (key, period, slot: the primary key of a ``WITHOUT
ROWID`` table, so a hit is one short range of one B-tree), and a trigger
deletes a window's slots that stopped counting whenever a newer slot is
written: a key's window never holds more than ``SLOTS + 1`` rows, whatever its
limit. What the request met is written into the slot's row and copied by this
connection's ``TEMP`` triggers into a table of its own, read after the commit
(``RETURNING`` would hold the write lock until Python has fetched the rows).

Windows whose every request has stopped counting are swept every
``SWEEP_INTERVAL`` seconds, ``SWEEP_BATCH`` rows at a time, and all at once if
the file ever reaches ``MAX_PAGES`` (or the disk is full). Commits are not
flushed to disk (``synchronous=OFF``, WAL): a killed worker loses nothing it
committed, and only a crash of the machine can lose windows, which lets at most
one period's burst through.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from functools import cache
from pathlib import Path

from .slidingwindow import SLOTS, Counted, Hit, WindowStorageError, slot_width

PAGE_SIZE = 4096
MAX_PAGES = 65_536  # 256 MiB: about two million windows counting in their current slot
BUSY_TIMEOUT = 5.0  # seconds a statement waits for another's write lock before failing
SWEEP_INTERVAL = 10.0
SWEEP_BATCH = 1000

# What each slot's row holds beside its count is what the last request counted there met.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS slots (
    key TEXT NOT NULL,
    period INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    count INTEGER NOT NULL,
    allowed INTEGER NOT NULL,
    total INTEGER NOT NULL,
    reset_at REAL NOT NULL,
    PRIMARY KEY (key, period, slot)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS slots_stop_counting AFTER INSERT ON slots BEGIN
    DELETE FROM slots WHERE key = NEW.key AND period = NEW.period AND slot < NEW.slot - {SLOTS};
END;
"""

# This connection's own: what its last hit met, written by the hit's statement and read after its commit.
_ANSWERS = """
CREATE TEMP TABLE answers (key TEXT, period INTEGER, allowed INTEGER, total INTEGER, reset_at REAL);
CREATE TEMP TRIGGER answered_new AFTER INSERT ON main.slots BEGIN
    INSERT INTO answers VALUES (NEW.key, NEW.period, NEW.allowed, NEW.total, NEW.reset_at);
END;
CREATE TEMP TRIGGER answered AFTER UPDATE OF allowed, total, reset_at ON main.slots BEGIN
    INSERT INTO answers VALUES (NEW.key, NEW.period, NEW.allowed, NEW.total, NEW.reset_at);
END;
"""

# Whether a row's slot stopped counting at ``now`` (?): the hit's own test, in the slot numbers
# Python's math.floor gives (the same divisions; CAST truncates, which is floor for times after 1970).
_STOPPED_COUNTING = f"slot + {SLOTS + 1} <= CAST(? / (period / {float(SLOTS)}) AS INTEGER)"


@cache
def _hit_statement(windows: int) -> str:
    """One request counted in ``windows`` windows, all or none. Each window's slots are those at
    or after its current slot less ``SLOTS`` (with a clock that stepped back, every slot it holds,
    since the trigger keeps none older than its newest less ``SLOTS``)."""
    asked = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * windows)
    # SQLite runs an INSERT ... SELECT that reads the table it writes to completion into a
    # temporary table first (insert.c: "A temp table must be used if the table being updated is
    # also one of the tables being read by the SELECT statement"), so the verdict and every
    # window's count are of the windows before this statement: tests/test_sqlite_windows.py
    # checks it. "WHERE true" lets the parser tell the SELECT's end from the upsert's ON CONFLICT.
    return f"""
WITH asked(position, key, period, now_slot, width, lim, cost) AS (VALUES {asked}),
standing AS (
    SELECT asked.key, asked.period, asked.width, asked.lim, asked.cost,
        max(asked.now_slot, coalesce(max(slots.slot), asked.now_slot)) AS slot,
        coalesce(sum(slots.count), 0) AS total,
        min(CASE WHEN slots.count > 0 THEN slots.slot END) AS oldest
    FROM asked LEFT JOIN slots
        ON slots.key = asked.key AND slots.period = asked.period AND slots.slot >= asked.now_slot - {SLOTS}
    GROUP BY asked.position
),
verdict(allowed) AS (SELECT NOT EXISTS (SELECT 1 FROM standing WHERE total + cost > lim))
INSERT INTO slots (key, period, slot, count, allowed, total, reset_at)
SELECT key, period, slot, iif(allowed, cost, 0), allowed, total + iif(allowed, cost, 0),
    (coalesce(oldest, slot) + {SLOTS + 1}) * width
FROM standing, verdict WHERE true
ON CONFLICT (key, period, slot) DO UPDATE SET
    count = count + excluded.count, allowed = excluded.allowed, total = excluded.total, reset_at = excluded.reset_at
"""


@cache
def _give_back_statement(windows: int) -> str:
    """Each window's cost taken back from its newest slots still counting, newest first."""
    asked = ", ".join(["(?, ?, ?, ?)"] * windows)
    return f"""
WITH asked(key, period, now_slot, cost) AS (VALUES {asked}),
taking AS (
    SELECT slots.key, slots.period, slots.slot,
        min(slots.count, max(0, asked.cost - (sum(slots.count) OVER newer - slots.count))) AS taken
    FROM asked JOIN slots
        ON slots.key = asked.key AND slots.period = asked.period AND slots.slot >= asked.now_slot - {SLOTS}
    WINDOW newer AS (PARTITION BY slots.key, slots.period ORDER BY slots.slot DESC)
)
UPDATE slots SET count = count - taking.taken
FROM taking
WHERE slots.key = taking.key AND slots.period = taking.period AND slots.slot = taking.slot AND taking.taken > 0
"""


_READ_ANSWERS = "DELETE FROM temp.answers RETURNING key, period, allowed, total, reset_at"
_BATCH_END = (
    "SELECT key, period, slot FROM slots WHERE (key, period, slot) > (?, ?, ?) ORDER BY 1, 2, 3 LIMIT 1 OFFSET ?"
)
_SWEEP_FROM = f"DELETE FROM slots WHERE (key, period, slot) > (?, ?, ?) AND {_STOPPED_COUNTING}"
_SWEEP_BETWEEN = f"{_SWEEP_FROM} AND (key, period, slot) <= (?, ?, ?)"
_SWEEP_ALL = f"DELETE FROM slots WHERE {_STOPPED_COUNTING}"
_BEFORE_EVERY_ROW = ("", -(2**63), -(2**63))


class SqliteWindows:
    """Rate-limit windows in a SQLite file at ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._next_sweep = 0.0
        self._swept_to = _BEFORE_EVERY_ROW

    def hit(self, key: str, limit: int, period: int) -> Hit:
        """Count one request of ``key`` against ``limit`` per ``period`` seconds: one statement."""
        return self.hit_all([Counted(key, limit, period)])[0]

    def hit_all(self, windows: list[Counted]) -> list[Hit]:
        """Count one request in every window of ``windows``, or in none: one statement."""
        if not windows:
            return []
        now = time.time()
        asked: list[object] = []
        for position, window in enumerate(windows):
            width = slot_width(window.period)
            asked += [position, window.key, window.period, math.floor(now / width), width, window.limit, window.cost]
        self._write(_hit_statement(len(windows)), asked)
        try:
            met = {
                (key, period): Hit(bool(allowed), total, reset_at)
                for key, period, allowed, total, reset_at in self._connection().execute(_READ_ANSWERS)
            }
        except sqlite3.Error as error:
            raise WindowStorageError("the rate-limit windows' answers cannot be read") from error
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            with suppress(WindowStorageError):  # the request is counted; the next sweep tries again
                self.sweep()
        return [met[window.key, window.period] for window in windows]

    def give_back(self, key: str, period: int) -> None:
        """Take back one request of ``key`` counted in its ``period`` window: one statement."""
        self.give_back_all([Counted(key, 0, period)])

    def give_back_all(self, windows: list[Counted]) -> None:
        """Take back from each window the cost a request was counted with: one statement."""
        now = time.time()
        asked: list[object] = []
        for window in windows:
            asked += [window.key, window.period, math.floor(now / slot_width(window.period)), window.cost]
        self._write(_give_back_statement(len(windows)), asked)

    def sweep(self, full: bool = False) -> int:
        """Delete the slots that stopped counting: in the next ``SWEEP_BATCH`` rows after the last
        sweep's, or in every row if ``full``. Return how many were deleted."""
        now = time.time()
        if full:
            return self._write(_SWEEP_ALL, [now])
        start = self._swept_to
        try:
            end = self._connection().execute(_BATCH_END, [*start, SWEEP_BATCH - 1]).fetchone()
        except sqlite3.Error as error:
            raise WindowStorageError("the rate-limit windows' file cannot be read") from error
        self._swept_to = end or _BEFORE_EVERY_ROW
        if end is None:
            return self._write(_SWEEP_FROM, [*start, now])
        return self._write(_SWEEP_BETWEEN, [*start, now, *end])

    def answers(self) -> bool:
        """Whether the file can be opened and read."""
        try:
            self._connection().execute("SELECT 1 FROM slots LIMIT 1").fetchall()
        except (sqlite3.Error, WindowStorageError):
            return False
        return True

    def _write(self, statement: str, parameters: Sequence[object]) -> int:
        """Run one writing statement; when the file is full, sweep every row and try once more.
        Return how many rows it changed."""
        try:
            try:
                return self._connection().execute(statement, parameters).rowcount
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode != sqlite3.SQLITE_FULL or statement == _SWEEP_ALL:
                    raise
            self.sweep(full=True)
            return self._connection().execute(statement, parameters).rowcount
        except sqlite3.Error as error:
            raise WindowStorageError(f"the rate-limit windows' file cannot be written ({error})") from error

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened in this process: one made before a ``fork`` is kept,
        unused and unclosed (closing it would touch the parent's locks)."""
        connections: dict[int, sqlite3.Connection] | None = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
        connection = connections.get(os.getpid())
        if connection is None:
            connection = connections[os.getpid()] = _opened(self._path)
        return connection


def _opened(path: Path) -> sqlite3.Connection:
    """A connection to the windows' file at ``path``, made with mode 0600 if it is new (SQLite
    gives its ``-wal`` and ``-shm`` files the same mode), in WAL mode with no flushing."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            connection.execute("PRAGMA journal_mode = WAL")
            for pragma in ("synchronous = OFF", f"max_page_count = {MAX_PAGES}", "temp_store = MEMORY"):
                connection.execute(f"PRAGMA {pragma}")
            connection.executescript(_SCHEMA + _ANSWERS)
        except sqlite3.Error:
            connection.close()
            raise
    except (OSError, sqlite3.Error) as error:
        raise WindowStorageError(f"the rate-limit windows' file cannot be opened ({error})") from error
    return connection
