"""`train-mulan`: train, evaluate (--eval) or export (--export) the built-in MuLan
(training/mulan_train.py)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_args(p) -> None:
    from tokenmill.training.mulan_train import TrainArgs, __doc__ as doc

    p.description, p.formatter_class = doc, argparse.RawDescriptionHelpFormatter
    p.add_argument("--manifest", type=Path, help="corpus manifest.jsonl (file + caption per line)")
    p.add_argument("--output", "--out", "--to", dest="out", type=Path,
                   help="run directory: cache/, ckpt-latest.pt, train.jsonl, eval.json; with --export: the "
                        "output .safetensors")
    p.add_argument("--steps", type=int, default=TrainArgs.steps,
                   help="optimizer steps; sets the cosine schedule, keep it fixed across --resume (default %(default)s)")
    p.add_argument("--batch", type=int, default=TrainArgs.batch,
                   help="distinct training tracks per step, one random 10 s crop each (default %(default)s)")
    p.add_argument("--lr", type=float, default=TrainArgs.lr, help="peak AdamW learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="crops, masks and init come from (seed, step) (default %(default)s)")
    p.add_argument("--heldout_percent", type=int, default=TrainArgs.heldout_percent,
                   help="share of tracks held out by file-name hash, never trained on (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/ckpt-latest.pt")
    p.add_argument("--eval_every", type=int, default=250,
                   help="steps between held-out retrieval checks (5 s stride) and checkpoints (default %(default)s)")
    p.add_argument("--eval_stride_s", type=int, default=1, help="window stride of the final evaluation")
    p.add_argument("--eval", type=Path, metavar="WEIGHTS", help="only evaluate this weights file")
    p.add_argument("--export", type=Path, metavar="CKPT", help="write CKPT's model to --output as safetensors")


def run(args, beam_args: list[str]) -> int:
    import json

    import torch

    from tokenmill.errors import UsageError
    from tokenmill.training import mulan_train as mt

    torch.set_num_threads(args.threads)
    if not args.out:
        raise UsageError("give --output (the run directory; with --export, the .safetensors to write)")
    if args.export:
        print(mt.export(args.export, args.out))
        return 0
    if not args.manifest:
        raise UsageError("give --manifest CORPUS/manifest.jsonl (except with --export)")
    a = mt.TrainArgs(seed=args.seed, batch=args.batch, steps=args.steps, lr=args.lr,
                     heldout_percent=args.heldout_percent)
    if args.eval:
        print(json.dumps(mt.evaluate(args.eval, args.manifest, args.out, a, args.eval_stride_s), indent=1))
        return 0
    mt.train(args.manifest, args.out, a, resume=args.resume, eval_every=args.eval_every)
    return 0
