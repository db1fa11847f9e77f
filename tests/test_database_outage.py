"""When the database cannot be reached: 503, never a pass and never a 500, and recovery on its own.

PostgreSQL stopped under traffic is in ``test_scale_out.py``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from keyservice.app import db
from keyservice.core.config import DEFAULTS

from .conftest import DATABASES, IssueKey, migrated_app
from .helpers import assert_problem, assert_unavailable, bearer
from .servers import KeysCli, Response, flask_cli, gunicorn, request, service_environment
from .services import PostgresServer
from .test_api_keys import ADMIN, ROUTES, Api, Route, call_route


@pytest.fixture
def database_path(tmp_path: Path) -> Path:
    (tmp_path / "volume").mkdir()
    return tmp_path / "volume" / "keys.db"


@pytest.fixture
def database_url(database_path: Path) -> str:
    return f"sqlite:///{database_path}"


def test_protected_routes_answer_503_while_the_database_is_gone_then_recover(
    app: Flask, client: FlaskClient, issue_key: IssueKey, database_path: Path
) -> None:
    _, key = issue_key()
    headers = bearer(key)
    assert client.post("/protected-with-key", headers=headers).status_code == 200

    volume = database_path.parent
    volume.rename(volume.with_name("unmounted"))
    with app.app_context():
        db.engine.dispose()  # the open connections go with the volume
    for _ in range(5):
        response = client.post("/protected-with-key", headers=headers)
        assert response.status_code == 503
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == "UNAVAILABLE"
        assert response.headers["Retry-After"] == "1"
    assert client.get("/healthz").status_code == 503

    volume.with_name("unmounted").rename(volume)
    assert client.post("/protected-with-key", headers=headers).get_json() == {
        "protected": True,
        "external_client_id": "acme",
    }
    assert client.get("/healthz").status_code == 200


# --- every route, both databases, the default cache TTL ----------------------------------------------


@dataclass(frozen=True)
class Outage:
    """A database of a kind, and how to take it away and bring it back."""

    url: str
    begin: Callable[[], object]
    end: Callable[[], object]


@pytest.fixture(params=DATABASES)
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    """SQLite's volume moved away, or a PostgreSQL server of the test's own stopped."""
    if request.param == "sqlite":
        volume, unmounted = tmp_path / "volume", tmp_path / "unmounted"
        volume.mkdir()
        yield Outage(
            f"sqlite:///{volume / 'keys.db'}", lambda: volume.rename(unmounted), lambda: unmounted.rename(volume)
        )
    else:
        server: PostgresServer = request.getfixturevalue("own_postgres")
        server.administer('CREATE DATABASE "outage"')
        yield Outage(server.url("outage"), server.stop, server.start)


# Besides the management API: the example protected view and the probes.
SERVICE_ROUTES = [Route("POST", "/protected-with-key", ""), Route("GET", "/healthz", ""), Route("GET", "/readyz", "")]
EVERY_ROUTE = [*ROUTES, *SERVICE_ROUTES]
CACHE_TTL = DEFAULTS["KEYSERVICE_CACHE_TTL"]


def assert_no_error_text(line: str, *keys: str) -> None:
    """A log line holds no traceback, no statement or parameter of a database error, no hash
    and none of ``keys``."""
    for fragment in ("Traceback", "[SQL", "parameters", "$2b$", *keys):
        assert fragment not in line, line


def assert_nothing_of_the_errors_logged(records: list[logging.LogRecord], *keys: str) -> None:
    """No traceback, no statement and no parameter of a database error in any log record."""
    for record in records:
        assert record.exc_info is None and record.stack_info is None, record.getMessage()
        assert_no_error_text(record.getMessage(), *keys)


def test_every_route_answers_503_once_the_cache_ttl_has_passed_and_recovers(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    with migrated_app(outage.url, KEYSERVICE_CACHE_TTL=CACHE_TTL) as app:
        api = Api(app, app.test_client())
        key_id, key = api.issue()
        admin = api.manager(*ADMIN, client_id="ops")
        # A key that exists: a malformed one is refused without the database, outage or not.
        routes = [replace(route, body={"key": key}) if route.path == "/keys/verify" else route for route in EVERY_ROUTE]
        for route in routes:  # each worked a moment ago: the admin key is in the cache
            assert call_route(api, route, admin, key_id).status_code < 500, route

        outage.begin()
        with app.app_context():
            db.engine.dispose()  # the open connections go with the database
        # Within the TTL a key checked a moment ago may still let a protected view through,
        # which needs nothing else of the database; anything that does is refused.
        for route in routes:
            response = call_route(api, route, admin, key_id)
            if not (route.path == "/protected-with-key" and response.status_code == 200):
                assert_unavailable(response)
        time.sleep(CACHE_TTL)  # fixed: once the TTL is over nothing may pass (the bound under test)
        for route in routes * 2:
            assert_unavailable(call_route(api, route, admin, key_id))

        outage.end()
        for route in routes:
            assert call_route(api, route, admin, key_id).status_code < 500, route
        assert call_route(api, SERVICE_ROUTES[0], admin, key_id).status_code == 200
        assert_nothing_of_the_errors_logged(caplog.records, admin, key)


@pytest.mark.slow
def test_postgresql_stopped_under_gunicorn_every_route_answers_503_never_500_then_recovers(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    own_postgres.administer('CREATE DATABASE "outage"')
    environ = service_environment(own_postgres.url("outage"), KEYSERVICE_BCRYPT_ROUNDS="4")
    assert flask_cli(environ, "db", "upgrade").returncode == 0
    cli = KeysCli(environ)
    _, admin = cli.create_key("--scope", "keys:admin")
    key_id, key = cli.create_key()
    routes = [replace(route, body={"key": key}) if route.path == "/keys/verify" else route for route in EVERY_ROUTE]
    log = tmp_path / "gunicorn.log"
    with gunicorn(environ, log, workers=2) as base:

        def sweep() -> list[tuple[Route, Response]]:
            return [
                (route, request(base + route.path.format(id=key_id), route.method, bearer(admin), route.body))
                for route in routes
            ]

        assert all(response.status < 500 for _, response in sweep() + sweep())
        own_postgres.stop()
        time.sleep(CACHE_TTL)  # fixed: once the TTL is over every answer is a 503 (the bound under test)
        for route, response in sweep() + sweep():
            assert response.status == 503, (route, response.status, response.body)
            assert json.loads(response.body)["code"] == "UNAVAILABLE"
            assert response.headers["Content-Type"] == "application/problem+json"
            assert response.headers["Retry-After"] == "1"

        own_postgres.start()
        deadline = time.monotonic() + 10
        while True:
            answers = sweep()
            assert all(response.status != 500 for _, response in answers)
            if all(response.status < 500 for _, response in answers) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [(str(route), response.status) for route, response in answers if response.status >= 500] == []

    for line in log.read_text().splitlines():
        assert_no_error_text(line, admin, key, own_postgres.url("outage"), f"port {own_postgres.port}")


def test_a_database_error_that_is_no_outage_stays_a_500_logged_without_its_text(
    app: Flask, client: FlaskClient, issue_key: IssueKey, caplog: pytest.LogCaptureFixture
) -> None:
    key_id, key = issue_key(scopes=("keys:admin",))
    with app.app_context():
        db.session.execute(text("DROP TABLE keyservice_key_events"))  # a migration gone wrong: a bug
        db.session.commit()
    response = client.patch(f"/keys/{key_id}", headers=bearer(key), json={"name": "m"})
    assert_problem(response, 500, "INTERNAL")
    assert "Retry-After" not in response.headers
    assert any(
        re.fullmatch(r"unhandled database error \(\w+( \w+)?\) at [\w/]+\.py:\d+", record.getMessage())
        for record in caplog.records
    ), [record.getMessage() for record in caplog.records]
    assert_nothing_of_the_errors_logged(caplog.records, key)
