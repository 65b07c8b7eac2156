"""Text → music with the three stage checkpoints: the MusicLM chain (MusicLM §3.3, AudioLM §4).

  text ──MuLan text tower + RVQ──▶ M_T   uint16 [n_stages]       (the dataset's mulan codebook)
  M_T ──semantic stage, T = 1.0──▶ S     uint16 [T_s]            (built-in: 25 Hz)
  M_T, S ──coarse stage, T = 0.95──▶ A_c uint16 [L_c, T_a]       (built-in: levels 1–4, 50 Hz)
  A_c ──fine stage, T = 0.4──▶ A_f       uint16 [L_f, T_a]       (built-in: levels 5–12)
  A_c, A_f stacked in level order ──codec.decode──▶ float32 wave ──▶ WAV (PCM_16) + JSON sidecar

Window arithmetic. Everything is counted in 40 ms quanta (``schemas/rates.py``); a stream's
frames are quanta × its frames per quantum (``StreamLayout`` of the checkpoints' dataset: 1 for
25 Hz semantic, 2 for 50 Hz SoundStream, 3 for 75 Hz EnCodec). With

  N = seconds × 25                      output length (``seconds`` must lie on the 40 ms grid)
  W = target frames / frames per quantum of the checkpoint's layout (its training crop:
      semantic 30 s = 750, coarse 10 s = 250, fine 3 s = 75 quanta)
  S = max(1, floor(W × stride_fraction))  stride (0.5: 375 = 15 s, 125 = 5 s, 37 = 1.48 s)

each stage generates its target stream window by window:

  N <= W  one window [0, N): the model reads the conditioning of [0, W), padded past N with the
          layout's pad id (the layout of a short training crop), and generates N quanta of targets.
  N >  W  n = 1 + ceil((N - W) / S) windows; window w spans [s_w, s_w + W) with
          s_w = min(w · S, N - W)  (the last one is moved back to end at N: no window is padded).
          Window 0 generates [0, W). Window w >= 1 is prompted with the tokens already generated in
          [s_w, e_{w-1}), e_{w-1} = s_{w-1} + W the previous window's end (W - S quanta: the previous
          window's tail; more for a moved-back last window), and generates [e_{w-1}, s_w + W).

The prompt of a window is [BOS, conditioning of [s_w, s_w + W), target ids of [s_w, e_{w-1})]:
the coarse stage reads S of the span (and M), the fine stage A_c of the span (and M if its
layout has it), the semantic stage M only. Semantic, 60 s: N = 1500, W = 750, S = 375, windows
start at 0, 375, 750; they generate 0–30 s, then 30–45 s after a 15–30 s prompt, then 45–60 s
after a 30–45 s prompt (the paper's 30 s windows, 15 s stride).

Randomness: window w of stage k (semantic 0, coarse 1, fine 2) samples the whole batch with one
``torch.Generator`` seeded by ``SeedSequence([seed, k, w])``, nothing else, so the same seed and
batch give the same tokens and WAV bytes (on one device and torch build). Temperature 0 is greedy.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenmill.errors import TokenmillError
from tokenmill.schemas import rates
from tokenmill.training.crops import STAGES, CropError, StreamLayout
from tokenmill.training.stages import StageLayout

log = logging.getLogger(__name__)

DEFAULT_TEMPERATURES = {"semantic": 1.0, "coarse": 0.95, "fine": 0.4}  # MusicLM §4


class GenerateError(TokenmillError, ValueError):
    """Generation cannot start or go on; the message names the input and the fix."""


@dataclass(frozen=True)
class GenerateConfig:
    seconds: float = 10.0  # output length, on the 40 ms grid
    batch: int = 1  # samples per prompt (one WAV each)
    seed: int = 0
    temperature_semantic: float = DEFAULT_TEMPERATURES["semantic"]
    temperature_coarse: float = DEFAULT_TEMPERATURES["coarse"]
    temperature_fine: float = DEFAULT_TEMPERATURES["fine"]
    top_k: int | None = None  # shared; None = the whole (allowed) distribution
    top_k_semantic: int | None = None  # per-stage override of top_k
    top_k_coarse: int | None = None
    top_k_fine: int | None = None
    stride_fraction: float = 0.5  # window stride / window length; prompt = the rest
    device: str = "cpu"  # the stage models'; the codec decodes on the CPU

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise GenerateError(f"seconds must be > 0, got {self.seconds}")
        self.quanta  # noqa: B018 -- raises the grid message
        if int(self.batch) < 1:
            raise GenerateError(f"batch must be >= 1, got {self.batch}")
        for stage in STAGES:
            t, k = self.temperature(stage), self.top_k_of(stage)
            if not (t >= 0 and math.isfinite(t)):
                raise GenerateError(f"temperature_{stage} must be a finite number >= 0 (0 = greedy), got {t}")
            if k is not None and int(k) < 1:
                raise GenerateError(f"top_k for the {stage} stage must be >= 1 (or unset), got {k}")
        if not 0 < self.stride_fraction <= 1:
            raise GenerateError(f"stride_fraction must be in (0, 1] (0.5 = half-window stride, as the paper), "
                                f"got {self.stride_fraction}")

    @property
    def quanta(self) -> int:
        try:
            return rates.quanta_of_seconds(self.seconds)
        except ValueError as e:
            raise GenerateError(f"seconds={self.seconds}: {e}") from None

    def temperature(self, stage: str) -> float:
        return float(getattr(self, f"temperature_{stage}"))

    def top_k_of(self, stage: str) -> int | None:
        k = getattr(self, f"top_k_{stage}")
        return self.top_k if k is None else k


@dataclass(frozen=True)
class StageModel:
    """A loaded stage: `model` is a Transformer (or anything with its ``generate``)."""

    model: Any
    layout: StageLayout
    state: dict[str, Any]
    path: str = ""

    @property
    def step(self) -> int | None:
        return self.state.get("step")


@dataclass(frozen=True)
class Window:
    index: int
    start_q: int  # s_w: the span [start_q, start_q + W) the conditioning covers
    prompt_end_q: int  # e_{w-1}: targets in [start_q, prompt_end_q) are the prompt
    end_q: int  # new targets in [prompt_end_q, end_q)


@dataclass
class Generated:
    mulan: np.ndarray | None  # uint16 [n_stages]
    semantic: np.ndarray  # uint16 [B, T_s]
    coarse: np.ndarray  # uint16 [B, L_c, T_a]
    fine: np.ndarray  # uint16 [B, L_f, T_a]
    windows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Music:
    """What ``generate_music`` made: the sidecar written next to the WAVs, the tokens, the waves."""

    sidecar: dict[str, Any]
    tokens: Generated
    waves: list[np.ndarray]


# ---- checkpoints ------------------------------------------------------------------------------

def stage_paths(checkpoints: str | Path | None = None, **paths: str | Path | None) -> dict[str, Path]:
    """{stage: path}: CHECKPOINTS/<stage> unless `paths[stage]` names one."""
    out = {}
    for stage in STAGES:
        p = paths.get(stage)
        if p is None and checkpoints is None:
            raise GenerateError(f"no {stage} checkpoint: pass --checkpoints DIR (holding semantic/, coarse/, "
                                f"fine/) or --{stage} PATH")
        out[stage] = Path(p) if p is not None else Path(checkpoints) / stage
    return out


def load_stages(paths: dict[str, str | Path], device: str = "cpu") -> dict[str, StageModel]:
    """Load the three checkpoints (``checkpoint.load_model``) and check they fit together."""
    from tokenmill.training.checkpoint import load_model

    stages = {}
    for stage in STAGES:
        model, layout, state = load_model(paths[stage], device)
        stages[stage] = StageModel(model, layout, state, str(paths[stage]))
    check_stages(stages)
    return stages


def check_stages(stages: dict[str, StageModel]) -> StreamLayout:
    """Refuse checkpoints that are not one semantic, one coarse and one fine stage trained on the
    same tokenizers; returns the dataset's stream layout."""
    if set(stages) != set(STAGES):
        raise GenerateError(f"generation needs the stages {STAGES}, got {sorted(stages)}")
    for stage, sm in stages.items():
        got = {sm.layout.stage, sm.state.get("stage")}
        if got != {stage}:
            raise GenerateError(f"the checkpoint given as the {stage} stage ({sm.path}) is a "
                                f"{'/'.join(sorted(map(str, got)))} stage checkpoint; pass the {stage} "
                                f"trainer's --output directory as --{stage}")
        if not isinstance(sm.state.get("dataset"), dict):
            raise GenerateError(f"{sm.path}: state.json has no dataset entry (tokenizers, codebooks, streams); "
                                "it was not written by tokenmill's stage trainer")
    ref = stages["semantic"]
    for key in ("codebooks", "tokenizers", "streams"):
        for stage in ("coarse", "fine"):
            a, b = ref.state["dataset"].get(key), stages[stage].state["dataset"].get(key)
            if a != b:
                diff = sorted(k for k in set(a or {}) | set(b or {}) if (a or {}).get(k) != (b or {}).get(k))
                raise GenerateError(
                    f"the semantic ({ref.path}) and {stage} ({stages[stage].path}) checkpoints were trained "
                    f"on datasets with different {key} (differing: {', '.join(diff) or key}); their tokens "
                    f"mean different things: use three checkpoints trained on one dataset, or retrain the "
                    f"{stage} stage on the semantic stage's dataset")
    try:
        streams = StreamLayout.from_manifest(ref.state["dataset"])
    except CropError as e:
        raise GenerateError(f"{ref.path}: {e}") from None
    want = {"semantic": 1, "coarse": len(streams.coarse_levels), "fine": len(streams.fine_levels)}
    for sm in stages.values():
        for part in sm.layout.parts:
            if part.name in want and part.levels != want[part.name]:
                raise GenerateError(f"{sm.path}: its {part.name} part has {part.levels} levels but the dataset's "
                                    f"streams give {want[part.name]}; the checkpoint was trained with another "
                                    "coarse/fine split than the manifest's: retrain it with the manifest's split")
    for stage, sm in stages.items():
        spans = {p.name: _part_quanta(sm, p, streams) for p in sm.layout.parts if p.name not in ("mulan", "melody")}
        if len(set(spans.values())) != 1:
            raise GenerateError(f"{sm.path}: the parts of the {stage} stage span different times {spans} "
                                "(quanta); its layout is not one of a training crop")
    return streams


def _fpq(name: str, streams: StreamLayout) -> int:
    """Frames per 40 ms quantum of a part's stream."""
    return (streams.semantic if name == "semantic" else streams.acoustic).frames_per_quantum


def _part_quanta(sm: StageModel, part, streams: StreamLayout) -> int:
    f = _fpq(part.name, streams)
    if part.frames % f:
        raise GenerateError(f"{sm.path}: {part.frames} {part.name} frames are not whole 40 ms quanta of "
                            f"{f} frames; the checkpoint does not fit the dataset's rates")
    return part.frames // f


def window_quanta(sm: StageModel, streams: StreamLayout) -> int:
    """W: the stage's training window in quanta (from its layout's target frames)."""
    return _part_quanta(sm, sm.layout.target, streams)


def window_plan(total_q: int, window_q: int, stride_q: int) -> list[Window]:
    """The windows of the module docstring for N = total_q, W = window_q, S = stride_q."""
    if total_q < 1 or window_q < 1 or not 1 <= stride_q <= window_q:
        raise GenerateError(f"bad window plan: N={total_q}, W={window_q}, S={stride_q} quanta")
    if total_q <= window_q:
        return [Window(0, 0, 0, total_q)]
    n = 1 + -(-(total_q - window_q) // stride_q)
    out, prev_end = [], 0
    for w in range(n):
        s = min(w * stride_q, total_q - window_q)
        out.append(Window(w, s, max(prev_end, s), s + window_q))
        prev_end = s + window_q
    return out


def window_seed(seed: int, stage: str, window: int) -> int:
    """The torch seed of one stage window: SeedSequence([seed, stage number, window]), 63 bits."""
    state = np.random.SeedSequence([int(seed), STAGES.index(stage), int(window)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))


# ---- token generation -------------------------------------------------------------------------

def _span(a: np.ndarray, f0: int, n: int, pad: int) -> np.ndarray:
    """Frames [f0, f0 + n) of a [..., T] stream, padded with `pad` past T."""
    out = np.full(a.shape[:-1] + (n,), pad, dtype=np.uint16)
    part = a[..., f0:f0 + n]
    out[..., :part.shape[-1]] = part
    return out


def run_stage(sm: StageModel, streams: StreamLayout, cond: dict[str, np.ndarray], cfg: GenerateConfig,
              batch: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Generate one stage's target stream for cfg.seconds, window by window. `cond` holds the
    conditioning streams for the whole length with a batch axis (mulan [B, n_stages], semantic
    [B, T_s], coarse [B, L_c, T_a]; melody: the hum's window tokens [B, W, S] with melody_q [B], its
    length in quanta, or absent: pad). → (uint16 [B, levels, frames], the windows as dicts)."""
    import torch

    from tokenmill.training.melody_cond import window_melody

    layout, stage = sm.layout, sm.layout.stage
    tgt = layout.target
    for part in layout.conditioning:
        if part.name not in cond and part.name != "melody":
            raise GenerateError(f"the {stage} stage ({sm.path}) is conditioned on {part.name} tokens, "
                                "which were not given (no text prompt?)")
    total_q, window_q = cfg.quanta, window_quanta(sm, streams)
    plan = window_plan(total_q, window_q, max(1, int(window_q * cfg.stride_fraction)))
    fpq = _fpq(tgt.name, streams)
    out = np.zeros((batch, tgt.levels, total_q * fpq), dtype=np.uint16)
    allowed = torch.from_numpy(layout.allowed()).to(cfg.device)
    done = []
    for win in plan:
        t0 = time.monotonic()
        p0, p1, f1 = win.start_q * fpq, win.prompt_end_q * fpq, win.end_q * fpq
        prompt_part = layout.with_frames(**{tgt.name: p1 - p0}).target
        rows = []
        for b in range(batch):
            given = {}
            for part in layout.conditioning:
                if part.name == "melody":
                    hum = cond.get("melody")
                    given["melody"] = window_melody(None if hum is None else hum[b], win.start_q, window_q,
                                                    0 if hum is None else int(cond["melody_q"][b]), part, layout.pad_id)
                    continue
                src = cond[part.name][b]
                given[part.name] = src if part.name == "mulan" else _span(
                    src, win.start_q * _fpq(part.name, streams), part.frames, layout.pad_id)
            rows.append(np.concatenate([layout.prefix(**given), layout.part_ids(prompt_part, out[b, :, p0:p1])]))
        prompt = torch.from_numpy(np.stack(rows)).to(cfg.device)
        seed = window_seed(cfg.seed, stage, win.index)
        gen = torch.Generator(device=cfg.device).manual_seed(seed)
        ids = sm.model.generate(prompt, (f1 - p1) * tgt.levels, temperature=cfg.temperature(stage),
                                top_k=cfg.top_k_of(stage), generator=gen, allowed=allowed)
        new = layout.target_tokens(ids[:, prompt.shape[1]:].cpu().numpy())
        out[:, :, p1:f1] = new.reshape(batch, tgt.levels, f1 - p1)
        done.append({"index": win.index, "start_s": rates.seconds_of_quanta(win.start_q),
                     "prompt_s": rates.seconds_of_quanta(win.prompt_end_q - win.start_q),
                     "new_s": rates.seconds_of_quanta(win.end_q - win.prompt_end_q),
                     "prompt_frames": p1 - p0, "new_frames": f1 - p1, "seed": seed,
                     **({"melody_tokens": given["melody"].tolist()} if "melody" in given else {})})
        log.info("%s stage: window %d/%d, %.2f-%.2f s new after a %.2f s prompt (%d ids) in %.1f s", stage,
                 win.index + 1, len(plan), rates.seconds_of_quanta(win.prompt_end_q),
                 rates.seconds_of_quanta(win.end_q), done[-1]["prompt_s"], (f1 - p1) * tgt.levels,
                 time.monotonic() - t0)
    return out, done


def generate_tokens(stages: dict[str, StageModel], mulan: np.ndarray | None, cfg: GenerateConfig,
                    hum=None) -> Generated:
    """M (uint16 [n_stages], or None for stages without M) → S → A_c → A_f for cfg.seconds.
    `hum` (melody_cond.Hum): the melody tokens of a melody-conditioned stage (None: pad)."""
    streams = check_stages(stages)
    b = int(cfg.batch)
    cond: dict[str, np.ndarray] = {}
    if hum is not None:
        cond["melody"] = np.broadcast_to(hum.tokens, (b, *hum.tokens.shape))
        cond["melody_q"] = np.full(b, hum.quanta)
    if mulan is not None:
        mulan = np.asarray(mulan, dtype=np.uint16).reshape(-1)
        cond["mulan"] = np.broadcast_to(mulan, (b, mulan.size))
    windows = {}
    sem, windows["semantic"] = run_stage(stages["semantic"], streams, cond, cfg, b)
    cond["semantic"] = sem[:, 0]
    cond["coarse"], windows["coarse"] = run_stage(stages["coarse"], streams, cond, cfg, b)
    fine, windows["fine"] = run_stage(stages["fine"], streams, cond, cfg, b)
    return Generated(mulan, cond["semantic"], cond["coarse"], fine, windows)


def acoustic_codes(coarse: np.ndarray, fine: np.ndarray, streams: StreamLayout) -> np.ndarray:
    """uint16 [B, K, T_a]: the coarse and fine levels at their 1-based level rows; they must be
    levels 1..K without a gap (a codec decodes its first K levels)."""
    levels = list(streams.coarse_levels) + list(streams.fine_levels)
    k = max(levels)
    if sorted(levels) != list(range(1, k + 1)):
        raise GenerateError(f"coarse levels {list(streams.coarse_levels)} and fine levels "
                            f"{list(streams.fine_levels)} leave a gap in 1..{k}; the codec decodes its first "
                            "levels only: train the stages on a contiguous split")
    out = np.zeros((coarse.shape[0], k, coarse.shape[-1]), dtype=np.uint16)
    out[:, np.asarray(streams.coarse_levels) - 1] = coarse
    out[:, np.asarray(streams.fine_levels) - 1] = fine
    return out


# ---- text and codec ---------------------------------------------------------------------------

def clip_seed(seed: int, key: str) -> int:
    """The --seed of the clip named `key` (a ytid) in `generate --captions`: SeedSequence([seed,
    first 8 bytes of sha256(key)]), 63 bits; so a clip's audio depends on (seed, key) only."""
    import hashlib

    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    state = np.random.SeedSequence([int(seed), h]).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))


def dataset_text_tokenizer(stages: dict[str, StageModel], *, model: str | None = None, path: str | None = None,
                           codebook: str | None = None):
    """The MuLan TextTokenizer of the checkpoints' dataset (its tokenize job's model, weights and
    RVQ unless overridden); load it once and pass it to `text_tokens` for many prompts."""
    from tokenmill.tokenizers.mulan import MulanError, load_text_tokenizer

    job = (stages["semantic"].state["dataset"].get("job") or {}).get("mulan") or {}
    try:
        return load_text_tokenizer(model or job.get("model") or "mulan", path if path is not None else job.get("path"),
                                   codebook if codebook is not None else job.get("codebook"))
    except (MulanError, FileNotFoundError) as e:
        raise GenerateError(f"cannot load the MuLan text tokenizer the dataset used: {e}; pass "
                            "--mulan_model/--mulan_path/--mulan_codebook") from None


def text_tokens(text: str, stages: dict[str, StageModel], tokenizer=None, *, model: str | None = None,
                path: str | None = None, codebook: str | None = None) -> np.ndarray:
    """M_T uint16 [n_stages] of `text`, with the checkpoints' MuLan codebook. `tokenizer` (a
    ``TextTokenizer``) or model/path/codebook (default: the dataset's tokenize job's)."""
    ds = stages["semantic"].state["dataset"]
    want = (ds.get("codebooks") or {}).get("mulan")
    if want is None:
        raise GenerateError("the checkpoints' dataset has no mulan codebook: it was tokenized without "
                            "--mulan_model, so its stages are not text-conditioned")
    if tokenizer is None:
        tokenizer = dataset_text_tokenizer(stages, model=model, path=path, codebook=codebook)
    desc = tokenizer.describe()
    if desc["codebook_id"] != want:
        raise GenerateError(f"the MuLan text tokenizer quantizes with codebook {desc['codebook_id']} but the "
                            f"checkpoints were trained on {want} tokens; pass --mulan_codebook with the "
                            f"{want}.safetensors the dataset was tokenized with (and its --mulan_model/--mulan_path)")
    fitted = ((ds.get("tokenizers") or {}).get("mulan") or {}).get("model") or {}
    if fitted.get("weights_sha256") not in (None, desc["model"].get("weights_sha256")):
        raise GenerateError(f"the MuLan model here (weights {str(desc['model'].get('weights_sha256'))[:12]}…) is "
                            f"not the dataset's ({fitted['weights_sha256'][:12]}…); pass its --mulan_path")
    return np.asarray(tokenizer([text]), dtype=np.uint16)[0]


def load_codec(stages: dict[str, StageModel], model_path: str | None = None):
    """The acoustic codec the dataset was tokenized with (codec.rebuild_codec: weights checked)."""
    from tokenmill.tokenizers.codec import CodecError, rebuild_codec

    ds = stages["semantic"].state["dataset"]
    try:
        return rebuild_codec((ds.get("job") or {}).get("acoustic"), (ds.get("tokenizers") or {}).get("acoustic"),
                             model_path, where="the checkpoints' dataset")
    except CodecError as e:
        raise GenerateError(str(e)) from None


def decode_waves(codec, codes: np.ndarray) -> list[np.ndarray]:
    """uint16 [B, K, T_a] → float32 waves of exactly T_a · hop samples each."""
    waves = []
    for c in codes:
        w = codec.decode(c)
        if w.shape != (c.shape[-1] * codec.hop_samples,):
            raise GenerateError(f"{codec.name}.decode gave {w.shape} samples for {c.shape[-1]} frames, expected "
                                f"{c.shape[-1] * codec.hop_samples}; the codec breaks its decode contract")
        waves.append(w)
    return waves


# ---- the whole chain --------------------------------------------------------------------------

def wav_paths(out: str | Path, batch: int) -> list[Path]:
    out = Path(out)
    if out.suffix.lower() != ".wav":
        raise GenerateError(f"--output {out} must name a .wav file (batch items become NAME-0.wav, NAME-1.wav, ...)")
    if batch == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(batch)]


def generate_music(text: str, stages: dict[str, StageModel], cfg: GenerateConfig, out: str | Path, *,
                   tokenizer=None, codec=None, mulan_model: str | None = None, mulan_path: str | None = None,
                   mulan_codebook: str | None = None, acoustic_model: str | None = None,
                   melody: str | None = None, melody_model: str | None = None, melody_path: str | None = None,
                   melody_codebook: str | None = None) -> Music:
    """Run the chain and write the WAV(s) and OUT.json (the sidecar). `melody`: a hum's audio file
    (training/melody_cond.py), with the dataset's melody model and RVQ unless overridden."""
    import soundfile

    from tokenmill.training import melody_cond

    streams = check_stages(stages)
    paths = wav_paths(out, int(cfg.batch))
    if not any(p.name == "mulan" for sm in stages.values() for p in sm.layout.conditioning):
        raise GenerateError("no stage of these checkpoints is conditioned on MuLan tokens, so a text prompt "
                            "would be ignored; train the semantic/coarse stages with M (CropConfig.mulan_stages)")
    codec = codec or load_codec(stages, acoustic_model)
    if (codec.sample_rate_hz, codec.hop_samples) != (streams.acoustic.sample_rate_hz, streams.acoustic.hop_samples):
        raise GenerateError(f"the codec runs at {codec.sample_rate_hz} Hz / hop {codec.hop_samples} but the dataset's "
                            f"acoustic stream at {streams.acoustic.sample_rate_hz} Hz / hop "
                            f"{streams.acoustic.hop_samples}; use the codec the dataset was tokenized with")
    t0 = time.monotonic()
    mulan = text_tokens(text, stages, tokenizer, model=mulan_model, path=mulan_path, codebook=mulan_codebook)
    log.info("text tokens M_T: %s", " ".join(map(str, mulan.tolist())))
    hum = None
    if melody is not None:
        if not any(melody_cond.takes_melody(sm.layout) for sm in stages.values()):
            raise GenerateError("no stage of these checkpoints reads melody tokens (trained without a melody "
                                "stream, or with --melody_stages none), so --melody would be ignored; drop it")
        hum = melody_cond.load_hum(melody, stages["semantic"].state["dataset"], model=melody_model,
                                   model_path=melody_path, codebook=melody_codebook)
    elif melody_cond.takes_melody(stages["semantic"].layout):
        log.info("the semantic stage reads melody tokens and no --melody was given: they are pad (text only)")
    gen = generate_tokens(stages, mulan, cfg, hum)
    codes = acoustic_codes(gen.coarse, gen.fine, streams)
    waves = decode_waves(codec, codes)
    peaks = [float(np.abs(w).max()) if w.size else 0.0 for w in waves]
    clipped = [int((np.abs(w) > 1).sum()) for w in waves]
    for p, w in zip(paths, waves):
        p.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(p), np.clip(w, -1.0, 1.0), codec.sample_rate_hz, subtype="PCM_16")
    if any(clipped):
        log.warning("clipped %s samples beyond ±1 when writing PCM_16", clipped)
    ds = stages["semantic"].state["dataset"]
    sidecar = {
        "text": text, "seconds": float(cfg.seconds), "sample_rate_hz": codec.sample_rate_hz,
        "samples": int(waves[0].shape[0]), "wavs": [str(p) for p in paths], "seed": int(cfg.seed),
        "config": asdict(cfg),
        "effective": {s: {"temperature": cfg.temperature(s), "top_k": cfg.top_k_of(s)} for s in STAGES},
        "windows": gen.windows,
        "checkpoints": {s: {"path": sm.path, "step": sm.step} for s, sm in stages.items()},
        "codebooks": ds.get("codebooks"), "codec": {"name": codec.name, "weights_sha256": codec.weights_sha256},
        "mulan_tokens": gen.mulan.tolist(),
        "melody": melody_cond.sidecar_entry(hum, gen.windows["semantic"]),
        "semantic_tokens": gen.semantic.tolist(),  # [batch][frames]: what `memorization --generated` searches for
        "shapes": {"mulan": list(gen.mulan.shape), "semantic": list(gen.semantic.shape),
                   "coarse": list(gen.coarse.shape), "fine": list(gen.fine.shape), "codes": list(codes.shape)},
        "peak": peaks, "clipped_samples": clipped, "elapsed_s": round(time.monotonic() - t0, 3),
    }
    side = Path(out).with_suffix(".json")
    side.write_text(json.dumps(sidecar, indent=1))
    return Music(sidecar, gen, waves)


def generate_from_paths(text: str, out: str | Path, cfg: GenerateConfig, *, checkpoints: str | None = None,
                        semantic: str | None = None, coarse: str | None = None, fine: str | None = None,
                        torch_threads: int = 0, **kw) -> Music:
    """`beam_runner.py generate`: resolve and load the checkpoints, then ``generate_music``.
    `torch_threads` > 0 sets torch's intra-op threads for the process (0: torch's default)."""
    if torch_threads < 0:
        raise GenerateError(f"torch_threads must be >= 0 (0 = torch's default), got {torch_threads}")
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    paths = stage_paths(checkpoints, semantic=semantic, coarse=coarse, fine=fine)
    stages = load_stages(paths, cfg.device)
    return generate_music(text, stages, cfg, out, **kw)
