"""Slow clients do not hold the workers that serve everyone else.

Many connections trickle header lines (one every 1-2 s, never ending them) for 30 s while a
valid key's request, once a second, must answer 200 in under a second each time, and no
gunicorn worker may be killed. First against ``make serve``'s gunicorn settings (the repo's
gunicorn.conf.py, 2 workers) with 50 slow clients; then with 500 through the production
setup of docs/deploy.md, the project's nginx site in front. SQLite only: what is measured is
the HTTP layer, not the database.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from .helpers import bearer
from .load import Tricklers
from .servers import KeysCli, flask_cli, gunicorn, request, service_environment
from .services import nginx_server

pytestmark = pytest.mark.slow  # starts the service, servers or a browser

SECONDS = 30


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    environ = service_environment(f"sqlite:///{tmp_path / 'keys.db'}", KEYSERVICE_BCRYPT_ROUNDS="4")
    migrated = flask_cli(environ, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    return environ


def valid_requests_beside(url: str, key: str) -> list[tuple[int, float]]:
    """POST with ``key`` once a second for SECONDS (beside the slow clients); each answer's
    status and seconds taken."""
    answers = []
    deadline = time.monotonic() + SECONDS
    while (started := time.monotonic()) < deadline:
        status = request(url, "POST", bearer(key)).status
        answers.append((status, round(time.monotonic() - started, 3)))
        time.sleep(max(0.0, started + 1.0 - time.monotonic()))
    return answers


def assert_no_worker_was_killed(log: Path) -> None:
    logged = log.read_text(errors="replace")
    assert not re.search(r"WORKER TIMEOUT|SIGKILL|Worker .* was sent", logged), logged
    assert len(re.findall(r"Booting worker with pid", logged)) == 2, logged


def test_50_slow_clients_do_not_hold_make_serves_workers(environ: dict[str, str], tmp_path: Path) -> None:
    _, key = KeysCli(environ).create_key()
    log = tmp_path / "gunicorn.log"
    with gunicorn(environ, log, workers=2) as base, Tricklers(base, 50) as tricklers:
        answers = valid_requests_beside(base + "/protected-with-key", key)
    assert len(answers) >= SECONDS - 1
    assert [answer for answer in answers if answer[0] != 200 or answer[1] >= 1.0] == [], answers
    # They held on the whole time: gunicorn waits as long as a header keeps coming.
    assert (tricklers.fewest_open, tricklers.closed_by_server) == (50, 0)
    assert_no_worker_was_killed(log)


def test_500_slow_clients_do_not_reach_the_production_setups_workers(environ: dict[str, str], tmp_path: Path) -> None:
    _, key = KeysCli(environ).create_key()
    log = tmp_path / "gunicorn.log"
    with gunicorn(environ, log, workers=2) as upstream, nginx_server(upstream.removeprefix("http://")) as base:
        assert request(base + "/healthz").status == 200
        with Tricklers(base, 500) as tricklers:
            answers = valid_requests_beside(base + "/protected-with-key", key)
    assert len(answers) >= SECONDS - 1
    assert [answer for answer in answers if answer[0] != 200 or answer[1] >= 1.0] == [], answers
    # nginx gives a header 10 s (client_header_timeout), then answers 408; they come right back.
    assert tricklers.fewest_open == 500 and tricklers.closed_by_server >= 500, vars(tricklers)
    assert_no_worker_was_killed(log)
