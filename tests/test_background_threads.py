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

from .conftest import migrated_app
from .helpers import ON_SQLITE, bearer, issue, wait_until
from .receivers import webhook_settings
from .test_usage import FLUSH_THREAD, PROTECTED, stored_counts

REPOSITORY = Path(__file__).resolve().parent.parent


def refusing_the_first_start(name: str) -> tuple[list[str], Callable[[threading.Thread], None]]:
    """A ``Thread.start`` that fails the first start of a thread named ``name``, and the list
    that names it once it has."""
    refused: list[str] = []
    start = threading.Thread.start

    def start_or_refuse(thread: threading.Thread) -> None:
        if thread.name == name and not refused:
            refused.append(name)
            raise RuntimeError("can't start new thread")
        start(thread)

    return refused, start_or_refuse


def refuse_the_first_start(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """In this test: the first start of a thread named ``name`` fails."""
    refused, start_or_refuse = refusing_the_first_start(name)
    monkeypatch.setattr(threading.Thread, "start", start_or_refuse)
    return refused


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
from tests.test_background_threads import refusing_the_first_start
refused, threading.Thread.start = refusing_the_first_start("keyservice-metrics")
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
    done = subprocess.run(
        [sys.executable, "-c", script], env=environ, cwd=REPOSITORY, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "thread keyservice-metrics not started" in done.stderr


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
