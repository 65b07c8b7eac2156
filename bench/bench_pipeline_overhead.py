"""Pipeline overhead: `tokenize` wall time / the bare batched acoustic `encode` calls, same audio,
same process, one run (goal <= 1.10x).

The denominator is only the codec's `encode_batch` on pre-decoded 24 kHz segments, in batches of
`--batch_size`, after one warm-up call. The numerator is the whole `tokenize` job on the embedded
runner (in-process FnApiRunner): start-up, matching and reading files, decoding, resampling, the
semantic stream (spectral features + FAISS assign), acoustic encode, Beam's bundling and shuffles,
dedupe, and writing both shard formats, dead letters and the manifest. Both use one torch thread.

The same run also times the work the job must do besides `encode`, each piece alone on the same
audio (decode + resample, semantic features + assign, Parquet and .tar.xz encoding of the same
records), so the report separates necessary work from Beam's own overhead:

    overhead = job - encode - decode - semantic - shard encoding

Input: `--input GLOB` (repeatable, `**` allowed; default the bundled tests/data/audio). With
`--max_audio_s` / `--max_files`, files are taken in a deterministic order (sorted paths, ordered by
the sha256 of each path, so the pick mixes sources) until the cap is reached; undecodable files
are skipped. The picked files are symlinked into a temp directory, so paths with glob characters
work. A realistic run (25 min of real music from the `large` corpus, built by
`python -m scripts.corpus.build --target large --out CORPUS`):

    python bench/bench_pipeline_overhead.py \\
        --input 'CORPUS/audio/**/*' --input 'CORPUS/renders/**/*' \\
        --max_audio_s 1500

`--profile FILE.pstats` runs the job under cProfile (adds overhead; times become indicative only)
and prints the top functions by cumulative time.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Clock:
    """Wall and process CPU seconds (all threads) spent inside `with clock:` blocks, summed."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


def tokenize_has_option(beam_runner, option: str) -> bool:
    sub = beam_runner._parser()._subparsers._group_actions[0].choices["tokenize"]
    return any(option in a.option_strings for a in sub._actions)


def pick_files(patterns: list[str], max_files: int | None, max_audio_s: float | None, cfg):
    """Deterministic pick: sorted unique paths, ordered by sha256(path) when capped; decode each,
    keep the decodable ones until a cap is reached. Returns ([(path, segments)], decode Clock)."""
    from tokenmill.tokenizers import audio

    paths = sorted({p for pat in patterns for p in glob.glob(pat, recursive=True) if os.path.isfile(p)})
    if max_files is not None or max_audio_s is not None:
        paths.sort(key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    picked, total_s, t_decode = [], 0.0, Clock()
    for p in paths:
        if (max_files is not None and len(picked) >= max_files) or (
                max_audio_s is not None and total_s >= max_audio_s):
            break
        data = Path(p).read_bytes()
        try:
            with t_decode:
                segs = audio.prepare(data, p, cfg)
        except audio.AudioError:
            continue
        picked.append((p, segs))
        total_s += sum(s.duration_s for s in segs)
    return picked, t_decode


def shard_records(segs, semantic_codes, acoustic_codes, num_shards: int) -> list[list]:
    """The job's records grouped by shard as the job groups them (all in the train split: the
    split changes nothing in the cost)."""
    from tokenmill.schemas.records import TrackRecord, shard_of

    by_shard: dict[int, list] = {}
    for s, sem, ac in zip(segs, semantic_codes, acoustic_codes):
        rec = TrackRecord(key=s.key, uri=s.uri, segment=s.segment, start_s=s.start_s,
                          duration_s=s.duration_s, source_sample_rate=s.source_sample_rate,
                          source_channels=s.source_channels, split="train", semantic=sem, acoustic=ac)
        by_shard.setdefault(shard_of(rec.key, num_shards), []).append(rec)
    return list(by_shard.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", action="append", help="glob, repeatable (default: tests/data/audio/*)")
    ap.add_argument("--max_files", type=int, help="take at most N files (deterministic order)")
    ap.add_argument("--max_audio_s", type=float, help="take files until this much audio (seconds)")
    ap.add_argument("--acoustic_codec", default="soundstream")
    ap.add_argument("--acoustic_model", default=None)
    ap.add_argument("--batch_size", type=int, default=4, help="acoustic batch size (both sides)")
    ap.add_argument("--num_clusters", type=int, default=1024,
                    help="semantic k, capped at frames/39 so the fit stays well posed (default %(default)s)")
    ap.add_argument("--codebook", help="reuse this semantic codebook instead of fitting one")
    ap.add_argument("--profile", metavar="FILE", help="run the job under cProfile, save the stats here")
    args = ap.parse_args()
    patterns = args.input or [str(ROOT / "tests/data/audio/*")]

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    import beam_runner
    from tokenmill.pipelines.handlers import load_codebook
    from tokenmill.schemas import shards as fmt
    from tokenmill.tokenizers import audio
    from tokenmill.tokenizers.codec import build_codec
    from tokenmill.tokenizers.semantic import build_extractor

    kw = {"path": args.acoustic_model} if args.acoustic_model else {}
    codec = build_codec(args.acoustic_codec, **kw)
    cfg = audio.AudioConfig(target_rates_hz=(16_000, codec.sample_rate_hz))
    picked, t_decode = pick_files(patterns, args.max_files, args.max_audio_s, cfg)
    if not picked:
        raise SystemExit(f"no decodable audio in {patterns}")
    segs = [s for _, ss in picked for s in ss]
    waves = [s.waves[codec.sample_rate_hz] for s in segs]
    audio_s = sum(s.duration_s for s in segs)
    codec.encode_batch(waves[:1])  # warm-up (allocations, lazy init), as the pipeline's load does

    acoustic_codes = []
    with Clock() as t_encode:
        for i in range(0, len(waves), args.batch_size):
            acoustic_codes += codec.encode_batch(waves[i:i + args.batch_size])

    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in"
        inp.mkdir()
        for i, (p, _) in enumerate(picked):  # one flat glob; names free of glob characters
            (inp / f"{i:04d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', Path(p).name)}").symlink_to(os.path.abspath(p))
        in_glob = str(inp / "*")
        cb = args.codebook
        if cb is None:
            cb = str(Path(tmp) / "cb")
            k = max(16, min(args.num_clusters, int(audio_s * 25) // 39))
            beam_runner.main(["fit-codebook", "--input", in_glob, "--output", cb, "--num_clusters", str(k)])

        # the job's other necessary work, each piece alone on the same audio and batches
        extractor, codebook = build_extractor("spectral"), load_codebook(cb)
        sem_waves, semantic_codes = [s.waves[16_000] for s in segs], []
        with Clock() as t_semantic:
            for i in range(0, len(sem_waves), 8):
                semantic_codes += [codebook.assign(f) for f in extractor.extract_batch(sem_waves[i:i + 8])]
        shards = shard_records(segs, semantic_codes, acoustic_codes, 4)
        with Clock() as t_parquet:
            for recs in shards:
                fmt.encode_parquet(recs)
        with Clock() as t_wds:
            for recs in shards:
                fmt.encode_wds(recs)
        del sem_waves, waves, segs, shards

        argv = ["tokenize", "--input", in_glob, "--codebook", cb, "--output", f"{tmp}/ds",
                "--acoustic_codec", args.acoustic_codec, "--acoustic_batch_size", str(args.batch_size)]
        if args.acoustic_model:
            argv += ["--acoustic_model", args.acoustic_model]
        if tokenize_has_option(beam_runner, "--mulan_model"):
            argv += ["--mulan_model", "none"]  # this bench measures the acoustic + semantic job
        if tokenize_has_option(beam_runner, "--melody_model"):
            argv += ["--melody_model", "none"]
        prof = None
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        with Clock() as t_job:
            beam_runner.main(argv)
        if prof is not None:
            import pstats

            prof.disable()
            prof.dump_stats(args.profile)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(40)

    n_segs = sum(len(ss) for _, ss in picked)
    print(f"\n{len(picked)} files, {n_segs} segments, {audio_s / 60:.1f} min of audio, codec "
          f"{codec.name} ({float(codec.frame_rate_hz):g} Hz x {codec.n_q}), 1 torch thread")
    print(f"{'':38s} {'wall s':>8s} {'CPU s':>8s}")
    print(f"{'bare encode_batch':38s} {t_encode.wall:8.1f} {t_encode.cpu:8.1f}  "
          f"({audio_s / t_encode.wall:.0f}x real time)")
    print(f"{'tokenize (whole job)':38s} {t_job.wall:8.1f} {t_job.cpu:8.1f}  ({audio_s / t_job.wall:.0f}x real time)")
    ratio, cpu_ratio = t_job.wall / t_encode.wall, t_job.cpu / t_encode.cpu
    print(f"{'overhead ratio':38s} {ratio:7.2f}x {cpu_ratio:7.2f}x  "
          f"(goal <= 1.10x: {'met' if ratio <= 1.10 else 'NOT met'})")
    print("the job's other work, each piece timed alone on the same audio (x: of encode):")
    parts = (("decode + resample + hash", t_decode), ("semantic (features + assign)", t_semantic),
             ("Parquet encoding", t_parquet), (".tar.xz encoding", t_wds))
    for name, c in parts:
        print(f"  {name:36s} {c.wall:8.1f} {c.cpu:8.1f}  ({c.wall / t_encode.wall:5.3f}x / {c.cpu / t_encode.cpu:5.3f}x)")
    rest_w = t_job.wall - t_encode.wall - sum(c.wall for _, c in parts)
    rest_c = t_job.cpu - t_encode.cpu - sum(c.cpu for _, c in parts)
    print(f"  {'left: Beam, start-up, I/O':36s} {rest_w:8.1f} {rest_c:8.1f}  "
          f"({rest_w / t_encode.wall:5.3f}x / {rest_c / t_encode.cpu:5.3f}x)")
    floor_w = 1 + sum(c.wall for _, c in parts) / t_encode.wall
    floor_c = 1 + sum(c.cpu for _, c in parts) / t_encode.cpu
    print(f"{'necessary work alone would give':38s} {floor_w:7.2f}x {floor_c:7.2f}x")
    print("CPU time (all threads of this process) is the steadier figure on a shared machine: "
          "wall time there also counts waiting for a core.")


if __name__ == "__main__":
    main()
