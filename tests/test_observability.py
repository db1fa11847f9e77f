"""Usage, /metrics and logs through gunicorn with 2 workers, on both databases."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import ON_SQLITE, bearer, wait_until, wrong_secret
from .servers import (
    KeysCli,
    Response,
    flask_command,
    gunicorn,
    gunicorn_workers,
    labelled_metric,
    request,
    service_environment,
)
from .test_storage_at_rest import raw_database

pytestmark = pytest.mark.slow  # starts the service, servers or a browser

KNOWN = {"VALID": 7, "NOT_FOUND": 3, "REVOKED": 2}


@dataclass(frozen=True)
class Served(KeysCli):
    """gunicorn on a fresh database with the service's settings, its whole log in ``log``."""

    base: str
    log: Path
    database_url: str

    def post(self, path: str, key: str | None = None, **headers: str) -> Response:
        return request(self.base + path, "POST", {**(bearer(key) if key else {}), **headers})

    def call(self, method: str, path: str, key: str, body: dict[str, object] | None = None) -> Response:
        return request(self.base + path, method, bearer(key), body)

    def json_lines(self) -> list[dict[str, object]]:
        """The app's log lines (gunicorn's own are not JSON)."""
        lines = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[Served]:
    environ = service_environment(
        database_url, KEYSERVICE_BCRYPT_ROUNDS="4", KEYSERVICE_USAGE_FLUSH_INTERVAL="0.5", KEYSERVICE_LOG_FORMAT="json"
    )
    log = tmp_path / "gunicorn.log"
    with gunicorn(environ, log, workers=2) as base:
        yield Served(environ, base, log, database_url)


def metric_samples(served: Served, name: str) -> dict[str, float]:
    """``name``'s samples in ``/metrics``, by their ``outcome`` label."""
    return labelled_metric(served.base, name, "outcome")


def usage_counts(served: Served, key_id: str, reader: str) -> Counter[str]:
    """The key's usage by outcome over every period, as ``GET /keys/<id>/usage`` shows it to ``reader``."""
    counts: Counter[str] = Counter()
    for period in json.loads(served.call("GET", f"/keys/{key_id}/usage", reader).body)["items"]:
        counts.update(period["counts"])
    return counts


def test_known_traffic_shows_up_exactly_in_usage_metrics_and_logs(served: Served) -> None:
    key_id, key = served.create_key()
    _, reader = served.create_key("--scope", "keys:read")
    statuses = [served.post("/protected-with-key", key).status for _ in range(KNOWN["VALID"])]
    statuses += [served.post("/protected-with-key", wrong_secret(key)).status for _ in range(KNOWN["NOT_FOUND"])]
    assert flask_command(served.environ, "keys", "revoke", key_id).returncode == 0
    # A fixed wait, past the bound under test: every worker re-reads the row within
    # KEYSERVICE_CACHE_TTL (0.5 s). Sending until one refusal would prove it of one worker only.
    time.sleep(1)
    statuses += [served.post("/protected-with-key", key).status for _ in range(KNOWN["REVOKED"])]
    assert statuses == [200] * 7 + [401] * 5

    # /metrics first: the reader key's own verifications would count too. The worker that does
    # not answer the scrape publishes its tally within half a second.
    def counted() -> dict[str, float]:
        samples = metric_samples(served, "keyservice_verifications_total")
        return {code: value for code, value in samples.items() if value}

    wait_until(lambda: counted() == KNOWN, 2, "the known traffic in /metrics")
    time.sleep(1)  # and nothing more after
    assert counted() == KNOWN

    wait_until(
        lambda: usage_counts(served, key_id, reader) == KNOWN,
        10,
        "the known traffic in the usage (at each worker's next flush, 0.5 s here)",
    )
    assert served.show(key_id)["last_used_at"] is not None

    lines = [
        line
        for line in served.json_lines()
        if line.get("logger") == "keyservice.request" and line.get("path") == "/protected-with-key"
    ]
    assert Counter(line["code"] for line in lines) == KNOWN
    assert {line["key_id"] for line in lines} == {key_id}
    assert all(
        re.fullmatch(r"[0-9a-f]{32}", str(line["request_id"])) and float(str(line["latency_ms"])) > 0 for line in lines
    )


@ON_SQLITE  # the log line does not depend on the database
def test_one_log_line_per_request_with_its_id_key_outcome_and_client(served: Served) -> None:
    key_id, key = served.create_key()
    sent = [
        served.post("/protected-with-key", key, **{"X-Request-ID": "trace-1"}),
        served.post("/protected-with-key", wrong_secret(key)),
        served.post("/protected-with-key"),
        served.post("/unprotected"),
        request(served.base + "/no-such-page"),
    ]
    assert [response.status for response in sent] == [200, 401, 401, 200, 404]

    def about_requests() -> list[str]:  # gunicorn writes a request's line once it has sent the response
        return [
            line
            for line in served.log.read_text().splitlines()
            if "/protected-with-key" in line or "/unprotected" in line or "/no-such-page" in line
        ]

    deadline = time.monotonic() + 5
    while len(about_requests()) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    logged = served.log.read_text()
    # Two workers each write a line once they have answered: a line can come after the next request's.
    sent_ids = [response.headers["X-Request-ID"] for response in sent]
    lines = sorted(
        (json.loads(line) for line in about_requests()),  # every one the service's JSON line
        key=lambda line: sent_ids.index(line["request_id"]),
    )
    assert [(line["path"], line["status"], line["key_id"], line["code"]) for line in lines] == [
        ("/protected-with-key", 200, key_id, "VALID"),
        ("/protected-with-key", 401, key_id, "NOT_FOUND"),
        ("/protected-with-key", 401, None, "MISSING"),
        ("/unprotected", 200, None, None),
        ("/no-such-page", 404, None, None),
    ]
    assert {line["client"] for line in lines} == {"127.0.0.1"}
    assert {line["worker"] for line in lines} <= gunicorn_workers(served.base)  # the pid of the one that answered
    assert [line["request_id"] for line in lines] == [response.headers["X-Request-ID"] for response in sent]
    assert lines[0]["request_id"] == "trace-1"
    assert key not in logged and key.split("_")[2] not in logged


def test_no_log_line_and_no_stored_byte_holds_a_key(served: Served, request: pytest.FixtureRequest) -> None:
    keys: list[str] = []
    key_id, key = served.create_key("--remaining", "100", "--ratelimit", "100/60s")
    _, admin = served.create_key("--scope", "keys:admin")
    keys += [key, admin]
    created = served.call("POST", "/keys", admin, {"name": "http", "external_client_id": "acme"})
    assert created.status == 201
    http_key = json.loads(created.body)["key"]
    keys.append(http_key)
    for used in (key, http_key):
        assert served.post("/protected-with-key", used).status == 200
        assert served.post(f"/protected-with-key?api_key={used}").status == 401
        assert served.post("/protected-with-key", wrong_secret(used)).status == 401
        assert served.post("/protected-with-key", **{"X-API-Key": used}).status == 200
    assert served.call("POST", "/keys/verify", admin, {"key": http_key}).status == 200
    rotated = served.call("POST", f"/keys/{key_id}/rotate", admin, {"grace_seconds": 60})
    assert rotated.status == 201
    keys.append(json.loads(rotated.body)["key"])
    cli_rotated = flask_command(served.environ, "keys", "rotate", json.loads(created.body)["id"])
    assert cli_rotated.returncode == 0
    keys.append(cli_rotated.stdout.strip())
    assert served.call("DELETE", f"/keys/{key_id}", admin).status == 204
    # The other worker may trust its copy of the key's row for up to KEYSERVICE_CACHE_TTL (0.5 s).
    wait_until(lambda: served.post("/protected-with-key", key).status == 401, 1, "the revoked key refused")
    http_key_id = json.loads(created.body)["id"]
    wait_until(
        lambda: usage_counts(served, http_key_id, admin).total() >= 3,
        10,
        "the HTTP key's 3 uses over HTTP flushed (every 0.5 s)",
    )

    logged = served.log.read_text()
    assert served.json_lines(), "no JSON log line was written"
    stored = raw_database(served.database_url, request)
    for each in keys:
        secret = each.split("_")[2][:32]
        assert each not in logged and secret not in logged
        assert each.encode() not in stored and secret.encode() not in stored


def test_a_worker_that_stops_writes_what_it_counted(database_url: str, tmp_path: Path) -> None:
    environ = service_environment(database_url, KEYSERVICE_BCRYPT_ROUNDS="4", KEYSERVICE_USAGE_FLUSH_INTERVAL="3600")
    cli = KeysCli(environ)
    key_id, key = cli.create_key()
    with gunicorn(environ, tmp_path / "gunicorn.log", workers=2) as base:
        for _ in range(5):
            assert request(base + "/protected-with-key", "POST", bearer(key)).status == 200
    # No flush came in the hour; the workers wrote their counts as gunicorn stopped them.
    shown = flask_command(environ, "keys", "usage", key_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert [period["counts"] for period in json.loads(shown.stdout)["items"]] == [{"VALID": 5}]
    assert cli.show(key_id)["last_used_at"] is not None
