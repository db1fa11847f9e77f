"""Refusing JSON that the parser or the databases cannot take, before it reaches either.

Python's ``json`` module dies on some inputs instead of refusing them: arrays
nested thousands deep (``RecursionError``) and integers of more than 4,300
digits (``ValueError`` from ``int()``). And some values parse but cannot be
stored the same way on every database: PostgreSQL's text refuses NUL, neither
database's UTF-8 can hold an unpaired surrogate (``"\\ud800"``), and PostgreSQL's
``json`` refuses ``NaN`` and ``Infinity``. :func:`check_json` refuses all of
these with one 422 ``INVALID_INPUT``, its errors under ``"json"``, the same on
SQLite and PostgreSQL: the text is scanned for depth and number length before it
is parsed, then the parsed value is walked for what cannot be stored.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import InvalidInput

MAX_DEPTH = 32
MAX_NUMBER_LENGTH = 100

TOO_DEEP = f"Must nest arrays and objects at most {MAX_DEPTH} deep."
NUMBER_TOO_LONG = f"Must not have a number longer than {MAX_NUMBER_LENGTH} characters."
UNSTORABLE_TEXT = "Must not contain NUL (\\u0000) or an unpaired surrogate (\\ud800-\\udfff)."
NOT_FINITE = "Must be a finite number."

# json.loads pairs surrogate escapes into one character, so any surrogate left in a str is unpaired.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# An unclosed string runs to the end: never a retry from each later quote (quadratic on 64 KiB).
_STRING = re.compile(r'"(?:[^"\\]+|\\.)*"?', re.DOTALL)
_LONG_NUMBER = re.compile(rf"[-+0-9.eE]{{{MAX_NUMBER_LENGTH + 1},}}")
_BRACKET = re.compile(r"[\[\]{}]")


def is_storable_text(text: str) -> bool:
    """Whether both databases can store ``text``: no NUL, no unpaired surrogate."""
    return _UNSTORABLE.search(text) is None


def _nested(path: tuple[str | int, ...], message: str) -> Any:
    errors: Any = [message]
    for step in reversed(path):
        errors = {step: errors}
    return errors


def _refuse(detail: str, path: tuple[str | int, ...], message: str) -> InvalidInput:
    return InvalidInput(detail, errors={"json": _nested(path, message) if path else {"_schema": [message]}})


def _scan(text: str) -> None:
    """Refuse ``text`` if parsing it could blow the stack or build a huge integer."""
    outside = _STRING.sub('""', text)  # brackets and digits inside strings do not count
    if _LONG_NUMBER.search(outside):
        raise _refuse(f"the JSON has a number longer than {MAX_NUMBER_LENGTH} characters", (), NUMBER_TOO_LONG)
    if outside.count("[") + outside.count("{") <= MAX_DEPTH:
        return
    depth = 0
    for bracket in _BRACKET.finditer(outside):
        depth += 1 if bracket[0] in "[{" else -1
        if depth > MAX_DEPTH:
            raise _refuse(f"the JSON nests arrays and objects more than {MAX_DEPTH} deep", (), TOO_DEEP)


def _first_unstorable(value: Any, path: tuple[str | int, ...] = ()) -> tuple[tuple[str | int, ...], str] | None:
    """The path to the first value no database stores, and why; None if there is none."""
    if isinstance(value, str):
        return None if is_storable_text(value) else (path, UNSTORABLE_TEXT)
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, NOT_FINITE)
    if isinstance(value, dict):
        for name, inner in value.items():
            if not is_storable_text(name):
                return path, UNSTORABLE_TEXT  # the name itself is not echoed back
            found = _first_unstorable(inner, (*path, name))
            if found is not None:
                return found
    if isinstance(value, list):
        for index, inner in enumerate(value):
            found = _first_unstorable(inner, (*path, index))
            if found is not None:
                return found
    return None


def unstorable(value: Any) -> str | None:
    """None if both databases can store every string and number in the parsed JSON
    ``value``; else a message naming the first that cannot (``"k.0: Must ..."``)."""
    found = _first_unstorable(value)
    if found is None:
        return None
    path, message = found
    return f"{'.'.join(map(str, path))}: {message}" if path else message


def check_value(value: Any) -> None:
    """Refuse an already parsed JSON ``value`` holding a string or number no database stores."""
    found = _first_unstorable(value)
    if found is not None:
        path, message = found
        where = f" at {'.'.join(map(str, path))}" if path else ""
        raise _refuse(f"the JSON holds a value that cannot be stored{where}: {message}", path, message)


def check_json(text: str) -> Any:
    """Parse ``text`` if it is JSON keyservice can take; return the value.

    Raises :class:`InvalidInput` (422) for nesting deeper than :data:`MAX_DEPTH`,
    a number longer than :data:`MAX_NUMBER_LENGTH` characters, NUL, an unpaired
    surrogate, ``NaN`` or an infinity; ``ValueError`` if it is not JSON at all.
    """
    _scan(text)
    value = json.loads(text)
    check_value(value)
    return value
