"""`evaluate`: FAD, KLD and MCC of generated vs reference audio (a Beam job)."""
from __future__ import annotations

import argparse
import time


def add_args(p) -> None:
    from tokenmill.pipelines.evaluate_options import DESCRIPTION, add_evaluate_args

    p.description, p.formatter_class = DESCRIPTION, argparse.RawDescriptionHelpFormatter
    add_evaluate_args(p)


def run(args, beam_args: list[str]) -> int:
    from tokenmill.pipelines.device import check_local_device
    from tokenmill.pipelines.evaluate import build_evaluate
    from tokenmill.pipelines.evaluate_options import prepare
    from tokenmill.pipelines.runner import make_pipeline

    check_local_device(args.device, beam_args)
    t0 = time.monotonic()
    cfg, sides, descs, rates, captions, reused, notes = prepare(args)
    with make_pipeline(beam_args) as p:
        build_evaluate(p, cfg, sides=sides, descs=descs, rates_hz=rates, captions=captions, reused=reused,
                       notes=notes)
    out = cfg.output.rstrip("/")
    print(open(f"{out}/report.md").read() if "://" not in out else "", end="")
    print(f"evaluate: {out}/report.json, report.md and plots written in {time.monotonic() - t0:.1f} s")
    return 0
