"""The apps the service is measured against (bench/against_flask.py), served by the same gunicorn.

``bare``: Flask alone, the same tiny view as the service's ``POST /unprotected``.
``create_host_app()``: a host app with keyservice installed (on ``DATABASE_URL``) and
that view twice, undecorated and under ``@require_key()``.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, g
from flask_sqlalchemy import SQLAlchemy

from keyservice import KeyService, require_key

bare = Flask("bare")


def healthz() -> dict[str, Any]:
    """What the benchmark waits for before it starts (tests/servers.py)."""
    return {"status": "ok"}


@bare.post("/unprotected")
def bare_unprotected() -> dict[str, Any]:
    return {"protected": False}


bare.add_url_rule("/healthz", view_func=healthz)


db = SQLAlchemy()


def create_host_app() -> Flask:
    """A host app on ``DATABASE_URL`` with its tables made, ``/plain`` and ``/decorated``."""
    app = Flask("host")
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    db.init_app(app)
    KeyService(app)
    app.add_url_rule("/healthz", view_func=healthz)

    @app.post("/plain")
    def plain() -> dict[str, Any]:
        return {"protected": False}

    @app.post("/decorated")
    @require_key()
    def decorated() -> dict[str, Any]:
        return {"protected": True, "external_client_id": g.auth.external_client_id}

    with app.app_context():
        db.create_all()
    return app
