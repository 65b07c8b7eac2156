"""`rebuild --stream semantic` as Beam passes vs the one-process rebuild it replaced, and vs a full
`tokenize`: wall time and peak memory at 1x, 2x and 4x the dataset, one run.

    python bench/bench_rebuild.py                        # 100, 200, 400 files of 10-15 s
    python bench/bench_rebuild.py --base_files 20        # quick
    python bench/bench_rebuild.py --baseline_rev none    # the Beam rebuild only

Corpus: files of 10-15 s cut from the bundled real music (tests/data/audio), each from its own
start so that every file's content (its dedupe key) differs. A semantic codebook (k = --k) is
fitted directly on the bundled clips' spectral features (not timed).

For each size, each command runs in its OWN fresh child process (as bench/bench_scale.py does),
so peak memory is per run: `ru_maxrss` of the child (MB) and the sampled RSS of its process tree.
  1. `tokenize` of the corpus (semantic stream; --acoustic_codec, no MuLan);
  2. `rebuild --stream semantic` of that dataset: pass 1 (sample + probe), refit, pass 2;
  3. the one-process rebuild of `--baseline_rev` (the module tokenmill/pipelines/rebuild.py at
     that commit, read with `git show`: it held every record's features in memory), same options.
The Beam rebuild's column shards and codebook are compared with the baseline's (they must be
byte-identical). Printed: a table, then peak RSS of each at 2x and 4x / at 1x (flat = 0.85-1.15),
and Beam / baseline for wall time and peak RSS at each size.

--sample_frames / --probe_frames default to 4000 / 1000 so that the combiners' bound (~3 k rows of
each, whatever the dataset) is reached at 1x already: with the command's defaults (200000 /
20000) a dataset under ~600 k frames is held in the combiner whole, and memory grows until then.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BASELINE_REV = "f4e7669"   # the last commit whose rebuild ran in one process
STEP_SAMPLES = 7919        # prime: per-file start shift within a source, in source samples

OLD_RUN = """
import importlib.util, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from tokenmill.pipelines.options import RebuildConfig
spec = importlib.util.spec_from_file_location("old_rebuild", {module!r})
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)
res = old.run_rebuild(RebuildConfig(dataset={ds!r}, stream="semantic", output={out!r}, codebook={cb!r},
                                    n_iter=25, sample_frames={sample}, probe_frames={probe}))
print(res["text"])
"""


def build_corpus(out_dir: Path, n: int) -> float:
    """n files of 10-15 s of real music (distinct content); returns the audio seconds."""
    import soundfile

    from tokenmill.tokenizers import audio

    sources = []
    for p in sorted((ROOT / "tests/data/audio").iterdir()):
        dec = audio.decode(p.read_bytes(), str(p))
        sources.append((p.stem, dec.pcm, dec.sample_rate_hz))
    total = 0.0
    for i in range(n):
        name, pcm, sr = sources[i % len(sources)]
        n_len = round((10.0 + (i * 37) % 501 / 100.0) * sr)
        span = pcm.shape[0] - n_len
        start = ((i // len(sources)) * STEP_SAMPLES + (i * 131) % sr) % span
        soundfile.write(str(out_dir / f"{i:06d}-{name}.flac"), pcm[start:start + n_len], sr, subtype="PCM_16",
                        format="FLAC")
        total += n_len / sr
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base_files", type=int, default=100, help="files at 1x (default %(default)s)")
    ap.add_argument("--sizes", default="1,2,4", help="multiples of --base_files (default %(default)s)")
    ap.add_argument("--k", type=int, default=64, help="semantic codebook size (default %(default)s)")
    ap.add_argument("--sample_frames", type=int, default=4000, help="rebuild --sample_frames (default %(default)s)")
    ap.add_argument("--probe_frames", type=int, default=1000, help="rebuild --probe_frames (default %(default)s)")
    ap.add_argument("--acoustic_codec", default="none", help="tokenize's codec (default %(default)s)")
    ap.add_argument("--baseline_rev", default=BASELINE_REV,
                    help="git revision of the one-process rebuild to compare with, or 'none' (default %(default)s)")
    ap.add_argument("--sample_s", type=float, default=0.25, help="tree-RSS sampling period")
    args = ap.parse_args()

    import numpy as np
    import torch

    from bench_scale import run_child
    from tokenmill.tokenizers import audio
    from tokenmill.tokenizers.kmeans import fit_kmeans
    from tokenmill.tokenizers.semantic import build_extractor

    torch.set_num_threads(1)
    work_cm = tempfile.TemporaryDirectory(prefix="bench-rebuild-")
    tmp = Path(work_cm.name)
    py, runner = sys.executable, str(ROOT / "beam_runner.py")
    old_module = None
    if args.baseline_rev != "none":
        old_module = tmp / "old_rebuild.py"
        old_module.write_bytes(subprocess.run(["git", "show", f"{args.baseline_rev}:tokenmill/pipelines/rebuild.py"],
                                              cwd=ROOT, check=True, capture_output=True).stdout)
    ex, feats = build_extractor("spectral"), []
    for p in sorted((ROOT / "tests/data/audio").iterdir()):
        for s in audio.prepare(p.read_bytes(), str(p), audio.AudioConfig(target_rates_hz=(16_000,))):
            feats.append(ex.extract(s.waves[16_000]))
    cb_path = fit_kmeans(np.concatenate(feats), args.k, seed=0, kind="semantic").save(tmp / "cb")
    opts = ["--sample_frames", str(args.sample_frames), "--probe_frames", str(args.probe_frames)]
    rows = []
    try:
        for n in [args.base_files * int(m) for m in args.sizes.split(",")]:
            inp, ds = tmp / f"in-{n}", tmp / f"ds-{n}"
            inp.mkdir()
            audio_s = build_corpus(inp, n)
            tok = run_child([py, runner, "tokenize", "--input", str(inp / "*"), "--codebook", str(cb_path),
                             "--output", str(ds), "--acoustic_codec", args.acoustic_codec, "--mulan_model", "none"],
                            args.sample_s, tmp / f"tok-{n}.log")
            if tok["rc"] != 0:
                raise SystemExit(f"tokenize failed: {(tmp / f'tok-{n}.log').read_text()[-3000:]}")
            new = run_child([py, runner, "rebuild", "--dataset", str(ds), "--stream", "semantic", "--codebook",
                             str(cb_path), "--output", str(tmp / f"new-{n}"), *opts], args.sample_s, tmp / f"new-{n}.log")
            if new["rc"] != 0:
                raise SystemExit(f"rebuild failed: {(tmp / f'new-{n}.log').read_text()[-3000:]}")
            row = {"files": n, "audio_s": audio_s, "tok": tok, "new": new, "old": None, "same": None}
            m = json.loads((tmp / f"new-{n}" / "manifest.json").read_text())
            row["frames"] = json.loads((tmp / f"new-{n}" / "drift.json").read_text())["dataset"]["n_tokens"]
            if old_module is not None:
                code = OLD_RUN.format(root=str(ROOT), module=str(old_module), ds=str(ds), out=str(tmp / f"old-{n}"),
                                      cb=str(cb_path), sample=args.sample_frames, probe=args.probe_frames)
                old = run_child([py, "-c", code], args.sample_s, tmp / f"old-{n}.log")
                if old["rc"] != 0:
                    raise SystemExit(f"baseline rebuild failed: {(tmp / f'old-{n}.log').read_text()[-3000:]}")
                row["old"] = old
                files = [c["path"] for o in m["overrides"] for c in o["shards"]]
                files += [f"codebooks/{p.name}" for p in (tmp / f"new-{n}" / "codebooks").iterdir()]
                row["same"] = all((tmp / f"new-{n}" / f).read_bytes() == (tmp / f"old-{n}" / f).read_bytes()
                                  for f in files)
            rows.append(row)
            print(f"{n} files ({audio_s:.0f} s, {row['frames']} frames): tokenize {tok['wall_s']:.1f} s, "
                  f"rebuild Beam {new['wall_s']:.1f} s / {new['maxrss_mb']:.0f} MB"
                  + ("" if row["old"] is None else f", one-process {row['old']['wall_s']:.1f} s / "
                     f"{row['old']['maxrss_mb']:.0f} MB, identical output: {row['same']}"), flush=True)
            import shutil

            shutil.rmtree(inp)
    finally:
        work_cm.cleanup()

    print(f"\nrebuild --stream semantic, spectral extractor (D=92), k={args.k}, --sample_frames "
          f"{args.sample_frames} --probe_frames {args.probe_frames}; embedded runner, one torch thread; "
          "peak RSS = ru_maxrss of the command's process (tree = sampled sum over its process tree)")
    print(f"{'files':>6s} {'audio s':>8s} {'frames':>8s} {'tokenize s':>10s} {'Beam s':>7s} {'Beam MB':>8s} "
          f"{'tree MB':>8s} {'1-proc s':>8s} {'1-proc MB':>9s} {'tree MB':>8s}")
    for r in rows:
        o = r["old"] or {"wall_s": float("nan"), "maxrss_mb": float("nan"), "tree_peak_mb": float("nan")}
        print(f"{r['files']:6d} {r['audio_s']:8.0f} {r['frames']:8d} {r['tok']['wall_s']:10.1f} {r['new']['wall_s']:7.1f} "
              f"{r['new']['maxrss_mb']:8.0f} {r['new']['tree_peak_mb']:8.0f} {o['wall_s']:8.1f} {o['maxrss_mb']:9.0f} "
              f"{o['tree_peak_mb']:8.0f}")
    base = rows[0]
    print(f"ratios vs {base['files']} files (flat: 0.85-1.15):")
    for r in rows[1:]:
        line = (f"  {r['files'] / base['files']:g}x data: Beam rebuild peak RSS {r['new']['maxrss_mb'] / base['new']['maxrss_mb']:.2f}, "
                f"wall {r['new']['wall_s'] / base['new']['wall_s']:.2f}")
        if r["old"] is not None:
            line += (f"; one-process peak RSS {r['old']['maxrss_mb'] / base['old']['maxrss_mb']:.2f}, "
                     f"wall {r['old']['wall_s'] / base['old']['wall_s']:.2f}")
        print(line)
    for r in rows:
        if r["old"] is not None:
            print(f"  {r['files']} files: Beam / one-process: wall {r['new']['wall_s'] / r['old']['wall_s']:.2f}, "
                  f"peak RSS {r['new']['maxrss_mb'] / r['old']['maxrss_mb']:.2f}; tokenize / Beam rebuild wall "
                  f"{r['tok']['wall_s'] / r['new']['wall_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
