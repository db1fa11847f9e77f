"""The embedded default's rate-limit windows: a SQLite file every worker of the machine shares.

A hit is one SQL statement in autocommit mode: it takes the file's write lock,
reads the window's slots, decides, counts and commits, and releases the lock, all
inside one ``sqlite3_step`` (Python's ``sqlite3`` lets the other threads run
meanwhile). No Python runs while the lock is held, so a worker thread that
waits for its process's interpreter lock never holds up another worker.

The statement is the strategy of ``slidingwindow.py`` in SQL. A window is one
row (key, period: the primary key of a ``WITHOUT ROWID`` table, so a hit is one
seek of one B-tree) holding its newest slot and the counts of its ``SLOTS + 1``
slots, slot ``s`` in column ``s % (SLOTS + 1)``: a ring, so a hit in the newest
slot shifts nothing, and a hit in a newer one zeroes the columns whose slots
stopped counting. The row also keeps the window's count and when its oldest
request stops counting, and what the last request counted in it met. A single
window's hit is a plain ``INSERT ... VALUES ... ON CONFLICT DO UPDATE`` whose SET
expressions read the row as it was; several windows' hit, all or none, is one
``INSERT ... SELECT`` upsert whose verdict is of every window before it. A
refused hit writes its row too, and this connection's ``TEMP`` triggers copy what
it met into a table of its own, read after the commit (``RETURNING`` would hold
the write lock until Python has fetched the rows). The view ``slots`` shows the
windows one row per slot.

Windows whose every request has stopped counting are swept every
``SWEEP_INTERVAL`` seconds, ``SWEEP_BATCH`` windows at a time, and all at once if
the file ever reaches ``MAX_PAGES`` (or the disk is full). Commits are not
flushed to disk (``synchronous=OFF``, WAL): a killed worker loses nothing it
committed, and only a crash of the machine can lose windows, which lets at most
one period's burst through.
"""

from __future__ import annotations

import math
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from functools import cache
from pathlib import Path

from ..core.sqlitewal import use_wal
from .slidingwindow import SLOTS, Counted, Hit, WindowStorageError, slot_width

PAGE_SIZE = 4096
MAX_PAGES = 65_536  # 256 MiB: about two million windows counting in their current slot
BUSY_TIMEOUT = 5.0  # seconds a statement waits for another's write lock before failing
SWEEP_INTERVAL = 10.0
SWEEP_BATCH = 1000

_RING = SLOTS + 1  # a window's counts: column c<j> counts the requests of its slot congruent to j


def _age(slot: str, column: int) -> str:
    """How many slots before ``slot`` the slot counted in column ``column`` is (0 to ``SLOTS``)."""
    return f"((({slot}) - {column}) % {_RING} + {_RING}) % {_RING}"


_COLUMNS = range(_RING)
_COUNTS = ", ".join(f"c{j}" for j in _COLUMNS)

# A window is one row: its newest slot, the count of each of its SLOTS + 1 slots (slot s in column
# s % (SLOTS + 1)), their sum (``total``), when the oldest request counted stops counting
# (``reset_at``), and whether the last request was let through: every statement keeps them true.
# ``slots`` shows it one row per slot that counts (and the newest one, even empty), as the tests
# and operators read the windows.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS windows (
    key TEXT NOT NULL,
    period INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    {", ".join(f"c{j} INTEGER NOT NULL" for j in _COLUMNS)},
    allowed INTEGER NOT NULL,
    total INTEGER NOT NULL,
    reset_at REAL NOT NULL,
    PRIMARY KEY (key, period)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS slots (key, period, slot, count) AS {
    " UNION ALL ".join(
        f"SELECT key, period, slot - {_age('slot', j)}, c{j} FROM windows WHERE c{j} > 0 OR {_age('slot', j)} = 0"
        for j in _COLUMNS
    )
};
"""

# This connection's own: what its hits met, a row per window, written by the hit's statement and read
# after its commit (a window's row is replaced by its next hit; the rows are cleared now and then).
_ANSWERS = """
CREATE TEMP TABLE answers (
    key TEXT, period INTEGER, allowed INTEGER, total INTEGER, reset_at REAL, PRIMARY KEY (key, period)
) WITHOUT ROWID;
CREATE TEMP TRIGGER answered_new AFTER INSERT ON main.windows BEGIN
    INSERT INTO answers VALUES (NEW.key, NEW.period, NEW.allowed, NEW.total, NEW.reset_at) ON CONFLICT DO UPDATE
        SET allowed = excluded.allowed, total = excluded.total, reset_at = excluded.reset_at;
END;
CREATE TEMP TRIGGER answered AFTER UPDATE OF allowed ON main.windows BEGIN
    INSERT INTO answers VALUES (NEW.key, NEW.period, NEW.allowed, NEW.total, NEW.reset_at) ON CONFLICT DO UPDATE
        SET allowed = excluded.allowed, total = excluded.total, reset_at = excluded.reset_at;
END;
"""

# Whether a window stopped counting at ``now`` (?): the hit's own test, in the slot numbers
# Python's math.floor gives (the same divisions; CAST truncates, which is floor for times after 1970).
_STOPPED_COUNTING = f"slot + {_RING} <= CAST(? / (period / {float(SLOTS)}) AS INTEGER)"


def _kept(slot: str, count: str, now: str, column: int) -> str:
    """The count of ``column`` of a window whose newest slot is ``slot``, if it still counts at slot ``now``."""
    return f"iif({_age(slot, column)} + max(0, {now} - ({slot})) <= {SLOTS}, {count}, 0)"


def _oldest(slot: str, kept: list[str]) -> str:
    """How many slots before ``slot`` the oldest slot with requests is (0 if none has)."""
    return "max(0, " + ", ".join(f"iif({kept[j]} > 0, {_age(slot, j)}, 0)" for j in _COLUMNS) + ")"


def _upsert_hit() -> str:
    """One request counted in one window (?1 key, ?2 period, ?3 current slot, ?4 slot width, ?5 limit,
    ?6 cost): one upsert of the window's row, one seek of its primary key. Its SET expressions read
    the row as it was, so the verdict and the counts are the strategy's on the window before it.
    While the current slot is still the window's newest (or the clock stepped back), nothing
    shifts: the window's count is its ``total`` and its oldest request's slot is its ``reset_at``'s,
    which every statement keeps (a request counted in the newest slot leaves both as they were)."""
    unmoved = "?3 <= slot"
    kept = [_kept("slot", f"c{j}", "?3", j) for j in _COLUMNS]
    newest = "max(?3, slot)"
    standing = f"CASE WHEN {unmoved} THEN total ELSE {' + '.join(kept)} END"
    allowed = f"({standing}) + ?6 <= ?5"
    fresh = ", ".join(f"iif(?3 % {_RING} = {j} AND ?6 <= ?5, ?6, 0)" for j in _COLUMNS)
    counted = ", ".join(
        f"c{j} = CASE WHEN {unmoved} THEN iif(slot % {_RING} = {j} AND total + ?6 <= ?5, c{j} + ?6, c{j}) "
        f"WHEN ?3 % {_RING} != {j} THEN {kept[j]} WHEN {allowed} THEN {kept[j]} + ?6 ELSE {kept[j]} END"
        for j in _COLUMNS
    )
    return f"""
INSERT INTO windows (key, period, slot, {_COUNTS}, allowed, total, reset_at)
VALUES (?1, ?2, ?3, {fresh}, ?6 <= ?5, iif(?6 <= ?5, ?6, 0), (?3 + {_RING}) * ?4)
ON CONFLICT (key, period) DO UPDATE SET
    slot = {newest}, {counted}, allowed = {allowed},
    total = CASE WHEN {allowed} THEN ({standing}) + ?6 ELSE {standing} END,
    reset_at = CASE WHEN {unmoved} THEN reset_at ELSE (?3 - {_oldest("?3", kept)} + {_RING}) * ?4 END
"""


_HIT = _upsert_hit()


@cache
def _hit_statement(windows: int) -> str:
    """One request counted in ``windows`` windows, all or none: each window's counts shifted to
    the current slot (with a clock that stepped back, its newest slot's) and summed, the verdict of
    every window's sum, then each window's new row. SQLite runs an INSERT ... SELECT that reads the
    table it writes to completion into a temporary table first (insert.c: "A temp table must be
    used if the table being updated is also one of the tables being read by the SELECT statement"),
    so the verdict and every window's count are of the windows before this statement:
    tests/test_sqlite_windows.py checks it. "WHERE true" lets the parser tell the SELECT's end from
    the upsert's ON CONFLICT."""
    asked = ", ".join(["(?, ?, ?, ?, ?, ?)"] * windows)
    kept = [_kept("windows.slot", f"windows.c{j}", "asked.now_slot", j) for j in _COLUMNS]
    unmoved = "asked.now_slot <= windows.slot"
    kept_as = ", ".join(
        f"CASE WHEN windows.slot IS NULL THEN 0 WHEN {unmoved} THEN windows.c{j} ELSE {kept[j]} END AS k{j}"
        for j in _COLUMNS
    )
    counted = ", ".join(f"k{j} + iif(allowed AND slot % {_RING} = {j}, cost, 0)" for j in _COLUMNS)
    oldest = _oldest("slot", [f"k{j}" for j in _COLUMNS])
    return f"""
WITH asked(key, period, now_slot, width, lim, cost) AS (VALUES {asked}),
standing AS MATERIALIZED (
    SELECT asked.key, asked.period, asked.width, asked.lim, asked.cost,
        max(asked.now_slot, coalesce(windows.slot, asked.now_slot)) AS slot, {kept_as},
        CASE WHEN windows.slot IS NULL THEN 0 WHEN {unmoved} THEN windows.total ELSE {" + ".join(kept)} END
            AS standing_total,
        CASE WHEN windows.slot IS NULL THEN (asked.now_slot + {_RING}) * asked.width
            WHEN {unmoved} THEN windows.reset_at END AS unmoved_reset_at
    FROM asked LEFT JOIN windows ON windows.key = asked.key AND windows.period = asked.period
),
verdict(allowed) AS (SELECT NOT EXISTS (SELECT 1 FROM standing WHERE standing_total + cost > lim))
INSERT INTO windows (key, period, slot, {_COUNTS}, allowed, total, reset_at)
SELECT key, period, slot, {counted}, allowed, standing_total + iif(allowed, cost, 0),
    coalesce(unmoved_reset_at, (slot - {oldest} + {_RING}) * width)
FROM standing, verdict WHERE true
ON CONFLICT (key, period) DO UPDATE SET
    slot = excluded.slot, {", ".join(f"c{j} = excluded.c{j}" for j in _COLUMNS)},
    allowed = excluded.allowed, total = excluded.total, reset_at = excluded.reset_at
"""


@cache
def _give_back_statement(windows: int) -> str:
    """Each window's cost taken back from its newest slots still counting, newest first: from each
    column, what is left of the cost after the columns of newer slots still counting. The window's
    ``total`` and ``reset_at`` follow its counts (the hit's statement reads them)."""
    asked = ", ".join(["(?, ?, ?, ?)"] * windows)
    kept = [_kept("windows.slot", f"windows.c{j}", "asked.now_slot", j) for j in _COLUMNS]
    ages = [_age("windows.slot", j) for j in _COLUMNS]

    def taken(j: int) -> str:
        newer = " + ".join(f"iif({ages[k]} < {ages[j]}, {kept[k]}, 0)" for k in _COLUMNS if k != j)
        return f"min({kept[j]}, max(0, asked.cost - ({newer})))"

    left = [f"c{j} - {taken(j)}" for j in _COLUMNS]
    oldest = _oldest("windows.slot", left)
    return f"""
WITH asked(key, period, now_slot, cost) AS (VALUES {asked})
UPDATE windows SET {", ".join(f"c{j} = {left[j]}" for j in _COLUMNS)},
    total = total - ({" + ".join(taken(j) for j in _COLUMNS)}),
    reset_at = (windows.slot - {oldest} + {_RING}) * (windows.period / {float(SLOTS)})
FROM asked WHERE windows.key = asked.key AND windows.period = asked.period
"""


_READ_ANSWERS = "DELETE FROM temp.answers RETURNING key, period, allowed, total, reset_at"
_READ_ANSWER = "SELECT allowed, total, reset_at FROM temp.answers WHERE key = ? AND period = ?"
_FORGET_ANSWERS = "DELETE FROM temp.answers"
ANSWERS_KEPT = 1000  # a thread's single hits between two clearings of its connection's answers
_BATCH_END = "SELECT key, period FROM windows WHERE (key, period) > (?, ?) ORDER BY 1, 2 LIMIT 1 OFFSET ?"
_SWEEP_FROM = f"DELETE FROM windows WHERE (key, period) > (?, ?) AND {_STOPPED_COUNTING}"
_SWEEP_BETWEEN = f"{_SWEEP_FROM} AND (key, period) <= (?, ?)"
_SWEEP_ALL = f"DELETE FROM windows WHERE {_STOPPED_COUNTING}"
_BEFORE_EVERY_ROW = ("", -(2**63))


class SqliteWindows:
    """Rate-limit windows in a SQLite file at ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._next_sweep = 0.0
        self._swept_to = _BEFORE_EVERY_ROW

    def hit(self, key: str, limit: int, period: int) -> Hit:
        """Count one request of ``key`` against ``limit`` per ``period`` seconds: one statement,
        the upsert of the window's row."""
        return self._hit_one(key, limit, period, 1)

    def _hit_one(self, key: str, limit: int, period: int, cost: int) -> Hit:
        """One window's hit: its answer is read by the window's key (the answer of each window this
        connection counted in stays until it is replaced, or the answers are cleared every
        ``ANSWERS_KEPT`` hits of the thread or by a hit of several windows)."""
        now = time.time()
        width = slot_width(period)
        self._write(_HIT, (key, period, math.floor(now / width), width, limit, cost))
        local = self._local
        try:
            ((allowed, total, reset_at),) = local.connection.execute(_READ_ANSWER, (key, period)).fetchall()
            local.hits += 1
            if local.hits >= ANSWERS_KEPT:
                local.hits = 0
                local.connection.execute(_FORGET_ANSWERS)
        except (sqlite3.Error, ValueError) as error:
            raise WindowStorageError("the rate-limit windows' answers cannot be read") from error
        if now >= self._next_sweep:
            self._sweep_now(now)
        return Hit(bool(allowed), total, reset_at)

    def hit_all(self, windows: list[Counted]) -> list[Hit]:
        """Count one request in every window of ``windows``, or in none: one statement (for one
        window, the single hit's upsert)."""
        if len(windows) == 1:
            (window,) = windows
            return [self._hit_one(window.key, window.limit, window.period, window.cost)]
        if not windows:
            return []
        now = time.time()
        asked: list[object] = []
        for window in windows:
            width = slot_width(window.period)
            asked += [window.key, window.period, math.floor(now / width), width, window.limit, window.cost]
        self._write(_hit_statement(len(windows)), asked)
        try:
            met = {
                (key, period): Hit(bool(allowed), total, reset_at)
                for key, period, allowed, total, reset_at in self._connection().execute(_READ_ANSWERS)
            }
        except sqlite3.Error as error:
            raise WindowStorageError("the rate-limit windows' answers cannot be read") from error
        if now >= self._next_sweep:
            self._sweep_now(now)
        return [met[window.key, window.period] for window in windows]

    def _sweep_now(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        with suppress(WindowStorageError):  # the request is counted; the next sweep tries again
            self.sweep()

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
        """Delete the windows that stopped counting: in the next ``SWEEP_BATCH`` windows (rows) after
        the last sweep's, or in every row if ``full``. Return how many were deleted."""
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
            self._connection().execute("SELECT 1 FROM windows LIMIT 1").fetchall()
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
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            if hasattr(local, "connection"):
                _INHERITED.append(local.connection)
            local.connection, local.pid, local.hits = _opened(self._path), os.getpid(), 0
        return local.connection  # type: ignore[no-any-return]


# Connections a forked worker inherited from its parent: kept, so that none is closed here.
_INHERITED: list[sqlite3.Connection] = []


def _opened(path: Path) -> sqlite3.Connection:
    """A connection to the windows' file at ``path`` (made first if there is none: :func:`_made`),
    in WAL mode with no flushing."""
    try:
        if not path.exists():
            _made(path)
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            use_wal(connection, BUSY_TIMEOUT)  # a file made here is in WAL mode already
            for pragma in ("synchronous = OFF", f"max_page_count = {MAX_PAGES}", "temp_store = MEMORY"):
                connection.execute(f"PRAGMA {pragma}")
            # IMMEDIATE: the write lock is waited for before the schema is read, where a
            # reader's snapshot made stale by another opener could not become a writer.
            connection.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT; {_ANSWERS}")
        except sqlite3.Error:
            connection.close()
            raise
    except (OSError, sqlite3.Error) as error:
        raise WindowStorageError(f"the rate-limit windows' file cannot be opened ({error})") from error
    return connection


def _made(path: Path) -> None:
    """Make the windows' file whole (mode 0600, WAL, its tables) under a name of its own beside
    ``path``, then link it there, unless another process or thread did first.

    Workers and their threads open a new file at once: switching a file to WAL while others
    open it fails them (SQLite answers a busy file at once there, and threads of one process
    meet errors of its locks), so no connection ever sees the file before it is in WAL mode.
    SQLite gives the file's ``-wal`` and ``-shm`` files its mode.
    """
    descriptor, made = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".new")
    os.close(descriptor)
    try:
        connection = sqlite3.connect(made, isolation_level=None)
        try:
            connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.executescript(_SCHEMA)
        finally:
            connection.close()  # the last connection's close folds the WAL into the file
        with suppress(FileExistsError):
            os.link(made, path)
    finally:
        for leftover in (made, f"{made}-wal", f"{made}-shm"):
            with suppress(FileNotFoundError):
                os.remove(leftover)
