"""The comparison for ``bench.ratelimits``: a bare Flask view (``bare_app``), and the same view
behind Flask-Limiter (``app``).

Served as a Flask app is on its own (``bench.service.plain_gunicorn``). ``/limited`` is
what a Flask user would pick for per-key limits: Flask-Limiter's moving window on
the Redis at ``BENCH_REDIS_URL``, keyed by the ``Authorization`` header, with its
rate-limit headers on (each request: the hit, then a read of the window).
"""

import os

from flask import Flask, request
from flask_limiter import Limiter

app = Flask(__name__)
limiter = Limiter(
    key_func=lambda: request.headers.get("Authorization", ""),
    app=app,
    storage_uri=os.environ["BENCH_REDIS_URL"],
    strategy="moving-window",
    headers_enabled=True,
)


@app.post("/limited")
@limiter.limit("1000000/10 seconds")
def limited() -> dict[str, bool]:
    return {"protected": False}


def healthz() -> dict[str, bool]:
    """What the bench's start-up waits for, as on keyservice."""
    return {"alive": True}


def bare() -> dict[str, bool]:
    return {"protected": False}


app.get("/healthz")(healthz)
bare_app = Flask("bare")  # without Flask-Limiter, whose hooks run on every route of its app
bare_app.get("/healthz")(healthz)
bare_app.post("/bare")(bare)
