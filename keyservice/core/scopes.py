"""The scope rule (which granted scopes cover which required ones) and the principal
that holds scopes; imports nothing of keyservice."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ADMIN_SCOPE = "keys:admin"


def missing_scopes(granted: Iterable[str], required: Sequence[str]) -> tuple[str, ...]:
    """The required scopes that ``granted`` lacks; ``a:*`` grants every ``a:<x>``, and
    ``keys:admin`` every ``keys:<x>`` (the management API's scopes)."""
    if not required:
        return ()
    granted = set(granted)
    wildcards = tuple(scope[:-1] for scope in granted if scope.endswith(":*"))
    if ADMIN_SCOPE in granted:
        wildcards += ("keys:",)
    return tuple(scope for scope in required if scope not in granted and not scope.startswith(wildcards))


@dataclass(frozen=True)
class Principal:
    """The caller of the management API.

    ``client_ids`` are the clients whose keys it manages; None means every
    client, and goes with ``keys:admin``.
    """

    id: str
    scopes: tuple[str, ...]
    client_ids: frozenset[str] | None

    @property
    def is_admin(self) -> bool:
        return not missing_scopes(self.scopes, [ADMIN_SCOPE])

    def holds(self, scope: str) -> bool:
        """Whether it may use a route that needs ``scope`` (``keys:admin`` may use all)."""
        return not missing_scopes(self.scopes, [scope])

    def manages(self, external_client_id: str) -> bool:
        """Whether keys of this client are its to see and change."""
        return self.client_ids is None or external_client_id in self.client_ids

    def ungrantable(self, scopes: Iterable[str]) -> tuple[str, ...]:
        """The scopes it may not put on a key: those it does not hold itself."""
        return () if self.is_admin else missing_scopes(self.scopes, tuple(scopes))
