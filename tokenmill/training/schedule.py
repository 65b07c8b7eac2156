"""The learning-rate schedule of every trainer (stage trainer, codec, MuLan): a function of the
step alone, so a resumed run follows the same curve.

Linear warm-up from 0 over `warmup_steps` (step k, 0-based, gets peak·(k+1)/warmup_steps), then
either held at the peak ("constant") or cosine-decayed to floor·peak at `total_steps` ("cosine").
The stage trainer uses floor 0.1 (--schedule), the MuLan trainer cosine to 0, the codec trainer a
constant rate without warm-up.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_at(step: int, peak: float, *, warmup_steps: int = 0, total_steps: int = 1, kind: str = "constant",
          floor: float = 0.0) -> float:
    """Learning rate of optimizer step `step` (0-based)."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if kind == "constant":
        return peak
    frac = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))
