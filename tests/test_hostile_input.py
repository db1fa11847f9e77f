"""Hostile input, on SQLite and PostgreSQL: every input gets a 4xx, never a 5xx or a traceback.

First a table of the inputs that used to answer 500 (a date past year 9999 in UTC,
JSON nested 30,000 deep, an integer of 5,000 digits, an unpaired surrogate, NUL
anywhere), each with the one answer both databases must give. Then hypothesis
fuzzers, deterministic (``derandomize``) so CI sees the same run every time: one
sends hostile JSON, strings, numbers and dates to every route of the management
API, one feeds hostile arguments to every ``flask keys``/``flask roles`` command.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from flask import Flask
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from keyservice.app import db

from .conftest import migrated_app
from .helpers import assert_problem
from .test_api_keys import ADMIN, ROUTES, Api, Route, secret_of

HUGE_DATE = "9999-12-31T23:59:59-14:00"  # a valid time, whose UTC form is in year 10000
DEEP = "[" * 30_000 + "]" * 30_000
LONG_INTEGER = "9" * 5_000
UNSTORABLE = "Must not contain NUL (\\u0000) or an unpaired surrogate (\\ud800-\\udfff)."
OUT_OF_RANGE = "Must be within the years 0001 to 9999 in UTC."
TOO_DEEP = "Must nest arrays and objects at most 32 deep."
NUMBER_TOO_LONG = "Must not have a number longer than 100 characters."
NOT_A_CURSOR = "Not a cursor this API gave out."


@dataclass
class Target:
    """A shared app, its API with an admin key, and a key to aim the routes at."""

    api: Api
    admin: str
    key_id: str


@pytest.fixture(scope="module")
def target(module_database_url: str) -> Iterator[Target]:
    """One app per database for the module: hostile input must change nothing anyway."""
    with migrated_app(module_database_url) as app:
        api = Api(app, app.test_client())
        admin = api.manager(*ADMIN)
        key_id, _ = api.issue()
        yield Target(api, admin, key_id)


def raw(body: str) -> dict[str, Any]:
    """Test-client arguments sending ``body`` as it is (json.dumps would escape differently)."""
    return {"data": body.encode(), "content_type": "application/json"}


def cursor_of(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode()


# --- the inputs of the issue, one answer on both databases ----------------------------------------

# (method, path with {id} for an existing key, request arguments, the 422's errors: location -> field -> messages)
INVALID = [
    pytest.param(
        "POST",
        "/keys",
        {"json": {"name": "n", "external_client_id": "acme", "expires_at": HUGE_DATE}},
        {"json": {"expires_at": [OUT_OF_RANGE]}},
        id="create-expires_at-past-9999-in-utc",
    ),
    pytest.param(
        "PATCH",
        "/keys/{id}",
        {"json": {"expires_at": HUGE_DATE}},
        {"json": {"expires_at": [OUT_OF_RANGE]}},
        id="update-expires_at-past-9999-in-utc",
    ),
    pytest.param(
        "GET",
        "/keys/{id}/usage?since=" + quote(HUGE_DATE),
        {},
        {"query": {"since": [OUT_OF_RANGE]}},
        id="usage-since-past-9999-in-utc",
    ),
    pytest.param(
        "GET",
        "/keys/{id}/usage?until=" + quote(HUGE_DATE),
        {},
        {"query": {"until": [OUT_OF_RANGE]}},
        id="usage-until-past-9999-in-utc",
    ),
    *(
        pytest.param(method, path, raw(DEEP), {"json": {"_schema": [TOO_DEEP]}}, id=f"{name}-30000-deep")
        for name, method, path in [
            ("create", "POST", "/keys"),
            ("update", "PATCH", "/keys/{id}"),
            ("rotate", "POST", "/keys/{id}/rotate"),
            ("verify", "POST", "/keys/verify"),
            ("role", "PUT", "/roles/reader"),
        ]
    ),
    pytest.param(
        "POST",
        "/keys",
        raw('{"name": "n", "external_client_id": "acme", "meta": {"a": %s}}' % DEEP[14_000:-14_000]),
        {"json": {"_schema": [TOO_DEEP]}},
        id="create-meta-2000-deep",
    ),
    pytest.param(
        "POST",
        "/keys",
        raw('{"name": "n", "external_client_id": "acme", "remaining": %s}' % LONG_INTEGER),
        {"json": {"_schema": [NUMBER_TOO_LONG]}},
        id="create-remaining-5000-digits",
    ),
    pytest.param(
        "PATCH",
        "/keys/{id}",
        raw('{"meta": {"n": -%s}}' % LONG_INTEGER),
        {"json": {"_schema": [NUMBER_TOO_LONG]}},
        id="update-meta-5000-digits",
    ),
    pytest.param(
        "POST",
        "/keys/{id}/rotate",
        raw('{"grace_seconds": %s}' % LONG_INTEGER),
        {"json": {"_schema": [NUMBER_TOO_LONG]}},
        id="rotate-grace-5000-digits",
    ),
    pytest.param(
        "GET",
        "/keys?limit=" + LONG_INTEGER,
        {},
        {"query": {"limit": ["Not a valid integer."]}},
        id="list-limit-5000-digits",
    ),
    pytest.param(
        "POST",
        "/keys",
        raw('{"name": "\\ud800", "external_client_id": "acme"}'),
        {"json": {"name": [UNSTORABLE]}},
        id="create-name-lone-surrogate",
    ),
    pytest.param(
        "PATCH",
        "/keys/{id}",
        raw('{"name": "a\\udc00b"}'),
        {"json": {"name": [UNSTORABLE]}},
        id="update-name-lone-low-surrogate",
    ),
    pytest.param(
        "POST",
        "/keys",
        raw('{"name": "n", "external_client_id": "acme", "meta": {"k": ["\\ud83d"]}}'),
        {"json": {"meta": {"k": {"0": [UNSTORABLE]}}}},
        id="create-meta-lone-surrogate",
    ),
    pytest.param(
        "POST",
        "/keys",
        {"json": {"name": "a\x00b", "external_client_id": "acme"}},
        {"json": {"name": [UNSTORABLE]}},
        id="create-name-nul",
    ),
    pytest.param(
        "PATCH", "/keys/{id}", {"json": {"name": "\x00"}}, {"json": {"name": [UNSTORABLE]}}, id="update-name-nul"
    ),
    pytest.param(
        "POST",
        "/keys",
        {"json": {"name": "n", "external_client_id": "acme\x00"}},
        {"json": {"external_client_id": [UNSTORABLE]}},
        id="create-client-id-nul",
    ),
    pytest.param(
        "POST",
        "/keys",
        {"json": {"name": "n", "external_client_id": "acme", "meta": {"k": "\x00"}}},
        {"json": {"meta": {"k": [UNSTORABLE]}}},
        id="create-meta-nul",
    ),
    pytest.param(
        "POST",
        "/keys",
        {"json": {"name": "n", "external_client_id": "acme", "meta": {"k\x00": 1}}},
        {"json": {"meta": [UNSTORABLE]}},
        id="create-meta-name-nul",
    ),
    pytest.param(
        "POST",
        "/keys",
        {"json": {"name": "n", "external_client_id": "acme", "scopes": ["a\x00"]}},
        {"json": {"scopes": {"0": [UNSTORABLE]}}},
        id="create-scope-nul",
    ),
    pytest.param(
        "PATCH",
        "/keys/{id}",
        {"json": {"roles": ["reader", "r\x00"]}},
        {"json": {"roles": {"1": [UNSTORABLE]}}},
        id="update-role-nul",
    ),
    pytest.param(
        "POST", "/keys/verify", {"json": {"key": "sk_\x00"}}, {"json": {"key": [UNSTORABLE]}}, id="verify-key-nul"
    ),
    pytest.param(
        "PUT",
        "/roles/reader",
        {"json": {"scopes": ["\x00"]}},
        {"json": {"scopes": {"0": [UNSTORABLE]}}},
        id="role-scope-nul",
    ),
    pytest.param("DELETE", "/keys/{id}?reason=a%00b", {}, {"query": {"reason": [UNSTORABLE]}}, id="revoke-reason-nul"),
    pytest.param(
        "GET",
        "/keys?external_client_id=a%00b",
        {},
        {"query": {"external_client_id": [UNSTORABLE]}},
        id="list-client-id-nul",
    ),
    pytest.param("GET", "/keys?cursor=a%00b", {}, {"query": {"cursor": [UNSTORABLE]}}, id="list-cursor-nul"),
    pytest.param(
        "GET",
        "/keys?cursor=" + cursor_of("2024-01-01T00:00:00+00:00", "AAAAAAAAAAAAAAA\x00"),
        {},
        {"query": {"cursor": [NOT_A_CURSOR]}},
        id="list-cursor-holding-a-nul-id",
    ),
    pytest.param(
        "GET",
        "/keys?cursor=" + cursor_of("2024-01-01T00:00:00\x00", "AAAAAAAAAAAAAAAA"),
        {},
        {"query": {"cursor": [NOT_A_CURSOR]}},
        id="list-cursor-holding-a-nul-time",
    ),
    pytest.param(
        "GET",
        "/keys?cursor=" + cursor_of(HUGE_DATE, "AAAAAAAAAAAAAAAA"),
        {},
        {"query": {"cursor": [NOT_A_CURSOR]}},
        id="list-cursor-past-9999",
    ),
    pytest.param(
        "PUT",
        "/roles/a%00b",
        {"json": {"scopes": []}},
        {"path": {"name": ["Must be 1 to 100 of a-z 0-9 _ . : -."]}},
        id="role-name-nul",
    ),
]


@pytest.mark.parametrize("method, path, kwargs, errors", INVALID)
def test_each_input_of_the_issue_is_the_same_422_on_both_databases(
    target: Target,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    errors: dict[str, Any],
) -> None:
    response = target.api.call(method, path.format(id=target.key_id), target.admin, **kwargs)
    body = assert_problem(response, 422, "INVALID_INPUT")
    assert body["errors"] == errors
    assert_no_error_logged(caplog)


@pytest.mark.parametrize(
    "route",
    [
        *(
            replace(route, path=route.path.replace("{id}", "AAAAAAA%00AAAAAAAA"))
            for route in ROUTES
            if "{id}" in route.path
        ),
        Route("DELETE", "/roles/a%00b", "keys:admin"),
    ],
    ids=str,
)
def test_a_nul_in_a_path_id_is_not_found_on_both_databases(
    target: Target, caplog: pytest.LogCaptureFixture, route: Route
) -> None:
    response = target.api.call(
        route.method, route.path, target.admin, **({} if route.body is None else {"json": route.body})
    )
    assert_problem(response, 404, "RESOURCE_NOT_FOUND")
    assert_no_error_logged(caplog)


def assert_no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [record.getMessage() for record in errors]
    assert "Traceback" not in caplog.text


def test_a_storage_errors_log_line_holds_no_statement_parameter(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with migrated_app(database_url) as app:
        with app.app_context():
            assert db.engine.hide_parameters

        @app.get("/broken")
        def broken() -> Any:
            db.session.execute(text("SELECT * FROM no_such_table WHERE x = :x"), {"x": "parameter-value-7"})
            return {}

        response = app.test_client().get("/broken")
    assert response.status_code >= 500
    assert "parameter-value-7" not in caplog.text and "no_such_table" not in caplog.text
    assert "parameter-value-7" not in response.get_data(as_text=True)


# --- a fuzzer over every route ------------------------------------------------------------------------

SPECIAL_CHARACTERS = [
    "\x00",
    "\ud800",
    "\udbff",
    "\udc00",
    "\udfff",
    "\udcff",
    "\u202e",
    "\ufeff",
    "\uffff",
    "\U0001f600",
    "\\",
    '"',
    "'",
    "%",
    "/",
    "?",
    "#",
    "\n",
    "\t",
    " ",
]
hostile_characters = st.one_of(st.characters(), st.sampled_from(SPECIAL_CHARACTERS))
hostile_text = st.one_of(
    st.lists(hostile_characters, max_size=30).map("".join),
    st.sampled_from(
        [
            "",
            "a" * 201,
            "x" * 1001,
            "reports:read",
            "keys:*",
            "reader",
            "AAAAAAAAAAAAAAAA",
            "sk_AAAAAAAAAAAAAAAA_" + "a" * 38,
            "hour",
            "day",
            "daily",
            "monthly",
            "true",
            "null",
        ]
    ),
)
hostile_dates = st.one_of(
    st.sampled_from(
        [
            HUGE_DATE,
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-01-01T25:00:00Z",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00.9999999Z",
            "+12024-01-01T00:00:00Z",
            "2024-W01-1",
            "1e400",
            "now",
        ]
    ),
    st.builds(
        lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
        st.datetimes(),
        st.integers(-1439, 1439),
    ),
)
hostile_numbers = st.one_of(
    st.integers(),
    st.integers(-(10**120), 10**120),
    st.floats(),
    st.sampled_from([0, -1, 2**31, 2**63, 1.5]),
)
hostile_scalars = st.one_of(st.none(), st.booleans(), hostile_numbers, hostile_text, hostile_dates)
hostile_values = st.recursive(
    hostile_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=12,
)


def _deep(depth: int, opener: str) -> str:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return '{"a":' * depth + "1" + "}" * depth
    return opener * depth + closer * depth


hostile_raw_bodies = st.one_of(
    st.builds(_deep, st.integers(30, 20_000), st.sampled_from("[{")),
    st.builds(
        lambda digits, sign: '{"remaining": %s%s}' % (sign, "9" * digits),
        st.integers(90, 10_000),
        st.sampled_from(["", "-"]),
    ),
    st.sampled_from(
        [
            '{"name": "\\u0000"}',
            '{"name": "\\ud800"}',
            '{"name": "\\udc00\\ud800"}',
            '{"meta": {"x": NaN}}',
            '{"meta": {"x": -Infinity}}',
            '{"meta": {"x": 1e400}}',
            '{"name": "\\\\u0000"}',
            '{"key": "sk_\\u0000"}',
            '{"name": ',
            '"\\',
            "[" * 40,
            "\x00",
            '{"a": "' + "[" * 100 + '"}',
            "1" * 101,
            '{"grace_seconds": 1e999}',
            "{}",
            "[]",
            "null",
        ]
    ),
    st.binary(max_size=40).map(lambda data: data.decode("latin-1")),
)

# The fields each route takes, from its schema, and its query arguments.
BODY_FIELDS = {
    ("POST", "/keys"): [
        "name",
        "external_client_id",
        "scopes",
        "roles",
        "meta",
        "expires_at",
        "remaining",
        "refill",
        "ratelimit",
    ],
    ("PATCH", "/keys/{id}"): [
        "name",
        "scopes",
        "roles",
        "meta",
        "expires_at",
        "enabled",
        "remaining",
        "refill",
        "ratelimit",
    ],
    ("POST", "/keys/{id}/rotate"): ["grace_seconds"],
    ("POST", "/keys/verify"): ["key", "scopes"],
    ("PUT", "/roles/reader"): ["scopes"],
}
QUERY_FIELDS = {
    ("GET", "/keys"): ["external_client_id", "include_revoked", "limit", "cursor"],
    ("DELETE", "/keys/{id}"): ["reason"],
    ("GET", "/keys/{id}/usage"): ["granularity", "since", "until"],
}
FIELD_VALUES = {
    "expires_at": hostile_dates,
    "since": hostile_dates,
    "until": hostile_dates,
    "remaining": hostile_numbers,
    "grace_seconds": hostile_numbers,
    "limit": hostile_numbers,
}


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """(method, path, test-client arguments) of one hostile request to one route."""
    route = draw(st.sampled_from(ROUTES))
    key_id = draw(st.one_of(st.just("{id}"), hostile_text))
    path = (
        route.path
        if key_id == "{id}"
        else route.path.replace("{id}", quote(key_id.encode("utf-8", "surrogatepass"), safe=""))
    )
    kwargs: dict[str, Any] = {}
    fields = BODY_FIELDS.get((route.method, route.path))
    if fields is not None:
        kwargs = draw(
            st.one_of(
                st.fixed_dictionaries(
                    {}, optional={name: FIELD_VALUES.get(name, hostile_values) for name in fields}
                ).map(lambda body: raw(json.dumps(body))),
                hostile_raw_bodies.map(raw),
            )
        )
    query = draw(
        st.dictionaries(
            st.sampled_from(QUERY_FIELDS.get((route.method, route.path), ["x"])),
            st.one_of(hostile_text, hostile_dates, hostile_numbers.map(str)),
            max_size=3,
        )
    )
    if query:
        path += "?" + urlencode({name: value.encode("utf-8", "surrogatepass") for name, value in query.items()})
    return route.method, path, kwargs


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=hostile_requests())
def test_no_route_answers_hostile_input_with_a_5xx(
    target: Target, caplog: pytest.LogCaptureFixture, request: tuple[str, str, dict[str, Any]]
) -> None:
    method, path, kwargs = request
    caplog.clear()
    response = target.api.call(method, path.format(id=target.key_id), target.admin, **kwargs)
    event(f"{response.status_code}")  # --hypothesis-show-statistics: what the run reached
    assert response.status_code < 500, (method, path, response.get_data(as_text=True))
    if response.status_code >= 400:
        assert_problem(response, response.status_code)
    assert_no_error_logged(caplog)


# --- a fuzzer over the command line -------------------------------------------------------------------


def argv_text(data: bytes) -> str:
    """What ``sys.argv`` holds for these bytes: undecodable ones become lone surrogates."""
    return data.decode("utf-8", "surrogateescape")


cli_text = st.one_of(hostile_text, st.binary(max_size=12).map(argv_text))
KEY_ID_COMMANDS = ["show", "usage", "revoke", "rotate", "enable", "disable"]


@st.composite
def hostile_command_lines(draw: st.DrawFn, key: str) -> tuple[list[str], bool]:
    """(arguments, whether a whole key was given where a key or key id goes)."""
    mistyped = key[:-1] + ("A" if key[-1] != "A" else "B")
    key_like = st.sampled_from([key, mistyped, key.split("_")[1], key + " ", key[:-2]])
    value = st.one_of(cli_text, hostile_dates, hostile_numbers.map(str))
    command = draw(
        st.sampled_from([*KEY_ID_COMMANDS, "create", "list", "verify", "token", "roles-set", "roles-delete"])
    )
    if command in KEY_ID_COMMANDS:
        target_key = draw(st.one_of(key_like, cli_text))
        options = {"usage": ["--since", "--until", "--granularity"], "revoke": ["--reason"], "rotate": ["--grace"]}
        extra = draw(st.lists(st.tuples(st.sampled_from(options.get(command, ["--json"])), value), max_size=2))
        args = ["keys", command, target_key, *(part for pair in extra for part in pair)]
        return args, target_key in (key, mistyped)
    if command == "create":
        options = ["--name", "--client-id", "--scope", "--role", "--expires-in", "--meta", "--remaining", "--ratelimit"]
        extra = draw(st.lists(st.tuples(st.sampled_from(options), st.one_of(value, key_like)), max_size=4))
        return ["keys", "create", "--name", "n", "--client-id", "acme", *(p for pair in extra for p in pair)], False
    if command == "list":
        return ["keys", "list", "--client-id", draw(value), "--json"], False
    if command in ("verify", "token"):
        given_key = draw(st.one_of(key_like, cli_text))
        return ["keys", command, given_key, "--scope", draw(cli_text)], given_key in (key, mistyped)
    if command == "roles-set":
        return ["roles", "set", draw(cli_text), "--scope", draw(cli_text)], False
    return ["roles", "delete", draw(st.one_of(cli_text, key_like))], False


@pytest.fixture(scope="module")
def cli_target(module_database_url: str) -> Iterator[tuple[Flask, str]]:
    """A shared app per database, and a key of it that the fuzzer's command lines aim at."""
    with migrated_app(module_database_url) as app:
        created = app.test_cli_runner().invoke(args=["keys", "create", "--name", "fuzzed", "--client-id", "acme"])
        yield app, created.stdout.strip()


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_command_line_ends_in_a_traceback_or_prints_a_secret_it_was_given(
    cli_target: tuple[Flask, str], caplog: pytest.LogCaptureFixture, data: st.DataObject
) -> None:
    app, key = cli_target
    args, secret_given = data.draw(hostile_command_lines(key))
    caplog.clear()
    result = app.test_cli_runner().invoke(args=args)
    event(f"{args[1]} exit {result.exit_code}")
    output = result.stdout + result.stderr
    assert result.exit_code in (0, 1, 2), (args, output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    assert "Traceback" not in output
    if result.exit_code == 2:
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("Error: "), (args, output)
    if secret_given or result.exit_code != 0:
        # The mistyped key differs only in its checksum: its secret is the key's.
        assert secret_of(key) not in output, args
    assert_no_error_logged(caplog)
