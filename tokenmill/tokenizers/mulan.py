"""MuLan: joint text/audio embeddings, the interface, the registry, the CLAP adapter, and tokens.

MusicLM conditions every stage on 12 MuLan tokens: from the audio during training, from the text
at inference, quantized by the *same* RVQ (``tokenizers/rvq.py``). docs/design.md §2:

Windows. ``embed_audio_windows(wave)`` returns one embedding per 10 s window at a 1 s stride:
W = ``rates.mulan_window_count(quanta)`` rows, window w covering [w, w + 10) s of the segment.
For a segment of at least 10 s every window lies inside the audio (the last one ends at the last
whole second; a trailing fraction of a second is in no window's own span). **Short tracks**
(< 10 s): one window, [0, 10) s, the audio followed by zeros (zero padding, not CLAP's default
"repeatpad": every back-end sees the same padded wave, and silence adds no musical content).

Embeddings are float32, L2-normalized, in the model's shared text/audio space. ``dim`` is the
model's native projection size: 128 for the built-in MuLan (MusicLM's size); a CLAP checkpoint
keeps its own (LAION CLAP: 512), since a fixed projection to 128 would only lose information and
the tokens are [n_stages] whatever D is. The RVQ is dimension-agnostic and records D; the manifest
records the MuLan model's ``describe()`` (dim included), so readers never assume 128. Pass
``expect_dim=128`` to refuse any other size.

Crops. ``crop_tokens(windows, t0, t1, rvq)`` gives M for [t0, t1) (times on the 40 ms grid). The
windows averaged are those that hear the most of the crop: the w < W maximizing the overlap
|[w, w + 10) ∩ [t0, t1)|, computed exactly in 40 ms quanta (ties all kept). This means:
  * a crop of >= 11 s, or of >= 10 s on whole seconds: exactly the windows lying inside it
    ({w : t0 <= w, w + 10 <= t1}, DESIGN §2's rule);
  * a crop shorter than 10 s (3 s fine crops): the windows containing the whole crop,
    {w : t1 - 10 <= w <= t0}, e.g. [4, 7) → windows 0..4; [27, 30) of a 30 s track → window 20;
  * a 10–11 s crop off the whole-second grid: the one or two windows nearest to it
    ([3.48, 13.48) → window 3; [3.52, 13.52) → window 4);
  * a short track (W = 1): its one window; a crop past the last window's end: window W - 1.
  (Rejected: "windows starting in the crop, plus the one containing t0" as the fallback: for a
  10 s crop off the second grid, the most common coarse crop, it averages 11 windows spanning
  20 s, half of them after the crop.)
The chosen windows are averaged, the mean is L2-normalized (text embeddings are unit-norm and
the RVQ is fit on unit-norm windows; the mean of unit vectors is shorter), then RVQ-encoded.
``segment_tokens`` is the crop [0, end) of the whole segment.

RVQ ↔ model. An RVQ is only meaningful for the model whose windows it was fitted on.
``load_codebook_for(model, codebook)`` resolves the artifact (None: the model's packaged one;
only the packaged built-in weights have one) and ``check_codebook`` refuses another dimension, or
other weights when the card records them (``fit-codebook --stream mulan`` writes
``card.sources.mulan = model.describe()``). ``load_text_tokenizer(model, path, codebook)`` gives
trainers (and ``beam_runner.py embed-text``) the text → M_T callable, with no Beam import.
"""
from __future__ import annotations

import abc
import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tokenmill import plugins
from tokenmill.errors import TokenmillError
from tokenmill.schemas import rates
from tokenmill.tokenizers import windowing
from tokenmill.tokenizers.codec import sha256_of_files
from tokenmill.tokenizers.windowing import l2_normalize


class MulanError(TokenmillError, ValueError):
    """A MuLan model cannot be built or loaded, or was given input it cannot embed."""


def _l2n(x: np.ndarray) -> np.ndarray:
    return l2_normalize(x)


def window_spans(n_samples: int, sample_rate_hz: int) -> list[tuple[int, int]]:
    """Sample ranges [a, a + 10 s) of the W windows of a wave (may run past n for short tracks)."""
    return windowing.window_spans(n_samples, sample_rate_hz, rates.MULAN_WINDOW_S, rates.MULAN_STRIDE_S)


def cut_windows(wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """float32 [W, 10 s · sr]: the windows of `wave`, zero-padded past its end."""
    return windowing.cut_windows(wave, sample_rate_hz, rates.MULAN_WINDOW_S, rates.MULAN_STRIDE_S)


class MulanModel(abc.ABC):
    """A joint text/audio embedding model. Back-ends set the class attributes and implement
    `_embed_windows` (batched, fixed-length windows) and `_embed_text`."""

    name: str
    dim: int = rates.MULAN_DIM
    sample_rate_hz: int
    window_s: int = rates.MULAN_WINDOW_S
    stride_s: int = rates.MULAN_STRIDE_S
    weights_sha256: str | None = None
    batch_size: int = 8
    default_codebook: Path | None = None  # the packaged RVQ fitted on these exact weights, if any

    @abc.abstractmethod
    def _embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """float32 [B, window_s · sr] → float32 [B, dim] (normalization is done by the caller)."""

    @abc.abstractmethod
    def _embed_text(self, texts: list[str]) -> np.ndarray:
        """list of B strings → float32 [B, dim]."""

    def _window_rows(self, wave: np.ndarray):
        """Each window's model input, cut lazily: its samples, float32 [window_s · sr] (the
        built-in model gives its slice of the segment's log-mel instead: windowing.py)."""
        return windowing.wave_window_rows(wave, self.sample_rate_hz, self.window_s, self.stride_s)

    def _embed_rows(self, rows: np.ndarray) -> np.ndarray:
        """A forward pass of exactly `batch_size` rows of `_window_rows` → float32 [batch_size, dim]."""
        return self._embed_windows(rows)

    def _check_wave(self, wave: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave)
        if wave.ndim != 1 or wave.size == 0:
            raise MulanError(f"{self.name}: expected a non-empty mono wave [n], got shape {wave.shape}")
        if not np.issubdtype(wave.dtype, np.floating):
            raise MulanError(f"{self.name}: expected float samples in [-1, 1], got {wave.dtype}")
        return np.ascontiguousarray(wave, dtype=np.float32)

    def embed_audio_windows(self, wave: np.ndarray) -> np.ndarray:
        """Mono float32 [n] at `sample_rate_hz` → float32 [W, dim], L2-normalized (module docstring)."""
        return self.embed_audio_windows_batch([wave])[0]

    def embed_audio_windows_batch(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Several mono waves → one float32 [W_i, dim] per wave. The windows of all waves share
        forward passes of exactly `batch_size` windows (short tracks have one window each, so
        batching across tracks is what fills a pass; the last pass is padded with zero rows, so a
        window's bits never depend on its batch: windowing.py), and are cut lazily: memory holds
        one pass, not all W (a 300 s segment at 48 kHz has 291 windows = 0.56 GB of float32)."""
        checked = [self._check_wave(w) for w in waves]
        out, counts = windowing.embed_windows_batched(
            checked, self._embed_rows, sample_rate_hz=self.sample_rate_hz, window_s=self.window_s,
            stride_s=self.stride_s, batch_size=self.batch_size, dim=self.dim, rows_of=self._window_rows)
        if out.shape != (sum(counts), self.dim):
            raise MulanError(f"{self.name}: gave embeddings {out.shape}, expected {(sum(counts), self.dim)}")
        return np.split(_l2n(out), np.cumsum(counts)[:-1]) if checked else []

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """list of B captions → float32 [B, dim], L2-normalized, in the audio windows' space."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or len(texts) == 0:
            raise MulanError(f"{self.name}: embed_text takes a non-empty list of str, got {texts!r:.80}")
        out = np.asarray(self._embed_text(list(texts)), dtype=np.float32)
        if out.shape != (len(texts), self.dim):
            raise MulanError(f"{self.name}: gave text embeddings {out.shape}, expected {(len(texts), self.dim)}")
        return _l2n(out)

    def config_dict(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        """The manifest's entry: name, config, weights hash, rate, window/stride, dim, padding
        policy, rows per forward pass."""
        return {"name": self.name, "config": self.config_dict(), "weights_sha256": self.weights_sha256,
                "sample_rate_hz": self.sample_rate_hz, "dim": self.dim, "window_s": self.window_s,
                "stride_s": self.stride_s, "short_track_policy": "one window, zero-padded to 10 s",
                # every forward pass has exactly this many rows (windowing.py): another size may
                # change the windows' last float bits, so it is recorded with them
                "pass_rows": self.batch_size}


# ---- tokens ------------------------------------------------------------------------------------

def crop_window_indices(n_windows: int, t0_s: float | Fraction, t1_s: float | Fraction) -> np.ndarray:
    """int64 indices of the windows averaged for the crop [t0, t1) (rule in the module docstring)."""
    q0, q1 = rates.quanta_of_seconds(t0_s), rates.quanta_of_seconds(t1_s)
    if not 0 <= q0 < q1:
        raise MulanError(f"crop [{t0_s}, {t1_s}) must satisfy 0 <= t0 < t1")
    if n_windows < 1:
        raise MulanError("a segment has at least one MuLan window")
    qps, win_q = rates.QUANTA_PER_S, rates.MULAN_WINDOW_S * rates.QUANTA_PER_S
    start_q = np.arange(n_windows, dtype=np.int64) * (rates.MULAN_STRIDE_S * qps)
    overlap = np.minimum(start_q + win_q, q1) - np.maximum(start_q, q0)
    best = int(overlap.max())
    if best <= 0:                      # the crop starts after the last window ends
        return np.array([n_windows - 1], dtype=np.int64)
    return np.flatnonzero(overlap == best).astype(np.int64)


def pooled_embedding(windows: np.ndarray, t0_s, t1_s) -> np.ndarray:
    """float32 [D]: L2-normalized mean of the crop's windows (float16 windows are upcast first)."""
    windows = np.asarray(windows)
    if windows.ndim != 2:
        raise MulanError(f"windows must be [W, D], got shape {windows.shape}")
    idx = crop_window_indices(windows.shape[0], t0_s, t1_s)
    return _l2n(windows[idx].astype(np.float32).mean(axis=0, dtype=np.float64))


def crop_tokens(windows: np.ndarray, t0_s, t1_s, rvq) -> np.ndarray:
    """uint16 [n_stages]: M for the crop [t0, t1) of a segment whose window embeddings are `windows`."""
    return rvq.encode(pooled_embedding(windows, t0_s, t1_s)[None])[0]


def segment_tokens(windows: np.ndarray, rvq) -> np.ndarray:
    """uint16 [n_stages]: the record's `mulan` field, M over all W windows of the segment (the crop
    [0, end) of a whole segment selects every window under the rule above)."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[0] < 1:
        raise MulanError(f"windows must be [W >= 1, D], got shape {windows.shape}")
    return rvq.encode(_l2n(windows.astype(np.float32).mean(axis=0, dtype=np.float64))[None])[0]


def text_tokens(model: MulanModel, rvq, texts: list[str]) -> np.ndarray:
    """uint16 [B, n_stages]: M_T, the text embeddings quantized by the audio tokens' RVQ."""
    if rvq.dim != model.dim:
        raise MulanError(f"RVQ {rvq.id} is {rvq.dim}-d but MuLan model {model.name!r} embeds in "
                         f"{model.dim}-d; fit the RVQ on this model's window embeddings")
    return rvq.encode(model.embed_text(texts))


# ---- the RVQ that goes with a model, and text tokens for trainers -----------------------------

FIT_HINT = ("fit one on this model's window embeddings first: beam_runner.py fit-codebook --stream mulan "
            "--mulan_model {name}{path} --input 'AUDIO_GLOB' --output DIR, then pass --mulan_codebook DIR")


def fit_hint(model: MulanModel | str, path: Any = None) -> str:
    """The fit-codebook command line that makes the missing or mismatched RVQ for `model`."""
    name = model if isinstance(model, str) else model.name
    if path is None and not isinstance(model, str):
        path = getattr(model, "path", None)
    return FIT_HINT.format(name=name, path=f" --mulan_path {path}" if path is not None else "")


def resolve_rvq_path(codebook: Any) -> Path:
    """A local RVQ artifact: ``<id>.safetensors``, its ``.json`` card, or a directory holding
    exactly one ``mulan-*.safetensors``."""
    p = Path(codebook)
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if p.is_dir():
        found = sorted(p.glob("mulan-*.safetensors"))
        if len(found) != 1:
            raise MulanError(f"MuLan codebook {p}: expected exactly one mulan-*.safetensors there, found "
                             f"{len(found)} ({', '.join(f.name for f in found) or 'none'}); pass the file itself")
        p = found[0]
    if not p.is_file():
        raise MulanError(f"MuLan codebook {p} does not exist; pass the .safetensors written by "
                         "`beam_runner.py fit-codebook --stream mulan`, or its directory")
    return p


def check_codebook(model: MulanModel, rvq, source: Any = None) -> None:
    """Refuse an RVQ that cannot quantize `model`'s embeddings: another dimension, or (when its
    card records the model it was fitted on) other weights; the tokens would silently mean
    nothing. `source` names the file in the message."""
    where = f" ({source})" if source is not None else ""
    if rvq.dim != model.dim:
        raise MulanError(f"MuLan RVQ {rvq.id}{where} is {rvq.dim}-d but MuLan model {model.name!r} embeds in "
                         f"{model.dim}-d; {fit_hint(model)}")
    fitted = (rvq.card.get("sources") or {}).get("mulan") if isinstance(rvq.card, dict) else None
    if isinstance(fitted, dict) and (fitted.get("name"), fitted.get("weights_sha256")) != (
            model.name, model.weights_sha256):
        raise MulanError(
            f"MuLan RVQ {rvq.id}{where} was fitted on model {fitted.get('name')!r} with weights sha256 "
            f"{str(fitted.get('weights_sha256'))[:12]}…, but the model given is {model.name!r} with "
            f"{str(model.weights_sha256)[:12]}…; {fit_hint(model)}")


def load_codebook_for(model: MulanModel, codebook: Any = None):
    """The RVQCodebook for `model`: `codebook` (file or directory), or the model's packaged one
    when `codebook` is None (only the packaged default built-in has one). Checked against the model."""
    from tokenmill.tokenizers.rvq import RVQCodebook

    if codebook is None:
        if model.default_codebook is None:
            raise MulanError(f"MuLan model {model.name!r} has no packaged RVQ codebook (only the packaged "
                             f"default built-in model has one); {fit_hint(model)}")
        if not Path(model.default_codebook).is_file():
            raise MulanError(f"the packaged MuLan RVQ codebook {model.default_codebook} is missing: reinstall "
                             f"tokenmill, or {fit_hint(model)}")
        path = Path(model.default_codebook)
    else:
        path = resolve_rvq_path(codebook)
    rvq = RVQCodebook.load(path)
    check_codebook(model, rvq, path)
    return rvq


class TextTokenizer:
    """Captions → MuLan text tokens M_T, uint16 [B, n_stages]: the same model and RVQ as a
    dataset's audio tokens (check `describe()` against the manifest's tokenizers.mulan)."""

    def __init__(self, model: MulanModel, rvq):
        check_codebook(model, rvq)
        self.model, self.rvq = model, rvq

    def __call__(self, texts: list[str]) -> np.ndarray:
        return text_tokens(self.model, self.rvq, texts)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model.describe(), "codebook_id": self.rvq.id,
                "n_stages": self.rvq.n_stages, "k": self.rvq.k, "dim": self.rvq.dim}


def load_text_tokenizer(model: str = "mulan", path: Any = None, codebook: Any = None,
                        **config: Any) -> TextTokenizer:
    """Build the MuLan model (`build_mulan(model, path=path, **config)`; path None = packaged
    default for 'mulan') and its RVQ (`codebook`: file or directory; None = the packaged one, for
    the packaged default model only). No Beam: trainers and `beam_runner.py embed-text` use it."""
    kw = dict(config)
    if path is not None:
        kw["path"] = path
    m = build_mulan(model, **kw)
    return TextTokenizer(m, load_codebook_for(m, codebook))


# ---- registry ----------------------------------------------------------------------------------

def register_mulan(name: str) -> Callable:
    """Decorator for a user's own MuLan-like back-end: a row in the plug-in table (tokenmill/plugins.py)."""
    def deco(factory):
        plugins.register("mulan", name, factory)
        return factory
    return deco


def known_mulan() -> list[str]:
    return plugins.names("mulan")


def build_mulan(name: str, **config: Any) -> MulanModel:
    """Build a MuLan back-end by name (a row of tokenmill/plugins.py): 'clap' (adapter; `path` = a
    transformers save_pretrained directory holding the model and its processor), 'mulan' (built-in;
    `path` = a weights file, default the packaged one)."""
    if name not in plugins.TABLE["mulan"]:
        raise MulanError(f"unknown MuLan model {name!r}; known: {', '.join(known_mulan())}")
    return plugins.resolve("mulan", name)(**config)


# ---- CLAP adapter ------------------------------------------------------------------------------

class ClapMulan(MulanModel):
    """transformers `ClapModel` + `ClapProcessor` from one save_pretrained directory (nothing is
    downloaded). Audio: the caller resamples to the feature extractor's `sampling_rate` (48 kHz for
    LAION CLAP); windows are exactly `max_length_s` = 10 s, so CLAP never crops or pads them itself.
    Truncation mode follows the model, not the processor file: 'rand_trunc' (one mel channel) for
    unfused models, 'fusion' (four stacked copies) for fused ones, with `is_longer` forced to False;
    the feature extractor would otherwise flag one random clip of a batch as longer, which makes
    a window's embedding depend on its batch. Embeddings: `get_*_features(...).pooler_output`,
    the projected, L2-normalized vectors."""

    name = "clap"

    def __init__(self, path: Any = None, device: str = "cpu", batch_size: int = 8,
                 max_text_tokens: int | None = None, expect_dim: int | None = None, **unknown: Any) -> None:
        import torch
        import transformers

        if unknown:
            raise MulanError(f"clap: unknown option(s) {', '.join(sorted(unknown))}")
        if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
            raise MulanError(f"clap: device {device!r} is not available here; pass device='cpu'")
        if path is None or not Path(path).is_dir() or not (Path(path) / "config.json").is_file():
            raise MulanError(f"clap: needs path=DIR, a transformers save_pretrained directory of a CLAP "
                             f"model and its ClapProcessor; got {path!r}")
        d = Path(path)
        model_type = json.loads((d / "config.json").read_text()).get("model_type")
        if model_type != "clap":
            raise MulanError(f"clap: {d / 'config.json'} says model_type {model_type!r}, expected 'clap'")
        weights = sorted(d.glob("*.safetensors")) or sorted(d.glob("*.bin"))
        if not weights:
            raise MulanError(f"clap: {d} has config.json but no *.safetensors or *.bin weights")
        try:
            self.model = transformers.ClapModel.from_pretrained(str(d), dtype=torch.float32).to(device).eval()
            self.processor = transformers.ClapProcessor.from_pretrained(str(d))
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            raise MulanError(f"clap: loading {d} failed ({e}); it needs the model and the ClapProcessor "
                             "files (preprocessor_config.json, tokenizer files) from save_pretrained") from e
        self.device, self.batch_size, self.path = device, int(batch_size), d
        self.weights_sha256 = sha256_of_files(weights)
        self.max_text_tokens = max_text_tokens
        fe = self.processor.feature_extractor
        self.sample_rate_hz = int(fe.sampling_rate)
        self.dim = int(self.model.config.projection_dim)
        if expect_dim is not None and self.dim != int(expect_dim):
            raise MulanError(f"clap: {d} projects to {self.dim}-d but {expect_dim}-d was asked for; use a "
                             f"CLAP trained with projection_dim={expect_dim}, or drop expect_dim to keep "
                             f"the native {self.dim}-d space (the RVQ adapts to any D)")
        window_samples = self.window_s * self.sample_rate_hz
        if int(fe.nb_max_samples) != window_samples:
            raise MulanError(f"clap: the feature extractor's max_length_s is {fe.nb_max_samples / self.sample_rate_hz:g} s, "
                             f"not the {self.window_s} s MuLan window; this CLAP was trained on other clip lengths")
        if Fraction(self.sample_rate_hz, rates.QUANTA_PER_S).denominator != 1:
            raise MulanError(f"clap: {self.sample_rate_hz} Hz has no whole number of samples per 40 ms")
        self.fused = bool(getattr(self.model.config.audio_config, "enable_fusion", False))

    def _embed_windows(self, windows: np.ndarray) -> np.ndarray:
        import torch

        fe = self.processor.feature_extractor
        inp = fe(list(windows), sampling_rate=self.sample_rate_hz, return_tensors="pt",
                 truncation="fusion" if self.fused else "rand_trunc")
        feats = inp["input_features"].to(self.device)
        is_longer = torch.zeros((feats.shape[0], 1), dtype=torch.bool, device=self.device)
        with torch.inference_mode():
            out = self.model.get_audio_features(input_features=feats, is_longer=is_longer).pooler_output
        return out.float().cpu().numpy()

    def _embed_text(self, texts: list[str]) -> np.ndarray:
        import torch

        tok = self.processor.tokenizer
        max_len = self.max_text_tokens or min(int(self.model.config.text_config.max_position_embeddings) - 2,
                                              int(getattr(tok, "model_max_length", 10**9)))
        parts = []
        for i in range(0, len(texts), self.batch_size):
            inp = tok(texts[i:i + self.batch_size], padding=True, truncation=True, max_length=max_len,
                      return_tensors="pt").to(self.device)
            with torch.inference_mode():
                out = self.model.get_text_features(input_ids=inp["input_ids"],
                                                   attention_mask=inp["attention_mask"]).pooler_output
            parts.append(out.float().cpu().numpy())
        return np.concatenate(parts, axis=0)

    def config_dict(self) -> dict[str, Any]:
        return {"transformers_class": "ClapModel", "projection_dim": self.dim, "enable_fusion": self.fused,
                "truncation": "fusion" if self.fused else "rand_trunc",
                "feature_size": int(self.processor.feature_extractor.feature_size)}

