"""The servers on one half of the machine's cores, the load generator on the other.

wrk sharing the servers' cores takes what it measures from them, and single runs then
swing by a third. Every benchmark calls :func:`pin_servers` first: the benchmark's own
process moves to the first half, so everything it starts after (gunicorn and its workers,
PostgreSQL, Redis, the flask commands) inherits that half, and wrk is started on the
second half (:func:`on_load_cores`).
"""

from __future__ import annotations

import os
import sys

_load_cores: set[int] = set()
_server_cores: set[int] = set()


def pin_servers() -> str:
    """Move this process, and so every server it starts from now on, to the first half of its
    cores, and keep the second for wrk; a line saying which is which."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("the benchmarks pin the servers and wrk to separate cores: they need at least 2")
    servers, load = cores[: len(cores) // 2], cores[len(cores) // 2 :]
    os.sched_setaffinity(0, servers)
    _server_cores.update(servers)
    _load_cores.update(load)
    return f"servers on CPU {','.join(map(str, servers))}, wrk on CPU {','.join(map(str, load))}"


def on_load_cores() -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: the child runs on the load generator's half
    (where it was started from, if :func:`pin_servers` was not called)."""
    if _load_cores:
        os.sched_setaffinity(0, _load_cores)


def server_core_count() -> int:
    """How many cores the servers run on (all of this process's, if :func:`pin_servers` was not called)."""
    return len(_server_cores) or len(os.sched_getaffinity(0))
