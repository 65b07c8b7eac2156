"""Agreement and speed of the compute layouts, measured in one run on real music.

Runs `fit-codebook` (semantic, k = 64) and `tokenize` (all three streams: spectral semantic,
built-in SoundStream, built-in MuLan with its packaged RVQ) in fresh subprocesses under several
layouts, and compares every record with the reference layout (`--kernels portable
--torch_threads 1`, the default):

* codebook: whether the fitted semantic codebook id is the same;
* per stream: share of tokens that differ, and for `mulan_windows` the share of stored float16
  values that differ (all runs tokenize with the reference's codebook, so a semantic difference
  comes from the features, not the fit);
* speed: tokenize wall time relative to the reference (same machine, same run, one after the other).

Layouts: `native` kernels (on an AVX-512 machine: AVX-512 against the pinned AVX2), two torch
threads, both, and (with --processes) two worker processes of one thread each. A layout whose
outputs differ from the reference shows what an unpinned job would have mixed.

    python bench/bench_determinism.py [--input 'DIR/*' ...] [--processes]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenmill.schemas import shards as fmt  # noqa: E402
from tokenmill.tokenizers.compute import PORTABLE_ENV  # noqa: E402

LAYOUTS = {   # name -> extra CLI flags
    "portable, 1 thread (default)": ["--kernels", "portable", "--torch_threads", "1"],
    "native, 1 thread": ["--kernels", "native", "--torch_threads", "1"],
    "portable, 2 threads": ["--kernels", "portable", "--torch_threads", "2"],
    "native, 2 threads": ["--kernels", "native", "--torch_threads", "2"],
}
PROCESSES = ["--kernels", "portable", "--torch_threads", "1", "--direct_running_mode=multi_processing",
             "--direct_num_workers=2"]


def run(args: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}  # the job pins, not the shell
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "beam_runner.py"), *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def records(root: Path) -> dict:
    return {r.key: r for r in fmt.read_dataset(str(root), format="parquet")}


def differ(a: dict, b: dict, field: str) -> tuple[int, int]:
    n = d = 0
    for k, ra in a.items():
        x, y = getattr(ra, field), getattr(b[k], field)
        if x is None:
            continue
        x, y = np.asarray(x), np.asarray(y)
        if field == "mulan_windows":
            x, y = x.view(np.uint16), y.view(np.uint16)   # bit patterns of the stored float16
        n += x.size
        d += int((x != y).sum())
    return d, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", action="append", help="audio glob (repeatable; default: tests/data/audio/*)")
    ap.add_argument("--processes", action="store_true", help="also 2 worker processes x 1 thread")
    ap.add_argument("--num_clusters", type=int, default=64)
    a = ap.parse_args()
    inputs = a.input or [str(ROOT / "tests/data/audio/*")]
    n_files = sum(len(glob.glob(p)) for p in inputs)
    layouts = dict(LAYOUTS, **({"portable, 2 processes x 1 thread": PROCESSES} if a.processes else {}))
    ins = [x for p in inputs for x in ("--input", p)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref_cb = None
        out = {}
        for i, (name, flags) in enumerate(layouts.items()):
            cb_dir = tmp / f"cb{i}"
            run(["fit-codebook", *ins, "--output", str(cb_dir), "--num_clusters", str(a.num_clusters), *flags])
            cb = sorted(cb_dir.glob("semantic-*.safetensors"))[0]
            ref_cb = ref_cb or cb
            ds = tmp / f"ds{i}"
            secs = run(["tokenize", *ins, "--codebook", str(ref_cb), "--output", str(ds), "--num_shards", "1",
                        *flags])
            card = json.loads(cb.with_suffix(".json").read_text())
            out[name] = {"codebook": cb.stem, "seconds": secs, "records": records(ds),
                         "isa": card["compute"]["isa"]["torch_cpu_capability"]}
            print(f"{name:<36} {secs:6.1f} s  torch kernels {out[name]['isa']}  codebook {cb.stem}", flush=True)
        names = list(out)
        ref = out[names[0]]
        print(f"\n{n_files} files, {len(ref['records'])} records; reference: {names[0]}\n")
        print("| layout | kernels | tokenize time | codebook id | semantic | acoustic | mulan | mulan_windows (float16) |")
        print("|---|---|---|---|---|---|---|---|")
        for name in names:
            o = out[name]
            cells = []
            for field in ("semantic", "acoustic", "mulan", "mulan_windows"):
                d, n = differ(ref["records"], o["records"], field)
                cells.append("n/a" if n == 0 else f"{d} of {n} ({100 * d / n:.3f} %)")
            same = "same" if o["codebook"] == ref["codebook"] else "differs"
            print(f"| {name} | {o['isa']} | {o['seconds'] / ref['seconds']:.2f}x | {same} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
