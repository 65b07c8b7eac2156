#!/usr/bin/env python
"""`evaluate` throughput per worker with the built-in MuLan: clips/s of the whole job (one
embedded-runner worker, 1 torch thread) against the bare embedder on the same clips, measured in
one run.

    python bench/bench_evaluate.py [--audio DIR] [--clips N]

Clips: 10 s cuts of the real music in --audio (default tests/data/audio; the 15 cuts repeat to
make --clips), written as 16 kHz WAVs; both sides of the job are these clips (2N clips scored). Two job settings:
  fad-only   --classifier none --mulan_model none (the embedder alone)
  full       FAD + zero-shot KLD (50 labels) + MCC, every model the built-in MuLan
The bare figure is MulanWindowsEmbedder.embed over the same waves in this process. The job's
figure includes its fixed costs (start-up, model loads, graph, the report), printed separately
as the time of a 2-clip job.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def job(gen: str, out: str, extra: list[str]) -> float:
    t = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "beam_runner.py"), "evaluate", "--generated", gen, "--reference", gen,
                    "--output", out, "--torch_threads", "1", "--fad_bootstrap", "0", *extra],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio", default=str(ROOT / "tests" / "data" / "audio"))
    p.add_argument("--clips", type=int, default=64, help="clips per side (default 64)")
    a = p.parse_args()
    import numpy as np
    import soundfile
    import torch

    from tokenmill.eval.clips import load_clip
    from tokenmill.eval.embedders import build_embedder

    torch.set_num_threads(1)
    emb = build_embedder("mulan")
    sr = emb.sample_rate_hz
    waves = []
    for f in sorted(Path(a.audio).iterdir()):
        w = load_clip(f.read_bytes(), str(f), (sr,))[0][sr]
        waves += [w[i:i + 10 * sr] for i in range(0, len(w) - 10 * sr + 1, 10 * sr)]
    waves = [waves[i % len(waves)] for i in range(a.clips)]  # the cuts repeat past the audio's length
    with tempfile.TemporaryDirectory() as tmp:
        for d in ("all", "two"):
            os.mkdir(f"{tmp}/{d}")
        for i, w in enumerate(waves):
            soundfile.write(f"{tmp}/all/c{i:03d}.wav", w, sr, subtype="FLOAT")
            if i < 1:
                soundfile.write(f"{tmp}/two/c{i:03d}.wav", w, sr, subtype="FLOAT")
        labels = Path(tmp) / "labels.txt"
        labels.write_text("\n".join(f"label {i}" for i in range(50)))
        t = time.monotonic()
        for w in waves:
            emb.embed(w)
        bare = time.monotonic() - t
        n = 2 * len(waves)
        fixed = job(f"{tmp}/two/*", f"{tmp}/o0", ["--classifier", "none", "--mulan_model", "none"])
        fad_only = job(f"{tmp}/all/*", f"{tmp}/o1", ["--classifier", "none", "--mulan_model", "none"])
        full = job(f"{tmp}/all/*", f"{tmp}/o2", ["--labels", str(labels)])
    print(f"{len(waves)} clips of 10 s per side ({n} scored), 1 worker, 1 torch thread")
    print(f"bare embedder: {len(waves) / bare:.1f} clips/s")
    print(f"fixed cost (2-clip job): {fixed:.1f} s")
    print(f"fad-only job: {fad_only:.1f} s = {n / fad_only:.2f} clips/s end to end; after the fixed cost "
          f"{n / max(fad_only - fixed, 1e-9):.2f} clips/s = {(fad_only - fixed) / n / (bare / len(waves)):.2f}x the bare "
          "embedder's time per clip")
    print(f"full job (FAD + KLD + MCC): {full:.1f} s = {n / full:.2f} clips/s end to end; after the fixed cost "
          f"{n / max(full - fixed, 1e-9):.2f} clips/s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
