"""What a key check answers, and what it needs of a key's row: the bottom layer, which
imports nothing of keyservice, so that errors, decorators and the API can share these
types without loading the verifier (its caches, limits and metrics)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NoReturn


class Outcome(StrEnum):
    """Every answer a verification can give: the ``code`` of responses."""

    VALID = "VALID"
    MISSING = "MISSING"
    INVALID_REQUEST = "INVALID_REQUEST"
    MALFORMED = "MALFORMED"
    NOT_FOUND = "NOT_FOUND"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"
    DISABLED = "DISABLED"
    INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"
    RATE_LIMITED = "RATE_LIMITED"
    USAGE_EXCEEDED = "USAGE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    # An access token (keyservice.verification.tokens) refused before its key is looked at.
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_WRONG_ISSUER = "TOKEN_WRONG_ISSUER"
    TOKEN_WRONG_AUDIENCE = "TOKEN_WRONG_AUDIENCE"


@dataclass(frozen=True)
class KeyRecord:
    """What verification needs of a key's row."""

    id: str
    secret_hash: str
    name: str
    external_client_id: str
    scopes: tuple[str, ...]  # effective: its own and its roles' current scopes
    roles: tuple[str, ...]
    meta: dict[str, Any]
    enabled: bool
    expires_at: datetime | None
    revoked_at: datetime | None
    remaining: int | None
    refill_amount: int | None
    refill_interval: str | None
    ratelimit_limit: int | None
    ratelimit_period: int | None
    # The named limits that apply to the key: its own, and its identity's of other names.
    limits: tuple[LimitRecord, ...] = ()


@dataclass(frozen=True)
class LimitRecord:
    """A named limit as verification needs it: an identity's (shared by all its keys) or a key's own."""

    id: int
    name: str
    kind: str  # "rate" (limit per period, in the windows' storage) or "credits" (remaining, in the database)
    auto_apply: bool  # counted at every check; otherwise only when a check names it
    limit: int | None
    period: int | None
    refill_interval: str | None
    shared: bool = True  # the identity's (its events are identity.*), not the key's own


@dataclass(frozen=True)
class Charge:
    """What one check costs: ``cost`` units in the key's own limits and every auto-applied named
    limit, and in each limit ``limits`` names its own cost (``{"tokens": 1200}``)."""

    cost: int = 1
    limits: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, cost: int = 1, limits: Mapping[str, int] | None = None) -> Charge:
        """A charge, checked: costs are whole numbers of at least 1 (0 would count nothing)."""
        for value in (cost, *(limits or {}).values()):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000_000:
                raise ValueError(f"a cost is a whole number from 1 to 1000000000, not {value!r}")
        return cls(cost, tuple(sorted((limits or {}).items())))


ONE_USE = Charge()


@dataclass(frozen=True)
class RateLimitState:
    """Where a key stands against its rate limit after a request."""

    allowed: bool
    limit: int
    period: int
    remaining: int
    reset_at: float

    @property
    def reset_in(self) -> int:
        """Whole seconds until the window has room again (at least 1)."""
        return max(1, math.ceil(self.reset_at - time.time()))

    def headers(self) -> dict[str, str]:
        """The IETF draft's ``RateLimit``/``RateLimit-Policy`` and the common ``X-RateLimit-*`` trio."""
        return {
            "RateLimit-Policy": f'"default";q={self.limit};w={self.period}',
            "RateLimit": f'"default";r={self.remaining};t={self.reset_in}',
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }


class ReadOnlyDict(dict[str, Any]):
    """A dict that refuses every change; unlike a ``MappingProxyType``, Flask and ``json``
    still serialise it (a view may return ``g.auth.meta`` as it is)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("g.auth is read-only; change a copy (dict(g.auth.meta)) instead")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type[ReadOnlyDict], tuple[dict[str, Any]]]:
        # copy and pickle would otherwise fill an empty one item by item.
        return type(self), (dict(self),)


def read_only(value: Any) -> Any:
    """A JSON value that cannot be changed: objects as read-only dicts, arrays as tuples."""
    if isinstance(value, dict):
        return ReadOnlyDict({name: read_only(item) for name, item in value.items()})
    if isinstance(value, list):
        return tuple(read_only(item) for item in value)
    return value


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of checking one key; on success it is ``g.auth`` in the view.

    Read-only all the way down (``meta`` a read-only dict, its arrays tuples):
    a worker hands the same VALID result to every request with that key until its
    row is re-read, so no request can change what another sees.
    """

    code: Outcome
    key_id: str | None = None
    external_client_id: str | None = None
    name: str | None = None
    scopes: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=ReadOnlyDict)
    remaining: int | None = None
    ratelimit: RateLimitState | None = None
    required_scopes: tuple[str, ...] = ()
    retry_after: int | None = None
    limit: str | None = None  # the named limit that refused it (RATE_LIMITED, USAGE_EXCEEDED)

    @property
    def valid(self) -> bool:
        return self.code is Outcome.VALID
