"""``POST /secret-scanning/github``: GitHub's secret scanning partner protocol.

GitHub finds a token of ours in a public place and POSTs a JSON array of
``{token, type, url, source}``, signed: ``Github-Public-Key-Signature`` is a base64
ECDSA P-256 / SHA-256 signature of the raw body by the key that
``Github-Public-Key-Identifier`` names, from the list at
``KEYSERVICE_SECRET_SCANNING_KEYS_URL``. That list is cached, and fetched again when an
identifier is unknown, at most once per :data:`REFETCH_INTERVAL` seconds per worker, so
that reports with made-up identifiers cannot make a fetch each.

A report that does not verify answers 401 and changes nothing. Each token of ours whose
secret checks (bcrypt: a token made up around a real key id is not the key) is revoked
with the keys rotated from it, reason ``leaked``, and its report's url recorded
(:func:`keyservice.management.store.report_leak`, which also sends ``key.leaked``). The answer labels
each token ``true_positive`` or ``false_positive`` by its SHA-256 (``token_hash``):
no key is ever sent back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
import urllib.request
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Blueprint, Response, request
from marshmallow import ValidationError

from ..core.crypto import check_secret, parse_key
from ..core.errors import InvalidInput, KeyServiceError, problem
from ..core.jsonguard import check_json
from ..core.models import ApiKey
from ..core.state import PublicKeys, current_state
from .schemas import LeakReportSchema
from .store import report_leak

logger = logging.getLogger("keyservice.secret_scanning")

ACTOR = "github-secret-scanning"
REFETCH_INTERVAL = 10.0
MAX_REPORT_BYTES = 512 * 1024
FETCH_TIMEOUT = 5.0

secret_scanning = Blueprint("secret-scanning", __name__, url_prefix="/secret-scanning")


class SignatureRefused(KeyServiceError):
    """A report whose signature is missing, malformed, unknown or wrong."""

    status = 401
    code = "BAD_SIGNATURE"
    title = "Signature refused"


class GitHubKeys:
    """GitHub's public keys for secret scanning, by identifier, fetched when needed."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._fetched_at: float | None = None

    def get(self, identifier: str) -> ec.EllipticCurvePublicKey | None:
        """The key ``identifier`` names; an unknown one fetches the list again if the last
        fetch is :data:`REFETCH_INTERVAL` seconds old (time.time: a test may move it)."""
        with self._lock:
            if identifier not in self._keys and (
                self._fetched_at is None or time.time() - self._fetched_at >= REFETCH_INTERVAL
            ):
                self._fetched_at = time.time()
                self._keys = self._fetch() or self._keys
            return self._keys.get(identifier)

    def _fetch(self) -> dict[str, ec.EllipticCurvePublicKey] | None:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(self._url, headers={"Accept": "application/json"}), timeout=FETCH_TIMEOUT
            ) as response:
                listed = json.loads(response.read(1024 * 1024))["public_keys"]
            keys = {}
            for entry in listed:
                key = load_pem_public_key(entry["key"].encode())
                if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
                    keys[str(entry["key_identifier"])] = key
            return keys
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("keyservice: GitHub's secret scanning keys could not be fetched (%s)", type(error).__name__)
            return None


def verify_signature(keys: PublicKeys, body: bytes, identifier: str | None, signature: str | None) -> None:
    """Raise :class:`SignatureRefused` unless ``signature`` is the named key's over ``body``."""
    if not identifier or not signature or len(identifier) > 200:
        raise SignatureRefused("Send Github-Public-Key-Identifier and Github-Public-Key-Signature.")
    key = keys.get(identifier)
    if key is None:
        raise SignatureRefused("The signing key is not one of GitHub's.")
    try:
        key.verify(base64.b64decode(signature, validate=True), body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        raise SignatureRefused("The signature does not match the body.") from None


def _label(token: str, leak: dict[str, str], prefix: str) -> str:
    parsed = parse_key(token.strip(), prefix)
    if parsed is None:
        return "false_positive"  # not a key of ours: another provider's, or damaged
    session = current_state().db.session
    api_key = session.get(ApiKey, parsed.key_id)
    if api_key is None or not check_secret(parsed.secret, api_key.secret_hash):
        return "false_positive"
    if report_leak(session, parsed.key_id, ACTOR, leak):
        logger.warning("keyservice: key %s reported leaked and revoked", parsed.key_id)
    session.commit()
    return "true_positive"


@secret_scanning.post("/github")
def github() -> Response:
    """Receive a signed leak report from GitHub; revoke each live key of ours it names."""
    state = current_state()
    request.max_content_length = MAX_REPORT_BYTES
    body = request.get_data(cache=False)
    verify_signature(
        state.github_keys,
        body,
        request.headers.get("Github-Public-Key-Identifier"),
        request.headers.get("Github-Public-Key-Signature"),
    )
    try:
        reports = LeakReportSchema(many=True).load(check_json(body.decode()))
    except (ValueError, ValidationError) as error:
        errors = error.messages if isinstance(error, ValidationError) else {"_schema": ["Not JSON."]}
        raise InvalidInput(
            "The report is not an array of {token, type, url, source}.", errors={"json": errors}
        ) from None
    answer: list[dict[str, Any]] = []
    for report in reports:
        leak = {"url": report["url"], "source": report["source"], "type": report["type"]}
        answer.append(
            {
                "token_hash": hashlib.sha256(report["token"].encode()).hexdigest(),
                "token_type": report["type"],
                "label": _label(report["token"], leak, state.settings.key_prefix),
            }
        )
    return Response(json.dumps(answer), status=200, mimetype="application/json")


@secret_scanning.errorhandler(413)
def _too_large(error: Exception) -> Response:
    return problem(
        413,
        "HTTP_REQUEST_ENTITY_TOO_LARGE",
        "Request Entity Too Large",
        f"A report is at most {MAX_REPORT_BYTES} bytes.",
    )
