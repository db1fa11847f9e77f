"""The tables keyservice owns, and the rules that go with their rows.

The models live on their own ``metadata`` so that they can join whichever
Flask-SQLAlchemy ``db`` the app uses: the extension copies these tables into
that ``db``'s metadata, and the app's migrations see them like its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, MetaData, String, Text, UniqueConstraint, event, false
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, scoped_session
from sqlalchemy.orm.attributes import set_committed_value

from .keystatus import key_status

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# What keyservice's functions take as a session: a plain one, or Flask-SQLAlchemy's scoped one.
AnySession = Session | scoped_session[Any]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as timezone-aware UTC: SQLite hands timestamps back without a zone."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiKey(Base):
    """One issued key. The secret itself is never here, only its bcrypt hash."""

    __tablename__ = "keyservice_api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    start: Mapped[str] = mapped_column(String(40))
    secret_hash: Mapped[str] = mapped_column(String(60))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(1000))
    external_client_id: Mapped[str] = mapped_column(String(200), index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revocation_reason: Mapped[str | None] = mapped_column(String(200))
    rotated_from: Mapped[str | None] = mapped_column(String(16))
    # The key's one successor: set once, by the conditional UPDATE that rotates it.
    rotated_to: Mapped[str | None] = mapped_column(String(16))
    # Whose ``remaining`` this key's uses are taken from: after a rotation, the
    # successor's, so that old and new key share one quota (None: its own).
    quota_key_id: Mapped[str | None] = mapped_column(String(16))
    # A key that keys:admin disabled can only be enabled again by keys:admin.
    disabled_by_admin: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Uses left (None: unlimited), taken one at a time by an atomic UPDATE; a
    # refill puts it back to refill_amount at each day's or month's start (UTC).
    remaining: Mapped[int | None]
    refill_amount: Mapped[int | None]
    refill_interval: Mapped[str | None] = mapped_column(String(10))
    refilled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # At most ratelimit_limit requests in any ratelimit_period seconds (a moving window).
    ratelimit_limit: Mapped[int | None]
    ratelimit_period: Mapped[int | None]
    # The last valid use, written by the usage flush (usage.py), not by each request.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When its uses ran out and key.usage_exhausted was announced; a use taken clears it, so the
    # next time they run out is announced again. Set by a conditional UPDATE: once across workers.
    usage_exhausted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The expires_at that key.expiring was announced for (a new expires_at is announced again).
    expiry_announced_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Its own named limits (changed through management.identities.set_limits only).
    named_limits: Mapped[list[NamedLimit]] = relationship(order_by="NamedLimit.name", viewonly=True)

    @property
    def refill(self) -> dict[str, Any] | None:
        """The API form of the refill settings."""
        if self.refill_amount is None:
            return None
        return {"amount": self.refill_amount, "interval": self.refill_interval}

    @property
    def ratelimit(self) -> dict[str, int] | None:
        """The API form of the rate limit."""
        if self.ratelimit_limit is None or self.ratelimit_period is None:
            return None
        return {"limit": self.ratelimit_limit, "period": self.ratelimit_period}

    @property
    def limits(self) -> list[dict[str, Any]]:
        """The API form of its own named limits (its identity's are the identity's)."""
        return [limit.api_form for limit in self.named_limits]

    @property
    def status(self) -> str:
        """``active``, ``disabled``, ``expired``, ``revoked`` or ``leaked``, as of now
        (:func:`keyservice.core.keystatus.key_status`)."""
        return key_status(self, utcnow())

    def revoke(self, reason: str | None = None) -> bool:
        """Revoke the key; return False when it already was (revocation is final)."""
        if self.revoked_at is not None:
            return False
        self.revoked_at = utcnow()
        self.revocation_reason = reason
        return True


class Role(Base):
    """A named set of scopes; a key holding the role holds its current scopes."""

    __tablename__ = "keyservice_roles"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class KeyEvent(Base):
    """One entry of a key's audit trail: who did what to it, when, and what changed."""

    __tablename__ = "keyservice_key_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(ForeignKey(ApiKey.id), index=True)
    action: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Identity(Base):
    """A customer as a whole (one ``external_client_id``): its ``meta`` and the named limits every
    key of the customer shares (:class:`NamedLimit`)."""

    __tablename__ = "keyservice_identities"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    external_client_id: Mapped[str] = mapped_column(String(200), unique=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


RATE = "rate"
CREDITS = "credits"


class NamedLimit(Base):
    """A named limit of an identity (shared by all its keys) or of one key (it then wins over the
    identity's limit of the same name). ``kind`` is :data:`RATE` (``limit`` per ``period`` seconds,
    counted in the rate-limit windows' storage) or :data:`CREDITS` (``remaining``, taken in the
    database, with an optional daily or monthly refill). ``auto_apply``: counted at every
    verification of the keys it covers; otherwise only when a check names it."""

    __tablename__ = "keyservice_named_limits"
    __table_args__ = (
        UniqueConstraint("identity_id", "name"),
        UniqueConstraint("key_id", "name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    identity_id: Mapped[str | None] = mapped_column(ForeignKey(Identity.id, ondelete="CASCADE"), index=True)
    key_id: Mapped[str | None] = mapped_column(ForeignKey(ApiKey.id, ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(10))
    auto_apply: Mapped[bool] = mapped_column(default=True)
    limit: Mapped[int | None] = mapped_column("rate_limit")  # RATE: requests (units of cost) per period
    period: Mapped[int | None]  # RATE: seconds
    remaining: Mapped[int | None]  # CREDITS: units left
    refill_amount: Mapped[int | None]
    refill_interval: Mapped[str | None] = mapped_column(String(10))
    refilled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # CREDITS: identity.credits_low is sent once when remaining falls below this, armed again above it.
    low_threshold: Mapped[int | None]
    low_announced: Mapped[bool] = mapped_column(default=False, server_default=false())
    # RATE: when identity.rate_limited was last sent (at most once a period).
    rate_limited_announced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def api_form(self) -> dict[str, Any]:
        """The limit as the API gives it: its name, auto_apply, and its kind's settings."""
        shown: dict[str, Any] = {"name": self.name, "auto_apply": self.auto_apply}
        if self.kind == RATE:
            return shown | {"limit": self.limit, "period": self.period}
        refill = (
            None if self.refill_amount is None else {"amount": self.refill_amount, "interval": self.refill_interval}
        )
        return shown | {"remaining": self.remaining, "refill": refill, "low_threshold": self.low_threshold}


class KeyChange(Base):
    """One change to a key's row (``key_id``), to a role (``role``: every key holding it changed) or
    to a customer's identity (``client``: every key of that external client id changed), added in
    the transaction of the change. Ids grow in commit order, so each worker asks for the ids after
    the last it saw and forgets exactly those keys (``changefeed.py``)."""

    __tablename__ = "keyservice_key_changes"
    # SQLite's AUTOINCREMENT: an id is never given out twice, even once older rows are pruned.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key_id: Mapped[str | None] = mapped_column(String(16))
    role: Mapped[str | None] = mapped_column(String(100))
    client: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class KeyUsage(Base):
    """How many verifications of a key ended with one outcome within one UTC hour."""

    __tablename__ = "keyservice_key_usage"

    key_id: Mapped[str] = mapped_column(ForeignKey(ApiKey.id), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int]


class ReadinessProbe(Base):
    """One row that every readiness probe (``/readyz``) writes: proof the database takes writes."""

    __tablename__ = "keyservice_readiness_probe"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    probed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookEndpoint(Base):
    """A URL that receives signed key events: one client's (``external_client_id``) or, with
    None there, the operator's (every client's events)."""

    __tablename__ = "keyservice_webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: every event
    external_client_id: Mapped[str | None] = mapped_column(String(200), index=True)
    # The whsec_ signing secret, encrypted (Fernet) under the deployment secret's key (core/secretkeys.py).
    encrypted_secret: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))


class WebhookMessage(Base):
    """One event in the outbox, written in the transaction of the change that caused it.
    Its id is the ``webhook-id`` every endpoint gets it with, on every attempt."""

    __tablename__ = "keyservice_webhook_messages"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(16), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDelivery(Base):
    """One message to one endpoint: pending (due at ``next_attempt_at``), delivered or failed.

    A sender claims it by setting ``lease_until`` (a conditional UPDATE); a lease that
    runs out (a killed worker) lets another sender claim it again.
    """

    __tablename__ = "keyservice_webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey(WebhookMessage.id))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey(WebhookEndpoint.id), index=True)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Retries go on until KEYSERVICE_WEBHOOKS_RETRY_FOR after this: the event's time, or a redelivery's.
    retry_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("message_id", "endpoint_id"),
        Index("ix_keyservice_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )


class SigningKey(Base):
    """A key pair that signs access tokens (keyservice.verification.signingkeys).

    Its state follows from its times, so every worker and instance agrees on it:
    published in the JWKS from ``created_at``, signing from ``activates_at`` (the newest
    activated key signs), published until ``retires_at`` (None: still in use).
    ``generation`` is unique: of two workers making the first key, or two rotations at
    once, one insert wins and the other reads the winner's key.
    """

    __tablename__ = "keyservice_signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(unique=True)
    algorithm: Mapped[str] = mapped_column(String(10))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    # PKCS#8 PEM, encrypted (Fernet) under the deployment secret's key when ``encrypted`` (0.1 could store it clear).
    private_key: Mapped[str] = mapped_column(Text)
    encrypted: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    activates_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


TIMESTAMPS = {
    ApiKey: (
        "created_at",
        "updated_at",
        "expires_at",
        "revoked_at",
        "refilled_at",
        "last_used_at",
        "usage_exhausted_at",
        "expiry_announced_for",
    ),
    WebhookEndpoint: ("created_at",),
    WebhookMessage: ("created_at",),
    WebhookDelivery: ("next_attempt_at", "retry_from", "lease_until", "created_at", "delivered_at"),
    KeyUsage: ("hour",),
    Role: ("created_at", "updated_at"),
    KeyEvent: ("at",),
    KeyChange: ("at",),
    ReadinessProbe: ("probed_at",),
    SigningKey: ("created_at", "activates_at", "retires_at"),
}


def _timestamps_are_utc(row: Base, *_: Any) -> None:
    # A plain DateTime column keeps migrations free of custom types (a host app's
    # autogenerated migration could not import one); the zone is put back here.
    for name in TIMESTAMPS[type(row)]:
        if name in row.__dict__:
            set_committed_value(row, name, as_utc(row.__dict__[name]))


for _model in TIMESTAMPS:
    event.listen(_model, "load", _timestamps_are_utc)
    event.listen(_model, "refresh", _timestamps_are_utc)
