"""Named credits (an identity's pool, or a key's own) taken with the key's uses, all or nothing.

A check may draw on the key's ``remaining`` and on any number of named credit limits, each
at its own cost. They are taken in one database transaction: one conditional ``UPDATE ...
RETURNING`` per row (a due refill first, as for a key's uses), the key's row first and the named
limits by id, so two checks never wait for each other's rows in opposite orders. A row without
room refuses the check and the transaction is rolled back: nothing is taken anywhere. Each
UPDATE holds its row until the commit (PostgreSQL's row lock; SQLite's one writer), so however
many workers and instances draw on one pool at once, it never goes below zero. A check that
only draws on the key's own uses keeps today's single statement (``quota.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from ..core import rawsql
from ..core.models import NamedLimit, utcnow
from ..core.outcomes import KeyRecord, LimitRecord
from .quota import quota_statement, refill_boundary, take_uses, timestamp_binder

_DUE = "refill_amount IS NOT NULL AND (refilled_at IS NULL OR refilled_at < :boundary)"
_REFILLED = f"CASE WHEN {_DUE} THEN refill_amount ELSE remaining END"
# What is left, and whether that is below the pool's low threshold with no announcement made yet
# (a refill arms the announcement again).
_LOW = "low_threshold IS NOT NULL AND remaining < low_threshold AND NOT low_announced"
_TAKE = (
    f"UPDATE {NamedLimit.__tablename__} SET remaining = {_REFILLED} - :cost,"
    f" low_announced = CASE WHEN {_DUE} THEN false ELSE low_announced END,"
    f" refilled_at = CASE WHEN {_DUE} THEN :now ELSE refilled_at END"
    f" WHERE id = :limit_id AND {_REFILLED} >= :cost RETURNING remaining, {_LOW}"
)
_TAKE_NO_REFILL = (
    f"UPDATE {NamedLimit.__tablename__} SET remaining = remaining - :cost"
    f" WHERE id = :limit_id AND remaining >= :cost RETURNING remaining, {_LOW}"
)


@dataclass(frozen=True)
class Drawn:
    """What a draw came to: taken everywhere, or refused by ``refused`` (a limit's name, or None
    for the key's own uses) and taken nowhere; the key's uses left after it (None: unlimited)."""

    taken: bool
    key_remaining: int | None = None
    refused: str | None = None
    running_low: tuple[int, ...] = ()  # the ids of identity pools now below their low threshold, unannounced


class _Refused(Exception):
    def __init__(self, name: str | None) -> None:
        self.name = name


class Credits:
    """Draws on keys' uses and named credits in the database ``engine()`` returns."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine

    def draw(self, record: KeyRecord, cost: int, limits: list[tuple[LimitRecord, int]]) -> Drawn:
        """Take ``cost`` of ``record``'s own uses (if it has ``remaining``) and each named credit
        limit's cost, all or nothing (see the module docstring)."""
        engine = self._engine()
        dialect = engine.dialect
        key_remaining = None
        running_low = []
        try:
            with rawsql.transaction(engine) as transaction:
                if record.remaining is not None:
                    rows = transaction.run(*take_uses(dialect, record, cost))
                    if not rows:
                        raise _Refused(None)
                    key_remaining = rows[0][0]
                for limit, limit_cost in sorted(limits, key=lambda drawn: drawn[0].id):
                    rows = transaction.run(*self._take(engine, limit, limit_cost))
                    if not rows:
                        raise _Refused(limit.name)
                    if rows[0][1] and limit.shared:
                        running_low.append(limit.id)
        except _Refused as refused:
            return Drawn(False, 0 if refused.name is None else None, refused.name)
        return Drawn(True, key_remaining, running_low=tuple(running_low))

    @staticmethod
    def _take(engine: Engine, limit: LimitRecord, cost: int) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"limit_id": limit.id, "cost": cost}
        if limit.refill_interval is None:
            return quota_statement(_TAKE_NO_REFILL, engine.dialect.name), params
        now = utcnow()
        as_column = timestamp_binder(engine.dialect)
        params |= {"now": as_column(now), "boundary": as_column(refill_boundary(now, limit.refill_interval))}
        return quota_statement(_TAKE, engine.dialect.name), params
