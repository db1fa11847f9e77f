"""The package as a Flask team installs it: an sdist and a wheel built from the repository with
``python -m build`` (the wheel from the sdist, so the sdist is proved complete), both passing
``twine check --strict``, the wheel installed into a fresh virtualenv with no clone around, where
it says its version, migrates, serves and issues keys."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

import keyservice

from .helpers import bearer, wait_until
from .servers import REPO, request, serving

pytestmark = pytest.mark.slow  # starts the service, servers or a browser


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
    assert done.returncode == 0, f"{command[0]} {command[1]} failed: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def copy_of_the_clone(destination: Path) -> Path:
    """The files a clone would have (tracked, plus new ones not ignored: what is about to be
    committed), copied to ``destination``: the build writes build/ and *.egg-info beside its
    sources, which must not happen in the clone, and a copy holds nothing git ignores (.venv,
    caches) for the sdist to pick up by accident."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is left out
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def setup_cfg_classifiers() -> list[str]:
    """The trove classifiers setup.cfg declares."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return [line.strip() for line in parser["metadata"]["classifiers"].splitlines() if line.strip()]


def wheel_metadata(wheel: Path) -> Message:
    """The wheel's METADATA, parsed (core metadata is an email-style header block)."""
    with zipfile.ZipFile(wheel) as archive:
        [name] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(name).decode())


def sdist_members(sdist: Path) -> set[str]:
    """The sdist's files, named without its top folder (keyservice-X.Y.Z/)."""
    with tarfile.open(sdist) as archive:
        return {member.name.split("/", 1)[1] for member in archive.getmembers() if member.isfile()}


def test_a_built_wheel_installs_migrates_serves_and_issues_keys(tmp_path: Path) -> None:
    # The environment of a user's shell: nothing of this repository or its virtualenv in it.
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("KEYSERVICE_") and name not in ("DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")
    }
    version = keyservice.__version__
    source = copy_of_the_clone(tmp_path / "source")
    dist = tmp_path / "dist"
    # An isolated build, as a user's or a release's: build installs setuptools (pyproject.toml's
    # build-system.requires) into a throwaway environment, once for the sdist and once for the
    # wheel built from it. It proves those requirements right, for about 4 s of the test's time.
    run(sys.executable, "-m", "build", "--outdir", dist, source, cwd=tmp_path, environ=environ)
    [sdist] = dist.glob("keyservice-*.tar.gz")
    [wheel] = dist.glob("keyservice-*.whl")
    assert (sdist.name, wheel.name) == (f"keyservice-{version}.tar.gz", f"keyservice-{version}-py3-none-any.whl")
    run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel, cwd=tmp_path, environ=environ)

    # What a build from the sdist needs, and the migrations as Flask-Migrate reads them.
    members = sdist_members(sdist)
    expected = {"setup.cfg", "pyproject.toml", "README.md", "LICENSE", "CHANGES.md", "PKG-INFO"}
    expected |= {"keyservice/__init__.py", "keyservice/__main__.py", "keyservice/py.typed"}
    expected |= {"migrations/README", "migrations/alembic.ini", "migrations/script.py.mako", "migrations/env.py"}
    expected |= {f"migrations/versions/{path.name}" for path in (REPO / "migrations" / "versions").glob("*.py")}
    assert expected <= members
    assert not [name for name in members if name.startswith("tests/") or "__pycache__" in name]

    metadata = wheel_metadata(wheel)
    assert metadata["Version"] == version
    assert metadata.get_all("Classifier") == setup_cfg_classifiers()
    assert "Framework :: Flask" in metadata.get_all("Classifier")
    assert (metadata["License-Expression"], metadata["License-File"]) == ("MIT", "LICENSE")
    assert metadata["Description-Content-Type"] == "text/markdown"

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
    assert run(bin_ / "python", "-m", "keyservice", "--version", cwd=site, environ=environ) == f"keyservice {version}\n"
    usage = run(bin_ / "python", "-m", "keyservice", "--help", cwd=site, environ=environ)
    assert "flask --app keyservice keys" in usage and "gunicorn" in usage

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
        valid = 'keyservice_verifications_total{outcome="VALID"} 10.0'

        def metrics_once_published() -> str:
            text = request(base + "/metrics").body.decode()
            return text if valid in text else ""

        # Each worker publishes its verifications within half a second.
        metrics = wait_until(metrics_once_published, 2, "both workers' verifications in /metrics")
    assert [(answered.status, json.loads(answered.body)) for answered in answers] == [
        (200, {"protected": True, "external_client_id": "acme"})
    ] * 10
    assert refused.status == 401
    # The installed settings' multiprocess metrics: both workers' verifications add up.
    assert valid in metrics
    assert sorted(path.name for path in site.iterdir()) == ["instance"]
