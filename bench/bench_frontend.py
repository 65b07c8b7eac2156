"""Benchmark the audio front end per format: soundfile vs pedalboard vs "auto", one core.

    .venv/bin/python bench/bench_frontend.py [--dir tests/data/audio] [--repeats 15] [--cpu N]

For every file and decoder it times, in the same run:
  front end : decode → to_mono → soxr 24 kHz + 16 kHz
  prepare   : audio.prepare() (front end + integrity checks + validity checks + content hash
              + slicing); this is what the pipeline runs, and what AUTO_DECODER is chosen by.
Times are the best of --repeats runs after one warm-up, with all contenders interleaved
round-robin (best-of-N rejects interference from other processes; it only ever adds time).
The process is pinned to one CPU and BLAS/OpenMP pools to one thread, so "x real time" is per
core. The default clock is process CPU time, which stays honest on a shared, loaded machine
(--clock wall for elapsed time; on an idle machine the two agree).
Not a test: it prints numbers and asserts nothing.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenmill.tokenizers import audio  # noqa: E402

GOAL_X_REALTIME = 600.0
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"}
MODES = (audio.SOUNDFILE, audio.PEDALBOARD, "auto")


def best_times(fns: dict, repeats: int, clock) -> dict:
    """Best time of each fn on `clock`; the fns are interleaved round-robin so that load from other
    processes hits every contender alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            best[k] = min(best[k], clock() - t0)
    return best


def front_end(data: bytes, uri: str, decoder: str) -> None:
    dec = audio.decode(data, uri, decoder)
    mono = audio.to_mono(dec.pcm)
    for rate in (24_000, 16_000):
        audio.resample(mono, dec.sample_rate_hz, rate, "HQ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=str(Path(__file__).resolve().parents[1] / "tests/data/audio"))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last allowed one)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: process CPU time (robust when other jobs share the machine); wall: elapsed")
    args = ap.parse_args()

    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    files = sorted(p for p in Path(args.dir).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"pinned to CPU {cpu} (1 thread); {args.clock} clock; best of {args.repeats} interleaved runs "
          f"after a warm-up; {len(files)} files in {args.dir}; soxr HQ; targets 24 kHz + 16 kHz; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    # (format, stage, mode) -> [audio seconds, wall seconds]
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for path in files:
        data, uri = path.read_bytes(), str(path)
        try:
            ref = audio.decode(data, uri, "auto")
        except audio.AudioError as e:
            print(f"skip {path.name}: {e.reason}: {e}")
            continue
        fns = {}
        for mode in MODES:
            cfg = audio.AudioConfig(decoder=mode, min_source_rate_hz=8000)
            try:
                audio.decode(data, uri, mode)
            except audio.UnsupportedAudio:
                continue
            fns[(mode, "front")] = lambda mode=mode: front_end(data, uri, mode)
            fns[(mode, "prepare")] = lambda cfg=cfg: audio.prepare(data, uri, cfg)
        best = best_times(fns, args.repeats, clock)
        cells = []
        for mode in MODES:
            if (mode, "front") not in best:
                cells.append(f"{mode}: n/a")
                continue
            for stage in ("front", "prepare"):
                a = acc[(ref.format, stage, mode)]
                a[0] += ref.duration_s
                a[1] += best[(mode, stage)]
            cells.append(f"{mode} {ref.duration_s / best[(mode, 'front')]:6.0f}x"
                         f"/{ref.duration_s / best[(mode, 'prepare')]:5.0f}x")
        print(f"  {path.name:40s} {ref.format:10s} {ref.duration_s:5.1f}s  " + "  ".join(cells))

    def xrt(formats: list[str], stage: str, mode: str) -> float:
        keys = [k for k in acc if k[0] in formats and k[1] == stage and k[2] == mode]
        sec, wall = sum(acc[k][0] for k in keys), sum(acc[k][1] for k in keys)
        return sec / wall if wall else float("nan")

    all_formats = sorted({k[0] for k in acc})
    both = [f for f in all_formats if (f, "front", audio.PEDALBOARD) in acc]  # pedalboard-readable
    stages = (("front", "decode → mono → 24k + 16k"), ("prepare", "prepare() incl. checks + hash"))
    for stage, title in stages:
        print(f"\n{title}: x real time per core (higher is better)")
        print(f"  {'format':16s} {'soundfile':>10s} {'pedalboard':>11s} {'pb/sf':>6s} {'auto':>8s}  "
              f"auto uses    goal {GOAL_X_REALTIME:.0f}x for auto")
        rows = [(f, [f]) for f in all_formats] + [("ALL pb-readable", both), ("ALL", all_formats)]
        for label, fmts in rows:
            sf_x, pb_x, auto_x = (xrt(fmts, stage, m) for m in MODES)
            if label == "ALL":
                pb_x = float("nan")  # pedalboard cannot read every format: no like-for-like total
            route = audio.AUTO_DECODER.get(label, audio.SOUNDFILE) if len(fmts) == 1 else "table"
            met = "met" if auto_x >= GOAL_X_REALTIME else "NOT met"
            print(f"  {label:16s} {sf_x:10.0f} {pb_x:11.0f} {pb_x / sf_x:6.2f} "
                  f"{auto_x:8.0f}  {route:11s}  {met}")
    print("\nALL = total audio seconds / total time over those files. pb/sf > 1: pedalboard is faster.")

if __name__ == "__main__":
    main()
