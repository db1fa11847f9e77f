"""Access-token helpers shared by the token tests, the examples' test and the benchmark."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

from .servers import Response, request

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def basic(key: str, key_id: str | None = None) -> dict[str, str]:
    """HTTP Basic credentials for a key: its id (or ``key_id``), and the whole key as the secret."""
    credentials = f"{key_id or key.split('_')[1]}:{key}"
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def fetch_token(base: str, key: str, scope: str | None = None) -> Response:
    """``POST /oauth/token`` over HTTP with Basic credentials."""
    form = {"grant_type": "client_credentials"} | ({"scope": scope} if scope is not None else {})
    return request(base + "/oauth/token", "POST", basic(key) | FORM, data=urlencode(form).encode())


def access_token(base: str, key: str, scope: str | None = None) -> str:
    """A token for ``key`` from the service at ``base``."""
    response = fetch_token(base, key, scope)
    assert response.status == 200, response.body
    token: str = json.loads(response.body)["access_token"]
    return token
