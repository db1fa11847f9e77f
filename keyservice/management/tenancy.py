"""What a principal may do to one key, for every front door that acts for a principal (the
management API, the self-serve page): a key of a client it does not manage answers exactly
as a key that does not exist, and no key may carry a scope the principal could not grant.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import NotAllowed, ResourceNotFound
from ..core.models import AnySession, ApiKey
from ..core.scopes import Principal
from ..core.state import KeyServiceState
from .schemas import KeySchema
from .store import NO_SUCH_KEY, get_key, lock_key, revoke_key, rotate_key, scopes_of_roles


def check_managed(principal: Principal, api_key: ApiKey) -> None:
    """404, exactly as for a key that does not exist, unless ``principal`` manages the key's client."""
    if not principal.manages(api_key.external_client_id):
        raise ResourceNotFound(NO_SUCH_KEY)


def managed_key(principal: Principal, session: AnySession, key_id: str) -> ApiKey:
    """The key, if ``principal`` manages its client; otherwise 404 as if it did not exist."""
    api_key = get_key(session, key_id)
    check_managed(principal, api_key)
    return api_key


def locked_managed_key(principal: Principal, session: AnySession, key_id: str) -> ApiKey:
    """The key, locked for the transaction (:func:`keyservice.management.store.lock_key`), if
    ``principal`` manages it; the client is checked first, so no lock is taken on another's."""
    managed_key(principal, session, key_id)
    return lock_key(session, key_id)


def check_grantable(principal: Principal, session: AnySession, scopes: list[str], roles: list[str]) -> None:
    """403 unless ``principal`` may put these scopes, and its roles' scopes, on a key."""
    ungrantable = principal.ungrantable([*scopes, *scopes_of_roles(session, roles)])
    if ungrantable:
        raise NotAllowed(f"You cannot grant a scope you do not hold: {ungrantable[0]}.")


def revoke_managed(principal: Principal, session: AnySession, key_id: str, reason: str | None) -> None:
    """Revoke the key (and every key rotated from it) for ``principal``, under the key's lock."""
    revoke_key(session, locked_managed_key(principal, session, key_id), reason, principal.id)


def rotate_managed(principal: Principal, state: KeyServiceState, key_id: str, grace_seconds: int) -> tuple[ApiKey, str]:
    """Rotate the key for ``principal`` (:func:`keyservice.management.store.rotate_key`): the
    client is checked before the lock and again under it, and the new key is a fresh grant of
    the old one's scopes."""
    session = state.db.session
    managed_key(principal, session, key_id)

    def check(api_key: ApiKey) -> None:
        check_managed(principal, api_key)
        check_grantable(principal, session, api_key.scopes, api_key.roles)

    return rotate_key(session, state.settings, key_id, grace_seconds, principal.id, check)


def with_key(api_key: ApiKey, key: str) -> dict[str, Any]:
    """What create and rotate answer: the key's fields and, this once, the full key."""
    return {name: getattr(api_key, name) for name in KeySchema().fields} | {"key": key}
