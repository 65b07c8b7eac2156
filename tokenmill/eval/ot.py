"""Optimal-transport cost between two windows of semantic tokens (MusicLM §4.4's approximate match).

A window of tokens becomes a histogram over the codebook's ids, normalized to mass 1. The ground
cost between two ids is the Euclidean distance between their k-means centroids; only non-zero
bins take part (a 125-token window uses at most 125 of the 1024 ids, so the problem is at most
125 × 125). The cost of a pair is the cost of the optimal transport plan between the two
histograms (the 1-Wasserstein distance in centroid space).

Solvers (POT, the Python Optimal Transport library):

  exact      ``ot.emd2``: the network-simplex solution of the linear program. The default: it is
             the true optimum (no regularization parameter to choose), it is 0 exactly when the two
             histograms are equal, and on these sizes it is the faster solver (measured by the
             issue that asked for this: 0.5 ms per pair against 9 ms for ``sinkhorn2``;
             ``bench/bench_memorization.py`` measures both here).
  sinkhorn   ``ot.sinkhorn2`` (log-domain), the solver MusicLM names: the transport cost
             <P, M> of the entropy-regularized plan P. It is not below the exact cost once the
             solver has converged (P is then a feasible plan; an unconverged P misses its row
             marginals and can come out a little below), and it is above 0 for identical
             histograms (the entropy blurs the plan). ``sinkhorn_reg`` is relative: the
             regularization is ``sinkhorn_reg × median distance between centroids`` of the
             codebook, so one value means the same on any codebook.

A threshold tau is only meaningful for the solver and codebook it was calibrated with;
``memorization.calibrate_tau`` calibrates it in the same job.

Lower bound (the prefilter of a corpus search): for any plan, the cost is at least the distance
between the two histograms' mean centroids, ||E_a[c] − E_b[c]|| (Jensen: the norm of the mean
displacement is at most the mean displacement norm). An orthonormal projection only shrinks that
distance, so ||P E_a[c] − P E_b[c]|| is a lower bound too: a pair whose projected means are tau
apart or more cannot match, and the search never solves an OT problem for it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenmill.eval import EvalError

OT_METHODS = ("exact", "sinkhorn")
DEFAULT_METHOD = "exact"


@dataclass(frozen=True)
class OTConfig:
    method: str = DEFAULT_METHOD  # "exact" (ot.emd2) | "sinkhorn" (ot.sinkhorn2, log domain)
    sinkhorn_reg: float = 0.05  # entropic regularization / the codebook's median centroid distance
    sinkhorn_max_iter: int = 2000
    sinkhorn_tol: float = 1e-9  # stop when the marginal error is below this

    def __post_init__(self) -> None:
        if self.method not in OT_METHODS:
            raise EvalError(f"OT method must be one of {OT_METHODS}, got {self.method!r}")
        if not self.sinkhorn_reg > 0:
            raise EvalError(f"sinkhorn_reg must be > 0 (a fraction of the median centroid distance, e.g. 0.05), "
                            f"got {self.sinkhorn_reg}")
        if self.sinkhorn_max_iter < 1:
            raise EvalError(f"sinkhorn_max_iter must be >= 1, got {self.sinkhorn_max_iter}")


def histogram(tokens: np.ndarray, vocab: int) -> np.ndarray:
    """int64 [vocab]: how often each id occurs in `tokens` (uint16 [n])."""
    t = np.asarray(tokens).reshape(-1)
    if t.size and (int(t.max()) >= vocab):
        raise EvalError(f"token {int(t.max())} is outside the codebook's {vocab} ids; the tokens and the "
                        "codebook come from different datasets")
    return np.bincount(t.astype(np.int64), minlength=vocab)


def sparse_histogram(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [n], weights float64 [n] summing to 1): the non-zero bins of `tokens`."""
    ids, counts = np.unique(np.asarray(tokens).reshape(-1), return_counts=True)
    if ids.size == 0:
        raise EvalError("an empty token window has no histogram; windows must hold at least one token")
    return ids.astype(np.int64), counts / counts.sum()


class TokenOT:
    """The OT cost between token windows for one codebook (`centroids` float [K, D])."""

    def __init__(self, centroids: np.ndarray, cfg: OTConfig = OTConfig()):
        c = np.asarray(centroids, dtype=np.float64)
        if c.ndim != 2 or c.shape[0] < 1 or not np.isfinite(c).all():
            raise EvalError(f"centroids must be finite float [K, D], got shape {c.shape}")
        self.centroids, self.cfg = c, cfg
        self.scale = median_distance(c)

    @property
    def vocab(self) -> int:
        return int(self.centroids.shape[0])

    def ground_cost(self, ids_a: np.ndarray, ids_b: np.ndarray) -> np.ndarray:
        """float64 [len(ids_a), len(ids_b)]: Euclidean distances between the ids' centroids."""
        a, b = self.centroids[ids_a], self.centroids[ids_b]
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T
        return np.sqrt(np.maximum(sq, 0.0))

    def cost(self, a: np.ndarray, b: np.ndarray) -> float:
        """The OT cost between token windows `a` and `b` (uint16 [n], any lengths >= 1)."""
        for name, t in (("a", a), ("b", b)):
            t = np.asarray(t)
            if t.size and int(t.max()) >= self.vocab:
                raise EvalError(f"window {name} holds token {int(t.max())}, outside the codebook's {self.vocab} "
                                "ids; the tokens and the codebook come from different datasets")
        ia, wa = sparse_histogram(a)
        ib, wb = sparse_histogram(b)
        return self.cost_hist(ia, wa, ib, wb)

    def cost_hist(self, ids_a, w_a, ids_b, w_b) -> float:
        """The OT cost between two sparse histograms (ids, weights summing to 1)."""
        import ot

        if np.array_equal(ids_a, ids_b) and np.array_equal(w_a, w_b) and self.cfg.method == "exact":
            return 0.0  # the identity plan; emd2 gives the same 0 up to rounding
        m = self.ground_cost(ids_a, ids_b)
        if self.cfg.method == "exact":
            return float(ot.emd2(w_a, w_b, m))
        reg = self.cfg.sinkhorn_reg * self.scale
        return float(ot.sinkhorn2(w_a, w_b, m, reg, method="sinkhorn_log", numItermax=self.cfg.sinkhorn_max_iter,
                                  stopThr=self.cfg.sinkhorn_tol))

    def mean_embedding(self, tokens: np.ndarray) -> np.ndarray:
        """float64 [D]: the mean centroid of a window (see the lower bound in the module docstring)."""
        return self.centroids[np.asarray(tokens, dtype=np.int64)].mean(axis=0)

    def lower_bound(self, a: np.ndarray, b: np.ndarray) -> float:
        """||mean centroid of a − mean centroid of b||: never above ``cost(a, b)`` (exact solver)."""
        return float(np.linalg.norm(self.mean_embedding(a) - self.mean_embedding(b)))


def median_distance(centroids: np.ndarray, max_points: int = 1024) -> float:
    """The median Euclidean distance between distinct centroids (of the first `max_points`)."""
    c = np.asarray(centroids, dtype=np.float64)[:max_points]
    if c.shape[0] < 2:
        return 1.0
    sq = (c * c).sum(1)[:, None] + (c * c).sum(1)[None] - 2.0 * c @ c.T
    d = np.sqrt(np.maximum(sq[np.triu_indices(c.shape[0], 1)], 0.0))
    med = float(np.median(d))
    return med if med > 0 else 1.0


def projection(centroids: np.ndarray, dims: int) -> np.ndarray:
    """float64 [min(dims, D), D] with orthonormal rows: the centroids' top principal directions.
    Projected distances are never larger than the originals, so the projected mean distance is
    still a lower bound of the OT cost (module docstring), and a cheaper one to compute."""
    c = np.asarray(centroids, dtype=np.float64)
    if dims < 1:
        raise EvalError(f"sketch dims must be >= 1, got {dims}")
    _, _, vt = np.linalg.svd(c - c.mean(axis=0), full_matrices=False)
    return np.ascontiguousarray(vt[: min(dims, vt.shape[0])])
