"""The root of tokenmill's own exceptions: catch TokenmillError to catch every fix-it error."""
from __future__ import annotations


class TokenmillError(Exception):
    """An error whose message names the file or option at fault and how to fix it."""
