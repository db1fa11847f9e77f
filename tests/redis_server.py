"""A throwaway ``redis-server`` for tests: on a free port of 127.0.0.1, nothing saved to disk.

Where the binary is missing the test is skipped, except under CI (the ``CI``
variable set), where a missing service must fail the run rather than skip quietly.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .servers import free_port, stop


def redis_server_binary() -> str:
    """The path of ``redis-server``; skips the test (fails it under CI) when there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed"
        if "CI" in os.environ:
            pytest.fail(f"{message}, and CI must run the Redis tests", pytrace=False)
        pytest.skip(message)
    return binary


@contextmanager
def redis_server(log: Path) -> Iterator[str]:
    """Run ``redis-server`` (its output to ``log``); yield its URL ``redis://127.0.0.1:<port>/0``, stop it after."""
    binary = redis_server_binary()
    for _ in range(3):  # the free port may be taken again before redis binds it
        port = free_port()
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
        if _answers_ping(port, process):
            break
        stop(process)
    else:
        raise RuntimeError(f"redis-server did not start: {log.read_text(errors='replace')}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


def _answers_ping(port: int, process: subprocess.Popen[bytes], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False
