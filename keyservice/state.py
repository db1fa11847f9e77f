"""What keyservice keeps per app, and how code running in a request or command finds it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app
from flask_sqlalchemy import SQLAlchemy

from .config import Settings
from .verification import Verifier

if TYPE_CHECKING:
    from .principals import Principal
    from .secret_scanning import GitHubKeys
    from .sender import WebhookSender
    from .signingkeys import SigningKeys
    from .tokens import TokenVerifier


@dataclass(frozen=True)
class KeyServiceState:
    """keyservice's state for one app, in ``app.extensions["keyservice"]``."""

    settings: Settings
    db: SQLAlchemy
    verifier: Verifier
    principal_loader: Callable[[], Principal | None] | None  # None: management keys
    sender: WebhookSender
    github_keys: GitHubKeys
    signing_keys: SigningKeys
    tokens: TokenVerifier


def current_state() -> KeyServiceState:
    """keyservice's state for the current app."""
    state: KeyServiceState = current_app.extensions["keyservice"]
    return state
