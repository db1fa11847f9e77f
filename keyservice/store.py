"""Issuing, finding and changing keys in the database.

These functions add to or read from ``session``; committing is the caller's
job (the CLI command, the view, or the host app's own code).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, scoped_session

from .config import Settings
from .crypto import generate_key
from .errors import InvalidInput
from .models import ApiKey, utcnow

AnySession = Session | scoped_session[Any]

SCOPE_PATTERN = re.compile(r"[a-z0-9_.:*-]{1,100}")
MAX_NAME_LENGTH = 200
MAX_SCOPES = 100
MAX_META_BYTES = 4096


class KeyNotFound(InvalidInput):
    """Raised when no key has the given id."""

    status = 404
    code = "KEY_NOT_FOUND"
    title = "No such key"


def check_new_key(name: str, external_client_id: str, scopes: list[str], expires_at: datetime | None,
                  meta: dict[str, Any]) -> None:
    """Refuse settings a key cannot have, naming the first wrong one."""
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"name must be 1 to {MAX_NAME_LENGTH} characters")
    if not external_client_id or len(external_client_id) > MAX_NAME_LENGTH:
        raise InvalidInput(f"external_client_id must be 1 to {MAX_NAME_LENGTH} characters")
    if len(scopes) > MAX_SCOPES:
        raise InvalidInput(f"a key can hold at most {MAX_SCOPES} scopes")
    for scope in scopes:
        if not SCOPE_PATTERN.fullmatch(scope):
            raise InvalidInput(f"scope {scope!r} must be 1 to 100 of a-z 0-9 _ . : * -")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput("expires_at must be in the future")
    if len(json.dumps(meta).encode()) > MAX_META_BYTES:
        raise InvalidInput(f"meta must be at most {MAX_META_BYTES} bytes of JSON")


def create_key(session: AnySession, settings: Settings, *, name: str, external_client_id: str,
               scopes: Iterable[str] = (), expires_at: datetime | None = None,
               meta: dict[str, Any] | None = None, created_by: str | None = None) -> tuple[ApiKey, str]:
    """Issue a key; return its row and the full key, which is never available again."""
    scopes = list(dict.fromkeys(scopes))
    meta = meta or {}
    check_new_key(name, external_client_id, scopes, expires_at, meta)
    new = generate_key(settings.key_prefix, settings.bcrypt_rounds)
    api_key = ApiKey(
        id=new.key_id,
        start=f"{settings.key_prefix}_{new.key_id}",
        secret_hash=new.secret_hash,
        name=name,
        external_client_id=external_client_id,
        scopes=scopes,
        meta=meta,
        enabled=True,
        expires_at=expires_at,
        created_by=created_by,
    )
    session.add(api_key)
    return api_key, new.key


def get_key(session: AnySession, key_id: str) -> ApiKey:
    """The key with id ``key_id``; raises :class:`KeyNotFound`."""
    api_key = session.get(ApiKey, key_id)
    if api_key is None:
        raise KeyNotFound(f"no key has the id {key_id!r}")
    return api_key


def list_keys(session: AnySession, *, external_client_id: str | None = None,
              include_revoked: bool = False) -> list[ApiKey]:
    """Keys, newest first, optionally of one client, revoked ones only if asked."""
    query = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id)
    if external_client_id is not None:
        query = query.where(ApiKey.external_client_id == external_client_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def key_to_dict(api_key: ApiKey) -> dict[str, Any]:
    """The API form of a key: its public fields, timestamps in RFC 3339 UTC."""

    def timestamp(value: datetime | None) -> str | None:
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {
        "id": api_key.id,
        "start": api_key.start,
        "name": api_key.name,
        "external_client_id": api_key.external_client_id,
        "scopes": list(api_key.scopes),
        "meta": api_key.meta,
        "enabled": api_key.enabled,
        "created_at": timestamp(api_key.created_at),
        "created_by": api_key.created_by,
        "updated_at": timestamp(api_key.updated_at),
        "expires_at": timestamp(api_key.expires_at),
        "revoked_at": timestamp(api_key.revoked_at),
        "revocation_reason": api_key.revocation_reason,
    }
