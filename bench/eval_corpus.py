#!/usr/bin/env python
"""FAD / KLD / MCC of a real corpus against itself, split in two, through the built-in codec, and
through Opus: what the acoustic tokens lose, on the scale of the evaluation's own floor.

    python bench/eval_corpus.py --corpus /path/to/corpus --work /tmp/eval-corpus

The corpus is a folder of audio files (any depth) with a captions.jsonl: one JSON object per line
with `file` (path relative to the corpus), `caption`, `kind` and `duration_s`. Rows (each an `evaluate` job with the built-in MuLan as embedder,
zero-shot classifier and MCC model; the zero-shot vocabulary is the 50 most frequent aspects of
--musiccaps when given, else the corpus kinds):
  originals vs originals            FAD 0 and KLD 0 by construction; MCC of the real audio
  half A vs half B (floor)          the files at even vs odd positions in sorted order (no pairs: no KLD)
  codec 12 levels vs originals      the built-in SoundStream's decodes of `tokenize`d originals
  codec 4 levels vs originals       the coarse levels only (--levels 4)
  Opus 6 kbps vs originals          mono, libsndfile's Ogg/Opus encoder at its lowest bitrate (compression_level
                                    1.0; the file rate, Ogg framing included, is printed)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUDIO = (".flac", ".mp3", ".ogg", ".opus", ".wav")


def run(args: list[str]) -> None:
    t = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "beam_runner.py"), *args], check=True, stdout=subprocess.DEVNULL)
    print(f"  ({args[0]} {time.monotonic() - t:.0f} s)", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--musiccaps", help="MusicCaps-format CSV whose most frequent aspects are the vocabulary")
    p.add_argument("--fad_bootstrap", type=int, default=200)
    a = p.parse_args()
    import numpy as np
    import soundfile

    from tokenmill.eval.musiccaps import aspect_vocabulary
    from tokenmill.pipelines.eval_sources import read_caption_rows

    corpus, work = Path(a.corpus), Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files = sorted(f for f in corpus.rglob("*") if f.suffix in AUDIO)
    caps = {}
    for line in (corpus / "captions.jsonl").read_text().splitlines():
        o = json.loads(line)
        caps[Path(o["file"]).stem] = o
    with open(work / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ytid", "start_s", "end_s", "caption", "aspect_list"])
        for fp in files:
            o = caps.get(fp.stem, {})
            w.writerow([fp.stem, 0, o.get("duration_s", 10), o.get("caption", ""), repr([o.get("kind", "music")])])
    rows = read_caption_rows(a.musiccaps) if a.musiccaps else read_caption_rows(str(work / "captions.csv"))
    (work / "labels.txt").write_text("\n".join(aspect_vocabulary(rows, 50)) + "\n")
    for sub in ("orig", "half_a", "half_b", "opus"):
        (work / sub).mkdir()
    opus_kbps = []
    for i, fp in enumerate(files):
        shutil.copy(fp, work / "orig" / fp.name)
        shutil.copy(fp, work / ("half_a" if i % 2 == 0 else "half_b") / fp.name)
        wave, sr = soundfile.read(fp, dtype="float32", always_2d=True)
        out = work / "opus" / f"{fp.stem}.opus"
        import soxr  # Opus takes 8/12/16/24/48 kHz

        w48 = soxr.resample(wave.mean(axis=1), sr, 48_000)  # mono: what evaluate scores, and 6 kbps is mono
        soundfile.write(out, w48, 48_000, format="OGG", subtype="OPUS", compression_level=1.0)
        opus_kbps.append(out.stat().st_size * 8 / (len(w48) / 48_000) / 1000)
    print(f"{len(files)} files; Opus file rate {np.mean(opus_kbps):.2f} kbps (mean, Ogg framing included)",
          file=sys.stderr)
    common = ["--captions", str(work / "captions.csv"), "--labels", str(work / "labels.txt"), "--torch_threads", "1",
              "--fad_bootstrap", str(a.fad_bootstrap)]
    orig = str(work / "orig" / "*")
    run(["fit-codebook", "--input", orig, "--output", str(work / "codebooks"), "--num_clusters", "32"])
    run(["tokenize", "--input", orig, "--codebook", str(work / "codebooks"), "--output", str(work / "ds"),
         "--mulan_model", "none"])
    jobs = {
        "originals vs originals": ["--generated", orig, "--reference", orig],
        "half A vs half B (floor)": ["--generated", str(work / "half_a" / "*"), "--reference", str(work / "half_b" / "*")],
        "codec, 12 levels": ["--generated", str(work / "ds"), "--reference", orig],
        "codec, 4 levels": ["--generated", str(work / "ds"), "--reference", orig, "--levels", "4"],
        "Opus 6 kbps": ["--generated", str(work / "opus" / "*"), "--reference", orig],
    }
    results = {}
    for name, args in jobs.items():
        out = work / ("report-" + "".join(c if c.isalnum() else "_" for c in name))
        run(["evaluate", *args, "--output", str(out), *common])
        results[name] = json.loads((out / "report.json").read_text())

    def iv(d):
        return "–" if not d else f"{d['value']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"

    print("| condition | clips (gen/ref) | FAD_mulan [95 % CI] | FAD∞ | KLD P‖Q [95 % CI] | KLD Q‖P | MCC [95 % CI] |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        f = r["fad"].get("mulan") or {}
        k, m = r["kld"], r["mcc"]
        fi = (f.get("fad_inf") or {}).get("value")
        fad_s = "–" if not f else (f"{f['fad']:.3f} [{f['interval']['lo']:.3f}, {f['interval']['hi']:.3f}]"
                                   if f.get("interval") else f"{f['fad']:.3f}")
        print(f"| {name} | {r['inputs']['generated']['scored']}/{r['inputs']['reference']['scored']} | {fad_s} | "
              f"{'–' if fi is None else f'{fi:.3f}'} | {iv(k and k['kl_ref_gen'])} | "
              f"{'–' if not k else format(k['kl_gen_ref']['value'], '.3f')} | {iv(m and m['mcc'])} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
