"""Which changes of a key loosen a limit: those only ``keys:admin`` may make.

A client's own manager may tighten a key (fewer uses, a slower rate, an earlier
expiry, disabled) but not loosen it: raising or clearing ``remaining`` or
``ratelimit``, adding or raising a ``refill``, extending or clearing
``expires_at``, and enabling a key that ``keys:admin`` disabled. ``None`` is
"no limit" throughout, the loosest value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from ..core.models import ApiKey, as_utc

Bound = TypeVar("Bound", int, datetime)

# Refills per period, for comparing intervals: a daily refill gives more than a monthly one.
_REFILLS_PER_MONTH = {"daily": 31, "monthly": 1}


def _raised(old: Bound | None, new: Bound | None) -> bool:
    """Whether an upper bound (None: none) goes up or away."""
    return old is not None and (new is None or new > old)


def _ratelimit_loosened(old: dict[str, int] | None, new: dict[str, int] | None) -> bool:
    if old is None:
        return False
    return new is None or new["limit"] > old["limit"] or new["period"] < old["period"]


def _refill_loosened(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    if new is None:
        return False
    if old is None:
        return True
    return new["amount"] > old["amount"] or _REFILLS_PER_MONTH[new["interval"]] > _REFILLS_PER_MONTH[old["interval"]]


def loosened(api_key: ApiKey, changes: dict[str, Any]) -> list[str]:
    """The fields of ``changes`` (API names, checked values) that would loosen ``api_key``."""
    fields = []
    if "remaining" in changes and _raised(api_key.remaining, changes["remaining"]):
        fields.append("remaining")
    if "refill" in changes and _refill_loosened(api_key.refill, changes["refill"]):
        fields.append("refill")
    if "ratelimit" in changes and _ratelimit_loosened(api_key.ratelimit, changes["ratelimit"]):
        fields.append("ratelimit")
    if "expires_at" in changes and _raised(as_utc(api_key.expires_at), changes["expires_at"]):
        fields.append("expires_at")
    if changes.get("enabled") is True and not api_key.enabled and api_key.disabled_by_admin:
        fields.append("enabled")
    return fields
