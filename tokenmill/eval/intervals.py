"""Percentile bootstrap interval of a mean (KLD, MCC). Randomness from (seed, draw)."""
from __future__ import annotations

import numpy as np

from tokenmill.eval.fad import Interval


def bootstrap_mean(values: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of `values` float [N] with a percentile bootstrap interval (N values resampled with
    replacement, `n_boot` times). N = 0 gives NaNs; N = 1 a zero-width interval."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), level, n_boot)
    rng = np.random.default_rng([seed, 3])
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(v.mean()), float(lo), float(hi), level, n_boot)
