"""The key format and secret hashing: pure functions, no Flask, no database.

A key reads ``<prefix>_<id>_<secret><checksum>``. The checksum is the CRC32 of
everything before it in base62, so a mistyped or truncated key is refused before
any lookup, and secret scanners can match the format.
"""

from __future__ import annotations

import hmac
import re
import secrets
import string
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import bcrypt

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
ID_LENGTH = 16
SECRET_LENGTH = 32
CHECKSUM_LENGTH = 6
PREFIX_PATTERN = re.compile(r"[a-z0-9]{1,16}")
KEY_ID_PATTERN = re.compile(rf"[0-9A-Za-z]{{{ID_LENGTH}}}")
# Longest possible key: a 16-character prefix, two separators and the three parts.
MAX_KEY_LENGTH = 16 + 2 + ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH
# A prefix, an id and then any part of a secret: what must never be repeated back.
_KEY_LIKE = re.compile(rf"[a-z0-9]{{1,16}}_[0-9A-Za-z]{{{ID_LENGTH}}}_[0-9A-Za-z]+")
_KEY_PATTERN = re.compile(
    rf"(?P<prefix>[a-z0-9]{{1,16}})_(?P<id>[0-9A-Za-z]{{{ID_LENGTH}}})_"
    rf"(?P<secret>[0-9A-Za-z]{{{SECRET_LENGTH}}})(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)


@dataclass(frozen=True)
class ParsedKey:
    """The parts of a well-formed key whose checksum holds."""

    prefix: str
    key_id: str
    secret: str


@dataclass(frozen=True)
class NewKey:
    """A freshly generated key: ``key`` is shown once; only ``secret_hash`` is stored."""

    key: str
    key_id: str
    secret_hash: str


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


def new_id() -> str:
    """A random public identifier in the keys' id form (16 base62 characters), for other records."""
    return _random_base62(ID_LENGTH)


def checksum(body: str) -> str:
    """Return the 6-character base62 CRC32 of ``body``."""
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate_key(prefix: str, rounds: int) -> NewKey:
    """Make a new random key with the given prefix and bcrypt its secret."""
    key_id = _random_base62(ID_LENGTH)
    secret = _random_base62(SECRET_LENGTH)
    body = f"{prefix}_{key_id}_{secret}"
    return NewKey(key=body + checksum(body), key_id=key_id, secret_hash=hash_secret(secret, rounds))


def is_key_id(value: str) -> bool:
    """Whether ``value`` has the form of a key id (no lookup needed to refuse anything else)."""
    return KEY_ID_PATTERN.fullmatch(value) is not None


def parse_key(key: str, prefix: str) -> ParsedKey | None:
    """Split ``key`` into its parts, or return None when it is not a key of ours.

    Not ours: the wrong length or alphabet, another prefix, or a checksum that
    does not match (a typo, a truncation).
    """
    if len(key) > MAX_KEY_LENGTH:
        return None
    match = _KEY_PATTERN.fullmatch(key)
    if match is None or match["prefix"] != prefix:
        return None
    if not secrets.compare_digest(match["checksum"], checksum(key[:-CHECKSUM_LENGTH])):
        return None
    return ParsedKey(prefix=match["prefix"], key_id=match["id"], secret=match["secret"])


def redact_keys(text: str) -> str:
    """``text`` with anything shaped like a key, even cut short or mistyped, replaced by ``<a key>``."""
    return _KEY_LIKE.sub("<a key>", text)


def key_id_of(text: str) -> str | None:
    """The key id ``text`` names: ``text`` itself if it is a key id, or the id in a whole
    key (of any prefix) whose checksum holds; None if it is neither."""
    text = text.strip()
    if is_key_id(text):
        return text
    prefix = text.partition("_")[0]
    parsed = parse_key(text, prefix) if PREFIX_PATTERN.fullmatch(prefix) else None
    return None if parsed is None else parsed.key_id


def hash_secret(secret: str, rounds: int) -> str:
    """Return the bcrypt hash of ``secret`` at cost ``rounds``."""
    return bcrypt.hashpw(secret.encode("ascii"), bcrypt.gensalt(rounds)).decode("ascii")


def check_secret(secret: str, secret_hash: str) -> bool:
    """Check ``secret`` against its bcrypt hash (constant time, and slow on purpose)."""
    return bcrypt.checkpw(secret.encode("ascii"), secret_hash.encode("ascii"))


def hmac_sha256(key: bytes) -> Callable[[bytes], bytes]:
    """HMAC-SHA256 under ``key``, as a function of the message.

    The keyed state is made once and copied for each message, which never lets go
    of the interpreter lock; ``hmac.digest`` does, on every call. Under gunicorn's
    threads a thread that lets it go may wait for another's request to get it back,
    and one per verified request cost the protected route a tenth of its throughput.
    """
    keyed = hmac.new(key, digestmod="sha256")

    def digest(message: bytes) -> bytes:
        copy = keyed.copy()
        copy.update(message)
        return copy.digest()

    return digest
