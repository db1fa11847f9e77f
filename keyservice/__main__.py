"""``python -m keyservice``: the installed version, and where the service's real commands are.

The service itself runs under gunicorn and is managed through Flask's CLI; this entry point
only says which version is installed and points there. It builds no app, so it answers
without reading a setting or touching a database.
"""

from __future__ import annotations

import click

from . import __version__

HELP = """keyservice: API keys for machine-to-machine auth in Flask.

\b
Migrate, then manage keys and identities with Flask's CLI (also: roles, webhooks):
  flask --app keyservice db upgrade
  flask --app keyservice keys --help
\b
Serve with gunicorn (pip install 'keyservice[serve]'):
  gunicorn -c python:keyservice.gunicorn_conf 'keyservice:create_app()'
\b
Or install it into your own app: keyservice.KeyService(app), @require_key(...).
"""


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="keyservice", message="%(prog)s %(version)s")
def main() -> None:
    """Print the help: this command does nothing else without an option."""
    click.echo(click.get_current_context().get_help())


if __name__ == "__main__":
    main(prog_name="python -m keyservice")
