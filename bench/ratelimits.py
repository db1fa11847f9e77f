"""Rate limits and quotas beside Flask-Limiter, in one run, each against what it is judged by.

Run from the repository root (``make bench`` runs it after ``bench.scale_out``)::

    .venv/bin/python -m bench.ratelimits

One run starts a throwaway Redis and PostgreSQL (durable settings: fsync on) on
127.0.0.1 (``tests/services.py``) and six gunicorns (2 gthread workers each), all pinned to
one half of the cores with wrk on the other (``cores.py``), and measures with ``wrk``:

- a bare Flask view, and the same view behind Flask-Limiter (moving window on the
  same Redis, its headers on, keyed by the ``Authorization`` header;
  ``bench/flask_limiter_app.py``), each served as a Flask app is on its own (plain
  gunicorn, its access log on: ``service.plain_gunicorn``);
- keyservice on SQLite with the embedded windows: ``/unprotected``, a key with a rate
  limit, a key with ``remaining``;
- keyservice on SQLite with the windows in Redis: a key with a rate limit;
- keyservice on PostgreSQL: ``/unprotected`` and a key with ``remaining``.

Every limit is far above the load: what is measured is the bookkeeping. Goals:
keyservice's rate-limited key on Redis >= 1.5 x Flask-Limiter; on the embedded
default, a rate-limited key >= 0.75 and a key with ``remaining`` >= 0.70 of
keyservice's unprotected route; on PostgreSQL, a key with ``remaining`` >= 0.50
of it (and, with no goal, Flask-Limiter against the bare view). Each is a pair of runs back
to back, in alternating order, for at least 5 rounds: the median of the pair ratios, with
min and max (``compare.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from tests.servers import gunicorn, service_environment
from tests.services import postgres_server, redis_server

from .compare import Pair, Variant, measure_pairs
from .cores import pin_servers
from .report import print_reproduce, report_server_log
from .scale_out import create_database
from .service import PROTECTED, UNPROTECTED, WORKERS, create_keys, flask, plain_gunicorn
from .wrk import write_lua

# (variant, against which variant, goal): each a pair of runs back to back (compare.py)
GOALS = [
    ("Flask-Limiter, Redis", "bare Flask view", None),  # what Flask-Limiter costs the view: no goal
    ("keyservice rate limit, Redis", "Flask-Limiter, Redis", 1.5),
    ("keyservice rate limit, embedded", "keyservice unprotected, SQLite", 0.75),
    ("keyservice remaining, embedded", "keyservice unprotected, SQLite", 0.70),
    ("keyservice remaining, PostgreSQL", "keyservice unprotected, PostgreSQL", 0.50),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all variants")
    parser.add_argument("--seconds", type=int, default=4, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=8, help="connections of each wrk run")
    args = parser.parse_args(argv)
    print(pin_servers())

    with tempfile.TemporaryDirectory(prefix="keyservice-bench-") as temp, ExitStack() as stack:
        tmp = Path(temp)
        print(
            f"setting up: Redis, PostgreSQL (fsync on), SQLite in {tmp}; keys at bcrypt cost 12; "
            f"6 gunicorns with {WORKERS} workers each"
        )
        redis_url = stack.enter_context(redis_server(tmp / "redis.log"))
        postgres = stack.enter_context(postgres_server(fast=False))
        logs: list[Path] = []

        def serve(env: dict[str, str], name: str) -> str:
            logs.append(tmp / f"gunicorn-{name}.log")
            return stack.enter_context(gunicorn(env, logs[-1], workers=WORKERS))

        def serve_flask_app(app: str, name: str) -> str:
            logs.append(tmp / f"gunicorn-{name}.log")
            return stack.enter_context(plain_gunicorn(app, limiter_env, logs[-1]))

        try:
            sqlite = service_environment(f"sqlite:///{tmp / 'bench.db'}")
            flask(sqlite, "db", "upgrade")
            _, ratelimited, remaining = create_keys(sqlite)
            on_postgres = service_environment(create_database(postgres, "bench"))
            flask(on_postgres, "db", "upgrade")
            _, _, remaining_on_postgres = create_keys(on_postgres)

            limiter_env = service_environment(f"sqlite:///{tmp / 'unused.db'}", BENCH_REDIS_URL=redis_url)
            bare = serve_flask_app("bench.flask_limiter_app:bare_app", "bare-flask")
            limiter = serve_flask_app("bench.flask_limiter_app:app", "flask-limiter")
            embedded = serve(sqlite, "embedded")
            with_redis = serve(
                service_environment(sqlite["DATABASE_URL"], KEYSERVICE_RATELIMIT_STORAGE_URL=redis_url), "redis"
            )
            postgresql = serve(on_postgres, "postgresql")

            scripts = {
                name: write_lua(tmp / f"{name}.lua", key)
                for name, key in (
                    ("anonymous", None),
                    ("limiter", "bench"),
                    ("ratelimited", ratelimited),
                    ("remaining", remaining),
                    ("remaining-postgres", remaining_on_postgres),
                )
            }
            variants = {
                label: Variant(label, url, scripts[script], None)
                for label, url, script in (
                    ("bare Flask view", bare + "/bare", "anonymous"),
                    ("Flask-Limiter, Redis", limiter + "/limited", "limiter"),
                    ("keyservice unprotected, SQLite", embedded + UNPROTECTED, "anonymous"),
                    ("keyservice rate limit, embedded", embedded + PROTECTED, "ratelimited"),
                    ("keyservice remaining, embedded", embedded + PROTECTED, "remaining"),
                    ("keyservice rate limit, Redis", with_redis + PROTECTED, "ratelimited"),
                    ("keyservice unprotected, PostgreSQL", postgresql + UNPROTECTED, "anonymous"),
                    ("keyservice remaining, PostgreSQL", postgresql + PROTECTED, "remaining-postgres"),
                )
            }
            measure_pairs(
                [Pair(variants[label], variants[against], goal) for label, against, goal in GOALS],
                rounds=args.rounds,
                seconds=args.seconds,
                connections=args.connections,
                title="rate limits and quotas",
            )
        finally:
            for log in logs:
                report_server_log(log)

    print_reproduce("bench.ratelimits", sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
