"""keyservice inside a host app whose signed-in users, not management keys, call the
management API: the host's ``principal_loader`` says who they are and which teams they manage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask_migrate
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from .helpers import assert_problem, bearer, listed_ids
from .host_app_with_users import User, create_host_app, db, keys

ALICE = "alice@a.example"  # team-a
BOB = "bob@b.example"  # team-b


@pytest.fixture
def host(tmp_path: Path, empty_database_url: str) -> Iterator[Flask]:
    """The host app with two users, its schema made by its own, freshly generated migrations."""
    migrations = tmp_path / "migrations"
    app = create_host_app(empty_database_url, migrations)
    app.secret_key = "test session secret"
    with app.app_context():
        flask_migrate.init(directory=str(migrations))
        flask_migrate.migrate(directory=str(migrations), message="initial")
        flask_migrate.upgrade(directory=str(migrations))
        db.session.add_all([User(email=ALICE, team="team-a"), User(email=BOB, team="team-b")])
        db.session.commit()
    yield app
    with app.app_context():
        db.engine.dispose()


def signed_in(host: Flask, email: str) -> FlaskClient:
    """A browser of ``email``: the test client keeps the session cookie."""
    client = host.test_client()
    assert client.post(f"/login/{email}").status_code == 200
    return client


def key_made_in_code(host: Flask, team: str, scopes: tuple[str, ...] = ()) -> tuple[str, str]:
    """A key issued by the host's own Python code; (id, key)."""
    with host.app_context():
        api_key, key = keys.create_key(name="made in code", external_client_id=team, scopes=scopes)
        db.session.commit()
        return api_key.id, key


def create(client: FlaskClient, team: str, **fields: Any) -> TestResponse:
    return client.post("/keys", json={"name": "ci", "external_client_id": team, **fields})


def test_host_migrations_hold_the_users_and_the_keyservice_tables(host: Flask, tmp_path: Path) -> None:
    generated = "".join(p.read_text() for p in (tmp_path / "migrations" / "versions").glob("*.py"))
    assert "'users'" in generated and "keyservice_api_keys" in generated and "keyservice_roles" in generated


def test_signed_in_user_creates_a_key_for_their_team(host: Flask) -> None:
    response = create(signed_in(host, ALICE), "team-a")
    assert response.status_code == 201, response.get_data(as_text=True)
    created = response.get_json()
    assert created["created_by"] == f"user:{ALICE}"
    assert created["external_client_id"] == "team-a"
    assert created["key"].split("_")[1] == created["id"]


def test_the_created_key_reaches_a_host_view_as_its_team(host: Flask) -> None:
    key = create(signed_in(host, ALICE), "team-a").get_json()["key"]
    machine = host.test_client()
    response = machine.get("/team/whoami", headers=bearer(key))
    assert response.status_code == 200
    assert response.get_json() == {"team": "team-a"}


def test_signed_in_user_lists_only_their_teams_keys(host: Flask) -> None:
    theirs, _ = key_made_in_code(host, "team-b")
    own_in_code, _ = key_made_in_code(host, "team-a")
    alice = signed_in(host, ALICE)
    own_by_api = create(alice, "team-a").get_json()["id"]
    assert sorted(listed_ids(alice)) == sorted([own_in_code, own_by_api])
    assert listed_ids(alice, "?external_client_id=team-b") == []
    assert listed_ids(signed_in(host, BOB)) == [theirs]


def test_another_teams_key_answers_404(host: Flask) -> None:
    theirs, key = key_made_in_code(host, "team-b")
    alice = signed_in(host, ALICE)
    for response in (
        alice.get(f"/keys/{theirs}"),
        alice.patch(f"/keys/{theirs}", json={"name": "mine"}),
        alice.delete(f"/keys/{theirs}"),
        alice.post(f"/keys/{theirs}/rotate"),
        alice.get(f"/keys/{theirs}/events"),
    ):
        assert_problem(response, 404, "RESOURCE_NOT_FOUND")
    assert signed_in(host, BOB).get(f"/keys/{theirs}").get_json()["name"] == "made in code"
    assert host.test_client().get("/team/whoami", headers={"X-API-Key": key}).get_json() == {"team": "team-b"}


def test_signed_in_user_cannot_create_for_another_team(host: Flask) -> None:
    alice = signed_in(host, ALICE)
    assert_problem(create(alice, "team-b"), 403, "FORBIDDEN")
    assert listed_ids(signed_in(host, BOB)) == []


def test_signed_in_user_grants_only_the_scopes_the_loader_gave_them(host: Flask) -> None:
    alice = signed_in(host, ALICE)
    assert_problem(create(alice, "team-a", scopes=["reports:read"]), 403, "FORBIDDEN")
    assert create(alice, "team-a", scopes=["keys:read"]).status_code == 201


def test_without_signing_in_the_management_api_answers_401(host: Flask) -> None:
    client = host.test_client()
    assert_problem(create(client, "team-a"), 401, "MISSING")
    assert_problem(client.get("/keys"), 401, "MISSING")
    assert client.post("/login/mallory@nowhere.example").status_code == 404
    assert_problem(create(client, "team-a"), 401, "MISSING")


def test_signing_out_ends_access(host: Flask) -> None:
    alice = signed_in(host, ALICE)
    assert create(alice, "team-a").status_code == 201
    alice.post("/logout")
    assert_problem(create(alice, "team-a"), 401, "MISSING")


def test_a_key_is_not_a_way_around_the_hosts_sign_in(host: Flask) -> None:
    """With a principal_loader, the host decides who calls: an API key alone signs nobody in."""
    _, key = key_made_in_code(host, "team-a", scopes=("keys:admin",))
    machine = host.test_client()
    assert_problem(machine.get("/keys", headers=bearer(key)), 401, "MISSING")
    assert_problem(create(machine, "team-a"), 401, "MISSING")
