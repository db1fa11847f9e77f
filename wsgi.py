"""The standalone service for gunicorn: ``gunicorn wsgi:app`` (in a clone; an installed
package serves ``keyservice:create_app()``)."""

import sys

from keyservice import create_app
from keyservice.core.config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    sys.exit(f"keyservice: {error}")
