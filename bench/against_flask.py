"""The service and ``@require_key`` against bare Flask.

Run from the repository root (``make bench`` runs it too)::

    .venv/bin/python -m bench.against_flask

Three gunicorns with 2 gthread workers of 64 threads each, on one throwaway SQLite database
per app (every ``KEYSERVICE_*`` variable dropped, so the defaults apply: bcrypt cost 12, usage
and metrics on), pinned to one half of the cores, wrk on the other (``cores.py``):

- ``bench.apps:bare``: Flask alone, ``POST /unprotected`` answering ``{"protected": false}``,
  served as a bare Flask app is: plain gunicorn with its own access log (one line per
  request, as the service writes its JSON line), nothing of the service's settings;
- the service (``wsgi:app``, the repo's gunicorn.conf.py): its ``POST /unprotected`` (goal
  >= 0.90 x bare Flask) and ``POST /protected-with-key`` with a valid key (goal >= 0.80 x
  bare Flask);
- ``bench.apps:create_host_app()`` with the repo's settings: a host app with keyservice
  installed, the same view undecorated and under ``@require_key()`` with a valid key (goal:
  decorated >= 0.90 x undecorated).

Each goal's pair runs back to back in alternating order, round after round; each ratio is
the median of the pair ratios, with min and max (``compare.py``). It prints figures and
asserts nothing; the keys exist only in the temp dir.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from tests.servers import gunicorn, service_environment

from .compare import Pair, Variant, measure_pairs
from .cores import pin_servers
from .report import print_reproduce, report_server_log
from .service import PROTECTED, UNPROTECTED, WORKERS, flask, plain_gunicorn, post
from .wrk import write_lua

UNPROTECTED_GOAL = 0.90
PROTECTED_GOAL = 0.80
DECORATOR_GOAL = 0.90
HOST_APP = "bench.apps:create_host_app()"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the five variants")
    parser.add_argument("--seconds", type=int, default=4, help="length of each run")
    parser.add_argument("--connections", type=int, default=8, help="connections of each run")
    args = parser.parse_args(argv)
    print(pin_servers())

    with tempfile.TemporaryDirectory(prefix="keyservice-bench-") as temp, ExitStack() as servers:
        tmp = Path(temp)
        service_env = service_environment(f"sqlite:///{tmp / 'service.db'}")
        host_env = service_environment(f"sqlite:///{tmp / 'host.db'}")
        print(f"setting up: SQLite in {tmp}, keys at bcrypt cost 12, three gunicorns with {WORKERS} workers")
        flask(service_env, "db", "upgrade")
        service_key = flask(service_env, "keys", "create", "--name", "bench", "--client-id", "bench").strip()
        host_key = flask(host_env, "keys", "create", "--name", "bench", "--client-id", "bench", app=HOST_APP).strip()
        logs = {name: tmp / f"gunicorn-{name}.log" for name in ("bare", "service", "host")}
        try:
            bare = servers.enter_context(plain_gunicorn("bench.apps:bare", service_env, logs["bare"]))
            service = servers.enter_context(gunicorn(service_env, logs["service"], WORKERS))
            host = servers.enter_context(gunicorn(host_env, logs["host"], WORKERS, app=HOST_APP))
            if post(service + PROTECTED, service_key)[0] != 200 or post(host + "/decorated", host_key)[0] != 200:
                raise RuntimeError("a valid key was refused")
            unprotected = write_lua(tmp / "unprotected.lua")
            bare_flask = Variant("bare Flask", bare + UNPROTECTED, unprotected, None)
            undecorated = Variant("host, undecorated", host + "/plain", unprotected, None)
            measure_pairs(
                [
                    Pair(
                        Variant("service, unprotected", service + UNPROTECTED, unprotected, None),
                        bare_flask,
                        UNPROTECTED_GOAL,
                    ),
                    Pair(
                        Variant(
                            "service, valid key", service + PROTECTED, write_lua(tmp / "service.lua", service_key), None
                        ),
                        bare_flask,
                        PROTECTED_GOAL,
                    ),
                    Pair(
                        Variant(
                            "host, @require_key()", host + "/decorated", write_lua(tmp / "host.lua", host_key), None
                        ),
                        undecorated,
                        DECORATOR_GOAL,
                    ),
                ],
                rounds=args.rounds,
                seconds=args.seconds,
                connections=args.connections,
                title="the service and @require_key against bare Flask",
            )
        finally:
            servers.close()
            for log in logs.values():
                if log.exists():
                    report_server_log(log)
    print_reproduce("bench.against_flask", sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
