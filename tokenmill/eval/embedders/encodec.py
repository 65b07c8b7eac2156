"""Embedder: EnCodec's encoder output (the continuous latents before the residual quantizer),
through the EnCodec adapter of tokenizers/codec_adapters.py (transformers EncodecModel from a
save_pretrained directory), mean-pooled to one frame per second (75 Hz latents at 24 kHz)."""
from __future__ import annotations

from typing import Any

import numpy as np

from tokenmill.eval import EvalError
from tokenmill.eval.embedders import Embedder, pool_seconds


class EncodecEmbedder(Embedder):
    name = "encodec"
    frames = "encoder latents mean-pooled over each second"

    def __init__(self, path: Any = None, device: str = "cpu", **unknown: Any) -> None:
        from tokenmill.tokenizers.codec import CodecError, build_codec

        if unknown:
            raise EvalError(f"encodec: unknown option(s) {', '.join(sorted(unknown))}")
        if path is None:
            raise EvalError("embedder encodec needs its directory: --embedder encodec=DIR")
        try:
            self.codec = build_codec("encodec", path=path, device=device)
        except (CodecError, FileNotFoundError) as e:
            raise EvalError(str(e)) from e
        self.sample_rate_hz = self.codec.sample_rate_hz
        self.dim = int(self.codec.hf_config.hidden_size)
        self.weights_sha256 = self.codec.weights_sha256
        self.frame_rate_hz = float(self.codec.frame_rate_hz)

    def _embed(self, wave: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            z = self.codec.model.encoder(self.codec._wave_tensor(wave))  # [1, hidden, T]  # noqa: SLF001
        return pool_seconds(z[0].T.float().cpu().numpy(), self.frame_rate_hz)

    def config_dict(self) -> dict[str, Any]:
        return {"codec": self.codec.describe()}


def build(path: Any = None, device: str = "cpu", **options: Any) -> EncodecEmbedder:
    return EncodecEmbedder(path=path, device=device, **options)
