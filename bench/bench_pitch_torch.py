"""Benchmark: basic-pitch's ONNX graph run by torch (onnx_torch.py) against onnxruntime, same run.

Not a test: it prints figures measured in one run on this machine.

    .venv/bin/python bench/bench_pitch_torch.py          # ~1-2 min; needs onnxruntime

Audio: the real clips of tests/data/audio, decoded to 16 kHz mono. Both runtimes run the same
ONNX file from the basic-pitch wheel, on one thread, under the portable compute layout (AVX2).
Printed:
  agreement  max |torch - onnxruntime| on the note / onset posteriorgrams and on the 14-d
             features; share of model frames with the same top key and the same 0.3 / 0.5
             threshold decisions; share of 25 Hz frames with the same top pitch class
  speed      audio seconds per wall second (best of --repeats) for torch (one window per call,
             the extractor's default) and onnxruntime with 1 and 8 windows per call (8 was the
             onnxruntime default before torch became the default runtime)
  float64    max |x - exact| of each runtime, exact = the same graph run by torch in float64
  front end  share of the torch module's time spent before the first 2-d convolution (the CQT:
             one-channel filter banks and the octave low-pass), i.e. what an FFT-based CQT could
             at most save
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tokenmill.tokenizers import compute  # noqa: E402

AUDIO = Path(__file__).resolve().parent.parent / "tests" / "data" / "audio"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of each clip (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes, best kept (default %(default)s)")
    args = ap.parse_args()
    compute.apply(compute.ComputeLayout(threads=1, kernels="portable"))
    import torch

    from tokenmill.tokenizers import audio
    from tokenmill.tokenizers.onnx_torch import OPS
    from tokenmill.tokenizers.semantic_pitch import PitchConfig, PitchExtractor

    waves = []
    for path in sorted(AUDIO.iterdir()):
        segs = audio.prepare(path.read_bytes(), path.name, audio.AudioConfig(target_rates_hz=(16000,)))
        w = segs[0].waves[16000]
        waves.append(w[: int(args.seconds * 25) * 640])
    total_s = sum(len(w) for w in waves) / 16000
    print(f"{len(waves)} clips, {total_s:.0f} s of audio; torch {torch.__version__}, "
          f"kernels {torch.backends.cpu.get_cpu_capability()}, 1 thread")

    runs = {"torch, 1 window/call": PitchConfig(),
            "onnxruntime, 1 window/call": PitchConfig(runtime="onnxruntime"),
            "onnxruntime, 8 windows/call": PitchConfig(runtime="onnxruntime", batch_windows=8)}
    post, feats, speed = {}, {}, {}
    for label, cfg in runs.items():
        ex = PitchExtractor(cfg)
        ex.extract(waves[0][:640 * 50])  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = [ex.extract(w) for w in waves]
            best = min(best, time.perf_counter() - t)
        speed[label] = total_s / best
        feats[label] = out
        post[label] = [ex.posteriorgrams(w) for w in waves]

    ref, got = post["onnxruntime, 8 windows/call"], post["torch, 1 window/call"]
    note_r, onset_r = (np.concatenate([p[i] for p in ref]) for i in (0, 1))
    note_t, onset_t = (np.concatenate([p[i] for p in got]) for i in (0, 1))
    fr = np.concatenate(feats["onnxruntime, 8 windows/call"])
    ft = np.concatenate(feats["torch, 1 window/call"])
    print("\n| agreement, torch vs onnxruntime | value |\n|---|---|")
    print(f"| max abs diff, note posteriorgram | {np.abs(note_t - note_r).max():.2e} |")
    print(f"| max abs diff, onset posteriorgram | {np.abs(onset_t - onset_r).max():.2e} |")
    print(f"| max abs diff, 14-d features | {np.abs(ft - fr).max():.2e} |")
    print(f"| same top key per model frame (note) | {(note_t.argmax(1) == note_r.argmax(1)).mean():.6f} |")
    for th in (0.3, 0.5):
        print(f"| same note >= {th} decisions | {((note_t >= th) == (note_r >= th)).mean():.8f} |")
    print(f"| same top pitch class per 25 Hz frame | {(ft[:, :12].argmax(1) == fr[:, :12].argmax(1)).mean():.6f} |")
    print(f"| model frames compared | {len(note_r)} |")

    # both against the same graph run in float64 by torch: how far is each from the exact result?
    ex64 = PitchExtractor()
    mod64 = next(c.cell_contents for c in ex64._run.__closure__ if isinstance(c.cell_contents, torch.nn.Module))
    mod64.double()

    def run64(batch):
        with torch.inference_mode():
            n, o = mod64(torch.from_numpy(batch).double())
        return n.numpy(), o.numpy()

    ex64._run = run64
    exact = [ex64.posteriorgrams(w) for w in waves]
    note_x, onset_x = (np.concatenate([p[i] for p in exact]) for i in (0, 1))
    print("\n| max abs diff to float64 | note | onset |\n|---|---|---|")
    print(f"| torch | {np.abs(note_t - note_x).max():.2e} | {np.abs(onset_t - onset_x).max():.2e} |")
    print(f"| onnxruntime | {np.abs(note_r - note_x).max():.2e} | {np.abs(onset_r - onset_x).max():.2e} |")

    base = speed["onnxruntime, 8 windows/call"]
    print("\n| runtime | x real time / thread | vs onnxruntime (8/call) |\n|---|---|---|")
    for label, v in speed.items():
        print(f"| {label} | {v:.1f} | {v / base:.2f}x |")

    # where the torch module's time goes: front end (before the first 2-d convolution) vs the CNN
    module = PitchExtractor()._run.__closure__
    mod = next(c.cell_contents for c in module if isinstance(c.cell_contents, torch.nn.Module))
    first_cnn = next(k for k, n in enumerate(mod.nodes)
                     if n.op_type == "Conv" and n.attrs.get("kernel_shape", [1])[0] > 1)
    x = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal((1, 43844, 1))).astype(np.float32))
    spent = np.zeros(2)
    with torch.inference_mode():
        for _ in range(10):
            env = dict(zip(mod.input_names, [x]))
            for k, node in enumerate(mod.nodes):
                args_ = [None if not n else env[n] if n in env else getattr(mod, mod._const[n]) for n in node.inputs]
                t = time.perf_counter()
                env[node.outputs[0]] = OPS[node.op_type](*args_, **node.attrs)
                spent[int(k >= first_cnn)] += time.perf_counter() - t
    print(f"\nfront end (CQT, nodes 0..{first_cnn - 1}): {spent[0] / spent.sum():.0%} of the torch module's time; "
          f"CNN: {spent[1] / spent.sum():.0%}")


if __name__ == "__main__":
    main()
