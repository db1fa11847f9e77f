"""A restart with many keys: the first requests after every worker is replaced, against the same warm.

Run from the repository root::

    .venv/bin/python -m bench.cold_start

One run builds a throwaway SQLite database in a temp dir with 200 keys hashed at
the real bcrypt cost (12), serves it with gunicorn (2 workers, every other
setting the default) and sends 800 requests (each key 4 times, in random
order) from 16 client threads:

- *first start*: nothing has ever checked the keys: each costs bcrypt once;
- then, ``--rounds`` times: gunicorn stopped and started again (every worker
  new, their memory empty; the run waits ``BOOT_SECONDS`` for the workers to
  import the app, which is no key's cost), the 800 requests (*after a
  restart*), and the same 800 again (*warm*).

Goal: after a restart >= 0.8 x warm (median req/s), and
``keyservice_bcrypt_checks_total`` 0 after each restart: the keys were checked
before it, so their entries in the machine's checked keys spare bcrypt. It
prints figures; it asserts nothing. The keys exist only in the temp dir.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from keyservice import create_app
from keyservice.app import db
from keyservice.core.crypto import NewKey, generate_key
from keyservice.core.state import current_state
from keyservice.management.store import create_key
from tests.servers import gunicorn, labelled_metric, request, service_environment

from .compare import Spread
from .cores import on_load_cores, pin_servers
from .report import print_reproduce, report_server_log, verdict
from .service import PROTECTED, WORKERS, flask

KEYS = 200
USES = 4
CLIENTS = 16
GOAL = 0.8
BOOT_SECONDS = 3


@dataclass(frozen=True)
class Run:
    """One pass of the requests: its wall time and latencies."""

    seconds: float
    latencies_ms: list[float]
    failures: int

    @property
    def per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def line(self) -> str:
        ordered = sorted(self.latencies_ms)
        p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
        return f"{self.seconds:6.1f} s  {self.per_second:7.1f} req/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms" + (
            f"  !!! {self.failures} not 200" if self.failures else ""
        )


def make_keys(database_url: str, count: int) -> list[str]:
    """Create ``count`` keys at the default bcrypt cost (hashed on every core); return them."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        settings = current_state().settings
        with ProcessPoolExecutor() as pool:
            made: list[NewKey] = list(
                pool.map(generate_key, [settings.key_prefix] * count, [settings.bcrypt_rounds] * count)
            )
        for n, new in enumerate(made):
            create_key(db.session, settings, name=f"cold {n}", external_client_id="bench", new=new)
        db.session.commit()
        db.engine.dispose()
    return [new.key for new in made]


def send(url: str, requests: list[str]) -> Run:
    """POST each key of ``requests`` from ``CLIENTS`` threads; time the whole and each one."""

    def one(key: str) -> tuple[float, bool]:
        sent = time.perf_counter()
        status = request(url, "POST", {"Authorization": f"Bearer {key}"}).status
        return (time.perf_counter() - sent) * 1000, status == 200

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS, initializer=on_load_cores) as pool:  # the client on wrk's cores
        answers = list(pool.map(one, requests))
    return Run(time.perf_counter() - started, [ms for ms, _ in answers], sum(1 for _, ok in answers if not ok))


def bcrypt_checks(base: str) -> int:
    return int(sum(labelled_metric(base, "keyservice_bcrypt_checks_total", "result").values()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="restarts, each followed by a warm pass")
    args = parser.parse_args(argv)
    print(pin_servers())

    with tempfile.TemporaryDirectory(prefix="keyservice-bench-") as temp:
        tmp = Path(temp)
        env = service_environment(f"sqlite:///{tmp / 'keys.db'}")
        flask(env, "db", "upgrade")
        print(
            f"setting up: {KEYS} keys at bcrypt cost 12 (SQLite), gunicorn with {WORKERS} workers; "
            f"{KEYS * USES} requests ({USES} per key, random order) from {CLIENTS} threads"
        )
        keys = make_keys(env["DATABASE_URL"], KEYS)
        requests = keys * USES
        random.Random(13).shuffle(requests)
        log = tmp / "gunicorn.log"
        restarted: list[Run] = []
        warm: list[Run] = []
        try:
            with gunicorn(env, log, workers=WORKERS) as base:
                first = send(base + PROTECTED, requests)
                print(f"\n  first start      {first.line()}  bcrypt checks: {bcrypt_checks(base)}")
            for round_number in range(1, args.rounds + 1):
                with gunicorn(env, log, workers=WORKERS) as base:  # every worker new
                    time.sleep(BOOT_SECONDS)
                    restarted.append(send(base + PROTECTED, requests))
                    checks = bcrypt_checks(base)
                    warm.append(send(base + PROTECTED, requests))
                    print(f"  round {round_number}: after a restart {restarted[-1].line()}  bcrypt checks: {checks}")
                    print(
                        f"  round {round_number}: warm            {warm[-1].line()}  bcrypt checks: "
                        f"{bcrypt_checks(base)}"
                    )
        finally:
            report_server_log(log)
        pairs = Spread.of([r.per_second / w.per_second for r, w in zip(restarted, warm, strict=True)])
        print(
            f"\n  after a restart / warm req/s, pair by pair: {pairs}  ({verdict(pairs.median, GOAL)}); medians"
            f" {statistics.median(run.per_second for run in restarted):.1f}"
            f" and {statistics.median(run.per_second for run in warm):.1f}"
        )

    print_reproduce("bench.cold_start", sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
