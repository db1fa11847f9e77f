"""flask keys ... through click's runner, and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from keyservice.app import db
from keyservice.core.models import ApiKey, utcnow

from .helpers import KEY_FORMAT, bearer
from .servers import flask_cli, service_environment


def create(runner: FlaskCliRunner, *extra: str) -> str:
    result = runner.invoke(args=["keys", "create", "--name", "deploy bot", "--client-id", "acme", *extra])
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_create_prints_the_key_once_and_nothing_else(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["keys", "create", "--name", "n", "--client-id", "acme"])
    assert result.exit_code == 0
    assert KEY_FORMAT.fullmatch(result.stdout.strip())
    assert "will not be shown again" in result.stderr


def test_create_json_gives_the_whole_object_and_the_key(runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        args=[
            "keys",
            "create",
            "--name",
            "reports",
            "--client-id",
            "acme",
            "--scope",
            "reports:read",
            "--scope",
            "reports:write",
            "--expires-in",
            "30d",
            "--meta",
            '{"plan": "pro"}',
            "--json",
        ]
    )
    assert result.exit_code == 0, result.stderr
    created = json.loads(result.stdout)
    assert KEY_FORMAT.fullmatch(created["key"])
    assert created["key"].split("_")[1] == created["id"]
    assert created["start"] == f"sk_{created['id']}"
    assert created["scopes"] == ["reports:read", "reports:write"]
    assert created["meta"] == {"plan": "pro"}
    assert created["expires_at"].endswith("Z") and created["revoked_at"] is None
    assert created["created_by"] == "cli"


def test_list_and_show_never_give_the_key_or_its_hash(runner: FlaskCliRunner) -> None:
    key = create(runner)
    key_id = key.split("_")[1]
    outputs = [
        runner.invoke(args=args).stdout
        for args in (
            ["keys", "list"],
            ["keys", "list", "--json"],
            ["keys", "show", key_id],
            ["keys", "show", key_id, "--json"],
        )
    ]
    assert all(key_id in output for output in outputs)
    for output in outputs:
        assert key not in output and key.split("_")[2] not in output and "$2b$" not in output
    listed = json.loads(outputs[1])
    assert [item["id"] for item in listed] == [key_id]
    assert "secret_hash" not in listed[0] and "key" not in listed[0]


def test_list_prints_a_header_and_aligned_columns(runner: FlaskCliRunner) -> None:
    first = create(runner, "--scope", "c:read").split("_")[1]
    runner.invoke(
        args=[
            "keys",
            "create",
            "--name",
            "a much longer name",
            "--client-id",
            "globex-industries",
            "--scope",
            "a:read",
            "--scope",
            "b:write",
        ]
    )
    runner.invoke(args=["keys", "disable", first])
    header, *rows = runner.invoke(args=["keys", "list"]).stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "CLIENT", "NAME", "SCOPES"]
    assert len(rows) == 2 and rows[1].split()[:3] == [first, "disabled", "acme"]
    for column in ("STATUS", "CLIENT", "NAME", "SCOPES"):  # each column starts where its heading does
        start = header.index(column)
        assert all(row[start - 2 : start] == "  " and row[start] != " " for row in rows), (column, rows)
    assert rows[0].endswith("a:read b:write")


def test_list_filters_by_client_and_hides_revoked_keys(runner: FlaskCliRunner) -> None:
    first = create(runner).split("_")[1]
    other = runner.invoke(args=["keys", "create", "--name", "n", "--client-id", "globex"]).stdout.split("_")[1]
    runner.invoke(args=["keys", "revoke", first])

    def listed(*args: str) -> list[str]:
        return [item["id"] for item in json.loads(runner.invoke(args=["keys", "list", "--json", *args]).stdout)]

    assert listed() == [other]
    assert listed("--include-revoked") == [other, first]
    assert listed("--client-id", "acme", "--include-revoked") == [first]


def test_verify_exits_0_for_a_valid_key_and_1_with_the_code_otherwise(runner: FlaskCliRunner) -> None:
    key = create(runner, "--scope", "reports:read")
    valid = runner.invoke(args=["keys", "verify", key, "--scope", "reports:read"])
    assert (valid.exit_code, valid.stdout) == (0, "VALID\n")
    assert key not in valid.output
    assert runner.invoke(args=["keys", "verify", "-"], input=key + "\n").stdout == "VALID\n"
    for args, code in [([key[:-1]], "MALFORMED"), ([key, "--scope", "admin"], "INSUFFICIENT_SCOPE")]:
        result = runner.invoke(args=["keys", "verify", *args])
        assert (result.exit_code, result.stdout) == (1, f"{code}\n")


def test_revoke_disable_and_enable_change_what_verify_says(runner: FlaskCliRunner) -> None:
    key = create(runner)
    key_id = key.split("_")[1]

    def verify() -> str:
        return runner.invoke(args=["keys", "verify", key]).stdout.strip()

    assert runner.invoke(args=["keys", "disable", key_id]).exit_code == 0
    assert verify() == "DISABLED"
    assert runner.invoke(args=["keys", "enable", key_id]).exit_code == 0
    assert verify() == "VALID"
    revoked = runner.invoke(args=["keys", "revoke", key_id, "--reason", "laptop stolen"])
    assert revoked.exit_code == 0
    assert verify() == "REVOKED"
    again = runner.invoke(args=["keys", "revoke", key_id])
    assert again.exit_code == 0 and "already revoked" in again.stderr
    shown = json.loads(runner.invoke(args=["keys", "show", key_id, "--json"]).stdout)
    assert shown["revocation_reason"] == "laptop stolen" and shown["revoked_at"].endswith("Z")


@pytest.mark.parametrize(
    "args, message",
    [
        (["keys", "create", "--client-id", "acme"], "Missing option '--name'"),
        (["keys", "create", "--name", "n"], "Missing option '--client-id'"),
        (["keys", "create", "--name", "n", "--client-id", "c", "--expires-in", "tomorrow"], "--expires-in"),
        (["keys", "create", "--name", "n", "--client-id", "c", "--expires-in", "-5d"], "--expires-in"),
        (["keys", "create", "--name", "n", "--client-id", "c", "--expires-in", "0s"], "--expires-in"),
        (["keys", "create", "--name", "n", "--client-id", "c", "--meta", "{oops"], "--meta"),
        (["keys", "create", "--name", "n", "--client-id", "c", "--meta", "[1]"], "--meta"),
        (["keys", "create", "--name", "n", "--client-id", "c", "--scope", "Not A Scope"], "scope"),
        (["keys", "create", "--name", "x" * 201, "--client-id", "c"], "name"),
        (["keys", "create", "--name", "n", "--client-id", "c", "--meta", json.dumps({"x": "y" * 5000})], "meta"),
        (["keys", "show", "nosuchkey"], "not a key id (16 letters and digits) or a whole key"),
        (["keys", "revoke", "AAAAAAAAAAAAAAAA"], "No key has this id"),
        (["keys", "disable", "nosuchkey"], "not a key id"),
        (["keys", "verify"], "Missing argument 'KEY'"),
        (["keys", "launch"], "No such command"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(runner: FlaskCliRunner, args: list[str], message: str) -> None:
    result = runner.invoke(args=args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["show"], ["usage"], ["disable"], ["enable"], ["rotate"], ["revoke"]])
def test_a_whole_key_is_taken_wherever_a_key_id_is(runner: FlaskCliRunner, command: list[str]) -> None:
    key = create(runner)
    result = runner.invoke(args=["keys", *command, key])
    assert result.exit_code == 0, result.stderr
    assert key.split("_")[2] not in result.stdout + result.stderr
    shown = json.loads(runner.invoke(args=["keys", "show", key.split("_")[1], "--json"]).stdout)
    assert (shown["revoked_at"] is not None) == (command == ["revoke"])


@pytest.mark.parametrize("command", ["show", "usage", "disable", "enable", "rotate", "revoke"])
def test_a_mistyped_key_is_refused_in_one_line_without_repeating_it(runner: FlaskCliRunner, command: str) -> None:
    key = create(runner)
    mistyped = key[:-1] + ("A" if key[-1] != "A" else "B")  # the checksum no longer holds
    result = runner.invoke(args=["keys", command, mistyped])
    assert result.exit_code == 2
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert "not a key id (16 letters and digits) or a whole key" in result.stderr
    assert mistyped.split("_")[2][:20] not in result.stderr


def run_cli(database_url: str, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    environ = service_environment(database_url, KEYSERVICE_BCRYPT_ROUNDS="4")
    return flask_cli({**environ, **settings}, *args)


@pytest.mark.slow
def test_the_real_command_line(database_url: str) -> None:
    assert run_cli(database_url, "db", "upgrade").returncode == 0
    created = run_cli(database_url, "keys", "create", "--name", "n", "--client-id", "acme")
    assert created.returncode == 0 and KEY_FORMAT.fullmatch(created.stdout.strip())
    bad = run_cli(database_url, "keys", "create", "--name", "n", "--client-id", "c", "--expires-in", "soon")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, value",
    [
        ("KEYSERVICE_BCRYPT_ROUNDS", "3"),
        ("KEYSERVICE_BCRYPT_ROUNDS", "twelve"),
        ("KEYSERVICE_KEY_PREFIX", "Live_"),
        ("KEYSERVICE_CACHE_TTL", "nan"),
        ("KEYSERVICE_HEADER", "X API Key"),
        ("KEYSERVICE_FAILED_VERIFY_LIMIT_PER_KEY", "lots"),
        ("KEYSERVICE_BCRYPT_ROUND", "12"),
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "mysql://db.example/keys"),
    ],
)
def test_a_wrong_setting_stops_start_up_with_one_line_naming_it(tmp_path: Path, name: str, value: str) -> None:
    result = run_cli(f"sqlite:///{tmp_path / 'cli.db'}", "keys", "list", **{name: value})
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("keyservice: ") and name in result.stderr


def test_list_show_and_the_api_give_each_key_the_same_status(app: Flask, runner: FlaskCliRunner) -> None:
    statuses = ("active", "disabled", "expired", "revoked", "leaked")
    ids = {status: create(runner).split("_")[1] for status in statuses}
    runner.invoke(args=["keys", "disable", ids["disabled"]])
    runner.invoke(args=["keys", "revoke", ids["revoked"]])
    runner.invoke(args=["keys", "revoke", ids["leaked"], "--reason", "leaked"])
    with app.app_context():
        db.session.get(ApiKey, ids["expired"]).expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    admin = create(runner, "--scope", "keys:admin")
    listed = runner.invoke(args=["keys", "list", "--include-revoked"]).stdout.splitlines()[1:]
    in_list = {row.split()[0]: row.split()[1] for row in listed}
    in_api = {
        item["id"]: item["status"]
        for item in app.test_client().get("/keys?include_revoked=true", headers=bearer(admin)).get_json()["items"]
    }
    for status, key_id in ids.items():
        shown = runner.invoke(args=["keys", "show", key_id]).stdout
        assert f"status             {status}\n" in shown
        assert json.loads(runner.invoke(args=["keys", "show", key_id, "--json"]).stdout)["status"] == status
        assert in_list[key_id] == in_api[key_id] == status
