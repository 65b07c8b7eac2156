"""Rebuild vs re-tokenize: wall time of a full `tokenize` and of `rebuild --stream semantic` on the
same audio, in the same run, plus the bytes the rebuild writes vs the bytes of the dataset.

    python bench/bench_rebuild.py [--input GLOB ...] [--acoustic_codec soundstream] [--mulan_model mulan]

Setup (not timed): a semantic codebook (k = --k) is fitted directly on the inputs' spectral
features. Timed: (1) `tokenize` of the inputs with the given codec and MuLan model (default: the
built-in SoundStream codec; MuLan only with --mulan_model, since the packaged MuLan weights may be absent); (2) `rebuild --stream semantic` of that
dataset (decode the sources again + semantic features + warm refit + assign + column shards); and
(3) for reference, `rebuild --stream mulan` when the dataset has a MuLan stream. Both commands run
in this process through beam_runner.main, one torch thread.

Printed: seconds of each, the ratio tokenize / rebuild, and "rewritten" = bytes of the rebuild's
column shards vs the version's total shard bytes (its column shards + the parent's referenced
shards; the parent's shards are not copied).
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", action="append", default=[], metavar="GLOB",
                    help="audio files (repeatable; default tests/data/audio/*)")
    ap.add_argument("--k", type=int, default=64, help="semantic codebook size (default %(default)s)")
    ap.add_argument("--acoustic_codec", default="soundstream", help="tokenize's codec (default %(default)s)")
    ap.add_argument("--mulan_model", default="none", help="tokenize's MuLan model (default %(default)s: this checkout has no packaged MuLan weights; give mulan where it has)")
    args = ap.parse_args()

    import numpy as np
    import torch

    import beam_runner
    from tokenmill.tokenizers import audio
    from tokenmill.tokenizers.kmeans import fit_kmeans
    from tokenmill.tokenizers.semantic import build_extractor

    torch.set_num_threads(1)
    patterns = args.input or [str(ROOT / "tests" / "data" / "audio" / "*")]
    paths = sorted({p for pat in patterns for p in glob.glob(pat, recursive=True)})
    if not paths:
        raise SystemExit(f"--input {patterns} matched no files")
    tmp = Path(tempfile.mkdtemp(prefix="bench-rebuild-"))
    ex, feats, audio_s = build_extractor("spectral"), [], 0.0
    for p in paths:
        try:
            segs = audio.prepare(Path(p).read_bytes(), p, audio.AudioConfig(target_rates_hz=(16_000,)))
        except audio.AudioError:
            continue
        for s in segs:
            feats.append(ex.extract(s.waves[16_000]))
            audio_s += s.duration_s
    cb = fit_kmeans(np.concatenate(feats), args.k, seed=0, kind="semantic")
    cb_path = cb.save(tmp / "cb")
    ds, v2 = tmp / "ds", tmp / "ds.v2"
    t0 = time.perf_counter()
    tok_args = ["tokenize", "--output", str(ds), "--codebook", str(cb_path), "--acoustic_codec",
                args.acoustic_codec, "--mulan_model", args.mulan_model]
    for pat in patterns:
        tok_args += ["--input", pat]
    assert beam_runner.main(tok_args) == 0
    t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert beam_runner.main(["rebuild", "--dataset", str(ds), "--stream", "semantic", "--codebook",
                             str(cb_path), "--output", str(v2)]) == 0
    t_reb = time.perf_counter() - t0
    m = json.loads((v2 / "manifest.json").read_text())
    col = sum(s["bytes"] for o in m["overrides"] for s in o["shards"])
    base = sum(s["bytes"] for s in m["shards"])
    t_mulan = None
    if "mulan" in m["codebooks"]:
        from tokenmill.tokenizers.mulan import build_mulan, load_codebook_for

        rvq_path = tmp / "rvq"
        load_codebook_for(build_mulan(args.mulan_model)).save(rvq_path)     # the packaged RVQ
        t0 = time.perf_counter()
        assert beam_runner.main(["rebuild", "--dataset", str(ds), "--stream", "mulan", "--codebook",
                                 str(rvq_path), "--output", str(tmp / "ds.v2m"), "--n_iter", "3"]) == 0
        t_mulan = time.perf_counter() - t0
    print(f"\n{len(paths)} files, {audio_s:.0f} s of audio; codec {args.acoustic_codec}, MuLan {args.mulan_model}, k={args.k}")
    print(f"  tokenize (full)            {t_tok:8.1f} s")
    print(f"  rebuild --stream semantic  {t_reb:8.1f} s   tokenize/rebuild = {t_tok / t_reb:.1f}x")
    if t_mulan is not None:
        print(f"  rebuild --stream mulan     {t_mulan:8.1f} s   tokenize/rebuild = {t_tok / t_mulan:.1f}x "
              f"(3 Lloyd iterations per stage)")
    print(f"  bytes rewritten            {col:,} of {col + base:,} ({100 * col / (col + base):.1f}%): "
          f"semantic column shards vs column + referenced parent shards ({base:,})")
    print(f"  output in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
