"""Putting a SQLite file in WAL mode when several processes open it at once."""

from __future__ import annotations

import sqlite3
import time

_RETRY_EVERY = 0.002  # seconds


def use_wal(connection: sqlite3.Connection, timeout: float) -> None:
    """Put the file of ``connection`` in WAL mode, waiting up to ``timeout`` seconds for the other
    connections to it.

    A switch needs the file to itself; when another connection holds it, SQLite answers
    ``SQLITE_BUSY`` at once, without waiting in its busy handler (the switch first reads the
    file's header, and a reader waiting for a writer could wait on one that waits for it), so
    workers that open a new file together would fail. Each try is a statement of its own: it
    lets go of the file before the next.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL").fetchall()
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(_RETRY_EVERY)
