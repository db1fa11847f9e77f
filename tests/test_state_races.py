"""Changes of one key racing each other, end to end: real HTTP, gunicorn with 2 workers.

Rotate, revoke and the uses of a shared quota are serialised by the database (a row
lock, or SQLite's write lock), so whatever the interleaving: a key has at most one
successor, no key outlives a revocation that answered 204, and a rotation creates no
use. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .helpers import bearer
from .load import outcome, together
from .servers import KeysCli, Response, flask_command, gunicorn, request, service_environment

pytestmark = pytest.mark.slow  # starts the service, servers or a browser

ROUNDS = 10


@dataclass(frozen=True)
class Service(KeysCli):
    """gunicorn on a fresh database, and client acme's manager (keys:read, keys:write, keys:verify)."""

    base: str
    manager: str

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Response:
        return request(self.base + path, method, bearer(self.manager), body)

    def create(self, **fields: Any) -> dict[str, Any]:
        response = self.call("POST", "/keys", {"name": "raced", "external_client_id": "acme", **fields})
        assert response.status == 201, response.body
        created: dict[str, Any] = json.loads(response.body)
        return created

    def rotate(self, key_id: str, grace_seconds: int = 0) -> Response:
        return self.call("POST", f"/keys/{key_id}/rotate", {"grace_seconds": grace_seconds})

    def revoke(self, key_id: str) -> Response:
        return self.call("DELETE", f"/keys/{key_id}")

    def use(self, key: str) -> tuple[int, str | None]:
        return outcome(request(self.base + "/protected-with-key", "POST", bearer(key)))

    def live_keys(self) -> set[str]:
        """The ids of acme's keys that are neither revoked nor expired, the manager's aside."""
        listed = json.loads(self.call("GET", "/keys?external_client_id=acme&limit=100").body)["items"]
        manager_id = self.manager.split("_")[1]
        return {key["id"] for key in listed if key["id"] != manager_id and self.status(key["id"]) == "active"}

    def status(self, key_id: str) -> str:
        shown = json.loads(self.call("GET", f"/keys/{key_id}").body)
        if shown["revoked_at"] is not None:
            return "revoked"
        expired = flask_command(self.environ, "keys", "show", key_id)
        return "expired" if "expired" in expired.stdout else "active"


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[Service]:
    # bcrypt at cost 10 makes each rotation take long enough for the races to overlap.
    environ = service_environment(database_url, KEYSERVICE_BCRYPT_ROUNDS="10")
    _, manager = KeysCli(environ).create_key("--scope", "keys:read", "--scope", "keys:write", "--scope", "keys:verify")
    with gunicorn(environ, tmp_path / "gunicorn.log", workers=2) as base:
        yield Service(environ, base, manager)


def test_sixteen_rotates_at_once_give_one_successor(service: Service) -> None:
    old = service.create()
    answers = together([functools.partial(service.rotate, old["id"]) for _ in range(16)])
    assert sorted(answer.status for answer in answers) == [201] + [409] * 15
    [successor] = [json.loads(answer.body) for answer in answers if answer.status == 201]
    assert service.live_keys() == {successor["id"]}
    assert service.use(successor["key"]) == (200, None)
    assert service.use(old["key"]) == (401, "EXPIRED")
    assert service.rotate(old["id"]).status == 409


@pytest.mark.parametrize("grace_seconds", [0, 3600])
def test_a_rotate_racing_a_revoke_never_leaves_a_live_key(service: Service, grace_seconds: int) -> None:
    rotated = Counter[int]()
    for _ in range(ROUNDS):
        old = service.create()
        rotation, revocation = together(
            [functools.partial(service.rotate, old["id"], grace_seconds), functools.partial(service.revoke, old["id"])]
        )
        assert revocation.status == 204
        assert rotation.status in (201, 409), rotation.body
        rotated[rotation.status] += 1
        assert service.use(old["key"])[0] == 401
        if rotation.status == 201:
            assert service.use(json.loads(rotation.body)["key"]) == (401, "REVOKED")
        assert service.live_keys() == set()
    assert sum(rotated.values()) == ROUNDS


def test_rotating_during_a_grace_period_shares_one_quota(service: Service) -> None:
    old = service.create(remaining=10)
    assert [service.use(old["key"]) for _ in range(2)] == [(200, None)] * 2
    first = json.loads(service.rotate(old["id"], grace_seconds=3600).body)
    assert service.use(first["key"]) == (200, None)
    second = json.loads(service.rotate(first["id"], grace_seconds=3600).body)
    keys = [old["key"], first["key"], second["key"]]
    uses = together([functools.partial(service.use, keys[i % 3]) for i in range(30)])
    assert sorted(uses, key=str) == sorted([(200, None)] * 7 + [(429, "USAGE_EXCEEDED")] * 23, key=str)
    assert [service.use(key) for key in keys] == [(429, "USAGE_EXCEEDED")] * 3
    assert json.loads(service.call("GET", f"/keys/{second['id']}").body)["remaining"] == 0
