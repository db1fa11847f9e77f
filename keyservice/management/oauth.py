"""``POST /oauth/token`` (OAuth 2.0 client credentials, RFC 6749 section 4.4) and the metadata
other services verify its tokens with: ``/.well-known/jwks.json`` and
``/.well-known/oauth-authorization-server`` (RFC 8414).

The client authenticates as section 2.3.1 says: HTTP Basic, or ``client_id`` and
``client_secret`` in the form, never both. ``client_id`` is the key's id and
``client_secret`` the whole key, checked exactly as ``@require_key`` checks a key
(:meth:`Verifier.verify`: bcrypt once per worker, the failed-check budgets, the key's rate
limit and quota, its usage). What a refusal answers:

- a key that is not one (MALFORMED, NOT_FOUND, a ``client_id`` not its id) or no longer
  good (REVOKED, EXPIRED, DISABLED): 401 ``invalid_client`` with ``WWW-Authenticate: Basic``
  and keyservice's ``code``;
- a scope the key lacks: 400 ``invalid_scope``;
- RATE_LIMITED, USAGE_EXCEEDED, UNAVAILABLE: the 429 and 503 problems ``@require_key``
  answers, with ``Retry-After``. The client's credentials are right and the remedy is to
  wait; ``invalid_client`` would tell it to fix what is not broken.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from typing import Any, NoReturn
from urllib.parse import unquote_plus

from flask import Response, request
from flask_smorest import Blueprint
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException

from ..core.crypto import parse_key
from ..core.dberrors import storage_unavailable
from ..core.errors import NOSNIFF, StorageUnavailable, VerificationFailed, http_problem
from ..core.outcomes import Outcome, VerificationResult
from ..core.state import current_state
from ..verification.tokens import TOKEN_PATH, issue_token, issuer
from .schemas import (
    MAX_SCOPES,
    AuthorizationServerMetadataSchema,
    JwksSchema,
    OAuthErrorSchema,
    ProblemSchema,
    TokenResponseSchema,
)

GRANT_TYPE = "client_credentials"
FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 8 * 1024
JWKS_PATH = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/oauth-authorization-server"
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,200}")  # RFC 6749 section 3.3
BASIC_CHALLENGE = 'Basic realm="keyservice"'
NOT_A_GOOD_KEY = frozenset({Outcome.MALFORMED, Outcome.NOT_FOUND, Outcome.REVOKED, Outcome.EXPIRED, Outcome.DISABLED})
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

oauth = Blueprint("oauth", __name__, description="Access tokens for keys: OAuth 2.0 client credentials.")
oauth.register_error_handler(HTTPException, http_problem)


class OAuthError(Exception):
    """An error response of RFC 6749 section 5.2."""

    def __init__(self, status: int, error: str, description: str, code: Outcome | None = None) -> None:
        super().__init__(description)
        self.status, self.error, self.description, self.code = status, error, description, code

    def to_response(self) -> Response:
        body: dict[str, str] = {"error": self.error, "error_description": self.description}
        if self.code is not None:
            body["code"] = self.code.value
        response = Response(json.dumps(body), self.status, mimetype="application/json", headers=NO_STORE | NOSNIFF)
        if self.status == 401:
            response.headers["WWW-Authenticate"] = BASIC_CHALLENGE
        return response


oauth.register_error_handler(OAuthError, OAuthError.to_response)


def _invalid_request(description: str) -> NoReturn:
    raise OAuthError(400, "invalid_request", description)


def _invalid_client(description: str, code: Outcome | None = None) -> NoReturn:
    raise OAuthError(401, "invalid_client", description, code)


def _form() -> MultiDict[str, str]:
    if request.mimetype != FORM:
        _invalid_request(f"Send the parameters as {FORM}.")
    if "client_secret" in request.args:
        _invalid_request("Never put client_secret in the URL: send it in the body or with HTTP Basic.")
    request.max_content_length = MAX_FORM_BYTES
    form = request.form
    if any(len(values) > 1 for _, values in form.lists()):
        _invalid_request("Send each parameter once.")
    return form


def _scopes(form: MultiDict[str, str]) -> tuple[str, ...] | None:
    """The scopes asked for (None: the key's own)."""
    if "scope" not in form:
        return None
    scopes = tuple(dict.fromkeys(form["scope"].split()))
    if not scopes or len(scopes) > MAX_SCOPES or not all(SCOPE_TOKEN.fullmatch(scope) for scope in scopes):
        raise OAuthError(400, "invalid_scope", f"scope is 1 to {MAX_SCOPES} scopes separated by spaces.")
    return scopes


def _client_credentials(form: MultiDict[str, str]) -> tuple[str, str]:
    """(client_id, client_secret), from HTTP Basic or the form (section 2.3.1)."""
    header = request.headers.get("Authorization")
    if header is None:
        if "client_id" not in form or "client_secret" not in form:
            _invalid_client("Authenticate with HTTP Basic, or send client_id and client_secret.")
        return form["client_id"], form["client_secret"]
    if "client_id" in form or "client_secret" in form:
        _invalid_request("Authenticate one way: HTTP Basic, or client_id and client_secret, not both.")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        _invalid_client("Authenticate with HTTP Basic, or send client_id and client_secret.")
    try:
        client_id, colon, secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        client_id, colon, secret = "", "", ""
    if not colon:
        _invalid_client("HTTP Basic credentials are base64 of client_id:client_secret.")
    return unquote_plus(client_id), unquote_plus(secret)


def _verified(client_id: str, secret: str, scopes: tuple[str, ...]) -> VerificationResult:
    """The VALID result of the key ``secret``, or the error its outcome answers."""
    state = current_state()
    parsed = parse_key(secret.strip(), state.settings.key_prefix)
    if parsed is None:
        _invalid_client("client_secret is not a key of this service.", Outcome.MALFORMED)
    if not hmac.compare_digest(client_id.encode(), parsed.key_id.encode()):
        _invalid_client("client_id is not the id of the key in client_secret.")
    result = state.verifier.verify(secret, scopes, request.remote_addr)
    if result.code is Outcome.INSUFFICIENT_SCOPE:
        raise OAuthError(400, "invalid_scope", "The key does not hold every scope asked for.")
    if result.code in NOT_A_GOOD_KEY:
        _invalid_client("The key was refused: see code.", result.code)
    if not result.valid:
        raise VerificationFailed(result)
    return result


def _outage(error: SQLAlchemyError) -> StorageUnavailable:
    if not storage_unavailable(error):
        raise error
    return StorageUnavailable.logged(error)


@oauth.route(TOKEN_PATH, methods=["POST"])
@oauth.doc(
    security=[{"basic": []}, {}],
    requestBody={
        "required": True,
        "content": {
            FORM: {
                "schema": {
                    "type": "object",
                    "required": ["grant_type"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": [GRANT_TYPE]},
                        "scope": {
                            "type": "string",
                            "description": "Space-separated; a subset of the key's scopes (default: all).",
                        },
                        "client_id": {"type": "string", "description": "The key's id (without HTTP Basic)."},
                        "client_secret": {"type": "string", "description": "The whole key (without HTTP Basic)."},
                    },
                }
            }
        },
    },
)
@oauth.response(200, TokenResponseSchema, headers={"Cache-Control": {"schema": {"type": "string"}}})
@oauth.alt_response(
    400,
    schema=OAuthErrorSchema,
    content_type="application/json",
    description="invalid_request, unsupported_grant_type or invalid_scope",
)
@oauth.alt_response(
    401,
    schema=OAuthErrorSchema,
    content_type="application/json",
    description="invalid_client: no key, or a key refused (its code says why)",
)
@oauth.alt_response(413, schema=ProblemSchema, content_type="application/problem+json")
@oauth.alt_response(429, schema=ProblemSchema, content_type="application/problem+json")
@oauth.alt_response(503, schema=ProblemSchema, content_type="application/problem+json")
def token() -> Response:
    """Trade a key for an access token (client credentials): a JWT of KEYSERVICE_TOKEN_LIFETIME
    seconds that ``@require_key`` accepts, and any service verifies from the JWKS."""
    form = _form()
    if "grant_type" not in form:
        _invalid_request("grant_type is required.")
    if form["grant_type"] != GRANT_TYPE:
        raise OAuthError(400, "unsupported_grant_type", f"The only grant_type is {GRANT_TYPE}.")
    asked = _scopes(form)
    key = _verified(*_client_credentials(form), asked or ())
    state = current_state()
    try:
        issued = issue_token(state.settings, state.signing_keys, key, asked or key.scopes)
    except SQLAlchemyError as error:
        raise _outage(error) from error
    body = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scope,
    }
    response = Response(json.dumps(body), 200, mimetype="application/json", headers=NO_STORE | NOSNIFF)
    if key.ratelimit is not None:
        response.headers.update(key.ratelimit.headers())
    return response


def _cacheable(body: dict[str, Any]) -> Response:
    max_age = current_state().settings.jwks_max_age
    return Response(
        json.dumps(body),
        200,
        mimetype="application/json",
        headers={"Cache-Control": f"public, max-age={max_age}"} | NOSNIFF,
    )


@oauth.route(JWKS_PATH, methods=["GET"])
@oauth.doc(security=[])
@oauth.response(200, JwksSchema)
@oauth.alt_response(503, schema=ProblemSchema, content_type="application/problem+json")
def jwks() -> Response:
    """The public keys access tokens are signed with (RFC 7517), the next one included: cacheable
    for KEYSERVICE_JWKS_MAX_AGE seconds."""
    try:
        return _cacheable(current_state().signing_keys.jwks())
    except SQLAlchemyError as error:
        raise _outage(error) from error


@oauth.route(METADATA_PATH, methods=["GET"])
@oauth.doc(security=[])
@oauth.response(200, AuthorizationServerMetadataSchema)
def metadata() -> Response:
    """Where tokens come from and how to verify them (RFC 8414)."""
    iss = issuer(current_state().settings)
    return _cacheable(
        {
            "issuer": iss,
            "token_endpoint": iss + TOKEN_PATH,
            "jwks_uri": iss + JWKS_PATH,
            "grant_types_supported": [GRANT_TYPE],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": [],
        }
    )
