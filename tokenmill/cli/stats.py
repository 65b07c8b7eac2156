"""`stats`: what a dataset holds and how well each codebook is used."""
from __future__ import annotations

import json
import sys


def add_args(p) -> None:
    p.description = ("Read a tokenized dataset's records (Parquet, else WebDataset) and its dead letters and print: "
                     "tracks (records and distinct sources), hours, records/sources/hours per split, dead letters by "
                     "reason, stage and error class, and per token stream (acoustic: per RVQ level; mulan: per RVQ "
                     "stage) the tokens emitted, distinct ids used of the vocabulary, usage entropy in bits and as "
                     "a fraction of log2(vocab), and dead codes (ids never used).")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--plots", metavar="OUT", help="also write duration_hist.png and "
                   "token_usage_<stream>.png (sorted usage per id, log scale) into OUT")
    p.add_argument("--json", action="store_true", help="print the same numbers as JSON")


def run(args, beam_args: list[str]) -> int:
    from tokenmill.schemas.stats import dataset_stats, format_stats

    st = dataset_stats(args.dataset)
    print(json.dumps(st.summary, indent=1) if args.json else format_stats(st.summary))
    if args.plots:
        from tokenmill.inspect_plots import write_stats_plots

        paths = write_stats_plots(st, args.plots)
        print(f"plots: {', '.join(str(p) for p in paths)}", file=sys.stderr if args.json else sys.stdout)
    return 0
