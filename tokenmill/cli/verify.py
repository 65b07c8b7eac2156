"""`verify`: a dataset directory against its manifest; exit 1 on any mismatch."""
from __future__ import annotations

import json
import sys


def add_args(p) -> None:
    p.description = ("Recompute sizes, sha256 and record counts of every shard, decode them under the schema, "
                     "compare Parquet with WebDataset record by record, and reconcile inputs = sources in records + "
                     "dead letters. Exits 1 and names the file on any mismatch.")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args, beam_args: list[str]) -> int:
    from tokenmill.pipelines.report import print_summary
    from tokenmill.schemas.verify import verify_dataset

    rep = verify_dataset(args.dataset)
    if args.json:
        print(json.dumps({"ok": rep.ok, "problems": rep.problems}, indent=1))
    else:
        for prob in rep.problems:
            print(f"FAIL {prob}", file=sys.stderr)
        if rep.ok:
            print_summary(args.dataset, rep.manifest, verified=True)
    return 0 if rep.ok else 1
