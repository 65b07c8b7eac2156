"""Embedder: hidden states of any transformers audio model given by its save_pretrained directory
(HuBERT, wav2vec 2.0, w2v-BERT 2.0, WavLM, ...; MERT with trust_remote_code=true, since its
modelling code ships with the checkpoint), loaded with AutoModel + AutoFeatureExtractor.

`layer = i` is `hidden_states[i]` of `model(..., output_hidden_states=True)` (0: the input to the
first layer; default: the last layer, config.num_hidden_layers). The model's frames are mean-pooled
to one frame per second (their rate is measured: frames / input seconds). Clips are run in chunks
of at most `chunk_s` seconds (attention memory grows with the square of the length); the feature
extractor normalizes per chunk, as it does in tokenizers/semantic_ssl.py."""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np

from tokenmill.eval import EvalError
from tokenmill.eval.embedders import Embedder, pool_seconds


def checkpoint_dir(name: str, path: Any, need_preprocessor: bool = True) -> tuple[Path, dict, list[Path]]:
    """Check a save_pretrained directory (config.json, weights, preprocessor) without loading it."""
    if path is None:
        raise EvalError(f"{name}: needs its checkpoint: {name}=DIR, a transformers save_pretrained directory")
    d = Path(path)
    if not (d / "config.json").is_file():
        raise EvalError(f"{name}: {str(d)!r} is not a transformers save_pretrained directory (no config.json)")
    try:
        config = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise EvalError(f"{name}: cannot read {d / 'config.json'}: {e}") from e
    weights = sorted(d.glob("*.safetensors")) or sorted(d.glob("*.bin"))
    if not weights:
        raise EvalError(f"{name}: {str(d)!r} has config.json but no *.safetensors or *.bin weights")
    if need_preprocessor and not (d / "preprocessor_config.json").is_file():
        raise EvalError(f"{name}: {str(d)!r} has no preprocessor_config.json; save the model's feature "
                        "extractor there too (feature_extractor.save_pretrained(DIR))")
    return d, config, weights


class HiddenStatesEmbedder(Embedder):
    name = "hf"
    frames = "hidden states mean-pooled over each second"

    def __init__(self, path: Any = None, layer: int | None = None, chunk_s: float = 30.0,
                 trust_remote_code: bool = False, device: str = "cpu", **unknown: Any) -> None:
        import torch
        import transformers

        from tokenmill.tokenizers.codec import resolve_device, sha256_of_files

        if unknown:
            raise EvalError(f"hf: unknown option(s) {', '.join(sorted(unknown))}; valid: layer, chunk_s, "
                            "trust_remote_code")
        d, config, weights = checkpoint_dir("hf", path)
        if config.get("auto_map") and not trust_remote_code:
            raise EvalError(f"hf: {d} ships its own modelling code (auto_map in config.json, e.g. MERT); "
                            "add ,trust_remote_code=true to the spec if you trust that directory")
        self.device = resolve_device("hf", device, EvalError)
        try:
            self.feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(
                str(d), trust_remote_code=trust_remote_code)
            model = transformers.AutoModel.from_pretrained(str(d), dtype=torch.float32,
                                                           trust_remote_code=trust_remote_code)
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
            raise EvalError(f"hf: loading {d} with AutoModel/AutoFeatureExtractor failed: {e}") from e
        self.model = model.to(self.device).eval()
        depth = int(getattr(model.config, "num_hidden_layers", 0))
        self.layer = depth if layer is None else layer
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or not 0 <= self.layer <= depth:
            raise EvalError(f"hf: layer {layer!r} is not in 0..{depth} ({d / 'config.json'} says "
                            f"num_hidden_layers={depth})")
        self.sample_rate_hz = int(self.feature_extractor.sampling_rate)
        self.dim = int(model.config.hidden_size)
        self.chunk_s = float(chunk_s)
        self.path = d
        self.model_type = model.config.model_type
        self.weights_sha256 = sha256_of_files(weights)
        self._accepts = set(inspect.signature(self.model.forward).parameters)

    def _hidden(self, wave: np.ndarray) -> np.ndarray:
        import torch

        x = self.feature_extractor(wave, sampling_rate=self.sample_rate_hz, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in x.items() if k in self._accepts}
        with torch.inference_mode():
            out = self.model(**inputs, output_hidden_states=True)
        return out.hidden_states[self.layer][0].float().cpu().numpy()

    def _embed(self, wave: np.ndarray) -> np.ndarray:
        chunk = max(1, int(self.chunk_s * self.sample_rate_hz))
        parts = []
        for a in range(0, wave.shape[0], chunk):
            piece = wave[a:a + chunk]
            h = self._hidden(piece)
            parts.append(pool_seconds(h, h.shape[0] / (piece.shape[0] / self.sample_rate_hz)))
        return np.concatenate(parts)

    def config_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "layer": self.layer, "chunk_s": self.chunk_s,
                "layer_index": "hidden_states[layer] (0 = input to the first layer)"}


def build(path: Any = None, device: str = "cpu", **options: Any) -> HiddenStatesEmbedder:
    return HiddenStatesEmbedder(path=path, device=device, **options)
