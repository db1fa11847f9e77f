from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flask_migrate
import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from keyservice import KeyService, create_app
from keyservice.app import db

# bcrypt at cost 4 keeps the suite fast; one test checks the default of 12.
TEST_CONFIG = {"TESTING": True, "KEYSERVICE_BCRYPT_ROUNDS": 4, "KEYSERVICE_CACHE_TTL": 0}


@pytest.fixture
def database_path(tmp_path: Path) -> Path:
    return tmp_path / "keys.db"


@pytest.fixture
def app(database_path: Path) -> Iterator[Flask]:
    app = create_app({**TEST_CONFIG, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{database_path}"})
    with app.app_context():
        flask_migrate.upgrade()
    yield app
    with app.app_context():
        db.engine.dispose()


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
