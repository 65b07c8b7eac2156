"""Embedder: a transformers CLAP audio tower given by its save_pretrained directory (the CLAP
adapter of tokenizers/mulan.py), one frame per 10 s window at a 1 s stride."""
from __future__ import annotations

from typing import Any

from tokenmill.eval import EvalError
from tokenmill.eval.embedders.mulan_tower import MulanWindowsEmbedder, load_mulan_model


def build(path: Any = None, device: str = "cpu", **options: Any) -> MulanWindowsEmbedder:
    if path is None:
        raise EvalError("embedder clap needs its directory: --embedder clap=DIR (a transformers CLAP "
                        "save_pretrained directory with its processor)")
    return MulanWindowsEmbedder(load_mulan_model("clap", path, device, **options))
