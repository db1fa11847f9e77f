"""When the SQLite database cannot be reached: 503, never a pass, and recovery on its own.

PostgreSQL stopped under traffic is in ``test_scale_out.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from keyservice.app import db

from .conftest import IssueKey


@pytest.fixture
def database_path(tmp_path: Path) -> Path:
    (tmp_path / "volume").mkdir()
    return tmp_path / "volume" / "keys.db"


@pytest.fixture
def database_url(database_path: Path) -> str:
    return f"sqlite:///{database_path}"


def test_protected_routes_answer_503_while_the_database_is_gone_then_recover(
    app: Flask, client: FlaskClient, issue_key: IssueKey, database_path: Path
) -> None:
    _, key = issue_key()
    headers = {"Authorization": f"Bearer {key}"}
    assert client.post("/protected-with-key", headers=headers).status_code == 200

    volume = database_path.parent
    volume.rename(volume.with_name("unmounted"))
    with app.app_context():
        db.engine.dispose()  # the open connections go with the volume
    for _ in range(5):
        response = client.post("/protected-with-key", headers=headers)
        assert response.status_code == 503
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == "UNAVAILABLE"
        assert response.headers["Retry-After"] == "1"
    assert client.get("/healthz").status_code == 503

    volume.with_name("unmounted").rename(volume)
    assert client.post("/protected-with-key", headers=headers).get_json() == {
        "protected": True, "external_client_id": "acme"}
    assert client.get("/healthz").status_code == 200
