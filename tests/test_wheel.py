"""The package as a Flask team installs it: a wheel built from the repository, installed
into a fresh virtualenv with no clone around, migrates, serves and issues keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import bearer
from .servers import REPO, request, serving

pytestmark = pytest.mark.slow  # starts the service, servers or a browser

# What the build reads: the metadata, the package and the migrations it ships.
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "keyservice", "migrations")


def run(*command: str | Path, cwd: Path, environ: dict[str, str]) -> str:
    """Run a command to completion; its stdout (its stderr in the failure's message)."""
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{command[0]} {command[1]} failed: {done.stderr[-3000:]}"
    return done.stdout


def test_a_built_wheel_installs_migrates_serves_and_issues_keys(tmp_path: Path) -> None:
    # The environment of a user's shell: nothing of this repository or its virtualenv in it.
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("KEYSERVICE_") and name not in ("DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")
    }
    source = tmp_path / "source"  # the build writes build/ and *.egg-info beside its sources: not in the clone
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--wheel-dir",
        tmp_path / "dist",
        source,
        cwd=tmp_path,
        environ=environ,
    )
    [wheel] = (tmp_path / "dist").glob("keyservice-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path, environ=environ)
    bin_ = venv / "bin"
    # The pins of requirements.txt as constraints; [serve] brings gunicorn.
    run(
        bin_ / "pip",
        "install",
        "--quiet",
        "--constraint",
        REPO / "requirements.txt",
        f"{wheel}[serve]",
        cwd=tmp_path,
        environ=environ,
    )

    site = tmp_path / "site"  # where the user starts the service: nothing of the clone there
    site.mkdir()
    installed = run(bin_ / "python", "-c", "import keyservice; print(keyservice.__file__)", cwd=site, environ=environ)
    assert Path(installed.strip()).is_relative_to(venv)

    run(bin_ / "flask", "--app", "keyservice", "db", "upgrade", cwd=site, environ=environ)
    assert (site / "instance" / "keyservice.db").is_file()  # the documented default: the working directory
    key = run(
        bin_ / "flask",
        "--app",
        "keyservice",
        "keys",
        "create",
        "--name",
        "demo",
        "--client-id",
        "acme",
        cwd=site,
        environ=environ,
    ).strip()

    command = [str(bin_ / "gunicorn"), "-c", "python:keyservice.gunicorn_conf", "-w", "2", "keyservice:create_app()"]
    with serving(command, environ, tmp_path / "gunicorn.log", cwd=site) as base:
        answers = [request(base + "/protected-with-key", "POST", bearer(key)) for _ in range(10)]
        refused = request(base + "/protected-with-key", "POST")
        metrics = request(base + "/metrics").body.decode()
    assert [(answered.status, json.loads(answered.body)) for answered in answers] == [
        (200, {"protected": True, "external_client_id": "acme"})
    ] * 10
    assert refused.status == 401
    # The installed settings' multiprocess metrics: both workers' verifications add up.
    assert 'keyservice_verifications_total{outcome="VALID"} 10.0' in metrics
    assert sorted(path.name for path in site.iterdir()) == ["instance"]
