"""The verification path: from a presented key to an outcome, in one place.

bcrypt at cost 12 takes about a quarter of a second, so it cannot run on every
request. Each worker remembers the keys bcrypt has accepted, by an HMAC of the
full key under a random key that lives only in that process's memory:

1. A key whose HMAC is remembered skips parsing and bcrypt. Its copy of the row
   is re-read when older than ``KEYSERVICE_CACHE_TTL`` (0.5 s), so a revoked,
   disabled or expired key is refused by every worker within that time. A
   database error answers UNAVAILABLE and forgets the key.
2. Any other key is parsed: anything not in our format, or whose checksum is
   wrong, is MALFORMED without touching the database.
3. Then it needs bcrypt, but only while this worker's budgets of failed checks
   last: per key id and client address (``KEYSERVICE_FAILED_VERIFY_LIMIT_PER_CLIENT``)
   and per key id from everywhere (``KEYSERVICE_FAILED_VERIFY_LIMIT_PER_KEY``).
   Past either, the attempt is RATE_LIMITED before the database and bcrypt, so
   a flood of wrong secrets does bounded work, and the real key, sent from
   another address, still gets its check. Only keys bcrypt accepts are
   remembered, so no flood can evict them.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cachetools import LRUCache, TTLCache
from flask import current_app
from flask_sqlalchemy import SQLAlchemy
from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import DateTime, Dialect, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .config import Settings
from .crypto import MAX_KEY_LENGTH, check_secret, parse_key
from .dberrors import error_name
from .models import ApiKey, Role, as_utc, utcnow
from . import metrics
from .outcomes import KeyRecord, Outcome, VerificationResult, read_only
from .ratelimit import RateLimiter
from .scopes import missing_scopes
from .slidingwindow import WindowStorageError
from .state import current_state
from .rawsql import raw_transaction
from .usage import UsageRecorder


_RECORD_COLUMNS = [getattr(ApiKey, name) for name in KeyRecord.__dataclass_fields__]
# updated_at is for changes of settings, not for uses: these leave it as it is. A rotated key's
# uses are its successor's (quota_key_id), looked up in the same statement, never from a copy.
_QUOTA_KEY = f"COALESCE((SELECT quota_key_id FROM {ApiKey.__tablename__} WHERE id = :key_id), :key_id)"
_TAKE_ONE_USE = (
    f"UPDATE {ApiKey.__tablename__} SET remaining = remaining - 1, usage_exhausted_at = NULL"
    f" WHERE id = {_QUOTA_KEY} AND (remaining IS NULL OR remaining > 0) RETURNING remaining"
)
# A refill due (once per interval: past the day's or month's start) and the use in the same
# statement: the use is taken from the refilled amount.
_REFILL_DUE = "refill_amount IS NOT NULL AND (refilled_at IS NULL OR refilled_at < :boundary)"
_REFILL_AND_TAKE_ONE_USE = (
    f"UPDATE {ApiKey.__tablename__}"
    f" SET remaining = CASE WHEN {_REFILL_DUE} THEN refill_amount ELSE remaining END - 1,"
    f" refilled_at = CASE WHEN {_REFILL_DUE} THEN :now ELSE refilled_at END"
    f" WHERE id = {_QUOTA_KEY} AND (remaining IS NULL OR remaining > 0 OR {_REFILL_DUE}) RETURNING remaining"
)
# PostgreSQL commits a use without waiting for its WAL to reach the disk: the WAL writer
# flushes it within 3 x wal_writer_delay (200 ms). A crash of the server can lose the uses
# of that last moment (they come back to the key), never count one twice. For this
# transaction only (the statement's own, in autocommit mode), set from within the statement
# itself: no extra round trip.
_WITHOUT_WAITING_FOR_THE_WAL = {
    "postgresql": " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit",
    "sqlite": "",
}


@functools.lru_cache(maxsize=8)
def _quota_statement(sql: str, dialect: str) -> str:
    head, returning = sql.split(" WHERE ", 1)
    return f"{head}{_WITHOUT_WAITING_FOR_THE_WAL[dialect]} WHERE {returning}"


@dataclass(frozen=True)
class _VerifiedKey:
    """A key bcrypt has accepted: its row as of ``loaded_at``, and its VALID result."""

    record: KeyRecord
    loaded_at: float
    valid: VerificationResult

    @classmethod
    def of(cls, record: KeyRecord) -> _VerifiedKey:
        valid = VerificationResult(Outcome.VALID, key_id=record.id, external_client_id=record.external_client_id,
                                   name=record.name, scopes=record.scopes, roles=record.roles,
                                   meta=read_only(record.meta))
        return cls(record, time.monotonic(), valid)


@functools.lru_cache(maxsize=4)
def _timestamp_binder(dialect: Dialect) -> Callable[[datetime], Any]:
    """How the dialect stores a timestamp column's value (SQLite: a string of its own format)."""
    return DateTime(timezone=True).bind_processor(dialect) or (lambda value: value)


def refill_boundary(now: datetime, interval: str) -> datetime:
    """The start (UTC) of the day or month ``now`` is in: a refill is due once past it."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if interval == "daily" else day.replace(day=1)


class Verifier:
    """Checks keys for one app in one process; see the module docstring."""

    def __init__(self, settings: Settings, db: SQLAlchemy,
                 on_usage_exhausted: Callable[[Session, str], None] | None = None) -> None:
        self._settings = settings
        self._on_usage_exhausted = on_usage_exhausted
        self._db = db
        self._ratelimiter = RateLimiter(settings.ratelimit_storage_url, db)
        self._verified: LRUCache[bytes, _VerifiedKey] = LRUCache(maxsize=settings.cache_size)
        self._lock = threading.Lock()
        self._digest_key = os.urandom(32)
        self._failures: MovingWindowRateLimiter | None = None
        self._usage = UsageRecorder(db, settings.usage_flush_interval)
        self._exhaustion_tried: TTLCache[str, bool] = TTLCache(maxsize=settings.cache_size, ttl=1.0)
        self._token_keys: LRUCache[str, _VerifiedKey] = LRUCache(maxsize=settings.cache_size)

    def verify(self, key: str, scopes: Iterable[str] = (), client: str | None = None) -> VerificationResult:
        """Check ``key`` and that it holds every scope in ``scopes``; count it in the
        metrics and, if it names a key that exists, in that key's usage.

        ``client`` (the caller's address) keys the failed-check budget, so that
        one client's wrong secrets do not lock the key out for everyone.
        """
        started = time.perf_counter()
        return self._counted(self._verify(key, scopes, client), started)

    def _counted(self, result: VerificationResult, started: float) -> VerificationResult:
        metrics.observe(result.code, result.key_id is not None, time.perf_counter() - started)
        if result.key_id is not None and result.code is not Outcome.UNAVAILABLE:
            self._usage.record(result.key_id, result.code, result.valid)
        return result

    # --- A key proven by one of its access tokens (keyservice.tokens), not by its secret. ---

    def verify_token_key(self, key_id: str, granted: tuple[str, ...], scopes: Iterable[str],
                         started: float) -> VerificationResult:
        """Judge key ``key_id`` for a request carrying one of its access tokens (checked since
        ``started``, a ``perf_counter``), which grants ``granted``: as :meth:`verify` judges a key
        (its row re-read within ``KEYSERVICE_CACHE_TTL``, its limits, usage and metrics), and
        every scope in ``scopes`` must be both the token's and still the key's."""
        required = tuple(scopes)
        try:
            with self._lock:
                verified = self._token_keys.get(key_id)
            if verified is None or time.monotonic() - verified.loaded_at >= self._settings.cache_ttl:
                record = self._load(key_id)
                if record is None:
                    return self._counted(VerificationResult(Outcome.NOT_FOUND), started)
                verified = _VerifiedKey.of(record)
                with self._lock:
                    self._token_keys[key_id] = verified
            result = self._judge(verified, required)
            if result.valid and missing_scopes(granted, required):
                result = VerificationResult(Outcome.INSUFFICIENT_SCOPE, key_id=key_id, required_scopes=required)
            if result.valid:
                result = dataclasses.replace(result, scopes=granted)
                if verified.record.ratelimit_limit or verified.record.remaining is not None:
                    result = self._limit(verified.record, result)
        except SQLAlchemyError as error:
            current_app.logger.warning("keyservice: database unavailable (%s)", error_name(error))
            result = VerificationResult(Outcome.UNAVAILABLE, retry_after=1)
        return self._counted(result, started)

    # --- end of access tokens ---

    def _verify(self, key: str, scopes: Iterable[str], client: str | None) -> VerificationResult:
        key = key.strip()
        if len(key) > MAX_KEY_LENGTH:
            return VerificationResult(Outcome.MALFORMED)
        digest = hmac.digest(self._digest_key, key.encode(errors="replace"), "sha256")
        try:
            verified = self._remembered(digest)
            if verified is None:
                checked = self._check_with_bcrypt(key, client)
                if isinstance(checked, VerificationResult):
                    return checked
                verified = checked
                with self._lock:
                    self._verified[digest] = verified
            result = self._judge(verified, tuple(scopes))
            if result.valid and (verified.record.ratelimit_limit or verified.record.remaining is not None):
                result = self._limit(verified.record, result)
        except SQLAlchemyError as error:
            # The class only: the error's text holds the statement's parameters (a key id, a hash).
            current_app.logger.warning("keyservice: database unavailable (%s)", error_name(error))
            return VerificationResult(Outcome.UNAVAILABLE, retry_after=1)
        return result

    def _limit(self, record: KeyRecord, valid: VerificationResult) -> VerificationResult:
        """Count the request against the key's rate limit, then take one of its remaining uses."""
        ratelimit = None
        if record.ratelimit_limit and record.ratelimit_period:
            try:
                ratelimit = self._ratelimiter.hit(record.id, record.ratelimit_limit, record.ratelimit_period)
            except WindowStorageError as error:
                # The error's type only: its text can hold the storage URL, and a password with it.
                reason = type(error.__cause__ or error).__name__
                if not self._settings.ratelimit_fail_open:
                    current_app.logger.warning("keyservice: rate-limit storage unavailable (%s)", reason)
                    return VerificationResult(Outcome.UNAVAILABLE, key_id=record.id, retry_after=1)
                current_app.logger.warning("keyservice: rate-limit storage unavailable (%s); letting the"
                                           " request through (KEYSERVICE_RATELIMIT_FAIL_OPEN)", reason)
            if ratelimit is not None and not ratelimit.allowed:
                return VerificationResult(Outcome.RATE_LIMITED, key_id=record.id, ratelimit=ratelimit,
                                          retry_after=ratelimit.reset_in)
        remaining = None
        if record.remaining is not None:
            taken, remaining = self._take_one_use(record)
            if not taken:
                self._announce_exhausted(record.id)
                return VerificationResult(Outcome.USAGE_EXCEEDED, key_id=record.id, remaining=0, ratelimit=ratelimit)
        return dataclasses.replace(valid, remaining=remaining, ratelimit=ratelimit)

    def _take_one_use(self, record: KeyRecord) -> tuple[bool, int | None]:
        """Atomically take one use: whether one was left, and how many are left after it
        (None if the key has become unlimited). A due refill comes first, once per interval:
        one statement either way."""
        dialect = self._db.engine.dialect
        params: dict[str, Any] = {"key_id": record.id}
        sql = _TAKE_ONE_USE
        if record.refill_interval is not None:
            now = utcnow()
            as_column = _timestamp_binder(dialect)
            params |= {"now": as_column(now), "boundary": as_column(refill_boundary(now, record.refill_interval))}
            sql = _REFILL_AND_TAKE_ONE_USE
        with raw_transaction(self._db.engine, one_statement=True) as transaction:
            row = transaction.execute(_quota_statement(sql, dialect.name), params).fetchone()
        return (False, 0) if row is None else (True, row[0])

    def _announce_exhausted(self, key_id: str) -> None:
        """Tell ``on_usage_exhausted`` (:func:`keyservice.store.announce_usage_exhausted`) in a
        transaction of its own; this worker at most once a second per key, so that a flood of
        429s is no flood of writes."""
        if self._on_usage_exhausted is None:
            return
        with self._lock:
            if key_id in self._exhaustion_tried:
                return
            self._exhaustion_tried[key_id] = True
        with Session(self._db.engine) as session, session.begin():
            self._on_usage_exhausted(session, key_id)

    def _remembered(self, digest: bytes) -> _VerifiedKey | None:
        """The remembered key with this digest, its row fresh; None if there is none
        (or its row is gone or has another secret now)."""
        with self._lock:
            verified = self._verified.get(digest)
        if verified is None or time.monotonic() - verified.loaded_at < self._settings.cache_ttl:
            return verified
        try:
            record = self._load(verified.record.id)
        except SQLAlchemyError:
            self._forget(digest)
            raise
        if record is None or record.secret_hash != verified.record.secret_hash:
            self._forget(digest)
            return None
        fresh = _VerifiedKey.of(record)
        with self._lock:
            self._verified[digest] = fresh
        return fresh

    def ratelimit_storage_answers(self) -> bool:
        """Whether the rate-limit storage answers now (for the readiness check)."""
        return self._ratelimiter.storage_answers()

    def flush_usage(self) -> None:
        """Write the usage this process has counted to the database now."""
        self._usage.flush()

    def _forget(self, digest: bytes) -> None:
        with self._lock:
            self._verified.pop(digest, None)

    def _check_with_bcrypt(self, key: str, client: str | None) -> _VerifiedKey | VerificationResult:
        parsed = parse_key(key, self._settings.key_prefix)
        if parsed is None:
            return VerificationResult(Outcome.MALFORMED)
        budgets = self._failure_budgets(parsed.key_id, client)
        retry_after = self._budget_spent(budgets)
        if retry_after is not None:
            return VerificationResult(Outcome.RATE_LIMITED, retry_after=retry_after)
        record = self._load(parsed.key_id)
        if record is None:
            return VerificationResult(Outcome.NOT_FOUND)
        if not check_secret(parsed.secret, record.secret_hash):
            for limit, identity in budgets:
                self._failures_limiter().hit(limit, *identity)
            # The id is the key's, so its usage counts the attempt. No problem body shows it;
            # POST /keys/verify does, to a caller who manages that key anyway.
            return VerificationResult(Outcome.NOT_FOUND, key_id=record.id)
        return _VerifiedKey.of(record)

    @staticmethod
    def _judge(verified: _VerifiedKey, required: tuple[str, ...]) -> VerificationResult:
        record = verified.record
        if record.revoked_at is not None:
            return VerificationResult(Outcome.REVOKED, key_id=record.id)
        if record.expires_at is not None and record.expires_at <= utcnow():
            return VerificationResult(Outcome.EXPIRED, key_id=record.id)
        if not record.enabled:
            return VerificationResult(Outcome.DISABLED, key_id=record.id)
        if missing_scopes(record.scopes, required):
            return VerificationResult(Outcome.INSUFFICIENT_SCOPE, key_id=record.id, required_scopes=required)
        return verified.valid

    def _load(self, key_id: str) -> KeyRecord | None:
        with self._db.engine.connect() as connection:
            row = connection.execute(select(*_RECORD_COLUMNS).where(ApiKey.id == key_id)).one_or_none()
            if row is None:
                return None
            values = row._asdict()
            scopes = list(values["scopes"])
            if values["roles"]:
                for role_scopes in connection.scalars(select(Role.scopes).where(Role.name.in_(values["roles"]))):
                    scopes.extend(role_scopes)
        return KeyRecord(**values | {
            "scopes": tuple(dict.fromkeys(scopes)),
            "roles": tuple(values["roles"]),
            "expires_at": as_utc(values["expires_at"]),
            "revoked_at": as_utc(values["revoked_at"]),
        })

    def _failures_limiter(self) -> MovingWindowRateLimiter:
        # Made on first use, in the worker process: MemoryStorage starts a thread. Once per
        # process, however many of its threads ask first: a second one would lose the hits.
        if self._failures is None:
            with self._lock:
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
            stats = limiter.get_window_stats(limit, *identity)
            if stats.remaining <= 0:
                return max(1, math.ceil(stats.reset_time - time.time()))
        return None


def verify_key(key: str, scopes: Iterable[str] = (), client: str | None = None) -> VerificationResult:
    """Check ``key`` (and ``scopes``) for the current app, as ``@require_key`` does.

    Pass the caller's address as ``client`` where there is one: see :meth:`Verifier.verify`.
    """
    return current_state().verifier.verify(key, scopes, client)
