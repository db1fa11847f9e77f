"""The self-serve page's routes through Flask's test client, on SQLite and PostgreSQL: the example
SaaS (examples/saas_app.py, Flask-Login) for what its users do, and small host apps for the
principals it does not have (read-only, several teams, an operator). The same page in Chromium,
against gunicorn, is tests/test_self_serve_browser.py."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_sqlalchemy import SQLAlchemy

from examples import saas_app
from keyservice import KeyService
from keyservice.core.state import current_state
from keyservice.management.principals import Principal

from .helpers import assert_problem, bearer, parse_time, wrong_secret
from .servers import TEST_HOST_SETTINGS, deployment_settings

ALICE = ("alice@acme.example", "acme", "alice's password")
ALEX = ("alex@acme.example", "acme", "alex's password")
GLOBEX = ("gina@globex.example", "globex", "gina's password")
UNKNOWN_ID = "AAAAAAAAAAAAAAAA"
CSRF_IN_PAGE = re.compile(r'data-csrf-token="([^"]+)"')
# The page's own logic, on SQLite alone (the example makes its tables on an empty database, slow on
# PostgreSQL); tenancy, CSRF, the secret, rotation and the hosts' principals run on both.
ON_SQLITE = pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True)


@pytest.fixture
def saas(empty_database_url: str) -> Iterator[Flask]:
    """The example SaaS with users of two teams."""
    app = saas_app.create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test session secret of thirty-two characters",
            "KEYSERVICE_BCRYPT_ROUNDS": 4,
            "KEYSERVICE_CACHE_TTL": 0,
            "SQLALCHEMY_DATABASE_URI": empty_database_url,
            **deployment_settings(empty_database_url),
            **TEST_HOST_SETTINGS,
        }
    )
    for email, team, password in (ALICE, ALEX, GLOBEX):
        added = app.test_cli_runner().invoke(args=["add-user", email, team], input=f"{password}\n{password}\n")
        assert added.exit_code == 0, added.output
    yield app
    with app.app_context():
        current_state().verifier.flush_usage()
        saas_app.db.engine.dispose()


class Customer:
    """A signed-in user of the example, with the page's CSRF token."""

    def __init__(self, app: Flask, user: tuple[str, str, str]) -> None:
        self.client = app.test_client()
        email, _, password = user
        assert self.client.post("/login", json={"email": email, "password": password}).status_code == 200
        page = self.client.get("/my-keys")
        assert page.status_code == 200
        self.token = CSRF_IN_PAGE.findall(page.get_data(as_text=True))[0]

    def post(self, path: str, body: Any = None, token: bool = True, headers: dict[str, str] | None = None) -> Any:
        sent = ({"X-CSRFToken": self.token} if token else {}) | (headers or {})
        return self.client.post(f"/my-keys{path}", json=body, headers=sent)

    def create(self, **body: Any) -> dict[str, Any]:
        created = self.post("/keys", {"name": "ci runner", **body})
        assert created.status_code == 201, created.get_data(as_text=True)
        answer: dict[str, Any] = created.get_json()
        return answer

    def listed(self, query: str = "") -> list[dict[str, Any]]:
        response = self.client.get(f"/my-keys/keys{query}")
        assert response.status_code == 200, response.get_data(as_text=True)
        items: list[dict[str, Any]] = response.get_json()["items"]
        return items


def protected(app: Flask, key: str, route: str = "POST /protected-with-key") -> Any:
    """The answer of one of the example's protected routes to ``key``."""
    method, path = route.split()
    return app.test_client().open(path, method=method, headers=bearer(key))


def test_a_customer_creates_a_key_with_a_preset_and_offered_scopes_that_calls_as_their_team(saas: Flask) -> None:
    alice = Customer(saas, ALICE)
    created = alice.create(expires="30d", scopes=["reports:read", "billing:read"], description="nightly export")
    assert parse_time(created["expires_at"]) - datetime.now(UTC) == pytest.approx(
        timedelta(days=30), abs=timedelta(minutes=1)
    )
    assert (created["name"], created["description"], created["status"]) == ("ci runner", "nightly export", "active")
    assert created["created_by"] == "user:alice@acme.example"
    answered = protected(saas, created["key"])
    assert answered.get_json() == {"protected": True, "external_client_id": "acme"}
    # Those scopes, and no other.
    assert protected(saas, created["key"], "GET /reports").get_json()["external_client_id"] == "acme"
    assert protected(saas, created["key"], "GET /billing").status_code == 200
    assert_problem(protected(saas, created["key"], "POST /reports"), 403, "INSUFFICIENT_SCOPE")
    never = alice.create(name="plain")
    assert never["expires_at"] is None and never["scopes"] == []
    assert_problem(protected(saas, never["key"], "GET /reports"), 403, "INSUFFICIENT_SCOPE")


@ON_SQLITE
def test_a_teammate_sees_the_same_keys_and_another_team_none_of_them(saas: Flask) -> None:
    key_id = Customer(saas, ALICE).create()["id"]
    assert [item["id"] for item in Customer(saas, ALEX).listed()] == [key_id]
    assert Customer(saas, GLOBEX).listed() == []


def test_another_teams_key_answers_exactly_as_an_unknown_one(saas: Flask) -> None:
    globex_key = Customer(saas, GLOBEX).create()
    alice = Customer(saas, ALICE)
    for action, body in (("rotate", {"grace_seconds": 60}), ("revoke", {"reason": "mine now"})):
        theirs, unknown = (
            alice.post(f"/keys/{globex_key['id']}/{action}", body),
            alice.post(f"/keys/{UNKNOWN_ID}/{action}", body),
        )
        assert_problem(theirs, 404, "RESOURCE_NOT_FOUND")
        assert (theirs.status_code, theirs.get_data()) == (unknown.status_code, unknown.get_data())
    listed_theirs, listed_unknown = (
        alice.client.get("/my-keys/keys?team=globex"),
        alice.client.get("/my-keys/keys?team=initech"),
    )
    assert_problem(listed_theirs, 404)
    assert listed_theirs.get_data() == listed_unknown.get_data()
    refused = alice.post("/keys", {"name": "for globex", "team": "globex"})
    assert_problem(refused, 404)
    # Nothing happened to globex's key, which still works.
    [still] = Customer(saas, GLOBEX).listed()
    assert (still["status"], still["rotated_to"], still["revoked_at"]) == ("active", None, None)
    assert protected(saas, globex_key["key"]).get_json()["external_client_id"] == "globex"


def test_a_change_without_the_pages_csrf_token_is_refused_and_changes_nothing(saas: Flask) -> None:
    alice = Customer(saas, ALICE)
    key = alice.create()
    attempts = [
        alice.post("/keys", {"name": "forged"}, token=False),
        alice.post(f"/keys/{key['id']}/revoke", {}, token=False),
        alice.post(f"/keys/{key['id']}/rotate", {}, token=False),
        alice.post(f"/keys/{key['id']}/revoke", {}, token=False, headers={"X-CSRFToken": "forged"}),
        # A cross-site HTML form: the session cookie, a form body, no token.
        alice.client.post(f"/my-keys/keys/{key['id']}/revoke", data={"reason": "csrf"}),
    ]
    for refused in attempts:
        assert_problem(refused, 403, "CSRF_FAILED")
    # Another user's token is not this session's.
    assert_problem(
        alice.post(f"/keys/{key['id']}/revoke", {}, headers={"X-CSRFToken": Customer(saas, ALEX).token}), 403
    )
    [unchanged] = alice.listed()
    assert (unchanged["id"], unchanged["status"], unchanged["rotated_to"]) == (key["id"], "active", None)
    assert protected(saas, key["key"]).status_code == 200


@ON_SQLITE
def test_signed_out_the_page_redirects_to_the_login_and_every_other_route_answers_401(saas: Flask) -> None:
    client = saas.test_client()
    page = client.get("/my-keys")
    assert (page.status_code, page.headers["Location"]) == (302, "/login?next=%2Fmy-keys")
    routes = [rule for rule in saas.url_map.iter_rules() if rule.endpoint.startswith("keyservice_self_serve.")]
    assert len(routes) == 7  # the page, its theme, its static files, and the four JSON routes
    for rule in routes:
        if rule.endpoint == "keyservice_self_serve.page":
            continue
        path = rule.build({"key_id": UNKNOWN_ID, "filename": "self_serve.js"})[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            assert_problem(client.open(path, method=method, json={}), 401, "SIGN_IN_REQUIRED")
    # And after signing out.
    alice = Customer(saas, ALICE)
    alice.client.post("/logout", data={"csrf_token": alice.token})
    assert_problem(alice.client.get("/my-keys/keys"), 401)
    assert alice.client.get("/my-keys").status_code == 302


def test_the_secret_is_in_the_create_answer_alone(saas: Flask) -> None:
    alice = Customer(saas, ALICE)
    created = alice.post("/keys", {"name": "ci"})
    key = created.get_json()["key"]
    assert created.headers["Cache-Control"] == "no-store"
    rotated = alice.post(f"/keys/{created.get_json()['id']}/rotate", {"grace_seconds": 3600})
    new_key = rotated.get_json()["key"]
    answers = [
        alice.client.get("/my-keys"),
        alice.client.get("/my-keys/keys"),
        alice.client.get("/my-keys/keys?include_revoked=true"),
        alice.post(f"/keys/{rotated.get_json()['id']}/revoke", {"reason": "done"}),
    ]
    for answer in answers:
        assert answer.status_code == 200
        for secret in (key, new_key, key.split("_")[2], new_key.split("_")[2]):
            assert secret not in answer.get_data(as_text=True)
            assert secret not in json.dumps(dict(answer.headers))
    cookies = [cookie.value for cookie in alice.client._cookies.values()]
    assert cookies and not [value for value in cookies if key.split("_")[2] in value]


def test_rotation_keeps_the_old_key_for_the_grace_period_and_revocation_records_the_reason(saas: Flask) -> None:
    alice = Customer(saas, ALICE)
    old = alice.create(scopes=["reports:read"])
    rotated = alice.post(f"/keys/{old['id']}/rotate", {"grace_seconds": 3600})
    assert rotated.status_code == 201
    new = rotated.get_json()
    assert (new["rotated_from"], new["scopes"]) == (old["id"], ["reports:read"])
    assert protected(saas, old["key"]).status_code == 200 and protected(saas, new["key"]).status_code == 200
    by_id = {item["id"]: item for item in alice.listed()}
    assert by_id[old["id"]]["rotated_to"] == new["id"]
    assert parse_time(by_id[old["id"]]["expires_at"]) - datetime.now(UTC) == pytest.approx(
        timedelta(hours=1), abs=timedelta(minutes=1)
    )
    assert_problem(alice.post(f"/keys/{old['id']}/rotate", {}), 409)  # one successor only

    revoked = alice.post(f"/keys/{new['id']}/revoke", {"reason": "laptop lost"})
    assert (revoked.status_code, revoked.get_json()["status"]) == (200, "revoked")
    assert_problem(protected(saas, new["key"]), 401, "REVOKED")
    assert [item["id"] for item in alice.listed()] == [old["id"]]  # revoked keys only when asked for
    shown = {item["id"]: item for item in alice.listed("?include_revoked=true")}[new["id"]]
    assert (shown["status"], shown["revocation_reason"]) == ("revoked", "laptop lost")
    assert_problem(alice.post(f"/keys/{new['id']}/rotate", {}), 409)


@ON_SQLITE
def test_the_list_shows_the_last_seven_days_use_and_last_use(saas: Flask) -> None:
    alice = Customer(saas, ALICE)
    created = alice.create(scopes=["reports:read"])
    for _ in range(3):
        assert protected(saas, created["key"]).status_code == 200
    assert protected(saas, created["key"], "GET /reports").status_code == 200
    assert_problem(protected(saas, wrong_secret(created["key"])), 401, "NOT_FOUND")
    with saas.app_context():
        current_state().verifier.flush_usage()
    [listed] = alice.listed()
    days = listed["use_7d"]
    assert [day["date"] for day in days] == [
        (datetime.now(UTC).date() - timedelta(days=back)).isoformat() for back in range(6, -1, -1)
    ]
    assert (days[-1]["valid"], days[-1]["refused"]) == (4, 1)
    assert [day["valid"] + day["refused"] for day in days[:-1]] == [0] * 6
    assert listed["last_used_at"] is not None


@ON_SQLITE
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "nul\u0000"}, "name"),
        ({"name": "lone \ud800"}, "name"),
        ({"name": "n", "description": "d" * 1001}, "description"),
        ({"name": "n", "expires": "2w"}, "expires"),
        ({"name": "n", "expires": "custom"}, "expires_at"),
        ({"name": "n", "expires": "30d", "expires_at": "2099-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "n", "expires": "custom", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "n", "expires": "custom", "expires_at": "9999-12-31T23:59:59-14:00"}, "expires_at"),
        ({"name": "n", "scopes": ["keys:admin"]}, "scopes"),
        ({"name": "n", "scopes": ["reports:*"]}, "scopes"),
        ({"name": "n", "surprise": 1}, "surprise"),
    ],
)
def test_bad_input_is_a_422_naming_the_field_and_makes_no_key(saas: Flask, body: dict[str, Any], field: str) -> None:
    alice = Customer(saas, ALICE)
    refused = alice.post("/keys", body)
    assert field in assert_problem(refused, 422, "INVALID_INPUT")["errors"]["json"]
    assert alice.listed() == []


@ON_SQLITE
def test_hostile_bodies_are_4xx_problems(saas: Flask) -> None:
    alice = Customer(saas, ALICE)
    key_id = alice.create()["id"]
    headers = {"X-CSRFToken": alice.token, "Content-Type": "application/json"}
    for path, data, status in (
        ("/keys", "[" * 30_000 + "]" * 30_000, 422),
        ("/keys", '{"name": "n", "expires": ' + "9" * 5_000 + "}", 422),
        (f"/keys/{key_id}/rotate", '{"grace_seconds": ' + "9" * 5_000 + "}", 422),
        (f"/keys/{key_id}/rotate", '{"grace_seconds": 1e400}', 422),
        (f"/keys/{key_id}/rotate", "{not json", 400),
        ("/keys", '{"name": "' + "x" * 70_000 + '"}', 413),
        (f"/keys/{'A' * 15}\u0000/revoke", "{}", 404),
    ):
        assert_problem(alice.client.post(f"/my-keys{path}", data=data, headers=headers), status)
    assert_problem(
        alice.client.post(
            f"/my-keys/keys/{key_id}/revoke", data="reason=x", headers=headers | {"Content-Type": "text/plain"}
        ),
        415,
    )
    assert [item["status"] for item in alice.listed()] == ["active"]


@ON_SQLITE
def test_the_page_is_strict_about_scripts_framing_and_caching(saas: Flask) -> None:
    alice = Customer(saas, ALICE)
    page = alice.client.get("/my-keys")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "'unsafe-inline'" not in policy
    assert "frame-ancestors 'none'" in policy and page.headers["X-Frame-Options"] == "DENY"
    assert (page.headers["Cache-Control"], page.headers["Referrer-Policy"]) == ("no-store", "no-referrer")
    html = page.get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and " style=" not in html and "<style" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    # Inside the host's layout (examples/templates/layout.html), with its title and brand colour.
    assert "<title>Example Cloud API keys · Example Cloud</title>" in html and "alice@acme.example" in html
    theme = alice.client.get("/my-keys/theme.css").get_data(as_text=True)
    assert "--ks-brand: #0f766e" in theme and "--ks-on-brand: #ffffff" in theme


Host = Callable[..., Flask]


@pytest.fixture
def host(database_url: str) -> Iterator[Host]:
    """Make a host app whose signed-in user is always the principal given, with keyservice's page
    (standalone, under /auth) and ``config``; their engines are disposed after the test."""
    made: list[tuple[Flask, SQLAlchemy]] = []

    def make(principal: Principal | None, **config: Any) -> Flask:
        app = Flask(__name__)
        app.config.update(
            TESTING=True,
            SECRET_KEY="a host's session secret, thirty-two+",
            SQLALCHEMY_DATABASE_URI=database_url,
            KEYSERVICE_BCRYPT_ROUNDS=4,
            **TEST_HOST_SETTINGS,
            **deployment_settings(database_url),
            **config,
        )
        db = SQLAlchemy()
        db.init_app(app)
        KeyService(app, management_api=False, self_serve=True, principal_loader=lambda: principal, url_prefix="/auth")
        made.append((app, db))
        return app

    yield make
    for app, db in made:
        with app.app_context():
            db.engine.dispose()


def _token(client: FlaskClient, path: str = "/auth/my-keys") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.get_data(as_text=True)
    return CSRF_IN_PAGE.findall(page.get_data(as_text=True))[0]


def test_standalone_under_the_prefix_with_its_own_title_and_colour(host: Host) -> None:
    principal = Principal("user:1", ("keys:read", "keys:write"), frozenset({"acme"}))
    app = host(principal, KEYSERVICE_SELF_SERVE_TITLE="Keys", KEYSERVICE_SELF_SERVE_BRAND_COLOR="#fde047")
    client = app.test_client()
    html = client.get("/auth/my-keys").get_data(as_text=True)
    assert "<title>Keys</title>" in html and '<body class="ks-standalone">' in html
    # A light brand colour gets black text on it.
    assert "--ks-on-brand: #000000" in client.get("/auth/my-keys/theme.css").get_data(as_text=True)
    assert client.get("/my-keys").status_code == 404


def test_scopes_offered_are_those_configured_that_the_user_holds(host: Host) -> None:
    principal = Principal("user:1", ("keys:read", "keys:write", "reports:*"), frozenset({"acme"}))
    app = host(principal, KEYSERVICE_SELF_SERVE_SCOPES="reports:read billing:read")
    client = app.test_client()
    html = client.get("/auth/my-keys").get_data(as_text=True)
    assert 'value="reports:read"' in html and 'value="billing:read"' not in html
    headers = {"X-CSRFToken": _token(client)}
    refused = client.post("/auth/my-keys/keys", json={"name": "n", "scopes": ["billing:read"]}, headers=headers)
    assert assert_problem(refused, 422)["errors"]["json"]["scopes"] == ["Not offered: billing:read"]
    assert (
        client.post("/auth/my-keys/keys", json={"name": "n", "scopes": ["reports:read"]}, headers=headers).status_code
        == 201
    )


def test_a_reader_sees_the_keys_but_cannot_change_them(host: Host) -> None:
    app = host(Principal("user:1", ("keys:read",), frozenset({"acme"})))
    client = app.test_client()
    html = client.get("/auth/my-keys").get_data(as_text=True)
    assert 'data-can-write="false"' in html and "ks-create-open" not in html
    refused = client.post("/auth/my-keys/keys", json={"name": "n"}, headers={"X-CSRFToken": _token(client)})
    assert_problem(refused, 403, "FORBIDDEN")
    assert client.get("/auth/my-keys/keys").get_json()["items"] == []


def test_a_user_of_several_teams_names_the_team(host: Host) -> None:
    app = host(Principal("user:1", ("keys:read", "keys:write"), frozenset({"acme", "initech"})))
    client = app.test_client()
    headers = {"X-CSRFToken": _token(client)}
    assert_problem(client.post("/auth/my-keys/keys", json={"name": "n"}, headers=headers), 422)
    created = client.post("/auth/my-keys/keys", json={"name": "n", "team": "initech"}, headers=headers)
    assert created.status_code == 201
    assert [item["id"] for item in client.get("/auth/my-keys/keys?team=initech").get_json()["items"]] == [
        created.get_json()["id"]
    ]
    assert client.get("/auth/my-keys/keys?team=acme").get_json()["items"] == []


def test_an_operator_without_a_team_is_sent_to_the_dashboard(host: Host) -> None:
    app = host(Principal("user:ops", ("keys:admin",), None))
    assert "/dashboard" in assert_problem(app.test_client().get("/auth/my-keys"), 403)["detail"]


def test_a_signed_out_host_without_a_login_view_answers_401(host: Host) -> None:
    assert_problem(host(None).test_client().get("/auth/my-keys"), 401, "SIGN_IN_REQUIRED")


def test_the_page_needs_the_hosts_sign_in() -> None:
    with pytest.raises(ValueError, match="principal_loader"):
        KeyService(self_serve=True)


@ON_SQLITE
def test_a_chunked_body_is_read_like_any_other(saas: Flask) -> None:
    alice = Customer(saas, ALICE)
    key = alice.create()
    headers = {"X-CSRFToken": alice.token, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    # As gunicorn hands a chunked body over: no length, the stream ends where the body does.
    chunked = {"wsgi.input_terminated": True}
    rotated = alice.client.post(
        f"/my-keys/keys/{key['id']}/rotate",
        input_stream=io.BytesIO(b'{"grace_seconds": 3600}'),
        headers=headers,
        environ_overrides=chunked,
    )
    assert rotated.status_code == 201
    assert protected(saas, key["key"]).status_code == 200  # the grace asked for, not none
    plain = headers | {"Content-Type": "text/plain"}
    refused = alice.client.post(
        f"/my-keys/keys/{key['id']}/revoke",
        input_stream=io.BytesIO(b"reason"),
        headers=plain,
        environ_overrides=chunked,
    )
    assert_problem(refused, 415)


@ON_SQLITE
def test_the_examples_create_key_route_takes_json_only(saas: Flask) -> None:
    alice = Customer(saas, ALICE)
    forged = alice.client.post("/create-key", data='{"name": "x"}', headers={"Content-Type": "text/plain"})
    assert forged.status_code == 415 and alice.listed() == []
