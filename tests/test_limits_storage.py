"""What rate limits and quotas keep, through gunicorn: space that does not grow with the
limit, and uses that a crash of PostgreSQL never takes from the customer."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
import sqlalchemy

from keyservice.core.machinefiles import path_for

from .helpers import bearer, stored_windows
from .load import Timed, hammer, outcome
from .servers import KeysCli, flask_cli, gunicorn, service_environment
from .services import postgres_server

pytestmark = pytest.mark.slow  # starts the service, servers or a browser


def rows_per_table(database_url: str) -> dict[str, int]:
    engine = sqlalchemy.create_engine(database_url, poolclass=sqlalchemy.NullPool)
    try:
        with engine.connect() as connection:
            return {
                table: connection.execute(sqlalchemy.text(f'SELECT count(*) FROM "{table}"')).scalar_one()
                for table in sqlalchemy.inspect(connection).get_table_names()
            }
    finally:
        engine.dispose()


def windows_entries(database_url: str) -> int:
    """The embedded windows held, as another process reading the file sees them."""
    return stored_windows(path_for(database_url))


def test_a_million_per_hour_hammered_for_20_s_keeps_a_few_rows_and_bytes(tmp_path: Path, redis_url: str) -> None:
    """Both storages at once, each behind its own gunicorn on the same SQLite database and key."""
    database_url = f"sqlite:///{tmp_path / 'keys.db'}"
    embedded = service_environment(database_url, KEYSERVICE_BCRYPT_ROUNDS="4")
    with_redis = service_environment(
        database_url, KEYSERVICE_BCRYPT_ROUNDS="4", KEYSERVICE_RATELIMIT_STORAGE_URL=redis_url
    )
    assert flask_cli(embedded, "db", "upgrade").returncode == 0
    _, key = KeysCli(embedded).create_key("--ratelimit", "1000000/1h")
    redis_client = redis.Redis.from_url(redis_url)

    def hammered(seconds: float) -> tuple[list[str], list[Timed]]:
        # The servers stop before Redis is measured: their connections' buffers go with them.
        with ExitStack() as servers:
            urls = [
                servers.enter_context(gunicorn(environ, tmp_path / f"{name}.log")) + "/protected-with-key"
                for name, environ in (("embedded", embedded), ("redis", with_redis))
            ]
            return urls, hammer(urls, bearer(key), threads=8, seconds=seconds)

    hammered(1)  # what Redis allocates once (its Lua, its clients' tables) is no window's
    rows_before = rows_per_table(database_url)
    memory_before = redis_client.info("memory")["used_memory"]
    urls, answers = hammered(20)

    for url in urls:
        served = [outcome(timed.response) for timed in answers if timed.url == url]
        assert set(served) == {(200, None)} and len(served) > 500, (url, len(served))
    grown = sum(rows_per_table(database_url).values()) - sum(rows_before.values())
    assert grown <= 100, (rows_before, rows_per_table(database_url))
    assert windows_entries(database_url) == 1
    memory_grown = redis_client.info("memory")["used_memory"] - memory_before
    redis_client.close()
    assert memory_grown < 64 * 1024, f"{len(answers)} requests grew Redis by {memory_grown} bytes"


def test_a_postgresql_crash_gives_back_at_most_the_last_seconds_uses_and_never_takes_one(tmp_path: Path) -> None:
    uses = 1_000_000
    with postgres_server(fast=False) as server:  # fsync on: the durability of production
        server.administer('CREATE DATABASE "crash"')
        environ = service_environment(server.url("crash"), KEYSERVICE_BCRYPT_ROUNDS="4")
        assert flask_cli(environ, "db", "upgrade").returncode == 0
        keys = KeysCli(environ)
        key_id, key = keys.create_key("--remaining", str(uses))
        with gunicorn(environ, tmp_path / "gunicorn.log") as base:
            crashed = threading.Event()
            crashed_at: list[float] = []

            def crash_in_the_middle() -> None:
                time.sleep(3)
                crashed_at.append(time.monotonic())
                server.crash()
                crashed.set()

            crasher = threading.Thread(target=crash_in_the_middle)
            crasher.start()
            answers = hammer(base + "/protected-with-key", bearer(key), threads=8, seconds=4)
            crasher.join()
            server.start()

        served = [timed for timed in answers if timed.response.status == 200]
        assert {outcome(timed.response) for timed in answers} <= {(200, None), (503, "UNAVAILABLE")}
        assert len(served) > 50 and crashed.is_set()
        remaining = keys.show(key_id)["remaining"]
        assert isinstance(remaining, int)
        # Never taken from the customer: every use that is still counted was answered 200.
        assert remaining >= uses - len(served)
        # At most the uses of the last second before the crash came back.
        last_second = [timed for timed in served if timed.received > crashed_at[0] - 1.0]
        assert remaining <= uses - len(served) + len(last_second), (remaining, len(served), len(last_second))
