"""The protected route on PostgreSQL + Redis, and verification with 1,000,000 keys against 10.

Run from the repository root (``make bench`` runs it after ``bench.protected_route``)::

    .venv/bin/python -m bench.scale_out

One run starts a throwaway PostgreSQL (durable settings: fsync on) and Redis on
127.0.0.1, the way the tests do (``tests/services.py``), and gunicorn instances
with 2 sync workers each, loaded with ``wrk``. It prints figures; it asserts
nothing.

1. Overhead on PostgreSQL + Redis (``KEYSERVICE_RATELIMIT_STORAGE_URL=redis://``):
   ``POST /unprotected`` against ``POST /protected-with-key`` with a plain valid
   key (goal: >= 0.85 x unprotected), a key with a rate limit far above the load
   (counted in Redis) and a key with a large ``remaining`` (one ``UPDATE`` in
   PostgreSQL per request).
2. Growth: the same valid key against two databases, one holding 10 keys and one
   1,000,000 (bulk-inserted rows with one shared bcrypt hash: their secrets are
   never checked), each served by its own gunicorn, alternating round by round.
   Twice: with the default 0.5 s row cache, and with ``KEYSERVICE_CACHE_TTL=0``,
   where every request reads its key's row (and its roles). Goal: the 1,000,000
   key database >= 0.95 x the 10 key one.

Only ratios within one run are meaningful; see ``bench/protected_route.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import sqlalchemy

from tests.servers import gunicorn, service_environment
from tests.services import PostgresServer, postgres_server, redis_server

from .compare import Variant, measure_overhead
from .cores import pin_servers
from .protected_route import overhead_variants
from .report import print_reproduce, report_server_log
from .service import PROTECTED, WORKERS, create_keys, flask
from .wrk import write_lua

SCALE_OUT_GOAL = 0.85
GROWTH_GOAL = 0.95
MANY = 1_000_000

# The bulk keys: ids that can't clash with real ones (real ids are base62 of 16, these are
# "bulk" and 12 digits), any bcrypt hash, and clients spread over 1,000.
_BULK_INSERT = """
INSERT INTO keyservice_api_keys (id, start, secret_hash, name, external_client_id, scopes, meta, enabled,
                                 created_at, updated_at, roles)
SELECT 'bulk' || lpad(n::text, 12, '0'), 'sk_bulk', :hash, 'bulk ' || n, 'client-' || (n % 1000),
       '[]', '{}', true, now(), now(), '[]'
FROM generate_series(1, :count) AS n
"""


def create_database(server: PostgresServer, name: str) -> str:
    """A new, empty database on ``server``; its URL."""
    server.administer(f'CREATE DATABASE "{name}"')
    return server.url(name)


def add_bulk_keys(url: str, count: int) -> float:
    """Insert ``count`` keys into the database at ``url``; return the seconds it took."""
    started = time.monotonic()
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool)
    with engine.begin() as connection:
        some_hash = connection.execute(sqlalchemy.text("SELECT secret_hash FROM keyservice_api_keys LIMIT 1")).scalar()
        connection.execute(sqlalchemy.text(_BULK_INSERT), {"hash": some_hash, "count": count})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sqlalchemy.text("VACUUM ANALYZE keyservice_api_keys"))
    engine.dispose()
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each comparison")
    parser.add_argument("--seconds", type=int, default=4, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=8, help="connections of each wrk run")
    parser.add_argument("--keys", type=int, default=MANY, help="keys in the large database")
    args = parser.parse_args(argv)
    print(pin_servers())

    with tempfile.TemporaryDirectory(prefix="keyservice-bench-") as temp, ExitStack() as stack:
        tmp = Path(temp)
        print(
            "setting up: PostgreSQL (fsync on) and Redis on 127.0.0.1, keys at bcrypt cost 12, "
            f"gunicorn with {WORKERS} sync workers per instance"
        )
        postgres = stack.enter_context(postgres_server(fast=False))
        redis_url = stack.enter_context(redis_server(tmp / "redis.log"))
        logs: list[Path] = []

        def environment(url: str, **settings: str) -> dict[str, str]:
            """The service's environment on the database at ``url``, which it migrates."""
            env = service_environment(url, KEYSERVICE_RATELIMIT_STORAGE_URL=redis_url, **settings)
            flask(env, "db", "upgrade")
            return env

        def serve(env: dict[str, str], name: str) -> str:
            """Start a gunicorn (stopped at the end of the run); its base URL."""
            logs.append(tmp / f"gunicorn-{name}.log")
            return stack.enter_context(gunicorn(env, logs[-1], workers=WORKERS))

        try:
            env = environment(create_database(postgres, "scale"))
            base = serve(env, "scale")
            measure_overhead(
                overhead_variants(base, tmp, *create_keys(env), overhead_goal=SCALE_OUT_GOAL, limits_goal=None),
                rounds=args.rounds,
                seconds=args.seconds,
                connections=args.connections,
                title="1. overhead on PostgreSQL + Redis",
            )

            databases: list[tuple[str, str, str]] = []  # label, URL, its one real key
            for count in (10, args.keys):
                url = create_database(postgres, f"growth_{count}")
                env = environment(url)
                key = flask(env, "keys", "create", "--name", "bench", "--client-id", "bench").strip()
                seconds = add_bulk_keys(url, count - 1)
                print(f"\n  database of {count:,} keys: {count - 1:,} inserted in bulk in {seconds:.1f} s")
                databases.append((f"{count:,} keys", url, key))
            for ttl in ("0.5", "0"):
                variants = []
                for label, url, key in databases:
                    name = f"{label.split()[0].replace(',', '')}-ttl-{ttl}"
                    base = serve(environment(url, KEYSERVICE_CACHE_TTL=ttl), name)
                    variants.append(Variant(label, base + PROTECTED, write_lua(tmp / f"{name}.lua", key), GROWTH_GOAL))
                measure_overhead(
                    variants,
                    rounds=args.rounds,
                    seconds=args.seconds,
                    connections=args.connections,
                    title=f"2. growth, KEYSERVICE_CACHE_TTL={ttl}",
                )
        finally:
            for log in logs:
                report_server_log(log)

    print_reproduce("bench.scale_out", sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
