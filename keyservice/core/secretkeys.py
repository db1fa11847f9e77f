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
the database, so a copy of the database alone cannot read what it encrypts (a copy of both
can). On PostgreSQL
it must be set (:func:`keyservice.core.config.check_deployment`): every instance needs
the same one.
"""

from __future__ import annotations

import base64
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
from sqlalchemy.engine import make_url

from .config import SECRET_KEY_MIN_LENGTH, SECRET_PATTERN, ConfigError, Settings
from .machinefiles import path_for

logger = logging.getLogger("keyservice.secretkeys")

KEY_BYTES = 32
LEGACY_BYTES = 32  # what 0.1 wrote: raw random bytes


class Purpose(StrEnum):
    """What a derived key is for; its value is the HKDF label."""

    CHECKED_KEYS = "checked-keys"
    SIGNING_KEYS = "signing-keys"
    WEBHOOK_SECRETS = "webhook-secrets"


class DeploymentSecretError(ConfigError):
    """The secret's file is not one this service made for itself (a one-line error, as a setting's)."""


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

    def current_fernet(self, purpose: Purpose) -> Fernet:
        """``purpose``'s key under the current secret alone."""
        return Fernet(base64.urlsafe_b64encode(self._derived[purpose][0]))

    def fernet(self, purpose: Purpose) -> MultiFernet:
        """Encrypts under the current secret's key of ``purpose``; decrypts under any secret's,
        or a deprecated setting's key of that purpose."""
        return self._fernets[purpose]


def secret_keys_for(settings: Settings, database_url: str) -> SecretKeys:
    """The app's keys: from ``KEYSERVICE_SECRET_KEY`` and its fallbacks, or from the secret
    made once beside a SQLite database (PostgreSQL's is checked to be set before); an
    in-memory database, gone with its process, gets one of this process's."""
    if settings.secret_key:
        current = settings.secret_key.encode()
    elif make_url(database_url).database in (None, "", ":memory:"):
        current = secrets.token_urlsafe(KEY_BYTES).encode()
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
    made = _written(path, secrets.token_urlsafe(KEY_BYTES).encode())
    try:
        os.link(made, path)
        logger.warning(
            "keyservice: made the deployment secret %s (mode 0600): keep it, apart from the database's"
            " backups, or set KEYSERVICE_SECRET_KEY to its text",
            path,
        )
    except FileExistsError:
        pass  # another worker made it first: theirs is everyone's
    finally:
        os.unlink(made)
    return _read(path)


def _written(path: Path, content: bytes) -> Path:
    """A new file beside ``path`` (mode 0600, on disk) holding ``content``."""
    descriptor, made = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())
    return Path(made)


def _read(path: Path) -> bytes:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as error:  # a symbolic link (ELOOP), a folder, no permission
        raise DeploymentSecretError(
            f"{path} must be a file of the service's user, mode 0600 ({error.strerror})"
        ) from None
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        # In a shared folder, a file someone else planted must not become the key.
        if not stat.S_ISREG(status.st_mode) or status.st_uid != os.getuid() or stat.S_IMODE(status.st_mode) & 0o077:
            raise DeploymentSecretError(f"{path} must be a file of the service's user, mode 0600")
        secret = file.read()
    if SECRET_PATTERN.fullmatch(secret.decode("latin-1")):
        return secret
    if len(secret) == LEGACY_BYTES:
        # 0.1 kept 32 raw bytes, which no setting can hold; they named checked keys only. Every
        # worker turns them into the same text, so rewriting the file races with no one.
        text = base64.urlsafe_b64encode(secret).rstrip(b"=")
        os.replace(_written(path, text), path)
        return text
    raise DeploymentSecretError(f"{path} must hold a secret of at least {SECRET_KEY_MIN_LENGTH} characters")
