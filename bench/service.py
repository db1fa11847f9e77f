"""The service as the benchmarks set it up: its routes, its keys, its CLI, one request."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import flask_cli, request, serving

from .report import redact

WORKERS = 2
UNPROTECTED = "/unprotected"
PROTECTED = "/protected-with-key"


def flask(env: dict[str, str], *args: str, app: str = "wsgi") -> str:
    """Run ``flask --app APP ...`` in the repo (the service's ``wsgi`` unless said); return its stdout."""
    done = flask_cli(env, *args, app=app)
    if done.returncode != 0:
        # stderr only: stdout may hold a key.
        raise RuntimeError(f"flask {args[0]} {args[1]} failed: {redact(done.stderr.strip())}")
    return done.stdout


def post(url: str, key: str | None = None) -> tuple[int, str, str | None]:
    """POST once; return the status, the problem ``code`` (if any) and ``Retry-After``."""
    response = request(url, "POST", {"Authorization": f"Bearer {key}"} if key else {})
    code = json.loads(response.body).get("code", "") if response.status != 200 else ""
    return response.status, code, response.headers.get("Retry-After")


def create_keys(env: dict[str, str]) -> tuple[str, str, str]:
    """Create a plain key, one with a rate limit and one with ``remaining``, each far above
    what wrk can send (what is measured is their bookkeeping); return them."""

    def create(name: str, *options: str) -> str:
        return flask(env, "keys", "create", "--name", name, "--client-id", "bench", *options).strip()

    return (
        create("bench"),
        create("bench rate limit", "--ratelimit", "1000000/10s"),
        create("bench remaining", "--remaining", "1000000000"),
    )


@contextmanager
def plain_gunicorn(app: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """Serve a Flask app that is not keyservice as it would be served on its own: gunicorn with
    the service's worker class, workers and threads (gthread, 64) and gunicorn's own access log
    (one line per request, as the service's JSON line), none of the service's settings or hooks.
    Yield its base URL."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "/dev/null",  # not the repo's gunicorn.conf.py, which gunicorn reads from the folder otherwise
        "-w",
        str(WORKERS),
        "--worker-class",
        "gthread",
        "--threads",
        "64",
        "--access-logfile",
        str(log.with_suffix(".access.log")),
        app,
    ]
    with serving(command, env, log) as base:
        yield base
