"""Identities (one per customer, its ``external_client_id``) and named limits, in the database.

An identity's named limits are shared by all of the customer's keys; a key may have named limits
of its own, which win over the identity's of the same name (verification reads both:
``keyservice.verification.keyrows``). Limits are given as the API gives them: ``{"name",
"limit", "period"}`` for a rate limit, ``{"name", "remaining", "refill"?, "low_threshold"?}`` for
credits, each with ``auto_apply`` (default true). As in ``store.py``: the input is already checked
against the schemas, nothing is committed here, and what is refused is raised as ``storeerrors``;
a change that loosens a limit needs ``may_loosen`` (``keys:admin``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..core.crypto import is_key_id, new_id
from ..core.models import CREDITS, RATE, AnySession, Identity, NamedLimit, utcnow
from .schemas import IdentitySchema
from .storeerrors import AdminOnly, RecordNotFound
from .webhooks import enqueue_identity_event

NO_SUCH_IDENTITY = "No identity has this id."
# Refill intervals from the shortest: a shorter one refills more often (it loosens).
REFILL_INTERVALS = ("daily", "monthly")


def identity_limits(session: AnySession, identity_id: str) -> list[NamedLimit]:
    """An identity's named limits, by name."""
    query = select(NamedLimit).where(NamedLimit.identity_id == identity_id).order_by(NamedLimit.name)
    return list(session.scalars(query))


def key_limits(session: AnySession, key_id: str) -> list[NamedLimit]:
    """A key's own named limits, by name."""
    return list(session.scalars(select(NamedLimit).where(NamedLimit.key_id == key_id).order_by(NamedLimit.name)))


def ensure_identity(session: AnySession, external_client_id: str) -> Identity:
    """The identity of ``external_client_id``, made if it has none yet (by one insert that a
    concurrent one cannot duplicate: the unique client id decides)."""
    dialect = session.connection().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    now = utcnow()
    session.execute(
        insert(Identity)
        .values(id=new_id(), external_client_id=external_client_id, meta={}, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=[Identity.external_client_id])
    )
    # Inserted now or there already: one row either way.
    return session.scalars(select(Identity).where(Identity.external_client_id == external_client_id)).one()


def get_identity(session: AnySession, identity_id: str) -> Identity:
    """The identity with id ``identity_id``; raises :class:`RecordNotFound`."""
    identity = session.get(Identity, identity_id) if is_key_id(identity_id) else None
    if identity is None:
        raise RecordNotFound(NO_SUCH_IDENTITY)
    return identity


def list_identities(session: AnySession, client_ids: Iterable[str] | None) -> list[Identity]:
    """The identities of ``client_ids`` (None: all), by client id."""
    query = select(Identity).order_by(Identity.external_client_id)
    if client_ids is not None:
        query = query.where(Identity.external_client_id.in_(list(client_ids)))
    return list(session.scalars(query))


def _loosens(old: NamedLimit | None, new: dict[str, Any] | None) -> bool:
    """Whether replacing ``old`` (None: no such limit) by ``new`` (None: removed) lets more through."""
    if old is None:
        return False  # a new limit only holds traffic back
    if new is None or _kind(new) != old.kind or (old.auto_apply and not new.get("auto_apply", True)):
        return True
    if old.kind == RATE:
        return bool(new["limit"] > (old.limit or 0) or new["period"] < (old.period or 0))
    refill = new.get("refill")
    if refill is not None and (
        old.refill_amount is None
        or refill["amount"] > old.refill_amount
        or REFILL_INTERVALS.index(refill["interval"]) < REFILL_INTERVALS.index(old.refill_interval or "monthly")
    ):
        return True
    return bool(new["remaining"] > (old.remaining or 0))


def _kind(fields: dict[str, Any]) -> str:
    return RATE if "period" in fields else CREDITS


def _columns(fields: dict[str, Any], now: datetime) -> dict[str, Any]:
    columns: dict[str, Any] = {"kind": _kind(fields), "auto_apply": fields.get("auto_apply", True)}
    if columns["kind"] == RATE:
        return columns | {"limit": fields["limit"], "period": fields["period"], "remaining": None}
    refill = fields.get("refill") or {}
    return columns | {
        "limit": None,
        "period": None,
        "remaining": fields["remaining"],
        "refill_amount": refill.get("amount"),
        "refill_interval": refill.get("interval"),
        "refilled_at": now if refill else None,
        "low_threshold": fields.get("low_threshold"),
        "low_announced": False,
    }


def set_limits(
    session: AnySession,
    limits: list[dict[str, Any]],
    may_loosen: bool,
    *,
    identity_id: str | None = None,
    key_id: str | None = None,
) -> None:
    """Make the named limits of an identity (or of a key) exactly ``limits``: add, change and remove
    by name. Raises :class:`AdminOnly`, naming each, when one would loosen without ``may_loosen``."""
    owner = NamedLimit.identity_id == identity_id if identity_id is not None else NamedLimit.key_id == key_id
    existing = {limit.name: limit for limit in session.scalars(select(NamedLimit).where(owner))}
    wanted = {fields["name"]: fields for fields in limits}
    if not may_loosen:
        loosened = [
            f"limits.{name}"
            for name in sorted(existing.keys() | wanted.keys())
            if _loosens(existing.get(name), wanted.get(name))
        ]
        if loosened:
            raise AdminOnly(loosened)
    now = utcnow()
    for name, limit in existing.items():
        if name not in wanted:
            session.delete(limit)
    for name, fields in wanted.items():
        limit = existing.get(name) or NamedLimit(identity_id=identity_id, key_id=key_id, name=name)
        for column, value in _columns(fields, now).items():
            setattr(limit, column, value)
        session.add(limit)
    session.flush()


def carry_key_limits(session: AnySession, old_key_id: str, new_key_id: str) -> None:
    """A rotation's new key gets the old key's own named limits: rate limits as they are, credits
    moved (the old key keeps none: its grace period cannot spend them twice)."""
    own = key_limits(session, old_key_id)
    if not own:
        return
    set_limits(session, [limit.api_form for limit in own], may_loosen=True, key_id=new_key_id)
    for limit in own:
        if limit.kind == CREDITS:
            limit.remaining = 0


def create_identity(
    session: AnySession, external_client_id: str, meta: dict[str, Any], limits: list[dict[str, Any]]
) -> Identity:
    """Make (or take, if the client has one already) the identity of ``external_client_id`` with
    ``meta`` and exactly ``limits``: new limits only tighten, so any manager of the client may."""
    identity = ensure_identity(session, external_client_id)
    existing = identity_limits(session, identity.id)
    set_limits(session, limits, may_loosen=not existing, identity_id=identity.id)
    identity.meta = meta
    return identity


def delete_identity(session: AnySession, identity: Identity, may_loosen: bool) -> None:
    """Delete an identity and its limits (its keys stay, limited by their own only); with limits,
    that loosens them: ``may_loosen`` is needed."""
    set_limits(session, [], may_loosen, identity_id=identity.id)
    session.delete(identity)


def identity_fields(session: AnySession, identity: Identity) -> dict[str, Any]:
    """An identity's fields as the API gives them (for its schema to dump), its limits as they stand now."""
    fields = {
        name: getattr(identity, name) for name in ("id", "external_client_id", "meta", "created_at", "updated_at")
    }
    return fields | {"limits": [limit.api_form for limit in identity_limits(session, identity.id)]}


def announce_limit_event(session: AnySession, limit_id: int, event: str) -> None:
    """Record, and announce as a webhook, that an identity's limit ``limit_id`` ran low on credits
    (``credits_low``: once per crossing of its threshold) or refused a check (``rate_limited``: at
    most once a period). The conditional UPDATE lets one check of all workers and instances do it."""
    now = utcnow()
    armed: tuple[ColumnElement[bool], ...]
    if event == "credits_low":
        armed = (
            NamedLimit.low_threshold.is_not(None),
            NamedLimit.remaining < NamedLimit.low_threshold,
            NamedLimit.low_announced.is_(False),
        )
        values: dict[str, Any] = {"low_announced": True}
    else:
        period = session.scalar(select(NamedLimit.period).where(NamedLimit.id == limit_id))
        if period is None:
            return
        cutoff = now - timedelta(seconds=period)
        armed = (or_(NamedLimit.rate_limited_announced_at.is_(None), NamedLimit.rate_limited_announced_at <= cutoff),)
        values = {"rate_limited_announced_at": now}
    announced = session.execute(
        update(NamedLimit)
        .where(NamedLimit.id == limit_id, NamedLimit.identity_id.is_not(None), *armed)
        .values(**values)
        .returning(NamedLimit.identity_id)
        # No ORM object is loaded to be kept in step (SQLite's naive times against an aware cutoff).
        .execution_options(synchronize_session=False)
    ).first()
    if announced is None:
        return
    identity = session.get(Identity, announced[0])
    limit = session.get(NamedLimit, limit_id, populate_existing=True)
    if identity is not None and limit is not None:
        shown = IdentitySchema().dump(identity_fields(session, identity))
        enqueue_identity_event(session, event, shown, limit.api_form)
