"""Prometheus metrics: verifications by outcome, their latency, bcrypt checks, limit refusals, storage errors.

Under gunicorn every worker is a process of its own, so the metrics use the
official client's multiprocess mode: ``gunicorn.conf.py`` points
``PROMETHEUS_MULTIPROC_DIR`` at an empty folder before any worker starts, each
worker writes its values to files there, and ``/metrics`` adds them up. Without
that variable (the dev server, tests, a host app) they live in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
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

from ..core.outcomes import Outcome

logger = logging.getLogger("keyservice.metrics")

_VERIFICATIONS = Counter("keyservice_verifications", "Key verifications, by outcome code.", ["outcome"])
_LATENCY = Histogram(
    "keyservice_verification_seconds",
    "Time to verify a key, limits included.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
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
for _limit in ("rate_limit", "failed_checks", "usage"):
    _LIMIT_REFUSALS.labels(_limit)
for _result in ("accepted", "refused"):
    _BCRYPT_CHECKS.labels(_result)


def observe(code: str, of_a_key: bool, seconds: float) -> None:
    """Count one verification that took ``seconds`` and ended in ``code`` (an outcome code);
    ``of_a_key``: it was judged on a key's row (a refusal then is the key's own limit)."""
    _by_outcome[code].inc()
    _LATENCY.observe(seconds)
    if code == "RATE_LIMITED":
        _LIMIT_REFUSALS.labels("rate_limit" if of_a_key else "failed_checks").inc()
    elif code == "USAGE_EXCEEDED":
        _LIMIT_REFUSALS.labels("usage").inc()
    elif code == "UNAVAILABLE":
        _STORAGE_ERRORS.inc()


def count_bcrypt_check(accepted: bool) -> None:
    """Count one bcrypt check of a secret, accepted or refused."""
    _BCRYPT_CHECKS.labels("accepted" if accepted else "refused").inc()


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format (every worker's, under gunicorn), and its content type."""
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
