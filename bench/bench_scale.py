"""Load and scale: `tokenize` wall time and peak memory as the number of input files grows, one run.

Goal: time per file stays constant (linear scaling, within ±15 %)
and peak memory stays flat (within ±15 %) as the corpus grows; 10,000 short files go through one
run in bounded time with flat memory.

Corpus: many short files of REAL music, cut deterministically from the bundled excerpts in
tests/data/audio (decoded with tokenmill's own front end, `tokenmill.tokenizers.audio.decode`).
File i comes from source i mod 8; its length is 1.0–3.0 s (a fixed sequence) and its start moves
by a prime number of samples per file, so every excerpt's decoded content (and so its content
hash, the dedupe key) differs and nothing dedupes away. Excerpts are written with soundfile at the
source rate and channel count (PCM_16 FLAC by default, `--format wav|mix` for WAV or both). A
quiet stretch may still be dead-lettered as `silent`: dead letters are counted and printed.

Jobs: one small `fit-codebook` on the bundled excerpts (k capped at frames/39), reused for every
size; then `tokenize` for each size, each in its OWN fresh child process (`beam_runner.py
tokenize ...`), so its peak RSS is per run:

  * peak RSS (max process): `ru_maxrss` from `os.wait4` on that child — the largest resident set
    of the child or any descendant it waited for (Beam worker processes with
    `--direct_num_workers`);
  * peak RSS (tree): the sum of RSS over the child and all its descendants, sampled from /proc
    every `--sample_s` seconds (the figure that matters when workers are separate processes).

Streams: `--streams semantic,acoustic` (default; semantic is always on, as the job needs its
codebook); add `acoustic` for the built-in SoundStream codec, `mulan` (or `--mulan`) for the
built-in MuLan model, `melody` for the built-in melody model (tokenize's defaults are all four). `--direct_num_workers N` (N > 0) passes
`--direct_running_mode=multi_processing --direct_num_workers=N` to Beam.

A warm-up `tokenize` of `--warmup` files (default 8) runs first and is not counted: the first
job after a fresh checkout or a cold disk cache can be several times slower. Its wall time
estimates the job's fixed start-up cost; the "marginal" per-file figures subtract it.

Sizes: `--sizes` (default 1x, 2x and 4x of `--base_files`, default 250). Ratios printed: time per
file at each size / at the smallest size (goal 0.85–1.15) and peak RSS / at the smallest size
(goal 0.85–1.15). `--files 10000` runs one size only and reports wall time, records, dead letters
and peak RSS; `--rss_trace` prints the tree RSS over the run (where memory grows).

    python bench/bench_scale.py                                  # 250, 500, 1000 files
    python bench/bench_scale.py --base_files 100                 # quick
    python bench/bench_scale.py --files 10000 --streams semantic --rss_trace
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STREAMS = ("semantic", "acoustic", "mulan", "melody")
STEP_SAMPLES = 7919  # prime: per-file start shift within a source, in source samples


def build_corpus(out_dir: Path, n: int, fmt: str) -> tuple[float, int]:
    """Write n excerpts into out_dir; returns (audio seconds, bytes written)."""
    import soundfile

    from tokenmill.tokenizers import audio

    sources = []
    for p in sorted((ROOT / "tests/data/audio").iterdir()):
        dec = audio.decode(p.read_bytes(), str(p))
        sources.append((p.stem, dec.pcm, dec.sample_rate_hz))
    total_s, total_b, seen = 0.0, 0, set()
    for i in range(n):
        name, pcm, sr = sources[i % len(sources)]
        k = i // len(sources)
        length_s = 1.0 + ((i * 37) % 201) / 100.0  # 1.00 .. 3.00 s, deterministic
        n_len = round(length_s * sr)
        span = pcm.shape[0] - n_len
        start = (k * STEP_SAMPLES + (i * 131) % sr) % span
        while (i % len(sources), start, n_len) in seen:  # never happens for n << span; belt and braces
            start = (start + 1) % span
        seen.add((i % len(sources), start, n_len))
        ext = fmt if fmt != "mix" else ("flac" if i % 2 == 0 else "wav")
        path = out_dir / f"{i:06d}-{name}.{ext}"
        soundfile.write(str(path), pcm[start:start + n_len], sr, subtype="PCM_16",
                        format="FLAC" if ext == "flac" else "WAV")
        total_s += n_len / sr
        total_b += path.stat().st_size
    return total_s, total_b


def _tree_rss_kb(root_pid: int) -> int:
    """Sum of VmRSS (kB) over root_pid and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as f:
                ppid = r = 0
                for line in f:
                    if line.startswith("PPid:"):
                        ppid = int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        r = int(line.split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = r
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def run_child(argv: list[str], sample_s: float, log_path: Path) -> dict:
    """Run argv in a fresh child; wall s, ru_maxrss of the child (MB), sampled tree RSS (MB)."""
    trace: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        done = threading.Event()

        def sample():
            while not done.is_set():
                trace.append((time.perf_counter() - t0, _tree_rss_kb(proc.pid) / 1024))
                done.wait(sample_s)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, ru = os.wait4(proc.pid, 0)  # this child's own rusage (and its waited-for descendants)
        wall = time.perf_counter() - t0
        done.set()
        th.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "rc": proc.returncode, "maxrss_mb": ru.ru_maxrss / 1024,
            "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
            "tree_peak_mb": max((r for _, r in trace), default=0.0), "trace": trace}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base_files", type=int, default=250, help="files at 1x (default %(default)s)")
    ap.add_argument("--sizes", default="1,2,4", help="multiples of --base_files (default %(default)s)")
    ap.add_argument("--files", type=int, help="one run over exactly this many files (e.g. 10000)")
    ap.add_argument("--streams", default="semantic,acoustic",
                    help=f"comma list of {STREAMS}; semantic is always on (default %(default)s)")
    ap.add_argument("--mulan", action="store_true", help="add the MuLan stream (built-in model)")
    ap.add_argument("--direct_num_workers", type=int, default=0,
                    help="N > 0: Beam multi_processing with N workers (default: in-process runner)")
    ap.add_argument("--warmup", type=int, default=8,
                    help="first an uncounted tokenize of this many files (0: none); its wall time estimates "
                         "the fixed start-up cost, subtracted for the marginal per-file figures (default %(default)s)")
    ap.add_argument("--num_shards", type=int, help="pass --num_shards N to tokenize (default: the job's)")
    ap.add_argument("--format", choices=("flac", "wav", "mix"), default="flac", help="excerpt container")
    ap.add_argument("--num_clusters", type=int, default=1024, help="semantic k, capped at frames/39")
    ap.add_argument("--sample_s", type=float, default=0.5, help="tree-RSS sampling period")
    ap.add_argument("--rss_trace", action="store_true", help="print the tree RSS over each run")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    args = ap.parse_args()

    streams = {s.strip() for s in args.streams.split(",") if s.strip()} | {"semantic"}
    if args.mulan:
        streams.add("mulan")
    if not streams <= set(STREAMS):
        raise SystemExit(f"--streams: unknown {sorted(streams - set(STREAMS))}; choose from {STREAMS}")
    sizes = [args.files] if args.files else [args.base_files * int(m) for m in args.sizes.split(",")]

    from tokenmill.tokenizers import audio

    work_cm = tempfile.TemporaryDirectory(prefix="bench_scale-") if not args.keep else None
    work = Path(args.keep or work_cm.name)
    work.mkdir(parents=True, exist_ok=True)
    py, runner = sys.executable, str(ROOT / "beam_runner.py")
    try:
        # one small codebook on the bundled excerpts, reused for every size
        bundled_s = sum(audio.decode(p.read_bytes(), str(p)).duration_s
                        for p in (ROOT / "tests/data/audio").iterdir())
        k = max(16, min(args.num_clusters, int(bundled_s * 25) // 39))
        cb = work / "cb"
        fit = run_child([py, runner, "fit-codebook", "--input", str(ROOT / "tests/data/audio/*"),
                         "--output", str(cb), "--num_clusters", str(k)], args.sample_s, work / "fit.log")
        if fit["rc"] != 0:
            raise SystemExit(f"fit-codebook failed (rc {fit['rc']}); see {work / 'fit.log'}")
        print(f"fit-codebook (k={k}, bundled audio {bundled_s:.0f} s): {fit['wall_s']:.1f} s", flush=True)

        job_opts = ["--acoustic_codec", "soundstream" if "acoustic" in streams else "none",
                    "--mulan_model", "mulan" if "mulan" in streams else "none",
                    "--melody_model", "builtin" if "melody" in streams else "none"]
        if args.num_shards:
            job_opts += ["--num_shards", str(args.num_shards)]
        if args.direct_num_workers > 0:
            job_opts += ["--direct_running_mode=multi_processing",
                         f"--direct_num_workers={args.direct_num_workers}"]
        fixed_s = 0.0
        if args.warmup > 0:  # also warms disk caches; its wall time ~ the job's fixed cost
            inp = work / "in-warmup"
            inp.mkdir(exist_ok=True)
            build_corpus(inp, args.warmup, args.format)
            w = run_child([py, runner, "tokenize", "--input", str(inp / "*"), "--codebook", str(cb),
                           "--output", str(work / "ds-warmup")] + job_opts, args.sample_s, work / "tokenize-warmup.log")
            if w["rc"] != 0:
                raise SystemExit(f"warm-up tokenize failed (rc {w['rc']}); see {work / 'tokenize-warmup.log'}")
            fixed_s = w["wall_s"]
            print(f"warm-up tokenize {args.warmup} files: {fixed_s:.1f} s wall (~ fixed start-up cost), "
                  f"peak RSS {w['maxrss_mb']:.0f} MB", flush=True)
        rows = []
        for n in sizes:
            inp = work / f"in-{n}"
            inp.mkdir(exist_ok=True)
            t = time.perf_counter()
            audio_s, nbytes = build_corpus(inp, n, args.format)
            print(f"corpus {n} files: {audio_s:.0f} s of audio, {nbytes / 1e6:.1f} MB, "
                  f"built in {time.perf_counter() - t:.1f} s", flush=True)
            out = work / f"ds-{n}"
            r = run_child([py, runner, "tokenize", "--input", str(inp / "*"), "--codebook", str(cb),
                           "--output", str(out)] + job_opts, args.sample_s, work / f"tokenize-{n}.log")
            if r["rc"] != 0:
                tail = (work / f"tokenize-{n}.log").read_text()[-3000:]
                raise SystemExit(f"tokenize {n} files failed (rc {r['rc']}):\n{tail}")
            counts = json.loads((out / "manifest.json").read_text())["counts"]
            r.update(files=n, audio_s=audio_s, counts=counts)
            rows.append(r)
            print(f"  tokenize {n} files: {r['wall_s']:.1f} s wall, CPU {r['user_s'] + r['sys_s']:.1f} s, "
                  f"peak RSS {r['maxrss_mb']:.0f} MB (process) / {r['tree_peak_mb']:.0f} MB (tree); "
                  f"records {counts['records']}, dead letters {counts['dead_letters']} "
                  f"{counts.get('dead_by_reason') or ''}",
                  flush=True)
            if args.rss_trace:
                tr = r["trace"]
                step = max(1, len(tr) // 20)
                print("  tree RSS over the run (s: MB): " +
                      ", ".join(f"{ts:.0f}: {mb:.0f}" for ts, mb in tr[::step] + tr[-1:]))
            if not args.keep:
                import shutil

                shutil.rmtree(inp)  # keep disk use to one corpus at a time

        workers = f"{args.direct_num_workers} worker processes" if args.direct_num_workers > 0 \
            else "in-process embedded runner"
        print(f"\nstreams: {', '.join(s for s in STREAMS if s in streams)}; {workers}; "
              f"{args.format} excerpts of 1-3 s cut from the bundled real music")
        print(f"{'files':>7s} {'audio s':>8s} {'records':>8s} {'dead':>5s} {'wall s':>8s} {'CPU s':>8s} "
              f"{'s/file':>8s} {'marg s/f':>8s} {'RSS MB':>8s} {'tree MB':>8s}")
        for r in rows:
            c = r["counts"]
            print(f"{r['files']:7d} {r['audio_s']:8.0f} {c.get('records', 0):8d} {c.get('dead_letters', 0):5d} "
                  f"{r['wall_s']:8.1f} {r['user_s'] + r['sys_s']:8.1f} {r['wall_s'] / r['files']:8.4f} "
                  f"{(r['wall_s'] - fixed_s) / r['files']:8.4f} {r['maxrss_mb']:8.0f} {r['tree_peak_mb']:8.0f}")
        if len(rows) > 1:
            base = rows[0]

            def verdict(x):
                return "met" if 0.85 <= x <= 1.15 else "NOT met"

            print(f"ratios vs {base['files']} files (goal 0.85-1.15 each):")
            for r in rows[1:]:
                m = r["files"] / base["files"]
                tpf = (r["wall_s"] / r["files"]) / (base["wall_s"] / base["files"])
                cpf = ((r["user_s"] + r["sys_s"]) / r["files"]) / ((base["user_s"] + base["sys_s"]) / base["files"])
                marg = ((r["wall_s"] - fixed_s) / r["files"]) / ((base["wall_s"] - fixed_s) / base["files"])
                rss = r["maxrss_mb"] / base["maxrss_mb"]
                tree = r["tree_peak_mb"] / base["tree_peak_mb"]
                print(f"  {m:g}x: wall per file {tpf:.2f} ({verdict(tpf)}), CPU per file {cpf:.2f}, "
                      f"marginal wall per file {marg:.2f} ({verdict(marg)}), peak RSS {rss:.2f} ({verdict(rss)}), "
                      f"tree RSS {tree:.2f} ({verdict(tree)})")
        else:
            r = rows[0]
            c = r["counts"]
            print(f"{r['files']} files in one run: {r['wall_s']:.0f} s wall ({r['wall_s'] / r['files'] * 1000:.1f} ms "
                  f"per file), {c.get('records', 0)} records, {c.get('dead_letters', 0)} dead letters, "
                  f"peak RSS {r['maxrss_mb']:.0f} MB (process) / {r['tree_peak_mb']:.0f} MB (tree)")
    finally:
        if work_cm is not None:
            work_cm.cleanup()


if __name__ == "__main__":
    main()
