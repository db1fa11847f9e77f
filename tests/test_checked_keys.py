"""bcrypt once per key per machine (or, with Redis, per deployment): the shared checked keys, the
shared failed-check budgets, and what the shared stores hold. Through gunicorn where workers matter.
"""

from __future__ import annotations

import os
import signal
import stat
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from keyservice import Outcome, verify_key
from keyservice.app import db
from keyservice.core.config import DEFAULTS, ConfigError, load_settings
from keyservice.core.machinefiles import path_for
from keyservice.core.models import ApiKey, KeyChange
from keyservice.management.store import put_role
from keyservice.verification.changefeed import PRUNE_AFTER

from .conftest import migrated_app, postgres_database
from .helpers import bearer, issue, wait_until, wrong_secret
from .load import outcome
from .servers import (
    KeysCli,
    answers_by_worker,
    deployment_settings,
    gunicorn,
    gunicorn_workers,
    labelled_metric,
    request,
    service_environment,
)
from .services import PostgresServer
from .test_scale_out import start_fleet
from .test_storage_at_rest import raw_database

SECRET_KEY = "a-deployment-secret-of-at-least-32-characters"


def deployment_secret(database_url: str) -> bytes:
    """The secret the service on ``database_url`` runs with: made beside SQLite (mode 0600), set on PostgreSQL."""
    if database_url.startswith("sqlite"):
        secret = path_for(database_url, "secret")
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        return secret.read_bytes()
    return deployment_settings(database_url)["KEYSERVICE_SECRET_KEY"].encode()


def bcrypt_checks(base: str) -> Counter[str]:
    """The checks the service's ``keyservice_bcrypt_checks_total`` counts, by result (accepted,
    refused; a result still at 0 left out)."""
    return Counter(
        {
            result: int(count)
            for result, count in labelled_metric(base, "keyservice_bcrypt_checks_total", "result").items()
            if count
        }
    )


def use(url: str, key: str, times: int) -> Counter[tuple[int, str | None]]:
    """Send ``key`` ``times`` times, one after another; the answers counted."""
    return Counter(outcome(request(url, "POST", bearer(key))) for _ in range(times))


def outcomes_by_worker(base: str, log: Path, key: str) -> dict[int, set[tuple[int, str | None]]]:
    """Send ``key`` until each worker of the gunicorn at ``base`` has answered it (as its JSON
    ``log`` says); the outcomes each worker gave."""
    by_worker = answers_by_worker(base, log, lambda: request(base + "/protected-with-key", "POST", bearer(key)))
    return {worker: {outcome(answer) for answer in answers} for worker, answers in by_worker.items()}


@pytest.fixture
def environ(database_url: str) -> dict[str, str]:
    return service_environment(
        database_url,
        KEYSERVICE_BCRYPT_ROUNDS="4",
        KEYSERVICE_PROXIES="1",
        KEYSERVICE_FAILED_VERIFY_LIMIT_PER_CLIENT="2/minute",
        KEYSERVICE_FAILED_VERIFY_LIMIT_PER_KEY="10/minute",
    )


@pytest.mark.slow
def test_a_key_costs_one_bcrypt_check_per_machine_even_after_a_worker_is_killed(
    environ: dict[str, str], tmp_path: Path
) -> None:
    cli = KeysCli(environ)
    keys = [cli.create_key()[1] for _ in range(5)]
    log = tmp_path / "gunicorn.log"
    with gunicorn(environ, log, workers=2) as base:
        for key in keys:  # each worker meets each key
            assert outcomes_by_worker(base, log, key) == {worker: {(200, None)} for worker in gunicorn_workers(base)}
        assert bcrypt_checks(base) == {"accepted": 5}

        workers = gunicorn_workers(base)
        assert len(workers) == 2
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while (len(replaced := gunicorn_workers(base)) < 2 or killed in replaced) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert killed not in replaced and len(replaced) == 2

        for key in keys:  # the replacement among the workers that answered each key
            assert outcomes_by_worker(base, log, key) == {worker: {(200, None)} for worker in replaced}
        assert bcrypt_checks(base) == {"accepted": 5}  # the replacement found every key checked


@pytest.mark.slow
def test_a_flood_of_wrong_secrets_from_many_addresses_costs_at_most_the_machines_budget(
    environ: dict[str, str], tmp_path: Path
) -> None:
    _key_id, key = KeysCli(environ).create_key()
    log = tmp_path / "gunicorn.log"
    with gunicorn(environ, log, workers=3) as base:
        url = base + "/protected-with-key"
        assert use(url, key, 1) == {(200, None): 1}

        def attack(n: int) -> tuple[int, str | None]:
            address = f"10.{n % 200}.0.{n % 7}"
            return outcome(request(url, "POST", {**bearer(wrong_secret(key, n)), "X-Forwarded-For": address}))

        with ThreadPoolExecutor(16) as pool:
            answers = Counter(pool.map(attack, range(300)))
        # The per-key budget (10 a minute) is the machine's, shared by the three workers, and
        # taken before each check: 10 wrong secrets reached bcrypt, however many ran at once.
        assert answers[(401, "NOT_FOUND")] == 10 and answers[(429, "RATE_LIMITED")] == 290, answers
        assert bcrypt_checks(base) == {"accepted": 1, "refused": 10}
        # The real key, checked before, is served by every worker, the flood notwithstanding.
        assert outcomes_by_worker(base, log, key) == {worker: {(200, None)} for worker in gunicorn_workers(base)}
        assert bcrypt_checks(base) == {"accepted": 1, "refused": 10}


@pytest.mark.slow
def test_a_key_checked_on_one_instance_costs_no_bcrypt_on_the_other(
    postgres: PostgresServer, redis_url: str, tmp_path: Path
) -> None:
    with postgres_database(postgres) as database_url, ExitStack() as stack:
        fleet = start_fleet(stack, database_url, redis_url, tmp_path, instances=2, KEYSERVICE_SECRET_KEY=SECRET_KEY)
        _, key = fleet.create_key()
        assert use(fleet.protected(0), key, 10) == {(200, None): 10}
        assert use(fleet.protected(1), key, 20) == {(200, None): 20}
        assert bcrypt_checks(fleet.bases[0]) == {"accepted": 1}
        assert bcrypt_checks(fleet.bases[1]) == {}


# --- What the shared stores hold --------------------------------------------------------------------


def embedded_bytes(database_url: str) -> bytes:
    """The bytes of the machine's files: the checked keys' (LMDB, and its lock file), the budgets'
    and the rate limits' windows (SQLite, and their write-ahead logs and shared memory)."""
    return b"".join(
        path.read_bytes()
        for what in ("checked", "budget-windows", "windows")
        for path in path_for(database_url, what).parent.glob(path_for(database_url, what).name + "*")
    )


def redis_bytes(url: str) -> bytes:
    """Every keyservice key in Redis: its name, its DUMP, and its value as plain reads give it."""
    client = redis.Redis.from_url(url)
    held = []
    for name in client.scan_iter("keyservice:*"):
        held += [name, client.dump(name) or b""]
        kind = client.type(name)
        if kind == b"string":
            held.append(client.get(name) or b"")
        elif kind == b"hash":
            held += [part for pair in client.hgetall(name).items() for part in pair]
    client.close()
    return b"".join(held)


@pytest.mark.parametrize("shared", ["embedded", "redis"])
def test_the_shared_stores_hold_no_key_no_secret_no_hash_and_a_rotated_key_expires_though_checked(
    database_url: str, shared: str, request: pytest.FixtureRequest
) -> None:
    storage = request.getfixturevalue("redis_url") if shared == "redis" else ""
    with migrated_app(database_url, KEYSERVICE_CACHE_TTL=0.5, KEYSERVICE_RATELIMIT_STORAGE_URL=storage) as app:
        keys = [issue(app, ratelimit={"limit": 100, "period": 60})[1] for _ in range(3)]
        _, admin = issue(app, "keys:admin")
        client = app.test_client()
        for key in [*keys, admin]:
            assert client.post("/protected-with-key", headers=bearer(key)).status_code == 200
            assert client.post("/protected-with-key", headers=bearer(wrong_secret(key))).status_code == 401
        rotated = client.post(f"/keys/{keys[0].split('_')[1]}/rotate", headers=bearer(admin), json={"grace_seconds": 1})
        assert rotated.status_code == 201
        keys.append(rotated.get_json()["key"])
        assert client.post("/protected-with-key", headers=bearer(keys[-1])).status_code == 200
        assert client.delete(f"/keys/{keys[1].split('_')[1]}", headers=bearer(admin)).status_code == 204
        with app.app_context():
            hashes = list(db.session.scalars(select(ApiKey.secret_hash)))

        # The old key, checked and in this worker's memory, is refused once its grace has passed.
        assert client.post("/protected-with-key", headers=bearer(keys[0])).status_code == 200
        wait_until(
            lambda: client.post("/protected-with-key", headers=bearer(keys[0])).get_json().get("code") == "EXPIRED",
            5,
            "the old key refused (a grace of 1 s, a cache TTL of 0.5 s)",
        )

        stored = redis_bytes(storage) if shared == "redis" else embedded_bytes(database_url)
        secret = deployment_secret(database_url)
        for held in (stored, raw_database(database_url, request)):
            assert secret not in held
        assert keys[0].split("_")[1].encode() in stored  # a key id: the entries were read
        for key in [*keys, admin]:
            assert key.encode() not in stored and key.split("_")[2][:32].encode() not in stored
        for secret_hash in hashes:
            assert secret_hash.encode() not in stored and secret_hash[7:].encode() not in stored


# --- The change feed and the deployment secret, in one process ----------------------------------------


@pytest.fixture
def cached_app(database_url: str) -> Iterator[Flask]:
    """An app with the default cache TTL."""
    with migrated_app(database_url, KEYSERVICE_CACHE_TTL=0.5) as app:
        yield app


def test_a_changed_role_reaches_the_keys_holding_it_through_the_feed(cached_app: Flask) -> None:
    with cached_app.app_context():
        put_role(db.session, "reader", ["a:read"])
        db.session.commit()
    _, key = issue(cached_app, roles=["reader"])
    with cached_app.app_context():
        assert verify_key(key, ["a:read"]).valid
        assert verify_key(key, ["a:write"]).code is Outcome.INSUFFICIENT_SCOPE
        put_role(db.session, "reader", ["a:read", "a:write"])
        db.session.commit()
    time.sleep(0.6)  # fixed: the change must arrive within the cache TTL (0.5 s), the bound under test
    with cached_app.app_context():
        assert verify_key(key, ["a:write"]).valid


def test_the_feed_keeps_minutes_of_changes(cached_app: Flask, time_machine) -> None:  # type: ignore[no-untyped-def]
    key_id, _ = issue(cached_app)
    with cached_app.app_context():
        for enabled in (False, True):
            db.session.get(ApiKey, key_id).enabled = enabled
            db.session.commit()
        assert db.session.scalar(select(func.count()).select_from(KeyChange)) == 2
        time_machine.move_to(time.time() + PRUNE_AFTER.total_seconds() + 60)
        db.session.get(ApiKey, key_id).name = "renamed"
        db.session.commit()
        assert list(db.session.scalars(select(KeyChange.key_id))) == [key_id]  # the older two pruned


def test_the_deployment_secret_is_made_once_or_set_and_never_echoed(database_url: str) -> None:
    with migrated_app(database_url) as first, migrated_app(database_url) as second:
        _, key = issue(first)
        with first.app_context():
            assert verify_key(key).valid
        checked = REGISTRY.get_sample_value("keyservice_bcrypt_checks_total", {"result": "accepted"})
        with second.app_context():  # as another process on the machine: the same secret, no bcrypt
            assert verify_key(key).valid
        assert REGISTRY.get_sample_value("keyservice_bcrypt_checks_total", {"result": "accepted"}) == checked
    assert deployment_secret(database_url)  # made (SQLite) or set (PostgreSQL)
    with pytest.raises(ConfigError) as refused:
        load_settings({**DEFAULTS, "KEYSERVICE_SECRET_KEY": "too-short-a-secret"})
    assert "too-short-a-secret" not in str(refused.value)
    assert SECRET_KEY not in repr(load_settings({**DEFAULTS, "KEYSERVICE_SECRET_KEY": SECRET_KEY}))
