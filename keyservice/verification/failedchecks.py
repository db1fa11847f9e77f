"""The budgets of bcrypt checks, per key id and client address and per key id, in the shared windows.

Each bcrypt check (a key no worker of the machine has checked, or a wrong
secret for a real key id) first takes one from two slotted sliding windows
(``slidingwindow.py``) in the store the rate limits use, so every worker of the
machine (the SQLite windows' file), or of the deployment (Redis), draws on the same
budgets: ``KEYSERVICE_FAILED_VERIFY_LIMIT_PER_CLIENT`` for the key id and the
caller's address, then ``KEYSERVICE_FAILED_VERIFY_LIMIT_PER_KEY`` for the key id
from everywhere. Taken before the check, not counted after a failure, the
budgets bound the checks that run at once too: however many workers and threads
a flood reaches, one key id costs at most the per-key budget's bcrypt checks per
window. The per-client window comes first, so a client out of budget cannot
spend the key's. A check that bcrypt accepts is given back: the budgets count
failed checks, and the checks in flight.

When the shared store cannot be reached (Redis down), each worker counts in
budgets of its own meanwhile, in memory: bcrypt work stays bounded (per worker,
as it was before the budgets were shared) and keys can still be checked.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable

from cachetools import TTLCache
from limits import RateLimitItem

from . import slidingwindow
from .slidingwindow import Counts, Hit, WindowStorageError, WindowStore

logger = logging.getLogger("keyservice.failedchecks")


class FailedCheckBudgets:
    """Takes a bcrypt check from the budgets of a key id; see the module docstring."""

    def __init__(self, per_client: RateLimitItem, per_key: RateLimitItem, windows: Callable[[], WindowStore]) -> None:
        self._per_client = per_client
        self._per_key = per_key
        self._windows = windows
        longest = max(per_client.get_expiry(), per_key.get_expiry())
        self._own = _WorkerWindows(longest * (1 + 1 / slidingwindow.SLOTS))

    def take(self, key_id: str, client: str | None) -> int | None:
        """Take one check for ``key_id`` from ``client``: None if taken, else the seconds until
        one can be."""
        for limit, name in self._budgets(key_id, client):
            try:
                hit = self._windows().hit(name, limit.amount, limit.get_expiry())
            except WindowStorageError as error:
                logger.warning(
                    "keyservice: shared failed-check budgets unavailable (%s); this worker counts its own meanwhile",
                    type(error.__cause__ or error).__name__,
                )
                hit = self._own.hit(name, limit.amount, limit.get_expiry())
            if not hit.allowed:
                return max(1, math.ceil(hit.reset_at - time.time()))
        return None

    def give_back(self, key_id: str, client: str | None) -> None:
        """Give back the check taken by :meth:`take` (bcrypt accepted the key)."""
        for limit, name in self._budgets(key_id, client):
            try:
                self._windows().give_back(name, limit.get_expiry())
            except WindowStorageError:
                self._own.give_back(name, limit.get_expiry())

    def _budgets(self, key_id: str, client: str | None) -> tuple[tuple[RateLimitItem, str], ...]:
        # The address hashed: any length a proxy forwards fits a name, and none is stored.
        address = hashlib.blake2b((client or "").encode(errors="replace"), digest_size=12).hexdigest()
        return (self._per_client, f"bcrypt:{key_id}:{address}"), (self._per_key, f"bcrypt:{key_id}")


class _WorkerWindows:
    """Windows in this process's memory, each kept as long as it can count (``longest`` seconds)."""

    def __init__(self, longest: float) -> None:
        self._windows: TTLCache[str, Counts] = TTLCache(maxsize=100_000, ttl=longest)
        self._lock = threading.Lock()

    def hit(self, key: str, limit: int, period: int) -> Hit:
        with self._lock:
            self._windows[key], counted = slidingwindow.hit(self._windows.get(key), limit, period, time.time())
        return counted

    def give_back(self, key: str, period: int) -> None:
        with self._lock:
            window = self._windows.get(key)
            if window is not None:
                self._windows[key] = slidingwindow.give_back(window, period, time.time())
