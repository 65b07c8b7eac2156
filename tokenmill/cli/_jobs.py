"""What the Beam commands that run models (fit-codebook, tokenize) do before their job starts."""
from __future__ import annotations

import logging


def pin_local_compute(args, beam_args: list[str]):
    """Refuse a local --device this machine lacks, then pin this process (the launcher, and the
    embedded runner's in-process workers) to the job's compute layout before any model is built
    here. Returns (the job's ComputeLayout, this launcher's compute facts)."""
    from tokenmill.pipelines import options as opts
    from tokenmill.pipelines.device import check_local_device
    from tokenmill.tokenizers import compute

    check_local_device(args.device, beam_args)  # workers on this machine: CUDA must be here
    layout = opts.compute_layout(args)
    return layout, compute.apply(layout)  # ComputeError (a TokenmillError) when torch runs other kernels


def compute_warning(what: str, changes: list[str]) -> None:
    """One warning line when a run writes into a dataset or journal made under another layout."""
    if changes:
        logging.getLogger("tokenmill").warning(
            "%s was written under another compute layout (%s); the new records' tokens can differ from "
            "what the earlier layout would give in rare near-boundary frames. Recorded in the manifest "
            "(compute); use the earlier --torch_threads/--kernels to avoid mixing", what, "; ".join(changes))
