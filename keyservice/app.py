"""The standalone service: ``create_app()`` reads like a table of contents."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event

from . import routes
from .config import config_from_environment
from .errors import nosniff, register_http_problem_handlers
from .extension import KeyService
from .requestlog import register_request_log

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

db = SQLAlchemy()
migrate = Migrate()
keyservice = KeyService()


def _tune_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    # WAL lets readers (every worker's verifications) run beside a writer.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


# A sync worker serves one request at a time: one pooled connection for the ORM and one
# kept for the request path's writes (rawsql.py), a little overflow for the CLI's
# threads. A server that is down must fail a request fast (503), not hang it.
POSTGRESQL_ENGINE_OPTIONS = {
    "pool_size": 2,
    "max_overflow": 4,
    "pool_timeout": 5,
    "pool_recycle": 1800,
    "connect_args": {"connect_timeout": 3},
}


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the keyservice app from the environment (or ``test_config``)."""
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{Path(app.instance_path) / 'keyservice.db'}"
    app.config.update(config_from_environment())
    if test_config is not None:
        app.config.update(test_config)
    postgresql = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
    # A failed statement's parameters (client input, a key's hash) stay out of its error's text.
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS",
                          {"hide_parameters": True, **(POSTGRESQL_ENGINE_OPTIONS if postgresql else {})})

    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _tune_sqlite)
    migrate.init_app(app, db, directory=str(MIGRATIONS))
    keyservice.init_app(app)
    register_http_problem_handlers(app)
    app.after_request(nosniff)
    register_request_log(app)
    app.register_blueprint(routes.bp)
    return app
