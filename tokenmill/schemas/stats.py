"""`stats DIR`: what a tokenized dataset holds and how well each codebook is used.

`compute_stats` is a pure function over records (one pass, O(vocab x levels) memory) plus the
manifest's stream table and the dead letters; `dataset_stats` reads them from a local dataset
directory through the schema readers. No Beam, no torch. Plots: tokenmill/inspect_plots.py.

Token usage per stream and level (acoustic: one row per RVQ level; mulan and melody: one per RVQ stage;
semantic: one row): tokens = how many ids were emitted, used = distinct ids seen, vocab = the
codebook size the manifest declares, entropy = -sum p log2 p of the id frequencies in bits,
of max = entropy / log2(vocab) (1.0 = every id equally often), dead codes = ids never used.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from tokenmill.errors import TokenmillError
from tokenmill.schemas import shards as fmt
from tokenmill.schemas.records import SPLITS, TrackRecord

TOKEN_STREAMS = ("semantic", "acoustic", "mulan", "melody")  # streams of token ids (*_windows are floats)
LEVEL_NAMES = {"semantic": None, "acoustic": "level", "mulan": "stage", "melody": "stage"}


class StatsError(TokenmillError, ValueError):
    """The records disagree with the manifest's stream table (run `verify`)."""


@dataclass
class DatasetStats:
    """`summary` is JSON-able (what `stats --json` prints); `counts` holds, per token stream,
    int64 [levels, vocab] id counts; `durations_s` float64 [records]."""

    summary: dict[str, Any]
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    durations_s: np.ndarray = field(default_factory=lambda: np.zeros(0))


def usage_entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy (bits) of the id distribution given by counts [vocab]; 0.0 when empty."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: one used id gives 0.0, not -0.0


def level_usage(counts: np.ndarray) -> dict[str, Any]:
    """Usage row of one codebook level from its counts [vocab]."""
    vocab = int(counts.shape[0])
    h = usage_entropy_bits(counts)
    return {"tokens": int(counts.sum()), "used": int((counts > 0).sum()), "vocab": vocab,
            "entropy_bits": h, "entropy_fraction": h / math.log2(vocab) if vocab > 1 else None,
            "dead_codes": int((counts == 0).sum())}


def _stream_shape(name: str, info: dict) -> tuple[int, int]:
    """(levels, vocab) of a token stream from the manifest's stream entry."""
    levels = {"semantic": 1, "acoustic": info.get("n_q"), "mulan": info.get("n_stages"),
              "melody": info.get("n_stages")}[name]
    vocab = info.get("vocab_size")
    if not isinstance(levels, int) or not isinstance(vocab, int) or levels < 1 or vocab < 1:
        raise StatsError(f"manifest streams.{name} lacks a usable depth/vocab_size ({info}); "
                         "re-run tokenize to rewrite the manifest")
    return levels, vocab


def compute_stats(records: Iterable[TrackRecord], streams: dict[str, dict],
                  dead_letters: Iterable[fmt.DeadLetter] = ()) -> DatasetStats:
    """One pass over `records`. `streams`: the manifest's `streams` table (vocab sizes, depths).

    Raises StatsError when a record holds an id >= vocab or a level count other than declared."""
    shapes = {s: _stream_shape(s, streams[s]) for s in TOKEN_STREAMS if s in streams}
    counts = {s: np.zeros(shape, np.int64) for s, shape in shapes.items()}
    per_split = {sp: {"records": 0, "sources": set(), "seconds": 0.0} for sp in SPLITS}
    sources: set[str] = set()
    durations: list[float] = []
    captioned = 0
    for r in records:
        durations.append(r.duration_s)
        sources.add(r.uri)
        captioned += r.caption is not None
        sp = per_split[r.split]
        sp["records"] += 1
        sp["sources"].add(r.uri)
        sp["seconds"] += r.duration_s
        for s, (levels, vocab) in shapes.items():
            arr = getattr(r, s)
            if arr is None:
                raise StatsError(f"record {r.key} lacks the {s} stream the manifest declares; "
                                 "run beam_runner.py verify on the dataset")
            arr2 = (arr.reshape(1, -1) if s == "semantic" else arr.reshape(-1, 1) if s == "mulan"
                    else arr.T if s == "melody" else arr)  # melody [W, stages] -> one row per stage
            if arr2.shape[0] != levels:
                raise StatsError(f"record {r.key}: {s} has {arr2.shape[0]} levels, the manifest "
                                 f"declares {levels}; run beam_runner.py verify on the dataset")
            if arr2.size and int(arr2.max()) >= vocab:
                raise StatsError(f"record {r.key}: {s} id {int(arr2.max())} >= vocab_size {vocab}; "
                                 "run beam_runner.py verify on the dataset")
            for lv in range(levels):
                counts[s][lv] += np.bincount(arr2[lv], minlength=vocab)
    letters = list(dead_letters)
    rows = Counter((d.reason, d.stage, d.error) for d in letters)
    seconds = float(sum(durations))
    summary = {
        "records": len(durations), "sources": len(sources), "captioned": captioned,
        "seconds": round(seconds, 6), "hours": seconds / 3600,
        "splits": {sp: {"records": v["records"], "sources": len(v["sources"]),
                        "seconds": round(v["seconds"], 6), "hours": v["seconds"] / 3600}
                   for sp, v in per_split.items()},
        "dead_letters": {
            "total": len(letters),
            "by_reason": dict(sorted(Counter(d.reason for d in letters).items())),
            "by_stage": dict(sorted(Counter(d.stage for d in letters).items())),
            "by_error": dict(sorted(Counter(d.error for d in letters).items())),
            "rows": [{"reason": k[0], "stage": k[1], "error": k[2], "count": n}
                     for k, n in sorted(rows.items())],
        },
        "streams": {},
    }
    for s, c in counts.items():
        summary["streams"][s] = {
            "vocab_size": int(c.shape[1]), "levels": int(c.shape[0]), "level_name": LEVEL_NAMES[s],
            "tokens": int(c.sum()),
            "per_level": [{"level": lv + 1, **level_usage(c[lv])} for lv in range(c.shape[0])],
        }
    return DatasetStats(summary, counts, np.asarray(durations, np.float64))


def dataset_stats(root: str, *, format: str | None = None) -> DatasetStats:
    """compute_stats over a local dataset directory: its records (one format, see
    shards.read_dataset) and the failures-*.jsonl files its manifest lists."""
    manifest = fmt.read_manifest(root)
    letters = []
    for d in manifest["dead_letter_files"]:
        path = os.path.join(root, d["path"])
        try:
            with open(path, "rb") as f:
                letters += fmt.decode_dead_letters(f.read())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: listed in {root}/manifest.json but missing; run "
                                    "beam_runner.py verify, then re-run tokenize") from None
    st = compute_stats(fmt.read_dataset(root, format=format, manifest=manifest),
                       manifest["streams"], letters)
    st.summary = {"dataset": root, "schema_version": manifest["schema_version"], **st.summary}
    return st


# ---- text table ------------------------------------------------------------------------------

def format_stats(summary: dict[str, Any]) -> str:
    """The readable table `stats` prints (the same content as `stats --json`)."""
    s = summary
    out = [f"tokenmill stats: {s.get('dataset', '')} (schema {s.get('schema_version', '?')})",
           f"  tracks        {s['records']} records (segments) from {s['sources']} sources, "
           f"{s['hours']:.4f} h ({s['seconds']:,.2f} s), {s['captioned']} captioned",
           f"  {'split':<12}{'records':>9}{'sources':>9}{'hours':>10}"]
    for sp, v in s["splits"].items():
        out.append(f"  {sp:<12}{v['records']:>9}{v['sources']:>9}{v['hours']:>10.4f}")
    dl = s["dead_letters"]
    out.append(f"  dead letters  {dl['total']}" + (":" if dl["rows"] else ""))
    if dl["rows"]:
        out.append(f"    {'reason':<20}{'stage':<12}{'error':<26}{'count':>6}")
        out += [f"    {r['reason']:<20}{r['stage']:<12}{r['error']:<26}{r['count']:>6}" for r in dl["rows"]]
    out.append("  token usage   (entropy of the id frequencies; of max = entropy / log2(vocab); "
               "dead = ids never used)")
    out.append(f"    {'stream':<10}{'level':>6}{'tokens':>12}{'used/vocab':>14}{'entropy bits':>14}"
               f"{'of max':>8}{'dead':>7}")
    for name, st in s["streams"].items():
        for row in st["per_level"]:
            lv = "-" if st["level_name"] is None else str(row["level"])
            frac = "-" if row["entropy_fraction"] is None else f"{row['entropy_fraction']:.3f}"
            out.append(f"    {name:<10}{lv:>6}{row['tokens']:>12,}{row['used']:>8}/{row['vocab']:<5}"
                       f"{row['entropy_bits']:>14.3f}{frac:>8}{row['dead_codes']:>7}")
    return "\n".join(out)
