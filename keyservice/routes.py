"""The standalone service's own routes: health checks, metrics and the example views."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, url_for

from .core.errors import StorageUnavailable
from .health import liveness_failure, readiness_failure
from .verification.decorators import require_key
from .verification.metrics import exposition

bp = Blueprint("service", __name__)


def _probe_answer(failure: str | None) -> Any:
    if failure is not None:
        raise StorageUnavailable(failure)
    return {"status": "ok"}


@bp.get("/")
def index() -> Any:
    """Where to go from here: the dashboard, and the management API's OpenAPI document."""
    return {
        "service": "keyservice",
        "dashboard": url_for("dashboard.page"),
        "openapi": url_for("keyservice-api-docs.openapi_json"),
    }


@bp.get("/healthz")
def healthz() -> Any:
    """Liveness: 200 while the process and its database answer a read, else a 503 problem."""
    return _probe_answer(liveness_failure())


@bp.get("/readyz")
def readyz() -> Any:
    """Readiness: 200 when the database takes a write (see health.py), else a 503 problem."""
    return _probe_answer(readiness_failure())


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
