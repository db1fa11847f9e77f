"""``/healthz`` (liveness: the database answers a read) and ``/readyz`` (readiness: it takes a
write, and the rate-limit storage answers), and a read-only database.

A full disk is in ``test_full_disk.py``, a database that is gone in ``test_database_outage.py``.
"""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from keyservice.app import db
from keyservice.core.models import ReadinessProbe

from .conftest import migrated_app, postgres_database
from .helpers import assert_unavailable, free_port
from .services import PostgresServer
from .test_api_keys import Api

NEW_KEY = {"name": "n", "external_client_id": "acme"}


def test_healthz_and_readyz_answer_200_and_readyz_writes_its_row(app: Flask, client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ok"}
    with app.app_context():
        first = db.session.scalars(select(ReadinessProbe.probed_at)).one()
    assert client.get("/readyz").status_code == 200
    with app.app_context():
        assert db.session.scalars(select(ReadinessProbe.probed_at)).one() > first


def test_readyz_is_not_ready_while_the_rate_limit_redis_does_not_answer(database_url: str, redis_url: str) -> None:
    with migrated_app(database_url, KEYSERVICE_RATELIMIT_STORAGE_URL=f"redis://127.0.0.1:{free_port()}/0") as app:
        response = app.test_client().get("/readyz")
        assert_unavailable(response)
        assert "rate-limit storage" in response.get_json()["detail"]
        assert app.test_client().get("/healthz").status_code == 200
    with migrated_app(database_url, KEYSERVICE_RATELIMIT_STORAGE_URL=redis_url) as app:
        assert app.test_client().get("/readyz").status_code == 200


def test_a_read_only_postgresql_refuses_writes_with_503_serves_verification_and_is_not_ready(
    postgres: PostgresServer,
) -> None:
    with postgres_database(postgres) as url, migrated_app(url) as app:
        api = Api(app, app.test_client())
        admin = api.manager("keys:admin")
        name = url.rsplit("/", 1)[1]

        # What a standby after a failover, or a server put read-only, does to new sessions.
        postgres.administer(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        with app.app_context():
            db.engine.dispose()
        assert_unavailable(api.call("POST", "/keys", admin, json=NEW_KEY))
        assert_unavailable(api.call("GET", "/readyz"))
        assert api.call("GET", "/healthz").status_code == 200
        assert api.protected(admin).status_code == 200
        assert api.call("GET", "/keys", admin).status_code == 200

        postgres.administer(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        with app.app_context():
            db.engine.dispose()
        api.create(admin)
        assert api.call("GET", "/readyz").status_code == 200
