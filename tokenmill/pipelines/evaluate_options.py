"""`evaluate` options and launch-time preparation (resolve both sides, load every model once on the
CPU to describe it and fail early, fix the zero-shot vocabulary), then the Beam job."""
from __future__ import annotations

import argparse
import logging

from tokenmill.eval import EvalError
from tokenmill.eval.musiccaps import aspect_vocabulary
from tokenmill.eval.report import ResampleConfig

LOG = logging.getLogger("tokenmill")

DESCRIPTION = """Score generated audio against reference audio with the three numbers of the MusicLM
paper's Table 1: FAD (Fréchet distance between Gaussians fitted to the embeddings of each side;
with its bootstrap interval and FAD-inf, the 1/n-bias-free extrapolation), KLD (KL divergence between
a classifier's label distributions on each reference clip and the generated clip with the same key,
both directions) and MCC (cosine between each caption's text embedding and the generated clip's
audio embedding). Writes OUTPUT/report.json, report.md, mcc_per_aspect.png, kld_distribution.png,
embeddings_<embedder>.png, clips.jsonl (per clip), failures-{generated,reference}.jsonl and the
reference statistics
(OUTPUT/reference_stats/<embedder>-<sha12>.safetensors + .json card) for --reference_stats.

SPEC (--generated, --reference) is one of: a MusicCaps-format CSV (ytid, start_s, end_s, caption,
aspect_list, ...; the audio is the file {ytid}.* in --{side}_audio, default the CSV's folder, cut
to [start_s, end_s) when the file is longer); a tokenmill dataset directory (records decoded from
their acoustic tokens by the dataset's codec; --levels N for the first N levels); or a quoted glob
of audio files (key = file stem). Clips pair by key (ytid / stem).

Plug-in specs: NAME[=PATH][,KEY=VALUE...]. Embedders: mulan (built-in MuLan audio tower),
clap=DIR, hf=DIR[,layer=N] (hidden states of any transformers audio model: HuBERT, w2v-BERT,
MERT with trust_remote_code=true), encodec=DIR; or package.module:factory for your own.
Classifiers: mulan / clap=DIR (zero-shot tagging over --labels or the --n_labels most frequent
aspects of the captions), hf=DIR (a transformers AutoModelForAudioClassification), none."""


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generated", required=True, metavar="SPEC", help="the audio to score (see SPEC above)")
    p.add_argument("--reference", metavar="SPEC",
                   help="the reference audio (see SPEC above); may be left out when --reference_stats covers "
                        "every embedder and KLD is off (--classifier none)")
    p.add_argument("--output", required=True, metavar="REPORT_DIR", help="where the report files go (local, gs://, s3://)")
    p.add_argument("--generated_audio", metavar="DIR", help="audio folder of a CSV --generated (default: the CSV's folder)")
    p.add_argument("--reference_audio", metavar="DIR", help="audio folder of a CSV --reference (default: the CSV's folder)")
    p.add_argument("--captions", metavar="CSV",
                   help="MusicCaps-format CSV joined by key (ytid) to clips without a caption: gives MCC its captions "
                        "and the zero-shot classifier its aspect vocabulary")
    p.add_argument("--embedder", action="append", metavar="SPEC",
                   help="FAD embedder, repeatable (default: mulan, the built-in MuLan audio tower)")
    p.add_argument("--classifier", default="mulan", metavar="SPEC",
                   help="KLD classifier: mulan (default; zero-shot with the built-in MuLan), clap=DIR, hf=DIR, or none")
    p.add_argument("--labels", metavar="FILE", help="zero-shot vocabulary, one label per line (default: the "
                   "--n_labels most frequent aspects of the captions)")
    p.add_argument("--n_labels", type=int, default=50, help="size of the default aspect vocabulary (default 50)")
    p.add_argument("--kld_temperature", type=float, metavar="T",
                   help="softmax temperature of the classifier (default: 0.1 for zero-shot cosines, 1.0 for logits)")
    p.add_argument("--mulan_model", default="mulan", choices=("mulan", "clap", "none"),
                   help="text/audio model of MCC (default mulan, the built-in; none: no MCC)")
    p.add_argument("--mulan_path", metavar="PATH", help="its weights: a built-in weights file, or the CLAP directory")
    p.add_argument("--levels", type=int, metavar="N", help="dataset SPECs: decode only the first N acoustic levels")
    p.add_argument("--acoustic_model", metavar="PATH", help="dataset SPECs: codec weights, when moved since tokenize")
    p.add_argument("--reference_stats", metavar="DIR",
                   help="reuse reference statistics written by an earlier evaluate (OUTPUT/reference_stats): each "
                        "embedder with a matching artifact (same name, config and weights hash) skips the reference")
    p.add_argument("--name", help="the row name in report.md's table (default: generated)")
    p.add_argument("--fad_bootstrap", type=int, default=100, metavar="B", help="FAD bootstrap draws (default 100; 0 off)")
    p.add_argument("--fad_inf_steps", type=int, default=8, help="subsample sizes of the FAD-inf fit (default 8)")
    p.add_argument("--fad_inf_min_fraction", type=float, default=0.25,
                   help="smallest FAD-inf subsample, as a fraction of the generated clips (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and subsample draws (default 0)")
    p.add_argument("--device", default="cpu", help="where the models run on the workers: cpu or cuda (default cpu)")
    p.add_argument("--batch_size", type=int, default=8, help="clips per RunInference batch (default 8)")
    p.add_argument("--torch_threads", type=int, default=0, metavar="N", help="torch threads per worker (0: torch's choice)")


def _labels(args, rows) -> tuple[str, ...]:
    if args.labels:
        from tokenmill.pipelines.eval_sources import _read_text

        labels = [ln.strip() for ln in _read_text(args.labels).splitlines() if ln.strip()]
        if not labels:
            raise EvalError(f"--labels {args.labels}: no labels in it (one per line)")
        return tuple(labels)
    return tuple(aspect_vocabulary(rows, args.n_labels)) if rows else ()


def prepare(args):
    """→ (EvaluateConfig, sides, descs, rates, caption files, reused reference stats, notes). The
    caption files are read here to check them and to take the zero-shot vocabulary; the job reads
    and joins them again on a worker (eval_sources.ReadCaptionRows), so no row goes into the graph."""
    from tokenmill.pipelines.eval_sources import caption_files, read_caption_rows, resolve_spec
    from tokenmill.pipelines.evaluate import (EvaluateConfig, build_models, describe_models, load_reference_stats,
                                              needed_rates)

    if args.n_labels < 1 or args.batch_size < 1 or args.fad_bootstrap < 0 or (args.levels is not None and args.levels < 1):
        raise EvalError("--n_labels, --batch_size and --levels must be >= 1, --fad_bootstrap >= 0")
    sides = {"generated": resolve_spec(args.generated, "generated", args.generated_audio)}
    if args.reference:
        sides["reference"] = resolve_spec(args.reference, "reference", args.reference_audio)
    rows = list(read_caption_rows(args.captions)) if args.captions else []
    seen = {r.ytid for r in rows}  # --captions first, then the rows of CSV SPECs (either side)
    for r in sides.values():
        for x in r.rows:
            if x.ytid not in seen:
                seen.add(x.ytid)
                rows.append(x)
    classifier = None if args.classifier == "none" else args.classifier
    cfg = EvaluateConfig(
        generated=args.generated, reference=args.reference, output=args.output,
        embedders=tuple(args.embedder or ("mulan",)), classifier=classifier,
        mulan_model=None if args.mulan_model == "none" else args.mulan_model, mulan_path=args.mulan_path,
        kld_temperature=args.kld_temperature, labels=_labels(args, rows), levels=args.levels,
        acoustic_model=args.acoustic_model, device=args.device, batch_size=args.batch_size,
        torch_threads=args.torch_threads, name=args.name,
        resample=ResampleConfig(n_boot=args.fad_bootstrap, fad_inf_steps=args.fad_inf_steps,
                                fad_inf_min_fraction=args.fad_inf_min_fraction, seed=args.seed))
    LOG.info("evaluate: loading the models once to describe them (%s)", ", ".join(cfg.embedders))
    models = build_models(cfg)
    descs = describe_models(models)
    reused = load_reference_stats(args.reference_stats, descs) if args.reference_stats else {}
    notes = [f"FAD {s}: reference statistics reused from {reused[s]['id']}" for s in reused]
    if "reference" not in sides and (classifier or len(reused) < len(cfg.embedders)):
        missing = [s for s in cfg.embedders if s not in reused]
        raise EvalError("--reference is needed: " + (f"no saved statistics for {', '.join(missing)}" if missing
                                                     else "KLD pairs reference clips (or pass --classifier none)"))
    if any(r.kind == "dataset" for r in sides.values()) and args.levels is not None:
        notes.append(f"dataset SPECs decoded from their first {args.levels} acoustic levels")
    return cfg, sides, descs, needed_rates(models), caption_files(args.captions, sides), reused, notes
