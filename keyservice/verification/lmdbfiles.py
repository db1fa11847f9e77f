"""The machine's LMDB files (the checked keys'): one environment per process and file, and the sweep
of entries whose time is over.

LMDB is a memory-mapped B-tree made for many processes on one machine: a write
transaction takes a lock in the file's lock file (a robust mutex, so a killed
worker's lock is taken back), and with ``sync=False`` its commit is a few memory
writes, no ``fsync``.

LMDB's rules, and how they are kept: an environment must not be used across
``fork`` (gunicorn forks its workers), so each process opens its own on first
use; a process must not open the same file twice, so there is one per process
and path; a transaction belongs to the thread that began it.

Every entry's value starts with its expiry (epoch seconds, a double), so that
:func:`sweep_expired` can forget entries without knowing what they hold.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

import lmdb

MAP_SIZE = 256 * 1024 * 1024  # sparse: costs only what is written
SWEEP_INTERVAL = 10.0
SWEEP_BATCH = 1000
_EXPIRES_AT = struct.Struct("<d")


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
