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
