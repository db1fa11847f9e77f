"""gunicorn settings for the standalone service, shipped in the package.

From an installed package: ``gunicorn -c python:keyservice.gunicorn_conf 'keyservice:create_app()'``;
in a clone, ``gunicorn.conf.py`` at the top is these settings (``make serve``).
Flags on the command line (``-b``, ``-w``, ``--access-logfile``) override these.
"""

import gc
import glob
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
from typing import Any

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
# Slow clients: a sync worker belongs to one connection until that connection's request has
# arrived, so two clients trickling header lines hold two sync workers. A gthread worker keeps
# idle connections in its poller and gives a thread only to a connection that is sending, so
# each worker holds up to `threads` slow senders and still serves everyone else. More than
# that is what the buffering proxy in front is for (docs/deploy.md, deploy/nginx/).
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 64))
timeout = 30
graceful_timeout = 20
keepalive = 5
# The run is watched through its logs, not a control socket shared by every instance.
control_socket_disable = True
# One line per request: the service's own (keyservice/requestlog.py: request id, key id, outcome,
# client address), so gunicorn's access log is off. An operator who turns it on
# (--access-logfile -) gets it escaped, without the query string or a key's header.
accesslog = None
# The path without its query string: no header and no query value can put a key in the log.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'
# What the client sent is written escaped (\xNN), so a URL cannot forge a line or a colour.
logger_class = "keyservice.accesslog.EscapingLogger"


# Prometheus' multiprocess mode (keyservice/verification/metrics.py): every worker writes its metrics to
# files in this folder, /metrics adds them up. Set here, before any worker imports the app;
# a folder of our own is removed at exit.
# Left-over files of an earlier run go now, before a preloaded app (--preload) writes its zeros.
OWN_METRICS_FOLDER = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if OWN_METRICS_FOLDER:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="keyservice-metrics-")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
for _left_over in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
    os.remove(_left_over)


def on_starting(server: Any) -> None:
    """Refuse to start, in one line, when a setting is wrong; on one machine without
    KEYSERVICE_TOKEN_ISSUER, name the bind address the tokens' issuer."""
    from keyservice.core.config import ConfigError, config_from_environment

    try:
        config = config_from_environment()
    except ConfigError as error:
        sys.exit(f"keyservice: {error}")
    # Checked: without an issuer the service runs on one machine (else config_from_environment refused).
    bound = bind_address_url(server.cfg.address[0], server.cfg.is_ssl)
    if not config.get("KEYSERVICE_TOKEN_ISSUER") and bound is not None:
        if server.cfg.preload_app:
            sys.exit(
                "keyservice: with --preload, set KEYSERVICE_TOKEN_ISSUER: the app is built before gunicorn"
                " binds, so its tokens cannot name the bind address"
            )
        os.environ["KEYSERVICE_TOKEN_ISSUER"] = bound  # the workers, forked after this, read it


def bind_address_url(address: Any, tls: bool) -> str | None:
    """The URL of gunicorn's bind address (a wildcard host: this machine's name); None for a Unix socket."""
    if not isinstance(address, tuple):
        return None
    host, port = address[0], address[1]
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


def post_fork(server: Any, worker: Any) -> None:
    """A new worker loads the app with the garbage collector paused (see :func:`post_worker_init`)."""
    gc.disable()


def post_worker_init(worker: Any) -> None:
    """The app is loaded: collect garbage again. Loading it makes some 145,000 objects, nearly
    all kept for the worker's life; the collector's passes over them took about a fifth of a worker's start."""
    gc.enable()


def child_exit(server: Any, worker: Any) -> None:
    """A worker that is gone leaves its counters to the total, and its live values out of it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    """Remove the metrics folder this configuration made."""
    if OWN_METRICS_FOLDER:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
