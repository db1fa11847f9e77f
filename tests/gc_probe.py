"""A WSGI app that says whether the garbage collector ran while it was loaded and runs now in
its worker: tests/test_gunicorn.py serves it with the service's gunicorn settings."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable
from typing import Any

COLLECTING_WHILE_LOADED = gc.isenabled()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = json.dumps({"while_loaded": COLLECTING_WHILE_LOADED, "now": gc.isenabled()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
