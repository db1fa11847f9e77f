"""Who may loosen a limit: a client's own manager tightens, only keys:admin loosens.

Loosening is raising or clearing ``remaining`` or ``ratelimit``, adding or raising a
``refill``, extending or clearing ``expires_at``, and enabling a key that keys:admin
disabled. A manager's attempt answers 403 ``LOOSENING_NEEDS_ADMIN`` naming the field,
and changes nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from .helpers import bearer, issue

MANAGER = ("keys:read", "keys:write", "keys:verify")
SOON, LATER = "2090-01-01T00:00:00Z", "2099-01-01T00:00:00Z"
LIMITED = {
    "remaining": 10,
    "ratelimit": {"limit": 100, "period": 60},
    "expires_at": LATER,
    "refill": {"amount": 10, "interval": "monthly"},
}


def shown(value: Any) -> Any:
    """A field's value as the API shows it (timestamps with microseconds)."""
    return value.replace("Z", ".000000Z") if isinstance(value, str) and value.endswith(":00Z") else value


def call(client: FlaskClient, key: str, method: str, path: str, body: Any = None) -> TestResponse:
    return client.open(path, method=method, headers=bearer(key), json=body)


@pytest.fixture
def manager(app: Flask) -> str:
    return issue(app, *MANAGER, name="principal")[1]


@pytest.fixture
def admin(app: Flask) -> str:
    return issue(app, "keys:admin", name="principal", external_client_id="ops")[1]


@pytest.fixture
def limited(client: FlaskClient, admin: str) -> dict[str, Any]:
    """A key of acme's with every limit, set by the operator."""
    response = call(client, admin, "POST", "/keys", {"name": "limited", "external_client_id": "acme", **LIMITED})
    assert response.status_code == 201, response.get_data(as_text=True)
    created: dict[str, Any] = response.get_json()
    return created


TIGHTER = [
    pytest.param({"remaining": 3}, id="lower remaining"),
    pytest.param({"remaining": 0}, id="remaining zero"),
    pytest.param({"ratelimit": {"limit": 50, "period": 60}}, id="lower rate limit"),
    pytest.param({"ratelimit": {"limit": 100, "period": 120}}, id="longer period"),
    pytest.param({"refill": None}, id="clear refill"),
    pytest.param({"refill": {"amount": 5, "interval": "monthly"}}, id="smaller refill"),
    pytest.param({"expires_at": SOON}, id="shorten expiry"),
    pytest.param({"enabled": False}, id="disable"),
]

LOOSER = [
    pytest.param({"remaining": 11}, "remaining", id="raise remaining"),
    pytest.param({"remaining": None}, "remaining", id="clear remaining"),
    pytest.param({"ratelimit": {"limit": 101, "period": 60}}, "ratelimit", id="raise rate limit"),
    pytest.param({"ratelimit": {"limit": 100, "period": 59}}, "ratelimit", id="shorter period"),
    pytest.param({"ratelimit": None}, "ratelimit", id="clear rate limit"),
    pytest.param({"refill": {"amount": 11, "interval": "monthly"}}, "refill", id="larger refill"),
    pytest.param({"refill": {"amount": 10, "interval": "daily"}}, "refill", id="more frequent refill"),
    pytest.param({"expires_at": "2099-06-01T00:00:00Z"}, "expires_at", id="extend expiry"),
    pytest.param({"expires_at": None}, "expires_at", id="clear expiry"),
]


@pytest.mark.parametrize("change", TIGHTER)
def test_a_manager_may_tighten(
    client: FlaskClient, manager: str, limited: dict[str, Any], change: dict[str, Any]
) -> None:
    response = call(client, manager, "PATCH", f"/keys/{limited['id']}", change)
    assert response.status_code == 200, response.get_data(as_text=True)
    [(field, value)] = change.items()
    assert response.get_json()[field] == shown(value)


@pytest.mark.parametrize("change, field", LOOSER)
def test_a_manager_may_not_loosen_and_nothing_changes(
    client: FlaskClient, manager: str, admin: str, limited: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    before = call(client, admin, "GET", f"/keys/{limited['id']}").get_json()
    response = call(client, manager, "PATCH", f"/keys/{limited['id']}", change | {"name": "renamed"})
    assert response.status_code == 403
    problem = response.get_json()
    assert problem["code"] == "LOOSENING_NEEDS_ADMIN"
    assert list(problem["errors"]["json"]) == [field]
    assert call(client, admin, "GET", f"/keys/{limited['id']}").get_json() == before


@pytest.mark.parametrize("change, field", LOOSER)
def test_keys_admin_may_loosen(
    client: FlaskClient, admin: str, limited: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    if change == {"remaining": None}:
        change = change | {"refill": None}  # a refill needs remaining
    response = call(client, admin, "PATCH", f"/keys/{limited['id']}", change)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()[field] == shown(change[field])


def test_a_manager_may_not_lift_its_own_management_keys_limits(app: Flask, client: FlaskClient, admin: str) -> None:
    created = call(
        client,
        admin,
        "POST",
        "/keys",
        {"name": "limited manager", "external_client_id": "acme", "scopes": list(MANAGER), "remaining": 100},
    ).get_json()
    response = call(client, created["key"], "PATCH", f"/keys/{created['id']}", {"remaining": None})
    assert (response.status_code, response.get_json()["code"]) == (403, "LOOSENING_NEEDS_ADMIN")


def test_only_keys_admin_enables_what_keys_admin_disabled(
    client: FlaskClient, manager: str, admin: str, limited: dict[str, Any]
) -> None:
    path = f"/keys/{limited['id']}"
    assert call(client, admin, "PATCH", path, {"enabled": False}).status_code == 200
    response = call(client, manager, "PATCH", path, {"enabled": True})
    assert (response.status_code, response.get_json()["code"]) == (403, "LOOSENING_NEEDS_ADMIN")
    assert call(client, admin, "GET", path).get_json()["enabled"] is False
    assert call(client, admin, "PATCH", path, {"enabled": True}).get_json()["enabled"] is True


def test_a_manager_enables_what_a_manager_disabled(client: FlaskClient, manager: str, limited: dict[str, Any]) -> None:
    path = f"/keys/{limited['id']}"
    assert call(client, manager, "PATCH", path, {"enabled": False}).status_code == 200
    assert call(client, manager, "PATCH", path, {"enabled": True}).get_json()["enabled"] is True


def test_an_admins_disable_holds_through_a_rotation(
    client: FlaskClient, manager: str, admin: str, limited: dict[str, Any]
) -> None:
    assert call(client, admin, "PATCH", f"/keys/{limited['id']}", {"enabled": False}).status_code == 200
    successor = call(client, manager, "POST", f"/keys/{limited['id']}/rotate", {}).get_json()
    response = call(client, manager, "PATCH", f"/keys/{successor['id']}", {"enabled": True})
    assert (response.status_code, response.get_json()["code"]) == (403, "LOOSENING_NEEDS_ADMIN")


def test_the_audit_trail_says_who_set_what(
    client: FlaskClient, manager: str, admin: str, limited: dict[str, Any]
) -> None:
    path = f"/keys/{limited['id']}"
    assert call(client, manager, "PATCH", path, {"remaining": 5}).status_code == 200
    assert call(client, admin, "PATCH", path, {"remaining": 50}).status_code == 200
    updates = [
        (event["actor"], event["changes"])
        for event in call(client, admin, "GET", f"{path}/events").get_json()["items"]
        if event["action"] == "updated"
    ]
    manager_id, admin_id = manager.split("_")[1], admin.split("_")[1]
    assert updates == [(f"key:{manager_id}", {"remaining": [10, 5]}), (f"key:{admin_id}", {"remaining": [5, 50]})]


def test_the_operators_cli_enables_what_keys_admin_disabled(
    app: Flask, client: FlaskClient, admin: str, limited: dict[str, Any]
) -> None:
    assert call(client, admin, "PATCH", f"/keys/{limited['id']}", {"enabled": False}).status_code == 200
    result = app.test_cli_runner().invoke(args=["keys", "enable", limited["id"]])
    assert result.exit_code == 0, result.output
    assert call(client, admin, "GET", f"/keys/{limited['id']}").get_json()["enabled"] is True
