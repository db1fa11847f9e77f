"""Sphinx settings for keyservice's documentation (``make docs``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS / "_ext"), str(DOCS.parent)]
# Alembic (imported by Flask-Migrate when the API reference builds the app) announces its plugins
# at INFO; the build's output is for warnings.
logging.getLogger("alembic").setLevel(logging.WARNING)

project = "keyservice"
author = "keyservice's authors"
copyright = "keyservice's authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx_click",
    "sphinxcontrib.openapi",
    "openapi_from_app",
    "settings_table",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
# Links to a heading of another page (page.md#anchor) are checked like any reference.
myst_heading_anchors = 3
# "{include}" of ../CHANGES.md and README-style tables are all the MyST the pages use.
myst_enable_extensions = ["deflist"]

html_theme = "furo"
html_title = "keyservice"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# The docs build offline, so there are no other projects' inventories to resolve their names
# against: references to Flask's, SQLAlchemy's and the standard library's types stay plain text.
# keyservice's own names are still checked (-n).
nitpick_ignore_regex = [
    ("py:.*", r"(flask|werkzeug|sqlalchemy|flask_sqlalchemy|click|marshmallow|collections|typing)\..*"),
    ("py:.*", r"(Flask|Blueprint|Response|SQLAlchemy|Mapping|Callable|Any|Awaitable|datetime|timedelta)"),
    ("py:.*", r"(F|T|P|R|V)"),
]
# Internal modules and names that docstrings of the public API point to for the curious;
# the site documents the public API alone. Any other unresolved keyservice name fails the build.
nitpick_ignore = [
    ("py:class", "PrincipalLoader"),
    ("py:class", "keyservice.verification.decorators.Protected"),
    ("py:func", "keyservice.management.store.create_key"),
    ("py:func", "keyservice.management.apirules.problem_for"),
    ("py:meth", "Verifier.verify"),
    ("py:mod", "keyservice.verification.tokens"),
    ("py:mod", "keyservice.management.loosening"),
]
