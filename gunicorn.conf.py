"""gunicorn settings for the standalone service: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Flags on the command line (``-b``, ``-w``) override these.
"""

import multiprocessing
import os
import sys

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
timeout = 30
graceful_timeout = 20
keepalive = 5
# The run is watched through its logs, not a control socket shared by every instance.
control_socket_disable = True
accesslog = "-"
# The path without its query string: no header and no query value can put a key in the log.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'


def on_starting(server):
    """Refuse to start, in one line, when a setting is wrong."""
    from keyservice.config import ConfigError, config_from_environment

    try:
        config_from_environment()
    except ConfigError as error:
        sys.exit(f"keyservice: {error}")
