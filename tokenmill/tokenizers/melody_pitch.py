"""Melody baseline that needs no training: pitch-class profiles from basic-pitch's note posteriors.

`build_melody("basic-pitch")`. The same pretrained model (and the same ONNX file from the
basic-pitch wheel, run by torch under the compute layout, or by onnxruntime with `runtime`) as the
`basic-pitch` semantic extractor, whose posteriorgram code it reuses. A 4 s window is cut into 16 bins of 0.25 s; each bin gets the
12 pitch classes' note posteriors (the largest over octaves, averaged over the bin's model frames),
divided by max(largest class, `norm_floor`) so a sounding note counts 1 whatever plays it, then
centred (its mean over the 12 classes removed, so silence and flat noise give ~0). 16 × 12 = 192
values, L2-normalized: a time-ordered pitch-class track of the window. Keys are kept (a transposed
tune is another melody), octaves and timbre are not.

The model runs once over the whole segment (zero-padded to the last window's end); model frame j
sits at j·256/22 050 s and belongs to quarter-second q = floor(j·512/11 025); window w takes
quarters 4w .. 4w + 15.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tokenmill.schemas import rates
from tokenmill.tokenizers import semantic_pitch as sp
from tokenmill.tokenizers.melody import MelodyError, MelodyModel, window_spans
from tokenmill.tokenizers.windowing import l2_normalize

BINS_PER_S = 4
BINS_PER_WINDOW = rates.MELODY_WINDOW_S * BINS_PER_S  # 16 bins × 12 classes = 192


@dataclass(frozen=True)
class PitchMelodyConfig:
    norm_floor: float = 0.3  # divide a bin's profile by max(its largest class, this)
    resample_quality: str = "HQ"  # soxr, 16 kHz -> 22 050 Hz
    runtime: str = "torch"  # "torch" | "onnxruntime": what runs the ONNX graph (semantic_pitch.py)

    def __post_init__(self) -> None:
        if not 0 <= self.norm_floor < 1:
            raise MelodyError(f"norm_floor must be in [0, 1), got {self.norm_floor}")
        if self.resample_quality not in ("VHQ", "HQ", "MQ", "LQ", "QQ"):
            raise MelodyError(f"resample_quality must be one of VHQ HQ MQ LQ QQ, got {self.resample_quality!r}")
        if self.runtime not in sp.RUNTIMES:
            raise MelodyError(f"runtime must be one of {sp.RUNTIMES}, got {self.runtime!r}")


def quarter_of_model_frame(n_model_frames: int) -> np.ndarray:
    """int64 [J]: the 0.25 s bin of each model frame, floor(j·256·4/22050) = floor(j·512/11025)."""
    return (np.arange(n_model_frames, dtype=np.int64) * 512) // 11025


def window_profiles(note: np.ndarray, n_windows: int, norm_floor: float) -> np.ndarray:
    """note float32 [J, 88] model frames covering the windows → float32 [W, 192] (not normalized)."""
    n_bins = (n_windows - 1) * BINS_PER_S + BINS_PER_WINDOW
    quarter = quarter_of_model_frame(note.shape[0])
    keep = quarter < n_bins
    pc_of_key = (np.arange(sp.N_KEYS) + sp.FIRST_MIDI) % 12
    per_frame = np.zeros((note.shape[0], 12))
    np.maximum.at(per_frame.T, pc_of_key, note.astype(np.float64).T)
    sums = np.zeros((n_bins, 12))
    np.add.at(sums, quarter[keep], per_frame[keep])
    counts = np.bincount(quarter[keep], minlength=n_bins).astype(np.float64)
    if np.any(counts == 0):
        raise MelodyError("internal: a 0.25 s bin owns no model frame; the posteriorgram is too short")
    prof = sums / counts[:, None]
    if norm_floor > 0:
        prof /= np.maximum(prof.max(1, keepdims=True), norm_floor)
    prof -= prof.mean(1, keepdims=True)
    out = np.stack([prof[w * BINS_PER_S: w * BINS_PER_S + BINS_PER_WINDOW].reshape(-1) for w in range(n_windows)])
    return out.astype(np.float32)


class PitchMelody(MelodyModel):
    """basic-pitch pitch-class tracks, 16 × 0.25 s × 12 classes per 4 s window (module doc)."""

    name = "basic-pitch"

    def __init__(self, config: PitchMelodyConfig | None = None) -> None:
        self.config = config or PitchMelodyConfig()
        self._pitch = sp.PitchExtractor(sp.PitchConfig(resample_quality=self.config.resample_quality,
                                                         runtime=self.config.runtime))
        self.weights_sha256 = self._pitch.weights_sha256

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self._pitch.describe()["model"],
                "layout": "16 bins of 0.25 s x 12 pitch classes (C..B), centred, L2-normalized"}

    def embed_windows_batch(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for wave in waves:
            wave = self.check_wave(wave)
            spans = window_spans(wave.shape[0], self.sample_rate_hz)
            end = spans[-1][1]
            hop = rates.SEMANTIC.hop_samples
            padded = np.zeros(-(-max(end, wave.shape[0]) // hop) * hop + hop, np.float32)
            padded[:wave.shape[0]] = wave
            note, _ = self._pitch.posteriorgrams(padded)
            out.append(l2_normalize(window_profiles(note, len(spans), self.config.norm_floor)))
        return out


def build_pitch_melody(**config: Any) -> PitchMelody:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(PitchMelodyConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise MelodyError(f"unknown basic-pitch melody config keys {unknown}; valid: {sorted(fields)}")
    return PitchMelody(PitchMelodyConfig(**config))
