"""One statement on the request path: queued with the machine's other SQLite writers (the
threads of one gunicorn gthread worker too), committed on its own, driver-neutral."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import sqlalchemy

from keyservice.core.rawsql import execute_one, writers_queue


def test_a_write_waits_for_the_writer_ahead_of_it_in_the_same_process(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    execute_one(engine, "CREATE TABLE uses (n INTEGER)", {})
    first_inside = threading.Event()
    moments: dict[str, float] = {}

    def first() -> None:
        with writers_queue(engine):
            first_inside.set()
            time.sleep(0.3)
            moments["first left"] = time.monotonic()

    def second() -> None:
        first_inside.wait(5)
        execute_one(engine, "INSERT INTO uses VALUES (1)", {})
        moments["second written"] = time.monotonic()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert moments["second written"] >= moments["first left"]
    engine.dispose()


def test_a_statement_is_committed_on_its_own(database_url: str) -> None:
    engine = sqlalchemy.create_engine(database_url)
    try:
        execute_one(engine, "CREATE TABLE keyservice_test_uses (n INTEGER)", {})
        assert execute_one(engine, "INSERT INTO keyservice_test_uses VALUES (:n) RETURNING n", {"n": 3}) == (3,)
        with engine.connect() as other:  # another connection sees it: it is committed
            assert other.execute(sqlalchemy.text("SELECT n FROM keyservice_test_uses")).all() == [(3,)]
        assert execute_one(engine, "UPDATE keyservice_test_uses SET n = n - 1 WHERE n > 5 RETURNING n", {}) is None
    finally:
        execute_one(engine, "DROP TABLE keyservice_test_uses", {})
        engine.dispose()


def test_parameters_are_rewritten_for_psycopg_around_casts_literals_and_percent_signs(database_url: str) -> None:
    engine = sqlalchemy.create_engine(database_url)
    try:
        row = execute_one(
            engine,
            "SELECT :value, 'a:b ''c'' 50%', CAST(:number AS INTEGER) + 1",
            {"value": "x", "number": "41"},
            writes=False,
        )
        if engine.dialect.name == "postgresql":
            assert execute_one(engine, "SELECT :number::int % 7", {"number": "41"}, writes=False) == (6,)
    finally:
        engine.dispose()
    assert row == ("x", "a:b 'c' 50%", 42)
