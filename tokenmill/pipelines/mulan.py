"""The MuLan stream in Beam: window embeddings and RVQ tokens in `tokenize`, and the RVQ fit of
`fit-codebook --stream mulan`. The model code is pure (tokenizers/mulan.py); this is wiring.

    tokenize:  SegmentInput ─► RunInference(MulanTokenHandler) ─► mulan_windows float16 [W, D]
                                                                   mulan         uint16  [S]
    fit:       SegmentInput ─► RunInference(MulanWindowHandler) ─► float32 [W, D] per segment
               ─► SampleFrames (bottom-k of hash priorities per window, as for semantic frames)
               ─► BottomK ─► fit_rvq ─► mulan-<sha12>.safetensors + card

W = rates.mulan_window_count(segment quanta) (10 s windows at a 1 s stride, one zero-padded
window for a segment under 10 s), D = the model's dim, S = the RVQ's stages. `mulan` is
segment_tokens() of the *stored* float16 windows, so a reader recomputing M for the whole segment
from `mulan_windows` (crop_tokens(windows, 0, duration_s, rvq)) gets exactly the stored tokens.
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
from tokenmill.pipelines.configs import FitCodebookConfig, MulanConfig
from tokenmill.pipelines.sinks import atomic_write
from tokenmill.pipelines.window_handlers import WindowHandler, WindowTokenHandler
from tokenmill.schemas import rates
from tokenmill.schemas import shards as fmt
from tokenmill.tokenizers import compute
from tokenmill.tokenizers.kmeans import MIN_POINTS_PER_CENTROID
from tokenmill.tokenizers.mulan import MulanError, MulanModel, build_mulan, load_codebook_for, segment_tokens
from tokenmill.tokenizers.rvq import RVQCodebook, fit_rvq

LOG = logging.getLogger("tokenmill")


def build_model(cfg: MulanConfig, device: str = "cpu") -> MulanModel:
    """The model on `device`: the handlers pass cfg.device on the worker; the launcher's
    describe_mulan (and fit-codebook's) builds it on the CPU, whatever cfg.device says."""
    compute.apply(cfg.compute, device)  # this process: threads and kernels of the job
    return build_mulan(cfg.model, device=device, **with_local_path(cfg.model_kwargs(), "--mulan_path"))


def load_rvq(cfg: MulanConfig, model: MulanModel) -> RVQCodebook:
    """--mulan_codebook (local or remote file/directory), or the packaged default model's RVQ;
    checked against the model (dim, and the weights its card says it was fitted on)."""
    path = None if cfg.codebook is None else local_codebook_path(cfg.codebook, "mulan", "--mulan_codebook")
    return load_codebook_for(model, path)


@dataclass
class MulanTokenizer:
    model: MulanModel
    rvq: RVQCodebook


def check_windows(windows: np.ndarray, seg: SegmentInput, model: MulanModel) -> np.ndarray:
    want = (rates.mulan_window_count(seg.n_quanta), model.dim)
    if windows.shape != want:
        raise MulanError(f"{model.name} gave windows {windows.shape} for {seg.duration_s} s of {seg.uri}, "
                         f"expected {want}")
    if not np.isfinite(windows).all():
        raise MulanError(f"{model.name} gave non-finite embeddings for {seg.uri} segment {seg.segment}")
    return windows


class MulanWindowHandler(WindowHandler):
    """SegmentInput → float32 [W, D] window embeddings (for the RVQ fit)."""

    def embed_batch(self, model: MulanModel):
        return model.embed_audio_windows_batch

    def check(self, windows: np.ndarray, seg: SegmentInput, model: MulanModel) -> np.ndarray:
        return check_windows(windows, seg, model)

    def load_model(self) -> MulanModel:
        return build_model(self.cfg, device=self.cfg.device)

    def get_metrics_namespace(self) -> str:
        return "tokenmill_mulan_windows"


class MulanTokenHandler(WindowTokenHandler, MulanWindowHandler):
    """SegmentInput → {"mulan_windows": float16 [W, D], "mulan": uint16 [S]}."""

    WINDOWS_FIELD, TOKENS_FIELD = "mulan_windows", "mulan"

    def tokens(self, windows16: np.ndarray, rvq: RVQCodebook) -> np.ndarray:
        return segment_tokens(windows16, rvq)

    def load_model(self) -> MulanTokenizer:
        model = build_model(self.cfg, device=self.cfg.device)
        return MulanTokenizer(model, load_rvq(self.cfg, model))

    def get_metrics_namespace(self) -> str:
        return "tokenmill_mulan_tokens"


def describe_mulan(cfg: MulanConfig) -> dict:
    """Tokenizer entry of the manifest, computed at launch (loads the model and RVQ once, locally,
    so a wrong codebook fails before the job starts), on the CPU whatever cfg.device says."""
    model = build_model(cfg)
    rvq = load_rvq(cfg, model)
    return {"model": model.describe(), "codebook_id": rvq.id, "n_stages": rvq.n_stages, "k": rvq.k,
            "dim": rvq.dim, "codebook_card": rvq.card}


def mulan_stream_info(desc: dict) -> dict:
    m = desc["model"]
    return {"model": m["name"], "sample_rate_hz": m["sample_rate_hz"], "window_s": m["window_s"],
            "stride_s": m["stride_s"], "dim": desc["dim"], "n_stages": desc["n_stages"],
            "vocab_size": desc["k"], "windows_dtype": "float16", "windows_shape": "[W, dim]",
            "windows": "W = max(1, floor(duration_s) - window_s + 1); window w covers [w, w + window_s) s",
            "dtype": "uint16", "shape": "[n_stages]",
            "tokens": "RVQ codes of the L2-normalized mean of the W stored (float16) windows"}


# ---- fit-codebook --stream mulan -------------------------------------------------------------

def too_few_windows(n_train: int, n_sampled: int, k: int) -> str:
    good = 1 << max(1, (n_train // MIN_POINTS_PER_CENTROID).bit_length() - 1)
    fits = 1 << max(1, n_train.bit_length() - 1)
    return (f"only {n_train} MuLan windows to fit on ({n_sampled} sampled from the whole corpus, "
            f"{n_sampled - n_train} of them held out), "
            f"but --num_clusters {k} needs at least {k} per stage ({MIN_POINTS_PER_CENTROID * k} for a good "
            f"fit); pass --num_clusters {good if good * MIN_POINTS_PER_CENTROID <= n_train else fits}, or "
            "more audio (a track of d >= 10 s gives floor(d) - 9 windows, a shorter one gives 1)")


class FitRVQAndSave(beam.DoFn):
    def __init__(self, cfg: FitCodebookConfig, mulan_desc: dict):
        self.cfg, self.mulan_desc = cfg, mulan_desc

    def process(self, sample, dead, inputs):
        cfg = self.cfg
        train, held, stats = split_sample(sample, cfg.heldout_windows)
        if train is None:
            raise ValueError("no MuLan windows were sampled: every input failed to decode or embed; "
                             f"see the dead letters ({len(dead)})")
        if len(train) < cfg.num_clusters:
            raise ValueError(too_few_windows(len(train), len(sample), cfg.num_clusters))
        n_inputs, digest = inputs
        sources = {"patterns": list(cfg.inputs), "n_inputs": n_inputs, "inputs_digest": digest,
                   "n_dead_letters": len(dead), **stats, "n_windows_sampled": len(sample),
                   "mulan": self.mulan_desc,
                   "sampling": {"seed": cfg.seed, "max_windows": cfg.max_windows,
                                "heldout_windows": cfg.heldout_windows, "unit": "10 s window"}}
        LOG.info("[fit] RVQ %d stages x %d on %d windows (%d held out) from %d tracks", cfg.num_stages,
                 cfg.num_clusters, len(train), 0 if held is None else len(held), stats["n_tracks_sampled"])
        rvq = fit_rvq(train, n_stages=cfg.num_stages, k=cfg.num_clusters, seed=cfg.seed, n_iter=cfg.n_iter,
                      x_heldout=held, sources=sources, kind="mulan")
        rvq.card["compute"] = card_compute(cfg.mulan.compute, cfg.mulan.device)
        out = cfg.output.rstrip("/")
        path = rvq.save(out) if "://" not in out else _save_remote(rvq, out)
        atomic_write(f"{out}/{rvq.id}.failures.jsonl", fmt.encode_dead_letters(dead))
        yield {"id": rvq.id, "path": str(path), "card": rvq.card}


def build_fit_mulan(p: beam.Pipeline, cfg: FitCodebookConfig, *, mulan_desc: dict) -> beam.PCollection:
    segments, dead_decode, inputs = p | "Ingest" >> ReadAndDecode(cfg.inputs, cfg.audio)
    handler = KeyedModelHandler(MulanWindowHandler(cfg.mulan))
    windows = (segments | "KeyBySegment" >> beam.Map(lambda s: (s.key, s))
               | "Windows" >> RunInference(handler))
    total = cfg.max_windows + cfg.heldout_windows
    sampled = windows | "Sample" >> beam.ParDo(SampleFrames(total, cfg.seed, stage="mulan")).with_outputs(
        DEAD, main="frames")
    sample = sampled.frames | "BottomK" >> beam.CombineGlobally(BottomK(total))
    dead = (dead_decode, sampled[DEAD]) | "AllDead" >> beam.Flatten()
    return sample | "Fit" >> beam.ParDo(
        FitRVQAndSave(cfg, mulan_desc), beam.pvalue.AsList(dead), beam.pvalue.AsSingleton(inputs))
