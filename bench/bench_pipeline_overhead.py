"""Pipeline overhead: `tokenize` wall time / the bare batched acoustic `encode` calls, same audio,
same process, one run (goal <= 1.10x).

The baseline is only the codec's `encode_batch` on pre-decoded 24 kHz segments, so the ratio
charges the pipeline with everything else it does: reading, decoding, resampling, the semantic
stream, Beam's bundling and shuffles, and writing both shard formats. Both sides use one thread.

    python bench/bench_pipeline_overhead.py [--input GLOB] [--acoustic_codec soundstream]
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(ROOT / "tests/data/audio/*"))
    ap.add_argument("--acoustic_codec", default="soundstream")
    ap.add_argument("--acoustic_model", default=None)
    ap.add_argument("--batch_size", type=int, default=4)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import beam_runner
    from tokenmill.tokenizers import audio
    from tokenmill.tokenizers.codec import build_codec

    kw = {"path": args.acoustic_model} if args.acoustic_model else {}
    codec = build_codec(args.acoustic_codec, **kw)
    cfg = audio.AudioConfig(target_rates_hz=(16_000, codec.sample_rate_hz))
    paths = sorted(glob.glob(args.input))
    segs = []
    for p in paths:
        try:
            segs += audio.prepare(Path(p).read_bytes(), p, cfg)
        except audio.AudioError:
            pass
    waves = [s.waves[codec.sample_rate_hz] for s in segs]
    audio_s = sum(s.duration_s for s in segs)
    codec.encode_batch(waves[:1])  # warm-up (allocations, lazy init), as the pipeline's load does

    t = time.perf_counter()
    for i in range(0, len(waves), args.batch_size):
        codec.encode_batch(waves[i:i + args.batch_size])
    t_encode = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        cb = Path(tmp) / "cb"
        beam_runner.main(["fit-codebook", "--input", args.input, "--output", str(cb), "--num_clusters", "64"])
        t = time.perf_counter()
        argv = ["tokenize", "--input", args.input, "--codebook", str(cb), "--output", f"{tmp}/ds",
                "--acoustic_codec", args.acoustic_codec, "--acoustic_batch_size", str(args.batch_size)]
        if args.acoustic_model:
            argv += ["--acoustic_model", args.acoustic_model]
        beam_runner.main(argv)
        t_job = time.perf_counter() - t

    print(f"\n{len(segs)} segments, {audio_s / 60:.1f} min of audio, codec {codec.name} "
          f"({float(codec.frame_rate_hz):g} Hz x {codec.n_q}), 1 thread")
    print(f"bare encode_batch      {t_encode:7.1f} s  ({audio_s / t_encode:.0f}x real time)")
    print(f"tokenize (whole job)   {t_job:7.1f} s  ({audio_s / t_job:.0f}x real time)")
    ratio = t_job / t_encode
    print(f"overhead ratio         {ratio:7.2f}x  (goal <= 1.10x: {'met' if ratio <= 1.10 else 'NOT met'})")


if __name__ == "__main__":
    main()
