"""The keys that sign access tokens: made on first use, kept in the database, rotated by hand.

Every worker of every instance reads the same rows, so all of them sign with the same
key and accept the same ones. A key's state follows from its times (see
:class:`~keyservice.core.models.SigningKey`): no worker has to be told of a change.

- **next**: published in the JWKS, not signing yet (a rotation's new key, until
  ``activates_at``: longer than a client may cache the JWKS, so every verifier knows it
  before the first token it signs).
- **current**: the newest key whose ``activates_at`` has passed; it signs.
- **retiring**: replaced, still published until ``retires_at``, when the last token it
  signed has expired.
- **retired**: no longer published; its tokens are refused.

The private key is kept as PKCS#8 PEM, encrypted (Fernet) under the deployment secret's
key for signing keys (``core/secretkeys.py``). Rows written in the clear by 0.1 without
``KEYSERVICE_SIGNING_KEYS_ENCRYPTION_KEY`` are still read; ``flask keys reencrypt``
encrypts them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask_sqlalchemy import SQLAlchemy
from jwt.algorithms import ECAlgorithm
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..core.config import Settings
from ..core.errors import Conflict, StorageUnavailable
from ..core.models import AnySession, SigningKey, as_utc, utcnow
from ..core.secretkeys import Purpose, SecretKeys

logger = logging.getLogger("keyservice.signingkeys")

ALGORITHM = "ES256"
KID = re.compile(r"[A-Za-z0-9_-]{16}")  # secrets.token_urlsafe(12)
# Seconds a worker trusts its list of published keys before reading it again (a rotation's
# new key is published for longer than this before it signs).
REFRESH_INTERVAL = 1.0
# A replaced key stays published this long past the last token it can have signed: for a
# worker that has not yet read the rotation, and for clocks a little apart.
RETIRE_MARGIN = timedelta(seconds=60)


class SigningUnavailable(StorageUnavailable):
    """Raised when no token can be signed now: the private key cannot be decrypted."""

    def __init__(self) -> None:
        super().__init__("Access tokens cannot be signed right now.")


@dataclass(frozen=True)
class _Published:
    """A signing key's row as a worker keeps it: the public half parsed once."""

    kid: str
    generation: int
    public_key: ec.EllipticCurvePublicKey
    public_jwk: dict[str, Any]
    activates_at: datetime
    retires_at: datetime | None

    @classmethod
    def of(cls, row: SigningKey) -> _Published:
        public_key = ECAlgorithm.from_jwk(row.public_jwk)
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        return cls(
            row.kid,
            row.generation,
            public_key,
            row.public_jwk,
            as_utc(row.activates_at),  # type: ignore[arg-type]
            as_utc(row.retires_at),
        )

    def published(self, now: datetime) -> bool:
        return self.retires_at is None or self.retires_at > now


def state_of(key: SigningKey, current_generation: int | None, now: datetime) -> str:
    """``next``, ``current``, ``retiring`` or ``retired`` (see the module docstring)."""
    retires_at = as_utc(key.retires_at)
    if retires_at is not None and retires_at <= now:
        return "retired"
    if as_utc(key.activates_at) > now:  # type: ignore[operator]
        return "next"
    return "current" if key.generation == current_generation else "retiring"


def new_signing_key(secret_keys: SecretKeys, generation: int, activates_at: datetime) -> SigningKey:
    """A new key pair's row (not yet added to a session)."""
    kid = secrets.token_urlsafe(12)
    private_key = ec.generate_private_key(ec.SECP256R1())
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True) | {"kid": kid, "alg": ALGORITHM, "use": "sig"}
    return SigningKey(
        kid=kid,
        generation=generation,
        algorithm=ALGORITHM,
        public_jwk=jwk,
        private_key=secret_keys.fernet(Purpose.SIGNING_KEYS).encrypt(pem).decode(),
        encrypted=True,
        created_at=utcnow(),
        activates_at=activates_at,
        retires_at=None,
    )


def current_generation(keys: list[SigningKey], now: datetime) -> int | None:
    """The generation of the key that signs at ``now``: the newest activated, unretired one."""
    signing = [
        key.generation
        for key in keys
        if as_utc(key.activates_at) <= now  # type: ignore[operator]
        and (key.retires_at is None or as_utc(key.retires_at) > now)  # type: ignore[operator]
    ]
    return max(signing, default=None)


def list_signing_keys(session: AnySession) -> list[SigningKey]:
    """Every signing key, newest first."""
    return list(session.scalars(select(SigningKey).order_by(SigningKey.generation.desc())))


def rotate_signing_keys(
    session: AnySession, settings: Settings, secret_keys: SecretKeys, delay: timedelta
) -> SigningKey:
    """Publish a new key now that signs ``delay`` from now; the key it replaces retires once the
    last token it can sign has expired. On an empty table the new key signs at once.

    A rotation while another's key is still ``next``, or two at once (the unique
    ``generation``), is a :class:`Conflict`. The caller commits.
    """
    now = utcnow()
    latest = session.scalars(select(SigningKey).order_by(SigningKey.generation.desc()).limit(1)).first()
    if latest is not None and as_utc(latest.activates_at) > now:  # type: ignore[operator]
        raise Conflict(f"a rotation is under way: key {latest.kid} signs from {as_utc(latest.activates_at)}")
    activates_at = now + delay if latest is not None else now
    new = new_signing_key(secret_keys, latest.generation + 1 if latest else 1, activates_at)
    session.add(new)
    session.execute(
        update(SigningKey)
        .where(SigningKey.retires_at.is_(None), SigningKey.generation < new.generation)
        .values(retires_at=activates_at + timedelta(seconds=settings.token_lifetime) + RETIRE_MARGIN)
    )
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict("another rotation happened at the same time: see `keys signing-keys list`") from None
    return new


class SigningKeys:
    """One process's view of the signing keys: the published ones, re-read every
    :data:`REFRESH_INTERVAL` seconds, and private keys decrypted once."""

    def __init__(self, settings: Settings, db: SQLAlchemy, secret_keys: SecretKeys) -> None:
        self._settings = settings
        self._db = db
        self._secret_keys = secret_keys
        self._lock = threading.Lock()
        self._published: dict[str, _Published] = {}
        self._loaded_at: float | None = None
        self._private: dict[str, ec.EllipticCurvePrivateKey] = {}

    def signing_key(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        """The current key's id and private key; the first key is made here if there is none."""
        current = self._current(self._fresh())
        if current is None:
            self._create_first()
            current = self._current(self._fresh(force=True))
            if current is None:
                raise SigningUnavailable()
        return current.kid, self._private_key(current.kid)

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        """The public key ``kid`` names if it is published now (an unknown ``kid`` costs one
        primary-key read, as an unknown key id does)."""
        if not KID.fullmatch(kid):
            return None  # not one of ours (and never a NUL for PostgreSQL)
        published = self._fresh().get(kid)
        if published is None:
            with Session(self._db.engine) as session:
                row = session.get(SigningKey, kid)
                published = None if row is None else _Published.of(row)
        if published is None or not published.published(utcnow()):
            return None
        return published.public_key

    def jwks(self) -> dict[str, Any]:
        """The JWK Set (RFC 7517) of every published key, newest first; the first key is made
        here if there is none, so that no verifier caches an empty set."""
        published = self._fresh()
        if self._current(published) is None:
            self._create_first()
            published = self._fresh(force=True)
        now = utcnow()
        keys = sorted(
            (key for key in published.values() if key.published(now)), key=lambda key: key.generation, reverse=True
        )
        return {"keys": [key.public_jwk for key in keys]}

    def _current(self, published: dict[str, _Published]) -> _Published | None:
        now = utcnow()
        signing = [key for key in published.values() if key.activates_at <= now and key.published(now)]
        return max(signing, key=lambda key: key.generation, default=None)

    def _fresh(self, force: bool = False) -> dict[str, _Published]:
        with self._lock:
            if not force and self._loaded_at is not None and time.monotonic() - self._loaded_at < REFRESH_INTERVAL:
                return self._published
        now = utcnow()
        with Session(self._db.engine) as session:
            rows = session.scalars(
                select(SigningKey).where(or_(SigningKey.retires_at.is_(None), SigningKey.retires_at > now))
            )
            # A known key keeps its parsed public key and takes the row's times (a rotation sets retires_at).
            published = {
                row.kid: dataclasses.replace(known, retires_at=as_utc(row.retires_at))
                if (known := self._published.get(row.kid))
                else _Published.of(row)
                for row in rows
            }
        with self._lock:
            self._published, self._loaded_at = published, time.monotonic()
        return published

    def _create_first(self) -> None:
        try:
            with Session(self._db.engine) as session, session.begin():
                session.add(new_signing_key(self._secret_keys, 1, utcnow()))
        except IntegrityError:
            pass  # another worker or instance made it first: the next read finds it

    def _private_key(self, kid: str) -> ec.EllipticCurvePrivateKey:
        private = self._private.get(kid)
        if private is not None:
            return private
        with Session(self._db.engine) as session:
            row = session.get(SigningKey, kid)
            stored, encrypted = (row.private_key, row.encrypted) if row is not None else ("", False)
        if row is None:
            raise SigningUnavailable()
        pem = stored.encode()
        if encrypted:
            try:
                pem = self._secret_keys.fernet(Purpose.SIGNING_KEYS).decrypt(pem)
            except InvalidToken:
                logger.warning(
                    "keyservice: signing key %s cannot be decrypted: it was encrypted under a secret that is"
                    " neither KEYSERVICE_SECRET_KEY nor one of KEYSERVICE_SECRET_KEY_FALLBACKS",
                    kid,
                )
                raise SigningUnavailable() from None
        loaded = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        with self._lock:
            self._private[kid] = loaded
        return loaded
