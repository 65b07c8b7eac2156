"""The `fit-codebook` job: a deterministic sample of feature frames, then a FAISS k-means fit.

Sampling: every frame gets a uint64 priority from (seed, record key, frame index); the job keeps
the `sample_frames + heldout_frames` smallest priorities over the whole corpus (a distributed
bottom-k, so the sample does not depend on the runner, the worker count or the file order).
Within the sample a second mix of the priority picks the held-out frames.
"""
from __future__ import annotations

import logging

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from tokenmill.pipelines.handlers import Failed, SemanticFeatureHandler
from tokenmill.pipelines.ingest import DEAD, Progress, ReadAndDecode, dead_letter, frames_priority
from tokenmill.pipelines.configs import FitCodebookConfig
from tokenmill.pipelines.sinks import atomic_write
from tokenmill.schemas import shards as fmt
from tokenmill.tokenizers import compute
from tokenmill.tokenizers.kmeans import fit_kmeans

LOG = logging.getLogger("tokenmill")


class SampleFrames(beam.DoFn):
    """(key, PredictionResult[features]) → (priorities uint64 [n], key, features float32 [n, D])
    for the segment's `n` lowest-priority frames: one element per segment, not per frame. The rows
    may be semantic frames or MuLan windows (pipelines/mulan.py)."""

    def __init__(self, n: int, seed: int, stage: str = "semantic"):
        self.n, self.seed, self.stage = n, seed, stage  # stage: the dead letters' stage name

    def setup(self):  # the model stage's progress line (MuLan embedding runs for hours on big corpora)
        self.progress = Progress(f"{self.stage} features" if self.stage == "semantic" else f"{self.stage} windows",
                                 unit="segments")

    def finish_bundle(self):
        self.progress.report()

    def process(self, element):
        key, result = element
        feats = result.inference
        self.progress.tick(audio_s=result.example.duration_s, dead=isinstance(feats, Failed))
        if isinstance(feats, Failed):
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(result.example.uri, self.stage, feats.exc, key))
            return
        prio = frames_priority(key, feats.shape[0], self.seed)
        take = np.sort(np.argsort(prio, kind="stable")[: self.n])
        yield prio[take], key, np.ascontiguousarray(feats[take], dtype=np.float32)


class BottomK(beam.CombineFn):
    """The `k` frames with the smallest (priority, key) over the whole corpus, vectorized.

    Accumulators are numpy arrays pruned with argpartition whenever they exceed 2k rows, so a
    worker holds at most ~3k frames whatever the corpus size. Ties (a 2^-64 event) break by key.
    """

    def __init__(self, k: int):
        self.k = k

    def create_accumulator(self):
        return (np.empty(0, np.uint64), np.empty(0, object), None)

    def _prune(self, acc, final=False):
        prio, keys, feats = acc
        if len(prio) > (self.k if final else 2 * self.k) or final:
            order = np.lexsort((keys.astype(str), prio)) if len(prio) else np.empty(0, np.int64)
            keep = order[: self.k]
            return prio[keep], keys[keep], None if feats is None else feats[keep]
        return acc

    def _concat(self, accs):
        accs = [a for a in accs if len(a[0])]
        if not accs:
            return self.create_accumulator()
        return (np.concatenate([a[0] for a in accs]), np.concatenate([a[1] for a in accs]),
                np.concatenate([a[2] for a in accs]))

    def add_input(self, acc, element):
        prio, key, feats = element
        new = (prio, np.full(len(prio), key, dtype=object), feats)
        return self._prune(self._concat([acc, new]))

    def merge_accumulators(self, accs):
        return self._prune(self._concat(list(accs)))

    def extract_output(self, acc):
        prio, keys, feats = self._prune(acc, final=True)
        return [(int(p), str(k), f) for p, k, f in zip(prio, keys, feats)] if feats is not None else []


def _mix(p: int) -> int:
    return (p * 0xD6E8FEB86659FD93 + 0x2545F4914F6CDD1D) % 2**64


def split_sample(sample: list, heldout: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sorted bottom-k sample → (train, heldout) float32 arrays and source stats."""
    sample = sorted(sample, key=lambda e: e[0])
    n_held = min(heldout, len(sample) // 10)
    order = sorted(range(len(sample)), key=lambda i: _mix(sample[i][0]))
    held_idx = set(order[:n_held])
    train = np.stack([e[2] for i, e in enumerate(sample) if i not in held_idx]) if sample else None
    held = np.stack([sample[i][2] for i in sorted(held_idx)]) if n_held else None
    keys = {e[1] for e in sample}
    return train, held, {"n_segments_sampled": len(keys),
                         "n_tracks_sampled": len({k.split("-", 1)[0] for k in keys})}


def card_compute(layout, device: str = "cpu") -> dict:
    """The card's `compute` entry: the layout the workers extracted the features under, with the
    kernels of this process (the fit itself is exact on any CPU: tokenizers/nearest.py)."""
    return compute.describe(layout, compute.apply(layout), device)


class FitAndSave(beam.DoFn):
    def __init__(self, cfg: FitCodebookConfig, extractor_desc: dict):
        self.cfg, self.extractor_desc = cfg, extractor_desc

    def process(self, sample, dead, inputs):
        cfg = self.cfg
        train, held, stats = split_sample(sample, cfg.heldout_frames)
        if train is None:
            raise ValueError("no feature frames were sampled: every input failed to decode; "
                             f"see the dead letters ({len(dead)})")
        n_inputs, digest = inputs
        sources = {"patterns": list(cfg.inputs), "n_inputs": n_inputs, "inputs_digest": digest,
                   "n_dead_letters": len(dead), **stats, "extractor": self.extractor_desc,
                   "sampling": {"seed": cfg.seed, "sample_frames": cfg.sample_frames,
                                "heldout_frames": cfg.heldout_frames}}
        LOG.info("[fit] k=%d on %d frames (%d held out) from %d tracks", cfg.num_clusters,
                 len(train), 0 if held is None else len(held), stats["n_tracks_sampled"])
        # SSL extractors declare standardize=True: per-dim mean/std of this fit sample go into the
        # codebook and are applied before assignment. "spectral" has fixed, designed scales (no stats).
        codebook = fit_kmeans(train, cfg.num_clusters, seed=cfg.seed, n_iter=cfg.n_iter,
                              x_heldout=held, use_gpu=cfg.use_gpu, sources=sources, kind="semantic",
                              standardize=bool(self.extractor_desc.get("standardize", False)))
        codebook.card["compute"] = card_compute(cfg.semantic.compute, cfg.semantic.device)
        out = cfg.output.rstrip("/")
        path = codebook.save(out) if "://" not in out else _save_remote(codebook, out)
        atomic_write(f"{out}/{codebook.id}.failures.jsonl", fmt.encode_dead_letters(dead))
        yield {"id": codebook.id, "path": str(path), "card": codebook.card}


def _save_remote(codebook, out: str) -> str:
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="tokenmill-cb-"))
    local = Path(codebook.save(tmp))
    for f in sorted(tmp.iterdir()):
        atomic_write(f"{out}/{f.name}", f.read_bytes())
    return f"{out}/{local.name}"


def build_fit(p: beam.Pipeline, cfg: FitCodebookConfig, *, extractor_desc: dict) -> beam.PCollection:
    segments, dead_decode, inputs = p | "Ingest" >> ReadAndDecode(cfg.inputs, cfg.audio)
    handler = KeyedModelHandler(SemanticFeatureHandler(cfg.semantic))
    features = (segments | "KeyBySegment" >> beam.Map(lambda s: (s.key, s))
                | "Features" >> RunInference(handler))
    total = cfg.sample_frames + cfg.heldout_frames
    frames = features | "Sample" >> beam.ParDo(SampleFrames(total, cfg.seed)).with_outputs(DEAD, main="frames")
    sample = frames.frames | "BottomK" >> beam.CombineGlobally(BottomK(total))
    dead = (dead_decode, frames[DEAD]) | "AllDead" >> beam.Flatten()
    return sample | "Fit" >> beam.ParDo(
        FitAndSave(cfg, extractor_desc), beam.pvalue.AsList(dead), beam.pvalue.AsSingleton(inputs))
