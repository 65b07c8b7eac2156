"""Fixed-length windows over a segment, embedded in shared batches: the MuLan and melody towers.

Window w of a wave covers [w·stride, w·stride + window) seconds; the count is
`rates.window_count` (one per whole second that leaves a whole window in the audio, at least
one), so a track shorter than one window gets one window, its audio followed by zeros. Windows
are cut lazily, `batch_size` at a time, so memory holds one batch, not every window of a long
segment. Pure numpy; the model is a callable.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tokenmill.schemas import rates


def window_spans(n_samples: int, sample_rate_hz: int, window_s: int, stride_s: int = 1) -> list[tuple[int, int]]:
    """Sample ranges [a, a + window) of the windows of a wave (the last may run past n_samples)."""
    if stride_s != 1:
        raise ValueError(f"windows advance by 1 s (the count rule assumes it), got stride_s={stride_s}")
    count = rates.window_count(rates.n_quanta(n_samples, sample_rate_hz), window_s)
    return [(w * stride_s * sample_rate_hz, (w * stride_s + window_s) * sample_rate_hz) for w in range(count)]


def cut_windows(wave: np.ndarray, sample_rate_hz: int, window_s: int, stride_s: int = 1) -> np.ndarray:
    """float32 [W, window_s · sr]: every window of `wave`, zero-padded past its end."""
    spans = window_spans(wave.shape[0], sample_rate_hz, window_s, stride_s)
    out = np.zeros((len(spans), window_s * sample_rate_hz), dtype=np.float32)
    for i, (a, b) in enumerate(spans):
        seg = wave[a:min(b, wave.shape[0])]
        out[i, :seg.shape[0]] = seg
    return out


def embed_windows_batched(waves: list[np.ndarray], embed: Callable[[np.ndarray], np.ndarray], *,
                          sample_rate_hz: int, window_s: int, stride_s: int, batch_size: int,
                          dim: int) -> tuple[np.ndarray, list[int]]:
    """Embed the windows of several waves in shared batches of `batch_size` windows.

    `embed`: float32 [B, window_s · sr] → [B, dim]. Returns (float32 [ΣW_i, dim] in wave order,
    [W_i]). A short track fills one row of a batch, so batching across tracks is what fills it.
    """
    jobs = [(i, a, b) for i, w in enumerate(waves) for a, b in window_spans(w.shape[0], sample_rate_hz, window_s, stride_s)]
    win_samples = window_s * sample_rate_hz
    parts = []
    for j in range(0, len(jobs), batch_size):
        chunk = jobs[j:j + batch_size]
        buf = np.zeros((len(chunk), win_samples), dtype=np.float32)  # zero padding past the end
        for row, (i, a, b) in enumerate(chunk):
            seg = waves[i][a:min(b, waves[i].shape[0])]
            buf[row, :seg.shape[0]] = seg
        parts.append(np.asarray(embed(buf), dtype=np.float32))
    out = np.concatenate(parts, axis=0) if parts else np.zeros((0, dim), np.float32)
    counts = [len(window_spans(w.shape[0], sample_rate_hz, window_s, stride_s)) for w in waves]
    return out, counts


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float32 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, np.float32(1e-12))).astype(np.float32)
