"""Finding keyservice keys in files, offline: the key's format and its checksum, nothing else.

``flask keys scan`` adds what the database knows (which keys are live) and ``--revoke``;
``keyservice-scan`` (the pre-commit hook, ``.pre-commit-hooks.yaml``) needs no database.
A key found is reported by its file, line and key id, never by the key itself.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from ..core.crypto import CHECKSUM_LENGTH, ID_LENGTH, SECRET_LENGTH, ParsedKey, parse_key

# A candidate: a key's shape, not inside a longer run of letters and digits.
_CANDIDATE = re.compile(
    rf"(?<![0-9A-Za-z_])[a-z0-9]{{1,16}}_[0-9A-Za-z]{{{ID_LENGTH}}}_[0-9A-Za-z]{{{SECRET_LENGTH + CHECKSUM_LENGTH}}}"
    rf"(?![0-9A-Za-z])"
)
MAX_FILE_BYTES = 10 * 1024 * 1024
SKIPPED_FOLDERS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv"})


@dataclass(frozen=True)
class Found:
    """A key whose format and checksum hold, where it was found."""

    path: Path
    line: int
    key: ParsedKey

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not SKIPPED_FOLDERS.intersection(child.relative_to(path).parts):
                    yield child
        elif path.is_file():
            yield path


def find_keys(paths: Iterable[Path], prefix: str) -> list[Found]:
    """Every key of ``prefix`` in the files under ``paths`` (folders searched recursively;
    files over 10 MiB and version-control folders skipped), in file and line order."""
    found = []
    for path in _files(paths):
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for match in _CANDIDATE.finditer(line):
                parsed = parse_key(match.group(), prefix)
                if parsed is not None:
                    found.append(Found(path, number, parsed))
    return found


@click.command("keyservice-scan")
@click.option("--prefix", default="sk", show_default=True, help="The deployment's KEYSERVICE_KEY_PREFIX.")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
def main(prefix: str, paths: tuple[Path, ...]) -> None:
    """Find keyservice keys in PATHS (offline); exit 1 if any is found."""
    found = find_keys(paths, prefix)
    for item in found:
        click.echo(f"{item.where}: keyservice key {item.key.key_id}")
    if found:
        click.echo(
            f"{len(found)} keyservice key(s) found: remove them, and revoke them if they were ever pushed.", err=True
        )
        sys.exit(1)
