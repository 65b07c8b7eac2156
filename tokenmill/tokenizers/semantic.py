"""Semantic feature extractors: 16 kHz mono float32 in, float32 [T, dim] at exactly 25 Hz out.

The k-means codebook (kmeans.py) maps each frame to one of 1024 semantic tokens. Extractors plug
in through `SemanticExtractor` and the `build_extractor` registry: "spectral" (built-in,
weight-free) lives here; the SSL adapters "w2v-bert" and "hubert" (transformers from_pretrained,
semantic_ssl.py) and "basic-pitch" (pretrained pitch posteriorgrams, semantic_pitch.py) register
when the registry is first used.

Frame contract (every extractor): a wave of n samples, n a multiple of 640 (rates.SEMANTIC hop),
gives T = n // 640 frames exactly. Frame t describes the audio around [t·640, (t+1)·640): its
analysis window is centred on the hop's midpoint t·640 + 320. Samples outside [0, n) are zeros.

Pure model code: numpy/torch in, arrays out. No Beam, no file system.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from tokenmill import plugins
from tokenmill.schemas import rates

HOP_SAMPLES = rates.SEMANTIC.hop_samples  # 640
SAMPLE_RATE_HZ = rates.SEMANTIC.sample_rate_hz  # 16000
FRAME_RATE_HZ = int(rates.SEMANTIC.frame_rate_hz)  # 25


class SemanticExtractor(abc.ABC):
    """Interface: `extract(wave float32 [n]) -> float32 [n // 640, dim]`.

    Subclasses set `name`, `config` (a frozen dataclass), `dim`, optionally `weights_sha256`,
    and implement `_extract` on an already validated wave. `extract` validates the input and
    checks the output contract, so a plug-in that drops or adds a frame fails loudly.
    """

    name: str = "?"
    sample_rate_hz: int = SAMPLE_RATE_HZ
    frame_rate_hz: int = FRAME_RATE_HZ
    hop_samples: int = HOP_SAMPLES
    config: Any  # frozen dataclass
    dim: int
    weights_sha256: str | None = None  # None for weight-free extractors

    @abc.abstractmethod
    def _extract(self, wave: np.ndarray) -> np.ndarray:
        """float32 [n] (n a positive multiple of 640, finite) -> float32 [n // 640, dim]."""

    def extract(self, wave: np.ndarray) -> np.ndarray:
        wave = self.check_wave(wave)
        return self.check_features(self._extract(wave), len(wave))

    def extract_batch(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """One feature array per wave; waves may differ in length. Subclasses may batch."""
        return [self.extract(w) for w in waves]

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the manifest."""
        return {
            "name": self.name,
            "config": self.config_dict(),
            "weights_sha256": self.weights_sha256,
            "dim": self.dim,
            "sample_rate_hz": self.sample_rate_hz,
            "frame_rate_hz": self.frame_rate_hz,
            "hop_samples": self.hop_samples,
        }

    def check_wave(self, wave: np.ndarray) -> np.ndarray:
        """Validate one input wave and return it as contiguous float32 [n]."""
        wave = np.asarray(wave)
        if wave.ndim != 1:
            raise ValueError(f"{self.name}: expected mono [n] samples, got shape {wave.shape}; "
                             "mix down to mono (tokenizers/audio.py) first")
        if not np.issubdtype(wave.dtype, np.floating):
            raise ValueError(f"{self.name}: expected float samples in [-1, 1], got {wave.dtype}; "
                             "decode integer PCM to float32 first")
        n = len(wave)
        if n == 0 or n % self.hop_samples:
            k = n // self.hop_samples
            raise ValueError(
                f"{self.name}: wave has {n} samples; it must be a positive multiple of "
                f"{self.hop_samples} (one {1000 // self.frame_rate_hz} ms frame at "
                f"{self.sample_rate_hz} Hz). Cut it with rates.n_quanta/samples_for_quanta, e.g. "
                f"wave[:{k * self.hop_samples}], or pad to {(k + 1) * self.hop_samples}")
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        if not np.isfinite(wave).all():
            raise ValueError(f"{self.name}: wave contains NaN or inf samples")
        return wave

    def check_features(self, feats: np.ndarray, n_samples: int) -> np.ndarray:
        """Enforce the output contract: float32 [n // 640, dim]."""
        want = (n_samples // self.hop_samples, self.dim)
        if feats.shape != want or feats.dtype != np.float32:
            raise RuntimeError(f"extractor {self.name!r} broke the frame contract: returned "
                               f"{feats.dtype} {feats.shape} for {n_samples} samples, want float32 {want}")
        return feats


# ---- registry --------------------------------------------------------------------------------

def register_extractor(name: str) -> Callable:
    """Decorator for a user's own `factory(**config) -> SemanticExtractor`: a row in the plug-in
    table (tokenmill/plugins.py); a name already there is refused."""
    def deco(factory: Callable[..., SemanticExtractor]) -> Callable[..., SemanticExtractor]:
        plugins.register("semantic", name, factory)
        return factory
    return deco


def known_extractors() -> list[str]:
    return plugins.names("semantic")


def build_extractor(name: str, **config: Any) -> SemanticExtractor:
    """Build an extractor by name (a row of tokenmill/plugins.py); `config` overrides its config
    dataclass fields."""
    if name not in plugins.TABLE["semantic"]:
        raise ValueError(f"unknown semantic extractor {name!r}; known: {', '.join(known_extractors())}")
    return plugins.resolve("semantic", name)(**config)


# ---- filterbanks (frequency in Hz; pure numpy, float64) --------------------------------------

def hz_to_mel(f_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 · log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f_hz, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_centers_hz(n_mels: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """[n_mels + 2] edge/centre frequencies: filter i rises from [i], peaks at [i+1], ends at [i+2]."""
    pts = mel_to_hz(np.linspace(hz_to_mel(fmin_hz), hz_to_mel(fmax_hz), n_mels + 2))
    pts[0], pts[-1] = fmin_hz, fmax_hz  # exact band edges despite the mel round trip
    return pts


def mel_filterbank(freqs_hz: np.ndarray, n_mels: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """[n_mels, len(freqs_hz)] triangles in Hz, peak 1 at each centre, 0 at the neighbours' centres.

    Between the first and last centre the triangles sum to exactly 1 (partition of unity).
    """
    f = np.asarray(freqs_hz, dtype=np.float64)[None, :]
    pts = mel_centers_hz(n_mels, fmin_hz, fmax_hz)
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    return np.maximum(0.0, np.minimum((f - lo) / (mid - lo), (hi - f) / (hi - mid)))


def chroma_filterbank(freqs_hz: np.ndarray, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """[12, len(freqs_hz)] pitch-class weights, rows C, C#, ..., B (A4 = 440 Hz, equal temperament).

    A frequency in [fmin, fmax] with MIDI pitch m = 69 + 12·log2(f / 440) splits its weight
    linearly between the two nearest pitch classes (weight 1 - |semitone distance|); columns sum
    to 1 inside the band and 0 outside. No octave weighting: a pink (1/f) spectrum gives every
    octave in the band the same total weight.
    """
    f = np.asarray(freqs_hz, dtype=np.float64)
    inband = (f >= fmin_hz) & (f <= fmax_hz)
    midi = 69.0 + 12.0 * np.log2(np.where(inband, f, 440.0) / 440.0)
    d = (midi[None, :] - np.arange(12)[:, None] + 6.0) % 12.0 - 6.0  # signed semitones, [-6, 6)
    return np.maximum(0.0, 1.0 - np.abs(d)) * inband[None, :]


# ---- built-in spectral extractor -------------------------------------------------------------

@dataclass(frozen=True)
class SpectralConfig:
    """Everything that defines the spectral features; recorded in the manifest.

    Standardization is FIXED (constants below, not per-track CMVN) so a token means the same thing
    in every track and a segment's features do not depend on the rest of the segment. The offset
    and scales were set once on the project's 4.7-minute music sample (the `small`
    corpus of scripts/corpus, 15 tracks): log-mel per-dim std ~0.9 (band means within ±1: spectral
    tilt remains, harmless since k-means ignores per-dim offsets), chroma and delta per-dim std ~1
    before the block weights. Scales act as weights in k-means' Euclidean distance. chroma_weight = 2 (≈ √(64/12)) gives the
    12 chroma dims about the same total variance as the 64 log-mel dims (~50 each on that sample),
    so harmony is not drowned by timbre; the 16 delta dims get ~16.
    """

    win_length: int = 1280  # 80 ms periodic Hann, centred on the hop midpoint
    n_fft: int = 2048  # zero-padded FFT: 7.8 Hz bin spacing
    n_mels: int = 64
    fmin_hz: float = 30.0
    fmax_hz: float = 8000.0
    chroma_fmin_hz: float = 130.0  # ~C3: below it an 80 ms window cannot resolve semitones
    chroma_fmax_hz: float = 4200.0  # ~C8
    n_delta_bands: int = 16  # log-mel pooled to this many bands before the time delta
    amin: float = 1e-10  # log-mel power floor (-100 dB; unit-variance white noise is 0 dB)
    chroma_amin: float = 1e-5  # chroma floor, ~45 dB below music's typical pitch-class power:
    # near-silent frames get a flat chroma (0 vector) instead of amplified noise
    mel_db_offset: float = -32.0  # log-mel: (dB - offset) / scale
    mel_db_scale: float = 16.0
    chroma_db_scale: float = 6.5  # chroma: (dB - frame mean over 12 classes) / scale
    delta_scale: float = 0.15  # delta: (standardized pooled log-mel, t+1 minus t-1) / 2 / scale
    chroma_weight: float = 2.0  # block weights, applied after standardization
    delta_weight: float = 1.0
    chunk_frames: int = 1024  # frames per STFT chunk: bounds memory at ~12 MB for any length

    def __post_init__(self) -> None:
        if not (HOP_SAMPLES <= self.win_length <= self.n_fft and self.win_length % 2 == 0):
            raise ValueError(f"need 640 <= win_length <= n_fft and win_length even, got "
                             f"win_length={self.win_length}, n_fft={self.n_fft}")
        if not 0 <= self.fmin_hz < self.fmax_hz <= SAMPLE_RATE_HZ / 2:
            raise ValueError(f"need 0 <= fmin_hz < fmax_hz <= 8000, got {self.fmin_hz}, {self.fmax_hz}")
        if not 0 < self.chroma_fmin_hz < self.chroma_fmax_hz <= SAMPLE_RATE_HZ / 2:
            raise ValueError("need 0 < chroma_fmin_hz < chroma_fmax_hz <= 8000")
        if self.n_delta_bands < 1 or self.n_mels % self.n_delta_bands:
            raise ValueError(f"n_mels={self.n_mels} must be a multiple of n_delta_bands={self.n_delta_bands}")


class SpectralExtractor(SemanticExtractor):
    """Weight-free HuBERT-iteration-0-style features at 25 Hz (see `layout()`).

    Per frame t: x[t·640 - 320 + i] · hann[i], i < 1280 (centred on t·640 + 320, zeros outside
    the wave); P = |rfft(·, 2048)|² / Σ hann² (so white noise of variance σ² has P ≈ σ²).
      log-mel [0, M):   (10·log10(melavg(P) + amin) - mel_db_offset) / mel_db_scale, where melavg
                        uses unit-sum triangles (mean power density in each band)
      chroma  [M, M+12): dB = 10·log10(chroma(P) + chroma_amin); (dB - mean_12(dB)) / chroma_db_scale
                        · chroma_weight
      delta   [M+12, M+12+D): log-mel averaged over groups of M/D adjacent bands, then
                        (x[t+1] - x[t-1]) / 2 / delta_scale · delta_weight, edges replicated
    Gain: scaling the wave by g adds 20·log10(g) / mel_db_scale to every log-mel dim (+0.38 for
    +6 dB) and leaves chroma and delta unchanged (both are differences of logs), as long as the
    power stays well above the floors. So loudness moves tokens unless ingest normalizes it.
    """

    name = "spectral"

    def __init__(self, config: SpectralConfig | None = None) -> None:
        self.config = cfg = config or SpectralConfig()
        self.dim = cfg.n_mels + 12 + cfg.n_delta_bands
        self._pad = cfg.win_length // 2 - HOP_SAMPLES // 2  # zeros each side: 320 for 80 ms
        freqs_hz = np.arange(cfg.n_fft // 2 + 1) * SAMPLE_RATE_HZ / cfg.n_fft
        mel = mel_filterbank(freqs_hz, cfg.n_mels, cfg.fmin_hz, cfg.fmax_hz)
        if (mel.sum(1) == 0).any():
            raise ValueError(f"{cfg.n_mels} mel bands from {cfg.fmin_hz} Hz are too narrow for "
                             f"n_fft={cfg.n_fft}: some contain no FFT bin; use fewer bands")
        mel /= mel.sum(1, keepdims=True)  # unit-sum: band value = mean power density
        chroma = chroma_filterbank(freqs_hz, cfg.chroma_fmin_hz, cfg.chroma_fmax_hz)
        window = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64)
        # One matrix for both banks, [n_fft/2+1, M+12], with 1/Σw² folded in.
        bank = np.concatenate([mel, chroma]).T / float((window**2).sum())
        self._bank = torch.from_numpy(bank.astype(np.float32))
        self._window = window.float()

    def layout(self) -> dict[str, list[int]]:
        """Feature blocks as [start, stop) column ranges."""
        m, d = self.config.n_mels, self.config.n_delta_bands
        return {"log_mel": [0, m], "chroma": [m, m + 12], "delta_log_mel": [m + 12, m + 12 + d]}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layout": self.layout()}

    def band_powers(self, wave: np.ndarray) -> np.ndarray:
        """float32 [n] -> float32 [T, n_mels + 12]: mean mel-band power, then chroma power."""
        cfg, n_frames = self.config, len(wave) // HOP_SAMPLES
        x = torch.from_numpy(np.pad(wave, self._pad))  # [n + 2·pad]
        frames = x.unfold(0, cfg.win_length, HOP_SAMPLES)  # [T, win] view, frame t at t·640 - pad
        out = torch.empty(n_frames, self._bank.shape[1])
        with torch.no_grad():
            for t0 in range(0, n_frames, cfg.chunk_frames):
                spec = torch.fft.rfft(frames[t0:t0 + cfg.chunk_frames] * self._window, n=cfg.n_fft)
                power = torch.view_as_real(spec).square().sum(-1)  # [chunk, n_fft/2+1]
                torch.matmul(power, self._bank, out=out[t0:t0 + cfg.chunk_frames])
        return out.numpy()

    def _extract(self, wave: np.ndarray) -> np.ndarray:
        cfg, m = self.config, self.config.n_mels
        floor = np.array([cfg.amin] * m + [cfg.chroma_amin] * 12, np.float32)
        db = 10.0 * np.log10(self.band_powers(wave) + floor)  # [T, M+12]
        log_mel = (db[:, :m] - np.float32(cfg.mel_db_offset)) / np.float32(cfg.mel_db_scale)
        chroma_db = db[:, m:]
        chroma = (chroma_db - chroma_db.mean(1, keepdims=True)) * np.float32(cfg.chroma_weight / cfg.chroma_db_scale)
        pooled = log_mel.reshape(len(db), cfg.n_delta_bands, -1).mean(2)  # [T, D]
        padded = np.concatenate([pooled[:1], pooled, pooled[-1:]])  # replicate edges
        delta = (padded[2:] - padded[:-2]) * np.float32(cfg.delta_weight / (2 * cfg.delta_scale))
        return np.ascontiguousarray(np.concatenate([log_mel, chroma, delta], axis=1), dtype=np.float32)


def build_spectral(**config: Any) -> SpectralExtractor:
    fields = {f.name for f in dataclasses.fields(SpectralConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown spectral config keys {unknown}; valid: {sorted(fields)}")
    return SpectralExtractor(SpectralConfig(**config))
