"""The standalone service's own routes: a health check, metrics and the example views."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .decorators import require_key
from .errors import problem
from .metrics import exposition
from .state import current_state

bp = Blueprint("service", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    """200 when the database answers, else a 503 problem."""
    try:
        with current_state().db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return problem(503, "UNAVAILABLE", "Database unavailable", "The database does not answer.")
    return {"status": "ok"}


@bp.get("/metrics")
def metrics() -> Any:
    """Prometheus metrics, every worker's (see metrics.py)."""
    body, content_type = exposition()
    return body, 200, {"Content-Type": content_type}


@bp.post("/protected-with-key")
@require_key()
def protected_with_key() -> Any:
    """The example protected view: any valid key gets in."""
    return {"protected": True, "external_client_id": g.auth.external_client_id}


@bp.post("/unprotected")
def unprotected() -> Any:
    """The same view without a key, for comparison (and the benchmark's baseline)."""
    return {"protected": False}
