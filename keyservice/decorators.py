"""``@require_key``: read the key from the request, verify it, put the caller in ``g``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, after_this_request, g, request

from .errors import VerificationFailed
from .state import current_state
from .tokens import looks_like_token
from .verification import Outcome, VerificationResult

View = TypeVar("View", bound=Callable[..., Any])


def key_from_request(environ: dict[str, Any], header_environ_key: str | None) -> str | Outcome:
    """The key sent with a request, or MISSING / INVALID_REQUEST.

    The key may come as ``Authorization: Bearer <key>`` (the scheme in any case)
    or in the header ``KEYSERVICE_HEADER`` names (``header_environ_key``: its
    WSGI environ key); sending it more than once is refused, as RFC 6750 §2 asks.
    Reads the WSGI environ directly: werkzeug's header view scans every header.
    """
    # A server joins repeated header lines with commas, which no key contains.
    sent: list[str] = []
    for part in environ.get("HTTP_AUTHORIZATION", "").split(","):
        scheme, _, credentials = part.strip().partition(" ")
        if scheme.lower() == "bearer":
            sent.append(credentials)
    if header_environ_key and (value := environ.get(header_environ_key)) is not None:
        sent.extend(value.split(","))
    if not sent:
        return Outcome.MISSING
    if len(sent) > 1:
        return Outcome.INVALID_REQUEST
    return sent[0]


def verify_request(scopes: tuple[str, ...] = ()) -> VerificationResult:
    """Verify the key, or the access token, of the current request against ``scopes``."""
    state = current_state()
    environ = request.environ
    key = key_from_request(environ, state.settings.header_environ_key)
    if isinstance(key, Outcome):
        result = VerificationResult(key)
    elif looks_like_token(key):
        result = state.tokens.verify(key, scopes)
    else:
        result = state.verifier.verify(key, scopes, environ.get("REMOTE_ADDR"))
    g.verification = result  # for the request's log line
    return result


def require_key(*scopes: str) -> Callable[[View], View]:
    """Protect a view: the request must carry a valid key holding every one of ``scopes``, or
    one of its access tokens (:mod:`keyservice.tokens`) whose scope holds them too.

    The view then reads its caller from ``g.auth`` (a :class:`VerificationResult`);
    a refused request gets the problem response of its outcome instead.
    """

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = verify_request(scopes)
            if not result.valid:
                raise VerificationFailed(result)
            g.auth = result
            if result.ratelimit is not None:
                headers = result.ratelimit.headers()

                @after_this_request
                def add_ratelimit_headers(response: Response) -> Response:
                    response.headers.update(headers)
                    return response

            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator
