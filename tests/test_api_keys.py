"""The management HTTP API (``/keys`` and ``/roles``) through the Flask test client.

Every request goes through :class:`Api`, which checks each response for a leaked
secret: no bcrypt hash, no ``secret_hash``, and no secret of any key the test has
seen, except in the ``key`` field of create and rotate.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask, g
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from keyservice import require_key
from keyservice.app import db
from keyservice.core.models import ApiKey, utcnow

from .conftest import migrated_app
from .helpers import assert_problem, bearer, describe, issue, parse_time

ADMIN = ("keys:admin",)
READ_WRITE = ("keys:read", "keys:write")
MANAGEMENT = ("keys:read", "keys:write", "keys:verify")
UNKNOWN_ID = "AAAAAAAAAAAAAAAA"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\Z")
FUTURE = "2099-01-01T00:00:00Z"
# The fields of a key object so far; last_used_at, remaining, refill and ratelimit
# come with usage tracking and limits.
KEY_FIELDS = {
    "id",
    "start",
    "name",
    "external_client_id",
    "scopes",
    "roles",
    "meta",
    "enabled",
    "created_at",
    "created_by",
    "updated_at",
    "expires_at",
    "revoked_at",
    "revocation_reason",
    "rotated_from",
    "last_used_at",
}


def secret_of(key: str) -> str:
    """The secret part of ``<prefix>_<id>_<secret><checksum>``."""
    return key.split("_")[2][:32]


@dataclass
class Api:
    """The test client, for the management API; every response is checked for leaked secrets."""

    app: Flask
    client: FlaskClient
    secrets: list[str] = field(default_factory=list)

    def issue(self, *scopes: str, client_id: str = "acme", name: str = "test key") -> tuple[str, str]:
        """Issue a key through the Python API; return (id, key)."""
        key_id, key = issue(self.app, *scopes, name=name, external_client_id=client_id)
        self.secrets.append(secret_of(key))
        return key_id, key

    def manager(self, *scopes: str, client_id: str = "acme") -> str:
        return self.issue(*scopes, client_id=client_id, name="manager")[1]

    def call(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> TestResponse:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers.update(bearer(key))
        response = self.client.open(path, method=method, headers=headers, **kwargs)
        self._check_no_secret(method, path, response)
        return response

    def _check_no_secret(self, method: str, path: str, response: TestResponse) -> None:
        text = response.get_data(as_text=True)
        body = response.get_json(silent=True)
        shows_key_once = (
            method == "POST" and response.status_code == 201 and (path == "/keys" or path.endswith("/rotate"))
        )
        if shows_key_once:
            assert isinstance(body, dict) and body["key"].startswith(f"sk_{body['id']}_")
            self.secrets.append(secret_of(body["key"]))
            text = json.dumps({name: value for name, value in body.items() if name != "key"})
        text += "\n" + "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        assert "$2b$" not in text
        assert "secret_hash" not in text
        for secret in self.secrets:
            assert secret not in text

    def create(self, key: str, **fields: Any) -> dict[str, Any]:
        """Create a key through the API (201 expected); return the response body."""
        body = {"name": "created", "external_client_id": "acme"} | fields
        response = self.call("POST", "/keys", key, json=body)
        assert response.status_code == 201, describe(response)
        created: dict[str, Any] = response.get_json()
        return created

    def show(self, key: str, key_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/keys/{key_id}", key)
        assert response.status_code == 200
        shown: dict[str, Any] = response.get_json()
        return shown

    def list_ids(self, key: str, query: str = "") -> list[str]:
        response = self.call("GET", f"/keys?limit=100{query}", key)
        assert response.status_code == 200
        return [item["id"] for item in response.get_json()["items"]]

    def events(self, key: str, key_id: str) -> list[dict[str, Any]]:
        response = self.call("GET", f"/keys/{key_id}/events", key)
        assert response.status_code == 200
        items: list[dict[str, Any]] = response.get_json()["items"]
        return items

    def protected(self, key: str) -> TestResponse:
        return self.call("POST", "/protected-with-key", key)


@pytest.fixture
def api(app: Flask, client: FlaskClient) -> Api:
    return Api(app, client)


@pytest.fixture(scope="module")
def shared_api(module_database_url: str) -> Iterator[Api]:
    """One app for the tests that change nothing (refusals and invalid input): it keeps the file fast."""
    with migrated_app(module_database_url) as app:
        yield Api(app, app.test_client())


@pytest.fixture
def reports_app(app: Flask) -> Flask:
    """The app with a view that needs ``reports:read`` (registered before its first request)."""

    @app.get("/reports")
    @require_key("reports:read")
    def reports() -> dict[str, Any]:
        return {"scopes": list(g.auth.scopes)}

    return app


def assert_field_errors(response: TestResponse, location: str, *names: str) -> None:
    body = assert_problem(response, 422, "INVALID_INPUT")
    assert location in body.get("errors", {}), body
    errors = body["errors"][location]
    assert set(errors) == set(names)
    assert all(errors[name] for name in names)


def assert_key_object(body: dict[str, Any]) -> None:
    assert set(body) >= KEY_FIELDS
    assert re.fullmatch(r"[0-9A-Za-z]{16}", body["id"])
    assert body["start"] == f"sk_{body['id']}"
    for name in ("created_at", "updated_at", "expires_at", "revoked_at", "last_used_at"):
        assert body[name] is None or TIMESTAMP.match(body[name]), (name, body[name])
    assert isinstance(body["scopes"], list) and isinstance(body["roles"], list)
    assert isinstance(body["meta"], dict) and isinstance(body["enabled"], bool)


# --- every route: its scope, and who may not call it ------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # "{id}" stands for an existing key's id
    scope: str
    body: dict[str, Any] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES = [
    Route("POST", "/keys", "keys:write", {"name": "n", "external_client_id": "acme"}),
    Route("GET", "/keys", "keys:read"),
    Route("GET", "/keys/{id}", "keys:read"),
    Route("PATCH", "/keys/{id}", "keys:write", {"name": "renamed"}),
    Route("DELETE", "/keys/{id}", "keys:write"),
    Route("POST", "/keys/{id}/rotate", "keys:write", {}),
    Route("GET", "/keys/{id}/events", "keys:read"),
    Route("GET", "/keys/{id}/usage", "keys:read"),
    Route("POST", "/keys/verify", "keys:verify", {"key": "sk_nope"}),
    Route("PUT", "/roles/reader", "keys:admin", {"scopes": ["reports:read"]}),
    Route("GET", "/roles", "keys:admin"),
    Route("DELETE", "/roles/reader", "keys:admin"),
]
ID_ROUTES = [route for route in ROUTES if "{id}" in route.path]


def call_route(api: Api, route: Route, key: str | None, key_id: str) -> TestResponse:
    kwargs = {} if route.body is None else {"json": route.body}
    return api.call(route.method, route.path.format(id=key_id), key, **kwargs)


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_every_route_without_a_key_is_missing_with_a_bare_challenge(shared_api: Api, route: Route) -> None:
    key_id, _ = shared_api.issue()
    response = call_route(shared_api, route, None, key_id)
    assert_problem(response, 401, "MISSING")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="keyservice"'


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_every_route_refuses_a_management_key_without_its_scope(shared_api: Api, route: Route) -> None:
    key_id, _ = shared_api.issue()
    manager = shared_api.manager(*(scope for scope in MANAGEMENT if scope != route.scope))
    response = call_route(shared_api, route, manager, key_id)
    assert_problem(response, 403, "INSUFFICIENT_SCOPE")
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="keyservice", error="insufficient_scope", scope="{route.scope}"'
    )


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_every_route_refuses_a_key_without_management_scopes(shared_api: Api, route: Route) -> None:
    key_id, _ = shared_api.issue()
    customer = shared_api.manager("reports:read")
    assert_problem(call_route(shared_api, route, customer, key_id), 403, "INSUFFICIENT_SCOPE")


@pytest.mark.parametrize("route", ID_ROUTES, ids=str)
def test_every_route_with_an_id_answers_404_for_an_unknown_id(shared_api: Api, route: Route) -> None:
    manager = shared_api.manager(*MANAGEMENT)
    assert_problem(call_route(shared_api, route, manager, UNKNOWN_ID), 404, "RESOURCE_NOT_FOUND")


@pytest.mark.parametrize("route", ID_ROUTES, ids=str)
def test_every_route_with_an_id_answers_404_for_another_clients_key(shared_api: Api, route: Route) -> None:
    manager = shared_api.manager(*MANAGEMENT, client_id="acme")
    others_id, _ = shared_api.issue(client_id="globex")
    assert_problem(call_route(shared_api, route, manager, others_id), 404, "RESOURCE_NOT_FOUND")


def test_a_revoked_management_key_is_refused_as_revoked(api: Api) -> None:
    manager_id, manager = api.issue(*READ_WRITE)
    assert api.call("DELETE", f"/keys/{manager_id}", manager).status_code == 204
    response = api.call("GET", "/keys", manager)
    assert_problem(response, 401, "REVOKED")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="keyservice", error="invalid_token"'


def test_deleting_an_unknown_role_is_not_found(api: Api) -> None:
    admin = api.manager(*ADMIN)
    assert_problem(api.call("DELETE", "/roles/nope", admin), 404, "RESOURCE_NOT_FOUND")


# --- POST /keys ----------------------------------------------------------------------------------


def test_create_answers_201_with_the_key_object_and_the_key_once(api: Api) -> None:
    admin_id, admin = api.issue(*ADMIN, name="admin")
    created = api.create(
        admin,
        name="billing bot",
        external_client_id="globex",
        scopes=["reports:read"],
        meta={"plan": "pro"},
        expires_at=FUTURE,
    )
    assert_key_object(created)
    assert created["key"].startswith(f"sk_{created['id']}_") and len(created["key"]) == 58
    assert {
        name: created[name]
        for name in (
            "name",
            "external_client_id",
            "scopes",
            "roles",
            "meta",
            "enabled",
            "created_by",
            "revoked_at",
            "revocation_reason",
            "rotated_from",
        )
    } == {
        "name": "billing bot",
        "external_client_id": "globex",
        "scopes": ["reports:read"],
        "roles": [],
        "meta": {"plan": "pro"},
        "enabled": True,
        "created_by": f"key:{admin_id}",
        "revoked_at": None,
        "revocation_reason": None,
        "rotated_from": None,
    }
    assert parse_time(created["expires_at"]) == parse_time(FUTURE)
    assert api.protected(created["key"]).get_json() == {"protected": True, "external_client_id": "globex"}


def test_every_keys_response_is_no_store_and_every_response_nosniff(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    created = api.call("POST", "/keys", manager, json={"name": "n", "external_client_id": "acme"})
    rotated = api.call("POST", f"/keys/{created.get_json()['id']}/rotate", manager)
    responses = [
        created,
        rotated,
        api.call("GET", "/keys", manager),
        api.call("GET", "/keys"),
        api.call("GET", "/keys/nope", manager),
        api.call("POST", "/keys", manager, json={}),
    ]
    assert [response.status_code for response in responses] == [201, 201, 200, 401, 404, 422]
    for response in responses:
        assert response.headers["Cache-Control"] == "no-store"
    for response in [
        *responses,
        api.call("GET", "/roles"),
        api.call("GET", "/openapi.json"),
        api.call("GET", "/healthz"),
        api.call("GET", "/no-such-page"),
        api.protected("sk_x"),
    ]:
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_created_key_is_shown_again_without_its_key(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    created = api.create(manager, scopes=["keys:read"])
    shown = api.show(manager, created["id"])
    assert "key" not in shown
    assert shown == {name: value for name, value in created.items() if name != "key"}


def test_create_accepts_values_at_the_limits(api: Api) -> None:
    admin = api.manager(*ADMIN)
    scopes = [f"scope:{index}" for index in range(100)]
    created = api.create(admin, name="n" * 200, scopes=scopes, meta={"note": "m" * 4000})
    assert len(created["name"]) == 200 and created["scopes"] == scopes


def test_a_client_manager_cannot_create_keys_for_another_client(api: Api) -> None:
    manager = api.manager(*READ_WRITE, client_id="acme")
    response = api.call("POST", "/keys", manager, json={"name": "n", "external_client_id": "globex"})
    assert_problem(response, 403, "FORBIDDEN")


def test_a_client_manager_cannot_grant_a_scope_it_does_not_hold(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    response = api.call(
        "POST", "/keys", manager, json={"name": "n", "external_client_id": "acme", "scopes": ["billing:write"]}
    )
    assert_problem(response, 403, "FORBIDDEN")
    assert api.create(manager, scopes=["keys:read"])["scopes"] == ["keys:read"]


# --- GET /keys -----------------------------------------------------------------------------------


def test_list_is_newest_first_and_holds_key_objects(api: Api) -> None:
    manager_id, manager = api.issue(*READ_WRITE)
    ids = [api.create(manager, name=f"key {index}")["id"] for index in range(3)]
    response = api.call("GET", "/keys", manager)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"items", "next_cursor"} and body["next_cursor"] is None
    for item in body["items"]:
        assert_key_object(item)
    assert [item["id"] for item in body["items"]] == [*reversed(ids), manager_id]
    created_at = [parse_time(item["created_at"]) for item in body["items"]]
    assert created_at == sorted(created_at, reverse=True)


def test_list_shows_only_the_managers_own_client(api: Api) -> None:
    manager_id, manager = api.issue(*READ_WRITE, client_id="acme")
    api.issue(client_id="globex")
    assert api.list_ids(manager) == [manager_id]
    assert api.list_ids(manager, "&external_client_id=globex") == []


def test_list_filters_by_external_client_id(api: Api) -> None:
    admin = api.manager(*ADMIN, client_id="ops")
    acme = api.create(admin, external_client_id="acme")["id"]
    globex = [api.create(admin, external_client_id="globex")["id"] for _ in range(2)]
    assert api.list_ids(admin, "&external_client_id=globex") == globex[::-1]
    assert api.list_ids(admin, "&external_client_id=acme") == [acme]
    assert api.list_ids(admin, "&external_client_id=nobody") == []


def test_list_hides_revoked_keys_unless_asked(api: Api) -> None:
    manager_id, manager = api.issue(*READ_WRITE)
    kept, revoked = (api.create(manager)["id"] for _ in range(2))
    assert api.call("DELETE", f"/keys/{revoked}", manager).status_code == 204
    assert api.list_ids(manager) == [kept, manager_id]
    assert api.list_ids(manager, "&include_revoked=true") == [revoked, kept, manager_id]


def test_cursor_pagination_returns_every_key_once_while_keys_are_created(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    for index in range(6):
        api.issue(name=f"existing {index}")
    api.issue(client_id="globex")
    before = api.list_ids(manager)
    assert len(before) == 7

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = api.call("GET", "/keys", manager, query_string=query)
        assert response.status_code == 200
        page = response.get_json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        api.create(manager, name=f"created during page {pages}")
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"
    assert len(seen) == len(set(seen)), "a key was listed twice"
    assert seen == before
    assert pages == 4


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("garbage", id="word"),
        pytest.param("!!!", id="not-base64"),
        pytest.param(_b64('{"a": 1}'), id="json-object"),
        pytest.param(_b64("5"), id="json-number"),
        pytest.param(_b64('["not a date", "x"]'), id="not-a-date"),
        pytest.param(_b64('[null, "x"]'), id="null-date"),
        pytest.param(_b64('["2024-01-01T00:00:00+00:00", "x", "y"]'), id="three-items"),
        pytest.param("c" * 201, id="too-long"),
    ],
)
def test_a_garbage_cursor_is_invalid_input(shared_api: Api, cursor: str) -> None:
    manager = shared_api.manager(*READ_WRITE)
    response = shared_api.call("GET", "/keys", manager, query_string={"cursor": cursor})
    assert_field_errors(response, "query", "cursor")


@pytest.mark.parametrize(
    "query, name",
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=many", "limit"),
        ("include_revoked=perhaps", "include_revoked"),
    ],
)
def test_a_bad_list_parameter_is_invalid_input(shared_api: Api, query: str, name: str) -> None:
    manager = shared_api.manager(*READ_WRITE)
    assert_field_errors(shared_api.call("GET", f"/keys?{query}", manager), "query", name)


# --- GET and PATCH /keys/<id> --------------------------------------------------------------------


def test_show_answers_the_key_object(api: Api) -> None:
    manager_id, manager = api.issue(*READ_WRITE, name="me")
    shown = api.show(manager, manager_id)
    assert_key_object(shown)
    assert (shown["id"], shown["name"], shown["external_client_id"]) == (manager_id, "me", "acme")
    assert shown["scopes"] == list(READ_WRITE)


def test_patch_changes_the_fields_and_get_shows_them(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    created = api.create(manager, name="before")
    changes = {
        "name": "after",
        "scopes": ["keys:read"],
        "enabled": False,
        "meta": {"team": "data"},
        "expires_at": FUTURE,
    }
    response = api.call("PATCH", f"/keys/{created['id']}", manager, json=changes)
    assert response.status_code == 200
    patched = response.get_json()
    assert_key_object(patched)
    for shown in (patched, api.show(manager, created["id"])):
        assert {name: shown[name] for name in ("name", "scopes", "enabled", "meta")} == {
            "name": "after",
            "scopes": ["keys:read"],
            "enabled": False,
            "meta": {"team": "data"},
        }
        assert parse_time(shown["expires_at"]) == parse_time(FUTURE)
        assert parse_time(shown["updated_at"]) >= parse_time(created["updated_at"])


def test_patch_expires_at_null_means_never(api: Api) -> None:
    admin = api.manager(*ADMIN)
    created = api.create(admin, expires_at=FUTURE)
    response = api.call("PATCH", f"/keys/{created['id']}", admin, json={"expires_at": None})
    assert response.status_code == 200 and response.get_json()["expires_at"] is None


def test_patch_enabled_false_disables_the_key_and_true_enables_it(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    created = api.create(manager)
    assert api.protected(created["key"]).status_code == 200
    assert api.call("PATCH", f"/keys/{created['id']}", manager, json={"enabled": False}).status_code == 200
    assert_problem(api.protected(created["key"]), 401, "DISABLED")
    assert api.call("PATCH", f"/keys/{created['id']}", manager, json={"enabled": True}).status_code == 200
    assert api.protected(created["key"]).status_code == 200


def test_a_client_manager_cannot_patch_in_a_scope_it_does_not_hold(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    created = api.create(manager)
    response = api.call("PATCH", f"/keys/{created['id']}", manager, json={"scopes": ["billing:write"]})
    assert_problem(response, 403, "FORBIDDEN")
    assert api.show(manager, created["id"])["scopes"] == []


# --- DELETE /keys/<id> ---------------------------------------------------------------------------


def test_delete_revokes_with_the_reason_and_the_key_is_refused(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    created = api.create(manager)
    assert api.protected(created["key"]).status_code == 200
    response = api.call("DELETE", f"/keys/{created['id']}?reason=leaked%20in%20a%20log", manager)
    assert response.status_code == 204 and response.get_data() == b""
    shown = api.show(manager, created["id"])
    assert shown["revocation_reason"] == "leaked in a log"
    assert TIMESTAMP.match(shown["revoked_at"])
    response = api.protected(created["key"])
    assert_problem(response, 401, "REVOKED")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="keyservice", error="invalid_token"'


def test_every_key_object_carries_its_status(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    created = {
        status: api.create(manager, name=status) for status in ("active", "disabled", "expired", "revoked", "leaked")
    }
    assert {body["status"] for body in created.values()} == {"active"}
    patched = api.call("PATCH", f"/keys/{created['disabled']['id']}", manager, json={"enabled": False})
    assert patched.get_json()["status"] == "disabled"
    with api.app.app_context():
        db.session.get(ApiKey, created["expired"]["id"]).expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    api.call("DELETE", f"/keys/{created['revoked']['id']}", manager)
    api.call("DELETE", f"/keys/{created['leaked']['id']}?reason=leaked", manager)
    assert api.show(manager, created["expired"]["id"])["status"] == "expired"
    listed = api.call("GET", "/keys?include_revoked=true", manager).get_json()["items"]
    assert {item["name"]: item["status"] for item in listed if item["name"] != "manager"} == {
        status: status for status in created
    }


def test_delete_is_idempotent_and_keeps_the_first_revocation(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    key_id = api.create(manager)["id"]
    assert api.call("DELETE", f"/keys/{key_id}?reason=first", manager).status_code == 204
    revoked_at = api.show(manager, key_id)["revoked_at"]
    response = api.call("DELETE", f"/keys/{key_id}?reason=second", manager)
    assert response.status_code == 204 and response.get_data() == b""
    shown = api.show(manager, key_id)
    assert (shown["revocation_reason"], shown["revoked_at"]) == ("first", revoked_at)
    assert [event["action"] for event in api.events(manager, key_id)] == ["created", "revoked"]


def test_delete_without_a_reason_leaves_it_empty(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    key_id = api.create(manager)["id"]
    assert api.call("DELETE", f"/keys/{key_id}", manager).status_code == 204
    assert api.show(manager, key_id)["revocation_reason"] is None


def test_delete_with_a_reason_over_200_characters_is_invalid_input(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    key_id = api.create(manager)["id"]
    assert_field_errors(api.call("DELETE", f"/keys/{key_id}?reason={'r' * 201}", manager), "query", "reason")
    assert api.show(manager, key_id)["revoked_at"] is None


# --- POST /keys/<id>/rotate ----------------------------------------------------------------------


def test_rotate_issues_a_key_with_the_same_settings_and_ends_the_old_one(api: Api) -> None:
    admin_id, admin = api.issue(*ADMIN)
    old = api.create(
        admin, name="bot", external_client_id="globex", scopes=["reports:read"], meta={"plan": "pro"}, expires_at=FUTURE
    )
    response = api.call("POST", f"/keys/{old['id']}/rotate", admin)
    assert response.status_code == 201
    new = response.get_json()
    assert_key_object(new)
    assert new["id"] != old["id"] and new["key"] != old["key"]
    assert new["rotated_from"] == old["id"] and new["created_by"] == f"key:{admin_id}"
    same = ("name", "external_client_id", "scopes", "roles", "meta", "expires_at", "enabled")
    assert {name: new[name] for name in same} == {name: old[name] for name in same}
    assert_problem(api.protected(old["key"]), 401, "EXPIRED")
    assert api.protected(new["key"]).get_json() == {"protected": True, "external_client_id": "globex"}


def test_rotate_with_a_grace_period_keeps_the_old_key_working_until_then(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    old = api.create(manager)
    response = api.call("POST", f"/keys/{old['id']}/rotate", manager, json={"grace_seconds": 3600})
    assert response.status_code == 201
    assert api.protected(old["key"]).status_code == 200
    assert api.protected(response.get_json()["key"]).status_code == 200
    expires_at = parse_time(api.show(manager, old["id"])["expires_at"])
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    assert in_an_hour - timedelta(minutes=1) < expires_at <= in_an_hour


def test_rotating_a_revoked_key_is_a_conflict(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    key_id = api.create(manager)["id"]
    assert api.call("DELETE", f"/keys/{key_id}", manager).status_code == 204
    assert_problem(api.call("POST", f"/keys/{key_id}/rotate", manager), 409, "CONFLICT")


# --- GET /keys/<id>/events -----------------------------------------------------------------------


def test_events_record_create_update_rotate_and_revoke_by_the_manager(api: Api) -> None:
    manager_id, manager = api.issue(*READ_WRITE)
    created = api.create(manager, name="old name", meta={"a": 1})
    key_id = created["id"]
    assert (
        api.call(
            "PATCH", f"/keys/{key_id}", manager, json={"name": "new name", "enabled": False, "meta": {"a": 2}}
        ).status_code
        == 200
    )
    rotated = api.call("POST", f"/keys/{key_id}/rotate", manager).get_json()
    assert api.call("DELETE", f"/keys/{key_id}?reason=done", manager).status_code == 204

    events = api.events(manager, key_id)
    assert [event["action"] for event in events] == ["created", "updated", "rotated", "revoked"]
    assert {event["actor"] for event in events} == {f"key:{manager_id}"}
    assert events[1]["changes"] == {
        "name": ["old name", "new name"],
        "enabled": [True, False],
        "meta": [{"a": 1}, {"a": 2}],
    }
    assert events[2]["changes"]["rotated_to"] == rotated["id"]
    assert events[3]["changes"] == {"reason": "done"}
    for event in events:
        assert TIMESTAMP.match(event["at"])
    assert [event["id"] for event in events] == sorted(event["id"] for event in events)
    times = [parse_time(event["at"]) for event in events]
    assert times == sorted(times)

    new_events = api.events(manager, rotated["id"])  # revoking a key revokes the key rotated from it
    assert [(event["action"], event["changes"]) for event in new_events] == [
        ("created", {"rotated_from": key_id}),
        ("revoked", {"revoked_with": key_id, "reason": "done"}),
    ]


def test_patch_that_changes_nothing_records_no_event(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    created = api.create(manager, name="same")
    assert api.call("PATCH", f"/keys/{created['id']}", manager, json={"name": "same"}).status_code == 200
    assert [event["action"] for event in api.events(manager, created["id"])] == ["created"]


def test_patch_of_expires_at_is_recorded_as_timestamps(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    created = api.create(manager)
    assert api.call("PATCH", f"/keys/{created['id']}", manager, json={"expires_at": FUTURE}).status_code == 200
    old, new = api.events(manager, created["id"])[1]["changes"]["expires_at"]
    assert old is None and parse_time(new) == parse_time(FUTURE)


# --- POST /keys/verify ---------------------------------------------------------------------------


def test_verify_answers_valid_with_the_keys_client_and_scopes(api: Api) -> None:
    verifier = api.manager("keys:verify")
    key_id, key = api.issue("reports:read", "reports:write")
    for scopes in ([], ["reports:read"]):
        response = api.call("POST", "/keys/verify", verifier, json={"key": key, "scopes": scopes})
        assert response.status_code == 200
        assert response.get_json() == {
            "valid": True,
            "code": "VALID",
            "key_id": key_id,
            "external_client_id": "acme",
            "scopes": ["reports:read", "reports:write"],
            "remaining": None,
            "ratelimit": None,
        }


def test_verify_answers_malformed_for_a_key_not_in_the_format(api: Api) -> None:
    verifier = api.manager("keys:verify")
    response = api.call("POST", "/keys/verify", verifier, json={"key": "not-a-key"})
    assert response.status_code == 200
    body = response.get_json()
    assert (body["valid"], body["code"], body["key_id"]) == (False, "MALFORMED", None)


def test_verify_answers_insufficient_scope_for_a_missing_scope(api: Api) -> None:
    verifier = api.manager("keys:verify")
    key_id, key = api.issue("reports:read")
    response = api.call("POST", "/keys/verify", verifier, json={"key": key, "scopes": ["billing:write"]})
    assert response.status_code == 200
    body = response.get_json()
    assert (body["valid"], body["code"], body["key_id"]) == (False, "INSUFFICIENT_SCOPE", key_id)


def test_verify_answers_revoked_for_a_revoked_key(api: Api) -> None:
    manager = api.manager(*MANAGEMENT)
    created = api.create(manager)
    assert api.call("DELETE", f"/keys/{created['id']}", manager).status_code == 204
    body = api.call("POST", "/keys/verify", manager, json={"key": created["key"]}).get_json()
    assert (body["valid"], body["code"]) == (False, "REVOKED")


def test_verify_of_another_clients_key_is_not_found(api: Api) -> None:
    verifier = api.manager("keys:verify", client_id="acme")
    _, key = api.issue(client_id="globex")
    response = api.call("POST", "/keys/verify", verifier, json={"key": key})
    assert response.status_code == 200
    assert response.get_json() == {
        "valid": False,
        "code": "NOT_FOUND",
        "key_id": None,
        "external_client_id": None,
        "scopes": [],
        "remaining": None,
        "ratelimit": None,
    }


# --- roles ---------------------------------------------------------------------------------------


def test_put_list_and_delete_a_role(api: Api) -> None:
    admin = api.manager(*ADMIN)
    response = api.call("PUT", "/roles/reader", admin, json={"scopes": ["reports:read"]})
    assert response.status_code == 200
    role = response.get_json()
    assert (role["name"], role["scopes"]) == ("reader", ["reports:read"])
    assert TIMESTAMP.match(role["created_at"]) and TIMESTAMP.match(role["updated_at"])
    assert api.call("PUT", "/roles/writer", admin, json={"scopes": ["reports:write"]}).status_code == 200

    listed = api.call("GET", "/roles", admin)
    assert listed.status_code == 200
    assert [(item["name"], item["scopes"]) for item in listed.get_json()["items"]] == [
        ("reader", ["reports:read"]),
        ("writer", ["reports:write"]),
    ]

    response = api.call("DELETE", "/roles/reader", admin)
    assert response.status_code == 204 and response.get_data() == b""
    assert [item["name"] for item in api.call("GET", "/roles", admin).get_json()["items"]] == ["writer"]


def test_put_replaces_a_roles_scopes(api: Api) -> None:
    admin = api.manager(*ADMIN)
    api.call("PUT", "/roles/reader", admin, json={"scopes": ["reports:read"]})
    response = api.call("PUT", "/roles/reader", admin, json={"scopes": ["a:b", "c:d"]})
    assert response.status_code == 200 and response.get_json()["scopes"] == ["a:b", "c:d"]


def test_a_key_holds_its_roles_current_scopes(reports_app: Flask, api: Api) -> None:
    admin = api.manager(*ADMIN)
    assert api.call("PUT", "/roles/reader", admin, json={"scopes": ["reports:read"]}).status_code == 200
    created = api.create(admin, roles=["reader"])
    assert created["roles"] == ["reader"] and created["scopes"] == []

    response = api.call("GET", "/reports", created["key"])
    assert response.status_code == 200 and response.get_json() == {"scopes": ["reports:read"]}

    assert api.call("PUT", "/roles/reader", admin, json={"scopes": ["reports:list"]}).status_code == 200
    assert_problem(api.call("GET", "/reports", created["key"]), 403, "INSUFFICIENT_SCOPE")

    assert api.call("PUT", "/roles/reader", admin, json={"scopes": ["reports:*"]}).status_code == 200
    assert api.call("GET", "/reports", created["key"]).status_code == 200

    assert api.call("DELETE", "/roles/reader", admin).status_code == 204
    assert_problem(api.call("GET", "/reports", created["key"]), 403, "INSUFFICIENT_SCOPE")


def test_a_role_can_be_given_to_a_key_by_patch(reports_app: Flask, api: Api) -> None:
    admin = api.manager(*ADMIN)
    api.call("PUT", "/roles/reader", admin, json={"scopes": ["reports:read"]})
    created = api.create(admin)
    assert_problem(api.call("GET", "/reports", created["key"]), 403, "INSUFFICIENT_SCOPE")
    assert api.call("PATCH", f"/keys/{created['id']}", admin, json={"roles": ["reader"]}).status_code == 200
    assert api.call("GET", "/reports", created["key"]).status_code == 200


def test_a_client_manager_cannot_grant_a_role_with_scopes_it_does_not_hold(api: Api) -> None:
    admin = api.manager(*ADMIN)
    api.call("PUT", "/roles/reader", admin, json={"scopes": ["reports:read"]})
    manager = api.manager(*READ_WRITE)
    response = api.call("POST", "/keys", manager, json={"name": "n", "external_client_id": "acme", "roles": ["reader"]})
    assert_problem(response, 403, "FORBIDDEN")


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_an_unknown_role_is_invalid_input(api: Api, method: str) -> None:
    admin = api.manager(*ADMIN)
    if method == "POST":
        response = api.call("POST", "/keys", admin, json={"name": "n", "external_client_id": "acme", "roles": ["nope"]})
    else:
        key_id = api.create(admin)["id"]
        response = api.call("PATCH", f"/keys/{key_id}", admin, json={"roles": ["nope"]})
    assert_field_errors(response, "json", "roles")


def test_a_bad_role_name_is_invalid_input(api: Api) -> None:
    admin = api.manager(*ADMIN)
    response = api.call("PUT", "/roles/Not%20A%20Name", admin, json={"scopes": []})
    assert_field_errors(response, "path", "name")


# --- request bodies: validation, size and type ---------------------------------------------------

BODY_ROUTES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "create": ("POST", "/keys", {"name": "n", "external_client_id": "acme"}),
    "update": ("PATCH", "/keys/{id}", {"name": "renamed"}),
    "rotate": ("POST", "/keys/{id}/rotate", {"grace_seconds": 60}),
    "verify": ("POST", "/keys/verify", {"key": "sk_x"}),
    "role": ("PUT", "/roles/reader", {"scopes": []}),
}
TOO_MANY_SCOPES = [f"scope:{index}" for index in range(101)]
# (field, value) that no body taking the field accepts.
KEY_FIELD_CASES = [
    pytest.param("bogus", 1, id="unknown-field"),
    pytest.param("id", UNKNOWN_ID, id="id-is-not-an-input"),
    pytest.param("name", 5, id="name-number"),
    pytest.param("name", None, id="name-null"),
    pytest.param("name", "", id="name-empty"),
    pytest.param("name", "n" * 201, id="name-201-characters"),
    pytest.param("scopes", "a", id="scopes-string"),
    pytest.param("scopes", [5], id="scope-number"),
    pytest.param("scopes", ["Has Spaces"], id="scope-with-spaces"),
    pytest.param("scopes", ["Reports:read"], id="scope-upper-case"),
    pytest.param("scopes", [""], id="scope-empty"),
    pytest.param("scopes", ["s" * 101], id="scope-101-characters"),
    pytest.param("scopes", TOO_MANY_SCOPES, id="101-scopes"),
    pytest.param("roles", "reader", id="roles-string"),
    pytest.param("roles", ["Not A Role"], id="role-name-with-spaces"),
    pytest.param("meta", "x", id="meta-string"),
    pytest.param("meta", [1], id="meta-list"),
    pytest.param("meta", {"k": "v" * 4100}, id="meta-over-4kib"),
    pytest.param("expires_at", "2000-01-01T00:00:00Z", id="expires-in-the-past"),
    pytest.param("expires_at", "tomorrow", id="expires-not-a-date"),
    pytest.param("expires_at", 5, id="expires-number"),
]
CASES = [
    *(pytest.param("create", *case.values, id=f"create-{case.id}") for case in KEY_FIELD_CASES),
    pytest.param("create", "external_client_id", 5, id="create-client-number"),
    pytest.param("create", "external_client_id", "c" * 201, id="create-client-201-characters"),
    *(pytest.param("update", *case.values, id=f"update-{case.id}") for case in KEY_FIELD_CASES),
    pytest.param("update", "enabled", "yes", id="update-enabled-string"),
    pytest.param("update", "enabled", 1, id="update-enabled-number"),
    pytest.param("update", "enabled", None, id="update-enabled-null"),
    pytest.param("update", "external_client_id", "globex", id="update-client-is-not-changeable"),
    pytest.param("rotate", "bogus", 1, id="rotate-unknown-field"),
    pytest.param("rotate", "grace_seconds", "60", id="rotate-grace-string"),
    pytest.param("rotate", "grace_seconds", 1.5, id="rotate-grace-fraction"),
    pytest.param("rotate", "grace_seconds", -1, id="rotate-grace-negative"),
    pytest.param("verify", "bogus", 1, id="verify-unknown-field"),
    pytest.param("verify", "key", 5, id="verify-key-number"),
    pytest.param("verify", "scopes", "a", id="verify-scopes-string"),
    pytest.param("verify", "scopes", ["Has Spaces"], id="verify-scope-with-spaces"),
    pytest.param("verify", "scopes", TOO_MANY_SCOPES, id="verify-101-scopes"),
    pytest.param("role", "bogus", 1, id="role-unknown-field"),
    pytest.param("role", "scopes", "a", id="role-scopes-string"),
    pytest.param("role", "scopes", None, id="role-scopes-null"),
    pytest.param("role", "scopes", ["Has Spaces"], id="role-scope-with-spaces"),
    pytest.param("role", "scopes", TOO_MANY_SCOPES, id="role-101-scopes"),
]


BodyRoute = Callable[[str], tuple[str, str, dict[str, Any], str]]


@pytest.fixture
def body_route(shared_api: Api) -> BodyRoute:
    """(method, path, a valid body, the admin key) of a route that takes a body."""
    admin = shared_api.manager(*ADMIN)
    key_id, _ = shared_api.issue()

    def route(name: str) -> tuple[str, str, dict[str, Any], str]:
        method, path, body = BODY_ROUTES[name]
        return method, path.format(id=key_id), body, admin

    return route


@pytest.mark.parametrize("route, name, value", CASES)
def test_invalid_input_is_a_422_naming_the_field(
    shared_api: Api, body_route: BodyRoute, route: str, name: str, value: Any
) -> None:
    method, path, body, admin = body_route(route)
    response = shared_api.call(method, path, admin, json=body | {name: value})
    assert_field_errors(response, "json", name)


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_a_body_over_64_kib_is_too_large(shared_api: Api, body_route: BodyRoute, route: str) -> None:
    method, path, body, admin = body_route(route)
    oversized = json.dumps(body | {"padding": "p" * 65 * 1024})
    assert_problem(shared_api.call(method, path, admin, data=oversized, content_type="application/json"), 413)


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_a_body_that_is_not_json_is_a_400(shared_api: Api, body_route: BodyRoute, route: str) -> None:
    method, path, _, admin = body_route(route)
    response = shared_api.call(method, path, admin, data='{"name": ', content_type="application/json")
    assert_problem(response, 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("route", BODY_ROUTES)
def test_a_body_of_another_content_type_is_a_client_error(
    shared_api: Api, body_route: BodyRoute, route: str, content_type: str
) -> None:
    # curl -d sends form encoding: a JSON body sent that way must not be silently ignored.
    method, path, body, admin = body_route(route)
    response = shared_api.call(method, path, admin, data=json.dumps(body), content_type=content_type)
    assert 400 <= response.status_code < 500, describe(response)
    assert_problem(response, response.status_code)


def test_rotate_without_a_body_uses_no_grace_period(api: Api) -> None:
    manager = api.manager(*READ_WRITE)
    old = api.create(manager)
    assert api.call("POST", f"/keys/{old['id']}/rotate", manager).status_code == 201
    assert_problem(api.protected(old["key"]), 401, "EXPIRED")
