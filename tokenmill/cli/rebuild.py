"""`rebuild`: refit one stream's codebook (ids kept) and write a dataset version rewriting that stream."""
from __future__ import annotations


def add_args(p) -> None:
    from tokenmill.pipelines.rebuild import add_rebuild_args

    p.description = (
        "Refit the semantic k-means or the MuLan RVQ of --dataset on a new deterministic sample, warm-started from "
        "the parent codebook (--codebook, whose id must be the manifest's) with ids aligned to the parent's; print "
        "and write the drift report (drift.json: share of tokens changed on a fixed probe set and over the whole "
        "dataset, centroid movement, usage before/after); and write --output as a new version of the dataset: one "
        "column shard per parent shard holding key + the rewritten field, and a manifest that lists the parent's "
        "shard files by relative path and sha256 (never copied) with lineage. shards.read_dataset merges the "
        "records; verify checks both. --stream mulan re-encodes the stored mulan_windows (no audio model runs); "
        "--stream semantic decodes the sources again and runs only the semantic extractor. Both are Beam jobs: "
        "any FileSystems URL, any runner, resumable from OUTPUT/_work.")
    add_rebuild_args(p)


def run(args, beam_args: list[str]) -> int:
    from tokenmill.pipelines.rebuild import print_rebuild_summary, rebuild_config, run_rebuild

    print_rebuild_summary(run_rebuild(rebuild_config(args), beam_args))
    return 0
