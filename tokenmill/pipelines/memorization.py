"""`memorization`: does a trained semantic stage copy its training data? (MusicLM §4.4, as a Beam job;
its options: pipelines/memorization_options.py)

    shard specs ─► ReadShard ─► (priority, record) ─► Top.Smallest(N) ─► MakeExample ─► prompts
    prompts ─► RunInference(GreedySemanticHandler) ─► Score (exact, OT cost) ─┐
    prompts ─► true continuations ─► negative pairs ─► OT costs ──────────────┼─► WriteReport
    ReadShard's counts (eligible, too short) ─────────────────────────────────┘   memorization.json + PNGs

The protocol itself (examples, prompts, matches, tau) is tokenmill/eval/memorization.py; the
`--generated` search is pipelines/memorization_search.py. Everything the workers need is resolved
on the launcher first (``plan``): the checkpoint and its layout, the shards (codebook ids checked
against the checkpoint's before any shard is read), the codebook (its id checked against the
manifest's) and the MuLan RVQ the trainer used for M.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from tokenmill.eval import EvalError
from tokenmill.eval import memorization as mem
from tokenmill.eval.ot import OTConfig, TokenOT
from tokenmill.pipelines.handlers import Failed, per_element
from tokenmill.pipelines.sinks import atomic_write

LOG = logging.getLogger("tokenmill")
NS = "tokenmill"
REPORT_NAME = "memorization.json"


@dataclass(frozen=True)
class MemorizationConfig:
    dataset: str  # dataset root or manifest URL (local, file://, http(s)://, gs://, s3://)
    output: str  # report directory
    checkpoints: str | None = None  # semantic stage checkpoint (DIR/semantic, a trainer --out, or a step dir)
    examples: int = 1000
    prompt_tokens: tuple[int, ...] = tuple(range(0, 251, 25))  # T, semantic frames (0-10 s at 25 Hz)
    continuation: int = 125  # C, semantic frames (5 s): also the window of the --generated search
    seed: int = 0
    negatives: int = 20_000  # negative pairs for tau
    max_fpr: float = 1e-4  # false positives allowed among the negatives (the paper: 0.01 %)
    tau: float | None = None  # fixed tau (its false-positive rate is still measured); None: calibrate
    ot: OTConfig = field(default_factory=OTConfig)
    codebook: str | None = None  # semantic codebook artifact; None: the manifest's job.codebook
    mulan_codebook: str | None = None  # MuLan RVQ for M; None: the trainer's (or the packaged one)
    device: str = "cpu"
    batch_size: int = 16  # prompts per forward pass
    torch_threads: int = 0  # 0: torch's default
    splits: tuple[str, ...] = ("train",)
    verify_checksums: bool = True
    plots: bool = True
    # --generated search (pipelines/memorization_search.py)
    generated: str | None = None
    window_stride: int = 25  # generated windows every N frames (1 s)
    train_stride: int = 1  # training windows sketched every N frames (hashes: every frame)
    sketch_dims: int = 8  # projected dims of the prefilter's mean-centroid sketch
    search_radius: float = 1.0  # report training windows with cost < search_radius x tau
    max_ot_per_record: int = 4  # OT solves per generated window per record (by smallest sketch distance)
    nearest: int = 5  # training windows reported per generated window
    negative_windows: int = 2000  # training windows pooled for the negative pairs of the search

    def __post_init__(self) -> None:
        checks = [(self.examples >= 1, f"--examples must be >= 1, got {self.examples}"),
                  (self.continuation >= 1, f"--continuation must be >= 1 frame, got {self.continuation}"),
                  (self.negatives >= 1, f"--negatives must be >= 1, got {self.negatives}"),
                  (0 <= self.max_fpr < 1, f"--max_fpr must be in [0, 1), got {self.max_fpr}"),
                  (self.tau is None or self.tau >= 0, f"--tau must be >= 0, got {self.tau}"),
                  (self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}"),
                  (self.window_stride >= 1 and self.train_stride >= 1, "strides must be >= 1 frame"),
                  (self.search_radius > 0, f"--search_radius must be > 0, got {self.search_radius}"),
                  (self.max_ot_per_record >= 1 and self.nearest >= 1, "--max_ot_per_record and --nearest must be >= 1"),
                  (self.negative_windows >= 2, f"--negative_windows must be >= 2, got {self.negative_windows}"),
                  (self.generated is not None or self.checkpoints is not None,
                   "--checkpoints DIR is needed (the semantic stage to test), unless --generated DIR is given")]
        for ok, msg in checks:
            if not ok:
                raise EvalError(msg)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# ---- the launcher's plan ------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What the workers need, resolved and checked on the launcher."""

    specs: tuple  # training.data.ShardSpec
    manifest_url: str
    manifest_codebooks: dict
    centroids: np.ndarray  # float32 [K, D]
    codebook_id: str
    codebook_path: str
    frame_rate_hz: float
    checkpoint: str | None = None  # the resolved step directory
    checkpoint_step: int | None = None
    layout: dict | None = None  # StageLayout.to_json()
    crop: Any = None  # CropConfig of the trainer
    streams: Any = None  # crops.StreamLayout
    rvq_path: str | None = None

    def describe(self) -> dict:
        return {"dataset_manifest": self.manifest_url, "codebooks": self.manifest_codebooks,
                "codebook": {"id": self.codebook_id, "path": self.codebook_path, "k": int(self.centroids.shape[0]),
                             "dim": int(self.centroids.shape[1])},
                "checkpoint": None if self.checkpoint is None else {"path": self.checkpoint, "step": self.checkpoint_step},
                "semantic_frame_rate_hz": self.frame_rate_hz, "shards": len(self.specs)}


def semantic_checkpoint(path: str) -> str:
    """DIR/semantic when DIR holds one (the layout `generate --checkpoints` reads), else DIR."""
    return os.path.join(path, "semantic") if os.path.isdir(os.path.join(path, "semantic")) else path


def load_semantic_codebook(path: str | None, manifest: dict, where: str):
    """(Codebook, path): `path` or the manifest's job.codebook, its id checked against the manifest's."""
    from tokenmill.pipelines.handlers import load_codebook

    want = (manifest.get("codebooks") or {}).get("semantic")
    path = path or (manifest.get("job") or {}).get("codebook")
    if not path:
        raise EvalError(f"{where} names no semantic codebook file (job.codebook); pass --codebook PATH of {want}")
    try:
        cb = load_codebook(path)
    except FileNotFoundError as e:
        raise EvalError(f"the dataset's semantic codebook is not readable here ({e}); pass --codebook PATH of "
                        f"{want}.safetensors") from None
    if cb.id != want:
        raise EvalError(f"codebook {path} is {cb.id} but {where} was tokenized with {want}; pass --codebook PATH "
                        f"of {want}.safetensors (the k-means centroids give the OT ground cost)")
    return cb, path


def plan(cfg: MemorizationConfig) -> Plan:
    """Resolve and check everything before the job starts (fix-it errors, nothing read twice)."""
    from tokenmill.training.data import resolve_shards

    expect, ck = None, {}
    if cfg.generated is None:
        from tokenmill.training.checkpoint import read_state
        from tokenmill.training.crops import CropConfig, StreamLayout
        from tokenmill.training.stages import StageLayout

        d, state = read_state(semantic_checkpoint(cfg.checkpoints))
        if state.get("stage") != "semantic":
            raise EvalError(f"{d} is a {state.get('stage')} stage checkpoint; the memorization protocol runs the "
                            "semantic stage: pass its trainer --out (or a directory holding semantic/)")
        layout = StageLayout.from_json(state["layout"])
        ds = state.get("dataset") or {}
        expect = {k: v for k, v in (ds.get("codebooks") or {}).items()
                  if k == "semantic" or (k in ("mulan", "melody") and any(p.name == k for p in layout.conditioning))}
        train = state.get("train") or {}
        crop = CropConfig(semantic_s=train.get("semantic_s", 30.0), coarse_s=train.get("coarse_s", 10.0),
                          fine_s=train.get("fine_s", 3.0), short_tracks=train.get("short_tracks", "pad"),
                          mulan_stages=tuple(train.get("mulan_stages", ("semantic", "coarse"))),
                          melody_stages=("semantic",) if any(p.name == "melody" for p in layout.conditioning) else (),
                          melody_dropout=0.0)
        need = max(cfg.prompt_tokens) + cfg.continuation
        if need > layout.target.frames:
            raise EvalError(f"max T {max(cfg.prompt_tokens)} + continuation {cfg.continuation} = {need} frames exceed "
                            f"the {layout.target.frames}-frame crops the stage was trained on ({d}); the model never "
                            "saw a sequence that long: lower --prompt_tokens or --continuation")
        rvq_path = None
        if any(p.name == "mulan" for p in layout.conditioning):
            rvq_path = _rvq_path(cfg.mulan_codebook or train.get("mulan_codebook"), expect.get("mulan"))
        ck = dict(checkpoint=str(d), checkpoint_step=state.get("step"), layout=layout.to_json(), crop=crop,
                  streams=StreamLayout.from_manifest(ds), rvq_path=rvq_path)
    specs, manifest, m_url = resolve_shards(cfg.dataset, splits=cfg.splits, expect_codebooks=expect,
                                            verify_checksums=cfg.verify_checksums)
    cb, cb_path = load_semantic_codebook(cfg.codebook, manifest, m_url)
    sem = manifest["streams"]["semantic"]
    rate = float(sem.get("frame_rate_hz") or sem["sample_rate_hz"] / sem["hop_samples"])
    return Plan(tuple(specs), m_url, dict(manifest.get("codebooks") or {}), np.asarray(cb.centroids), cb.id,
                str(cb_path), rate, **ck)


def _rvq_path(path: str | None, want: str | None) -> str:
    from tokenmill.tokenizers.rvq import RVQCodebook
    from tokenmill.training.train import DEFAULT_MULAN_RVQ

    path = str(path or DEFAULT_MULAN_RVQ)
    rvq = RVQCodebook.load(path)
    if rvq.id != want:
        raise EvalError(f"MuLan RVQ {path} is {rvq.id} but the stage's M tokens were made with {want}; pass "
                        f"--mulan_codebook PATH of {want}.safetensors (the one tokenize used)")
    return path


# ---- transforms ---------------------------------------------------------------------------------

class OneBlasThread(beam.DoFn):
    """A DoFn whose bundles run with one BLAS thread: the OT kernels multiply many small matrices
    (125 x D), where OpenBLAS's threads cost more than they give, 40x on a busy 2-core machine
    (0.24 ms vs 9.7 ms for one ground-cost matrix); workers are the parallelism."""

    def start_bundle(self):
        from threadpoolctl import threadpool_limits

        self._blas = threadpool_limits(limits=1, user_api="blas")

    def finish_bundle(self):
        self._blas.restore_original_limits()


class ReadShard(beam.DoFn):
    """ShardSpec → records (checksummed, decoded). Protocol mode: (priority, key, record) of the
    records long enough for the prompts, and a ('count', reason) per record on the 'counts' tag."""

    def __init__(self, plan_: Plan, cfg: MemorizationConfig, protocol: bool):
        self.plan, self.cfg, self.protocol = plan_, cfg, protocol

    def process(self, spec):
        from tokenmill.schemas import rates
        from tokenmill.training.data import load_shard

        recs = load_shard(spec, verify_checksums=self.cfg.verify_checksums, manifest_url=self.plan.manifest_url)
        beam.metrics.Metrics.counter(NS, "memorization_records_read").inc(len(recs))
        need = max(self.cfg.prompt_tokens) + self.cfg.continuation
        for rec in recs:
            rec = dataclasses.replace(rec, acoustic=None)  # only semantic (and M) are read downstream
            if not self.protocol:
                yield rec
                continue
            crop_q = self.plan.crop.length_q("semantic")
            valid_q = min(rates.quanta_of_seconds(rec.duration_s), crop_q)
            frames = rates.frames_for_quanta(valid_q, self.plan.streams.semantic)
            if frames < need:
                yield beam.pvalue.TaggedOutput("counts", "too_short")
                continue
            yield beam.pvalue.TaggedOutput("counts", "eligible")
            yield mem.key_hash(self.cfg.seed, rec.key), rec.key, rec


class MakeExample(beam.DoFn):
    """The sampled records (a list, smallest priority first) → Examples: the trainer's crop and its M."""

    def __init__(self, plan_: Plan, cfg: MemorizationConfig):
        self.plan, self.cfg = plan_, cfg

    def setup(self):
        self.rvq = None
        if self.plan.rvq_path is not None:
            from tokenmill.tokenizers.rvq import RVQCodebook

            self.rvq = RVQCodebook.load(self.plan.rvq_path)

    def process(self, sample):
        from tokenmill.schemas import rates
        from tokenmill.training.crops import crop_at

        for index, (_, key, rec) in enumerate(sorted(sample, key=lambda x: (x[0], x[1]))):
            crop_q = self.plan.crop.length_q("semantic")
            total_q = rates.quanta_of_seconds(rec.duration_s)
            q0 = mem.crop_start_q(total_q, crop_q, self.cfg.seed, key)
            crop = crop_at(rec, "semantic", q0, self.plan.streams, self.plan.crop, self.rvq)
            n = rates.frames_for_quanta(crop.valid_q, self.plan.streams.semantic)
            yield mem.Example(index, key, rec.uri, q0, crop.mulan, np.asarray(crop.semantic[:n], np.uint16),
                              crop.melody)


@dataclass(eq=False)
class LoadedStage:
    """The semantic stage on a worker (a class, not a tuple: Beam's shared model handle holds a weakref)."""

    model: Any  # training.model.Transformer, eval mode
    layout: Any  # training.stages.StageLayout
    allowed: Any  # torch bool [1, vocab]: the semantic ids


class GreedySemanticHandler(ModelHandler):
    """Prompt → PredictionResult(prompt, uint16 [C] greedy continuation, or Failed). A batch is
    split by prompt length (prompts of one T have one length) and decoded with the KV cache."""

    def __init__(self, checkpoint: str, continuation: int, device: str = "cpu", batch_size: int = 16,
                 torch_threads: int = 0):
        super().__init__(min_batch_size=1, max_batch_size=batch_size)
        self.checkpoint, self.continuation, self.device = checkpoint, continuation, device
        self.torch_threads = torch_threads

    def load_model(self):
        import torch

        from tokenmill.training.checkpoint import load_model

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        model, layout, _ = load_model(self.checkpoint, self.device)
        return LoadedStage(model, layout, torch.from_numpy(layout.allowed()).to(self.device))

    def _decode(self, prompts: list, model) -> list[np.ndarray]:
        import torch

        ids = torch.from_numpy(np.stack([p.ids for p in prompts])).to(self.device)
        out = model.model.generate(ids, self.continuation, temperature=0.0, allowed=model.allowed)
        return list(model.layout.target_tokens(out[:, ids.shape[1]:].cpu().numpy()))

    def run_inference(self, batch, model, inference_args=None):
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(batch):
            by_len.setdefault(len(p.ids), []).append(i)
        out: list[Any] = [None] * len(batch)
        for idx in by_len.values():
            group = [batch[i] for i in idx]
            res = per_element(lambda ps: self._decode(ps, model), lambda p: self._decode([p], model)[0], group)
            for i, r in zip(idx, res):
                out[i] = r
        return [PredictionResult(p, r) for p, r in zip(batch, out)]

    def get_metrics_namespace(self) -> str:
        return "tokenmill_memorization"


class Score(OneBlasThread):
    """PredictionResult → Scored (main) or a dead letter dict ('failed')."""

    def __init__(self, centroids: np.ndarray, ot_cfg: OTConfig):
        self.centroids, self.ot_cfg = centroids, ot_cfg

    def setup(self):
        self.ot = TokenOT(self.centroids, self.ot_cfg)

    def process(self, res):
        p, gen = res.example, res.inference
        if isinstance(gen, Failed):
            beam.metrics.Metrics.counter(NS, "memorization_failed").inc()
            yield beam.pvalue.TaggedOutput("failed", {
                "index": p.index, "key": p.key, "prompt_tokens": p.prompt_tokens, "stage": "inference", "reason": "inference-error",
                "error": type(gen.exc).__name__, "message": f"{p.key} at T = {p.prompt_tokens}: {gen.exc}"})
            return
        s = mem.score(p, gen, self.ot.cost)
        beam.metrics.Metrics.counter(NS, "memorization_exact").inc(int(s.exact))
        yield s


class NegativeCosts(OneBlasThread):
    """All truths [(order, source, tokens)] → the OT costs of `n` random cross-source pairs."""

    def __init__(self, centroids: np.ndarray, ot_cfg: OTConfig, n: int, seed: int):
        self.centroids, self.ot_cfg, self.n, self.seed = centroids, ot_cfg, n, seed

    def setup(self):
        self.ot = TokenOT(self.centroids, self.ot_cfg)

    def process(self, truths):
        truths = sorted(truths, key=lambda x: x[0])
        pairs = mem.negative_pairs([t[1] for t in truths], self.n, self.seed)
        LOG.info("memorization: %d negative pairs from %d true continuations", len(pairs), len(truths))
        for i, j in pairs.tolist():
            yield self.ot.cost(truths[i][2], truths[j][2])


def write_bytes(path: str, data: bytes) -> None:
    """Reports and plots, like every output: a temp name, then a rename (sinks.atomic_write)."""
    atomic_write(path, data)


def tau_report(cfg: MemorizationConfig, negative_costs) -> dict:
    neg = np.asarray(list(negative_costs), np.float64)
    if cfg.tau is not None:
        return mem.threshold_report(neg, cfg.tau, cfg.max_fpr, source="given")
    return mem.calibrate_tau(neg, cfg.max_fpr)


def write_report(output: str, cfg: MemorizationConfig, plan_: Plan, scored, negatives, failed, counts,
                 n_examples: int) -> dict:
    from tokenmill.eval import memorization_report as rp

    scored = sorted(scored, key=lambda s: (s.index, s.prompt_tokens))
    tau = tau_report(cfg, negatives)
    summary = rp.summarize(scored, tau["value"], cfg.prompt_tokens, plan_.frame_rate_hz)
    counts = dict(counts)
    examples = int(n_examples)
    counts.update({"examples": examples, "prompts": len(scored) + len(failed), "scored": len(scored),
                   "failed": len(failed)})
    out = {"mode": "protocol", "config": cfg.to_json(), "plan": plan_.describe(), "ot": asdict(cfg.ot), "tau": tau,
           "counts": counts, **summary, "failures": sorted(failed, key=lambda f: (f["key"], f["prompt_tokens"]))}
    base = output.rstrip("/")
    write_bytes(f"{base}/{REPORT_NAME}", json.dumps(out, indent=1).encode())
    if cfg.plots:
        title = f"{plan_.checkpoint} (step {plan_.checkpoint_step}), {examples} examples, {cfg.ot.method} OT"
        write_bytes(f"{base}/match_share.png", rp.plot_match_share(summary["by_prompt"], title))
        write_bytes(f"{base}/cost_hist.png", rp.plot_costs([s.cost for s in scored], list(negatives), tau["value"],
                                                           title))
    return out


def build_memorization(p: beam.Pipeline, cfg: MemorizationConfig, plan_: Plan) -> None:
    """The protocol job (module docstring)."""
    read = (p | "Shards" >> beam.Create(list(plan_.specs)) | "SpreadShards" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(ReadShard(plan_, cfg, protocol=True)).with_outputs("counts", main="records"))
    counts = read.counts | "CountReasons" >> beam.combiners.Count.PerElement()
    sample = read.records | "Sample" >> beam.combiners.Top.Smallest(cfg.examples, key=lambda x: (x[0], x[1]))
    examples = sample | "Examples" >> beam.ParDo(MakeExample(plan_, cfg))
    n_examples = examples | "CountExamples" >> beam.combiners.Count.Globally()
    from tokenmill.training.stages import StageLayout

    layout = StageLayout.from_json(plan_.layout)
    prompts = examples | "Prompts" >> beam.FlatMap(mem.prompts_of, layout, cfg.prompt_tokens, cfg.continuation)
    handler = GreedySemanticHandler(plan_.checkpoint, cfg.continuation, cfg.device, cfg.batch_size, cfg.torch_threads)
    scored = (prompts | "Greedy" >> RunInference(handler)
              | "Score" >> beam.ParDo(Score(plan_.centroids, cfg.ot)).with_outputs("failed", main="scored"))
    negatives = (prompts
                 | "Truths" >> beam.Map(lambda q: ((q.index, q.prompt_tokens), mem.source_of(q.key), q.truth))
                 | "AllTruths" >> beam.combiners.ToList()
                 | "NegativePairs" >> beam.ParDo(NegativeCosts(plan_.centroids, cfg.ot, cfg.negatives, cfg.seed)))
    _ = (p | "Report" >> beam.Create([cfg.output])
         | "Write" >> beam.Map(write_report, cfg, plan_, beam.pvalue.AsList(scored.scored),
                               beam.pvalue.AsList(negatives), beam.pvalue.AsList(scored.failed),
                               beam.pvalue.AsDict(counts), beam.pvalue.AsSingleton(n_examples)))


def read_report(output: str) -> dict:
    with FileSystems.open(f"{output.rstrip('/')}/{REPORT_NAME}") as f:
        return json.load(f)


def format_summary(rep: dict) -> str:
    tau = rep["tau"]
    lines = [f"memorization ({rep['mode']}): tau {tau['value']:.4g} ({tau['source']}; {tau['false_positives']} of "
             f"{tau['negatives']} negatives below it, FPR 95 % upper bound {tau['fpr_ci95'][1]:.2g})"]
    if rep["mode"] == "protocol":
        c = rep["counts"]
        lines.append(f"  {c['examples']} examples ({c.get('eligible', 0)} eligible records, {c.get('too_short', 0)} too "
                     f"short), {c['prompts']} prompts, {c['failed']} failed")
        lines.append("   T (s)   exact %  [95 % CI]          approximate %  [95 % CI]      median cost")
        for r in rep["by_prompt"]:
            e, a = r["exact"], r["approximate"]
            lines.append(f"  {r['prompt_s']:6.2f}  {100 * (e['share'] or 0):7.2f}  [{100 * e['ci95'][0]:.2f}, "
                         f"{100 * e['ci95'][1]:.2f}]    {100 * (a['share'] or 0):7.2f}  [{100 * a['ci95'][0]:.2f}, "
                         f"{100 * a['ci95'][1]:.2f}]    {r['cost'].get('median', float('nan')):.4g}")
        ent = rep["entropy_bits"]
        if ent["matched_mean"] is not None:
            lines.append(f"  entropy (bits): matched {ent['matched_mean']:.2f}, all generated "
                         f"{ent['generated_mean']:.2f}, truths {ent['truth_mean']:.2f}")
    else:
        o = rep["overall"]
        lines.append(f"  {o['windows']} generated windows of {len(rep['sequences'])} sequences searched against "
                     f"{rep['scan']['tokens']} training tokens ({rep['scan']['records']} records)")
        lines.append(f"  exact copies {o['exact']['count']} ({100 * (o['exact']['share'] or 0):.2f} %), approximate "
                     f"{o['approximate']['count']} ({100 * (o['approximate']['share'] or 0):.2f} %); OT solves "
                     f"{rep['scan']['ot_solves']}, capped windows {rep['scan']['capped']}")
    return "\n".join(lines)


def run_memorization(cfg: MemorizationConfig, beam_args: list[str]) -> dict:
    """Plan, build and run the job (protocol or --generated); returns the report."""
    from tokenmill.pipelines.runner import make_pipeline

    plan_ = plan(cfg)
    LOG.info("memorization: %d shards of %s, codebook %s%s", len(plan_.specs), plan_.manifest_url,
             plan_.codebook_id, "" if plan_.checkpoint is None else f", checkpoint {plan_.checkpoint}")
    with make_pipeline(beam_args) as p:
        if cfg.generated is None:
            build_memorization(p, cfg, plan_)
        else:
            from tokenmill.pipelines.memorization_search import build_search, load_generated

            build_search(p, cfg, plan_, load_generated(cfg.generated, plan_))
    return read_report(cfg.output)
