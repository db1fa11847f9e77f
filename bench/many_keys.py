"""Many active keys: a random key of 2,000 per request against one hot key, on PostgreSQL, all warm.

Run from the repository root::

    .venv/bin/python -m bench.many_keys

One run starts a throwaway PostgreSQL (fsync on) on 127.0.0.1, creates 2,000
keys, serves them with gunicorn (2 workers, every setting the default: the
change feed read every 0.5 s, the checked keys in the machine's LMDB file) and
loads it with ``wrk``, alternating round by round: one hot key (the baseline)
against one of the 2,000 keys at random for each request, both through the same
wrk Lua script (picking from a list of one key, or of 2,000). Before the rounds every key
is sent once (its bcrypt check, once for the machine), then ``WARM_UP_SECONDS`` of random keys let each worker meet
them (warm). Goal: random >= 0.9 x hot key.

The 2,000 keys are hashed at bcrypt cost 4, so that the warm-up takes seconds,
not minutes: once warm no request runs bcrypt, and the run prints
``keyservice_bcrypt_checks_total`` before and after the rounds to show it.
Only ratios within one run are meaningful; see ``bench/protected_route.py``.
The keys exist only in the temp dir (the Lua script, mode 0600).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from keyservice import create_app
from keyservice.app import db
from keyservice.core.crypto import generate_key
from keyservice.core.state import current_state
from keyservice.management.store import create_key
from tests.helpers import bearer
from tests.servers import gunicorn, labelled_metric, request, service_environment
from tests.services import postgres_server

from .compare import Variant, measure_overhead
from .cores import on_load_cores, pin_servers
from .report import print_reproduce, report_server_log
from .scale_out import create_database
from .service import PROTECTED, WORKERS, flask
from .wrk import run_wrk

KEYS = 2_000
GOAL = 0.9
WARM_UP_SECONDS = 10

_RANDOM_KEY = """
wrk.method = "POST"
local keys = {%s}
request = function()
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. keys[math.random(#keys)]})
end
"""


def make_keys(database_url: str, count: int) -> list[str]:
    """Create ``count`` keys at bcrypt cost 4 (see the module docstring); return them."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        settings = current_state().settings
        keys = []
        for n in range(count):
            _, key = create_key(
                db.session,
                settings,
                name=f"many {n}",
                external_client_id=f"client-{n % 100}",
                new=generate_key(settings.key_prefix, 4),
            )
            keys.append(key)
        db.session.commit()
        db.engine.dispose()
    return keys


def write_random_lua(path: Path, keys: list[str]) -> Path:
    """A wrk script that POSTs with a key picked at random among ``keys`` for each request."""
    path.write_text(_RANDOM_KEY % ", ".join(f'"{key}"' for key in keys))
    path.chmod(0o600)
    return path


def bcrypt_checks(base: str) -> int:
    return int(sum(labelled_metric(base, "keyservice_bcrypt_checks_total", "result").values()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (hot key, random key)")
    parser.add_argument("--seconds", type=int, default=4, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=8, help="connections of each wrk run")
    args = parser.parse_args(argv)
    print(pin_servers())

    with tempfile.TemporaryDirectory(prefix="keyservice-bench-") as temp, ExitStack() as stack:
        tmp = Path(temp)
        print(f"setting up: PostgreSQL (fsync on), {KEYS:,} keys, gunicorn with {WORKERS} workers, default settings")
        postgres = stack.enter_context(postgres_server(fast=False))
        env = service_environment(create_database(postgres, "many"))
        flask(env, "db", "upgrade")
        keys = make_keys(env["DATABASE_URL"], KEYS)
        log = tmp / "gunicorn.log"
        try:
            base = stack.enter_context(gunicorn(env, log, workers=WORKERS))
            random_lua = write_random_lua(tmp / "random.lua", keys)
            with ThreadPoolExecutor(args.connections, initializer=on_load_cores) as pool:
                statuses = set(pool.map(lambda key: request(base + PROTECTED, "POST", bearer(key)).status, keys))
            run_wrk(base + PROTECTED, random_lua, connections=args.connections, seconds=WARM_UP_SECONDS)
            checked = bcrypt_checks(base)
            print(
                f"  warm-up (each key once: {sorted(statuses)}; {WARM_UP_SECONDS} s of random keys):"
                f" {checked} bcrypt checks"
            )
            # The same script for both, drawing from a list of one key: wrk's Lua per request
            # (it shares the cores) costs both variants alike.
            measure_overhead(
                [
                    Variant("one hot key", base + PROTECTED, write_random_lua(tmp / "hot.lua", keys[:1]), 1.0),
                    Variant(f"random key of {KEYS:,}", base + PROTECTED, random_lua, GOAL),
                ],
                rounds=args.rounds,
                seconds=args.seconds,
                connections=args.connections,
                title="many keys on PostgreSQL, all warm",
            )
            print(f"  bcrypt checks during the rounds: {bcrypt_checks(base) - checked}")
        finally:
            report_server_log(log)

    print_reproduce("bench.many_keys", sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
