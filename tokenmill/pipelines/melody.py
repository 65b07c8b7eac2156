"""The melody stream in Beam: window embeddings and RVQ tokens in `tokenize`, and the RVQ fit of
`fit-codebook --stream melody`. The model code is pure (tokenizers/melody*.py); this is wiring,
the same shape as pipelines/mulan.py.

    tokenize:  SegmentInput ─► RunInference(MelodyTokenHandler) ─► melody_windows float16 [W, D]
                                                                    melody         uint16  [W, S]
    fit:       SegmentInput ─► RunInference(MelodyWindowHandler) ─► float32 [W, D] per segment
               ─► SampleFrames ─► BottomK ─► fit_rvq(kind="melody") ─► melody-<sha12>.safetensors + card

W = rates.melody_window_count(segment quanta) (4 s windows at a 1 s stride, one zero-padded window
for a segment under 4 s), D = the model's dim (192), S = the RVQ's stages (24). `melody` row w is
the RVQ code of the *stored* float16 window w (melody_tokens.window_tokens).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from tokenmill.pipelines.fit import BottomK, SampleFrames, _save_remote, card_compute, split_sample
from tokenmill.pipelines.handlers import local_codebook_path, with_local_path
from tokenmill.pipelines.ingest import DEAD, ReadAndDecode, SegmentInput
from tokenmill.pipelines.configs import FitCodebookConfig, MelodyConfig
from tokenmill.pipelines.sinks import atomic_write
from tokenmill.pipelines.window_handlers import WindowHandler, WindowTokenHandler
from tokenmill.schemas import rates
from tokenmill.schemas import shards as fmt
from tokenmill.tokenizers import compute
from tokenmill.tokenizers.melody import MelodyError, MelodyModel, build_melody
from tokenmill.tokenizers.melody_tokens import load_codebook_for, window_tokens
from tokenmill.tokenizers.rvq import RVQCodebook, fit_rvq

LOG = logging.getLogger("tokenmill")


def build_model(cfg: MelodyConfig, device: str = "cpu") -> MelodyModel:
    """The model under the job's compute layout on `device` (melody models run on the CPU today)."""
    compute.apply(cfg.compute, device)
    model = build_melody(cfg.model, **with_local_path(cfg.model_kwargs(), "--melody_path"))
    model.batch_size = cfg.batch_size  # windows per forward pass (MelodyModel.embed_windows_batch)
    return model


def load_rvq(cfg: MelodyConfig, model: MelodyModel) -> RVQCodebook:
    """--melody_codebook (local or remote file/directory), or the model's packaged RVQ; checked."""
    path = None if cfg.codebook is None else local_codebook_path(cfg.codebook, "melody", "--melody_codebook")
    return load_codebook_for(model, path)


@dataclass
class MelodyTokenizer:
    model: MelodyModel
    rvq: RVQCodebook


def check_windows(windows: np.ndarray, seg: SegmentInput, model: MelodyModel) -> np.ndarray:
    want = (rates.melody_window_count(seg.n_quanta), model.dim)
    if windows.shape != want:
        raise MelodyError(f"{model.name} gave melody windows {windows.shape} for {seg.duration_s} s of {seg.uri}, "
                          f"expected {want}")
    if not np.isfinite(windows).all():
        raise MelodyError(f"{model.name} gave non-finite melody embeddings for {seg.uri} segment {seg.segment}")
    return windows


class MelodyWindowHandler(WindowHandler):
    """SegmentInput → float32 [W, D] melody window embeddings (for the RVQ fit)."""

    def embed_batch(self, model: MelodyModel):
        return model.embed_windows_batch

    def check(self, windows: np.ndarray, seg: SegmentInput, model: MelodyModel) -> np.ndarray:
        return check_windows(windows, seg, model)

    def load_model(self) -> MelodyModel:
        return build_model(self.cfg, device=self.cfg.device)

    def get_metrics_namespace(self) -> str:
        return "tokenmill_melody_windows"


class MelodyTokenHandler(WindowTokenHandler, MelodyWindowHandler):
    """SegmentInput → {"melody_windows": float16 [W, D], "melody": uint16 [W, S]}."""

    WINDOWS_FIELD, TOKENS_FIELD = "melody_windows", "melody"

    def tokens(self, windows16: np.ndarray, rvq: RVQCodebook) -> np.ndarray:
        return window_tokens(windows16, rvq)

    def load_model(self) -> MelodyTokenizer:
        model = build_model(self.cfg, device=self.cfg.device)
        return MelodyTokenizer(model, load_rvq(self.cfg, model))

    def get_metrics_namespace(self) -> str:
        return "tokenmill_melody_tokens"


def describe_melody(cfg: MelodyConfig) -> dict:
    """Tokenizer entry of the manifest, computed at launch on the CPU (a wrong codebook fails
    before the job starts)."""
    model = build_model(cfg)
    rvq = load_rvq(cfg, model)
    return {"model": model.describe(), "codebook_id": rvq.id, "n_stages": rvq.n_stages, "k": rvq.k,
            "dim": rvq.dim, "codebook_card": rvq.card}


def melody_stream_info(desc: dict) -> dict:
    m = desc["model"]
    return {"model": m["name"], "sample_rate_hz": m["sample_rate_hz"], "window_s": m["window_s"],
            "stride_s": m["stride_s"], "crop_hop_s": rates.MELODY_CROP_HOP_S, "dim": desc["dim"],
            "n_stages": desc["n_stages"], "vocab_size": desc["k"], "windows_dtype": "float16",
            "windows_shape": "[W, dim]",
            "windows": "W = max(1, floor(duration_s) - window_s + 1); window w covers [w, w + window_s) s",
            "dtype": "uint16", "shape": "[W, n_stages]",
            "tokens": "row w: RVQ codes of stored (float16) window w",
            "crop_windows": "crop [t0, t1): max(1, floor((t1 - t0 - window_s) / crop_hop_s) + 1) windows, "
                            "the i-th the stored window starting nearest t0 + i * crop_hop_s (ties earlier)"}


# ---- fit-codebook --stream melody ------------------------------------------------------------

class FitMelodyRVQAndSave(beam.DoFn):
    def __init__(self, cfg: FitCodebookConfig, melody_desc: dict):
        self.cfg, self.melody_desc = cfg, melody_desc

    def process(self, sample, dead, inputs):
        cfg = self.cfg
        train, held, stats = split_sample(sample, cfg.heldout_windows)
        if train is None:
            raise MelodyError("no melody windows were sampled: every input failed to decode or embed; "
                              f"see the dead letters ({len(dead)})")
        if len(train) < cfg.num_clusters:
            raise MelodyError(f"only {len(train)} melody windows to fit on ({len(sample)} sampled), but "
                              f"--num_clusters {cfg.num_clusters} needs at least that many per stage; pass a "
                              "smaller --num_clusters or more audio (a track of d >= 4 s gives floor(d) - 3 windows)")
        n_inputs, digest = inputs
        sources = {"patterns": list(cfg.inputs), "n_inputs": n_inputs, "inputs_digest": digest,
                   "n_dead_letters": len(dead), **stats, "n_windows_sampled": len(sample),
                   "melody": self.melody_desc,
                   "sampling": {"seed": cfg.seed, "max_windows": cfg.max_windows,
                                "heldout_windows": cfg.heldout_windows, "unit": "4 s window"}}
        LOG.info("[fit] melody RVQ %d stages x %d on %d windows", cfg.num_stages, cfg.num_clusters, len(train))
        rvq = fit_rvq(train, n_stages=cfg.num_stages, k=cfg.num_clusters, seed=cfg.seed, n_iter=cfg.n_iter,
                      x_heldout=held, sources=sources, kind="melody")
        rvq.card["compute"] = card_compute(cfg.melody.compute, cfg.melody.device)
        out = cfg.output.rstrip("/")
        path = rvq.save(out) if "://" not in out else _save_remote(rvq, out)
        atomic_write(f"{out}/{rvq.id}.failures.jsonl", fmt.encode_dead_letters(dead))
        yield {"id": rvq.id, "path": str(path), "card": rvq.card}


def build_fit_melody(p: beam.Pipeline, cfg: FitCodebookConfig, *, melody_desc: dict) -> beam.PCollection:
    segments, dead_decode, inputs = p | "Ingest" >> ReadAndDecode(cfg.inputs, cfg.audio)
    windows = (segments | "KeyBySegment" >> beam.Map(lambda s: (s.key, s))
               | "Windows" >> RunInference(KeyedModelHandler(MelodyWindowHandler(cfg.melody))))
    total = cfg.max_windows + cfg.heldout_windows
    sampled = windows | "Sample" >> beam.ParDo(SampleFrames(total, cfg.seed, stage="melody")).with_outputs(
        DEAD, main="frames")
    sample = sampled.frames | "BottomK" >> beam.CombineGlobally(BottomK(total))
    dead = (dead_decode, sampled[DEAD]) | "AllDead" >> beam.Flatten()
    return sample | "Fit" >> beam.ParDo(
        FitMelodyRVQAndSave(cfg, melody_desc), beam.pvalue.AsList(dead), beam.pvalue.AsSingleton(inputs))
