"""The verification path: from a presented key to an outcome, in one place.

bcrypt at cost 12 takes about a quarter of a second, so it cannot run on every
request. Each worker keeps, per key id, a snapshot of the key's row and an HMAC
(under a random per-process key) of the full key once bcrypt has accepted it:

1. ``parse_key`` refuses anything that is not our format or whose checksum is
   wrong (MALFORMED) without touching the database.
2. The row snapshot is re-read when older than ``KEYSERVICE_CACHE_TTL`` (0.5 s),
   so a revoked, disabled or expired key is refused by every worker within it.
   A database error answers UNAVAILABLE; nothing stale is trusted after that.
3. A key whose HMAC matches the remembered one skips bcrypt. Any other secret
   needs bcrypt, but only while this worker's budgets of failed checks last:
   per key id and client address (``KEYSERVICE_FAILED_VERIFY_LIMIT_PER_CLIENT``)
   and per key id from everywhere (``KEYSERVICE_FAILED_VERIFY_LIMIT_PER_KEY``).
   Past either, the attempt is RATE_LIMITED before bcrypt, so a flood of wrong
   secrets does bounded work, and the real key, sent from another address,
   still gets its check.
"""

from __future__ import annotations

import hmac
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from cachetools import LRUCache
from flask import current_app
from flask_sqlalchemy import SQLAlchemy
from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from .config import Settings
from .crypto import check_secret, parse_key
from .models import ApiKey, as_utc, utcnow


class Outcome(StrEnum):
    """Every answer a verification can give: the ``code`` of responses."""

    VALID = "VALID"
    MISSING = "MISSING"
    INVALID_REQUEST = "INVALID_REQUEST"
    MALFORMED = "MALFORMED"
    NOT_FOUND = "NOT_FOUND"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"
    DISABLED = "DISABLED"
    INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"
    RATE_LIMITED = "RATE_LIMITED"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class KeyRecord:
    """What verification needs of a key's row."""

    id: str
    secret_hash: str
    name: str
    external_client_id: str
    scopes: tuple[str, ...]
    meta: dict[str, Any]
    enabled: bool
    expires_at: datetime | None
    revoked_at: datetime | None


_RECORD_COLUMNS = [getattr(ApiKey, name) for name in KeyRecord.__dataclass_fields__]


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of checking one key; on success it is ``g.auth`` in the view."""

    code: Outcome
    key_id: str | None = None
    external_client_id: str | None = None
    name: str | None = None
    scopes: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    required_scopes: tuple[str, ...] = ()
    retry_after: int | None = None

    @property
    def valid(self) -> bool:
        return self.code is Outcome.VALID


@dataclass
class _CachedKey:
    record: KeyRecord
    loaded_at: float
    verified_digest: bytes | None = None


def missing_scopes(granted: Iterable[str], required: Sequence[str]) -> tuple[str, ...]:
    """The required scopes that ``granted`` lacks; ``a:*`` grants every ``a:<x>``."""
    if not required:
        return ()
    granted = set(granted)
    wildcards = tuple(scope[:-1] for scope in granted if scope.endswith(":*"))
    return tuple(
        scope for scope in required if scope not in granted and not scope.startswith(wildcards)
    )


class Verifier:
    """Checks keys for one app in one process; see the module docstring."""

    def __init__(self, settings: Settings, db: SQLAlchemy) -> None:
        self._settings = settings
        self._db = db
        self._cache: LRUCache[str, _CachedKey] = LRUCache(maxsize=settings.cache_size)
        self._lock = threading.Lock()
        self._digest_key = os.urandom(32)
        self._failures: MovingWindowRateLimiter | None = None

    def verify(self, key: str, scopes: Iterable[str] = (), client: str | None = None) -> VerificationResult:
        """Check ``key`` and that it holds every scope in ``scopes``.

        ``client`` (the caller's address) keys the failed-check budget, so that
        one client's wrong secrets do not lock the key out for everyone.
        """
        key = key.strip()
        parsed = parse_key(key, self._settings.key_prefix)
        if parsed is None:
            return VerificationResult(Outcome.MALFORMED)
        try:
            cached = self._cached(parsed.key_id)
        except SQLAlchemyError:
            current_app.logger.warning("keyservice: database unavailable", exc_info=True)
            return VerificationResult(Outcome.UNAVAILABLE, retry_after=1)
        if cached is None:
            return VerificationResult(Outcome.NOT_FOUND)
        record = cached.record
        digest = hmac.digest(self._digest_key, key.encode(), "sha256")
        if cached.verified_digest is None or not hmac.compare_digest(cached.verified_digest, digest):
            budgets = self._failure_budgets(record.id, client)
            retry_after = self._budget_spent(budgets)
            if retry_after is not None:
                return VerificationResult(Outcome.RATE_LIMITED, retry_after=retry_after)
            if not check_secret(parsed.secret, record.secret_hash):
                for limit, identity in budgets:
                    self._failures_limiter().hit(limit, *identity)
                return VerificationResult(Outcome.NOT_FOUND)
            cached.verified_digest = digest
        return self._judge(record, tuple(scopes))

    @staticmethod
    def _judge(record: KeyRecord, required: tuple[str, ...]) -> VerificationResult:
        if record.revoked_at is not None:
            return VerificationResult(Outcome.REVOKED, key_id=record.id)
        if record.expires_at is not None and record.expires_at <= utcnow():
            return VerificationResult(Outcome.EXPIRED, key_id=record.id)
        if not record.enabled:
            return VerificationResult(Outcome.DISABLED, key_id=record.id)
        code = Outcome.INSUFFICIENT_SCOPE if missing_scopes(record.scopes, required) else Outcome.VALID
        return VerificationResult(
            code,
            key_id=record.id,
            external_client_id=record.external_client_id,
            name=record.name,
            scopes=record.scopes,
            meta=record.meta,
            required_scopes=required,
        )

    def _cached(self, key_id: str) -> _CachedKey | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key_id)
        if cached is not None and now - cached.loaded_at < self._settings.cache_ttl:
            return cached
        try:
            record = self._load(key_id)
        except SQLAlchemyError:
            with self._lock:
                self._cache.pop(key_id, None)
            raise
        if record is None:
            # Unknown ids are not cached: a flood of them must not evict real keys.
            with self._lock:
                self._cache.pop(key_id, None)
            return None
        fresh = _CachedKey(record, now)
        if cached is not None and cached.record.secret_hash == record.secret_hash:
            fresh.verified_digest = cached.verified_digest
        with self._lock:
            self._cache[key_id] = fresh
        return fresh

    def _load(self, key_id: str) -> KeyRecord | None:
        with self._db.engine.connect() as connection:
            row = connection.execute(select(*_RECORD_COLUMNS).where(ApiKey.id == key_id)).one_or_none()
        if row is None:
            return None
        values = row._asdict()
        return KeyRecord(**values | {
            "scopes": tuple(values["scopes"]),
            "expires_at": as_utc(values["expires_at"]),
            "revoked_at": as_utc(values["revoked_at"]),
        })

    def _failures_limiter(self) -> MovingWindowRateLimiter:
        # Made on first use, in the worker process: MemoryStorage starts a thread.
        if self._failures is None:
            self._failures = MovingWindowRateLimiter(MemoryStorage())
        return self._failures

    def _failure_budgets(self, key_id: str, client: str | None) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
        return [
            (self._settings.failed_verify_limit_per_client, (key_id, client or "")),
            (self._settings.failed_verify_limit_per_key, (key_id,)),
        ]

    def _budget_spent(self, budgets: list[tuple[RateLimitItem, tuple[str, ...]]]) -> int | None:
        """Seconds until a bcrypt check is allowed again, or None if it is now."""
        limiter = self._failures_limiter()
        for limit, identity in budgets:
            if not limiter.test(limit, *identity):
                reset_at = limiter.get_window_stats(limit, *identity).reset_time
                return max(1, math.ceil(reset_at - time.time()))
        return None


def verify_key(key: str, scopes: Iterable[str] = (), client: str | None = None) -> VerificationResult:
    """Check ``key`` (and ``scopes``) for the current app, as ``@require_key`` does.

    Pass the caller's address as ``client`` where there is one: see :meth:`Verifier.verify`.
    """
    verifier: Verifier = current_app.extensions["keyservice"].verifier
    return verifier.verify(key, scopes, client)
