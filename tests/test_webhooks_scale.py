"""Webhooks from 2 gunicorn instances (2 workers each) on one PostgreSQL database, to a receiver
that fails the first 3 attempts of every delivery: 200 key events arrive as exactly 200 distinct
``webhook-id``s, each signed (verified with ``standardwebhooks``), and a worker killed while it
delivers loses nothing. Duplicates are counted and reported."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest

from .conftest import postgres_database
from .helpers import bearer
from .receivers import Receiver, serving, webhook_settings
from .servers import flask_command, gunicorn, request, service_environment
from .services import PostgresServer

pytestmark = pytest.mark.slow  # starts the service, servers or a browser

EVENTS = 200


def pid_of_connection(port: int) -> int | None:
    """The process that holds the local TCP port ``port`` (a connection it opened), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue
        if any(re.fullmatch(rf"socket:\[{inode}\]", link) for link in links for inode in inodes):
            return int(entry.name)
    return None


def test_200_events_from_2_instances_arrive_once_each_signed_despite_failures_and_a_killed_worker(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    receiver = Receiver(fail_first=3)
    with serving(receiver), postgres_database(postgres) as database_url, ExitStack() as stack:
        environ = service_environment(database_url, KEYSERVICE_BCRYPT_ROUNDS="4", **webhook_settings())
        admin = flask_command(environ, "keys", "create", "--name", "op", "--client-id", "ops", "--scope", "keys:admin")
        admin_key = admin.stdout.strip()  # before the endpoint: its event is not one of the 200
        created = flask_command(environ, "webhooks", "create", receiver.url, "--event", "key.created")
        assert created.returncode == 0, created.stderr
        receiver.secret = created.stdout.split()[1]
        bases = [stack.enter_context(gunicorn(environ, tmp_path / f"gunicorn-{n}.log", workers=2)) for n in (1, 2)]
        started = time.monotonic()

        key_ids, killed = [], None
        for n in range(EVENTS):
            made = request(
                bases[n % 2] + "/keys", "POST", bearer(admin_key), {"name": f"key {n}", "external_client_id": "acme"}
            )
            assert made.status == 201, made.body
            key_ids.append(re.search(rb'"id": ?"(\w+)"', made.body)[1].decode())  # type: ignore[index]
            if n == 50:
                receiver.hang_next = 4.0  # the next attempt hangs: its sender is killed meanwhile
            if n > 50 and receiver.hanging.is_set() and receiver.hung_port:
                pid = pid_of_connection(receiver.hung_port)
                assert pid is not None and b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
                os.kill(pid, signal.SIGKILL)
                receiver.hung_port = 0
                killed = pid

        receiver.wait_for(EVENTS, within=45)
        elapsed = time.monotonic() - started
        time.sleep(6)  # longer than a lease (2 x 2 s + 1 s): a duplicate would have come by now
        accepted = receiver.accepted()
        ids = Counter(item.webhook_id for item in accepted)
        duplicates = sum(ids.values()) - len(ids)
        print(
            f"\n{len(ids)} distinct webhook-ids accepted of {EVENTS} events in {elapsed:.1f} s,"
            f" {duplicates} duplicate(s), {len(receiver.received)} attempts, worker {killed} killed mid-delivery"
        )
        assert killed is not None
        assert len(ids) == EVENTS and duplicates == 0
        assert all(item.verified for item in accepted)
        assert sorted(item.payload["data"]["id"] for item in accepted) == sorted(key_ids)
        assert all(receiver.attempts[webhook_id] >= 4 for webhook_id in ids)
        assert not [
            line
            for path in tmp_path.glob("gunicorn-*.log")
            for line in path.read_text().splitlines()
            if "Traceback" in line
        ]
