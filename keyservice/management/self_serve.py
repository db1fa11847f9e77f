"""``/my-keys``: the page where a host's signed-in customers manage their own team's keys.

Who is signed in is the host's to say: its ``principal_loader`` reads its own session (Flask-Login's
``current_user``, say) and returns a :class:`~keyservice.core.scopes.Principal` whose ``client_ids``
are the user's teams. The page creates, lists, rotates and revokes keys of those teams only, with
scopes from ``KEYSERVICE_SELF_SERVE_SCOPES`` that the principal holds itself.

    GET  /my-keys                       the page (HTML; its script and styles are files of their own)
    GET  /my-keys/theme.css             the host's brand colour
    GET  /my-keys/keys                  ?team=&include_revoked=&cursor= the team's keys, newest first
    POST /my-keys/keys                  create: 201 with the full key, this once
    POST /my-keys/keys/<id>/rotate      {"grace_seconds"}: 201 with the new key, this once
    POST /my-keys/keys/<id>/revoke      {"reason"}

The session cookie alone never changes anything: every POST needs the page's CSRF token
(Flask-WTF's, bound to the session) in ``X-CSRFToken``. Signed out, the page redirects to the
host's login and every other route answers 401. A key of another team answers exactly as one
that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf.csrf import generate_csrf, validate_csrf
from marshmallow import Schema, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from wtforms.validators import ValidationError as CsrfError

from ..core.dberrors import storage_unavailable
from ..core.errors import (
    CsrfFailed,
    InvalidInput,
    NotAllowed,
    ResourceNotFound,
    SignInRequired,
    StorageUnavailable,
    http_problem,
)
from ..core.models import ApiKey, utcnow
from ..core.scopes import Principal
from ..core.state import current_state
from .apirules import check_body, problem_for
from .principals import current_principal
from .schemas import (
    EXPIRY_PRESETS,
    RotateSchema,
    SelfServeCreateSchema,
    SelfServeKeyCreatedSchema,
    SelfServeKeyListSchema,
    SelfServeKeySchema,
    SelfServeListArgsSchema,
    SelfServeRevokeSchema,
)
from .store import create_key, daily_use, list_keys
from .storeerrors import InvalidValue
from .tenancy import managed_key, revoke_managed, rotate_managed

self_serve = Blueprint(
    "keyservice_self_serve",
    __name__,
    url_prefix="/my-keys",
    template_folder="templates",
    static_folder="static/self_serve",
    static_url_path="/static",
)

PAGE_SIZE = 50
NO_SUCH_TEAM = "No team of yours has this id."
# No inline script or style anywhere on the page, no framing, no form posting elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self';"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _teams(principal: Principal) -> list[str]:
    return sorted(principal.client_ids or ())


def _login_url() -> str | None:
    """Where a signed-out visitor of the page goes: the configured view or URL, else Flask-Login's."""
    view = current_state().settings.self_serve_login_view
    if not view:
        login_manager = getattr(current_app, "login_manager", None)
        view = getattr(login_manager, "login_view", None) or ""
    if not view:
        return None
    target = view if "/" in view else url_for(view)  # an endpoint's name has no "/"
    return f"{target}{'&' if '?' in target else '?'}{urlencode({'next': request.full_path.rstrip('?')})}"


@self_serve.before_request
def _sign_in_then_csrf_then_body() -> Response | None:
    """In this order, whatever the route: the host's sign-in (401, or the page's redirect),
    a team to manage, the CSRF token of any change (403), then the body's size and form."""
    loader = current_state().principal_loader
    principal = loader() if loader is not None else None
    if principal is None:
        login = _login_url() if request.endpoint == "keyservice_self_serve.page" else None
        if login is not None:
            return redirect(login)  # type: ignore[return-value]
        raise SignInRequired("Sign in to manage your team's API keys.")
    if principal.client_ids is None or not principal.client_ids:
        raise NotAllowed("This page manages a team's keys; the signed-in user has no team (operators: /dashboard).")
    g.principal = principal
    if request.method not in SAFE_METHODS:
        try:
            validate_csrf(request.headers.get("X-CSRFToken"))
        except CsrfError as error:
            raise CsrfFailed(f"{error} Reload the page and try again.") from None
        if not principal.holds("keys:write"):
            raise NotAllowed("You may see your team's keys but not change them.")
        check_body()
    elif not principal.holds("keys:read"):
        raise NotAllowed("You may not see your team's keys.")
    return None


@self_serve.after_request
def _page_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.endpoint != "keyservice_self_serve.static":
        response.headers["Cache-Control"] = "no-store"  # a key is in create's and rotate's answer
    return response


self_serve.register_error_handler(HTTPException, http_problem)


@self_serve.errorhandler(SQLAlchemyError)
def _database_error(error: SQLAlchemyError) -> Response:
    if not storage_unavailable(error):
        raise error  # a bug, not an outage: the host's own 500
    return StorageUnavailable.logged(error).to_response()


def _load(schema: Schema, data: Any, location: str) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = schema.load(data if data is not None else {})
    except ValidationError as error:
        raise InvalidInput("Some fields are not valid.", errors={location: error.messages}) from None
    return loaded


def _body() -> Any:
    """The JSON body (checked by :func:`check_body`); none at all reads as ``{}``, but malformed
    JSON is a 400, never "no changes", however the body came (with a length or chunked)."""
    return request.get_json() if request.get_data(cache=True) else None


def _team(requested: str | None) -> str:
    """The team a request is about: the one asked for if it is the principal's, or its only one."""
    teams = _teams(current_principal())
    if requested is None:
        if len(teams) > 1:
            raise InvalidInput("Name the team.", errors={"json": {"team": ["Required: you are in several teams."]}})
        return teams[0]
    if requested not in teams:
        raise ResourceNotFound(NO_SUCH_TEAM)
    return requested


def offered_scopes(principal: Principal) -> list[str]:
    """The scopes the page offers ``principal``: those configured that it may grant."""
    return [scope for scope in current_state().settings.self_serve_scopes if not principal.ungrantable([scope])]


def _as_seen(api_keys: list[ApiKey]) -> list[dict[str, Any]]:
    """The keys' fields the page shows, with each one's last 7 days' use (for a schema to dump)."""
    use = daily_use(current_state().db.session, [api_key.id for api_key in api_keys])
    shown = [name for name in SelfServeKeySchema().fields if name != "use_7d"]
    return [{name: getattr(api_key, name) for name in shown} | {"use_7d": use[api_key.id]} for api_key in api_keys]


def _with_secret(api_key: ApiKey, key: str) -> dict[str, Any]:
    """What create and rotate answer: the key as the page shows it and, this once, the full key."""
    created: dict[str, Any] = SelfServeKeyCreatedSchema().dump(_as_seen([api_key])[0] | {"key": key})
    return created


def page_context() -> dict[str, Any]:
    """What the page's templates need, as one variable ``keyservice_page`` (no clash with a host
    layout's own): for a host that renders the ``key_manager`` macro in a page of its own
    (``render_template("mine.html", **page_context())``), in a request of a signed-in user."""
    settings = current_state().settings
    principal = current_principal()
    return {
        "keyservice_page": {
            "title": settings.self_serve_title,
            "teams": _teams(principal),
            "scopes": offered_scopes(principal),
            "can_write": principal.holds("keys:write"),
            "csrf_token": generate_csrf(),
            "layout": settings.self_serve_layout or "keyservice/self_serve/standalone.html",
        }
    }


@self_serve.get("")
def page() -> str:
    """The page: the team's keys, and the dialogs to create, rotate and revoke them."""
    return render_template("keyservice/self_serve/page.html", **page_context())


@self_serve.get("/theme.css")
def theme() -> Response:
    """The brand colour, and a text colour that reads on it (black or white, whichever contrasts more)."""
    brand = current_state().settings.self_serve_brand_color
    text = "#000000" if _contrast_with_black(brand) >= 7 else "#ffffff"
    css = f":root {{ --ks-brand: {brand}; --ks-on-brand: {text}; }}\n"
    return Response(css, mimetype="text/css")


def _contrast_with_black(color: str) -> float:
    """WCAG 2's contrast ratio of ``color`` (#rrggbb) against black."""
    channels = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return (luminance + 0.05) / 0.05


@self_serve.get("/keys")
def list_team_keys() -> dict[str, Any]:
    """The team's keys, newest first, ``PAGE_SIZE`` at a time, each with its last 7 days' use."""
    args = _load(SelfServeListArgsSchema(), request.args.to_dict(), "query")
    team = _team(args["team"])
    try:
        items, next_cursor = list_keys(
            current_state().db.session,
            client_ids=[team],
            include_revoked=args["include_revoked"],
            limit=PAGE_SIZE,
            cursor=args.get("cursor"),
        )
    except InvalidValue as error:
        raise problem_for(error, location="query") from None
    listed: dict[str, Any] = SelfServeKeyListSchema().dump({"items": _as_seen(items), "next_cursor": next_cursor})
    return listed


@self_serve.post("/keys")
def create() -> tuple[dict[str, Any], int]:
    """Issue a key for the team; the answer holds the full key, this once."""
    body = _load(SelfServeCreateSchema(), _body(), "json")
    team = _team(body["team"])
    offered = offered_scopes(current_principal())
    not_offered = [scope for scope in body["scopes"] if scope not in offered]
    if not_offered:
        raise InvalidInput(
            "Choose scopes from those offered.", errors={"json": {"scopes": [f"Not offered: {not_offered[0]}"]}}
        )
    preset = EXPIRY_PRESETS.get(body["expires"])
    expires_at: datetime | None = body["expires_at"]
    if preset is not None:
        expires_at = utcnow() + preset
    state = current_state()
    api_key, key = create_key(
        state.db.session,
        state.settings,
        name=body["name"],
        description=body["description"],
        external_client_id=team,
        scopes=body["scopes"],
        expires_at=expires_at,
        created_by=current_principal().id,
    )
    state.db.session.commit()
    return _with_secret(api_key, key), 201


@self_serve.post("/keys/<key_id>/rotate")
def rotate(key_id: str) -> tuple[dict[str, Any], int]:
    """A new key with the same settings; the old one works ``grace_seconds`` more."""
    body = _load(RotateSchema(), _body(), "json")
    new_key, key = rotate_managed(current_principal(), current_state(), key_id, body["grace_seconds"])
    current_state().db.session.commit()
    return _with_secret(new_key, key), 201


@self_serve.post("/keys/<key_id>/revoke")
def revoke(key_id: str) -> dict[str, Any]:
    """Revoke the key for good, with the reason given."""
    body = _load(SelfServeRevokeSchema(), _body(), "json")
    session = current_state().db.session
    revoke_managed(current_principal(), session, key_id, body["reason"])
    session.commit()
    shown: dict[str, Any] = SelfServeKeySchema().dump(_as_seen([managed_key(current_principal(), session, key_id)])[0])
    return shown
