"""Windows of a token sequence: 64-bit rolling hashes (exact copies) and projected mean-centroid
sketches (the lower bound that prefilters approximate copies; see ot.py).

Hash of the window t[i : i + w] (uint16 tokens), all arithmetic mod 2^64 (numpy uint64 wraps):

    H(i) = Σ_{j=i}^{i+w-1} v[t_j] · B^(i+w-1-j)

with v a table of random 64-bit values per token id (from `seed`) and B a random odd 64-bit
base. An odd B is invertible mod 2^64, which gives every window's hash from one prefix sum in
O(L) for a sequence of L tokens, whatever w:

    Q[i] = Σ_{j<i} v[t_j] · B^(−j)        H(i) = (Q[i+w] − Q[i]) · B^(i+w−1)

A hash match is only a candidate: every exact match is confirmed by comparing the tokens, so a
collision can cost a comparison but never make a false match.

Sketch of a window: the mean of its tokens' centroids projected on a few orthonormal directions
(``ot.projection``): float32 [n_windows, d] from one cumulative sum over the sequence.
"""
from __future__ import annotations

import numpy as np

from tokenmill.eval import EvalError

MASK64 = (1 << 64) - 1


class WindowHasher:
    """Rolling hashes of length-`window` token windows for a vocabulary of `vocab` ids."""

    def __init__(self, window: int, vocab: int = 1 << 16, seed: int = 0):
        if window < 1:
            raise EvalError(f"window must be >= 1 token, got {window}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7A5E]))
        self.window, self.vocab = int(window), int(vocab)
        self.table = np.frombuffer(rng.bytes(8 * self.vocab), dtype="<u8").astype(np.uint64)
        base = int(rng.integers(1 << 32, 1 << 63)) * 2 + 1  # odd: invertible mod 2^64
        self.base, self.base_inv = base, pow(base, -1, 1 << 64)
        self._pow = np.ones(1, np.uint64)  # B^k
        self._inv = np.ones(1, np.uint64)  # B^-k

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pow.size < n:
            n_alloc = max(n, 2 * self._pow.size)
            self._pow = _power_table(self.base, n_alloc)
            self._inv = _power_table(self.base_inv, n_alloc)
        return self._pow[:n], self._inv[:n]

    def hashes(self, tokens: np.ndarray) -> np.ndarray:
        """uint64 [L - window + 1] (empty when L < window): the hash of every window, in order."""
        t = np.asarray(tokens).reshape(-1)
        n, w = t.size, self.window
        if n < w:
            return np.zeros(0, np.uint64)
        if int(t.max()) >= self.vocab:
            raise EvalError(f"token {int(t.max())} is outside the hasher's {self.vocab} ids")
        pw, inv = self._powers(n)
        q = np.zeros(n + 1, np.uint64)
        with np.errstate(over="ignore"):
            np.cumsum(self.table[t.astype(np.int64)] * inv, out=q[1:])
            return (q[w:] - q[:-w]) * pw[w - 1:]


def _power_table(base: int, n: int) -> np.ndarray:
    """uint64 [n]: base^k mod 2^64 for k < n (exact: Python ints in blocks, numpy inside a block)."""
    out = np.empty(n, np.uint64)
    block = 1024
    step = np.empty(block, np.uint64)
    acc = 1
    for k in range(min(block, n)):
        step[k] = acc
        acc = acc * base & MASK64
    big = acc  # base^block
    start, scale = 0, 1
    with np.errstate(over="ignore"):
        while start < n:
            m = min(block, n - start)
            out[start:start + m] = step[:m] * np.uint64(scale)
            start += m
            scale = scale * big & MASK64
    return out


def window_starts(n_tokens: int, window: int, stride: int) -> np.ndarray:
    """int64 starts of the windows at `stride`, the last one moved back to end at the sequence's end
    (so its tail is covered); empty when the sequence is shorter than a window."""
    if stride < 1:
        raise EvalError(f"window stride must be >= 1 token, got {stride}")
    if n_tokens < window:
        return np.zeros(0, np.int64)
    starts = np.arange(0, n_tokens - window + 1, stride, dtype=np.int64)
    if starts[-1] != n_tokens - window:
        starts = np.append(starts, n_tokens - window)
    return starts


def sketches(tokens: np.ndarray, window: int, starts: np.ndarray, projected_centroids: np.ndarray) -> np.ndarray:
    """float64 [len(starts), d]: the mean projected centroid of each window tokens[s : s + window]
    (`projected_centroids` float [K, d] = centroids @ projection.T)."""
    t = np.asarray(tokens, dtype=np.int64).reshape(-1)
    pc = np.asarray(projected_centroids, dtype=np.float64)
    c = np.zeros((t.size + 1, pc.shape[1]), np.float64)
    np.cumsum(pc[t], axis=0, out=c[1:])
    s = np.asarray(starts, dtype=np.int64)
    return (c[s + window] - c[s]) / window
