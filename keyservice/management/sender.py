"""The webhook sender: a background thread per worker process that delivers the outbox.

Each round it claims one due delivery (pending, due, and not leased, or its lease run
out) with a conditional UPDATE that sets its lease: on PostgreSQL the candidate row is
picked ``FOR UPDATE SKIP LOCKED``, so senders of every worker and instance take
different ones; on SQLite the UPDATE holds the database's write lock. A delivery is
claimed by one sender at a time, and a sender killed mid-delivery leaves a lease that
runs out (2 x the timeout + 1 s), after which another sender claims it again: a
receiver may see a ``webhook-id`` twice then, never lose one.

A delivery is one POST (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``,
``webhook-signature``, signed with the ``standardwebhooks`` package) to an address
checked again at that moment (:mod:`keyservice.management.addresses`), with the timeout
``KEYSERVICE_WEBHOOKS_TIMEOUT`` and no redirect followed. A 2xx delivers it; anything
else is retried after ``KEYSERVICE_WEBHOOKS_RETRY_DELAY``, doubling each time (at most
an hour), until ``KEYSERVICE_WEBHOOKS_RETRY_FOR`` after the event: then it is failed.
The thread also announces keys about to expire (:func:`keyservice.management.store.announce_expiring`).
Requests never wait for any of it.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.fernet import InvalidToken
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, and_, event, exists, or_, select, update
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from ..core.config import Settings
from ..core.dberrors import error_name
from ..core.errors import InvalidInput
from ..core.forks import renew_in_forked_children
from ..core.models import WebhookDelivery, WebhookEndpoint, WebhookMessage, as_utc, utcnow
from ..core.secretkeys import SecretKeys
from ..core.threads import DaemonStarter
from .addresses import check_url
from .store import announce_expiring
from .webhooks import decrypt_secret

logger = logging.getLogger("keyservice.webhooks")

MAX_RETRY_DELAY = 3600.0
USER_AGENT = "keyservice-webhooks"


@dataclass(frozen=True)
class Claimed:
    """A delivery this sender holds the lease of, with what it needs to send it."""

    delivery_id: int
    attempt: int
    retry_from: datetime
    message_id: str
    body: str
    url: str
    secret: str


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand, not to whatever the name resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is verified for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._tls = ssl.create_default_context()

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def post(url: str, body: str, headers: dict[str, str], timeout: float, allow_private: bool) -> int:
    """POST ``body`` to ``url`` once (no redirect followed) and return the status; raises
    :class:`OSError` (or :class:`InvalidInput` for an address no longer allowed)."""
    host, port, addresses = check_url(url, allow_private)
    parts = url.split("/", 3)
    path = "/" + (parts[3] if len(parts) > 3 else "")
    kind = _PinnedHTTPSConnection if url.startswith("https:") else _PinnedHTTPConnection
    connection = kind(host, port, addresses[0], timeout)
    try:
        connection.request(
            "POST",
            path,
            body=body.encode(),
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
        )
        response = connection.getresponse()
        response.read(4096)  # the answer's body means nothing to us; a little is read to end politely
        return response.status
    finally:
        connection.close()


def signed_headers(secret: str, message_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, body),
    }


class WebhookSender:
    """One process's sender thread (started by :meth:`ensure_started`, in each forked worker)."""

    def __init__(self, settings: Settings, db: SQLAlchemy, secret_keys: SecretKeys) -> None:
        self._settings = settings
        self._db = db
        self._secret_keys = secret_keys
        self._pid: int | None = None  # the process whose thread runs
        self.renew_after_fork()
        renew_in_forked_children(self)

    def renew_after_fork(self) -> None:
        """A new lock, stop event and starter: as made, and in a forked child, which has no thread
        yet (its parent's threads may have held the lock, and a start the parent failed does not
        make the child wait)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._starter = DaemonStarter("keyservice-webhooks", self._settings.webhooks_poll_interval)

    def ensure_started(self) -> None:
        """Start this process's thread if it has none (in an app context: it uses the app's engine)."""
        if self._pid == os.getpid() or not self._settings.webhooks_send:
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            engine = self._db.engine
            stop = threading.Event()
            if not self._starter.start(self._run, engine, stop):
                return  # the deliveries stay due; a later request tries again
            self._pid = os.getpid()
            self._stop = stop
            if not event.contains(engine, "engine_disposed", self._pause):
                event.listen(engine, "engine_disposed", self._pause)

    def _pause(self, engine: Engine) -> None:
        # A disposed engine may be about to go away (an app torn down): stop until started again.
        with self._lock:
            self._stop.set()
            self._pid = None

    def _run(self, engine: Engine, stop: threading.Event) -> None:
        busy = False
        while not stop.wait(0 if busy else self._settings.webhooks_poll_interval):
            try:
                busy = self.run_once(engine)
            except Exception as error:  # the database is down, say: the next round tries again
                logger.warning("keyservice: webhook sender round failed (%s)", error_name(error))
                busy = False

    def run_once(self, engine: Engine) -> bool:
        """Announce expiring keys, then claim and send one due delivery; whether one was sent."""
        if self._settings.webhooks_expiring_before:
            with Session(engine) as session, session.begin():
                announce_expiring(session, timedelta(seconds=self._settings.webhooks_expiring_before))
        claimed = self.claim(engine)
        if claimed is None:
            return False
        self.send(engine, claimed)
        return True

    def _due(self, now: datetime) -> Any:
        return and_(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
        )

    def claim(self, engine: Engine) -> Claimed | None:
        """Take the lease of one due delivery, or None when none is due."""
        now = utcnow()
        due = self._due(now)
        with Session(engine) as session:
            if not session.scalar(select(exists().where(due))):  # a read: idle rounds write nothing
                return None
        lease = now + timedelta(seconds=2 * self._settings.webhooks_timeout + 1)
        candidate = (
            select(WebhookDelivery.id)
            .where(due)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with Session(engine) as session, session.begin():
            row = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == candidate, due)
                .values(lease_until=lease, attempts=WebhookDelivery.attempts + 1)
                .returning(
                    WebhookDelivery.id,
                    WebhookDelivery.attempts,
                    WebhookDelivery.retry_from,
                    WebhookDelivery.message_id,
                    WebhookDelivery.endpoint_id,
                )
                .execution_options(synchronize_session=False)
            ).first()
            if row is None:
                return None
            delivery_id, attempt, retry_from, message_id, endpoint_id = row
            payload = session.scalar(select(WebhookMessage.payload).where(WebhookMessage.id == message_id))
            endpoint = session.get(WebhookEndpoint, endpoint_id)
            if endpoint is None:  # deleted meanwhile; its deliveries go with it
                return None
            try:
                secret = decrypt_secret(self._secret_keys, endpoint)
            except InvalidToken:
                # Kept leased, so the other deliveries go on; it is tried again once the lease ends.
                logger.warning(
                    "keyservice: webhook endpoint %s's secret cannot be decrypted: it was encrypted under a secret"
                    " that is neither KEYSERVICE_SECRET_KEY nor one of KEYSERVICE_SECRET_KEY_FALLBACKS",
                    endpoint.id,
                )
                return None
            return Claimed(
                delivery_id,
                attempt,
                as_utc(retry_from) or now,
                message_id,
                json.dumps(payload, separators=(",", ":")),
                endpoint.url,
                secret,
            )

    def send(self, engine: Engine, claimed: Claimed) -> None:
        """Deliver a claimed delivery once, and record how it went."""
        status: int | None = None
        error: str | None = None
        try:
            headers = signed_headers(claimed.secret, claimed.message_id, claimed.body, utcnow())
            status = post(
                claimed.url,
                claimed.body,
                headers,
                self._settings.webhooks_timeout,
                self._settings.webhooks_allow_private,
            )
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except InvalidInput as refused:
            error = refused.detail[:200]
        except (OSError, http.client.HTTPException) as failed:
            error = type(failed).__name__  # the class only: a message can carry the receiver's address
        self._record(engine, claimed, status, error)

    def _record(self, engine: Engine, claimed: Claimed, status: int | None, error: str | None) -> None:
        now = utcnow()
        values: dict[str, Any] = {"lease_until": None, "last_status": status, "last_error": error}
        if error is None:
            values |= {"status": "delivered", "delivered_at": now}
        else:
            delay = min(self._settings.webhooks_retry_delay * 2 ** (claimed.attempt - 1), MAX_RETRY_DELAY)
            next_attempt = now + timedelta(seconds=delay)
            if next_attempt > claimed.retry_from + timedelta(seconds=self._settings.webhooks_retry_for):
                values |= {"status": "failed"}
            else:
                values |= {"next_attempt_at": next_attempt}
        with Session(engine) as session, session.begin():
            # Only while it is still this attempt's: a sender that claimed it after an expired lease owns it now.
            session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == claimed.delivery_id,
                    WebhookDelivery.attempts == claimed.attempt,
                    WebhookDelivery.status == "pending",
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
