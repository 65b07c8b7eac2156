"""The root of tokenmill's own exceptions: catch TokenmillError to handle any of them."""
from __future__ import annotations


class TokenmillError(Exception):
    """Base class of tokenmill's exceptions; messages name the input and the fix."""
