"""The SaaS app keyservice was made for: signed-in users (Flask-Login) manage API keys for their
own team on the app's own page, and their team's machines call the API with those keys.

    export FLASK_SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex())')
    flask --app examples.saas_app add-user alice@example.com acme    # asks for a password
    flask --app examples.saas_app run

    GET  /login                         a sign-in form; then /my-keys
    GET  /my-keys                       the team's keys: create, copy once, rotate, revoke (keyservice's page)
    POST /login {"email", "password"}   signs in from a script (a session cookie)
    POST /create-key {"name"}           201 {"id", "key"}: a key for the signed-in user's own team
    POST /protected-with-key            with the key: {"protected": true, "external_client_id": <the team>}
    GET /reports, POST /reports, GET /billing   with a key holding reports:read, reports:write, billing:read

Settings come from FLASK_* variables too (``FLASK_SQLALCHEMY_DATABASE_URI``, say). Run from the
repository's top; tested by tests/test_examples.py and, in Chromium, tests/test_self_serve_browser.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import click
from flask import Flask, abort, g, redirect, render_template, request, session, url_for
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from keyservice import KeyService, require_key
from keyservice.management.principals import Principal

# What a customer may put on the keys they make on /my-keys.
OFFERED_SCOPES = ("reports:read", "reports:write", "billing:read")

db = SQLAlchemy()
login_manager = LoginManager()
login_manager.login_view = "login_page"  # where /my-keys sends a signed-out visitor
csrf = CSRFProtect()  # the login form's token; keyservice's page checks its own changes too


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(unique=True)
    team: Mapped[str]
    password_hash: Mapped[str]


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return db.session.get(User, int(user_id)) if user_id.isdigit() else None


def signed_in_user() -> User:
    """The user of this session's cookie; 401 without one."""
    if not current_user.is_authenticated:
        abort(401)
    user: User = current_user._get_current_object()
    return user


def team_member() -> Principal | None:
    """Who /my-keys acts for: the signed-in user, on their own team's keys, granting the offered scopes."""
    if not current_user.is_authenticated:
        return None
    return Principal(
        id=f"user:{current_user.email}",
        scopes=("keys:read", "keys:write", *OFFERED_SCOPES),
        client_ids=frozenset([current_user.team]),
    )


keys = KeyService(management_api=False, self_serve=True, principal_loader=team_member)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite:///saas.db",  # in the app's instance folder
        SESSION_COOKIE_SAMESITE="Lax",  # a cross-site page's POST carries no session cookie
        KEYSERVICE_SELF_SERVE_SCOPES=OFFERED_SCOPES,
        KEYSERVICE_SELF_SERVE_TITLE="Example Cloud API keys",
        KEYSERVICE_SELF_SERVE_BRAND_COLOR="#0f766e",
        KEYSERVICE_SELF_SERVE_LAYOUT="layout.html",  # examples/templates/layout.html
    )
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY signs the session cookie
    app.config.update(config or {})
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # the login form is checked by hand; the JSON routes are for scripts
    db.init_app(app)
    login_manager.init_app(app)
    csrf.init_app(app)
    keys.init_app(app)

    @app.get("/login")
    def login_page() -> str:
        return render_template("login.html", next=request.args.get("next", ""))

    @app.post("/login")
    def login() -> Any:
        form = not request.is_json
        body = request.form if form else (request.get_json(silent=True) or {})
        if form:
            csrf.protect()  # the sign-in form's token
        user = db.session.scalar(db.select(User).where(User.email == str(body.get("email"))))
        if user is None or not check_password_hash(user.password_hash, str(body.get("password"))):
            if form:
                return render_template("login.html", next=body.get("next", ""), failed=True), 401
            abort(401)
        login_user(user)
        if form:
            return redirect(_local(body.get("next")) or url_for("keyservice_self_serve.page"))
        return {"signed_in": user.email, "team": user.team}

    @app.post("/logout")
    def logout() -> Any:
        csrf.protect()
        logout_user()
        session.clear()  # the CSRF token too
        return redirect(url_for("login_page"))

    @app.post("/create-key")
    def create_key() -> tuple[dict[str, Any], int]:
        user = signed_in_user()
        if not request.is_json:
            abort(415)  # JSON only: no other site's form can send it with the user's cookie
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

    # One route per offered scope: a key made on /my-keys calls those of the scopes it was given.
    @app.get("/reports")
    @require_key("reports:read")
    def reports() -> dict[str, Any]:
        return {"reports": [], "external_client_id": g.auth.external_client_id}

    @app.post("/reports")
    @require_key("reports:write")
    def add_report() -> tuple[dict[str, Any], int]:
        return {"added": True, "external_client_id": g.auth.external_client_id}, 201

    @app.get("/billing")
    @require_key("billing:read")
    def billing() -> dict[str, Any]:
        return {"invoices": [], "external_client_id": g.auth.external_client_id}

    @app.cli.command("add-user")
    @click.argument("email")
    @click.argument("team")
    @click.password_option()
    def add_user(email: str, team: str, password: str) -> None:
        """Add a user who signs in with EMAIL and manages the keys of TEAM."""
        db.session.add(User(email=email, team=team, password_hash=generate_password_hash(password)))
        db.session.commit()

    with app.app_context():
        db.create_all()  # a real app would use Flask-Migrate: `flask db migrate` sees keyservice's tables
    return app


def _local(target: Any) -> str | None:
    """``target`` if it is a path on this site: never send a signed-in user to another."""
    if not isinstance(target, str) or not target.startswith("/") or target.startswith("//"):
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc and "\\" not in target else None
