"""``flask keys identities ...``: a customer's identity and its shared limits, from the command line
(as the operator: the CLI may loosen). Input goes through the HTTP API's schemas."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy import select

from ..core.models import Identity
from ..core.state import current_state
from .cli import JsonObject, OneLineErrorGroup, RateLimitOption, echo_json
from .identities import create_identity, delete_identity, get_identity, identity_fields, list_identities, set_limits
from .schemas import IdentityCreateSchema, IdentitySchema, IdentityUpdateSchema, IdentityUsageSchema, UsageArgsSchema
from .store import client_usage
from .storeerrors import RecordNotFound

identities_cli = OneLineErrorGroup("identities", help="Customers' identities: limits shared by all of their keys.")


def _session() -> Any:
    return current_state().db.session


def _pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, equals, setting = value.partition("=")
        if not equals or not name:
            raise click.UsageError(f"{option} takes NAME=VALUE, not {value!r}")
        pairs.append((name, setting))
    return pairs


def _limits(
    ratelimits: tuple[str, ...],
    credits: tuple[str, ...],
    refills: tuple[str, ...],
    lows: tuple[str, ...],
    manual: tuple[str, ...],
) -> list[dict[str, Any]]:
    """The options' limits, as the API takes them."""
    limits: dict[str, dict[str, Any]] = {}
    for name, rate in _pairs(ratelimits, "--ratelimit"):
        limits[name] = {"name": name, **RateLimitOption().convert(rate, None, None)}
    for name, remaining in _pairs(credits, "--credits"):
        if not remaining.isdigit():
            raise click.UsageError(f"--credits takes NAME=COUNT, not {name}={remaining!r}")
        limits[name] = {"name": name, "remaining": int(remaining)}
    for option, values, field in (("--refill", refills, "refill"), ("--low", lows, "low_threshold")):
        for name, setting in _pairs(values, option):
            if name not in limits or "remaining" not in limits[name]:
                raise click.UsageError(f"{option} {name}=...: give {name} with --credits too")
            amount, _, interval = setting.partition("/")
            if field == "refill":
                limits[name]["refill"] = {"amount": int(amount) if amount.isdigit() else amount, "interval": interval}
            else:
                limits[name]["low_threshold"] = int(setting) if setting.isdigit() else setting
    for name in manual:
        if name not in limits:
            raise click.UsageError(f"--manual {name}: no such limit among the options")
        limits[name]["auto_apply"] = False
    return list(limits.values())


def _find(identity_or_client: str) -> Identity:
    """An identity by its id, or by its client's id."""
    by_client: Identity | None = _session().scalar(
        select(Identity).where(Identity.external_client_id == identity_or_client)
    )
    if by_client is not None:
        return by_client
    try:
        return get_identity(_session(), identity_or_client)
    except RecordNotFound:
        raise RecordNotFound("No identity has this id or client id.") from None


def _limit_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--ratelimit", "ratelimits", multiple=True, help="NAME=LIMIT/PERIOD, e.g. requests=100/60s."),
            click.option("--credits", "credits", multiple=True, help="NAME=COUNT: a pool, e.g. credits=1000."),
            click.option("--refill", "refills", multiple=True, help="NAME=AMOUNT/daily|monthly for a pool."),
            click.option("--low", "lows", multiple=True, help="NAME=THRESHOLD: identity.credits_low below it."),
            click.option("--manual", multiple=True, help="NAME: counted only when a check names it."),
            click.option("--meta", type=JsonObject(), help="A JSON object stored with the identity."),
        ]
    ):
        command = option(command)
    return command


def _show(identity: Identity, as_json: bool) -> None:
    shown = IdentitySchema().dump(identity_fields(_session(), identity))
    if as_json:
        echo_json(shown)
        return
    click.echo(f"{shown['id']}  {shown['external_client_id']}  meta {json.dumps(shown['meta'])}")
    for limit in shown["limits"]:
        click.echo("  " + json.dumps(limit))


@identities_cli.command("create")
@click.argument("external_client_id")
@_limit_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def create_command(external_client_id: str, meta: dict[str, Any] | None, as_json: bool, **options: Any) -> None:
    """Make the identity of a customer (EXTERNAL_CLIENT_ID) with its limits, and print it."""
    fields = IdentityCreateSchema().load(
        {"external_client_id": external_client_id, "meta": meta or {}, "limits": _limits(**options)}
    )
    identity = create_identity(_session(), fields["external_client_id"], fields["meta"], [])
    set_limits(_session(), fields["limits"], may_loosen=True, identity_id=identity.id)
    _session().commit()
    _show(identity, as_json)


@identities_cli.command("set")
@click.argument("identity")
@_limit_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def set_command(identity: str, meta: dict[str, Any] | None, as_json: bool, **options: Any) -> None:
    """Give an identity (its id or its client's id) exactly these limits (and meta, if given)."""
    found = _find(identity)
    fields = IdentityUpdateSchema().load({"limits": _limits(**options)} | ({"meta": meta} if meta is not None else {}))
    set_limits(_session(), fields["limits"], may_loosen=True, identity_id=found.id)
    if "meta" in fields:
        found.meta = fields["meta"]
    _session().commit()
    _show(found, as_json)


@identities_cli.command("show")
@click.argument("identity")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(identity: str, as_json: bool) -> None:
    """Show an identity (its id or its client's id) and its limits, credits as they stand now."""
    _show(_find(identity), as_json)


@identities_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(as_json: bool) -> None:
    """Every identity, by client id."""
    identities = list_identities(_session(), None)
    if as_json:
        echo_json([IdentitySchema().dump(identity_fields(_session(), identity)) for identity in identities])
        return
    for identity in identities:
        _show(identity, as_json=False)


@identities_cli.command("delete")
@click.argument("identity")
def delete_command(identity: str) -> None:
    """Delete an identity and its limits; its keys stay, limited by their own only."""
    delete_identity(_session(), _find(identity), may_loosen=True)
    _session().commit()


@identities_cli.command("usage")
@click.argument("identity")
@click.option("--granularity", type=click.Choice(["hour", "day"]), default="hour", show_default=True)
def usage_command(identity: str, granularity: str) -> None:
    """An identity's verifications across all its keys, by outcome, per hour or day (JSON)."""
    found = _find(identity)
    args = UsageArgsSchema().load({"granularity": granularity})
    used = client_usage(_session(), found.external_client_id, **args)
    echo_json(
        IdentityUsageSchema().dump({"identity_id": found.id, "external_client_id": found.external_client_id} | used)
    )
