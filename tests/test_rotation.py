"""Rotation: a new key with the old one's settings; the old one stops after a grace period.

Through the HTTP API (POST /keys/<id>/rotate) and the CLI (flask keys rotate).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from flask.testing import FlaskClient, FlaskCliRunner
from werkzeug.test import TestResponse

from keyservice.core.models import utcnow

from .conftest import IssueKey
from .helpers import KEY_FORMAT, bearer, cli_create, outcome_of, parse_time

VALID = (200, None)
CARRIED_OVER = ("name", "external_client_id", "scopes", "roles", "meta", "expires_at")


@pytest.fixture
def original(client: FlaskClient, admin_key: str) -> dict[str, Any]:
    """A key with every carried-over setting set, created through the API (with its ``key``)."""
    role = client.put("/roles/reader", headers=bearer(admin_key), json={"scopes": ["reports:read"]})
    assert role.status_code == 200
    expires_at = (utcnow() + timedelta(days=30)).isoformat()
    response = client.post(
        "/keys",
        headers=bearer(admin_key),
        json={
            "name": "deploy bot",
            "external_client_id": "acme",
            "scopes": ["deploy:run", "builds:*"],
            "roles": ["reader"],
            "meta": {"plan": "pro", "seats": 3},
            "expires_at": expires_at,
        },
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def rotate(client: FlaskClient, admin_key: str, key_id: str, body: Any = None) -> TestResponse:
    return client.post(f"/keys/{key_id}/rotate", headers=bearer(admin_key), json=body)


def rotated(client: FlaskClient, admin_key: str, key_id: str, body: Any = None) -> dict[str, Any]:
    response = rotate(client, admin_key, key_id, body)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def shown(client: FlaskClient, admin_key: str, key_id: str) -> dict[str, Any]:
    return client.get(f"/keys/{key_id}", headers=bearer(admin_key)).get_json()


def test_rotate_answers_201_with_a_new_key_carrying_the_old_settings(
    client: FlaskClient, admin_key: str, original: dict[str, Any]
) -> None:
    new = rotated(client, admin_key, original["id"], {"grace_seconds": 60})
    assert {field: new[field] for field in CARRIED_OVER} == {field: original[field] for field in CARRIED_OVER}
    assert new["rotated_from"] == original["id"]
    assert new["id"] != original["id"]
    assert KEY_FORMAT.fullmatch(new["key"]) and new["key"].split("_")[1] == new["id"]
    assert new["start"] == f"sk_{new['id']}"
    assert new["enabled"] is True and new["revoked_at"] is None
    assert shown(client, admin_key, new["id"]) == {field: value for field, value in new.items() if field != "key"}


def test_the_new_key_works_with_the_old_ones_scopes_and_roles(
    client: FlaskClient, admin_key: str, original: dict[str, Any]
) -> None:
    new = rotated(client, admin_key, original["id"])
    response = client.post("/protected-with-key", headers=bearer(new["key"]))
    assert response.status_code == 200
    assert response.get_json()["external_client_id"] == "acme"
    verified = client.post(
        "/keys/verify",
        headers=bearer(admin_key),
        json={"key": new["key"], "scopes": ["deploy:run", "builds:x", "reports:read"]},
    )
    assert verified.get_json()["code"] == "VALID"


def test_the_old_key_works_during_the_grace_and_expires_after_it(
    client: FlaskClient, admin_key: str, original: dict[str, Any]
) -> None:
    before = utcnow()
    new = rotated(client, admin_key, original["id"], {"grace_seconds": 2})
    assert outcome_of(client, original["key"]) == VALID
    grace_ends = parse_time(shown(client, admin_key, original["id"])["expires_at"])
    assert before + timedelta(seconds=2) <= grace_ends <= utcnow() + timedelta(seconds=2)
    with time_machine.travel(grace_ends + timedelta(seconds=1)):
        assert outcome_of(client, original["key"]) == (401, "EXPIRED")
        assert outcome_of(client, new["key"]) == VALID


@pytest.mark.parametrize("body", [None, {}, {"grace_seconds": 0}])
def test_without_grace_the_old_key_expires_at_once(
    client: FlaskClient, admin_key: str, original: dict[str, Any], body: Any
) -> None:
    new = rotated(client, admin_key, original["id"], body)
    assert outcome_of(client, original["key"]) == (401, "EXPIRED")
    assert outcome_of(client, new["key"]) == VALID


def test_a_grace_longer_than_the_old_keys_life_does_not_extend_it(
    client: FlaskClient, admin_key: str, issue_key: IssueKey
) -> None:
    expires_at = utcnow() + timedelta(hours=1)
    key_id, _ = issue_key(expires_at=expires_at)
    before = shown(client, admin_key, key_id)["expires_at"]
    new = rotated(client, admin_key, key_id, {"grace_seconds": 2 * 3600})
    assert shown(client, admin_key, key_id)["expires_at"] == before
    assert parse_time(before) == expires_at
    assert new["expires_at"] == before


def test_rotating_a_disabled_key_gives_a_disabled_key(
    client: FlaskClient, admin_key: str, original: dict[str, Any]
) -> None:
    """``enabled`` is one of the key's settings, and rotation keeps them all."""
    disabled = client.patch(f"/keys/{original['id']}", headers=bearer(admin_key), json={"enabled": False})
    assert disabled.status_code == 200
    new = rotated(client, admin_key, original["id"], {"grace_seconds": 60})
    assert new["enabled"] is False
    assert outcome_of(client, new["key"]) == (401, "DISABLED")


def test_rotation_is_in_the_old_keys_audit_trail(client: FlaskClient, admin_key: str, original: dict[str, Any]) -> None:
    new = rotated(client, admin_key, original["id"], {"grace_seconds": 60})
    events = client.get(f"/keys/{original['id']}/events", headers=bearer(admin_key)).get_json()["items"]
    assert [event["action"] for event in events] == ["created", "rotated"]
    assert events[1]["changes"]["rotated_to"] == new["id"]
    assert events[1]["changes"]["grace_seconds"] == 60
    assert new["key"] not in json.dumps(events) and original["key"] not in json.dumps(events)


def test_rotating_a_revoked_key_is_a_conflict(client: FlaskClient, admin_key: str, original: dict[str, Any]) -> None:
    assert client.delete(f"/keys/{original['id']}", headers=bearer(admin_key)).status_code == 204
    response = rotate(client, admin_key, original["id"])
    assert response.status_code == 409
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "CONFLICT"
    listed = client.get("/keys?external_client_id=acme", headers=bearer(admin_key)).get_json()["items"]
    assert listed == []


def test_rotating_an_expired_key_is_a_conflict(client: FlaskClient, admin_key: str, issue_key: IssueKey) -> None:
    key_id, _ = issue_key(expires_at=utcnow() - timedelta(seconds=1))
    assert rotate(client, admin_key, key_id).status_code == 409


def test_rotating_an_unknown_key_is_not_found(client: FlaskClient, admin_key: str) -> None:
    response = rotate(client, admin_key, "Z" * 16)
    assert response.status_code == 404
    assert response.get_json()["code"] == "RESOURCE_NOT_FOUND"


@pytest.mark.parametrize("grace", [-1, "60", 1.5, 30 * 24 * 3600 + 1, None])
def test_a_wrong_grace_is_422(client: FlaskClient, admin_key: str, original: dict[str, Any], grace: Any) -> None:
    response = rotate(client, admin_key, original["id"], {"grace_seconds": grace})
    assert response.status_code == 422
    assert response.get_json()["code"] == "INVALID_INPUT"
    assert outcome_of(client, original["key"]) == VALID


def test_an_unknown_field_is_422(client: FlaskClient, admin_key: str, original: dict[str, Any]) -> None:
    assert rotate(client, admin_key, original["id"], {"grace": 60}).status_code == 422


# The CLI


def cli_create_deploy_bot(runner: FlaskCliRunner) -> dict[str, Any]:
    return cli_create(runner, "--scope", "deploy:run", "--meta", '{"plan": "pro"}', name="deploy bot", client_id="acme")


def cli_verify(runner: FlaskCliRunner, key: str) -> str:
    return runner.invoke(args=["keys", "verify", key]).stdout.strip()


def test_cli_rotate_prints_the_new_key_once_and_keeps_the_old_one_for_the_grace(runner: FlaskCliRunner) -> None:
    old = cli_create_deploy_bot(runner)
    result = runner.invoke(args=["keys", "rotate", old["id"], "--grace", "1h"])
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    new_key = result.stdout.strip()
    assert KEY_FORMAT.fullmatch(new_key) and new_key != old["key"]
    assert "will not be shown again" in result.stderr
    assert cli_verify(runner, old["key"]) == "VALID"
    assert cli_verify(runner, new_key) == "VALID"
    expires_at = parse_time(json.loads(runner.invoke(args=["keys", "show", old["id"], "--json"]).stdout)["expires_at"])
    assert abs(expires_at - (utcnow() + timedelta(hours=1))) < timedelta(seconds=30)


def test_cli_rotate_json_gives_the_new_object_with_rotated_from(runner: FlaskCliRunner) -> None:
    old = cli_create_deploy_bot(runner)
    result = runner.invoke(args=["keys", "rotate", old["id"], "--grace", "1h", "--json"])
    assert result.exit_code == 0, result.stderr
    new = json.loads(result.stdout)
    assert new["rotated_from"] == old["id"]
    assert KEY_FORMAT.fullmatch(new["key"]) and new["key"].split("_")[1] == new["id"]
    assert {field: new[field] for field in CARRIED_OVER} == {field: old[field] for field in CARRIED_OVER}
    assert new["created_by"] == "cli"


@pytest.mark.parametrize("grace", [[], ["--grace", "0"], ["--grace", "0s"]])
def test_cli_rotate_without_grace_expires_the_old_key_at_once(runner: FlaskCliRunner, grace: list[str]) -> None:
    old = cli_create_deploy_bot(runner)
    result = runner.invoke(args=["keys", "rotate", old["id"], *grace])
    assert result.exit_code == 0, result.stderr
    assert cli_verify(runner, old["key"]) == "EXPIRED"
    assert cli_verify(runner, result.stdout.strip()) == "VALID"


@pytest.mark.parametrize("grace", ["soon", "-5m", "1 fortnight", "31d"])
def test_cli_rotate_with_a_bad_grace_is_one_line_and_exit_2(runner: FlaskCliRunner, grace: str) -> None:
    old = cli_create_deploy_bot(runner)
    result = runner.invoke(args=["keys", "rotate", old["id"], "--grace", grace])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("Error: ")
    assert "Traceback" not in result.stderr
    assert cli_verify(runner, old["key"]) == "VALID"


@pytest.mark.parametrize(
    "args, message",
    [
        (["keys", "rotate", "AAAAAAAAAAAAAAAA"], "No key has this id"),
        (["keys", "rotate", "nosuchkey"], "not a key id"),
        (["keys", "rotate"], "Missing argument"),
    ],
)
def test_cli_rotate_of_no_key_is_one_line_and_exit_2(runner: FlaskCliRunner, args: list[str], message: str) -> None:
    result = runner.invoke(args=args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr


def test_cli_rotate_of_a_revoked_key_is_refused(runner: FlaskCliRunner) -> None:
    old = cli_create_deploy_bot(runner)
    assert runner.invoke(args=["keys", "revoke", old["id"]]).exit_code == 0
    result = runner.invoke(args=["keys", "rotate", old["id"]])
    assert result.exit_code == 2
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert [item["id"] for item in json.loads(runner.invoke(args=["keys", "list", "--json"]).stdout)] == []
