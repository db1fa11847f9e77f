"""The management API on an app, with its OpenAPI document at ``/openapi.json``."""

from __future__ import annotations

import threading
from typing import Any

from apispec import APISpec
from flask import Flask
from flask_smorest import Api, Blueprint
from werkzeug.exceptions import HTTPException

from ..core.state import state_of
from .api import keys_blueprint, roles_blueprint
from .identities_api import identities_blueprint
from .oauth import oauth
from .webhooks_api import webhooks_blueprint

# The management API's blueprints and the token endpoint's, registered together (and documented) by register_api.
API_BLUEPRINTS = (keys_blueprint, roles_blueprint, identities_blueprint, webhooks_blueprint, oauth)


class _ManagementApi(Api):  # type: ignore[misc]
    """flask-smorest's ``Api``, documenting its blueprints' views when the document is first read
    (``/openapi.json``, ``flask openapi``) rather than when they are registered: that work (a
    deep copy of every view's documentation) took about two thirds of ``create_app``, in every
    gunicorn worker and every app a test makes, for a document few of them ever serve."""

    # Each route documents its own problem responses; no catch-all "default" of another shape.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._undocumented: list[tuple[Blueprint, str, list[Any] | None]] = []  # read by Api.__init__
        self._documenting = threading.Lock()
        super().__init__(*args, **kwargs)

    @property
    def spec(self) -> APISpec:
        """The OpenAPI document, with every blueprint registered so far in it."""
        with self._documenting:
            while self._undocumented:
                blueprint, name, parameters = self._undocumented[0]
                blueprint.register_views_in_doc(self, self._app, self._spec, name=name, parameters=parameters)
                self._spec.tag({"name": name, "description": blueprint.description})
                del self._undocumented[0]  # only once documented: an error here is met again, not hidden
        return self._spec

    @spec.setter
    def spec(self, spec: APISpec) -> None:
        self._spec = spec

    def register_blueprint(self, blp: Blueprint, *, parameters: list[Any] | None = None, **options: Any) -> None:
        """Register ``blp`` on the app as ``Api.register_blueprint`` does; document it later (:attr:`spec`)."""
        name = options.get("name", blp.name)
        self._app.extensions["flask-smorest"]["blp_name_to_api"][name] = self
        self._app.register_blueprint(blp, **options)
        self._undocumented.append((blp, name, parameters))

    def handle_http_exception(self, error: HTTPException) -> HTTPException:
        """Hand every HTTP error back to Flask, which answers it as if no handler were registered.

        flask-smorest registers this app-wide, for every ``HTTPException``; keyservice's own
        blueprints answer theirs with problem responses (``apirules``, ``oauth``), and the
        host's errors are the host's.
        """
        return error


def register_api(app: Flask, url_prefix: str = "") -> None:
    """Register the ``keys`` and ``roles`` blueprints and the generated OpenAPI document,
    under ``url_prefix`` (``<prefix>/keys``, ``<prefix>/roles``, ``<prefix>/openapi.json``)."""
    openapi = dict(state_of(app).settings.openapi)
    openapi["KEYSERVICE_OPENAPI_URL_PREFIX"] = openapi["KEYSERVICE_OPENAPI_URL_PREFIX"] or url_prefix or "/"
    app.config.update(openapi)  # the checked values, where flask-smorest reads them
    api = _ManagementApi(
        app,
        config_prefix="KEYSERVICE_",
        spec_kwargs={
            "title": "keyservice",
            "version": "1",
            "openapi_version": "3.0.3",
            "security": [{"bearer": []}],
        },
    )
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    api.spec.components.security_scheme("basic", {"type": "http", "scheme": "basic"})  # the token endpoint's
    for blueprint in API_BLUEPRINTS:
        api.register_blueprint(blueprint, url_prefix=f"{url_prefix}{blueprint.url_prefix or ''}")
