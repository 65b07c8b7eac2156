"""Acoustic codecs: the interface every back-end implements, and the registry.

A codec turns a mono float32 wave at its own sample rate into integer codes, codebook-major
uint16 [n_q, T], and back. Back-ends declare their rates and depth; the pipeline records them in
the manifest, and nothing downstream assumes 50 Hz × 12 (EnCodec runs at 75 Hz, Mimi at 12.5 Hz).

Frame count contract: for a wave of n samples, `encode` returns T = ceil(n / hop_samples) frames
(the codec pads the tail). For the built-in SoundStream at 24 kHz, hop 480, the pipeline only
feeds whole 40 ms quanta, so T = n / 480 = 2 · T_semantic exactly.
"""
from __future__ import annotations

import abc
import hashlib
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tokenmill import plugins
from tokenmill.errors import TokenmillError

COARSE_LEVELS_DEFAULT = 4  # MusicLM: levels 1-4 coarse, the rest fine


class CodecError(TokenmillError, ValueError):
    """A codec cannot be built or loaded, or was given input it cannot encode."""


class AcousticCodec(abc.ABC):
    name: str
    sample_rate_hz: int
    hop_samples: int
    n_q: int  # levels produced by encode()
    codebook_size: int
    coarse_levels: int = COARSE_LEVELS_DEFAULT
    weights_sha256: str | None = None

    @property
    def frame_rate_hz(self) -> Fraction:
        return Fraction(self.sample_rate_hz, self.hop_samples)

    def n_frames(self, n_samples: int) -> int:
        return math.ceil(n_samples / self.hop_samples)

    @abc.abstractmethod
    def _encode(self, wave: np.ndarray) -> np.ndarray:
        """float32 [n] → integer codes [n_q, ceil(n / hop)]."""

    @abc.abstractmethod
    def _decode(self, codes: np.ndarray) -> np.ndarray:
        """integer codes [n_levels <= n_q, T] → float32 [T * hop]."""

    def encode(self, wave: np.ndarray) -> np.ndarray:
        """Mono float32 [n] at `sample_rate_hz` → uint16 [n_q, ceil(n / hop)]."""
        wave = np.asarray(wave)
        if wave.ndim != 1 or wave.size == 0:
            raise CodecError(f"{self.name}: expected a non-empty mono wave [n], got shape {wave.shape}")
        if not np.issubdtype(wave.dtype, np.floating):
            raise CodecError(f"{self.name}: expected float samples in [-1, 1], got {wave.dtype}")
        codes = np.asarray(self._encode(np.ascontiguousarray(wave, dtype=np.float32)))
        want = (self.n_q, self.n_frames(wave.shape[0]))
        if codes.shape != want:
            raise CodecError(f"{self.name}: encode gave codes {codes.shape}, expected {want}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise CodecError(f"{self.name}: codes outside [0, {self.codebook_size})")
        return codes.astype(np.uint16)

    def encode_batch(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        return [self.encode(w) for w in waves]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """uint16 [n_levels, T] → float32 [T * hop]; n_levels may be fewer than n_q."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or not 1 <= codes.shape[0] <= self.n_q:
            raise CodecError(f"{self.name}: expected codes [1..{self.n_q}, T], got shape {codes.shape}")
        return np.asarray(self._decode(codes.astype(np.int64)), dtype=np.float32)

    def config_dict(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        """The manifest's entry for this codec: rates, depth, coarse/fine split, weights hash."""
        return {
            "name": self.name, "config": self.config_dict(), "weights_sha256": self.weights_sha256,
            "sample_rate_hz": self.sample_rate_hz, "hop_samples": self.hop_samples,
            "frame_rate_hz": float(self.frame_rate_hz), "n_q": self.n_q,
            "codebook_size": self.codebook_size,
            "coarse_levels": list(range(1, min(self.coarse_levels, self.n_q) + 1)),
            "fine_levels": list(range(self.coarse_levels + 1, self.n_q + 1)),
        }


def resolve_device(name: str, device: str, error: type[Exception] = ValueError) -> str:
    """'cpu', 'cuda' or 'cuda:N' for a model adapter `name`; raises `error` (the adapter's own
    error class) for CUDA without a GPU or an unknown device. Shared by codec and SSL adapters."""
    import torch

    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise error(f"{name}: device {device!r} asked for but CUDA is not available here; "
                        "pass device='cpu'")
        return device
    raise error(f"{name}: unknown device {device!r}; use 'cpu' or 'cuda'")


def sha256_of_files(paths: list[Path]) -> str:
    """One hash over weight files (sorted by name), for the manifest."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def register_codec(name: str) -> Callable:
    """Decorator for a user's own codec factory: a row in the plug-in table (tokenmill/plugins.py)."""
    def deco(factory):
        plugins.register("codec", name, factory)
        return factory
    return deco


def known_codecs() -> list[str]:
    return plugins.names("codec")


def build_codec(name: str, **config: Any) -> AcousticCodec:
    """Build a codec by name: 'soundstream' (built-in) or an adapter ('encodec', 'dac', 'mimi')
    whose `path` is a transformers `save_pretrained` directory (rows of tokenmill/plugins.py)."""
    if name not in plugins.TABLE["codec"]:
        raise CodecError(f"unknown codec {name!r}; known: {', '.join(known_codecs())}")
    return plugins.resolve("codec", name)(**config)


def rebuild_codec(job: dict[str, Any] | None, desc: dict[str, Any] | None, model_path: str | None = None,
                  where: str = "the dataset") -> AcousticCodec:
    """The codec a dataset was tokenized with: built from its manifest's ``job.acoustic`` (`job`:
    codec name + config), `model_path` replacing the weights path when the weights moved, and
    checked against ``tokenizers.acoustic`` (`desc`): other weights would decode other sounds.
    Used by `decode` and `generate`; raises CodecError naming `where` and the fix."""
    if not job or not desc:
        raise CodecError(f"{where} records no acoustic codec (job.acoustic and tokenizers.acoustic); "
                         "tokenize with --acoustic_codec to get acoustic tokens")
    kwargs = dict(job.get("codec_config") or {})
    if model_path:
        kwargs["path"] = model_path
    try:
        codec = build_codec(job["codec"], **kwargs)
    except FileNotFoundError as e:
        raise CodecError(f"cannot rebuild the {job['codec']} codec {where} used: {e}; pass its weights "
                         "with --acoustic_model PATH") from None
    if codec.weights_sha256 != desc["weights_sha256"]:
        raise CodecError(f"the {desc['name']} weights here (sha256 {str(codec.weights_sha256)[:12]}…) differ from "
                         f"those {where} was tokenized with ({str(desc['weights_sha256'])[:12]}…); pass that "
                         "checkpoint with --acoustic_model PATH")
    return codec


