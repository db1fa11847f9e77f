"""Group commit: the threads of a worker that write for one key at once share one statement.

A thread that finds no write of its key under way runs its own at once. One that
finds one under way joins the next group: the group's first thread waits for the
write under way to end, closes the group (no one joins it after) and runs one
write for all of its threads, which wait for it and read their share of its
answer. While a write is out at the database, the key's next writers gather, so
under load a round trip and a transaction serve several requests, and with one
thread at a time nothing waits at all. Each request still answers only after its
own write has committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from ..core.forks import renew_in_forked_children

T = TypeVar("T")


class _Group(Generic[T]):
    """The threads sharing one write: how many, and the write's answer (or error) once it ends."""

    __slots__ = ("after", "answer", "done", "error", "finished", "size")

    def __init__(self, after: _Group[T] | None) -> None:
        self.after = after  # the write under way when the group began: it runs after that one
        self.size = 0
        self.finished = False
        # Made by the first thread that has to wait for the group, under the GroupCommit's lock:
        # a write nobody waits for (one thread at a time) makes none.
        self.done: threading.Event | None = None
        self.answer: T | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T]):
    """Runs the writes of concurrent callers for one key as one; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gathering: dict[Hashable, _Group[T]] = {}
        self._under_way: dict[Hashable, _Group[T]] = {}
        renew_in_forked_children(self)

    def renew_after_fork(self) -> None:
        """In a forked child: no group (their writers are the parent's threads), a new lock."""
        self._lock = threading.Lock()
        self._gathering = {}
        self._under_way = {}

    def run(self, key: Hashable, write: Callable[[int], T]) -> tuple[T, int, int]:
        """Run ``write(n)`` once for this caller and the ``n - 1`` others of ``key`` grouped with
        it; return its answer, ``n``, and this caller's place in the group (0 to ``n - 1``).
        An error of the write is raised in every caller of the group."""
        with self._lock:
            group = self._gathering.get(key)
            first = group is None
            if group is None:
                group = _Group(self._under_way.get(key))
                if group.after is None:
                    self._under_way[key] = group  # nothing to wait for: closed at once
                else:
                    self._gathering[key] = group
            place = group.size
            group.size += 1
        if first:
            self._write(key, group, write)
        else:
            self._wait_for(group)
        if group.error is not None:
            raise group.error
        return group.answer, group.size, place  # type: ignore[return-value]

    def _write(self, key: Hashable, group: _Group[T], write: Callable[[int], T]) -> None:
        """As the group's first thread: wait for the write before it, close the group, write."""
        if group.after is not None:
            self._wait_for(group.after)
            with self._lock:
                del self._gathering[key]
                self._under_way[key] = group
        try:
            group.answer = write(group.size)
        except BaseException as error:
            group.error = error
        finally:
            with self._lock:
                if self._under_way.get(key) is group:
                    del self._under_way[key]
                group.after = None  # the chain of groups ends here
                group.finished = True
                done = group.done
            if done is not None:
                done.set()

    def _wait_for(self, group: _Group[T]) -> None:
        """Return once ``group``'s write has ended."""
        with self._lock:
            if group.finished:
                return
            if group.done is None:
                group.done = threading.Event()
            done = group.done
        done.wait()
