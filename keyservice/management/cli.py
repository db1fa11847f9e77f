"""``flask keys ...``, ``flask roles ...`` and ``flask webhooks ...``: a thin click layer over
:mod:`keyservice.management.store` and :mod:`keyservice.management.webhooks`.

Input goes through the same schemas as the HTTP API's.

Wrong input ends with a one-line ``Error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from flask.cli import AppGroup
from marshmallow import ValidationError
from pytimeparse.timeparse import timeparse as parse_duration
from sqlalchemy.exc import SQLAlchemyError

from ..core.crypto import check_secret, key_id_of, redact_keys
from ..core.errors import InvalidInput, KeyServiceError
from ..core.jsonguard import check_json
from ..core.models import ApiKey, utcnow
from ..core.state import current_state
from ..verification import signingkeys
from ..verification.tokens import issue_token, issuer
from ..verification.verifier import verify_key
from . import store, webhooks
from .reencrypt import reencrypt_all
from .scan import find_keys
from .schemas import (
    WEBHOOK_EVENTS,
    DeliverySchema,
    KeyCreateSchema,
    KeyListArgsSchema,
    KeySchema,
    RevokeArgsSchema,
    RoleInSchema,
    RoleSchema,
    RotateSchema,
    UsageArgsSchema,
    UsageSchema,
    WebhookCreateSchema,
    WebhookSchema,
    first_error,
)
from .storeerrors import StoreError


class CliError(click.ClickException):
    """A one-line error for wrong input; exits with 2 like click's usage errors.

    A key given where it does not belong (``--name``, a role name) is not repeated.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(redact_keys(message))


class OneLineErrorGroup(AppGroup):
    """An app group whose usage and input errors print one line, never a usage dump."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            raise CliError(error.format_message()) from None
        except KeyServiceError as error:
            raise CliError(error.detail) from None
        except StoreError as error:
            raise CliError(error.message) from None
        except ValidationError as error:
            raise CliError(first_error(error)) from None
        except SQLAlchemyError:
            raise click.ClickException(
                "the database cannot be reached or is not migrated (try 'flask db upgrade')"
            ) from None


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A positive duration such as ``30d``, ``12h``, ``90m`` or ``1h30m`` (or zero, if allowed)."""

    name = "duration"

    def __init__(self, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        # pytimeparse reads a bare number as no duration; a bare 0 is one (no grace).
        seconds = 0 if self.allow_zero and str(value).strip() == "0" else parse_duration(str(value))
        if seconds is None or seconds < 0 or (seconds == 0 and not self.allow_zero):
            self.fail(f"{value!r} is not a positive duration like 30d, 12h or 90m", param, ctx)
        try:
            duration = timedelta(seconds=seconds)
            utcnow() + duration  # a time from now must still be a date (year 9999 at most)
        except OverflowError:
            self.fail(f"{value!r} is too long", param, ctx)
        return duration


class KeyIdOrKey(click.ParamType):  # type: ignore[type-arg]
    """A key id, or a whole key (its id is taken from it, as its format is known).

    An error never repeats the value: it may be a whole key, a secret.
    """

    name = "key_id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        key_id = key_id_of(str(value))
        if key_id is None:
            self.fail("not a key id (16 letters and digits) or a whole key", param, ctx)
        return key_id


class RateLimitOption(click.ParamType):  # type: ignore[type-arg]
    """``LIMIT/PERIOD``, e.g. ``100/60s`` or ``5000/1h``: at most LIMIT requests in any PERIOD."""

    name = "limit/period"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, int]:
        if isinstance(value, dict):
            return value
        limit, _, period = str(value).partition("/")
        seconds = parse_duration(period) if period else None
        if not limit.isdigit() or seconds is None or seconds != int(seconds):
            self.fail(f"{value!r} is not like 100/60s (requests per period)", param, ctx)
        return {"limit": int(limit), "period": int(seconds)}


class JsonObject(click.ParamType):  # type: ignore[type-arg]
    """A JSON object given on the command line."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        try:
            parsed = check_json(value)
        except InvalidInput as error:
            self.fail(error.detail, param, ctx)
        except ValueError:
            self.fail("is not valid JSON", param, ctx)
        if not isinstance(parsed, dict):
            self.fail("must be a JSON object", param, ctx)
        return parsed


def _session() -> Any:
    return current_state().db.session


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _echo_new_key(api_key: ApiKey, key: str, as_json: bool) -> None:
    if as_json:
        echo_json({**KeySchema().dump(api_key), "key": key})
    else:
        click.echo(key)
    click.echo("Store this key now: it will not be shown again.", err=True)


keys_cli = OneLineErrorGroup("keys", help="Issue, inspect, rotate, revoke and verify API keys.")
roles_cli = OneLineErrorGroup("roles", help="Named sets of scopes that keys can hold.")
webhooks_cli = OneLineErrorGroup("webhooks", help="Endpoints that receive signed key events, and their deliveries.")


@keys_cli.command("create")
@click.option("--name", required=True, help="What the key is for.")
@click.option("--client-id", "external_client_id", required=True, help="The customer the key belongs to.")
@click.option("--scope", "scopes", multiple=True, help="A scope the key holds (repeatable).")
@click.option("--role", "roles", multiple=True, help="A role the key holds (repeatable).")
@click.option("--expires-in", type=Duration(), help="Lifetime, e.g. 30d or 12h (default: never expires).")
@click.option("--meta", type=JsonObject(), help="A JSON object stored with the key.")
@click.option("--remaining", type=int, help="How many uses the key has (default: unlimited).")
@click.option("--ratelimit", type=RateLimitOption(), help="At most this many requests per period, e.g. 100/60s.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole key object as JSON.")
def create_command(
    name: str,
    external_client_id: str,
    scopes: tuple[str, ...],
    roles: tuple[str, ...],
    expires_in: timedelta | None,
    meta: dict[str, Any] | None,
    remaining: int | None,
    ratelimit: dict[str, int] | None,
    as_json: bool,
) -> None:
    """Issue a key and print it. It is shown this once and never again."""
    fields = KeyCreateSchema().load(
        {
            "name": name,
            "external_client_id": external_client_id,
            "scopes": list(scopes),
            "roles": list(roles),
            "meta": meta or {},
            "expires_at": (utcnow() + expires_in).isoformat() if expires_in else None,
            "remaining": remaining,
            "ratelimit": ratelimit,
        }
    )
    state = current_state()
    api_key, key = store.create_key(state.db.session, state.settings, created_by="cli", **fields)
    _session().commit()
    _echo_new_key(api_key, key, as_json)


@keys_cli.command("list")
@click.option("--client-id", "external_client_id", help="Only this customer's keys.")
@click.option("--include-revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(external_client_id: str | None, include_revoked: bool, as_json: bool) -> None:
    """List keys, newest first."""
    if external_client_id:
        external_client_id = KeyListArgsSchema().load({"external_client_id": external_client_id})["external_client_id"]
    api_keys, _ = store.list_keys(
        _session(), client_ids=[external_client_id] if external_client_id else None, include_revoked=include_revoked
    )
    if as_json:
        echo_json(KeySchema(many=True).dump(api_keys))
        return
    rows = [("ID", "STATUS", "CLIENT", "NAME", "SCOPES")] + [
        (api_key.id, api_key.status, api_key.external_client_id, api_key.name, " ".join(api_key.scopes))
        for api_key in api_keys
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        padded = (value.ljust(width) for value, width in zip(row, widths, strict=False))  # the last column unpadded
        click.echo("  ".join([*padded, row[-1]]).rstrip())


@keys_cli.command("show")
@click.argument("key_id", type=KeyIdOrKey())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(key_id: str, as_json: bool) -> None:
    """Show one key (never its secret)."""
    api_key = store.get_key(_session(), key_id)
    shown = KeySchema().dump(api_key)
    if as_json:
        echo_json(shown)
        return
    for field, value in shown.items():
        click.echo(f"{field:19}{json.dumps(value) if isinstance(value, (list, dict)) else value}")


@keys_cli.command("usage")
@click.argument("key_id", type=KeyIdOrKey())
@click.option("--granularity", type=click.Choice(["hour", "day"]), default="hour", show_default=True)
@click.option("--since", help="From (ISO 8601; default: 24 hours before --until by hour, 30 days by day).")
@click.option("--until", help="Until (ISO 8601; default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def usage_command(key_id: str, granularity: str, since: str | None, until: str | None, as_json: bool) -> None:
    """A key's verifications by outcome code, per hour or per UTC day (as of the last usage flush)."""
    args = UsageArgsSchema().load(
        {"granularity": granularity, **({"since": since} if since else {}), **({"until": until} if until else {})}
    )
    usage = UsageSchema().dump(store.key_usage(_session(), store.get_key(_session(), key_id).id, **args))
    if as_json:
        echo_json(usage)
        return
    for period in usage["items"]:
        counts = " ".join(f"{code}={count}" for code, count in sorted(period["counts"].items()))
        click.echo(f"{period['start']}  total={period['total']}  {counts}")


@keys_cli.command("revoke")
@click.argument("key_id", type=KeyIdOrKey())
@click.option("--reason", help="Why, kept for the audit trail.")
def revoke_command(key_id: str, reason: str | None) -> None:
    """Revoke a key for good, and every key rotated from it; every worker refuses them within a second."""
    if reason is not None:
        reason = RevokeArgsSchema().load({"reason": reason})["reason"]
    if not store.revoke_key(_session(), store.lock_key(_session(), key_id), reason, "cli"):
        click.echo(f"{key_id} was already revoked", err=True)
        return
    _session().commit()
    click.echo(f"revoked {key_id}")


@keys_cli.command("rotate")
@click.argument("key_id", type=KeyIdOrKey())
@click.option(
    "--grace",
    type=Duration(allow_zero=True),
    default="0",
    show_default=True,
    help="How long the old key keeps working, e.g. 1h (0: it stops at once).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole new key object as JSON.")
def rotate_command(key_id: str, grace: timedelta, as_json: bool) -> None:
    """Issue a key with the same settings and print it; the old one stops after --grace."""
    grace_seconds = RotateSchema().load({"grace_seconds": int(grace.total_seconds())})["grace_seconds"]
    state = current_state()
    api_key, key = store.rotate_key(state.db.session, state.settings, key_id, grace_seconds, "cli")
    _session().commit()
    _echo_new_key(api_key, key, as_json)


def _set_enabled(key_id: str, enabled: bool) -> None:
    # The CLI is the operator's: it may loosen what it likes, and its disable holds against managers.
    store.update_key(_session(), store.lock_key(_session(), key_id), {"enabled": enabled}, "cli", may_loosen=True)
    _session().commit()
    click.echo(f"{'enabled' if enabled else 'disabled'} {key_id}")


@keys_cli.command("disable")
@click.argument("key_id", type=KeyIdOrKey())
def disable_command(key_id: str) -> None:
    """Stop a key from working until it is enabled again."""
    _set_enabled(key_id, False)


@keys_cli.command("enable")
@click.argument("key_id", type=KeyIdOrKey())
def enable_command(key_id: str) -> None:
    """Let a disabled key work again."""
    _set_enabled(key_id, True)


@keys_cli.command("verify")
@click.argument("key")
@click.option("--scope", "scopes", multiple=True, help="A scope the key must hold (repeatable).")
def verify_command(key: str, scopes: tuple[str, ...]) -> None:
    """Check a key (or '-' to read it from stdin); print the outcome, exit 0 only if VALID."""
    if key == "-":
        key = sys.stdin.readline()
    result = verify_key(key, scopes)
    click.echo(result.code.value)
    click.get_current_context().exit(0 if result.valid else 1)


@keys_cli.command("token")
@click.argument("key")
@click.option("--scope", "scopes", multiple=True, help="A scope the token holds (repeatable; default: the key's).")
def token_command(key: str, scopes: tuple[str, ...]) -> None:
    """Trade a key (or '-' to read it from stdin) for an access token and print it, as
    POST /oauth/token does (needs KEYSERVICE_TOKEN_ISSUER); a refused key prints its outcome, exit 1."""
    if key == "-":
        key = sys.stdin.readline()
    state = current_state()
    issuer(state.settings)  # refused before the key is counted if no token can be made here
    result = verify_key(key, scopes)
    if not result.valid:
        click.echo(result.code.value, err=True)
        click.get_current_context().exit(1)
    click.echo(issue_token(state.settings, state.signing_keys, result, scopes or result.scopes).access_token)


@keys_cli.command("reencrypt")
def reencrypt_command() -> None:
    """Encrypt every stored secret (token signing keys, webhook secrets) again under the current
    KEYSERVICE_SECRET_KEY; after it, KEYSERVICE_SECRET_KEY_FALLBACKS can go. What no secret
    decrypts, or an instance on an older secret wrote meanwhile, is named (exit 1)."""
    done = reencrypt_all(_session(), current_state().secret_keys)
    _session().commit()
    click.echo(
        f"re-encrypted {done.signing_keys} signing keys and {done.webhook_secrets} webhook secrets"
        " under the current KEYSERVICE_SECRET_KEY"
    )
    if done.left:
        click.echo(
            f"still not under the current secret (keep the fallbacks): {', '.join(done.left)}."
            " Not decrypted by KEYSERVICE_SECRET_KEY or a fallback, or written meanwhile by an instance"
            " on an older secret: run it again once every instance has the new one",
            err=True,
        )
        click.get_current_context().exit(1)


signing_keys_cli = OneLineErrorGroup("signing-keys", help="The keys that sign access tokens.")
keys_cli.add_command(signing_keys_cli)


@signing_keys_cli.command("rotate")
@click.option(
    "--delay",
    type=Duration(),
    help="How long the new key is published before it signs"
    " (default: twice KEYSERVICE_JWKS_MAX_AGE, at least 10 s; never under KEYSERVICE_JWKS_MAX_AGE).",
)
def signing_keys_rotate_command(delay: timedelta | None) -> None:
    """Publish a new signing key now; it signs after --delay, and the key it replaces is
    retired once the tokens it signed have expired."""
    settings = current_state().settings
    max_age = timedelta(seconds=settings.jwks_max_age)
    if delay is None:
        delay = max(2 * max_age, timedelta(seconds=10))
    if delay <= max_age:
        raise CliError(
            f"--delay must be longer than KEYSERVICE_JWKS_MAX_AGE ({settings.jwks_max_age} s), or a"
            " verifier's cached JWKS would not know the new key"
        )
    new = signingkeys.rotate_signing_keys(_session(), settings, current_state().secret_keys, delay)
    _session().commit()
    click.echo(f"published {new.kid}; it signs from {new.activates_at.isoformat()}")


@signing_keys_cli.command("list")
def signing_keys_list_command() -> None:
    """Every signing key, newest first: its id, state and times."""
    keys = signingkeys.list_signing_keys(_session())
    now = utcnow()
    current = signingkeys.current_generation(keys, now)
    for key in keys:
        retires_at = key.retires_at.isoformat() if key.retires_at else "-"
        click.echo(
            f"{key.kid}  {signingkeys.state_of(key, current, now):8}  {key.algorithm}"
            f"  {'encrypted' if key.encrypted else 'in the clear'}"
            f"  signs from {key.activates_at.isoformat()}  retires {retires_at}"
        )


@keys_cli.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--revoke", is_flag=True, help="Revoke each live key found (reason leaked).")
def scan_command(paths: tuple[Path, ...], revoke: bool) -> None:
    """Find this service's keys in files (by format and checksum) and say which are live;
    exit 1 if any key is found. Keys are named by file, line and key id, never shown."""
    session = _session()
    found = find_keys(paths, current_state().settings.key_prefix)
    for item in found:
        api_key = session.get(ApiKey, item.key.key_id)
        if api_key is None or not check_secret(item.key.secret, api_key.secret_hash):
            click.echo(f"{item.where}: {item.key.key_id} not a key of this service (no such key here)")
            continue
        status = "live" if api_key.status == "active" else api_key.status
        if revoke and api_key.revoked_at is None:
            store.report_leak(session, api_key.id, "cli", {"url": str(item.path.resolve()), "source": "keys scan"})
            session.commit()
            status += ", now revoked"
        click.echo(f"{item.where}: {item.key.key_id} {status}")
    if found:
        click.get_current_context().exit(1)


@roles_cli.command("set")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, help="A scope of the role (repeatable).")
def role_set_command(name: str, scopes: tuple[str, ...]) -> None:
    """Create or replace a role; keys holding it follow its scopes within a second."""
    store.put_role(_session(), name, RoleInSchema().load({"scopes": list(scopes)})["scopes"])
    _session().commit()
    click.echo(f"set role {name}")


@roles_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def role_list_command(as_json: bool) -> None:
    """List roles and their scopes."""
    roles = store.list_roles(_session())
    if as_json:
        echo_json(RoleSchema(many=True).dump(roles))
        return
    for role in roles:
        click.echo(f"{role.name}  [{' '.join(role.scopes)}]")


@roles_cli.command("delete")
@click.argument("name")
def role_delete_command(name: str) -> None:
    """Delete a role; keys holding it lose its scopes."""
    store.delete_role(_session(), name)
    _session().commit()
    click.echo(f"deleted role {name}")


@webhooks_cli.command("create")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice(WEBHOOK_EVENTS),
    help="An event to send (repeatable; default: every event).",
)
@click.option("--client-id", "external_client_id", help="Only this client's keys' events (default: every client's).")
def webhook_create_command(url: str, events: tuple[str, ...], external_client_id: str | None) -> None:
    """Register an endpoint; print its id, then its signing secret (shown this once)."""
    fields = WebhookCreateSchema().load({"url": url, "events": list(events), "external_client_id": external_client_id})
    state = current_state()
    endpoint, secret = webhooks.create_endpoint(
        state.db.session, state.settings, state.secret_keys, created_by="cli", **fields
    )
    _session().commit()
    click.echo(endpoint.id)
    click.echo(secret)
    click.echo("Store this secret now: it will not be shown again.", err=True)


@webhooks_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def webhook_list_command(as_json: bool) -> None:
    """List endpoints (never their secrets)."""
    endpoints = webhooks.list_endpoints(_session(), None)
    if as_json:
        echo_json(WebhookSchema(many=True).dump(endpoints))
        return
    for endpoint in endpoints:
        click.echo(
            f"{endpoint.id}  {endpoint.external_client_id or '(every client)'}  {endpoint.url}"
            f"  [{' '.join(endpoint.events) or 'every event'}]"
        )


def _endpoint(endpoint_id: str) -> Any:
    """The endpoint ``endpoint_id``, whoever's it is (the CLI is the operator's)."""
    return webhooks.get_endpoint(_session(), endpoint_id, None)


@webhooks_cli.command("delete")
@click.argument("endpoint_id")
def webhook_delete_command(endpoint_id: str) -> None:
    """Remove an endpoint; nothing more is sent to it."""
    webhooks.delete_endpoint(_session(), _endpoint(endpoint_id))
    _session().commit()
    click.echo(f"deleted {endpoint_id}")


@webhooks_cli.command("deliveries")
@click.argument("endpoint_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def webhook_deliveries_command(endpoint_id: str, as_json: bool) -> None:
    """An endpoint's last 100 deliveries, newest first."""
    items = DeliverySchema(many=True).dump(webhooks.list_deliveries(_session(), _endpoint(endpoint_id)))
    if as_json:
        echo_json(items)
        return
    for item in items:
        click.echo(
            f"{item['id']}  {item['status']:9}  {item['type']:19}  attempts={item['attempts']}"
            f"  last={item['last_status'] or item['last_error'] or '-'}  {item['webhook_id']}"
        )


@webhooks_cli.command("test")
@click.argument("endpoint_id")
def webhook_test_command(endpoint_id: str) -> None:
    """Send a webhook.test event to an endpoint (by the service's senders); print its delivery id."""
    delivery_id = webhooks.enqueue_test(_session(), _endpoint(endpoint_id))
    _session().commit()
    click.echo(delivery_id)


@webhooks_cli.command("redeliver")
@click.argument("endpoint_id")
@click.argument("delivery_id", type=int)
def webhook_redeliver_command(endpoint_id: str, delivery_id: int) -> None:
    """Send a failed (or delivered) delivery again, with a new span of retries."""
    webhooks.redeliver(_session(), _endpoint(endpoint_id), delivery_id)
    _session().commit()
    click.echo(f"redelivering {delivery_id}")
