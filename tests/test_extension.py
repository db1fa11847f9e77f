"""keyservice inside a host app that has its own db and its own migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import flask_migrate
import pytest
from flask import Flask, abort
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import inspect
from werkzeug.exceptions import HTTPException

from keyservice import KeyService
from keyservice.core.config import ConfigError
from keyservice.management.principals import Principal

from .helpers import bearer
from .host_app import Team, create_host_app, db, keys
from .servers import TEST_HOST_SETTINGS


@contextmanager
def migrated_host(database_url: str, migrations: Path) -> Iterator[Flask]:
    """The host app, its schema made by its own, freshly generated migrations."""
    app = create_host_app(database_url, migrations)
    with app.app_context():
        flask_migrate.init(directory=str(migrations))
        flask_migrate.migrate(directory=str(migrations), message="initial")
        flask_migrate.upgrade(directory=str(migrations))
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def host(tmp_path: Path, empty_database_url: str) -> Iterator[Flask]:
    with migrated_host(empty_database_url, tmp_path / "migrations") as app:
        yield app


def test_host_migrations_pick_up_the_keyservice_tables(host: Flask, tmp_path: Path) -> None:
    generated = "".join(p.read_text() for p in (tmp_path / "migrations" / "versions").glob("*.py"))
    assert "keyservice_api_keys" in generated and "teams" in generated
    with host.app_context():
        assert {"teams", "keyservice_api_keys"} <= set(inspect(db.engine).get_table_names())


def test_host_view_gets_the_caller_from_g_auth(host: Flask) -> None:
    with host.app_context():
        db.session.add(Team(name="team-7"))
        api_key, key = keys.create_key(name="ci", external_client_id="team-7", scopes=["reports:*"])
        db.session.commit()
        key_id = api_key.id
    client = host.test_client()
    response = client.get("/teams/report", headers=bearer(key))
    assert response.status_code == 200
    assert response.get_json() == {"team": "team-7", "key": key_id}


def test_host_view_refuses_with_problem_responses(host: Flask) -> None:
    with host.app_context():
        _, key = keys.create_key(name="ci", external_client_id="team-7", scopes=["billing:read"])
        db.session.commit()
    client = host.test_client()
    assert client.get("/teams/report").get_json()["code"] == "MISSING"
    forbidden = client.get("/teams/report", headers={"X-API-Key": key})
    assert forbidden.status_code == 403
    assert forbidden.get_json()["code"] == "INSUFFICIENT_SCOPE"
    # The host's own errors stay the host's: keyservice does not take over its 404 page.
    assert client.get("/no-such-page").mimetype == "text/html"
    assert "X-Content-Type-Options" not in client.get("/no-such-page").headers


def test_keyservices_own_responses_in_a_host_app_say_nosniff(host: Flask) -> None:
    client = host.test_client()
    for path in ("/teams/report", "/keys", "/roles", "/openapi.json", "/dashboard"):
        with client.get(path) as response:
            assert response.headers["X-Content-Type-Options"] == "nosniff", path


def test_a_hosts_own_http_error_handler_answers_its_errors_and_keyservice_answers_its_own(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(TEST_HOST_SETTINGS, SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'host.db'}")
    SQLAlchemy(app)
    KeyService(app, principal_loader=lambda: Principal(id="ops", scopes=("keys:admin",), client_ids=None))
    app.register_error_handler(HTTPException, lambda error: ({"host_error": error.code}, error.code or 500))
    app.add_url_rule("/conflict", "conflict", lambda: abort(409))
    client = app.test_client()
    assert client.get("/conflict").get_json() == {"host_error": 409}
    assert client.get("/no-such-page").get_json() == {"host_error": 404}
    refused = client.post("/keys", data="name=x", content_type="application/x-www-form-urlencoded")
    assert (refused.status_code, refused.mimetype) == (415, "application/problem+json")
    assert refused.get_json()["code"] == "HTTP_UNSUPPORTED_MEDIA_TYPE"


def test_host_cli_gets_the_keys_commands(host: Flask) -> None:
    runner = host.test_cli_runner()
    created = runner.invoke(args=["keys", "create", "--name", "n", "--client-id", "team-7"])
    assert created.exit_code == 0
    verified = runner.invoke(args=["keys", "verify", created.stdout.strip()])
    assert (verified.exit_code, verified.stdout.strip()) == (0, "VALID")


def test_registering_twice_is_refused(host: Flask) -> None:
    with pytest.raises(RuntimeError, match="already been registered"):
        KeyService(host)


def test_an_app_without_flask_sqlalchemy_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"db\.init_app"):
        KeyService(Flask(__name__))
    app = Flask(__name__)
    with pytest.raises(RuntimeError, match=r"db\.init_app"):
        KeyService(app, db=SQLAlchemy())


@pytest.mark.parametrize(
    "uri, dialect", [("mysql+pymysql://u@localhost/db", "mysql"), ("mssql+pymssql://u@localhost/db", "mssql")]
)
def test_an_app_on_another_database_is_refused_at_init_app_naming_it(uri: str, dialect: str) -> None:
    app = Flask(__name__)
    # Its driver is not installed: the engine gets the sqlite3 module as its DBAPI, and never connects.
    app.config.update(SQLALCHEMY_DATABASE_URI=uri, SQLALCHEMY_ENGINE_OPTIONS={"module": sqlite3})
    SQLAlchemy(app)
    with pytest.raises(ConfigError) as refused:
        KeyService(app)
    assert str(refused.value) == (
        "SQLALCHEMY_DATABASE_URI must be a SQLite or PostgreSQL database"
        f" (keyservice's SQL is written for those), not {dialect}"
    )
    assert "keyservice" not in app.extensions and not app.blueprints


def test_an_outage_answers_503_on_keyservices_routes_and_leaves_the_hosts_views_alone(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    with migrated_host(f"sqlite:///{volume / 'keys.db'}", tmp_path / "migrations") as host:
        with host.app_context():
            _, key = keys.create_key(name="ops", external_client_id="team-7", scopes=["keys:admin", "reports:*"])
            db.session.commit()
        client = host.test_client()
        headers = bearer(key)
        assert client.get("/keys", headers=headers).status_code == 200
        assert client.get("/teams/report", headers=headers).status_code == 200

        volume.rename(tmp_path / "unmounted")
        with host.app_context():
            db.engine.dispose()
        # The key is still in the worker's memory (KEYSERVICE_CACHE_TTL): both views get past it.
        listed = client.get("/keys", headers=headers)
        assert (listed.status_code, listed.get_json()["code"], listed.headers["Retry-After"]) == (
            503,
            "UNAVAILABLE",
            "1",
        )
        hosts_own = client.get("/teams/report", headers=headers)
        assert (hosts_own.status_code, hosts_own.mimetype) == (500, "text/html")
        (tmp_path / "unmounted").rename(volume)
