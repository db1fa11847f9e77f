"""The /dashboard page in headless Chromium (Debian's), driven by Playwright, against gunicorn.

Screenshots of the main views, at desktop and phone widths, are taken by these tests into a
temporary folder, or into the folder ``SCREENSHOTS_DIR`` names (``make screenshots``
renews docs/screenshots/ that way when the page changes).

The page is a client of the management API, whose own tests run on both databases: its
tests run on SQLite, and the whole flow of the first on PostgreSQL too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page

from .helpers import ON_SQLITE, bearer, wait_until
from .load import outcome
from .receivers import Receiver, serving, webhook_settings
from .servers import KeysCli, flask_command, gunicorn, request, service_environment
from .tokens import fetch_token

pytestmark = pytest.mark.slow  # starts the service, servers or a browser

DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[tuple[str, KeysCli]]:
    environ = service_environment(database_url, KEYSERVICE_BCRYPT_ROUNDS="4", KEYSERVICE_USAGE_FLUSH_INTERVAL="0.5")
    with gunicorn(environ, tmp_path / "gunicorn.log", workers=2) as base:
        yield base, KeysCli(environ)


def page_at(browser: Browser, base: str, viewport: dict[str, int] = DESKTOP) -> Page:
    """The dashboard in a new browser context (a tab of its own). Playwright dismisses any dialog
    the page opens unless a test answers it (:class:`Dialogs`)."""
    context = browser.new_context(viewport={"width": viewport["width"], "height": viewport["height"]})
    page = context.new_page()
    page.goto(base + "/dashboard")
    return page


class Dialogs:
    """The dialogs a page opens, as (type, message), each accepted (or, unless ``accept``, dismissed)."""

    def __init__(self, page: Page, accept: bool = True) -> None:
        self.opened: list[tuple[str, str]] = []
        self._accept = accept
        page.on("dialog", self._answer)

    def _answer(self, dialog: Dialog) -> None:
        self.opened.append((dialog.type, dialog.message))
        if self._accept:
            dialog.accept()
        else:
            dialog.dismiss()


def sign_in(page: Page, key: str) -> None:
    page.get_by_label("Management key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def once_refused(base: str, key: str, within: float = 2) -> tuple[int, str | None]:
    """The outcome of ``key`` at the protected route once it is refused (every worker re-reads
    a key's row within KEYSERVICE_CACHE_TTL), or still valid after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        answered = outcome(request(base + "/protected-with-key", "POST", bearer(key)))
        if answered != (200, None) or time.monotonic() > deadline:
            return answered
        time.sleep(0.1)


def test_sign_in_create_use_and_revoke_a_key_from_the_page(
    browser: Browser, screenshots: Path, service: tuple[str, KeysCli], database_url: str
) -> None:
    base, cli = service
    _, admin = cli.create_key("--scope", "keys:read", "--scope", "keys:write")
    page = page_at(browser, base)
    dialogs = Dialogs(page)
    sign_in(page, admin)
    page.get_by_label("Name", exact=True).fill("ci runner")
    page.get_by_label("Client id", exact=True).fill("acme")
    page.get_by_role("button", name="Create").click()
    shown = page.locator("#new-key-value")
    shown.wait_for()
    key = shown.text_content() or ""
    assert page.get_by_text("you won't see this key again").is_visible()

    used = request(base + "/protected-with-key", "POST", bearer(key))
    assert (used.status, json.loads(used.body)) == (200, {"protected": True, "external_client_id": "acme"})
    command = page.locator("#token-command").text_content() or ""
    assert command == f"curl -u {key.split('_')[1]}:$KEY -d grant_type=client_credentials {base}/oauth/token"
    assert fetch_token(base, key).status == 200  # what the command does

    row = page.locator("tr", has_text="ci runner")
    assert "active" in (row.text_content() or "")
    if database_url.startswith("sqlite"):
        usage = base + f"/keys/{key.split('_')[1]}/usage"
        wait_until(
            lambda: json.loads(request(usage, "GET", bearer(admin)).body)["items"],
            10,
            "the use reaching the usage table (at the workers' next flush, 0.5 s)",
        )
        row.get_by_role("button", name="Usage").click()
        page.locator("#usage-chart svg").wait_for()
        # No key goes into the repository, not even a test's: the page's copy is replaced first
        # (a screenshot mask is placed by the viewport and missed the key on a full page).
        shown.evaluate("element => { element.textContent = 'sk_XXXXXXXXXXXXXXXX_…' }")
        page.screenshot(path=screenshots / "dashboard-desktop.png", full_page=True)
    row.get_by_role("button", name="Revoke").click()
    row.wait_for(state="detached")  # the list without revoked keys no longer has it
    [(kind, message)] = dialogs.opened  # asked first
    assert kind == "confirm" and message.startswith('Revoke "ci runner"?') and "cannot be undone" in message
    assert once_refused(base, key) == (401, "REVOKED")


@ON_SQLITE
def test_rotate_asks_first_then_shows_the_new_key_once_and_the_old_one_stops(
    browser: Browser, service: tuple[str, KeysCli]
) -> None:
    base, cli = service
    _, admin = cli.create_key("--scope", "keys:read", "--scope", "keys:write")
    created = flask_command(cli.environ, "keys", "create", "--name", "nightly job", "--client-id", "acme")
    old_key = created.stdout.strip()
    assert once_refused(base, old_key, within=0) == (200, None)
    page = page_at(browser, base)
    dialogs = Dialogs(page)
    sign_in(page, admin)
    page.locator("tr", has_text="nightly job").get_by_role("button", name="Rotate").click()
    shown = page.locator("#new-key-value")
    shown.wait_for()
    new_key = shown.text_content() or ""
    [(kind, message)] = dialogs.opened
    assert kind == "confirm" and message.startswith('Rotate "nightly job"?') and "old key stops working" in message

    assert new_key != old_key and new_key.split("_")[1] != old_key.split("_")[1]
    assert once_refused(base, new_key, within=0) == (200, None)
    assert once_refused(base, old_key) == (401, "EXPIRED")  # the page rotates with no grace
    page.locator("#keys tbody tr", has_text=new_key.split("_")[1]).wait_for()  # the list has the successor

    page.get_by_role("button", name="Done").click()
    assert new_key not in page.content()
    page.reload()  # still signed in (the tab's sessionStorage), and the key is not shown again
    page.locator("#keys tbody tr").first.wait_for()
    assert new_key not in page.content() and page.locator("#new-key").is_hidden()


@ON_SQLITE
def test_dismissing_the_confirmation_leaves_the_key_alone(browser: Browser, service: tuple[str, KeysCli]) -> None:
    base, cli = service
    _, admin = cli.create_key("--scope", "keys:read", "--scope", "keys:write")
    key_id, key = cli.create_key()
    page = page_at(browser, base)
    dialogs = Dialogs(page, accept=False)
    sign_in(page, admin)
    row = page.locator("tr", has_text=key_id)
    for action in ("Rotate", "Revoke"):
        row.get_by_role("button", name=action).click()
    page.wait_for_load_state("networkidle")  # any request the page would send has been sent
    assert [(kind, message.split(" ", 1)[0]) for kind, message in dialogs.opened] == [
        ("confirm", "Rotate"),
        ("confirm", "Revoke"),
    ]
    shown = cli.show(key_id)
    assert (shown["revoked_at"], shown["expires_at"]) == (None, None)
    assert page.locator("#new-key").is_hidden() and row.is_visible()
    assert once_refused(base, key, within=1) == (200, None)


@ON_SQLITE
def test_the_management_key_stays_in_the_tabs_session_storage_until_sign_out(
    browser: Browser, service: tuple[str, KeysCli]
) -> None:
    base, cli = service
    _, reader = cli.create_key("--scope", "keys:read")
    page = page_at(browser, base)
    sign_in(page, reader)
    page.locator("#keys tbody tr").first.wait_for()

    def stored() -> dict[str, object]:
        held: dict[str, object] = page.evaluate(
            "() => ({session: {...sessionStorage}, local: {...localStorage}, cookie: document.cookie})"
        )
        return held

    assert stored() == {"session": {"keyservice.managementKey": reader}, "local": {}, "cookie": ""}
    assert not [cookie for cookie in page.context.cookies() if reader in cookie["value"]]
    assert reader not in page.url and page.get_by_label("Management key").input_value() == ""
    other_tab = page.context.new_page()  # the same browser profile, another tab: not signed in
    other_tab.goto(base + "/dashboard")
    assert other_tab.locator("#sign-in").is_visible() and other_tab.locator("#signed-in").is_hidden()

    page.get_by_role("button", name="Sign out").click()
    assert stored() == {"session": {}, "local": {}, "cookie": ""}
    assert page.locator("#sign-in").is_visible() and page.locator("#keys tbody tr").count() == 0
    page.reload()
    assert page.locator("#sign-in").is_visible() and page.locator("#signed-in").is_hidden()


@ON_SQLITE
def test_without_signing_in_the_page_shows_no_key_data(
    browser: Browser, screenshots: Path, service: tuple[str, KeysCli]
) -> None:
    base, cli = service
    cli.create_key()
    page = page_at(browser, base)
    assert page.locator("#signed-in").is_hidden()
    assert page.locator("#keys tbody tr").count() == 0
    assert "acme" not in page.content()
    page.screenshot(path=screenshots / "dashboard-sign-in.png")


@ON_SQLITE
def test_a_clients_management_key_sees_only_that_clients_keys(
    browser: Browser, screenshots: Path, service: tuple[str, KeysCli]
) -> None:
    base, cli = service
    environ = cli.environ
    for client, name in (("client-a", "a-one"), ("client-a", "a-two"), ("client-b", "b-one")):
        assert flask_command(environ, "keys", "create", "--name", name, "--client-id", client).returncode == 0
    a_manager = flask_command(
        environ, "keys", "create", "--name", "a-manager", "--client-id", "client-a", "--scope", "keys:read"
    ).stdout.strip()
    page = page_at(browser, base, PHONE)
    sign_in(page, a_manager)
    page.locator("#keys tbody tr").first.wait_for()
    names = page.locator("#keys tbody tr td:first-child").all_text_contents()
    assert sorted(names) == ["a-manager", "a-one", "a-two"]
    page.get_by_label("Search by name").fill("two")
    assert page.locator("#keys tbody tr:visible").count() == 1
    page.get_by_label("Search by name").fill("")
    page.screenshot(path=screenshots / "dashboard-phone.png", full_page=True)

    # Another client's keys asked for by hand: the API answers with none of them.
    page.get_by_label("Client", exact=True).fill("client-b")
    page.get_by_label("Client", exact=True).press("Enter")
    page.get_by_text("No keys.").wait_for()
    assert "b-one" not in page.content()


@ON_SQLITE
def test_api_errors_are_shown_in_words(browser: Browser, service: tuple[str, KeysCli]) -> None:
    base, cli = service
    _, reader = cli.create_key("--scope", "keys:read")
    page = page_at(browser, base)
    sign_in(page, "sk_0000000000000000_" + "a" * 38)
    assert "refused" in (page.get_by_role("alert").text_content() or "")
    sign_in(page, reader)
    page.get_by_label("Name", exact=True).fill("x")
    page.get_by_label("Client id", exact=True).fill("acme")
    page.get_by_role("button", name="Create").click()
    page.get_by_text("lacks the scope").wait_for()
    _, writer = cli.create_key("--scope", "keys:read", "--scope", "keys:write")
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, writer)
    page.get_by_label("Name", exact=True).fill("x")
    page.get_by_label("Client id", exact=True).fill("acme")
    page.get_by_label("Scopes").fill("reports:read Not-A-Scope!")
    page.get_by_role("button", name="Create").click()
    # The API's {"json": {"scopes": {"1": ["Must be ..."]}}}, the second scope's error, in words.
    page.get_by_text("Please check: scopes").wait_for()
    assert page.get_by_role("alert").text_content() == "Please check: scopes 2: Must be 1 to 100 of a-z 0-9 _ . : * -."


@ON_SQLITE
def test_an_operator_sees_a_leaked_key_and_the_webhook_endpoints_deliveries(
    browser: Browser, database_url: str, tmp_path: Path
) -> None:
    receiver = Receiver()
    with serving(receiver):
        environ = service_environment(database_url, KEYSERVICE_BCRYPT_ROUNDS="4", **webhook_settings())
        cli = KeysCli(environ)
        _, admin = cli.create_key("--scope", "keys:admin")
        assert flask_command(environ, "webhooks", "create", receiver.url, "--event", "key.leaked").returncode == 0
        leaked_id, leaked = cli.create_key()
        (tmp_path / "found.env").write_text(f"KEY={leaked}\n")
        assert flask_command(environ, "keys", "scan", "--revoke", str(tmp_path / "found.env")).returncode == 1
        with gunicorn(environ, tmp_path / "gunicorn.log", workers=1) as base:
            page = page_at(browser, base)
            sign_in(page, admin)
            page.get_by_label("Revoked too").check()
            row = page.locator("tr", has_text=leaked_id)
            row.wait_for()
            assert "leaked" in (row.text_content() or "")
            receiver.wait_for(1)  # the worker's sender delivered key.leaked
            page.locator("#endpoints tbody tr", has_text=receiver.url).get_by_role("button", name="Deliveries").click()
            delivery = page.locator("#deliveries tbody tr").first
            delivery.wait_for()
            assert "key.leaked" in (delivery.text_content() or "") and "delivered" in (delivery.text_content() or "")


@ON_SQLITE
def test_filtering_by_a_client_shows_its_identitys_shared_limits_and_use(
    browser: Browser, service: tuple[str, KeysCli]
) -> None:
    base, cli = service
    # An operator of its own client: acme's management keys would draw on acme's credits too.
    operator = ("keys", "create", "--name", "operator", "--client-id", "ops", "--scope", "keys:admin")
    admin = flask_command(cli.environ, *operator).stdout.strip()
    made = flask_command(
        cli.environ,
        "keys",
        "identities",
        "create",
        "acme",
        "--ratelimit",
        "requests=20/10s",
        "--credits",
        "credits=500",
        "--low",
        "credits=50",
    )
    assert made.returncode == 0, made.stderr
    _, key = cli.create_key()  # of acme
    for _ in range(3):
        assert request(base + "/protected-with-key", "POST", bearer(key)).status == 200
    page = page_at(browser, base)
    sign_in(page, admin)
    page.get_by_label("Client", exact=True).fill("acme")
    page.get_by_label("Client", exact=True).press("Enter")
    panel = page.get_by_role("region", name="Customer acme")
    panel.locator("#identity-limits tbody tr").first.wait_for()
    rows = panel.locator("#identity-limits tbody tr").all_text_contents()
    assert rows == ["creditscredits497 left, alert below 50every check", "requestsrate limit20 per 10 severy check"]
    panel.locator("#identity-chart svg").wait_for()
    page.get_by_label("Client", exact=True).fill("globex")
    page.get_by_label("Client", exact=True).press("Enter")
    page.get_by_text("This client has no identity").wait_for()
    assert page.locator("#identity-limits").is_hidden()
