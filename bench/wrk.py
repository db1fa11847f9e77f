"""Running wrk (on the load generator's cores) and reading what it printed.

A run's figures include the gunicorn workers' CPU time per request, read from /proc around
the run: steadier than throughput, which moves with everything else on the machine.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import gunicorn_workers

from .cores import on_load_cores, server_core_count
from .report import redact

_UNIT_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_LATENCY = r"([\d.]+)(us|ms|s|m)\b"
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class WrkResult:
    """The figures of one wrk run (``cpu_us`` is the workers' CPU per request, when measured)."""

    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    statuses: dict[int, int] = field(default_factory=dict)
    cpu_us: float | None = None

    def line(self) -> str:
        """The run on one line."""
        return (
            f"{self.requests_per_sec:9.1f} req/s  p50 {self.p50_ms:7.2f} ms  p99 {self.p99_ms:7.2f} ms"
            + (f"  {self.cpu_us:6.1f} us CPU/req" if self.cpu_us is not None else "")
            + f"  non-2xx {self.non_2xx}/{self.requests}"
            + (f"  socket errors {self.socket_errors}" if self.socket_errors else "")
        )


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+{_LATENCY}", output, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {percentile}% latency line in wrk output")
    return float(match[1]) * _UNIT_TO_MS[match[2]]


def parse_wrk(output: str) -> WrkResult:
    """Read the summary ``wrk --latency`` prints (and our Lua ``status`` lines)."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if rps is None or total is None:
        raise ValueError(f"unexpected wrk output:\n{redact(output)}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    statuses = {int(code): int(count) for code, count in re.findall(r"^status (\d+) (\d+)$", output, re.MULTILINE)}
    return WrkResult(
        requests_per_sec=float(rps[1]),
        p50_ms=_latency_ms(output, "50"),
        p99_ms=_latency_ms(output, "99"),
        requests=int(total[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(map(int, errors.groups())) if errors else 0,
        statuses=statuses,
    )


def wrk_command(url: str, lua: Path, *, connections: int, seconds: int) -> list[str]:
    """The wrk command line of one run."""
    return ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url]


def run_wrk(url: str, lua: Path, *, connections: int, seconds: int) -> WrkResult:
    """Run one wrk and return its figures."""
    return run_wrk_together([(url, lua)], connections=connections, seconds=seconds)[0]


def run_wrk_together(targets: Sequence[tuple[str, Path]], *, connections: int, seconds: int) -> list[WrkResult]:
    """Start one wrk per ``(url, lua)`` at the same moment; return their figures in order."""
    processes = [
        subprocess.Popen(
            wrk_command(url, lua, connections=connections, seconds=seconds),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=on_load_cores,
        )
        for url, lua in targets
    ]
    try:
        outputs = [process.communicate(timeout=seconds + 30)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [parse_wrk(output) for output in outputs]


# wrk opens its connections at once and keeps them; gthread workers keep the connections they
# accept, so now and then one worker takes nearly all of them and the other idles: on servers with
# more than one core the run then measures one worker, not the service (half the req/s, whatever
# the route). Such a run is run again, up to BALANCE_ATTEMPTS times. On one core it measures the
# same: one worker keeps the core busy as two would (and there one nearly always takes them all).
BALANCE_SHARE = 0.6  # of a fair share of the workers' CPU time, the least each worker must have had
BALANCE_ATTEMPTS = 6


def cpu_ticks(pids: Sequence[int]) -> list[int]:
    """Each process's CPU time so far (user + system), in clock ticks; 0 for one that is gone."""
    ticks = []
    for pid in pids:
        try:
            fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            fields = ["0"] * 13  # gone meanwhile: the run is judged on the others
        ticks.append(int(fields[11]) + int(fields[12]))  # utime + stime
    return ticks


def run_wrk_balanced(url: str, lua: Path, *, connections: int, seconds: int) -> WrkResult:
    """Run one wrk against the gunicorn at ``url``, again while its connections were served by
    one worker (see BALANCE_SHARE); return the figures of the first balanced run, or of the
    last, with the workers' CPU time per request."""
    workers = sorted(gunicorn_workers(re.match(r"https?://[^/]+", url)[0]))  # type: ignore[index]
    for _attempt in range(1, BALANCE_ATTEMPTS + 1):
        before = cpu_ticks(workers)
        result = run_wrk(url, lua, connections=connections, seconds=seconds)
        used = [after - start for start, after in zip(before, cpu_ticks(workers), strict=False)]
        if len(used) < 2 or server_core_count() < 2 or min(used) >= BALANCE_SHARE * sum(used) / len(used):
            break
        print(f"    (one worker served almost all of wrk's connections: CPU ticks {used}; run again)")
    cpu_us = sum(used) / _TICK / max(1, result.requests) * 1e6
    return dataclasses.replace(result, cpu_us=cpu_us)


# A `response` callback costs wrk some CPU, so only the flood counts statuses.
_STATUS_COUNTER = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  for status, count in pairs(totals) do io.write(string.format("status %d %d\\n", status, count)) end
end
"""


def write_lua(path: Path, key: str | None = None, *, count_statuses: bool = False) -> Path:
    """A wrk script that POSTs, with ``Authorization: Bearer <key>`` if ``key`` is given."""
    lines = ['wrk.method = "POST"']
    if key is not None:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {key}"')
    path.write_text("\n".join(lines) + "\n" + (_STATUS_COUNTER if count_statuses else ""))
    path.chmod(0o600)
    return path
