"""``flask keys scan`` and the pre-commit hook's ``keyservice-scan``, as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keyservice.core.crypto import checksum

from .helpers import ON_SQLITE
from .servers import REPO, KeysCli, flask_cli, service_environment

pytestmark = pytest.mark.slow  # starts the service, servers or a browser


# The scan reads keys' rows as every CLI command does (tested on both databases elsewhere):
# its ten subprocesses run on SQLite only.
@ON_SQLITE
def test_scan_finds_the_two_real_keys_says_which_is_live_and_exits_1(database_url: str, tmp_path: Path) -> None:
    environ = service_environment(database_url, KEYSERVICE_BCRYPT_ROUNDS="4")
    cli = KeysCli(environ)
    live_id, live = cli.create_key()
    revoked_id, revoked = cli.create_key()
    assert flask_cli(environ, "keys", "revoke", revoked_id).returncode == 0
    bad_checksum = live[:-6] + ("aaaaaa" if not live.endswith("aaaaaa") else "bbbbbb")
    folder = tmp_path / "repo"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "settings.py").write_text(f'API_KEY = "{live}"\n')
    (folder / "deploy.env").write_text(f"# old\nKEY={revoked}\nTYPO={bad_checksum}\n")
    (folder / "notes.txt").write_text("sk_ nothing here " + "x" * 80 + "\n")

    scanned = flask_cli(environ, "keys", "scan", str(folder))
    assert scanned.returncode == 1, scanned.stderr
    assert scanned.stdout.splitlines() == [
        f"{folder}/deploy.env:2: {revoked_id} revoked",
        f"{folder}/src/settings.py:1: {live_id} live",
    ]
    assert live not in scanned.stdout + scanned.stderr and revoked not in scanned.stdout + scanned.stderr

    revoking = flask_cli(environ, "keys", "scan", "--revoke", str(folder / "src"))
    assert revoking.returncode == 1
    assert revoking.stdout.splitlines() == [f"{folder}/src/settings.py:1: {live_id} live, now revoked"]
    assert cli.show(live_id)["revocation_reason"] == "leaked"

    (folder / "src" / "settings.py").write_text("API_KEY = os.environ['API_KEY']\n")
    (folder / "deploy.env").write_text("nothing\n")
    clean = flask_cli(environ, "keys", "scan", str(folder))
    assert (clean.returncode, clean.stdout) == (0, "")


def test_the_pre_commit_hook_finds_keys_offline(tmp_path: Path) -> None:
    body = "sk_" + "A" * 16 + "_" + "b" * 32
    key = body + checksum(body)
    (tmp_path / "a.py").write_text(f"x = '{key}'\n")
    (tmp_path / "b.py").write_text("y = 1\n")
    hook = [sys.executable, "-c", "from keyservice.management.scan import main; main()"]
    found = subprocess.run(
        [*hook, str(tmp_path / "a.py"), str(tmp_path / "b.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert found.returncode == 1
    assert found.stdout == f"{tmp_path / 'a.py'}:1: keyservice key {'A' * 16}\n" and key not in found.stdout
    clean = subprocess.run(
        [*hook, str(tmp_path / "b.py")], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert clean.returncode == 0
    assert (REPO / ".pre-commit-hooks.yaml").read_text().count("entry: keyservice-scan") == 1
