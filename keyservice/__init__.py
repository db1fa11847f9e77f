"""keyservice: API keys for machine-to-machine auth in Flask."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .core.outcomes import Outcome, VerificationResult
    from .extension import KeyService
    from .verification.decorators import require_key
    from .verification.verifier import verify_key

__all__ = ["KeyService", "Outcome", "VerificationResult", "__version__", "create_app", "require_key", "verify_key"]

# The one place the version is stated: setup.cfg reads it (version = attr: keyservice.__version__).
# A plain string literal, so that setuptools reads it from this file's source without importing
# the package (and so its dependencies) in an isolated build.
__version__ = "0.2.0"

# Each public name's module, imported when the name is first used: importing a submodule alone
# must not load the app's modules. gunicorn's settings (keyservice.gunicorn_conf) choose
# Prometheus' multiprocess mode, which has to happen before prometheus_client is imported.
_MODULES = {
    "KeyService": ".extension",
    "Outcome": ".core.outcomes",
    "VerificationResult": ".core.outcomes",
    "create_app": ".app",
    "require_key": ".verification.decorators",
    "verify_key": ".verification.verifier",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name], __name__), name)
    globals()[name] = value
    return value
