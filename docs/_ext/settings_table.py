"""``.. keyservice-settings::``: the configuration reference, rendered from the settings' one
declaration (``keyservice.core.config.SETTINGS``), so the page cannot drift from the code."""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from keyservice.core.config import DATABASE_URL, SETTINGS, Setting


def shown_default(setting: Setting) -> str:
    """The default as the environment variable would spell it."""
    if setting.default == "":
        return "(empty)"
    if isinstance(setting.default, bool):
        return f"``{str(setting.default).lower()}``"
    if isinstance(setting.default, float) and setting.default.is_integer():
        return f"``{int(setting.default)}``"
    return f"``{setting.default}``"


def table_text(settings: tuple[Setting, ...]) -> str:
    """A reStructuredText list-table of ``settings``: name, default, description."""
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 15 55", "", "   * - setting", "     - default"]
    lines.append("     - what it does")
    for setting in settings:
        lines += [
            f"   * - ``{setting.name}``",
            f"     - {shown_default(setting)}",
            f"     - {setting.description}",
        ]
    return "\n".join(lines)


class SettingsTable(SphinxDirective):
    """Render every setting, ``DATABASE_URL`` first."""

    def run(self) -> list[nodes.Node]:
        return self.parse_text_to_nodes(table_text((DATABASE_URL, *SETTINGS)))


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directive."""
    app.add_directive("keyservice-settings", SettingsTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
