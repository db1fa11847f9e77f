"""verify_key from plain Python: the result object, caching, and the wrong-secret budget."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from keyservice import Outcome, verify_key
from keyservice.app import db
from keyservice.core.models import ApiKey, utcnow
from keyservice.management.store import get_key
from keyservice.verification.slidingwindow import SLOTS

from .conftest import IssueKey, migrated_app
from .helpers import issue, wrong_secret


def test_valid_key_gives_the_caller(app: Flask, issue_key: IssueKey) -> None:
    key_id, key = issue_key(name="billing bot", external_client_id="team-9", scopes=("a:b",), meta={"plan": "pro"})
    with app.app_context():
        result = verify_key(key, ["a:b"])
    assert result.valid and result.code is Outcome.VALID
    assert (result.key_id, result.external_client_id, result.name) == (key_id, "team-9", "billing bot")
    assert result.scopes == ("a:b",) and result.meta == {"plan": "pro"}


def test_outcomes_without_a_request(app: Flask, issue_key: IssueKey) -> None:
    _, key = issue_key(scopes=("a:read",))
    with app.app_context():
        assert verify_key(key[:-1]).code is Outcome.MALFORMED
        assert verify_key(wrong_secret(key)).code is Outcome.NOT_FOUND
        assert verify_key(key, ["a:write"]).code is Outcome.INSUFFICIENT_SCOPE


@pytest.fixture
def cached_app(database_url: str) -> Iterator[Flask]:
    """An app with the default cache TTL and small wrong-secret budgets."""
    with migrated_app(
        database_url,
        KEYSERVICE_CACHE_TTL=0.5,
        KEYSERVICE_FAILED_VERIFY_LIMIT_PER_CLIENT="3/minute",
        KEYSERVICE_FAILED_VERIFY_LIMIT_PER_KEY="5/minute",
    ) as app:
        yield app


def change(app: Flask, key_id: str, make_change: Callable[[ApiKey], object]) -> None:
    with app.app_context():
        make_change(get_key(db.session, key_id))
        db.session.commit()


@pytest.mark.parametrize(
    "make_change, code",
    [
        (lambda api_key: api_key.revoke("leaked"), Outcome.REVOKED),
        (lambda api_key: setattr(api_key, "enabled", False), Outcome.DISABLED),
        (lambda api_key: setattr(api_key, "expires_at", utcnow()), Outcome.EXPIRED),
    ],
)
def test_a_change_reaches_a_warm_cache_within_the_ttl(cached_app: Flask, make_change, code) -> None:
    key_id, key = issue(cached_app)
    with cached_app.app_context():
        assert verify_key(key).valid
    change(cached_app, key_id, make_change)
    time.sleep(0.6)  # fixed: the change must arrive within the cache TTL (0.5 s), the bound under test
    with cached_app.app_context():
        assert verify_key(key).code is code


def test_wrong_secrets_are_refused_before_bcrypt_once_the_budget_is_spent(cached_app: Flask) -> None:
    _, key = issue(cached_app)
    _, other_key = issue(cached_app)
    with cached_app.app_context():
        assert verify_key(key, client="10.0.0.1").valid
        codes = [verify_key(wrong_secret(key, n), client="10.6.6.6").code for n in range(6)]
        assert codes == [Outcome.NOT_FOUND] * 3 + [Outcome.RATE_LIMITED] * 3
        assert 0 < verify_key(wrong_secret(key, 99), client="10.6.6.6").retry_after <= 60 + 60 // SLOTS  # a slot late
        # The real key, already checked by bcrypt in this worker, keeps working,
        # and other key ids have budgets of their own.
        assert verify_key(key, client="10.6.6.6").valid
        assert verify_key(other_key, client="10.6.6.6").valid
        assert verify_key(wrong_secret(other_key), client="10.6.6.6").code is Outcome.NOT_FOUND


def test_one_clients_flood_does_not_lock_out_the_real_key_elsewhere(cached_app: Flask) -> None:
    _, key = issue(cached_app)
    with cached_app.app_context():
        for n in range(5):
            verify_key(wrong_secret(key, n), client="10.6.6.6")
        assert verify_key(wrong_secret(key, 5), client="10.6.6.6").code is Outcome.RATE_LIMITED
        # Never checked in this worker yet, so it needs bcrypt: its own address has budget left.
        assert verify_key(key, client="10.0.0.1").valid


def test_a_flood_from_many_addresses_hits_the_per_key_ceiling(cached_app: Flask) -> None:
    _, key = issue(cached_app)
    with cached_app.app_context():
        codes = [verify_key(wrong_secret(key, n), client=f"10.0.0.{n}").code for n in range(7)]
    assert codes == [Outcome.NOT_FOUND] * 5 + [Outcome.RATE_LIMITED] * 2


def test_a_rotated_secret_hash_is_checked_again(cached_app: Flask) -> None:
    key_id, key = issue(cached_app)
    _, replacement = issue(cached_app)
    with cached_app.app_context():
        assert verify_key(key).valid
        replacement_hash = db.session.get(ApiKey, replacement.split("_")[1]).secret_hash
    change(cached_app, key_id, lambda api_key: setattr(api_key, "secret_hash", replacement_hash))
    time.sleep(0.6)  # fixed: the change must arrive within the cache TTL (0.5 s), the bound under test
    with cached_app.app_context():
        assert verify_key(key).code is Outcome.NOT_FOUND


def test_a_throttled_wrong_secret_gets_429_with_retry_after_over_http(cached_app: Flask) -> None:
    _, key = issue(cached_app)
    attacker = cached_app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "10.6.6.6"
    statuses = [attacker.post("/protected-with-key", headers={"X-API-Key": wrong_secret(key, n)}) for n in range(4)]
    assert [r.status_code for r in statuses] == [401, 401, 401, 429]
    throttled = statuses[-1]
    assert throttled.mimetype == "application/problem+json"
    assert throttled.get_json()["code"] == "RATE_LIMITED"
    assert 0 < int(throttled.headers["Retry-After"]) <= 60 + 60 // SLOTS
    customer = cached_app.test_client()
    customer.environ_base["REMOTE_ADDR"] = "10.0.0.1"
    assert customer.post("/protected-with-key", headers={"X-API-Key": key}).status_code == 200


@pytest.mark.parametrize("proxies, customer_served", [(1, True), (0, False)])
def test_behind_a_proxy_the_budget_counts_the_address_the_proxy_saw(
    database_url: str, proxies: int, customer_served: bool
) -> None:
    with migrated_app(
        database_url, KEYSERVICE_PROXIES=proxies, KEYSERVICE_FAILED_VERIFY_LIMIT_PER_CLIENT="3/minute"
    ) as app:
        _, key = issue(app)
        proxy = app.test_client()
        proxy.environ_base["REMOTE_ADDR"] = "127.0.0.1"  # every request comes from the proxy
        for n in range(4):
            proxy.post(
                "/protected-with-key", headers={"X-API-Key": wrong_secret(key, n), "X-Forwarded-For": "10.6.6.6"}
            )
        served = proxy.post("/protected-with-key", headers={"X-API-Key": key, "X-Forwarded-For": "10.0.0.1"})
    assert (served.status_code == 200) is customer_served
