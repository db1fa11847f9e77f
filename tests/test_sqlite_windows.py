"""The embedded windows' SQLite store: the strategy of slidingwindow.py, exact across forked
processes and threads, bounded, and nothing committed lost when a worker is killed."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyservice.verification import slidingwindow, sqlitewindows
from keyservice.verification.slidingwindow import SLOTS, Counted, Counts, Hit, WindowStorageError
from keyservice.verification.sqlitewindows import SqliteWindows

from .helpers import stored_windows

NOON = 1_800_000_000.0
REPOSITORY = Path(__file__).resolve().parent.parent


def rows_of(path: Path, key: str) -> int:
    """How many rows the window of ``key`` takes."""
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM slots WHERE key = ?", [key]).fetchone()[0])


def count_of(path: Path, key: str) -> int:
    """The requests stored for ``key``, in every slot it holds."""
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT coalesce(sum(count), 0) FROM slots WHERE key = ?", [key]).fetchone()[0])


# --- The same answers as slidingwindow.py ---

KEYS = ("a", "b", "c")
PERIODS = (1, 7, 60)
window_of = st.tuples(st.sampled_from(KEYS), st.sampled_from(PERIODS))
operation = st.one_of(
    st.tuples(st.just("hit"), st.lists(window_of, min_size=1, max_size=3, unique=True), st.integers(0, 6)),
    st.tuples(st.just("give_back"), st.lists(window_of, min_size=1, max_size=3, unique=True), st.integers(0, 4)),
)
# Seconds after noon; any order, so the clock steps back as well as forward.
step = st.tuples(st.floats(0, 150, allow_nan=False), operation, st.integers(0, 3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, max_size=25))
def test_every_answer_is_the_pure_strategys(tmp_path_factory: pytest.TempPathFactory, steps: list) -> None:
    windows = SqliteWindows(tmp_path_factory.mktemp("property") / "windows")
    windows._next_sweep = math.inf  # a sweep forgets by the latest clock; the strategy never forgets
    stored: dict[tuple[str, int], Counts] = {}
    for offset, (what, named, amount), cost in steps:
        with time_machine.travel(NOON + offset, tick=False):
            now = time.time()
            if what == "hit":
                counted = [Counted(key, amount, period, cost) for key, period in named]
                expected = slidingwindow.hit_all(
                    [(stored.get((w.key, w.period)), w.limit, w.period, w.cost) for w in counted], now
                )
                assert windows.hit_all(counted) == [met for _, met in expected], (offset, counted)
                for window, (after, _) in zip(counted, expected, strict=True):
                    stored[window.key, window.period] = after
            else:
                windows.give_back_all([Counted(key, 0, period, amount) for key, period in named])
                for key, period in named:
                    if (key, period) in stored:
                        stored[key, period] = slidingwindow.give_back(stored[key, period], period, now, amount)


def test_a_single_hit_is_the_strategys_with_a_cost_of_one(tmp_path: Path) -> None:
    windows = SqliteWindows(tmp_path / "windows")
    window: Counts | None = None
    with time_machine.travel(NOON, tick=False) as clock:
        for offset in (0, 1, 2, 13, 14, 70, 71, 72):
            clock.move_to(NOON + offset)
            window, expected = slidingwindow.hit(window, 3, 60, time.time())
            assert windows.hit("k", 3, 60) == expected, offset


# --- The cases by name ---


def test_a_clock_that_steps_back_counts_in_the_newest_slot(tmp_path: Path) -> None:
    windows = SqliteWindows(tmp_path / "windows")
    with time_machine.travel(NOON + 30, tick=False):
        assert windows.hit("k", 5, 60) == Hit(True, 1, NOON + 30 + 66)
    with time_machine.travel(NOON, tick=False):  # 30 s back: still the window of NOON + 30
        assert windows.hit("k", 5, 60) == Hit(True, 2, NOON + 30 + 66)
    with time_machine.travel(NOON + 30, tick=False):
        assert windows.hit("k", 2, 60) == Hit(False, 2, NOON + 30 + 66)
    assert rows_of(tmp_path / "windows", "k") == 1


def test_an_all_or_nothing_hit_sees_every_window_as_it_was_before_it(tmp_path: Path) -> None:
    """Each window has room for exactly the cost: were the verdict read after a window was
    written, the second would see the first full and refuse it, half counted."""
    windows = SqliteWindows(tmp_path / "windows")
    with time_machine.travel(NOON, tick=False):
        both = [Counted("a", 2, 60, 2), Counted("b", 1, 60, 1), Counted("c", 3, 60, 3)]
        assert windows.hit_all(both) == [Hit(True, 2, NOON + 66), Hit(True, 1, NOON + 66), Hit(True, 3, NOON + 66)]
        assert windows.hit_all(both) == [Hit(False, 2, NOON + 66), Hit(False, 1, NOON + 66), Hit(False, 3, NOON + 66)]


def test_an_all_or_nothing_hit_with_one_window_full_counts_nowhere(tmp_path: Path) -> None:
    windows = SqliteWindows(tmp_path / "windows")
    with time_machine.travel(NOON, tick=False):
        assert windows.hit("full", 1, 60).allowed
        refused = windows.hit_all([Counted("room", 100, 60, 5), Counted("full", 1, 60, 1)])
        assert refused == [Hit(False, 0, NOON + 66), Hit(False, 1, NOON + 66)]
    assert (count_of(tmp_path / "windows", "room"), count_of(tmp_path / "windows", "full")) == (0, 1)


def test_give_back_takes_from_the_newest_slots_first(tmp_path: Path) -> None:
    windows = SqliteWindows(tmp_path / "windows")
    with time_machine.travel(NOON, tick=False) as clock:
        windows.hit_all([Counted("k", 10, 60, 3)])
        clock.shift(6)  # the next slot
        windows.hit_all([Counted("k", 10, 60, 2)])
        windows.give_back_all([Counted("k", 10, 60, 3)])  # both of the newest slot, one of the oldest
        assert windows.hit_all([Counted("k", 10, 60, 0)]) == [Hit(True, 2, NOON + 66)]
        windows.give_back("k", 60)
        windows.give_back("k", 60)
        windows.give_back("k", 60)  # nothing left: nothing goes below zero
        assert windows.hit("k", 10, 60) == Hit(True, 1, NOON + 6 + 66)
        windows.give_back("nobody", 60)


def test_a_key_hammered_for_many_periods_keeps_at_most_slots_plus_one_rows(tmp_path: Path) -> None:
    windows = SqliteWindows(tmp_path / "windows")
    most = 0
    with time_machine.travel(NOON, tick=False) as clock:
        for _ in range(40 * SLOTS):
            for _ in range(3):
                windows.hit("k", 1_000_000, 60)
            most = max(most, rows_of(tmp_path / "windows", "k"))
            clock.shift(60 / SLOTS / 2)
    assert most == SLOTS + 1 <= SLOTS + 2
    assert stored_windows(tmp_path / "windows") == 1


def test_windows_that_stopped_counting_are_swept_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlitewindows, "SWEEP_BATCH", 7)
    windows = SqliteWindows(tmp_path / "windows")
    windows._next_sweep = math.inf  # only the sweeps below
    with time_machine.travel(NOON, tick=False):
        for n in range(20):
            windows.hit(f"old{n:02}", 5, 60)
    with time_machine.travel(NOON + 30, tick=False):
        windows.hit("live", 5, 60)
    assert stored_windows(tmp_path / "windows") == 21
    with time_machine.travel(NOON + 66, tick=False):  # the old ones stopped counting; "live" has not
        swept = [windows.sweep() for _ in range(4)]
    assert swept == [6, 7, 7, 0]  # "live" and old00-old05, old06-old12, old13-old19, then from the start
    assert stored_windows(tmp_path / "windows") == 1
    with time_machine.travel(NOON + 65.9, tick=False):
        assert windows.sweep(full=True) == 0  # never early
    with time_machine.travel(NOON + 30 + 66, tick=False):
        assert windows.sweep(full=True) == 1


def test_a_hit_sweeps_every_sweep_interval(tmp_path: Path) -> None:
    windows = SqliteWindows(tmp_path / "windows")
    with time_machine.travel(NOON, tick=False) as clock:
        windows.hit("old", 5, 60)
        clock.shift(66)
        windows.hit("new", 5, 60)
    assert stored_windows(tmp_path / "windows") == 1


def test_a_full_file_is_swept_then_refused_with_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlitewindows, "MAX_PAGES", 12)
    windows = SqliteWindows(tmp_path / "windows")
    with time_machine.travel(NOON, tick=False):
        with pytest.raises(WindowStorageError):
            for n in range(100_000):
                windows.hit(f"key-{n:06}-{'x' * 100}", 5, 60)
        assert n > 10
        assert windows.answers()
    with time_machine.travel(NOON + 66, tick=False):  # every window stopped counting: swept, then counted
        assert windows.hit("after", 5, 60).allowed
    assert stored_windows(tmp_path / "windows") == 1


def test_a_file_that_cannot_be_opened_is_a_storage_error(tmp_path: Path) -> None:
    for path in (tmp_path / "missing" / "windows", tmp_path):  # no folder; a folder where the file goes
        windows = SqliteWindows(path)
        with pytest.raises(WindowStorageError):
            windows.hit("k", 5, 60)
        with pytest.raises(WindowStorageError):
            windows.hit_all([Counted("k", 5, 60)])
        with pytest.raises(WindowStorageError):
            windows.give_back("k", 60)
        assert not windows.answers()


def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "windows").write_bytes(b"\x01" * 8192)
    windows = SqliteWindows(tmp_path / "windows")
    with pytest.raises(WindowStorageError):
        windows.hit("k", 5, 60)
    assert not windows.answers()


def test_the_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    SqliteWindows(tmp_path / "windows").hit("k", 5, 60)
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert modes == {"windows": 0o600, "windows-wal": 0o600, "windows-shm": 0o600}


# --- Across processes ---


def _hammer(
    windows: SqliteWindows, requests: list[Counted], hits: int, threads: int, answers: multiprocessing.Queue
) -> None:
    """In a forked worker: ``threads`` threads, each counting ``hits`` requests in ``requests``."""
    allowed = [0] * threads

    def run(thread: int) -> None:
        for _ in range(hits):
            allowed[thread] += windows.hit_all(requests)[0].allowed

    running = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    answers.put(sum(allowed))


@pytest.mark.parametrize(
    "requests",
    [
        [Counted("k", 300, 3600)],
        [Counted("k", 300, 3600), Counted("roomy", 100_000, 3600, 2)],
        [Counted("roomy", 100_000, 3600, 2), Counted("k", 300, 3600)],
    ],
    ids=["one window", "two windows", "the full one second"],
)
def test_forked_workers_threads_let_exactly_the_limit_through(tmp_path: Path, requests: list[Counted]) -> None:
    windows = SqliteWindows(tmp_path / "windows")
    assert windows.answers()  # a connection opened before the fork, as gunicorn's --preload would
    fork = multiprocessing.get_context("fork")
    answers: multiprocessing.Queue = fork.Queue()
    workers = [fork.Process(target=_hammer, args=(windows, requests, 60, 4, answers)) for _ in range(3)]
    for worker in workers:
        worker.start()
    allowed = sum(answers.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert allowed == 300  # of 3 x 4 x 60 = 720
    assert count_of(tmp_path / "windows", "k") == 300
    assert count_of(tmp_path / "windows", "roomy") == 2 * 300 * (len(requests) - 1)


OPENER = """
import sys, threading, time
from pathlib import Path
from keyservice.verification.sqlitewindows import SqliteWindows
folder, start, files, threads = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for n in range(files):
    windows = SqliteWindows(folder / f"windows-{n}")
    def hit():
        while time.time() < start + n * 0.1:
            pass
        windows.hit("k", 1000, 3600)
    hitting = [threading.Thread(target=hit) for _ in range(threads)]
    for thread in hitting:
        thread.start()
    for thread in hitting:
        thread.join()
"""


def test_workers_that_open_a_new_file_at_the_same_instant_all_count(tmp_path: Path) -> None:
    # Workers started together open the machine's new windows file together, each thread its
    # own connection: a switch to WAL then failed some (SQLite answers a busy file at once
    # there, and threads of one process met "disk I/O error" from its locks).
    files, openers, threads = 15, 3, 6
    start = str(time.time() + 1.5)
    workers = [
        subprocess.Popen([sys.executable, "-c", OPENER, str(tmp_path), start, str(files), str(threads)], cwd=REPOSITORY)
        for _ in range(openers)
    ]
    assert [worker.wait(timeout=60) for worker in workers] == [0] * openers
    assert [count_of(tmp_path / f"windows-{n}", "k") for n in range(files)] == [openers * threads] * files
    assert sorted(path.name for path in tmp_path.iterdir() if path.suffix == ".new") == []


KILLED_WORKER = """
import sys, time
from pathlib import Path
from keyservice.verification.sqlitewindows import SqliteWindows
windows = SqliteWindows(Path(sys.argv[1]))
while True:
    if windows.hit("k", 10_000_000, 3600).allowed:
        sys.stdout.write("1")
        sys.stdout.flush()
"""


def test_a_worker_killed_mid_hammer_loses_nothing_it_committed_and_holds_no_lock(tmp_path: Path) -> None:
    path = tmp_path / "windows"
    workers = [
        subprocess.Popen([sys.executable, "-c", KILLED_WORKER, str(path)], cwd=REPOSITORY, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    time.sleep(2)
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    reported = 0
    for worker in workers:
        out, _ = worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGKILL
        reported += len(out)
    stored = count_of(path, "k")
    # Each told of every hit it committed but, maybe, the one it was killed in.
    assert reported > 100 and reported <= stored <= reported + len(workers)
    after = SqliteWindows(path)
    assert after.hit("k", 10_000_000, 3600) == Hit(True, stored + 1, after.hit("k", 0, 3600).reset_at)
