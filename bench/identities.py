"""An identity's shared limits against a key's own: what two auto-applied identity rate limits cost.

Run from the repository root::

    .venv/bin/python -m bench.identities [--pairs 7 --seconds 4]

Two setups, each one gunicorn (the repo's gunicorn.conf.py, 2 gthread workers) on SQLite: the
windows in the embedded SQLite file, and in Redis. On each, two keys: one with a rate limit of its
own, and one of a customer whose identity has two auto-applied rate limits (every limit far
above the load: what is measured is the bookkeeping). The servers (gunicorn and Redis) run
on one half of the cores and wrk on the other (``cores.py``); the two keys are measured in
alternating pairs (A B, then B A, ...). Printed per setup: each pair, and the median of the
pair ratios with min and max, for req/s and for the workers' CPU time per request (from
/proc, steadier than throughput; ``compare.py``). Goal: the identity's key costs at most
1.3 x the key with its own limit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from tests.servers import gunicorn, service_environment
from tests.services import redis_server

from .compare import Variant, measure_overhead
from .cores import pin_servers
from .report import print_reproduce, report_server_log
from .service import PROTECTED, WORKERS, flask
from .wrk import write_lua

GOAL = 1.3


def compare(label: str, base: str, own: Path, shared: Path, args: argparse.Namespace) -> None:
    """Alternate the two keys in pairs; print each pair and the cost of the identity's key."""
    comparison = measure_overhead(
        [Variant("own", base + PROTECTED, own, None), Variant("identity", base + PROTECTED, shared, None)],
        rounds=args.pairs,
        seconds=args.seconds,
        connections=args.connections,
        title=label,
    )
    for name, cost in (
        ("req/s, own / identity", comparison.throughput("own", "identity")),
        ("worker CPU per request, identity / own", comparison.cpu("identity", "own")),
    ):
        met = "met" if cost.median <= GOAL else f"MISSED by {cost.median - GOAL:.2f}"
        print(f"  cost of the identity's key, {name}: x{cost}  (goal <= {GOAL}: {met})")


def setup_keys(env: dict[str, str]) -> tuple[str, str]:
    """A key with a rate limit of its own, and a key whose identity has two auto-applied ones."""
    flask(env, "db", "upgrade")
    own = flask(env, "keys", "create", "--name", "own", "--client-id", "solo", "--ratelimit", "1000000/10s").strip()
    limits = ["--ratelimit", "requests=1000000000/10s", "--ratelimit", "per-minute=1000000000/60s"]
    flask(env, "keys", "identities", "create", "team", *limits)
    shared = flask(env, "keys", "create", "--name", "shared", "--client-id", "team").strip()
    return own, shared


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7, help="alternating pairs per setup (at least 5)")
    parser.add_argument("--seconds", type=int, default=4, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=8, help="connections of each wrk run")
    args = parser.parse_args(argv)
    print(pin_servers())
    with tempfile.TemporaryDirectory(prefix="keyservice-bench-") as temp, ExitStack() as stack:
        tmp = Path(temp)
        redis_url = stack.enter_context(redis_server(tmp / "redis.log"))
        logs = []
        try:
            for label, storage in (
                ("embedded (SQLite)", {}),
                ("Redis", {"KEYSERVICE_RATELIMIT_STORAGE_URL": redis_url}),
            ):
                name = "redis" if storage else "embedded"
                env = service_environment(f"sqlite:///{tmp / (name + '.db')}", **storage)
                own, shared = setup_keys(env)
                logs.append(tmp / f"gunicorn-{name}.log")
                with gunicorn(env, logs[-1], workers=WORKERS) as base:
                    compare(
                        label,
                        base,
                        write_lua(tmp / f"{name}-own.lua", own),
                        write_lua(tmp / f"{name}-shared.lua", shared),
                        args,
                    )
        finally:
            for log in logs:
                report_server_log(log)
    print_reproduce("bench.identities", sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
