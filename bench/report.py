"""What every benchmark prints besides its figures: goals met or missed, the servers' errors,
and how to run it again. Nothing shaped like a key is ever printed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.servers import REPO

_ANY_KEY = re.compile(r"[a-z0-9]{1,16}_[0-9A-Za-z]{16}_[0-9A-Za-z]{38}")


def redact(text: str) -> str:
    """``text`` with anything shaped like a key replaced, so no key reaches the screen."""
    return _ANY_KEY.sub("<key>", text)


def verdict(value: float, goal: float) -> str:
    """Whether ``value`` reaches ``goal`` (at least), in words."""
    if value >= goal:
        return f"goal >= {goal:.2f}: met"
    return f"goal >= {goal:.2f}: MISSED, {value:.3f} is {goal - value:.3f} short"


def version(*command: str) -> str:
    """The first line ``command`` prints (its version), or ``?``."""
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    except OSError:
        return "?"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def report_server_log(log: Path) -> None:
    """Say whether gunicorn logged errors (never printing a key)."""
    text = redact(log.read_text(errors="replace"))
    problems = [
        line
        for line in text.splitlines()
        if re.search(r"Traceback|\[ERROR\]|\[CRITICAL\]|WORKER TIMEOUT|Exception", line)
    ]
    print(f"\n== gunicorn log: {len(problems)} error line(s)")
    for line in problems[:10]:
        print(f"  {line}")


def print_reproduce(module: str, args: list[str]) -> None:
    """How to run this again, and on what."""
    command = [os.path.relpath(sys.executable, REPO), "-m", module, *args]
    print("\n== reproduce")
    print(f"  cd {REPO} && {shlex.join(command)}   (or: make bench)")
    print(
        f"  python {sys.version.split()[0]}, {version(sys.executable, '-m', 'gunicorn', '--version')}, "
        f"{' '.join(version('wrk', '--version').split()[:2])}, {os.cpu_count()} cores (servers and wrk on half each), "
        f"commit {version('git', 'rev-parse', '--short', 'HEAD')}"
    )
