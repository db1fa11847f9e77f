"""A service that is not keyservice: a plain WSGI app that accepts keyservice's access tokens.

    KEYSERVICE_ISSUER=https://keys.example.com PORT=8001 python examples/token_service.py

It checks each token with PyJWT alone: the signature against the keys at
``<issuer>/.well-known/jwks.json`` (``PyJWKClient`` caches them and fetches them again
for a key id it does not know, as after a rotation), ``typ`` at+jwt, ``exp``, ``iss``
and ``aud``. No call to keyservice per request and no database: so a token stays good
here until its ``exp`` even if its key is revoked sooner (keyservice's own views refuse
it within a second).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import make_server

import jwt

Start = Callable[[str, list[tuple[str, str]]], Any]
REQUIRED = ["iss", "sub", "client_id", "aud", "iat", "exp", "jti", "scope", "external_client_id"]


def make_app(issuer: str, audience: str | None = None) -> Callable[[dict[str, Any], Start], Iterable[bytes]]:
    """The WSGI app: ``GET /whoami`` answers the caller's key id, client and scopes."""
    jwks = jwt.PyJWKClient(f"{issuer}/.well-known/jwks.json", lifespan=300)

    def caller(authorization: str) -> dict[str, Any]:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise jwt.InvalidTokenError("no bearer token")
        if jwt.get_unverified_header(token).get("typ") not in ("at+jwt", "application/at+jwt"):
            raise jwt.InvalidTokenError("not an access token")
        claims: dict[str, Any] = jwt.decode(
            token,
            jwks.get_signing_key_from_jwt(token),
            algorithms=["ES256"],
            issuer=issuer,
            audience=audience or issuer,
            options={"require": REQUIRED},
        )
        return claims

    def app(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/whoami":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        try:
            claims = caller(environ.get("HTTP_AUTHORIZATION", ""))
        except jwt.PyJWTError:
            start_response(
                "401 Unauthorized",
                [("Content-Type", "application/json"), ("WWW-Authenticate", 'Bearer error="invalid_token"')],
            )
            return [b'{"error": "invalid_token"}']
        body = {
            "key_id": claims["sub"],
            "external_client_id": claims["external_client_id"],
            "scopes": claims["scope"].split(),
        }
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return app


if __name__ == "__main__":
    server = make_server("127.0.0.1", int(os.environ.get("PORT", "8001")), make_app(os.environ["KEYSERVICE_ISSUER"]))
    server.serve_forever()
