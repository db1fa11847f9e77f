"""``@require_key``: read the key from the request, verify it, put the caller in ``g``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flask import Blueprint, Response, after_this_request, current_app, g, request

from ..core.errors import VerificationFailed
from ..core.outcomes import ONE_USE, Charge, Outcome, VerificationResult
from ..core.state import current_state
from .tokens import looks_like_token

Protected = TypeVar("Protected", bound=Callable[..., Any] | Blueprint)

# Where a check leaves the key's id and its outcome, in the request's WSGI environ, for the
# request's log line (requestlog.py).
KEY_ID = "keyservice.key_id"
CODE = "keyservice.code"

# A CORS preflight carries no credentials; as Flask-Login's login_required, let it through.
EXEMPT_METHODS = frozenset({"OPTIONS"})


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


def verify_request(scopes: tuple[str, ...] = (), charge: Charge = ONE_USE) -> VerificationResult:
    """Verify the key, or the access token, of the current request against ``scopes``, charging
    its limits ``charge``."""
    return _verify_environ(request.environ, scopes, charge)


def _verify_environ(environ: dict[str, Any], scopes: tuple[str, ...], charge: Charge) -> VerificationResult:
    state = current_state()
    key = key_from_request(environ, state.settings.header_environ_key)
    if isinstance(key, Outcome):
        result = VerificationResult(key)
    elif looks_like_token(key):
        result = state.tokens.verify(key, scopes, charge)
    else:
        result = state.verifier.verify(key, scopes, environ.get("REMOTE_ADDR"), charge)
    environ[KEY_ID] = result.key_id
    environ[CODE] = result.code  # an Outcome is its code, a str
    return result


def authenticate(scopes: tuple[str, ...], charge: Charge = ONE_USE) -> None:
    """Let the current request through only with a valid key holding ``scopes``: put its
    :class:`VerificationResult` in ``g.auth``, or raise the refusal's problem response."""
    environ = request.environ
    if environ["REQUEST_METHOD"] in EXEMPT_METHODS:
        return
    result = _verify_environ(environ, scopes, charge)
    if not result.valid:
        raise VerificationFailed(result)
    g.auth = result
    if result.ratelimit is not None:
        headers = result.ratelimit.headers()

        @after_this_request
        def add_ratelimit_headers(response: Response) -> Response:
            response.headers.update(headers)
            return response


def require_key(
    *scopes: str, cost: int = 1, limits: Mapping[str, int] | None = None
) -> Callable[[Protected], Protected]:
    """Protect a view, or every view of a Blueprint: the request must carry a valid key
    holding every one of ``scopes``, or one of its access tokens (:mod:`keyservice.verification.tokens`)
    whose scope holds them too.

    Each request costs ``cost`` units in the key's limits and its identity's auto-applied ones,
    and, in each limit ``limits`` names, the cost given there (``limits={"tokens": 1200}``); it is
    let through only if every one of them has room.

    Decorates a view function (sync or ``async def``), goes in a ``MethodView``'s
    ``decorators``, or takes a Blueprint before it is registered:
    ``require_key("reports:read")(bp)``. The view then reads its caller from ``g.auth``
    (a read-only :class:`VerificationResult`); a refused request gets the problem
    response of its outcome instead. ``OPTIONS`` requests pass without a key.
    """

    charge = ONE_USE if cost == 1 and not limits else Charge.of(cost, limits)  # a wrong cost fails at import

    def decorator(protected: Protected) -> Protected:
        if isinstance(protected, Blueprint):
            protected.before_request(functools.partial(authenticate, scopes, charge))
            return protected
        view = protected
        # Flask's ensure_sync asks this of the view at every call; the answer never changes.
        is_async = inspect.iscoroutinefunction(view)

        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            authenticate(scopes, charge)
            return (current_app.ensure_sync(view) if is_async else view)(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator
