"""`train-codec`: train the built-in SoundStream codec on audio files, or --export a checkpoint's
generator as the codec's weights (training/codec_train.py)."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path


def add_args(p) -> None:
    from tokenmill.training import codec_train as ct
    from tokenmill.training.discriminators import DiscConfig

    p.description, p.formatter_class = ct.__doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", action="append", default=[], help="glob of audio files (repeatable; ** recurses)")
    p.add_argument("--output", "--out", "--to", dest="out", type=Path,
                   help="run directory: checkpoints, cache, file lists; with --export: the output .safetensors")
    p.add_argument("--steps", type=int, default=100000, help="train until this step (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/ckpt-latest.safetensors")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--preset", choices=sorted(ct.PRESETS), default="default")
    p.add_argument("--channels", type=int, help="override the preset's base channels C")
    p.add_argument("--latent_dim", type=int, help="override the preset's latent dim D")
    p.add_argument("--disc_channels", type=int, default=DiscConfig().channels)
    p.add_argument("--ckpt_every", type=int, default=200, help="steps between checkpoints (default %(default)s)")
    p.add_argument("--keep_every", type=int, default=2000, help="also keep ckpt-STEP every this many steps")
    p.add_argument("--log_every_s", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--heldout_percent", type=int, default=3,
                   help="share of files held out by file-name hash (default %(default)s)")
    p.add_argument("--no_cache", action="store_true", help="decode into memory only (tests)")
    for f, v in asdict(ct.TrainArgs()).items():
        p.add_argument(f"--{f}", type=type(v), default=None,
                       help=f"default {v}; given with --resume, overrides the checkpoint's value")
    p.add_argument("--export", type=Path, metavar="CKPT",
                   help="write this checkpoint's generator to --output (a .safetensors) and exit")
    p.add_argument("--float32", action="store_true", help="with --export: keep float32 weights")


def run(args, beam_args: list[str]) -> int:
    import sys

    import torch

    from tokenmill.errors import UsageError
    from tokenmill.training import codec_train as ct

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.out:
        raise UsageError("give --output (the run directory; with --export, the .safetensors to write)")
    if args.export:
        print(ct.export(args.export, args.out, args.float32))
        return 0
    opts = ct.RunOptions(tuple(args.data), args.out, steps=args.steps, resume=args.resume, device=args.device,
                         preset=args.preset, channels=args.channels, latent_dim=args.latent_dim,
                         disc_channels=args.disc_channels, ckpt_every=args.ckpt_every, keep_every=args.keep_every,
                         log_every_s=args.log_every_s, heldout_percent=args.heldout_percent,
                         cache=not args.no_cache)
    overrides = {f: getattr(args, f) for f in asdict(ct.TrainArgs()) if getattr(args, f) is not None}
    ct.train(opts, overrides, " ".join(sys.argv))
    return 0
