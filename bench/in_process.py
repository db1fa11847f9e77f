"""What a limit costs a request in one process, where no server or scheduler blurs it.

Run from the repository root::

    .venv/bin/python -m bench.in_process

The service (its default settings, a throwaway SQLite database, bcrypt cost 12) served by
Flask's test client in this process, pinned to one core (``cores.py``). Each round times,
in CPU time per request over ``--requests`` requests:

- ``POST /unprotected``, and ``POST /protected-with-key`` with a valid key, a key with a
  rate limit and a key with ``remaining`` (each far above the load);
- the rate-limited key with the windows' hit answered by a constant: the request without
  the store;
- ``/unprotected`` requests each followed by one store operation (a window's hit, a
  one-column upsert on a WAL file of its own, the same upsert on an in-memory database,
  a one-row read of the file), and those operations in a loop on their own: what an
  operation costs between two requests against what it costs with hot caches.

It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

from flask import Flask

from keyservice.core.machinefiles import path_for
from keyservice.verification.slidingwindow import Hit
from keyservice.verification.sqlitewindows import SqliteWindows
from tests.conftest import migrated_app
from tests.helpers import issue

from .cores import pin_servers
from .report import print_reproduce
from .service import PROTECTED, UNPROTECTED

LIMIT = 10**9
PERIOD = 60


def cpu_per_call(call: Callable[[], object], calls: int) -> float:
    """Microseconds of this process's CPU time per ``call()``, over ``calls`` calls."""
    start = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - start) / calls * 1e6


def after_a_request(request: Callable[[], object], operation: Callable[[], object]) -> Callable[[], object]:
    """A call that makes ``request``, then ``operation``."""
    return lambda: (request(), operation())


def store_operations(folder: Path, app: Flask) -> dict[str, Callable[[], object]]:
    """One call each of the operations timed between requests (see the module docstring)."""
    windows = SqliteWindows(path_for(app.config["SQLALCHEMY_DATABASE_URI"]))  # the requests' windows file
    on_file = sqlite3.connect(folder / "upserts", isolation_level=None)
    in_memory = sqlite3.connect(":memory:", isolation_level=None)
    for connection in (on_file, in_memory):
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("CREATE TABLE t (k TEXT PRIMARY KEY, c INTEGER) WITHOUT ROWID")
    upsert = "INSERT INTO t VALUES ('k', 1) ON CONFLICT DO UPDATE SET c = c + 1"
    return {
        "a window's hit": lambda: windows.hit("bench", LIMIT, PERIOD),
        "a one-column upsert, WAL file": lambda: on_file.execute(upsert),
        "a one-column upsert, in memory": lambda: in_memory.execute(upsert),
        "a one-row read, WAL file": lambda: on_file.execute("SELECT c FROM t WHERE k = 'k'").fetchall(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000, help="requests (or operations) of each figure")
    args = parser.parse_args(argv)
    print(pin_servers().split(",")[0].replace("servers", "this process"))
    with tempfile.TemporaryDirectory(prefix="keyservice-bench-") as temp:
        folder = Path(temp)
        with migrated_app(f"sqlite:///{folder / 'bench.db'}", TESTING=False, KEYSERVICE_CACHE_TTL=0.5) as app:
            client = app.test_client()
            keys = {
                "valid key": issue(app)[1],
                "rate-limited key": issue(app, ratelimit={"limit": LIMIT, "period": PERIOD})[1],
                "key with remaining": issue(app, remaining=LIMIT)[1],
            }

            def unprotected() -> object:
                return client.post(UNPROTECTED)

            def protected(key: str) -> Callable[[], object]:
                return lambda: client.post(PROTECTED, headers={"Authorization": f"Bearer {key}"})

            operations = store_operations(folder, app)
            answered = Hit(True, 1, time.time() + PERIOD)
            for round_number in range(1, args.rounds + 1):
                figures = {"/unprotected": cpu_per_call(unprotected, args.requests)}
                figures |= {name: cpu_per_call(protected(key), args.requests) for name, key in keys.items()}
                with mock.patch.object(SqliteWindows, "hit", lambda *asked: answered):
                    figures["rate-limited key, constant hit"] = cpu_per_call(
                        protected(keys["rate-limited key"]), args.requests
                    )
                for name, operation in operations.items():
                    between = cpu_per_call(after_a_request(unprotected, operation), args.requests)
                    figures[f"{name}, between requests"] = between - figures["/unprotected"]
                    figures[f"{name}, in a loop"] = cpu_per_call(operation, args.requests)
                print(f"round {round_number}")
                for name, microseconds in figures.items():
                    print(f"  {name:52} {microseconds:7.1f} us")
    print_reproduce("bench.in_process", sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
