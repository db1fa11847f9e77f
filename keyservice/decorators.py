"""``@require_key``: read the key from the request, verify it, put the caller in ``g``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Request, g, request

from .errors import VerificationFailed
from .state import current_state
from .verification import Outcome, VerificationResult, verify_key

View = TypeVar("View", bound=Callable[..., Any])


def _comma_separated(req: Request, name: str) -> list[str]:
    # Servers join repeated header lines with commas, which no key contains.
    return [part for value in req.headers.getlist(name) for part in value.split(",")]


def key_from_request(req: Request, header: str | None) -> str | Outcome:
    """The key sent with ``req``, or MISSING / INVALID_REQUEST.

    The key may come as ``Authorization: Bearer <key>`` (the scheme in any case)
    or in ``header``; sending it more than once is refused, as RFC 6750 §2 asks.
    """
    sent = []
    for part in _comma_separated(req, "Authorization"):
        scheme, _, credentials = part.strip().partition(" ")
        if scheme.lower() == "bearer":
            sent.append(credentials)
    if header:
        sent.extend(_comma_separated(req, header))
    if not sent:
        return Outcome.MISSING
    if len(sent) > 1:
        return Outcome.INVALID_REQUEST
    return sent[0]


def verify_request(scopes: tuple[str, ...] = ()) -> VerificationResult:
    """Verify the key of the current request against ``scopes``."""
    settings = current_state().settings
    key = key_from_request(request, settings.header)
    if isinstance(key, Outcome):
        return VerificationResult(key)
    return verify_key(key, scopes)


def require_key(*scopes: str) -> Callable[[View], View]:
    """Protect a view: the request must carry a valid key holding every one of ``scopes``.

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
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator
