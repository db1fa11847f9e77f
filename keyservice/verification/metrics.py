"""Prometheus metrics: verifications by outcome, their latency, bcrypt checks, limit refusals, storage errors.

Under gunicorn every worker is a process of its own, so the metrics use the
official client's multiprocess mode: ``gunicorn.conf.py`` points
``PROMETHEUS_MULTIPROC_DIR`` at an empty folder before any worker starts, each
worker writes its values to files there, and ``/metrics`` adds them up. Without
that variable (the dev server, tests, a host app) they live in this process.

A verification only adds to this process's tally (one lock, a few additions):
writing the Prometheus values costs a request about 17 us of CPU under gunicorn
(three values, each locked and, in multiprocess mode, written to its file). The
tally is published into the values every ``PUBLISH_INTERVAL`` seconds by a thread
of the process, before this process answers ``/metrics``, and at its exit. So a
scrape shows another worker's verifications at most half a second late, far
inside any scrape interval; a process that ends without its exit handlers (killed
outright, or by ``os._exit`` as multiprocessing's children end) loses that half second's.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import contextlib
import logging
import os
import shlex
import sys
import threading
import time
from collections import Counter as Tally  # prometheus_client's Counter is the metric
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from ..core.forks import renew_in_forked_children
from ..core.outcomes import Outcome
from ..core.threads import DaemonStarter

logger = logging.getLogger("keyservice.metrics")

PUBLISH_INTERVAL = 0.5  # seconds

_VERIFICATIONS = Counter("keyservice_verifications", "Key verifications, by outcome code.", ["outcome"])
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_LATENCY = Histogram(
    "keyservice_verification_seconds", "Time to verify a key, limits included.", buckets=_LATENCY_BUCKETS
)
_LIMIT_REFUSALS = Counter(
    "keyservice_limit_refusals",
    "Requests refused by a limit: a key's rate limit "
    "(rate_limit), its remaining uses (usage) or failed-check budgets (failed_checks).",
    ["limit"],
)
_STORAGE_ERRORS = Counter(
    "keyservice_storage_errors",
    "Verifications answered UNAVAILABLE: the database or the rate-limit storage could not be reached.",
)

_BCRYPT_CHECKS = Counter(
    "keyservice_bcrypt_checks",
    "bcrypt checks of a key's secret, by result (accepted or "
    "refused): warm-up after a start, and floods of wrong secrets.",
    ["result"],
)

# Every labelled series is made at 0 now, so that /metrics lists each from the start (a rate of
# bcrypt checks needs its 0 before the first one). labels() takes a lock and checks its
# arguments: the verifications' series are kept here, once per code.
_by_outcome: dict[str, Any] = {outcome.value: _VERIFICATIONS.labels(outcome.value) for outcome in Outcome}
_refusals: dict[str, Any] = {limit: _LIMIT_REFUSALS.labels(limit) for limit in ("rate_limit", "failed_checks", "usage")}
for _result in ("accepted", "refused"):
    _BCRYPT_CHECKS.labels(_result)

_UPPER_BOUNDS = (*_LATENCY_BUCKETS, float("inf"))  # the histogram's buckets, +Inf last


class _Tally:
    """This process's verifications not yet in the Prometheus values: a count per value, and the
    latency histogram's buckets and sum."""

    def __init__(self) -> None:
        # Whether the exit's publish is registered (a forked child inherits it: it publishes the child's tally).
        self.published_at_exit = False
        self.renew_after_fork()
        renew_in_forked_children(self)

    def renew_after_fork(self) -> None:
        """Empty, with new locks and no publishing thread: as made, and in a forked child (the
        parent publishes what it counted; its threads may have held the locks)."""
        self.lock = threading.Lock()
        # One publication at a time, whole: a scrape or an exit that comes during another finds
        # the tally in the values once it ends, and a fork never comes halfway through one.
        self.publication = threading.Lock()
        self.counts: Tally[Any] = Tally()
        self.buckets = [0] * len(_UPPER_BOUNDS)
        self.seconds = 0.0
        self.publishing = False  # whether this process's publishing thread has started
        self.publisher = DaemonStarter("keyservice-metrics", PUBLISH_INTERVAL)


_tally = _Tally()
# Read at each fork: a forked child's tally has new locks.
os.register_at_fork(before=lambda: _tally.publication.acquire(), after_in_parent=lambda: _tally.publication.release())


def observe(code: str, of_a_key: bool, seconds: float) -> None:
    """Count one verification that took ``seconds`` and ended in ``code`` (an outcome code);
    ``of_a_key``: it was judged on a key's row (a refusal then is the key's own limit).
    Published with the tally (see the module docstring)."""
    tally = _tally
    with tally.lock:
        tally.counts[_by_outcome[code]] += 1
        tally.buckets[bisect.bisect_left(_UPPER_BOUNDS, seconds)] += 1  # a bucket counts values <= its bound
        tally.seconds += seconds
        if code == "RATE_LIMITED":
            tally.counts[_refusals["rate_limit" if of_a_key else "failed_checks"]] += 1
        elif code == "USAGE_EXCEEDED":
            tally.counts[_refusals["usage"]] += 1
        elif code == "UNAVAILABLE":
            tally.counts[_STORAGE_ERRORS] += 1
        if tally.publishing:
            return
        if not tally.published_at_exit:  # even while the thread cannot be started
            tally.published_at_exit = True
            atexit.register(publish)
        # The first verification of this process (a forked worker); if the thread cannot be started,
        # scrapes and the exit still publish the tally, and a later verification tries again.
        tally.publishing = tally.publisher.start(_publish_every_interval)


def _publish_every_interval() -> None:
    while True:
        time.sleep(PUBLISH_INTERVAL)
        try:
            publish()
        except Exception:  # a value's file unwritable (a full disk): that tally is lost, said here
            logger.exception("keyservice: metrics not published")


def publish() -> None:
    """Add this process's tally to the Prometheus values now."""
    tally = _tally
    with tally.publication:
        with tally.lock:
            counts, buckets, seconds = tally.counts, tally.buckets, tally.seconds
            tally.counts, tally.buckets, tally.seconds = Tally(), [0] * len(_UPPER_BOUNDS), 0.0
        for value, count in counts.items():
            value.inc(count)
        if any(buckets):
            # The client observes one value at a time; its histogram's own bucket and sum values
            # take a tally's whole counts at once.
            for bucket, count in zip(_LATENCY._buckets, buckets, strict=True):
                if count:
                    bucket.inc(count)
            _LATENCY._sum.inc(seconds)


def count_bcrypt_check(accepted: bool) -> None:
    """Count one bcrypt check of a secret, accepted or refused."""
    _BCRYPT_CHECKS.labels("accepted" if accepted else "refused").inc()


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format (every worker's, under gunicorn, this one's tally
    published first), and its content type."""
    publish()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def warn_if_per_worker() -> None:
    """Warn when gunicorn runs several workers without ``PROMETHEUS_MULTIPROC_DIR``: each worker
    then counts alone, and /metrics shows whichever one answers the scrape."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return
    workers = gunicorn_workers()
    if workers > 1:
        logger.warning(
            "keyservice: gunicorn runs %d workers without PROMETHEUS_MULTIPROC_DIR: /metrics shows one worker's"
            " counts. Start it with -c python:keyservice.gunicorn_conf, or point PROMETHEUS_MULTIPROC_DIR at an"
            " empty folder",
            workers,
        )


def gunicorn_workers() -> int:
    """How many workers the gunicorn running this process starts (1 outside gunicorn), as its
    command line, ``GUNICORN_CMD_ARGS`` or ``WEB_CONCURRENCY`` say (a config file's ``workers`` is
    not read: reading one runs it again)."""
    if not os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):  # gunicorn's master sets it
        return 1
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("-w", "--workers", type=int)
    workers = os.environ.get("WEB_CONCURRENCY", "1")
    # The command line wins over GUNICORN_CMD_ARGS, which wins over WEB_CONCURRENCY, as in gunicorn.
    for arguments in (shlex.split(os.environ.get("GUNICORN_CMD_ARGS", "")), sys.argv[1:]):
        with contextlib.suppress(argparse.ArgumentError):  # a value gunicorn would have refused too
            workers = str(parser.parse_known_args(arguments)[0].workers or workers)
    return int(workers) if workers.isdigit() else 1
