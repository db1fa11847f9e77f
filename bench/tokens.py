"""Access tokens against keys on one protected route, in one run.

Run from the repository root::

    .venv/bin/python -m bench.tokens

One run builds a throwaway SQLite database in a temp dir, creates a key with the real
bcrypt cost (every ``KEYSERVICE_*`` variable dropped: the defaults apply), starts
gunicorn with the repo's gunicorn.conf.py (2 gthread workers) and measures:

1. Throughput. ``POST /protected-with-key`` with an access token of the key against
   the same route with the key itself, alternating rounds of wrk, medians compared.
   Each worker checks the key with bcrypt once and the token's signature once (the
   warm-up), then remembers both. Goal: token req/s >= 0.95 x key req/s.
2. A fresh token's first request. Tokens fetched beforehand from ``/oauth/token``,
   each sent once, alternating with requests with the (cached) key, one after another
   on two kept-alive connections: the token's first request checks its signature
   (no bcrypt); the key's is the cached path. Their p50 and p99. Goal: the fresh
   token's p99 within 2 x the cached key's (a bcrypt check would be 100 x).

Only ratios within one run are meaningful (the machine is shared and noisy). The
key and the tokens exist only in the temp dir's wrk scripts and in this process.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from tests.servers import gunicorn, service_environment
from tests.tokens import access_token

from .compare import Variant, measure_overhead
from .cores import on_load_cores, pin_servers
from .report import print_reproduce, report_server_log
from .service import PROTECTED, WORKERS, flask, post
from .wrk import write_lua

THROUGHPUT_GOAL = 0.95
FIRST_REQUEST_GOAL = 2.0


def timed_posts(base: str, credentials: Sequence[str]) -> list[float]:
    """POST each credential once, in order, on one kept-alive connection; each request's ms."""
    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=10)
    times = []
    try:
        for credential in credentials:
            started = time.perf_counter()
            connection.request("POST", PROTECTED, headers={"Authorization": f"Bearer {credential}"})
            response = connection.getresponse()
            response.read()
            times.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise RuntimeError(f"a request was refused with {response.status}")
    finally:
        connection.close()
    return times


def percentile(values: list[float], n: int) -> float:
    return statistics.quantiles(values, n=100)[n - 1]


def measure_first_requests(base: str, key: str, count: int) -> None:
    """Fresh tokens' first requests against the cached key's, alternating in blocks of 50."""
    on_load_cores()  # this thread is the client from here on; the servers are started already
    print(f"\n== 2. first request with a fresh token against the cached key: {count} of each, alternating")
    started = time.perf_counter()
    tokens = [access_token(base, key) for _ in range(count)]
    print(f"  {count} tokens from /oauth/token in {time.perf_counter() - started:.1f} s")
    fresh: list[float] = []
    cached: list[float] = []
    for block in range(0, count, 50):
        fresh += timed_posts(base, tokens[block : block + 50])
        cached += timed_posts(base, [key] * len(tokens[block : block + 50]))
    for label, times in (("fresh token (first use)", fresh), ("cached key", cached)):
        print(
            f"  {label:26} p50 {percentile(times, 50):6.2f} ms  p99 {percentile(times, 99):6.2f} ms"
            f"  max {max(times):6.2f} ms"
        )
    ratio = percentile(fresh, 99) / percentile(cached, 99)
    within = "met" if ratio <= FIRST_REQUEST_GOAL else "MISSED"
    print(f"  fresh token p99 / cached key p99: {ratio:.2f}  (goal <= {FIRST_REQUEST_GOAL:.1f}: {within})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of (key, token)")
    parser.add_argument("--seconds", type=int, default=4, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=8, help="connections of each wrk run")
    parser.add_argument("--fresh", type=int, default=2000, help="fresh tokens sent once each")
    args = parser.parse_args(argv)
    print(pin_servers())

    with tempfile.TemporaryDirectory(prefix="keyservice-bench-") as temp:
        tmp = Path(temp)
        env = service_environment(f"sqlite:///{tmp / 'bench.db'}")
        print(f"setting up: SQLite in {tmp}, one key at bcrypt cost 12, gunicorn with {WORKERS} workers")
        flask(env, "db", "upgrade")
        key = flask(env, "keys", "create", "--name", "bench", "--client-id", "bench").strip()
        log = tmp / "gunicorn.log"
        try:
            with gunicorn(env, log, workers=WORKERS) as base:
                token = access_token(base, key)
                for credential in (key, token):
                    if post(base + PROTECTED, credential)[0] != 200:
                        raise RuntimeError(f"a valid credential was refused on {PROTECTED}")
                measure_overhead(
                    [
                        Variant("key", base + PROTECTED, write_lua(tmp / "key.lua", key), 1.0),
                        Variant("token", base + PROTECTED, write_lua(tmp / "token.lua", token), THROUGHPUT_GOAL),
                    ],
                    rounds=args.rounds,
                    seconds=args.seconds,
                    connections=args.connections,
                    title="1. throughput: the same route with the key and with its token",
                )
                measure_first_requests(base, key, args.fresh)
        finally:
            report_server_log(log)
    print_reproduce("bench.tokens", sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
