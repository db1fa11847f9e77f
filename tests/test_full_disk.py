"""A full disk under the real service: gunicorn (2 workers, default cache settings) with its
SQLite database on a small tmpfs that the test fills up, then frees.

Writes are refused 503 with Retry-After, never 500; reads and the verification of a key
without limits go on (they need no write); a key whose uses are counted is refused 503;
/readyz says not ready. Freeing the space brings everything back without a restart, and
the usage counted in the workers' memory meanwhile reaches the database.

Mounting a tmpfs needs root: elsewhere the test skips, except under CI, where it fails.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .helpers import assert_unavailable, bearer, wait_until
from .servers import KeysCli, Response, flask_cli, gunicorn, request, service_environment
from .test_database_outage import assert_no_error_text

pytestmark = pytest.mark.slow  # starts the service, servers or a browser

NEW_KEY: dict[str, object] = {"name": "n", "external_client_id": "acme"}
USAGE_NOT_SAVED = "usage not saved yet"  # what keyservice/verification/usage.py logs when a flush fails


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder``; unmounted after."""
    if os.geteuid() != 0:
        if "CI" in os.environ:
            pytest.fail("mounting a tmpfs needs root, and CI must run the full-disk test", pytrace=False)
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(path: Path) -> None:
    """Write ``path`` until the disk is full."""
    chunk = b"\0" * 4096
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(descriptor, chunk)
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    finally:
        os.close(descriptor)


def test_a_full_disk_refuses_writes_with_503_keeps_verifying_and_recovers_when_freed(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "volume", "16m") as volume:
        environ = service_environment(
            f"sqlite:///{volume / 'keys.db'}", KEYSERVICE_BCRYPT_ROUNDS="4", KEYSERVICE_USAGE_FLUSH_INTERVAL="1"
        )
        migrated = flask_cli(environ, "db", "upgrade")
        assert migrated.returncode == 0, migrated.stderr
        cli = KeysCli(environ)
        _, admin = cli.create_key("--scope", "keys:admin")
        plain_id, plain = cli.create_key()
        _, counted = cli.create_key("--remaining", "1000")
        target_id, _ = cli.create_key()
        log = tmp_path / "gunicorn.log"
        with gunicorn(environ, log, workers=2) as base:

            def call(
                method: str, path: str, key: str | None = admin, body: dict[str, object] | None = None
            ) -> Response:
                return request(base + path, method, bearer(key) if key else {}, body)

            assert call("POST", "/keys", body=NEW_KEY).status == 201
            assert call("GET", "/readyz").status == 200
            verified = sum(call("POST", "/protected-with-key", plain).status == 200 for _ in range(10))

            fill(volume / "filler")
            assert_unavailable(call("GET", "/readyz"))
            # Writes may still land in log space a checkpoint left free: write until one is refused.
            for _ in range(500):
                created = call("POST", "/keys", body=NEW_KEY)
                if created.status != 201:
                    break
            assert_unavailable(created)
            for method, path, body in (
                ("POST", "/keys", NEW_KEY),
                ("PATCH", f"/keys/{target_id}", {"name": "m"}),
                ("POST", f"/keys/{target_id}/rotate", {}),
                ("DELETE", f"/keys/{target_id}", None),
                ("PUT", "/roles/reader", {"scopes": ["reports:read"]}),
            ):
                assert_unavailable(call(method, path, body=body))
            assert_unavailable(call("POST", "/protected-with-key", counted))  # a use is a write
            assert_unavailable(call("GET", "/readyz"))
            assert call("GET", "/healthz").status == 200
            assert call("GET", "/keys").status == 200
            assert call("GET", f"/keys/{target_id}").status == 200
            failed_flushes = log.read_text().count(USAGE_NOT_SAVED)
            for _ in range(10):
                assert call("POST", "/protected-with-key", plain).status == 200
                verified += 1
            # Flushes after those uses fail (every second per worker with counts) and keep their counts.
            wait_until(
                lambda: log.read_text().count(USAGE_NOT_SAVED) >= failed_flushes + 2, 10, "two failed usage flushes"
            )

            (volume / "filler").unlink()
            assert call("GET", "/readyz").status == 200
            assert call("POST", "/keys", body=NEW_KEY).status == 201
            assert call("PATCH", f"/keys/{target_id}", body={"name": "m"}).status == 200
            assert call("POST", f"/keys/{target_id}/rotate", body={}).status == 201
            assert call("DELETE", f"/keys/{target_id}").status == 204
            assert call("POST", "/protected-with-key", counted).status == 200
            wait_until(
                lambda: (
                    sum(
                        item["counts"].get("VALID", 0)
                        for item in json.loads(call("GET", f"/keys/{plain_id}/usage").body)["items"]
                    )
                    == verified
                ),
                10,
                "the usage counted while the disk was full reaching the database",
            )

    for line in log.read_text().splitlines():
        assert_no_error_text(line, admin, plain, counted)
