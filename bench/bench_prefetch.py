"""Trainer batch prefetch (`--prefetch N`, training/prefetch.py): step time with and without it, one run.

Goal: the data work of a step (shard fetch over HTTP, checksum, decode, crop, layout) hides behind
the model step, so the trainer waits ~0 in `next(batches)` and wall time per step drops from
data + compute towards max(data, compute), with the SAME losses.

Data: a tokenized dataset, by default built into a temp dir exactly as `make demo` does
(`beam_runner.py fit-codebook --num_clusters 64` then `tokenize --num_shards 2 --valid_fraction 0.2`
with the captions and the built-in tokenizers: spectral semantic + k-means, SoundStream, MuLan) on
tests/data/audio/* (~15 s on a 2-core CPU), or `--dataset DIR` (e.g. demo-out/dataset after `make demo`).
It is served from a thread of this process (http.server.ThreadingHTTPServer) that sleeps
`--latency_ms` before answering each GET (object-storage latency; 0 allowed), and the trainer reads
it through the URL, as users do.

What a step costs in data. The reader fetches a shard when the epoch reaches it, keeps it while any
of its records is in the shuffle buffer, and fetches it again the next epoch: there is no cache
across epochs. The bundled audio gives 5 train records in 2 shards, so a batch of 8 spans ~1.6
epochs and needs ~3 shard fetches (the table prints the measured GETs per step), plus sha256,
Parquet decode, crop and layout. On a real corpus a shard holds hundreds of records and fetches
are rarer per batch, but each is larger; the defaults make data a sizeable share of a step on
purpose: `--stage coarse --crop_s 2 --batch_size 8` (the demo's coarse setting: 463 ids per
sequence), tiny preset, CPU.

Runs: the same stage, config and seed, `--steps` steps each, first with --prefetch 0, then with
--prefetch `--depth` (default 2), in this process (in-process Trainer API, torch.set_num_threads(
`--torch_threads`) for both). Each step is `b = next(trainer.batches); trainer.step(b)`, the same
calls `Trainer.step()` makes, so the time in next() is measured without touching library code:

  * wall/step: time from the start to the end of a step (next + step), mean over the timed steps;
  * data wait: time the training thread spends inside next(trainer.batches);
  * compute: time inside trainer.step(b) (forward, backward, clip, AdamW);
  * batch forming: time the producer spends forming one batch (a proxy around the wrapped
    StageBatches' __next__; with prefetch that runs in the background thread, so it shows whether
    the thread slows down while competing with torch for the cores);
  * tokens/s: batch_size x (sequence_length - 1) / wall per step, as the trainer logs it.

The first `--skip` steps (default 5: thread start, first fetches, torch warm-up) are not timed.
Printed ratios: prefetch vs none for wall/step and data wait, and the bound max(compute, forming) /
(compute + forming) of the no-prefetch run (the best prefetch can do). Then "losses identical:
yes/no" (per-step losses compared exactly; the test suite asserts they are equal).

    python bench/bench_prefetch.py                          # builds the dataset (~15 s) first
    python bench/bench_prefetch.py --dataset demo-out/dataset --latency_ms 0
    OMP_NUM_THREADS=1 python bench/bench_prefetch.py --torch_threads 1
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_dataset(work: Path) -> Path:
    """The Makefile's `demo` dataset (codebooks + tokenize), in child processes."""
    audio, cb, out = str(ROOT / "tests/data/audio/*"), work / "codebooks", work / "dataset"
    run = [sys.executable, str(ROOT / "beam_runner.py")]
    for args in (["fit-codebook", "--input", audio, "--output", str(cb), "--num_clusters", "64"],
                 ["tokenize", "--input", audio, "--codebook", str(cb), "--captions",
                  str(ROOT / "tests/data/captions.jsonl"), "--output", str(out), "--num_shards", "2",
                  "--valid_fraction", "0.2"]):
        subprocess.run(run + args, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


class SlowServer:
    """Serves `root` on 127.0.0.1 from a daemon thread; each GET sleeps `latency_s` first."""

    def __init__(self, root: Path, latency_s: float) -> None:
        self.gets, lock = 0, threading.Lock()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    server.gets += 1
                time.sleep(latency_s)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


class TimedSource:
    """Proxy around a StageBatches: times each __next__ (in whichever thread calls it)."""

    def __init__(self, inner) -> None:
        self.inner, self.times = inner, []

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        b = next(self.inner)
        self.times.append(time.perf_counter() - t0)
        return b

    def __getattr__(self, name):
        return getattr(self.inner, name)


def train(a, url: str, server: SlowServer, prefetch: int, out: str) -> dict:
    from tokenmill.training.prefetch import PrefetchedBatches
    from tokenmill.training.train import TrainConfig, Trainer

    crop = {f"{a.stage}_s": a.crop_s} if a.crop_s else {}
    cfg = TrainConfig(stage=a.stage, data=url, out=out, preset="tiny", steps=a.steps, batch_size=a.batch_size,
                      lr=1e-3, warmup_steps=10, shuffle_buffer=a.shuffle_buffer, device="cpu", prefetch=prefetch,
                      **crop)
    tr = Trainer(cfg)
    timed = TimedSource(tr.batches.source if isinstance(tr.batches, PrefetchedBatches) else tr.batches)
    if isinstance(tr.batches, PrefetchedBatches):
        tr.batches.source = timed  # before the first next(): the thread reads .source when it starts
    else:
        tr.batches = timed
    it = tr.batches
    losses, wait, comp, walls, gets0 = [], [], [], [], None
    try:
        for i in range(a.steps):
            if i == a.skip:
                gets0 = server.gets
            t0 = time.perf_counter()
            batch = next(it)
            t1 = time.perf_counter()
            losses.append(tr.step(batch))
            t2 = time.perf_counter()
            if i >= a.skip:
                wait.append(t1 - t0)
                comp.append(t2 - t1)
                walls.append(t2 - t0)
        gets = server.gets - gets0
    finally:
        tr.close()
    n = len(walls)
    wall = sum(walls) / n
    formed = timed.times[a.skip:a.steps]  # the batches the timed steps trained on
    return {"prefetch": prefetch, "wall": wall, "wait": sum(wait) / n, "compute": sum(comp) / n,
            "form": sum(formed) / len(formed), "tok_s": a.batch_size * (tr.layout.sequence_length - 1) / wall,
            "gets": gets / n, "losses": losses, "seq": tr.layout.sequence_length}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, help="tokenized dataset directory (default: build the demo dataset "
                                                  "from tests/data/audio into a temp dir, ~15 s)")
    ap.add_argument("--latency_ms", type=float, default=50.0,
                    help="sleep of the local HTTP server before each GET, ms (default 50; 0 allowed)")
    ap.add_argument("--stage", default="coarse", choices=("semantic", "coarse", "fine"),
                    help="stage to train (default coarse)")
    ap.add_argument("--crop_s", type=float, default=2.0,
                    help="the stage's crop seconds (--semantic_s/--coarse_s/--fine_s; default 2, the demo's "
                         "coarse crop; 0: the trainer's default)")
    ap.add_argument("--batch_size", type=int, default=8, help="sequences per step (default 8)")
    ap.add_argument("--steps", type=int, default=100, help="steps per run (default 100)")
    ap.add_argument("--skip", type=int, default=5, help="first steps of each run not timed (default 5)")
    ap.add_argument("--depth", type=int, default=2, help="--prefetch of the second run (default 2)")
    ap.add_argument("--shuffle_buffer", type=int, default=16, help="reader shuffle buffer, records (default 16)")
    ap.add_argument("--torch_threads", type=int, default=2,
                    help="torch.set_num_threads for both runs (default 2: all cores of a 2-core box)")
    a = ap.parse_args(argv)
    if not (0 <= a.skip < a.steps and a.depth >= 1):
        ap.error("need 0 <= --skip < --steps and --depth >= 1")

    import torch

    torch.set_num_threads(a.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = a.dataset or build_dataset(Path(tmp))
        if a.dataset is None:
            print(f"built the demo dataset from tests/data/audio in {time.perf_counter() - t0:.0f} s")
        server = SlowServer(root, a.latency_ms / 1e3)
        print(f"serving {root} at {server.url} with {a.latency_ms:g} ms per GET; {a.stage} stage, tiny preset, "
              f"batch {a.batch_size}, crop {a.crop_s or 'default'} s, {a.steps} steps ({a.skip} untimed), "
              f"CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores")
        runs = [train(a, server.url, server, p, str(Path(tmp) / f"run{p}")) for p in (0, a.depth)]
        server.httpd.shutdown()
    print(f"sequence {runs[0]['seq']} ids; per timed step (mean, ms):")
    print(f"{'prefetch':>8} {'wall/step':>10} {'data wait':>10} {'compute':>9} {'batch forming':>14} "
          f"{'GETs/step':>10} {'tokens/s':>9}")
    for r in runs:
        print(f"{r['prefetch']:>8} {r['wall'] * 1e3:>10.1f} {r['wait'] * 1e3:>10.1f} {r['compute'] * 1e3:>9.1f} "
              f"{r['form'] * 1e3:>14.1f} {r['gets']:>10.2f} {r['tok_s']:>9.0f}")
    p0, p2 = runs
    bound = max(p0["compute"], p0["form"]) / (p0["compute"] + p0["form"])
    print(f"prefetch {a.depth} vs 0: wall/step {p2['wall'] / p0['wall']:.2f}x (best possible "
          f"max(compute, forming)/(compute + forming) = {bound:.2f}x), data wait {p2['wait'] / p0['wait']:.2g}x, "
          f"compute {p2['compute'] / p0['compute']:.2f}x, batch forming {p2['form'] / p0['form']:.2f}x, "
          f"tokens/s {p2['tok_s'] / p0['tok_s']:.2f}x")
    same = p0["losses"] == p2["losses"]
    print(f"losses identical: {'yes' if same else 'no'} ({len(p0['losses'])} steps, last {p0['losses'][-1]:.4f} / "
          f"{p2['losses'][-1]:.4f})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
