"""The deployment secret, and the key of each of its purposes derived from it.

One secret, ``KEYSERVICE_SECRET_KEY``, as Flask has ``SECRET_KEY``; while it is being
rotated, the earlier ones in ``KEYSERVICE_SECRET_KEY_FALLBACKS`` are still accepted. Each
purpose has a key of its own, derived with HKDF-SHA256 under the purpose's label, so a key
of one purpose tells nothing of another's or of the secret:

- ``checked-keys``: the HMAC that names checked keys in the shared stores (``checkedkeys.py``);
- ``signing-keys``: the Fernet key of token signing keys' private halves at rest;
- ``webhook-secrets``: the Fernet key of webhook endpoints' signing secrets at rest.

What the current secret's key encrypts, any secret's key (or a deprecated setting's Fernet
key) still decrypts; ``flask keys reencrypt`` moves everything to the current one.

Unset on SQLite, the secret is made once, 32 random bytes as text, in a file of its own
(mode 0600) beside the database (``instance/keyservice.db.secret`` by default): never in
the database, so a copy of the database alone cannot read what it encrypts. On PostgreSQL
it must be set (:func:`keyservice.core.config.check_deployment`): every instance needs
the same one.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .config import SECRET_KEY_MIN_LENGTH, Settings
from .machinefiles import path_for

logger = logging.getLogger("keyservice.secretkeys")

KEY_BYTES = 32


class Purpose(StrEnum):
    """What a derived key is for; its value is the HKDF label."""

    CHECKED_KEYS = "checked-keys"
    SIGNING_KEYS = "signing-keys"
    WEBHOOK_SECRETS = "webhook-secrets"


class DeploymentSecretError(RuntimeError):
    """The secret's file is not one this service made for itself."""


def derive(secret: bytes, purpose: Purpose) -> bytes:
    """``purpose``'s key under ``secret``: HKDF-SHA256 (RFC 5869), no salt, the label as info."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=f"keyservice {purpose}".encode()).derive(
        secret
    )


class SecretKeys:
    """Every purpose's keys under the deployment secret and its fallbacks, the current one's first."""

    def __init__(self, deployment_secrets: Sequence[bytes], deprecated: Mapping[Purpose, Sequence[str]]) -> None:
        self._derived = {
            purpose: tuple(derive(secret, purpose) for secret in deployment_secrets) for purpose in Purpose
        }
        self._fernets = {
            purpose: MultiFernet(
                [Fernet(base64.urlsafe_b64encode(key)) for key in self._derived[purpose]]
                + [Fernet(key) for key in deprecated.get(purpose, ())]
            )
            for purpose in Purpose
        }

    def __repr__(self) -> str:
        return f"<SecretKeys of {len(self._derived[Purpose.CHECKED_KEYS])} secrets>"

    def derived(self, purpose: Purpose) -> tuple[bytes, ...]:
        """``purpose``'s key under the current secret, then under each fallback."""
        return self._derived[purpose]

    def fernet(self, purpose: Purpose) -> MultiFernet:
        """Encrypts under the current secret's key of ``purpose``; decrypts under any secret's,
        or a deprecated setting's key of that purpose."""
        return self._fernets[purpose]


def secret_keys_for(settings: Settings, database_url: str) -> SecretKeys:
    """The app's keys: from ``KEYSERVICE_SECRET_KEY`` and its fallbacks, or from the secret
    made once beside a SQLite database (PostgreSQL's is checked to be set before)."""
    if settings.secret_key:
        current = settings.secret_key.encode()
    else:
        current = generated_secret(path_for(database_url, "secret"))
    return SecretKeys(
        (current, *(fallback.encode() for fallback in settings.secret_key_fallbacks)),
        {
            Purpose.SIGNING_KEYS: settings.signing_keys_encryption_keys,
            Purpose.WEBHOOK_SECRETS: settings.webhooks_encryption_keys,
        },
    )


def generated_secret(path: Path) -> bytes:
    """The secret kept at ``path``, made there first if there is none (atomically: every worker
    of the machine reads the same one, and the one that made it says so)."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    descriptor, made = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(secrets.token_urlsafe(KEY_BYTES).encode())
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(made, path)
            logger.warning(
                "keyservice: made the deployment secret %s (mode 0600): keep it with the database,"
                " or set KEYSERVICE_SECRET_KEY to its text",
                path,
            )
        except FileExistsError:
            pass  # another worker made it first: theirs is everyone's
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(made)
    return _read(path)


def _read(path: Path) -> bytes:
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        # In a shared folder (the temp folder), a file someone else planted must not become the key.
        if status.st_uid != os.getuid() or stat.S_IMODE(status.st_mode) & 0o077:
            raise DeploymentSecretError(f"{path} must belong to the service's user, mode 0600")
        secret = file.read()
    # 0.1 wrote 32 raw bytes; since, 43 characters of text (copied into KEYSERVICE_SECRET_KEY as they are).
    if len(secret) < SECRET_KEY_MIN_LENGTH:
        raise DeploymentSecretError(f"{path} must hold at least {SECRET_KEY_MIN_LENGTH} bytes")
    return secret
