"""gunicorn settings for the standalone service: ``gunicorn -c gunicorn.conf.py wsgi:app``.

They live in the package (keyservice/gunicorn_conf.py), so that an installed package has them too.
"""

from keyservice.gunicorn_conf import *  # noqa: F403  (gunicorn reads this module's settings and hooks)
