"""The verifier's parts on their own, with no app: the row cache, the failed-check budgets, the
quota (on a real SQLite database); and, through an app, that a spent budget runs no bcrypt."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import sqlalchemy
import time_machine
from flask import Flask
from limits import parse
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from keyservice import Outcome, verify_key
from keyservice.core.models import RATE, ApiKey, Identity, NamedLimit, Role
from keyservice.core.outcomes import KeyRecord
from keyservice.verification.failedchecks import FailedCheckBudgets
from keyservice.verification.keyrows import KeyRows
from keyservice.verification.quota import Quota
from keyservice.verification.rowcache import RowCache
from keyservice.verification.slidingwindow import Hit, WindowStorageError
from keyservice.verification.sqlitewindows import SqliteWindows

from .conftest import migrated_app
from .helpers import issue, started_in_order, wrong_secret

NOON = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite database with keyservice's tables, and no app."""
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    ApiKey.metadata.create_all(engine)
    yield engine
    engine.dispose()


def add_key(engine: Engine, key_id: str, **fields: Any) -> KeyRecord:
    """Add key ``key_id`` (with ``fields``) through the ORM, as the store does; return its row as read."""
    with Session(engine) as session, session.begin():
        session.add(
            ApiKey(id=key_id, start=f"sk_{key_id}", secret_hash="-", name=key_id, external_client_id="acme", **fields)
        )
    record = KeyRows(lambda: engine).load(key_id)
    assert record is not None
    return record


def change_key(engine: Engine, key_id: str, **fields: Any) -> None:
    with Session(engine) as session, session.begin():
        api_key = session.get(ApiKey, key_id)
        assert api_key is not None
        for name, value in fields.items():
            setattr(api_key, name, value)


# --- The row cache ---


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def statements(engine: Engine) -> list[str]:
    """Every statement sent to ``engine`` from now on."""
    sent: list[str] = []
    sqlalchemy.event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


def test_a_full_cache_forgets_the_copy_least_recently_used(engine: Engine) -> None:
    cache: RowCache[str] = RowCache(lambda: engine, size=2, ttl=0.5, max_age=60, clock=Clock())
    for digest in (b"a", b"b"):
        cache.put(digest, f"key-{digest.decode()}", (), "acme", f"row {digest.decode()}", cache.generation())
    assert cache.get(b"a") == "row a"  # now b is the least recently used
    cache.put(b"c", "key-c", (), "acme", "row c", cache.generation())
    assert [cache.get(digest) for digest in (b"a", b"b", b"c")] == ["row a", None, "row c"]
    cache.put(b"a", "key-a", (), "acme", "row a again", cache.generation())  # a copy replaced, none forgotten
    assert [cache.get(digest) for digest in (b"a", b"c")] == ["row a again", "row c"]


def test_a_copy_is_served_without_a_query_within_the_ttl_and_the_feed_is_read_once_after(
    engine: Engine, statements: list[str]
) -> None:
    clock = Clock()
    cache: RowCache[str] = RowCache(lambda: engine, size=10, ttl=0.5, max_age=60, clock=clock)
    cache.put(b"a", "key-a", (), "acme", "row a", cache.generation())
    statements.clear()
    assert [cache.get(b"a") for _ in range(3)] == ["row a"] * 3
    assert cache.get(b"unknown") is None
    assert statements == []
    clock.now += 0.5
    assert [cache.get(b"a") for _ in range(3)] == ["row a"] * 3  # nothing changed
    assert len(statements) == 1


def test_a_change_to_a_key_its_role_or_its_identity_forgets_its_copy_once_the_ttl_is_over(engine: Engine) -> None:
    for key_id, roles in (("key-a", []), ("key-b", []), ("key-ops", ["ops"]), ("key-c", [])):
        add_key(engine, key_id, roles=roles)
    with Session(engine) as session, session.begin():
        session.add(Role(name="ops", scopes=["reports:read"]))
        session.add(Identity(id="initech-identity", external_client_id="initech"))
    clock = Clock()
    cache: RowCache[str] = RowCache(lambda: engine, size=10, ttl=0.5, max_age=60, clock=clock)
    generation = cache.generation()
    for digest, key_id, roles, client in (
        (b"a", "key-a", (), "acme"),
        (b"b", "key-b", (), "acme"),
        (b"ops", "key-ops", ("ops",), "acme"),
        (b"c", "key-c", (), "initech"),
    ):
        cache.put(digest, key_id, roles, client, f"row {key_id}", generation)
    change_key(engine, "key-a", enabled=False)
    with Session(engine) as session, session.begin():
        role = session.get(Role, "ops")
        assert role is not None
        role.scopes = ["reports:write"]
        session.add(NamedLimit(identity_id="initech-identity", name="requests", kind=RATE, limit=20, period=10))
    assert cache.get(b"a") == "row key-a"  # trusted until the TTL is over
    clock.now += 0.5
    assert [cache.get(digest) for digest in (b"a", b"b", b"ops", b"c")] == [None, "row key-b", None, None]


def test_a_row_read_before_a_change_the_cache_has_seen_is_not_kept(engine: Engine) -> None:
    add_key(engine, "key-a")
    add_key(engine, "key-b")
    clock = Clock()
    cache: RowCache[str] = RowCache(lambda: engine, size=10, ttl=0.5, max_age=60, clock=clock)
    cache.put(b"b", "key-b", (), "acme", "row key-b", cache.generation())
    generation = cache.generation()  # then key-a's row is read, and changes
    change_key(engine, "key-a", enabled=False)
    clock.now += 0.5
    assert cache.get(b"b") == "row key-b"  # reads the feed: key-a changed
    cache.put(b"a", "key-a", (), "acme", "stale row key-a", generation)
    assert cache.get(b"a") is None


def test_a_copy_is_dropped_after_the_max_age_though_nothing_changed(engine: Engine) -> None:
    clock = Clock()
    cache: RowCache[str] = RowCache(lambda: engine, size=10, ttl=0.5, max_age=2, clock=clock)
    cache.put(b"a", "key-a", (), "acme", "row a", cache.generation())
    clock.now += 1.9
    assert cache.get(b"a") == "row a"
    clock.now += 0.1
    assert cache.get(b"a") is None


# --- The failed-check budgets ---


@pytest.fixture
def budgets(tmp_path: Path) -> FailedCheckBudgets:
    """3 checks a minute per key id and client, 5 per key id, in a SQLite windows' file."""
    windows = SqliteWindows(tmp_path / "budget-windows")
    return FailedCheckBudgets(parse("3/minute"), parse("5/minute"), lambda: windows)


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(NOON, tick=False) as traveller:
        yield traveller


def test_a_clients_budget_is_spent_then_refused_then_refilled_after_its_retry_after(
    budgets: FailedCheckBudgets, clock: time_machine.Traveller
) -> None:
    taken = [budgets.take("key1", "10.6.6.6") for _ in range(4)]
    assert taken[:3] == [None] * 3
    retry_after = taken[3]
    assert retry_after is not None and 60 <= retry_after <= 66  # a minute, and at most a slot late
    assert budgets.take("key1", "10.6.6.6") is not None  # a refusal spends nothing
    clock.shift(retry_after - 1)
    assert budgets.take("key1", "10.6.6.6") is not None
    clock.shift(1)
    assert budgets.take("key1", "10.6.6.6") is None


def test_a_spent_client_leaves_the_rest_of_the_keys_budget_to_others(
    budgets: FailedCheckBudgets, clock: time_machine.Traveller
) -> None:
    for _ in range(10):
        budgets.take("key1", "10.6.6.6")
    assert [budgets.take("key1", f"10.0.0.{n}") for n in range(2)] == [None, None]  # 3 + 2: the key's 5
    assert budgets.take("key1", "10.0.0.9") is not None
    assert budgets.take("key2", "10.6.6.6") is None  # another key id has budgets of its own


def test_a_check_given_back_can_be_taken_again(budgets: FailedCheckBudgets, clock: time_machine.Traveller) -> None:
    for _ in range(3):
        assert budgets.take("key1", "10.0.0.1") is None
    budgets.give_back("key1", "10.0.0.1")
    assert budgets.take("key1", "10.0.0.1") is None
    assert budgets.take("key1", "10.0.0.1") is not None


class BrokenWindows:
    """A shared store that cannot be reached (Redis down)."""

    def hit(self, key: str, limit: int, period: int) -> Hit:
        raise WindowStorageError("down")

    def give_back(self, key: str, period: int) -> None:
        raise WindowStorageError("down")

    def answers(self) -> bool:
        return False


def test_without_the_shared_store_a_worker_still_bounds_the_checks(clock: time_machine.Traveller) -> None:
    budgets = FailedCheckBudgets(parse("3/minute"), parse("5/minute"), BrokenWindows)
    assert [budgets.take("key1", "10.6.6.6") is None for _ in range(4)] == [True] * 3 + [False]
    clock.shift(66)
    assert budgets.take("key1", "10.6.6.6") is None


# --- The quota ---


def quota_of(engine: Engine, on_exhausted: Callable[[Session, str], None] | None = None) -> Quota:
    return Quota(lambda: engine, on_exhausted, size=10)


def test_uses_are_taken_down_to_zero_and_running_out_is_announced_once(engine: Engine) -> None:
    record = add_key(engine, "key-a", remaining=3)
    told: list[str] = []
    quota = quota_of(engine, lambda session, key_id: told.append(key_id))
    assert [quota.take_one(record) for _ in range(5)] == [(True, 2), (True, 1), (True, 0), (False, 0), (False, 0)]
    assert told == ["key-a"]


def test_a_key_made_unlimited_since_its_row_was_read_is_not_refused(engine: Engine) -> None:
    record = add_key(engine, "key-a", remaining=1)
    change_key(engine, "key-a", remaining=None)
    assert [quota_of(engine).take_one(record) for _ in range(2)] == [(True, None)] * 2


def test_a_rotated_keys_uses_are_its_successors(engine: Engine) -> None:
    successor = add_key(engine, "key-new", remaining=2)
    rotated = add_key(engine, "key-old", remaining=50, quota_key_id="key-new")
    quota = quota_of(engine)
    assert [quota.take_one(rotated), quota.take_one(successor), quota.take_one(rotated)] == [
        (True, 1),
        (True, 0),
        (False, 0),
    ]


@pytest.mark.parametrize(
    "interval, not_yet, due",
    [
        ("daily", NOON.replace(hour=23, minute=59), NOON + timedelta(hours=12, minutes=1)),
        ("monthly", NOON + timedelta(days=1), NOON.replace(month=4, day=1, hour=0, minute=1)),
    ],
)
def test_a_refill_comes_once_its_interval_has_begun(
    engine: Engine, clock: time_machine.Traveller, interval: str, not_yet: datetime, due: datetime
) -> None:
    record = add_key(engine, "key-a", remaining=1, refill_amount=3, refill_interval=interval, refilled_at=NOON)
    quota = quota_of(engine)
    assert [quota.take_one(record) for _ in range(2)] == [(True, 0), (False, 0)]
    clock.move_to(not_yet)
    assert quota.take_one(record) == (False, 0)
    clock.move_to(due)
    assert [quota.take_one(record) for _ in range(4)] == [(True, 2), (True, 1), (True, 0), (False, 0)]


def test_threads_taking_at_once_never_take_more_than_is_left(engine: Engine) -> None:
    record = add_key(engine, "key-a", remaining=40)
    quota = quota_of(engine)
    start = threading.Barrier(8)
    results: list[tuple[bool, int | None]] = []

    def take() -> None:
        start.wait(10)
        mine = [quota.take_one(record) for _ in range(10)]
        results.extend(mine)  # list.extend is atomic

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 80
    # Each count from 39 down to 0 handed out exactly once, then only refusals.
    assert sorted(remaining for taken, remaining in results if taken) == list(range(40))
    assert results.count((False, 0)) == 40
    with Session(engine) as session:
        assert session.scalar(sqlalchemy.select(ApiKey.remaining)) == 0


@pytest.mark.parametrize("remaining, taken, updates", [(20, list(range(12, 20)), 2), (5, list(range(5)), 1 + 1 + 7)])
def test_uses_asked_for_while_the_database_is_busy_are_taken_together_and_exactly(
    engine: Engine, remaining: int, taken: list[int], updates: int
) -> None:
    # The first take waits for the database; the 7 that come meanwhile are one group, whose 7 uses
    # are taken in one statement (20 left) or, fewer being left than it wants (5), each in turn.
    record = add_key(engine, "key-a", remaining=remaining)
    quota = quota_of(engine)
    statements: list[str] = []
    sqlalchemy.event.listen(engine, "connect", lambda connection, _: connection.set_trace_callback(statements.append))
    results: list[tuple[bool, int | None]] = []
    blocker = engine.raw_connection()
    blocker.cursor().execute("BEGIN IMMEDIATE")  # the database's write lock, held
    threads = started_in_order(lambda: results.append(quota.take_one(record)), 8, gap=0.05)
    assert results == []
    blocker.rollback()
    blocker.close()
    for thread in threads:
        thread.join(30)
    assert sorted(left for was_taken, left in results if was_taken) == taken
    assert results.count((False, 0)) == 8 - len(taken)
    assert sum(statement.startswith("UPDATE") for statement in statements) == updates
    with Session(engine) as session:
        assert session.scalar(sqlalchemy.select(ApiKey.remaining)) == remaining - len(taken)


# --- bcrypt, counted where the budget is spent (through an app) ---


@pytest.fixture
def budgeted_app(database_url: str) -> Iterator[Flask]:
    with migrated_app(
        database_url,
        KEYSERVICE_FAILED_VERIFY_LIMIT_PER_CLIENT="3/minute",
        KEYSERVICE_FAILED_VERIFY_LIMIT_PER_KEY="5/minute",
    ) as app:
        yield app


@pytest.fixture
def bcrypt_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The hashes bcrypt checks a secret against from now on, one per check (whoever runs it)."""
    checked: list[bytes] = []
    checkpw = bcrypt.checkpw

    def counted(password: bytes, hashed_password: bytes) -> bool:
        checked.append(hashed_password)
        return checkpw(password, hashed_password)

    monkeypatch.setattr(bcrypt, "checkpw", counted)
    return checked


def test_a_clients_spent_budget_refuses_wrong_secrets_without_bcrypt(
    budgeted_app: Flask, bcrypt_checks: list[bytes]
) -> None:
    _, key = issue(budgeted_app)
    with budgeted_app.app_context():
        spent = [verify_key(wrong_secret(key, n), client="10.6.6.6").code for n in range(3)]
        assert spent == [Outcome.NOT_FOUND] * 3 and len(bcrypt_checks) == 3
        refused = [verify_key(wrong_secret(key, n), client="10.6.6.6").code for n in range(3, 13)]
        assert refused == [Outcome.RATE_LIMITED] * 10
        assert len(bcrypt_checks) == 3
        assert verify_key(key, client="10.0.0.1").valid  # from elsewhere the real key still gets its check
        assert len(bcrypt_checks) == 4


def test_a_keys_spent_budget_refuses_wrong_secrets_from_any_address_without_bcrypt(
    budgeted_app: Flask, bcrypt_checks: list[bytes]
) -> None:
    _, key = issue(budgeted_app)
    with budgeted_app.app_context():
        codes = [verify_key(wrong_secret(key, n), client=f"10.0.0.{n}").code for n in range(12)]
    assert codes == [Outcome.NOT_FOUND] * 5 + [Outcome.RATE_LIMITED] * 7
    assert len(bcrypt_checks) == 5
