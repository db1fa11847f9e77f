"""The checked keys (``checkedkeys.py``) in Redis, shared by every instance: one string per
entry, named by the key's HMAC, expiring ``ENTRY_TTL`` after its bcrypt check."""

from __future__ import annotations

import redis

from ..core.crypto import ID_LENGTH
from .checkedkeys import ENTRY_TTL, HASH_DIGEST_BYTES, CheckedKey, logger


class RedisCheckedKeys:
    """Entries in the Redis at ``url``, shared by every instance, each expiring on its own."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def get(self, name: bytes) -> CheckedKey | None:
        try:
            stored = self._client.get(_redis_name(name))
        except redis.RedisError as error:
            logger.warning("keyservice: checked keys unreadable (%s)", type(error).__name__)
            return None
        if not isinstance(stored, bytes) or len(stored) != ID_LENGTH + HASH_DIGEST_BYTES:
            return None
        return CheckedKey(stored[:ID_LENGTH].decode(errors="replace"), stored[ID_LENGTH:])

    def put(self, name: bytes, entry: CheckedKey) -> None:
        try:
            self._client.set(_redis_name(name), entry.key_id.encode() + entry.hash_digest, ex=ENTRY_TTL)
        except redis.RedisError as error:
            logger.warning("keyservice: checked keys unwritable (%s)", type(error).__name__)


def _redis_name(name: bytes) -> str:
    return f"keyservice:checked:{name.hex()}"
