"""Webhook endpoints and the outbox: who receives which key events, and what is to be sent.

An event is written to the outbox (a :class:`WebhookMessage` and one pending
:class:`WebhookDelivery` per endpoint that wants it) by :func:`enqueue_key_event`, in
the session of the change that caused it: it is committed with that change or not
at all. :mod:`keyservice.management.sender` delivers it. The payload is the key object as the
API gives it, never the key or its hash.

The signing secrets (``whsec_...``) are the one secret keyservice must keep in a
form it can use: they are stored encrypted (Fernet: AES-128-CBC and HMAC-SHA256)
under the deployment secret's key for them (``core/secretkeys.py``).
"""

from __future__ import annotations

import base64
import secrets
from typing import Any, cast

from sqlalchemy import CursorResult, delete, or_, select, update

from ..core.config import Settings
from ..core.models import AnySession, ApiKey, WebhookDelivery, WebhookEndpoint, WebhookMessage, utcnow
from ..core.secretkeys import Purpose, SecretKeys
from .addresses import check_url
from .schemas import KeySchema
from .storeerrors import RecordNotFound, StateConflict

SECRET_PREFIX = "whsec_"
TEST_EVENT = "webhook.test"
NO_SUCH_ENDPOINT = "No webhook endpoint has this id."


def decrypt_secret(secret_keys: SecretKeys, endpoint: WebhookEndpoint) -> str:
    """The endpoint's ``whsec_`` secret, to sign with."""
    return secret_keys.fernet(Purpose.WEBHOOK_SECRETS).decrypt(endpoint.encrypted_secret.encode()).decode()


def _random_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(18)


def create_endpoint(
    session: AnySession,
    settings: Settings,
    secret_keys: SecretKeys,
    *,
    url: str,
    events: list[str],
    external_client_id: str | None,
    created_by: str | None,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint (its URL checked: see :func:`keyservice.management.addresses.check_url`); return
    it and its signing secret, which is never available again."""
    check_url(url, settings.webhooks_allow_private)
    secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()
    endpoint = WebhookEndpoint(
        id=_random_id("ep_"),
        url=url,
        events=list(dict.fromkeys(events)),
        external_client_id=external_client_id,
        created_by=created_by,
        encrypted_secret=secret_keys.fernet(Purpose.WEBHOOK_SECRETS).encrypt(secret.encode()).decode(),
    )
    session.add(endpoint)
    return endpoint, secret


def list_endpoints(session: AnySession, client_ids: frozenset[str] | None) -> list[WebhookEndpoint]:
    """The endpoints of ``client_ids`` (None: every endpoint, the operator's too), oldest first."""
    query = select(WebhookEndpoint).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    if client_ids is not None:
        query = query.where(WebhookEndpoint.external_client_id.in_(list(client_ids)))
    return list(session.scalars(query))


def get_endpoint(session: AnySession, endpoint_id: str, client_ids: frozenset[str] | None) -> WebhookEndpoint:
    """The endpoint, if it is one of ``client_ids``' (None: any); else :class:`RecordNotFound`."""
    endpoint = session.get(WebhookEndpoint, endpoint_id) if len(endpoint_id) <= 40 else None
    if endpoint is None or (client_ids is not None and endpoint.external_client_id not in client_ids):
        raise RecordNotFound(NO_SUCH_ENDPOINT)
    return endpoint


def delete_endpoint(session: AnySession, endpoint: WebhookEndpoint) -> None:
    """Remove an endpoint and its deliveries (nothing more is sent to it)."""
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)


def _add_message(
    session: AnySession,
    event_type: str,
    key_id: str | None,
    data: dict[str, Any],
    changes: dict[str, Any],
    endpoints: list[WebhookEndpoint],
) -> list[int]:
    now = utcnow()
    message = WebhookMessage(
        id=_random_id("msg_"),
        type=event_type,
        key_id=key_id,
        created_at=now,
        payload={
            "type": event_type,
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": data,
            "changes": changes,
        },
    )
    session.add(message)
    session.flush()
    deliveries = [
        WebhookDelivery(
            message_id=message.id,
            endpoint_id=endpoint.id,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            retry_from=now,
            created_at=now,
        )
        for endpoint in endpoints
    ]
    session.add_all(deliveries)
    session.flush()
    return [delivery.id for delivery in deliveries]


def _wanting(session: AnySession, event_type: str, external_client_id: str) -> list[WebhookEndpoint]:
    """The endpoints that want ``event_type`` of a client: the operator's, and the client's own."""
    return [
        endpoint
        for endpoint in session.scalars(
            select(WebhookEndpoint).where(
                or_(
                    WebhookEndpoint.external_client_id.is_(None),
                    WebhookEndpoint.external_client_id == external_client_id,
                )
            )
        )
        if not endpoint.events or event_type in endpoint.events
    ]


def enqueue_key_event(session: AnySession, api_key: ApiKey, action: str, changes: dict[str, Any]) -> None:
    """Put ``key.<action>`` for ``api_key`` in the outbox, for every endpoint that wants it: the
    operator's and those of the key's client. Nothing is written when no endpoint does."""
    event_type = f"key.{action}"
    endpoints = _wanting(session, event_type, api_key.external_client_id)
    if endpoints:
        _add_message(session, event_type, api_key.id, KeySchema().dump(api_key), changes, endpoints)


def enqueue_identity_event(session: AnySession, event: str, identity: dict[str, Any], limit: dict[str, Any]) -> None:
    """Put ``identity.<event>`` in the outbox for the endpoints that want it (the operator's and the
    client's): the identity object as the API gives it, and the limit it is about."""
    event_type = f"identity.{event}"
    endpoints = _wanting(session, event_type, identity["external_client_id"])
    if endpoints:
        _add_message(session, event_type, None, identity | {"limit": limit}, {}, endpoints)


def enqueue_test(session: AnySession, endpoint: WebhookEndpoint) -> int:
    """Put a ``webhook.test`` event for this one endpoint in the outbox; return its delivery's id."""
    [delivery_id] = _add_message(session, TEST_EVENT, None, {"endpoint_id": endpoint.id}, {}, [endpoint])
    return delivery_id


def list_deliveries(session: AnySession, endpoint: WebhookEndpoint, limit: int = 100) -> list[dict[str, Any]]:
    """The endpoint's most recent deliveries, newest first, with their event's type and key."""
    rows = session.execute(
        select(WebhookDelivery, WebhookMessage.type, WebhookMessage.key_id)
        .join(WebhookMessage, WebhookMessage.id == WebhookDelivery.message_id)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    )
    return [
        {
            name: getattr(delivery, name)
            for name in (
                "id",
                "message_id",
                "status",
                "attempts",
                "next_attempt_at",
                "last_status",
                "last_error",
                "created_at",
                "delivered_at",
            )
        }
        | {"type": event_type, "key_id": key_id}
        for delivery, event_type, key_id in rows
    ]


def redeliver(session: AnySession, endpoint: WebhookEndpoint, delivery_id: int) -> None:
    """Send a delivery that is not pending (failed, or delivered) again from now on, with a new
    ``KEYSERVICE_WEBHOOKS_RETRY_FOR`` of retries; a pending one is a :class:`StateConflict`."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.endpoint_id != endpoint.id:
        raise RecordNotFound("This endpoint has no delivery with this id.")
    now = utcnow()
    changed = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status != "pending")
        .values(status="pending", next_attempt_at=now, retry_from=now, lease_until=None)
    )
    if cast(CursorResult[Any], changed).rowcount == 0:
        raise StateConflict("This delivery is pending already.")
