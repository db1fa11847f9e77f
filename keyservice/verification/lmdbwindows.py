"""The embedded default's rate-limit windows: an LMDB file every worker of the machine shares.

LMDB is a memory-mapped B-tree made for many processes on one machine: a write
transaction takes a lock in the file's lock file (a robust mutex, so a killed
worker's lock is taken back), and with ``sync=False`` its commit is a few memory
writes, no ``fsync``. Windows need not survive a restart (losing them lets at
most one period's burst through), so nothing is flushed to disk on purpose.

LMDB's rules, and how they are kept: an environment must not be used across
``fork`` (gunicorn forks its workers), so each process opens its own on first
use; a process must not open the same file twice, so there is one per process
and path; a transaction belongs to the thread that began it (gthread workers
run many threads: each hit begins and ends its own, and py-lmdb lets the other
threads run while one waits for the lock).

Space is bounded: one entry of ``SLOTS + 1`` counters per key and period (a
changed limit keeps counting in the same entry; a changed period starts a new
one), in a file mapped at ``MAP_SIZE``. Entries whose every request has stopped
counting are swept every ``SWEEP_INTERVAL`` seconds, a batch at a time, and all
at once if the map ever fills.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import lmdb

from . import slidingwindow
from .slidingwindow import SLOTS, Counted, Counts, Hit, WindowStorageError

MAP_SIZE = 256 * 1024 * 1024  # sparse: costs only what is written; about a million keys' windows
SWEEP_INTERVAL = 10.0
SWEEP_BATCH = 1000
# expires_at, slot, then the SLOTS + 1 counts, newest first.
_ENTRY = struct.Struct(f"<dq{SLOTS + 1}q")
_EXPIRES_AT = struct.Struct("<d")
T = TypeVar("T")


_environments: dict[tuple[int, Path], lmdb.Environment] = {}
_environments_lock = threading.Lock()


def environment(path: Path) -> lmdb.Environment:
    """This process's one LMDB environment on the file at ``path`` (opened on first use)."""
    key = (os.getpid(), path)
    opened = _environments.get(key)
    if opened is None:
        with _environments_lock:
            opened = _environments.get(key)
            if opened is None:
                opened = lmdb.open(
                    str(path),
                    map_size=MAP_SIZE,
                    subdir=False,
                    sync=False,
                    metasync=False,
                    readahead=False,
                    max_dbs=0,
                    mode=0o600,
                )
                _environments[key] = opened
    return opened


class LmdbWindows:
    """Rate-limit windows in an LMDB file at ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._next_sweep = 0.0
        self._swept_to = b""

    def hit(self, key: str, limit: int, period: int) -> Hit:
        """Count one request of ``key`` against ``limit`` per ``period`` seconds, atomically."""
        return self._written(lambda: self._hit(key, limit, period))

    def hit_all(self, windows: list[Counted]) -> list[Hit]:
        """Count one request in every window of ``windows``, or in none (one write transaction)."""
        return self._written(lambda: self._hit_all(windows))

    def _written(self, write: Callable[[], T]) -> T:
        try:
            return write()
        except lmdb.MapFullError:
            self.sweep(full=True)
            try:
                return write()
            except lmdb.Error as error:
                raise WindowStorageError("the rate-limit windows' file is full") from error
        except lmdb.Error as error:
            raise WindowStorageError("the rate-limit windows' file cannot be written") from error

    def _hit_all(self, windows: list[Counted]) -> list[Hit]:
        now = time.time()
        entry_keys = [f"{window.key}/{window.period}".encode() for window in windows]
        with environment(self._path).begin(write=True) as transaction:
            stored = [_window_of(transaction.get(entry_key)) for entry_key in entry_keys]
            after = slidingwindow.hit_all(
                [(old, window.limit, window.period, window.cost) for old, window in zip(stored, windows, strict=True)],
                now,
            )
            if after[0][1].allowed:
                for entry_key, window, (counts, _) in zip(entry_keys, windows, after, strict=True):
                    transaction.put(entry_key, _entry(counts, window.period))
        return [result for _, result in after]

    def give_back_all(self, windows: list[Counted]) -> None:
        """Take back from each window the cost a request was counted with (one write transaction)."""
        now = time.time()
        try:
            with environment(self._path).begin(write=True) as transaction:
                for window in windows:
                    entry_key = f"{window.key}/{window.period}".encode()
                    counts = _window_of(transaction.get(entry_key))
                    if counts is not None:
                        given = slidingwindow.give_back(counts, window.period, now, window.cost)
                        transaction.put(entry_key, _entry(given, window.period))
        except lmdb.Error as error:
            raise WindowStorageError("the rate-limit windows' file cannot be written") from error

    def _hit(self, key: str, limit: int, period: int) -> Hit:
        entry_key = f"{key}/{period}".encode()
        now = time.time()
        with environment(self._path).begin(write=True) as transaction:
            stored = transaction.get(entry_key)
            window = None
            if stored is not None:
                _, slot, *counts = _ENTRY.unpack(stored)
                window = Counts(slot, tuple(counts))
            window, result = slidingwindow.hit(window, limit, period, now)
            transaction.put(
                entry_key, _ENTRY.pack(slidingwindow.expires_at(window, period), window.slot, *window.counts)
            )
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self.sweep()
        return result

    def give_back(self, key: str, period: int) -> None:
        """Take back one request of ``key`` counted in its ``period`` window, atomically."""
        entry_key = f"{key}/{period}".encode()
        try:
            with environment(self._path).begin(write=True) as transaction:
                stored = transaction.get(entry_key)
                if stored is None:
                    return
                expiry, slot, *counts = _ENTRY.unpack(stored)
                window = slidingwindow.give_back(Counts(slot, tuple(counts)), period, time.time())
                transaction.put(entry_key, _ENTRY.pack(expiry, window.slot, *window.counts))
        except lmdb.Error as error:
            raise WindowStorageError("the rate-limit windows' file cannot be written") from error

    def sweep(self, full: bool = False) -> int:
        """Delete entries whose requests have all stopped counting: the next ``SWEEP_BATCH``
        after the last sweep's, or every one if ``full``. Return how many were deleted."""
        deleted, self._swept_to = sweep_expired(self._path, self._swept_to, full)
        return deleted

    def answers(self) -> bool:
        """Whether the file can be opened."""
        try:
            environment(self._path).stat()
        except lmdb.Error:
            return False
        return True


def _window_of(stored: bytes | None) -> Counts | None:
    if stored is None:
        return None
    _, slot, *counts = _ENTRY.unpack(stored)
    return Counts(slot, tuple(counts))


def _entry(window: Counts, period: int) -> bytes:
    return _ENTRY.pack(slidingwindow.expires_at(window, period), window.slot, *window.counts)


def sweep_expired(path: Path, start: bytes, full: bool) -> tuple[int, bytes]:
    """Delete the entries of the file at ``path`` whose expiry (each value's first 8 bytes: epoch
    seconds as a double) has passed: the next ``SWEEP_BATCH`` from key ``start`` on, or every one
    if ``full``. Return how many were deleted, and the key the next sweep starts from."""
    now = time.time()
    deleted = 0
    with environment(path).begin(write=True) as transaction:
        cursor = transaction.cursor()
        more = cursor.set_range(start)
        seen = 0
        while more and (full or seen < SWEEP_BATCH):
            seen += 1
            if _EXPIRES_AT.unpack_from(cursor.value())[0] <= now:
                cursor.delete()  # and on to the next entry, if there is one
                more = bool(cursor.key())
                deleted += 1
            else:
                more = cursor.next()
        return deleted, (cursor.key() if more else b"")
