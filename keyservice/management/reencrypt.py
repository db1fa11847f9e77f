"""Everything stored under the deployment secret's keys, encrypted again under the current one.

After ``KEYSERVICE_SECRET_KEY`` is rotated (the old one in ``KEYSERVICE_SECRET_KEY_FALLBACKS``),
what was stored before still decrypts under a fallback; this moves all of it at once, so the
fallback can then go. Token signing keys stored in the clear by 0.1 are encrypted too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import CursorResult, select, true, update
from sqlalchemy.orm import InstrumentedAttribute

from ..core.models import AnySession, SigningKey, WebhookEndpoint
from ..core.secretkeys import Purpose, SecretKeys


@dataclass(frozen=True)
class Reencrypted:
    """What :func:`reencrypt_all` did: how many of each it encrypted again, and which rows are
    still not under the current secret after it (no secret decrypts them, or an instance still on
    an older secret wrote them meanwhile): while there are any, the fallbacks must stay."""

    signing_keys: int
    webhook_secrets: int
    left: tuple[str, ...]


def reencrypt_all(session: AnySession, secret_keys: SecretKeys) -> Reencrypted:
    """Encrypt every signing key and webhook secret again under the current secret's key; the
    caller commits."""
    columns = (
        (Purpose.SIGNING_KEYS, SigningKey.kid, SigningKey.private_key, SigningKey.encrypted),
        (Purpose.WEBHOOK_SECRETS, WebhookEndpoint.id, WebhookEndpoint.encrypted_secret, None),
    )
    done = [_reencrypt(session, secret_keys.fernet(purpose), *rest) for purpose, *rest in columns]
    left = [
        row_id
        for purpose, id_column, stored_column, _ in columns
        for row_id in _not_under(session, secret_keys.current_fernet(purpose), id_column, stored_column)
    ]
    return Reencrypted(done[0], done[1], tuple(left))


def _reencrypt(
    session: AnySession,
    fernet: MultiFernet,
    id_column: InstrumentedAttribute[str],
    stored_column: InstrumentedAttribute[str],
    encrypted_column: InstrumentedAttribute[bool] | None,
) -> int:
    """Encrypt a column's every value again (one in the clear, where ``encrypted_column`` says so:
    for the first time); what no key decrypts is left as it is. Each row is written only if it is
    still as it was read (a conditional UPDATE): a row changed meanwhile is neither lost nor counted."""
    encrypted = encrypted_column if encrypted_column is not None else true()
    done = 0
    for row_id, stored, was_encrypted in session.execute(select(id_column, stored_column, encrypted)).all():
        try:
            again = (fernet.rotate(stored.encode()) if was_encrypted else fernet.encrypt(stored.encode())).decode()
        except InvalidToken:
            continue
        values = {stored_column.key: again} | ({encrypted_column.key: True} if encrypted_column is not None else {})
        written = session.execute(
            update(id_column.class_).where(id_column == row_id, stored_column == stored).values(values)
        )
        done += cast(CursorResult[Any], written).rowcount
    return done


def _not_under(
    session: AnySession,
    current: Fernet,
    id_column: InstrumentedAttribute[str],
    stored_column: InstrumentedAttribute[str],
) -> list[str]:
    """The ids whose value the current secret's key alone does not decrypt."""
    left = []
    for row_id, stored in session.execute(select(id_column, stored_column)).all():
        try:
            current.decrypt(stored.encode())
        except InvalidToken:
            left.append(row_id)
    return left
