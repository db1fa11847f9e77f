"""Who calls the management API, and what they may do there.

A principal is a management key (an API key holding ``keys:*`` scopes) or,
in a host app, whoever its ``principal_loader`` says is signed in. Tenancy:
``keys:read``/``keys:write``/``keys:verify`` act on the principal's own clients
only; ``keys:admin`` acts on every client. A principal cannot grant a scope it
does not hold itself, unless it holds ``keys:admin``.

A database outage on these routes (the principal's check included) answers 503
``UNAVAILABLE``, in a host app too; the host's own views' errors are its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g
from sqlalchemy.exc import SQLAlchemyError

from ..core.dberrors import storage_unavailable
from ..core.errors import StorageUnavailable, VerificationFailed
from ..core.outcomes import Outcome, VerificationResult

# Principal lives below (state.py types the principal_loader with it); host apps import it from here.
from ..core.scopes import ADMIN_SCOPE as ADMIN
from ..core.scopes import Principal as Principal
from ..core.scopes import missing_scopes
from ..core.state import current_state
from ..verification.decorators import verify_request

View = TypeVar("View", bound=Callable[..., Any])


PrincipalLoader = Callable[[], "Principal | None"]


def current_principal() -> Principal:
    """The principal of the current request, as :func:`requires` (or the self-serve page) left it in ``g``."""
    principal: Principal = g.principal
    return principal


def principal_from_key(scope: str) -> Principal:
    """Without a ``principal_loader``: the management key the request carries, which must hold
    ``scope``. The key is verified against it, so that a refusal (403) is counted in the key's
    usage and the metrics as ``INSUFFICIENT_SCOPE``, not as a valid use."""
    result = verify_request((scope,))
    if not result.valid:
        raise VerificationFailed(result)
    admin = not missing_scopes(result.scopes, [ADMIN])
    client_ids = None if admin else frozenset([result.external_client_id or ""])
    return Principal(id=f"key:{result.key_id}", scopes=result.scopes, client_ids=client_ids)


def requires(scope: str) -> Callable[[View], View]:
    """Let the view run only for a principal holding ``scope``; it is then ``g.principal``.

    A database outage in the view, or in the principal's check, is raised as
    :class:`StorageUnavailable` (503): the principal may come from a worker's memory
    for up to ``KEYSERVICE_CACHE_TTL`` while the view's own queries fail.
    """

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                loader = current_state().principal_loader
                principal = principal_from_key(scope) if loader is None else loader()
                if principal is None:
                    raise VerificationFailed(VerificationResult(Outcome.MISSING))
                if not principal.holds(scope):
                    raise VerificationFailed(VerificationResult(Outcome.INSUFFICIENT_SCOPE, required_scopes=(scope,)))
                g.principal = principal
                return view(*args, **kwargs)
            except SQLAlchemyError as error:
                if not storage_unavailable(error):
                    raise
                raise StorageUnavailable.logged(error) from error

        return wrapped  # type: ignore[return-value]

    return decorator
