"""Settings from the environment (the standalone service) and from a host's app config: the same names,
the same checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from keyservice import create_app
from keyservice.core.config import DATABASE_URL, DEFAULTS, SETTINGS, ConfigError, config_from_environment

from .conftest import TEST_CONFIG
from .servers import flask_cli, service_environment

REDOC_SCRIPT = "https://cdn.example.com/redoc.standalone.js"


def service(tmp_path: Path) -> Flask:
    """The standalone service, its settings from the environment (no migration: only its routes are asked)."""
    return create_app({**TEST_CONFIG, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'keys.db'}"})


def test_every_setting_is_taken_from_the_environment() -> None:
    environ = {name: str(value) for name, value in DEFAULTS.items()}
    assert config_from_environment(environ) == environ


def test_the_openapi_document_moves_where_the_environment_says(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEYSERVICE_OPENAPI_URL_PREFIX", "/docs")
    monkeypatch.setenv("KEYSERVICE_OPENAPI_JSON_PATH", " spec/openapi.json ")
    client = service(tmp_path).test_client()
    moved = client.get("/docs/spec/openapi.json")
    assert moved.status_code == 200
    assert "/keys" in moved.get_json()["paths"]
    assert client.get("/openapi.json").status_code == 404


def test_a_viewer_of_the_document_is_served_when_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KEYSERVICE_OPENAPI_REDOC_PATH", "redoc")
    monkeypatch.setenv("KEYSERVICE_OPENAPI_REDOC_URL", REDOC_SCRIPT)
    page = service(tmp_path).test_client().get("/redoc")
    assert page.status_code == 200
    assert REDOC_SCRIPT in page.get_data(as_text=True)


def test_without_settings_the_document_is_at_openapi_json_and_no_viewer_is_served(tmp_path: Path) -> None:
    client = service(tmp_path).test_client()
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/redoc").status_code == 404


BAD_OPENAPI_SETTINGS = [
    ({"KEYSERVICE_OPENAPI_JSON_PATH": "spec/<int:version>"}, "KEYSERVICE_OPENAPI_JSON_PATH"),
    ({"KEYSERVICE_OPENAPI_JSON_PATH": "  "}, "KEYSERVICE_OPENAPI_JSON_PATH"),
    ({"KEYSERVICE_OPENAPI_URL_PREFIX": "/docs//api"}, "KEYSERVICE_OPENAPI_URL_PREFIX"),
    ({"KEYSERVICE_OPENAPI_URL_PREFIX": "/docs?x=1"}, "KEYSERVICE_OPENAPI_URL_PREFIX"),
    ({"KEYSERVICE_OPENAPI_REDOC_PATH": "redoc"}, "KEYSERVICE_OPENAPI_REDOC_URL"),
    (
        {"KEYSERVICE_OPENAPI_SWAGGER_UI_PATH": "swagger", "KEYSERVICE_OPENAPI_SWAGGER_UI_URL": "javascript:x"},
        "KEYSERVICE_OPENAPI_SWAGGER_UI_URL",
    ),
]


@pytest.mark.parametrize("settings, named", BAD_OPENAPI_SETTINGS)
def test_a_bad_openapi_setting_in_the_environment_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: dict[str, str], named: str
) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named) as refused:
        service(tmp_path)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("settings, named", BAD_OPENAPI_SETTINGS)
def test_a_bad_openapi_setting_in_the_app_config_is_refused_the_same_way(
    tmp_path: Path, settings: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        create_app({**TEST_CONFIG, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'keys.db'}", **settings})


def test_an_unknown_name_in_the_environment_is_still_refused() -> None:
    with pytest.raises(ConfigError, match="KEYSERVICE_OPENAPI_JSON_PAHT is not a keyservice setting"):
        config_from_environment({"KEYSERVICE_OPENAPI_JSON_PAHT": "openapi.json"})


def test_a_database_url_of_another_database_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql+pymysql://u@localhost/keys")
    with pytest.raises(ConfigError) as refused:
        create_app(TEST_CONFIG)
    assert str(refused.value) == (
        "DATABASE_URL must be a SQLite or PostgreSQL database (keyservice's SQL is written for those), not mysql"
    )


@pytest.mark.slow
def test_the_installed_packages_cli_prints_a_wrong_setting_without_a_traceback(tmp_path: Path) -> None:
    result = flask_cli(service_environment("oracle://u@localhost/keys"), "keys", "list", app="keyservice")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: DATABASE_URL must be a SQLite or PostgreSQL database"
        " (keyservice's SQL is written for those), not oracle\n"
    )


def test_every_setting_is_declared_once_with_a_description() -> None:
    names = [setting.name for setting in SETTINGS]
    assert len(names) == len(set(names)) == len(DEFAULTS)
    for setting in (*SETTINGS, DATABASE_URL):
        assert setting.description.endswith("."), setting.name
