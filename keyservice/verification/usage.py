"""Usage per key: verifications counted per outcome and UTC hour, and each key's last use.

Writing a row on every request would cost what the database write of a limit
costs (see docs/benchmarks.md), so each worker counts in memory and a thread of
its own adds the counts to the database every ``KEYSERVICE_USAGE_FLUSH_INTERVAL``
seconds (and when the worker exits cleanly): one transaction of upserts, and
``last_used_at`` moved forward. A worker that is killed loses what it counted
since its last flush, at most one interval's worth; a flush that fails (the
database is down) keeps its counts for the next one.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, bindparam, event, update
from sqlalchemy.dialects import postgresql, sqlite

from ..core.dberrors import error_name
from ..core.forks import renew_in_forked_children
from ..core.models import ApiKey, KeyUsage
from ..core.threads import DaemonStarter

logger = logging.getLogger("keyservice.usage")

_INSERT: dict[str, Callable[..., Any]] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


_MOVE_LAST_USED = (
    update(ApiKey)
    .where(
        ApiKey.id == bindparam("key"),
        ApiKey.last_used_at.is_(None) | (ApiKey.last_used_at < bindparam("moment")),
    )
    .values(last_used_at=bindparam("moment"), updated_at=ApiKey.updated_at)
)  # a use is not a change


class UsageRecorder:
    """Counts one process's verifications in memory and adds them to the database in the background."""

    def __init__(self, db: SQLAlchemy, flush_interval: float) -> None:
        self._db = db
        self._interval = flush_interval
        self._engine: Engine | None = None
        # Whether a flush at exit is registered (a forked child inherits it: it flushes the child's counts).
        self._flushed_at_exit = False
        self.renew_after_fork()
        renew_in_forked_children(self)

    def record(self, key_id: str, outcome: str, valid: bool) -> None:
        """Count one verification of ``key_id`` (a key that exists) that ended in ``outcome``
        (in an app context: the first one in a process starts its flushes, on the app's engine)."""
        now = time.time()
        with self._lock:
            self._counts[(key_id, int(now // 3600), outcome)] += 1
            if valid:
                self._last_used[key_id] = now
            if not self._flushing_started:  # first use in this process (a forked worker), or since a pause
                self._start(self._db.engine)

    def renew_after_fork(self) -> None:
        """No counts, new locks, no flushes yet: as made, and in a forked child (the parent saves
        its own counts; its threads may have held the locks). The first count starts the flushes."""
        self._lock = threading.Lock()
        # One flush at a time: a flush that finds the counts taken by another still writing them
        # waits for it, so that when it returns (flush_usage, a worker's exit) they are written.
        self._flushing = threading.Lock()
        self._stop = threading.Event()
        # Kept cheap on the request path: hours as whole hours since the epoch, times as
        # epoch seconds; made datetimes at the flush.
        self._counts: Counter[tuple[str, int, str]] = Counter()
        self._last_used: dict[str, float] = {}
        self._flushing_started = False  # this process's flushes
        self._flusher = DaemonStarter("keyservice-usage-flush", self._interval)

    def _start(self, engine: Engine) -> None:
        self._engine = engine
        if not self._flushed_at_exit:  # even while the thread cannot be started
            self._flushed_at_exit = True
            atexit.register(self.flush)
            if not event.contains(engine, "engine_disposed", self._pause):
                event.listen(engine, "engine_disposed", self._pause)
        stop = threading.Event()
        if not self._flusher.start(self._run, stop):
            return  # the counts stay counted (and are saved at exit); a later count tries again
        self._flushing_started = True
        self._stop = stop

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self._interval):
            self.flush()

    def _pause(self, engine: Engine) -> None:
        # A disposed engine may be about to go away (an app torn down): no more flushes
        # through it until the next count starts them again. What is counted stays counted.
        with self._lock:
            self._stop.set()
            atexit.unregister(self.flush)
            self._flushed_at_exit = False
            self._flushing_started = False

    def flush(self) -> None:
        """Add what this process counted to the database now (after any flush already under way);
        keep it for later if that fails."""
        with self._flushing:
            self._flush_now()

    def _flush_now(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
            last_used, self._last_used = self._last_used, {}
        if not counts or self._engine is None:
            return
        try:
            self._write(self._engine, counts, last_used)
        except Exception as error:  # whatever it is (a full disk, a dropped connection), the counts stay
            # The class only: the error's text holds the statement's parameters.
            logger.warning("keyservice: usage not saved yet (%s); will retry", error_name(error))
            with self._lock:
                self._counts.update(counts)
                for key_id, moment in last_used.items():
                    self._last_used[key_id] = max(moment, self._last_used.get(key_id, moment))

    @staticmethod
    def _write(engine: Engine, counts: Counter[tuple[str, int, str]], last_used: dict[str, float]) -> None:
        insert = _INSERT[engine.dialect.name]
        rows = [
            {"key_id": key_id, "hour": datetime.fromtimestamp(hour * 3600, UTC), "outcome": outcome, "count": count}
            for (key_id, hour, outcome), count in counts.items()
        ]
        with engine.begin() as connection:
            statement = insert(KeyUsage)
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["key_id", "hour", "outcome"],
                    set_={"count": KeyUsage.count + statement.excluded.count},
                ),
                rows,
            )
            if last_used:
                # One statement run for every key (an executemany: psycopg pipelines it), not
                # one round trip per key: a worker that met 2,000 keys flushes 2,000 of them.
                connection.execute(
                    _MOVE_LAST_USED,
                    [
                        {"key": key_id, "moment": datetime.fromtimestamp(seconds, UTC)}
                        for key_id, seconds in last_used.items()
                    ],
                )
