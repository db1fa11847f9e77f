"""The code blocks of README.md and the docs' pages, as the tests that hold them to the truth
read them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

from .servers import REPO

# MyST directives written as fences ("```{toctree}") are no code; these are.
CODE_DIRECTIVES = ("{code-block}", "{code}", "{sourcecode}")


@dataclass(frozen=True)
class Block:
    """One code block: its page, first line, language ("" for none) and text."""

    page: Path
    line: int
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line} ({self.language or 'no language'})"


def pages() -> list[Path]:
    """README.md, CHANGES.md (included by docs/changes.md) and every page of docs/."""
    return [REPO / "README.md", REPO / "CHANGES.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """The page's code blocks, fenced or indented."""
    found = []
    for token in MarkdownIt("commonmark").parse(page.read_text()):
        if token.type not in ("fence", "code_block"):
            continue
        words = token.info.split()
        if words and words[0].startswith("{") and words[0] not in CODE_DIRECTIVES:
            continue
        language = (words[1] if len(words) > 1 else "") if words and words[0] in CODE_DIRECTIVES else token.info
        line = token.map[0] + 1 if token.map else 0
        found.append(Block(page, line, language.strip(), token.content))
    return found


def every_block() -> list[Block]:
    """Every code block of every page."""
    return [block for page in pages() for block in blocks(page)]
