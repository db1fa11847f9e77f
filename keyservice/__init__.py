"""keyservice: API keys for machine-to-machine auth in Flask."""

from .app import create_app
from .decorators import require_key
from .extension import KeyService
from .verification import Outcome, VerificationResult, verify_key

__all__ = ["KeyService", "Outcome", "VerificationResult", "create_app", "require_key", "verify_key"]
