"""What keyservice keeps per app, and how code running in a request or command finds it.

It sits in the bottom layer, so that the request path and the management side both
reach it without importing each other: its parts are typed by what they are asked
for (the Protocols below), and :class:`keyservice.extension.KeyService` puts in the
real ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy

from .config import Settings
from .outcomes import ONE_USE, Charge, VerificationResult
from .scopes import Principal
from .secretkeys import SecretKeys

EXTENSION_NAME = "keyservice"


class KeyChecker(Protocol):
    """What is asked of the app's :class:`keyservice.verification.verifier.Verifier`."""

    def verify(
        self, key: str, scopes: Iterable[str] = (), client: str | None = None, charge: Charge = ONE_USE
    ) -> VerificationResult: ...

    def ratelimit_storage_answers(self) -> bool: ...

    def flush_usage(self) -> None: ...


class BackgroundSender(Protocol):
    """What is asked of the app's :class:`keyservice.management.sender.WebhookSender`."""

    def ensure_started(self) -> None: ...


class PublicKeys(Protocol):
    """What is asked of :class:`keyservice.management.secret_scanning.GitHubKeys`: a signing key by identifier."""

    def get(self, identifier: str) -> ec.EllipticCurvePublicKey | None: ...


class TokenChecker(Protocol):
    """What is asked of the app's :class:`keyservice.verification.tokens.TokenVerifier`."""

    def verify(self, token: str, scopes: tuple[str, ...] = (), charge: Charge = ONE_USE) -> VerificationResult: ...


class SigningKeyRing(Protocol):
    """What is asked of the app's :class:`keyservice.verification.signingkeys.SigningKeys`."""

    def signing_key(self) -> tuple[str, ec.EllipticCurvePrivateKey]: ...

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None: ...

    def jwks(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class KeyServiceState:
    """keyservice's state for one app, in ``app.extensions[EXTENSION_NAME]``."""

    settings: Settings
    secret_keys: SecretKeys
    db: SQLAlchemy
    verifier: KeyChecker
    principal_loader: Callable[[], Principal | None] | None  # None: management keys
    sender: BackgroundSender
    github_keys: PublicKeys
    signing_keys: SigningKeyRing
    tokens: TokenChecker


def state_of(app: Flask) -> KeyServiceState:
    """keyservice's state for ``app``, as :meth:`KeyService.init_app` left it."""
    state: KeyServiceState = app.extensions[EXTENSION_NAME]
    return state


def current_state() -> KeyServiceState:
    """keyservice's state for the current app."""
    return state_of(current_app)
