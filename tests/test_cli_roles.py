"""flask roles set / list / delete, and keys holding roles, through click's runner."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import Result
from flask.testing import FlaskCliRunner


def invoke(runner: FlaskCliRunner, *args: str) -> Result:
    return runner.invoke(args=list(args))


def ok(runner: FlaskCliRunner, *args: str) -> str:
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def roles_json(runner: FlaskCliRunner) -> list[dict[str, Any]]:
    return json.loads(ok(runner, "roles", "list", "--json"))


def key_with_roles(runner: FlaskCliRunner, *roles: str) -> str:
    role_args = [arg for role in roles for arg in ("--role", role)]
    return ok(runner, "keys", "create", "--name", "reporting", "--client-id", "acme", *role_args).strip()


def verify(runner: FlaskCliRunner, key: str, *scopes: str) -> str:
    return invoke(
        runner, "keys", "verify", key, *[arg for scope in scopes for arg in ("--scope", scope)]
    ).stdout.strip()


def test_set_list_and_delete_a_role(runner: FlaskCliRunner) -> None:
    assert ok(runner, "roles", "set", "reader", "--scope", "reports:read") == "set role reader\n"
    assert ok(runner, "roles", "list") == "reader  [reports:read]\n"
    assert ok(runner, "roles", "delete", "reader") == "deleted role reader\n"
    assert ok(runner, "roles", "list") == ""
    assert roles_json(runner) == []


def test_list_json_gives_each_role_with_its_scopes(runner: FlaskCliRunner) -> None:
    ok(runner, "roles", "set", "writer", "--scope", "reports:read", "--scope", "reports:write")
    ok(runner, "roles", "set", "billing", "--scope", "billing:*")
    listed = roles_json(runner)
    assert [(role["name"], role["scopes"]) for role in listed] == [
        ("billing", ["billing:*"]),
        ("writer", ["reports:read", "reports:write"]),
    ]
    assert all(role["created_at"].endswith("Z") and role["updated_at"].endswith("Z") for role in listed)


def test_set_again_replaces_the_scopes(runner: FlaskCliRunner) -> None:
    ok(runner, "roles", "set", "reader", "--scope", "reports:read", "--scope", "reports:read")
    ok(runner, "roles", "set", "reader", "--scope", "other:x")
    assert [(role["name"], role["scopes"]) for role in roles_json(runner)] == [("reader", ["other:x"])]


def test_a_key_holds_its_roles_current_scopes(runner: FlaskCliRunner) -> None:
    ok(runner, "roles", "set", "reader", "--scope", "reports:read")
    key = key_with_roles(runner, "reader")
    assert verify(runner, key, "reports:read") == "VALID"
    assert verify(runner, key, "reports:write") == "INSUFFICIENT_SCOPE"
    ok(runner, "roles", "set", "reader", "--scope", "other:x")
    assert verify(runner, key, "reports:read") == "INSUFFICIENT_SCOPE"
    assert verify(runner, key, "other:x") == "VALID"


def test_a_key_loses_a_deleted_roles_scopes(runner: FlaskCliRunner) -> None:
    ok(runner, "roles", "set", "reader", "--scope", "reports:read")
    key = key_with_roles(runner, "reader")
    ok(runner, "roles", "delete", "reader")
    assert verify(runner, key, "reports:read") == "INSUFFICIENT_SCOPE"
    assert verify(runner, key) == "VALID"


def test_a_key_holds_the_scopes_of_all_its_roles_and_shows_them(runner: FlaskCliRunner) -> None:
    ok(runner, "roles", "set", "reader", "--scope", "reports:read")
    ok(runner, "roles", "set", "biller", "--scope", "billing:*")
    key = key_with_roles(runner, "reader", "biller")
    assert verify(runner, key, "reports:read", "billing:write") == "VALID"
    shown = json.loads(ok(runner, "keys", "show", key.split("_")[1], "--json"))
    assert shown["roles"] == ["reader", "biller"] and shown["scopes"] == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["keys", "create", "--name", "n", "--client-id", "acme", "--role", "nosuch"], "nosuch"),
        (["roles", "set", "Bad Name", "--scope", "a"], "role name"),
        (["roles", "set", "x" * 101, "--scope", "a"], "role name"),
        (["roles", "set", "x"], "Missing option '--scope'"),
        (["roles", "set", "x", "--scope", "Not A Scope"], "scopes"),
        (["roles", "set", "--scope", "a"], "Missing argument"),
        (["roles", "delete", "nosuch"], "nosuch"),
        (["roles", "launch"], "No such command"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(runner: FlaskCliRunner, args: list[str], message: str) -> None:
    result = invoke(runner, *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_refused_input_changes_nothing(runner: FlaskCliRunner) -> None:
    invoke(runner, "keys", "create", "--name", "n", "--client-id", "acme", "--role", "nosuch")
    invoke(runner, "roles", "set", "Bad Name", "--scope", "a")
    invoke(runner, "roles", "set", "x", "--scope", "Not A Scope")
    assert json.loads(ok(runner, "keys", "list", "--json")) == []
    assert roles_json(runner) == []
