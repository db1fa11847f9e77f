"""Many clients at once over real HTTP, and reading what they got back."""

from __future__ import annotations

import functools
import json
import random
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from .servers import Response
from .servers import request as send


@dataclass(frozen=True)
class Timed:
    """A response, when the client sent its request and when it had the answer (``time.monotonic()``).

    The server counted the request somewhere between the two.
    """

    sent: float
    received: float
    response: Response
    url: str = ""


def outcome(response: Response) -> tuple[int, str | None]:
    """(status, problem code); the code is None for a success."""
    if response.status == 200:
        return 200, None
    return response.status, json.loads(response.body)["code"]


def header(response: Response, name: str) -> str | None:
    return next((value for key, value in response.headers.items() if key.lower() == name.lower()), None)


def together(calls: list[Callable[[], Response]]) -> list[Response]:
    """Make every call from a thread of its own, all released at once; their responses in order."""
    barrier = threading.Barrier(len(calls))

    def one(call: Callable[[], Response]) -> Response:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def all_at_once(urls: str | list[str], headers: dict[str, str], count: int) -> list[Response]:
    """POST from ``count`` threads released together, thread i to ``urls[i % len(urls)]``."""
    urls = [urls] if isinstance(urls, str) else urls
    return together([functools.partial(send, urls[i % len(urls)], "POST", headers) for i in range(count)])


def hammer(urls: str | list[str], headers: dict[str, str], threads: int, seconds: float) -> list[Timed]:
    """POST from ``threads`` threads, thread i to ``urls[i % len(urls)]``, each one request after
    another, for ``seconds``; every response in the order the client had them."""
    urls = [urls] if isinstance(urls, str) else urls
    barrier = threading.Barrier(threads)

    def loop(i: int) -> list[Timed]:
        barrier.wait(timeout=30)
        deadline = time.monotonic() + seconds
        answers = []
        while (sent := time.monotonic()) < deadline:
            response = send(urls[i % len(urls)], "POST", headers)
            answers.append(Timed(sent, time.monotonic(), response, urls[i % len(urls)]))
        return answers

    with ThreadPoolExecutor(threads) as pool:
        chunks = list(pool.map(loop, range(threads)))
    return sorted((timed for chunk in chunks for timed in chunk), key=lambda timed: timed.received)


class Tricklers:
    """``count`` slow clients: each opens a connection to ``url``, sends a request line, then one
    header line every 1-2 s, and never ends its headers. A connection the server closes (or
    answers) is opened again at once, as an attacker would. Runs in a thread of its own while
    in its ``with`` block.

    ``closed_by_server`` counts those connections; ``fewest_open`` is the fewest open at
    any moment the thread looked (after it had opened again what was closed).
    """

    def __init__(self, url: str, count: int) -> None:
        address = urlsplit(url)
        self._address = (address.hostname or "127.0.0.1", address.port or 80)
        self._count = count
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._due: dict[socket.socket, float] = {}
        self._lines = 0
        self._to_open = 0
        self.closed_by_server = 0
        self.fewest_open = count
        self._thread = threading.Thread(target=self._run, name="tricklers", daemon=True)

    def __enter__(self) -> Tricklers:
        # A client of many connections needs descriptors: the soft limit may be below the hard one.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = self._count + 256
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
        for _ in range(self._count):
            self._open()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        for connection in list(self._due):
            self._close(connection)
        self._selector.close()

    def _open(self) -> None:
        connection = socket.create_connection(self._address, timeout=5)
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
        connection.setblocking(False)
        self._selector.register(connection, selectors.EVENT_READ)
        self._due[connection] = time.monotonic() + random.uniform(1.0, 2.0)

    def _close(self, connection: socket.socket) -> None:
        self._selector.unregister(connection)
        del self._due[connection]
        connection.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            # Anything to read is the server's answer (a 408, a 400) or its close: start again.
            for selected, _ in self._selector.select(timeout=0.1):
                self._reopen(selected.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            for connection, due in list(self._due.items()):
                if due <= now:
                    self._lines += 1
                    try:
                        connection.send(f"X-Slow-{self._lines}: {self._lines}\r\n".encode())
                    except OSError:
                        self._reopen(connection)
                        continue
                    self._due[connection] = now + random.uniform(1.0, 2.0)
            for _ in range(self._to_open):
                try:
                    self._open()
                    self._to_open -= 1
                except OSError:
                    break  # the server takes no more now: next round
            self.fewest_open = min(self.fewest_open, len(self._due))

    def _reopen(self, connection: socket.socket) -> None:
        self.closed_by_server += 1
        self._close(connection)
        self._to_open += 1
