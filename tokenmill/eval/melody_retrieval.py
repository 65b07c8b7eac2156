"""Melody retrieval: how often a query (a hum) finds its own melody among candidates. Pure numpy.

For query q with embedding x_q and candidates c_1..c_C (unit vectors, or any vectors: similarity
is the dot product, so pass L2-normalized embeddings for cosine), the rank of its correct
candidate is 1 + the number of candidates scoring strictly higher (ties count in the query's
favour). R@k = share of queries whose rank is <= k; the median rank is over queries. Chance, for
a random ordering of C candidates: R@k = min(k, C) / C and median rank (C + 1) / 2.
"""
from __future__ import annotations

import numpy as np

from tokenmill.errors import TokenmillError


class RetrievalError(TokenmillError, ValueError):
    """Query and candidate embeddings that cannot be compared."""


def ranks(queries: np.ndarray, candidates: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """int64 [Q]: rank (1 = best) of candidate correct[q] for query q, by dot product."""
    q, c = np.asarray(queries, np.float64), np.asarray(candidates, np.float64)
    correct = np.asarray(correct, np.int64)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise RetrievalError(f"need queries [Q, D] and candidates [C, D], got {q.shape} and {c.shape}")
    if correct.shape != (q.shape[0],) or correct.size and (correct.min() < 0 or correct.max() >= c.shape[0]):
        raise RetrievalError(f"correct must hold one candidate index in [0, {c.shape[0]}) per query")
    sim = q @ c.T  # [Q, C]
    own = sim[np.arange(q.shape[0]), correct]
    return 1 + (sim > own[:, None]).sum(axis=1).astype(np.int64)


def retrieval_metrics(queries: np.ndarray, candidates: np.ndarray, correct: np.ndarray,
                      ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """{'R@k', 'median_rank', 'chance_R@k', 'chance_median_rank', 'queries', 'candidates'}."""
    r = ranks(queries, candidates, correct)
    n_c = np.asarray(candidates).shape[0]
    out: dict[str, float] = {"queries": int(r.size), "candidates": int(n_c)}
    for k in ks:
        out[f"R@{k}"] = float((r <= k).mean()) if r.size else float("nan")
        out[f"chance_R@{k}"] = min(k, n_c) / n_c
    out["median_rank"] = float(np.median(r)) if r.size else float("nan")
    out["chance_median_rank"] = (n_c + 1) / 2
    return out
