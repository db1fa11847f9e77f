"""examples/saas_app.py and examples/minimal_app.py end to end, and the Python blocks of the README
and the docs: each is part of a file the tests run (examples/host_app.py is tested in
test_extension_mounting.py). test_doc_blocks.py runs the other blocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from examples import minimal_app, saas_app

from .docblocks import every_block
from .helpers import bearer
from .servers import REPO, TEST_HOST_SETTINGS, deployment_settings

ALICE = ("alice@a.example", "team-a", "alice's password")
BOB = ("bob@b.example", "team-b", "bob's password")


@pytest.fixture
def saas(empty_database_url: str) -> Iterator[Flask]:
    """The example with two users, added with its own command."""
    app = saas_app.create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test session secret",
            "KEYSERVICE_BCRYPT_ROUNDS": 4,
            "SQLALCHEMY_DATABASE_URI": empty_database_url,
            **deployment_settings(empty_database_url),
            **TEST_HOST_SETTINGS,
        }
    )
    for email, team, password in (ALICE, BOB):
        added = app.test_cli_runner().invoke(args=["add-user", email, team], input=f"{password}\n{password}\n")
        assert added.exit_code == 0, added.output
    yield app
    with app.app_context():
        saas_app.db.engine.dispose()


def signed_in(app: Flask, user: tuple[str, str, str]) -> FlaskClient:
    browser = app.test_client()
    email, _, password = user
    assert browser.post("/login", json={"email": email, "password": password}).status_code == 200
    return browser


def test_a_signed_in_user_creates_a_key_that_calls_as_their_team(saas: Flask) -> None:
    created = signed_in(saas, ALICE).post("/create-key", json={"name": "ci"})
    assert created.status_code == 201
    key = created.get_json()["key"]
    assert key.split("_")[1] == created.get_json()["id"]
    machine = saas.test_client()
    answered = machine.post("/protected-with-key", headers=bearer(key))
    assert (answered.status_code, answered.get_json()) == (200, {"protected": True, "external_client_id": "team-a"})
    bobs_key = signed_in(saas, BOB).post("/create-key", json={"name": "ci"}).get_json()["key"]
    assert machine.post("/protected-with-key", headers={"X-API-Key": bobs_key}).get_json()["external_client_id"] == (
        "team-b"
    )


def test_a_user_creates_keys_for_their_own_team_only(saas: Flask) -> None:
    alice = signed_in(saas, ALICE)
    assert alice.post("/create-key", json={"name": "ci", "team": "team-b"}).status_code == 403
    assert alice.post("/create-key", json={"name": "ci", "team": "team-a"}).status_code == 201


def test_without_signing_in_no_key_is_made_and_no_key_no_entry(saas: Flask) -> None:
    client = saas.test_client()
    assert client.post("/create-key", json={"name": "ci"}).status_code == 401
    assert client.post("/login", json={"email": ALICE[0], "password": "wrong"}).status_code == 401
    assert client.post("/create-key", json={"name": "ci"}).status_code == 401
    refused = client.post("/protected-with-key")
    assert (refused.status_code, refused.get_json()["code"]) == (401, "MISSING")
    # The example leaves the management API out: its users create keys through /create-key.
    assert client.get("/keys").status_code == 404


def test_the_minimal_app_answers_a_key_holding_its_scope_with_the_keys_customer(tmp_path: Path) -> None:
    app = minimal_app.create_app(
        {
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'minimal.db'}",
            "KEYSERVICE_BCRYPT_ROUNDS": 4,
            **TEST_HOST_SETTINGS,
        }
    )
    runner = app.test_cli_runner()
    options = ["keys", "create", "--name", "demo", "--client-id", "acme"]
    key = runner.invoke(args=[*options, "--scope", "hello:read"]).stdout.strip()
    without_scope = runner.invoke(args=options).stdout.strip()
    client = app.test_client()
    answered = client.post("/hello", headers=bearer(key))
    assert (answered.status_code, answered.get_json()) == (200, {"hello": "acme"})
    assert client.post("/hello", headers=bearer(without_scope)).get_json()["code"] == "INSUFFICIENT_SCOPE"
    assert client.post("/hello").status_code == 401
    with app.app_context():
        minimal_app.db.engine.dispose()


TESTED_FILES = [*sorted((REPO / "examples").glob("*.py")), *sorted((REPO / "tests").glob("host_app*.py"))]


def test_every_python_block_of_the_readme_and_the_docs_is_part_of_a_tested_file() -> None:
    python_blocks = [block for block in every_block() if block.language == "python"]
    assert python_blocks
    sources = {path: path.read_text() for path in TESTED_FILES}
    for block in python_blocks:
        assert any(block.text in source for source in sources.values()), (
            f"{block} is not in {[p.name for p in sources]}:\n{block.text}"
        )
