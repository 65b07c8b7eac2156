"""`memorization --generated DIR`: search the whole training set for copies of generated windows.

    generated sequences ─► GeneratedIndex (hashes + sketches) ─────────── side input ─┐
    shard specs ─► ReadShard ─► records ─┬─► Search (exact hashes, sketch prefilter, OT) ─► hits
                                         └─► window sample ─► negative pairs ─► tau ─ side input
    hits ─► Top per generated window (nearest training windows) ─► WriteSearchReport

The generated windows are few, so they travel to every worker as one side input; the training
shards stream past them once. The kernels are tokenmill/eval/search.py (what "candidate" means,
and the one place the search can miss a copy: ``max_ot_per_record``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import apache_beam as beam
import numpy as np

from tokenmill.eval import EvalError
from tokenmill.eval import memorization as mem
from tokenmill.eval.ot import TokenOT
from tokenmill.eval.memorization_report import share
from tokenmill.eval.search import GeneratedIndex, ScanStats
from tokenmill.eval.windows import window_starts
from tokenmill.pipelines.memorization import (
    NS, REPORT_NAME, MemorizationConfig, OneBlasThread, Plan, ReadShard, tau_report, write_bytes,
)

LOG = logging.getLogger("tokenmill")


def load_generated(directory: str, plan_: Plan) -> dict[str, np.ndarray]:
    """{sequence id: uint16 [T]} from `generate`'s sidecars (NAME.json: semantic_tokens [B, T]) and
    .npy arrays (uint16 [T] or [B, T]) in `directory`; ids are NAME#b."""
    root = Path(directory)
    if not root.is_dir():
        raise EvalError(f"--generated {directory} is not a directory; pass the directory generate wrote into")
    out: dict[str, np.ndarray] = {}
    for path in sorted(root.iterdir()):
        if path.suffix == ".json":
            side = json.loads(path.read_text())
            if "semantic_tokens" not in side:
                if "wavs" in side:
                    raise EvalError(f"{path} is a generate sidecar without semantic_tokens (an older tokenmill); "
                                    "re-run generate with this version, which writes them")
                continue  # another JSON file
            cb = (side.get("codebooks") or {}).get("semantic")
            if cb is not None and cb != plan_.codebook_id:
                raise EvalError(f"{path}: its tokens come from semantic codebook {cb} but the dataset uses "
                                f"{plan_.codebook_id}; search the dataset its model was trained on")
            rows = np.asarray(side["semantic_tokens"], dtype=np.int64)
        elif path.suffix == ".npy":
            rows = np.load(path, allow_pickle=False)
            if rows.dtype.kind not in "iu":
                raise EvalError(f"{path}: holds {rows.dtype}, not integer semantic tokens (uint16 [T] or [B, T])")
        else:
            continue
        rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
        if rows.ndim != 2 or (rows < 0).any():
            raise EvalError(f"{path}: semantic tokens must be [T] or [B, T] non-negative ids, got shape {rows.shape}")
        for b, r in enumerate(rows):
            out[f"{path.stem}#{b}"] = r.astype(np.uint16)
    if not out:
        raise EvalError(f"--generated {directory} holds no generate sidecars with semantic_tokens and no .npy token "
                        "arrays")
    return out


class Search(OneBlasThread):
    """record → (window index, Hit) per hit; ScanStats on the 'stats' tag."""

    def __init__(self, cfg: MemorizationConfig):
        self.cfg = cfg

    def process(self, rec, index: GeneratedIndex, tau: dict):
        radius = self.cfg.search_radius * tau["value"]
        hits, st = index.scan(rec.key, rec.uri, rec.semantic, radius, train_stride=self.cfg.train_stride,
                              max_ot_per_record=self.cfg.max_ot_per_record)
        beam.metrics.Metrics.counter(NS, "search_windows_hashed").inc(st.windows_hashed)
        beam.metrics.Metrics.counter(NS, "search_ot_solves").inc(st.ot_solves)
        yield beam.pvalue.TaggedOutput("stats", st)
        for h in hits:
            yield h.window, h


class SampleWindows(beam.DoFn):
    """record → (priority, source, tokens) of its non-overlapping windows (the negative pool)."""

    def __init__(self, cfg: MemorizationConfig):
        self.cfg = cfg

    def process(self, rec):
        w = self.cfg.continuation
        for s in window_starts(rec.semantic.shape[0], w, w).tolist():
            yield (mem.key_hash(self.cfg.seed, f"{rec.key}@{s}"), mem.source_of(rec.key),
                   np.asarray(rec.semantic[s:s + w], np.uint16))


class PoolNegatives(OneBlasThread):
    def __init__(self, centroids, ot_cfg, n: int, seed: int):
        self.centroids, self.ot_cfg, self.n, self.seed = centroids, ot_cfg, n, seed

    def setup(self):
        self.ot = TokenOT(self.centroids, self.ot_cfg)

    def process(self, pool):
        pool = sorted(pool, key=lambda x: x[0])
        pairs = mem.negative_pairs([x[1] for x in pool], self.n, self.seed)
        costs = [self.ot.cost(pool[i][2], pool[j][2]) for i, j in pairs.tolist()]
        LOG.info("memorization --generated: %d negative pairs from %d training windows", len(costs), len(pool))
        yield costs


def _sum_stats(stats) -> dict:
    total = ScanStats()
    for s in stats:
        total.add(s)
    return total.to_json()


def write_search_report(output: str, cfg: MemorizationConfig, plan_: Plan, index: GeneratedIndex, nearest,
                        negatives, stats, tau: dict) -> dict:
    from tokenmill.eval import memorization_report as rp

    near = dict(nearest)
    fr = plan_.frame_rate_hz
    windows, per_seq = [], {}
    n_exact = n_approx = 0
    for g, (sid, start) in enumerate(index.windows):
        hits = sorted(near.get(g, []), key=lambda h: (h.cost, h.key, h.offset))
        exact = any(h.exact for h in hits)
        approx = any(h.cost < tau["value"] for h in hits)
        n_exact += exact
        n_approx += approx
        seq = per_seq.setdefault(sid, {"sequence": sid, "windows": 0, "exact": 0, "approximate": 0})
        seq["windows"] += 1
        seq["exact"] += exact
        seq["approximate"] += approx
        if hits:
            windows.append({"sequence": sid, "start_s": start / fr, "exact": exact, "approximate": approx,
                            "nearest": [{"key": h.key, "uri": h.uri, "offset_s": h.offset / fr, "cost": h.cost,
                                         "exact": h.exact, "exact_offsets": h.exact_offsets} for h in hits]})
    scan = _sum_stats(stats)
    out = {"mode": "generated", "config": cfg.to_json(), "plan": plan_.describe(), "tau": tau,
           "window_frames": cfg.continuation, "window_s": cfg.continuation / fr,
           "overall": {"windows": len(index), "exact": share(n_exact, len(index)),
                       "approximate": share(n_approx, len(index))},
           "sequences": [per_seq[k] for k in sorted(per_seq)], "scan": scan, "windows_with_hits": windows}
    base = output.rstrip("/")
    write_bytes(f"{base}/{REPORT_NAME}", json.dumps(out, indent=1).encode())
    if cfg.plots:
        best = [min(h.cost for h in near[g]) for g in sorted(near)]
        write_bytes(f"{base}/cost_hist.png", rp.plot_costs(best, list(negatives), tau["value"],
                                                           f"--generated: nearest training window per generated "
                                                           f"window ({len(best)} with a candidate)"))
    return out


def build_search(p: beam.Pipeline, cfg: MemorizationConfig, plan_: Plan, generated: dict[str, np.ndarray]) -> None:
    index = GeneratedIndex(generated, plan_.centroids, window=cfg.continuation, stride=cfg.window_stride,
                           sketch_dims=cfg.sketch_dims, seed=cfg.seed, ot=TokenOT(plan_.centroids, cfg.ot))
    if not len(index):
        raise EvalError(f"--generated {cfg.generated}: no sequence is as long as one {cfg.continuation}-frame window; "
                        "lower --continuation or generate longer sequences")
    LOG.info("memorization --generated: %d windows of %d sequences", len(index), len(generated))
    records = (p | "Shards" >> beam.Create(list(plan_.specs)) | "SpreadShards" >> beam.Reshuffle()
               | "Read" >> beam.ParDo(ReadShard(plan_, cfg, protocol=False))
               | "SpreadRecords" >> beam.Reshuffle())  # a shard's records go to every worker
    negatives = (records | "NegativeWindows" >> beam.ParDo(SampleWindows(cfg))
                 | "Pool" >> beam.combiners.Top.Smallest(cfg.negative_windows, key=lambda x: (x[0], x[1]))
                 | "NegativeCosts" >> beam.ParDo(PoolNegatives(plan_.centroids, cfg.ot, cfg.negatives, cfg.seed)))
    tau = negatives | "Tau" >> beam.Map(lambda costs: tau_report(cfg, costs))
    index_pc = p | "Generated" >> beam.Create([index])
    found = records | "Search" >> beam.ParDo(Search(cfg), beam.pvalue.AsSingleton(index_pc),
                                             beam.pvalue.AsSingleton(tau)).with_outputs("stats", main="hits")
    nearest = found.hits | "Nearest" >> beam.combiners.Top.PerKey(
        cfg.nearest, key=lambda h: (h.cost, h.key, h.offset), reverse=True)
    _ = (p | "Report" >> beam.Create([cfg.output])
         | "Write" >> beam.Map(write_search_report, cfg, plan_, beam.pvalue.AsSingleton(index_pc),
                               beam.pvalue.AsList(nearest), beam.pvalue.AsSingleton(negatives),
                               beam.pvalue.AsList(found.stats), beam.pvalue.AsSingleton(tau)))
