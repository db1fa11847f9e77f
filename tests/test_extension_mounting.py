"""What a host app gets from KeyService: its routes under a prefix or left out, and
``@require_key`` on async views, a MethodView and a whole Blueprint (examples/host_app.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g
from flask_sqlalchemy import SQLAlchemy

from examples import host_app
from keyservice import KeyService, require_key

from .helpers import bearer, issue
from .servers import TEST_HOST_SETTINGS

# A host on PostgreSQL sets the deployment secret and its public URL (the tokens' issuer), as a deployment would.
TEST_SETTINGS = {
    "TESTING": True,
    "KEYSERVICE_BCRYPT_ROUNDS": 4,
    **TEST_HOST_SETTINGS,
    "KEYSERVICE_SECRET_KEY": "a-host's-deployment-secret-of-32+-characters",
    "KEYSERVICE_TOKEN_ISSUER": "http://localhost/auth",
}


@pytest.fixture
def host(empty_database_url: str) -> Iterator[Flask]:
    """examples/host_app.py: keyservice under /auth."""
    app = host_app.create_app({**TEST_SETTINGS, "SQLALCHEMY_DATABASE_URI": empty_database_url})
    yield app
    with app.app_context():
        host_app.db.engine.dispose()


def test_url_prefix_moves_every_route_keyservice_adds(host: Flask) -> None:
    client = host.test_client()
    admin = bearer(issue(host, "keys:admin")[1])
    assert client.get("/auth/keys", headers=admin).status_code == 200
    assert client.get("/auth/roles", headers=admin).status_code == 200
    assert client.get("/auth/keys").get_json()["code"] == "MISSING"
    assert "/auth/keys/{key_id}" in client.get("/auth/openapi.json").get_json()["paths"]
    with client.get("/auth/dashboard") as page, client.get("/auth/dashboard/static/dashboard.js") as script:
        assert (page.status_code, script.status_code) == (200, 200)
        # The page's own links are relative: they stay under the prefix.
        assert 'src="dashboard/static/dashboard.js"' in page.get_data(as_text=True)
    assert client.get("/auth/webhooks", headers=admin).status_code == 200
    assert client.get("/auth/.well-known/jwks.json").status_code == 200
    assert client.get("/auth/.well-known/oauth-authorization-server").status_code == 200
    assert client.post("/auth/oauth/token", data={"grant_type": "client_credentials"}).status_code in (400, 401)
    assert client.post("/auth/secret-scanning/github", data=b"[]").status_code in (400, 401, 422)
    for path in (
        "/keys",
        "/roles",
        "/openapi.json",
        "/dashboard",
        "/webhooks",
        "/.well-known/jwks.json",
        "/oauth/token",
        "/secret-scanning/github",
    ):
        assert client.get(path, headers=admin).status_code == 404, path


@pytest.mark.parametrize(
    "path, scope", [("/whoami", None), ("/invoices", "billing:read"), ("/reports/daily", "reports:read")]
)
def test_async_views_a_method_view_and_a_blueprint_take_a_key(host: Flask, path: str, scope: str | None) -> None:
    client = host.test_client()
    answered = client.get(path, headers=bearer(issue(host, *filter(None, [scope]))[1]))
    assert answered.status_code == 200
    assert answered.get_json()["client"] == "acme"
    refused = client.get(path)
    assert (refused.status_code, refused.get_json()["code"]) == (401, "MISSING")
    if scope is not None:
        other = client.get(path, headers=bearer(issue(host, "other:read")[1]))
        assert (other.status_code, other.get_json()["code"]) == (403, "INSUFFICIENT_SCOPE")
    # A CORS preflight carries no credentials: OPTIONS needs no key.
    assert client.options(path).status_code == 200


def test_g_auth_is_read_only_all_the_way_down(host: Flask) -> None:
    attempts = []

    @host.get("/tamper")
    @require_key()
    def tamper() -> dict[str, Any]:
        for attempt in (
            lambda: g.auth.meta.__setitem__("x", 1),
            lambda: g.auth.meta["plan"].update(seats=1),
            lambda: g.auth.meta.pop("plan"),
            lambda: setattr(g.auth, "external_client_id", "evil"),
        ):
            try:
                attempt()
            except (TypeError, dataclasses.FrozenInstanceError) as error:
                attempts.append(type(error).__name__)
        return {"scopes": type(g.auth.scopes).__name__}

    headers = bearer(issue(host, "a:read", meta={"plan": {"tier": "pro", "limits": [1, 2]}})[1])
    client = host.test_client()
    assert client.get("/tamper", headers=headers).get_json() == {"scopes": "tuple"}
    assert attempts == ["TypeError", "TypeError", "TypeError", "FrozenInstanceError"]
    # The next request with the same key sees the meta as stored; a view may return it as it is.
    assert client.get("/whoami", headers=headers).get_json()["meta"] == {"plan": {"tier": "pro", "limits": [1, 2]}}


def test_without_the_management_api_only_the_decorator_and_the_cli_are_added(tmp_path: Path) -> None:
    app = Flask(__name__)
    # No secret set: on SQLite it is made beside the database.
    app.config.update(
        TEST_SETTINGS, SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'host.db'}", KEYSERVICE_SECRET_KEY=""
    )
    db = SQLAlchemy(app)
    KeyService(app, management_api=False)
    app.register_blueprint(host_app.reports)
    with app.app_context():
        db.create_all()
    client = app.test_client()
    for path in ("/keys", "/roles", "/openapi.json", "/dashboard"):
        assert client.get(path).status_code == 404, path

    created = app.test_cli_runner().invoke(
        args=["keys", "create", "--name", "ci", "--client-id", "acme", "--scope", "reports:read"]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    answered = client.get("/reports/daily", headers={"X-API-Key": key})
    assert (answered.status_code, answered.get_json()) == (200, {"report": "daily", "client": "acme"})
    assert client.get("/reports/daily").status_code == 401
    # Beside the host's database, only what verification shares between the host's workers:
    # the deployment secret, the checked keys and the failed-check budgets (no writers' lock file).
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "host.db",
        "host.db.budget-windows",
        "host.db.budget-windows-shm",
        "host.db.budget-windows-wal",
        "host.db.checked",
        "host.db.checked-lock",
        "host.db.secret",
    ]
    with app.app_context():
        db.engine.dispose()


def test_a_prefix_must_be_a_path() -> None:
    for wrong in ("auth", "/auth/"):
        with pytest.raises(ValueError, match="url_prefix"):
            KeyService(url_prefix=wrong)
