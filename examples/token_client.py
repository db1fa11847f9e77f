"""A client machine: trade its API key for a short-lived access token, then call a service with it.

    KEYSERVICE_URL=https://keys.example.com KEY=sk_... SERVICE_URL=https://api.example.com/whoami \
        python examples/token_client.py

Standard library only. The key is sent once, to keyservice's token endpoint (HTTP Basic:
the key id, and the whole key as the secret); the service only ever sees the token.
A real client keeps the token and asks for a new one shortly before ``expires_in`` runs out.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from typing import Any
from urllib.parse import urlencode


def get_token(keyservice_url: str, key: str, scope: str | None = None) -> dict[str, Any]:
    """``POST /oauth/token`` with the client credentials grant; the answer (``access_token``,
    ``expires_in``, ``scope``)."""
    key_id = key.split("_")[1]
    credentials = base64.b64encode(f"{key_id}:{key}".encode()).decode()
    form = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
    request = urllib.request.Request(
        f"{keyservice_url.rstrip('/')}/oauth/token",
        data=urlencode(form).encode(),
        headers={"Authorization": f"Basic {credentials}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
    return answer


def call(url: str, token: str) -> Any:
    """GET ``url`` with the token as a bearer credential; its JSON answer."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def main() -> None:
    token = get_token(os.environ["KEYSERVICE_URL"], os.environ["KEY"], os.environ.get("SCOPE"))
    print(json.dumps(call(os.environ["SERVICE_URL"], token["access_token"])))


if __name__ == "__main__":
    main()
