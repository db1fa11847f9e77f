"""The import contract: a module of keyservice imports from its own layer and the layers below, never above."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "keyservice"

# Bottom first. management may use the request path (principals check management keys with it).
LAYERS = [
    {"outcomes", "keystatus", "scopes", "crypto", "config", "models", "dberrors", "rawsql", "jsonguard", "errors", "state"},
    {"slidingwindow", "lmdbwindows", "rediswindows", "ratelimit", "usage", "metrics", "changefeed", "rowcache",
     "checkedkeys", "deploymentsecret", "failedchecks", "keyrows", "quota", "verification", "signingkeys",
     "tokens", "decorators"},
    {"storeerrors", "rolenames", "loosening", "schemas", "store", "webhooks", "addresses", "sender", "principals", "apirules", "api",
     "webhooks_api", "oauth", "openapi", "scan", "cli", "secret_scanning", "dashboard"},
    {"__init__", "extension", "app", "routes", "health", "requestlog", "accesslog", "gunicorn_conf"},
]
LAYER_OF = {module: level for level, modules in enumerate(LAYERS) for module in modules}


def imported_modules(tree: ast.Module) -> set[str]:
    """The keyservice modules ``tree`` imports, by name (``from . import x`` and ``from .x import y`` alike)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("keyservice")):
            path = (node.module or "").removeprefix("keyservice").lstrip(".")
            found |= {path.split(".")[0]} if path else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("keyservice.")}
    return found


def test_every_module_has_a_layer() -> None:
    assert {path.stem for path in PACKAGE.glob("*.py")} == set(LAYER_OF)


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = [f"{path.stem} imports {name}" for path in sorted(PACKAGE.glob("*.py"))
              for name in imported_modules(ast.parse(path.read_text())) if LAYER_OF[name] > LAYER_OF[path.stem]]
    assert upward == []
