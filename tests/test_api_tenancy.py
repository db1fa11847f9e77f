"""Tenancy of the management API: a client's management key sees and changes only
its own client's keys, and grants only the scopes it holds; ``keys:admin`` acts on all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from keyservice.core.crypto import checksum

from .conftest import IssueKey
from .helpers import assert_problem, bearer, listed_ids

MANAGER_SCOPES = ("keys:read", "keys:write", "keys:verify")
CLIENT_A = "client-a"
CLIENT_B = "client-b"


@dataclass(frozen=True)
class Issued:
    id: str
    key: str


def assert_not_found(response: TestResponse) -> None:
    assert_problem(response, 404, "RESOURCE_NOT_FOUND")


def assert_forbidden(response: TestResponse) -> None:
    assert_problem(response, 403, "FORBIDDEN")


@pytest.fixture
def manager_a(issue_key: IssueKey) -> Issued:
    """Client A's management key: read, write and verify, no admin."""
    return Issued(*issue_key(name="a manager", external_client_id=CLIENT_A, scopes=MANAGER_SCOPES))


@pytest.fixture
def admin(issue_key: IssueKey) -> Issued:
    return Issued(*issue_key(name="operator", external_client_id="ops", scopes=("keys:admin",)))


@pytest.fixture
def key_b(issue_key: IssueKey) -> Issued:
    """An ordinary key of client B."""
    return Issued(*issue_key(name="b's key", external_client_id=CLIENT_B, scopes=("reports:read",)))


def call(client: FlaskClient, caller: Issued, method: str, path: str, body: Any = None) -> TestResponse:
    return client.open(path, method=method, headers=bearer(caller.key), json=body)


def shown_to_admin(client: FlaskClient, admin: Issued, key_id: str) -> dict[str, Any]:
    response = call(client, admin, "GET", f"/keys/{key_id}")
    assert response.status_code == 200
    return response.get_json()


def assert_works(client: FlaskClient, key: str, client_id: str = CLIENT_B) -> None:
    response = client.post("/protected-with-key", headers=bearer(key))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["external_client_id"] == client_id


def assert_unchanged(client: FlaskClient, admin: Issued, key_b: Issued, before: dict[str, Any]) -> None:
    assert_works(client, key_b.key)
    assert shown_to_admin(client, admin, key_b.id) == before
    assert listed_ids(client, f"?external_client_id={CLIENT_B}", admin.key) == [key_b.id]


def create_role(client: FlaskClient, admin: Issued, name: str, scopes: list[str]) -> None:
    response = call(client, admin, "PUT", f"/roles/{name}", {"scopes": scopes})
    assert response.status_code == 200, response.get_data(as_text=True)


# Every management route that names a key, with a body that would change it.
KEY_ROUTES = [
    pytest.param("GET", "/keys/{id}", None, id="show"),
    pytest.param("PATCH", "/keys/{id}", {"name": "hijacked"}, id="rename"),
    pytest.param("PATCH", "/keys/{id}", {"enabled": False}, id="disable"),
    pytest.param("PATCH", "/keys/{id}", {"scopes": []}, id="strip-scopes"),
    pytest.param("PATCH", "/keys/{id}", {"scopes": ["billing:write"]}, id="grant-unheld-scope"),
    pytest.param("DELETE", "/keys/{id}", None, id="revoke"),
    pytest.param("DELETE", "/keys/{id}?reason=mine+now", None, id="revoke-with-reason"),
    pytest.param("POST", "/keys/{id}/rotate", None, id="rotate"),
    pytest.param("POST", "/keys/{id}/rotate", {"grace_seconds": 3600}, id="rotate-with-grace"),
    pytest.param("GET", "/keys/{id}/events", None, id="events"),
]


@pytest.mark.parametrize("method, path, body", KEY_ROUTES)
def test_another_clients_key_answers_404_and_is_left_alone(
    client: FlaskClient, manager_a: Issued, admin: Issued, key_b: Issued, method: str, path: str, body: Any
) -> None:
    before = shown_to_admin(client, admin, key_b.id)
    assert_not_found(call(client, manager_a, method, path.format(id=key_b.id), body))
    assert_unchanged(client, admin, key_b, before)


@pytest.mark.parametrize("method, path, body", KEY_ROUTES)
def test_another_clients_key_answers_as_a_key_that_does_not_exist(
    client: FlaskClient, manager_a: Issued, key_b: Issued, method: str, path: str, body: Any
) -> None:
    missing_id = "Z" * 16
    theirs = call(client, manager_a, method, path.format(id=key_b.id), body)
    missing = call(client, manager_a, method, path.format(id=missing_id), body)
    assert (theirs.status_code, theirs.mimetype) == (missing.status_code, missing.mimetype)
    assert theirs.get_data() == missing.get_data()


def test_listing_shows_only_the_principals_own_client(
    client: FlaskClient, manager_a: Issued, key_b: Issued, issue_key: IssueKey
) -> None:
    own_id, _ = issue_key(name="a's other key", external_client_id=CLIENT_A)
    assert sorted(listed_ids(client, key=manager_a.key)) == sorted([manager_a.id, own_id])
    assert sorted(listed_ids(client, f"?external_client_id={CLIENT_A}", manager_a.key)) == sorted(
        [manager_a.id, own_id]
    )


@pytest.mark.parametrize(
    "query",
    [
        f"?external_client_id={CLIENT_B}",
        f"?external_client_id={CLIENT_B}&include_revoked=true",
        f"?external_client_id={CLIENT_B}&limit=1",
    ],
)
def test_asking_to_list_another_client_gives_nothing(
    client: FlaskClient, manager_a: Issued, key_b: Issued, query: str
) -> None:
    response = call(client, manager_a, "GET", f"/keys{query}")
    assert response.status_code == 200
    assert response.get_json() == {"items": [], "next_cursor": None}


def test_revoked_keys_of_another_client_stay_out_of_the_listing(
    client: FlaskClient, manager_a: Issued, admin: Issued, key_b: Issued
) -> None:
    assert call(client, admin, "DELETE", f"/keys/{key_b.id}").status_code == 204
    assert key_b.id not in listed_ids(client, "?include_revoked=true", manager_a.key)
    assert key_b.id in listed_ids(client, "?include_revoked=true", admin.key)


def unknown_key() -> str:
    """A well-formed key (checksum and all) whose id no key has."""
    body = f"sk_{'Z' * 16}_{'s' * 32}"
    return body + checksum(body)


def assert_verified_as_unknown(client: FlaskClient, manager: Issued, key: str, scopes: list[str]) -> None:
    theirs = call(client, manager, "POST", "/keys/verify", {"key": key, "scopes": scopes})
    missing = call(client, manager, "POST", "/keys/verify", {"key": unknown_key(), "scopes": scopes})
    assert (theirs.status_code, theirs.get_json()["code"]) == (200, "NOT_FOUND")
    assert (theirs.status_code, theirs.headers.get("Content-Type"), theirs.get_data()) == (
        missing.status_code,
        missing.headers.get("Content-Type"),
        missing.get_data(),
    )


@pytest.mark.parametrize("scopes", [[], ["reports:read"], ["billing:write"]])
def test_verifying_another_clients_key_answers_as_an_unknown_key_and_counts_no_use(
    client: FlaskClient, manager_a: Issued, admin: Issued, key_b: Issued, scopes: list[str]
) -> None:
    before = shown_to_admin(client, admin, key_b.id)
    assert_verified_as_unknown(client, manager_a, key_b.key, scopes)
    assert_unchanged(client, admin, key_b, before)


def test_verifying_another_clients_revoked_key_answers_as_an_unknown_key(
    client: FlaskClient, manager_a: Issued, admin: Issued, key_b: Issued
) -> None:
    assert call(client, admin, "DELETE", f"/keys/{key_b.id}").status_code == 204
    assert_verified_as_unknown(client, manager_a, key_b.key, [])


def test_verifying_an_own_key_answers_its_outcome(client: FlaskClient, manager_a: Issued, issue_key: IssueKey) -> None:
    own_id, own = issue_key(external_client_id=CLIENT_A, scopes=("reports:read",))
    response = call(client, manager_a, "POST", "/keys/verify", {"key": own, "scopes": ["reports:read"]})
    assert response.status_code == 200
    body = response.get_json()
    assert (body["valid"], body["code"], body["key_id"], body["external_client_id"]) == (
        True,
        "VALID",
        own_id,
        CLIENT_A,
    )


def test_cannot_create_a_key_for_another_client(
    client: FlaskClient, manager_a: Issued, admin: Issued, key_b: Issued
) -> None:
    response = call(client, manager_a, "POST", "/keys", {"name": "planted", "external_client_id": CLIENT_B})
    assert_forbidden(response)
    assert listed_ids(client, f"?external_client_id={CLIENT_B}", admin.key) == [key_b.id]


def test_creates_a_key_for_its_own_client_with_scopes_it_holds(client: FlaskClient, manager_a: Issued) -> None:
    response = call(
        client, manager_a, "POST", "/keys", {"name": "reader", "external_client_id": CLIENT_A, "scopes": ["keys:read"]}
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    created = response.get_json()
    assert created["created_by"] == f"key:{manager_a.id}"
    assert created["scopes"] == ["keys:read"]
    assert_works(client, created["key"], CLIENT_A)


@pytest.mark.parametrize(
    "scopes", [["billing:write"], ["keys:read", "billing:write"], ["keys:admin"], ["keys:*"], ["*"]]
)
def test_cannot_grant_a_scope_it_does_not_hold_on_create(
    client: FlaskClient, manager_a: Issued, scopes: list[str]
) -> None:
    response = call(client, manager_a, "POST", "/keys", {"name": "n", "external_client_id": CLIENT_A, "scopes": scopes})
    assert_forbidden(response)
    assert listed_ids(client, key=manager_a.key) == [manager_a.id]


def test_cannot_grant_a_scope_it_does_not_hold_on_update(
    client: FlaskClient, manager_a: Issued, issue_key: IssueKey
) -> None:
    own_id, _ = issue_key(external_client_id=CLIENT_A, scopes=("keys:read",))
    assert_forbidden(call(client, manager_a, "PATCH", f"/keys/{own_id}", {"scopes": ["keys:read", "billing:write"]}))
    assert call(client, manager_a, "GET", f"/keys/{own_id}").get_json()["scopes"] == ["keys:read"]


def test_cannot_grant_a_scope_through_a_role(
    client: FlaskClient, manager_a: Issued, admin: Issued, issue_key: IssueKey
) -> None:
    create_role(client, admin, "billing", ["billing:write"])
    create = {"name": "n", "external_client_id": CLIENT_A, "roles": ["billing"]}
    assert_forbidden(call(client, manager_a, "POST", "/keys", create))
    own_id, _ = issue_key(external_client_id=CLIENT_A)
    assert_forbidden(call(client, manager_a, "PATCH", f"/keys/{own_id}", {"roles": ["billing"]}))
    assert call(client, manager_a, "GET", f"/keys/{own_id}").get_json()["roles"] == []


def test_can_grant_a_role_whose_scopes_it_holds(client: FlaskClient, manager_a: Issued, admin: Issued) -> None:
    create_role(client, admin, "auditor", ["keys:read"])
    response = call(
        client, manager_a, "POST", "/keys", {"name": "n", "external_client_id": CLIENT_A, "roles": ["auditor"]}
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["roles"] == ["auditor"]


@pytest.mark.parametrize("held", ["billing:write", "keys:admin"])
def test_rotating_a_key_that_holds_more_than_the_principal_is_forbidden(
    client: FlaskClient, manager_a: Issued, issue_key: IssueKey, held: str
) -> None:
    """Rotation hands out a new key with the old one's scopes: that is granting them."""
    own_id, own = issue_key(name="strong bot", external_client_id=CLIENT_A, scopes=(held,))
    assert_forbidden(call(client, manager_a, "POST", f"/keys/{own_id}/rotate"))
    assert_works(client, own, CLIENT_A)
    assert call(client, manager_a, "GET", f"/keys/{own_id}").get_json()["expires_at"] is None


def test_rotating_a_key_within_the_principals_scopes_is_allowed(
    client: FlaskClient, manager_a: Issued, issue_key: IssueKey
) -> None:
    own_id, _ = issue_key(external_client_id=CLIENT_A, scopes=("keys:read",))
    response = call(client, manager_a, "POST", f"/keys/{own_id}/rotate")
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["rotated_from"] == own_id


def test_admin_manages_another_clients_key(client: FlaskClient, admin: Issued, key_b: Issued) -> None:
    assert shown_to_admin(client, admin, key_b.id)["external_client_id"] == CLIENT_B
    assert listed_ids(client, f"?external_client_id={CLIENT_B}", admin.key) == [key_b.id]
    verified = call(client, admin, "POST", "/keys/verify", {"key": key_b.key})
    assert verified.status_code == 200 and verified.get_json()["code"] == "VALID"

    patched = call(client, admin, "PATCH", f"/keys/{key_b.id}", {"name": "renamed", "scopes": ["billing:write"]})
    assert patched.status_code == 200, patched.get_data(as_text=True)
    assert (patched.get_json()["name"], patched.get_json()["scopes"]) == ("renamed", ["billing:write"])

    rotated = call(client, admin, "POST", f"/keys/{key_b.id}/rotate", {"grace_seconds": 60})
    assert rotated.status_code == 201, rotated.get_data(as_text=True)
    new = Issued(rotated.get_json()["id"], rotated.get_json()["key"])
    assert_works(client, new.key)

    events = call(client, admin, "GET", f"/keys/{key_b.id}/events")
    assert events.status_code == 200
    assert [event["action"] for event in events.get_json()["items"]] == ["created", "updated", "rotated"]

    assert call(client, admin, "DELETE", f"/keys/{new.id}?reason=done").status_code == 204
    assert_problem(client.post("/protected-with-key", headers=bearer(new.key)), 401, "REVOKED")


def test_admin_creates_keys_for_any_client_with_any_scope_or_role(client: FlaskClient, admin: Issued) -> None:
    create_role(client, admin, "billing", ["billing:write"])
    response = call(
        client,
        admin,
        "POST",
        "/keys",
        {"name": "n", "external_client_id": CLIENT_B, "scopes": ["reports:read", "keys:admin"], "roles": ["billing"]},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    created = response.get_json()
    assert (created["external_client_id"], created["scopes"], created["roles"]) == (
        CLIENT_B,
        ["reports:read", "keys:admin"],
        ["billing"],
    )
    assert_works(client, created["key"])


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/roles", None),
        ("PUT", "/roles/reader", {"scopes": ["keys:read"]}),
        ("DELETE", "/roles/billing", None),
    ],
)
def test_roles_routes_need_keys_admin(
    client: FlaskClient, manager_a: Issued, admin: Issued, method: str, path: str, body: Any
) -> None:
    create_role(client, admin, "billing", ["billing:write"])
    response = call(client, manager_a, method, path, body)
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"
    assert 'scope="keys:admin"' in response.headers["WWW-Authenticate"]
    roles = call(client, admin, "GET", "/roles").get_json()["items"]
    assert [(role["name"], role["scopes"]) for role in roles] == [("billing", ["billing:write"])]
