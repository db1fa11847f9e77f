"""A key's status as people read it: the one rule, for the API's key objects (which the
dashboard shows as they are) and the CLI. It imports nothing of keyservice.

The verifier answers a presented key with an outcome instead (``REVOKED``, ``EXPIRED``,
``DISABLED``, ...), checked in the same order; it keeps its own three lines, on the path
every request takes, and its rows carry no revocation reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

# The revocation reason of a key reported leaked (GitHub's secret scanning, `keys scan --revoke`).
LEAKED = "leaked"
STATUSES = ("active", "disabled", "expired", "revoked", LEAKED)


class KeyState(Protocol):
    """What the status is worked out from: a key's row."""

    @property
    def enabled(self) -> bool: ...

    @property
    def expires_at(self) -> datetime | None: ...

    @property
    def revoked_at(self) -> datetime | None: ...

    @property
    def revocation_reason(self) -> str | None: ...


def key_status(key: KeyState, now: datetime) -> str:
    """One of :data:`STATUSES`: a revocation first (it is final; ``leaked`` when that was the
    reason), then the expiry as of ``now`` (aware), then whether the key is enabled."""
    if key.revoked_at is not None:
        return LEAKED if key.revocation_reason == LEAKED else "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active" if key.enabled else "disabled"
