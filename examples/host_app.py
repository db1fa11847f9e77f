"""A host app that mounts keyservice under /auth: its views, async ones among them, take API keys.

    flask --app examples.host_app run      # SQLite in instance/host.db
    flask --app examples.host_app keys create ...

Run from the repository's top; tested by tests/test_examples.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, g
from flask.views import MethodView
from flask_sqlalchemy import SQLAlchemy

from keyservice import KeyService, require_key

db = SQLAlchemy()
keys = KeyService(url_prefix="/auth")  # /auth/keys, /auth/roles, /auth/openapi.json, /auth/dashboard

# Every view of this blueprint needs a key holding reports:read.
reports = require_key("reports:read")(Blueprint("reports", __name__, url_prefix="/reports"))


@reports.get("/daily")
async def daily_report() -> dict[str, Any]:
    return {"report": "daily", "client": g.auth.external_client_id}


class Invoices(MethodView):
    decorators = [require_key("billing:read")]

    async def get(self) -> dict[str, Any]:
        return {"invoices": [], "client": g.auth.external_client_id}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///host.db"  # in the app's instance folder
    app.config.update(config or {})
    db.init_app(app)  # first: keyservice keeps its tables in the app's own db
    keys.init_app(app)
    app.register_blueprint(reports)
    app.add_url_rule("/invoices", view_func=Invoices.as_view("invoices"))

    @app.get("/whoami")
    @require_key()
    async def whoami() -> dict[str, Any]:
        return {"client": g.auth.external_client_id, "meta": g.auth.meta}

    with app.app_context():
        db.create_all()  # a real app would use Flask-Migrate: `flask db migrate` sees keyservice's tables
    return app
