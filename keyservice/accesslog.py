"""gunicorn's access log, with what the client sent escaped: ``logger_class`` in gunicorn.conf.py.

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

from .requestlog import escape


def _withheld_atoms() -> frozenset[str]:
    headers = {"authorization", "proxy-authorization", "cookie", "x-api-key",
               os.environ.get("KEYSERVICE_HEADER", "").lower()} - {""}
    return frozenset({"q", "{query_string}e", "{raw_uri}e"}
                     | {f"{{{header}}}i" for header in headers}
                     | {f"{{http_{header.replace('-', '_')}}}e" for header in headers})


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
    """gunicorn's logger with escaped access-log values and no query string in ``%(r)s``."""

    atoms_wrapper_class = EscapedAtoms

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        """gunicorn's atoms, the request line (``r``) without its query string."""
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        path = environ.get("RAW_URI", "").split("?", 1)[0]
        atoms["r"] = f"{environ.get('REQUEST_METHOD')} {path} {environ.get('SERVER_PROTOCOL')}"
        return atoms
