"""The import contract: each layer of keyservice, a subpackage, imports from itself and the layers
below it, never from one above. The top of the package (the app factory, the extension, the
routes, logging) is the service layer and may import any of them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "keyservice"

# Bottom first. management may use the request path (principals check management keys with it).
LAYERS = ["core", "verification", "management", ""]
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}


def layer_of(dotted: str) -> str:
    """The layer of a module given as its path inside the package (``core.models``, ``app``)."""
    first, _, rest = dotted.partition(".")
    return first if rest and first in RANK else ""


def module_path(path: Path) -> str:
    """``keyservice/core/models.py`` as ``core.models``."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def imported_modules(tree: ast.Module, importer: str) -> set[str]:
    """The keyservice modules (as paths inside the package) that module ``importer``'s ``tree``
    imports: relative and absolute imports alike, ``TYPE_CHECKING`` ones included."""
    found = set()
    package = importer.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif (node.module or "").startswith("keyservice"):
                target = (node.module or "").split(".")[1:]
            else:
                continue
            if not target:  # from . import routes, at the top
                found |= {alias.name for alias in node.names}
            elif target[0] in RANK and len(target) == 1:  # from ..core import rawsql
                found |= {f"{target[0]}.{alias.name}" for alias in node.names}
            else:
                found.add(".".join(target))
        elif isinstance(node, ast.Import):
            found |= {
                alias.name.removeprefix("keyservice.") for alias in node.names if alias.name.startswith("keyservice.")
            }
    return found


def upward_imports() -> list[str]:
    """Every import in the package that reaches a layer above the importer's own."""
    return [
        f"{module_path(path)} imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name in imported_modules(ast.parse(path.read_text()), module_path(path))
        if RANK[layer_of(name)] > RANK[layer_of(module_path(path))]
    ]


def test_every_module_is_in_a_layer() -> None:
    assert {path.parent.name for path in PACKAGE.rglob("*.py") if path.parent != PACKAGE} <= set(LAYERS)


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    assert upward_imports() == []
