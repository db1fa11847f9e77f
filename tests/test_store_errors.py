"""The store refuses in its own terms (keyservice.management.storeerrors), with no request and no HTTP
status; a host's own view that issues keys still answers what it refuses as a problem."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from flask import Flask, has_request_context

from keyservice import KeyService
from keyservice.core.errors import KeyServiceError
from keyservice.core.models import utcnow
from keyservice.core.state import current_state
from keyservice.management import store
from keyservice.management.storeerrors import AdminOnly, InvalidValue, RecordNotFound, StateConflict, StoreError

from .helpers import assert_problem

Refusal = TypeVar("Refusal", bound=StoreError)


@pytest.fixture
def session(app: Flask) -> Iterator[Any]:
    """The app's session in an app context only: no request."""
    with app.app_context():
        assert not has_request_context()
        yield current_state().db.session


def refused(error: pytest.ExceptionInfo[Refusal]) -> Refusal:
    assert not isinstance(error.value, KeyServiceError)  # nothing HTTP-shaped: no status, no location
    assert not hasattr(error.value, "status") and not hasattr(error.value, "errors")
    return error.value


def test_an_unknown_key_is_a_record_not_found(session: Any) -> None:
    for find in (store.get_key, store.lock_key):
        with pytest.raises(RecordNotFound) as raised:
            find(session, "AAAAAAAAAAAAAAAA")
        assert refused(raised).message == store.NO_SUCH_KEY


def test_unknown_roles_are_an_invalid_value_naming_each(session: Any) -> None:
    with pytest.raises(InvalidValue) as raised:
        KeyService.create_key(name="n", external_client_id="acme", roles=["zeta", "alpha"])
    error = refused(raised)
    assert (error.message, error.field) == ("no role is named 'alpha'", "roles")
    assert raised.value.problems == ["Unknown role: alpha", "Unknown role: zeta"]


def test_a_refill_without_remaining_is_an_invalid_value(session: Any) -> None:
    with pytest.raises(InvalidValue) as raised:
        KeyService.create_key(name="n", external_client_id="acme", refill={"amount": 5, "interval": "daily"})
    assert (refused(raised).field, raised.value.problems) == ("remaining", ["Required with refill."])


def test_a_cursor_the_store_never_gave_is_an_invalid_value(session: Any) -> None:
    with pytest.raises(InvalidValue) as raised:
        store.list_keys(session, limit=10, cursor="bm90IGEgY3Vyc29y")
    assert (refused(raised).field, raised.value.problems) == ("cursor", ["Not a cursor this API gave out."])


def test_an_unknown_role_is_a_record_not_found(session: Any) -> None:
    with pytest.raises(RecordNotFound) as raised:
        store.delete_role(session, "nope")
    assert refused(raised).message == "no role is named 'nope'"


def test_role_names_follow_one_rule(session: Any) -> None:
    with pytest.raises(InvalidValue) as raised:
        store.put_role(session, "Not A Name", ["reports:read"])
    assert (refused(raised).message, raised.value.field) == ("a role name is 1 to 100 of a-z 0-9 _ . : -", "name")
    with pytest.raises(RecordNotFound):
        store.delete_role(session, "Not A Name")
    assert store.put_role(session, "a" * 100, []).name == "a" * 100


def test_loosening_without_leave_is_admin_only_naming_the_fields(session: Any) -> None:
    api_key, _ = KeyService.create_key(
        name="n", external_client_id="acme", remaining=5, expires_at=utcnow() + timedelta(days=1)
    )
    session.commit()
    with pytest.raises(AdminOnly) as raised:
        store.update_key(
            session,
            store.lock_key(session, api_key.id),
            {"remaining": 50, "expires_at": None},
            "test",
            may_loosen=False,
        )
    assert sorted(refused(raised).fields) == ["expires_at", "remaining"]


def test_rotating_a_revoked_key_is_a_state_conflict(session: Any) -> None:
    api_key, _ = KeyService.create_key(name="n", external_client_id="acme")
    store.revoke_key(session, api_key, None, "test")
    session.commit()
    with pytest.raises(StateConflict) as raised:
        store.rotate_key(session, current_state().settings, api_key.id, 0, "test")
    assert refused(raised).message == "a revoked or expired key cannot be rotated"


def test_a_host_view_issuing_a_key_answers_the_stores_refusal_as_a_problem(app: Flask) -> None:
    @app.post("/issue")
    def issue() -> dict[str, str]:
        api_key, _ = KeyService.create_key(name="n", external_client_id="acme", roles=["nope"])
        return {"id": api_key.id}

    problem = assert_problem(app.test_client().post("/issue"), 422, "INVALID_INPUT")
    assert problem["errors"] == {"json": {"roles": ["Unknown role: nope"]}}
