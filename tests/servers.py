"""Run the real service: migrations, the CLI and gunicorn, as subprocesses (the CLI also in this
process, through click's runner, where a test only sets the service up with it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from keyservice.app import create_app, db

from .helpers import free_port

REPO = Path(__file__).resolve().parent.parent
# What a deployment on PostgreSQL or Redis, or behind a proxy, must set (the service refuses to start without).
DEPLOYMENT_SECRET = "the-deployment-secret-of-these-tests-32+"
PUBLIC_URL = "https://keys.example.test"


# The test apps that keyservice is installed into run no webhook sender: it would poll their
# databases, which go with the test (the webhooks' tests start it: receivers.webhook_settings).
TEST_HOST_SETTINGS = {"KEYSERVICE_WEBHOOKS_SEND": False}


def deployment_settings(database_url: str) -> dict[str, str]:
    """What an app on ``database_url`` must be given besides: on PostgreSQL, the deployment
    secret and the tokens' issuer (it refuses to start without them)."""
    if database_url.startswith("sqlite"):
        return {}
    return {"KEYSERVICE_SECRET_KEY": DEPLOYMENT_SECRET, "KEYSERVICE_TOKEN_ISSUER": PUBLIC_URL}


def service_environment(database_url: str, **settings: str) -> dict[str, str]:
    """The environment the service runs with: this one, less any KEYSERVICE_* of the caller; on
    PostgreSQL or Redis, or behind a proxy, the deployment secret and the tokens' issuer too."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYSERVICE_")}
    environ.update({"DATABASE_URL": database_url, **deployment_settings(database_url), **settings})
    if settings.get("KEYSERVICE_RATELIMIT_STORAGE_URL") or settings.get("KEYSERVICE_PROXIES", "0") not in ("", "0"):
        environ.setdefault("KEYSERVICE_TOKEN_ISSUER", PUBLIC_URL)
    return environ


def _command(environ: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m COMMAND`` at the clone's top, no stdin, its output kept (a minute at most)."""
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def flask_cli(environ: dict[str, str], *args: str, app: str = "wsgi") -> subprocess.CompletedProcess[str]:
    """Run ``flask --app APP ARGS`` (the service's ``wsgi`` unless said) as a user would."""
    return _command(environ, "flask", "--app", app, *args)


@dataclass(frozen=True)
class CommandResult:
    """What a command answered, as :class:`subprocess.CompletedProcess` has it."""

    returncode: int
    stdout: str
    stderr: str


def flask_command(environ: dict[str, str], *args: str) -> CommandResult:
    """``flask --app wsgi ARGS`` through click's runner in this process, on the service ``environ``
    describes: the same app, commands and output as :func:`flask_cli` without a new interpreter
    (each costs about 1.2 s of CPU, and the suite's setups run some 150). For commands that set a
    test up; the command line itself is run as a subprocess (test_cli.py, test_key_scan.py, the
    documentation's blocks). An exception other than a command's exit is raised here: a traceback
    a user would see fails the test."""
    with mock.patch.dict(os.environ, environ, clear=True):
        app = create_app()
        try:
            result = app.test_cli_runner().invoke(args=list(args))
        finally:
            with app.app_context():
                for engine in db.engines.values():
                    engine.dispose()  # no connection outlives the command, as none outlives a process
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CommandResult(result.exit_code, result.stdout, result.stderr)


def refused_start(environ: dict[str, str]) -> str:
    """Start the service with gunicorn's shipped settings, which must refuse to: the last line it wrote."""
    result = _command(environ, "gunicorn", "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0", "wsgi:app")
    assert result.returncode != 0, result.stderr
    return result.stderr.strip().splitlines()[-1]


@dataclass(frozen=True)
class KeysCli:
    """``flask keys ...`` on a service's database (:func:`flask_command`)."""

    environ: dict[str, str]

    def create_key(self, *options: str) -> tuple[str, str]:
        """Create a key of client ``acme``; return (its id, the full key)."""
        created = flask_command(self.environ, "keys", "create", "--name", "test", "--client-id", "acme", *options)
        assert created.returncode == 0, created.stderr
        [key] = created.stdout.splitlines()
        return key.split("_")[1], key

    def show(self, key_id: str) -> dict[str, object]:
        """The key as ``keys show --json`` prints it."""
        shown = flask_command(self.environ, "keys", "show", key_id, "--json")
        assert shown.returncode == 0, shown.stderr
        key: dict[str, object] = json.loads(shown.stdout)
        return key


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]


def request(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: dict[str, object] | None = None,
    data: bytes | None = None,
) -> Response:
    """One HTTP request (``body`` sent as JSON, or ``data`` as it is); error statuses are answers
    too, not exceptions."""
    headers = dict(headers or {})
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    req = urllib.request.Request(url, method=method, headers=headers, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return Response(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read(), dict(error.headers))


@contextmanager
def gunicorn(
    environ: dict[str, str],
    log: Path,
    workers: int = 2,
    access_log: bool = False,
    options: Sequence[str] = (),
    app: str = "wsgi:app",
) -> Iterator[str]:
    """Serve ``app`` (the service's ``wsgi:app`` unless said) with gunicorn's production settings
    (and command-line ``options``), logging to ``log`` (with gunicorn's access log, off in those
    settings, only if ``access_log``); yield its base URL, and stop it after."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "-w",
        str(workers),
        *(["--access-logfile", "-"] if access_log else []),
        *options,
        app,
    ]
    with serving(command, environ, log) as base:
        yield base


@contextmanager
def serving(
    command: Sequence[str], environ: dict[str, str], log: Path, cwd: Path = REPO, ready: str = "/healthz"
) -> Iterator[str]:
    """Run a gunicorn ``command`` (bound here to a free port) in ``cwd``, logging to ``log``,
    until it answers ``ready`` with a 200; yield its base URL, and stop it after."""
    port = free_port()
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            [*command, "-b", f"127.0.0.1:{port}"],
            cwd=cwd,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, process, log, ready)
        yield base
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Stop a server: politely, then not."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_healthy(base: str, process: subprocess.Popen[bytes], log: Path, ready: str) -> None:
    """Wait (30 s at most) until the server ``process`` started answers ``ready`` with a 200; fail with its log."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text(errors='replace')}")
        try:
            if request(base + ready).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer {ready} within 30 s")


def labelled_metric(base: str, name: str, label: str) -> dict[str, float]:
    """``name``'s samples in the service's ``/metrics``, by the value of their one label ``label``."""
    text = request(base + "/metrics").body.decode()
    return {
        value: float(count) for value, count in re.findall(rf'^{name}{{{label}="(\w+)"}} (\S+)$', text, re.MULTILINE)
    }


def gunicorn_workers(base: str) -> set[int]:
    """The process ids of the workers of the gunicorn serving ``base`` (its master's children)."""
    bind = base.removeprefix("http://")
    serving = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and bind.encode() in (entry / "cmdline").read_bytes():
                serving.add(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    parents = {
        pid: int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in serving
    }
    return {pid for pid, parent in parents.items() if parent in serving}


def request_lines(log: Path) -> list[dict[str, Any]]:
    """The service's JSON request lines (logger ``keyservice.request``) in a gunicorn ``log``:
    whole lines only. A worker killed while writing its line leaves it torn (the kernel may
    stop a write between two pages), and the next line written runs on from it: of such a
    line, only that next one is read."""
    *whole, _being_written = log.read_text(errors="replace").split("\n")
    lines = (json.loads(line[line.rfind('{"asctime"') :]) for line in whole if line.startswith("{"))
    return [line for line in lines if line.get("logger") == "keyservice.request"]


def _workers_that_answered(log: Path, request_ids: set[str]) -> dict[str, int]:
    # gunicorn writes a request's line once it has sent the response: wait for them all.
    deadline = time.monotonic() + 5
    while True:
        answered = {
            line["request_id"]: line["worker"] for line in request_lines(log) if line["request_id"] in request_ids
        }
        if len(answered) == len(request_ids) or time.monotonic() > deadline:
            assert len(answered) == len(request_ids), f"no log line for {request_ids - set(answered)}"
            return answered
        time.sleep(0.05)


def answers_by_worker(
    base: str, log: Path, send: Callable[[], Response], batch: int = 10, within: float = 30
) -> dict[int, list[Response]]:
    """Call ``send`` (one request to the gunicorn at ``base``, which logs JSON to ``log``) in
    batches until each of its workers has answered at least once (a worker just forked may
    take a moment to load the app), for up to ``within`` seconds; return the answers by the
    process id of the worker that answered each, as its request line says."""
    workers = gunicorn_workers(base)
    by_worker: dict[int, list[Response]] = {}
    deadline = time.monotonic() + within
    while set(by_worker) != workers:
        assert time.monotonic() < deadline, f"in {within} s only {set(by_worker)} of {workers} answered"
        sent = {response.headers["X-Request-ID"]: response for response in (send() for _ in range(batch))}
        for request_id, worker in _workers_that_answered(log, set(sent)).items():
            by_worker.setdefault(worker, []).append(sent[request_id])
    return by_worker
