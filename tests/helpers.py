"""What many test modules use: the Authorization header, the problem+json check, issuing a key."""

from __future__ import annotations

import re
import socket
from typing import Any

from flask import Flask
from werkzeug.test import TestResponse

from keyservice import KeyService

KEY_FORMAT = re.compile(r"sk_[0-9A-Za-z]{16}_[0-9A-Za-z]{38}")
RATELIMIT_HEADERS = ("RateLimit-Policy", "RateLimit", "X-RateLimit-Limit", "X-RateLimit-Remaining",
                     "X-RateLimit-Reset")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def describe(response: TestResponse) -> str:
    """For assertion messages: a problem body in full, any other response (it may hold a key) by its status."""
    if response.mimetype == "application/problem+json":
        return response.get_data(as_text=True)
    return f"{response.status} {response.mimetype}"


def assert_problem(response: TestResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with this status (in the header and the body) and ``code``."""
    assert response.status_code == status, describe(response)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    assert body["type"].startswith("urn:keyservice:problem:")
    assert body["title"] and isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["code"] == code
    return body


def issue(app: Flask, *scopes: str, **fields: Any) -> tuple[str, str]:
    """Issue a key of client ``acme`` through the Python API, with ``fields`` (``remaining``,
    ``refill``, ``ratelimit``, ...) as given; return (id, key)."""
    with app.app_context():
        api_key, key = KeyService.create_key(name="test key", external_client_id="acme", scopes=scopes, **fields)
        app.extensions["sqlalchemy"].session.commit()
        return api_key.id, key


def free_port() -> int:
    """A local port nobody listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
