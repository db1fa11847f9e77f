"""The SaaS app keyservice was made for: signed-in users create API keys for their own team,
and their team's machines call the API with those keys.

    export FLASK_SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex())')
    flask --app examples.saas_app add-user alice@example.com acme    # asks for a password
    flask --app examples.saas_app run

    POST /login {"email", "password"}   signs in (a session cookie)
    POST /create-key {"name"}           201 {"id", "key"}: a key for the signed-in user's own team
    POST /protected-with-key            with the key: {"protected": true, "external_client_id": <the team>}

Run from the repository's top; tested by tests/test_examples.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
from flask import Flask, abort, g, request, session
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from keyservice import KeyService, require_key

db = SQLAlchemy()
keys = KeyService(management_api=False)  # users create keys through this app's own views


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(unique=True)
    team: Mapped[str]
    password_hash: Mapped[str]


def signed_in_user() -> User:
    """The user of this session's cookie; 401 without one."""
    user = db.session.get(User, session.get("user_id", 0))
    if user is None:
        abort(401)
    return user


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///saas.db"  # in the app's instance folder
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY signs the session cookie
    app.config.update(config or {})
    db.init_app(app)
    keys.init_app(app)

    @app.post("/login")
    def login() -> dict[str, Any]:
        body = request.get_json(silent=True) or {}
        user = db.session.scalar(db.select(User).where(User.email == str(body.get("email"))))
        if user is None or not check_password_hash(user.password_hash, str(body.get("password"))):
            abort(401)
        session["user_id"] = user.id
        return {"signed_in": user.email, "team": user.team}

    @app.post("/create-key")
    def create_key() -> tuple[dict[str, Any], int]:
        user = signed_in_user()
        body = request.get_json(silent=True) or {}
        if body.get("team", user.team) != user.team:
            abort(403)  # a user issues keys for their own team only
        api_key, key = keys.create_key(
            name=str(body.get("name", "api key")), external_client_id=user.team, created_by=f"user:{user.email}"
        )
        db.session.commit()
        return {"id": api_key.id, "key": key}, 201  # the key is shown this once

    @app.post("/protected-with-key")
    @require_key()
    def protected_with_key() -> dict[str, Any]:
        return {"protected": True, "external_client_id": g.auth.external_client_id}

    @app.cli.command("add-user")
    @click.argument("email")
    @click.argument("team")
    @click.password_option()
    def add_user(email: str, team: str, password: str) -> None:
        """Add a user who signs in with EMAIL and creates keys for TEAM."""
        db.session.add(User(email=email, team=team, password_hash=generate_password_hash(password)))
        db.session.commit()

    with app.app_context():
        db.create_all()  # a real app would use Flask-Migrate: `flask db migrate` sees keyservice's tables
    return app
