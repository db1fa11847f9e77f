"""Identities: named limits shared by all of a customer's keys, costs, all-or-nothing checks, and a
key's own limit winning over its identity's; through ``@require_key`` and Flask's test client, on
SQLite and PostgreSQL (threads at once where it matters: the database decides).
End to end over gunicorn, workers and instances: tests/test_identities_e2e.py."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask, g
from sqlalchemy import select

from keyservice import KeyService, require_key, verify_key
from keyservice.app import db
from keyservice.core.models import NamedLimit
from keyservice.core.state import current_state
from keyservice.management.identities import ensure_identity, set_limits

from .conftest import IssueKey, migrated_app
from .helpers import bearer
from .receivers import Receiver, serving, webhook_settings
from .test_webhooks import send_due


def limits_of(app: Flask, client: str, *limits: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """Give ``client``'s identity exactly ``limits`` (as keys:admin)."""
    with app.app_context():
        identity = ensure_identity(db.session, client)
        identity.meta = meta or {}
        set_limits(db.session, list(limits), may_loosen=True, identity_id=identity.id)
        db.session.commit()


def remaining_of(app: Flask, name: str) -> int | None:
    with app.app_context():
        return db.session.scalar(select(NamedLimit.remaining).where(NamedLimit.name == name))


@pytest.fixture
def costly(app: Flask) -> Flask:
    """The app with a view that costs 7 units, and one that spends 1,200 tokens."""

    @app.post("/costly")
    @require_key(cost=7)
    def costly_view() -> dict[str, Any]:
        return {"remaining": g.auth.remaining}

    @app.post("/completion")
    @require_key(limits={"tokens": 1200})
    def completion() -> dict[str, Any]:
        return {"ok": True}

    return app


def outcomes(app: Flask, path: str, keys: list[str], count: int, threads: int = 1) -> Counter[tuple[int, Any]]:
    """Send ``count`` requests to ``path``, round-robin over ``keys``, from ``threads`` threads at once."""

    def one(number: int) -> tuple[int, Any]:
        response = app.test_client().post(path, headers=bearer(keys[number % len(keys)]))
        body = response.get_json() or {}
        return response.status_code, body.get("limit") if response.status_code != 200 else None

    with ThreadPoolExecutor(threads) as pool:
        return Counter(pool.map(one, range(count)))


def test_two_keys_of_a_customer_share_its_rate_limit(app: Flask, issue_key: IssueKey) -> None:
    limits_of(app, "acme", {"name": "requests", "limit": 20, "period": 10})
    keys = [issue_key(external_client_id="acme")[1] for _ in range(2)]
    other = issue_key(external_client_id="globex")[1]
    assert outcomes(app, "/protected-with-key", keys, 30, threads=8) == {(200, None): 20, (429, "requests"): 10}
    assert outcomes(app, "/protected-with-key", [other], 5) == {(200, None): 5}  # another customer's own


def test_a_shared_credit_pool_gives_exactly_what_it_holds_and_a_refusal_spends_nothing_elsewhere(
    costly: Flask, issue_key: IssueKey
) -> None:
    limits_of(
        costly,
        "acme",
        {"name": "credits", "remaining": 100},
        {"name": "budget", "remaining": 10_000},  # roomy: refused checks must take nothing from it
    )
    keys = [issue_key(external_client_id="acme")[1] for _ in range(4)]
    assert outcomes(costly, "/costly", keys, 64, threads=64) == {(200, None): 14, (429, "credits"): 50}
    assert remaining_of(costly, "credits") == 2  # 98 used, never below zero
    assert remaining_of(costly, "budget") == 10_000 - 98


def test_a_credit_refusal_gives_back_what_the_rate_windows_counted(costly: Flask, issue_key: IssueKey) -> None:
    limits_of(costly, "acme", {"name": "burst", "limit": 21, "period": 60}, {"name": "credits", "remaining": 14})
    _, key = issue_key(external_client_id="acme")
    assert outcomes(costly, "/costly", [key], 4) == {(200, None): 2, (429, "credits"): 2}
    limits_of(costly, "acme", {"name": "burst", "limit": 21, "period": 60}, {"name": "credits", "remaining": 100})
    # 14 of 21 burst units spent: one more check of 7 fits, had the refusals given theirs back.
    assert outcomes(costly, "/costly", [key], 2) == {(200, None): 1, (429, "burst"): 1}


def test_a_named_limit_is_charged_only_when_asked_unless_auto_applied(costly: Flask, issue_key: IssueKey) -> None:
    limits_of(costly, "acme", {"name": "tokens", "remaining": 3000, "auto_apply": False})
    _, key = issue_key(external_client_id="acme")
    assert outcomes(costly, "/protected-with-key", [key], 5) == {(200, None): 5}
    assert remaining_of(costly, "tokens") == 3000
    assert outcomes(costly, "/completion", [key], 3) == {(200, None): 2, (429, "tokens"): 1}
    assert remaining_of(costly, "tokens") == 600


def test_a_keys_own_limit_wins_over_its_identitys_of_the_same_name(app: Flask, issue_key: IssueKey) -> None:
    limits_of(app, "acme", {"name": "requests", "limit": 20, "period": 10})
    own_id, own = issue_key(external_client_id="acme")
    _, shared = issue_key(external_client_id="acme")
    with app.app_context():
        set_limits(db.session, [{"name": "requests", "limit": 3, "period": 10}], may_loosen=True, key_id=own_id)
        db.session.commit()
    assert outcomes(app, "/protected-with-key", [own], 5) == {(200, None): 3, (429, "requests"): 2}
    # The identity's window is the other keys': untouched by the key with its own.
    assert outcomes(app, "/protected-with-key", [shared], 25) == {(200, None): 20, (429, "requests"): 5}


def test_the_key_remaining_and_named_credits_are_taken_together(costly: Flask, issue_key: IssueKey) -> None:
    limits_of(costly, "acme", {"name": "credits", "remaining": 1000})
    _, key = issue_key(external_client_id="acme", remaining=15)
    assert outcomes(costly, "/costly", [key], 3) == {(200, None): 2, (429, None): 1}  # the key's own: 1 left
    assert remaining_of(costly, "credits") == 1000 - 14


def test_verify_key_takes_a_cost_and_named_limits(app: Flask, issue_key: IssueKey) -> None:
    limits_of(app, "acme", {"name": "tokens", "remaining": 100, "auto_apply": False})
    _, key = issue_key(external_client_id="acme")
    with app.app_context():
        assert verify_key(key, limits={"tokens": 60}).valid
        refused = verify_key(key, limits={"tokens": 60})
        assert (refused.code.value, refused.limit) == ("USAGE_EXCEEDED", "tokens")
        with pytest.raises(ValueError, match="whole number"):
            verify_key(key, cost=0)


def test_a_refusal_names_the_limit_and_the_headers_describe_the_nearest_to_running_out(
    app: Flask, issue_key: IssueKey
) -> None:
    limits_of(
        app,
        "acme",
        {"name": "per-second", "limit": 100, "period": 1},
        {"name": "per-minute", "limit": 3, "period": 60},
    )
    _, key = issue_key(external_client_id="acme")
    client = app.test_client()
    for left in (2, 1, 0):
        answered = client.post("/protected-with-key", headers=bearer(key))
        assert answered.status_code == 200
        assert (answered.headers["X-RateLimit-Limit"], answered.headers["X-RateLimit-Remaining"]) == ("3", str(left))
    refused = client.post("/protected-with-key", headers=bearer(key))
    assert refused.status_code == 429 and refused.get_json()["limit"] == "per-minute"
    assert refused.headers["RateLimit-Policy"] == '"default";q=3;w=60' and int(refused.headers["Retry-After"]) >= 1


# --- /identities ------------------------------------------------------------------------------------


def manager(issue_key: IssueKey, client: str = "acme") -> dict[str, str]:
    """The Authorization header of a keys:read + keys:write manager of ``client``."""
    return bearer(issue_key(name="manager", external_client_id=client, scopes=("keys:read", "keys:write"))[1])


REQUESTS = {"name": "requests", "limit": 20, "period": 10}
CREDITS = {"name": "credits", "remaining": 100, "refill": {"amount": 100, "interval": "monthly"}, "low_threshold": 10}


def test_a_manager_makes_its_clients_identity_and_its_keys_are_held_to_it(app: Flask, issue_key: IssueKey) -> None:
    client = app.test_client()
    acme = manager(issue_key)
    created = client.post(
        "/identities", headers=acme, json={"external_client_id": "acme", "meta": {"plan": "pro"}, "limits": [REQUESTS]}
    )
    assert created.status_code == 201, created.get_json()
    identity = created.get_json()
    assert (identity["external_client_id"], identity["meta"]) == ("acme", {"plan": "pro"})
    assert identity["limits"] == [{"name": "requests", "auto_apply": True, "limit": 20, "period": 10}]
    _, key = issue_key(external_client_id="acme")
    assert outcomes(app, "/protected-with-key", [key], 22) == {(200, None): 20, (429, "requests"): 2}
    # Every key of acme shares the limit, the manager's own too: its next call is refused.
    refused = client.get(f"/identities/{identity['id']}", headers=acme)
    assert (refused.status_code, refused.get_json()["limit"]) == (429, "requests")
    admin = bearer(issue_key(name="operator", external_client_id="ops", scopes=("keys:admin",))[1])
    assert client.get(f"/identities/{identity['id']}", headers=admin).get_json() == identity
    assert [item["id"] for item in client.get("/identities", headers=admin).get_json()["items"]] == [identity["id"]]
    again = client.post("/identities", headers=admin, json={"external_client_id": "acme"})
    assert (again.status_code, again.get_json()["code"]) == (409, "CONFLICT")


def test_a_manager_may_tighten_but_not_loosen_and_sees_no_other_clients_identity(
    app: Flask, issue_key: IssueKey
) -> None:
    client = app.test_client()
    admin = bearer(issue_key(name="operator", external_client_id="ops", scopes=("keys:admin",))[1])
    acme, globex = manager(issue_key), manager(issue_key, "globex")
    roomy = {"name": "requests", "limit": 1000, "period": 10}  # the manager's own calls count in it too
    identity = client.post(
        "/identities", headers=admin, json={"external_client_id": "acme", "limits": [roomy, CREDITS]}
    ).get_json()
    path = f"/identities/{identity['id']}"
    tighter = {**roomy, "limit": 500}
    fewer = {**CREDITS, "remaining": 50}  # below what is left: each of the manager's calls took one
    assert client.patch(path, headers=acme, json={"limits": [tighter, fewer]}).status_code == 200
    for loosened, field in (
        ([{**roomy, "limit": 600}, fewer], "limits.requests"),  # raised
        ([tighter], "limits.credits"),  # removed
        ([tighter, CREDITS], "limits.credits"),  # topped up
        ([tighter, {**fewer, "refill": {"amount": 100, "interval": "daily"}}], "limits.credits"),  # refilled sooner
        ([{**tighter, "auto_apply": False}, fewer], "limits.requests"),  # counted only when named
    ):
        refused = client.patch(path, headers=acme, json={"limits": loosened})
        assert (refused.status_code, refused.get_json()["code"]) == (403, "LOOSENING_NEEDS_ADMIN"), loosened
        assert field in refused.get_json()["errors"]["json"]
    assert client.delete(path, headers=acme).status_code == 403  # removing its limits loosens them
    assert client.get(path, headers=acme).get_json()["limits"][1]["limit"] == 500  # nothing changed
    # Another client's identity is exactly an unknown one.
    theirs, unknown = client.get(path, headers=globex), client.get("/identities/AAAAAAAAAAAAAAAA", headers=globex)
    assert (theirs.status_code, theirs.get_data()) == (unknown.status_code, unknown.get_data())
    assert client.patch(path, headers=globex, json={"meta": {}}).get_data() == unknown.get_data()
    assert client.get("/identities?external_client_id=acme", headers=globex).get_json() == {"items": []}
    refused = client.post("/identities", headers=globex, json={"external_client_id": "initech"})
    assert refused.status_code == 403
    assert client.patch(path, headers=admin, json={"limits": [{**roomy, "limit": 5000}]}).status_code == 200
    assert client.delete(path, headers=admin).status_code == 204


@pytest.mark.parametrize(
    ("limit", "field"),
    [
        ({"name": "x"}, "_schema"),
        ({"name": "x", "limit": 5}, "_schema"),
        ({"name": "x", "limit": 5, "period": 10, "remaining": 3}, "_schema"),
        ({"name": "X Y", "remaining": 3}, "name"),
        ({"name": "x", "remaining": -1}, "remaining"),
        ({"name": "x", "remaining": 10**13}, "remaining"),
        ({"name": "x", "limit": 0, "period": 10}, "limit"),
        ({"name": "x", "limit": 5, "period": 10, "auto_apply": "yes"}, "auto_apply"),
    ],
)
def test_a_limit_is_one_kind_or_the_other_and_checked(
    app: Flask, issue_key: IssueKey, limit: dict[str, Any], field: str
) -> None:
    refused = app.test_client().post(
        "/identities", headers=manager(issue_key), json={"external_client_id": "acme", "limits": [limit]}
    )
    assert refused.status_code == 422, refused.get_json()
    assert field in refused.get_json()["errors"]["json"]["limits"]["0"]


def test_an_identitys_usage_adds_up_all_its_keys(app: Flask, issue_key: IssueKey) -> None:
    client = app.test_client()
    acme = manager(issue_key)
    identity = client.post("/identities", headers=acme, json={"external_client_id": "acme"}).get_json()
    keys = [issue_key(external_client_id="acme")[1] for _ in range(2)]
    assert outcomes(app, "/protected-with-key", keys, 6) == {(200, None): 6}
    with app.app_context():
        current_state().verifier.flush_usage()
    used = client.get(f"/identities/{identity['id']}/usage?granularity=day", headers=acme).get_json()
    [today] = used["items"]
    assert today["counts"] == {"VALID": 6 + 1}  # and the manager's key, at the POST (this GET is not flushed yet)
    other = client.get(f"/identities/{identity['id']}/usage", headers=manager(issue_key, "globex"))
    assert other.status_code == 404


# --- identity.credits_low and identity.rate_limited -------------------------------------------------


@pytest.fixture
def webhook_app(database_url: str) -> Iterator[Flask]:
    """An app that can register webhook endpoints (its workers' sender off: the test sends)."""
    with migrated_app(database_url, **webhook_settings(KEYSERVICE_WEBHOOKS_SEND="false")) as app:

        @app.post("/costly")
        @require_key(cost=7)
        def costly_view() -> dict[str, Any]:
            return {"ok": True}

        yield app


def test_low_credits_and_a_flood_are_announced_once_signed(webhook_app: Flask) -> None:
    app = webhook_app
    client = app.test_client()
    with app.app_context():
        _, admin = KeyService.create_key(name="operator", external_client_id="ops", scopes=["keys:admin"])
        _, key = KeyService.create_key(name="app", external_client_id="acme")
        db.session.commit()
    pool = {"name": "credits", "remaining": 100, "low_threshold": 30}
    burst = {"name": "burst", "limit": 35, "period": 60}  # 5 checks of 7
    identity = client.post(
        "/identities", headers=bearer(admin), json={"external_client_id": "acme", "limits": [pool, burst]}
    ).get_json()
    with serving(Receiver()) as server:
        receiver = server.receiver
        endpoint = client.post(
            "/webhooks",
            headers=bearer(admin),
            json={"url": receiver.url, "events": ["identity.credits_low", "identity.rate_limited"]},
        ).get_json()
        receiver.secret = endpoint["secret"]
        # 100 credits at 7 each: 93, 86, 79, 72, 65 (the burst of 5 is spent), then a flood of refusals.
        assert outcomes(app, "/costly", [key], 5) == {(200, None): 5}
        assert outcomes(app, "/costly", [key], 40, threads=8) == {(429, "burst"): 40}
        # Another worker (an app of its own on the same database) refused too: it finds the
        # announcement made, and its refusals stay refusals.
        with migrated_app(app.config["SQLALCHEMY_DATABASE_URI"]) as other_worker:
            other_worker.add_url_rule("/costly", "costly", require_key(cost=7)(lambda: {"ok": True}), methods=["POST"])
            assert outcomes(other_worker, "/costly", [key], 10, threads=4) == {(429, "burst"): 10}
        # As a minute later: the burst has room again; and the pool crosses 30 at 23.
        limits_of(app, "acme", {**pool, "remaining": 37}, {**burst, "limit": 1000})
        assert outcomes(app, "/costly", [key], 3) == {(200, None): 3}  # 30, then 23: below 30, then 16
        send_due(app)
        got = receiver.accepted()
    assert all(item.verified for item in got)
    assert [item.payload["type"] for item in got] == ["identity.rate_limited", "identity.credits_low"]
    rate_limited, credits_low = (item.payload["data"] for item in got)
    assert (rate_limited["id"], rate_limited["limit"]["name"]) == (identity["id"], "burst")
    assert (credits_low["limit"]["name"], credits_low["limit"]["remaining"]) == ("credits", 23)
    assert key not in "".join(item.body.decode() for item in got)


# --- flask keys identities ------------------------------------------------------------------------


def test_the_cli_makes_shows_changes_and_deletes_an_identity(app: Flask, issue_key: IssueKey) -> None:
    runner = app.test_cli_runner()

    def run(*args: str) -> Any:
        result = runner.invoke(args=["keys", "identities", *args])
        assert result.exit_code == 0, result.output
        return result

    made = json.loads(
        run(
            "create",
            "acme",
            "--ratelimit",
            "requests=20/10s",
            "--credits",
            "credits=100",
            "--refill",
            "credits=100/monthly",
            "--low",
            "credits=10",
            "--credits",
            "tokens=5000",
            "--manual",
            "tokens",
            "--json",
        ).stdout
    )
    assert made["limits"] == [
        {
            "name": "credits",
            "auto_apply": True,
            "remaining": 100,
            "refill": {"amount": 100, "interval": "monthly"},
            "low_threshold": 10,
        },
        {"name": "requests", "auto_apply": True, "limit": 20, "period": 10},
        {"name": "tokens", "auto_apply": False, "remaining": 5000, "refill": None, "low_threshold": None},
    ]
    assert json.loads(run("show", made["id"], "--json").stdout) == json.loads(run("show", "acme", "--json").stdout)
    _, key = issue_key(external_client_id="acme")
    assert outcomes(app, "/protected-with-key", [key], 3) == {(200, None): 3}
    assert json.loads(run("show", "acme", "--json").stdout)["limits"][0]["remaining"] == 97
    changed = json.loads(run("set", "acme", "--ratelimit", "requests=50/10s", "--json").stdout)
    assert [limit["name"] for limit in changed["limits"]] == ["requests"]  # exactly these: the operator may loosen
    run("delete", "acme")
    refused = runner.invoke(args=["keys", "identities", "show", "acme"])
    assert (refused.exit_code, refused.stderr.strip()) == (2, "Error: No identity has this id or client id.")
    for wrong in (
        ["--ratelimit", "requests"],
        ["--credits", "c=lots"],
        ["--refill", "nope=1/daily"],
        ["--ratelimit", "r=1/10s", "--manual", "x"],
    ):
        refused = runner.invoke(args=["keys", "identities", "create", "initech", *wrong])
        assert refused.exit_code == 2 and refused.stderr.startswith("Error: ") and "Traceback" not in refused.output


def test_a_rotation_carries_the_keys_own_limits_and_moves_its_credits(app: Flask, issue_key: IssueKey) -> None:
    key_id, old = issue_key(external_client_id="acme")
    with app.app_context():
        own = [{"name": "requests", "limit": 2, "period": 60}, {"name": "credits", "remaining": 5}]
        set_limits(db.session, own, may_loosen=True, key_id=key_id)
        db.session.commit()
    manager = bearer(issue_key(name="m", external_client_id="acme", scopes=("keys:read", "keys:write"))[1])
    rotated = app.test_client().post(f"/keys/{key_id}/rotate", headers=manager, json={"grace_seconds": 3600})
    new = rotated.get_json()["key"]
    # The new key is held to the same rate limit; the credits are its own now, the old key has none.
    assert outcomes(app, "/protected-with-key", [new], 3) == {(200, None): 2, (429, "requests"): 1}
    assert outcomes(app, "/protected-with-key", [old], 1) == {(429, "credits"): 1}
    with app.app_context():
        left = db.session.scalars(select(NamedLimit.remaining).where(NamedLimit.name == "credits")).all()
    assert sorted(left) == [0, 3]


def test_a_keys_own_limits_through_the_api_tighten_for_a_manager_and_loosen_for_keys_admin(
    app: Flask, issue_key: IssueKey
) -> None:
    client = app.test_client()
    acme = manager(issue_key)
    admin = bearer(issue_key(name="operator", external_client_id="ops", scopes=("keys:admin",))[1])
    limits = [{"name": "requests", "limit": 3, "period": 60}]
    created = client.post("/keys", headers=acme, json={"name": "bot", "external_client_id": "acme", "limits": limits})
    assert created.status_code == 201, created.get_json()
    made = created.get_json()
    assert made["limits"] == [{"name": "requests", "auto_apply": True, "limit": 3, "period": 60}]
    assert outcomes(app, "/protected-with-key", [made["key"]], 4) == {(200, None): 3, (429, "requests"): 1}
    path = f"/keys/{made['id']}"
    raised = client.patch(path, headers=acme, json={"limits": [{**limits[0], "limit": 10}]})
    assert (raised.status_code, raised.get_json()["code"]) == (403, "LOOSENING_NEEDS_ADMIN")
    assert "limits.requests" in raised.get_json()["errors"]["json"]
    assert client.patch(path, headers=admin, json={"limits": []}).get_json()["limits"] == []
    events = client.get(f"{path}/events", headers=admin).get_json()["items"]
    assert events[-1]["changes"]["limits"] == [made["limits"], []]
    assert outcomes(app, "/protected-with-key", [made["key"]], 2) == {(200, None): 2}
