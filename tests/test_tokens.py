"""Access tokens in process on both databases: POST /oauth/token, the metadata routes, @require_key
with a token, bad tokens, signing keys and the CLI. Over HTTP against gunicorn: test_tokens_e2e.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
import time_machine
from cryptography.hazmat.primitives import serialization
from flask import Flask, g
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from werkzeug.test import TestResponse

from keyservice import KeyService, require_key
from keyservice.app import POSTGRESQL_ENGINE_OPTIONS, db
from keyservice.core.models import SigningKey, utcnow
from keyservice.core.state import current_state
from keyservice.management.store import get_key, key_usage
from keyservice.verification.signingkeys import SigningKeys, rotate_signing_keys

from .conftest import IssueKey, migrated_app
from .helpers import assert_problem, bearer, issue, wait_until, wrong_secret
from .test_hostile_input import hostile_raw_bodies, hostile_text
from .test_require_key import assert_invalid_token
from .tokens import basic

TOKEN = "/oauth/token"
PROTECTED = "/protected-with-key"
ISSUER = "http://localhost"  # the tests' configured issuer (conftest.TEST_CONFIG): the test client's URL
GRANT = {"grant_type": "client_credentials"}


def post_token(client: FlaskClient, key: str | None = None, **form: str) -> TestResponse:
    return client.post(TOKEN, data=GRANT | form, headers=basic(key) if key else {})


def token_of(client: FlaskClient, key: str, **form: str) -> str:
    response = post_token(client, key, **form)
    assert response.status_code == 200, response.get_data(as_text=True)
    token: str = response.get_json()["access_token"]
    return token


def assert_oauth_error(response: TestResponse, status: int, error: str, code: str | None = None) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["error"] == error and body["error_description"]
    assert body.get("code") == code
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Basic realm="keyservice"'


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


@pytest.fixture
def scoped_app(app: Flask) -> Flask:
    @app.get("/reports")
    @require_key("reports:read")
    def reports() -> dict[str, Any]:
        return {
            "key_id": g.auth.key_id,
            "client": g.auth.external_client_id,
            "scopes": list(g.auth.scopes),
            "remaining": g.auth.remaining,
        }

    return app


# --- the token endpoint ----------------------------------------------------------------------------


def test_basic_auth_gives_a_token_in_the_rfc_9068_profile(app: Flask, client: FlaskClient, issue_key: IssueKey) -> None:
    key_id, key = issue_key(external_client_id="acme", scopes=("reports:read", "billing:*"))
    response = post_token(client, key)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body.keys() == {"access_token", "token_type", "expires_in", "scope"}
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 300, "reports:read billing:*")
    token = body["access_token"]
    assert key not in token and key.split("_")[2] not in json.dumps(claims_of(token))
    jwks = client.get("/.well-known/jwks.json").get_json()
    header = jwt.get_unverified_header(token)
    assert (header["typ"], header["alg"]) == ("at+jwt", "ES256")
    public_key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(token, public_key, algorithms=["ES256"], audience=ISSUER, issuer=ISSUER)
    assert claims["sub"] == claims["client_id"] == key_id
    assert claims["external_client_id"] == "acme" and claims["scope"] == "reports:read billing:*"
    assert claims["exp"] - claims["iat"] == 300 and claims["jti"]


def test_client_id_and_secret_in_the_form_give_a_token(client: FlaskClient, issue_key: IssueKey) -> None:
    key_id, key = issue_key()
    response = client.post(TOKEN, data=GRANT | {"client_id": key_id, "client_secret": key})
    assert response.status_code == 200
    assert claims_of(response.get_json()["access_token"])["sub"] == key_id


def test_a_narrower_scope_gives_a_token_of_only_that_scope(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key(scopes=("reports:read", "billing:*"))
    response = post_token(client, key, scope="billing:write")
    assert response.get_json()["scope"] == "billing:write"
    assert claims_of(response.get_json()["access_token"])["scope"] == "billing:write"


@pytest.mark.parametrize("scope", ["admin:all", "reports:read admin:all", "billing:*"])
def test_a_scope_the_key_lacks_is_invalid_scope(client: FlaskClient, issue_key: IssueKey, scope: str) -> None:
    _, key = issue_key(scopes=("reports:read", "billing:read"))
    assert_oauth_error(post_token(client, key, scope=scope), 400, "invalid_scope")


@pytest.mark.parametrize("scope", ["", "   ", 'a"b', "a\\b", "é", " ".join(f"s{n}" for n in range(101))])
def test_a_scope_that_is_not_scope_tokens_is_invalid_scope(
    client: FlaskClient, issue_key: IssueKey, scope: str
) -> None:
    _, key = issue_key()
    assert_oauth_error(post_token(client, key, scope=scope), 400, "invalid_scope")


def test_a_wrong_secret_is_invalid_client(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key()
    response = post_token(client, wrong_secret(key))
    assert_oauth_error(response, 401, "invalid_client", "NOT_FOUND")
    assert key[20:-6] not in response.get_data(as_text=True)


def test_a_client_id_other_than_the_keys_id_is_invalid_client(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key()
    other_id, _ = issue_key()
    assert_oauth_error(client.post(TOKEN, data=GRANT, headers=basic(key, other_id)), 401, "invalid_client")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer x"},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Basic " + base64.b64encode(b"no colon").decode()},
    ],
)
def test_no_usable_client_authentication_is_invalid_client(client: FlaskClient, headers: dict[str, str]) -> None:
    assert_oauth_error(client.post(TOKEN, data=GRANT, headers=headers), 401, "invalid_client")


@pytest.mark.parametrize(
    "grant_type, error",
    [
        ("password", "unsupported_grant_type"),
        ("authorization_code", "unsupported_grant_type"),
        (None, "invalid_request"),
    ],
)
def test_only_client_credentials_is_granted(
    client: FlaskClient, issue_key: IssueKey, grant_type: str | None, error: str
) -> None:
    _, key = issue_key()
    data = {} if grant_type is None else {"grant_type": grant_type}
    assert_oauth_error(client.post(TOKEN, data=data, headers=basic(key)), 400, error)


def test_malformed_requests_are_invalid_request(client: FlaskClient, issue_key: IssueKey) -> None:
    key_id, key = issue_key()
    both = client.post(TOKEN, data=GRANT | {"client_id": key_id, "client_secret": key}, headers=basic(key))
    assert_oauth_error(both, 400, "invalid_request")
    repeated = client.post(
        TOKEN,
        data="grant_type=client_credentials&grant_type=client_credentials",
        content_type="application/x-www-form-urlencoded",
        headers=basic(key),
    )
    assert_oauth_error(repeated, 400, "invalid_request")
    assert_oauth_error(client.post(TOKEN, json=GRANT, headers=basic(key)), 400, "invalid_request")
    in_the_url = client.post(TOKEN, query_string={"client_secret": key}, data=GRANT | {"client_id": key_id})
    assert_oauth_error(in_the_url, 400, "invalid_request")
    assert key not in in_the_url.get_data(as_text=True)
    assert_problem(
        client.post(TOKEN, data=GRANT | {"scope": "x" * 10_000}, headers=basic(key)),
        413,
        "HTTP_REQUEST_ENTITY_TOO_LARGE",
    )
    assert_problem(client.get(TOKEN), 405, "HTTP_METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(
    "changes, code",
    [
        ({"revoked_at": utcnow()}, "REVOKED"),
        ({"expires_at": utcnow() - timedelta(seconds=1)}, "EXPIRED"),
        ({"enabled": False}, "DISABLED"),
    ],
)
def test_a_key_no_longer_good_gets_no_token(
    client: FlaskClient, issue_key: IssueKey, changes: dict[str, Any], code: str
) -> None:
    _, key = issue_key(**changes)
    assert_oauth_error(post_token(client, key), 401, "invalid_client", code)


def test_a_rate_limited_key_gets_no_token_and_the_request_counts(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key(ratelimit_limit=2, ratelimit_period=60)
    first = post_token(client, key)
    assert first.status_code == 200 and first.headers["RateLimit-Policy"] == '"default";q=2;w=60'
    assert client.post(PROTECTED, headers=bearer(first.get_json()["access_token"])).status_code == 200
    refused = post_token(client, key)
    assert_problem(refused, 429, "RATE_LIMITED")
    assert refused.headers["Retry-After"]


def test_an_exhausted_key_gets_no_token(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key(remaining=1)
    token = token_of(client, key)
    assert_problem(post_token(client, key), 429, "USAGE_EXCEEDED")
    assert_problem(client.post(PROTECTED, headers=bearer(token)), 429, "USAGE_EXCEEDED")


def test_the_token_endpoint_and_the_tokens_requests_show_in_the_keys_usage(
    app: Flask, client: FlaskClient, issue_key: IssueKey
) -> None:
    key_id, key = issue_key(scopes=("reports:read",))
    token = token_of(client, key)
    assert_oauth_error(post_token(client, wrong_secret(key)), 401, "invalid_client", "NOT_FOUND")
    for _ in range(3):
        assert client.post(PROTECTED, headers=bearer(token)).status_code == 200
    with app.app_context():
        current_state().verifier.flush_usage()
        [hour] = key_usage(db.session, key_id, "hour")["items"]
        assert get_key(db.session, key_id).last_used_at is not None
    assert hour["counts"] == {"VALID": 4, "NOT_FOUND": 1}


hostile_forms = st.dictionaries(
    st.sampled_from(["grant_type", "scope", "client_id", "client_secret", "x"]),
    st.one_of(hostile_text, st.just("client_credentials")),
    max_size=5,
)
header_text = hostile_text.filter(lambda text: not {"\n", "\r", "\x00"} & set(text))  # what a client can send
hostile_authorizations = st.one_of(
    st.none(),
    header_text.map(lambda text: "Basic " + text),
    hostile_text.map(lambda text: "Basic " + base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()),
)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    form=hostile_forms,
    raw=st.one_of(st.none(), hostile_raw_bodies),
    authorization=hostile_authorizations,
    content_type=st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain"]),
)
def test_hostile_token_requests_get_a_4xx(
    client: FlaskClient, form: dict[str, str], raw: str | None, authorization: str | None, content_type: str
) -> None:
    body = raw if raw is not None else urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in form.items()})
    response = client.post(
        TOKEN,
        data=body.encode("utf-8", "surrogatepass"),
        content_type=content_type,
        headers={"Authorization": authorization} if authorization else {},
    )
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert response.mimetype in ("application/json", "application/problem+json")


# --- @require_key with a token -----------------------------------------------------------------------


def test_a_token_fills_g_auth_as_its_key_does_with_the_tokens_scopes(scoped_app: Flask, issue_key: IssueKey) -> None:
    key_id, key = issue_key(external_client_id="acme-corp", scopes=("reports:*", "billing:read"), remaining=10)
    client = scoped_app.test_client()
    token = token_of(client, key, scope="reports:read")
    response = client.get("/reports", headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json() == {"key_id": key_id, "client": "acme-corp", "scopes": ["reports:read"], "remaining": 8}
    assert client.get("/reports", headers={"X-API-Key": token}).status_code == 200


def test_a_required_scope_must_be_the_tokens(scoped_app: Flask, issue_key: IssueKey) -> None:
    _, key = issue_key(scopes=("reports:read", "billing:read"))
    client = scoped_app.test_client()
    response = client.get("/reports", headers=bearer(token_of(client, key, scope="billing:read")))
    assert_problem(response, 403, "INSUFFICIENT_SCOPE")
    assert 'scope="reports:read"' in response.headers["WWW-Authenticate"]


def test_a_required_scope_must_still_be_the_keys(scoped_app: Flask, issue_key: IssueKey) -> None:
    key_id, key = issue_key(scopes=("reports:read",))
    client = scoped_app.test_client()
    token = token_of(client, key)
    with scoped_app.app_context():
        get_key(db.session, key_id).scopes = ["billing:read"]
        db.session.commit()
    assert_problem(client.get("/reports", headers=bearer(token)), 403, "INSUFFICIENT_SCOPE")


@pytest.mark.parametrize(
    "change, code",
    [
        (lambda api_key: api_key.revoke(), "REVOKED"),
        (lambda api_key: setattr(api_key, "enabled", False), "DISABLED"),
        (lambda api_key: setattr(api_key, "expires_at", utcnow()), "EXPIRED"),
    ],
)
def test_a_token_of_a_key_changed_since_is_refused(
    app: Flask, client: FlaskClient, issue_key: IssueKey, change: Any, code: str
) -> None:
    key_id, key = issue_key()
    token = token_of(client, key)
    assert client.post(PROTECTED, headers=bearer(token)).status_code == 200
    with app.app_context():
        change(get_key(db.session, key_id))
        db.session.commit()
    assert_invalid_token(client.post(PROTECTED, headers=bearer(token)), code)


def test_a_tokens_requests_count_against_its_keys_rate_limit(client: FlaskClient, issue_key: IssueKey) -> None:
    _, key = issue_key(ratelimit_limit=3, ratelimit_period=60)
    token = token_of(client, key)
    statuses = [client.post(PROTECTED, headers=bearer(token)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


# --- bad tokens ------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    """A JWT put together by hand, for what no library would sign."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


@pytest.fixture
def good(app: Flask, client: FlaskClient, issue_key: IssueKey) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A valid token, its header and its claims."""
    token = token_of(client, issue_key()[1])
    return token, jwt.get_unverified_header(token), claims_of(token)


def signed_by_keyservice(app: Flask, claims: dict[str, Any], **header: Any) -> str:
    with app.app_context():
        kid, private_key = current_state().signing_keys.signing_key()
    return jwt.encode(claims, private_key, algorithm="ES256", headers={"typ": "at+jwt", "kid": kid} | header)


def test_each_bad_token_is_a_401_whose_code_says_why(app: Flask, client: FlaskClient, good: Any) -> None:
    token, header, claims = good
    with app.app_context():
        public_pem = (
            current_state()
            .signing_keys.public_key(header["kid"])
            .public_bytes(  # type: ignore[union-attr]
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    signing_input, signature = token.rsplit(".", 1)
    forged = signing_input + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    other_claims = dict(claims, external_client_id="someone-else")
    tampered = ".".join([token.split(".")[0], b64(json.dumps(other_claims).encode()), signature])
    alg_none = hand_signed({"alg": "none", "typ": "at+jwt", "kid": header["kid"]}, claims, lambda _: b"")
    hs256 = hand_signed(
        {"alg": "HS256", "typ": "at+jwt", "kid": header["kid"]},
        claims,
        lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
    )
    now = int(time.time())
    cases = {
        "forged signature": (forged, "TOKEN_INVALID"),
        "claims changed": (tampered, "TOKEN_INVALID"),
        "alg none": (alg_none, "TOKEN_INVALID"),
        "HS256 keyed with the public key": (hs256, "TOKEN_INVALID"),
        "another typ": (signed_by_keyservice(app, claims, typ="JWT"), "TOKEN_INVALID"),
        "unknown kid": (signed_by_keyservice(app, claims, kid="no-such-kid"), "TOKEN_INVALID"),
        "a kid of ours' form that is none": (signed_by_keyservice(app, claims, kid="A" * 16), "TOKEN_INVALID"),
        "a NUL in the kid": (signed_by_keyservice(app, claims, kid="a\x00b"), "TOKEN_INVALID"),
        "no jti": (signed_by_keyservice(app, {k: v for k, v in claims.items() if k != "jti"}), "TOKEN_INVALID"),
        "not JSON": ("eyJ.eyJ.x", "TOKEN_INVALID"),
        "too long": ("x" * 9000 + ".y.z", "TOKEN_INVALID"),
        "wrong iss": (signed_by_keyservice(app, claims | {"iss": "https://evil.example"}), "TOKEN_WRONG_ISSUER"),
        "wrong aud": (signed_by_keyservice(app, claims | {"aud": "https://other.example"}), "TOKEN_WRONG_AUDIENCE"),
        "expired": (signed_by_keyservice(app, claims | {"iat": now - 400, "exp": now - 100}), "TOKEN_EXPIRED"),
    }
    assert client.post(PROTECTED, headers=bearer(token)).status_code == 200
    for name, (bad, code) in cases.items():
        response = client.post(PROTECTED, headers=bearer(bad))
        assert (response.status_code, response.get_json()["code"]) == (401, code), name
        assert_invalid_token(response, code)


def test_a_remembered_token_is_refused_once_it_expires(database_url: str) -> None:
    # Long enough for a busy machine between issuing and the first use; time_machine travels past it.
    with migrated_app(database_url, KEYSERVICE_TOKEN_LIFETIME=30) as app:
        with app.app_context():
            _, key = KeyService.create_key(name="n", external_client_id="acme")
            db.session.commit()
        client = app.test_client()
        token = token_of(client, key)
        assert client.post(PROTECTED, headers=bearer(token)).status_code == 200
        with time_machine.travel(claims_of(token)["exp"] + 0.05):
            assert_invalid_token(client.post(PROTECTED, headers=bearer(token)), "TOKEN_EXPIRED")


# --- metadata -------------------------------------------------------------------------------------------


def test_the_metadata_is_rfc_8414_and_cacheable(database_url: str) -> None:
    issuer = "https://keys.example.com/auth"
    with migrated_app(database_url, KEYSERVICE_TOKEN_ISSUER=issuer + "/", KEYSERVICE_JWKS_MAX_AGE=120) as app:
        client = app.test_client()
        response = client.get("/.well-known/oauth-authorization-server")
        assert response.headers["Cache-Control"] == "public, max-age=120"
        assert response.get_json() == {
            "issuer": issuer,
            "token_endpoint": issuer + "/oauth/token",
            "jwks_uri": issuer + "/.well-known/jwks.json",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": [],
        }
        jwks = client.get("/.well-known/jwks.json")
        assert jwks.headers["Cache-Control"] == "public, max-age=120"
        [key] = jwks.get_json()["keys"]
        assert key.keys() == {"kty", "crv", "x", "y", "kid", "alg", "use"} and key["alg"] == "ES256"


def test_the_openapi_document_has_the_token_routes(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    assert {"post"} <= set(paths["/oauth/token"])
    assert "application/x-www-form-urlencoded" in paths["/oauth/token"]["post"]["requestBody"]["content"]
    assert {"get"} <= set(paths["/.well-known/jwks.json"]) and {"get"} <= set(
        paths["/.well-known/oauth-authorization-server"]
    )


# --- signing keys --------------------------------------------------------------------------------------


def signing_keys(app: Flask) -> list[SigningKey]:
    with app.app_context():
        return list(db.session.scalars(select(SigningKey).order_by(SigningKey.generation)))


def test_concurrent_first_uses_make_one_signing_key(app: Flask) -> None:
    with app.app_context():
        state = current_state()
    # As many first uses as a worker's pool has connections: more would wait for one, and on
    # a loaded machine time out (a 503 in service), which is not what this test is about.
    racers = POSTGRESQL_ENGINE_OPTIONS["pool_size"] + POSTGRESQL_ENGINE_OPTIONS["max_overflow"]
    views = [SigningKeys(state.settings, db, state.secret_keys) for _ in range(racers)]
    barrier = threading.Barrier(len(views))
    kids: list[str] = []
    errors: list[BaseException] = []

    def first_use(view: SigningKeys) -> None:
        with app.app_context():
            barrier.wait(timeout=10)
            try:
                kids.append(view.signing_key()[0])
            except Exception as error:
                errors.append(error)

    threads = [threading.Thread(target=first_use, args=(view,)) for view in views]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(kids) == racers and len(set(kids)) == 1
    assert [key.kid for key in signing_keys(app)] == kids[:1]


def test_a_rotation_publishes_first_signs_later_and_retires_after_the_token_lifetime(
    app: Flask, client: FlaskClient, issue_key: IssueKey
) -> None:
    _, key = issue_key()
    old_token = token_of(client, key)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    with app.app_context():
        new = rotate_signing_keys(
            db.session, current_state().settings, current_state().secret_keys, timedelta(seconds=1.5)
        )
        db.session.commit()
        new_kid = new.kid

    def published_kids() -> list[str]:
        return [k["kid"] for k in client.get("/.well-known/jwks.json").get_json()["keys"]]

    wait_until(lambda: new_kid in published_kids(), 5, "the new key published (read every REFRESH_INTERVAL)")
    assert published_kids() == [new_kid, old_kid]
    assert jwt.get_unverified_header(token_of(client, key))["kid"] == old_kid

    def signed_with_the_new_key() -> str | None:
        token = token_of(client, key)
        return token if jwt.get_unverified_header(token)["kid"] == new_kid else None

    new_token = wait_until(signed_with_the_new_key, 5, "a token signed with the new key once it is active")
    for token in (old_token, new_token):
        assert client.post(PROTECTED, headers=bearer(token)).status_code == 200
    old, new_row = signing_keys(app)
    assert new_row.retires_at is None
    assert old.retires_at - new_row.activates_at == timedelta(seconds=300 + 60)


def test_a_second_rotation_while_the_next_key_waits_is_a_conflict(app: Flask, runner: Any) -> None:
    assert runner.invoke(args=["keys", "signing-keys", "rotate"]).exit_code == 0  # the first key: signs at once
    rotated = runner.invoke(args=["keys", "signing-keys", "rotate", "--delay", "1h"])
    assert rotated.exit_code == 0 and rotated.stdout.startswith("published ")
    again = runner.invoke(args=["keys", "signing-keys", "rotate", "--delay", "1h"])
    assert again.exit_code == 2 and "a rotation is under way" in again.stderr
    listed = runner.invoke(args=["keys", "signing-keys", "list"]).stdout.splitlines()
    assert [line.split()[1] for line in listed] == ["next", "current"]


def test_a_rotation_delay_within_the_jwks_cache_is_refused(runner: Any) -> None:
    refused = runner.invoke(args=["keys", "signing-keys", "rotate", "--delay", "5m"])
    assert refused.exit_code == 2 and "KEYSERVICE_JWKS_MAX_AGE" in refused.stderr


def test_private_keys_are_encrypted_at_rest_under_the_deployment_secret(database_url: str) -> None:
    with migrated_app(database_url, KEYSERVICE_SECRET_KEY="the-first-deployment-secret-of-32+-characters") as app:
        with app.app_context():
            _, key = KeyService.create_key(name="n", external_client_id="acme")
            db.session.commit()
        token = token_of(app.test_client(), key)
        [row] = signing_keys(app)
        assert row.encrypted and "PRIVATE KEY" not in row.private_key
    # Under another secret (the first not among its fallbacks), nothing can be signed (503),
    # and what was signed still verifies.
    with migrated_app(database_url, KEYSERVICE_SECRET_KEY="another-deployment-secret-of-32+-characters") as app:
        client = app.test_client()
        assert_problem(post_token(client, key), 503, "UNAVAILABLE")
        assert client.post(PROTECTED, headers=bearer(token)).status_code == 200


# --- the CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def issuer_app(database_url: str) -> Iterator[Flask]:
    with migrated_app(database_url, KEYSERVICE_TOKEN_ISSUER="https://keys.example.com") as app:
        yield app


def test_keys_token_prints_a_token_the_service_accepts(issuer_app: Flask) -> None:
    with issuer_app.app_context():
        _, key = KeyService.create_key(name="n", external_client_id="acme", scopes=["a:read", "b:read"])
        db.session.commit()
    printed = issuer_app.test_cli_runner().invoke(args=["keys", "token", key, "--scope", "b:read"])
    assert printed.exit_code == 0, printed.stderr
    token = printed.stdout.strip()
    assert claims_of(token)["scope"] == "b:read" and claims_of(token)["iss"] == "https://keys.example.com"
    response = issuer_app.test_client().post(PROTECTED, headers=bearer(token), base_url="https://keys.example.com")
    assert response.status_code == 200


def test_without_an_issuer_no_token_is_made_whatever_the_host(tmp_path: Path) -> None:
    """On one machine with no issuer set and not under keyservice's gunicorn settings (which name
    the bind address), tokens wait for KEYSERVICE_TOKEN_ISSUER: a request's Host never names it."""
    with migrated_app(f"sqlite:///{tmp_path / 'keys.db'}", KEYSERVICE_TOKEN_ISSUER="") as app:
        _, key = issue(app)
        no_issuer = app.test_cli_runner().invoke(args=["keys", "token", key])
        assert no_issuer.exit_code == 2 and "KEYSERVICE_TOKEN_ISSUER" in no_issuer.stderr
        assert key not in no_issuer.output
        client = app.test_client()
        for host in ("localhost", "evil.example"):
            refused = client.post(TOKEN, data=GRANT, headers=basic(key) | {"Host": host})
            assert_problem(refused, 409, "TOKENS_NOT_CONFIGURED")
            metadata = client.get("/.well-known/oauth-authorization-server", headers={"Host": host})
            assert metadata.status_code == 409 and "evil.example" not in metadata.get_data(as_text=True)


def test_keys_token_prints_the_outcome_of_a_refused_key(issuer_app: Flask) -> None:
    with issuer_app.app_context():
        api_key, key = KeyService.create_key(name="n", external_client_id="acme")
        api_key.revoke()
        db.session.commit()
    refused = issuer_app.test_cli_runner().invoke(args=["keys", "token", key])
    assert (refused.exit_code, refused.stdout, refused.stderr.strip()) == (1, "", "REVOKED")
