"""The standalone service: ``create_app()`` reads like a table of contents."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from werkzeug.middleware.proxy_fix import ProxyFix

from . import routes
from .core.config import config_from_environment
from .core.errors import register_http_problem_handlers
from .core.sqlitewal import use_wal
from .core.state import state_of
from .extension import KeyService
from .requestlog import MarkedResponses, configure_logging


def migrations_directory() -> Path:
    """keyservice's migrations: inside the installed package (the wheel maps the repository's
    top-level ``migrations/`` to ``keyservice/migrations``), else at the top of a clone."""
    installed = Path(__file__).resolve().parent / "migrations"
    return installed if installed.is_dir() else installed.parent.parent / "migrations"


db = SQLAlchemy()
migrate = Migrate()
keyservice = KeyService()


def _tune_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    # WAL lets readers (every worker's verifications) run beside a writer.
    use_wal(dbapi_connection, timeout=5.0)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


# A worker's threads (gthread, gunicorn.conf.py) share one interpreter lock and hold a
# connection only for a statement or a short transaction (a cached key reads its row every
# 0.5 s), so a few connections serve all of them; most threads are there to wait on slow
# clients, which hold none. So the pool does not follow the thread count: 2 kept, 4 more
# under load, and a thread waits at most 5 s for one. A server that is down must fail a
# request fast (503), not hang it.
POSTGRESQL_ENGINE_OPTIONS = {
    "pool_size": 2,
    "max_overflow": 4,
    "pool_timeout": 5,
    "pool_recycle": 1800,
    "connect_args": {"connect_timeout": 3},
}


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the keyservice app from the environment (or ``test_config``).

    Without ``DATABASE_URL`` the database is SQLite, ``instance/keyservice.db`` in the
    working directory (a clone's top, or wherever an installed package is started from).
    """
    # Flask's own default would put it inside the virtualenv (<venv>/var/) for an installed package.
    app = Flask(__name__, instance_path=str(Path.cwd() / "instance"))
    app.config.update(config_from_environment())
    if test_config is not None:
        app.config.update(test_config)
    if "SQLALCHEMY_DATABASE_URI" not in app.config:
        os.makedirs(app.instance_path, exist_ok=True)
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{Path(app.instance_path) / 'keyservice.db'}"
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", POSTGRESQL_ENGINE_OPTIONS)
    # A database error's text would otherwise carry the statement's parameters (hashes, names).
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        "hide_parameters": True,
        **app.config.get("SQLALCHEMY_ENGINE_OPTIONS", {}),
    }

    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _tune_sqlite)
    migrate.init_app(app, db, directory=str(migrations_directory()))
    keyservice.init_app(app)
    register_http_problem_handlers(app)
    app.register_blueprint(routes.bp)
    app.wsgi_app = MarkedResponses(app.wsgi_app)  # type: ignore[method-assign]
    proxies = state_of(app).settings.proxies
    if proxies:
        # The caller's address is what the proxies saw: it keys the failed-check budget per client.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]
    # As Flask does for its own logger: a process that has set up logging keeps its own.
    if not logging.getLogger().handlers and not logging.getLogger("keyservice").handlers:
        configure_logging(state_of(app).settings.log_format)
    return app
