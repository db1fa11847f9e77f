"""Group commit: concurrent writes for one key run as one, each caller answered its share."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from keyservice.verification.groupcommit import GroupCommit

from .helpers import started_in_order


def test_a_caller_alone_writes_at_once_with_a_group_of_one() -> None:
    assert GroupCommit[str]().run("k", lambda uses: f"{uses} use") == ("1 use", 1, 0)


def test_callers_that_come_while_a_write_is_under_way_share_the_next_one() -> None:
    group: GroupCommit[int] = GroupCommit()
    release = threading.Event()
    writes: list[int] = []

    def write(uses: int) -> int:
        writes.append(uses)
        release.wait(10)
        return len(writes)

    answers: list[tuple[int, int, int]] = []
    threads = started_in_order(lambda: answers.append(group.run("k", write)), 6)
    assert writes == [1]  # the others wait for the first, gathered
    release.set()
    for thread in threads:
        thread.join(10)
    assert writes == [1, 5]
    assert sorted(answers) == [(1, 1, 0)] + [(2, 5, place) for place in range(5)]


def test_writes_of_other_keys_do_not_wait() -> None:
    group: GroupCommit[int] = GroupCommit()
    release = threading.Event()
    held = threading.Thread(target=lambda: group.run("k", lambda uses: release.wait(10)))
    held.start()
    time.sleep(0.05)
    assert group.run("other", lambda uses: uses) == (1, 1, 0)
    release.set()
    held.join(10)


def test_an_error_of_the_write_reaches_every_caller_of_its_group_and_not_the_next() -> None:
    group: GroupCommit[int] = GroupCommit()
    release = threading.Event()
    errors: list[str] = []

    def write(uses: int) -> int:
        release.wait(10)
        if uses > 1:
            raise RuntimeError("database down")
        return uses

    def call() -> None:
        try:
            group.run("k", write)
        except RuntimeError as error:
            errors.append(str(error))

    threads = started_in_order(call, 4)
    release.set()
    for thread in threads:
        thread.join(10)
    assert errors == ["database down"] * 3
    assert group.run("k", lambda uses: uses) == (1, 1, 0)


@pytest.mark.parametrize("callers", [2, 16])
def test_many_callers_at_once_are_each_answered_once_with_places_that_fill_their_group(callers: int) -> None:
    group: GroupCommit[int] = GroupCommit()
    counted = [0]
    lock = threading.Lock()

    def write(uses: int) -> int:
        with lock:
            counted[0] += uses
        time.sleep(0.001)
        return uses

    answers: list[tuple[int, int, int]] = []
    start = threading.Barrier(callers)

    def call() -> None:
        start.wait(10)
        for _ in range(200):
            answers.append(group.run("k", write))

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == counted[0] == callers * 200
    assert all(answer == size and 0 <= place < size for answer, size, place in answers)


def test_a_forked_child_writes_though_its_parent_had_a_write_under_way() -> None:
    # The parent's writer is a thread the child does not have: the child must not wait for it.
    group: GroupCommit[str] = GroupCommit()
    release = threading.Event()
    writing = threading.Event()

    def parents_write(uses: int) -> str:
        writing.set()
        release.wait(10)
        return "parent"

    parent = threading.Thread(target=group.run, args=("k", parents_write))
    parent.start()
    assert writing.wait(10)
    child = os.fork()
    if child == 0:
        signal.alarm(5)  # a child that waits for the parent's write ends here, by SIGALRM
        answered = group.run("k", lambda uses: "child") == ("child", 1, 0)
        os._exit(0 if answered else 1)
    release.set()
    parent.join(10)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
