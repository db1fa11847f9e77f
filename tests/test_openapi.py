"""The OpenAPI document at /openapi.json, and the API checked against it.

Schemathesis reads the document the app serves and calls every operation
in-process over WSGI with generated input (valid and invalid), as a
``keys:admin`` principal: no answer may be a 5xx, and every answer must be
one the document declares (status, content type and body schema).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from keyservice.app import db
from keyservice.management.store import put_role

from .conftest import IssueKey, migrated_app
from .helpers import ON_SQLITE, bearer

# The management table of the SPEC, and the roles routes.
MANAGEMENT_PATHS = {
    "/keys": {"get", "post"},
    "/keys/{key_id}": {"get", "patch", "delete"},
    "/keys/{key_id}/rotate": {"post"},
    "/keys/{key_id}/events": {"get"},
    "/keys/verify": {"post"},
    "/roles": {"get"},
    "/roles/{name}": {"put", "delete"},
}

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]

# A generated key id is (nearly) never one that exists, and every route under
# /keys/{key_id} would only ever answer 404. So besides generated ids, {key_id}
# takes one of these kinds, for which the test issues a fresh key just before
# the call (fresh, because earlier calls revoke and change keys); {name} takes
# ROLE, which the test (re)creates just before the call.
KEY_KINDS = ("plain-key", "key-with-everything", "revoked-key")
ROLE = "reader"


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's ``from_fixture`` reads ``item._nodeid``, which pytest 9.2
    no longer has (it keeps a structured ``_id``); give it the string it expects."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture
def api_schema(app: Flask) -> schemathesis.BaseSchema:
    loaded = schemathesis.openapi.from_wsgi("/openapi.json", app)

    @loaded.hook
    def before_generate_path_parameters(context: schemathesis.HookContext, strategy: Any) -> Any:
        path = context.operation.path if context.operation is not None else ""
        if "{key_id}" in path:
            return st.one_of(st.sampled_from(KEY_KINDS).map(lambda kind: {"key_id": kind}), strategy)
        if "{name}" in path:
            return st.one_of(st.just({"name": ROLE}), strategy)
        return strategy

    return loaded


@pytest.fixture
def stand_ins(app: Flask, issue_key: IssueKey) -> Callable[[schemathesis.Case], None]:
    """Replace a stand-in path parameter by a key or role that exists."""

    def put_reader_role() -> None:
        with app.app_context():
            put_role(db.session, ROLE, ["docs:read"])
            db.session.commit()

    def make_key(kind: str) -> str:
        if kind == "revoked-key":
            return issue_key(revoked_at=datetime.now(UTC), revocation_reason="test")[0]
        if kind == "key-with-everything":
            put_reader_role()
            return issue_key(
                name="everything",
                external_client_id="globex",
                scopes=("docs:*", "billing:read"),
                roles=[ROLE],
                meta={"team": "a", "nested": [1, {"x": None}]},
                expires_at=datetime.now(UTC) + timedelta(days=30),
            )[0]
        return issue_key()[0]

    def replace(case: schemathesis.Case) -> None:
        parameters = case.path_parameters or {}
        if parameters.get("key_id") in KEY_KINDS:
            parameters["key_id"] = make_key(parameters["key_id"])
        if parameters.get("name") == ROLE:
            put_reader_role()

    return replace


def test_openapi_document(app: Flask) -> None:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.get_json()
    assert document["openapi"].startswith("3.")
    for path, methods in MANAGEMENT_PATHS.items():
        assert path in document["paths"], path
        assert methods <= set(document["paths"][path]), (path, set(document["paths"][path]))
    schemes = document["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["bearer"].items()
    assert {"bearer": []} in document["security"]


@ON_SQLITE
def test_the_command_the_docs_name_writes_the_served_document(app: Flask, tmp_path: Path) -> None:
    # docs/management-api.md: flask openapi write --config-prefix KEYSERVICE_ <file>
    written = tmp_path / "openapi.json"
    result = app.test_cli_runner().invoke(args=["openapi", "write", "--config-prefix", "KEYSERVICE_", str(written)])
    assert result.exit_code == 0, result.output
    assert json.loads(written.read_text()) == app.test_client().get("/openapi.json").get_json()


@ON_SQLITE
def test_a_new_apps_document_read_by_many_threads_at_once_is_the_same_whole_document(database_url: str) -> None:
    # The views are documented at the first read: threads that all come first document them once.
    with migrated_app(database_url) as app:
        expected = app.test_client().get("/openapi.json").get_data()
    with migrated_app(database_url) as app:
        threads = 8
        start = threading.Barrier(threads)

        def read() -> tuple[int, bytes]:
            start.wait()
            response = app.test_client().get("/openapi.json")
            return response.status_code, response.get_data()

        with ThreadPoolExecutor(threads) as pool:
            answers = list(pool.map(lambda _: read(), range(threads)))
    assert answers == [(200, expected)] * threads


def test_the_document_gives_each_keys_status_and_its_values(app: Flask) -> None:
    document: dict[str, Any] = app.test_client().get("/openapi.json").get_json()
    key_object = document["paths"]["/keys/{key_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    name = key_object["schema"]["$ref"].rsplit("/", 1)[1]
    status = document["components"]["schemas"][name]["properties"]["status"]
    assert status["type"] == "string" and status["readOnly"] is True
    assert sorted(status["enum"]) == ["active", "disabled", "expired", "leaked", "revoked"]


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
# The document and the handlers' validation are the same on every database, and each
# database's handling of these bodies is tested on both by the API's own tests: this minute
# of generated requests runs on SQLite only.
@ON_SQLITE
@schema.parametrize()
# Calls may run bcrypt and issue keys: no deadline, and no complaint that generation is slow.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_api_conforms_to_its_document(
    case: schemathesis.Case, admin_key: str, stand_ins: Callable[[schemathesis.Case], None]
) -> None:
    stand_ins(case)
    case.call_and_validate(headers=bearer(admin_key), checks=CHECKS)
