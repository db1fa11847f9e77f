"""What a process forked from a keyservice process must not take over from its parent.

A forked child is a copy of its parent at that moment, with one thread: counts its parent
has not saved yet would be saved twice, and a lock or a group commit another thread held
would never be let go. Objects that keep such state register here, and each forked child
renews them (``os.register_at_fork``): the parent still saves its own counts.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class RenewedAfterFork(Protocol):
    def renew_after_fork(self) -> None:
        """Forget, in a forked child, what belongs to the parent's threads."""


_registered: weakref.WeakSet[RenewedAfterFork] = weakref.WeakSet()


def renew_in_forked_children(instance: RenewedAfterFork) -> None:
    """Have ``instance.renew_after_fork()`` called in every process forked from this one."""
    _registered.add(instance)


def _renew_all() -> None:
    for instance in list(_registered):
        instance.renew_after_fork()


os.register_at_fork(after_in_child=_renew_all)
