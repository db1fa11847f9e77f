"""Access tokens: short-lived JWTs (RFC 9068) a key is traded for, and their check.

A token is signed with the current signing key (:mod:`keyservice.verification.signingkeys`), so any
service verifies it from the JWKS alone, until its ``exp``. keyservice's own
``@require_key`` does more: after the signature, ``typ``, ``exp``, ``iss`` and ``aud``,
it judges the token's key as it judges a key (:meth:`Verifier.verify_token_key`), so a
revoked or disabled key's tokens are refused within ``KEYSERVICE_CACHE_TTL``, and the
key's rate limit, quota and usage count the token's requests.

Checking a signature costs about 0.1 ms, as much as the rest of a request: each worker
remembers the tokens it has checked (by an HMAC under a key of its own, as keys are
remembered) until their ``exp``, so only a token's first request pays it.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cachetools import LRUCache
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from ..core.config import Settings
from ..core.crypto import hmac_sha256, is_key_id
from ..core.dberrors import error_name
from ..core.errors import KeyServiceError
from ..core.outcomes import ONE_USE, Charge, Outcome, VerificationResult
from ..core.state import SigningKeyRing
from . import metrics
from .signingkeys import ALGORITHM, SigningKeys
from .verifier import Verifier

TOKEN_TYPE = "at+jwt"
TOKEN_TYPES = ("at+jwt", "application/at+jwt")  # RFC 9068 section 4: either names the profile
TOKEN_PATH = "/oauth/token"
MAX_TOKEN_LENGTH = 8192
REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope", "external_client_id"]


class NoIssuer(KeyServiceError):
    """Raised when a token is to be issued (or the issuer named) and ``KEYSERVICE_TOKEN_ISSUER`` is not set."""

    status = 409
    code = "TOKENS_NOT_CONFIGURED"
    title = "No token issuer"

    def __init__(self) -> None:
        super().__init__(
            "Set KEYSERVICE_TOKEN_ISSUER (the service's public URL) to issue tokens; gunicorn with keyservice's"
            " settings sets it to its bind address on one machine."
        )


def looks_like_token(credential: str) -> bool:
    """Whether a credential is a JWT rather than a key (a key has no dots)."""
    return credential.count(".") == 2


def issuer(settings: Settings) -> str:
    """``iss``: ``KEYSERVICE_TOKEN_ISSUER``. Never a request's own URL: its Host is the client's
    to choose, and two instances reached at two addresses would refuse each other's tokens."""
    if not settings.token_issuer:
        raise NoIssuer()
    return settings.token_issuer


def audience(settings: Settings, iss: str) -> str:
    """``aud``: ``KEYSERVICE_TOKEN_AUDIENCE``, or the issuer."""
    return settings.token_audience or iss


@dataclass(frozen=True)
class IssuedToken:
    """What the token endpoint answers (RFC 6749 section 5.1)."""

    access_token: str
    expires_in: int
    scope: str


def issue_token(
    settings: Settings, signing_keys: SigningKeyRing, key: VerificationResult, scopes: tuple[str, ...]
) -> IssuedToken:
    """Sign a token for the VALID key ``key`` holding ``scopes`` (a subset of the key's)."""
    iss = issuer(settings)
    now = int(time.time())
    scope = " ".join(scopes)
    claims = {
        "iss": iss,
        "sub": key.key_id,
        "client_id": key.key_id,
        "aud": audience(settings, iss),
        "iat": now,
        "exp": now + settings.token_lifetime,
        "jti": secrets.token_urlsafe(16),
        "scope": scope,
        "external_client_id": key.external_client_id,
    }
    kid, private_key = signing_keys.signing_key()
    token = jwt.encode(claims, private_key, algorithm=ALGORITHM, headers={"typ": TOKEN_TYPE, "kid": kid})
    return IssuedToken(token, settings.token_lifetime, scope)


@dataclass(frozen=True)
class _Claims:
    """What a checked token says, as a worker remembers it."""

    key_id: str
    scopes: tuple[str, ...]
    iss: str
    aud: str
    exp: int


class TokenVerifier:
    """Checks access tokens for one app in one process; see the module docstring."""

    def __init__(self, settings: Settings, signing_keys: SigningKeys, verifier: Verifier) -> None:
        self._settings = settings
        self._signing_keys = signing_keys
        self._verifier = verifier
        self._checked: LRUCache[bytes, _Claims] = LRUCache(maxsize=settings.cache_size)
        self._lock = threading.Lock()
        self._digest = hmac_sha256(os.urandom(32))

    def verify(self, token: str, scopes: Iterable[str] = (), charge: Charge = ONE_USE) -> VerificationResult:
        """Check ``token`` and then its key, which must hold every scope in ``scopes``, as the token
        must; the key's limits are charged ``charge``."""
        started = time.perf_counter()
        token = token.strip()
        checked = self._claims(token)
        if isinstance(checked, Outcome):
            metrics.observe(checked, False, time.perf_counter() - started)
            return VerificationResult(checked, retry_after=1 if checked is Outcome.UNAVAILABLE else None)
        return self._verifier.verify_token_key(checked.key_id, checked.scopes, scopes, started, charge)

    def _claims(self, token: str) -> _Claims | Outcome:
        if len(token) > MAX_TOKEN_LENGTH:
            return Outcome.TOKEN_INVALID
        iss = issuer(self._settings)
        aud = audience(self._settings, iss)
        digest = self._digest(token.encode(errors="replace"))
        with self._lock:
            claims = self._checked.get(digest)
        if claims is None:
            decoded = self._decode(token, iss, aud)
            if isinstance(decoded, Outcome):
                return decoded
            claims = decoded
            with self._lock:
                self._checked[digest] = claims
        if claims.exp <= time.time():
            return Outcome.TOKEN_EXPIRED
        if claims.iss != iss:
            return Outcome.TOKEN_WRONG_ISSUER
        if claims.aud != aud:
            return Outcome.TOKEN_WRONG_AUDIENCE
        return claims

    def _decode(self, token: str, iss: str, aud: str) -> _Claims | Outcome:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return Outcome.TOKEN_INVALID
        kid = header.get("kid")
        if (
            str(header.get("typ", "")).lower() not in TOKEN_TYPES
            or header.get("alg") != ALGORITHM
            or not isinstance(kid, str)
        ):
            return Outcome.TOKEN_INVALID
        try:
            public_key = self._signing_keys.public_key(kid)
        except SQLAlchemyError as error:
            current_app.logger.warning("keyservice: database unavailable (%s)", error_name(error))
            return Outcome.UNAVAILABLE
        if public_key is None:
            return Outcome.TOKEN_INVALID
        try:
            # Only the algorithm keyservice signs with: never "none", never HS256 keyed with the public key.
            claims: dict[str, Any] = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                issuer=iss,
                audience=aud,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            return Outcome.TOKEN_EXPIRED
        except jwt.InvalidIssuerError:
            return Outcome.TOKEN_WRONG_ISSUER
        except jwt.InvalidAudienceError:
            return Outcome.TOKEN_WRONG_AUDIENCE
        except jwt.PyJWTError:
            return Outcome.TOKEN_INVALID
        key_id, scope = claims["sub"], claims["scope"]
        if not is_key_id(key_id) or claims["client_id"] != key_id or not isinstance(scope, str):
            return Outcome.TOKEN_INVALID
        return _Claims(key_id, tuple(scope.split()), iss, aud, int(claims["exp"]))
