"""The management API on an app, with its OpenAPI document at ``/openapi.json``."""

from __future__ import annotations

from flask import Flask
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from ..core.state import state_of
from .api import keys_blueprint, roles_blueprint
from .identities_api import identities_blueprint
from .oauth import oauth
from .webhooks_api import webhooks_blueprint

# The management API's blueprints and the token endpoint's, registered together (and documented) by register_api.
API_BLUEPRINTS = (keys_blueprint, roles_blueprint, identities_blueprint, webhooks_blueprint, oauth)


class _ManagementApi(Api):  # type: ignore[misc]
    # Each route documents its own problem responses; no catch-all "default" of another shape.
    DEFAULT_ERROR_RESPONSE_NAME = None

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
