"""`memorization`'s command-line options and the config they build (the job: pipelines/memorization.py)."""
from __future__ import annotations

import argparse

from tokenmill.eval import memorization as mem
from tokenmill.eval.ot import OT_METHODS, OTConfig
from tokenmill.pipelines.device import device_arg
from tokenmill.pipelines.memorization import MemorizationConfig


def add_memorization_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, metavar="DIR|URL",
                   help="the training dataset: a directory or its URL (file://, http(s)://, gs://, s3://); "
                        "its manifest's codebook ids must be the checkpoint's")
    p.add_argument("--checkpoints", metavar="DIR",
                   help="the semantic stage: a directory holding semantic/ (as for generate), the semantic "
                        "trainer's --out, or one of its step-NNNNNNN folders")
    p.add_argument("--output", required=True, metavar="REPORT_DIR",
                   help="where memorization.json and the PNG plots go (local or a Beam FileSystems URL)")
    p.add_argument("--examples", type=int, default=1000, metavar="N",
                   help="training examples sampled: the N records with the smallest hash of (seed, key) among "
                        "those long enough for max T + continuation (default %(default)s)")
    p.add_argument("--prompt_tokens", default="0:250:25", metavar="LIST",
                   help="prompt lengths T in semantic frames: comma list (0,25,50) or start:stop:step with stop "
                        "included (default %(default)s: 0 to 10 s at 25 Hz, as the paper)")
    p.add_argument("--continuation", type=int, default=125, metavar="C",
                   help="frames greedily decoded after each prompt and compared with the truth; with --generated "
                        "the window searched for (default %(default)s = 5 s)")
    p.add_argument("--seed", type=int, default=0, help="sample, crop starts and negative pairs (default 0)")
    g = p.add_argument_group("matching")
    g.add_argument("--ot", choices=OT_METHODS, default="exact",
                   help="OT solver of the approximate match: exact (POT emd2, the default: the true optimum, 0 for "
                        "a copy, and faster on 125-token windows) or sinkhorn (POT sinkhorn2, as the paper)")
    g.add_argument("--sinkhorn_reg", type=float, default=0.05,
                   help="Sinkhorn's entropic regularization as a fraction of the codebook's median centroid "
                        "distance (default %(default)s)")
    g.add_argument("--negatives", type=int, default=20_000,
                   help="negative pairs (true continuations of examples of different tracks) tau is calibrated "
                        "on (default %(default)s; 1/negatives is the smallest false-positive rate they resolve)")
    g.add_argument("--max_fpr", type=float, default=1e-4,
                   help="false-positive rate allowed among the negatives (default %(default)s = 0.01 %%)")
    g.add_argument("--tau", type=float,
                   help="use this tau instead of calibrating one (its false-positive rate is still measured); the "
                        "paper's 0.85 belongs to its own centroids and solver")
    g.add_argument("--codebook", metavar="PATH",
                   help="the dataset's semantic codebook artifact (file or directory); default: the manifest's "
                        "job.codebook. Its id must equal the manifest's codebooks.semantic")
    g.add_argument("--mulan_codebook", metavar="PATH",
                   help="the MuLan RVQ the stage's M tokens were made with (default: the trainer's, else the "
                        "packaged one); its id must equal the dataset's codebooks.mulan")
    m = p.add_argument_group("model")
    m.add_argument("--device", type=device_arg, default="cpu", help="where the semantic stage runs: cpu, cuda or cuda:N (default cpu)")
    m.add_argument("--batch_size", type=int, default=16, help="prompts per greedy-decoding batch (default %(default)s)")
    m.add_argument("--torch_threads", type=int, default=0, metavar="N",
                   help="torch intra-op threads per worker (default 0: torch's choice)")
    s = p.add_argument_group("--generated search (copies of generated windows in the training set)")
    s.add_argument("--generated", metavar="DIR",
                   help="search the training set for copies of these generated sequences instead: DIR holds "
                        "generate's .json sidecars (their semantic_tokens) and/or .npy uint16 [T] or [B, T] arrays")
    s.add_argument("--window_stride", type=int, default=25,
                   help="a generated window starts every N frames (default %(default)s = 1 s)")
    s.add_argument("--train_stride", type=int, default=1,
                   help="training windows sketched for approximate copies every N frames (exact copies are "
                        "hashed at every frame) (default %(default)s)")
    s.add_argument("--sketch_dims", type=int, default=8,
                   help="dimensions of the prefilter's projected mean-centroid sketch (default %(default)s)")
    s.add_argument("--search_radius", type=float, default=1.0,
                   help="report training windows with OT cost < RADIUS x tau (default %(default)s: matches only; "
                        "1.5 also shows near misses)")
    s.add_argument("--max_ot_per_record", type=int, default=4,
                   help="OT solves per generated window and training record, nearest sketches first (default "
                        "%(default)s); the report counts windows that had more candidates")
    s.add_argument("--nearest", type=int, default=5, help="training windows listed per generated window (default 5)")
    s.add_argument("--negative_windows", type=int, default=2000,
                   help="training windows sampled to form the search's negative pairs (default %(default)s)")
    p.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no_verify_checksums", action="store_true",
                   help="read shards without checking their sha256 against the manifest")


def memorization_config(args: argparse.Namespace) -> MemorizationConfig:
    return MemorizationConfig(
        dataset=args.dataset, output=args.output, checkpoints=args.checkpoints, examples=args.examples,
        prompt_tokens=mem.parse_prompt_tokens(args.prompt_tokens), continuation=args.continuation, seed=args.seed,
        negatives=args.negatives, max_fpr=args.max_fpr, tau=args.tau,
        ot=OTConfig(method=args.ot, sinkhorn_reg=args.sinkhorn_reg), codebook=args.codebook,
        mulan_codebook=args.mulan_codebook, device=args.device, batch_size=args.batch_size,
        torch_threads=args.torch_threads, plots=not args.no_plots, verify_checksums=not args.no_verify_checksums,
        generated=args.generated, window_stride=args.window_stride, train_stride=args.train_stride,
        sketch_dims=args.sketch_dims, search_radius=args.search_radius, max_ot_per_record=args.max_ot_per_record,
        nearest=args.nearest, negative_windows=args.negative_windows)
