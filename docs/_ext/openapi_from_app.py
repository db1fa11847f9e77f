"""``.. keyservice-openapi::``: the management API's reference, from the OpenAPI document the
service serves at ``/openapi.json``. The document is built at doc-build time by ``create_app()``
on a throwaway SQLite database (nothing is connected to), then rendered by sphinxcontrib-openapi
(its descriptions are docstrings, so reStructuredText)."""

from __future__ import annotations

import copy
import functools
import secrets
import tempfile
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinxcontrib.openapi.renderers import HttpdomainRenderer


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document as the standalone service serves it."""
    from keyservice import create_app

    with tempfile.TemporaryDirectory(prefix="keyservice-docs-") as folder:
        # No sender thread polling a database about to go; a secret of its own, so none is made on disk.
        app = create_app(
            {
                "SQLALCHEMY_DATABASE_URI": f"sqlite:///{Path(folder) / 'keys.db'}",
                "KEYSERVICE_WEBHOOKS_SEND": False,
                "KEYSERVICE_SECRET_KEY": secrets.token_urlsafe(32),
            }
        )
        document: dict[str, Any] = app.test_client().get("/openapi.json").get_json()
    return document


def plain_summaries(document: dict[str, Any]) -> dict[str, Any]:
    """The document with each operation's summary free of inline markup: the renderer sets the
    summary in bold, where reStructuredText takes ``code`` literally."""
    for operations in document["paths"].values():
        for operation in operations.values():
            if isinstance(operation, dict) and "summary" in operation:
                operation["summary"] = operation["summary"].replace("``", "")
    return document


class OpenApiFromApp(SphinxDirective):
    """Every path and operation, with its parameters, request and response bodies and statuses."""

    def run(self) -> list[nodes.Node]:
        options = {"markup": "restructuredtext", "http-methods-order": ["get", "post", "put", "patch", "delete"]}
        return list(HttpdomainRenderer(self.state, options).render(plain_summaries(copy.deepcopy(openapi_document()))))


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directive."""
    app.add_directive("keyservice-openapi", OpenApiFromApp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
