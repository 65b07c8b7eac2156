"""Melody embeddings: the interface, the window rule, crop windows, and the family's builder.

MusicLM's melody conditioning (§6, App. C): a model maps 4 s of audio to a 192-d embedding that
follows the tune and ignores the sound (instrument, voice, hum). The tokenizer stores one
embedding per 4 s window at a 1 s stride (`rates.melody_window_count`: window w covers
[w, w + 4) s; a track shorter than 4 s has one zero-padded window), as `melody_windows` float16
[W, 192]; an RVQ of 24 stages × 512 turns a crop's windows into melody tokens.

Interface. A back-end sets `name`, `dim`, `sample_rate_hz` (16 kHz mono in), `weights_sha256`,
and implements either `_embed_windows` (float32 [B, 4 s · sr] → [B, dim]: each window on its
own, batched across segments by `embed_windows_batch`) or overrides `embed_windows_batch`
itself (the pitch-tracker baseline runs its model once over the whole segment). Outputs are
float32, L2-normalized. A window's embedding must not depend on what else is in its batch.

Rows of the plug-in table's `melody` family (tokenmill/plugins.py); `build_melody(name, **cfg)`.
"""
from __future__ import annotations

import abc
from fractions import Fraction
from typing import Any

import numpy as np

from tokenmill import plugins
from tokenmill.errors import TokenmillError
from tokenmill.schemas import rates
from tokenmill.tokenizers import windowing


class MelodyError(TokenmillError, ValueError):
    """A melody model cannot be built or loaded, or was given input it cannot embed."""


def window_spans(n_samples: int, sample_rate_hz: int = rates.MELODY_SAMPLE_RATE_HZ) -> list[tuple[int, int]]:
    """Sample ranges [a, a + 4 s) of the melody windows of a wave (the last may run past its end)."""
    return windowing.window_spans(n_samples, sample_rate_hz, rates.MELODY_WINDOW_S, rates.MELODY_STRIDE_S)


class MelodyModel(abc.ABC):
    """A melody embedding model: 16 kHz mono audio → one unit vector per 4 s window (module doc)."""

    name: str
    dim: int = rates.MELODY_DIM
    sample_rate_hz: int = rates.MELODY_SAMPLE_RATE_HZ
    window_s: int = rates.MELODY_WINDOW_S
    stride_s: int = rates.MELODY_STRIDE_S
    weights_sha256: str | None = None
    batch_size: int = 16

    def _embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """float32 [B, window_s · sr] → float32 [B, dim]; normalization is done by the caller."""
        raise NotImplementedError(f"{type(self).__name__} must implement _embed_windows or embed_windows_batch")

    def _window_rows(self, wave: np.ndarray):
        """Each window's model input, cut lazily: its samples (the built-in model gives its slice
        of the segment's log-mel instead: windowing.py)."""
        return windowing.wave_window_rows(wave, self.sample_rate_hz, self.window_s, self.stride_s)

    def _embed_rows(self, rows: np.ndarray) -> np.ndarray:
        """A forward pass of exactly `batch_size` rows of `_window_rows` → float32 [batch_size, dim]."""
        return self._embed_windows(rows)

    def check_wave(self, wave: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave)
        if wave.ndim != 1 or wave.size == 0:
            raise MelodyError(f"melody model {self.name}: expected a non-empty mono wave [n], got shape {wave.shape}")
        if not np.issubdtype(wave.dtype, np.floating):
            raise MelodyError(f"melody model {self.name}: expected float samples in [-1, 1], got {wave.dtype}")
        return np.ascontiguousarray(wave, dtype=np.float32)

    def embed_windows(self, wave: np.ndarray) -> np.ndarray:
        """Mono float32 [n] at `sample_rate_hz` → float32 [W, dim], L2-normalized."""
        return self.embed_windows_batch([wave])[0]

    def embed_windows_batch(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Several mono waves → one float32 [W_i, dim] per wave; the windows of all waves share
        fixed-shape passes of `batch_size` rows (windowing.py)."""
        checked = [self.check_wave(w) for w in waves]
        out, counts = windowing.embed_windows_batched(
            checked, self._embed_rows, sample_rate_hz=self.sample_rate_hz, window_s=self.window_s,
            stride_s=self.stride_s, batch_size=self.batch_size, dim=self.dim, rows_of=self._window_rows)
        if out.shape != (sum(counts), self.dim):
            raise MelodyError(f"melody model {self.name}: gave embeddings {out.shape}, expected {(sum(counts), self.dim)}")
        return np.split(windowing.l2_normalize(out), np.cumsum(counts)[:-1]) if checked else []

    def config_dict(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        """The manifest's and the codebook card's entry for this model."""
        return {"name": self.name, "config": self.config_dict(), "weights_sha256": self.weights_sha256,
                "sample_rate_hz": self.sample_rate_hz, "dim": self.dim, "window_s": self.window_s,
                "stride_s": self.stride_s, "short_track_policy": f"one window, zero-padded to {self.window_s} s",
                **({"pass_rows": self.batch_size}  # rows per forward pass (windowing.py), when passes are shared
                   if type(self).embed_windows_batch is MelodyModel.embed_windows_batch else {})}


def crop_window_indices(n_windows: int, t0_s: float | Fraction, t1_s: float | Fraction,
                        hop_s: int = rates.MELODY_CROP_HOP_S) -> np.ndarray:
    """int64 indices of the stored windows that stand for the crop [t0, t1): one per 3 s hop.

    The paper embeds a 10 s crop at 0, 3 and 6 s (windows [t0 + 3i, t0 + 3i + 4) inside the crop).
    Stored windows start on whole seconds, so position i takes the window whose start is nearest
    to t0 + 3i (ties to the earlier), clipped to [0, W). The count is the number of 4 s windows at
    a 3 s hop that fit in the crop, at least one: 10 s → 3, 4 s → 1, 30 s → 9.
    """
    if n_windows < 1:
        raise MelodyError("a segment has at least one melody window")
    t0, t1 = Fraction(t0_s).limit_denominator(1_000_000), Fraction(t1_s).limit_denominator(1_000_000)
    if not 0 <= t0 < t1:
        raise MelodyError(f"crop [{float(t0)}, {float(t1)}) must satisfy 0 <= t0 < t1")
    count = max(1, int((t1 - t0 - rates.MELODY_WINDOW_S) // hop_s) + 1)
    starts = [t0 + i * hop_s for i in range(count)]
    idx = [int(-((-2 * s + 1) // 2)) for s in starts]  # round half down: nearest whole second, ties earlier
    return np.clip(np.asarray(idx, dtype=np.int64), 0, n_windows - 1)


def known_melody() -> list[str]:
    return plugins.names("melody")


def build_melody(name: str, **config: Any) -> MelodyModel:
    """Build a melody model by name (a row of tokenmill/plugins.py's `melody` family)."""
    if name not in plugins.TABLE["melody"]:
        raise MelodyError(f"unknown melody model {name!r}; known: {', '.join(known_melody())} "
                          f"(or --melody_model none to tokenize without a melody stream)")
    return plugins.resolve("melody", name)(**config)
