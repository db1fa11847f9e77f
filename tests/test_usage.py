"""Usage per key (``GET /keys/<id>/usage``, ``flask keys usage``), ``last_used_at``, ``/metrics``
and the request log line, in process on both databases. Through gunicorn: ``test_observability.py``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, values
from pythonjsonlogger.json import JsonFormatter
from sqlalchemy import Connection, event, func, select
from werkzeug.test import TestResponse

from keyservice.app import db
from keyservice.core.models import ApiKey, KeyUsage
from keyservice.core.state import current_state
from keyservice.requestlog import configure_logging, log_request
from keyservice.verification import metrics

from .conftest import IssueKey, migrated_app
from .helpers import ON_SQLITE, bearer, issue, parse_time, wait_until, wrong_secret

PROTECTED = "/protected-with-key"


def flush(app: Flask) -> None:
    with app.app_context():
        current_state().verifier.flush_usage()


def usage(client: FlaskClient, admin: str, key_id: str, **query: str) -> dict[str, Any]:
    response = client.get(f"/keys/{key_id}/usage", query_string=query, headers=bearer(admin))
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


@pytest.fixture
def admin(issue_key: IssueKey) -> str:
    return issue_key(name="ops", external_client_id="acme", scopes=("keys:read", "keys:write"))[1]


def send_known_traffic(app: Flask, client: FlaskClient, key_id: str, key: str) -> None:
    """4 VALID, 2 NOT_FOUND (wrong secret), 1 INSUFFICIENT_SCOPE, then revoked: 3 REVOKED."""
    for _ in range(4):
        assert client.post(PROTECTED, headers=bearer(key)).status_code == 200
    for _ in range(2):
        assert client.post(PROTECTED, headers=bearer(wrong_secret(key))).get_json()["code"] == "NOT_FOUND"
    with app.app_context():
        assert current_state().verifier.verify(key, ["billing:write"]).code == "INSUFFICIENT_SCOPE"
        db.session.get(ApiKey, key_id).revoke()  # type: ignore[union-attr]
        db.session.commit()
    for _ in range(3):
        assert client.post(PROTECTED, headers=bearer(key)).get_json()["code"] == "REVOKED"


def test_a_management_call_refused_403_counts_as_insufficient_scope(
    app: Flask, client: FlaskClient, issue_key: IssueKey, admin: str
) -> None:
    reader_id, reader = issue_key(name="reader", external_client_id="acme", scopes=("keys:read",))
    refused = client.post("/keys", json={"name": "n", "external_client_id": "acme"}, headers=bearer(reader))
    assert (refused.status_code, refused.get_json()["code"]) == (403, "INSUFFICIENT_SCOPE")
    assert client.get("/keys", headers=bearer(reader)).status_code == 200
    flush(app)
    [hour] = usage(client, admin, reader_id)["items"]
    assert hour["counts"] == {"INSUFFICIENT_SCOPE": 1, "VALID": 1}


def test_usage_counts_each_outcome_of_a_key_per_hour_and_per_day(
    app: Flask, client: FlaskClient, issue_key: IssueKey, admin: str
) -> None:
    key_id, key = issue_key()
    send_known_traffic(app, client, key_id, key)
    assert usage(client, admin, key_id)["items"] == []  # nothing before the flush
    flush(app)

    by_hour = usage(client, admin, key_id)
    assert by_hour["key_id"] == key_id and by_hour["granularity"] == "hour"
    [hour] = by_hour["items"]
    assert hour["counts"] == {"VALID": 4, "NOT_FOUND": 2, "INSUFFICIENT_SCOPE": 1, "REVOKED": 3}
    assert hour["total"] == 10
    assert parse_time(hour["start"]) == datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    [day] = usage(client, admin, key_id, granularity="day")["items"]
    assert day["counts"] == hour["counts"] and parse_time(day["start"]) == parse_time(hour["start"]).replace(hour=0)


def test_usage_adds_up_across_flushes_and_hours(
    app: Flask, client: FlaskClient, issue_key: IssueKey, admin: str
) -> None:
    key_id, key = issue_key()
    start = datetime(2030, 1, 1, 9, 30, tzinfo=UTC)
    for hours_later, requests in ((0, 2), (0, 3), (1, 4)):
        with time_machine.travel(start + timedelta(hours=hours_later), tick=False):
            for _ in range(requests):
                assert client.post(PROTECTED, headers=bearer(key)).status_code == 200
            flush(app)
    query = {"since": "2030-01-01T00:00:00Z", "until": "2030-01-02T00:00:00Z"}
    assert [(parse_time(item["start"]), item["total"]) for item in usage(client, admin, key_id, **query)["items"]] == [
        (start.replace(minute=0), 5),
        (start.replace(hour=10, minute=0), 4),
    ]
    by_day = usage(client, admin, key_id, granularity="day", **query)["items"]
    assert [(parse_time(item["start"]), item["total"]) for item in by_day] == [(start.replace(hour=0, minute=0), 9)]
    later = usage(client, admin, key_id, since="2030-01-01T10:00:00Z", until="2030-01-01T11:00:00Z")
    assert [item["total"] for item in later["items"]] == [4]


def test_a_refused_request_without_a_known_key_counts_for_no_key(
    app: Flask, client: FlaskClient, issue_key: IssueKey, admin: str
) -> None:
    key_id, key = issue_key()
    client.post(PROTECTED, headers=bearer(key[:-1]))  # MALFORMED: no key is named
    client.post(PROTECTED)  # MISSING
    flush(app)
    assert usage(client, admin, key_id)["items"] == []


def test_last_used_at_follows_valid_uses_without_touching_updated_at(
    app: Flask, client: FlaskClient, issue_key: IssueKey, admin: str
) -> None:
    key_id, key = issue_key()
    shown = client.get(f"/keys/{key_id}", headers=bearer(admin)).get_json()
    assert shown["last_used_at"] is None
    client.post(PROTECTED, headers=bearer(key))
    client.post(PROTECTED, headers=bearer(wrong_secret(key)))
    flush(app)
    after = client.get(f"/keys/{key_id}", headers=bearer(admin)).get_json()
    used = parse_time(after["last_used_at"])
    assert abs((datetime.now(UTC) - used).total_seconds()) < 5
    assert after["updated_at"] == shown["updated_at"]


def test_a_forked_child_does_not_save_its_parents_usage_again(
    app: Flask, client: FlaskClient, issue_key: IssueKey, admin: str
) -> None:
    # A host app may fork after it has served requests (multiprocessing's default on Linux): the
    # child starts with the parent's counts not yet saved, which the parent saves itself.
    key_id, key = issue_key()
    for _ in range(3):
        assert client.post(PROTECTED, headers=bearer(key)).status_code == 200
    child = os.fork()
    if child == 0:
        status = 1
        try:
            with app.app_context():
                db.engine.dispose(close=False)  # the child's own connections, as SQLAlchemy asks of a fork
                current_state().verifier.flush_usage()
            status = 0
        finally:
            os._exit(status)
    assert os.waitpid(child, 0)[1] == 0  # the child saved what it had
    flush(app)
    [hour] = usage(client, admin, key_id)["items"]
    assert hour["counts"] == {"VALID": 3}


@pytest.mark.parametrize(
    "query, field",
    [
        ({"granularity": "week"}, "granularity"),
        ({"since": "yesterday"}, "since"),
        ({"since": "0038-05-05T18:32:36Z"}, "since"),
        ({"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}, "since"),
    ],
)
def test_bad_usage_queries_are_422_naming_the_field(
    client: FlaskClient, issue_key: IssueKey, admin: str, query: dict[str, str], field: str
) -> None:
    key_id, _ = issue_key()
    response = client.get(f"/keys/{key_id}/usage", query_string=query, headers=bearer(admin))
    assert response.status_code == 422
    assert field in response.get_json()["errors"]["query"]


def test_another_clients_key_usage_is_not_found(client: FlaskClient, issue_key: IssueKey, admin: str) -> None:
    other_id, _ = issue_key(external_client_id="globex")
    assert client.get(f"/keys/{other_id}/usage", headers=bearer(admin)).status_code == 404


def test_cli_usage(app: Flask, client: FlaskClient, runner: FlaskCliRunner, issue_key: IssueKey) -> None:
    key_id, key = issue_key()
    for _ in range(2):
        client.post(PROTECTED, headers=bearer(key))
    flush(app)
    text = runner.invoke(args=["keys", "usage", key_id])
    assert text.exit_code == 0 and re.fullmatch(r"\S+:00:00\.0+Z  total=2  VALID=2\n", text.output), text.output
    as_json = json.loads(runner.invoke(args=["keys", "usage", key_id, "--granularity", "day", "--json"]).output)
    assert [item["counts"] for item in as_json["items"]] == [{"VALID": 2}]
    bad = runner.invoke(args=["keys", "usage", key_id, "--since", "soon"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1


# --- the flush thread: a failure of any kind, and many threads counting at once ----------------------

FLUSH_THREAD = "keyservice-usage-flush"


@contextmanager
def at_each_begin(app: Flask, hook: Callable[[Connection], None]) -> Iterator[None]:
    """``hook`` called at the start of each transaction on the app's engine, while in the block."""
    with app.app_context():
        engine = db.engine
    event.listen(engine, "begin", hook)
    try:
        yield
    finally:
        event.remove(engine, "begin", hook)


def stored_counts(app: Flask, key_id: str) -> Counter[str]:
    """The key's usage as the database holds it, by outcome (over every hour)."""
    with app.app_context():
        return Counter(
            dict(
                db.session.execute(
                    select(KeyUsage.outcome, func.sum(KeyUsage.count))
                    .where(KeyUsage.key_id == key_id)
                    .group_by(KeyUsage.outcome)
                ).all()
            )
        )


def test_a_flush_failing_with_an_error_of_any_kind_keeps_its_counts_and_the_thread_flushes_them_later(
    database_url: str,
) -> None:
    with migrated_app(database_url, KEYSERVICE_USAGE_FLUSH_INTERVAL=0.1) as app:
        key_id, key = issue(app)
        failed: list[str] = []

        def fail_the_first_flush(connection: Connection) -> None:
            if threading.current_thread().name == FLUSH_THREAD and not failed:
                failed.append(threading.current_thread().name)
                raise RuntimeError("not a database error")

        with at_each_begin(app, fail_the_first_flush):
            client = app.test_client()
            for _ in range(5):
                assert client.post(PROTECTED, headers=bearer(key)).status_code == 200
            wait_until(lambda: failed, 5, "a failed flush")
            wait_until(lambda: stored_counts(app, key_id) == {"VALID": 5}, 5, "the kept counts flushed by the thread")
            for _ in range(2):  # the thread lives on
                assert client.post(PROTECTED, headers=bearer(key)).status_code == 200
            wait_until(lambda: stored_counts(app, key_id) == {"VALID": 7}, 5, "the next counts flushed by the thread")
        with app.app_context():
            assert db.session.get(ApiKey, key_id).last_used_at is not None  # type: ignore[union-attr]


def test_a_flush_asked_for_while_the_thread_writes_returns_once_those_counts_are_written(database_url: str) -> None:
    with migrated_app(database_url, KEYSERVICE_USAGE_FLUSH_INTERVAL=0.1) as app:
        key_id, key = issue(app)
        writing, release = threading.Event(), threading.Event()

        def hold_the_threads_flush(connection: Connection) -> None:
            if threading.current_thread().name == FLUSH_THREAD and not writing.is_set():
                writing.set()
                release.wait(10)

        with at_each_begin(app, hold_the_threads_flush):
            try:
                client = app.test_client()
                for _ in range(3):
                    assert client.post(PROTECTED, headers=bearer(key)).status_code == 200
                wait_until(writing.is_set, 5, "the thread's flush under way")
                asked = threading.Thread(target=flush, args=(app,))
                asked.start()
                asked.join(0.5)
                assert asked.is_alive()  # the counts are the thread's, not written yet: it waits for them
                release.set()
                asked.join(10)
                assert not asked.is_alive()
                assert stored_counts(app, key_id) == {"VALID": 3}
            finally:
                release.set()


def test_counts_from_many_threads_at_once_add_up_exactly(database_url: str) -> None:
    threads, requests = 8, 25
    with migrated_app(database_url, KEYSERVICE_USAGE_FLUSH_INTERVAL=0.1) as app:  # flushes during the load
        key_id, key = issue(app)
        _, refused = issue(app)
        with app.app_context():
            db.session.get(ApiKey, refused.split("_")[1]).revoke()  # type: ignore[union-attr]
            db.session.commit()
        start = threading.Barrier(threads)

        def send() -> list[int]:
            client = app.test_client()
            start.wait(timeout=30)
            return [
                client.post(PROTECTED, headers=bearer(used)).status_code
                for _ in range(requests)
                for used in (key, refused)
            ]

        with ThreadPoolExecutor(threads) as pool:
            statuses = [status for sent in pool.map(lambda _: send(), range(threads)) for status in sent]
        assert Counter(statuses) == {200: threads * requests, 401: threads * requests}
        flush(app)
        assert stored_counts(app, key_id) == {"VALID": threads * requests}
        assert stored_counts(app, refused.split("_")[1]) == {"REVOKED": threads * requests}


# --- /metrics ----------------------------------------------------------------------------------------


def metric(client: FlaskClient, name: str, **labels: str) -> float:
    """A sample's value in ``/metrics`` (0 if it is not there yet)."""
    text = client.get("/metrics").get_data(as_text=True)
    selector = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    match = re.search(rf"^{re.escape(name + selector)} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def test_metrics_count_verifications_by_outcome_latency_and_refusals(
    app: Flask, client: FlaskClient, issue_key: IssueKey
) -> None:
    # The counters live in this process and every test's app adds to them: compare differences.
    before = {
        code: metric(client, "keyservice_verifications_total", outcome=code)
        for code in ("VALID", "NOT_FOUND", "REVOKED", "INSUFFICIENT_SCOPE")
    }
    latency_before = metric(client, "keyservice_verification_seconds_count")
    key_id, key = issue_key()
    send_known_traffic(app, client, key_id, key)
    after = {code: metric(client, "keyservice_verifications_total", outcome=code) - before[code] for code in before}
    assert after == {"VALID": 4, "NOT_FOUND": 2, "REVOKED": 3, "INSUFFICIENT_SCOPE": 1}
    assert metric(client, "keyservice_verification_seconds_count") - latency_before == 10
    response = client.get("/metrics")
    assert response.mimetype == "text/plain" and key not in response.get_data(as_text=True)


@ON_SQLITE  # the metrics are the process's, whatever the database
def test_the_latency_histogram_puts_each_verification_in_its_bucket(client: FlaskClient) -> None:
    def buckets() -> dict[str, float]:
        return {
            le: metric(client, "keyservice_verification_seconds_bucket", le=le) for le in ("0.00025", "0.0005", "+Inf")
        }

    before, sum_before = buckets(), metric(client, "keyservice_verification_seconds_sum")
    for seconds in (0.0003, 0.0005, 0.0002, 7.0):  # the bounds count values up to and including themselves
        metrics.observe("VALID", True, seconds)
    grown = {le: value - before[le] for le, value in buckets().items()}
    assert grown == {"0.00025": 1, "0.0005": 3, "+Inf": 4}  # cumulative, as Prometheus reads them
    assert metric(client, "keyservice_verification_seconds_sum") - sum_before == pytest.approx(7.001)


@ON_SQLITE
def test_verifications_reach_the_values_within_half_a_second_without_a_scrape(
    client: FlaskClient, issue_key: IssueKey
) -> None:
    # What another worker's /metrics reads under gunicorn: the values, published by this process.
    def published() -> float:
        return REGISTRY.get_sample_value("keyservice_verifications_total", {"outcome": "VALID"}) or 0.0

    _, key = issue_key()
    metrics.publish()
    before = published()
    assert client.post(PROTECTED, headers=bearer(key)).status_code == 200
    wait_until(lambda: published() == before + 1, 2 * metrics.PUBLISH_INTERVAL, "the verification published")


@ON_SQLITE
def test_a_scrape_while_the_tally_is_being_published_shows_it(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The publishing thread has taken the tally out and is writing it, slowly, when /metrics asks.
    scraper = threading.current_thread()
    writing = threading.Event()
    write = values.ValueClass.inc

    def slow_write(value: Any, amount: float) -> None:
        if threading.current_thread() is not scraper:
            writing.set()
            time.sleep(0.3)
        write(value, amount)

    before = metric(client, "keyservice_verifications_total", outcome="MALFORMED")
    monkeypatch.setattr(values.ValueClass, "inc", slow_write)
    metrics.observe("MALFORMED", False, 0.001)
    assert writing.wait(2 * metrics.PUBLISH_INTERVAL)
    assert metric(client, "keyservice_verifications_total", outcome="MALFORMED") == before + 1


def test_a_forked_child_does_not_publish_its_parents_verifications_again(tmp_path: Path) -> None:
    # Under gunicorn's multiprocess mode each process writes its own values, and /metrics adds them
    # up: a child that published the tally it was forked with would count its parent's twice.
    script = """
import os
from keyservice.verification import metrics
metrics.observe("VALID", True, 0.001)  # the parent's, published at its exit
child = os.fork()
if child == 0:
    metrics.observe("VALID", True, 0.001)  # the child's own
    metrics.publish()
    os._exit(0)
os.waitpid(child, 0)
"""
    environ = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=environ, check=True, timeout=60)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("keyservice_verifications_total", {"outcome": "VALID"}) == 2
    assert registry.get_sample_value("keyservice_verification_seconds_count") == 2


def test_metrics_count_limit_refusals(app: Flask, client: FlaskClient, issue_key: IssueKey) -> None:
    before = metric(client, "keyservice_limit_refusals_total", limit="usage")
    _, key = issue_key(remaining=1)
    client.post(PROTECTED, headers=bearer(key))
    assert client.post(PROTECTED, headers=bearer(key)).get_json()["code"] == "USAGE_EXCEEDED"
    assert metric(client, "keyservice_limit_refusals_total", limit="usage") - before == 1


# --- the request log line (written by gunicorn's logger class: tests/test_observability.py) ---------


@pytest.fixture
def environs(app: Flask) -> list[dict[str, Any]]:
    """The WSGI environ of each request, as the server holds it once the app is done."""
    seen: list[dict[str, Any]] = []
    app_itself = app.wsgi_app

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(environ)
        return app_itself(environ, start_response)

    app.wsgi_app = recording  # type: ignore[method-assign]
    return seen


def logged_line(environ: dict[str, Any], response: TestResponse, caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    """The line gunicorn's logger class (accesslog.py) writes for the request of ``response``."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="keyservice.request"):
        log_request(environ, response.status_code, 0.002)
    [line] = [record for record in caplog.records if record.name == "keyservice.request"]
    return line


def test_each_request_leaves_its_id_key_id_and_outcome_for_its_log_line(
    client: FlaskClient, issue_key: IssueKey, environs: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    key_id, key = issue_key()
    ok = client.post(PROTECTED + "?api_key=" + key, headers={**bearer(key), "X-Request-ID": "req-42"})
    refused = client.post(PROTECTED, headers=bearer(wrong_secret(key)))
    unprotected = client.post("/unprotected")
    first, second, third = (
        logged_line(environ, response, caplog)
        for environ, response in zip(environs[-3:], (ok, refused, unprotected), strict=False)
    )
    assert (first.request_id, first.key_id, first.code, first.status, first.path) == (  # type: ignore[attr-defined]
        "req-42",
        key_id,
        "VALID",
        200,
        PROTECTED,
    )
    assert (first.client, first.latency_ms) == ("127.0.0.1", 2.0)  # type: ignore[attr-defined]
    assert ok.headers["X-Request-ID"] == "req-42"
    assert (second.key_id, second.code, second.status) == (key_id, "NOT_FOUND", 401)  # type: ignore[attr-defined]
    assert re.fullmatch(r"[0-9a-f]{32}", second.request_id)  # type: ignore[attr-defined]
    assert refused.headers["X-Request-ID"] == second.request_id  # type: ignore[attr-defined]
    assert (third.key_id, third.code, third.status) == (None, None, 200)  # type: ignore[attr-defined]
    assert key not in caplog.text and key.split("_")[2] not in caplog.text


@pytest.mark.parametrize(
    ("path", "key_id", "code"),
    [("/protected-with-key", "abcDEF123456", "VALID"), ('/a"b\\c\x01\u00e9\U0001f600', None, None)],
)
def test_a_request_line_in_json_is_the_one_python_json_logger_writes(
    path: str, key_id: str | None, code: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[logging.LogRecord] = []
    monkeypatch.setattr(logging.getLogger("keyservice"), "handlers", [])
    configure_logging("json")
    [handler] = logging.getLogger("keyservice").handlers
    monkeypatch.setattr(handler, "emit", lines.append)
    wsgi_path = path.encode().decode("latin-1")  # a WSGI string: the bytes that came, one character each
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": wsgi_path,
        "REMOTE_ADDR": "127.0.0.1",
        "keyservice.request_id": "r-1",
    }
    log_request(environ | {"keyservice.key_id": key_id, "keyservice.code": code}, 200, 0.0015)
    [record] = lines
    library = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level", "name": "logger"}
    )
    assert handler.format(record) == library.format(record)
    assert json.loads(handler.format(record))["path"] == path


def test_a_request_id_that_is_not_a_plain_token_is_replaced(
    client: FlaskClient, environs: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    response = client.post("/unprotected", headers={"X-Request-ID": "a b\tc" + "x" * 100})
    line = logged_line(environs[-1], response, caplog)
    assert re.fullmatch(r"[0-9a-f]{32}", line.request_id)  # type: ignore[attr-defined]
    assert response.headers["X-Request-ID"] == line.request_id  # type: ignore[attr-defined]
