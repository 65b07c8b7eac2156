"""Benchmark: on real recordings, does a large semantic codebook use all its codes?

Not a test: it prints figures measured in one run on this machine.

    .venv/bin/python bench/bench_semantic_codes.py --input 'DIR/**/*.ogg' --input 'tests/data/audio/*' \
        [--extractor melodic spectral] [--k 1024] [--seconds 60] [--max_files 60]

Each file (sorted; at most --max_files at an even stride over that list) is decoded, mixed to mono and resampled to 16 kHz by
tokenizers/audio.py, cut to its first --seconds, and its features extracted. Files whose sha256 of
the path falls in the first 20 % are held out. A k-means codebook (tokenmill's fit_kmeans) is fitted
on the other files' frames; the bench reports how many of the k codes are used by the fit frames
and by the held-out frames, the perplexity of the held-out token distribution (2^H; k means all
codes equally used), and extraction speed per thread.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from tokenmill.tokenizers import audio  # noqa: E402
from tokenmill.tokenizers.kmeans import fit_kmeans  # noqa: E402
from tokenmill.tokenizers.semantic import build_extractor  # noqa: E402


def load(path: str, seconds: float) -> np.ndarray | None:
    try:
        dec = audio.decode(open(path, "rb").read(), path)
    except audio.AudioError as e:
        print(f"skipping {path}: {e}", file=sys.stderr)
        return None
    x = audio.resample(audio.to_mono(dec.pcm), dec.sample_rate_hz, 16000, "HQ")[: int(seconds * 16000)]
    n = len(x) // 640 * 640
    return np.ascontiguousarray(x[:n], np.float32) if n else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", action="append", required=True, help="glob (recursive **); repeatable")
    ap.add_argument("--extractor", nargs="+", default=["melodic", "spectral"])
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=60.0, help="first seconds of each file")
    ap.add_argument("--max_files", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted({f for g in args.input for f in glob.glob(g, recursive=True) if os.path.isfile(f)})
    files = files[:: -(-len(files) // args.max_files)]  # an even stride: every source folder gets a share
    waves = {f: w for f in files if (w := load(f, args.seconds)) is not None}
    held = {f for f in waves if int(hashlib.sha256(f.encode()).hexdigest()[:8], 16) % 100 < 20}
    secs = sum(len(w) for w in waves.values()) / 16000
    print(f"{len(waves)} files, {secs / 60:.1f} min of audio ({len(held)} files held out)")
    print("| extractor | k | fit frames | codes used (fit) | held-out frames | codes used (held out) | held-out perplexity | x RT/thread |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.extractor:
        ex = build_extractor(name)
        t = time.perf_counter()
        feats = {f: ex.extract(w) for f, w in waves.items()}
        speed = secs / (time.perf_counter() - t)
        fit = np.concatenate([feats[f] for f in waves if f not in held])
        ho = np.concatenate([feats[f] for f in waves if f in held])
        standardize = bool(ex.describe().get("standardize", False))
        cb = fit_kmeans(fit, args.k, seed=0, standardize=standardize)
        used_fit = len(np.unique(cb.assign(fit)))
        tok = cb.assign(ho)
        p = np.bincount(tok, minlength=args.k) / len(tok)
        perp = float(2 ** -(p[p > 0] * np.log2(p[p > 0])).sum())
        print(f"| {name} | {args.k} | {len(fit)} | {used_fit} | {len(ho)} | {len(np.unique(tok))} | {perp:.0f} | {speed:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
