"""Usage limits (``remaining``) and per-key rate limits (``ratelimit``).

Through the example protected view and a view that shows ``g.auth.remaining``,
``POST /keys/verify``, the management API, the configuration and the CLI, on
SQLite and PostgreSQL, with the rate-limit counters in the database and in
Redis. Refills over time are in ``test_refill.py``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
import time_machine
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from werkzeug.test import TestResponse

from keyservice import create_app, require_key
from keyservice.app import db
from keyservice.core.config import ConfigError
from keyservice.core.machinefiles import path_for
from keyservice.core.models import ApiKey
from keyservice.verification.rediswindows import RedisWindows
from keyservice.verification.slidingwindow import SLOTS, Hit

from .conftest import TEST_CONFIG, migrated_app
from .helpers import (
    RATELIMIT_HEADERS,
    assert_problem,
    bearer,
    cli_create,
    describe,
    free_port,
    issue,
    started_in_order,
    stored_windows,
)

RATELIMIT_FIELD = re.compile(r'"default";r=(\d+);t=(\d+)')
MANAGEMENT = ("keys:read", "keys:write", "keys:verify")


# --- the app: each database, with the rate-limit counters in it and in Redis -----------------------


@pytest.fixture(params=["embedded", "redis"])
def app(request: pytest.FixtureRequest, database_url: str) -> Iterator[Flask]:
    """The conftest's app, its rate limits counted in the app's database or in Redis."""
    storage = (
        {}
        if request.param == "embedded"
        else {"KEYSERVICE_RATELIMIT_STORAGE_URL": request.getfixturevalue("redis_url")}
    )
    with migrated_app(database_url, **storage) as app:
        yield app


# For the tests that move the clock: Redis keeps its own time, which time_machine cannot move.
embedded_only = pytest.mark.parametrize("app", ["embedded"], indirect=True)


# --- helpers ----------------------------------------------------------------------------------------


def manager(app: Flask) -> str:
    """A management key of client ``acme`` (without any limit of its own)."""
    return issue(app, *MANAGEMENT)[1]


def operator(app: Flask) -> str:
    """A keys:admin key: the one principal that may loosen a limit."""
    return issue(app, "keys:admin")[1]


def stored_remaining(app: Flask, key_id: str) -> int | None:
    """The key's ``remaining`` as the database has it now."""
    with app.app_context():
        api_key = db.session.get(ApiKey, key_id)
        assert api_key is not None
        return api_key.remaining


def protected(client: FlaskClient, key: str) -> TestResponse:
    return client.post("/protected-with-key", headers=bearer(key))


def assert_ratelimit_headers(response: TestResponse, limit: int, period: int, remaining: int) -> None:
    """The IETF draft's fields and the X-RateLimit-* trio, for ``remaining`` requests left."""
    headers = response.headers
    assert headers["RateLimit-Policy"] == f'"default";q={limit};w={period}'
    match = RATELIMIT_FIELD.fullmatch(headers["RateLimit"])
    assert match is not None, headers["RateLimit"]
    assert int(match[1]) == remaining
    assert 1 <= int(match[2]) <= math.ceil(period + period / SLOTS)
    assert headers["X-RateLimit-Limit"] == str(limit)
    assert headers["X-RateLimit-Remaining"] == str(remaining)
    reset = int(headers["X-RateLimit-Reset"])  # Unix seconds, as "reset" in POST /keys/verify
    now = time.time()
    # A request stops counting when its slot has left the window: up to a slot past the period.
    assert now < reset <= math.ceil(now + period + period / SLOTS)


def assert_no_ratelimit_headers(response: TestResponse) -> None:
    present = [name for name in (*RATELIMIT_HEADERS, "Retry-After") if name in response.headers]
    assert present == [], present


def verify(client: FlaskClient, verifier: str, key: str) -> dict[str, Any]:
    response = client.post("/keys/verify", headers=bearer(verifier), json={"key": key})
    assert response.status_code == 200, describe(response)
    body: dict[str, Any] = response.get_json()
    return body


def uses_left(client: FlaskClient, key: str) -> int | None:
    """``g.auth.remaining`` as the view saw it (the request must pass)."""
    response = client.post("/usage", headers=bearer(key))
    assert response.status_code == 200, describe(response)
    remaining: int | None = response.get_json()["remaining"]
    return remaining


# --- rate limits at a protected view -----------------------------------------------------------------


def test_a_rate_limited_key_gets_its_limit_then_429_with_the_headers(app: Flask, client: FlaskClient) -> None:
    _, key = issue(app, ratelimit={"limit": 3, "period": 60})
    for left in (2, 1, 0):
        response = protected(client, key)
        assert response.status_code == 200, describe(response)
        assert_ratelimit_headers(response, 3, 60, left)

    refused = protected(client, key)
    assert_problem(refused, 429, "RATE_LIMITED")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 + 60 // SLOTS  # up to a slot late
    assert_ratelimit_headers(refused, 3, 60, 0)
    assert key not in refused.get_data(as_text=True)


# Past a period and the slot a request was counted in: when it has stopped counting for sure.
AFTER_THE_WINDOW = 60 + 60 / SLOTS + 1


@embedded_only
def test_the_window_lets_requests_through_again_within_a_slot_after_the_period(app: Flask, client: FlaskClient) -> None:
    _, key = issue(app, ratelimit={"limit": 1, "period": 60})
    start = time.time()
    assert protected(client, key).status_code == 200
    assert_problem(protected(client, key), 429, "RATE_LIMITED")
    with time_machine.travel(start + 59.9, tick=False):  # never early
        assert_problem(protected(client, key), 429, "RATE_LIMITED")
    with time_machine.travel(start + AFTER_THE_WINDOW, tick=False):
        response = protected(client, key)
        assert response.status_code == 200, describe(response)
        assert_ratelimit_headers(response, 1, 60, 0)


def windows_stored(app: Flask) -> int:
    """How many windows the embedded storage holds, as another process reading its file sees them."""
    with app.app_context():
        return stored_windows(path_for(db.engine.url.render_as_string()))


@embedded_only
def test_windows_take_one_entry_per_key_and_go_when_their_period_is_over(app: Flask, client: FlaskClient) -> None:
    _, key = issue(app, ratelimit={"limit": 70, "period": 60})
    _, other = issue(app, ratelimit={"limit": 1000, "period": 60})
    start = time.time()
    for window in range(2):
        with time_machine.travel(start + AFTER_THE_WINDOW * window, tick=False):
            for _ in range(70):
                assert protected(client, key).status_code == 200
            assert_problem(protected(client, key), 429, "RATE_LIMITED")
    assert windows_stored(app) == 1  # 140 requests, one entry
    assert protected(client, other).status_code == 200
    assert windows_stored(app) == 2
    # Once both periods (and a slot) are over, the next request's sweep forgets them.
    with time_machine.travel(start + AFTER_THE_WINDOW * 2 + 1, tick=False):
        _, third = issue(app, ratelimit={"limit": 1, "period": 60})
        assert protected(client, third).status_code == 200
    assert windows_stored(app) == 1


@pytest.mark.parametrize("app", ["redis"], indirect=True)
def test_a_rate_limited_request_is_exactly_one_redis_command(app: Flask, client: FlaskClient, redis_url: str) -> None:
    _, key = issue(app, ratelimit={"limit": 1000, "period": 60})
    assert protected(client, key).status_code == 200  # the script loaded and a connection made
    watcher, marker = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    marker.ping()  # its connection made before MONITOR starts
    with watcher.monitor() as monitor:
        for _ in range(20):
            assert protected(client, key).status_code == 200
        marker.echo("done")
        commands = []
        while (command := monitor.next_command())["command"] != "ECHO done":
            commands.append(command)
    watcher.close()
    marker.close()
    # Those the script runs inside Redis are marked "lua"; the app's own are what it sent.
    sent = [command["command"].split()[0] for command in commands if command["client_type"] != "lua"]
    assert sent == ["EVALSHA"] * 20


# Holds Redis for ARGV[1] microseconds of its clock: one script runs at a time.
BUSY_REDIS = """
local function now() local t = redis.call('TIME') return tonumber(t[1]) * 1000000 + tonumber(t[2]) end
local stop = now() + tonumber(ARGV[1])
repeat until now() >= stop
return 0
"""


def test_hits_counted_while_redis_is_busy_share_one_script_and_stay_exact(redis_url: str) -> None:
    windows, blocker, key = RedisWindows(redis_url), redis.Redis.from_url(redis_url), secrets.token_hex(8)
    assert windows.hit(f"{key}-warm", 5, 60).allowed  # the script loaded and a connection made
    watcher, marker = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    marker.ping()
    hits: list[Hit] = []
    with watcher.monitor() as monitor:
        busy = threading.Thread(target=lambda: blocker.eval(BUSY_REDIS, 0, 600_000))
        busy.start()
        time.sleep(0.05)
        # The first waits for Redis; the 7 that come meanwhile are one group, one script.
        threads = started_in_order(lambda: hits.append(windows.hit(key, 5, 60)), 8)
        for thread in [busy, *threads]:
            thread.join(30)
        marker.echo("done")
        commands = []
        while (command := monitor.next_command())["command"] != "ECHO done":
            commands.append(command["command"])
    for client in (watcher, marker, blocker):
        client.close()
    assert [command.split()[0] for command in commands].count("EVALSHA") == 2
    assert sorted(hit.count for hit in hits if hit.allowed) == [1, 2, 3, 4, 5]
    assert [hit.count for hit in hits if not hit.allowed] == [5, 5, 5]
    assert windows.hit(key, 5, 60) == Hit(False, 5, hits[0].reset_at)


def test_a_key_without_a_rate_limit_gets_no_rate_limit_headers(app: Flask, client: FlaskClient) -> None:
    _, key = issue(app)
    for _ in range(3):
        response = protected(client, key)
        assert response.status_code == 200, describe(response)
        assert_no_ratelimit_headers(response)


def test_a_key_with_only_remaining_gets_no_rate_limit_headers(app: Flask, client: FlaskClient) -> None:
    _, key = issue(app, remaining=5)
    response = protected(client, key)
    assert response.status_code == 200, describe(response)
    assert_no_ratelimit_headers(response)


# --- remaining uses ----------------------------------------------------------------------------------


def test_remaining_counts_down_in_g_auth_then_usage_is_exceeded(usage_app: Flask, client: FlaskClient) -> None:
    key_id, key = issue(usage_app, remaining=2)
    assert uses_left(client, key) == 1
    assert uses_left(client, key) == 0
    for _ in range(2):
        refused = client.post("/usage", headers=bearer(key))
        assert_problem(refused, 429, "USAGE_EXCEEDED")
        assert_no_ratelimit_headers(refused)
    assert_problem(protected(client, key), 429, "USAGE_EXCEEDED")
    assert stored_remaining(usage_app, key_id) == 0


def test_a_key_without_remaining_shows_none_in_g_auth(usage_app: Flask, client: FlaskClient) -> None:
    _, key = issue(usage_app)
    assert [uses_left(client, key) for _ in range(3)] == [None, None, None]


def test_remaining_zero_is_exceeded_from_the_start(app: Flask, client: FlaskClient) -> None:
    _, key = issue(app, remaining=0)
    assert_problem(protected(client, key), 429, "USAGE_EXCEEDED")


@embedded_only
def test_a_rate_limited_request_does_not_spend_a_use(usage_app: Flask, client: FlaskClient) -> None:
    key_id, key = issue(usage_app, remaining=5, ratelimit={"limit": 1, "period": 60})
    assert uses_left(client, key) == 4
    for _ in range(3):
        assert_problem(client.post("/usage", headers=bearer(key)), 429, "RATE_LIMITED")
    assert stored_remaining(usage_app, key_id) == 4
    with time_machine.travel(time.time() + AFTER_THE_WINDOW, tick=False):
        assert uses_left(client, key) == 3


def test_a_refused_request_does_not_spend_a_use(app: Flask, client: FlaskClient) -> None:
    key_id, key = issue(app, "reports:read", remaining=3)

    @app.get("/admin-only")
    @require_key("admin")
    def admin_only() -> dict[str, Any]:
        return {}

    assert_problem(client.get("/admin-only", headers=bearer(key)), 403, "INSUFFICIENT_SCOPE")
    assert stored_remaining(app, key_id) == 3


# --- at once, from many threads ---------------------------------------------------------------------


def statuses_at_once(app: Flask, key: str, count: int) -> list[int]:
    """The statuses of ``count`` requests with ``key``, eight at a time, each thread with its own client."""

    def one(_: int) -> int:
        return protected(app.test_client(), key).status_code

    with ThreadPoolExecutor(8) as pool:
        return sorted(pool.map(one, range(count)))


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param({"remaining": 5}, id="remaining 5"),
        pytest.param({"ratelimit": {"limit": 5, "period": 60}}, id="ratelimit 5/60s"),
    ],
)
def test_a_limit_of_5_lets_exactly_5_of_many_concurrent_requests_through(app: Flask, limits: dict[str, Any]) -> None:
    for _ in range(3):  # a race shows up in some rounds only
        key_id, key = issue(app, **limits)
        assert statuses_at_once(app, key, 24) == [200] * 5 + [429] * 19
        if "remaining" in limits:
            assert stored_remaining(app, key_id) == 0


# --- POST /keys/verify -------------------------------------------------------------------------------


def test_a_verify_counts_as_a_use(app: Flask, client: FlaskClient) -> None:
    verifier = manager(app)
    key_id, key = issue(app, remaining=1)
    first = verify(client, verifier, key)
    assert (first["valid"], first["code"], first["remaining"], first["ratelimit"]) == (True, "VALID", 0, None)
    assert first["key_id"] == key_id
    second = verify(client, verifier, key)
    assert (second["valid"], second["code"], second["ratelimit"]) == (False, "USAGE_EXCEEDED", None)
    assert_problem(protected(client, key), 429, "USAGE_EXCEEDED")


def test_verify_of_an_unlimited_key_has_no_remaining_and_no_ratelimit(app: Flask, client: FlaskClient) -> None:
    body = verify(client, manager(app), issue(app)[1])
    assert (body["valid"], body["remaining"], body["ratelimit"]) == (True, None, None)


def test_verify_shows_the_rate_limit_of_a_rate_limited_key(app: Flask, client: FlaskClient) -> None:
    verifier = manager(app)
    _, key = issue(app, ratelimit={"limit": 2, "period": 60})
    before = time.time()
    first = verify(client, verifier, key)
    assert first["valid"] is True and first["remaining"] is None
    assert set(first["ratelimit"]) == {"limit", "remaining", "reset"}
    assert (first["ratelimit"]["limit"], first["ratelimit"]["remaining"]) == (2, 1)
    assert isinstance(first["ratelimit"]["reset"], int)
    assert before < first["ratelimit"]["reset"] <= math.ceil(time.time() + 60 + 60 / SLOTS)

    assert verify(client, verifier, key)["ratelimit"]["remaining"] == 0
    third = verify(client, verifier, key)
    assert (third["valid"], third["code"]) == (False, "RATE_LIMITED")
    assert third["ratelimit"]["remaining"] == 0
    assert_problem(protected(client, key), 429, "RATE_LIMITED")


# --- the management API ------------------------------------------------------------------------------

LIMITS = {"remaining": 10, "refill": {"amount": 100, "interval": "monthly"}, "ratelimit": {"limit": 5, "period": 30}}
NO_LIMITS = {"remaining": None, "refill": None, "ratelimit": None}


def limits_of(body: dict[str, Any]) -> dict[str, Any]:
    return {name: body[name] for name in LIMITS}


def show(client: FlaskClient, key: str, key_id: str) -> dict[str, Any]:
    response = client.get(f"/keys/{key_id}", headers=bearer(key))
    assert response.status_code == 200, describe(response)
    shown: dict[str, Any] = response.get_json()
    return shown


def create(client: FlaskClient, key: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/keys", headers=bearer(key), json={"name": "n", "external_client_id": "acme"} | fields)
    assert response.status_code == 201, describe(response)
    created: dict[str, Any] = response.get_json()
    return created


def patch(client: FlaskClient, key: str, key_id: str, **fields: Any) -> dict[str, Any]:
    response = client.patch(f"/keys/{key_id}", headers=bearer(key), json=fields)
    assert response.status_code == 200, describe(response)
    patched: dict[str, Any] = response.get_json()
    return patched


def test_create_takes_the_limits_and_get_shows_them(app: Flask, client: FlaskClient) -> None:
    admin = manager(app)
    created = create(client, admin, **LIMITS)
    assert limits_of(created) == LIMITS
    assert limits_of(show(client, admin, created["id"])) == LIMITS


def test_a_key_created_without_limits_shows_them_as_null(app: Flask, client: FlaskClient) -> None:
    admin = manager(app)
    created = create(client, admin)
    assert limits_of(created) == NO_LIMITS
    assert limits_of(show(client, admin, created["id"])) == NO_LIMITS


def test_a_key_created_with_limits_through_the_api_is_limited(app: Flask, client: FlaskClient) -> None:
    admin = manager(app)
    key = create(client, admin, remaining=1, ratelimit={"limit": 3, "period": 60})["key"]
    response = protected(client, key)
    assert response.status_code == 200, describe(response)
    assert_ratelimit_headers(response, 3, 60, 2)
    assert_problem(protected(client, key), 429, "USAGE_EXCEEDED")


def test_patch_sets_the_limits_and_get_shows_them(app: Flask, client: FlaskClient) -> None:
    admin = operator(app)
    key_id, key = issue(app)
    assert limits_of(patch(client, admin, key_id, **LIMITS)) == LIMITS
    assert limits_of(show(client, admin, key_id)) == LIMITS
    response = protected(client, key)
    assert response.status_code == 200, describe(response)
    assert_ratelimit_headers(response, 5, 30, 4)
    assert stored_remaining(app, key_id) == 9


def test_patch_null_removes_the_limits_and_the_key_is_unlimited(app: Flask, client: FlaskClient) -> None:
    admin = operator(app)
    key_id, key = issue(
        app, remaining=1, refill={"amount": 1, "interval": "daily"}, ratelimit={"limit": 1, "period": 60}
    )
    assert protected(client, key).status_code == 200
    assert protected(client, key).status_code == 429

    assert limits_of(patch(client, admin, key_id, **NO_LIMITS)) == NO_LIMITS
    assert limits_of(show(client, admin, key_id)) == NO_LIMITS
    for _ in range(3):
        response = protected(client, key)
        assert response.status_code == 200, describe(response)
        assert_no_ratelimit_headers(response)
    body = verify(client, admin, key)
    assert (body["code"], body["remaining"], body["ratelimit"]) == ("VALID", None, None)


def test_patch_of_one_limit_leaves_the_others(app: Flask, client: FlaskClient) -> None:
    admin = operator(app)
    key_id = create(client, admin, **LIMITS)["id"]
    patched = patch(client, admin, key_id, ratelimit=None)
    assert limits_of(patched) == LIMITS | {"ratelimit": None}
    patched = patch(client, admin, key_id, remaining=3)
    assert limits_of(patched) == LIMITS | {"ratelimit": None, "remaining": 3}


def test_rotation_carries_the_limits_over(app: Flask, client: FlaskClient) -> None:
    admin = manager(app)
    old = create(client, admin, **LIMITS)
    assert protected(client, old["key"]).status_code == 200  # one use: 9 left
    response = client.post(f"/keys/{old['id']}/rotate", headers=bearer(admin))
    assert response.status_code == 201, describe(response)
    new = response.get_json()
    assert limits_of(new) == LIMITS | {"remaining": 9}
    assert limits_of(show(client, admin, new["id"])) == LIMITS | {"remaining": 9}
    used = protected(client, new["key"])
    assert used.status_code == 200, describe(used)
    assert used.headers["RateLimit-Policy"] == '"default";q=5;w=30'
    assert stored_remaining(app, new["id"]) == 8


@pytest.fixture(scope="module")
def shared_app(module_database_url: str) -> Iterator[Flask]:
    """One app for the 422 cases, which change nothing."""
    with migrated_app(module_database_url) as app:
        yield app


@pytest.fixture(scope="module")
def shared_key(shared_app: Flask) -> tuple[str, str, str]:
    """(admin key, id of a key with limits, its settings as JSON) in the shared app."""
    admin = issue(shared_app, "keys:admin")[1]
    key_id, _ = issue(shared_app, remaining=7, ratelimit={"limit": 9, "period": 90})
    return admin, key_id, json.dumps({"remaining": 7, "refill": None, "ratelimit": {"limit": 9, "period": 90}})


INVALID = [
    pytest.param("remaining", -1, ("remaining",), id="remaining -1"),
    pytest.param("remaining", "5", ("remaining",), id="remaining as a string"),
    pytest.param("remaining", 1.5, ("remaining",), id="remaining 1.5"),
    pytest.param("refill", {"amount": 5, "interval": "weekly"}, ("refill", "interval"), id="refill weekly"),
    pytest.param("refill", {"interval": "daily"}, ("refill", "amount"), id="refill without amount"),
    pytest.param("refill", {"amount": 0, "interval": "daily"}, ("refill", "amount"), id="refill amount 0"),
    pytest.param("refill", 5, ("refill",), id="refill not an object"),
    pytest.param("ratelimit", {"limit": 0, "period": 60}, ("ratelimit", "limit"), id="ratelimit limit 0"),
    pytest.param("ratelimit", {"limit": 5, "period": "60"}, ("ratelimit", "period"), id="ratelimit period string"),
    pytest.param("ratelimit", {"limit": 5, "period": 0}, ("ratelimit", "period"), id="ratelimit period 0"),
    pytest.param("ratelimit", {"limit": 5}, ("ratelimit", "period"), id="ratelimit without period"),
    pytest.param(
        "ratelimit", {"limit": 5, "period": 60, "burst": 10}, ("ratelimit", "burst"), id="ratelimit unknown field"
    ),
]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize("name, value, path", INVALID)
def test_invalid_limits_are_a_422_naming_the_field(
    shared_app: Flask, shared_key: tuple[str, str, str], method: str, name: str, value: Any, path: tuple[str, ...]
) -> None:
    admin, key_id, settings = shared_key
    client = shared_app.test_client()
    if method == "POST":
        response = client.post(
            "/keys", headers=bearer(admin), json={"name": "n", "external_client_id": "acme", name: value}
        )
    else:
        response = client.patch(f"/keys/{key_id}", headers=bearer(admin), json={name: value})
    body = assert_problem(response, 422, "INVALID_INPUT")
    errors = body["errors"]["json"]
    assert set(errors) == {path[0]}, errors
    for part in path:
        errors = errors[part]
    assert errors, body
    # Nothing changed.
    assert json.dumps(limits_of(show(client, admin, key_id))) == settings


# --- when the rate-limit storage is down ---------------------------------------------------------

MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(database_url: str) -> Iterator[MakeApp]:
    """Build apps like the ``app`` fixture, with extra config (one per test: they share its database)."""
    with ExitStack() as apps:

        def make(**config: Any) -> Flask:
            return apps.enter_context(migrated_app(database_url, **config))

        yield make


@pytest.fixture
def unreachable_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


# The apps are built in fixtures: a migration runs Alembic's fileConfig, which drops the
# root logger's handlers, caplog's among them, and pytest puts caplog's back at each phase.
@pytest.fixture
def fail_closed_app(make_app: MakeApp, unreachable_redis: str) -> Flask:
    return make_app(KEYSERVICE_RATELIMIT_STORAGE_URL=unreachable_redis)


@pytest.fixture
def fail_open_app(make_app: MakeApp, unreachable_redis: str) -> Flask:
    return make_app(KEYSERVICE_RATELIMIT_STORAGE_URL=unreachable_redis, KEYSERVICE_RATELIMIT_FAIL_OPEN=True)


def assert_no_key_logged(caplog: pytest.LogCaptureFixture, key: str) -> None:
    secret = key.split("_")[2]
    assert key not in caplog.text and secret not in caplog.text
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in (record.exc_text or "")


def test_a_rate_limited_key_is_unavailable_while_the_storage_is_down(
    fail_closed_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    app = fail_closed_app
    client = app.test_client()
    key_id, key = issue(app, remaining=5, ratelimit={"limit": 100, "period": 60})
    caplog.set_level(logging.WARNING, logger=app.logger.name)
    for _ in range(3):
        response = protected(client, key)
        assert_problem(response, 503, "UNAVAILABLE")
        assert response.headers["Retry-After"] == "1"
        assert key not in response.get_data(as_text=True)
    assert stored_remaining(app, key_id) == 5  # a refused request spends no use
    assert any("rate-limit storage" in record.getMessage() for record in caplog.records)
    assert_no_key_logged(caplog, key)

    _, unlimited = issue(app)
    _, counted = issue(app, remaining=1)
    assert protected(client, unlimited).status_code == 200
    assert protected(client, counted).status_code == 200
    assert_problem(protected(client, counted), 429, "USAGE_EXCEEDED")


def test_verify_of_a_rate_limited_key_is_unavailable_while_the_storage_is_down(fail_closed_app: Flask) -> None:
    client = fail_closed_app.test_client()
    _, key = issue(fail_closed_app, ratelimit={"limit": 100, "period": 60})
    response = client.post("/keys/verify", headers=bearer(manager(fail_closed_app)), json={"key": key})
    assert_problem(response, 503, "UNAVAILABLE")
    assert response.headers["Retry-After"] == "1"


def test_fail_open_lets_a_rate_limited_key_through_and_warns(
    fail_open_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    app = fail_open_app
    client = app.test_client()
    key_id, key = issue(app, remaining=5, ratelimit={"limit": 1, "period": 60})
    caplog.set_level(logging.WARNING, logger=app.logger.name)
    for _ in range(2):  # over the limit of 1: the storage that would count it is gone
        response = protected(client, key)
        assert response.status_code == 200, describe(response)
        assert_no_ratelimit_headers(response)
    assert stored_remaining(app, key_id) == 3  # uses are still counted

    warnings = [
        record for record in caplog.records if record.name == app.logger.name and record.levelno >= logging.WARNING
    ]
    assert len(warnings) == 2
    assert all("rate-limit storage" in record.getMessage() for record in warnings)
    assert_no_key_logged(caplog, key)


# --- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("KEYSERVICE_RATELIMIT_STORAGE_URL", "http://x"),
        ("KEYSERVICE_RATELIMIT_STORAGE_URL", "memcached://127.0.0.1:11211"),
        ("KEYSERVICE_RATELIMIT_FAIL_OPEN", "maybe"),
    ],
)
def test_a_wrong_rate_limit_setting_stops_start_up_naming_it(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as raised:
        create_app({**TEST_CONFIG, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'keys.db'}", name: value})
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("value, expected", [("true", True), ("0", False), (False, False)])
def test_fail_open_reads_true_and_false(make_app: MakeApp, value: Any, expected: bool) -> None:
    app = make_app(KEYSERVICE_RATELIMIT_FAIL_OPEN=value)
    assert app.extensions["keyservice"].settings.ratelimit_fail_open is expected


def test_a_rate_limit_setting_from_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEYSERVICE_RATELIMIT_STORAGE_URL", "http://x")
    with pytest.raises(ConfigError, match="KEYSERVICE_RATELIMIT_STORAGE_URL"):
        create_app({**TEST_CONFIG, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'keys.db'}"})


# --- the CLI -----------------------------------------------------------------------------------------


def test_cli_create_with_remaining_and_ratelimit(runner: FlaskCliRunner) -> None:
    created = cli_create(runner, "--remaining", "5", "--ratelimit", "100/60s")
    assert created["remaining"] == 5
    assert created["ratelimit"] == {"limit": 100, "period": 60}
    assert created["refill"] is None


@pytest.mark.parametrize("value, period", [("100/1h", 3600), ("100/90m", 5400), ("100/1m30s", 90)])
def test_cli_ratelimit_periods(runner: FlaskCliRunner, value: str, period: int) -> None:
    assert cli_create(runner, "--ratelimit", value)["ratelimit"] == {"limit": 100, "period": period}


def test_cli_create_without_limits_is_unlimited(runner: FlaskCliRunner) -> None:
    created = cli_create(runner)
    assert limits_of(created) == NO_LIMITS


def test_a_key_created_by_the_cli_is_limited(app: Flask, client: FlaskClient, runner: FlaskCliRunner) -> None:
    key = cli_create(runner, "--remaining", "1", "--ratelimit", "10/60s")["key"]
    response = protected(client, key)
    assert response.status_code == 200, describe(response)
    assert_ratelimit_headers(response, 10, 60, 9)
    assert_problem(protected(client, key), 429, "USAGE_EXCEEDED")


@pytest.mark.parametrize(
    "args",
    [
        ["--ratelimit", "100"],
        ["--ratelimit", "x/60s"],
        ["--ratelimit", "100/soon"],
        ["--ratelimit", "0/60s"],
        ["--ratelimit", "-5/60s"],
        ["--ratelimit", "100/0s"],
        ["--remaining", "-1"],
        ["--remaining", "x"],
    ],
)
def test_cli_bad_limits_are_one_line_and_exit_2(app: Flask, runner: FlaskCliRunner, args: list[str]) -> None:
    result = runner.invoke(args=["keys", "create", "--name", "n", "--client-id", "c", *args])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    with app.app_context():
        assert db.session.query(ApiKey).count() == 0


def test_a_refill_needs_remaining(client: FlaskClient, app: Flask) -> None:
    admin = issue(app, "keys:admin")[1]
    refill = {"amount": 5, "interval": "daily"}
    response = client.post(
        "/keys", headers=bearer(admin), json={"name": "n", "external_client_id": "acme", "refill": refill}
    )
    assert_problem(response, 422, "INVALID_INPUT")
    assert response.get_json()["errors"] == {"json": {"remaining": ["Required with refill."]}}
    key_id = create(client, admin, remaining=3, refill=refill)["id"]
    response = client.patch(f"/keys/{key_id}", headers=bearer(admin), json={"remaining": None})
    assert_problem(response, 422, "INVALID_INPUT")
    assert show(client, admin, key_id)["remaining"] == 3
