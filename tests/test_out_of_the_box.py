"""The service as a new user starts it: ``make serve`` in a fresh copy of the clone, nothing set.
Webhooks work, tokens name the bind address, the deployment secret is made once, /metrics lists
every series at 0; and what a deployment must set, it is told in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import jwt
import pytest

from .helpers import bearer, free_port
from .servers import (
    REPO,
    flask_cli,
    labelled_metric,
    refused_start,
    request,
    service_environment,
    serving,
    wait_until_healthy,
)
from .tokens import FORM, basic

pytestmark = pytest.mark.slow  # starts the service

VENV = Path(sys.prefix)
MADE_SECRET = "made the deployment secret"


def fresh_copy(folder: Path) -> Path:
    """The clone's files as a fresh clone has them (tracked ones and new ones git would add), in ``folder``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, folder / name)
    return folder


def new_user_environment(port: int) -> dict[str, str]:
    """A shell with none of keyservice's settings, gunicorn bound to ``port`` (the shipped settings read BIND)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYSERVICE_")}
    for name in ("DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR"):
        environ.pop(name, None)
    return environ | {"BIND": f"127.0.0.1:{port}"}


@contextmanager
def make_serve(clone: Path, environ: dict[str, str], log: Path) -> Iterator[str]:
    """``make serve`` in ``clone`` with this suite's virtualenv (already installed: its stamp is
    new), until it answers; yield its URL, then stop make and gunicorn."""
    installed = Path(tempfile.mkstemp(dir=clone.parent)[1])  # newer than every file of the copy
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            ["make", "serve", f"VENV={VENV}", f"SERVING={installed}"],
            cwd=clone,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make, flask and gunicorn in a group of their own, stopped together
        )
    base = f"http://{environ['BIND']}"
    try:
        wait_until_healthy(base, process, log, "/healthz")
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_make_serve_on_a_fresh_clone_takes_webhooks_and_tokens_with_nothing_set(tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "clone")
    environ = new_user_environment(free_port())
    log = tmp_path / "serve.log"
    with make_serve(clone, environ, log) as base:
        # Right after the start, before any key is checked: every series is there, at 0.
        assert labelled_metric(base, "keyservice_bcrypt_checks_total", "result") == {"accepted": 0.0, "refused": 0.0}
        assert labelled_metric(base, "keyservice_verifications_total", "outcome")["VALID"] == 0.0

        created = subprocess.run(
            [
                VENV / "bin" / "flask",
                "--app",
                "wsgi",
                "keys",
                "create",
                "--name",
                "ops",
                "--client-id",
                "ops",
                "--scope",
                "keys:admin",
            ],
            cwd=clone,
            env=environ,
            capture_output=True,
            text=True,
            check=True,
        )
        admin = created.stdout.strip()
        registered = request(base + "/webhooks", "POST", bearer(admin), {"url": "https://1.1.1.1/keyservice"})
        assert registered.status == 201, registered.body
        assert json.loads(registered.body)["secret"].startswith("whsec_")

        # The token names the bind address, whatever Host the client sent.
        evil = {"Host": "evil.example"}
        grant = urlencode({"grant_type": "client_credentials"}).encode()
        issued = request(base + "/oauth/token", "POST", basic(admin) | FORM | evil, data=grant)
        assert issued.status == 200, issued.body
        token = json.loads(issued.body)["access_token"]
        assert jwt.decode(token, options={"verify_signature": False})["iss"] == base
        metadata = request(base + "/.well-known/oauth-authorization-server", headers=evil)
        assert json.loads(metadata.body)["issuer"] == base

    secret = clone / "instance" / "keyservice.db.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    logged = log.read_text()
    assert logged.count(MADE_SECRET) == 1 and str(secret) in logged  # by `flask db upgrade`, once
    assert secret.read_text() not in logged and admin not in logged


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/keys"}, "KEYSERVICE_SECRET_KEY must be set"),
        (
            {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/keys", "KEYSERVICE_SECRET_KEY": "s" * 32},
            "KEYSERVICE_TOKEN_ISSUER must be set",
        ),
        ({"KEYSERVICE_PROXIES": "1"}, "KEYSERVICE_TOKEN_ISSUER must be set"),
        # A preloaded app is built before gunicorn binds: it cannot take the bind address.
        ({"GUNICORN_CMD_ARGS": "--preload"}, "with --preload, set KEYSERVICE_TOKEN_ISSUER"),
    ],
)
def test_a_deployment_missing_what_it_must_set_refuses_to_start_in_one_line(
    settings: dict[str, str], said: str, tmp_path: Path
) -> None:
    environ = new_user_environment(free_port()) | {"DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}"} | settings
    assert refused_start(environ).startswith(f"keyservice: {said}")


@pytest.mark.parametrize("workers", [1, 2])
def test_gunicorn_without_the_shipped_settings_warns_of_per_worker_metrics(workers: int, tmp_path: Path) -> None:
    environ = service_environment(f"sqlite:///{tmp_path / 'keys.db'}")
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    assert flask_cli(environ, "db", "upgrade").returncode == 0
    log = tmp_path / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "keyservice:create_app()"]
    with serving(command, environ, log, cwd=tmp_path):  # no gunicorn.conf.py there
        pass
    warned = f"gunicorn runs {workers} workers without PROMETHEUS_MULTIPROC_DIR" in log.read_text()
    assert warned == (workers > 1), log.read_text()
