"""The ``webhooks`` blueprint: register, list and remove endpoints, see their deliveries, test them.

An endpoint is one client's (its managers: ``keys:read`` to see, ``keys:write`` to change)
or, registered by ``keys:admin`` without ``external_client_id``, the operator's (every
client's events). Another client's endpoint answers 404, as one that does not exist.
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from ..core.errors import InvalidInput, NotAllowed
from ..core.models import WebhookEndpoint
from ..core.state import current_state
from .apirules import apply_api_rules, no_store, problems
from .principals import current_principal, requires
from .schemas import DeliveryListSchema, WebhookCreatedSchema, WebhookCreateSchema, WebhookListSchema, WebhookSchema
from .webhooks import (
    create_endpoint,
    delete_endpoint,
    enqueue_test,
    get_endpoint,
    list_deliveries,
    list_endpoints,
    redeliver,
)

webhooks_blueprint = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/webhooks",
    description="Signed key events (Standard Webhooks) sent to your endpoints.",
)
apply_api_rules(webhooks_blueprint)
webhooks_blueprint.after_request(no_store)  # create answers with a secret


def _owner(asked: str | None) -> str | None:
    """Whose the new endpoint is: the client asked for (if the principal manages it), the
    principal's one client, or nobody's, i.e. the operator's (keys:admin only)."""
    principal = current_principal()
    if asked is not None:
        if not principal.manages(asked):
            raise NotAllowed("You cannot register endpoints for that client.")
        return asked
    if principal.client_ids is None:
        return None
    if len(principal.client_ids) != 1:
        raise InvalidInput(
            "name the client whose events it receives",
            errors={"json": {"external_client_id": ["Required: you manage several clients."]}},
        )
    return next(iter(principal.client_ids))


def _endpoint(endpoint_id: str) -> WebhookEndpoint:
    return get_endpoint(current_state().db.session, endpoint_id, current_principal().client_ids)


@webhooks_blueprint.route("", methods=["POST"])
@requires("keys:write")
@webhooks_blueprint.arguments(WebhookCreateSchema)
@webhooks_blueprint.response(201, WebhookCreatedSchema)
@problems(webhooks_blueprint, 413, 415, 422)
def create(fields: dict[str, Any]) -> dict[str, Any]:
    """Register an endpoint. The response holds its signing secret (``whsec_...``), this once."""
    state = current_state()
    endpoint, secret = create_endpoint(
        state.db.session,
        state.settings,
        state.secret_keys,
        url=fields["url"],
        events=fields["events"],
        external_client_id=_owner(fields["external_client_id"]),
        created_by=current_principal().id,
    )
    state.db.session.commit()
    return {name: getattr(endpoint, name) for name in WebhookSchema().fields} | {"secret": secret}


@webhooks_blueprint.route("", methods=["GET"])
@requires("keys:read")
@webhooks_blueprint.response(200, WebhookListSchema)
@problems(webhooks_blueprint)
def list_() -> dict[str, Any]:
    """The endpoints the caller manages (never their secrets)."""
    return {"items": list_endpoints(current_state().db.session, current_principal().client_ids)}


@webhooks_blueprint.route("/<endpoint_id>", methods=["DELETE"])
@requires("keys:write")
@webhooks_blueprint.response(204)
@problems(webhooks_blueprint, 404)
def delete(endpoint_id: str) -> None:
    """Remove an endpoint; nothing more is sent to it."""
    delete_endpoint(current_state().db.session, _endpoint(endpoint_id))
    current_state().db.session.commit()


@webhooks_blueprint.route("/<endpoint_id>/deliveries", methods=["GET"])
@requires("keys:read")
@webhooks_blueprint.response(200, DeliveryListSchema)
@problems(webhooks_blueprint, 404)
def deliveries(endpoint_id: str) -> dict[str, Any]:
    """The endpoint's last 100 deliveries, newest first: pending, delivered or failed."""
    return {"items": list_deliveries(current_state().db.session, _endpoint(endpoint_id))}


@webhooks_blueprint.route("/<endpoint_id>/test", methods=["POST"])
@requires("keys:write")
@webhooks_blueprint.response(202, DeliveryListSchema)
@problems(webhooks_blueprint, 404)
def test(endpoint_id: str) -> dict[str, Any]:
    """Send a ``webhook.test`` event to the endpoint; answers with its delivery, to follow."""
    session = current_state().db.session
    endpoint = _endpoint(endpoint_id)
    delivery_id = enqueue_test(session, endpoint)
    session.commit()
    return {"items": [item for item in list_deliveries(session, endpoint) if item["id"] == delivery_id]}


@webhooks_blueprint.route("/<endpoint_id>/deliveries/<int:delivery_id>/redeliver", methods=["POST"])
@requires("keys:write")
@webhooks_blueprint.response(202)
@problems(webhooks_blueprint, 404, 409)
def redeliver_(endpoint_id: str, delivery_id: int) -> None:
    """Send a failed (or delivered) delivery again, with a new span of retries."""
    session = current_state().db.session
    redeliver(session, _endpoint(endpoint_id), delivery_id)
    session.commit()
