"""`evaluate`: FAD, KLD and MCC of generated audio against reference audio, as a Beam job.

    caption files ─► ReadCaptionRows   (read on a worker; an AsDict side input by ytid)
                                ▼
    sources (both sides) ─► LoadClips ─► RunInference(EvalHandler) ─► ClipScore per clip
        ├─► frames per (side, embedder) ─► CombinePerKey(GaussStatsFn)   (count, mean, m2; Chan merge)
        └─► scores (reference frames reduced to clip means) ─► ToList ─┐
    dead letters ─► ToList ──────────────────────────────────────────────┴─► WriteReport

The statistics are a CombineFn, so the reference side (any size) is never held in memory; the
generated side's frames are gathered for the bootstrap and FAD-inf resamples (evaluation sets are
thousands of clips). WriteReport computes the numbers (tokenmill/eval/), and writes report.json,
report.md, the plots, clips.jsonl (one line per scored clip: side, key, duration_s, frames, and
for generated clips its KL and MCC), failures-{side}.jsonl and the reference statistics as content-addressed
artifacts in OUTPUT/reference_stats/ (`--reference_stats` reuses them: the reference is then not
embedded again). Counts reconcile per side: inputs = scored clips + dead letters.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from tokenmill import __version__
from tokenmill.eval import EvalError, artifact
from tokenmill.eval.fad import GaussStats
from tokenmill.eval.report import (FadInput, ResampleConfig, fad_section, kld_section, mcc_section,
                                   render_markdown, render_plots)
from tokenmill.pipelines.eval_sources import CaptionFiles, ClipAudio, Resolved, load_clips
from tokenmill.pipelines.handlers import Failed
from tokenmill.pipelines.ingest import DEAD, dead_letter
from tokenmill.pipelines.sinks import atomic_write
from tokenmill.schemas.shards import encode_dead_letters

LOG = logging.getLogger("tokenmill")
SIDES = ("generated", "reference")


@dataclass(frozen=True)
class EvaluateConfig:
    generated: str
    reference: str | None
    output: str
    embedders: tuple[str, ...] = ("mulan",)
    classifier: str | None = "mulan"  # None: no KLD
    mulan_model: str | None = "mulan"  # MCC model (None: no MCC)
    mulan_path: str | None = None
    kld_temperature: float | None = None
    labels: tuple[str, ...] = ()  # zero-shot vocabulary, fixed at launch
    levels: int | None = None
    acoustic_model: str | None = None
    device: str = "cpu"
    batch_size: int = 8
    torch_threads: int = 0
    name: str | None = None  # the model row's name in report.md
    resample: ResampleConfig = field(default_factory=ResampleConfig)


@dataclass(frozen=True)
class ClipScore:
    side: str
    key: str
    uri: str
    caption: str | None
    aspects: tuple[str, ...]
    duration_s: float
    embeddings: dict  # embedder spec -> float32 [F, D] (reference side in the report: clip mean [1, D])
    probs: np.ndarray | None  # float64 [L]
    mcc: tuple | None  # (text float32 [D], audio float32 [D]) for captioned generated clips


@dataclass
class EvalModels:
    embedders: dict  # spec -> Embedder
    classifier: Any
    mcc_model: Any


def build_models(cfg: EvaluateConfig, device: str = "cpu") -> EvalModels:
    from tokenmill.eval.classifiers import build_classifier
    from tokenmill.eval.embedders import build_embedder
    from tokenmill.eval.embedders.mulan_tower import load_mulan_model

    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    emb = {s: build_embedder(s, device=device) for s in cfg.embedders}
    clf = (build_classifier(cfg.classifier, labels=list(cfg.labels) or None, temperature=cfg.kld_temperature,
                            device=device) if cfg.classifier else None)
    mcc = load_mulan_model(cfg.mulan_model, cfg.mulan_path, device) if cfg.mulan_model else None
    return EvalModels(emb, clf, mcc)


def needed_rates(models: EvalModels) -> tuple[int, ...]:
    rates = {e.sample_rate_hz for e in models.embedders.values()}
    rates |= {m.sample_rate_hz for m in (models.classifier, models.mcc_model) if m is not None}
    return tuple(sorted(rates))


def describe_models(models: EvalModels) -> dict:
    return {"embedders": {s: e.describe() for s, e in models.embedders.items()},
            "classifier": models.classifier.describe() if models.classifier else None,
            "classifier_labels": list(models.classifier.labels) if models.classifier else None,
            "mcc_model": models.mcc_model.describe() if models.mcc_model else None}


class EvalHandler(ModelHandler):
    """ClipAudio → ClipScore (or Failed): every embedder's frames (reference side: only those
    without saved reference statistics), the classifier's distribution, and for captioned
    generated clips the caption's text embedding and the clip's pooled audio embedding."""

    def __init__(self, cfg: EvaluateConfig, reused: frozenset[str]):
        super().__init__(min_batch_size=1, max_batch_size=cfg.batch_size)
        self.cfg, self.reused = cfg, reused

    def load_model(self) -> EvalModels:
        return build_models(self.cfg, device=self.cfg.device)

    def _score(self, c: ClipAudio, m: EvalModels) -> ClipScore:
        from tokenmill.eval.classifiers.zero_shot import clip_embedding

        emb = {s: e.embed(c.waves[e.sample_rate_hz]) for s, e in m.embedders.items()
               if not (c.side == "reference" and s in self.reused)}
        probs = m.classifier.probs(c.waves[m.classifier.sample_rate_hz]) if m.classifier else None
        mcc = None
        if m.mcc_model is not None and c.side == "generated" and c.caption:
            mcc = (m.mcc_model.embed_text([c.caption])[0], clip_embedding(m.mcc_model, c.waves[m.mcc_model.sample_rate_hz]))
        return ClipScore(c.side, c.key, c.uri, c.caption, c.aspects, c.duration_s, emb, probs, mcc)

    def run_inference(self, batch: Sequence[ClipAudio], model: EvalModels, inference_args=None):
        out = []
        for c in batch:
            try:
                r = self._score(c, model)
            except Exception as e:  # noqa: BLE001 — this clip's dead letter
                r = Failed(e)
            out.append(PredictionResult(c, r))
        return out

    def get_num_bytes(self, batch: Sequence[ClipAudio]) -> int:
        return sum(w.nbytes for c in batch for w in c.waves.values())

    def get_metrics_namespace(self) -> str:
        return "tokenmill_evaluate"


class SplitScores(beam.DoFn):
    def process(self, pr: PredictionResult):
        clip, r = pr.example, pr.inference
        if isinstance(r, Failed):
            if not hasattr(r.exc, "reason"):
                LOG.warning("unexpected %s scoring %s: %s", type(r.exc).__name__, clip.uri, r.exc)
            yield beam.pvalue.TaggedOutput(DEAD, (clip.side, dead_letter(clip.uri, "score", r.exc, key=clip.key)))
        else:
            yield r


class GaussStatsFn(beam.CombineFn):
    """float [F, D] frame batches → GaussStats (float64, Chan's parallel merge: split-independent)."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, frames):
        s = GaussStats.of(frames)
        return s if acc is None else acc.merge(s)

    def merge_accumulators(self, accs):
        out = None
        for a in accs:
            if a is not None:
                out = a if out is None else out.merge(a)
        return out

    def extract_output(self, acc):
        return acc


def _light(s: ClipScore) -> ClipScore:
    """What the report needs of a clip: the reference side keeps one clip mean per embedder."""
    if s.side == "generated":
        return s
    return ClipScore(s.side, s.key, s.uri, s.caption, s.aspects, s.duration_s,
                     {k: v.mean(axis=0, keepdims=True) for k, v in s.embeddings.items()}, s.probs, None)


class WriteReport(beam.DoFn):
    def __init__(self, cfg: EvaluateConfig, descs: dict, inputs: dict, reused: dict, notes: list[str]):
        self.cfg, self.descs, self.inputs, self.reused, self.notes = cfg, descs, inputs, reused, notes

    def process(self, _, stats: dict, scores: list, dead: list):
        cfg, rc = self.cfg, self.cfg.resample
        out = cfg.output.rstrip("/")
        notes = list(self.notes)
        by_side = {s: sorted((x for x in scores if x.side == s), key=lambda x: x.key) for s in SIDES}
        dead_by = {s: sorted((d for side, d in dead if side == s), key=lambda d: d.sort_key()) for s in SIDES}
        for s in SIDES:
            counts = _count(x.key for x in by_side[s])
            dup = [k for k, n in counts.items() if n > 1]
            if dup:
                raise EvalError(f"{s}: several clips have the key(s) {', '.join(dup[:5])} (a dataset with two sources "
                                "of the same file stem?); clips pair by key, so rename the sources")
        inputs = {}
        for s in SIDES:
            n_in = self.inputs[s]["n_inputs"]
            if n_in is not None and n_in != len(by_side[s]) + len(dead_by[s]):
                raise EvalError(f"{s}: {n_in} inputs but {len(by_side[s])} scored + {len(dead_by[s])} dead letters; "
                                "counts do not reconcile (please report this)")
            inputs[s] = {**self.inputs[s], "inputs": len(by_side[s]) + len(dead_by[s]), "scored": len(by_side[s]),
                         "dead_letters": len(dead_by[s]),
                         "dead_by_reason": _count(d.reason for d in dead_by[s])}
            atomic_write(f"{out}/failures-{s}.jsonl", encode_dead_letters(dead_by[s]))
        rep: dict = {"tokenmill_version": __version__, "config": _jsonable(asdict(cfg)), "inputs": inputs,
                     "fad": {}, "kld": None, "mcc": None, "notes": notes}
        projections = {}
        for spec, desc in self.descs["embedders"].items():
            gen = stats.get(("generated", spec))
            if spec in self.reused:
                ref, ref_id, n_ref_clips = self.reused[spec]["stats"], self.reused[spec]["id"], self.reused[spec]["n_clips"]
            else:
                ref, n_ref_clips = stats.get(("reference", spec)), len(by_side["reference"])
                ref_id = None
                if ref is not None:
                    ref_id, blob, card = artifact.encode(ref, desc, {
                        "spec": self.inputs["reference"]["spec"], "kind": self.inputs["reference"]["kind"],
                        "clips": n_ref_clips, "levels": cfg.levels})
                    atomic_write(f"{out}/reference_stats/{ref_id}.safetensors", blob)
                    atomic_write(f"{out}/reference_stats/{ref_id}.json", card)
            if gen is None or ref is None or gen.n < 2 or ref.n < 2:
                notes.append(f"FAD {spec}: not computed (generated {0 if gen is None else gen.n}, reference "
                             f"{0 if ref is None else ref.n} embeddings; each side needs at least 2)")
                continue
            clips = [x.embeddings[spec] for x in by_side["generated"]]
            rep["fad"][spec] = fad_section(FadInput(desc, clips, gen, ref, n_ref_clips, ref_id), rc)
            ref_means = (np.concatenate([x.embeddings[spec] for x in by_side["reference"]])
                         if by_side["reference"] and spec not in self.reused else None)
            projections[spec] = (ref_means, np.stack([c.mean(axis=0) for c in clips]))
        kl_values, per_clip = None, {}
        if self.descs["classifier"] is not None:
            ref_p = {x.key: x.probs for x in by_side["reference"]}
            pairs = [(x.key, ref_p[x.key], x.probs) for x in by_side["generated"] if x.key in ref_p]
            n_gen, n_ref = len(by_side["generated"]), len(ref_p)
            if not pairs:
                notes.append(f"KLD: no pairs (no key is scored on both sides: {n_gen} generated, {n_ref} reference)")
            else:
                rep["kld"], kl_values = kld_section(
                    self.descs["classifier"], [k for k, _, _ in pairs], np.stack([p for _, p, _ in pairs]),
                    np.stack([q for _, _, q in pairs]), self.descs["classifier_labels"], rc)
                rep["kld"]["unpaired"] = {"generated": n_gen - len(pairs), "reference": n_ref - len(pairs)}
                per_clip.update({k: {"kl_ref_gen": float(v)} for (k, _, _), v in zip(pairs, kl_values)})
        if self.descs["mcc_model"] is not None:
            cap = [x for x in by_side["generated"] if x.mcc is not None]
            if not cap:
                notes.append("MCC: no captioned generated clip (give a MusicCaps-format CSV as --generated or "
                             "--captions CSV)")
            else:
                rep["mcc"], cos = mcc_section(self.descs["mcc_model"], np.stack([x.mcc[0] for x in cap]),
                                            np.stack([x.mcc[1] for x in cap]), [x.aspects for x in cap], rc)
                rep["mcc"]["uncaptioned_generated_clips"] = len(by_side["generated"]) - len(cap)
                for x, c in zip(cap, cos):
                    per_clip.setdefault(x.key, {})["mcc"] = float(c)
        for note in notes:
            LOG.info("evaluate: %s", note)
        lines = [json.dumps(_jsonable({"side": x.side, "key": x.key, "uri": x.uri, "duration_s": x.duration_s,
                                       "frames": {k: int(v.shape[0]) for k, v in x.embeddings.items()} if s == "generated" else None,
                                       **(per_clip.get(x.key, {}) if s == "generated" else {})}))
                 for s in SIDES for x in by_side[s]]
        atomic_write(f"{out}/clips.jsonl", ("\n".join(lines) + "\n" if lines else "").encode())
        atomic_write(f"{out}/report.json", (json.dumps(_jsonable(rep), indent=1) + "\n").encode())
        atomic_write(f"{out}/report.md", render_markdown(rep).encode())
        for name, png in render_plots(rep, kl_values, projections).items():
            atomic_write(f"{out}/{name}", png)
        yield rep


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return dict(sorted(out.items()))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def build_evaluate(p: beam.Pipeline, cfg: EvaluateConfig, *, sides: dict[str, Resolved], descs: dict,
                   rates_hz: tuple[int, ...], captions: CaptionFiles | None, reused: dict,
                   notes: list[str]) -> beam.PCollection:
    """The job graph (module docstring). `sides`: resolved sources; `captions`: the caption files
    the job reads and joins itself (eval_sources.caption_files: paths only); `reused`: embedder
    spec → {"stats", "id", "n_clips"} loaded from --reference_stats."""
    sources = [s for r in sides.values() for s in r.sources]
    pre_dead = [(side, d) for side, r in sides.items() for d in r.dead]
    inputs = {s: {"spec": sides[s].spec if s in sides else None, "kind": sides[s].kind if s in sides else None,
                  "n_inputs": (sides[s].n_records if sides[s].kind == "dataset" else len(sides[s].sources)
                               + len(sides[s].dead)) if s in sides else 0} for s in SIDES}
    loaded = load_clips(p, sources, rates_hz, captions, cfg.levels, cfg.acoustic_model)
    scored = (loaded.clips | "Score" >> RunInference(EvalHandler(cfg, frozenset(reused)))
              | "Split" >> beam.ParDo(SplitScores()).with_outputs(DEAD, main="scores"))
    stats = (scored.scores
             | "Frames" >> beam.FlatMap(lambda s: [((s.side, k), v) for k, v in s.embeddings.items()])
             | "Stats" >> beam.CombinePerKey(GaussStatsFn()))
    light = scored.scores | "Light" >> beam.Map(_light) | "Gather" >> beam.combiners.ToList()
    dead = ((p | "PreDead" >> beam.Create(pre_dead), loaded[DEAD], scored[DEAD]) | "AllDead" >> beam.Flatten()
            | "GatherDead" >> beam.combiners.ToList())
    return (p | "Once" >> beam.Create([None])
            | "Report" >> beam.ParDo(WriteReport(cfg, descs, inputs, reused, notes), beam.pvalue.AsDict(stats),
                                     beam.pvalue.AsSingleton(light), beam.pvalue.AsSingleton(dead)))


def load_reference_stats(directory: str, descs: dict) -> dict:
    """embedder spec → {"stats", "id", "n_clips"} for each embedder with a matching artifact in
    `directory` (card's embedder name, config and weights hash equal to the embedder's)."""
    found = {}
    cards = FileSystems.match([f"{directory.rstrip('/')}/*.json"])[0].metadata_list
    if not cards:
        raise EvalError(f"--reference_stats {directory}: no artifact cards (*.json) there; point it at the "
                        "reference_stats/ folder an earlier evaluate wrote")
    for m in sorted(cards, key=lambda m: m.path):
        with FileSystems.open(m.path) as f:
            card = json.loads(f.read())
        for spec, desc in descs["embedders"].items():
            if spec not in found and artifact.matches(card, desc):
                with FileSystems.open(m.path[: -len(".json")] + ".safetensors") as f:
                    stats = artifact.decode(f.read(), card, m.path)
                found[spec] = {"stats": stats, "id": card["id"], "n_clips": (card.get("data") or {}).get("clips")}
    return found
