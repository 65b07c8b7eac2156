"""`train-melody`: train (or export) the built-in melody model (training/melody_train.py)."""
from __future__ import annotations

import argparse


def add_args(p) -> None:
    from tokenmill.training.melody_train import __doc__ as doc, add_args as add

    p.description, p.formatter_class = doc, argparse.RawDescriptionHelpFormatter
    add(p)


def run(args, beam_args: list[str]) -> int:
    from tokenmill.training.melody_train import run as train

    state = train(args)
    if args.export is None:
        print(f"train-melody: {args.output}: step {state.get('step')}")
    return 0
