"""What the store refuses, in its own terms: no HTTP status, no request location.

    StoreError          anything the store refuses; ``message`` says why, in a sentence
    ├── RecordNotFound  no key or role has that id or name
    ├── StateConflict   the key's state forbids the change, e.g. rotating a revoked key
    ├── InvalidValue    a value the store cannot take: its ``field`` and ``problems``
    └── AdminOnly       a change that loosens a limit, by a caller that may not loosen

Each front door answers them in its own shape: the management API as problem responses
(:func:`keyservice.management.apirules.problem_for`), the CLI as one-line errors. They import
nothing, so code that calls the store from plain Python can catch them without Flask.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of everything the store refuses."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RecordNotFound(StoreError):
    """No key or role has that id or name."""


class StateConflict(StoreError):
    """The key's state forbids the change, e.g. rotating a revoked or rotated key."""


class InvalidValue(StoreError):
    """A value the store cannot take; ``problems`` are what is wrong with ``field``, one line each."""

    def __init__(self, message: str, field: str, problems: list[str]) -> None:
        super().__init__(message)
        self.field = field
        self.problems = problems


class AdminOnly(StoreError):
    """A change that loosens a key's limits, by a caller that may not loosen them; ``fields``
    are those that would loosen (see :mod:`keyservice.management.loosening`)."""

    def __init__(self, fields: list[str]) -> None:
        super().__init__(f"Only keys:admin can raise, extend, clear or re-enable: {', '.join(fields)}.")
        self.fields = fields
