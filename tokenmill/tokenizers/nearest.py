"""Exact nearest-centroid assignment and Lloyd steps whose results do not depend on the CPU.

Pure code: numpy/faiss in, arrays out (docs/design.md §6, determinism).

A float32 distance computed by a BLAS kernel (FAISS's ``|x|² + |c|² - 2 x·c``, a GPU, numpy's
sgemm) rounds differently with the instruction set (AVX2, AVX-512, SSE3), the kernel chosen for a
block edge and the number of threads. Where two centroids are nearly equidistant, that rounding
picks the winner, so a token or a k-means fit would depend on the machine. Here the fast float32
search only proposes candidates; the decision is exact:

* ``tol_i = 2 (D + 4) 2^-24 (|x_i| + max_j |c_j|)²`` bounds the error of any float32 evaluation
  of a squared distance, in any summation order, with or without FMA (each of the D products and
  sums rounds once, relative error at most 2^-24, on terms bounded by (|x| + |c|)²); twice it covers
  the error of both the winner and its rival.
* Every centroid whose float32 distance is within ``tol_i`` of row i's smallest is a candidate
  (one numpy BLAS pass over all centroids; with a FAISS index, e.g. on a GPU, its ``TOP`` nearest,
  and the whole row when the TOP-th is still within the tolerance).
* Candidates are compared by ``sqdist_exact``: float64 differences (exactly rounded), squares, and
  a sum over dimensions in index order, one vector add per dimension. Every step is a correctly
  rounded IEEE operation in a fixed order, so the result is the same bit pattern on every x86 and
  ARM CPU, any thread count and any numpy build. Ties go to the lowest index.

So ``nearest`` is a function of the float32 inputs alone: the same tokens from FAISS on AVX2 or
AVX-512, on a GPU (the candidates come from there, the decision from here) or with 1 or 16
threads. ``lloyd`` builds k-means on it: exact assignments, centroids as float64 sums in a fixed
order (set by the array shapes, not the CPU), then rounded to float32.
"""
from __future__ import annotations

import faiss
import numpy as np

TOP = 4                        # candidates asked of the float32 search per row
_U32 = 2.0 ** -24              # unit roundoff of float32
_ROWS = 16384                  # rows per chunk of the exact pass (bounds float64 temporaries)
_PAIRS = 1 << 18               # (row, candidate) pairs compared exactly at once (bounds memory)
_SUM_ROWS = 65536              # rows per chunk of the cluster sums (the chunking fixes the order)


def sqdist_exact(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float64 [N] squared L2 between rows x[i] and c[i] (both [N, D]), the same bits on any CPU."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    diff = x - c
    np.multiply(diff, diff, out=diff)
    acc = diff[:, 0].copy()
    for j in range(1, diff.shape[1]):     # fixed order: one add per dimension, never reassociated
        acc += diff[:, j]
    return acc


def flat_index(centroids: np.ndarray):
    """A FAISS exact L2 index over float32 [k, D] centroids (the candidate search)."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index


def tolerance(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """float64 [N]: the float32 rounding bound on a squared distance between a row and any centroid
    (used with a FAISS index, whose candidates come without per-centroid detail)."""
    r = _norms(x) + float(_norms(centroids).max())
    return 2.0 * _bound_factor(x.shape[1]) * r * r + np.finfo(np.float32).tiny


def _norms(a: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))


def _bound_factor(d: int) -> float:
    """(D + 4) u, with a margin: the relative rounding bound of a D-term float32 distance."""
    return (d + 4) * _U32 * 1.0001


def nearest(x: np.ndarray, centroids: np.ndarray, index=None) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 [N], exact squared distance float64 [N]) of float32 rows x [N, D] against
    float32 centroids [k, D]; ties to the lowest index. Candidates come from a float32 BLAS pass
    (numpy), or from `index`, a FAISS index over the same centroids (e.g. on a GPU)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    n, k = x.shape[0], centroids.shape[0]
    labels = np.empty(n, dtype=np.int64)
    sqd = np.empty(n, dtype=np.float64)
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    c_norm = _norms(centroids).astype(np.float32) * np.float32(1.0 + 1e-6)
    rows = max(256, min(_ROWS, (1 << 24) // max(k, 1)))      # bounds the [rows, k] float32 block
    for s in range(0, n, rows):
        xs = x[s:s + rows]
        m = len(xs)
        tol = tolerance(xs, centroids)
        if index is None:
            d = xs @ centroids.T                              # float32 [m, k]
            d *= np.float32(-2.0)
            d += c_sq                                         # |c|² - 2 x·c: |x|² is a row constant
            lab = np.argmin(d, axis=1)
            # per centroid: err_j <= (D+4) u (|x| + |c_j|)²; a rival j stays a candidate while
            # d_j - d_best <= err_j + err_best
            e = _norms(xs).astype(np.float32)[:, None] + c_norm[None, :]
            np.multiply(e, e, out=e)
            e *= np.float32(_bound_factor(centroids.shape[1]))
            lim = d[np.arange(m), lab] + e[np.arange(m), lab] + np.float32(np.finfo(np.float32).tiny)
            e += lim[:, None]
            close = d <= e
            del e
        else:
            top = min(TOP, k)
            dist, cand = index.search(xs, top)                # float32, ascending
            dist = dist.astype(np.float64)
            lab = cand[:, 0].copy()
            close_top = dist <= dist[:, :1] + tol[:, None]
            close = np.zeros((m, k), dtype=bool)
            np.put_along_axis(close, cand, close_top, axis=1)
            spill = close_top[:, -1] & (top < k)              # more candidates than the search returned
            if spill.any():                                   # rare: the whole row, from numpy
                ds = (xs[spill] @ centroids.T) * np.float32(-2.0) + c_sq
                close[spill] = ds <= ds.min(axis=1, keepdims=True) + tol[spill][:, None]
        best = sqdist_exact(xs, centroids[lab])
        counts = close.sum(axis=1)
        many = np.flatnonzero(counts > 1)                     # rows where the float32 order may lie
        start = 0
        while start < many.size:                              # bounded batches of (row, candidate) pairs
            stop = start + 1
            budget = int(counts[many[start]])
            while stop < many.size and budget + counts[many[stop]] <= _PAIRS:
                budget += int(counts[many[stop]])
                stop += 1
            rows_b = many[start:stop]
            r, c = np.nonzero(close[rows_b])                  # candidates of those rows
            dc = sqdist_exact(xs[rows_b[r]], centroids[c])
            order = np.lexsort((c, dc, r))                    # per row: smallest exact distance, then index
            first = np.ones(len(order), dtype=bool)
            first[1:] = r[order][1:] != r[order][:-1]
            win = order[first]
            lab[rows_b[r[win]]] = c[win]
            best[rows_b[r[win]]] = dc[win]
            start = stop
        labels[s:s + m] = lab
        sqd[s:s + m] = best
    return labels, sqd


def assign(x: np.ndarray, centroids: np.ndarray, index=None) -> np.ndarray:
    """int64 [N] exact nearest-centroid labels (see `nearest`)."""
    return nearest(x, centroids, index)[0]


def _cluster_sums(x: np.ndarray, lab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(float64 sums [k, D], int64 counts [k]) in a fixed summation order (thread-independent)."""
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    for s in range(0, len(x), _SUM_ROWS):
        lc = lab[s:s + _SUM_ROWS]
        cnt = np.bincount(lc, minlength=k)
        nz = np.flatnonzero(cnt)
        starts = np.concatenate([[0], np.cumsum(cnt[nz])[:-1]])
        order = np.argsort(lc, kind="stable")
        sums[nz] += np.add.reduceat(x[s:s + _SUM_ROWS][order].astype(np.float64), starts, axis=0)
        counts += cnt
    return sums, counts


def _sqdist_to(x_t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float64 [N] squared L2 from each column of x_t (float64 [D, N], x transposed once by the
    caller) to the vector v [D]: the same bits as ``sqdist_exact`` (same order), on contiguous rows."""
    v = np.asarray(v, dtype=np.float64)
    diff = x_t[0] - v[0]
    acc = diff * diff
    for j in range(1, x_t.shape[0]):
        np.subtract(x_t[j], v[j], out=diff)
        np.multiply(diff, diff, out=diff)
        acc += diff
    return acc


def _split_into_empty(c: np.ndarray, counts: np.ndarray, empty_ids: np.ndarray, seed: int, step: int,
                      reseeded_ids: set) -> int:
    """Give each empty cluster half of a populous one (see `lloyd`); returns how many were filled."""
    rng = np.random.default_rng([seed, step])
    sizes = counts.astype(np.int64).copy()
    sign = np.where(np.arange(c.shape[1]) % 2 == 0, 1.0, -1.0) / 1024.0
    filled = 0
    for j in empty_ids:
        weight = np.maximum(sizes - 1, 0)
        total = int(weight.sum())
        if total == 0:
            break
        r = int(rng.integers(total))                 # integer draw: exact on any machine
        big = int(np.searchsorted(np.cumsum(weight), r, side="right"))
        base = c[big].astype(np.float64)
        c[j] = (base * (1.0 + sign)).astype(np.float32)
        c[big] = (base * (1.0 - sign)).astype(np.float32)
        sizes[j] = sizes[big] // 2
        sizes[big] -= sizes[j]
        reseeded_ids.add(int(j))
        filled += 1
    return filled


def lloyd(x: np.ndarray, init: np.ndarray, n_iter: int, make_index=None, *,
          empty: str = "farthest", seed: int = 0) -> tuple[np.ndarray, dict]:
    """Deterministic Lloyd iterations from ``init`` float32 [k, D] on float32 [N, D].

    Returns (centroids float32 [k, D], info). Stops early once an iteration reassigns no point
    and re-seeds nothing (the centroids are then a fixed point). Empty clusters are re-seeded by
    farthest-first traversal: the point farthest from its centroid, then the point farthest from
    all centroids and the points chosen so far, ties to the lowest row; ``info`` counts every
    re-seed. `make_index(centroids)` builds the candidate search (default: numpy on the CPU; a GPU
    index gives the same result, only the candidates come from there).

    ``empty="split"`` instead gives an empty cluster half of a populous one (drawn with probability
    proportional to its size minus one, from an RNG seeded by (seed, iteration)): both take that
    centroid scaled by 1 ± 1/1024 in alternate dimensions, as FAISS's k-means does. It lowers the
    error of late RVQ stages, where many clusters empty out and the farthest points are outliers."""
    k = init.shape[0]
    c = np.array(init, dtype=np.float32, copy=True)
    reseeds, reseeded_ids, unfilled = 0, set(), set()
    prev, runs, converged = None, 0, False
    x_t = None
    for _ in range(int(n_iter)):
        lab, sqd = nearest(x, c, None if make_index is None else make_index(c))
        if prev is not None and np.array_equal(lab, prev):
            converged = True
            break
        runs += 1
        sums, counts = _cluster_sums(x, lab, k)
        live = counts > 0
        c[live] = (sums[live] / counts[live, None]).astype(np.float32)
        n_before = reseeds
        if empty == "split" and not live.all():
            reseeds += _split_into_empty(c, counts, np.flatnonzero(~live), seed, runs, reseeded_ids)
            prev = lab if reseeds == n_before else None
            continue
        d = sqd.copy()                              # float64 [N]: to the nearest chosen centre
        if not live.all() and x_t is None:
            x_t = np.ascontiguousarray(x.T, dtype=np.float64)   # once: reseeds scan contiguous rows
        for j in np.flatnonzero(~live):
            i = int(np.argmax(d))
            if not d[i] > 0.0:
                unfilled.add(int(j))
                continue
            c[j] = x[i]
            np.minimum(d, _sqdist_to(x_t, x[i]), out=d)
            reseeds += 1
            reseeded_ids.add(int(j))
        prev = lab if reseeds == n_before else None   # a re-seed moved a centroid: iterate again
    info = {"n_iter": int(n_iter), "iterations_run": runs, "converged": converged,
            "reseeds": reseeds, "reseeded_ids": sorted(reseeded_ids), "unfilled_ids": sorted(unfilled)}
    return c, info


