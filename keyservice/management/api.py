"""The management HTTP API: the ``keys`` and ``roles`` blueprints.

Every route names the scope it needs (:func:`requires`); tenancy is applied by
:mod:`keyservice.management.tenancy`, so a key of another client answers 404 as if it did not
exist. Bodies are capped at 64 KiB, refused by :mod:`keyservice.core.jsonguard` if
parsing or storing them could fail, and checked by :mod:`keyservice.management.schemas`.
"""

from __future__ import annotations

import math
from typing import Any

from flask import request
from flask_smorest import Blueprint

from ..core.crypto import parse_key
from ..core.errors import NotAllowed, StorageUnavailable
from ..core.models import AnySession, ApiKey
from ..core.outcomes import Outcome, VerificationResult
from ..core.state import current_state
from .apirules import apply_api_rules, no_store, problem_for, problems
from .principals import current_principal, requires
from .schemas import (
    EventListSchema,
    KeyCreatedSchema,
    KeyCreateSchema,
    KeyListArgsSchema,
    KeyListSchema,
    KeySchema,
    KeyUpdateSchema,
    RevokeArgsSchema,
    RoleInSchema,
    RoleListSchema,
    RoleSchema,
    RotateSchema,
    UsageArgsSchema,
    UsageSchema,
    VerifyRequestSchema,
    VerifyResponseSchema,
)
from .store import (
    create_key,
    delete_role,
    key_events,
    key_usage,
    list_keys,
    list_roles,
    put_role,
    update_key,
)
from .storeerrors import InvalidValue
from .tenancy import check_grantable, locked_managed_key, managed_key, revoke_managed, rotate_managed, with_key

keys_blueprint = Blueprint(
    "keys", __name__, url_prefix="/keys", description="Issue, list, change, rotate, revoke and verify API keys."
)
roles_blueprint = Blueprint(
    "roles", __name__, url_prefix="/roles", description="Named sets of scopes that keys can hold (keys:admin)."
)


for _blueprint in (keys_blueprint, roles_blueprint):
    apply_api_rules(_blueprint)
keys_blueprint.after_request(no_store)


def _session() -> AnySession:
    return current_state().db.session


@keys_blueprint.route("", methods=["POST"])
@requires("keys:write")
@keys_blueprint.arguments(KeyCreateSchema)
@keys_blueprint.response(201, KeyCreatedSchema)
@problems(keys_blueprint, 413, 415, 422)
def create(fields: dict[str, Any]) -> dict[str, Any]:
    """Issue a key. The response holds the full key, this once."""
    if not current_principal().manages(fields["external_client_id"]):
        raise NotAllowed("You cannot create keys for that client.")
    check_grantable(current_principal(), _session(), fields["scopes"], fields["roles"])
    state = current_state()
    api_key, key = create_key(state.db.session, state.settings, created_by=current_principal().id, **fields)
    state.db.session.commit()
    return with_key(api_key, key)


@keys_blueprint.route("", methods=["GET"])
@requires("keys:read")
@keys_blueprint.arguments(KeyListArgsSchema, location="query")
@keys_blueprint.response(200, KeyListSchema)
@problems(keys_blueprint, 422)
def list_(args: dict[str, Any]) -> dict[str, Any]:
    """List keys, newest first, a page at a time: pass ``next_cursor`` back as ``cursor``."""
    principal = current_principal()
    client_ids: set[str] | frozenset[str] | None = principal.client_ids
    if "external_client_id" in args:
        client_ids = {args["external_client_id"]} if principal.manages(args["external_client_id"]) else set()
    try:
        items, next_cursor = list_keys(
            current_state().db.session,
            client_ids=client_ids,
            include_revoked=args["include_revoked"],
            limit=args["limit"],
            cursor=args.get("cursor"),
        )
    except InvalidValue as error:  # the cursor, which came in the query
        raise problem_for(error, location="query") from None
    return {"items": items, "next_cursor": next_cursor}


@keys_blueprint.route("/<key_id>", methods=["GET"])
@requires("keys:read")
@keys_blueprint.response(200, KeySchema)
@problems(keys_blueprint, 404)
def show(key_id: str) -> ApiKey:
    """One key (never its secret)."""
    return managed_key(current_principal(), _session(), key_id)


@keys_blueprint.route("/<key_id>", methods=["PATCH"])
@requires("keys:write")
@keys_blueprint.arguments(KeyUpdateSchema)
@keys_blueprint.response(200, KeySchema)
@problems(keys_blueprint, 404, 409, 413, 415, 422)
def update(changes: dict[str, Any], key_id: str) -> ApiKey:
    """Change a key's name, scopes, roles, meta, expiry, whether it is enabled, and its limits.

    Only ``keys:admin`` may loosen a limit: raise or clear ``remaining`` or ``ratelimit``, add or
    raise a ``refill``, extend or clear ``expires_at``, or enable a key that ``keys:admin`` disabled
    (403 ``LOOSENING_NEEDS_ADMIN``)."""
    api_key = locked_managed_key(current_principal(), _session(), key_id)
    check_grantable(current_principal(), _session(), changes.get("scopes", []), changes.get("roles", []))
    update_key(
        current_state().db.session, api_key, changes, current_principal().id, may_loosen=current_principal().is_admin
    )
    current_state().db.session.commit()
    return api_key


@keys_blueprint.route("/<key_id>", methods=["DELETE"])
@requires("keys:write")
@keys_blueprint.arguments(RevokeArgsSchema, location="query")
@keys_blueprint.response(204)
@problems(keys_blueprint, 404, 422)
def revoke(args: dict[str, Any], key_id: str) -> None:
    """Revoke a key for good (it is kept for the audit trail), and every key rotated from it."""
    revoke_managed(current_principal(), _session(), key_id, args.get("reason"))
    _session().commit()


@keys_blueprint.route("/<key_id>/rotate", methods=["POST"])
@requires("keys:write")
@keys_blueprint.arguments(RotateSchema, required=False)
@keys_blueprint.response(201, KeyCreatedSchema)
@problems(keys_blueprint, 404, 409, 413, 415, 422)
def rotate(args: dict[str, Any], key_id: str) -> dict[str, Any]:
    """Issue a key with the same settings; the old one stops working after ``grace_seconds`` and
    shares the new key's ``remaining`` meanwhile. A key has one successor: rotating it again is 409."""
    new_key, key = rotate_managed(current_principal(), current_state(), key_id, args.get("grace_seconds", 0))
    _session().commit()
    return with_key(new_key, key)


@keys_blueprint.route("/<key_id>/events", methods=["GET"])
@requires("keys:read")
@keys_blueprint.response(200, EventListSchema)
@problems(keys_blueprint, 404)
def events(key_id: str) -> dict[str, Any]:
    """Who created, changed, rotated or revoked the key, and when (oldest first)."""
    return {"items": key_events(_session(), managed_key(current_principal(), _session(), key_id).id)}


@keys_blueprint.route("/<key_id>/usage", methods=["GET"])
@requires("keys:read")
@keys_blueprint.arguments(UsageArgsSchema, location="query")
@keys_blueprint.response(200, UsageSchema)
@problems(keys_blueprint, 404, 422)
def usage(args: dict[str, Any], key_id: str) -> dict[str, Any]:
    """The key's verifications by outcome code, per hour or per UTC day. Counts reach the
    database every KEYSERVICE_USAGE_FLUSH_INTERVAL seconds (10 by default)."""
    return key_usage(_session(), managed_key(current_principal(), _session(), key_id).id, **args)


@keys_blueprint.route("/verify", methods=["POST"])
@requires("keys:verify")
@keys_blueprint.arguments(VerifyRequestSchema)
@keys_blueprint.response(200, VerifyResponseSchema)
@problems(keys_blueprint, 413, 415, 422)
def verify(body: dict[str, Any]) -> dict[str, Any]:
    """Check a key as ``@require_key`` would; a verification counts as a use. Another client's
    key answers exactly as a key that does not exist: ``NOT_FOUND``, and no use counted. A check
    the key store cannot make now (``UNAVAILABLE``) is a 503, as on a protected view."""
    state = current_state()
    parsed = parse_key(body["key"].strip(), state.settings.key_prefix)
    api_key = None if parsed is None else state.db.session.get(ApiKey, parsed.key_id)
    if api_key is not None and not current_principal().manages(api_key.external_client_id):
        result = VerificationResult(Outcome.NOT_FOUND)
    else:
        result = state.verifier.verify(body["key"], body["scopes"], request.remote_addr)
    if result.code is Outcome.UNAVAILABLE:
        raise StorageUnavailable()
    return {
        "valid": result.valid,
        "code": result.code.value,
        "key_id": result.key_id,
        "external_client_id": result.external_client_id,
        "scopes": list(result.scopes),
        "remaining": result.remaining,
        "ratelimit": None
        if result.ratelimit is None
        else {
            "limit": result.ratelimit.limit,
            "remaining": result.ratelimit.remaining,
            "reset": math.ceil(result.ratelimit.reset_at),
        },
    }


@roles_blueprint.route("", methods=["GET"])
@requires("keys:admin")
@roles_blueprint.response(200, RoleListSchema)
@problems(roles_blueprint)
def roles() -> dict[str, Any]:
    """Every role and its scopes."""
    return {"items": list_roles(current_state().db.session)}


@roles_blueprint.route("/<name>", methods=["PUT"])
@requires("keys:admin")
@roles_blueprint.arguments(RoleInSchema)
@roles_blueprint.response(200, RoleSchema)
@problems(roles_blueprint, 413, 415, 422)
def set_role(body: dict[str, Any], name: str) -> Any:
    """Create or replace a role; keys holding it follow its scopes within a second."""
    try:
        role = put_role(current_state().db.session, name, body["scopes"])
    except InvalidValue as error:  # the name, which came in the path
        raise problem_for(error, location="path") from None
    current_state().db.session.commit()
    return role


@roles_blueprint.route("/<name>", methods=["DELETE"])
@requires("keys:admin")
@roles_blueprint.response(204)
@problems(roles_blueprint, 404)
def remove_role(name: str) -> None:
    """Delete a role; keys holding it lose its scopes."""
    delete_role(current_state().db.session, name)
    current_state().db.session.commit()
