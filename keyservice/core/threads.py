"""A worker's background threads (usage flushes, metrics publication, webhook sends).

Each is started by the first request that needs it in a process. A process that
cannot start a thread now (out of threads: a container's pids limit, say) must
still answer that request: the thread's work waits (the counts stay counted, the
deliveries stay due) and a request at least ``retry_after`` seconds later tries
again, one warning per try.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("keyservice.threads")


class DaemonStarter:
    """Starts one kind of daemon thread, named ``name``; after a failed start, not again for
    ``retry_after`` seconds."""

    def __init__(self, name: str, retry_after: float) -> None:
        self._name = name
        self._retry_after = retry_after
        self._not_before = -float("inf")

    def start(self, target: Callable[..., object], *args: object) -> bool:
        """Start ``target(*args)`` in a daemon thread; False if it was not started (a warning
        says why, or a failed start was too recent to try again)."""
        now = time.monotonic()
        if now < self._not_before:
            return False
        try:
            threading.Thread(target=target, args=args, name=self._name, daemon=True).start()
        except RuntimeError as error:  # "can't start new thread"
            self._not_before = now + self._retry_after
            logger.warning("keyservice: thread %s not started (%s); will try again", self._name, error)
            return False
        return True
