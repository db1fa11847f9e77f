"""Every code block of the README and the docs is held to the truth, by its language:

- ``python``: part of a file the tests run (test_examples.py checks that);
- ``sh``: run here, a page's blocks in order in one bash (they share variables), from the
  clone's top, against the service under gunicorn on a temp SQLite database that the
  commands' ``DATABASE_URL`` also names. What the run changes, and only that:
  ``http://127.0.0.1:8000`` is the test server's address and ``.venv/bin/`` this virtualenv's;
  ``make TARGET`` is a dry run (``make -n``: the target exists and its recipe expands; running
  it is the suite itself, a server or a benchmark); a server command (``flask ... run``,
  ``gunicorn ...``) is started on a free port, must answer, and is stopped; a benchmark
  (``python -m bench.NAME ...``) must accept its options (``--help`` after them: they run by
  hand, ``make bench``). A line ``# {...}`` is the answer documented for the command before it:
  the command's last line of output must be that JSON, where ``...`` stands for more members,
  ``[...]`` for any list and ``"x..."`` for a string starting with ``x``.

Any other block fails: run it here, make it part of a tested file, or leave it out.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .docblocks import Block, every_block
from .helpers import free_port
from .servers import REPO, gunicorn, service_environment

pytestmark = pytest.mark.slow  # starts the service

TESTED_LANGUAGES = ("python", "sh")
DOCUMENTED_BASE = "http://127.0.0.1:8000"
ANSWER = re.compile(r"^# (\{.*\})$")
PASSWORD = "a password for the docs"

# Shell functions the blocks run under (see the module's docstring).
PRELUDE = r"""
set -eo pipefail
make() { command make --dry-run --no-print-directory -C "$REPO" "$@" >/dev/null; }
answers() {  # serving URL, then a server command: started, asked until it answers, stopped
  local url=$1; shift
  "$@" >"$SERVER_LOG" 2>&1 &
  local server=$! tries=0
  until curl -s -o /dev/null "$url"; do
    tries=$((tries + 1)); [ $tries -lt 300 ] && kill -0 $server 2>/dev/null || { cat "$SERVER_LOG" >&2; return 1; }
    sleep 0.1
  done
  kill $server; wait $server || true
}
flask() {
  if [ "${!#}" = run ]; then answers "http://127.0.0.1:$FREE_PORT/login" command flask "$@" --port "$FREE_PORT"
  else command flask "$@"; fi
}
gunicorn() { BIND=127.0.0.1:$FREE_PORT answers "http://127.0.0.1:$FREE_PORT/healthz" command gunicorn "$@"; }
python() {
  if [ "$1" = -m ] && [[ $2 == bench.* ]]; then command python "$@" --help >/dev/null; else command python "$@"; fi
}
"""


def shell_pages() -> dict[str, list[Block]]:
    """The sh blocks, by page, in the page's order."""
    by_page: dict[str, list[Block]] = defaultdict(list)
    for block in every_block():
        if block.language == "sh":
            by_page[str(block.page.relative_to(REPO))].append(block)
    return dict(by_page)


def test_every_block_is_of_a_language_a_test_holds_to_the_truth() -> None:
    untested = [str(block) for block in every_block() if block.language not in TESTED_LANGUAGES]
    assert not untested, f"no test runs these blocks (see {__name__}'s docstring): {untested}"


def script_of(blocks: list[Block], base: str) -> tuple[str, list[str]]:
    """The page's blocks as one bash script, each documented answer replaced by a marker; and
    the answers, in order."""
    answers: list[str] = []
    lines = []
    for block in blocks:
        for line in block.text.replace(DOCUMENTED_BASE, base).replace(".venv/bin/", "").splitlines():
            documented = ANSWER.match(line)
            if documented:
                lines.append(f"printf '\\n@@answer {len(answers)}@@\\n'")
                answers.append(documented.group(1))
            else:
                lines.append(line)
    return PRELUDE + "\n".join(lines) + "\n", answers


def documented_value(text: str) -> Any:
    """A documented answer as JSON, its ``...`` made into markers ``matches`` reads."""
    text = text.replace(", ...}", ', "...": true}').replace("[...]", '["[...]"]')
    return json.loads(text)


def matches(documented: Any, actual: Any) -> bool:
    """Whether ``actual`` has the documented shape."""
    if isinstance(documented, dict):
        more = documented.get("...") is True
        expected = {name: value for name, value in documented.items() if name != "..."}
        return (
            isinstance(actual, dict)
            and (set(expected) <= set(actual) if more else set(expected) == set(actual))
            and all(matches(value, actual[name]) for name, value in expected.items())
        )
    if documented == ["[...]"]:
        return isinstance(actual, list)
    if isinstance(documented, list):
        return isinstance(actual, list) and len(documented) == len(actual) and all(map(matches, documented, actual))
    if isinstance(documented, str) and documented.endswith("..."):
        return isinstance(actual, str) and actual.startswith(documented[:-3])
    return bool(documented == actual)


@pytest.fixture(scope="module")
def served(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """The service under gunicorn on a migrated temp database, and the commands' environment."""
    folder = tmp_path_factory.mktemp("doc-blocks")
    database = folder / "keys.db"
    database.write_bytes(sqlite_template.read_bytes())
    environ = service_environment(f"sqlite:///{database}", KEYSERVICE_BCRYPT_ROUNDS="4")
    environ.update(
        PATH=f"{Path(sys.executable).parent}:{environ['PATH']}",
        REPO=str(REPO),
        SERVER_LOG=str(folder / "server.log"),
        # examples/saas_app.py reads FLASK_* settings: its users' database in the temp folder too.
        FLASK_SQLALCHEMY_DATABASE_URI=f"sqlite:///{folder / 'saas.db'}",
    )
    with gunicorn(environ, folder / "gunicorn.log") as base:
        yield base, environ


@pytest.mark.parametrize("page", sorted(shell_pages()))
def test_the_shell_blocks_of_the_page_run_and_answer_as_documented(
    page: str, served: tuple[str, dict[str, str]]
) -> None:
    base, environ = served
    script, answers = script_of(shell_pages()[page], base)
    ran = subprocess.run(
        ["bash", "-c", script],
        cwd=REPO,
        env={**environ, "FREE_PORT": str(free_port())},
        input=f"{PASSWORD}\n{PASSWORD}\n",  # what an interactive command asks for (a new user's password)
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, f"{page}'s blocks failed:\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
    outputs = re.split(r"\n@@answer \d+@@\n", ran.stdout)
    assert len(outputs) == len(answers) + 1
    for documented, output in zip(answers, outputs, strict=False):
        last_line = [line for line in output.splitlines() if line.strip()][-1]
        assert matches(documented_value(documented), json.loads(last_line)), (
            f"{page}: documented {documented}, answered {last_line}"
        )
