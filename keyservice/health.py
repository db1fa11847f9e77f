"""Liveness and readiness: what ``/healthz`` and ``/readyz`` check (a host app may call them too).

- **Live**: the database answers a read of keyservice's keys table (a real read:
  SQLite answers ``SELECT 1`` without its file).
- **Ready**: the database commits a write (the one row of
  ``keyservice_readiness_probe``); on SQLite, the database's volume also has
  room for the write-ahead log to fill up to its next checkpoint, because a
  small write can still succeed on a full disk, in log space a checkpoint left
  free; and the rate-limit storage answers, when it is not the database (Redis).

Each returns None when all is well, or what failed, in words of its own: never
an error's text, which holds statements and addresses.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flask import current_app
from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from .core.dberrors import error_name
from .core.models import ApiKey, ReadinessProbe, utcnow
from .core.state import current_state

_INSERT: dict[str, Callable[..., Any]] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
# SQLite's default checkpoint size, for a database that has turned automatic checkpoints off.
_DEFAULT_WAL_PAGES = 1000


def liveness_failure() -> str | None:
    """None while the database answers a read; else what failed."""
    try:
        with current_state().db.engine.connect() as connection:
            connection.execute(select(ApiKey.id).limit(1)).all()
    except SQLAlchemyError as error:
        current_app.logger.warning("keyservice: database unavailable (%s)", error_name(error))
        return "The database does not answer."
    return None


def readiness_failure() -> str | None:
    """None when the database takes a write (and has room for more, on SQLite) and the
    rate-limit storage answers; else what failed."""
    state = current_state()
    engine = state.db.engine
    try:
        _write_probe(engine)
        if not _sqlite_has_room(engine):
            current_app.logger.warning("keyservice: not ready, the database's volume is nearly full")
            return "The database's volume is nearly full."
    except SQLAlchemyError as error:
        current_app.logger.warning("keyservice: database unavailable (%s)", error_name(error))
        return "The database does not take writes."
    except OSError as error:  # the volume's figures could not be read: its folder is gone
        current_app.logger.warning("keyservice: database unavailable (%s)", type(error).__name__)
        return "The database's volume cannot be read."
    if state.settings.ratelimit_storage_url and not state.verifier.ratelimit_storage_answers():
        current_app.logger.warning("keyservice: not ready, the rate-limit storage does not answer")
        return "The rate-limit storage does not answer."
    return None


def _write_probe(engine: Engine) -> None:
    insert = _INSERT[engine.dialect.name](ReadinessProbe).values(id=1, probed_at=utcnow())
    with engine.begin() as connection:
        connection.execute(
            insert.on_conflict_do_update(index_elements=["id"], set_={"probed_at": insert.excluded.probed_at})
        )


def _sqlite_has_room(engine: Engine) -> bool:
    """Whether the SQLite database's volume has room for a write-ahead log's worth of pages."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return True
    with engine.connect() as connection:
        page_size = connection.exec_driver_sql("PRAGMA page_size").scalar_one()
        wal_pages = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() or _DEFAULT_WAL_PAGES
    volume = os.statvfs(os.path.dirname(os.path.abspath(database)))
    return bool(volume.f_bavail * volume.f_frsize >= page_size * wal_pages)
