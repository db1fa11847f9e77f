from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flask_migrate
import pytest
from flask import Flask, g
from flask.testing import FlaskClient, FlaskCliRunner

from keyservice import KeyService, create_app, require_key
from keyservice.app import db

# bcrypt at cost 4 keeps the suite fast; one test checks the default of 12.
TEST_CONFIG = {"TESTING": True, "KEYSERVICE_BCRYPT_ROUNDS": 4, "KEYSERVICE_CACHE_TTL": 0}


@pytest.fixture
def database_path(tmp_path: Path) -> Path:
    return tmp_path / "keys.db"


@contextmanager
def migrated_app(database: Path, **config: Any) -> Iterator[Flask]:
    """An app (test settings and ``config``) on a migrated SQLite database; its engine disposed after."""
    app = create_app({**TEST_CONFIG, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}", **config})
    with app.app_context():
        flask_migrate.upgrade()
    try:
        yield app
    finally:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def app(database_path: Path) -> Iterator[Flask]:
    with migrated_app(database_path) as app:
        yield app


@pytest.fixture
def usage_app(app: Flask) -> Flask:
    """The app with a view that answers ``g.auth.remaining`` (registered before its first request)."""

    @app.post("/usage")
    @require_key()
    def usage() -> dict[str, Any]:
        return {"remaining": g.auth.remaining}

    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


IssueKey = Callable[..., tuple[str, str]]


@pytest.fixture
def issue_key(app: Flask) -> IssueKey:
    """Issue a key through the Python API, then apply ``changes`` to its row
    (e.g. a past ``expires_at``); return (key id, full key)."""

    def issue(name: str = "test key", external_client_id: str = "acme",
              scopes: tuple[str, ...] = (), **changes: Any) -> tuple[str, str]:
        with app.app_context():
            api_key, key = KeyService.create_key(name=name, external_client_id=external_client_id,
                                                 scopes=scopes)
            for field, value in changes.items():
                setattr(api_key, field, value)
            db.session.commit()
            return api_key.id, key

    return issue
