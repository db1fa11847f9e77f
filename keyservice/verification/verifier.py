"""The verification path: from a presented key to an outcome, in one place.

bcrypt at cost 12 takes about a quarter of a second, so it cannot run on every
request, nor on every worker's first meeting with a key. Keys are found by an
HMAC-SHA256 of the whole key under the deployment secret's key for them
(``core/secretkeys.py``; after a rotation of the secret, under a fallback's too):

1. In this worker's copies of rows (``rowcache.py``), trusted while the change
   feed has been read within ``KEYSERVICE_CACHE_TTL`` (0.5 s): a key found there
   skips parsing, the database and bcrypt. A database error answers UNAVAILABLE.
2. Any other key is parsed: anything not in our format, or whose checksum is
   wrong, is MALFORMED without touching the database.
3. In the checked keys every worker of the machine (or, with Redis, every
   instance) shares (``checkedkeys.py``): an entry for this key, of this id and
   the row's current hash, means bcrypt accepted it before; one row read, no bcrypt.
4. Otherwise bcrypt (one check at a time per key in a worker), but only once the
   check is taken from the shared budgets (``failedchecks.py``; given back when
   bcrypt accepts): per key id and client address, and per key id from
   everywhere. Past either, the attempt is RATE_LIMITED before the database and
   bcrypt, so a flood of wrong secrets does bounded work across all workers, and
   the real key, sent from another address, still gets its check. Only keys
   bcrypt accepts are remembered, so no flood can evict them.

Rows are read by ``keyrows.py``. Whatever the path, the key is then:

5. judged on its row: revoked, expired (by its ``expires_at``, at each request),
   disabled, its scopes;
6. if valid and limited, counted in its rate-limit window (``ratelimit.py``), then
   one of its remaining uses is taken (``quota.py``: one SQL statement, refill
   included): RATE_LIMITED or USAGE_EXCEEDED past either. A key whose identity (or
   itself) has named limits that apply to the check is charged in all of them at once:
   every rate window in one atomic operation of the windows' storage, then every credit
   in one database transaction (``credits.py``), the windows given back if a credit
   refuses. Allowed only if each has room; refused, none of them counts it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from flask import current_app
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ..core.config import Settings
from ..core.crypto import MAX_KEY_LENGTH, ParsedKey, check_secret, hmac_sha256, parse_key
from ..core.dberrors import error_name
from ..core.machinefiles import path_for
from ..core.models import CREDITS, RATE, utcnow
from ..core.outcomes import (
    ONE_USE,
    Charge,
    KeyRecord,
    LimitRecord,
    Outcome,
    RateLimitState,
    VerificationResult,
    read_only,
)
from ..core.scopes import missing_scopes
from ..core.secretkeys import Purpose, SecretKeys
from ..core.state import current_state
from . import metrics
from .checkedkeys import CheckedKey, CheckedKeys, LmdbCheckedKeys, hash_digest
from .credits import Credits
from .failedchecks import FailedCheckBudgets
from .keyrows import KeyRows
from .quota import Quota
from .ratelimit import RateLimiter
from .rowcache import RowCache
from .slidingwindow import Counted, WindowStorageError, WindowStore
from .sqlitewindows import SqliteWindows
from .usage import UsageRecorder


@dataclass(frozen=True)
class _VerifiedKey:
    """A key bcrypt has accepted (here or in the shared checked keys): its row, and its VALID result."""

    record: KeyRecord
    valid: VerificationResult

    @classmethod
    def of(cls, record: KeyRecord) -> _VerifiedKey:
        valid = VerificationResult(
            Outcome.VALID,
            key_id=record.id,
            external_client_id=record.external_client_id,
            name=record.name,
            scopes=record.scopes,
            roles=record.roles,
            meta=read_only(record.meta),
        )
        return cls(record, valid)


@dataclass(frozen=True)
class _Shared:
    """What the app's workers share: the HMAC under the deployment secret (and those under its
    fallbacks, while it is rotated), the checked keys, the failed-check budgets."""

    digest: Callable[[bytes], bytes]
    earlier_digests: tuple[Callable[[bytes], bytes], ...]
    checked: CheckedKeys
    budgets: WindowStore


def _checked_keys_at(storage_url: str, database_url: str) -> CheckedKeys:
    """The checked keys of the app on ``database_url``: in the Redis at ``storage_url`` if set,
    else in the machine's LMDB file."""
    if not storage_url:
        return LmdbCheckedKeys(path_for(database_url, "checked"))
    # Imported here: redis takes about 0.1 s to import, in every worker and command, and only
    # deployments with a storage URL use it.
    from .redischeckedkeys import RedisCheckedKeys

    return RedisCheckedKeys(storage_url)


def _database_unavailable(error: SQLAlchemyError) -> VerificationResult:
    # The class only: the error's text holds the statement's parameters (a key id, a hash).
    current_app.logger.warning("keyservice: database unavailable (%s)", error_name(error))
    return VerificationResult(Outcome.UNAVAILABLE, retry_after=1)


class Verifier:
    """Checks keys for one app in one process; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        db: SQLAlchemy,
        secret_keys: SecretKeys,
        on_usage_exhausted: Callable[[Session, str], None] | None = None,
        on_limit_event: Callable[[Session, int, str], None] | None = None,
    ) -> None:
        """``on_usage_exhausted(session, key_id)``: a key is out of uses; ``on_limit_event(session,
        limit_id, event)``: an identity's pool fell below its low threshold (``credits_low``) or its
        rate limit refused a check (``rate_limited``: told at most once a period per worker). Each
        in a transaction of its own, for the management side to record and announce."""

        def engine() -> Engine:
            return db.engine  # the app's, known in an app context

        self._settings = settings
        self._engine = engine
        self._checked_key_names = secret_keys.derived(Purpose.CHECKED_KEYS)
        self._ratelimiter = RateLimiter(settings.ratelimit_storage_url, db)
        self._rows: RowCache[_VerifiedKey] = RowCache(
            engine, settings.cache_size, settings.cache_ttl, settings.cache_max_age
        )
        self._budgets = FailedCheckBudgets(
            settings.failed_verify_limit_per_client,
            settings.failed_verify_limit_per_key,
            lambda: self._shared().budgets,
        )
        self._load = KeyRows(engine).load
        quota = Quota(engine, on_usage_exhausted, settings.cache_size)
        self._take_one_use = quota.take_one
        self._announce_exhausted = quota.announce_exhausted
        self._credits = Credits(engine)
        self._on_limit_event = on_limit_event
        self._rate_limited_told: dict[int, float] = {}  # limit id -> when this worker may tell again
        self._lock = threading.Lock()
        self._shared_stores: _Shared | None = None
        self._checking: dict[bytes, tuple[threading.Lock, int]] = {}  # digest -> its lock, threads at it
        self._usage = UsageRecorder(db, settings.usage_flush_interval)

    def verify(
        self, key: str, scopes: Iterable[str] = (), client: str | None = None, charge: Charge = ONE_USE
    ) -> VerificationResult:
        """Check ``key`` and that it holds every scope in ``scopes``; count it in the
        metrics and, if it names a key that exists, in that key's usage; charge its limits
        ``charge`` (one unit in each that applies, by default).

        ``client`` (the caller's address) keys the failed-check budget, so that
        one client's wrong secrets do not lock the key out for everyone.
        """
        started = time.perf_counter()
        return self._counted(self._verify(key, scopes, client, charge), started)

    def _counted(self, result: VerificationResult, started: float) -> VerificationResult:
        metrics.observe(result.code, result.key_id is not None, time.perf_counter() - started)
        if result.key_id is not None and result.code is not Outcome.UNAVAILABLE:
            self._usage.record(result.key_id, result.code, result.valid)
        return result

    # --- A key proven by one of its access tokens (keyservice.verification.tokens), not by its secret. ---

    def verify_token_key(
        self, key_id: str, granted: tuple[str, ...], scopes: Iterable[str], started: float, charge: Charge = ONE_USE
    ) -> VerificationResult:
        """Judge key ``key_id`` for a request carrying one of its access tokens (checked since
        ``started``, a ``perf_counter``), which grants ``granted``: as :meth:`verify` judges a key
        (its row re-read within ``KEYSERVICE_CACHE_TTL``, its limits, usage and metrics), and
        every scope in ``scopes`` must be both the token's and still the key's."""
        required = tuple(scopes)
        # The row cache keeps it by a name no key's digest can be; the change feed keeps it fresh.
        digest = b"token:" + key_id.encode()
        try:
            verified = self._rows.get(digest)
            if verified is None:
                generation = self._rows.generation()
                record = self._load(key_id)
                if record is None:
                    return self._counted(VerificationResult(Outcome.NOT_FOUND), started)
                verified = _VerifiedKey.of(record)
                self._rows.put(digest, record.id, record.roles, record.external_client_id, verified, generation)
            result = self._judge(verified, required)
            if result.valid and missing_scopes(granted, required):
                result = VerificationResult(Outcome.INSUFFICIENT_SCOPE, key_id=key_id, required_scopes=required)
            if result.valid:
                result = self._limit(verified.record, dataclasses.replace(result, scopes=granted), charge)
        except SQLAlchemyError as error:
            result = _database_unavailable(error)
        return self._counted(result, started)

    # --- end of access tokens ---

    def _verify(self, key: str, scopes: Iterable[str], client: str | None, charge: Charge) -> VerificationResult:
        key = key.strip()
        if len(key) > MAX_KEY_LENGTH:
            return VerificationResult(Outcome.MALFORMED)
        digest = self._shared().digest(key.encode(errors="replace"))
        try:
            verified = self._rows.get(digest)
            if verified is None:
                checked = self._check(key, digest, client)
                if isinstance(checked, VerificationResult):
                    return checked
                verified = checked
            result = self._judge(verified, tuple(scopes))
            if result.valid:
                result = self._limit(verified.record, result, charge)
        except SQLAlchemyError as error:
            return _database_unavailable(error)
        return result

    def _shared(self) -> _Shared:
        # Made on first use, in an app context: where they live follows the app's database.
        if self._shared_stores is None:
            with self._lock:
                if self._shared_stores is None:
                    database_url = self._engine().url.render_as_string(hide_password=False)
                    storage_url = self._settings.ratelimit_storage_url
                    current, *earlier = self._checked_key_names
                    self._shared_stores = _Shared(
                        hmac_sha256(current),
                        tuple(hmac_sha256(name_key) for name_key in earlier),
                        _checked_keys_at(storage_url, database_url),
                        # The windows' Redis; on one machine a file of their own beside the windows'.
                        (
                            self._ratelimiter.windows
                            if storage_url
                            else SqliteWindows(path_for(database_url, "budget-windows"))
                        ),
                    )
        return self._shared_stores

    def _limit(self, record: KeyRecord, valid: VerificationResult, charge: Charge = ONE_USE) -> VerificationResult:
        """Count the request against the key's rate limit, then take one of its remaining uses
        (``valid`` as it is for a key without either); with named limits that apply, or another
        cost, charge them all at once (:meth:`_charge`)."""
        if record.limits or charge is not ONE_USE:
            named = _applicable(record.limits, charge)
            if named or charge.cost != 1:
                return self._charge(record, valid, charge.cost, named)
        if not record.ratelimit_limit and record.remaining is None:
            return valid
        ratelimit = None
        if record.ratelimit_limit and record.ratelimit_period:
            try:
                ratelimit = self._ratelimiter.hit(record.id, record.ratelimit_limit, record.ratelimit_period)
            except WindowStorageError as error:
                if (unavailable := self._windows_unavailable(record, error)) is not None:
                    return unavailable
            if ratelimit is not None and not ratelimit.allowed:
                return VerificationResult(
                    Outcome.RATE_LIMITED, key_id=record.id, ratelimit=ratelimit, retry_after=ratelimit.reset_in
                )
        remaining = None
        if record.remaining is not None:
            taken, remaining = self._take_one_use(record)
            if not taken:
                return VerificationResult(Outcome.USAGE_EXCEEDED, key_id=record.id, remaining=0, ratelimit=ratelimit)
        return dataclasses.replace(valid, remaining=remaining, ratelimit=ratelimit)

    def _charge(
        self, record: KeyRecord, valid: VerificationResult, cost: int, named: list[tuple[LimitRecord, int]]
    ) -> VerificationResult:
        """Every limit that applies, all or nothing: the rate windows in one atomic hit, then the
        credits in one transaction; a credit's refusal gives the windows back."""
        windows: list[Counted] = []
        owners: list[LimitRecord | None] = []  # each window's named limit (None: the key's own rate limit)
        if record.ratelimit_limit and record.ratelimit_period:
            windows.append(Counted(record.id, record.ratelimit_limit, record.ratelimit_period, cost))
            owners.append(None)
        for limit, limit_cost in named:
            if limit.kind == RATE and limit.limit and limit.period:
                windows.append(Counted(f"limit:{limit.id}", limit.limit, limit.period, limit_cost))
                owners.append(limit)
        states: list[RateLimitState] = []
        if windows:
            try:
                hits = self._ratelimiter.windows.hit_all(windows)
            except WindowStorageError as error:
                if (unavailable := self._windows_unavailable(record, error)) is not None:
                    return unavailable
                windows, hits = [], []
            states = [
                RateLimitState(hit.allowed, window.limit, window.period, max(0, window.limit - hit.count), hit.reset_at)
                for window, hit in zip(windows, hits, strict=True)
            ]
            if hits and not hits[0].allowed:
                full = next(
                    i for i, (w, hit) in enumerate(zip(windows, hits, strict=True)) if hit.count + w.cost > w.limit
                )
                owner = owners[full]
                if owner is not None:
                    self._rate_limited(owner)
                return VerificationResult(
                    Outcome.RATE_LIMITED,
                    key_id=record.id,
                    ratelimit=states[full],
                    retry_after=states[full].reset_in,
                    limit=None if owner is None else owner.name,
                )
        credits = [(limit, limit_cost) for limit, limit_cost in named if limit.kind == CREDITS]
        remaining = None
        if record.remaining is not None or credits:
            drawn = self._credits.draw(record, cost, credits)
            if not drawn.taken:
                if windows:
                    self._give_back(windows)
                if drawn.refused is None:
                    self._announce_exhausted(record.id)
                return VerificationResult(
                    Outcome.USAGE_EXCEEDED, key_id=record.id, remaining=drawn.key_remaining, limit=drawn.refused
                )
            remaining = drawn.key_remaining
            for limit_id in drawn.running_low:
                self._tell(limit_id, "credits_low")
        nearest = min(states, key=lambda state: state.remaining / state.limit, default=None)
        return dataclasses.replace(valid, remaining=remaining, ratelimit=nearest)

    def _rate_limited(self, limit: LimitRecord) -> None:
        """Tell of an identity's rate limit that refused, at most once a period from this worker
        (the database's conditional UPDATE makes it once a period across all of them)."""
        now = time.monotonic()
        if not limit.shared or self._rate_limited_told.get(limit.id, 0.0) > now:
            return
        self._rate_limited_told[limit.id] = now + (limit.period or 1)
        self._tell(limit.id, "rate_limited")

    def _tell(self, limit_id: int, event: str) -> None:
        if self._on_limit_event is None:
            return
        try:
            with Session(self._engine()) as session, session.begin():
                self._on_limit_event(session, limit_id, event)
        except SQLAlchemyError as error:
            # An announcement is not worth a refused or failed check: the next crossing tells.
            current_app.logger.warning("keyservice: identity.%s not recorded (%s)", event, error_name(error))
        except Exception:
            # Nor is a bug in it: the check's own answer stands; the bug is logged whole.
            current_app.logger.exception("keyservice: identity.%s not recorded", event)

    def _give_back(self, windows: list[Counted]) -> None:
        try:
            self._ratelimiter.windows.give_back_all(windows)
        except WindowStorageError as error:
            # Over-refusal for the rest of the window, never over-admission.
            current_app.logger.warning("keyservice: a refused check's rate windows not given back (%s)", error)

    def _windows_unavailable(self, record: KeyRecord, error: WindowStorageError) -> VerificationResult | None:
        """The answer when the rate-limit storage fails: UNAVAILABLE, or None (the request goes
        through, said in the log) with ``KEYSERVICE_RATELIMIT_FAIL_OPEN``."""
        # The error's type only: its text can hold the storage URL, and a password with it.
        reason = type(error.__cause__ or error).__name__
        if not self._settings.ratelimit_fail_open:
            current_app.logger.warning("keyservice: rate-limit storage unavailable (%s)", reason)
            return VerificationResult(Outcome.UNAVAILABLE, key_id=record.id, retry_after=1)
        current_app.logger.warning(
            "keyservice: rate-limit storage unavailable (%s); letting the request through"
            " (KEYSERVICE_RATELIMIT_FAIL_OPEN)",
            reason,
        )
        return None

    def ratelimit_storage_answers(self) -> bool:
        """Whether the rate-limit storage answers now (for the readiness check)."""
        return self._ratelimiter.storage_answers()

    def flush_usage(self) -> None:
        """Write the usage this process has counted to the database now."""
        self._usage.flush()

    def _check(self, key: str, digest: bytes, client: str | None) -> _VerifiedKey | VerificationResult:
        """A key this worker has no trusted row for: found in the shared checked keys, or checked by bcrypt."""
        parsed = parse_key(key, self._settings.key_prefix)
        if parsed is None:
            return VerificationResult(Outcome.MALFORMED)
        generation = self._rows.generation()
        with self._one_check_at_a_time(digest):  # the others then find the key checked
            checked: _VerifiedKey | VerificationResult | None = None
            entry, under_fallback = self._checked_entry(key, digest)
            if entry is not None:
                record = self._load(parsed.key_id)
                if record is None:
                    return VerificationResult(Outcome.NOT_FOUND)
                if entry.matches(parsed.key_id, record.secret_hash):
                    checked = _VerifiedKey.of(record)
                    if under_fallback:  # named again under the current secret: no bcrypt after a rotation
                        self._shared().checked.put(digest, entry)
            checked = checked or self._check_with_bcrypt(parsed, digest, client)
        if isinstance(checked, _VerifiedKey):
            record = checked.record
            self._rows.put(digest, record.id, record.roles, record.external_client_id, checked, generation)
        return checked

    def _checked_entry(self, key: str, digest: bytes) -> tuple[CheckedKey | None, bool]:
        """The key's entry in the shared checked keys, and whether it was found under a fallback
        secret's name (the deployment secret is being rotated) rather than the current one's."""
        shared = self._shared()
        entry = shared.checked.get(digest)
        if entry is not None:
            return entry, False
        for earlier in shared.earlier_digests:
            entry = shared.checked.get(earlier(key.encode(errors="replace")))
            if entry is not None:
                return entry, True
        return None, False

    @contextmanager
    def _one_check_at_a_time(self, digest: bytes) -> Iterator[None]:
        """Hold the lock of this key's checks in this worker: a burst of a new key costs one bcrypt."""
        with self._lock:
            lock, waiting = self._checking.get(digest, (threading.Lock(), 0))
            self._checking[digest] = (lock, waiting + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, waiting = self._checking[digest]
                if waiting == 1:
                    del self._checking[digest]
                else:
                    self._checking[digest] = (lock, waiting - 1)

    def _check_with_bcrypt(
        self, parsed: ParsedKey, digest: bytes, client: str | None
    ) -> _VerifiedKey | VerificationResult:
        retry_after = self._budgets.take(parsed.key_id, client)
        if retry_after is not None:
            return VerificationResult(Outcome.RATE_LIMITED, retry_after=retry_after)
        record = self._load(parsed.key_id)
        if record is None:
            return VerificationResult(Outcome.NOT_FOUND)
        accepted = check_secret(parsed.secret, record.secret_hash)
        metrics.count_bcrypt_check(accepted)
        if not accepted:
            # The id is the key's, so its usage counts the attempt. No problem body shows it;
            # POST /keys/verify does, to a caller who manages that key anyway.
            return VerificationResult(Outcome.NOT_FOUND, key_id=record.id)
        self._budgets.give_back(parsed.key_id, client)  # the budgets count failed checks
        self._shared().checked.put(digest, CheckedKey(record.id, hash_digest(record.secret_hash)))
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


def verify_key(
    key: str,
    scopes: Iterable[str] = (),
    client: str | None = None,
    *,
    cost: int = 1,
    limits: Mapping[str, int] | None = None,
) -> VerificationResult:
    """Check ``key`` (and ``scopes``) for the current app, as ``@require_key`` does.

    Pass the caller's address as ``client`` where there is one: see :meth:`Verifier.verify`.
    ``cost`` units are charged in the key's own limits and its auto-applied named limits;
    ``limits`` names limits to charge and their costs (``{"tokens": 1200}``).
    """
    charge = ONE_USE if cost == 1 and not limits else Charge.of(cost, limits)
    return current_state().verifier.verify(key, scopes, client, charge)


def _applicable(limits: tuple[LimitRecord, ...], charge: Charge) -> list[tuple[LimitRecord, int]]:
    """The named limits a check charges, each with its cost: those it names, at their costs, and
    the auto-applied ones at the check's cost."""
    named = dict(charge.limits)
    return [(limit, named.get(limit.name, charge.cost)) for limit in limits if limit.name in named or limit.auto_apply]
