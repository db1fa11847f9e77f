"""The self-serve page in headless Chromium (Debian's, driven by Playwright), on the example SaaS
(examples/saas_app.py: Flask-Login, its own layout) served by gunicorn over real HTTP.

A customer signs in with the example's login form and manages their team's keys with the mouse and
with the keyboard alone; pages of an attacker's try to change keys with the customer's cookie;
axe-core checks the page and its dialogs at desktop and phone sizes. Screenshots go to a temporary
folder, or to ``SCREENSHOTS_DIR`` (``make screenshots`` renews docs/screenshots/ that way).
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Locator, Page, Request, Response

from examples import saas_app

from .helpers import KEY_FORMAT, bearer, wait_until
from .servers import request, service_environment, serving

pytestmark = pytest.mark.slow  # starts gunicorn and a browser

DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
PASSWORD = "correct horse battery staple"
AXE = Axe()


@dataclass(frozen=True)
class Server:
    base: str
    log: Path


@pytest.fixture(scope="module")
def saas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The example under gunicorn (2 workers, debug logging and the access log on), on a SQLite
    database with a user in each of the teams the tests use."""
    folder = tmp_path_factory.mktemp("saas")
    database = f"sqlite:///{folder / 'saas.db'}"
    settings = {"SECRET_KEY": secrets.token_hex(), "SQLALCHEMY_DATABASE_URI": database, "KEYSERVICE_BCRYPT_ROUNDS": 4}
    app = saas_app.create_app(settings)
    for team in ("acme", "globex", "keyboard", "leaks", "forged", "shots", "axe"):
        added = app.test_cli_runner().invoke(args=["add-user", f"{team}@example.com", team], input=f"{PASSWORD}\n" * 2)
        assert added.exit_code == 0, added.output
    with app.app_context():
        saas_app.db.engine.dispose()
    environ = service_environment(
        database,
        **{f"FLASK_{name}": str(value) for name, value in settings.items()},
        FLASK_KEYSERVICE_USAGE_FLUSH_INTERVAL="0.5",
    )
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "--log-level", "debug", "--access-logfile", "-"]
    log = folder / "gunicorn.log"
    with serving([*command, "examples.saas_app:create_app()"], environ, log, ready="/login") as base:
        yield Server(base, log)


def signed_in(browser: Browser, saas: Server, team: str, viewport: dict[str, int] = DESKTOP) -> Page:
    """A new browser profile, signed in on the example's form as the user of ``team``, on /my-keys."""
    context = browser.new_context(viewport=viewport)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=saas.base)
    page = context.new_page()
    page.goto(saas.base + "/my-keys")
    assert page.url == f"{saas.base}/login?next=%2Fmy-keys"  # signed out: to the host's login
    page.get_by_label("Email").fill(f"{team}@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(saas.base + "/my-keys")
    return page


def create_key(page: Page, name: str, expires: str = "never", scopes: tuple[str, ...] = ()) -> str:
    """Create a key with the mouse; copy it from the dialog, confirm and close; return it."""
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create a key")
    dialog.get_by_label("Name").fill(name)
    dialog.get_by_label("Expires").select_option(expires)
    for scope in scopes:
        dialog.get_by_label(scope).check()
    dialog.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("dialog", name="Copy your new key")
    shown.get_by_role("button", name="Copy").click()
    shown.get_by_text("Copied to the clipboard.").wait_for()
    key: str = page.evaluate("navigator.clipboard.readText()")
    shown.get_by_label("I have copied the key and stored it safely").check()
    shown.get_by_role("button", name="Done").click()
    shown.wait_for(state="hidden")
    return key


def row_of(page: Page, name: str) -> Locator:
    return page.locator("#ks-table tbody tr", has=page.locator(".ks-name", has_text=name))


def call(saas: Server, route: str, key: str) -> tuple[int, dict[str, Any]]:
    method, path = route.split()
    answered = request(saas.base + path, method, bearer(key))
    return answered.status, json.loads(answered.body)


def test_a_customer_creates_a_key_copies_it_once_and_calls_the_api_as_their_team(
    browser: Browser, saas: Server
) -> None:
    page = signed_in(browser, saas, "acme")
    page.get_by_text("Your team has no API keys yet.").wait_for()  # the empty state, in words
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create a key")
    dialog.get_by_label("Name").fill("billing export")
    dialog.get_by_label("Description (optional)").fill("nightly, from the ops box")
    dialog.get_by_label("Expires").select_option("30d")
    dialog.get_by_label("reports:read").check()
    dialog.get_by_label("billing:read").check()
    dialog.get_by_role("button", name="Create key").click()

    shown = page.get_by_role("dialog", name="Copy your new key")
    shown.get_by_role("button", name="Copy").click()
    shown.get_by_text("Copied to the clipboard.").wait_for()
    key = page.evaluate("navigator.clipboard.readText()")
    assert KEY_FORMAT.fullmatch(key)
    # It does not close before the copy is confirmed: neither Done nor Escape.
    shown.get_by_role("button", name="Done").click()
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    assert shown.is_visible()
    assert "Tick the box once you have copied the key" in (shown.get_by_role("alert").text_content() or "")
    shown.get_by_label("I have copied the key and stored it safely").check()
    shown.get_by_role("button", name="Done").click()
    shown.wait_for(state="hidden")

    assert call(saas, "POST /protected-with-key", key) == (200, {"protected": True, "external_client_id": "acme"})
    assert call(saas, "GET /reports", key)[0] == 200 and call(saas, "GET /billing", key)[0] == 200
    status, problem = call(saas, "POST /reports", key)  # a scope not chosen
    assert (status, problem["code"]) == (403, "INSUFFICIENT_SCOPE")
    row = row_of(page, "billing export")
    assert "reports:read, billing:read" in (row.text_content() or "")
    assert "nightly, from the ops box" in (row.text_content() or "")
    expires = row.locator("td[data-label=Expires] time").get_attribute("datetime") or ""
    listed = json.loads(page.evaluate("async () => JSON.stringify(await (await fetch('/my-keys/keys')).json())"))
    assert listed["items"][0]["expires_at"] == expires

    # Signed out in another tab: the page says so, in words, at its next request.
    other_tab = page.context.new_page()
    other_tab.goto(saas.base + "/my-keys")
    other_tab.get_by_role("button", name="Sign out").click()
    page.get_by_label("Show revoked keys").check()
    error = page.locator("#ks-error")
    error.get_by_text("You are signed out.").wait_for()
    assert error.get_attribute("role") == "alert" and error.get_by_role("button", name="Try again").is_visible()


def csrf_token(page: Page) -> str:
    token: str = page.locator("#ks-keys").get_attribute("data-csrf-token") or ""
    return token


def fetch(page: Page, method: str, path: str, body: Any = None) -> tuple[int, str]:
    """A request crafted in the signed-in page's own origin: its cookie and its CSRF token."""
    answered: list[Any] = page.evaluate(
        """async ([method, path, body, token]) => {
            const init = {method, headers: {"Content-Type": "application/json", "X-CSRFToken": token}};
            if (method !== "GET") init.body = JSON.stringify(body);
            const response = await fetch(path, init);
            return [response.status, await response.text()];
        }""",
        [method, path, body, csrf_token(page)],
    )
    return answered[0], answered[1]


def test_another_teams_keys_are_not_listed_rotated_or_revoked_whatever_ids_are_sent(
    browser: Browser, saas: Server
) -> None:
    globex = signed_in(browser, saas, "globex")
    globex_key = create_key(globex, "globex deploy bot")
    globex_id = globex_key.split("_")[1]
    page = signed_in(browser, saas, "acme")
    page.locator("#ks-status").filter(has_text="key").wait_for()
    assert "globex" not in page.locator("#ks-table").inner_text()
    unknown = "AAAAAAAAAAAAAAAA"
    for action, body in (("rotate", {"grace_seconds": 0}), ("revoke", {"reason": "taken over"})):
        theirs = fetch(page, "POST", f"/my-keys/keys/{globex_id}/{action}", body)
        assert theirs == fetch(page, "POST", f"/my-keys/keys/{unknown}/{action}", body)
        assert theirs[0] == 404
    assert fetch(page, "GET", "/my-keys/keys?team=globex") == fetch(page, "GET", "/my-keys/keys?team=initech")
    assert fetch(page, "GET", "/my-keys/keys?team=globex")[0] == 404
    assert call(saas, "POST /protected-with-key", globex_key)[1]["external_client_id"] == "globex"
    globex.reload()
    assert "active" in (row_of(globex, "globex deploy bot").text_content() or "")


@contextmanager
def attacker_site(html: str) -> Iterator[int]:
    """A page of an attacker's on its own port of 127.0.0.1 (and of localhost); yield the port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_forged_post_from_another_site_with_the_customers_cookie_changes_nothing(
    browser: Browser, saas: Server
) -> None:
    page = signed_in(browser, saas, "forged")
    key = create_key(page, "target")
    key_id = key.split("_")[1]
    forged_form = f"""<!doctype html><title>Win a prize</title>
        <form method="post" action="{saas.base}/my-keys/keys/{key_id}/revoke">
          <input name="reason" value="pwned"></form>
        <script>document.forms[0].submit()</script>"""
    with attacker_site(forged_form) as port:
        # Another port of 127.0.0.1 is another origin of the same site: the cookie goes along (SameSite=Lax
        # allows it), and the missing token refuses the post.
        with page.expect_response(lambda response: "/revoke" in response.url) as same_site:
            page.goto(f"http://127.0.0.1:{port}/")
        assert same_site.value.status == 403 and same_site.value.json()["code"] == "CSRF_FAILED"
        sent = same_site.value.request.all_headers()
        assert "session=" in sent.get("cookie", "") and "x-csrftoken" not in sent
        # From another site (localhost), SameSite=Lax keeps the cookie at home.
        with page.expect_response(lambda response: "/revoke" in response.url) as cross_site:
            page.goto(f"http://localhost:{port}/")
        assert cross_site.value.status == 401 and "cookie" not in cross_site.value.request.all_headers()
    page.goto(saas.base + "/my-keys")
    assert "active" in (row_of(page, "target").text_content() or "")
    assert call(saas, "POST /protected-with-key", key)[0] == 200


def test_signed_out_the_page_sends_to_the_login_and_its_other_routes_answer_401(browser: Browser, saas: Server) -> None:
    page = browser.new_page()
    page.goto(saas.base + "/my-keys")
    assert page.url == saas.base + "/login?next=%2Fmy-keys"
    page.close()
    for method, path in (
        ("GET", "/my-keys/keys"),
        ("GET", "/my-keys/theme.css"),
        ("GET", "/my-keys/static/self_serve.js"),
        ("POST", "/my-keys/keys"),
        ("POST", "/my-keys/keys/AAAAAAAAAAAAAAAA/rotate"),
        ("POST", "/my-keys/keys/AAAAAAAAAAAAAAAA/revoke"),
    ):
        answered = request(saas.base + path, method, body={})
        assert (answered.status, json.loads(answered.body)["code"]) == (401, "SIGN_IN_REQUIRED"), path


@dataclass
class Traffic:
    """Every request a page sends and every answer it gets, from the moment it is watched."""

    requests: list[Request] = field(default_factory=list)
    responses: list[tuple[Response, bytes]] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("request", lambda sent: self.requests.append(sent))
        page.on("requestfinished", self._answered)

    def _answered(self, sent: Request) -> None:
        response = sent.response()
        if response is not None:
            self.responses.append((response, response.body()))


def test_the_secret_leaves_no_trace_but_the_create_answer(browser: Browser, saas: Server) -> None:
    page = signed_in(browser, saas, "leaks")
    traffic = Traffic()
    traffic.watch(page)
    key = create_key(page, "watched")
    rotated_row = row_of(page, "watched")
    rotated_row.get_by_role("button", name="Rotate").click()
    page.get_by_role("dialog", name="Rotate key").get_by_role("button", name="Rotate key").click()
    shown = page.get_by_role("dialog", name="Copy your new key")
    new_key = shown.locator("textarea").input_value()
    shown.get_by_label("I have copied the key and stored it safely").check()
    shown.get_by_role("button", name="Done").click()
    shown.wait_for(state="hidden")
    page.reload()
    page.locator("#ks-table tbody tr").first.wait_for()
    page.wait_for_load_state("networkidle")
    # The replaced key, in its grace period: revoking it would revoke its replacement too, and says so.
    replaced = page.locator("#ks-table tbody tr", has_text="replaced")
    replaced.get_by_role("button", name="Revoke").click()
    revoke = page.get_by_role("dialog", name="Revoke key")
    assert revoke.get_by_text("the key that replaced it is revoked too").is_visible()
    revoke.get_by_role("button", name="Cancel").click()
    revoke.wait_for(state="hidden")

    secrets_ = [key, new_key, key.split("_")[2], new_key.split("_")[2]]
    issuing = [
        (response, body)
        for response, body in traffic.responses
        if response.request.method == "POST" and response.status == 201
    ]
    assert len(issuing) == 2 and all(response.headers["cache-control"] == "no-store" for response, _ in issuing)
    for response, body in traffic.responses:
        if (response, body) in issuing:
            continue
        for secret in secrets_:
            assert secret.encode() not in body, response.url
            assert secret not in json.dumps(response.headers), response.url
    for sent in traffic.requests:
        assert not [secret for secret in secrets_ if secret in sent.url]
    cookies = page.context.cookies()
    assert cookies and not [cookie for cookie in cookies for secret in secrets_ if secret in cookie["value"]]
    held = page.evaluate(
        """() => [document.documentElement.outerHTML,
                  ...[...document.querySelectorAll("input, textarea")].map((field) => field.value),
                  JSON.stringify({...sessionStorage}), JSON.stringify({...localStorage}), document.cookie]"""
    )
    assert not [text for text in held for secret in secrets_ if secret in text]
    # Nor in what the server logged (gunicorn at debug level, with its access log).
    logged = saas.log.read_text(errors="replace")
    assert "/my-keys/keys" in logged and not [secret for secret in secrets_ if secret in logged]


def tab_to(page: Page, target: Locator, presses: int = 40) -> None:
    """Press Tab until ``target`` has the focus; fail if it is not reached."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if target.evaluate("element => element === document.activeElement"):
            return
    raise AssertionError(f"Tab never reached {target}")


def assert_focus_stays_in(page: Page, dialog: Locator, presses: int = 12) -> None:
    for key in ("Tab",) * presses + ("Shift+Tab",) * presses:
        page.keyboard.press(key)
        assert dialog.evaluate("dialog => dialog.contains(document.activeElement)"), key


def test_a_keyboard_alone_creates_copies_closes_and_revokes(browser: Browser, saas: Server) -> None:
    page = signed_in(browser, saas, "keyboard")
    page.get_by_text("Your team has no API keys yet.").wait_for()
    page.locator("body").focus()
    tab_to(page, page.get_by_role("button", name="Create key"))
    page.keyboard.press("Enter")
    create = page.get_by_role("dialog", name="Create a key")
    assert create.get_by_label("Name").evaluate("element => element === document.activeElement")
    page.keyboard.type("deploy bot")
    assert_focus_stays_in(page, create)
    tab_to(page, create.get_by_label("Expires"))
    page.keyboard.press("ArrowDown")  # "In 1 day"
    page.keyboard.press("ArrowDown")  # "In 7 days"
    tab_to(page, create.get_by_label("reports:write"))
    page.keyboard.press("Space")
    tab_to(page, create.get_by_role("button", name="Create key"))
    page.keyboard.press("Enter")

    shown = page.get_by_role("dialog", name="Copy your new key")
    shown.wait_for()
    assert_focus_stays_in(page, shown)
    tab_to(page, shown.get_by_role("button", name="Copy"))
    page.keyboard.press("Enter")
    shown.get_by_text("Copied to the clipboard.").wait_for()
    key = page.evaluate("navigator.clipboard.readText()")
    page.keyboard.press("Escape")  # not yet: the copy is not confirmed
    assert shown.is_visible()
    tab_to(page, shown.get_by_label("I have copied the key and stored it safely"))
    page.keyboard.press("Space")
    tab_to(page, shown.get_by_role("button", name="Done"))
    page.keyboard.press("Enter")
    shown.wait_for(state="hidden")
    assert page.get_by_role("button", name="Create key").evaluate("element => element === document.activeElement")
    assert call(saas, "POST /reports", key)[0] == 201
    row = row_of(page, "deploy bot")
    assert "reports:write" in (row.text_content() or "")

    tab_to(page, row.get_by_role("button", name="Revoke deploy bot"))
    page.keyboard.press("Enter")
    revoke = page.get_by_role("dialog", name="Revoke key")
    assert revoke.get_by_label("Reason (optional)").evaluate("element => element === document.activeElement")
    page.keyboard.type("rotated into vault")
    tab_to(page, revoke.get_by_role("button", name="Revoke key"))
    page.keyboard.press("Enter")
    revoke.wait_for(state="hidden")
    page.get_by_text('Revoked "deploy bot".').wait_for()
    status, problem = call(saas, "POST /protected-with-key", key)
    assert (status, problem["code"]) == (401, "REVOKED")
    tab_to(page, page.get_by_label("Show revoked keys"))
    page.keyboard.press("Space")
    assert "rotated into vault" in (row_of(page, "deploy bot").text_content() or "")


def serious_violations(page: Page) -> list[tuple[str, str, list[Any]]]:
    """What axe-core finds on the page whose impact is serious or critical."""
    found = AXE.run(page).response["violations"]
    return [
        (violation["id"], violation["impact"], [node["target"] for node in violation["nodes"]])
        for violation in found
        if violation["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_axe_finds_no_serious_issue_on_the_list_and_the_dialogs(
    browser: Browser, saas: Server, viewport: dict[str, int]
) -> None:
    page = signed_in(browser, saas, "axe", viewport)
    page.locator("#ks-status").filter(has_text="key").wait_for()
    if not page.locator("#ks-table tbody tr").count():
        create_key(page, "axe checked", "90d", ("reports:read",))
    assert serious_violations(page) == []
    page.get_by_role("button", name="Create key").click()
    create = page.get_by_role("dialog", name="Create a key")
    create.get_by_label("Expires").select_option("custom")
    assert serious_violations(page) == []
    name = f"dialog checked at {viewport['width']}"
    create.get_by_label("Name").fill(name)
    create.get_by_label("Expiry date").fill("2031-06-30")
    create.get_by_role("button", name="Create key").click()
    page.get_by_role("dialog", name="Copy your new key").wait_for()
    assert serious_violations(page) == []
    shown = page.get_by_role("dialog", name="Copy your new key")
    shown.get_by_label("I have copied the key and stored it safely").check()
    shown.get_by_role("button", name="Done").click()
    row_of(page, name).get_by_role("button", name="Revoke").click()
    page.get_by_role("dialog", name="Revoke key").wait_for()
    assert serious_violations(page) == []


def test_screenshots_of_the_page_at_desktop_and_phone_sizes(browser: Browser, saas: Server, screenshots: Path) -> None:
    page = signed_in(browser, saas, "shots")
    keys = [
        create_key(page, "billing export", "30d", ("billing:read",)),
        create_key(page, "reports dashboard", "1y", ("reports:read", "reports:write")),
        create_key(page, "staging smoke tests", "7d"),
    ]
    for count, key in zip((5, 12, 0), keys, strict=True):
        for _ in range(count):
            assert call(saas, "POST /protected-with-key", key)[0] == 200
    call(saas, "GET /reports", keys[0])  # a refused use: billing's key holds no reports:read

    def shows_use() -> bool:
        page.reload()
        page.locator("#ks-table tbody tr").first.wait_for()
        return "12 uses" in page.locator("#ks-table").inner_text()

    wait_until(shows_use, 10, "the uses reaching the page (each worker flushes every 0.5 s)")
    page.screenshot(path=screenshots / "self-serve-desktop.png", full_page=True)
    page.get_by_role("button", name="Create key").click()
    page.get_by_role("dialog", name="Create a key").get_by_label("Name").fill("nightly backup")
    page.screenshot(path=screenshots / "self-serve-create.png")
    page.get_by_role("dialog", name="Create a key").get_by_role("button", name="Create key").click()
    shown = page.get_by_role("dialog", name="Copy your new key")
    shown.wait_for()
    # No key goes into the repository, not even a test's: the dialog's copy is replaced first.
    shown.locator("textarea").evaluate("field => { field.value = 'sk_XXXXXXXXXXXXXXXX_' + 'X'.repeat(38) }")
    page.screenshot(path=screenshots / "self-serve-secret.png")
    phone = signed_in(browser, saas, "shots", PHONE)
    phone.locator("#ks-table tbody tr").first.wait_for()
    phone.screenshot(path=screenshots / "self-serve-phone.png", full_page=True)
    assert [path.name for path in sorted(screenshots.glob("self-serve-*.png"))] == [
        "self-serve-create.png",
        "self-serve-desktop.png",
        "self-serve-phone.png",
        "self-serve-secret.png",
    ]
