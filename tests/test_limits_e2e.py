"""Quotas and rate limits end to end: real HTTP, gunicorn with 2 workers, many clients at once.

Every test runs on SQLite and on PostgreSQL, with the rate-limit windows in the
embedded LMDB file (``KEYSERVICE_RATELIMIT_STORAGE_URL`` unset) and in Redis: all
four pairs, except the 30-second sliding-window run, which serves the embedded
default, Redis and PostgreSQL + Redis at once.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from keyservice.verification.slidingwindow import SLOTS

from .conftest import database_for
from .helpers import RATELIMIT_HEADERS, bearer
from .load import Timed, all_at_once, hammer, header, outcome
from .servers import KeysCli, Response, gunicorn, service_environment

pytestmark = pytest.mark.slow  # starts the service, servers or a browser

LIMIT, PERIOD = 20, 10  # the rate limit of the tests' keys: 20 per 10 s
SLOT = PERIOD / SLOTS  # how late, at most, the window lets a request through again
# How late, at most, a client may see the limit refill: the slot, its polling interval and a request's latency.
REFILL_SLACK = SLOT + 1.0


@dataclass(frozen=True)
class Service(KeysCli):
    """A running service: the CLI on its database, and its base URL."""

    base: str

    @property
    def protected(self) -> str:
        return self.base + "/protected-with-key"


def start_service(
    stack: ExitStack, request: pytest.FixtureRequest, database_url: str, storage: str, log: Path
) -> Service:
    """gunicorn with 2 workers on a fresh database, rate limits counted in ``storage``
    ("embedded" or "redis"), stopped when ``stack`` closes."""
    settings = {"KEYSERVICE_BCRYPT_ROUNDS": "4"}
    if storage == "redis":
        settings["KEYSERVICE_RATELIMIT_STORAGE_URL"] = request.getfixturevalue("redis_url")
    environ = service_environment(database_url, **settings)
    return Service(environ, stack.enter_context(gunicorn(environ, log, workers=2)))


@pytest.fixture(params=["embedded", "redis"])
def service(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[Service]:
    """gunicorn with 2 workers on a fresh database, rate limits counted in ``request.param``."""
    with ExitStack() as stack:
        yield start_service(stack, request, database_url, request.param, tmp_path / "gunicorn.log")


def check_ratelimit_headers(response: Response) -> int:
    """Check the IETF draft's and the X-RateLimit-* headers of a 20-per-10-s key; return the remaining."""
    missing = [name for name in RATELIMIT_HEADERS if header(response, name) is None]
    assert not missing, f"{response.status} lacks {missing}: {response.headers}"
    assert header(response, "RateLimit-Policy") == f'"default";q={LIMIT};w={PERIOD}'
    assert header(response, "X-RateLimit-Limit") == str(LIMIT)
    remaining = int(header(response, "X-RateLimit-Remaining") or "")
    assert 0 <= remaining < LIMIT
    draft = re.fullmatch(r'"default";r=(\d+);t=(\d+)', header(response, "RateLimit") or "")
    assert draft is not None, header(response, "RateLimit")
    assert int(draft[1]) == remaining
    assert 1 <= int(draft[2]) <= math.ceil(PERIOD + SLOT)
    reset = int(header(response, "X-RateLimit-Reset") or "")  # epoch seconds, as GitHub's
    assert time.time() - 1 <= reset <= time.time() + PERIOD + SLOT + 1
    return remaining


def most_in_one_window(successes: list[Timed]) -> tuple[int, float]:
    """The most successes the server can only have counted within one window of PERIOD s, and the
    time of the first of them.

    Success k was counted between its ``sent`` and its ``received``: so those sent at or after
    ``a`` and received before ``a + PERIOD`` all fell in [a, a + PERIOD). Taking ``a`` from each
    success's ``sent`` finds every such set, with no assumption about latency.
    """
    most, start = 0, 0.0
    for anchor in successes:
        inside = sum(1 for timed in successes if timed.sent >= anchor.sent and timed.received < anchor.sent + PERIOD)
        if inside > most:
            most, start = inside, anchor.sent
    return most, start


def test_remaining_uses_let_exactly_that_many_through_however_many_come_at_once(service: Service) -> None:
    key_id, key = service.create_key("--remaining", "10")

    # No warm-up: it would spend uses. Both workers see the key for the first time here.
    responses = all_at_once(service.protected, bearer(key), 64)

    assert Counter(outcome(response) for response in responses) == {(200, None): 10, (429, "USAGE_EXCEEDED"): 54}
    assert service.show(key_id)["remaining"] == 0


def test_a_rate_limited_key_lets_exactly_its_limit_through_a_flood(service: Service) -> None:
    _, key = service.create_key("--ratelimit", f"{LIMIT}/{PERIOD}s")

    answers = hammer(service.protected, bearer(key), threads=32, seconds=5)

    successes = [timed for timed in answers if timed.response.status == 200]
    refused = [timed for timed in answers if timed.response.status != 200]
    assert len(successes) == LIMIT, Counter(outcome(timed.response) for timed in answers)
    assert refused, "the flood never went past the limit"
    assert Counter(outcome(timed.response) for timed in refused) == {(429, "RATE_LIMITED"): len(refused)}
    # The window runs from the first request counted (all 20 are in it: the run is shorter than
    # the window), which happened between the earliest send and the earliest answer of a success;
    # it has room again when that request's slot has left the window, up to a slot after the period.
    window_from = min(timed.sent for timed in successes), min(timed.received for timed in successes)
    for timed in refused:
        retry_after = int(header(timed.response, "Retry-After") or "")
        earliest = math.ceil(window_from[0] + PERIOD - timed.received)
        latest = math.ceil(window_from[1] + PERIOD + SLOT - timed.sent)
        assert max(1, earliest) <= retry_after <= min(math.ceil(PERIOD + SLOT), latest), (timed, window_from)
        assert check_ratelimit_headers(timed.response) == 0
    # Remaining counts down: the k-th success counted leaves at most 20 - k, whenever the
    # server read it after counting (others may have been counted in between), and the last leaves 0.
    remainings = sorted((check_ratelimit_headers(timed.response) for timed in successes), reverse=True)
    assert all(left <= LIMIT - 1 - k for k, left in enumerate(remainings)), remainings
    assert remainings[-1] == 0


SLIDING_STORAGES = [("sqlite", "embedded"), ("sqlite", "redis"), ("postgresql", "redis")]


def test_the_window_slides_no_ten_seconds_let_more_than_the_limit_through(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """30 s of 8 clients each on the embedded default, on Redis and on PostgreSQL + Redis at once."""
    with ExitStack() as stack:
        services = []
        for _number, (database, storage) in enumerate(SLIDING_STORAGES):
            folder = tmp_path / f"{database}-{storage}"
            folder.mkdir()
            url = stack.enter_context(database_for(database, request, folder))
            services.append(start_service(stack, request, url, storage, folder / "gunicorn.log"))
        keys = [service.create_key("--ratelimit", f"{LIMIT}/{PERIOD}s")[1] for service in services]
        with ThreadPoolExecutor(len(services)) as pool:
            runs = list(
                pool.map(
                    lambda both: hammer(both[0].protected, bearer(both[1]), threads=8, seconds=30),
                    zip(services, keys, strict=False),
                )
            )
    for (database, storage), answers in zip(SLIDING_STORAGES, runs, strict=False):
        check_the_window_slid(answers, f"{storage} on {database}")


def check_the_window_slid(answers: list[Timed], where: str) -> None:
    """No window's worth of time let more than the limit through, and every one after the first let some."""
    assert {outcome(timed.response) for timed in answers} <= {(200, None), (429, "RATE_LIMITED")}, where
    successes = [timed for timed in answers if timed.response.status == 200]
    first, end = successes[0].received, answers[-1].received
    most, since = most_in_one_window(successes)
    assert most <= LIMIT, f"{where}: {most} successes within {PERIOD} s from {since - first:+.3f} s: " + ", ".join(
        f"{timed.sent - first:.3f}..{timed.received - first:.3f}" for timed in successes
    )
    # And the limit refills: once the first window is over, every span of a window (and a slot and
    # a little slack for latency) lets some through.
    received = [timed.received for timed in successes]
    start = first + PERIOD
    assert end - start > PERIOD + REFILL_SLACK, f"{where}: the run was too short to see the window slide"
    for step in range(math.floor((end - start - PERIOD - REFILL_SLACK) * 10) + 1):
        span_start = start + step / 10
        span_end = span_start + PERIOD + REFILL_SLACK
        assert bisect.bisect_right(received, span_end) > bisect.bisect_left(received, span_start), (
            f"{where}: no success from {span_start - first:.1f} s to {span_end - first:.1f} s"
        )
