"""The slotted sliding window: at most ``limit`` requests in any ``period`` seconds, in fixed space.

The period is split into ``SLOTS`` slots of ``period / SLOTS`` seconds. A key's
window is the count of each of the last ``SLOTS + 1`` slots: the current one and
every one that overlaps the last ``period`` seconds. A request is let through
only if their sum is below the limit, and is then counted in the current slot.

Every request let through in the last ``period`` seconds is in one of those
slots, so no ``period``-second span ever holds more than ``limit``: the window is
exact in the safe direction. A request keeps counting until its slot has wholly
left the last ``period`` seconds: at most one slot (``period / SLOTS``) longer
than a moving window would, which is how late the window can be to let traffic
through again. A key's state is ``SLOTS + 1`` counters and a slot number,
whatever its limit.

This module is the strategy in Python; ``rediswindows.py`` runs the same steps in
one Lua script, because Redis can only do them atomically there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

SLOTS = 10


@dataclass(frozen=True)
class Counts:
    """A key's window: ``counts[i]`` requests were let through in slot ``slot - i``."""

    slot: int
    counts: tuple[int, ...]


@dataclass(frozen=True)
class Hit:
    """What one request met: whether it was let through, the count in the window
    after it, and when (epoch seconds) the oldest request counted stops counting."""

    allowed: bool
    count: int
    reset_at: float


def slot_width(period: int) -> float:
    """Seconds per slot."""
    return period / SLOTS


def _at(window: Counts | None, period: int, now: float) -> tuple[int, list[int]]:
    """``window`` as it stands at ``now``: its current slot, and its counts shifted to it."""
    slot = math.floor(now / slot_width(period))
    counts = [0] * (SLOTS + 1)
    if window is not None:
        shift = slot - window.slot
        if shift < 0:  # the clock stepped back: count in the newest slot there is
            slot, shift = window.slot, 0
        for index in range(SLOTS + 1 - shift):
            counts[index + shift] = window.counts[index]
    return slot, counts


def _result(slot: int, counts: list[int], period: int, allowed: bool) -> tuple[Counts, Hit]:
    oldest = max((index for index, count in enumerate(counts) if count), default=0)
    reset_at = (slot - oldest + SLOTS + 1) * slot_width(period)
    return Counts(slot, tuple(counts)), Hit(allowed, sum(counts), reset_at)


def hit(window: Counts | None, limit: int, period: int, now: float, cost: int = 1) -> tuple[Counts, Hit]:
    """Count one request of ``cost`` units at ``now`` against ``window`` (None: no request yet),
    if the window has room for all of them; the window after it."""
    slot, counts = _at(window, period, now)
    allowed = sum(counts) + cost <= limit
    if allowed:
        counts[0] += cost
    return _result(slot, counts, period, allowed)


def hit_all(requests: list[tuple[Counts | None, int, int, int]], now: float) -> list[tuple[Counts, Hit]]:
    """One request counted in several windows at once, all or nothing: each of ``requests`` is a
    window (None: none yet), its limit, its period and the units the request costs there. The
    request is counted in every window only if each has room for its cost; otherwise in none.
    Each window after it, and what the request met there (``allowed`` is the same for all)."""
    standing = [(_at(window, period, now), limit, period, cost) for window, limit, period, cost in requests]
    allowed = all(sum(counts) + cost <= limit for (_, counts), limit, _, cost in standing)
    results = []
    for (slot, counts), _, period, cost in standing:
        if allowed:
            counts[0] += cost
        results.append(_result(slot, counts, period, allowed))
    return results


def give_back(window: Counts, period: int, now: float, cost: int = 1) -> Counts:
    """``window`` less ``cost`` units of the newest requests it still counts at ``now`` (a request
    let through by mistake, such as a failed-check budget's check that bcrypt accepted, or one
    another limit refused after this window counted it)."""
    shift = max(0, math.floor(now / slot_width(period)) - window.slot)
    counts = list(window.counts)
    for index in range(SLOTS + 1 - shift):
        taken = min(cost, counts[index])
        counts[index] -= taken
        cost -= taken
        if not cost:
            break
    return Counts(window.slot, tuple(counts))


def expires_at(window: Counts, period: int) -> float:
    """When (epoch seconds) every request in ``window`` has stopped counting."""
    return (window.slot + SLOTS + 1) * slot_width(period)


class WindowStorageError(Exception):
    """The rate-limit storage could not count a request."""


@dataclass(frozen=True)
class Counted:
    """One window a request is counted in: its key, limit and period, and what the request costs there."""

    key: str
    limit: int
    period: int
    cost: int = 1


class WindowStore(Protocol):
    """Where the windows live: what every storage does, each in one atomic operation."""

    def hit(self, key: str, limit: int, period: int) -> Hit:
        """Count one request of ``key`` against ``limit`` per ``period`` seconds; raises
        :class:`WindowStorageError` when the storage fails."""

    def hit_all(self, windows: list[Counted]) -> list[Hit]:
        """Count one request in every window of ``windows`` if each has room for its cost, else in
        none (:func:`hit_all`); raises :class:`WindowStorageError` when the storage fails."""

    def give_back(self, key: str, period: int) -> None:
        """Take back one request of ``key`` counted within the last ``period`` seconds (best-effort:
        raises :class:`WindowStorageError` when the storage fails)."""

    def give_back_all(self, windows: list[Counted]) -> None:
        """Take back, from each window, the cost a request was counted with (best-effort)."""

    def answers(self) -> bool:
        """Whether the storage answers now."""
