"""Fréchet Audio Distance: Gaussian sufficient statistics, their parallel merge, the distance,
FAD-inf and a bootstrap interval. Pure numpy/scipy.

Statistics. `GaussStats(n, mean, m2)`: the count, the mean (float64 [D]) and the *centred* second
moment m2 = Σ (x - mean)(x - mean)ᵀ (float64 [D, D]). Two sets merge with the parallel update of
Chan, Golub & LeVeque: n = na + nb, δ = mean_b - mean_a, mean = mean_a + δ·nb/n,
m2 = m2_a + m2_b + δδᵀ·na·nb/n. It is exact in exact arithmetic for any split of the data, and in
float64 it stays accurate where the naive Σx, Σxxᵀ accumulator cancels catastrophically (for
embeddings far from the origin, Σxxᵀ/n - μμᵀ loses the digits the covariance lives in). The
covariance is m2 / (n - 1) (numpy.cov's default).

Distance. FD = |μ1 - μ2|² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½), with scipy.linalg.sqrtm. The usual
treatment: a non-finite square root (singular product) is retried with ε·I added to both
covariances; an imaginary part from rounding is dropped when its diagonal is below 1e-3 (a larger
one means the inputs are not covariances and raises).

FAD-inf. FAD is biased upward by O(1/n) in the number of generated embeddings. As in fadtk: the
generated set is subsampled (whole clips, without replacement) at several sizes, FAD of each
subsample against the fixed reference statistics is fitted linearly against 1/n, and the
intercept (1/n → 0) is FAD-inf.

Resamples use `FixedReference` (the same distance through a symmetric eigensolve, the reference's
square root computed once). Bootstrap. Generated clips are resampled with replacement (a clip's frames move together: they
are not independent), FAD against the fixed reference statistics is recomputed, and the
percentile interval is reported. The reference is a fixed Gaussian in both (the reference
statistics may come from a saved artifact with no embeddings left), so the interval covers the
generated side's sampling only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenmill.eval import EvalError

SQRTM_EPS = 1e-6  # added to both covariances' diagonals when (Σ1 Σ2)^½ is not finite
IMAG_ATOL = 1e-3  # largest imaginary diagonal entry of the square root accepted as rounding


@dataclass(frozen=True)
class GaussStats:
    """n embeddings of dimension D: count, mean float64 [D], centred second moment float64 [D, D]."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def empty(cls, dim: int) -> "GaussStats":
        return cls(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))

    @classmethod
    def of(cls, x: np.ndarray) -> "GaussStats":
        """Statistics of one batch float [N, D] (two passes over the batch: mean, then centred)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise EvalError(f"embeddings must be [N, D], got shape {x.shape}")
        if x.shape[0] == 0:
            return cls.empty(x.shape[1])
        if not np.isfinite(x).all():
            raise EvalError("embeddings contain NaN or Inf; check the embedder's input audio")
        mean = x.mean(axis=0)
        c = x - mean
        return cls(int(x.shape[0]), mean, c.T @ c)

    def merge(self, other: "GaussStats") -> "GaussStats":
        """Chan's parallel update (module docstring); the empty set is the identity."""
        if other.dim != self.dim:
            raise EvalError(f"cannot merge statistics of {self.dim}-d and {other.dim}-d embeddings")
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return GaussStats(n, mean, m2)

    def add(self, x: np.ndarray) -> "GaussStats":
        return self.merge(GaussStats.of(x))

    @property
    def cov(self) -> np.ndarray:
        """float64 [D, D] sample covariance m2 / (n - 1); needs n >= 2."""
        if self.n < 2:
            raise EvalError(f"a covariance needs at least 2 embeddings, got {self.n}")
        return self.m2 / (self.n - 1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (module docstring)."""
    import scipy.linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise EvalError(f"Fréchet distance: means {mu1.shape}/{mu2.shape} and covariances "
                        f"{s1.shape}/{s2.shape} do not match")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * SQRTM_EPS
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_ATOL):
            worst = float(np.max(np.abs(np.diagonal(covmean).imag)))
            raise EvalError(f"Fréchet distance: sqrtm(Σ1 Σ2) has an imaginary diagonal part of {worst:.3g}; "
                            "the covariances are not positive semi-definite (non-finite or corrupt statistics?)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fad(a: GaussStats, b: GaussStats) -> float:
    """FAD between two sets of embeddings given by their statistics."""
    if a.dim != b.dim:
        raise EvalError(f"FAD between {a.dim}-d and {b.dim}-d embeddings: use the same embedder on both sides")
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


# ---- resampling: clip-weighted statistics --------------------------------------------------------

class FixedReference:
    """FAD of many resamples against one reference, without a sqrtm per resample: with R^½ the
    symmetric square root of the reference covariance (eigh, once), tr((S R)^½) = tr((R^½ S R^½)^½)
    = Σ sqrt(eigvalsh(R^½ S R^½)) (S R is similar to the PSD R^½ S R^½). Equal to `fad` up to
    rounding (tests); a symmetric eigensolve is several times cheaper than sqrtm's Schur method."""

    def __init__(self, reference: GaussStats):
        self.reference = reference
        r = reference.cov
        w, v = np.linalg.eigh(r)
        self.root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        self.trace = float(np.trace(r))

    def fad(self, s: GaussStats) -> float:
        if s.dim != self.reference.dim:
            raise EvalError(f"FAD between {s.dim}-d and {self.reference.dim}-d embeddings")
        diff = s.mean - self.reference.mean
        c = s.cov
        m = self.root @ c @ self.root
        ev = np.linalg.eigvalsh((m + m.T) / 2)
        return float(diff @ diff + np.trace(c) + self.trace - 2.0 * np.sqrt(np.clip(ev, 0, None)).sum())


def _frame_weights(clip_sizes: np.ndarray, clip_weights: np.ndarray) -> np.ndarray:
    return np.repeat(clip_weights.astype(np.float64), clip_sizes)


def weighted_stats(frames: np.ndarray, weights: np.ndarray) -> GaussStats:
    """Statistics of `frames` float [F, D] where frame f counts `weights[f]` (a non-negative
    integer) times: the statistics of the resampled multiset."""
    w = np.asarray(weights, np.float64)
    n = float(w.sum())
    if n < 2:
        raise EvalError(f"a resample needs at least 2 embeddings, got {n:g}")
    x = np.asarray(frames, np.float64)
    mean = (w @ x) / n
    c = x - mean
    return GaussStats(int(round(n)), mean, (c * w[:, None]).T @ c)


def _clip_arrays(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if not clips:
        raise EvalError("no generated embeddings to resample")
    sizes = np.array([c.shape[0] for c in clips], np.int64)
    return np.concatenate([np.asarray(c, np.float64) for c in clips]), sizes


@dataclass(frozen=True)
class FadInf:
    value: float  # the intercept at 1/n = 0
    slope: float  # FAD per unit of 1/n
    r2: float  # coefficient of determination of the linear fit
    points: tuple[tuple[int, float], ...]  # (n frames, mean FAD over the resamples of that size)


def fad_inf(clips: list[np.ndarray], reference: GaussStats, *, steps: int = 8, min_fraction: float = 0.25,
            resamples: int = 1, seed: int = 0) -> FadInf:
    """FAD-inf of generated `clips` (one float [F_i, D] per clip) against `reference`: subsample
    whole clips without replacement at `steps` sizes from `min_fraction` of the clips to all of them,
    `resamples` draws per size (randomness from (seed, step, draw)), fit FAD = a + b / n_frames."""
    frames, sizes = _clip_arrays(clips)
    n_clips = len(sizes)
    lo = max(2, int(np.ceil(min_fraction * n_clips)))
    if n_clips < 3 or lo >= n_clips:
        raise EvalError(f"FAD-inf needs more clips than its smallest subsample; got {n_clips} clips "
                        f"(smallest subsample {lo}); lower --fad_inf_min_fraction or score more clips")
    counts = np.unique(np.linspace(lo, n_clips, steps).round().astype(np.int64))
    ref = FixedReference(reference)
    points = []
    for i, k in enumerate(counts):
        vals, ns = [], []
        for r in range(resamples if k < n_clips else 1):
            rng = np.random.default_rng([seed, 1, i, r])
            w = np.zeros(n_clips, np.int64)
            w[rng.choice(n_clips, size=int(k), replace=False)] = 1
            s = weighted_stats(frames, _frame_weights(sizes, w))
            vals.append(ref.fad(s))
            ns.append(s.n)
        points.append((int(np.mean(ns)), float(np.mean(vals))))
    inv = np.array([1.0 / n for n, _ in points])
    y = np.array([v for _, v in points])
    slope, intercept = np.polyfit(inv, y, 1)
    pred = intercept + slope * inv
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return FadInf(float(intercept), float(slope), r2, tuple(points))


@dataclass(frozen=True)
class Interval:
    value: float  # the estimate on the full data
    lo: float
    hi: float
    level: float
    n_boot: int


def bootstrap_fad(clips: list[np.ndarray], reference: GaussStats, *, n_boot: int = 100, level: float = 0.95,
                  seed: int = 0) -> Interval:
    """FAD of `clips` against `reference` with a percentile bootstrap interval over the clips
    (resampled with replacement; randomness from (seed, draw))."""
    frames, sizes = _clip_arrays(clips)
    full = fad(weighted_stats(frames, np.ones(frames.shape[0])), reference)
    ref = FixedReference(reference)
    vals = []
    for b in range(n_boot):
        w = np.random.default_rng([seed, 2, b]).multinomial(len(sizes), np.full(len(sizes), 1 / len(sizes)))
        vals.append(ref.fad(weighted_stats(frames, _frame_weights(sizes, w))))
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2]) if vals else (np.nan, np.nan)
    return Interval(full, float(lo), float(hi), level, n_boot)
