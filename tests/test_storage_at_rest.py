"""What the database holds: hashes, never keys or secrets."""

from __future__ import annotations

from pathlib import Path

import flask_migrate
import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from keyservice import KeyService, create_app
from keyservice.app import db
from sqlalchemy.engine import make_url

from .conftest import IssueKey
from .services import PostgresServer


def raw_database(url: str, request: pytest.FixtureRequest) -> bytes:
    """The bytes of the SQLite file and its write-ahead log, or a dump of the PostgreSQL database."""
    database = make_url(url).database
    assert database
    if url.startswith("sqlite"):
        path = Path(database)
        # Not the machine's files beside it (<database>.checked, .ratelimit, .secret): only the database's.
        files = (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        return b"".join(file.read_bytes() for file in files if file.exists())
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.dump(database)


def test_the_database_holds_no_key_and_no_secret(
    app: Flask, runner: FlaskCliRunner, issue_key: IssueKey, database_url: str, request: pytest.FixtureRequest
) -> None:
    keys = [issue_key()[1] for _ in range(3)]
    result = runner.invoke(args=["keys", "create", "--name", "cli", "--client-id", "acme"])
    assert result.exit_code == 0
    keys.append(result.stdout.strip())
    with app.app_context():
        db.engine.dispose()
    stored = raw_database(database_url, request)
    assert len(stored) > 0
    for key in keys:
        secret = key.split("_")[2][:32]
        assert key.encode() not in stored
        assert secret.encode() not in stored
        assert key.split("_")[1].encode() in stored  # the public id is there, so the file was read


def test_default_bcrypt_cost_is_12(database_url: str) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})  # no test settings: the defaults
    with app.app_context():
        flask_migrate.upgrade()
        api_key, _ = KeyService.create_key(name="n", external_client_id="c")
    with app.app_context():
        db.engine.dispose()
    assert api_key.secret_hash.startswith("$2b$12$")
