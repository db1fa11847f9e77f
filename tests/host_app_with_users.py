"""A host Flask app with its own users, sign-in and migrations, whose signed-in user
is the caller of keyservice's management API (through ``principal_loader``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask, abort, g, session
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from keyservice import KeyService, require_key
from keyservice.management.principals import Principal

from .servers import TEST_HOST_SETTINGS, deployment_settings

db = SQLAlchemy()
migrate = Migrate()


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(unique=True)
    team: Mapped[str]


def signed_in_user() -> User | None:
    email = session.get("email")
    if email is None:
        return None
    return db.session.scalar(db.select(User).where(User.email == email))


def load_principal() -> Principal | None:
    """The signed-in user manages their own team's keys, and grants at most keys:read/keys:write."""
    user = signed_in_user()
    if user is None:
        return None
    return Principal(id=f"user:{user.email}", scopes=("keys:read", "keys:write"), client_ids=frozenset({user.team}))


keys = KeyService(principal_loader=load_principal)


def create_host_app(database_uri: str, migrations: Path) -> Flask:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=database_uri, KEYSERVICE_BCRYPT_ROUNDS=4, KEYSERVICE_CACHE_TTL=0)
    app.config.update(TEST_HOST_SETTINGS, **deployment_settings(database_uri))
    db.init_app(app)
    migrate.init_app(app, db, directory=str(migrations))
    keys.init_app(app)

    @app.post("/login/<email>")
    def login(email: str) -> dict[str, Any]:
        # Stands in for the host's real sign-in (a password form, SSO...): it ends in the session cookie.
        if db.session.scalar(db.select(User).where(User.email == email)) is None:
            abort(404)
        session["email"] = email
        return {"signed_in": email}

    @app.post("/logout")
    def logout() -> dict[str, Any]:
        session.pop("email", None)
        return {"signed_in": None}

    @app.get("/team/whoami")
    @require_key()
    def team_whoami() -> dict[str, Any]:
        return {"team": g.auth.external_client_id}

    return app
