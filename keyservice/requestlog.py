"""One log line per request: its id, the client's address, method, path, status, the key's id and
outcome, the latency, and the worker (process id) that answered.

gunicorn writes it, once the response is sent, through the logger class of the
service's gunicorn settings (``accesslog.py``): the line replaces gunicorn's access
line, and any Flask app served with those settings gets it. What only the app knows
it leaves in the request's WSGI environ: ``@require_key`` the key's id and the
outcome (``verification/decorators.py``), the standalone service's
:class:`MarkedResponses` the request id (the caller's ``X-Request-ID`` when it is a
plain token, else a new one, and returned in the response's ``X-Request-ID``).

The line goes through the standard ``logging`` module (logger ``keyservice.request``,
level INFO), with the fields as the record's attributes. It never holds the key:
only the key's public id, and the path without its query string.

``configure_logging`` gives the standalone service's ``keyservice`` loggers one
handler on stderr, in JSON (one object per line) or text
(``KEYSERVICE_LOG_FORMAT``); a host app configures logging its own way.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
from collections.abc import Iterable
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from .core.errors import NOSNIFF
from .verification.decorators import CODE, KEY_ID

logger = logging.getLogger("keyservice.request")

# Every byte a client could use to forge a line, colour a terminal or blur where a value ends.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0x100))} | {
    ord("\\"): "\\\\",
    ord('"'): '\\"',
}


def escape(sent: str | bytes) -> str:
    """``sent`` (bytes, or text taken as UTF-8) as one printable line: control and non-ASCII
    bytes as ``\\xNN``, ``\\`` and ``"`` as ``\\\\`` and ``\\"``."""
    data = sent if isinstance(sent, bytes) else sent.encode("utf-8", "surrogateescape")
    return data.decode("latin-1").translate(_ESCAPES)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
FIELDS = ("request_id", "client", "method", "path", "status", "key_id", "code", "latency_ms", "worker")


# Where the service leaves the request's id, in its WSGI environ (the key's marks: decorators.py).
REQUEST_ID = "keyservice.request_id"


def _new_request_id() -> str:
    # A label to follow a request by, not a secret: random's generator (seeded anew in each
    # forked worker) makes it without a system call, which would let go of the interpreter lock.
    return f"{random.getrandbits(128):032x}"


_NOSNIFF = list(NOSNIFF.items())
_MARKED = frozenset({*(name.lower() for name in NOSNIFF), "x-request-id"})  # set here, whatever the view set


class MarkedResponses:
    """WSGI middleware for every response of the standalone service: not to be sniffed
    (``X-Content-Type-Options: nosniff``), and marked with its request's id, which it leaves in
    the environ for the log line and returns in ``X-Request-ID``.

    A middleware rather than ``after_request`` hooks: it adds two pairs to the header list
    where Flask's hooks set them one by one through werkzeug's header view and its proxies."""

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Answer the request, its response's headers marked."""
        sent = environ.get("HTTP_X_REQUEST_ID", "")
        environ[REQUEST_ID] = request_id = sent if _REQUEST_ID.fullmatch(sent) else _new_request_id()
        ours = [*_NOSNIFF, ("X-Request-ID", request_id)]

        def marked_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers = [header for header in headers if header[0].lower() not in _MARKED] + ours
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, marked_start_response)  # type: ignore[no-any-return]


def log_request(environ: dict[str, Any], status: int | None, seconds: float) -> None:
    """Write the request's line: what the app left in its ``environ``, its
    ``status`` and how many ``seconds`` it took. The client is ``REMOTE_ADDR`` as the app left it
    (behind ``KEYSERVICE_PROXIES``, the address the proxies saw)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    method = environ.get("REQUEST_METHOD")
    # A WSGI path is the bytes that came, one character each; as Flask reads it (request.path).
    path = environ.get("PATH_INFO", "").encode("latin-1", "replace").decode("utf-8", "replace")
    fields = {
        "request_id": environ.get(REQUEST_ID),
        "client": environ.get("REMOTE_ADDR"),
        "method": method,
        "path": path,
        "status": status,
        "key_id": environ.get(KEY_ID),
        "code": environ.get(CODE),
        "latency_ms": round(seconds * 1000, 3),
        "worker": os.getpid(),
    }
    logger.info("%s %s %s", method, path, status, extra=fields)


def _value(value: object) -> str:
    return escape(str(value)).replace(" ", "\\x20")


class _TextFormatter(logging.Formatter):
    """``time level logger message``, then the request's fields as ``name=value``; the
    message and the values escaped (a value's spaces too, so that each pair ends where it seems to)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = [
            f"{name}={_value(getattr(record, name))}" for name in FIELDS if getattr(record, name, None) is not None
        ]
        return f"{line} {' '.join(pairs)}" if pairs else line


# A request's record: a plain record's attributes and the request's fields, nothing more.
_REQUEST_RECORD_SIZE = len(logging.makeLogRecord({}).__dict__) + len(FIELDS)
_FIELD_NAMES = frozenset(FIELDS)


class _JsonFormatter(JsonFormatter):
    """python-json-logger's formatter, the request's line made directly: the same JSON, without the
    library's walk over every attribute of the record and the encoder it makes for each line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON object; a request's (:func:`log_request`) on the short way."""
        attributes = record.__dict__
        if (
            len(attributes) != _REQUEST_RECORD_SIZE
            or not attributes.keys() >= _FIELD_NAMES
            or not isinstance(record.msg, str)
            or record.exc_info
            or record.stack_info
        ):
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = {"asctime": record.asctime, "level": record.levelname, "logger": record.name, "message": record.message}
        return json.dumps(line | {name: getattr(record, name) for name in FIELDS})


def configure_logging(log_format: str) -> None:
    """Send the ``keyservice`` loggers (INFO and up) to stderr, as JSON lines or text."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            _JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level", "name": "logger"}
            )
        )
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("keyservice")
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
