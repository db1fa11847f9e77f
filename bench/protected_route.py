"""What ``@require_key`` costs a request, and what a wrong-secret flood costs valid callers.

Run from the repository root (``make bench`` does exactly this)::

    .venv/bin/python -m bench.protected_route

One run builds a throwaway SQLite database in a temp dir, creates a key with the
real bcrypt cost (every ``KEYSERVICE_*`` variable is dropped from the children's
environment, so the defaults apply: cost 12, the change feed read every 0.5 s,
5 failed checks per key id and client address per minute per machine), starts gunicorn with the
repo's gunicorn.conf.py (2 gthread workers) and drives it with ``wrk``. It prints
figures; it asserts nothing.

1. Overhead. ``POST /unprotected`` against ``POST /protected-with-key``, the same
   tiny view, with three keys: a plain valid key (it costs a header read, an
   HMAC, a dict lookup, a worker's read of the change feed every 0.5 s, and its
   count in the usage and the metrics; the machine pays bcrypt once, in the warm-up; goal:
   >= 0.85 x unprotected with usage counting and metrics on), a key with a rate limit
   far above the load and a key with a large ``remaining`` (each request also
   writes its hit or its use to the database; goal: >= 0.75).
2. A flood of wrong secrets. A key with the valid key's prefix and id, a
   different secret and a correct checksum reaches the bcrypt path, the
   expensive one. Valid traffic runs alone, then beside a second wrk stream
   with the same connection count: first more valid traffic (the control: the
   fair share of a saturated server), then the flood twice, once while the
   failed-check budget is spent (each 401 NOT_FOUND costs a bcrypt check) and
   once after, when every wrong secret is a cheap 429 RATE_LIMITED. Goal: valid
   req/s beside the flood >= 0.5 of valid req/s alone.

``--worker-classes`` runs only section 1's unprotected route and valid key, on two
gunicorns at once: the repo's gthread settings and the same with ``--worker-class sync``
(what ``make serve`` ran before), alternating, so their ratios come from one run.

``--webhooks`` runs only the valid key, on two gunicorns over one database, alternating:
one without webhooks, one with an endpoint registered to a slow receiver (2 s per
delivery) while a key is changed 5 times a second (each change a ``key.updated`` for it),
so that its workers' senders are always busy with a delivery. Goal: the second's req/s
>= 0.9 of the first's (a request never waits on a delivery).

The servers run on one half of the cores and wrk on the other (``cores.py``); the
variants alternate over at least 5 rounds and each is compared with its reference pair by
pair: median, min and max of the pair ratios, for req/s and for the workers' CPU time per
request (``compare.py``). A run whose connections one worker took nearly all of is run
again (``wrk.run_wrk_balanced``). Only ratios within one run are meaningful.

The key is never printed. It exists only in the temp dir's wrk Lua scripts,
which go away with the temp dir.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from keyservice.core.crypto import BASE62, CHECKSUM_LENGTH, SECRET_LENGTH, checksum
from tests.receivers import Receiver, serving, webhook_settings
from tests.servers import gunicorn, request, service_environment

from .compare import Pair, Variant, measure_overhead, measure_pairs
from .cores import pin_servers
from .report import print_reproduce, report_server_log, verdict
from .service import PROTECTED, UNPROTECTED, WORKERS, create_keys, flask, post
from .wrk import run_wrk, run_wrk_together, write_lua

OVERHEAD_GOAL = 0.85  # with usage counting and metrics on; 0.90 before them
LIMITS_GOAL = 0.75
FLOOD_GOAL = 0.5
WEBHOOKS_GOAL = 0.9


def wrong_secret_key(key: str) -> str:
    """The same prefix and id as ``key``, another secret, and a checksum that holds."""
    body = key[: -(SECRET_LENGTH + CHECKSUM_LENGTH)]
    secret = key[len(body) : -CHECKSUM_LENGTH]
    while (other := "".join(secrets.choice(BASE62) for _ in range(SECRET_LENGTH))) == secret:
        pass
    return body + other + checksum(body + other)


def overhead_variants(
    base: str,
    tmp: Path,
    valid_key: str,
    ratelimited_key: str,
    remaining_key: str,
    *,
    overhead_goal: float = OVERHEAD_GOAL,
    limits_goal: float | None = LIMITS_GOAL,
) -> list[Variant]:
    """The unprotected route (the baseline) and the protected one with each of three keys."""
    return [
        Variant("unprotected", base + UNPROTECTED, write_lua(tmp / "unprotected.lua"), 1.0),
        Variant("valid key", base + PROTECTED, write_lua(tmp / "protected.lua", valid_key), overhead_goal),
        Variant(
            "key with a rate limit", base + PROTECTED, write_lua(tmp / "ratelimited.lua", ratelimited_key), limits_goal
        ),
        Variant("key with remaining", base + PROTECTED, write_lua(tmp / "remaining.lua", remaining_key), limits_goal),
    ]


def measure_flood(
    base: str, protected: Path, flood: Path, valid_key: str, wrong_key: str, *, seconds: int, connections: int
) -> None:
    """Valid traffic alone, then beside a second stream with as many connections.

    The second stream is, in turn: more valid traffic (the control: a saturated
    server shares itself by connection, so about half is what a flood phase can
    hope for even if a refusal cost nothing), the wrong-secret flood while the
    failed-check budget is being spent (one bcrypt check per 401), and the flood
    again right after, within the same minute, when every wrong secret is
    answered 429 before bcrypt.
    """
    print(
        f"\n== 2. wrong-secret flood: valid alone, then valid beside a second stream; "
        f"{seconds} s each, -c{connections} per wrk"
    )
    status, code, _ = post(base + PROTECTED, wrong_key)
    print(f"  one wrong-secret request before the flood: {status} {code}")
    alone = run_wrk(base + PROTECTED, protected, connections=connections, seconds=seconds)
    print(f"  valid alone              {alone.line()}")
    if alone.non_2xx:
        print(f"  !!! WARNING: {alone.non_2xx} valid responses were not 2xx: the shares are meaningless !!!")

    phases = (
        ("control: beside a second valid stream", protected, "second valid stream"),
        ("flood 1: beside the flood, failed-check budget being spent", flood, "flood (wrong secret)"),
        ("flood 2: beside the flood, budget already spent", flood, "flood (wrong secret)"),
    )
    control_share = 1.0
    for title, other_lua, other_name in phases:
        during, other = run_wrk_together(
            [(base + PROTECTED, protected), (base + PROTECTED, other_lua)], connections=connections, seconds=seconds
        )
        share = during.requests_per_sec / alone.requests_per_sec
        print(f"  {title}")
        print(f"    {'valid':22} {during.line()}")
        print(f"    {other_name:22} {other.line()}")
        if other.statuses:
            counts = ", ".join(f"{status}: {n}" for status, n in sorted(other.statuses.items()))
            print(f"    flood responses by status: {counts}")
        if other_lua == protected:
            control_share = share
            print(f"    valid req/s here / alone: {share:.2f}  (two equal streams: the fair share)")
        else:
            print(
                f"    valid req/s here / alone: {share:.2f}  ({verdict(share, FLOOD_GOAL)}); "
                f"{share / control_share:.2f} of the control's"
            )
        if during.non_2xx:
            print(f"    !!! WARNING: {during.non_2xx} valid responses were not 2xx: this share is meaningless !!!")

    status, code, retry_after = post(base + PROTECTED, wrong_key)
    print(f"  one wrong-secret request after the floods: {status} {code} (Retry-After: {retry_after})")
    status, _, _ = post(base + PROTECTED, valid_key)
    print(f"  one valid request after the floods: {status}")
    print(
        "  (401 = NOT_FOUND, one bcrypt check each, until the key id's failed-check budget"
        " in that worker is spent; then 429 RATE_LIMITED before bcrypt)"
    )


def measure_worker_classes(
    env: dict[str, str], tmp: Path, valid_key: str, *, rounds: int, seconds: int, connections: int
) -> None:
    """Section 1's unprotected route and valid key on gthread (gunicorn.conf.py) and on sync workers."""
    logs = {kind: tmp / f"gunicorn-{kind}.log" for kind in ("gthread", "sync")}
    try:
        with (
            gunicorn(env, logs["gthread"], workers=WORKERS) as gthread,
            gunicorn(env, logs["sync"], workers=WORKERS, options=["--worker-class", "sync"]) as sync,
        ):
            for base in (gthread, sync):
                if post(base + PROTECTED, valid_key)[0] != 200:
                    raise RuntimeError(f"a valid key was refused on {PROTECTED}")
            unprotected, protected = write_lua(tmp / "unprotected.lua"), write_lua(tmp / "protected.lua", valid_key)
            unprotected_sync = Variant("unprotected, sync", sync + UNPROTECTED, unprotected, None)
            unprotected_gthread = Variant("unprotected, gthread", gthread + UNPROTECTED, unprotected, None)
            measure_pairs(
                [
                    Pair(
                        Variant("valid key, sync", sync + PROTECTED, protected, None), unprotected_sync, OVERHEAD_GOAL
                    ),
                    Pair(unprotected_gthread, unprotected_sync, None),
                    Pair(
                        Variant("valid key, gthread", gthread + PROTECTED, protected, None),
                        unprotected_gthread,
                        OVERHEAD_GOAL,
                    ),
                ],
                rounds=rounds,
                seconds=seconds,
                connections=connections,
                title="1. overhead, sync workers against gthread",
            )
    finally:
        for log in logs.values():
            report_server_log(log)


def measure_webhooks(
    env: dict[str, str], tmp: Path, valid_key: str, *, rounds: int, seconds: int, connections: int
) -> None:
    """The valid key on a gunicorn without webhooks and on one whose senders deliver to a slow receiver."""
    receiver = Receiver(delay=2.0)
    with serving(receiver):
        hooked = env | webhook_settings(
            KEYSERVICE_WEBHOOKS_RETRY_DELAY="30", KEYSERVICE_WEBHOOKS_POLL_INTERVAL="1", KEYSERVICE_WEBHOOKS_TIMEOUT="5"
        )
        flask(hooked, "webhooks", "create", receiver.url)
        admin = flask(
            env, "keys", "create", "--name", "bench admin", "--client-id", "ops", "--scope", "keys:admin"
        ).strip()
        changed = flask(env, "keys", "create", "--name", "bench changed", "--client-id", "bench").strip()
        logs = {kind: tmp / f"gunicorn-{kind}.log" for kind in ("plain", "control", "webhooks")}
        stop = threading.Event()
        try:
            # The control is a second server without webhooks: how far apart two identical servers
            # measure in this run is the noise the webhooks' figure is read against.
            with (
                gunicorn(env, logs["plain"], workers=WORKERS) as plain,
                gunicorn(env, logs["control"], workers=WORKERS) as control,
                gunicorn(hooked, logs["webhooks"], workers=WORKERS) as with_webhooks,
            ):
                for base in (plain, control, with_webhooks):
                    for _ in range(4 * WORKERS):  # every worker starts (its sender too) and knows the key
                        if post(base + PROTECTED, valid_key)[0] != 200:
                            raise RuntimeError(f"a valid key was refused on {PROTECTED}")

                def change_a_key() -> None:
                    count = 0
                    while not stop.wait(0.2):
                        count += 1
                        request(
                            f"{plain}/keys/{changed.split('_')[1]}",
                            "PATCH",
                            {"Authorization": f"Bearer {admin}"},
                            {"meta": {"n": count}},
                        )

                changer = threading.Thread(target=change_a_key, daemon=True)
                changer.start()
                protected = write_lua(tmp / "protected.lua", valid_key)
                measure_overhead(
                    [
                        Variant("valid key, no webhooks", plain + PROTECTED, protected, 1.0),
                        Variant("valid key, no webhooks, control", control + PROTECTED, protected, None),
                        Variant("valid key, webhooks", with_webhooks + PROTECTED, protected, WEBHOOKS_GOAL),
                    ],
                    rounds=rounds,
                    seconds=seconds,
                    connections=connections,
                    title="5. webhooks: a slow receiver (2 s a delivery), key.updated 5 times a second",
                )
                stop.set()
                changer.join(5)
                print(f"  receiver: {len(receiver.received)} deliveries answered (2 s each) during the run")
        finally:
            stop.set()
            for log in logs.values():
                report_server_log(log)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (unprotected, protected)")
    parser.add_argument("--seconds", type=int, default=4, help="length of each overhead run")
    parser.add_argument("--connections", type=int, default=8, help="connections of each overhead run")
    parser.add_argument("--flood-seconds", type=int, default=10, help="length of each flood-phase run")
    parser.add_argument("--flood-connections", type=int, default=4, help="connections of each flood-phase wrk")
    parser.add_argument(
        "--worker-classes",
        action="store_true",
        help="only the unprotected route and the valid key, on gthread and on sync workers",
    )
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="only the valid key, without webhooks and with a slow receiver's deliveries",
    )
    args = parser.parse_args(argv)
    print(pin_servers())

    with tempfile.TemporaryDirectory(prefix="keyservice-bench-") as temp:
        tmp = Path(temp)
        env = service_environment(f"sqlite:///{tmp / 'bench.db'}")
        print(f"setting up: SQLite in {tmp}, one key at bcrypt cost 12, gunicorn with {WORKERS} workers")
        flask(env, "db", "upgrade")
        valid_key, ratelimited_key, remaining_key = create_keys(env)
        wrong_key = wrong_secret_key(valid_key)
        protected = write_lua(tmp / "protected.lua", valid_key)
        flood = write_lua(tmp / "flood.lua", wrong_key, count_statuses=True)

        if args.webhooks:
            measure_webhooks(
                env, tmp, valid_key, rounds=args.rounds, seconds=args.seconds, connections=args.connections
            )
            print_reproduce("bench.protected_route", sys.argv[1:] if argv is None else list(argv))
            return
        if args.worker_classes:
            measure_worker_classes(
                env, tmp, valid_key, rounds=args.rounds, seconds=args.seconds, connections=args.connections
            )
            print_reproduce("bench.protected_route", sys.argv[1:] if argv is None else list(argv))
            return
        log = tmp / "gunicorn.log"
        try:
            with gunicorn(env, log, workers=WORKERS) as base:
                status, _, _ = post(base + PROTECTED, valid_key)
                if status != 200:
                    raise RuntimeError(f"a valid key got {status} on {PROTECTED}")
                warm = run_wrk(base + PROTECTED, protected, connections=args.connections, seconds=2)
                print(f"warm-up (2 s, protected): {warm.line()}")
                variants = overhead_variants(base, tmp, valid_key, ratelimited_key, remaining_key)
                measure_overhead(variants, rounds=args.rounds, seconds=args.seconds, connections=args.connections)
                measure_flood(
                    base,
                    protected,
                    flood,
                    valid_key,
                    wrong_key,
                    seconds=args.flood_seconds,
                    connections=args.flood_connections,
                )
        finally:
            report_server_log(log)

    print_reproduce("bench.protected_route", sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
