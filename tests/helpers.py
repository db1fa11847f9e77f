"""What many test modules use: the Authorization header, the problem+json checks, issuing a key,
reading what the API and the CLI answer, and waiting for something to happen."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from werkzeug.wrappers import Response as WerkzeugResponse

from keyservice import KeyService
from keyservice.core.crypto import checksum

if TYPE_CHECKING:
    from .servers import Response as HttpResponse

KEY_FORMAT = re.compile(r"sk_[0-9A-Za-z]{16}_[0-9A-Za-z]{38}")
RATELIMIT_HEADERS = ("RateLimit-Policy", "RateLimit", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")

T = TypeVar("T")

# For a test of what does not depend on the database (a page, a log line) that needs the
# service: run it on SQLite only.
ON_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wrong_secret(key: str, n: int = 0) -> str:
    """The same prefix and id with another secret, and a checksum that holds."""
    body = key[:20] + f"{n:032d}"
    return body + checksum(body)


def parse_time(value: str) -> datetime:
    """A timestamp as the API and the CLI write it (``...Z``)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def describe(response: WerkzeugResponse) -> str:
    """For assertion messages: a problem body in full, any other response (it may hold a key) by its status."""
    if response.mimetype == "application/problem+json":
        return response.get_data(as_text=True)
    return f"{response.status} {response.mimetype}"


def assert_problem(response: WerkzeugResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with this status (in the header and the body) and ``code``."""
    assert response.status_code == status, describe(response)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    assert body["type"].startswith("urn:keyservice:problem:")
    assert body["title"] and isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["code"] == code
    return body


def assert_unavailable(response: WerkzeugResponse | HttpResponse) -> None:
    """``response`` (from a test client, or read over HTTP) is 503 ``UNAVAILABLE``, retry in a second."""
    if not isinstance(response, WerkzeugResponse):
        response = WerkzeugResponse(response.body, response.status, response.headers)
    assert_problem(response, 503, "UNAVAILABLE")
    assert response.headers["Retry-After"] == "1"


def issue(
    app: Flask,
    *scopes: str,
    name: str = "test key",
    external_client_id: str = "acme",
    columns: Mapping[str, Any] | None = None,
    **fields: Any,
) -> tuple[str, str]:
    """Issue a key through the Python API with ``fields`` (``remaining``, ``refill``, ``ratelimit``,
    ``meta``, ...), then set ``columns`` on its row as they are (a past ``expires_at``, a
    ``revoked_at``); return (id, key)."""
    with app.app_context():
        api_key, key = KeyService.create_key(name=name, external_client_id=external_client_id, scopes=scopes, **fields)
        for column, value in (columns or {}).items():
            setattr(api_key, column, value)
        app.extensions["sqlalchemy"].session.commit()
        return api_key.id, key


def outcome_of(client: FlaskClient, key: str) -> tuple[int, str | None]:
    """The status and problem code (None for a success) the example protected view answers ``key`` with."""
    response = client.post("/protected-with-key", headers=bearer(key))
    return response.status_code, (response.get_json() or {}).get("code")


def listed_ids(client: FlaskClient, query: str = "", key: str | None = None) -> list[str]:
    """The ids ``GET /keys{query}`` lists to the caller with ``key`` (or to the signed-in user)."""
    response = client.get(f"/keys{query}", headers=bearer(key) if key else {})
    assert response.status_code == 200, describe(response)
    return [item["id"] for item in response.get_json()["items"]]


def cli_create(runner: FlaskCliRunner, *options: str, name: str = "n", client_id: str = "c") -> dict[str, Any]:
    """``flask keys create ... --json`` (it must succeed); what it printed."""
    result = runner.invoke(args=["keys", "create", "--name", name, "--client-id", client_id, *options, "--json"])
    assert result.exit_code == 0, result.stderr
    created: dict[str, Any] = json.loads(result.stdout)
    return created


def wait_until(condition: Callable[[], T], timeout: float, what: str = "the condition") -> T:
    """Call ``condition`` every 50 ms until it returns something true, and return that; fail
    the test if it has not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        time.sleep(0.05)
    return result


def free_port() -> int:
    """A local port nobody listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stored_windows(path: Path) -> int:
    """How many windows (a key and a period) the embedded windows' file at ``path`` holds, as
    another process reading it sees them."""
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; print(sqlite3.connect(sys.argv[1])"
            ".execute('SELECT count(*) FROM (SELECT DISTINCT key, period FROM slots)').fetchone()[0])",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return int(read.stdout)


def started_in_order(call: Callable[[], object], callers: int, gap: float = 0.02) -> list[threading.Thread]:
    """``callers`` threads running ``call``, started ``gap`` seconds apart: each is under way
    before the next comes."""
    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
        time.sleep(gap)
    return threads
