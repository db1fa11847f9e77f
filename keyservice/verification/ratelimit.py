"""Per-key rate limits: the slotted sliding window (``slidingwindow.py``) over a storage
every worker shares.

By default the windows live in a SQLite file of their own beside the app's SQLite database
(``sqlitewindows.py``), shared by every gunicorn worker of the machine;
``KEYSERVICE_RATELIMIT_STORAGE_URL`` (``redis://...``) moves them to Redis for
many machines (``rediswindows.py``). Either way a request is one atomic operation: one
SQL statement, or one Lua script.
"""

from __future__ import annotations

import threading

from flask_sqlalchemy import SQLAlchemy

from ..core.machinefiles import path_for
from ..core.outcomes import RateLimitState
from .slidingwindow import WindowStore
from .sqlitewindows import SqliteWindows


class RateLimiter:
    """Counts a key's requests against its ``limit`` per ``period`` seconds."""

    def __init__(self, storage_url: str, db: SQLAlchemy) -> None:
        self._storage_url = storage_url
        self._db = db
        self._windows: WindowStore | None = None
        self._lock = threading.Lock()

    @property
    def windows(self) -> WindowStore:
        """The storage; the embedded one is placed by the app's database, known in an app context."""
        if self._windows is None:
            with self._lock:
                if self._windows is None:
                    self._windows = self._opened()
        return self._windows

    def _opened(self) -> WindowStore:
        if not self._storage_url:
            return SqliteWindows(path_for(self._db.engine.url.render_as_string()))
        # Imported here: redis takes about 0.1 s to import, in every worker and command, and only
        # deployments with a storage URL use it.
        from .rediswindows import RedisWindows

        return RedisWindows(self._storage_url)

    def storage_answers(self) -> bool:
        """Whether the storage answers now (Redis: a PING)."""
        return self.windows.answers()

    def hit(self, key_id: str, limit: int, period: int) -> RateLimitState:
        """Count one request; raises ``slidingwindow.WindowStorageError`` when the storage fails."""
        counted = self.windows.hit(key_id, limit, period)
        return RateLimitState(counted.allowed, limit, period, max(0, limit - counted.count), counted.reset_at)
