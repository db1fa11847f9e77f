"""What the management API takes and gives, as marshmallow schemas.

They validate every request (a wrong field is a 422 problem naming it) and the
OpenAPI document at ``/openapi.json`` is generated from them. The CLI loads its
input through the same schemas, so both front doors apply the same rules.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from ..core.jsonguard import UNSTORABLE_TEXT, is_storable_text, unstorable
from ..core.keystatus import STATUSES
from .rolenames import ROLE_NAME_PATTERN, ROLE_NAME_RULE, is_role_name

MAX_META_BYTES = 4096
MAX_SCOPES = 100
MAX_GRACE_SECONDS = 30 * 24 * 3600
USAGE_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _in_the_future(value: datetime) -> None:
    if value <= datetime.now(UTC):
        raise ValidationError("Must be in the future.")


def _small_json(value: dict[str, Any]) -> None:
    refused = unstorable(value)  # the HTTP body was checked whole; the CLI's --meta was not
    if refused is not None:
        raise ValidationError(refused)
    if len(json.dumps(value).encode()) > MAX_META_BYTES:
        raise ValidationError(f"Must be at most {MAX_META_BYTES} bytes of JSON.")


class Text(fields.String):
    """A string both databases can store: no NUL (PostgreSQL refuses it) and no unpaired
    surrogate (no UTF-8 holds one; argv's undecodable bytes arrive as such)."""

    default_error_messages = {"unstorable": UNSTORABLE_TEXT}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not is_storable_text(text):
            raise self.make_error("unstorable")
        return text


class UtcDateTime(fields.AwareDateTime):
    """An RFC 3339 date and time, read as UTC when it names no offset, and converted to UTC.

    A time whose UTC form falls outside years 1 to 9999 (``9999-12-31T23:59:59-14:00``)
    is a field error, not an ``OverflowError`` later.
    """

    default_error_messages = {"range": "Must be within the years 0001 to 9999 in UTC."}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(default_timezone=UTC, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise self.make_error("range") from None


def _scope() -> Text:
    return Text(
        validate=validate.Regexp(r"[a-z0-9_.:*-]{1,100}\Z", error="Must be 1 to 100 of a-z 0-9 _ . : * -."),
        metadata={"pattern": "^[a-z0-9_.:*-]{1,100}$"},
    )


def _scopes(**kwargs: Any) -> fields.List[str]:
    return fields.List(_scope(), validate=validate.Length(max=MAX_SCOPES), **kwargs)


def _role_name(value: str) -> None:
    if not is_role_name(value):
        raise ValidationError(f"Must be {ROLE_NAME_RULE}.")


def _role_names(**kwargs: Any) -> fields.List[str]:
    return fields.List(
        Text(validate=_role_name, metadata={"pattern": f"^{ROLE_NAME_PATTERN}$"}),
        validate=validate.Length(max=MAX_SCOPES),
        **kwargs,
    )


def _name(**kwargs: Any) -> Text:
    return Text(validate=validate.Length(1, 200), **kwargs)


def _description(**kwargs: Any) -> Text:
    return Text(allow_none=True, validate=validate.Length(max=1000), **kwargs)


def _expires_at(**kwargs: Any) -> UtcDateTime:
    return UtcDateTime(allow_none=True, validate=_in_the_future, **kwargs)


def _meta(**kwargs: Any) -> fields.Dict:
    return fields.Dict(keys=Text(), validate=_small_json, **kwargs)


class UtcTimestamp(fields.DateTime):
    """Every stored timestamp is UTC: written as RFC 3339 with a Z."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class StrictBoolean(fields.Boolean):
    """Only JSON true and false: "yes" or 1 is a wrong type, not a boolean."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class RefillSchema(Schema):
    amount = fields.Integer(strict=True, required=True, validate=validate.Range(1, 1_000_000_000))
    interval = Text(required=True, validate=validate.OneOf(["daily", "monthly"]))


class RateLimitSchema(Schema):
    limit = fields.Integer(strict=True, required=True, validate=validate.Range(1, 1_000_000))
    period = fields.Integer(
        strict=True,
        required=True,
        validate=validate.Range(1, 31 * 24 * 3600),
        metadata={"description": "The window, in seconds."},
    )


def _remaining(**kwargs: Any) -> fields.Integer:
    return fields.Integer(strict=True, allow_none=True, validate=validate.Range(0, 1_000_000_000), **kwargs)


def _refill(**kwargs: Any) -> fields.Nested:
    return fields.Nested(RefillSchema, allow_none=True, **kwargs)


def _ratelimit(**kwargs: Any) -> fields.Nested:
    return fields.Nested(RateLimitSchema, allow_none=True, **kwargs)


# Named limits: an identity's (shared by all its keys), or a key's own.

MAX_NAMED_LIMITS = 20
LIMIT_NAME_PATTERN = "[a-z0-9_.:-]{1,64}"


class NamedLimitSchema(Schema):
    """A rate limit (``limit`` per ``period`` seconds) or credits (``remaining``, with an optional
    ``refill`` and a ``low_threshold`` for identity.credits_low): one or the other."""

    name = Text(
        required=True,
        validate=validate.Regexp(rf"{LIMIT_NAME_PATTERN}\Z", error="Must be 1 to 64 of a-z 0-9 _ . : -."),
        metadata={"pattern": f"^{LIMIT_NAME_PATTERN}$"},
    )
    auto_apply = StrictBoolean(load_default=True)
    limit = fields.Integer(strict=True, validate=validate.Range(1, 1_000_000_000))
    period = fields.Integer(
        strict=True, validate=validate.Range(1, 31 * 24 * 3600), metadata={"description": "Seconds."}
    )
    remaining = fields.Integer(strict=True, validate=validate.Range(0, 1_000_000_000_000))
    refill = fields.Nested(RefillSchema, allow_none=True)
    low_threshold = fields.Integer(strict=True, allow_none=True, validate=validate.Range(1, 1_000_000_000_000))

    @validates_schema
    def _one_kind(self, data: dict[str, Any], **kwargs: Any) -> None:
        rate = "limit" in data or "period" in data
        credits = "remaining" in data or data.get("refill") is not None or data.get("low_threshold") is not None
        if rate == credits:
            raise ValidationError("Either limit and period (a rate limit) or remaining (credits).", "_schema")
        if rate and not ("limit" in data and "period" in data):
            raise ValidationError("A rate limit needs both limit and period.", "_schema")
        if credits and "remaining" not in data:
            raise ValidationError("Credits need remaining.", "remaining")


def _named_limits(**kwargs: Any) -> fields.List[Any]:
    return fields.List(
        fields.Nested(NamedLimitSchema), validate=[validate.Length(max=MAX_NAMED_LIMITS), _distinct_names], **kwargs
    )


def _distinct_names(limits: list[dict[str, Any]]) -> None:
    names = [limit["name"] for limit in limits]
    if len(set(names)) != len(names):
        raise ValidationError("Each limit needs a name of its own.")


class NamedLimitOutSchema(Schema):
    name = fields.String()
    auto_apply = fields.Boolean()
    limit = fields.Integer()
    period = fields.Integer()
    remaining = fields.Integer()
    refill = fields.Nested(RefillSchema, allow_none=True)
    low_threshold = fields.Integer(allow_none=True)


class KeyCreateSchema(Schema):
    name = _name(required=True)
    description = _description(load_default=None)
    external_client_id = _name(required=True)
    scopes = _scopes(load_default=list)
    roles = _role_names(load_default=list)
    meta = _meta(load_default=dict)
    expires_at = _expires_at(load_default=None)
    remaining = _remaining(load_default=None)
    refill = _refill(load_default=None)
    ratelimit = _ratelimit(load_default=None)
    limits = _named_limits(
        load_default=list, metadata={"description": "Named limits of its own; each wins over its identity's."}
    )


class KeyUpdateSchema(Schema):
    name = _name()
    description = _description()
    scopes = _scopes()
    roles = _role_names()
    meta = _meta()
    expires_at = _expires_at()
    enabled = StrictBoolean()
    remaining = _remaining()
    refill = _refill()
    ratelimit = _ratelimit()
    limits = _named_limits(metadata={"description": "Its named limits, all of them: those left out are removed."})


class KeySchema(Schema):
    id = fields.String()
    start = fields.String()
    name = fields.String()
    description = fields.String(allow_none=True)
    external_client_id = fields.String()
    scopes = fields.List(fields.String())
    roles = fields.List(fields.String())
    meta = fields.Dict()
    enabled = fields.Boolean()
    created_at = UtcTimestamp()
    created_by = fields.String(allow_none=True)
    updated_at = UtcTimestamp()
    expires_at = UtcTimestamp(allow_none=True)
    revoked_at = UtcTimestamp(allow_none=True)
    revocation_reason = fields.String(allow_none=True)
    rotated_from = fields.String(allow_none=True)
    last_used_at = UtcTimestamp(
        allow_none=True,
        metadata={"description": "The last valid use, as of the usage flush (KEYSERVICE_USAGE_FLUSH_INTERVAL)."},
    )
    remaining = fields.Integer(allow_none=True)
    refill = fields.Nested(RefillSchema, allow_none=True)
    ratelimit = fields.Nested(RateLimitSchema, allow_none=True)
    limits = fields.List(fields.Nested(NamedLimitOutSchema), metadata={"description": "Its own named limits."})
    status = fields.String(
        dump_only=True,
        metadata={
            "enum": list(STATUSES),
            "description": "Whether the key works now: active, or why not (leaked: revoked as"
            " reported leaked). The dashboard and the CLI show it as it is.",
        },
    )


class KeyCreatedSchema(KeySchema):
    key = fields.String(metadata={"description": "The full key. It is shown this once and never again."})


class KeyListArgsSchema(Schema):
    external_client_id = Text()
    include_revoked = fields.Boolean(load_default=False)
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 100))
    cursor = Text(validate=validate.Length(max=200))


class KeyListSchema(Schema):
    items = fields.List(fields.Nested(KeySchema))
    next_cursor = fields.String(allow_none=True)


class RevokeArgsSchema(Schema):
    reason = Text(validate=validate.Length(1, 200))


class RotateSchema(Schema):
    grace_seconds = fields.Integer(strict=True, load_default=0, validate=validate.Range(0, MAX_GRACE_SECONDS))


class VerifyRequestSchema(Schema):
    key = Text(required=True, validate=validate.Length(max=1000))
    scopes = _scopes(load_default=list)


class RateLimitStateSchema(Schema):
    limit = fields.Integer()
    remaining = fields.Integer()
    reset = fields.Integer(metadata={"description": "When the window has room again, in Unix seconds."})


class VerifyResponseSchema(Schema):
    valid = fields.Boolean()
    code = fields.String()
    key_id = fields.String(allow_none=True)
    external_client_id = fields.String(allow_none=True)
    scopes = fields.List(fields.String())
    remaining = fields.Integer(allow_none=True)
    ratelimit = fields.Nested(RateLimitStateSchema, allow_none=True)


class EventSchema(Schema):
    id = fields.Integer()
    action = fields.String()
    actor = fields.String(allow_none=True)
    at = UtcTimestamp()
    changes = fields.Dict()


class EventListSchema(Schema):
    items = fields.List(fields.Nested(EventSchema))


def _usage_bound(description: str) -> UtcDateTime:
    return UtcDateTime(validate=validate.Range(min=USAGE_EPOCH), metadata={"description": description})


class UsageArgsSchema(Schema):
    granularity = Text(load_default="hour", validate=validate.OneOf(["hour", "day"]))
    since = _usage_bound("From (default: 24 hours before `until` by hour, 30 days by day).")
    until = _usage_bound("Until (default: now).")

    @validates_schema
    def _since_before_until(self, data: dict[str, Any], **_: Any) -> None:
        if "since" in data and "until" in data and data["since"] >= data["until"]:
            raise ValidationError("Must be before until.", "since")


class UsagePeriodSchema(Schema):
    start = UtcTimestamp(metadata={"description": "The hour's or the UTC day's start."})
    counts = fields.Dict(
        keys=fields.String(), values=fields.Integer(), metadata={"description": "Verifications by outcome code."}
    )
    total = fields.Integer()


class UsageSchema(Schema):
    key_id = fields.String()
    granularity = fields.String()
    since = UtcTimestamp()
    until = UtcTimestamp()
    items = fields.List(
        fields.Nested(UsagePeriodSchema), metadata={"description": "Periods with any use, oldest first."}
    )


class RoleInSchema(Schema):
    scopes = _scopes(required=True)


class RoleSchema(Schema):
    name = fields.String()
    scopes = fields.List(fields.String())
    created_at = UtcTimestamp()
    updated_at = UtcTimestamp()


class RoleListSchema(Schema):
    items = fields.List(fields.Nested(RoleSchema))


class ProblemSchema(Schema):
    type = fields.String()
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    code = fields.String()
    errors = fields.Dict(metadata={"description": "Per-field errors, by where the input came from."})


def first_error(error: ValidationError) -> str:
    """The first of ``error``'s messages as one line: ``field: message``."""

    def walk(messages: Any, path: str) -> str:
        if isinstance(messages, dict):
            name, inner = next(iter(messages.items()))
            return walk(inner, f"{path}.{name}" if path else str(name))
        if isinstance(messages, list):
            return walk(messages[0], path)
        return f"{path}: {messages}" if path else str(messages)

    return walk(error.messages, "")


# The key events a webhook endpoint can ask for (an empty list: every one).
WEBHOOK_EVENTS = (
    "key.created",
    "key.updated",
    "key.rotated",
    "key.revoked",
    "key.leaked",
    "key.expiring",
    "key.usage_exhausted",
    "identity.credits_low",
    "identity.rate_limited",
)
MAX_URL_LENGTH = 2000


class WebhookCreateSchema(Schema):
    url = Text(required=True, validate=validate.Length(1, MAX_URL_LENGTH))
    events = fields.List(
        Text(validate=validate.OneOf(WEBHOOK_EVENTS)),
        load_default=list,
        validate=validate.Length(max=len(WEBHOOK_EVENTS)),
        metadata={"description": "The events to send; empty: every event."},
    )
    external_client_id = _name(
        load_default=None,
        allow_none=True,
        metadata={"description": "The client whose keys' events it gets; none (keys:admin only): every client's."},
    )


class WebhookSchema(Schema):
    id = fields.String()
    url = fields.String()
    events = fields.List(fields.String())
    external_client_id = fields.String(allow_none=True)
    created_at = UtcTimestamp()
    created_by = fields.String(allow_none=True)


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(metadata={"description": "The signing secret (``whsec_...``). It is shown this once."})


class WebhookListSchema(Schema):
    items = fields.List(fields.Nested(WebhookSchema))


class DeliverySchema(Schema):
    id = fields.Integer()
    webhook_id = fields.String(attribute="message_id", metadata={"description": "The webhook-id header."})
    type = fields.String()
    key_id = fields.String(allow_none=True)
    status = fields.String(metadata={"description": "pending, delivered or failed."})
    attempts = fields.Integer()
    next_attempt_at = UtcTimestamp()
    last_status = fields.Integer(allow_none=True, metadata={"description": "The receiver's last HTTP status."})
    last_error = fields.String(allow_none=True)
    created_at = UtcTimestamp()
    delivered_at = UtcTimestamp(allow_none=True)


class DeliveryListSchema(Schema):
    items = fields.List(fields.Nested(DeliverySchema))


class LeakReportSchema(Schema):
    token = Text(required=True, validate=validate.Length(max=1000))
    type = Text(load_default="", validate=validate.Length(max=200))
    url = Text(load_default="", validate=validate.Length(max=MAX_URL_LENGTH))
    source = Text(load_default="", validate=validate.Length(max=200))


class TokenResponseSchema(Schema):
    """RFC 6749 section 5.1."""

    access_token = fields.String(required=True, metadata={"description": "A JWT (RFC 9068), typ at+jwt, ES256."})
    token_type = fields.String(required=True, metadata={"enum": ["Bearer"]})
    expires_in = fields.Integer(required=True, metadata={"description": "Seconds the token lives."})
    scope = fields.String(required=True, metadata={"description": "The scopes it holds, space-separated."})


class OAuthErrorSchema(Schema):
    """RFC 6749 section 5.2, with keyservice's ``code`` when a key was refused."""

    error = fields.String(
        required=True,
        metadata={"enum": ["invalid_request", "invalid_client", "unsupported_grant_type", "invalid_scope"]},
    )
    error_description = fields.String()
    code = fields.String(metadata={"description": "Why the key was refused (the outcome code of @require_key)."})


class JwksSchema(Schema):
    """RFC 7517 section 5: a JWK Set."""

    keys = fields.List(fields.Dict(), required=True)


class AuthorizationServerMetadataSchema(Schema):
    """RFC 8414 section 2."""

    issuer = fields.String(required=True)
    token_endpoint = fields.String(required=True)
    jwks_uri = fields.String(required=True)
    grant_types_supported = fields.List(fields.String(), required=True)
    token_endpoint_auth_methods_supported = fields.List(fields.String(), required=True)
    response_types_supported = fields.List(fields.String(), required=True)


# The self-serve page's own routes (keyservice.management.self_serve): not in the OpenAPI document,
# whose API is for management keys; the same field rules.

# Clerk's presets: how long a key made on the page lives ("never": until revoked).
EXPIRY_PRESETS = {
    "never": None,
    "1d": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "60d": timedelta(days=60),
    "90d": timedelta(days=90),
    "180d": timedelta(days=180),
    "1y": timedelta(days=365),
}


class SelfServeCreateSchema(Schema):
    team = _name(load_default=None)
    name = _name(required=True)
    description = _description(load_default=None)
    expires = Text(load_default="never", validate=validate.OneOf([*EXPIRY_PRESETS, "custom"]))
    expires_at = UtcDateTime(validate=_in_the_future, load_default=None)
    scopes = _scopes(load_default=list)

    @validates_schema
    def _custom_date_with_custom_only(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["expires"] == "custom" and data["expires_at"] is None:
            raise ValidationError("Required when expires is custom.", "expires_at")
        if data["expires"] != "custom" and data["expires_at"] is not None:
            raise ValidationError("Only with expires: custom.", "expires_at")


class SelfServeListArgsSchema(Schema):
    team = _name(load_default=None)
    include_revoked = fields.Boolean(load_default=False)
    cursor = Text(validate=validate.Length(max=200))


class SelfServeRevokeSchema(Schema):
    reason = Text(load_default=None, validate=validate.Length(1, 200))


class DailyUseSchema(Schema):
    date = fields.Date()
    valid = fields.Integer()
    refused = fields.Integer()


class SelfServeKeySchema(Schema):
    """A key as its team sees it on the page: no limits, roles or meta, which are the operator's."""

    id = fields.String()
    start = fields.String()
    name = fields.String()
    description = fields.String(allow_none=True)
    scopes = fields.List(fields.String())
    status = fields.String()
    created_at = UtcTimestamp()
    created_by = fields.String(allow_none=True)
    expires_at = UtcTimestamp(allow_none=True)
    revoked_at = UtcTimestamp(allow_none=True)
    revocation_reason = fields.String(allow_none=True)
    rotated_from = fields.String(allow_none=True)
    rotated_to = fields.String(allow_none=True)
    last_used_at = UtcTimestamp(allow_none=True)
    use_7d = fields.List(fields.Nested(DailyUseSchema), metadata={"description": "The last 7 UTC days, oldest first."})


class SelfServeKeyCreatedSchema(SelfServeKeySchema):
    key = fields.String()


class SelfServeKeyListSchema(Schema):
    items = fields.List(fields.Nested(SelfServeKeySchema))
    next_cursor = fields.String(allow_none=True)


# Identities (/identities): a customer's limits shared by all its keys.


class IdentityCreateSchema(Schema):
    external_client_id = _name(required=True)
    meta = _meta(load_default=dict)
    limits = _named_limits(load_default=list)


class IdentityUpdateSchema(Schema):
    meta = _meta()
    limits = _named_limits(metadata={"description": "The identity's limits, all of them: those left out are removed."})


class IdentitySchema(Schema):
    id = fields.String()
    external_client_id = fields.String()
    meta = fields.Dict()
    created_at = UtcTimestamp()
    updated_at = UtcTimestamp()
    limits = fields.List(fields.Nested(NamedLimitOutSchema))


class IdentityListArgsSchema(Schema):
    external_client_id = _name()


class IdentityListSchema(Schema):
    items = fields.List(fields.Nested(IdentitySchema))


class IdentityUsageSchema(Schema):
    identity_id = fields.String()
    external_client_id = fields.String()
    granularity = fields.String()
    since = UtcTimestamp()
    until = UtcTimestamp()
    items = fields.List(
        fields.Nested(UsagePeriodSchema),
        metadata={"description": "Periods with any verification of any of its keys, oldest first."},
    )
