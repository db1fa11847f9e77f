"""Where the files of one machine's deployment live: beside a SQLite database, else in the temp folder."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url


def path_for(database_url: str, what: str = "windows") -> Path:
    """Where the machine's file ``what`` (``windows``: the rate limits' windows) of the app on ``database_url``
    lives: beside a SQLite database, else in the temp folder under a name of the database (never
    of its password)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(f"{url.database}.{what}")
    name = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"keyservice-{what}-{name}"
