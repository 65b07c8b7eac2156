"""Evaluation kernels: FAD (Gaussian sufficient statistics, Fréchet distance, FAD-inf, bootstrap),
KLD between label distributions, MCC (text/audio cosine), and the embedder / classifier plug-ins.
Pure numpy/scipy/torch; the Beam wiring is tokenmill/pipelines/evaluate.py."""
from __future__ import annotations

from tokenmill.errors import TokenmillError


class EvalError(TokenmillError, ValueError):
    """Evaluation input or configuration that cannot work; the message names it and the fix."""

    reason = "unscorable"  # a clip's dead-letter reason
