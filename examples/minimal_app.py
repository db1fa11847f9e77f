"""The smallest host app: one view that takes an API key and answers with the key's customer.

    flask --app examples.minimal_app keys create --name demo --client-id acme --scope hello:read
    flask --app examples.minimal_app run      # SQLite in instance/minimal.db

Run from the repository's top; tested by tests/test_examples.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, g
from flask_sqlalchemy import SQLAlchemy

from keyservice import KeyService, require_key

db = SQLAlchemy()
keys = KeyService()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///minimal.db"  # in the app's instance folder
    app.config.update(config or {})
    db.init_app(app)
    keys.init_app(app)

    @app.post("/hello")
    @require_key("hello:read")
    def hello() -> dict[str, str]:
        return {"hello": g.auth.external_client_id}

    with app.app_context():
        db.create_all()  # keyservice's tables; a real app would use Flask-Migrate
    return app
