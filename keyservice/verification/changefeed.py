"""The change feed: every change to a key, a role or an identity, in commit order, for workers to
forget their copies.

Each flush that changes a key's row, a role, an identity or a named limit through the ORM (every function of
``store.py``, and a host app's own session alike) adds a :class:`KeyChange` row
in the same transaction: committed with the change, or not at all. A worker
asks at most every ``KEYSERVICE_CACHE_TTL`` for the rows after the last id it
saw (one primary-key range read, whatever the number of keys) and forgets
exactly those keys (``rowcache.py``).

That read misses nothing only if ids become visible in the order they grow. On
SQLite one writer at a time already makes it so. On PostgreSQL a sequence gives
ids out at insert time, not at commit, so key changes take one transaction-level
advisory lock before their first write (``lock_key`` takes it before the key's
row lock, a flush before its rows: always in that order, so no deadlock) and
hold it to their commit. Key changes are operator actions, a few a second at
most; verification never takes the lock.

Rows older than ``PRUNE_AFTER`` are deleted by the next change, so the table
holds minutes of changes. A worker that has not read the feed for longer than
its safety age (``KEYSERVICE_CACHE_MAX_AGE``, below ``PRUNE_AFTER``) forgets
every copy instead of trusting rows the pruning may have taken.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, event, func, select, text
from sqlalchemy.orm import Session

from ..core.models import AnySession, ApiKey, Identity, KeyChange, NamedLimit, Role, utcnow

PRUNE_AFTER = timedelta(minutes=10)
# Any fixed number: the one advisory lock that orders key changes on PostgreSQL.
_CHANGES_LOCK = text("SELECT pg_advisory_xact_lock(7305861421)")


def serialise_changes(session: AnySession) -> None:
    """Wait for, and hold until this transaction ends, the turn to change keys (PostgreSQL;
    SQLite's write lock does it already)."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(_CHANGES_LOCK)


def _note_changes(session: Session, flush_context: Any, instances: Any) -> None:
    key_ids = {row.id for row in session.dirty if isinstance(row, ApiKey) and session.is_modified(row)}
    key_ids |= {row.id for row in session.deleted if isinstance(row, ApiKey)}
    changed = [
        row
        for row in (*session.new, *session.dirty, *session.deleted)
        if row not in session.dirty or session.is_modified(row)
    ]
    roles = {row.name for row in changed if isinstance(row, Role)}
    clients = {row.external_client_id for row in changed if isinstance(row, Identity)}
    for limit in (row for row in changed if isinstance(row, NamedLimit)):
        if limit.key_id is not None:
            key_ids.add(limit.key_id)
        elif (identity := session.get(Identity, limit.identity_id)) is not None:
            clients.add(identity.external_client_id)
    if not key_ids and not roles and not clients:
        return
    serialise_changes(session)
    session.add_all(
        [KeyChange(key_id=key_id) for key_id in sorted(key_ids)]
        + [KeyChange(role=role) for role in sorted(roles)]
        + [KeyChange(client=client) for client in sorted(clients)]
    )
    session.connection().execute(delete(KeyChange).where(KeyChange.at < utcnow() - PRUNE_AFTER))


event.listen(Session, "before_flush", _note_changes)


def latest_change(connection: Connection) -> int:
    """The id of the newest change (0: none yet)."""
    return connection.scalar(select(func.max(KeyChange.id))) or 0


def changes_after(connection: Connection, last: int) -> tuple[int, set[str], set[str], set[str]]:
    """The changes after id ``last``: the newest id, the changed key ids, the changed roles, the
    external client ids whose identity (or its limits) changed."""
    key_ids: set[str] = set()
    roles: set[str] = set()
    clients: set[str] = set()
    for change_id, key_id, role, client in connection.execute(
        select(KeyChange.id, KeyChange.key_id, KeyChange.role, KeyChange.client).where(KeyChange.id > last)
    ):
        last = max(last, change_id)
        if key_id is not None:
            key_ids.add(key_id)
        if role is not None:
            roles.add(role)
        if client is not None:
            clients.add(client)
    return last, key_ids, roles, clients
