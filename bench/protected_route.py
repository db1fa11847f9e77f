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

A run whose connections one worker took nearly all of is run again (``run_wrk_balanced``).
Only ratios within one run are meaningful: the machine is shared and noisy, and
wrk competes with the workers for the same cores, so absolute req/s move from
run to run. That is why the two routes alternate over several rounds and the
medians are compared.

The key is never printed. It exists only in the temp dir's wrk Lua scripts,
which go away with the temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keyservice.core.crypto import BASE62, CHECKSUM_LENGTH, SECRET_LENGTH, checksum
from tests.receivers import Receiver, serving, webhook_settings
from tests.servers import REPO, flask_cli, gunicorn, gunicorn_workers, request, service_environment

WORKERS = 2
OVERHEAD_GOAL = 0.85  # with usage counting and metrics on; 0.90 before them
LIMITS_GOAL = 0.75
FLOOD_GOAL = 0.5
WEBHOOKS_GOAL = 0.9
UNPROTECTED = "/unprotected"
PROTECTED = "/protected-with-key"

_UNIT_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_LATENCY = r"([\d.]+)(us|ms|s|m)\b"
_ANY_KEY = re.compile(r"[a-z0-9]{1,16}_[0-9A-Za-z]{16}_[0-9A-Za-z]{38}")


def redact(text: str) -> str:
    """``text`` with anything shaped like a key replaced, so no key reaches the screen."""
    return _ANY_KEY.sub("<key>", text)


@dataclass(frozen=True)
class WrkResult:
    """The figures of one wrk run."""

    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    statuses: dict[int, int] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{self.requests_per_sec:9.1f} req/s  p50 {self.p50_ms:7.2f} ms  "
            f"p99 {self.p99_ms:7.2f} ms  non-2xx {self.non_2xx}/{self.requests}"
            + (f"  socket errors {self.socket_errors}" if self.socket_errors else "")
        )


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+{_LATENCY}", output, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {percentile}% latency line in wrk output")
    return float(match[1]) * _UNIT_TO_MS[match[2]]


def parse_wrk(output: str) -> WrkResult:
    """Read the summary ``wrk --latency`` prints (and our Lua ``status`` lines)."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if rps is None or total is None:
        raise ValueError(f"unexpected wrk output:\n{redact(output)}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    statuses = {int(code): int(count) for code, count in re.findall(r"^status (\d+) (\d+)$", output, re.MULTILINE)}
    return WrkResult(
        requests_per_sec=float(rps[1]),
        p50_ms=_latency_ms(output, "50"),
        p99_ms=_latency_ms(output, "99"),
        requests=int(total[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(map(int, errors.groups())) if errors else 0,
        statuses=statuses,
    )


def wrk_command(url: str, lua: Path, *, connections: int, seconds: int) -> list[str]:
    return ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url]


def run_wrk(url: str, lua: Path, *, connections: int, seconds: int) -> WrkResult:
    """Run one wrk and return its figures."""
    return run_wrk_together([(url, lua)], connections=connections, seconds=seconds)[0]


# wrk opens its connections at once and keeps them; gthread workers keep the connections they
# accept, so now and then one worker takes nearly all of them and the other idles: the run then
# measures one worker, not the service (half the req/s, whatever the route). Such a run is run
# again, up to BALANCE_ATTEMPTS times.
BALANCE_SHARE = 0.6  # of a fair share of the workers' CPU time, the least each worker must have had
BALANCE_ATTEMPTS = 6


def _cpu_ticks(pids: Sequence[int]) -> list[int]:
    ticks = []
    for pid in pids:
        try:
            fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            fields = ["0"] * 13  # gone meanwhile: the run is judged on the others
        ticks.append(int(fields[11]) + int(fields[12]))  # utime + stime
    return ticks


def run_wrk_balanced(url: str, lua: Path, *, connections: int, seconds: int) -> WrkResult:
    """Run one wrk, again while its connections were served by one worker of a gunicorn
    at ``url`` (see BALANCE_SHARE); return the figures of the first balanced run, or of the last."""
    workers = sorted(gunicorn_workers(re.match(r"https?://[^/]+", url)[0]))  # type: ignore[index]
    for _attempt in range(1, BALANCE_ATTEMPTS + 1):
        before = _cpu_ticks(workers)
        result = run_wrk(url, lua, connections=connections, seconds=seconds)
        used = [after - start for start, after in zip(before, _cpu_ticks(workers), strict=False)]
        if len(used) < 2 or min(used) >= BALANCE_SHARE * sum(used) / len(used):
            return result
        print(f"    (one worker served almost all of wrk's connections: CPU ticks {used}; run again)")
    return result


def run_wrk_together(targets: Sequence[tuple[str, Path]], *, connections: int, seconds: int) -> list[WrkResult]:
    """Start one wrk per ``(url, lua)`` at the same moment; return their figures in order."""
    processes = [
        subprocess.Popen(
            wrk_command(url, lua, connections=connections, seconds=seconds),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for url, lua in targets
    ]
    try:
        outputs = [process.communicate(timeout=seconds + 30)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [parse_wrk(output) for output in outputs]


# A `response` callback costs wrk some CPU, so only the flood counts statuses.
_STATUS_COUNTER = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  for status, count in pairs(totals) do io.write(string.format("status %d %d\\n", status, count)) end
end
"""


def write_lua(path: Path, key: str | None = None, *, count_statuses: bool = False) -> Path:
    """A wrk script that POSTs, with ``Authorization: Bearer <key>`` if ``key`` is given."""
    lines = ['wrk.method = "POST"']
    if key is not None:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {key}"')
    path.write_text("\n".join(lines) + "\n" + (_STATUS_COUNTER if count_statuses else ""))
    path.chmod(0o600)
    return path


def wrong_secret_key(key: str) -> str:
    """The same prefix and id as ``key``, another secret, and a checksum that holds."""
    body = key[: -(SECRET_LENGTH + CHECKSUM_LENGTH)]
    secret = key[len(body) : -CHECKSUM_LENGTH]
    while (other := "".join(secrets.choice(BASE62) for _ in range(SECRET_LENGTH))) == secret:
        pass
    return body + other + checksum(body + other)


def post(url: str, key: str | None = None) -> tuple[int, str, str | None]:
    """POST once; return the status, the problem ``code`` (if any) and ``Retry-After``."""
    response = request(url, "POST", {"Authorization": f"Bearer {key}"} if key else {})
    code = json.loads(response.body).get("code", "") if response.status != 200 else ""
    return response.status, code, response.headers.get("Retry-After")


def flask(env: dict[str, str], *args: str, app: str = "wsgi") -> str:
    """Run ``flask --app APP ...`` in the repo (the service's ``wsgi`` unless said); return its stdout."""
    done = flask_cli(env, *args, app=app)
    if done.returncode != 0:
        # stderr only: stdout may hold a key.
        raise RuntimeError(f"flask {args[0]} {args[1]} failed: {redact(done.stderr.strip())}")
    return done.stdout


def version(*command: str) -> str:
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    except OSError:
        return "?"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def verdict(value: float, goal: float) -> str:
    if value >= goal:
        return f"goal >= {goal:.2f}: met"
    return f"goal >= {goal:.2f}: MISSED, {value:.3f} is {goal - value:.3f} short"


@dataclass(frozen=True)
class Variant:
    """One way of calling a server: a label, a URL, and the wrk script (the key) it uses."""

    label: str
    url: str
    lua: Path
    goal: float | None  # for its req/s against the first variant's (the baseline's); None: no goal


def measure_overhead(
    variants: Sequence[Variant], *, rounds: int, seconds: int, connections: int, title: str = "1. overhead"
) -> dict[str, float]:
    """Alternate the variants round by round; compare each one's median to the baseline's.
    Return each variant's median req/s."""
    print(
        f"\n== {title}: {rounds} rounds x ({', '.join(v.label for v in variants)}), {seconds} s each, -c{connections}"
    )
    runs: dict[str, list[WrkResult]] = {variant.label: [] for variant in variants}
    for variant in variants:  # each worker checks each key with bcrypt once, before any round
        run_wrk(variant.url, variant.lua, connections=connections, seconds=1)
    for round_number in range(1, rounds + 1):
        for variant in variants:
            result = run_wrk_balanced(variant.url, variant.lua, connections=connections, seconds=seconds)
            runs[variant.label].append(result)
            print(f"  round {round_number}  {variant.label:24} {result.line()}")
            if result.non_2xx:
                print(f"  !!! WARNING: {result.non_2xx} responses were not 2xx: this round's figure is meaningless !!!")

    print(f"\n  {'variant (median of ' + str(rounds) + ')':30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    medians = {label: statistics.median(r.requests_per_sec for r in results) for label, results in runs.items()}
    for label, results in runs.items():
        print(
            f"  {label:30} {medians[label]:9.1f} "
            f"{statistics.median(r.p50_ms for r in results):8.2f} "
            f"{statistics.median(r.p99_ms for r in results):8.2f}"
        )
    baseline = variants[0].label
    for variant in variants[1:]:
        ratio = medians[variant.label] / medians[baseline]
        pairs = zip(runs[baseline], runs[variant.label], strict=True)
        per_round = [v.requests_per_sec / u.requests_per_sec for u, v in pairs]
        goal = "no goal" if variant.goal is None else verdict(ratio, variant.goal)
        print(
            f"  {variant.label} / {baseline} req/s: {ratio:.2f}  ({goal});"
            f" per round {', '.join(f'{r:.2f}' for r in per_round)}"
        )
    return medians


def create_keys(env: dict[str, str]) -> tuple[str, str, str]:
    """Create a plain key, one with a rate limit and one with ``remaining``, each far above
    what wrk can send (what is measured is their bookkeeping); return them."""

    def create(name: str, *options: str) -> str:
        return flask(env, "keys", "create", "--name", name, "--client-id", "bench", *options).strip()

    return (
        create("bench"),
        create("bench rate limit", "--ratelimit", "1000000/10s"),
        create("bench remaining", "--remaining", "1000000000"),
    )


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
            medians = measure_overhead(
                [
                    Variant("unprotected, sync", sync + UNPROTECTED, unprotected, 1.0),
                    Variant("valid key, sync", sync + PROTECTED, protected, OVERHEAD_GOAL),
                    Variant("unprotected, gthread", gthread + UNPROTECTED, unprotected, None),
                    Variant("valid key, gthread", gthread + PROTECTED, protected, None),
                ],
                rounds=rounds,
                seconds=seconds,
                connections=connections,
                title="1. overhead, sync workers against gthread (ratios to unprotected, sync)",
            )
            ratio = medians["valid key, gthread"] / medians["unprotected, gthread"]
            print(f"  valid key, gthread / unprotected, gthread req/s: {ratio:.2f}  ({verdict(ratio, OVERHEAD_GOAL)})")
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


def report_server_log(log: Path) -> None:
    """Say whether gunicorn logged errors (never printing a key)."""
    text = redact(log.read_text(errors="replace"))
    problems = [
        line
        for line in text.splitlines()
        if re.search(r"Traceback|\[ERROR\]|\[CRITICAL\]|WORKER TIMEOUT|Exception", line)
    ]
    print(f"\n== gunicorn log: {len(problems)} error line(s)")
    for line in problems[:10]:
        print(f"  {line}")


def print_reproduce(module: str, args: list[str]) -> None:
    """How to run this again, and on what."""
    command = [os.path.relpath(sys.executable, REPO), "-m", module, *args]
    print("\n== reproduce")
    print(f"  cd {REPO} && {shlex.join(command)}   (or: make bench)")
    print(
        f"  python {sys.version.split()[0]}, {version(sys.executable, '-m', 'gunicorn', '--version')}, "
        f"{' '.join(version('wrk', '--version').split()[:2])}, nproc {version('nproc')}, "
        f"{WORKERS} workers (gunicorn.conf.py's class unless said otherwise), "
        f"commit {version('git', 'rev-parse', '--short', 'HEAD')}"
    )


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
