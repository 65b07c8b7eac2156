"""Melody conditioning at generation: a hum → melody tokens, and the tokens of each generation window.

`generate --text "..." --melody hum.wav` (MusicLM §6): the hum is decoded to 16 kHz mono, embedded
by the dataset's melody model (one window per second, 4 s long) and quantized by the dataset's
melody RVQ, the same float16 cast and encoding `tokenize` applies (melody_tokens.hum_tokens). Long
form: the semantic stage's window [s_w, s_w + W) reads the hum's windows at s_w, s_w + 3, ...
(`window_melody`, the training crops' rule with the hum's length as the real audio), so the melody
tokens follow the hum window by window. Without a hum a melody-conditioned stage reads pad ids (it
was trained on such crops: CropConfig.melody_dropout). Pure numpy, plus the tokenizers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenmill.errors import TokenmillError
from tokenmill.schemas import rates


class MelodyConditionError(TokenmillError, ValueError):
    """A hum cannot be turned into the checkpoints' melody tokens; the message names the fix."""


@dataclass(frozen=True)
class Hum:
    """A hum's melody tokens: uint16 [W, S] (window w = [w, w + 4) s of the hum), its length in quanta."""

    tokens: np.ndarray
    quanta: int
    source: str
    describe: dict[str, Any]


def takes_melody(layout) -> bool:
    return any(p.name == "melody" for p in layout.conditioning)


def window_melody(tokens: np.ndarray | None, start_q: int, window_q: int, valid_q: int, part, pad_id: int) -> np.ndarray:
    """uint16 [part.frames, S]: the melody condition of the generation window [start_q, start_q + window_q)
    from the hum's window tokens (None: no hum, all pad). Positions past the hum's end are pad."""
    from tokenmill.tokenizers.melody_tokens import crop_tokens_padded

    if tokens is None or start_q >= valid_q:
        return np.full((part.frames, part.levels), pad_id, dtype=np.uint16)
    out = crop_tokens_padded(tokens, start_q * rates.QUANTUM_S, window_q * rates.QUANTUM_S,
                             (valid_q - start_q) * rates.QUANTUM_S, pad_id)
    if out.shape != (part.frames, part.levels):
        raise MelodyConditionError(f"the stage reads {part.frames} melody windows x {part.levels} stages but a "
                                   f"{window_q * rates.QUANTUM_S} s window gives {out.shape}; the checkpoint's "
                                   "layout does not match the melody crop rule")
    return out


def load_hum(path: str, dataset: dict, *, model: str | None = None, model_path: str | None = None,
             codebook: str | None = None) -> Hum:
    """The hum at `path` → its melody tokens with the checkpoints' dataset's melody model and RVQ
    (its tokenize job's, unless overridden). Refuses another RVQ id or other model weights."""
    from tokenmill.tokenizers import audio
    from tokenmill.tokenizers.melody import MelodyError, build_melody
    from tokenmill.tokenizers.melody_tokens import hum_tokens, load_codebook_for

    want = (dataset.get("codebooks") or {}).get("melody")
    if want is None:
        raise MelodyConditionError("the checkpoints' dataset has no melody stream (tokenized without "
                                   "--melody_model), so no stage reads melody tokens; drop --melody")
    job = (dataset.get("job") or {}).get("melody") or {}
    name = model or job.get("model")
    try:
        kw = {"path": model_path if model_path is not None else job.get("path")}
        m = build_melody(name, **{k: v for k, v in kw.items() if v is not None})
        rvq = load_codebook_for(m, codebook if codebook is not None else job.get("codebook"))
    except (MelodyError, FileNotFoundError) as e:
        raise MelodyConditionError(f"cannot load the melody model and RVQ the dataset used: {e}; pass "
                                   "--melody_model/--melody_path/--melody_codebook") from None
    if rvq.id != want:
        raise MelodyConditionError(f"the melody RVQ here is {rvq.id} but the checkpoints were trained on {want} "
                                   f"tokens; pass --melody_codebook with the {want}.safetensors the dataset used")
    fitted = ((dataset.get("tokenizers") or {}).get("melody") or {}).get("model") or {}
    if fitted.get("weights_sha256") not in (None, m.weights_sha256):
        raise MelodyConditionError(f"the melody model here (weights {str(m.weights_sha256)[:12]}…) is not the "
                                   f"dataset's ({fitted['weights_sha256'][:12]}…); pass its --melody_path")
    try:
        with open(path, "rb") as f:
            segs = audio.prepare(f.read(), str(path), audio.AudioConfig(target_rates_hz=(m.sample_rate_hz,),
                                                                        max_segment_s=10**6, min_duration_s=0.04))
    except (OSError, audio.AudioError) as e:
        raise MelodyConditionError(f"--melody {path}: cannot read it as audio ({e})") from None
    if not segs:
        raise MelodyConditionError(f"--melody {path}: no audio in it (silent or shorter than 40 ms?)")
    seg = segs[0]
    _, tokens = hum_tokens(m, rvq, seg.waves[m.sample_rate_hz])
    return Hum(tokens, seg.n_quanta, str(path), {"model": m.describe(), "codebook_id": rvq.id})


def sidecar_entry(hum: Hum | None, windows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The sidecar's `melody`: the hum, its window tokens, and the tokens each semantic window read."""
    if hum is None:
        return None
    return {"wav": hum.source, "seconds": rates.seconds_of_quanta(hum.quanta),
            "model": hum.describe["model"]["name"], "weights_sha256": hum.describe["model"].get("weights_sha256"),
            "codebook_id": hum.describe["codebook_id"], "hum_window_tokens": hum.tokens.tolist(),
            "per_window": [{"index": w["index"], "start_s": w["start_s"], "melody_tokens": w.get("melody_tokens")}
                           for w in windows]}
