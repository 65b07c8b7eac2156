#!/usr/bin/env python
"""tokenmill command line: parse options, build the Beam job, run it. Nothing else.

    python beam_runner.py fit-codebook --input 'audio/*.flac' --output codebooks/
    python beam_runner.py tokenize --input 'audio/*.flac' --codebook codebooks/ --output dataset/
    python beam_runner.py verify dataset/
    python beam_runner.py stats dataset/ --plots plots/
    python beam_runner.py rebuild --dataset dataset/ --stream semantic --codebook codebooks/ --output dataset.v2/
    python beam_runner.py decode --dataset dataset/ --out listen.wav
    python beam_runner.py embed-text "a calm piano piece" "fast drums"
    python beam_runner.py fit-codebook --stream mulan --input 'audio/*.flac' --output codebooks/
    python beam_runner.py generate --text "a calm piano piece" --checkpoints runs/ --out piano.wav
    python beam_runner.py memorization --dataset dataset/ --checkpoints runs/ --output report/
    python beam_runner.py generate --captions musiccaps.csv --checkpoints runs/ --output gen/
    python beam_runner.py evaluate --generated 'gen/*.wav' --reference musiccaps.csv --output report/

Options this tool does not know are Beam pipeline options, passed through unchanged:
--runner (default: the embedded local runner), --direct_running_mode=multi_processing,
--direct_num_workers=N, and for Dataflow --project/--region/--temp_location/--setup_file.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time


class _QuietOptionalClients(logging.Filter):
    """Beam's GCP modules warn on import about optional BigQuery clients that local jobs never use."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


# installed before Beam is imported: its import-time warning goes through the root logger
logging.getLogger().addFilter(_QuietOptionalClients())

from tokenmill.errors import TokenmillError, UsageError  # noqa: E402
from tokenmill.pipelines import options as opts  # noqa: E402 (after the filter above)

EPILOG = """Beam options: anything not listed above is passed to Beam, e.g. --runner=DataflowRunner,
--direct_running_mode=multi_processing --direct_num_workers=2. Without --runner the job runs
in-process on Beam's embedded runner (no Prism download)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="beam_runner.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit = sub.add_parser("fit-codebook", epilog=EPILOG, allow_abbrev=False,
                         help="fit the semantic k-means codebook, or (--stream mulan) the MuLan RVQ",
                         description="Decode the inputs, extract semantic features, draw a "
                                     "deterministic sample of frames and fit a FAISS k-means codebook; or, "
                                     "with --stream mulan, embed 10 s windows with the MuLan model, draw a "
                                     "deterministic sample of windows and fit a residual VQ (12 x 1024 by "
                                     "default). Writes <kind>-<sha12>.safetensors + a JSON card (sample, "
                                     "model, held-out MSE, usage entropy, dead codes) and the fit's dead letters.")
    opts.add_fit_codebook_args(fit)
    tok = sub.add_parser("tokenize", epilog=EPILOG, allow_abbrev=False,
                         help="tokenize audio into Parquet + WebDataset shards with a manifest",
                         description="Match, decode, resample and segment the inputs; compute acoustic "
                                     "tokens with the codec (--acoustic_codec), MuLan window embeddings "
                                     "and tokens with the MuLan model and its RVQ (--mulan_model), and "
                                     "semantic tokens with the codebook; dedupe by content; join captions; split "
                                     "train/valid by content hash; write deterministic shards, "
                                     "failures-*.jsonl dead letters and manifest.json. Every input ends "
                                     "in the shards or in the dead letters, and the manifest reconciles.")
    opts.add_tokenize_args(tok)
    dec = sub.add_parser("decode", help="write one record's acoustic tokens back to a WAV, for listening",
                         description="Find KEY in the dataset's shards, rebuild the acoustic codec the "
                                     "dataset was tokenized with (its weights hash must match the "
                                     "manifest), decode the codes and write a WAV at the codec's rate.")
    dec.add_argument("--dataset", required=True, metavar="DIR")
    dec.add_argument("--key", help="record key (default: the first record of the first shard)")
    dec.add_argument("--output", "--out", dest="out", required=True, metavar="WAV",
                     help="output WAV path (--out is the older spelling)")
    dec.add_argument("--levels", type=int, help="decode only the first N levels (e.g. 4 = coarse)")
    dec.add_argument("--acoustic_model", metavar="PATH",
                     help="weights path, when it differs from the one recorded in the manifest")
    emb = sub.add_parser("embed-text", help="print the MuLan text tokens (M_T) of captions",
                         description="Embed each TEXT with the MuLan model's text tower and quantize it "
                                     "with the RVQ that quantizes the audio windows, so the tokens are "
                                     "the ones a text-to-music model is conditioned on. Prints one line "
                                     "per text: the text, a tab, its tokens separated by spaces (or JSON "
                                     "lines with --json). Trainers: tokenmill.tokenizers.mulan."
                                     "load_text_tokenizer(model, path, codebook) returns the same callable.")
    emb.add_argument("texts", nargs="+", metavar="TEXT")
    opts.add_embed_text_args(emb)
    emb.add_argument("--json", action="store_true",
                     help='one JSON object per line: {"text", "tokens", "codebook_id", "model"}')
    ver = sub.add_parser("verify", help="check a dataset directory against its manifest",
                         description="Recompute sizes, sha256 and record counts of every shard, decode "
                                     "them under the schema, compare Parquet with WebDataset record by "
                                     "record, and reconcile inputs = sources in records + dead letters. "
                                     "Exits 1 and names the file on any mismatch.")
    ver.add_argument("dataset", metavar="DIR")
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    reb = sub.add_parser("rebuild", allow_abbrev=False,
                         help="refit one stream's codebook (ids kept) and write a dataset version "
                              "that rewrites only that stream",
                         description="Refit the semantic k-means or the MuLan RVQ of --dataset on a new "
                                     "deterministic sample, warm-started from the parent codebook (--codebook, "
                                     "whose id must be the manifest's) with ids aligned to the parent's; "
                                     "print and write the drift report (drift.json: share of tokens changed "
                                     "on a fixed probe set and over the whole dataset, centroid movement, "
                                     "usage before/after); and write --output as a new version of the "
                                     "dataset: one column shard per parent shard holding key + the "
                                     "rewritten field, and a manifest that lists the parent's shard files "
                                     "by relative path and sha256 (never copied) with lineage. "
                                     "shards.read_dataset merges the records; verify checks both. "
                                     "--stream mulan re-encodes the stored mulan_windows (no audio model "
                                     "runs); --stream semantic decodes the sources again and runs only the "
                                     "semantic extractor.")
    from tokenmill.pipelines.rebuild import add_rebuild_args

    add_rebuild_args(reb)
    sta = sub.add_parser("stats", help="print what a dataset holds and how well each codebook is used",
                         description="Read a tokenized dataset's records (Parquet, else WebDataset) and "
                                     "its dead letters and print: tracks (records and distinct "
                                     "sources), hours, records/sources/hours per split, dead letters "
                                     "by reason, stage and error class, and per token stream (acoustic: "
                                     "per RVQ level; mulan: per RVQ stage) the tokens emitted, distinct "
                                     "ids used of the vocabulary, usage entropy in bits and as a "
                                     "fraction of log2(vocab), and dead codes (ids never used).")
    sta.add_argument("dataset", metavar="DIR")
    sta.add_argument("--plots", metavar="OUT", help="also write duration_hist.png and "
                     "token_usage_<stream>.png (sorted usage per id, log scale) into OUT")
    sta.add_argument("--json", action="store_true", help="print the same numbers as JSON")
    _add_generate_parser(sub)
    mem = sub.add_parser(
        "memorization", epilog=EPILOG, allow_abbrev=False,
        help="does a trained semantic stage copy its training data? (MusicLM 4.4; or --generated: search "
             "the training set for copies of generated windows)",
        description="Sample N training examples, prompt the semantic stage with each example's MuLan tokens "
                    "and its first T semantic tokens, greedily decode the next C tokens and compare them with "
                    "the true continuation: exact match (token for token) and approximate match (optimal-"
                    "transport cost between the token histograms, centroid distances as ground cost, below a "
                    "tau calibrated on negative pairs of different tracks). Writes REPORT_DIR/memorization.json "
                    "(shares per T with 95 % intervals, tau and its false-positive rate, the matched examples' "
                    "keys and entropies) and PNG plots. With --generated DIR, searches every training record "
                    "for exact and approximate copies of each generated window instead.")
    from tokenmill.pipelines.memorization_options import add_memorization_args

    add_memorization_args(mem)
    from tokenmill.pipelines.evaluate_options import DESCRIPTION, add_evaluate_args

    ev = sub.add_parser("evaluate", epilog=EPILOG, allow_abbrev=False, description=DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        help="FAD, KLD and MCC of generated vs reference audio (report.json, report.md, plots)")
    add_evaluate_args(ev)
    return p


def _add_generate_parser(sub) -> None:
    from tokenmill.training.generate import DEFAULT_TEMPERATURES

    gen = sub.add_parser(
        "generate", help="text to music with trained semantic, coarse and fine stage checkpoints",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description="The MusicLM chain: embed TEXT with the dataset's MuLan model and RVQ (M_T), sample "
                    "semantic tokens, then coarse acoustic levels, then fine levels, decode them with the "
                    "dataset's codec and write OUT (PCM_16 WAV at the codec's rate; NAME-0.wav, NAME-1.wav, "
                    "... for --batch > 1) and OUT with .json: the prompt, M_T, seeds per stage window, "
                    "config, checkpoint steps and token shapes.\n\n"
                    "Any length: each stage generates windows of its training crop length (e.g. 30 s "
                    "semantic, 10 s coarse, 3 s fine); each later window moves by --stride_fraction of a "
                    "window and is prompted with the tokens already generated in its first part "
                    "(tokenmill/training/generate.py documents the arithmetic). The same --seed gives the "
                    "same tokens and WAV bytes.",
        epilog="example: beam_runner.py generate --text 'upbeat jazz with a walking bass' "
               "--checkpoints runs/ --out jazz.wav --seconds 60 --batch 2 --seed 7")
    gen.add_argument("--text", help="the text prompt (or --captions for many)")
    gen.add_argument("--output", "--out", dest="out", metavar="WAV|DIR",
                     help="--text: the output WAV path (its .json sidecar goes next to it); --captions: the "
                          "output folder (local, gs://, s3://). --out is the older spelling")
    gen.add_argument("--captions", metavar="CSV",
                     help="a MusicCaps-format CSV: generate one clip per row as a Beam job, DIR/{ytid}.wav + "
                          "{ytid}.json, seeds from (--seed, ytid), length --seconds or the row's end_s - start_s; "
                          "then DIR/generate.json and DIR/failures.jsonl (rows = clips + dead letters)")
    gen.add_argument("--checkpoints", metavar="DIR",
                     help="a directory holding semantic/, coarse/ and fine/ stage checkpoints (each a trainer "
                          "--out directory with latest.json, or a step-NNNNNNN folder)")
    for stage in ("semantic", "coarse", "fine"):
        gen.add_argument(f"--{stage}", metavar="PATH", help=f"the {stage} stage checkpoint (overrides DIR/{stage})")
    gen.add_argument("--seconds", type=float, help="output length, a multiple of 0.04 s (default 10; with --captions "
                     "each row's end_s - start_s)")
    gen.add_argument("--batch", type=int, default=1, help="samples of the prompt, one WAV each (default 1)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    gen.add_argument("--top_k", type=int, help="sample among the K most likely tokens, every stage (default: all)")
    for stage, t in DEFAULT_TEMPERATURES.items():
        gen.add_argument(f"--top_k_{stage}", type=int, metavar="K", help=f"top-k of the {stage} stage (overrides --top_k)")
        gen.add_argument(f"--temperature_{stage}", type=float, default=t, metavar="T",
                         help=f"sampling temperature of the {stage} stage, 0 = greedy (default {t})")
    gen.add_argument("--stride_fraction", type=float, default=0.5,
                     help="window stride as a fraction of the window; the rest is the next window's prompt "
                          "(default 0.5: 30 s semantic windows move by 15 s, as in the paper)")
    gen.add_argument("--device", default="cpu", help="device of the stage models: cpu or cuda (default cpu)")
    gen.add_argument("--torch_threads", type=int, default=0, metavar="N",
                     help="torch intra-op threads (default 0: torch's choice; 1 is fastest for small models "
                          "on a busy CPU)")
    gen.add_argument("--mulan_model", help="MuLan model name (default: the dataset's tokenize job's)")
    gen.add_argument("--mulan_path", metavar="PATH", help="MuLan weights (default: the dataset's tokenize job's)")
    gen.add_argument("--mulan_codebook", metavar="PATH",
                     help="MuLan RVQ file or directory (default: the dataset's; its id must match the checkpoints')")
    gen.add_argument("--acoustic_model", metavar="PATH",
                     help="codec weights path, when it differs from the one recorded in the dataset")
    opts.add_generate_melody_args(gen)


def _setup_logging(verbose: bool) -> None:
    # Not basicConfig: a module-level logging.warning() during an import (Beam's) has already
    # installed a plain root handler, so basicConfig would do nothing and leave the root at
    # WARNING: every INFO progress line was silent. Set the level and format here instead; other
    # handlers (pytest's capture handler, a caller's) are left as they are.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(fmt)
        handler.addFilter(_QuietOptionalClients())
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("apache_beam", "faiss", "numba", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    _setup_logging(args.verbose)
    try:
        return _run(parser, args, beam_args)
    except TokenmillError as e:   # one error path: the fix-it message, exit 2 (traceback with -v)
        if args.verbose:
            import traceback

            traceback.print_exc()
        message = f"{args.command}: {e}"
        print(f"error: {message}", file=sys.stderr)
        raise CommandError(message) from None


class CommandError(SystemExit):
    """Exit status 2 after a TokenmillError; str() is the message already printed to stderr."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, beam_args: list[str]) -> int:
    from tokenmill.pipelines.report import print_fit_summary, print_summary

    if args.command == "verify":
        if beam_args:
            raise SystemExit(f"verify: unknown arguments {beam_args}")
        from tokenmill.schemas.verify import verify_dataset

        rep = verify_dataset(args.dataset)
        if args.json:
            print(json.dumps({"ok": rep.ok, "problems": rep.problems}, indent=1))
        else:
            for prob in rep.problems:
                print(f"FAIL {prob}", file=sys.stderr)
            if rep.ok:
                print_summary(args.dataset, rep.manifest, verified=True)
        return 0 if rep.ok else 1

    if args.command == "rebuild":
        if beam_args:
            raise SystemExit(f"rebuild: unknown arguments {beam_args}")
        return _rebuild(args)

    if args.command == "stats":
        if beam_args:
            raise SystemExit(f"stats: unknown arguments {beam_args}")
        return _stats(args)

    if args.command == "embed-text":
        if beam_args:
            raise SystemExit(f"embed-text: unknown arguments {beam_args}")
        return _embed_text(args)

    if args.command == "generate":
        if args.captions:
            return _generate_captions(args, parser, beam_args)
        if beam_args:
            raise SystemExit(f"generate: unknown arguments {beam_args}")
        return _generate(args)

    if args.command == "decode":
        if beam_args:
            raise SystemExit(f"decode: unknown arguments {beam_args}")
        from tokenmill.training.listen import decode_record, first_key

        import soundfile

        key = args.key or first_key(args.dataset)
        wave, sr, rec = decode_record(args.dataset, key, args.levels, args.acoustic_model)
        soundfile.write(args.out, wave, sr, subtype="PCM_16")
        print(f"{args.out}: {len(wave) / sr:.2f} s at {sr} Hz from record {key} ({rec.uri}, segment "
              f"{rec.segment}, {rec.acoustic.shape[0] if args.levels is None else args.levels} levels)")
        return 0

    if args.command == "memorization":
        return _memorization(parser, args, beam_args)
    if args.command == "evaluate":
        return _evaluate(args, parser, beam_args)

    from tokenmill.pipelines.device import check_local_device
    from tokenmill.pipelines.ingest import check_inputs_match, list_inputs
    from tokenmill.pipelines.runner import check_beam_args, make_pipeline

    sub = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
    check_beam_args(beam_args, [o for a in sub._actions for o in a.option_strings])  # noqa: SLF001
    check_local_device(args.device, beam_args)  # workers on this machine: CUDA must be here
    job_compute = opts.compute_layout(args)
    launcher_facts = _apply_compute(job_compute)  # before any model is built here (describe, fit)

    t0 = time.monotonic()
    if args.command == "fit-codebook" and args.stream == "mulan":
        from tokenmill.pipelines.mulan import build_fit_mulan, build_model

        cfg = opts.fit_codebook_config(args)
        check_inputs_match(cfg.inputs)
        with _model_errors():
            desc = build_model(cfg.mulan).describe()  # on the CPU: the workers use cfg.mulan.device
        cfg = opts.fit_codebook_config(args, mulan_rate_hz=desc["sample_rate_hz"])
        with make_pipeline(beam_args) as p:
            build_fit_mulan(p, cfg, mulan_desc=desc)
        print_fit_summary(cfg.output, time.monotonic() - t0, kind="mulan")
        return 0
    if args.command == "fit-codebook" and args.stream == "melody":
        from tokenmill.pipelines.melody import build_fit_melody, build_model as build_melody_model

        cfg = opts.fit_codebook_config(args)
        check_inputs_match(cfg.inputs)
        with _model_errors():
            desc = build_melody_model(cfg.melody).describe()
        with make_pipeline(beam_args) as p:
            build_fit_melody(p, cfg, melody_desc=desc)
        print_fit_summary(cfg.output, time.monotonic() - t0, kind="melody")
        return 0
    if args.command == "fit-codebook":
        from tokenmill.pipelines.fit import build_fit
        from tokenmill.pipelines.handlers import semantic_extractor

        cfg = opts.fit_codebook_config(args)
        check_inputs_match(cfg.inputs)
        with _model_errors():
            desc = semantic_extractor(cfg.semantic).describe()  # on the CPU: workers use cfg.semantic.device
        with make_pipeline(beam_args) as p:
            build_fit(p, cfg, extractor_desc=desc)
        print_fit_summary(cfg.output, time.monotonic() - t0)
        return 0

    from tokenmill.pipelines.handlers import describe_acoustic, describe_semantic
    from tokenmill.pipelines.mulan import describe_mulan
    from tokenmill.pipelines import incremental
    from tokenmill.pipelines.tokenize import build_tokenize, check_captions, manifest_entries

    if args.retry_failures and not args.into:
        raise SystemExit("--retry_failures needs --into DIR (the dataset whose dead letters to retry)")
    base = incremental.load_base(args.into) if args.into else None  # before any model loads
    layout = base.layout if base else None
    acoustic = opts.acoustic_config(args)
    mulan = opts.mulan_config(args)  # flag checks before any model loads
    with _model_errors():
        acoustic_desc = describe_acoustic(acoustic) if acoustic.enabled else None
    a_rate = acoustic_desc["sample_rate_hz"] if acoustic_desc else None
    cfg = opts.tokenize_config(args, a_rate, layout=layout)
    t_list = time.monotonic()
    listing = list_inputs(cfg.inputs)  # one listing: fails fast on an empty pattern, sizes the shards
    t_list = time.monotonic() - t_list
    with _model_errors():
        semantic_desc, _ = describe_semantic(cfg.semantic, cfg.codebook)
    mulan_desc = None
    if mulan.enabled:
        with _model_errors():
            mulan_desc = describe_mulan(mulan)
    melody_desc = None
    if cfg.melody.enabled:
        from tokenmill.pipelines.melody import describe_melody

        with _model_errors():
            melody_desc = describe_melody(cfg.melody)
    m_rate = mulan_desc["model"]["sample_rate_hz"] if mulan_desc else None
    cfg = opts.tokenize_config(args, a_rate, m_rate, layout=layout, sizing=(
        listing, manifest_entries(semantic_desc, acoustic_desc, mulan_desc, melody_desc)[0]))
    if cfg.shard_plan is not None:
        sp = cfg.shard_plan
        print(f"shards: {cfg.num_shards} train + {cfg.num_valid_shards} valid per format, for {sp['input_files']} "
              f"inputs ({sp['input_bytes'] / 1e9:.2f} GB, ~{sp['est_audio_hours']:.1f} h of audio, "
              f"~{sp['est_out_bytes'] / 1e9:.2f} GB of arrays) at --target_shard_mb {sp['target_shard_mb']:g} "
              f"(listed in {t_list:.1f} s)")
    plan = None
    if base is not None:
        streams, tokenizers, codebooks = manifest_entries(semantic_desc, acoustic_desc, mulan_desc, melody_desc)
        incremental.check_compatible(base, tokenizers=tokenizers, codebooks=codebooks, streams=streams,
                                     audio=cfg.to_json()["audio"])
        plan = incremental.make_plan(base, args.retry_failures)
        todo, skipped = incremental.new_inputs(plan, cfg.inputs)
        print(f"tokenize --into {base.root} (version {plan.version}): {len(todo)} inputs to read, {skipped} "
              f"skipped (already in the dataset as a record or dead letter), {len(plan.retry)} dead-letter "
              f"sources retried, {len(plan.retry_missing)} retries missing their file")
        if not todo:
            print(f"nothing to add: {base.root} is left unchanged")
            return 0
    if cfg.captions:
        check_captions(cfg.captions)  # fail fast; the job reads and joins them itself
    from tokenmill.pipelines import journal as jr

    from tokenmill.tokenizers import compute

    compute_entry = compute.describe(job_compute, launcher_facts, args.device)
    if plan is None:
        journal, compute_entry = _open_journal(cfg, semantic_desc, acoustic_desc, mulan_desc, compute_entry,
                                               melody_desc)
    else:
        journal = jr.open_spill(cfg.output, plan.version)
        _compute_warning(f"the dataset {base.root}", incremental.compute_changes(base.manifest, compute_entry))
    with make_pipeline(beam_args) as p:
        build_tokenize(p, cfg, semantic_desc=semantic_desc,
                       acoustic_desc=acoustic_desc, mulan_desc=mulan_desc, plan=plan, journal=journal,
                       compute_entry=compute_entry, melody_desc=melody_desc)
    if plan is None:
        jr.close_journal(cfg.output, journal)
    else:
        jr.remove_work(journal.work)
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(f"{cfg.output.rstrip('/')}/manifest.json") as f:  # gs:// etc. too
        manifest = json.load(f)
    print_summary(cfg.output, manifest, verified=False, elapsed_s=time.monotonic() - t0)
    last = (manifest.get("history") or [None])[-1]
    if plan is not None and last and last["version"] == plan.version:
        print(f"  version       {last['version']} ({last['mode']}): {last['inputs_new']} new inputs, "
              f"{last['skipped_present']} skipped as already present, {last['retried']} retried, "
              f"{last['records_added']} records added, {last['dead_letters_replaced']} dead letters "
              f"replaced by {last['dead_letters_added']} new")
    elif plan is not None:
        print(f"  version       nothing changed: {base.root} is left as it was")
    if journal is not None and journal.finished:
        print(f"  resumed       {len(journal.finished)} sources skipped (finished before the interruption, "
              f"taken from its journal), {journal.n_matched - len(journal.finished)} read; see "
              f"{cfg.output.rstrip('/')}/_resumed.json")
    return 0


def _apply_compute(layout) -> dict:
    """Pin this process (the launcher, and the embedded runner's in-process workers) to the job's
    compute layout; a fix-it error when torch already runs other kernels here."""
    from tokenmill.tokenizers import compute

    return compute.apply(layout)   # ComputeError (a TokenmillError): main's one handler


def _compute_warning(what: str, changes: list[str]) -> None:
    """One warning line when a run writes into a dataset or journal made under another layout."""
    if changes:
        logging.getLogger("tokenmill").warning(
            "%s was written under another compute layout (%s); the new records' tokens can differ from "
            "what the earlier layout would give in rare near-boundary frames. Recorded in the manifest "
            "(compute); use the earlier --torch_threads/--kernels to avoid mixing", what, "; ".join(changes))


def _open_journal(cfg, semantic_desc, acoustic_desc, mulan_desc, compute_entry, melody_desc=None):
    """The resume journal of a full run (pipelines/journal.py): new, or an interrupted run's.
    Returns (journal, the manifest's compute entry: with `resumed_under` when the interrupted run
    used another layout)."""
    from tokenmill import __version__
    from tokenmill.pipelines.journal import JournalError, open_journal
    from tokenmill.pipelines.tokenize import manifest_entries
    from tokenmill.tokenizers import compute

    streams, tokenizers, codebooks = manifest_entries(semantic_desc, acoustic_desc, mulan_desc, melody_desc)
    job = {k: ({kk: vv for kk, vv in v.items() if kk != "compute"} if isinstance(v, dict) else v)
           for k, v in cfg.to_json().items() if k != "output"}   # the layout may change on resume
    try:
        journal = open_journal(cfg.output, {"job": job, "tokenizers": tokenizers, "codebooks": codebooks,
                                            "streams": streams, "tokenmill_version": __version__}, cfg.inputs,
                               compute_entry=compute_entry)
    except JournalError as e:   # its message names the journal and the fix
        raise UsageError(str(e)) from e
    if journal.finished:
        changes = compute.differences(journal.compute_before, compute_entry)
        _compute_warning(f"the interrupted run of {cfg.output}", changes)
        if changes:
            compute_entry = dict(compute_entry, resumed_from={"compute": journal.compute_before,
                                                              "changes": changes,
                                                              "sources_from_journal": len(journal.finished)})
    if journal.finished:
        print(f"tokenize: resuming {cfg.output}: {len(journal.finished)} of {journal.n_matched} sources were "
              f"finished by an interrupted run and are skipped ({len(journal.entries())} journal entries in "
              f"{journal.work}); the other {journal.n_matched - len(journal.finished)} are read")
    return journal, compute_entry


@contextlib.contextmanager
def _model_errors():
    """A model (semantic SSL checkpoint, MuLan) or codebook that cannot be loaded, or that do not
    fit together, stops the command with its fix-it message before any job starts (no traceback)."""

    try:
        yield
    except FileNotFoundError as e:  # our errors go to main's one handler
        raise UsageError(str(e)) from e


def _rebuild(args) -> int:
    from tokenmill.pipelines.rebuild import print_rebuild_summary, rebuild_config, run_rebuild

    cfg = rebuild_config(args)
    try:
        res = run_rebuild(cfg)
    except FileNotFoundError as e:  # our errors go to main's one handler
        raise UsageError(str(e)) from e
    print_rebuild_summary(res)
    return 0


def _stats(args) -> int:
    from tokenmill.schemas.stats import dataset_stats, format_stats

    try:
        st = dataset_stats(args.dataset)
    except FileNotFoundError as e:  # our errors go to main's one handler
        raise UsageError(str(e)) from e
    print(json.dumps(st.summary, indent=1) if args.json else format_stats(st.summary))
    if args.plots:
        from tokenmill.inspect_plots import write_stats_plots

        paths = write_stats_plots(st, args.plots)
        print(f"plots: {', '.join(str(p) for p in paths)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _generate(args) -> int:
    from tokenmill.training.generate import GenerateConfig, generate_from_paths

    if not (args.text and args.out):
        raise SystemExit("generate: give --text TEXT --output WAV, or --captions CSV --output DIR")
    try:
        cfg = GenerateConfig(
            seconds=10.0 if args.seconds is None else args.seconds, batch=args.batch, seed=args.seed, top_k=args.top_k,
            top_k_semantic=args.top_k_semantic, top_k_coarse=args.top_k_coarse, top_k_fine=args.top_k_fine,
            temperature_semantic=args.temperature_semantic, temperature_coarse=args.temperature_coarse,
            temperature_fine=args.temperature_fine, stride_fraction=args.stride_fraction, device=args.device)
        side = generate_from_paths(args.text, args.out, cfg, checkpoints=args.checkpoints, semantic=args.semantic,
                                   coarse=args.coarse, fine=args.fine, mulan_model=args.mulan_model,
                                   mulan_path=args.mulan_path, mulan_codebook=args.mulan_codebook,
                                   acoustic_model=args.acoustic_model, torch_threads=args.torch_threads,
                                   **opts.generate_melody_kwargs(args)).sidecar
    except FileNotFoundError as e:  # our errors go to main's one handler
        raise UsageError(str(e)) from e
    steps = ", ".join(f"{s} step {c['step']}" for s, c in side["checkpoints"].items())
    print(f"{', '.join(side['wavs'])}: {side['samples'] / side['sample_rate_hz']:.2f} s at {side['sample_rate_hz']} Hz "
          f"({steps}; seed {side['seed']}; {side['elapsed_s']:.1f} s); sidecar "
          f"{args.out.rsplit('.', 1)[0]}.json")
    return 0


def _memorization(parser, args, beam_args) -> int:
    from tokenmill.pipelines.device import check_local_device
    from tokenmill.pipelines.memorization import format_summary, run_memorization
    from tokenmill.pipelines.memorization_options import memorization_config
    from tokenmill.pipelines.runner import check_beam_args

    sub = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
    check_beam_args(beam_args, [o for a in sub._actions for o in a.option_strings])  # noqa: SLF001
    check_local_device(args.device, beam_args)
    try:
        rep = run_memorization(memorization_config(args), beam_args)
    except FileNotFoundError as e:  # our errors go to main's one handler
        raise UsageError(str(e)) from e
    print(format_summary(rep))
    print(f"report: {args.output.rstrip('/')}/memorization.json")
    return 0


def _evaluate(args, parser, beam_args) -> int:
    from tokenmill.pipelines.device import check_local_device
    from tokenmill.pipelines.runner import check_beam_args, make_pipeline

    sub = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
    check_beam_args(beam_args, [o for a in sub._actions for o in a.option_strings])  # noqa: SLF001
    check_local_device(args.device, beam_args)
    from tokenmill.pipelines.evaluate import build_evaluate
    from tokenmill.pipelines.evaluate_options import prepare

    t0 = time.monotonic()
    try:
        cfg, sides, descs, rates, captions, reused, notes = prepare(args)
        with make_pipeline(beam_args) as p:
            build_evaluate(p, cfg, sides=sides, descs=descs, rates_hz=rates, captions=captions, reused=reused,
                           notes=notes)
    except FileNotFoundError as e:  # our errors go to main's one handler
        raise UsageError(str(e)) from e
    out = cfg.output.rstrip("/")
    print(open(f"{out}/report.md").read() if "://" not in out else "", end="")
    print(f"evaluate: {out}/report.json, report.md and plots written in {time.monotonic() - t0:.1f} s")
    return 0


def _generate_captions(args, parser, beam_args) -> int:
    from tokenmill.pipelines.eval_sources import read_caption_rows
    from tokenmill.pipelines.generate_captions import CaptionsJob, build_generate_captions
    from tokenmill.pipelines.runner import check_beam_args, make_pipeline
    from tokenmill.training.generate import (GenerateConfig, dataset_text_tokenizer, load_codec,
                                             load_stages, stage_paths)

    if args.text or not args.out or args.batch != 1:
        raise SystemExit("generate --captions: give --output DIR (not --text/--batch: one clip per row)")
    if args.melody is not None:
        raise UsageError("generate --captions takes no --melody (one hum for many captions is not supported)")
    sub = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
    check_beam_args(beam_args, [o for a in sub._actions for o in a.option_strings])  # noqa: SLF001
    try:
        rows = read_caption_rows(args.captions)
        cfg = GenerateConfig(
            seconds=10.0 if args.seconds is None else args.seconds, seed=args.seed, top_k=args.top_k,
            top_k_semantic=args.top_k_semantic, top_k_coarse=args.top_k_coarse, top_k_fine=args.top_k_fine,
            temperature_semantic=args.temperature_semantic, temperature_coarse=args.temperature_coarse,
            temperature_fine=args.temperature_fine, stride_fraction=args.stride_fraction, device=args.device)
        paths = stage_paths(args.checkpoints, semantic=args.semantic, coarse=args.coarse, fine=args.fine)
        stages = load_stages(paths, "cpu")  # fail before the job: checkpoints, tokenizer and codec must load
        dataset_text_tokenizer(stages, model=args.mulan_model, path=args.mulan_path, codebook=args.mulan_codebook)
        load_codec(stages, args.acoustic_model)
        job = CaptionsJob(args.captions, args.out, {k: str(v) for k, v in paths.items()}, cfg, args.seconds,
                          args.mulan_model, args.mulan_path, args.mulan_codebook, args.acoustic_model, args.torch_threads)
        with make_pipeline(beam_args) as p:
            build_generate_captions(p, job, rows)
    except FileNotFoundError as e:  # our errors go to main's one handler
        raise UsageError(str(e)) from e
    with open(f"{args.out.rstrip('/')}/generate.json") if "://" not in args.out else open(os.devnull) as f:
        summary = json.loads(f.read() or "{}")
    print(f"generate: {summary.get('clips', '?')} clips of {len(rows)} rows in {args.out} "
          f"({summary.get('dead_letters', '?')} dead letters: failures.jsonl)")
    return 0


def _embed_text(args) -> int:
    from tokenmill.tokenizers.mulan import load_text_tokenizer

    with _model_errors():
        tok = load_text_tokenizer(args.mulan_model, args.mulan_path, args.mulan_codebook,
                                  batch_size=args.mulan_batch_size)
        codes = tok(list(args.texts))
    for text, row in zip(args.texts, codes):
        if args.json:
            print(json.dumps({"text": text, "tokens": row.tolist(), "codebook_id": tok.rvq.id,
                              "model": tok.model.name}, ensure_ascii=False))
        else:
            print(f"{text}\t{' '.join(str(int(t)) for t in row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
