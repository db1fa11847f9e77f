"""``python -m keyservice``: the version, and a help that points to the real commands."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

import keyservice
from keyservice.__main__ import main


def test_version_prints_the_package_and_its_version() -> None:
    answered = CliRunner().invoke(main, ["--version"])
    assert (answered.exit_code, answered.output) == (0, f"keyservice {keyservice.__version__}\n")


def test_help_points_to_the_flask_cli_and_gunicorn() -> None:
    answered = CliRunner().invoke(main, ["--help"])
    assert answered.exit_code == 0
    assert "API keys for machine-to-machine auth in Flask" in answered.output
    assert "flask --app keyservice keys" in answered.output
    assert "gunicorn -c python:keyservice.gunicorn_conf 'keyservice:create_app()'" in answered.output


def test_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "keyservice", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (0, f"keyservice {keyservice.__version__}\n")
