"""Access tokens over real HTTP against gunicorn: the issue's flow, revocation, a signing-key rotation
under traffic, and two instances on one PostgreSQL."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import Counter
from pathlib import Path

import jwt
import pytest

from .conftest import postgres_database
from .helpers import bearer, wait_until
from .load import together
from .servers import KeysCli, flask_command, gunicorn, request, service_environment
from .services import PostgresServer
from .tokens import access_token, fetch_token

pytestmark = pytest.mark.slow  # starts the service, servers or a browser

PROTECTED = "/protected-with-key"
JWKS = "/.well-known/jwks.json"
REQUIRED = ["iss", "sub", "client_id", "aud", "iat", "exp", "jti", "scope", "external_client_id"]


@pytest.fixture
def environ(database_url: str) -> dict[str, str]:
    return service_environment(database_url, KEYSERVICE_BCRYPT_ROUNDS="4", KEYSERVICE_TOKEN_LIFETIME="120")


def issuer_of(environ: dict[str, str], base: str) -> str:
    """The service's issuer: configured (on PostgreSQL), or its bind address (on one machine)."""
    return environ.get("KEYSERVICE_TOKEN_ISSUER", base)


def verified_by_jwks(client: jwt.PyJWKClient, token: str, issuer: str) -> dict[str, object]:
    """The token's claims as any service checks them: PyJWT and the JWKS URL, nothing else."""
    claims: dict[str, object] = jwt.decode(
        token,
        client.get_signing_key_from_jwt(token),
        algorithms=["ES256"],
        audience=issuer,
        issuer=issuer,
        options={"require": REQUIRED},
    )
    return claims


def error_of(response: object) -> tuple[int, str]:
    return response.status, json.loads(response.body)["error"]  # type: ignore[attr-defined]


def test_a_key_traded_for_a_token_over_http_and_refused_within_a_second_of_its_revocation(
    environ: dict[str, str], tmp_path: Path
) -> None:
    cli = KeysCli(environ)
    key_id, key = cli.create_key("--scope", "reports:read", "--scope", "billing:read")
    with gunicorn(environ, tmp_path / "gunicorn.log", workers=2) as base:
        response = fetch_token(base, key)
        assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
        token = json.loads(response.body)["access_token"]
        assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
        claims = verified_by_jwks(jwt.PyJWKClient(base + JWKS), token, issuer_of(environ, base))
        assert claims["sub"] == claims["client_id"] == key_id and claims["external_client_id"] == "acme"
        assert claims["scope"] == "reports:read billing:read"
        assert claims["exp"] - claims["iat"] == 120  # type: ignore[operator]

        ok = request(base + PROTECTED, "POST", bearer(token))
        assert (ok.status, json.loads(ok.body)) == (200, {"protected": True, "external_client_id": "acme"})
        wrong = key[:20] + ("a" if key[20] != "a" else "b") + key[21:]
        assert error_of(fetch_token(base, wrong)) == (401, "invalid_client")
        password = request(
            base + "/oauth/token",
            "POST",
            {"Content-Type": "application/x-www-form-urlencoded"},
            data=f"grant_type=password&username={key_id}&password=x".encode(),
        )
        assert error_of(password) == (400, "unsupported_grant_type")
        assert error_of(fetch_token(base, key, "admin:all")) == (400, "invalid_scope")
        narrower = json.loads(fetch_token(base, key, "billing:read").body)
        assert narrower["scope"] == "billing:read"
        assert jwt.decode(narrower["access_token"], options={"verify_signature": False})["scope"] == "billing:read"

        warm = [request(base + PROTECTED, "POST", bearer(token)) for _ in range(40)]  # both workers know it
        assert {response.status for response in warm} == {200}
        revoked = flask_command(environ, "keys", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        one_second_later = time.monotonic() + 1.0
        while time.monotonic() < one_second_later:
            request(base + PROTECTED, "POST", bearer(token))
        after = [request(base + PROTECTED, "POST", bearer(token)) for _ in range(60)]
        assert Counter((r.status, json.loads(r.body)["code"]) for r in after) == {(401, "REVOKED"): 60}
        refused = fetch_token(base, key)
        assert error_of(refused) == (401, "invalid_client") and json.loads(refused.body)["code"] == "REVOKED"
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="keyservice"'


def test_tokens_signed_before_and_after_a_rotation_verify_at_every_moment(database_url: str, tmp_path: Path) -> None:
    environ = service_environment(database_url, KEYSERVICE_BCRYPT_ROUNDS="4", KEYSERVICE_JWKS_MAX_AGE="1")
    _, key = KeysCli(environ).create_key()
    with gunicorn(environ, tmp_path / "gunicorn.log", workers=2) as base:
        jwks_client = jwt.PyJWKClient(base + JWKS, lifespan=1)  # a verifier honouring the max-age
        before = access_token(base, key)
        seen: list[tuple[str, str, int, bool]] = []  # (which token, its kid, keyservice's status, PyJWT's verdict)
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                for which, token in (("before", before), ("fresh", access_token(base, key))):
                    status = request(base + PROTECTED, "POST", bearer(token)).status
                    try:
                        verified_by_jwks(jwks_client, token, issuer_of(environ, base))
                        verdict = True
                    except jwt.PyJWTError:
                        verdict = False
                    seen.append((which, jwt.get_unverified_header(token)["kid"], status, verdict))

        def fresh_kids() -> list[str]:
            return [kid for which, kid, _, _ in seen if which == "fresh"]

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            wait_until(lambda: len(seen) >= 10, 10, "traffic before the rotation")
            rotated = flask_command(environ, "keys", "signing-keys", "rotate", "--delay", "2s")
            assert rotated.returncode == 0, rotated.stderr
            new_kid = rotated.stdout.split()[1].rstrip(";")
            # Past the new key's activation, once every worker has re-read the keys, every fresh
            # token carries the new kid: the last few in a row do.
            wait_until(lambda: fresh_kids()[-6:] == [new_kid] * 6, 20, "fresh tokens signed with the new key")
        finally:
            stop.set()
            thread.join(30)
    old_kid = jwt.get_unverified_header(before)["kid"]
    kids = fresh_kids()
    assert kids[0] == old_kid and kids[-1] == new_kid and set(kids) == {old_kid, new_kid}
    assert Counter((status, verdict) for _, _, status, verdict in seen) == {(200, True): len(seen)}
    assert sum(1 for which, *_ in seen if which == "before") > 20


def test_two_instances_on_postgresql_sign_with_the_same_keys(postgres: PostgresServer, tmp_path: Path) -> None:
    with postgres_database(postgres) as url:
        environ = service_environment(
            url, KEYSERVICE_BCRYPT_ROUNDS="4", KEYSERVICE_TOKEN_ISSUER="https://keys.example.com"
        )
        _, key = KeysCli(environ).create_key()
        with gunicorn(environ, tmp_path / "a.log") as a, gunicorn(environ, tmp_path / "b.log") as b:
            # Both instances' first tokens at once, before any signing key exists: one key is made.
            first = together([functools.partial(fetch_token, base, key) for base in (a, b) * 4])
            assert {response.status for response in first} == {200}
            kids = {jwt.get_unverified_header(json.loads(r.body)["access_token"])["kid"] for r in first}
            assert len(kids) == 1
            assert json.loads(request(a + JWKS).body) == json.loads(request(b + JWKS).body)
            for signer, checker in ((a, b), (b, a)):
                checked = request(checker + PROTECTED, "POST", bearer(access_token(signer, key)))
                assert (checked.status, json.loads(checked.body)["external_client_id"]) == (200, "acme")
