"""`memorization`: does a trained semantic stage copy its training data? (a Beam job)"""
from __future__ import annotations


def add_args(p) -> None:
    from tokenmill.pipelines.memorization_options import add_memorization_args

    p.description = (
        "Sample N training examples, prompt the semantic stage with each example's MuLan tokens and its first T "
        "semantic tokens, greedily decode the next C tokens and compare them with the true continuation: exact "
        "match (token for token) and approximate match (optimal-transport cost between the token histograms, "
        "centroid distances as ground cost, below a tau calibrated on negative pairs of different tracks). Writes "
        "REPORT_DIR/memorization.json (shares per T with 95 % intervals, tau and its false-positive rate, the "
        "matched examples' keys and entropies) and PNG plots. With --generated DIR, searches every training "
        "record for exact and approximate copies of each generated window instead.")
    add_memorization_args(p)


def run(args, beam_args: list[str]) -> int:
    from tokenmill.pipelines.device import check_local_device
    from tokenmill.pipelines.memorization import format_summary, run_memorization
    from tokenmill.pipelines.memorization_options import memorization_config

    check_local_device(args.device, beam_args)
    rep = run_memorization(memorization_config(args), beam_args)
    print(format_summary(rep))
    print(f"report: {args.output.rstrip('/')}/memorization.json")
    return 0
