"""Embedder: the audio tower of a MuLan model (tokenizers/mulan.py), one frame per 10 s window at
a 1 s stride, L2-normalized, exactly the `mulan_windows` that `tokenize` stores."""
from __future__ import annotations

from typing import Any

import numpy as np

from tokenmill.eval import EvalError
from tokenmill.eval.embedders import Embedder


class MulanWindowsEmbedder(Embedder):
    frames = "one per 10 s window at a 1 s stride (short clips: one zero-padded window), L2-normalized"

    def __init__(self, model) -> None:
        self.model = model
        self.name = model.name
        self.sample_rate_hz = int(model.sample_rate_hz)
        self.dim = int(model.dim)
        self.weights_sha256 = model.weights_sha256

    def _embed(self, wave: np.ndarray) -> np.ndarray:
        return self.model.embed_audio_windows(wave)

    def config_dict(self) -> dict[str, Any]:
        return {"model": self.model.describe()}


def load_mulan_model(name: str, path: Any = None, device: str = "cpu", **options: Any):
    """A MuLan back-end ('mulan' built-in or 'clap'), its loading errors turned into EvalError."""
    from tokenmill.tokenizers.mulan import MulanError, build_mulan

    kw = dict(options, device=device)
    if path is not None:
        kw["path"] = path
    try:
        return build_mulan(name, **kw)
    except (MulanError, FileNotFoundError) as e:
        raise EvalError(str(e)) from e


def build(path: Any = None, device: str = "cpu", **options: Any) -> MulanWindowsEmbedder:
    """The built-in MuLan (`path`: a weights file; default the packaged one)."""
    return MulanWindowsEmbedder(load_mulan_model("mulan", path, device, **options))
