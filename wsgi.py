"""The standalone service for gunicorn: ``gunicorn wsgi:app``."""

import sys

from keyservice import create_app
from keyservice.config import ConfigError
from keyservice.requestlog import configure_logging

try:
    app = create_app()
except ConfigError as error:
    sys.exit(f"keyservice: {error}")
configure_logging(app.extensions["keyservice"].settings.log_format)
