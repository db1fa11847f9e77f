"""The deployment secret: the key of the HMACs that name checked keys in the shared stores.

It is ``KEYSERVICE_SECRET_KEY`` when set (the same on every instance that shares
a Redis), else 32 random bytes generated once and kept in a file of their own
(mode 0600) beside the machine's store: ``<database>.secret`` beside a SQLite
database, in the temp folder for PostgreSQL. Never in the database: a copy of
the database alone cannot even test a guess against the stores.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

SECRET_BYTES = 32


class DeploymentSecretError(RuntimeError):
    """The secret's file is not one this service made for itself."""


def deployment_secret(configured: str, path: Path) -> bytes:
    """``configured`` (``KEYSERVICE_SECRET_KEY``) if set, else the secret kept at ``path``,
    made there first if there is none (atomically: every worker of the machine reads the same)."""
    if configured:
        return configured.encode()
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    descriptor, made = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(os.urandom(SECRET_BYTES))
            file.flush()
            os.fsync(file.fileno())
        # Another worker may have made it first: theirs is everyone's.
        with contextlib.suppress(FileExistsError):
            os.link(made, path)
    finally:
        os.unlink(made)
    return _read(path)


def _read(path: Path) -> bytes:
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        # In a shared folder (the temp folder), a file someone else planted must not become the key.
        if status.st_uid != os.getuid() or stat.S_IMODE(status.st_mode) & 0o077:
            raise DeploymentSecretError(f"{path} must belong to the service's user, mode 0600")
        secret = file.read()
    if len(secret) != SECRET_BYTES:
        raise DeploymentSecretError(f"{path} must hold {SECRET_BYTES} bytes")
    return secret
