"""SSL semantic extractors: w2v-BERT 2.0 and HuBERT through transformers `from_pretrained(path)`.

`build_extractor("w2v-bert" | "hubert", path=DIR, layer=7)` where DIR is a transformers
`save_pretrained` directory holding the model (config.json + *.safetensors or *.bin) AND its
feature extractor (preprocessor_config.json); a Hub snapshot has both. Nothing is downloaded.

  w2v-bert  Wav2Vec2BertModel fed by SeamlessM4TFeatureExtractor: 80 log-mel bins at 100 Hz
            (25 ms window, 10 ms hop), stacked in pairs (stride 2) → 160-d inputs at 50 Hz.
  hubert    HubertModel fed by Wav2Vec2FeatureExtractor (raw 16 kHz wave, zero-mean/unit-variance
            per chunk when its do_normalize says so); conv front end with strides of product 320
            → 50 Hz.

Layer. `layer = i` (1 <= i <= config.num_hidden_layers, default 7) is `hidden_states[i]` of
`model(..., output_hidden_states=True)`: the output of the i-th transformer layer, counting from
1 (hidden_states[0] is the input to the first layer). transformers (5.x) returns each layer's raw
output there, before the final LayerNorm of pre-LN models. Only layers 1..i are run (the deeper
ones are dropped after loading); the tests check this equals the full model's hidden_states[i].

Rate. Both models give F = 2T - 1 frames at 50 Hz for a wave of T·640 samples (measured on
transformers 5.24: HuBERT's 400-sample receptive field at hop 320, and w2v-BERT's fbank framing,
both lose the last half hop). `pool_to_25hz` makes exactly T = rates' T_s frames: the 50 Hz frames
are trimmed to 2T, or, when short by at most MAX_SHORT_50HZ frames, padded by repeating the last
frame; then frame t = mean(h[2t], h[2t+1]). So the last 25 Hz frame of a chunk is the last 50 Hz
frame alone. A shortfall larger than MAX_SHORT_50HZ means the model is not at 50 Hz and is refused.
50 Hz frame j covers samples [320 j, 320 j + 400); the pair centre 640 t + 360 is 2.5 ms after
the frame contract's centre 640 t + 320 (semantic.py).

Chunks. Self-attention memory grows with the square of the length, so a segment is cut into the
fewest near-equal chunks of at most `chunk_frames` 25 Hz frames (default 750 = 30 s; the same
split as rates.segment_bounds), each run on its own, with no overlap. Features of the frames next
to a chunk boundary see only their own chunk. The feature extractor normalizes per chunk.

Pure model code: numpy/torch/transformers in, arrays out. No Beam.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenmill.errors import TokenmillError
from tokenmill.schemas import rates
from tokenmill.tokenizers.codec import resolve_device
from tokenmill.tokenizers.semantic import (
    HOP_SAMPLES,
    SAMPLE_RATE_HZ,
    SemanticExtractor,
)

DEFAULT_LAYER = 7
MODEL_HOP_SAMPLES = HOP_SAMPLES // 2  # 320: the models' 50 Hz hop at 16 kHz
MAX_SHORT_50HZ = 2  # 50 Hz frames a chunk may lack before padding is refused
MODELS = {  # registry name → (config.json model_type, model class, feature extractor class)
    "w2v-bert": ("wav2vec2-bert", "Wav2Vec2BertModel", "SeamlessM4TFeatureExtractor"),
    "hubert": ("hubert", "HubertModel", "Wav2Vec2FeatureExtractor"),
}


class SemanticModelError(TokenmillError, ValueError):
    """A checkpoint directory, layer or option that cannot work; the message says how to fix it."""


@dataclass(frozen=True)
class SSLConfig:
    """Everything that defines the features (and `device`, where they are computed); recorded, less
    `device`, in the manifest and the codebook card (SSLExtractor.config_dict)."""

    path: str  # transformers save_pretrained directory (model + feature extractor)
    layer: int = DEFAULT_LAYER  # hidden_states[layer]: output of the layer-th transformer layer
    chunk_frames: int = 750  # at most this many 25 Hz frames (30 s) per forward pass
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N"


def pool_to_25hz(h50: np.ndarray, n_frames: int) -> np.ndarray:
    """float32 [F, D] frames at 50 Hz → float32 [n_frames, D] at 25 Hz (policy: module doc).

    Trim to 2·n_frames, or repeat the last frame when F is short by at most MAX_SHORT_50HZ; then
    average the pairs (2t, 2t+1)."""
    want = 2 * n_frames
    if h50.ndim != 2 or h50.shape[0] == 0 or want - h50.shape[0] > MAX_SHORT_50HZ:
        raise SemanticModelError(
            f"the model gave {h50.shape[0] if h50.ndim else 0} frames for {n_frames} frames at 25 Hz "
            f"(expected about {want} at 50 Hz); is it a 50 Hz model (hop 320 at 16 kHz)?")
    if h50.shape[0] < want:
        h50 = np.concatenate([h50, np.repeat(h50[-1:], want - h50.shape[0], axis=0)])
    return np.ascontiguousarray(h50[:want].reshape(n_frames, 2, -1).mean(axis=1), dtype=np.float32)


def read_checkpoint(name: str, path: Any, layer: Any = DEFAULT_LAYER) -> tuple[Path, dict, list[Path]]:
    """Check `path` (model type, weights, preprocessor) and `layer` without loading any weights.

    Returns (directory, config.json as a dict, weight files). Cheap: the CLI calls it to fail
    before a job starts."""
    if name not in MODELS:
        raise SemanticModelError(f"unknown SSL extractor {name!r}; known: {', '.join(MODELS)}")
    model_type, model_cls, fe_cls = MODELS[name]
    flag = f"--semantic_extractor {name} --semantic_path DIR"
    if path is None:
        raise SemanticModelError(f"{name}: needs {flag}, a transformers save_pretrained directory of a "
                                 f"{model_cls} and its {fe_cls} (nothing is downloaded)")
    d = Path(path)
    cfg_file, pre_file = d / "config.json", d / "preprocessor_config.json"
    if not d.is_dir():
        raise SemanticModelError(f"{name}: {str(d)!r} is not a directory; pass the save_pretrained "
                                 "directory (a Hub snapshot works)")
    if not cfg_file.is_file():
        raise SemanticModelError(f"{name}: {str(d)!r} has no config.json; not a save_pretrained directory")
    try:
        config = json.loads(cfg_file.read_text())
        found = config.get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise SemanticModelError(f"{name}: cannot read {str(cfg_file)!r}: {e}") from e
    if found != model_type:
        other = [n for n, m in MODELS.items() if m[0] == found]
        fix = f"; use --semantic_extractor {other[0]}" if other else ""
        raise SemanticModelError(f"{name}: {str(cfg_file)!r} says model_type {found!r}, expected "
                                 f"{model_type!r}{fix}")
    weights = sorted(d.glob("*.safetensors")) or sorted(d.glob("*.bin"))
    if not weights:
        raise SemanticModelError(f"{name}: {str(d)!r} has config.json but no *.safetensors or *.bin weights")
    if not pre_file.is_file():
        raise SemanticModelError(f"{name}: {str(d)!r} has no preprocessor_config.json; save the "
                                 f"{fe_cls} there too (feature_extractor.save_pretrained(DIR))")
    depth = int(config.get("num_hidden_layers", 0))
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= layer <= depth:
        raise SemanticModelError(
            f"{name}: layer {layer!r} is not in 1..{depth}: {str(cfg_file)!r} says num_hidden_layers="
            f"{depth}; pick --semantic_layer between 1 and {depth}")
    return d, config, weights


class SSLExtractor(SemanticExtractor):
    """hidden_states[layer] of a transformers SSL model, pooled to 25 Hz; dim = hidden_size."""

    standardize = True  # k-means on SSL features: per-dim standardization stored with the codebook

    def __init__(self, name: str, config: SSLConfig) -> None:
        import torch
        import transformers

        from tokenmill.tokenizers.codec import sha256_of_files

        self.name, self.config = name, config
        _, self._model_cls, self._fe_cls = MODELS[name]
        if isinstance(config.chunk_frames, bool) or not isinstance(config.chunk_frames, int) \
                or config.chunk_frames < 1:
            raise SemanticModelError(f"{name}: chunk_frames must be an int >= 1, got {config.chunk_frames!r}")
        self.device = resolve_device(name, config.device, SemanticModelError)
        d, hf_config, weights = read_checkpoint(name, config.path, config.layer)
        self.weights_sha256 = sha256_of_files(weights)
        try:
            fe = getattr(transformers, self._fe_cls).from_pretrained(str(d))
            model = getattr(transformers, self._model_cls).from_pretrained(str(d), dtype=torch.float32)
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            raise SemanticModelError(f"{name}: loading {str(d)!r} with transformers failed: {e}") from e
        if int(fe.sampling_rate) != SAMPLE_RATE_HZ:
            raise SemanticModelError(f"{name}: {str(d / 'preprocessor_config.json')!r} says sampling_rate "
                                     f"{fe.sampling_rate}; the semantic stream is {SAMPLE_RATE_HZ} Hz")
        hop = (160 * int(fe.stride) if name == "w2v-bert"  # fbank hop 10 ms = 160 samples, stacked
               else int(np.prod(model.config.conv_stride)))
        if hop != MODEL_HOP_SAMPLES:
            raise SemanticModelError(f"{name}: {str(d)!r} gives frames every {hop} samples at 16 kHz; "
                                     f"only 50 Hz models (hop {MODEL_HOP_SAMPLES}) pool to 25 Hz")
        self.n_layers_total = int(model.config.num_hidden_layers)
        model.encoder.layers = model.encoder.layers[: config.layer]  # deeper layers are never used
        self.model = model.to(self.device).eval()
        self.feature_extractor = fe
        self.hf_config = model.config
        self.dim = int(model.config.hidden_size)

    def _model_inputs(self, wave: np.ndarray) -> dict:
        x = self.feature_extractor(wave, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt")
        key = "input_features" if self.name == "w2v-bert" else "input_values"
        out = {key: x[key]}
        if self.name == "w2v-bert" and "attention_mask" in x:
            out["attention_mask"] = x["attention_mask"]
        return {k: v.to(self.device) for k, v in out.items()}

    def hidden_50hz(self, wave: np.ndarray) -> np.ndarray:
        """float32 [n] → float32 [F, dim]: hidden_states[layer] at the model's 50 Hz, unpooled."""
        import torch

        with torch.inference_mode():
            out = self.model(**self._model_inputs(wave), output_hidden_states=True)
            return out.hidden_states[self.config.layer][0].float().cpu().numpy()

    def _extract(self, wave: np.ndarray) -> np.ndarray:
        n_frames = len(wave) // HOP_SAMPLES
        max_s = rates.QUANTUM_S * self.config.chunk_frames  # one semantic frame per 40 ms quantum
        parts = [pool_to_25hz(self.hidden_50hz(wave[f0 * HOP_SAMPLES:f1 * HOP_SAMPLES]), f1 - f0)
                 for f0, f1 in rates.segment_bounds(n_frames, max_s)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def config_dict(self) -> dict[str, Any]:
        """The config minus `device`: where the model runs does not define the features, and the
        manifest and codebook card must not change with it."""
        return {k: v for k, v in super().config_dict().items() if k != "device"}

    def describe(self) -> dict[str, Any]:
        c = self.hf_config
        return {**super().describe(), "layer": self.config.layer, "standardize": self.standardize,
                "model": {"model_type": c.model_type, "transformers_class": self._model_cls,
                          "feature_extractor_class": self._fe_cls, "num_hidden_layers": self.n_layers_total,
                          "hidden_size": int(c.hidden_size), "weights_sha256": self.weights_sha256},
                "layer_index": "hidden_states[layer]: output of transformer layer `layer`, counting from 1",
                "pooling": "50 Hz frames trimmed to 2T (or last frame repeated), mean of pairs (2t, 2t+1)"}


def _factory(name: str):
    def build(path: Any = None, layer: int = DEFAULT_LAYER, chunk_frames: int = 750,
              device: str = "cpu", **unknown: Any) -> SSLExtractor:
        if unknown:
            raise SemanticModelError(f"{name}: unknown option(s) {', '.join(sorted(unknown))}; valid: "
                                     "path, layer, chunk_frames, device")
        read_checkpoint(name, path, layer)  # fix-it errors before building the frozen config
        return SSLExtractor(name, SSLConfig(path=str(path), layer=int(layer), chunk_frames=chunk_frames,
                                            device=device))
    return build


build_w2v_bert = _factory("w2v-bert")   # rows of tokenmill/plugins.py
build_hubert = _factory("hubert")
