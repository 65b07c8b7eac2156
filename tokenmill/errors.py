"""The root of tokenmill's errors: every error of ours derives from `TokenmillError`.

A leaf module (imports nothing), so every layer may import it, schemas/ included. Each error keeps
its historical built-in base as well (ValueError for bad input, RuntimeError for a state that
cannot go on), so callers that caught those still do; the CLI catches `TokenmillError`.
"""
from __future__ import annotations


class TokenmillError(Exception):
    """An error tokenmill raises on purpose, with a message that names the file and the fix."""


class UsageError(TokenmillError, ValueError):
    """A flag, path or setting given to a command cannot work; the message names it and the fix."""
