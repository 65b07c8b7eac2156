"""`train --stage semantic|coarse|fine`: one MusicLM stage on tokenized shards (training/train.py).

Under torchrun every rank runs this command: `torchrun --nproc_per_node 2 beam_runner.py train ...`
or `torchrun --nproc_per_node 2 -m tokenmill.cli train ...`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json


def add_args(p) -> None:
    from tokenmill.training import train as tr
    from tokenmill.training.model import PRESETS

    p.description, p.formatter_class = tr.__doc__, argparse.RawDescriptionHelpFormatter
    d = {f.name: f.default for f in dataclasses.fields(tr.TrainConfig) if f.default is not dataclasses.MISSING}
    d.update(mulan_stages=",".join(d["mulan_stages"]), splits=",".join(d["splits"]), model="{}",
             melody_stages=",".join(d["melody_stages"]))

    def opt(name: str, help: str, **kw) -> None:  # unset flags stay out of args (a resumed run keeps its own)
        p.add_argument(f"--{name}", default=argparse.SUPPRESS, help=f"{help} (default {d[name]})", **kw)

    p.add_argument("--stage", required=True, choices=tr.STAGES, help="which MusicLM stage to train")
    p.add_argument("--data", required=True,
                   help="dataset root or manifest.json URL (local, file://, http(s)://, gs://, s3://)")
    p.add_argument("--output", "--out", dest="out", required=True, metavar="DIR",
                   help="checkpoint directory (step-NNNNNNN/ folders and latest.json; --out is the older spelling)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/latest.json to --steps")
    opt("preset", "model size", choices=sorted(PRESETS))
    opt("model", "JSON TransformerConfig overrides, e.g. '{\"n_layers\": 4}'")
    opt("steps", "total optimizer steps", type=int)
    opt("batch_size", "sequences per rank per step", type=int)
    for name, kind, what in (
            ("lr", float, "peak learning rate"), ("weight_decay", float, "AdamW weight decay of matrices"),
            ("warmup_steps", int, "linear warm-up steps"), ("grad_clip", float, "max gradient norm, 0 off"),
            ("seed", int, "data order, crops and initial weights"), ("semantic_s", float, "semantic crop seconds"),
            ("coarse_s", float, "coarse crop seconds"), ("fine_s", float, "fine crop seconds"),
            ("shuffle_buffer", int, "records held for shuffling"), ("save_every", int, "steps between checkpoints"),
            ("log_every", int, "steps between progress lines"),
            ("prefetch", int, "batches a background thread forms ahead of the step, 0 off")):
        opt(name, what, type=kind)
    opt("schedule", "lr after warm-up: constant, or cosine to 10%% at --steps", choices=("constant", "cosine"))
    opt("short_tracks", "tracks shorter than the crop: pad (masked in the loss) or skip", choices=("pad", "skip"))
    opt("mulan_stages", "stages conditioned on MuLan tokens M, comma-separated, or 'none'")
    opt("mulan_codebook", "MuLan RVQ file the dataset was tokenized with (None: the packaged one)")
    opt("melody_stages", "stages conditioned on the crop's melody tokens (when the dataset has a melody "
                         "stream), comma-separated, or 'none'")
    opt("melody_dropout", "share of crops whose melody condition is all pad, so the stage also generates "
                          "from text alone", type=float)
    opt("splits", "comma-separated splits to read")
    opt("amp", "bf16 autocast: auto = on CUDA only", choices=("auto", "bf16", "off"))
    opt("device", "where to train", choices=("auto", "cpu", "cuda"))


def train_config(args: argparse.Namespace):
    """The TrainConfig of the parsed flags. With --resume, settings not given on the command line
    are the checkpoint's (so `--resume --steps N` continues a run as it was started)."""
    from tokenmill.errors import UsageError
    from tokenmill.training.train import TrainConfig, resumed_config

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    a = {k: v for k, v in vars(args).items() if k in names}
    if "model" in a:
        try:
            a["model"] = json.loads(a["model"])
        except json.JSONDecodeError as e:
            raise UsageError(f"--model must be a JSON object of TransformerConfig fields: {e}") from None
        if not isinstance(a["model"], dict):
            raise UsageError("--model must be a JSON object, e.g. '{\"n_layers\": 4}'")
    for name in ("mulan_stages", "melody_stages"):
        if name in a:
            ms = a[name].strip()
            a[name] = () if ms in ("", "none") else tuple(s.strip() for s in ms.split(","))
    if "splits" in a:
        a["splits"] = tuple(s.strip() for s in a["splits"].split(",") if s.strip())
    return resumed_config(a)


def run(args, beam_args: list[str]) -> int:
    import torch.distributed as dist

    from tokenmill.training.train import run as train

    try:
        train(train_config(args))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
