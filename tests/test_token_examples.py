"""examples/token_client.py and examples/token_service.py against keyservice under gunicorn:
a service that is not keyservice verifies the tokens with PyJWT and the JWKS URL alone."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .helpers import bearer, free_port
from .servers import REPO, KeysCli, flask_cli, flask_command, gunicorn, request, service_environment, stop
from .services import _wait_for_port
from .tokens import access_token

pytestmark = pytest.mark.slow  # starts the service, servers or a browser

EXAMPLES = REPO / "examples"


@contextmanager
def token_service(issuer: str, log: Path) -> Iterator[str]:
    """examples/token_service.py on a free port; yield its /whoami URL."""
    port = free_port()
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "token_service.py")],
            cwd=REPO,
            env={"KEYSERVICE_ISSUER": issuer, "PORT": str(port)},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        assert _wait_for_port(port, process, 10.0), log.read_text()
        yield f"http://127.0.0.1:{port}/whoami"
    finally:
        stop(process)


def test_the_example_client_gets_a_token_and_the_example_service_verifies_it(tmp_path: Path) -> None:
    environ = service_environment(f"sqlite:///{tmp_path / 'keys.db'}", KEYSERVICE_BCRYPT_ROUNDS="4")
    assert flask_cli(environ, "db", "upgrade").returncode == 0
    key_id, key = KeysCli(environ).create_key("--scope", "reports:read", "--scope", "billing:read")
    with gunicorn(environ, tmp_path / "gunicorn.log") as base, token_service(base, tmp_path / "service.log") as whoami:
        client = subprocess.run(
            [sys.executable, str(EXAMPLES / "token_client.py")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={"KEYSERVICE_URL": base, "KEY": key, "SERVICE_URL": whoami, "SCOPE": "reports:read"},
        )
        assert client.returncode == 0, client.stderr
        assert json.loads(client.stdout) == {"key_id": key_id, "external_client_id": "acme", "scopes": ["reports:read"]}
        assert key not in client.stdout + client.stderr

        token = access_token(base, key)
        tampered = token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")
        assert request(whoami, headers=bearer(tampered)).status == 401
        assert request(whoami, headers=bearer(key)).status == 401  # a key is no token
        # The trade-off: after a revocation keyservice refuses the token, a JWKS-only verifier takes it until exp.
        assert flask_command(environ, "keys", "revoke", key_id).returncode == 0
        assert request(base + "/protected-with-key", "POST", bearer(token)).status == 401
        assert request(whoami, headers=bearer(token)).status == 200
