"""Per-key rate limits: the `limits` moving window over a storage every worker shares.

By default the window lives in the app's own database (:class:`SQLStorage`), so
it is exact across all gunicorn workers of a machine; ``KEYSERVICE_RATELIMIT_STORAGE_URL``
(``redis://...``) moves it to Redis for many machines.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from limits import RateLimitItemPerSecond
from limits.storage import MovingWindowSupport, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import delete, text
from sqlalchemy.exc import SQLAlchemyError

from .models import RateLimitHit
from .rawsql import raw_transaction


# SQLite has one lock, for the whole database; PostgreSQL gets one per key.
_LOCK = {"sqlite": "BEGIN IMMEDIATE", "postgresql": "SELECT pg_advisory_xact_lock(hashtext(:key))"}
# A key's newest hit and its oldest within the window, (seq, at) each: two seeks in
# the (key, at, seq) index, O(log n), not a scan; no row at all for a key without hits.
_WINDOW = (
    f"SELECT oldest.seq, oldest.at, newest.seq, newest.at"
    f" FROM (SELECT seq, at FROM {RateLimitHit.__tablename__} WHERE key = :key"
    f" ORDER BY at DESC, seq DESC LIMIT 1) AS newest"
    f" LEFT JOIN (SELECT seq, at FROM {RateLimitHit.__tablename__} WHERE key = :key AND at > :cutoff"
    f" ORDER BY at, seq LIMIT 1) AS oldest ON 1 = 1"
)
_EMPTY_WINDOW: tuple[Any, ...] = (None, None, None, None)
# Expired hits only cost space, not correctness (windows count from `at`), so they are
# forgotten every so many hits rather than on each.
_FORGET_EVERY = 64
_FORGET_EXPIRED = f"DELETE FROM {RateLimitHit.__tablename__} WHERE key = :key AND at <= :cutoff"
_INSERT = f"INSERT INTO {RateLimitHit.__tablename__} (key, seq, at) VALUES (:key, :seq, :at)"


class SQLStorage(Storage, MovingWindowSupport):
    """A `limits` moving-window storage in the app's database, one row per counted request.

    Each hit runs in one transaction that first takes the key's write lock (SQLite's
    database lock, a PostgreSQL advisory lock), so concurrent workers count exactly.
    """

    STORAGE_SCHEME = ["keyservice+sql"]  # made in code from the app's db, never from a URL

    def __init__(self, db: SQLAlchemy) -> None:
        super().__init__(wrap_exceptions=True)
        self._db = db
        # The window as the last hit in this thread left it: `limits` asks for it
        # right after the hit, and it need not be read again.
        self._last_window = threading.local()

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        with raw_transaction(self._db.engine) as transaction:
            # The key's lock first, and the time only once it is held, so hits are
            # stored in the order they were counted.
            transaction.execute(_LOCK[self._db.engine.dialect.name], {"key": key})
            now = time.time()
            window = {"key": key, "cutoff": now - expiry}
            first_seq, first_at, last_seq, last_at = transaction.execute(_WINDOW, window).fetchone() or _EMPTY_WINDOW
            count = 0 if first_seq is None else last_seq - first_seq + 1
            if count + amount > limit:
                self._last_window.value = (key, first_at, count)
                return False
            start = 1 if last_seq is None else last_seq + 1
            # Never stamp a hit before the last one, even if the wall clock stepped
            # back: the count relies on time order and seq order being the same.
            at = now if last_at is None else max(now, last_at)
            for seq in range(start, start + amount):
                transaction.execute(_INSERT, {"key": key, "seq": seq, "at": at})
                if seq % _FORGET_EVERY == 0:
                    transaction.execute(_FORGET_EXPIRED, window)
        self._last_window.value = (key, at if first_at is None else first_at, count + amount)
        return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        last_key, first_at, count = getattr(self._last_window, "value", None) or (None, 0.0, 0)
        self._last_window.value = None
        if last_key == key:
            return first_at, count
        now = time.time()
        with raw_transaction(self._db.engine, writes=False) as transaction:
            first_seq, first_at, last_seq, _ = transaction.execute(
                _WINDOW, {"key": key, "cutoff": now - expiry}).fetchone() or _EMPTY_WINDOW
        if first_seq is None:
            return now, 0
        return first_at, last_seq - first_seq + 1

    def check(self) -> bool:
        with self._db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True

    def reset(self) -> int:
        with self._db.engine.begin() as connection:
            return connection.execute(delete(RateLimitHit)).rowcount

    def clear(self, key: str) -> None:
        with self._db.engine.begin() as connection:
            connection.execute(delete(RateLimitHit).where(RateLimitHit.key == key))

    # The fixed-window calls: keyservice uses only the moving window.
    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("SQLStorage supports the moving window only")

    def get(self, key: str) -> int:
        raise NotImplementedError("SQLStorage supports the moving window only")

    def get_expiry(self, key: str) -> float:
        raise NotImplementedError("SQLStorage supports the moving window only")


@dataclass(frozen=True)
class RateLimitState:
    """Where a key stands against its rate limit after a request."""

    allowed: bool
    limit: int
    period: int
    remaining: int
    reset_at: float

    @property
    def reset_in(self) -> int:
        """Whole seconds until the window has room again (at least 1)."""
        return max(1, math.ceil(self.reset_at - time.time()))

    def headers(self) -> dict[str, str]:
        """The IETF draft's ``RateLimit``/``RateLimit-Policy`` and the common ``X-RateLimit-*`` trio."""
        return {
            "RateLimit-Policy": f'"default";q={self.limit};w={self.period}',
            "RateLimit": f'"default";r={self.remaining};t={self.reset_in}',
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }


class RateLimiter:
    """Counts a key's requests against its ``limit`` per ``period`` seconds."""

    def __init__(self, storage_url: str, db: SQLAlchemy) -> None:
        storage = SQLStorage(db) if not storage_url else storage_from_string(storage_url, wrap_exceptions=True)
        self._limiter = MovingWindowRateLimiter(storage)

    def storage_answers(self) -> bool:
        """Whether the storage answers now (Redis: a PING)."""
        try:
            return bool(self._limiter.storage.check())
        except Exception:  # whatever the storage's client raises, the answer is no
            return False

    def hit(self, key_id: str, limit: int, period: int) -> RateLimitState:
        """Count one request; raises ``limits.errors.StorageError`` when the storage fails."""
        item = RateLimitItemPerSecond(limit, period)
        allowed = self._limiter.hit(item, "key", key_id)
        stats = self._limiter.get_window_stats(item, "key", key_id)
        return RateLimitState(allowed, limit, period, max(0, stats.remaining), stats.reset_time)
