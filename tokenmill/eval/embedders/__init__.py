"""FAD embedders: the interface and the table of implementations (one file each).

An embedder turns a mono float32 wave at its `sample_rate_hz` into frames float32 [F, dim]; FAD
statistics are taken over all frames of all clips (bootstrap and FAD-inf resample whole clips).
MuLan/CLAP give one frame per 10 s window at a 1 s stride (the windows `tokenize` stores); models
with a frame rate (SSL hidden states, EnCodec latents) are mean-pooled to one frame per second.

    EMBEDDERS row   spec                          what
    mulan           mulan[=WEIGHTS]               the built-in MuLan audio tower (128-d)
    clap            clap=DIR                      a transformers CLAP save_pretrained directory
    hf              hf=DIR[,layer=N]              hidden_states[N] (default: last) of any transformers
                                                  audio model (HuBERT, w2v-BERT, wav2vec2, MERT with
                                                  trust_remote_code=true)
    encodec         encodec=DIR                   EnCodec's encoder output (before quantization)
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np

from tokenmill.eval import EvalError
from tokenmill.eval import plugins
from tokenmill.plugins import TABLE

EMBEDDERS: dict[str, str] = TABLE["embedder"]   # the rows live in the one plug-in table


class Embedder(abc.ABC):
    name: str
    sample_rate_hz: int
    dim: int
    weights_sha256: str | None = None
    frames: str = ""  # what one frame is, for the report

    @abc.abstractmethod
    def _embed(self, wave: np.ndarray) -> np.ndarray:
        """float32 [n] → float [F, dim]."""

    def embed(self, wave: np.ndarray) -> np.ndarray:
        """Mono float32 [n] at `sample_rate_hz` → float32 [F >= 1, dim], finite."""
        wave = np.asarray(wave)
        if wave.ndim != 1 or wave.size == 0 or not np.issubdtype(wave.dtype, np.floating):
            raise EvalError(f"{self.name}: expected a non-empty mono float wave [n], got {wave.dtype} {wave.shape}")
        out = np.asarray(self._embed(np.ascontiguousarray(wave, np.float32)), np.float32)
        if out.ndim != 2 or out.shape[0] < 1 or out.shape[1] != self.dim:
            raise EvalError(f"{self.name}: gave embeddings {out.shape}, expected [F >= 1, {self.dim}]")
        if not np.isfinite(out).all():
            raise EvalError(f"{self.name}: gave non-finite embeddings")
        return out

    def config_dict(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config_dict(), "weights_sha256": self.weights_sha256,
                "sample_rate_hz": self.sample_rate_hz, "dim": self.dim, "frames": self.frames}


def pool_seconds(frames: np.ndarray, rate_hz: float) -> np.ndarray:
    """float [T, D] at `rate_hz` → float32 [ceil(T / rate_hz), D]: mean over each whole second of
    frames (frame t belongs to second floor(t / rate_hz)); a trailing part-second is its own frame."""
    frames = np.asarray(frames, np.float64)
    if frames.ndim != 2 or frames.shape[0] == 0:
        raise EvalError(f"no frames to pool (shape {frames.shape})")
    sec = np.floor(np.arange(frames.shape[0]) / rate_hz).astype(np.int64)
    n = int(sec[-1]) + 1
    sums = np.zeros((n, frames.shape[1]))
    np.add.at(sums, sec, frames)
    counts = np.bincount(sec, minlength=n)
    keep = counts > 0
    return (sums[keep] / counts[keep, None]).astype(np.float32)


def register_embedder(name: str, target: str) -> None:
    """Add a row: `register_embedder("mine", "mypkg.embed:build")`. Beam workers resolve names
    again, so call this where the workers import it too (or pass the target itself as the name)."""
    plugins.register(EMBEDDERS, name, target)


def build_embedder(spec: str | plugins.Spec, device: str = "cpu") -> Embedder:
    s = spec if isinstance(spec, plugins.Spec) else plugins.parse_spec(spec, "--embedder")
    factory = plugins.resolve(EMBEDDERS, s.name, "embedder")
    try:
        emb = factory(device=device, **s.kwargs)
    except TypeError as e:
        raise EvalError(f"embedder {s}: {e}") from e
    if not isinstance(emb, Embedder):
        raise EvalError(f"embedder {s.name!r}: its factory returned {type(emb).__name__}, not an Embedder")
    return emb
