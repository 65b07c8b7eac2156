"""`large` and `xl`: the packages' tracks as shipped (no re-encoding), plus captioned score renders.

Tracks are hard-linked (or copied) from the extraction cache to audio/<package>/<short path>;
byte-identical repeats are left out (scan.Deduper). Renders (FLAC, 24 kHz mono, at most 6 min
each) go to renders/<category>/. manifest.jsonl lists recordings in package-table order, then
renders by path.
"""
from __future__ import annotations

import os
import shutil
import time

from scripts.corpus import debian, records
from scripts.corpus.packages import BY_NAME
from scripts.corpus.scan import Deduper, file_sha1, large_destination, scan_package
from scripts.corpus.score_catalog import plan_renders, score_pool
from scripts.corpus.score_job import run_renders

RENDER_SEED = 1234


def place(src: str, dst: str) -> None:
    """Hard-link src at dst (a copy across file systems), replacing what is there."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def recording_records(cache: str, out: str, packages: list[str]) -> list[dict]:
    recs, dedupe = [], Deduper()
    for package in packages:
        t0 = time.time()
        tracks = scan_package(cache, package)
        for t in tracks:
            sha1 = file_sha1(t.path)
            if not dedupe.first(sha1, t.rel):
                continue
            dst = os.path.join(out, large_destination(package, t.rel))
            place(t.path, dst)
            facts = dict(file=os.path.relpath(dst, out), duration_s=round(t.duration_s, 3),
                         sample_rate=t.sample_rate, channels=t.channels, format=f"{t.format}/{t.subtype}",
                         bytes=os.path.getsize(dst))
            recs.append(records.recording_record(facts, t, BY_NAME[package].license, sha1=sha1))
        hours = sum(t.duration_s for t in tracks) / 3600
        debian.log(f"  {package}: {len(tracks)} tracks, {hours:.2f} h ({time.time() - t0:.0f}s)")
    return recs


def render_records(out: str, sf2: str, sf_name: str, hours: float, workers: int) -> list[dict]:
    jobs = plan_renders(score_pool(), hours, sf2, sf_name, os.path.join(out, "renders"), RENDER_SEED)
    debian.log(f"  rendering {len(jobs)} scores (~{hours} h target) with {workers} workers")
    t0 = time.time()
    results = run_renders(jobs, workers)
    good = [r for r in results if r["ok"]]
    bad = [r for r in results if not r["ok"]]
    recs = [records.render_record(records.audio_facts(r["out"], out), r, records.large_render_license(sf_name))
            for r in good]
    debian.log(f"  renders ok={len(good)} failed={len(bad)} audio={sum(r['dur'] for r in good) / 3600:.2f} h "
               f"in {time.time() - t0:.0f}s wall")
    for b in bad[:10]:
        debian.log("   failed:", b["corpus_path"], b.get("number"), b.get("err"))
    return recs


def build_large(cache: str, out: str, packages: list[str], sf2: str, sf_name: str, soundfont_package: str,
                render_hours: float, workers: int) -> list[dict]:
    """Write a large/xl corpus into `out`; returns its records."""
    debian.download(cache, packages)
    recs = recording_records(cache, out, packages)
    debian.copy_licenses(cache, packages + [soundfont_package], out)
    if render_hours > 0:
        recs += render_records(out, sf2, sf_name, render_hours, workers)
    records.write_jsonl(os.path.join(out, "manifest.jsonl"), recs)
    return recs
