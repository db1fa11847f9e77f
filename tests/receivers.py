"""Local HTTP servers the webhook and secret-scanning tests talk to, and what they sign with.

``Receiver`` is a webhook endpoint on 127.0.0.1: it verifies each request with the
``standardwebhooks`` package (once it knows the endpoint's secret), can fail the first
attempts of every message, be slow, or hang one attempt; it counts what it accepted.
``GitHubKeyList`` serves a secret-scanning public key list, as GitHub's
``meta/public_keys/secret_scanning`` does, for a key pair of the test's own.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def webhook_settings(**overrides: str) -> dict[str, str]:
    """Settings (as environment strings) for webhooks to loopback receivers, with short retries."""
    return {
        "KEYSERVICE_WEBHOOKS_SEND": "true",
        "KEYSERVICE_WEBHOOKS_ALLOW_PRIVATE": "true",
        "KEYSERVICE_WEBHOOKS_TIMEOUT": "2",
        "KEYSERVICE_WEBHOOKS_RETRY_DELAY": "0.05",
        "KEYSERVICE_WEBHOOKS_POLL_INTERVAL": "0.05",
        **overrides,
    }


@dataclass
class Received:
    """One request the receiver answered."""

    headers: dict[str, str]
    body: bytes
    status: int
    verified: bool

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(self.body)
        return payload


@dataclass
class Receiver:
    """A webhook endpoint: ``fail_first`` attempts of each webhook-id answer 500; each request
    takes ``delay`` seconds; ``hang_next`` makes the next request wait that long (then 500)."""

    url: str = ""
    secret: str | None = None
    fail_first: int = 0
    delay: float = 0.0
    hang_next: float = 0.0
    received: list[Received] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    hanging: threading.Event = field(default_factory=threading.Event)
    hung_port: int = 0  # the client port of the request that hangs: which sender holds it
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, headers: dict[str, str], body: bytes, port: int = 0) -> int:
        with self.lock:
            webhook_id = headers.get("webhook-id", "")
            self.attempts[webhook_id] += 1
            attempt = self.attempts[webhook_id]
            hang, self.hang_next = self.hang_next, 0.0
        if hang:
            self.hung_port = port
            self.hanging.set()
            time.sleep(hang)
            status = 500
        else:
            time.sleep(self.delay)
            status = 500 if attempt <= self.fail_first else 200
        verified = False
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                pass
        with self.lock:
            self.received.append(Received(headers, body, status, verified))
        return status

    def accepted(self) -> list[Received]:
        """The requests answered 2xx, in order."""
        with self.lock:
            return [item for item in self.received if item.status == 200]

    def wait_for(self, count: int, within: float = 10.0) -> list[Received]:
        """Wait until ``count`` requests were accepted (or ``within`` s); return those accepted."""
        deadline = time.monotonic() + within
        while len(self.accepted()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.accepted()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status = self.server.receiver.answer(
            {k.lower(): v for k, v in self.headers.items()}, body, self.client_address[1]
        )
        # The sender may be gone (killed mid-delivery, by a test).
        with contextlib.suppress(OSError):
            self._send(status, b"{}")

    def do_GET(self) -> None:
        self.server.key_list_fetches += 1
        self._send(200, json.dumps(self.server.key_list).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver
    key_list: dict[str, Any]
    key_list_fetches: int


@contextmanager
def serving(receiver: Receiver | None = None, key_list: dict[str, Any] | None = None) -> Iterator[_Server]:
    """Serve ``receiver`` (POST) and ``key_list`` (GET) on 127.0.0.1; its URL is ``receiver.url``."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.receiver = receiver or Receiver()
    server.key_list = key_list or {"public_keys": []}
    server.key_list_fetches = 0
    server.receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    # shutdown() waits for the loop to notice, up to one poll_interval (0.5 s by default) per test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class GitHubSigner:
    """A secret-scanning key pair of the test's own, listed as GitHub lists its keys."""

    def __init__(self, identifier: str = "test-key-1") -> None:
        self.identifier = identifier
        self._private = ec.generate_private_key(ec.SECP256R1())

    def listed(self) -> dict[str, Any]:
        """The entry of the key list for this key."""
        pem = self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"key_identifier": self.identifier, "key": pem.decode(), "is_current": True}

    def headers(self, body: bytes) -> dict[str, str]:
        """GitHub's headers for a report with this body."""
        signature = self._private.sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "Github-Public-Key-Identifier": self.identifier,
            "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
            "Content-Type": "application/json",
        }


def report(*tokens: str, url: str = "https://github.com/octo/repo/blob/abc/config.py") -> bytes:
    """A secret-scanning report naming ``tokens``, as GitHub sends it."""
    return json.dumps(
        [{"token": token, "type": "keyservice_api_key", "url": url, "source": "content"} for token in tokens]
    ).encode()
