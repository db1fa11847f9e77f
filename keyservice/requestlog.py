"""One log line per request: its id, the client's address, method, path, status, the key's id and
outcome, the latency. It is the standalone service's only line per request (gunicorn's access log
is off in its settings).

The line goes through the standard ``logging`` module (logger ``keyservice.request``,
level INFO), with the fields as the record's attributes. It never holds the key:
only the key's public id, and the path without its query string. The request id
is the caller's ``X-Request-ID`` when it is a plain token, else a new one, and
comes back in the response's ``X-Request-ID``.

``configure_logging`` gives the standalone service's ``keyservice`` loggers one
handler on stderr, in JSON (one object per line) or text
(``KEYSERVICE_LOG_FORMAT``); a host app configures logging its own way.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

logger = logging.getLogger("keyservice.request")

# Every byte a client could use to forge a line, colour a terminal or blur where a value ends.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0x100))} | {
    ord("\\"): "\\\\", ord('"'): '\\"'}


def escape(sent: str | bytes) -> str:
    """``sent`` (bytes, or text taken as UTF-8) as one printable line: control and non-ASCII
    bytes as ``\\xNN``, ``\\`` and ``"`` as ``\\\\`` and ``\\"``."""
    data = sent if isinstance(sent, bytes) else sent.encode("utf-8", "surrogateescape")
    return data.decode("latin-1").translate(_ESCAPES)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
FIELDS = ("request_id", "client", "method", "path", "status", "key_id", "code", "latency_ms")


def register_request_log(app: Flask) -> None:
    """Log every request of ``app``."""
    app.before_request(_start)
    app.after_request(_log)


def _start() -> None:
    g.request_started = time.perf_counter()
    sent = request.environ.get("HTTP_X_REQUEST_ID", "")
    g.request_id = sent if _REQUEST_ID.fullmatch(sent) else secrets.token_hex(16)


def _log(response: Response) -> Response:
    verification = g.get("verification")
    fields = {
        "request_id": g.get("request_id"),
        "client": request.remote_addr,  # the caller's, behind KEYSERVICE_PROXIES
        "method": request.method,
        "path": request.path,
        "status": response.status_code,
        "key_id": getattr(verification, "key_id", None),
        "code": getattr(getattr(verification, "code", None), "value", None),
        "latency_ms": round((time.perf_counter() - g.get("request_started", time.perf_counter())) * 1000, 3),
    }
    logger.info("%s %s %s", request.method, request.path, response.status_code, extra=fields)
    if fields["request_id"]:
        response.headers["X-Request-ID"] = fields["request_id"]
    return response


def _value(value: object) -> str:
    return escape(str(value)).replace(" ", "\\x20")


class _TextFormatter(logging.Formatter):
    """``time level logger message``, then the request's fields as ``name=value``; the
    message and the values escaped (a value's spaces too, so that each pair ends where it seems to)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = [f"{name}={_value(getattr(record, name))}"
                 for name in FIELDS if getattr(record, name, None) is not None]
        return f"{line} {' '.join(pairs)}" if pairs else line


def configure_logging(log_format: str) -> None:
    """Send the ``keyservice`` loggers (INFO and up) to stderr, as JSON lines or text."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("keyservice")
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
