"""What keyservice keeps per app, and how code running in a request or command finds it."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from flask_sqlalchemy import SQLAlchemy

from .config import Settings
from .verification import Verifier


@dataclass(frozen=True)
class KeyServiceState:
    """keyservice's state for one app, in ``app.extensions["keyservice"]``."""

    settings: Settings
    db: SQLAlchemy
    verifier: Verifier


def current_state() -> KeyServiceState:
    """keyservice's state for the current app."""
    state: KeyServiceState = current_app.extensions["keyservice"]
    return state
