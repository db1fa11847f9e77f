"""One worker's copies of the rows of the keys it has met, kept fresh by the change feed.

A copy is trusted only while the worker has read the change feed (``changefeed.py``)
within ``KEYSERVICE_CACHE_TTL``: at most that often, the first request that finds
the last read too old reads the feed again, one primary-key range read whatever
the number of keys, and forgets the copies of exactly the keys that changed (and
of every key holding a changed role). So a revoke, disable, expiry change, PATCH
or rotation reaches every worker within ``KEYSERVICE_CACHE_TTL``, and the
database's load grows with the workers, not the keys. A worker that cannot read
the feed raises the database's error: nothing is trusted then. As a safety net a
copy is also dropped after ``KEYSERVICE_CACHE_MAX_AGE``, and all of them when the
feed has not been read for that long (its old rows are pruned).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Engine

from .changefeed import changes_after, latest_change

Row = TypeVar("Row")


@dataclass(frozen=True)
class _Copy(Generic[Row]):
    key_id: str
    roles: tuple[str, ...]
    client: str
    row: Row
    loaded_at: float


class RowCache(Generic[Row]):
    """Rows by a digest of the key they were found with; see the module docstring.

    ``engine()`` gives the database whose change feed is read; ``clock()`` the time in seconds.
    """

    def __init__(
        self,
        engine: Callable[[], Engine],
        size: int,
        ttl: float,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._ttl = ttl
        self._max_age = max_age
        # Least recently used first. An OrderedDict under the lock rather than cachetools' LRUCache:
        # a hit is then two C calls, not five Python ones, on every verified request.
        self._copies: OrderedDict[bytes, _Copy[Row]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._read_at = -float("inf")  # when the last read of the feed that succeeded began
        self._last_change: int | None = None
        self._generation = 0  # grows with each read of the feed that forgot anything

    def generation(self) -> int:
        """Take it before reading a row, give it to :meth:`put` with the row. (A worker's first
        reads the feed: a row read before the feed's start could not be trusted.)"""
        if self._last_change is None:
            self._read_feed()
        return self._generation

    def get(self, digest: bytes) -> Row | None:
        """The trusted copy found with ``digest``, or None; reads the feed first when due
        (raises the database's error when it cannot)."""
        with self._lock:
            copy = self._copies.get(digest)
            if copy is not None:
                self._copies.move_to_end(digest)
        if copy is None:
            return None  # no database query for a key there is no copy of (one malformed, say)
        now = self._clock()
        if now - self._read_at >= self._ttl:
            self._read_feed()
            with self._lock:
                copy = self._copies.get(digest)
        if copy is None or now - copy.loaded_at >= self._max_age:
            return None
        return copy.row

    def put(self, digest: bytes, key_id: str, roles: tuple[str, ...], client: str, row: Row, generation: int) -> None:
        """Keep ``row`` (of key ``key_id``, holding ``roles``, of external client ``client``), read
        after :attr:`generation` was ``generation``; unless the feed has forgotten keys since: the
        row may predate the change."""
        with self._lock:
            if generation == self._generation:
                self._copies[digest] = _Copy(key_id, roles, client, row, self._clock())
                self._copies.move_to_end(digest)
                if len(self._copies) > self._size:
                    self._copies.popitem(last=False)

    def _read_feed(self) -> None:
        with self._reading:
            started = self._clock()
            if started - self._read_at < self._ttl:
                return  # another thread read it meanwhile
            starting_over = self._last_change is None or started - self._read_at >= self._max_age
            key_ids: set[str] = set()
            roles: set[str] = set()
            clients: set[str] = set()
            with self._engine().connect() as connection:
                if starting_over:
                    self._last_change = latest_change(connection)
                else:
                    self._last_change, key_ids, roles, clients = changes_after(connection, self._last_change or 0)
            if starting_over or key_ids or roles or clients:
                with self._lock:
                    self._generation += 1
                    if starting_over:
                        self._copies.clear()
                    for digest, copy in list(self._copies.items()):
                        if copy.key_id in key_ids or copy.client in clients or not roles.isdisjoint(copy.roles):
                            del self._copies[digest]
            self._read_at = started
