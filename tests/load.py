"""Many clients at once over real HTTP, and reading what they got back."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


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
