"""The one deployment secret: rotated with the old one as a fallback, every stored secret stays
usable and no checked key needs bcrypt again; ``flask keys reencrypt`` moves everything to the
new secret, so the fallback can go; the deprecated settings still decrypt what they encrypted."""

from __future__ import annotations

import base64
import logging
import stat
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import jwt
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from jwt.algorithms import ECAlgorithm
from prometheus_client import REGISTRY
from sqlalchemy import select

from keyservice import create_app
from keyservice.app import db
from keyservice.core.config import ConfigError
from keyservice.core.models import SigningKey, WebhookEndpoint, utcnow
from keyservice.core.secretkeys import Purpose
from keyservice.core.state import current_state
from keyservice.management.webhooks import decrypt_secret
from keyservice.verification.verifier import verify_key

from .conftest import migrated_app
from .helpers import assert_problem, bearer, issue
from .receivers import Receiver, serving, webhook_settings
from .test_webhooks import operator_key, register, send_due
from .tokens import basic

OLD = "the-old-deployment-secret-of-32+-characters"
NEW = "the-new-deployment-secret-of-32+-characters"
GRANT = {"grant_type": "client_credentials"}
KID = "a-0.1-signing-ky"


def bcrypt_checks() -> float:
    return REGISTRY.get_sample_value("keyservice_bcrypt_checks_total", {"result": "accepted"}) or 0.0


@contextmanager
def app_with(database_url: str, secret: str, *fallbacks: str) -> Iterator[Flask]:
    settings = webhook_settings(KEYSERVICE_WEBHOOKS_SEND="false")
    fallback_setting = {"KEYSERVICE_SECRET_KEY_FALLBACKS": ", ".join(fallbacks)}
    with migrated_app(database_url, KEYSERVICE_SECRET_KEY=secret, **fallback_setting, **settings) as app:
        yield app


def assert_everything_usable(app: Flask, key: str, receivers: list[Receiver]) -> None:
    """The key verifies without bcrypt, each endpoint's test event arrives signed with its secret,
    every signing key decrypts and signs, and a token is issued."""
    before = bcrypt_checks()
    with app.app_context():
        assert verify_key(key).valid
    assert bcrypt_checks() == before, "a checked key needed bcrypt again"
    client, admin = app.test_client(), operator_key(app)
    for receiver in receivers:
        [endpoint] = [
            e for e in client.get("/webhooks", headers=bearer(admin)).get_json()["items"] if e["url"] == receiver.url
        ]
        assert client.post(f"/webhooks/{endpoint['id']}/test", headers=bearer(admin)).status_code == 202
    send_due(app)
    for receiver in receivers:
        assert receiver.received[-1].status == 200 and receiver.received[-1].verified
    with app.app_context():
        fernet = current_state().secret_keys.fernet(Purpose.SIGNING_KEYS)
        rows = list(db.session.scalars(select(SigningKey)))
    assert len(rows) == 2
    for row in rows:
        private = serialization.load_pem_private_key(fernet.decrypt(row.private_key.encode()), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        signed = jwt.encode({"sub": "x"}, private, algorithm="ES256")
        public = jwt.PyJWK(row.public_jwk).key
        assert jwt.decode(signed, public, algorithms=["ES256"]) == {"sub": "x"}
    assert app.test_client().post("/oauth/token", data=GRANT, headers=basic(key)).status_code == 200


def test_a_rotated_secret_keeps_every_stored_secret_usable_and_reencrypt_lets_the_old_one_go(
    database_url: str,
) -> None:
    receivers = [Receiver(), Receiver()]
    with ExitStack() as stack:
        for receiver in receivers:
            stack.enter_context(serving(receiver))
        with app_with(database_url, OLD) as old:
            client, admin = old.test_client(), operator_key(old)
            for receiver in receivers:
                receiver.secret = register(client, admin, receiver.url)["secret"]
            _, key = issue(old)
            with old.app_context():
                assert verify_key(key).valid  # bcrypt once: the key is checked
            assert client.post("/oauth/token", data=GRANT, headers=basic(key)).status_code == 200
            rotated = old.test_cli_runner().invoke(args=["keys", "signing-keys", "rotate", "--delay", "1h"])
            assert rotated.exit_code == 0, rotated.output  # a second signing key, published before it signs

        with app_with(database_url, NEW, OLD) as rotating:
            assert_everything_usable(rotating, key, receivers)
            done = rotating.test_cli_runner().invoke(args=["keys", "reencrypt"])
            assert (done.exit_code, done.stdout) == (
                0,
                "re-encrypted 2 signing keys and 2 webhook secrets under the current KEYSERVICE_SECRET_KEY\n",
            )

        with app_with(database_url, NEW) as after:  # the fallback removed
            assert_everything_usable(after, key, receivers)

        # Everything was moved: the old secret alone reads nothing of it.
        with app_with(database_url, OLD) as undone:
            assert_problem(
                undone.test_client().post("/oauth/token", data=GRANT, headers=basic(key)), 503, "UNAVAILABLE"
            )
            refused = undone.test_cli_runner().invoke(args=["keys", "reencrypt"])
            assert refused.exit_code == 1 and "still not under the current secret" in refused.stderr


def test_an_endpoint_whose_secret_no_key_decrypts_holds_up_no_other(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    lost, kept = Receiver(), Receiver()
    with serving(lost), serving(kept):
        with app_with(database_url, OLD) as old:
            lost_id = register(old.test_client(), operator_key(old), lost.url)["id"]
        with app_with(database_url, NEW) as new:  # the old secret gone, not a fallback
            client, admin = new.test_client(), operator_key(new)
            kept.secret = register(client, admin, kept.url)["secret"]
            kept_id = next(
                e["id"]
                for e in client.get("/webhooks", headers=bearer(admin)).get_json()["items"]
                if e["url"] == kept.url
            )
            for endpoint_id in (lost_id, kept_id):  # the one that cannot be signed is due first
                assert client.post(f"/webhooks/{endpoint_id}/test", headers=bearer(admin)).status_code == 202
            sender_log = logging.getLogger("keyservice.webhooks")  # its own handler, when logging is set up
            sender_log.addHandler(caplog.handler)
            with new.app_context():  # its two deliveries (this test, an operator key's creation), then the other
                rounds = [current_state().sender.run_once(db.engine) for _ in range(4)]
            sender_log.removeHandler(caplog.handler)
            assert rounds == [False, False, True, False]
    assert lost.received == []
    assert [(r.status, r.verified) for r in kept.received] == [(200, True)]
    assert f"webhook endpoint {lost_id}'s secret cannot be decrypted" in caplog.text


def test_the_deprecated_settings_still_decrypt_and_reencrypt_moves_off_them(database_url: str) -> None:
    """As 0.1 left them: a webhook secret under KEYSERVICE_WEBHOOKS_ENCRYPTION_KEY, a signing key in the clear."""
    legacy = Fernet.generate_key().decode()
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True) | {"kid": KID, "alg": "ES256", "use": "sig"}
    secret = "whsec_" + base64.b64encode(b"the webhook secret of 0.1").decode()
    with (
        pytest.warns(FutureWarning, match="KEYSERVICE_WEBHOOKS_ENCRYPTION_KEY is deprecated"),
        migrated_app(database_url, KEYSERVICE_SECRET_KEY=NEW, KEYSERVICE_WEBHOOKS_ENCRYPTION_KEY=legacy) as app,
        app.app_context(),
    ):
        encrypted_secret = Fernet(legacy).encrypt(secret.encode()).decode()
        db.session.add(
            WebhookEndpoint(id="ep_legacy", url="https://1.1.1.1/", events=[], encrypted_secret=encrypted_secret)
        )
        db.session.add(
            SigningKey(
                kid=KID,
                generation=1,
                algorithm="ES256",
                public_jwk=jwk,
                private_key=pem.decode(),
                encrypted=False,
                activates_at=utcnow(),
            )
        )
        db.session.commit()
        assert stored_webhook_secret() == secret
        done = app.test_cli_runner().invoke(args=["keys", "reencrypt"])
        assert done.exit_code == 0 and "1 signing keys and 1 webhook secrets" in done.stdout
    with migrated_app(database_url, KEYSERVICE_SECRET_KEY=NEW) as after, after.app_context():  # the old variable gone
        assert stored_webhook_secret() == secret
        row = db.session.get(SigningKey, KID)
        assert row is not None and row.encrypted and "PRIVATE KEY" not in row.private_key
        assert current_state().secret_keys.fernet(Purpose.SIGNING_KEYS).decrypt(row.private_key.encode()) == pem
        assert after.test_client().post("/oauth/token", data=GRANT, headers=basic(issue(after)[1])).status_code == 200


def stored_webhook_secret() -> str:
    endpoint = db.session.get(WebhookEndpoint, "ep_legacy")
    assert endpoint is not None
    return decrypt_secret(current_state().secret_keys, endpoint)


def test_each_purpose_has_its_own_key_and_no_secret_is_shown(database_url: str) -> None:
    legacy = Fernet.generate_key().decode()
    with (
        pytest.warns(FutureWarning),
        migrated_app(
            database_url,
            KEYSERVICE_SECRET_KEY=NEW,
            KEYSERVICE_SECRET_KEY_FALLBACKS=OLD,
            KEYSERVICE_SIGNING_KEYS_ENCRYPTION_KEY=legacy,
        ) as app,
        app.app_context(),
    ):
        state = current_state()
    derived = [key for purpose in Purpose for key in state.secret_keys.derived(purpose)]
    assert len(set(derived)) == len(derived) == 2 * len(Purpose)  # every purpose's, under every secret, apart
    for text in (repr(state.secret_keys), repr(state.settings), repr(state)):
        assert NEW not in text and OLD not in text and legacy not in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KEYSERVICE_SECRET_KEY", "a-secret-shorter-than-32"),
        ("KEYSERVICE_SECRET_KEY", "a secret with spaces, and a comma, 32+"),
        ("KEYSERVICE_SECRET_KEY", "\ud800" * 40),
        ("KEYSERVICE_SECRET_KEY", "\x00" * 40),
        ("KEYSERVICE_SECRET_KEY", b"bytes-are-not-a-secret-of-32-characters"),
        ("KEYSERVICE_SECRET_KEY_FALLBACKS", f"{OLD},a-secret-shorter-than-32"),
    ],
)
def test_a_secret_that_would_not_survive_a_rotation_is_refused_without_being_shown(
    name: str, value: object, tmp_path: Path
) -> None:
    with (
        pytest.raises(ConfigError, match=name) as refused,
        migrated_app(f"sqlite:///{tmp_path / 'k.db'}", **{name: value}),
    ):
        pass
    assert "shorter" not in str(refused.value) and "bytes" not in str(refused.value)


def test_a_secret_read_from_a_file_keeps_its_keys_as_a_fallback(tmp_path: Path) -> None:
    """The trailing newline of a secret file, in either setting, is not part of the secret."""
    with migrated_app(f"sqlite:///{tmp_path / 'k.db'}", KEYSERVICE_SECRET_KEY=OLD + "\n") as first:
        before = current_state_keys(first)
    with migrated_app(
        f"sqlite:///{tmp_path / 'k.db'}", KEYSERVICE_SECRET_KEY=NEW, KEYSERVICE_SECRET_KEY_FALLBACKS=f" {OLD}\n"
    ) as second:
        assert current_state_keys(second)[1] == before[0]


def current_state_keys(app: Flask) -> tuple[bytes, ...]:
    with app.app_context():
        return current_state().secret_keys.derived(Purpose.SIGNING_KEYS)


def test_the_made_secret_is_text_the_service_alone_reads(tmp_path: Path) -> None:
    database = tmp_path / "keys.db"
    secret = tmp_path / "keys.db.secret"
    with migrated_app(f"sqlite:///{database}", KEYSERVICE_SECRET_KEY="") as app:
        made = current_state_keys(app)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    # Its text, set as the secret, is the same secret.
    with migrated_app(f"sqlite:///{database}", KEYSERVICE_SECRET_KEY=secret.read_text()) as app:
        assert current_state_keys(app) == made

    secret.chmod(0o644)  # readable by others: not trusted
    with (
        pytest.raises(ConfigError, match="must be a file of the service's user"),
        migrated_app(f"sqlite:///{database}", KEYSERVICE_SECRET_KEY=""),
    ):
        pass
    secret.unlink()
    secret.symlink_to(tmp_path / "planted")  # a link planted where it will be made
    (tmp_path / "planted").write_text("p" * 43)
    with (
        pytest.raises(ConfigError, match="must be a file of the service's user"),
        migrated_app(f"sqlite:///{database}", KEYSERVICE_SECRET_KEY=""),
    ):
        pass

    # 0.1 kept 32 raw bytes: turned into text once, the same for every worker.
    secret.unlink()
    secret.write_bytes(bytes(range(200, 232)))
    secret.chmod(0o600)
    with migrated_app(f"sqlite:///{database}", KEYSERVICE_SECRET_KEY="") as first:
        converted = current_state_keys(first)
    assert secret.read_text().isascii() and len(secret.read_text()) == 43
    with migrated_app(f"sqlite:///{database}", KEYSERVICE_SECRET_KEY="") as second:
        assert current_state_keys(second) == converted


def test_an_in_memory_database_keeps_no_secret_file() -> None:
    before = set(Path(tempfile.gettempdir()).glob("keyservice-secret-*"))
    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "KEYSERVICE_WEBHOOKS_SEND": False})
    with app.app_context():
        assert current_state().secret_keys.derived(Purpose.CHECKED_KEYS)
    assert set(Path(tempfile.gettempdir()).glob("keyservice-secret-*")) == before


def test_postgresql_refuses_to_start_without_the_secret_or_the_issuer() -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"  # never connected to: refused before
    with pytest.raises(ConfigError, match=r"^KEYSERVICE_SECRET_KEY must be set on PostgreSQL"):
        create_app({"SQLALCHEMY_DATABASE_URI": url, "KEYSERVICE_TOKEN_ISSUER": "https://keys.example.com"})
    with pytest.raises(ConfigError, match=r"^KEYSERVICE_TOKEN_ISSUER must be set"):
        create_app({"SQLALCHEMY_DATABASE_URI": url, "KEYSERVICE_SECRET_KEY": NEW})
