"""The SQLite writers' queue holds between the threads of one process too (gunicorn's gthread)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import sqlalchemy

from keyservice.rawsql import raw_transaction


def test_threads_of_one_process_write_one_at_a_time(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    first_inside = threading.Event()
    moments: dict[str, float] = {}

    def first() -> None:
        with raw_transaction(engine):
            first_inside.set()
            time.sleep(0.3)
            moments["first left"] = time.monotonic()

    def second() -> None:
        first_inside.wait(5)
        with raw_transaction(engine):
            moments["second entered"] = time.monotonic()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    engine.dispose()
    assert moments["second entered"] >= moments["first left"]


def test_parameters_are_rewritten_for_psycopg_around_casts_literals_and_percent_signs(database_url: str) -> None:
    engine = sqlalchemy.create_engine(database_url)
    try:
        with raw_transaction(engine, writes=False) as transaction:
            row = transaction.execute("SELECT :value, 'a:b ''c'' 50%', CAST(:number AS INTEGER) + 1",
                                      {"value": "x", "number": "41"}).fetchone()
        if engine.dialect.name == "postgresql":
            with raw_transaction(engine, writes=False) as transaction:
                assert transaction.execute("SELECT :number::int % 7", {"number": "41"}).fetchone() == (6,)
    finally:
        engine.dispose()
    assert tuple(row) == ("x", "a:b 'c' 50%", 42)
