"""Settings: their defaults, where they come from, and how they are checked.

Every setting is a ``KEYSERVICE_*`` key of ``app.config``. The standalone
service fills them from environment variables of the same names; a host app
sets them in its own config. A wrong value raises :class:`ConfigError` with a
one-line message that names the setting.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import click
from cryptography.fernet import Fernet
from limits import RateLimitItem, parse
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .crypto import PREFIX_PATTERN


@dataclass(frozen=True)
class Setting:
    """One setting, declared once: its name, its default, and what it does (the docs' configuration
    reference is rendered from these)."""

    name: str
    default: Any
    description: str


DEPRECATED_FERNET = (
    "Deprecated: derived from KEYSERVICE_SECRET_KEY now; still read (what it encrypted stays readable)"
    " for one release, with a warning."
)

SETTINGS: tuple[Setting, ...] = (
    Setting("KEYSERVICE_KEY_PREFIX", "sk", "The keys' prefix (``sk_...``): 1 to 16 lowercase letters or digits."),
    Setting("KEYSERVICE_BCRYPT_ROUNDS", 12, "The bcrypt cost of each key's stored hash (4 to 31)."),
    Setting(
        "KEYSERVICE_HEADER",
        "X-API-Key",
        "A second header a key may come in, besides ``Authorization: Bearer``; empty turns it off.",
    ),
    Setting(
        "KEYSERVICE_CACHE_TTL",
        0.5,
        "Seconds between a worker's reads of the change feed: the longest a revoke, disable, expiry change,"
        " PATCH or rotation takes to reach every worker, and the longest a worker trusts its rows without the"
        " database.",
    ),
    Setting(
        "KEYSERVICE_CACHE_SIZE",
        10_000,
        "How many keys' rows (and checked access tokens) each worker keeps in memory.",
    ),
    Setting(
        "KEYSERVICE_CACHE_MAX_AGE",
        60.0,
        "Seconds a worker keeps a key's row without a change before reading it again, a safety net (1 to 300).",
    ),
    Setting(
        "KEYSERVICE_SECRET_KEY",
        "",
        "The deployment secret: at least 32 random printable ASCII characters, no space or comma. Every key"
        " keyservice needs is derived from it with HKDF, one per purpose (the checked-keys HMAC, the signing"
        " keys at rest, the webhook secrets at rest). Unset on SQLite: a random one is made once, as text, in a"
        " file beside the database (``instance/keyservice.db.secret`` by default, mode 0600; the log says so)."
        " Required on PostgreSQL.",
    ),
    Setting(
        "KEYSERVICE_SECRET_KEY_FALLBACKS",
        "",
        "Earlier deployment secrets, separated by commas, still accepted for reading while you rotate: what"
        " they encrypted stays readable and checked keys are found again; ``flask keys reencrypt`` moves"
        " everything to the current secret.",
    ),
    Setting(
        "KEYSERVICE_FAILED_VERIFY_LIMIT_PER_CLIENT",
        "5/minute",
        "bcrypt checks allowed per key id and client address, per machine (per deployment with Redis).",
    ),
    Setting(
        "KEYSERVICE_FAILED_VERIFY_LIMIT_PER_KEY",
        "30/minute",
        "bcrypt checks allowed per key id from all addresses, per machine (per deployment with Redis): the"
        " ceiling on a flood's bcrypt work.",
    ),
    Setting(
        "KEYSERVICE_RATELIMIT_STORAGE_URL",
        "",
        "Where rate-limit windows, the checked keys and the failed-check budgets live: empty for LMDB files"
        " every worker of the machine shares, or ``redis://host:6379/0`` (``rediss://``, ``unix://``) for"
        " many machines.",
    ),
    Setting(
        "KEYSERVICE_RATELIMIT_FAIL_OPEN",
        False,
        "When that storage cannot be reached: ``false`` answers 503 ``UNAVAILABLE``; ``true`` lets requests"
        " through and logs a warning.",
    ),
    Setting(
        "KEYSERVICE_USAGE_FLUSH_INTERVAL",
        10.0,
        "Seconds between a worker's writes of its usage counts and ``last_used_at``: what a killed worker can lose.",
    ),
    Setting(
        "KEYSERVICE_LOG_FORMAT",
        "json",
        "The service's request log lines (``create_app()``): ``json`` (one object per line) or ``text``.",
    ),
    Setting(
        "KEYSERVICE_PROXIES",
        0,
        "How many proxies in front of the standalone service set ``X-Forwarded-For`` (1 behind the shipped"
        " nginx site); the caller's address is taken from them. Leave it 0 without a proxy, or a caller could"
        " choose its own address.",
    ),
    Setting(
        "KEYSERVICE_WEBHOOKS_ENCRYPTION_KEY",
        "",
        "Fernet keys (comma-separated: the first encrypts, all decrypt) the webhook signing secrets are stored"
        " under. " + DEPRECATED_FERNET,
    ),
    Setting(
        "KEYSERVICE_WEBHOOKS_ALLOW_PRIVATE",
        False,
        "``true`` lets webhook URLs reach private, loopback and link-local addresses.",
    ),
    Setting(
        "KEYSERVICE_WEBHOOKS_SEND",
        True,
        "Whether this deployment's workers run a webhook sender (``false``: another deployment on the same"
        " database sends).",
    ),
    Setting("KEYSERVICE_WEBHOOKS_TIMEOUT", 5.0, "Seconds for one delivery attempt's connect and each read."),
    Setting(
        "KEYSERVICE_WEBHOOKS_RETRY_DELAY",
        30.0,
        "Seconds before a failed delivery's first retry; each next one waits twice as long, at most an hour.",
    ),
    Setting(
        "KEYSERVICE_WEBHOOKS_RETRY_FOR",
        86_400.0,
        "Seconds after its event (or a redelivery) a delivery is retried before it is marked failed.",
    ),
    Setting(
        "KEYSERVICE_WEBHOOKS_POLL_INTERVAL",
        1.0,
        "Seconds an idle sender waits before it looks for due deliveries (and expiring keys) again.",
    ),
    Setting(
        "KEYSERVICE_WEBHOOKS_EXPIRING_BEFORE",
        7 * 86_400.0,
        "Seconds before a key's ``expires_at`` that ``key.expiring`` is sent (0: never).",
    ),
    Setting(
        "KEYSERVICE_SECRET_SCANNING_KEYS_URL",
        "https://api.github.com/meta/public_keys/secret_scanning",
        "Where GitHub's secret scanning public keys are listed (leak reports are checked against them).",
    ),
    Setting("KEYSERVICE_TOKEN_LIFETIME", 300, "Seconds an access token lives (1 to 86400)."),
    Setting(
        "KEYSERVICE_TOKEN_ISSUER",
        "",
        "The tokens' ``iss``, the service's public URL. Unset: on one machine behind gunicorn with the shipped"
        " settings (without ``--preload``), the bind address (``http://127.0.0.1:8000``; bound to all addresses,"
        " the machine's name); behind a proxy (KEYSERVICE_PROXIES) or on"
        " PostgreSQL or Redis (several instances) the service refuses to start until it is set. Never taken"
        " from a request's Host header: without it elsewhere (``flask run``, a host app), ``POST /oauth/token``"
        " answers 409 ``TOKENS_NOT_CONFIGURED``.",
    ),
    Setting(
        "KEYSERVICE_TOKEN_AUDIENCE",
        "",
        "The tokens' ``aud``, which ``@require_key`` requires; empty: the issuer.",
    ),
    Setting(
        "KEYSERVICE_JWKS_MAX_AGE",
        300,
        "Seconds clients may cache the JWKS and the metadata (``Cache-Control``); a rotated-in signing key"
        " signs only after longer.",
    ),
    Setting(
        "KEYSERVICE_SIGNING_KEYS_ENCRYPTION_KEY",
        "",
        "Fernet keys (comma-separated: the first encrypts, all decrypt) the token signing keys are stored"
        " under. " + DEPRECATED_FERNET,
    ),
    Setting(
        "KEYSERVICE_SELF_SERVE_SCOPES",
        "",
        "The scopes the self-serve page offers (a list, or words split by spaces or commas); each user is"
        " offered those it holds.",
    ),
    Setting("KEYSERVICE_SELF_SERVE_TITLE", "API keys", "The self-serve page's title and heading."),
    Setting(
        "KEYSERVICE_SELF_SERVE_BRAND_COLOR",
        "#3730a3",
        "The self-serve page's buttons and focus rings (``#rrggbb``); the text on them is black or white,"
        " whichever contrasts more.",
    ),
    Setting(
        "KEYSERVICE_SELF_SERVE_LAYOUT",
        "",
        "A template of the host app's, with ``title``, ``head`` and ``content`` blocks, that the self-serve"
        " page extends; empty: a page of its own.",
    ),
    Setting(
        "KEYSERVICE_SELF_SERVE_LOGIN_VIEW",
        "",
        "Where a signed-out visitor of the self-serve page is sent: an endpoint or a URL (``?next=`` added);"
        " empty: Flask-Login's ``login_view``, if any, else a 401.",
    ),
    # flask-smorest reads the OPENAPI names itself (keyservice's Api has the config prefix KEYSERVICE_).
    Setting(
        "KEYSERVICE_OPENAPI_URL_PREFIX",
        "",
        "The path the management API's OpenAPI document (and its viewers) are served under; empty: the"
        " extension's ``url_prefix`` (``/`` standalone).",
    ),
    Setting("KEYSERVICE_OPENAPI_JSON_PATH", "openapi.json", "The OpenAPI document's path under that prefix."),
    Setting(
        "KEYSERVICE_OPENAPI_REDOC_PATH",
        "",
        "A page under that prefix that shows the document in ReDoc; empty: not served. Needs"
        " KEYSERVICE_OPENAPI_REDOC_URL.",
    ),
    Setting("KEYSERVICE_OPENAPI_REDOC_URL", "", "The http(s) URL ReDoc's page loads its script from."),
    Setting(
        "KEYSERVICE_OPENAPI_SWAGGER_UI_PATH",
        "",
        "A page under that prefix that shows the document in Swagger UI; empty: not served. Needs"
        " KEYSERVICE_OPENAPI_SWAGGER_UI_URL.",
    ),
    Setting("KEYSERVICE_OPENAPI_SWAGGER_UI_URL", "", "The http(s) URL Swagger UI's page loads its files from."),
    Setting(
        "KEYSERVICE_OPENAPI_RAPIDOC_PATH",
        "",
        "A page under that prefix that shows the document in RapiDoc; empty: not served. Needs"
        " KEYSERVICE_OPENAPI_RAPIDOC_URL.",
    ),
    Setting("KEYSERVICE_OPENAPI_RAPIDOC_URL", "", "The http(s) URL RapiDoc's page loads its script from."),
)

DEFAULTS: dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}

# Read from the environment by config_from_environment() alone (a host app configures its own db).
DATABASE_URL = Setting(
    "DATABASE_URL",
    "",
    "The database: ``sqlite:////absolute/path`` or ``postgresql://user:password@host/db`` (psycopg 3);"
    " unset: SQLite in ``instance/keyservice.db`` under the working directory.",
)

# The OpenAPI document's viewers, each served at its path only with the URL of its script.
OPENAPI_VIEWERS = ("REDOC", "SWAGGER_UI", "RAPIDOC")

# The databases keyservice has SQL for: some of its statements are written per dialect.
SUPPORTED_DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}

# Redis URLs as redis-py reads them; the default ("") is the embedded LMDB file.
RATELIMIT_SCHEMES = ("redis", "rediss", "unix")
SECRET_KEY_MIN_LENGTH = 32
# Printable ASCII but space and comma: any of them survives an environment variable, a file's
# trailing newline stripped, and the commas that separate the fallbacks.
SECRET_PATTERN = re.compile(rf"[\x21-\x2b\x2d-\x7e]{{{SECRET_KEY_MIN_LENGTH},}}")
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


SCOPE_PATTERN = re.compile(r"[a-z0-9_.:*-]{1,100}")
COLOR_PATTERN = re.compile(r"#[0-9a-fA-F]{6}")
TITLE_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,100}")
HEADER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
# A path of plain segments: no "//", no werkzeug "<converter>", no query or fragment.
URL_PATH_PATTERN = re.compile(r"/?([A-Za-z0-9._~-]+/?)*")


class ConfigError(click.ClickException, ValueError):
    """A setting has a value keyservice cannot run with.

    A click error too: when ``flask --app keyservice ...`` builds the app, the CLI prints
    ``Error: <the message>`` and exits 1 instead of a traceback.
    """


@dataclass(frozen=True)
class Settings:
    """The checked, typed form of the ``KEYSERVICE_*`` config keys."""

    key_prefix: str
    bcrypt_rounds: int
    header_environ_key: str | None  # KEYSERVICE_HEADER as a WSGI environ key: X-API-Key -> HTTP_X_API_KEY
    cache_ttl: float
    cache_size: int
    cache_max_age: float
    secret_key: str = field(repr=False)  # "": made once beside a SQLite database (secretkeys.py)
    secret_key_fallbacks: tuple[str, ...] = field(repr=False)  # earlier secrets, still read while rotating
    failed_verify_limit_per_client: RateLimitItem
    failed_verify_limit_per_key: RateLimitItem
    ratelimit_storage_url: str  # "": the embedded LMDB file
    ratelimit_fail_open: bool
    usage_flush_interval: float
    log_format: str  # "json" or "text"
    proxies: int  # how many proxies in front set X-Forwarded-For (the standalone service trusts that many)
    webhooks_encryption_keys: tuple[str, ...] = field(repr=False)  # deprecated Fernet keys, still decrypting
    webhooks_allow_private: bool
    webhooks_send: bool  # whether this process's workers run a sender
    webhooks_timeout: float
    webhooks_retry_delay: float  # the first retry's delay; each next one doubles (at most an hour)
    webhooks_retry_for: float  # a delivery is failed when still undelivered this long after its event
    webhooks_poll_interval: float
    webhooks_expiring_before: float
    secret_scanning_keys_url: str
    token_lifetime: int  # seconds an access token lives
    token_issuer: str  # "": none (check_deployment: only one machine's service may lack it)
    token_audience: str  # "": the issuer
    jwks_max_age: int  # seconds a client may cache the JWKS; a rotated-in key signs only after longer
    signing_keys_encryption_keys: tuple[str, ...] = field(repr=False)  # deprecated Fernet keys, still decrypting
    openapi: tuple[tuple[str, str | None], ...]  # the KEYSERVICE_OPENAPI_* names and values flask-smorest reads
    self_serve_scopes: tuple[str, ...]  # what the self-serve page offers (each principal: those it holds)
    self_serve_title: str
    self_serve_brand_color: str  # #rrggbb
    self_serve_layout: str  # a template of the host's with blocks title, head and content; "": standalone
    self_serve_login_view: str  # an endpoint or URL; "": Flask-Login's login_view, if any


def _number(config: Mapping[str, Any], name: str, kind: type, low: float, high: float) -> Any:
    raw = config[name]
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number from {low} to {high}, not {raw!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number from {low} to {high}, not {raw!r}")
    return value


def _rate(config: Mapping[str, Any], name: str) -> RateLimitItem:
    text = str(config[name])
    try:
        return parse(text)
    except ValueError:
        raise ConfigError(f"{name} must read like '5/minute', not {text!r}") from None


def _header_environ_key(config: Mapping[str, Any]) -> str | None:
    header = str(config["KEYSERVICE_HEADER"]).strip()
    if not header:
        return None
    if not HEADER_PATTERN.fullmatch(header) or header.lower() == "authorization":
        raise ConfigError(f"KEYSERVICE_HEADER must be a header name like X-API-Key, not {header!r}")
    return "HTTP_" + header.upper().replace("-", "_")


def _ratelimit_storage_url(config: Mapping[str, Any]) -> str:
    url = str(config["KEYSERVICE_RATELIMIT_STORAGE_URL"]).strip()
    if url and urlsplit(url).scheme not in RATELIMIT_SCHEMES:
        raise ConfigError(
            f"KEYSERVICE_RATELIMIT_STORAGE_URL must be empty (embedded) or a {'/'.join(RATELIMIT_SCHEMES)} URL"
        )
    return url


def _secrets(config: Mapping[str, Any], name: str, several: bool = False) -> tuple[str, ...]:
    """The secret (``several``: the secrets, a list or a string split at commas), each stripped of
    surrounding whitespace (a secret read from a file ends in a newline) and checked; "" for none."""
    raw = config[name]
    if isinstance(raw, str):
        values = raw.split(",") if several else [raw]
    elif several and isinstance(raw, list | tuple) and all(isinstance(value, str) for value in raw):
        values = list(raw)
    else:
        raise ConfigError(f"{name} must be {'a list of strings or ' if several else ''}a string")
    secrets = [value.strip() for value in values]
    for secret in secrets:
        # The message never repeats the value: it is a secret, even when refused.
        if secret and not SECRET_PATTERN.fullmatch(secret):
            raise ConfigError(
                f"{name} must be {'secrets' if several else 'empty or a secret'} of at least"
                f" {SECRET_KEY_MIN_LENGTH} printable ASCII characters, no space or comma"
                " (python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
            )
    return tuple(secret for secret in secrets if secret)


def _boolean(config: Mapping[str, Any], name: str) -> bool:
    value = config[name]
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() not in BOOLEANS:
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    return BOOLEANS[str(value).strip().lower()]


def _choice(config: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = str(config[name]).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be {' or '.join(choices)}, not {config[name]!r}")
    return value


def _deprecated_fernet_keys(config: Mapping[str, Any], name: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in str(config[name]).split(",") if key.strip())
    for key in keys:
        try:
            Fernet(key)
        except ValueError:
            raise ConfigError(f"{name} must be Fernet keys (32 url-safe base64 bytes), separated by commas") from None
    if keys:
        warnings.warn(
            f"{name} is deprecated: keys are derived from KEYSERVICE_SECRET_KEY now. It is still read, so what"
            " it encrypted stays readable; run `flask keys reencrypt`, then remove it.",
            FutureWarning,
            stacklevel=2,
        )
    return keys


def _http_url(config: Mapping[str, Any], name: str) -> str:
    url = str(config[name]).strip()
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ConfigError(f"{name} must be an http(s) URL")
    return url


def _issuer(config: Mapping[str, Any]) -> str:
    # RFC 8414 section 2: an https (here also http) URL without a query or fragment.
    if not str(config["KEYSERVICE_TOKEN_ISSUER"]).strip():
        return ""
    url = _http_url(config, "KEYSERVICE_TOKEN_ISSUER")
    if urlsplit(url).query or urlsplit(url).fragment:
        raise ConfigError("KEYSERVICE_TOKEN_ISSUER must be a URL without a query or fragment")
    return url.rstrip("/")


def _url_path(config: Mapping[str, Any], name: str) -> str:
    path = "" if config[name] is None else str(config[name]).strip()  # None: flask-smorest's "not served"
    if not URL_PATH_PATTERN.fullmatch(path):
        raise ConfigError(f"{name} must be a URL path (letters, digits, . _ ~ - between single slashes), not {path!r}")
    return path


def _openapi(config: Mapping[str, Any]) -> tuple[tuple[str, str | None], ...]:
    """The OpenAPI settings as flask-smorest reads them: an unset viewer is ``None`` (not served)."""
    json_path = _url_path(config, "KEYSERVICE_OPENAPI_JSON_PATH")
    if not json_path.strip("/"):
        raise ConfigError("KEYSERVICE_OPENAPI_JSON_PATH must be a path like openapi.json, not empty")
    checked: dict[str, str | None] = {
        "KEYSERVICE_OPENAPI_URL_PREFIX": _url_path(config, "KEYSERVICE_OPENAPI_URL_PREFIX"),
        "KEYSERVICE_OPENAPI_JSON_PATH": json_path,
    }
    for viewer in OPENAPI_VIEWERS:
        path_name, url_name = f"KEYSERVICE_OPENAPI_{viewer}_PATH", f"KEYSERVICE_OPENAPI_{viewer}_URL"
        path = _url_path(config, path_name) or None
        url = _http_url(config, url_name) if str(config[url_name] or "").strip() else None
        if path is not None and url is None:
            raise ConfigError(f"{path_name} needs {url_name}, the URL of the viewer's script")
        checked[path_name], checked[url_name] = path, url
    return tuple(checked.items())


def _scope_list(config: Mapping[str, Any], name: str) -> tuple[str, ...]:
    raw = config[name]
    words = re.split(r"[\s,]+", raw.strip()) if isinstance(raw, str) else [str(word) for word in raw]
    scopes = tuple(dict.fromkeys(word for word in words if word))
    for scope in scopes:
        if not SCOPE_PATTERN.fullmatch(scope):
            raise ConfigError(f"{name} must be scopes of a-z 0-9 _ . : * -, not {scope!r}")
    return scopes


def _text(config: Mapping[str, Any], name: str, pattern: re.Pattern[str], rule: str) -> str:
    value = str(config[name]).strip()
    if not pattern.fullmatch(value):
        raise ConfigError(f"{name} must be {rule}, not {config[name]!r}")
    return value


def load_settings(config: Mapping[str, Any]) -> Settings:
    """Check the ``KEYSERVICE_*`` keys of ``config`` (defaults filled in) and type them."""
    prefix = str(config["KEYSERVICE_KEY_PREFIX"])
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ConfigError(f"KEYSERVICE_KEY_PREFIX must be 1 to 16 lowercase letters or digits, not {prefix!r}")
    return Settings(
        key_prefix=prefix,
        bcrypt_rounds=_number(config, "KEYSERVICE_BCRYPT_ROUNDS", int, 4, 31),
        header_environ_key=_header_environ_key(config),
        cache_ttl=_number(config, "KEYSERVICE_CACHE_TTL", float, 0, 60),
        cache_size=_number(config, "KEYSERVICE_CACHE_SIZE", int, 1, 10_000_000),
        cache_max_age=_number(config, "KEYSERVICE_CACHE_MAX_AGE", float, 1, 300),
        secret_key="".join(_secrets(config, "KEYSERVICE_SECRET_KEY")),  # one secret, or none
        secret_key_fallbacks=_secrets(config, "KEYSERVICE_SECRET_KEY_FALLBACKS", several=True),
        failed_verify_limit_per_client=_rate(config, "KEYSERVICE_FAILED_VERIFY_LIMIT_PER_CLIENT"),
        failed_verify_limit_per_key=_rate(config, "KEYSERVICE_FAILED_VERIFY_LIMIT_PER_KEY"),
        ratelimit_storage_url=_ratelimit_storage_url(config),
        ratelimit_fail_open=_boolean(config, "KEYSERVICE_RATELIMIT_FAIL_OPEN"),
        usage_flush_interval=_number(config, "KEYSERVICE_USAGE_FLUSH_INTERVAL", float, 0.1, 3600),
        log_format=_choice(config, "KEYSERVICE_LOG_FORMAT", ("json", "text")),
        proxies=_number(config, "KEYSERVICE_PROXIES", int, 0, 10),
        webhooks_encryption_keys=_deprecated_fernet_keys(config, "KEYSERVICE_WEBHOOKS_ENCRYPTION_KEY"),
        webhooks_allow_private=_boolean(config, "KEYSERVICE_WEBHOOKS_ALLOW_PRIVATE"),
        webhooks_send=_boolean(config, "KEYSERVICE_WEBHOOKS_SEND"),
        webhooks_timeout=_number(config, "KEYSERVICE_WEBHOOKS_TIMEOUT", float, 0.1, 60),
        webhooks_retry_delay=_number(config, "KEYSERVICE_WEBHOOKS_RETRY_DELAY", float, 0.01, 3600),
        webhooks_retry_for=_number(config, "KEYSERVICE_WEBHOOKS_RETRY_FOR", float, 1, 30 * 86_400),
        webhooks_poll_interval=_number(config, "KEYSERVICE_WEBHOOKS_POLL_INTERVAL", float, 0.01, 60),
        webhooks_expiring_before=_number(config, "KEYSERVICE_WEBHOOKS_EXPIRING_BEFORE", float, 0, 365 * 86_400),
        secret_scanning_keys_url=_http_url(config, "KEYSERVICE_SECRET_SCANNING_KEYS_URL"),
        token_lifetime=_number(config, "KEYSERVICE_TOKEN_LIFETIME", int, 1, 86_400),
        token_issuer=_issuer(config),
        token_audience=str(config["KEYSERVICE_TOKEN_AUDIENCE"]).strip(),
        jwks_max_age=_number(config, "KEYSERVICE_JWKS_MAX_AGE", int, 0, 86_400),
        signing_keys_encryption_keys=_deprecated_fernet_keys(config, "KEYSERVICE_SIGNING_KEYS_ENCRYPTION_KEY"),
        openapi=_openapi(config),
        self_serve_scopes=_scope_list(config, "KEYSERVICE_SELF_SERVE_SCOPES"),
        self_serve_title=_text(config, "KEYSERVICE_SELF_SERVE_TITLE", TITLE_PATTERN, "1 to 100 characters"),
        self_serve_brand_color=_text(
            config, "KEYSERVICE_SELF_SERVE_BRAND_COLOR", COLOR_PATTERN, "a colour like #3730a3"
        ),
        self_serve_layout=str(config["KEYSERVICE_SELF_SERVE_LAYOUT"]).strip(),
        self_serve_login_view=str(config["KEYSERVICE_SELF_SERVE_LOGIN_VIEW"]).strip(),
    )


def config_from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Read ``DATABASE_URL`` and the ``KEYSERVICE_*`` variables into config keys.

    An unknown ``KEYSERVICE_*`` name is refused: a typo must not silently
    leave a default in force.
    """
    config: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith("KEYSERVICE_"):
            continue
        if name not in DEFAULTS:
            raise ConfigError(f"{name} is not a keyservice setting (known: {', '.join(DEFAULTS)})")
        config[name] = value
    if "DATABASE_URL" in environ:
        config["SQLALCHEMY_DATABASE_URI"] = check_database_url(environ["DATABASE_URL"])
    dialect = make_url(config.get("SQLALCHEMY_DATABASE_URI", "sqlite://")).get_backend_name()
    check_deployment(load_settings({**DEFAULTS, **config}), dialect)
    return config


def check_deployment(settings: Settings, dialect: str) -> None:
    """Refuse to start without what only one machine's service may do without: on PostgreSQL,
    the deployment secret (every instance must derive the same keys); behind a proxy or with
    several instances (PostgreSQL, Redis), the tokens' issuer (no request may choose it)."""
    if dialect != "sqlite" and not settings.secret_key:
        raise ConfigError(
            "KEYSERVICE_SECRET_KEY must be set on PostgreSQL (at least 32 random characters, the same on every"
            " instance): keyservice derives its keys from it"
        )
    if not settings.token_issuer and (dialect != "sqlite" or settings.ratelimit_storage_url or settings.proxies):
        raise ConfigError(
            "KEYSERVICE_TOKEN_ISSUER must be set (the service's public URL) behind a proxy or on several"
            " instances (PostgreSQL, Redis): every instance must name the same issuer in its tokens"
        )


def check_database(dialect: str, setting: str) -> None:
    """Refuse a database keyservice has no SQL for; ``dialect`` is SQLAlchemy's name for it,
    ``setting`` where it was given."""
    if dialect not in SUPPORTED_DATABASES:
        raise ConfigError(
            f"{setting} must be a {' or '.join(SUPPORTED_DATABASES.values())} database"
            f" (keyservice's SQL is written for those), not {dialect}"
        )


def check_database_url(url: str) -> str:
    """Return ``url`` as SQLAlchemy should use it: SQLite, or PostgreSQL through psycopg 3
    (``postgresql://`` and ``postgres://`` name no driver, and SQLAlchemy's default is psycopg2)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("DATABASE_URL is not a database URL SQLAlchemy can read") from None
    if parsed.get_backend_name() == "postgres":
        parsed = parsed.set(drivername="postgresql")
    check_database(parsed.get_backend_name(), "DATABASE_URL")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise ConfigError(
            f"DATABASE_URL must be a sqlite:/// or postgresql:// URL (driver psycopg), not {parsed.drivername}"
        )
    return parsed.render_as_string(hide_password=False)
