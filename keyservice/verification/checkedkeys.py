"""The checked keys every worker shares: "this whole key was accepted by bcrypt", and nothing more.

An entry is named by the HMAC-SHA256 of the whole key under the deployment
secret's key for them (``core/secretkeys.py``) and holds the key's id and a digest of the
``secret_hash`` bcrypt accepted it against (the first 16 bytes of its SHA-256):
no key, no secret and no bcrypt hash. A worker that meets a key it has not seen
(just started, or replaced) finds its entry, reads the key's row, and skips
bcrypt when the id is the key's own and the row's hash still has that digest: a
new secret (a changed hash) makes the entry worthless. Whether the key is still
valid is always judged on its row.

By default the entries live in an LMDB file every worker of the machine shares
(``<database>.checked``, or in the temp folder for PostgreSQL), beside the
rate-limit windows' file; with ``KEYSERVICE_RATELIMIT_STORAGE_URL`` they live in
that Redis, shared by every instance. Both are bounded: an entry lasts
``ENTRY_TTL`` from its bcrypt check (Redis expires it; LMDB's are swept), and the
LMDB file is mapped at ``lmdbfiles.MAP_SIZE``: full of live entries, it is
emptied (every key then costs one bcrypt check again, once per machine). The
cache is an optimisation only: when its store fails, a key is checked with bcrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import lmdb

from ..core.crypto import ID_LENGTH
from .lmdbfiles import SWEEP_INTERVAL, environment, sweep_expired

ENTRY_TTL = 7 * 86_400
HASH_DIGEST_BYTES = 16
# expires_at (first, as every swept file's entries), the key id, the hash's digest.
_ENTRY = struct.Struct(f"<d{ID_LENGTH}s{HASH_DIGEST_BYTES}s")

logger = logging.getLogger("keyservice.checkedkeys")


def hash_digest(secret_hash: str) -> bytes:
    """What identifies a key's current ``secret_hash`` in an entry (not the hash itself)."""
    return hashlib.sha256(secret_hash.encode()).digest()[:HASH_DIGEST_BYTES]


@dataclass(frozen=True)
class CheckedKey:
    """An entry: the key id and the digest of the hash bcrypt accepted the key against."""

    key_id: str
    hash_digest: bytes

    def matches(self, key_id: str, secret_hash: str) -> bool:
        """Whether the entry vouches for key ``key_id`` whose row's hash is ``secret_hash``."""
        return hmac.compare_digest(self.key_id, key_id) and hmac.compare_digest(
            self.hash_digest, hash_digest(secret_hash)
        )


class CheckedKeys(Protocol):
    """Where the entries live; both operations are best-effort (a failure is a miss)."""

    def get(self, name: bytes) -> CheckedKey | None:
        """The entry named ``name`` (an HMAC of the whole key), or None."""

    def put(self, name: bytes, entry: CheckedKey) -> None:
        """Remember ``entry`` under ``name`` for ``ENTRY_TTL`` seconds."""


class LmdbCheckedKeys:
    """Entries in an LMDB file at ``path``, shared by every worker of the machine."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._next_sweep = 0.0
        self._swept_to = b""

    def get(self, name: bytes) -> CheckedKey | None:
        try:
            with environment(self._path).begin() as transaction:
                stored = transaction.get(name)
        except lmdb.Error as error:
            logger.warning("keyservice: checked keys unreadable (%s)", type(error).__name__)
            return None
        if stored is None:
            return None
        expires_at, key_id, digest = _ENTRY.unpack(stored)
        return CheckedKey(key_id.decode(), digest) if expires_at > time.time() else None

    def put(self, name: bytes, entry: CheckedKey) -> None:
        now = time.time()
        value = _ENTRY.pack(now + ENTRY_TTL, entry.key_id.encode(), entry.hash_digest)
        try:
            try:
                self._put(name, value)
            except lmdb.MapFullError:
                if not sweep_expired(self._path, b"", full=True)[0]:
                    with environment(self._path).begin(write=True) as transaction:
                        transaction.drop(environment(self._path).open_db(), delete=False)
                self._put(name, value)
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_INTERVAL
                self._swept_to = sweep_expired(self._path, self._swept_to, full=False)[1]
        except lmdb.Error as error:
            logger.warning("keyservice: checked keys unwritable (%s)", type(error).__name__)

    def _put(self, name: bytes, value: bytes) -> None:
        with environment(self._path).begin(write=True) as transaction:
            transaction.put(name, value)
