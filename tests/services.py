"""Throwaway PostgreSQL, Redis and nginx servers on 127.0.0.1, for the tests and the benchmarks.

Each runs from a temp directory, on a free port, with nothing kept after it stops.
PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user,
in a data directory that user owns. Where a server's binary is missing, the tests
that need it skip, except under CI (the ``CI`` variable set), where a missing
service must fail the run rather than skip quietly.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy

from .helpers import free_port
from .servers import stop


def missing(what: str) -> None:
    """Skip the test for want of ``what``; under CI, fail it."""
    message = f"{what} is not installed"
    if "CI" in os.environ:
        pytest.fail(f"{message}, and CI must run the tests that need it", pytrace=False)
    pytest.skip(message)


def _binary(name: str, *elsewhere: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps PostgreSQL's server binaries off PATH, one folder per major version.
    candidates = sorted(
        (path for pattern in elsewhere for path in glob.glob(pattern)),
        key=lambda path: [int(part) for part in path.split("/") if part.isdigit()],
    )
    return candidates[-1] if candidates else None


def _wait_for_port(
    port: int, process: subprocess.Popen[bytes], within: float, hello: bytes | None = None, answer: bytes = b""
) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                if hello is None:
                    return True
                connection.sendall(hello)
                if connection.recv(64).startswith(answer):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


# --- Redis --------------------------------------------------------------------------------------------


@contextmanager
def redis_server(log: Path) -> Iterator[str]:
    """Run ``redis-server`` (its output to ``log``); yield its URL ``redis://127.0.0.1:<port>/0``, stop it after."""
    binary = _binary("redis-server")
    if binary is None:
        missing("redis-server")
        raise AssertionError("unreachable")
    for _ in range(3):  # the free port may be taken again before redis binds it
        port = free_port()
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        if _wait_for_port(port, process, 10.0, b"PING\r\n", b"+PONG"):
            break
        stop(process)
    else:
        raise RuntimeError(f"redis-server did not start: {log.read_text(errors='replace')}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


# --- PostgreSQL ---------------------------------------------------------------------------------------


class PostgresServer:
    """A PostgreSQL cluster of its own in ``directory`` (which the server's user must be
    able to reach: not under a root-only temp folder), on a free port of 127.0.0.1.

    ``data`` is its data directory (PGDATA), to read as it is on disk.
    ``stop()`` and ``start()`` again keep its data and its port, for outage tests.
    ``fast`` trades durability for speed (no fsync): right for tests, not for benchmarks.
    """

    USER = "keyservice"

    def __init__(self, directory: Path, *, fast: bool = True) -> None:
        initdb = _binary("initdb", "/usr/lib/postgresql/*/bin/initdb")
        if initdb is None:
            missing("PostgreSQL (initdb)")
            raise AssertionError("unreachable")
        self._bin = Path(initdb).resolve().parent  # where its siblings (postgres, pg_isready) are
        self._run_as = "postgres" if os.geteuid() == 0 else None
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = free_port()
        self._fast = fast
        self._process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.data.mkdir()
        if self._run_as:
            account = pwd.getpwnam(self._run_as)
            os.chown(directory, account.pw_uid, account.pw_gid)
            os.chown(self.data, account.pw_uid, account.pw_gid)
        done = self._run(
            [str(self._bin / "initdb"), "-D", str(self.data), "-U", self.USER, "-A", "trust", "-E", "UTF8", "--no-sync"]
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout.decode(errors='replace')}")

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            command,
            user=self._run_as,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=120,
        )

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{self.USER}@127.0.0.1:{self.port}/{database}"

    def administer(self, statement: str) -> None:
        """Run one statement (CREATE or DROP DATABASE, CHECKPOINT) outside a transaction."""
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(statement))
        engine.dispose()

    def dump(self, database: str) -> bytes:
        """Everything ``database`` holds, as ``pg_dump`` writes it."""
        done = subprocess.run(
            [str(self._bin / "pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.USER, database],
            capture_output=True,
            check=True,
            timeout=60,
        )
        return done.stdout

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=200"]
        if self._fast:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with self.log.open("ab") as log_file:
            self._process = subprocess.Popen(
                [str(self._bin / "postgres"), "-D", str(self.data), "-p", str(self.port), *settings],
                user=self._run_as,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        if not self._accepts_connections(30.0):
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def _accepts_connections(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and self._process is not None and self._process.poll() is None:
            done = subprocess.run(
                [str(self._bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
            )
            if done.returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def crash(self) -> None:
        """Stop the server as a crash would: SIGQUIT is PostgreSQL's immediate shutdown (what
        ``pg_ctl stop -m immediate`` sends): no checkpoint, what is in its WAL buffers is lost,
        and the next start recovers from the WAL on disk."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGQUIT)
        self._process.wait(timeout=30)
        self._process = None

    def stop(self) -> None:
        """Stop the server at once: SIGINT is PostgreSQL's fast shutdown, which ends open
        sessions (SIGTERM would wait for every client to leave)."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


@contextmanager
def postgres_server(*, fast: bool = True) -> Iterator[PostgresServer]:
    """A new PostgreSQL server in a temp directory of its own, started; stopped and removed after."""
    directory = Path(tempfile.mkdtemp(prefix="keyservice-pg-"))
    try:
        server = PostgresServer(directory, fast=fast)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- nginx --------------------------------------------------------------------------------------------

NGINX_SITE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "keyservice.conf"


@contextmanager
def nginx_server(upstream: str, *, worker_connections: int = 4096) -> Iterator[str]:
    """Run nginx with the project's site (``deploy/nginx/keyservice.conf``) in front of
    ``upstream`` (``host:port``): the site as shipped, its port and upstream replaced, in a
    main config whose pid, logs and temp files are in a temp directory of its own. Yield its
    base URL; stop it and remove the directory after.

    As root, nginx's workers drop to ``nobody``, so the directory is readable by all.
    """
    binary = _binary("nginx", "/usr/sbin/nginx")
    if binary is None:
        missing("nginx")
        raise AssertionError("unreachable")
    directory = Path(tempfile.mkdtemp(prefix="keyservice-nginx-"))
    directory.chmod(0o755)
    try:
        for _ in range(3):  # the free port may be taken again before nginx binds it
            port = free_port()
            site = NGINX_SITE.read_text()
            for shipped, here in (
                ("server 127.0.0.1:8000;", f"server {upstream};"),
                ("listen 80;", f"listen 127.0.0.1:{port};"),
                ("/var/log/nginx/", f"{directory}/"),
            ):
                assert shipped in site, f"{NGINX_SITE} no longer has {shipped!r}"
                site = site.replace(shipped, here)
            (directory / "keyservice.conf").write_text(site)
            temp_paths = "\n".join(
                f"    {kind}_temp_path {directory / kind};"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            (directory / "nginx.conf").write_text(
                f"worker_processes 1;\nworker_rlimit_nofile {2 * worker_connections + 64};\n"
                f"pid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} warn;\n"
                f"events {{\n    worker_connections {worker_connections};\n}}\n"
                f"http {{\n{temp_paths}\n    include {directory / 'keyservice.conf'};\n}}\n"
            )
            with (directory / "nginx.out").open("ab") as output:
                process = subprocess.Popen(
                    [
                        binary,
                        "-p",
                        str(directory),
                        "-e",
                        str(directory / "error.log"),
                        "-c",
                        str(directory / "nginx.conf"),
                        "-g",
                        "daemon off;",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            if _wait_for_port(port, process, 10.0):
                break
            stop(process)
        else:
            raise RuntimeError(f"nginx did not start: {(directory / 'error.log').read_text(errors='replace')}")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
