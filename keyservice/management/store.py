"""Issuing, finding, changing and auditing keys and roles in the database.

The input here is already checked against :mod:`keyservice.management.schemas`. These
functions add to or read from ``session``; committing is the caller's job (the
view, the CLI command, or the host app's own code). Every change to a key is
recorded as a :class:`KeyEvent`, and no event ever holds a secret. What they refuse
they raise as :mod:`keyservice.management.storeerrors`, which the API and the CLI each answer in
their own shape.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, func, or_, select, text, update

from ..core.config import Settings
from ..core.crypto import NewKey, generate_key, is_key_id
from ..core.keystatus import LEAKED
from ..core.models import AnySession, ApiKey, KeyEvent, KeyUsage, Role, as_utc, utcnow
from ..core.outcomes import Outcome
from ..verification.changefeed import serialise_changes
from .identities import carry_key_limits, set_limits
from .loosening import loosened
from .rolenames import ROLE_NAME_RULE, is_role_name
from .storeerrors import AdminOnly, InvalidValue, RecordNotFound, StateConflict
from .webhooks import enqueue_key_event

# The settings a rotated key carries over from the key it replaces.
CARRIED_OVER = (
    "name",
    "description",
    "external_client_id",
    "scopes",
    "roles",
    "meta",
    "expires_at",
    "enabled",
    "remaining",
    "refill",
    "ratelimit",
)
# The same answer for a key that does not exist and one that is not the caller's: no id echoed.
NO_SUCH_KEY = "No key has this id."
# Takes the key's row lock on PostgreSQL and the database's write lock on SQLite, changing nothing.
_LOCK_KEY = text(f"UPDATE {ApiKey.__tablename__} SET enabled = enabled WHERE id = :key_id")


def _limit_columns(fields: dict[str, Any]) -> dict[str, Any]:
    """The API's ``refill`` and ``ratelimit`` objects (None: off) as the key's columns."""
    columns: dict[str, Any] = {}
    if "refill" in fields:
        refill = fields["refill"] or {}
        columns.update(
            refill_amount=refill.get("amount"),
            refill_interval=refill.get("interval"),
            refilled_at=utcnow() if refill else None,
        )
    if "ratelimit" in fields:
        ratelimit = fields["ratelimit"] or {}
        columns.update(ratelimit_limit=ratelimit.get("limit"), ratelimit_period=ratelimit.get("period"))
    return columns


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _check_roles(session: AnySession, roles: list[str]) -> None:
    if not roles:
        return
    unknown = sorted(set(roles) - set(session.scalars(select(Role.name).where(Role.name.in_(roles)))))
    if unknown:
        raise InvalidValue(f"no role is named {unknown[0]!r}", "roles", [f"Unknown role: {name}" for name in unknown])


def _check_refill(api_key: ApiKey) -> None:
    if api_key.refill_amount is not None and api_key.remaining is None:
        raise InvalidValue(
            "a refill needs remaining: it is the count a refill restores", "remaining", ["Required with refill."]
        )


def record_event(
    session: AnySession, key_id: str, action: str, actor: str | None, changes: dict[str, Any] | None = None
) -> None:
    """Add one entry to a key's audit trail, and its ``key.<action>`` webhook event to the outbox
    (in the same transaction: both are committed with the change, or neither)."""
    session.add(KeyEvent(key_id=key_id, action=action, actor=actor, changes=changes or {}))
    enqueue_key_event(session, cast(ApiKey, session.get(ApiKey, key_id)), action, changes or {})


def create_key(
    session: AnySession,
    settings: Settings,
    *,
    name: str,
    external_client_id: str,
    description: str | None = None,
    scopes: Iterable[str] = (),
    roles: Iterable[str] = (),
    expires_at: datetime | None = None,
    meta: dict[str, Any] | None = None,
    enabled: bool = True,
    remaining: int | None = None,
    refill: dict[str, Any] | None = None,
    ratelimit: dict[str, int] | None = None,
    created_by: str | None = None,
    rotated_from: str | None = None,
    new: NewKey | None = None,
    limits: list[dict[str, Any]] | None = None,
) -> tuple[ApiKey, str]:
    """Issue a key (``new``: one already generated); return its row and the full key,
    which is never available again."""
    roles = list(dict.fromkeys(roles))
    _check_roles(session, roles)
    new = new or generate_key(settings.key_prefix, settings.bcrypt_rounds)
    api_key = ApiKey(
        id=new.key_id,
        start=f"{settings.key_prefix}_{new.key_id}",
        secret_hash=new.secret_hash,
        name=name,
        description=description,
        external_client_id=external_client_id,
        scopes=list(dict.fromkeys(scopes)),
        roles=roles,
        meta=meta or {},
        enabled=enabled,
        expires_at=_utc(expires_at),
        remaining=remaining,
        created_by=created_by,
        rotated_from=rotated_from,
        **_limit_columns({"refill": refill, "ratelimit": ratelimit}),
    )
    _check_refill(api_key)
    session.add(api_key)
    session.flush()
    if limits:  # a new key's limits only hold it back: anyone who may issue it may set them
        set_limits(session, limits, may_loosen=True, key_id=api_key.id)
        session.expire(api_key, ["named_limits"])
    record_event(session, api_key.id, "created", created_by, {"rotated_from": rotated_from} if rotated_from else None)
    return api_key, new.key


def get_key(session: AnySession, key_id: str) -> ApiKey:
    """The key with id ``key_id``; raises :class:`RecordNotFound`."""
    # No id of another form exists, and PostgreSQL would refuse one with a NUL (a 500).
    api_key = session.get(ApiKey, key_id) if is_key_id(key_id) else None
    if api_key is None:
        raise RecordNotFound(NO_SUCH_KEY)
    return api_key


def lock_key(session: AnySession, key_id: str) -> ApiKey:
    """The key with id ``key_id``, read afresh under a lock held until the transaction ends
    (its row's on PostgreSQL, the write lock on SQLite): changes of one key are serialised
    by the database, never by a check in Python. Raises :class:`RecordNotFound`."""
    if not is_key_id(key_id):
        raise RecordNotFound(NO_SUCH_KEY)
    serialise_changes(session)  # before the row's lock: see changefeed.py
    if cast(CursorResult[Any], session.execute(_LOCK_KEY, {"key_id": key_id})).rowcount == 0:
        raise RecordNotFound(NO_SUCH_KEY)
    return cast(ApiKey, session.get(ApiKey, key_id, populate_existing=True))


def _jsonable(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


def update_key(
    session: AnySession, api_key: ApiKey, changes: dict[str, Any], actor: str | None, may_loosen: bool
) -> None:
    """Apply ``changes`` (field to new value) to ``api_key`` (locked: :func:`lock_key`) and record
    what really changed. Loosening a limit needs ``may_loosen`` (see :mod:`keyservice.management.loosening`);
    raises :class:`AdminOnly` without it."""
    if "expires_at" in changes:
        changes["expires_at"] = _utc(changes["expires_at"])
    if not may_loosen and (fields := loosened(api_key, changes)):
        raise AdminOnly(fields)
    if ("remaining" in changes or "refill" in changes) and api_key.quota_key_id is not None:
        raise StateConflict("this key's uses are its successor's since it was rotated: change the successor")
    if changes.get("enabled") is False and api_key.enabled:
        api_key.disabled_by_admin = may_loosen
    if "roles" in changes:
        changes["roles"] = list(dict.fromkeys(changes["roles"]))
        _check_roles(session, changes["roles"])
    if "scopes" in changes:
        changes["scopes"] = list(dict.fromkeys(changes["scopes"]))
    columns = {name: value for name, value in changes.items() if name not in ("refill", "ratelimit", "limits")}
    if "refill" in changes and changes["refill"] != api_key.refill:  # an unchanged refill keeps its clock
        columns |= _limit_columns({"refill": changes["refill"]})
    if "ratelimit" in changes:
        columns |= _limit_columns({"ratelimit": changes["ratelimit"]})
    changed = {}
    for field, value in columns.items():
        old = getattr(api_key, field)
        old = as_utc(old) if isinstance(old, datetime) else old
        if old != value:
            changed[field] = [_jsonable(old), _jsonable(value)]
            setattr(api_key, field, value)
    _check_refill(api_key)
    if "limits" in changes:
        before = api_key.limits
        set_limits(session, changes["limits"], may_loosen, key_id=api_key.id)  # AdminOnly for a loosening
        session.expire(api_key, ["named_limits"])
        if api_key.limits != before:
            changed["limits"] = [before, api_key.limits]
    if changed:
        record_event(session, api_key.id, "updated", actor, changed)


def revoke_key(session: AnySession, api_key: ApiKey, reason: str | None, actor: str | None) -> bool:
    """Revoke ``api_key`` (locked: :func:`lock_key`) and every key rotated from it, each under
    its own lock, so that no successor outlives the revocation whatever raced with it.
    Return False when the key already was revoked (revocation is final)."""
    revoked = api_key.revoke(reason)
    if revoked:
        record_event(session, api_key.id, "revoked", actor, {"reason": reason} if reason else None)
    successor_id = api_key.rotated_to
    while successor_id is not None:
        successor = lock_key(session, successor_id)
        if successor.revoke(reason):
            record_event(
                session,
                successor.id,
                "revoked",
                actor,
                {"revoked_with": api_key.id} | ({"reason": reason} if reason else {}),
            )
        successor_id = successor.rotated_to
    return revoked


def report_leak(session: AnySession, key_id: str, actor: str, where: dict[str, str]) -> bool:
    """Revoke key ``key_id`` (and the keys rotated from it: :func:`revoke_key`) as ``leaked``, and
    record where it was found (``where``: the report's url, source...) with a ``leaked`` event.
    Return False, recording nothing, when it already was revoked: a report repeated revokes once."""
    api_key = lock_key(session, key_id)
    if not revoke_key(session, api_key, LEAKED, actor):
        return False
    record_event(session, api_key.id, "leaked", actor, {name: value for name, value in where.items() if value})
    return True


def announce_usage_exhausted(session: AnySession, key_id: str) -> None:
    """Record ``usage_exhausted`` on the key whose uses key ``key_id`` draws (its own, or its
    successor's), once: the conditional UPDATE lets one request of all workers do it, and a use
    taken afterwards (a refill, a raised ``remaining``) arms it again."""
    quota_key_id = session.scalar(select(func.coalesce(ApiKey.quota_key_id, ApiKey.id)).where(ApiKey.id == key_id))
    announced = session.execute(
        update(ApiKey)
        .where(ApiKey.id == quota_key_id, ApiKey.remaining == 0, ApiKey.usage_exhausted_at.is_(None))
        .values(usage_exhausted_at=utcnow(), updated_at=ApiKey.updated_at)
        .returning(ApiKey.id)
    ).first()
    if announced is not None:
        record_event(session, announced[0], "usage_exhausted", None)


def announce_expiring(session: AnySession, before: timedelta) -> list[str]:
    """Record ``expiring`` on each live key that expires within ``before`` and has not been
    announced for that ``expires_at`` (a key rotated away is not: its rotation was); return their
    ids. The conditional UPDATE announces each once across workers and instances."""
    now = utcnow()
    due = and_(
        ApiKey.expires_at > now,
        ApiKey.expires_at <= now + before,
        ApiKey.revoked_at.is_(None),
        ApiKey.rotated_to.is_(None),
        ApiKey.expiry_announced_for.is_distinct_from(ApiKey.expires_at),
    )
    candidates = list(session.scalars(select(ApiKey.id).where(due).limit(100)))
    if not candidates:
        return []
    announced = list(
        session.scalars(
            update(ApiKey)
            .where(ApiKey.id.in_(candidates), due)
            .values(expiry_announced_for=ApiKey.expires_at, updated_at=ApiKey.updated_at)
            .returning(ApiKey.id)
        )
    )
    for key_id in announced:
        api_key = cast(ApiKey, session.get(ApiKey, key_id, populate_existing=True))
        record_event(session, key_id, "expiring", None, {"expires_at": _jsonable(as_utc(api_key.expires_at))})
    return announced


def rotate_key(
    session: AnySession,
    settings: Settings,
    key_id: str,
    grace_seconds: int,
    actor: str | None,
    check: Callable[[ApiKey], None] = lambda api_key: None,
) -> tuple[ApiKey, str]:
    """Issue a key with the settings of key ``key_id``, whose one successor it becomes; the old
    key expires ``grace_seconds`` from now, and its uses are the new key's meanwhile (one quota).

    The old key is locked (:func:`lock_key`) and ``check`` runs on it (the caller's rules);
    a key revoked, expired or rotated already is a :class:`StateConflict`.
    """
    new = generate_key(settings.key_prefix, settings.bcrypt_rounds)  # bcrypt before taking the lock
    api_key = lock_key(session, key_id)
    check(api_key)
    now = utcnow()
    expires_at = as_utc(api_key.expires_at)
    if api_key.revoked_at is not None or (expires_at is not None and expires_at <= now):
        raise StateConflict("a revoked or expired key cannot be rotated")
    if api_key.rotated_to is not None:
        raise StateConflict("this key has been rotated already: rotate its successor")
    new_key, key = create_key(
        session,
        settings,
        created_by=actor,
        rotated_from=api_key.id,
        new=new,
        **{field: getattr(api_key, field) for field in CARRIED_OVER},
    )
    new_key.refilled_at = api_key.refilled_at  # a refill that is due stays due
    new_key.disabled_by_admin = api_key.disabled_by_admin
    carry_key_limits(session, api_key.id, new_key.id)
    api_key.rotated_to = new_key.id
    if api_key.remaining is not None:
        # The uses left move to the new key; the old one, and any key that drew on it, draw on the new one.
        session.execute(update(ApiKey).where(ApiKey.quota_key_id == api_key.id).values(quota_key_id=new_key.id))
        api_key.remaining, api_key.quota_key_id = 0, new_key.id
    grace_ends = now + timedelta(seconds=grace_seconds)
    if expires_at is None or grace_ends < expires_at:
        api_key.expires_at = grace_ends
    record_event(
        session,
        api_key.id,
        "rotated",
        actor,
        {"rotated_to": new_key.id, "grace_seconds": grace_seconds, "expires_at": _jsonable(as_utc(api_key.expires_at))},
    )
    return new_key, key


def key_events(session: AnySession, key_id: str) -> list[KeyEvent]:
    """A key's audit trail, oldest first."""
    return list(session.scalars(select(KeyEvent).where(KeyEvent.key_id == key_id).order_by(KeyEvent.id)))


def key_usage(
    session: AnySession, key_id: str, granularity: str, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    """A key's verifications by outcome code, per hour or per UTC day, from ``since`` to ``until``
    (by default the last 24 hours, or 30 days); periods without any are left out."""
    return {"key_id": key_id} | usage_of(session, KeyUsage.key_id == key_id, granularity, since, until)


def client_usage(
    session: AnySession,
    external_client_id: str,
    granularity: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """:func:`key_usage` across every key of a client (its identity's analytics)."""
    keys = select(ApiKey.id).where(ApiKey.external_client_id == external_client_id)
    return usage_of(session, KeyUsage.key_id.in_(keys), granularity, since, until)


def usage_of(
    session: AnySession,
    which: ColumnElement[bool],
    granularity: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The verifications of the usage rows ``which`` selects, added up by outcome code per hour or
    per UTC day (the database adds up each hour), from ``since`` to ``until``."""
    until = until or utcnow()
    since = since or until - (timedelta(hours=24) if granularity == "hour" else timedelta(days=30))
    first_hour = since.replace(minute=0, second=0, microsecond=0)
    rows = session.execute(
        select(KeyUsage.hour, KeyUsage.outcome, func.sum(KeyUsage.count))
        .where(which, KeyUsage.hour >= first_hour, KeyUsage.hour < until)
        .group_by(KeyUsage.hour, KeyUsage.outcome)
        .order_by(KeyUsage.hour)
    )
    periods: dict[datetime, Counter[str]] = {}
    for hour, outcome, count in rows:
        hour = cast(datetime, as_utc(hour))
        start = hour if granularity == "hour" else hour.replace(hour=0)
        periods.setdefault(start, Counter())[outcome] += int(count)
    return {
        "granularity": granularity,
        "since": since,
        "until": until,
        "items": [
            {"start": start, "counts": dict(counts), "total": counts.total()} for start, counts in periods.items()
        ],
    }


def daily_use(session: AnySession, key_ids: list[str], days: int = 7) -> dict[str, list[dict[str, Any]]]:
    """Each key's verifications per UTC day over the last ``days`` days, today included, oldest
    first: ``{"date", "valid", "refused"}`` (counts reach the table at each usage flush)."""
    today = utcnow().date()
    dates = [today - timedelta(days=back) for back in range(days - 1, -1, -1)]
    use: dict[str, dict[date, dict[str, Any]]] = {
        key_id: {day: {"date": day, "valid": 0, "refused": 0} for day in dates} for key_id in key_ids
    }
    rows = session.execute(
        select(KeyUsage.key_id, KeyUsage.hour, KeyUsage.outcome, KeyUsage.count).where(
            KeyUsage.key_id.in_(key_ids), KeyUsage.hour >= datetime.combine(dates[0], time(), UTC)
        )
    )
    for key_id, hour, outcome, count in rows:
        day = use[key_id].get(cast(datetime, as_utc(hour)).date())
        if day is not None:
            day["valid" if outcome == Outcome.VALID.value else "refused"] += count
    return {key_id: list(by_day.values()) for key_id, by_day in use.items()}


def _encode_cursor(api_key: ApiKey) -> str:
    position = json.dumps([as_utc(api_key.created_at).isoformat(), api_key.id])  # type: ignore[union-attr]
    return base64.urlsafe_b64encode(position.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    # Only what _encode_cursor makes: an aware time and a key id (never a NUL for PostgreSQL).
    try:
        created_at, key_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        position = datetime.fromisoformat(created_at).astimezone(UTC)
        if created_at.endswith("+00:00") and isinstance(key_id, str) and is_key_id(key_id):
            return position, key_id
    except (ValueError, TypeError, OverflowError, binascii.Error):
        pass
    raise InvalidValue("cursor is not one this API gave out", "cursor", ["Not a cursor this API gave out."])


def list_keys(
    session: AnySession,
    *,
    client_ids: Iterable[str] | None = None,
    include_revoked: bool = False,
    limit: int | None = None,
    cursor: str | None = None,
) -> tuple[list[ApiKey], str | None]:
    """Keys newest first, of ``client_ids`` (None: all), from ``cursor`` on;
    return them and the cursor of the next page (None on the last)."""
    query = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
    if client_ids is not None:
        query = query.where(ApiKey.external_client_id.in_(list(client_ids)))
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    if cursor is not None:
        created_at, key_id = _decode_cursor(cursor)
        query = query.where(
            or_(ApiKey.created_at < created_at, and_(ApiKey.created_at == created_at, ApiKey.id < key_id))
        )
    if limit is None:
        return list(session.scalars(query)), None
    page = list(session.scalars(query.limit(limit + 1)))
    return page[:limit], _encode_cursor(page[limit - 1]) if len(page) > limit else None


def scopes_of_roles(session: AnySession, roles: Iterable[str]) -> list[str]:
    """The scopes the named roles hold now (unknown names hold none)."""
    return [
        scope
        for role_scopes in session.scalars(select(Role.scopes).where(Role.name.in_(list(roles))))
        for scope in role_scopes
    ]


def put_role(session: AnySession, name: str, scopes: list[str]) -> Role:
    """Create or replace the role ``name``; keys holding it follow its new scopes.
    Raises :class:`InvalidValue` for a name no role may have."""
    if not is_role_name(name):
        raise InvalidValue(f"a role name is {ROLE_NAME_RULE}", "name", [f"Must be {ROLE_NAME_RULE}."])
    role = session.get(Role, name) or Role(name=name)
    role.scopes = list(dict.fromkeys(scopes))
    session.add(role)
    return role


def list_roles(session: AnySession) -> list[Role]:
    """Every role, by name."""
    return list(session.scalars(select(Role).order_by(Role.name)))


def delete_role(session: AnySession, name: str) -> None:
    """Delete a role; keys that held it lose its scopes. Raises :class:`RecordNotFound`."""
    role = session.get(Role, name) if is_role_name(name) else None
    if role is None:
        raise RecordNotFound(f"no role is named {name!r}")
    session.delete(role)
