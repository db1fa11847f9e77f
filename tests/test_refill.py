"""Refills: ``remaining`` goes back to ``refill.amount`` once a day or a month (UTC).

The clock is moved with time-machine, never slept on. A key's refill clock starts
when its refill is set, so every key here is created inside the travelled time.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient

from .helpers import bearer, issue

UTC = UTC


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def daily(amount: int) -> dict[str, Any]:
    return {"amount": amount, "interval": "daily"}


def monthly(amount: int) -> dict[str, Any]:
    return {"amount": amount, "interval": "monthly"}


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    """The clock, stopped at 2030-01-01 00:00 UTC until a test moves it."""
    with time_machine.travel(at(2030, 1, 1), tick=False) as traveller:
        yield traveller


class Meter:
    """Uses a key at the protected view and reads its outcome."""

    def __init__(self, client: FlaskClient, key: str) -> None:
        self.client = client
        self.key = key

    def use(self) -> tuple[str, int | None]:
        """(code, remaining after this use): VALID with g.auth.remaining, or the refusal's code."""
        response = self.client.post("/usage", headers=bearer(self.key))
        if response.status_code == 200:
            return "VALID", response.get_json()["remaining"]
        assert response.mimetype == "application/problem+json", response.status
        return response.get_json()["code"], None

    def use_up(self, count: int) -> list[tuple[str, int | None]]:
        return [self.use() for _ in range(count)]


def exhausted(count: int) -> list[tuple[str, int | None]]:
    return [("USAGE_EXCEEDED", None)] * count


def counting_down(start: int) -> list[tuple[str, int | None]]:
    """What ``start`` uses in a row answer: VALID with start-1, ..., 0 left."""
    return [("VALID", left) for left in range(start - 1, -1, -1)]


def test_a_daily_refill_restores_the_amount_once_a_day(
    usage_app: Flask, client: FlaskClient, clock: time_machine.Traveller
) -> None:
    clock.move_to(at(2030, 1, 10, 15))
    _, key = issue(usage_app, remaining=2, refill=daily(5))
    meter = Meter(client, key)
    assert meter.use_up(3) == [("VALID", 1), ("VALID", 0), ("USAGE_EXCEEDED", None)]

    clock.move_to(at(2030, 1, 10, 23, 59, 59))
    assert meter.use_up(2) == exhausted(2)

    clock.move_to(at(2030, 1, 11, 0, 0, 1))
    assert meter.use() == ("VALID", 4)  # back to 5 at midnight, minus this use
    assert meter.use_up(4) == counting_down(4)
    assert meter.use_up(2) == exhausted(2)  # refilled once, not on every request

    clock.move_to(at(2030, 1, 11, 18))
    assert meter.use_up(2) == exhausted(2)

    clock.move_to(at(2030, 1, 12, 0, 0, 1))
    assert meter.use() == ("VALID", 4)


def test_a_daily_refill_does_not_add_up_over_days_without_use(
    usage_app: Flask, client: FlaskClient, clock: time_machine.Traveller
) -> None:
    clock.move_to(at(2030, 1, 10, 15))
    _, key = issue(usage_app, remaining=1, refill=daily(3))
    meter = Meter(client, key)
    clock.move_to(at(2030, 1, 20, 9))  # ten midnights later, unused
    assert meter.use_up(4) == counting_down(3) + exhausted(1)


def test_a_refill_does_not_happen_on_the_day_it_was_set(
    usage_app: Flask, client: FlaskClient, clock: time_machine.Traveller
) -> None:
    clock.move_to(at(2030, 1, 10, 0, 0, 0))
    _, key = issue(usage_app, remaining=0, refill=daily(5))
    meter = Meter(client, key)
    assert meter.use() == ("USAGE_EXCEEDED", None)
    clock.move_to(at(2030, 1, 10, 23, 59, 59))
    assert meter.use() == ("USAGE_EXCEEDED", None)
    clock.move_to(at(2030, 1, 11))
    assert meter.use() == ("VALID", 4)


def test_a_monthly_refill_restores_the_amount_at_the_start_of_each_month(
    usage_app: Flask, client: FlaskClient, clock: time_machine.Traveller
) -> None:
    clock.move_to(at(2030, 1, 31, 10))
    _, key = issue(usage_app, remaining=1, refill=monthly(3))
    meter = Meter(client, key)
    assert meter.use_up(2) == [("VALID", 0), ("USAGE_EXCEEDED", None)]

    clock.move_to(at(2030, 1, 31, 23, 59))
    assert meter.use() == ("USAGE_EXCEEDED", None)

    clock.move_to(at(2030, 2, 1, 0, 0, 1))
    assert meter.use_up(4) == counting_down(3) + exhausted(1)

    clock.move_to(at(2030, 2, 28, 23, 59, 59))  # the last second of a short month
    assert meter.use() == ("USAGE_EXCEEDED", None)

    clock.move_to(at(2030, 3, 1, 0, 0, 1))
    assert meter.use() == ("VALID", 2)


def test_a_refill_counts_verifications_too(
    usage_app: Flask, client: FlaskClient, clock: time_machine.Traveller
) -> None:
    clock.move_to(at(2030, 1, 10, 15))
    _, verifier = issue(usage_app, "keys:verify")
    _, key = issue(usage_app, remaining=1, refill=daily(2))

    def verify() -> tuple[str, int | None]:
        response = client.post("/keys/verify", headers=bearer(verifier), json={"key": key})
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        return body["code"], body["remaining"]

    assert verify() == ("VALID", 0)
    assert verify()[0] == "USAGE_EXCEEDED"
    clock.move_to(at(2030, 1, 11, 0, 0, 1))
    assert verify() == ("VALID", 1)
    assert Meter(client, key).use() == ("VALID", 0)
    assert verify()[0] == "USAGE_EXCEEDED"


def test_a_refill_set_by_patch_starts_its_clock_then(
    usage_app: Flask, client: FlaskClient, clock: time_machine.Traveller
) -> None:
    clock.move_to(at(2030, 1, 10, 15))
    _, manager = issue(usage_app, "keys:admin")  # adding a refill loosens the key
    key_id, key = issue(usage_app, remaining=0)
    meter = Meter(client, key)
    clock.move_to(at(2030, 1, 12, 9))
    response = client.patch(f"/keys/{key_id}", headers=bearer(manager), json={"refill": daily(2)})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["refill"] == daily(2)
    assert meter.use() == ("USAGE_EXCEEDED", None)  # set today: the first refill is at the next midnight
    clock.move_to(at(2030, 1, 13, 0, 0, 1))
    assert meter.use_up(3) == counting_down(2) + exhausted(1)


def test_patching_the_same_refill_again_keeps_its_clock(
    usage_app: Flask, client: FlaskClient, clock: time_machine.Traveller
) -> None:
    clock.move_to(at(2030, 1, 10, 15))
    _, manager = issue(usage_app, "keys:read", "keys:write")
    key_id, key = issue(usage_app, remaining=0, refill=daily(2))
    meter = Meter(client, key)
    clock.move_to(at(2030, 1, 11, 9))
    response = client.patch(f"/keys/{key_id}", headers=bearer(manager), json={"refill": daily(2)})
    assert response.status_code == 200
    assert meter.use() == ("VALID", 1)  # the refill due since midnight still happens


def test_rotation_does_not_lose_a_refill_that_is_due(
    usage_app: Flask, client: FlaskClient, clock: time_machine.Traveller
) -> None:
    clock.move_to(at(2030, 1, 10, 15))
    _, manager = issue(usage_app, "keys:read", "keys:write")
    key_id, key = issue(usage_app, remaining=1, refill=daily(5))
    assert Meter(client, key).use_up(2) == [("VALID", 0), ("USAGE_EXCEEDED", None)]

    clock.move_to(at(2030, 1, 11, 9))  # a refill is due since midnight; the key is rotated before any use
    response = client.post(f"/keys/{key_id}/rotate", headers=bearer(manager))
    assert response.status_code == 201, response.get_data(as_text=True)
    new = Meter(client, response.get_json()["key"])
    assert new.use() == ("VALID", 4)  # the new key has today's 5, as the old one would have had
