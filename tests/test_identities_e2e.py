"""Identities end to end: a customer's shared rate limit hammered through gunicorn, on the embedded
default (one instance, 2 workers) and on PostgreSQL + Redis (two instances of 2 workers)."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

from .conftest import database_for
from .helpers import bearer
from .load import Timed, hammer
from .servers import request as send
from .test_limits_e2e import LIMIT, PERIOD, start_service

pytestmark = pytest.mark.slow  # starts the service and servers

SETUPS = {"embedded": ("sqlite", "embedded", 1), "postgresql-redis": ("postgresql", "redis", 2)}


def refusal(timed: Timed) -> tuple[int, str | None, str | None]:
    """(status, problem code, the limit named) of one answer."""
    if timed.response.status == 200:
        return 200, None, None
    problem = json.loads(timed.response.body)
    return timed.response.status, problem["code"], problem.get("limit")


@pytest.mark.parametrize("setup", SETUPS)
def test_two_keys_share_their_identitys_limit_exactly_across_workers_and_instances(
    setup: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    database, storage, instances = SETUPS[setup]
    with ExitStack() as stack:
        url = stack.enter_context(database_for(database, request, tmp_path))
        services = [
            start_service(stack, request, url, storage, tmp_path / f"gunicorn-{number}.log")
            for number in range(instances)
        ]
        _, admin = services[0].create_key("--scope", "keys:admin")
        limits = [{"name": "requests", "limit": LIMIT, "period": PERIOD}]
        identity = {"external_client_id": "acme", "limits": limits}
        created = send(services[0].base + "/identities", "POST", bearer(admin), body=identity)
        assert created.status == 201, created.body
        keys = [services[0].create_key()[1] for _ in range(2)]  # two keys of acme
        # 32 threads: 16 per key, spread over every instance, for 5 s (half the window).
        runs = [(services[number % instances].protected, key) for number, key in enumerate(keys * instances)]
        with ThreadPoolExecutor(len(runs)) as pool:
            answers = [
                timed
                for run in pool.map(
                    lambda run: hammer(run[0], bearer(run[1]), threads=32 // len(runs), seconds=5), runs
                )
                for timed in run
            ]
    counted = Counter(refusal(timed) for timed in answers)
    assert counted[(200, None, None)] == LIMIT, counted
    assert set(counted) == {(200, None, None), (429, "RATE_LIMITED", "requests")}, counted
