"""End to end over real HTTP against gunicorn with 2 workers: what depends on the database on
both, the logs and the settings on SQLite."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from .helpers import ON_SQLITE
from .load import outcome
from .servers import (
    Response,
    answers_by_worker,
    flask_cli,
    flask_command,
    gunicorn,
    gunicorn_workers,
    refused_start,
    request,
    service_environment,
)

pytestmark = pytest.mark.slow  # starts the service, servers or a browser


@pytest.fixture
def environ(database_url: str) -> dict[str, str]:
    return service_environment(database_url, KEYSERVICE_BCRYPT_ROUNDS="4")


def test_revoked_key_is_refused_by_every_worker_within_a_second(environ: dict[str, str], tmp_path: Path) -> None:
    created = flask_command(environ, "keys", "create", "--name", "e2e", "--client-id", "acme")
    key = created.stdout.strip()
    log = tmp_path / "gunicorn.log"
    with gunicorn(environ, log, workers=2) as base:
        url = base + "/protected-with-key"

        def send() -> Response:
            return request(url, "POST", {"Authorization": f"Bearer {key}"})

        # Each worker has checked the key with bcrypt and holds it, as its log lines show.
        warm = answers_by_worker(base, log, send)
        assert len(warm) == 2
        for answers in warm.values():
            assert [(r.status, json.loads(r.body)) for r in answers] == (
                [(200, {"protected": True, "external_client_id": "acme"})] * len(answers)
            )

        revoked = flask_command(environ, "keys", "revoke", key.split("_")[1])
        assert revoked.returncode == 0, revoked.stderr
        one_second_later = time.monotonic() + 1.0
        while time.monotonic() < one_second_later:
            send()
        after = answers_by_worker(base, log, send)
        assert set(after) == set(warm)  # the same two workers, each refusing the key it held
        for answers in after.values():
            assert Counter(outcome(r) for r in answers) == {(401, "REVOKED"): len(answers)}
            assert all(
                r.headers["WWW-Authenticate"] == 'Bearer realm="keyservice", error="invalid_token"' for r in answers
            )


def test_the_quickstart_over_http(environ: dict[str, str], tmp_path: Path) -> None:
    key = flask_cli(environ, "keys", "create", "--name", "demo", "--client-id", "acme").stdout.strip()
    with gunicorn(environ, tmp_path / "gunicorn.log") as base:
        ok = request(base + "/protected-with-key", "POST", {"Authorization": f"Bearer {key}"})
        assert (ok.status, json.loads(ok.body)) == (200, {"protected": True, "external_client_id": "acme"})
        missing = request(base + "/protected-with-key", "POST")
        assert (missing.status, missing.headers["Content-Type"]) == (401, "application/problem+json")
        assert request(base + "/healthz").status == 200
        # The service's root says where to go: the dashboard and the OpenAPI document.
        pointers = json.loads(request(base + "/").body)
        assert (pointers["dashboard"], pointers["openapi"]) == ("/dashboard", "/openapi.json")
        assert {request(base + pointers[name]).status for name in ("dashboard", "openapi")} == {200}


@ON_SQLITE
def test_a_worker_loads_the_app_with_the_garbage_collector_paused_and_collects_after(
    environ: dict[str, str], tmp_path: Path
) -> None:
    with gunicorn(environ, tmp_path / "gunicorn.log", app="tests.gc_probe:app") as base:
        answers = [json.loads(request(base + "/").body) for _ in range(4)]
    assert answers == [{"while_loaded": False, "now": True}] * 4


@ON_SQLITE
def test_the_access_log_never_holds_a_key(environ: dict[str, str], tmp_path: Path) -> None:
    key = flask_command(environ, "keys", "create", "--name", "demo", "--client-id", "acme").stdout.strip()
    secret = key.split("_")[2]
    mistyped = "x" if key[-1] != "x" else "y"
    log = tmp_path / "gunicorn.log"
    with gunicorn(environ, log, access_log=True) as base:
        sent = [
            request(base + "/protected-with-key", "POST", {"Authorization": f"Bearer {key}"}),
            request(base + "/protected-with-key", "POST", {"X-API-Key": key}),
            request(base + f"/protected-with-key?api_key={key}", "POST"),  # a key where it does not belong
            request(base + "/protected-with-key", "POST", {"Authorization": f"Bearer {key[:-1]}{mistyped}"}),
        ]
    assert [response.status for response in sent] == [200, 200, 401, 401]
    logged = log.read_text()
    assert logged.count('"POST /protected-with-key HTTP/1.1"') == 4, logged
    assert secret not in logged and key[:-6] not in logged


@ON_SQLITE
def test_gunicorn_refuses_a_wrong_setting_in_one_line(environ: dict[str, str]) -> None:
    assert refused_start({**environ, "KEYSERVICE_BCRYPT_ROUNDS": "99"}).startswith(
        "keyservice: KEYSERVICE_BCRYPT_ROUNDS"
    )


# A newline to start a forged line, a terminal colour code, a backslash, a quote and a non-ASCII letter.
FORGING_PATH = "/nothing%0A127.0.0.1%20forged%20line%1B[31m%5C%22%C3%A9"


@ON_SQLITE
def test_the_logs_escape_what_the_client_sent(environ: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "gunicorn.log"
    with gunicorn({**environ, "KEYSERVICE_LOG_FORMAT": "text"}, log, access_log=True) as base:
        assert request(base + FORGING_PATH).status == 404
        workers = gunicorn_workers(base)
    logged = log.read_text()
    assert "\x1b" not in logged and "é" not in logged
    assert not [line for line in logged.splitlines() if line.startswith("127.0.0.1 forged")], logged
    escaped = r"/nothing\x0a127.0.0.1 forged line\x1b[31m\\\"\xc3\xa9"
    assert f'"GET {escaped} HTTP/1.1" 404' in logged, logged  # gunicorn's access log
    assert f"GET {escaped} 404" in logged, logged  # the request log's message
    field = escaped.replace(" ", r"\x20")  # a field's value ends at its first space
    assert f"path={field} status=404" in logged, logged  # and its field
    answered = re.search(r"^.* path=\S+ status=404 latency_ms=[0-9.]+ worker=(\d+)$", logged, re.MULTILINE)
    assert answered and int(answered[1]) in workers, logged


@ON_SQLITE
def test_the_access_log_withholds_what_can_carry_a_key_whatever_its_format(
    environ: dict[str, str], tmp_path: Path
) -> None:
    key = flask_command(environ, "keys", "create", "--name", "demo", "--client-id", "acme").stdout.strip()
    log = tmp_path / "gunicorn.log"
    every_place = "<%(r)s> <%(q)s> <%({authorization}i)s> <%({x-api-key}i)s> <%({query_string}e)s>"
    with gunicorn(environ, log, access_log=True, options=["--access-logformat", every_place]) as base:
        request(
            base + f"/protected-with-key?api_key={key}", "POST", {"Authorization": f"Bearer {key}", "X-API-Key": key}
        )
    logged = log.read_text()
    assert "<POST /protected-with-key HTTP/1.1> <-> <-> <-> <->" in logged, logged
    assert key.split("_")[2] not in logged
