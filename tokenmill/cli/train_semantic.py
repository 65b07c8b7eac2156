"""`train-semantic`: train (or export) the built-in melodic semantic extractor
(training/semantic_train.py)."""
from __future__ import annotations

import argparse


def add_args(p) -> None:
    from tokenmill.training.semantic_train import __doc__ as doc, add_args as add

    p.description, p.formatter_class = doc, argparse.RawDescriptionHelpFormatter
    add(p)


def run(args, beam_args: list[str]) -> int:
    import json

    from tokenmill.training.semantic_train import run as train

    print(json.dumps(train(args)))
    return 0
