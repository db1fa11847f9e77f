"""Errors as RFC 9457 problem responses.

    KeyServiceError            any error keyservice answers with a problem body
    ├── VerificationFailed     a protected view refused its caller (401/400/403/429/503)
    ├── InvalidInput           input keyservice cannot accept (422), with per-field errors
    ├── ResourceNotFound       no such key, role or endpoint, or not the caller's to see (404)
    ├── SignInRequired         the self-serve page asked without the host's sign-in (401)
    ├── NotAllowed             the caller may not do this, e.g. grant a scope it does not hold (403)
    │   ├── NeedsAdmin         a change that loosens a limit, by a principal without keys:admin (403)
    │   └── CsrfFailed         a change on the self-serve page without the page's CSRF token (403)
    ├── Conflict               the key's state forbids it, e.g. rotating a revoked key (409)
    └── StorageUnavailable     the database cannot be read or written now (503, Retry-After)

Each knows its HTTP status, ``code`` and title. One handler, registered on the
app rather than a blueprint because ``@require_key`` guards the host's views
too, turns them into ``application/problem+json``. No body ever echoes a key.
"""

from __future__ import annotations

import functools
import json
import traceback
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from .dberrors import error_name, storage_unavailable
from .outcomes import Outcome, VerificationResult

REALM = 'Bearer realm="keyservice"'
# Browsers must take every keyservice response for the type it says, never guess another.
NOSNIFF = {"X-Content-Type-Options": "nosniff"}

_OUTCOMES: dict[Outcome, tuple[int, str, str]] = {
    Outcome.MISSING: (401, "API key missing", "Send the key as 'Authorization: Bearer <key>'."),
    Outcome.INVALID_REQUEST: (400, "Key sent twice", "Send the key in one place only."),
    Outcome.MALFORMED: (401, "API key malformed", "The key is not in the expected format."),
    Outcome.NOT_FOUND: (401, "API key not found", "No key matches the one sent."),
    Outcome.REVOKED: (401, "API key revoked", "This key has been revoked."),
    Outcome.EXPIRED: (401, "API key expired", "This key has expired."),
    Outcome.DISABLED: (401, "API key disabled", "This key is disabled."),
    Outcome.INSUFFICIENT_SCOPE: (403, "Insufficient scope", "The key lacks a required scope."),
    Outcome.RATE_LIMITED: (429, "Rate limited", "Too many requests with this key; see Retry-After."),
    Outcome.USAGE_EXCEEDED: (429, "Usage exceeded", "This key has no uses left."),
    Outcome.UNAVAILABLE: (503, "Key store unavailable", "Keys cannot be checked right now."),
    Outcome.TOKEN_INVALID: (
        401,
        "Access token invalid",
        "The token is not one keyservice signed (its signature, algorithm, type or key id).",
    ),
    Outcome.TOKEN_EXPIRED: (401, "Access token expired", "The token has expired: get a new one."),
    Outcome.TOKEN_WRONG_ISSUER: (401, "Access token from another issuer", "The token's iss is not this service."),
    Outcome.TOKEN_WRONG_AUDIENCE: (401, "Access token for another audience", "The token's aud is not this service."),
}


def _problem_document(status: int, code: str, title: str, detail: str) -> dict[str, Any]:
    return {
        "type": f"urn:keyservice:problem:{code.lower()}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }


@functools.lru_cache(maxsize=256)
def _problem_body(status: int, code: str, title: str, detail: str) -> str:
    # Refusals are answered at flood rates and their bodies are few: encode each once.
    return json.dumps(_problem_document(status, code, title, detail))


def problem(
    status: int, code: str, title: str, detail: str, errors: dict[str, Any] | None = None, **extra: Any
) -> Response:
    """Build an ``application/problem+json`` response (``errors``: per-field messages; ``extra``:
    members of the problem type's own, such as the ``limit`` that refused a key)."""
    body = (
        _problem_body(status, code, title, detail)
        if errors is None and not extra
        else json.dumps(
            _problem_document(status, code, title, detail) | ({"errors": errors} if errors is not None else {}) | extra
        )
    )
    return Response(body, status=status, mimetype="application/problem+json", headers=NOSNIFF)


class KeyServiceError(Exception):
    """Base of every error keyservice answers with a problem response."""

    status = 500
    code = "INTERNAL"
    title = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def to_response(self) -> Response:
        """The problem response for this error."""
        return problem(self.status, self.code, self.title, self.detail)


class InvalidInput(KeyServiceError):
    """Raised for input keyservice cannot accept; ``errors`` maps fields to messages."""

    status = 422
    code = "INVALID_INPUT"
    title = "Invalid input"

    def __init__(self, detail: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors

    def to_response(self) -> Response:
        """The problem response, with the per-field errors."""
        if self.errors is None:
            return super().to_response()
        return problem(self.status, self.code, self.title, self.detail, errors=self.errors)


class ResourceNotFound(KeyServiceError):
    """Raised for a key or role that does not exist, or is not the caller's to see."""

    status = 404
    code = "RESOURCE_NOT_FOUND"
    title = "Not found"


class NotAllowed(KeyServiceError):
    """Raised when the caller may not do this, e.g. grant a scope it does not hold."""

    status = 403
    code = "FORBIDDEN"
    title = "Forbidden"


class SignInRequired(KeyServiceError):
    """Raised by the self-serve page's routes when the host says nobody is signed in."""

    status = 401
    code = "SIGN_IN_REQUIRED"
    title = "Sign in required"


class CsrfFailed(NotAllowed):
    """Raised for a change on the self-serve page that lacks the page's CSRF token (a cross-site
    form post carries the session cookie, never the token)."""

    code = "CSRF_FAILED"
    title = "CSRF token missing or wrong"


class NeedsAdmin(NotAllowed):
    """Raised when a principal without ``keys:admin`` tries to loosen a key's limits."""

    code = "LOOSENING_NEEDS_ADMIN"
    title = "Only keys:admin can loosen a key's limits"

    def __init__(self, detail: str, fields: list[str]) -> None:
        super().__init__(detail)
        self.fields = fields

    def to_response(self) -> Response:
        """The problem response, naming each field that would loosen."""
        errors = {"json": {field: ["Only keys:admin can loosen this."] for field in self.fields}}
        return problem(self.status, self.code, self.title, self.detail, errors=errors)


class Conflict(KeyServiceError):
    """Raised when the key's state forbids the change, e.g. rotating a revoked key."""

    status = 409
    code = "CONFLICT"
    title = "Conflict"


class StorageUnavailable(KeyServiceError):
    """Raised when the database cannot answer or take a write now: down, unreachable, a full
    disk, a read-only volume. Answered 503 ``UNAVAILABLE`` with ``Retry-After``."""

    status = 503
    code = Outcome.UNAVAILABLE.value
    title = _OUTCOMES[Outcome.UNAVAILABLE][1]
    retry_after = 1

    def __init__(self, detail: str = "The key store cannot be read or written right now.") -> None:
        super().__init__(detail)

    @classmethod
    def logged(cls, error: BaseException) -> StorageUnavailable:
        """The error for the database error ``error``, logged in one line: its class, never its
        text (which holds the statement's parameters, or the server's address)."""
        current_app.logger.warning("keyservice: database unavailable (%s)", error_name(error))
        return cls()

    def to_response(self) -> Response:
        """The problem response, with ``Retry-After``."""
        response = super().to_response()
        response.headers["Retry-After"] = str(self.retry_after)
        return response


class VerificationFailed(KeyServiceError):
    """Raised by ``@require_key`` when the caller's key is refused."""

    def __init__(self, result: VerificationResult) -> None:
        self.status, self.title, detail = _OUTCOMES[result.code]
        self.code = result.code.value
        super().__init__(detail)
        self.result = result

    def to_response(self) -> Response:
        """The problem response, with the RFC 6750 and ``Retry-After`` headers; a named limit's
        refusal names it (``limit``)."""
        response = (
            super().to_response()
            if self.result.limit is None
            else problem(self.status, self.code, self.title, self.detail, limit=self.result.limit)
        )
        if self.result.code is Outcome.MISSING:
            response.headers["WWW-Authenticate"] = REALM
        elif self.status == 401:
            response.headers["WWW-Authenticate"] = f'{REALM}, error="invalid_token"'
        elif self.status == 400:
            response.headers["WWW-Authenticate"] = f'{REALM}, error="invalid_request"'
        elif self.status == 403:
            scope = " ".join(self.result.required_scopes)
            response.headers["WWW-Authenticate"] = f'{REALM}, error="insufficient_scope", scope="{scope}"'
        if self.result.retry_after is not None:
            response.headers["Retry-After"] = str(self.result.retry_after)
        if self.result.ratelimit is not None:
            response.headers.update(self.result.ratelimit.headers())
        return response


def register_error_handlers(app: Flask) -> None:
    """Answer keyservice's own errors with problem responses (extension mode)."""
    app.register_error_handler(KeyServiceError, lambda error: error.to_response())


def http_problem(error: HTTPException) -> Response:
    """The problem response for an HTTP error; a 422 from request parsing names its fields."""
    messages = getattr(error, "data", {}).get("messages")
    if error.code == 422 and messages:
        return InvalidInput("Some fields are not valid.", errors=messages).to_response()
    code = "HTTP_" + (error.name or "error").upper().replace(" ", "_")
    return problem(error.code or 500, code, error.name, error.description or "", errors=messages)


def _where(error: BaseException) -> str:
    """The innermost frame of keyservice's own code that ``error`` went through, as file:line."""
    package = Path(__file__).resolve().parent.parent
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if package in Path(frame.filename).resolve().parents
    ]
    return f"{Path(frames[-1].filename).resolve().relative_to(package)}:{frames[-1].lineno}" if frames else "?"


def nosniff(response: Response) -> Response:
    """Add ``X-Content-Type-Options: nosniff`` to ``response`` (an ``after_request`` hook)."""
    response.headers.update(NOSNIFF)
    return response


def register_http_problem_handlers(app: Flask) -> None:
    """Answer every HTTP error of the standalone service with a problem response, and every
    database error that means an outage with 503 ``UNAVAILABLE``, wherever it is raised.

    App-wide because the standalone app is keyservice's alone; in a host app, keyservice
    answers only its own routes' outages (see :func:`keyservice.management.principals.requires`).
    """

    def unexpected_error(error: Exception) -> Response:
        app.logger.exception("unhandled error")
        return _internal_error()

    def database_error(error: SQLAlchemyError) -> Response:
        if storage_unavailable(error):
            return StorageUnavailable.logged(error).to_response()
        # A bug, not an outage; still no traceback: its text holds the statement's parameters.
        app.logger.error("unhandled database error (%s) at %s", error_name(error), _where(error))
        return _internal_error()

    app.register_error_handler(HTTPException, http_problem)
    app.register_error_handler(SQLAlchemyError, database_error)
    app.register_error_handler(Exception, unexpected_error)


def _internal_error() -> Response:
    """The 500 problem response, which says nothing of the cause."""
    return problem(500, "INTERNAL", "Internal error", "The server failed to answer this request.")
