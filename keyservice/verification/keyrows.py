"""A key's row as verification needs it (a ``KeyRecord``): one query, and one for its roles' scopes.

A worker reads each key's row once after it starts, and again after each change
(``rowcache.py``), so the read goes through ``rawsql.py``, not a SQLAlchemy
Connection, whose machinery tripled its cost. The columns' own types turn the
driver's values into ``KeyRecord``'s (SQLite's JSON text and timestamp strings).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy import Dialect, Engine

from ..core import rawsql
from ..core.models import ApiKey, Identity, NamedLimit, Role, as_utc
from ..core.outcomes import KeyRecord, LimitRecord

_RECORD_NAMES = tuple(name for name in KeyRecord.__dataclass_fields__ if name != "limits")
_RECORD_COLUMNS = [ApiKey.__table__.c[name] for name in _RECORD_NAMES]
_RECORD_SQL = f"SELECT {', '.join(_RECORD_NAMES)} FROM {ApiKey.__tablename__} WHERE id = :key_id"
_ROLE_SCOPES_SQL = f"SELECT scopes FROM {Role.__tablename__} WHERE name IN"
# The key's own named limits and its identity's; by name, the key's own win (the key's first).
_LIMITS_SQL = (
    "SELECT id, name, kind, auto_apply, rate_limit, period, refill_interval, key_id IS NULL"
    f" FROM {NamedLimit.__tablename__}"
    f" WHERE key_id = :key_id OR identity_id = (SELECT id FROM {Identity.__tablename__}"
    " WHERE external_client_id = :client) ORDER BY key_id IS NULL, id"
)


@functools.lru_cache(maxsize=4)
def _record_processors(dialect: Dialect) -> list[Callable[[Any], Any]]:
    return rawsql.result_processors(dialect, _RECORD_COLUMNS)


@functools.lru_cache(maxsize=4)
def _role_scopes_processor(dialect: Dialect) -> Callable[[Any], Any]:
    [process] = rawsql.result_processors(dialect, [Role.__table__.c.scopes])
    return process


class KeyRows:
    """Reads keys' rows from the database ``engine()`` returns."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine

    def load(self, key_id: str) -> KeyRecord | None:
        """The row of key ``key_id``, its scopes its own and its roles' current ones; None if
        there is no such key."""
        engine = self._engine()
        rows = rawsql.execute(engine, _RECORD_SQL, {"key_id": key_id}, writes=False)
        if not rows:
            return None
        values = {
            name: process(value)
            for name, process, value in zip(_RECORD_NAMES, _record_processors(engine.dialect), rows[0], strict=False)
        }
        scopes = list(values["scopes"])
        if values["roles"]:
            names = {f"role{index}": name for index, name in enumerate(values["roles"])}
            placeholders = ", ".join(f":{parameter}" for parameter in names)
            process = _role_scopes_processor(engine.dialect)
            for (role_scopes,) in rawsql.execute(engine, f"{_ROLE_SCOPES_SQL} ({placeholders})", names, writes=False):
                scopes.extend(process(role_scopes))
        return KeyRecord(
            **values
            | {
                "scopes": tuple(dict.fromkeys(scopes)),
                "roles": tuple(values["roles"]),
                "expires_at": as_utc(values["expires_at"]),
                "revoked_at": as_utc(values["revoked_at"]),
                "limits": self._limits(engine, key_id, values["external_client_id"]),
            }
        )

    @staticmethod
    def _limits(engine: Engine, key_id: str, client: str) -> tuple[LimitRecord, ...]:
        named: dict[str, LimitRecord] = {}
        for limit_id, name, kind, auto_apply, limit, period, refill, shared in rawsql.execute(
            engine, _LIMITS_SQL, {"key_id": key_id, "client": client}, writes=False
        ):
            limit_record = LimitRecord(limit_id, name, kind, bool(auto_apply), limit, period, refill, bool(shared))
            named.setdefault(name, limit_record)
        return tuple(named.values())
