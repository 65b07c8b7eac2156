"""`generate`: text to music with the three stage checkpoints; --captions: one clip per CSV row, a Beam job."""
from __future__ import annotations

import argparse
import json
import os

DESCRIPTION = (
    "The MusicLM chain: embed TEXT with the dataset's MuLan model and RVQ (M_T), sample semantic tokens, then "
    "coarse acoustic levels, then fine levels, decode them with the dataset's codec and write OUT (PCM_16 WAV at "
    "the codec's rate; NAME-0.wav, NAME-1.wav, ... for --batch > 1) and OUT with .json: the prompt, M_T, seeds per "
    "stage window, config, checkpoint steps and token shapes.\n\n"
    "Any length: each stage generates windows of its training crop length (e.g. 30 s semantic, 10 s coarse, 3 s "
    "fine); each later window moves by --stride_fraction of a window and is prompted with the tokens already "
    "generated in its first part (tokenmill/training/generate.py documents the arithmetic). The same --seed gives "
    "the same tokens and WAV bytes.")


def add_args(p) -> None:
    from tokenmill.training.generate import DEFAULT_TEMPERATURES

    p.description, p.formatter_class = DESCRIPTION, argparse.RawDescriptionHelpFormatter
    p.epilog = ("example: tokenmill generate --text 'upbeat jazz with a walking bass' --checkpoints runs/ "
                "--output jazz.wav --seconds 60 --batch 2 --seed 7\n\n" + (p.epilog or ""))
    gen = p
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
                          "--output directory with latest.json, or a step-NNNNNNN folder)")
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
    from tokenmill.pipelines.options import add_generate_melody_args

    add_generate_melody_args(gen)


def _config(args, batch: int):
    from tokenmill.training.generate import GenerateConfig

    return GenerateConfig(
        seconds=10.0 if args.seconds is None else args.seconds, batch=batch, seed=args.seed, top_k=args.top_k,
        top_k_semantic=args.top_k_semantic, top_k_coarse=args.top_k_coarse, top_k_fine=args.top_k_fine,
        temperature_semantic=args.temperature_semantic, temperature_coarse=args.temperature_coarse,
        temperature_fine=args.temperature_fine, stride_fraction=args.stride_fraction, device=args.device)


def run(args, beam_args: list[str]) -> int:
    from tokenmill.errors import UsageError

    if args.captions:
        return _run_captions(args, beam_args)
    if beam_args:
        raise UsageError(f"unknown argument(s) {' '.join(beam_args)}: Beam options apply to --captions only")
    if not (args.text and args.out):
        raise UsageError("give --text TEXT --output WAV, or --captions CSV --output DIR")
    from tokenmill.pipelines.options import generate_melody_kwargs
    from tokenmill.training.generate import generate_from_paths

    side = generate_from_paths(args.text, args.out, _config(args, args.batch), checkpoints=args.checkpoints,
                               semantic=args.semantic, coarse=args.coarse, fine=args.fine,
                               mulan_model=args.mulan_model, mulan_path=args.mulan_path,
                               mulan_codebook=args.mulan_codebook, acoustic_model=args.acoustic_model,
                               torch_threads=args.torch_threads, **generate_melody_kwargs(args)).sidecar
    steps = ", ".join(f"{s} step {c['step']}" for s, c in side["checkpoints"].items())
    print(f"{', '.join(side['wavs'])}: {side['samples'] / side['sample_rate_hz']:.2f} s at {side['sample_rate_hz']} Hz "
          f"({steps}; seed {side['seed']}; {side['elapsed_s']:.1f} s); sidecar "
          f"{args.out.rsplit('.', 1)[0]}.json")
    return 0


def _run_captions(args, beam_args: list[str]) -> int:
    from tokenmill.errors import UsageError
    from tokenmill.pipelines.eval_sources import read_caption_rows
    from tokenmill.pipelines.generate_captions import CaptionsJob, build_generate_captions
    from tokenmill.pipelines.runner import make_pipeline
    from tokenmill.training.generate import dataset_text_tokenizer, load_codec, load_stages, stage_paths

    if args.text or not args.out or args.batch != 1:
        raise UsageError("--captions: give --output DIR (not --text/--batch: one clip per row)")
    if args.melody is not None:
        raise UsageError("generate --captions takes no --melody (one hum for many captions is not supported)")
    rows = read_caption_rows(args.captions)
    cfg = _config(args, 1)
    paths = stage_paths(args.checkpoints, semantic=args.semantic, coarse=args.coarse, fine=args.fine)
    stages = load_stages(paths, "cpu")  # fail before the job: checkpoints, tokenizer and codec must load
    dataset_text_tokenizer(stages, model=args.mulan_model, path=args.mulan_path, codebook=args.mulan_codebook)
    load_codec(stages, args.acoustic_model)
    job = CaptionsJob(args.captions, args.out, {k: str(v) for k, v in paths.items()}, cfg, args.seconds,
                      args.mulan_model, args.mulan_path, args.mulan_codebook, args.acoustic_model, args.torch_threads)
    with make_pipeline(beam_args) as p:
        build_generate_captions(p, job, rows)
    with open(f"{args.out.rstrip('/')}/generate.json") if "://" not in args.out else open(os.devnull) as f:
        summary = json.loads(f.read() or "{}")
    print(f"generate: {summary.get('clips', '?')} clips of {len(rows)} rows in {args.out} "
          f"({summary.get('dead_letters', '?')} dead letters: failures.jsonl)")
    return 0
