"""gunicorn's logger for the service (``logger_class`` in gunicorn.conf.py): one line per request.

After each request it writes the request's line (``requestlog.py``: id, client, key
id, outcome, latency, worker) on the logger ``keyservice.request``, set up here in JSON or
text (``KEYSERVICE_LOG_FORMAT``), so that the line is the same for any app served
with these settings. gunicorn's own access log stays off unless an operator turns
it on (``--access-logfile``); then it is a second line per request, escaped as follows.

gunicorn writes the decoded path (``%(U)s``) and the headers as they came, so
``/%0A...`` would start a forged line and ``%1B[31m`` would reach a terminal as
an escape code. Every value here is written with its control, non-ASCII, quote
and backslash characters as ``\\xNN`` (``\\\\``, ``\\"``), like nginx's own access log.
Atoms that can carry a key (the query string, ``Authorization``, the key headers)
are withheld, whatever format an operator picks.
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn.glogging import Logger, SafeAtoms

from .core.config import DEFAULTS
from .requestlog import configure_logging, escape, log_request


def _withheld_atoms() -> frozenset[str]:
    headers = {
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        os.environ.get("KEYSERVICE_HEADER", "").lower(),
    } - {""}
    return frozenset(
        {"q", "{query_string}e", "{raw_uri}e"}
        | {f"{{{header}}}i" for header in headers}
        | {f"{{http_{header.replace('-', '_')}}}e" for header in headers}
    )


_WITHHELD = _withheld_atoms()


class EscapedAtoms(SafeAtoms):  # type: ignore[misc]  # gunicorn has no type hints
    """The atoms of one access-log line, each escaped when the format asks for it."""

    def __init__(self, atoms: dict[str, Any]) -> None:
        dict.__init__(self, atoms)  # not SafeAtoms': its quoting is part of escape()

    def __getitem__(self, atom: str) -> Any:
        if atom.lower() in _WITHHELD:
            return "-"
        value = super().__getitem__(atom)
        # A WSGI string is the bytes that came, one character each (latin-1).
        return escape(value.encode("latin-1", "backslashreplace")) if isinstance(value, str) else value


class EscapingLogger(Logger):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's logger that writes each request's line, with escaped access-log values and
    no query string in ``%(r)s``."""

    atoms_wrapper_class = EscapedAtoms

    def setup(self, cfg: Any) -> None:
        """gunicorn's logs, and the request lines' handler (on stderr, in KEYSERVICE_LOG_FORMAT)."""
        super().setup(cfg)
        # on_starting (gunicorn_conf.py) has refused a wrong value already.
        configure_logging(os.environ.get("KEYSERVICE_LOG_FORMAT", DEFAULTS["KEYSERVICE_LOG_FORMAT"]))

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """The request's line; gunicorn's access line too if its access log is on."""
        log_request(environ, resp.status_code, request_time.total_seconds())
        super().access(resp, req, environ, request_time)

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        """gunicorn's atoms, the request line (``r``) without its query string."""
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        path = environ.get("RAW_URI", "").split("?", 1)[0]
        atoms["r"] = f"{environ.get('REQUEST_METHOD')} {path} {environ.get('SERVER_PROTOCOL')}"
        return atoms
