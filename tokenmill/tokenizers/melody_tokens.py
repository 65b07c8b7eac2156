"""Melody tokens: the RVQ (24 stages × 512) over melody window embeddings, per window and per crop.

docs/design.md §2. A record stores `melody_windows` float16 [W, 192] (4 s windows at a 1 s stride,
tokenizers/melody.py) and `melody` uint16 [W, S]: row w is the RVQ code of stored window w (the
float16 values, upcast), so a reader re-encoding `melody_windows` gets exactly the stored tokens.
Each 4 s window is its own unit: unlike MuLan's one M per crop, a crop's melody condition is the
sequence of the windows `melody.crop_window_indices` picks (3 for a 10 s crop at a 3 s hop), so
`crop_tokens` is a row selection of the stored tokens, with no RVQ at training time.

RVQ ↔ model, as for MuLan (tokenizers/mulan.py): an RVQ means something only for the model whose
windows it was fitted on. `load_codebook_for(model, codebook)` resolves the artifact (None: the
model's packaged one, when the model has a `default_codebook`) and `check_codebook` refuses another
dimension, or another model/weights when its card records them (`fit-codebook --stream melody`
writes `card.sources.melody = model.describe()`). Pure numpy; no Beam.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tokenmill.schemas import rates
from tokenmill.tokenizers.melody import MelodyError, MelodyModel, crop_window_indices

FIT_HINT = ("fit one on this model's window embeddings first: beam_runner.py fit-codebook --stream melody "
            "--melody_model {name} --input 'AUDIO_GLOB' --output DIR, then pass --melody_codebook DIR")


def window_tokens(windows: np.ndarray, rvq) -> np.ndarray:
    """uint16 [W, S]: the RVQ code of each window (float16 windows are upcast to float32 first)."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[0] < 1:
        raise MelodyError(f"melody windows must be [W >= 1, D], got shape {windows.shape}")
    return np.ascontiguousarray(rvq.encode(windows.astype(np.float32)), dtype=np.uint16)


def crop_tokens(tokens: np.ndarray, t0_s: float | Fraction, t1_s: float | Fraction,
                hop_s: int = rates.MELODY_CROP_HOP_S) -> np.ndarray:
    """uint16 [n, S]: the stored window tokens [W, S] of the windows standing for the crop [t0, t1)
    (n = the 4 s windows at a 3 s hop that fit in the crop, at least one)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise MelodyError(f"melody tokens must be [W, stages], got shape {tokens.shape}")
    return tokens[crop_window_indices(tokens.shape[0], t0_s, t1_s, hop_s)]


def crop_tokens_padded(tokens: np.ndarray, t0_s: float | Fraction, length_s: float | Fraction,
                       valid_s: float | Fraction, pad_id: int) -> np.ndarray:
    """uint16 [n, S], n = crop_window_count(length_s): the condition of a crop [t0, t0 + length) whose
    audio is real for `valid_s` seconds (a short track padded to the crop, or a hum shorter than the
    output). Position i stands for the window starting at t0 + 3i: it takes the stored window
    nearest that start (clipped to the last one) while t0 + 3i lies in the real audio, and `pad_id`
    in all S stages past it (no window there)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] < 1:
        raise MelodyError(f"melody tokens must be [W >= 1, stages], got shape {tokens.shape}")
    t0, length = Fraction(t0_s).limit_denominator(1_000_000), Fraction(length_s).limit_denominator(1_000_000)
    idx = crop_window_indices(tokens.shape[0], t0, t0 + length)
    out = tokens[idx].astype(np.uint16)
    starts = [i * rates.MELODY_CROP_HOP_S for i in range(len(idx))]
    out[[s >= Fraction(valid_s).limit_denominator(1_000_000) for s in starts]] = pad_id
    return out


def crop_window_count(length_s: float | Fraction, hop_s: int = rates.MELODY_CROP_HOP_S) -> int:
    """Windows a crop of `length_s` takes: 10 s → 3, 30 s → 9, under 7 s → 1."""
    return len(crop_window_indices(10**6, 0, length_s, hop_s))


def fit_hint(model: MelodyModel | str) -> str:
    return FIT_HINT.format(name=model if isinstance(model, str) else model.name)


def resolve_rvq_path(codebook: Any) -> Path:
    """`melody-<sha12>.safetensors`, its `.json` card, or a directory holding exactly one."""
    p = Path(codebook)
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if p.is_dir():
        found = sorted(p.glob("melody-*.safetensors"))
        if len(found) != 1:
            raise MelodyError(f"melody codebook {p}: expected exactly one melody-*.safetensors there, found "
                              f"{len(found)} ({', '.join(f.name for f in found) or 'none'}); pass the file itself")
        p = found[0]
    if not p.is_file():
        raise MelodyError(f"melody codebook {p} does not exist; pass the .safetensors written by "
                          "`beam_runner.py fit-codebook --stream melody`, or its directory")
    return p


def check_codebook(model: MelodyModel, rvq, source: Any = None) -> None:
    """Refuse an RVQ that cannot quantize `model`'s windows: another dimension, or (when its card
    records the model it was fitted on) another model or weights."""
    where = f" ({source})" if source is not None else ""
    if rvq.dim != model.dim:
        raise MelodyError(f"melody RVQ {rvq.id}{where} is {rvq.dim}-d but melody model {model.name!r} embeds in "
                          f"{model.dim}-d; {fit_hint(model)}")
    fitted = (rvq.card.get("sources") or {}).get("melody") if isinstance(rvq.card, dict) else None
    if isinstance(fitted, dict) and (fitted.get("name"), fitted.get("weights_sha256")) != (
            model.name, model.weights_sha256):
        raise MelodyError(
            f"melody RVQ {rvq.id}{where} was fitted on model {fitted.get('name')!r} with weights sha256 "
            f"{str(fitted.get('weights_sha256'))[:12]}…, but the model given is {model.name!r} with "
            f"{str(model.weights_sha256)[:12]}…; {fit_hint(model)}")


def load_codebook_for(model: MelodyModel, codebook: Any = None):
    """The RVQCodebook for `model`: `codebook` (file or directory), or the model's packaged one
    (`model.default_codebook`) when None. Checked against the model."""
    from tokenmill.tokenizers.rvq import RVQCodebook

    if codebook is None:
        default = getattr(model, "default_codebook", None)
        if default is None:
            raise MelodyError(f"melody model {model.name!r} has no packaged RVQ codebook; {fit_hint(model)}")
        if not Path(default).is_file():
            raise MelodyError(f"the packaged melody RVQ codebook {default} is missing: reinstall tokenmill, "
                              f"or {fit_hint(model)}")
        path = Path(default)
    else:
        path = resolve_rvq_path(codebook)
    rvq = RVQCodebook.load(path)
    check_codebook(model, rvq, path)
    return rvq


def hum_tokens(model: MelodyModel, rvq, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A hum (mono float32 at the model's rate) → (float16 windows [W, D], uint16 tokens [W, S]), the
    same cast and encoding `tokenize` applies, so a hum's tokens mean what the training data's do."""
    w16 = model.embed_windows(wave).astype(np.float16)
    return w16, window_tokens(w16, rvq)
