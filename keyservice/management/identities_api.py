"""The ``identities`` blueprint: a customer's limits shared by all its keys, and its analytics.

The same tenancy as keys: ``keys:read``/``keys:write`` act on the principal's own clients'
identities (another's answers 404, exactly as one that does not exist), ``keys:admin`` on every
one. A client's manager may add and tighten limits; raising, removing or no longer auto-applying
one needs ``keys:admin`` (403 ``LOOSENING_NEEDS_ADMIN``). Changes reach every worker within
``KEYSERVICE_CACHE_TTL``.
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint
from sqlalchemy import select, text

from ..core.errors import Conflict, NotAllowed, ResourceNotFound
from ..core.models import AnySession, Identity
from ..core.state import current_state
from ..verification.changefeed import serialise_changes
from .apirules import apply_api_rules, no_store, problems
from .identities import (
    NO_SUCH_IDENTITY,
    create_identity,
    delete_identity,
    get_identity,
    identity_fields,
    list_identities,
    set_limits,
)
from .principals import current_principal, requires
from .schemas import (
    IdentityCreateSchema,
    IdentityListArgsSchema,
    IdentityListSchema,
    IdentitySchema,
    IdentityUpdateSchema,
    IdentityUsageSchema,
    UsageArgsSchema,
)
from .store import client_usage

identities_blueprint = Blueprint(
    "identities",
    __name__,
    url_prefix="/identities",
    description="Customers as a whole: limits and credits shared by all of a customer's keys, and their use.",
)
apply_api_rules(identities_blueprint)
identities_blueprint.after_request(no_store)

# Takes the identity's row lock (PostgreSQL) or the write lock (SQLite), changing nothing.
_LOCK_IDENTITY = text(f"UPDATE {Identity.__tablename__} SET meta = meta WHERE id = :identity_id")


def _session() -> AnySession:
    return current_state().db.session


def _managed(identity_id: str, lock: bool = False) -> Identity:
    """The identity, if the principal manages its client (else 404 as if there were none); with
    ``lock``, held until the transaction ends, so that changes of one identity are serialised."""
    identity = get_identity(_session(), identity_id)
    if not current_principal().manages(identity.external_client_id):
        raise ResourceNotFound(NO_SUCH_IDENTITY)
    if lock:
        serialise_changes(_session())  # before the row's lock, as for keys
        _session().execute(_LOCK_IDENTITY, {"identity_id": identity.id})
        _session().refresh(identity)
    return identity


def _shown(identity: Identity) -> dict[str, Any]:
    return identity_fields(_session(), identity)


@identities_blueprint.route("", methods=["POST"])
@requires("keys:write")
@identities_blueprint.arguments(IdentityCreateSchema)
@identities_blueprint.response(201, IdentitySchema)
@problems(identities_blueprint, 409, 413, 415, 422)
def create(fields: dict[str, Any]) -> dict[str, Any]:
    """Make a client's identity, with its meta and limits (new limits only hold traffic back, so a
    manager of the client may). A client has one identity: a second is 409, change it instead."""
    if not current_principal().manages(fields["external_client_id"]):
        raise NotAllowed("You cannot make identities for that client.")
    session = _session()
    serialise_changes(session)
    exists = select(Identity.id).where(Identity.external_client_id == fields["external_client_id"])
    if session.scalar(exists) is not None:
        raise Conflict("This client has an identity already: change it with PATCH /identities/<id>.")
    identity = create_identity(session, fields["external_client_id"], fields["meta"], fields["limits"])
    session.commit()
    return _shown(identity)


@identities_blueprint.route("", methods=["GET"])
@requires("keys:read")
@identities_blueprint.arguments(IdentityListArgsSchema, location="query")
@identities_blueprint.response(200, IdentityListSchema)
@problems(identities_blueprint, 422)
def list_(args: dict[str, Any]) -> dict[str, Any]:
    """The identities of the clients the principal manages (``?external_client_id=`` for one)."""
    client_ids = current_principal().client_ids
    if "external_client_id" in args:
        asked = args["external_client_id"]
        client_ids = frozenset([asked]) if current_principal().manages(asked) else frozenset()
    return {"items": [_shown(identity) for identity in list_identities(_session(), client_ids)]}


@identities_blueprint.route("/<identity_id>", methods=["GET"])
@requires("keys:read")
@identities_blueprint.response(200, IdentitySchema)
@problems(identities_blueprint, 404)
def show(identity_id: str) -> dict[str, Any]:
    """One identity, with its limits (credits as they stand now)."""
    return _shown(_managed(identity_id))


@identities_blueprint.route("/<identity_id>", methods=["PATCH"])
@requires("keys:write")
@identities_blueprint.arguments(IdentityUpdateSchema)
@identities_blueprint.response(200, IdentitySchema)
@problems(identities_blueprint, 404, 413, 415, 422)
def update(changes: dict[str, Any], identity_id: str) -> dict[str, Any]:
    """Change its meta, or its limits as a whole (those left out are removed). Loosening a limit
    needs ``keys:admin``: raising it, removing it, a refill added or raised, auto_apply turned off."""
    identity = _managed(identity_id, lock=True)
    if "limits" in changes:
        set_limits(_session(), changes["limits"], current_principal().is_admin, identity_id=identity.id)
    if "meta" in changes:
        identity.meta = changes["meta"]
    _session().commit()
    return _shown(identity)


@identities_blueprint.route("/<identity_id>", methods=["DELETE"])
@requires("keys:write")
@identities_blueprint.response(204)
@problems(identities_blueprint, 404)
def delete(identity_id: str) -> None:
    """Delete an identity and its limits (its keys stay, with their own limits only): with limits,
    a loosening, for ``keys:admin``."""
    delete_identity(_session(), _managed(identity_id, lock=True), current_principal().is_admin)
    _session().commit()


@identities_blueprint.route("/<identity_id>/usage", methods=["GET"])
@requires("keys:read")
@identities_blueprint.arguments(UsageArgsSchema, location="query")
@identities_blueprint.response(200, IdentityUsageSchema)
@problems(identities_blueprint, 404, 422)
def usage(args: dict[str, Any], identity_id: str) -> dict[str, Any]:
    """Verifications of all the customer's keys by outcome code, per hour or per UTC day (as of
    each worker's last usage flush)."""
    identity = _managed(identity_id)
    return {"identity_id": identity.id, "external_client_id": identity.external_client_id} | client_usage(
        _session(), identity.external_client_id, **args
    )
