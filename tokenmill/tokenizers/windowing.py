"""Fixed-length windows over a segment, embedded in shared fixed-shape batches: the MuLan and
melody towers.

Window w of a wave covers [w·stride, w·stride + window) seconds; the count is
`rates.window_count` (one per whole second that leaves a whole window in the audio, at least
one), so a track shorter than one window gets one window, its audio followed by zeros.

Batches. The windows of all the waves in a call are packed in order into forward passes of
exactly `batch_size` rows; the last pass is filled with zero rows whose outputs are dropped.
A conv or matmul kernel is picked by the shapes it is given (oneDNN: measured, a window's
embedding at batch 1 or 2 differs in the last bits from batch 4, 8 or 16), but at a fixed shape
each row is computed on its own: its bits do not depend on its row or on the other rows. So a
window's embedding does not depend on which segments share its batch, or where it sits in it,
and windows of many short segments fill one pass (tests/test_batch_invariance.py).

Rows. A row is what the model's forward pass takes for one window: the window's samples
(`wave_window_rows`), or, for the built-in towers, the window's slice of the segment's log-mel,
computed once per segment instead of once per window (`feature_window_rows`: 10× less
front-end work for MuLan's 10 s windows at a 1 s stride). Rows are cut lazily: memory holds one
pass, not every window of a long segment. Pure numpy; the model is a callable.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice

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
    return np.stack(list(wave_window_rows(wave, sample_rate_hz, window_s, stride_s)))


def wave_window_rows(wave: np.ndarray, sample_rate_hz: int, window_s: int, stride_s: int = 1) -> Iterator[np.ndarray]:
    """float32 [window_s · sr] per window of `wave`, zero-padded past its end, cut one at a time."""
    for a, b in window_spans(wave.shape[0], sample_rate_hz, window_s, stride_s):
        row = np.zeros(window_s * sample_rate_hz, dtype=np.float32)
        seg = wave[a:min(b, wave.shape[0])]
        row[:seg.shape[0]] = seg
        yield row


def feature_window_rows(wave: np.ndarray, features: Callable[[np.ndarray], np.ndarray], *, sample_rate_hz: int,
                        window_s: int, stride_s: int, n_fft: int, hop: int,
                        block_frames: int = 3000) -> Iterator[np.ndarray]:
    """The windows of `wave` as slices of one frame-feature array of the whole segment.

    `features`: float32 [n] → [C, 1 + (n - n_fft) // hop] (an uncentred STFT front end: frame j
    covers samples [j·hop, j·hop + n_fft)). Window w is frames [w·stride·sr/hop, + window_frames)
    with window_frames = 1 + (window_s·sr - n_fft) // hop: the same samples the window alone would
    give its front end, and the slice the trainers crop from a track's features. The wave is cut
    to the windows' span (zero-padded to one window for a short track) and its features are
    computed in blocks of `block_frames` frames on the segment's own grid, so memory stays bounded
    for long segments and the result depends on the segment only. Yields float32 [C, window_frames].
    """
    if (stride_s * sample_rate_hz) % hop or n_fft > window_s * sample_rate_hz:
        raise ValueError(f"hop {hop} must divide the {stride_s} s stride and n_fft {n_fft} fit in a window")
    spans = window_spans(wave.shape[0], sample_rate_hz, window_s, stride_s)
    need = spans[-1][1]                                  # samples the windows cover
    if wave.shape[0] >= need:
        padded = np.ascontiguousarray(wave[:need], dtype=np.float32)  # a view: no copy
    else:                                                # a short track: one zero-padded window
        padded = np.zeros(need, dtype=np.float32)
        padded[:wave.shape[0]] = wave
    window_frames = 1 + (window_s * sample_rate_hz - n_fft) // hop
    n_frames = 1 + (need - n_fft) // hop
    blocks = [np.asarray(features(padded[j * hop:(min(j + block_frames, n_frames) - 1) * hop + n_fft]), np.float32)
              for j in range(0, n_frames, block_frames)]
    feats = np.concatenate(blocks, axis=1)
    if feats.shape[1] != n_frames:
        raise ValueError(f"features gave {feats.shape[1]} frames for {need} samples, expected {n_frames}")
    step = stride_s * sample_rate_hz // hop
    for w in range(len(spans)):
        yield feats[:, w * step:w * step + window_frames]


def embed_fixed_batches(rows: Iterable[np.ndarray], embed: Callable[[np.ndarray], np.ndarray], *,
                        batch_size: int, dim: int) -> np.ndarray:
    """Embed equal-shape rows in forward passes of exactly `batch_size` rows (module docstring):
    `embed` float32 [batch_size, ...] → [batch_size, dim]. Returns float32 [n_rows, dim] in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts, it = [], iter(rows)
    while True:
        chunk = list(islice(it, batch_size))
        if not chunk:
            break
        buf = np.zeros((batch_size, *chunk[0].shape), dtype=np.float32)  # zero rows fill the last pass
        for i, r in enumerate(chunk):
            buf[i] = r
        out = np.asarray(embed(buf), dtype=np.float32)
        if out.shape != (batch_size, dim):
            raise ValueError(f"the model gave {out.shape} for a pass of {batch_size} windows, expected "
                             f"{(batch_size, dim)}")
        parts.append(out[:len(chunk)])
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, dim), np.float32)


def embed_windows_batched(waves: list[np.ndarray], embed: Callable[[np.ndarray], np.ndarray], *,
                          sample_rate_hz: int, window_s: int, stride_s: int, batch_size: int, dim: int,
                          rows_of: Callable[[np.ndarray], Iterable[np.ndarray]] | None = None
                          ) -> tuple[np.ndarray, list[int]]:
    """Embed the windows of several waves in shared fixed-shape passes (module docstring).

    `rows_of(wave)` gives each window's model input (default: its samples); `embed` takes a pass
    of them. Returns (float32 [ΣW_i, dim] in wave order, [W_i]).
    """
    rows_of = rows_of or (lambda w: wave_window_rows(w, sample_rate_hz, window_s, stride_s))
    out = embed_fixed_batches((r for w in waves for r in rows_of(w)), embed, batch_size=batch_size, dim=dim)
    counts = [len(window_spans(w.shape[0], sample_rate_hz, window_s, stride_s)) for w in waves]
    return out, counts


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float32 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, np.float32(1e-12))).astype(np.float32)
