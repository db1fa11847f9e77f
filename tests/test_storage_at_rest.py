"""What the database holds: hashes, never keys or secrets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import flask_migrate
import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import update
from sqlalchemy.engine import make_url

from keyservice import KeyService, create_app
from keyservice.app import db
from keyservice.core.models import ApiKey

from .conftest import IssueKey
from .servers import deployment_settings
from .services import PostgresServer

FORMER_NAME = "a-name-only-a-dead-row-holds"


def raw_database(url: str, request: pytest.FixtureRequest) -> bytes:
    """The bytes of the SQLite file and its write-ahead log, or of every file in the PostgreSQL
    server's data directory (the tables with their dead rows, and the WAL) after a checkpoint."""
    database = make_url(url).database
    assert database
    if url.startswith("sqlite"):
        path = Path(database)
        # Not the machine's files beside it (<database>.checked, .windows, .secret): only the database's.
        files = (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        return b"".join(file.read_bytes() for file in files if file.exists())
    server: PostgresServer = request.getfixturevalue("postgres")
    server.administer("CHECKPOINT")  # the tables' pages on disk, not only in the server's buffers
    return b"".join(_contents(server.data))


def _contents(folder: Path) -> Iterator[bytes]:
    for path in sorted(folder.rglob("*")):
        try:
            if path.is_file():
                yield path.read_bytes()
        except FileNotFoundError:
            continue  # removed meanwhile: a recycled WAL segment, a statistics file


def test_the_database_holds_no_key_and_no_secret(
    app: Flask, runner: FlaskCliRunner, issue_key: IssueKey, database_url: str, request: pytest.FixtureRequest
) -> None:
    keys = [issue_key()[1] for _ in range(3)]
    result = runner.invoke(args=["keys", "create", "--name", "cli", "--client-id", "acme"])
    assert result.exit_code == 0
    keys.append(result.stdout.strip())
    # Rows changed after they were written, so that their old versions are dead rows.
    rotated = runner.invoke(args=["keys", "rotate", keys[0].split("_")[1]])
    assert rotated.exit_code == 0
    keys.append(rotated.stdout.strip())
    assert runner.invoke(args=["keys", "revoke", keys[1].split("_")[1]]).exit_code == 0
    renamed_id, _ = issue_key(name=FORMER_NAME)
    with app.app_context():
        # Not through the store, so that no audit event holds the former name.
        db.session.execute(update(ApiKey).where(ApiKey.id == renamed_id).values(name="renamed"))
        db.session.commit()
        db.engine.dispose()
    stored = raw_database(database_url, request)
    assert len(stored) > 0
    for key in keys:
        secret = key.split("_")[2][:32]
        assert key.encode() not in stored
        assert secret.encode() not in stored
        assert key.split("_")[1].encode() in stored  # the public id is there, so the file was read
    if database_url.startswith("postgresql"):
        # The old name is only in a dead row and the WAL, which a dump leaves out and the scan reads.
        database = make_url(database_url).database
        assert database and FORMER_NAME.encode() in stored
        assert FORMER_NAME.encode() not in request.getfixturevalue("postgres").dump(database)


def test_default_bcrypt_cost_is_12(database_url: str) -> None:
    # No test settings: the defaults (and on PostgreSQL what it must be given).
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, **deployment_settings(database_url)})
    with app.app_context():
        flask_migrate.upgrade()
        api_key, _ = KeyService.create_key(name="n", external_client_id="c")
    with app.app_context():
        db.engine.dispose()
    assert api_key.secret_hash.startswith("$2b$12$")
