"""Webhooks through the management API, on SQLite and PostgreSQL: endpoints and who owns them,
what is sent to whom (signed, verified with the ``standardwebhooks`` package), retries, failure
and redelivery, the events of expiry and of used-up keys, and refused addresses.

The sender runs here one round at a time, in the test (KEYSERVICE_WEBHOOKS_SEND=false);
test_webhooks_scale.py runs it in gunicorn's workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from keyservice import KeyService
from keyservice.app import db
from keyservice.core.models import WebhookEndpoint, utcnow
from keyservice.core.state import current_state

from .conftest import IssueKey, migrated_app
from .helpers import bearer, wait_until
from .receivers import Receiver, serving, webhook_settings


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    with migrated_app(database_url, **webhook_settings(KEYSERVICE_WEBHOOKS_SEND="false")) as app:
        yield app


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving(Receiver()) as server:
        yield server.receiver


def send_due(app: Flask, rounds: int = 200) -> None:
    """Run the sender until nothing is due (a retry's short delay waited for)."""
    with app.app_context():
        sender, engine = current_state().sender, db.engine
        for _ in range(rounds):
            if not sender.run_once(engine):
                time.sleep(0.06)
                if not sender.run_once(engine):
                    return


def register(client: FlaskClient, manager: str, url: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/webhooks", headers=bearer(manager), json={"url": url, **fields})
    assert response.status_code == 201, response.get_data(as_text=True)
    created: dict[str, Any] = response.get_json()
    return created


def operator_key(app: Flask) -> str:
    """A new keys:admin management key on ``app``."""
    with app.app_context():
        _, key = KeyService.create_key(name="operator", external_client_id="ops", scopes=["keys:admin"])
        db.session.commit()
    return key


@pytest.fixture
def admin(app: Flask) -> str:
    return operator_key(app)


def test_an_operator_endpoint_gets_every_event_signed_and_never_a_key(
    client: FlaskClient, app: Flask, admin: str, receiver: Receiver
) -> None:
    created = register(client, admin, receiver.url)
    assert created["secret"].startswith("whsec_") and created["external_client_id"] is None
    receiver.secret = created["secret"]
    listed = client.get("/webhooks", headers=bearer(admin)).get_json()["items"]
    assert [item["id"] for item in listed] == [created["id"]] and "secret" not in listed[0]

    made = client.post("/keys", headers=bearer(admin), json={"name": "ci", "external_client_id": "acme"}).get_json()
    client.patch(f"/keys/{made['id']}", headers=bearer(admin), json={"name": "ci runner"})
    rotated = client.post(f"/keys/{made['id']}/rotate", headers=bearer(admin), json={}).get_json()
    client.delete(f"/keys/{rotated['id']}", headers=bearer(admin))
    send_due(app)

    got = receiver.accepted()
    assert [item.payload["type"] for item in got] == [
        "key.created",
        "key.updated",
        "key.created",
        "key.rotated",
        "key.revoked",
    ]
    assert all(item.verified for item in got)
    assert len({item.webhook_id for item in got}) == 5
    assert got[1].payload["data"]["name"] == "ci runner" and got[1].payload["changes"] == {"name": ["ci", "ci runner"]}
    for item in got:
        text = item.body.decode()
        assert made["key"] not in text and rotated["key"] not in text and "secret_hash" not in text
        assert "$2b$" not in text  # no bcrypt hash either

    deliveries = client.get(f"/webhooks/{created['id']}/deliveries", headers=bearer(admin)).get_json()["items"]
    assert {item["status"] for item in deliveries} == {"delivered"} and len(deliveries) == 5


def test_a_clients_endpoint_gets_only_its_own_clients_events(
    client: FlaskClient, app: Flask, issue_key: IssueKey, admin: str, receiver: Receiver
) -> None:
    manager_a = issue_key(name="a manager", external_client_id="client-a", scopes=("keys:read", "keys:write"))[1]
    manager_b = issue_key(name="b manager", external_client_id="client-b", scopes=("keys:read", "keys:write"))[1]
    created = register(client, manager_a, receiver.url, events=["key.created", "key.revoked"])
    assert created["external_client_id"] == "client-a"
    receiver.secret = created["secret"]

    for manager, client_id in ((manager_a, "client-a"), (manager_b, "client-b"), (admin, "client-b")):
        made = client.post("/keys", headers=bearer(manager), json={"name": client_id, "external_client_id": client_id})
        client.patch(f"/keys/{made.get_json()['id']}", headers=bearer(manager), json={"name": "renamed"})
    send_due(app)

    got = receiver.accepted()
    assert [(item.payload["type"], item.payload["data"]["external_client_id"]) for item in got] == [
        ("key.created", "client-a")
    ]  # not b's keys, and no key.updated: it did not ask for that
    assert got[0].verified
    # B's manager sees no trace of A's endpoint; nor may it register one for A.
    assert client.get("/webhooks", headers=bearer(manager_b)).get_json()["items"] == []
    assert client.get(f"/webhooks/{created['id']}/deliveries", headers=bearer(manager_b)).status_code == 404
    assert client.delete(f"/webhooks/{created['id']}", headers=bearer(manager_b)).status_code == 404
    refused = client.post(
        "/webhooks", headers=bearer(manager_b), json={"url": receiver.url, "external_client_id": "client-a"}
    )
    assert refused.status_code == 403
    # The operator sees it, and its deliveries.
    assert [item["id"] for item in client.get("/webhooks", headers=bearer(admin)).get_json()["items"]] == [
        created["id"]
    ]


def test_a_loopback_or_private_url_is_refused_without_the_setting(database_url: str) -> None:
    with migrated_app(database_url) as app:
        client, admin = app.test_client(), operator_key(app)
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost/hook",
            "http://10.0.0.8/",
            "http://169.254.169.254/",
            "http://[::1]/",
            "ftp://example.com/",
            "not a url",
        ):
            response = client.post("/webhooks", headers=bearer(admin), json={"url": url})
            assert response.status_code == 422, url
            assert "url" in response.get_json()["errors"]["json"]
        assert client.get("/webhooks", headers=bearer(admin)).get_json()["items"] == []


def test_with_no_setting_an_endpoint_registers_and_its_secret_is_stored_encrypted(database_url: str) -> None:
    with migrated_app(database_url) as app:
        response = app.test_client().post(
            "/webhooks", headers=bearer(operator_key(app)), json={"url": "https://1.1.1.1/hook"}
        )
        assert response.status_code == 201
        secret = response.get_json()["secret"]
        with app.app_context():
            [stored] = db.session.scalars(select(WebhookEndpoint.encrypted_secret))
        assert secret.encode() not in stored.encode() and secret.removeprefix("whsec_") not in stored


def test_failed_attempts_are_retried_then_the_delivery_fails_and_can_be_redelivered(database_url: str) -> None:
    receiver = Receiver(fail_first=100)
    with (
        serving(receiver),
        migrated_app(
            database_url, **webhook_settings(KEYSERVICE_WEBHOOKS_SEND="false", KEYSERVICE_WEBHOOKS_RETRY_FOR="1")
        ) as app,
    ):
        client, admin = app.test_client(), operator_key(app)
        endpoint = register(client, admin, receiver.url)
        test = client.post(f"/webhooks/{endpoint['id']}/test", headers=bearer(admin))
        assert test.status_code == 202 and test.get_json()["items"][0]["type"] == "webhook.test"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            send_due(app)
            [delivery] = client.get(f"/webhooks/{endpoint['id']}/deliveries", headers=bearer(admin)).get_json()["items"]
            if delivery["status"] == "failed":
                break
        assert delivery["status"] == "failed" and delivery["last_status"] == 500
        assert 3 <= delivery["attempts"] == receiver.attempts[delivery["webhook_id"]]  # 0.05, 0.1, 0.2, 0.4 s: 1 s
        receiver.fail_first = 0
        redone = client.post(f"/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/redeliver", headers=bearer(admin))
        assert redone.status_code == 202
        again = client.post(f"/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/redeliver", headers=bearer(admin))
        assert again.status_code == 409  # pending already
        send_due(app)
        [delivery] = client.get(f"/webhooks/{endpoint['id']}/deliveries", headers=bearer(admin)).get_json()["items"]
        assert delivery["status"] == "delivered"
        assert [item.webhook_id for item in receiver.accepted()] == [delivery["webhook_id"]]


def test_used_up_and_expiring_keys_are_announced_once(
    client: FlaskClient, app: Flask, admin: str, receiver: Receiver
) -> None:
    register(client, admin, receiver.url, events=["key.usage_exhausted", "key.expiring"])
    made = client.post(
        "/keys",
        headers=bearer(admin),
        json={
            "name": "metered",
            "external_client_id": "acme",
            "remaining": 1,
            "expires_at": (utcnow() + timedelta(days=3)).isoformat(),
        },
    ).get_json()
    statuses = [
        client.post("/keys/verify", headers=bearer(admin), json={"key": made["key"]}).get_json()["code"]
        for _ in range(4)
    ]
    assert statuses == ["VALID", "USAGE_EXCEEDED", "USAGE_EXCEEDED", "USAGE_EXCEEDED"]
    send_due(app)
    send_due(app)
    got = sorted(item.payload["type"] for item in receiver.accepted())
    assert got == ["key.expiring", "key.usage_exhausted"]
    events = [
        event["action"] for event in client.get(f"/keys/{made['id']}/events", headers=bearer(admin)).get_json()["items"]
    ]
    assert events.count("usage_exhausted") == 1 and events.count("expiring") == 1

    # More uses, then used up again: announced again. A new expiry: announced again.
    client.patch(
        f"/keys/{made['id']}",
        headers=bearer(admin),
        json={"remaining": 1, "expires_at": (utcnow() + timedelta(days=2)).isoformat()},
    )

    def announced_twice() -> bool:  # this worker tries to announce at most once a second per key
        client.post("/keys/verify", headers=bearer(admin), json={"key": made["key"]})
        events = client.get(f"/keys/{made['id']}/events", headers=bearer(admin)).get_json()["items"]
        return [event["action"] for event in events].count("usage_exhausted") == 2

    wait_until(announced_twice, 5, "a second key.usage_exhausted")
    send_due(app)
    assert sorted(item.payload["type"] for item in receiver.accepted()) == [
        "key.expiring",
        "key.expiring",
        "key.usage_exhausted",
        "key.usage_exhausted",
    ]


def test_a_deleted_endpoint_gets_nothing_more(client: FlaskClient, app: Flask, admin: str, receiver: Receiver) -> None:
    endpoint = register(client, admin, receiver.url)
    assert client.delete(f"/webhooks/{endpoint['id']}", headers=bearer(admin)).status_code == 204
    client.post("/keys", headers=bearer(admin), json={"name": "n", "external_client_id": "acme"})
    send_due(app)
    assert receiver.received == []
    assert client.get(f"/webhooks/{endpoint['id']}/deliveries", headers=bearer(admin)).status_code == 404
