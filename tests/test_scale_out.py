"""Many instances: two gunicorns sharing one PostgreSQL and one Redis, and PostgreSQL stopped
under traffic. Real servers, real HTTP; nothing here runs on SQLite.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import postgres_database
from .helpers import bearer
from .load import Timed, all_at_once, hammer, outcome
from .servers import KeysCli, flask_cli, gunicorn, request, service_environment
from .services import PostgresServer

pytestmark = pytest.mark.slow  # starts the service, servers or a browser

LIMIT, PERIOD = 20, 10


@dataclass(frozen=True)
class Fleet(KeysCli):
    """Instances of the service on one database and one Redis, and the CLI on that database."""

    bases: list[str]

    def protected(self, instance: int) -> str:
        return self.bases[instance] + "/protected-with-key"


def start_fleet(
    stack: ExitStack, database_url: str, redis_url: str, folder: Path, instances: int, **settings: str
) -> Fleet:
    """Migrate the database, then start ``instances`` gunicorns (2 workers each, with ``settings``)
    on ports of their own."""
    environ = service_environment(
        database_url, KEYSERVICE_BCRYPT_ROUNDS="4", KEYSERVICE_RATELIMIT_STORAGE_URL=redis_url, **settings
    )
    migrated = flask_cli(environ, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    bases = [stack.enter_context(gunicorn(environ, folder / f"gunicorn-{n}.log", workers=2)) for n in range(instances)]
    return Fleet(environ, bases)


@pytest.fixture
def fleet(postgres: PostgresServer, redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """Instances A and B on the run's PostgreSQL (a database of their own) and Redis."""
    with postgres_database(postgres) as database_url, ExitStack() as stack:
        yield start_fleet(stack, database_url, redis_url, tmp_path, instances=2)


def test_a_key_revoked_through_one_instance_is_refused_by_the_other_within_a_second(fleet: Fleet) -> None:
    _, admin = fleet.create_key("--scope", "keys:write")
    key_id, key = fleet.create_key()
    warm = [request(fleet.protected(1), "POST", bearer(key)) for _ in range(40)]
    assert {response.status for response in warm} == {200}  # both of B's workers have it cached

    revoked = request(f"{fleet.bases[0]}/keys/{key_id}", "DELETE", bearer(admin))
    assert revoked.status == 204, revoked.body
    one_second_later = time.monotonic() + 1.0
    while time.monotonic() < one_second_later:
        request(fleet.protected(1), "POST", bearer(key))
    after = [request(fleet.protected(1), "POST", bearer(key)) for _ in range(40)]
    assert Counter(outcome(response) for response in after) == {(401, "REVOKED"): 40}


def test_remaining_10_lets_exactly_10_of_64_through_across_both_instances(fleet: Fleet) -> None:
    key_id, key = fleet.create_key("--remaining", "10")

    responses = all_at_once([fleet.protected(0), fleet.protected(1)], bearer(key), 64)

    assert Counter(outcome(response) for response in responses) == {(200, None): 10, (429, "USAGE_EXCEEDED"): 54}
    assert fleet.show(key_id)["remaining"] == 0


def test_a_rate_limit_is_shared_by_both_instances(fleet: Fleet) -> None:
    _, key = fleet.create_key("--ratelimit", f"{LIMIT}/{PERIOD}s")

    answers = hammer([fleet.protected(0), fleet.protected(1)], bearer(key), threads=32, seconds=3)

    counts = Counter(outcome(timed.response) for timed in answers)
    assert counts[(200, None)] == LIMIT, counts
    assert set(counts) == {(200, None), (429, "RATE_LIMITED")}, counts
    # Both instances refused: 20 in all is one limit counted in Redis, not 20 each.
    refused_by = {timed.url for timed in answers if timed.response.status == 429}
    assert refused_by == {fleet.protected(0), fleet.protected(1)}


# --- PostgreSQL stopped under traffic -----------------------------------------------------------------


@dataclass
class Traffic:
    """Clients sending one request after another with each key until told to stop."""

    urls: list[str]
    keys: dict[str, str]  # name -> key
    answers: dict[str, list[Timed]]
    _stop: threading.Event
    _threads: list[threading.Thread]

    @classmethod
    def start(cls, urls: list[str], keys: dict[str, str], clients_per_key: int = 2) -> Traffic:
        traffic = cls(urls, keys, {name: [] for name in keys}, threading.Event(), [])
        for name, key in keys.items():
            for n in range(clients_per_key):
                thread = threading.Thread(target=traffic._client, args=(name, key, urls[n % len(urls)]))
                thread.start()
                traffic._threads.append(thread)
        return traffic

    def _client(self, name: str, key: str, url: str) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            response = request(url, "POST", bearer(key))
            self.answers[name].append(Timed(sent, time.monotonic(), response, url))
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def test_postgresql_stopped_under_traffic_means_503_only_then_recovery_and_nothing_lost(
    own_postgres: PostgresServer, redis_url: str, tmp_path: Path
) -> None:
    own_postgres.administer('CREATE DATABASE "outage"')
    with ExitStack() as stack:
        fleet = start_fleet(stack, own_postgres.url("outage"), redis_url, tmp_path, instances=2)
        _, plain = fleet.create_key()
        counted_id, counted = fleet.create_key("--remaining", "100000")
        urls = [fleet.protected(0), fleet.protected(1)]
        traffic = Traffic.start(urls, {"plain": plain, "counted": counted})
        try:
            time.sleep(1.5)
            own_postgres.stop()
            down_from = time.monotonic()
            time.sleep(3)
            up_from = time.monotonic()
            own_postgres.start()
            time.sleep(5)
        finally:
            traffic.stop()

    # A worker may answer a key it checked within the cache TTL (0.5 s) from memory: a plain
    # key's row is re-read after that, a counted key writes on every request.
    every = [timed for answers in traffic.answers.values() for timed in answers]
    assert all(timed.response.status in (200, 503) for timed in every), Counter(
        outcome(timed.response) for timed in every
    )
    for name, grace in (("plain", 0.5), ("counted", 0.0)):
        answers = traffic.answers[name]
        while_down = [timed for timed in answers if down_from + grace < timed.sent and timed.received < up_from]
        assert len(while_down) > 20, f"{name}: too little traffic while PostgreSQL was down"
        assert Counter(outcome(timed.response) for timed in while_down) == {(503, "UNAVAILABLE"): len(while_down)}, name
        assert all(timed.response.headers.get("Retry-After") == "1" for timed in while_down)
        recovered = [timed.sent - up_from for timed in answers if timed.sent > up_from and timed.response.status == 200]
        assert recovered and recovered[0] < 3.0, f"{name}: no success within 3 s of PostgreSQL coming back"
        last_second = [timed for timed in answers if timed.sent > up_from + 4]
        assert last_second and all(timed.response.status == 200 for timed in last_second), name

    # Nothing lost or counted twice: every success took one use, every refusal none.
    successes = sum(1 for timed in traffic.answers["counted"] if timed.response.status == 200)
    assert fleet.show(counted_id)["remaining"] == 100000 - successes
