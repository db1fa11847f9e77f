"""What every blueprint of the management API applies: body limits and checks, problem
responses for HTTP errors and for what the store refuses, the documented problem responses,
and no caching."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, request
from flask_smorest import Blueprint
from werkzeug.exceptions import HTTPException, UnsupportedMediaType

from ..core.errors import Conflict, InvalidInput, KeyServiceError, NeedsAdmin, ResourceNotFound, http_problem
from ..core.jsonguard import check_json
from .schemas import ProblemSchema
from .storeerrors import AdminOnly, InvalidValue, RecordNotFound, StoreError

MAX_BODY_BYTES = 64 * 1024
View = TypeVar("View", bound=Callable[..., Any])


def problems(blueprint: Blueprint, *statuses: int) -> Callable[[View], View]:
    """Document the problem responses a route can give, besides the auth ones."""

    def decorator(view: View) -> View:
        for status in (400, 401, 403, 429, 503, *statuses):
            view = blueprint.alt_response(status, schema=ProblemSchema, content_type="application/problem+json")(view)
        return view

    return decorator


def check_body() -> None:
    request.max_content_length = MAX_BODY_BYTES
    # Read whole (werkzeug stops at the cap: 413), whether its length was given or it came chunked.
    body = request.get_data(cache=True)  # cached: the schemas parse these same bytes
    # A body the schemas would not read (a form, plain text) must not pass as "no changes".
    if body and not request.is_json:
        raise UnsupportedMediaType("Send the body as application/json.")
    if body:
        # Not JSON (or not UTF-8): the schemas' parser answers it with a 400.
        with contextlib.suppress(ValueError):
            check_json(body.decode())


def no_store(response: Response) -> Response:
    # Create and rotate answer with a key; no cache along the way may keep any answer of /keys.
    response.headers["Cache-Control"] = "no-store"
    return response


def apply_api_rules(blueprint: Blueprint) -> None:
    """Check bodies before the schemas read them, and answer HTTP errors with problems."""
    blueprint.before_request(check_body)
    blueprint.register_error_handler(HTTPException, http_problem)


def problem_for(error: StoreError, location: str = "json") -> KeyServiceError:
    """The management API's error for what the store refused: ``location`` is where the
    request carried an invalid value (``json``, ``query`` or ``path``), under which the
    problem's ``errors`` name its field."""
    if isinstance(error, InvalidValue):
        return InvalidInput(error.message, errors={location: {error.field: error.problems}})
    if isinstance(error, AdminOnly):
        return NeedsAdmin(error.message, error.fields)
    if isinstance(error, RecordNotFound):
        return ResourceNotFound(error.message)
    return Conflict(error.message)  # StateConflict


def answer_store_errors(app: Flask) -> None:
    """Answer what the store refuses with problem responses, app-wide: on the management API's
    routes, and in a host's own views that issue keys (``KeyService.create_key``)."""
    app.register_error_handler(StoreError, lambda error: problem_for(error).to_response())
