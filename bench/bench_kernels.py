"""Model throughput under pinned AVX2 kernels (`--kernels portable`, the default) vs the widest
the machine has (`native`), one torch thread, measured in one run.

Each setting runs in a fresh process (the kernel variables must be set before torch's first
operation): the built-in SoundStream encoder, the built-in MuLan audio tower (10 s windows at a
1 s stride) and the spectral semantic extractor, on the same real audio (default: the bundled
clips, concatenated), timed after one warm-up call. Prints × real time per thread and the ratio.

    python bench/bench_kernels.py [--input 'DIR/*'] [--seconds 120]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import glob, json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from tokenmill.tokenizers import audio, compute
kernels, pattern, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4])
facts = compute.apply(compute.ComputeLayout(threads=1, kernels=kernels))
waves = {16000: [], 24000: []}
for f in sorted(glob.glob(pattern)):
    try:
        for s in audio.prepare(open(f, "rb").read(), f, audio.AudioConfig(target_rates_hz=(16000, 24000))):
            for r in waves:
                waves[r].append(s.waves[r])
    except audio.AudioError:
        pass
w = {r: np.concatenate(v)[: int(seconds * r)] for r, v in waves.items()}
dur = len(w[16000]) / 16000
from tokenmill.tokenizers.codec import build_codec
from tokenmill.tokenizers.mulan import build_mulan
from tokenmill.tokenizers.semantic import build_extractor
out = {"kernels": facts["torch_cpu_capability"], "seconds": dur}
for name, fn in (("soundstream", lambda m: m.encode(w[24000])), ("mulan", lambda m: m.embed_audio_windows(w[16000])),
                 ("spectral", lambda m: m.extract(w[16000]))):
    m = {"soundstream": lambda: build_codec("soundstream"), "mulan": lambda: build_mulan("mulan"),
         "spectral": lambda: build_extractor("spectral")}[name]()
    fn(m)  # warm-up
    t = time.perf_counter(); fn(m); out[name] = dur / (time.perf_counter() - t)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(ROOT / "tests/data/audio/*"))
    ap.add_argument("--seconds", type=float, default=120.0)
    a = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                             "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")}
    res = {}
    for kernels in ("portable", "native"):
        p = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), kernels, a.input, str(a.seconds)],
                           env=env, capture_output=True, text=True, check=True)
        res[kernels] = json.loads(p.stdout.strip().splitlines()[-1])
    p, n = res["portable"], res["native"]
    print(f"{p['seconds']:.0f} s of audio, 1 torch thread; x real time per thread")
    print(f"{'model':<12} {'portable (' + p['kernels'] + ')':>18} {'native (' + n['kernels'] + ')':>18} {'native time':>11}")
    for m in ("soundstream", "mulan", "spectral"):
        print(f"{m:<12} {p[m]:>18.1f} {n[m]:>18.1f} {p[m] / n[m]:>10.2f}x")


if __name__ == "__main__":
    main()
