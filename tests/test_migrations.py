"""The migrations make the schema, and agree with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from sqlalchemy import create_engine, inspect

from keyservice import create_app
from keyservice.app import db

from .conftest import TEST_CONFIG
from .servers import deployment_settings


def test_db_upgrade_on_an_empty_database_creates_the_schema(empty_database_url: str) -> None:
    settings = {**deployment_settings(empty_database_url), **TEST_CONFIG}
    app = create_app({**settings, "SQLALCHEMY_DATABASE_URI": empty_database_url})
    try:
        result = app.test_cli_runner().invoke(args=["db", "upgrade"])
        assert result.exit_code == 0, result.output
        engine = create_engine(empty_database_url)
        try:
            tables = set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert {"alembic_version", "keyservice_api_keys", "keyservice_readiness_probe"} <= tables
        assert "keyservice_ratelimit_hits" not in tables  # windows live in LMDB or Redis
        runner = app.test_cli_runner()
        created = runner.invoke(args=["keys", "create", "--name", "n", "--client-id", "c"])
        assert created.exit_code == 0
        assert runner.invoke(args=["keys", "verify", created.stdout.strip()]).exit_code == 0
    finally:
        with app.app_context():
            db.engine.dispose()


def test_models_and_migrations_agree(app: Flask) -> None:
    with app.app_context(), db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), db.metadata)
    assert differences == []
