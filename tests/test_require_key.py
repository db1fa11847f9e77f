"""Every outcome of the SPEC's table through the Flask test client."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask, g
from flask.testing import FlaskClient
from sqlalchemy import Engine, event

from keyservice import KeyService, require_key
from keyservice.app import db
from keyservice.core import rawsql
from keyservice.core.crypto import checksum
from keyservice.core.models import utcnow

from .conftest import IssueKey, migrated_app
from .helpers import assert_problem, bearer

URL = "/protected-with-key"


def flip(key: str, index: int) -> str:
    replacement = "A" if key[index] != "A" else "B"
    return key[:index] + replacement + key[index + 1 :]


@pytest.fixture
def queries(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL statements the app sends while the test runs: through SQLAlchemy, and through
    keyservice.core.rawsql (the request path's statements on the driver's connection)."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        sent.append(statement)

    run = rawsql.execute

    def recorded(engine: Engine, sql: str, params: dict[str, Any], writes: bool = True) -> list[tuple[Any, ...]]:
        sent.append(sql)
        return run(engine, sql, params, writes)

    monkeypatch.setattr(rawsql, "execute", recorded)
    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def scoped_app(app: Flask) -> Flask:
    @app.get("/reports")
    @require_key("reports:read")
    def reports():
        return {"scopes": list(g.auth.scopes)}

    @app.get("/billing")
    @require_key("billing:read", "billing:write")
    def billing():
        return {"client": g.auth.external_client_id}

    return app


def assert_invalid_token(response, code: str) -> None:
    assert_problem(response, 401, code)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="keyservice", error="invalid_token"'


def test_valid_key_reaches_the_view_with_its_client(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key(external_client_id="acme-corp")
    response = client.post(URL, headers=bearer(key))
    assert response.status_code == 200
    assert response.get_json() == {"protected": True, "external_client_id": "acme-corp"}


def test_key_in_the_api_key_header_is_accepted(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key()
    assert client.post(URL, headers={"X-API-Key": key}).status_code == 200


def test_lower_case_bearer_scheme_is_accepted(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key()
    assert client.post(URL, headers={"Authorization": f"bearer {key}"}).status_code == 200


def test_whitespace_around_the_key_is_ignored(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key()
    assert client.post(URL, headers={"Authorization": f"Bearer   {key} \t"}).status_code == 200
    assert client.post(URL, headers={"X-API-Key": f" {key} "}).status_code == 200


def test_no_key_is_missing_with_a_bare_challenge(client: FlaskClient) -> None:
    response = client.post(URL)
    assert_problem(response, 401, "MISSING")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="keyservice"'


def test_another_auth_scheme_counts_as_no_key(client: FlaskClient) -> None:
    response = client.post(URL, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_problem(response, 401, "MISSING")


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer    "])
def test_bearer_with_nothing_after_it_is_malformed(client: FlaskClient, value: str) -> None:
    assert_invalid_token(client.post(URL, headers={"Authorization": value}), "MALFORMED")


def test_a_key_in_two_places_is_an_invalid_request(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key()
    _, other = issue_key()
    response = client.post(URL, headers={**bearer(key), "X-API-Key": other})
    assert_problem(response, 400, "INVALID_REQUEST")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="keyservice", error="invalid_request"'
    assert key not in response.get_data(as_text=True)


def test_two_authorization_headers_are_an_invalid_request(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key()
    response = client.post(URL, headers=[("Authorization", f"Bearer {key}"), ("Authorization", f"Bearer {key}")])
    assert_problem(response, 400, "INVALID_REQUEST")


def test_two_api_key_headers_are_an_invalid_request(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key()
    response = client.post(URL, headers=[("X-API-Key", key), ("X-API-Key", key)])
    assert_problem(response, 400, "INVALID_REQUEST")


def test_two_keys_in_one_bearer_value_are_malformed(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key()
    _, other = issue_key()
    assert_invalid_token(client.post(URL, headers=bearer(f"{key} {other}")), "MALFORMED")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda key: "x" * 10_000, id="10000-characters"),
        pytest.param(lambda key: key + "x" * 10_000, id="key-then-10000-characters"),
        pytest.param(lambda key: key[:-1], id="truncated"),
        pytest.param(lambda key: key.upper(), id="upper-cased"),
        pytest.param(lambda key: "pk" + key[2:], id="other-prefix"),
        pytest.param(lambda key: flip(key, 20), id="flipped-secret-character"),
        pytest.param(lambda key: flip(key, 5), id="flipped-id-character"),
        pytest.param(lambda key: flip(key, len(key) - 1), id="flipped-checksum-character"),
        pytest.param(lambda key: key.replace("_", "-"), id="wrong-separators"),
        pytest.param(lambda key: "sk_ключ", id="not-ascii"),
    ],
)
def test_tampered_key_is_malformed_without_a_database_query(
    client: FlaskClient, issue_key: IssueKey, queries: list[str], tamper
) -> None:
    _, key = issue_key()
    queries.clear()
    response = client.post(URL, headers={"X-API-Key": tamper(key)})
    assert_invalid_token(response, "MALFORMED")
    assert queries == []


def test_checksum_valid_key_that_does_not_exist_is_not_found(
    client: FlaskClient, issue_key: IssueKey, queries: list[str]
) -> None:
    _, key = issue_key()
    client.post(URL, headers=bearer(key))  # a worker's first check also reads where the change feed is
    queries.clear()
    body = key[:3] + "Z" * 16 + key[19:-6]
    response = client.post(URL, headers=bearer(body + checksum(body)))
    assert_invalid_token(response, "NOT_FOUND")
    assert len(queries) == 1


def test_wrong_secret_of_a_real_key_is_not_found(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key()
    body = key[:20] + ("a" if key[20] != "a" else "b") + key[21:-6]
    response = client.post(URL, headers=bearer(body + checksum(body)))
    assert_invalid_token(response, "NOT_FOUND")
    assert body not in response.get_data(as_text=True)


def test_revoked_key_is_refused(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key(revoked_at=utcnow())
    assert_invalid_token(client.post(URL, headers=bearer(key)), "REVOKED")


def test_expired_key_is_refused(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key(expires_at=utcnow() - timedelta(seconds=1))
    assert_invalid_token(client.post(URL, headers=bearer(key)), "EXPIRED")


def test_key_expiring_later_is_accepted(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key(expires_at=utcnow() + timedelta(hours=1))
    assert client.post(URL, headers=bearer(key)).status_code == 200


def test_disabled_key_is_refused(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key(enabled=False)
    assert_invalid_token(client.post(URL, headers=bearer(key)), "DISABLED")


def test_missing_scope_is_forbidden_and_named(scoped_app: Flask, issue_key: IssueKey) -> None:
    _, key = issue_key(scopes=("reports:write", "billing:read"))
    client = scoped_app.test_client()
    response = client.get("/reports", headers=bearer(key))
    assert_problem(response, 403, "INSUFFICIENT_SCOPE")
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="keyservice", error="insufficient_scope", scope="reports:read"'
    )
    response = client.get("/billing", headers=bearer(key))
    assert_problem(response, 403, "INSUFFICIENT_SCOPE")
    assert 'scope="billing:read billing:write"' in response.headers["WWW-Authenticate"]


def test_exact_scope_is_granted(scoped_app: Flask, issue_key: IssueKey) -> None:
    _, key = issue_key(scopes=("reports:read",))
    response = scoped_app.test_client().get("/reports", headers=bearer(key))
    assert response.status_code == 200
    assert response.get_json() == {"scopes": ["reports:read"]}


def test_wildcard_scope_grants_every_scope_under_it(scoped_app: Flask, issue_key: IssueKey) -> None:
    _, key = issue_key(scopes=("billing:*",))
    client = scoped_app.test_client()
    assert client.get("/billing", headers=bearer(key)).status_code == 200
    assert_problem(client.get("/reports", headers=bearer(key)), 403, "INSUFFICIENT_SCOPE")


def test_wildcard_does_not_grant_a_longer_name(scoped_app: Flask, issue_key: IssueKey) -> None:
    _, key = issue_key(scopes=("report:*",))
    response = scoped_app.test_client().get("/reports", headers=bearer(key))
    assert_problem(response, 403, "INSUFFICIENT_SCOPE")


def test_no_error_body_echoes_the_key(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key(revoked_at=utcnow())
    for headers in (bearer(key), bearer(key[:-1]), {"X-API-Key": key, **bearer(key)}):
        text = client.post(URL, headers=headers).get_data(as_text=True)
        assert key[:-1] not in text and key[3:19] not in text


@pytest.mark.parametrize(
    "header, accepted, ignored",
    [
        ("X-Customer-Key", "X-Customer-Key", "X-API-Key"),
        ("", None, "X-API-Key"),
    ],
)
def test_the_second_header_is_configurable(database_url: str, header: str, accepted: str | None, ignored: str) -> None:
    with migrated_app(database_url, KEYSERVICE_HEADER=header) as app:
        with app.app_context():
            _, key = KeyService.create_key(name="n", external_client_id="acme")
            db.session.commit()
        client = app.test_client()
        assert_problem(client.post(URL, headers={ignored: key}), 401, "MISSING")
        if accepted:
            assert client.post(URL, headers={accepted: key}).status_code == 200
        assert client.post(URL, headers=bearer(key)).status_code == 200
