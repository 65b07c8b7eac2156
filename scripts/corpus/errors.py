"""The corpus recipe's one error type; the CLI prints its message and exits 2."""
from __future__ import annotations

from tokenmill.errors import TokenmillError


class CorpusError(TokenmillError, RuntimeError):
    """A corpus build cannot go on; the message names the package or file and the fix."""
