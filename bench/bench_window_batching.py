"""Benchmark the window streams' model stage: batched across segments vs one segment at a time.

    .venv/bin/python bench/bench_window_batching.py [--dir tests/data/audio] [--repeats 3] [--long_s 200 --tracks 4]
    .venv/bin/python bench/bench_window_batching.py --device cuda --pass_rows 256 --sizes 16,64,256,1024

The MuLan tower embeds a 10 s window at every 1 s, the melody tower a 4 s window at every 1 s.
For two workloads cut from real audio played one track after another (10 s clips, MusicCaps'
length, one MuLan window each; --long_s segments, default 20 s, 11 MuLan windows each) and both
built-in towers, it times in the same run:

  per segment    : the stage as it was: each segment's windows on their own, in passes of up to
                   batch_size rows (a 10 s clip: passes of one row), every window's log-mel
                   computed from its own samples
  batched        : the windows of all segments packed into fixed passes of batch_size rows
                   (windowing.embed_fixed_batches), log-mel still per window: the batching alone
  batched + mel  : what the stage does now: fixed passes, and each segment's log-mel computed once
                   and sliced per window (windowing.feature_window_rows)

and prints windows per second and audio seconds per CPU second (× real time; per core: one torch
thread, portable kernels, process CPU time, best of --repeats with the contenders interleaved) and
the ratios to "per segment". A sweep of the
pass size for "batched + mel" follows. It checks that the batched embeddings equal the per-window
ones to float32 rounding (they are not bit-equal: a pass of one row runs other kernels).
Not a test: it prints numbers.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenmill.tokenizers import compute  # noqa: E402

compute.apply(compute.ComputeLayout(threads=1, kernels="portable"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_frontend import best_times  # noqa: E402  (bench/ is this script's folder)
from tokenmill.tokenizers import audio, windowing  # noqa: E402

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"}
SR = 16_000


def load_waves(d: Path) -> list[np.ndarray]:
    cfg = audio.AudioConfig(target_rates_hz=(SR,), max_segment_s=3600)
    out = []
    for p in sorted(d.iterdir()):
        if p.suffix.lower() in AUDIO_SUFFIXES:
            out += [s.waves[SR] for s in audio.prepare(p.read_bytes(), p.name, cfg)]
    return out


def workload(waves: list[np.ndarray], seg_s: int, n: int) -> list[np.ndarray]:
    """n segments of seg_s seconds, cut in turn from the tracks played one after another (looped),
    so any length can be cut from short bundled tracks."""
    reel = np.concatenate(waves)
    need = n * seg_s * SR
    reel = np.tile(reel, -(-need // reel.shape[0]))
    return [reel[i * seg_s * SR:(i + 1) * seg_s * SR] for i in range(n)]


def embed_waves(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.net.embed_wave(torch.from_numpy(x).to(model.device)).cpu().numpy()


def per_segment(model, segs):
    """The old stage: one segment at a time, passes of up to batch_size rows, wave rows."""
    out = []
    for w in segs:
        rows = list(windowing.wave_window_rows(w, SR, model.window_s, model.stride_s))
        for j in range(0, len(rows), model.batch_size):
            out.append(embed_waves(model, np.stack(rows[j:j + model.batch_size])))
    return np.concatenate(out)


def batched_wave(model, segs):
    def embed(x):
        return embed_waves(model, x)
    rows = (r for w in segs for r in windowing.wave_window_rows(w, SR, model.window_s, model.stride_s))
    return windowing.embed_fixed_batches(rows, embed, batch_size=model.batch_size, dim=model.dim)


def batched_mel(model, segs):
    batch = getattr(model, "embed_audio_windows_batch", None) or model.embed_windows_batch
    return np.concatenate(batch(segs))


def best_s(fns: dict, repeats: int, device: str = "cpu") -> dict:
    """bench_frontend's best-of-N, interleaved: process CPU time on the CPU; on a GPU, wall time
    (every fn ends in a copy to the host, so the device is idle when the clock stops)."""
    return best_times(fns, repeats, time.process_time if device == "cpu" else time.perf_counter)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=str(Path(__file__).resolve().parents[1] / "tests/data/audio"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clips", type=int, default=48, help="10 s clips in the short workload")
    ap.add_argument("--tracks", type=int, default=8, help="segments in the long workload")
    ap.add_argument("--long_s", type=int, default=20, help="their length in seconds (cut from the tracks "
                    "played one after another)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N] to time the towers on a GPU (wall time)")
    ap.add_argument("--pass_rows", type=int, default=16, help="rows per forward pass (default %(default)s; "
                    "a GPU wants more)")
    ap.add_argument("--sizes", default="1,2,4,8,16,32", help="pass sizes of the sweep")
    args = ap.parse_args()
    from tokenmill.tokenizers.melody_builtin import BuiltinMelody
    from tokenmill.tokenizers.mulan_builtin import BuiltinMulan

    waves = load_waves(Path(args.dir))
    loads = {"10 s clips": workload(waves, 10, args.clips), f"{args.long_s} s segments": workload(waves, args.long_s, args.tracks)}
    where = (f"one torch thread, {torch.backends.cpu.get_cpu_capability()} kernels, process CPU time"
             if args.device == "cpu" else f"{torch.cuda.get_device_name(torch.device(args.device))}, wall time")
    print(f"{where}, best of {args.repeats}")
    print(f"{'model':8} {'workload':14} {'windows':>7} {'per segment':>12} {'batched':>16} {'batched + mel':>20}  max |Δ|")
    for model in (BuiltinMulan(batch_size=args.pass_rows, device=args.device),
                  BuiltinMelody(batch_size=args.pass_rows, device=args.device)):
        name = "MuLan" if isinstance(model, BuiltinMulan) else "melody"
        for label, segs in loads.items():
            ref = per_segment(model, segs)
            got = windowing.l2_normalize(ref)
            delta = float(np.abs(batched_mel(model, segs) - got).max())
            t = best_s({"seg": lambda: per_segment(model, segs), "wave": lambda: batched_wave(model, segs),
                        "mel": lambda: batched_mel(model, segs)}, args.repeats, args.device)
            n = ref.shape[0]
            rate = {k: n / v for k, v in t.items()}
            audio_s = sum(w.shape[0] for w in segs) / SR
            print(f"{name:8} {label:14} {n:7d} {rate['seg']:8.0f} w/s {rate['wave']:8.0f} w/s "
                  f"{rate['wave'] / rate['seg']:4.2f}x {rate['mel']:8.0f} w/s {rate['mel'] / rate['seg']:5.2f}x  {delta:.1e}"
                  f"  | x real time: {audio_s / t['seg']:.0f} -> {audio_s / t['mel']:.0f}")
        segs = [w for ws in loads.values() for w in ws]
        sizes = tuple(int(b) for b in args.sizes.split(","))
        models = {b: type(model)(batch_size=b, device=args.device) for b in sizes}
        t = best_s({b: (lambda m=m: batched_mel(m, segs)) for b, m in models.items()}, args.repeats, args.device)
        n = batched_mel(models[sizes[0]], segs).shape[0]
        print(f"{name:8} pass size sweep (batched + mel, both workloads, {n} windows): "
              + ", ".join(f"{b}: {n / t[b]:.0f} w/s" for b in sizes))


if __name__ == "__main__":
    main()
