"""Fixtures: apps on a migrated database, SQLite and PostgreSQL alike, and the servers they need.

Every test that takes ``app`` (or ``database_url``) runs twice: on SQLite and on
PostgreSQL. The PostgreSQL server and a Redis server start once per run (see
``services.py``); each test gets a database of its own, copied from a template
migrated once (a template database on PostgreSQL, a template file on SQLite).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flask_migrate
import pytest
from flask import Flask, g
from flask.testing import FlaskClient, FlaskCliRunner
from playwright.sync_api import Browser, sync_playwright

from keyservice import create_app, require_key
from keyservice.app import db
from keyservice.core.state import current_state

from .helpers import issue
from .servers import REPO, deployment_settings
from .services import PostgresServer, missing, postgres_server, redis_server

_STATUS_BEFORE = pytest.StashKey[str | None]()


def _working_tree_status() -> str | None:
    """``git status --porcelain`` of the clone, or None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return None
    return done.stdout if done.returncode == 0 else None


def _isolate_from_the_environment() -> None:
    """The tests choose every setting: a developer's exported ``KEYSERVICE_*`` or ``DATABASE_URL``
    (``KEYSERVICE_RATELIMIT_STORAGE_URL`` would move the embedded tests to Redis) is dropped."""
    for name in [name for name in os.environ if name.startswith("KEYSERVICE_") or name == "DATABASE_URL"]:
        del os.environ[name]


def _is_xdist_worker(config: pytest.Config) -> bool:
    """Whether this process is one of pytest-xdist's workers: the controller, which sees every
    worker's reports, judges the whole run."""
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    _isolate_from_the_environment()
    if not _is_xdist_worker(session.config):
        session.config.stash[_STATUS_BEFORE] = _working_tree_status()


def _fail_if_the_clone_changed(session: pytest.Session) -> None:
    """Tests write only to temp dirs: a run that changed the clone's ``git status`` fails (unless it
    was asked to renew the screenshots in docs/: ``make screenshots``)."""
    if "SCREENSHOTS_DIR" in os.environ:
        return
    before = session.config.stash.get(_STATUS_BEFORE, None)
    after = _working_tree_status()
    if before is not None and after is not None and after != before:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"the tests changed the clone's git status:\nbefore:\n{before}after:\n{after}", red=True
            )


# bcrypt at cost 4 keeps the suite fast; one test checks the default of 12.
# The tokens' issuer is the test client's own URL, as a configured one would be. No webhook
# sender polls the database of every test's app: the webhooks' tests start it (receivers.webhook_settings).
TEST_CONFIG = {
    "TESTING": True,
    "KEYSERVICE_BCRYPT_ROUNDS": 4,
    "KEYSERVICE_CACHE_TTL": 0,
    "KEYSERVICE_TOKEN_ISSUER": "http://localhost",
    "KEYSERVICE_WEBHOOKS_SEND": False,
}
DATABASES = ("sqlite", "postgresql")
TEMPLATE = "keyservice_template"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the whole run."""
    with redis_server(tmp_path_factory.mktemp("redis") / "redis.log") as url:
        yield url


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole run, with a migrated template database."""
    with postgres_server() as server:
        server.administer(f'CREATE DATABASE "{TEMPLATE}"')
        with migrated_app(server.url(TEMPLATE)):
            pass
        yield server


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, to stop and start again."""
    with postgres_server() as server:
        yield server


_numbers = itertools.count()


@contextmanager
def postgres_database(server: PostgresServer, migrated: bool = True) -> Iterator[str]:
    """A new database on ``server``, migrated or empty: yield its URL, drop it after."""
    name = f"test_{next(_numbers)}"
    server.administer(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{TEMPLATE}"' if migrated else ""))
    try:
        yield server.url(name)
    finally:
        server.administer(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once for the run, which each migrated SQLite database copies:
    the migrations take most of a small test's time."""
    path = tmp_path_factory.mktemp("sqlite-template") / "keys.db"
    with migrated_app(f"sqlite:///{path}"):
        pass
    # Closing the last connection folded the WAL into the file: the file alone is the database.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@contextmanager
def database_for(kind: str, request: pytest.FixtureRequest, folder: Path, migrated: bool = True) -> Iterator[str]:
    """The URL of a new database of ``kind``, already ``migrated`` (or empty): PostgreSQL's
    copied from the template database, SQLite's a file in ``folder``, copied from the template
    file (or left for the first migration to make)."""
    if kind == "sqlite":
        path = folder / "keys.db"
        if migrated:
            shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        with postgres_database(request.getfixturevalue("postgres"), migrated) as url:
            yield url


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each kind in turn."""
    with database_for(request.param, request, tmp_path) as url:
        yield url


@pytest.fixture(params=DATABASES)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new database of each kind in turn, with no tables."""
    with database_for(request.param, request, tmp_path, migrated=False) as url:
        yield url


@pytest.fixture(scope="module", params=DATABASES)
def module_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of each kind in turn, shared by a module's tests that change nothing."""
    with database_for(request.param, request, tmp_path_factory.mktemp("shared")) as url:
        yield url


@contextmanager
def migrated_app(database_url: str, **config: Any) -> Iterator[Flask]:
    """An app (test settings and ``config``) on a migrated database; its engine disposed after."""
    settings = {**deployment_settings(database_url), **TEST_CONFIG, **config}
    app = create_app({**settings, "SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        flask_migrate.upgrade()
    try:
        yield app
    finally:
        with app.app_context():
            current_state().verifier.flush_usage()  # while its database is still there
            db.engine.dispose()


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    with migrated_app(database_url) as app:
        yield app


@pytest.fixture
def usage_app(app: Flask) -> Flask:
    """The app with a view that answers ``g.auth.remaining`` (registered before its first request)."""

    @app.post("/usage")
    @require_key()
    def usage() -> dict[str, Any]:
        return {"remaining": g.auth.remaining}

    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


IssueKey = Callable[..., tuple[str, str]]


@pytest.fixture
def issue_key(app: Flask) -> IssueKey:
    """Issue a key through the Python API, then apply ``changes`` to its row
    (e.g. a past ``expires_at``); return (key id, full key)."""

    def issue_with_changes(
        name: str = "test key", external_client_id: str = "acme", scopes: tuple[str, ...] = (), **changes: Any
    ) -> tuple[str, str]:
        return issue(app, *scopes, name=name, external_client_id=external_client_id, columns=changes)

    return issue_with_changes


@pytest.fixture
def admin_key(issue_key: IssueKey) -> str:
    """A keys:admin key of client ``ops``."""
    return issue_key(name="operator", external_client_id="ops", scopes=("keys:admin",))[1]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a browser test's screenshots go: never the repository, unless asked (``SCREENSHOTS_DIR``,
    which ``make screenshots`` sets to docs/screenshots)."""
    asked = os.environ.get("SCREENSHOTS_DIR")
    return Path(asked) if asked else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright, without the background traffic this
    machine's closed network would refuse."""
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def _fail_if_ci_skipped(session: pytest.Session) -> None:
    """Under CI a skipped test fails the run: every test must run there, whatever it needs."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if "CI" in os.environ and skipped and session.exitstatus == pytest.ExitCode.OK:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; every test must run in CI", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _is_xdist_worker(session.config):
        return
    _fail_if_the_clone_changed(session)
    _fail_if_ci_skipped(session)
