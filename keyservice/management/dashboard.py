"""``/dashboard``: a page for managing keys, on top of the management API.

The page is static (HTML, CSS and plain JavaScript, no build step): it signs in
with a management key kept in the tab's ``sessionStorage`` and calls the same
``/keys`` routes a script would, so it can do exactly what that key may do.
"""

from __future__ import annotations

from flask import Blueprint, Response, send_from_directory

dashboard = Blueprint("dashboard", __name__, static_folder="static/dashboard", static_url_path="/dashboard/static")


@dashboard.get("/dashboard")
def page() -> Response:
    """The dashboard's one page."""
    response = send_from_directory(dashboard.static_folder or "", "index.html")
    # The page holds a management key once signed in: no framing, no referrer, no cache.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response
