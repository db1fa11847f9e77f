"""What a role may be named: the one rule for the API's paths and bodies, the CLI and the store."""

from __future__ import annotations

import re

ROLE_NAME_PATTERN = "[a-z0-9_.:-]{1,100}"
ROLE_NAME_RULE = "1 to 100 of a-z 0-9 _ . : -"
_ROLE_NAME = re.compile(ROLE_NAME_PATTERN)  # fullmatch: a name ending in a newline is not a name


def is_role_name(name: str) -> bool:
    """Whether ``name`` may name a role (:data:`ROLE_NAME_RULE`)."""
    return _ROLE_NAME.fullmatch(name) is not None
