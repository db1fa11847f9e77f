"""An identity's shared limits against a key's own: what two auto-applied identity rate limits cost.

Run from the repository root::

    .venv/bin/python -m bench.identities [--pairs 7 --seconds 4]

Two setups, each one gunicorn (the repo's gunicorn.conf.py, 2 gthread workers) on SQLite: the
windows in the embedded SQLite file, and in Redis. On each, two keys: one with a rate limit of its
own, and one of a customer whose identity has two auto-applied rate limits (every limit far
above the load: what is measured is the bookkeeping). The servers (gunicorn and Redis) are
pinned to the first half of the cores and wrk to the other half (``taskset``); the two keys are
measured in alternating pairs (A B, then B A, ...). Printed per setup: each pair's ratio, their
median with min and max, for req/s and for the workers' CPU time per request (from /proc, steadier
than throughput). Goal: the identity's key costs at most 1.3 x the key with its own limit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.servers import gunicorn_workers, service_environment, serving
from tests.services import redis_server

from .protected_route import PROTECTED, WORKERS, flask, parse_wrk, print_reproduce, report_server_log, write_lua

GOAL = 1.3
TICK = os.sysconf("SC_CLK_TCK")


def halves() -> tuple[str, str]:
    """The CPU lists of the servers' half and the load generator's (``taskset -c``)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("bench.identities pins servers and wrk to separate cores: it needs at least 2")
    middle = len(cores) // 2
    return ",".join(map(str, cores[:middle])), ",".join(map(str, cores[middle:]))


def pin(pid: int, cpus: str) -> None:
    """Pin a running process and all its threads to ``cpus``."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True)


def pids_of(needle: str) -> list[int]:
    """The processes whose command line holds ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


@dataclass
class Run:
    requests_per_sec: float
    cpu_us_per_request: float


def measure(base: str, lua: Path, wrk_cpus: str, seconds: int, connections: int) -> Run:
    """One pinned wrk run; the workers' CPU time per request over it."""
    workers = sorted(gunicorn_workers(base))
    before = cpu_seconds(workers)
    command = ["taskset", "-c", wrk_cpus, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    done = subprocess.run([*command, "-s", str(lua), base + PROTECTED], capture_output=True, text=True, check=True)
    used = cpu_seconds(workers) - before
    result = parse_wrk(done.stdout)
    if result.non_2xx:
        print(f"  !!! {result.non_2xx} responses were not 2xx: this run's figure is meaningless !!!")
    return Run(result.requests_per_sec, used / max(1, result.requests) * 1e6)


def setup_keys(env: dict[str, str]) -> tuple[str, str]:
    """A key with a rate limit of its own, and a key whose identity has two auto-applied ones."""
    flask(env, "db", "upgrade")
    own = flask(env, "keys", "create", "--name", "own", "--client-id", "solo", "--ratelimit", "1000000/10s").strip()
    limits = ["--ratelimit", "requests=1000000000/10s", "--ratelimit", "per-minute=1000000000/60s"]
    flask(env, "keys", "identities", "create", "team", *limits)
    shared = flask(env, "keys", "create", "--name", "shared", "--client-id", "team").strip()
    return own, shared


def compare(label: str, base: str, own: Path, shared: Path, args: argparse.Namespace, wrk_cpus: str) -> float:
    """Alternate the two keys in pairs; print each pair and the medians; return the median CPU ratio."""
    print(f"\n== {label}: {args.pairs} pairs, {args.seconds} s each, -c{args.connections}")
    for lua in (own, shared):  # warm up: each worker checks each key with bcrypt once
        measure(base, lua, wrk_cpus, 1, args.connections)
    throughput, cpu = [], []
    for number in range(args.pairs):
        order = [("own", own), ("identity", shared)]
        runs = {
            name: measure(base, lua, wrk_cpus, args.seconds, args.connections)
            for name, lua in (order if number % 2 == 0 else order[::-1])
        }
        throughput.append(runs["own"].requests_per_sec / runs["identity"].requests_per_sec)
        cpu.append(runs["identity"].cpu_us_per_request / runs["own"].cpu_us_per_request)
        own_run, shared_run = runs["own"], runs["identity"]
        print(
            f"  pair {number + 1} ({'own first' if number % 2 == 0 else 'identity first'}):"
            f" own {own_run.requests_per_sec:7.0f} req/s {own_run.cpu_us_per_request:5.0f} us/req;"
            f" identity {shared_run.requests_per_sec:7.0f} req/s {shared_run.cpu_us_per_request:5.0f} us/req;"
            f" cost x{throughput[-1]:.2f} (req/s), x{cpu[-1]:.2f} (CPU)"
        )
    for name, ratios in (("req/s, own / identity", throughput), ("worker CPU per request, identity / own", cpu)):
        median = statistics.median(ratios)
        met = "met" if median <= GOAL else f"MISSED by {median - GOAL:.2f}"
        print(f"  {name}: median x{median:.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}; goal <= {GOAL}: {met})")
    return statistics.median(cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7, help="alternating pairs per setup (at least 5)")
    parser.add_argument("--seconds", type=int, default=4, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=8, help="connections of each wrk run")
    args = parser.parse_args(argv)
    server_cpus, wrk_cpus = halves()
    print(f"servers on CPUs {server_cpus}, wrk on CPUs {wrk_cpus}; gunicorn with {WORKERS} workers")
    with tempfile.TemporaryDirectory(prefix="keyservice-bench-") as temp, ExitStack() as stack:
        tmp = Path(temp)
        redis_url = stack.enter_context(redis_server(tmp / "redis.log"))
        # redis-server retitles itself "redis-server 127.0.0.1:<port>".
        redis_pids = pids_of(f"redis-server 127.0.0.1:{redis_url.rsplit(':', 1)[1].split('/')[0]}")
        if not redis_pids:
            sys.exit("bench.identities: the Redis server's process was not found, so it cannot be pinned")
        for pid in redis_pids:
            pin(pid, server_cpus)
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
                command = [
                    "taskset",
                    "-c",
                    server_cpus,
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-c",
                    "gunicorn.conf.py",
                    "-w",
                    str(WORKERS),
                    "wsgi:app",
                ]
                with serving(command, env, logs[-1]) as base:
                    compare(
                        label,
                        base,
                        write_lua(tmp / f"{name}-own.lua", own),
                        write_lua(tmp / f"{name}-shared.lua", shared),
                        args,
                        wrk_cpus,
                    )
        finally:
            for log in logs:
                report_server_log(log)
    print_reproduce("bench.identities", sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
