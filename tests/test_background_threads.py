"""A process that cannot start one of its background threads (out of threads: a container's pids
limit) still answers every request, loses no count, and starts the thread at a later request:
usage flushes, metrics publication, the webhook sender. The process's refusal is played by
``threading.Thread.start`` raising, as CPython's does when the system has no thread to give."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, multiprocess

from .conftest import migrated_app
from .helpers import ON_SQLITE, bearer, issue, wait_until
from .receivers import webhook_settings
from .test_usage import FLUSH_THREAD, PROTECTED, stored_counts

REPOSITORY = Path(__file__).resolve().parent.parent


def refusing_starts(name: str, times: int = 1) -> tuple[list[str], Callable[[threading.Thread], None]]:
    """A ``Thread.start`` that fails the first ``times`` starts of a thread named ``name``, and the
    list that names it once for each."""
    refused: list[str] = []
    start = threading.Thread.start

    def start_or_refuse(thread: threading.Thread) -> None:
        if thread.name == name and len(refused) < times:
            refused.append(name)
            raise RuntimeError("can't start new thread")
        start(thread)

    return refused, start_or_refuse


def refuse_the_first_start(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """In this test: the first start of a thread named ``name`` fails."""
    refused, start_or_refuse = refusing_starts(name)
    monkeypatch.setattr(threading.Thread, "start", start_or_refuse)
    return refused


def run_python(script: str, environ: dict[str, str]) -> str:
    """Run ``script`` in a new Python process at the clone's top, to its normal exit; its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", script], env=environ, cwd=REPOSITORY, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


@ON_SQLITE
def test_usage_flushes_that_cannot_start_yet_cost_no_request_and_no_count(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with migrated_app(database_url, KEYSERVICE_USAGE_FLUSH_INTERVAL=0.1) as app:
        key_id, key = issue(app)
        # The migrations' logging set-up has replaced the root logger's handlers, caplog's among them.
        monkeypatch.setattr(logging.getLogger("keyservice"), "handlers", [caplog.handler])
        refused = refuse_the_first_start(monkeypatch, FLUSH_THREAD)
        client = app.test_client()
        assert client.post(PROTECTED, headers=bearer(key)).status_code == 200
        assert refused == [FLUSH_THREAD]
        assert f"thread {FLUSH_THREAD} not started" in caplog.text
        time.sleep(0.15)  # a flush interval after the failed start, the next count tries again
        assert client.post(PROTECTED, headers=bearer(key)).status_code == 200
        wait_until(lambda: stored_counts(app, key_id) == {"VALID": 2}, 5, "both counts saved by the thread")


def test_a_metrics_publisher_that_cannot_start_yet_costs_no_verification() -> None:
    script = """
import threading, time
from prometheus_client import REGISTRY
from keyservice.verification import metrics
from tests.test_background_threads import refusing_starts
refused, threading.Thread.start = refusing_starts("keyservice-metrics")
metrics.observe("VALID", True, 0.001)
assert refused, "the publisher was started"
time.sleep(metrics.PUBLISH_INTERVAL)
metrics.observe("VALID", True, 0.001)  # starts it
deadline = time.monotonic() + 5
while REGISTRY.get_sample_value("keyservice_verifications_total", {"outcome": "VALID"}) != 2:
    assert time.monotonic() < deadline, "the verifications were not published by the thread"
    time.sleep(0.05)
"""
    environ = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    assert "thread keyservice-metrics not started" in run_python(script, environ)


@ON_SQLITE
def test_a_process_that_never_starts_its_usage_flushes_saves_its_counts_at_exit(database_url: str) -> None:
    # A worker out of threads that exits before any retry works (gunicorn's max_requests, a restart).
    with migrated_app(database_url) as app:
        key_id, key = issue(app)
    script = f"""
import threading
from keyservice import create_app
from tests.conftest import TEST_CONFIG
from tests.helpers import bearer
from tests.servers import deployment_settings
from tests.test_background_threads import refusing_starts
_, threading.Thread.start = refusing_starts("{FLUSH_THREAD}", times=1000)
url = {database_url!r}
app = create_app({{**deployment_settings(url), **TEST_CONFIG, "SQLALCHEMY_DATABASE_URI": url}})
for _ in range(3):
    assert app.test_client().post("{PROTECTED}", headers=bearer({key!r})).status_code == 200
"""
    assert f"thread {FLUSH_THREAD} not started" in run_python(script, dict(os.environ))
    with migrated_app(database_url) as app:
        assert stored_counts(app, key_id) == {"VALID": 3}


def test_a_process_that_never_starts_its_metrics_publisher_publishes_at_exit(tmp_path: Path) -> None:
    # Under gunicorn (multiprocess mode) a scrape publishes only the answering worker's tally.
    script = """
import threading
from keyservice.verification import metrics
from tests.test_background_threads import refusing_starts
_, threading.Thread.start = refusing_starts("keyservice-metrics", times=1000)
metrics.observe("VALID", True, 0.001)
metrics.observe("VALID", True, 0.001)
"""
    run_python(script, {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("keyservice_verifications_total", {"outcome": "VALID"}) == 2


@ON_SQLITE
def test_a_webhook_sender_that_cannot_start_yet_costs_no_response(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def senders() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate() if thread.name == "keyservice-webhooks"]

    with migrated_app(database_url, **webhook_settings()) as app:
        refused = refuse_the_first_start(monkeypatch, "keyservice-webhooks")
        client = app.test_client()
        before = len(senders())
        assert client.get("/healthz").status_code == 200
        assert refused == ["keyservice-webhooks"]
        assert len(senders()) == before
        time.sleep(0.1)  # the poll interval (0.05 s) after the failed start, a request tries again
        assert client.get("/healthz").status_code == 200
        assert len(senders()) == before + 1


@ON_SQLITE
def test_a_worker_forked_after_its_parent_failed_to_start_the_sender_starts_its_own_at_once(
    database_url: str,
) -> None:
    # The parent's failed start would hold the child back a whole poll interval (60 s here).
    settings = webhook_settings(KEYSERVICE_WEBHOOKS_POLL_INTERVAL="60")
    with migrated_app(database_url, **settings):
        pass
    script = f"""
import os, threading
from keyservice import create_app
from tests.conftest import TEST_CONFIG
from tests.servers import deployment_settings
from tests.test_background_threads import refusing_starts
refused, threading.Thread.start = refusing_starts("keyservice-webhooks")
url = {database_url!r}
app = create_app({{**deployment_settings(url), **TEST_CONFIG, **{settings!r}, "SQLALCHEMY_DATABASE_URI": url}})
assert app.test_client().get("/healthz").status_code == 200 and refused == ["keyservice-webhooks"]
child = os.fork()
if child == 0:
    assert app.test_client().get("/healthz").status_code == 200
    senders = [thread for thread in threading.enumerate() if thread.name == "keyservice-webhooks"]
    os._exit(0 if len(senders) == 1 else 1)
assert os.waitpid(child, 0)[1] == 0, "the forked child did not start its sender"
"""
    run_python(script, dict(os.environ))
