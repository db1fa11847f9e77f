"""The ``KeyService`` Flask extension: one instance, any number of apps."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request
from flask_sqlalchemy import SQLAlchemy

from .core.config import DEFAULTS, check_database, check_deployment, load_settings
from .core.errors import nosniff, register_error_handlers
from .core.models import ApiKey, Base
from .core.secretkeys import secret_keys_for
from .core.state import EXTENSION_NAME, KeyServiceState, current_state
from .management.apirules import answer_store_errors
from .management.cli import keys_cli, roles_cli, webhooks_cli
from .management.dashboard import dashboard as dashboard_blueprint
from .management.identities import announce_limit_event
from .management.identities_cli import identities_cli
from .management.openapi import register_api
from .management.principals import PrincipalLoader
from .management.secret_scanning import GitHubKeys, secret_scanning
from .management.self_serve import self_serve as self_serve_page
from .management.sender import WebhookSender
from .management.store import announce_usage_exhausted, create_key
from .verification import metrics
from .verification.signingkeys import SigningKeys
from .verification.tokens import TokenVerifier
from .verification.verifier import Verifier

# keyservice's own routes: the management API, its OpenAPI document, the dashboard, leak reports, tokens.
OWN_BLUEPRINTS = frozenset(
    {"keys", "roles", "identities", "webhooks", "keyservice-api-docs", "dashboard", "secret-scanning", "oauth"}
)


def _after_request(response: Response) -> Response:
    # Each worker starts its webhook sender at its first request (after the fork).
    current_state().sender.ensure_started()
    return nosniff(response) if request.blueprint in OWN_BLUEPRINTS else response


class KeyService:
    """API keys for a Flask app: ``@require_key``, ``verify_key`` and ``flask keys``.

    It uses the app's Flask-SQLAlchemy ``db`` (passed in, or the one already
    registered on the app) and adds its tables to that ``db``'s metadata, so the
    app's own Flask-Migrate migrations pick them up. It adds the ``flask keys``,
    ``flask roles`` and ``flask webhooks`` commands, ``/secret-scanning/github``
    and, with ``management_api``, the management API (``/keys``, ``/roles``,
    ``/webhooks``, ``/openapi.json``) and, with ``dashboard`` too, ``/dashboard``;
    with ``self_serve``, ``/my-keys``, where the host's signed-in users manage their own
    team's keys: all under ``url_prefix`` (e.g. ``"/auth"``). The API's callers
    are management keys, or whoever ``principal_loader`` returns (a host app's
    signed-in user); the self-serve page's are always the latter.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: SQLAlchemy | None = None,
        principal_loader: PrincipalLoader | None = None,
        url_prefix: str = "",
        management_api: bool = True,
        dashboard: bool = True,
        self_serve: bool = False,
    ) -> None:
        if url_prefix and (not url_prefix.startswith("/") or url_prefix.endswith("/")):
            raise ValueError("url_prefix starts with '/' and does not end with one, e.g. '/auth'")
        if self_serve and principal_loader is None:
            raise ValueError("self_serve needs a principal_loader: the page's users are the host's signed-in users")
        self._db = db
        self._principal_loader = principal_loader
        self._url_prefix = url_prefix
        self._management_api = management_api
        self._dashboard = management_api and dashboard  # the page is a client of the API
        self._self_serve = self_serve
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register keyservice on ``app``; its ``db`` must already be initialised."""
        if EXTENSION_NAME in app.extensions:
            raise RuntimeError(
                "A 'KeyService' instance has already been registered on this Flask app."
                " Import and use that instance instead."
            )
        db = app.extensions.get("sqlalchemy")
        if not isinstance(db, SQLAlchemy) or self._db not in (None, db):
            raise RuntimeError(
                "KeyService needs Flask-SQLAlchemy on this app: call db.init_app(app)"
                " before KeyService(app) or keys.init_app(app)."
            )
        with app.app_context():
            # The engine's dialect and URL: nothing connects.
            dialect, database_url = db.engine.dialect.name, db.engine.url.render_as_string(hide_password=False)
        check_database(dialect, "SQLALCHEMY_DATABASE_URI")
        for name, value in DEFAULTS.items():
            app.config.setdefault(name, value)
        settings = load_settings(app.config)
        check_deployment(settings, dialect)
        secret_keys = secret_keys_for(settings, database_url)
        metrics.warn_if_per_worker()
        for table in Base.metadata.tables.values():
            if table.name not in db.metadata.tables:
                table.to_metadata(db.metadata)
        verifier = Verifier(settings, db, secret_keys, announce_usage_exhausted, announce_limit_event)
        signing_keys = SigningKeys(settings, db, secret_keys)
        state = KeyServiceState(
            settings,
            secret_keys,
            db,
            verifier,
            self._principal_loader,
            WebhookSender(settings, db, secret_keys),
            GitHubKeys(settings.secret_scanning_keys_url),
            signing_keys,
            TokenVerifier(settings, signing_keys, verifier),
        )
        app.extensions[EXTENSION_NAME] = state
        register_error_handlers(app)
        answer_store_errors(app)
        app.after_request(_after_request)
        # Leak reports are not management: GitHub calls them whatever the host leaves out.
        app.register_blueprint(secret_scanning, url_prefix=f"{self._url_prefix}{secret_scanning.url_prefix}")
        if self._management_api:
            register_api(app, self._url_prefix)
        if self._dashboard:
            app.register_blueprint(dashboard_blueprint, url_prefix=self._url_prefix)
        if self._self_serve:
            app.register_blueprint(self_serve_page, url_prefix=f"{self._url_prefix}{self_serve_page.url_prefix}")
        for command in (keys_cli, roles_cli, webhooks_cli):
            app.cli.add_command(command)
        keys_cli.add_command(identities_cli)

    @staticmethod
    def create_key(**fields: Any) -> tuple[ApiKey, str]:
        """Issue a key for the current app: its row (added to the session, for the
        caller to commit) and the full key, which is never available again.

        Takes the keyword arguments of :func:`keyservice.management.store.create_key`.
        """
        state = current_state()
        return create_key(state.db.session, state.settings, **fields)
