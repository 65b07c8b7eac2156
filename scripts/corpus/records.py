"""The manifest: one JSON line per audio file (captions.jsonl in `small`, manifest.jsonl otherwise),
and summary.json, the corpus's totals.

A record: file (relative to the corpus root), kind ('recording' | 'score_render'), caption,
duration_s, sample_rate, channels, format ('<libsndfile format>/<subtype>'), bytes, [sha1 in
large/xl recordings], source (where it came from and its licence), tags (the metadata the
caption was built from).
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path

from tokenmill.tokenizers.artifacts import atomic_write_local


def audio_facts(path: str, root: str) -> dict:
    """file, duration_s, sample_rate, channels, format, bytes of a written file, as libsndfile reads it."""
    import soundfile as sf

    info = sf.info(path)
    return dict(file=os.path.relpath(path, root), duration_s=round(info.duration, 3), sample_rate=info.samplerate,
                channels=info.channels, format=f"{info.format}/{info.subtype}", bytes=os.path.getsize(path))


def recording_record(facts: dict, track, license: str, offset_s: float | None = None,
                     sha1: str | None = None) -> dict:
    """The record of a recorded track (`track` a scan.Track); offset_s for a clip, sha1 in large/xl."""
    source = dict(debian_package=track.package, version=track.version, path=track.rel)
    if offset_s is not None:
        source["offset_s"] = offset_s
    source["license"] = license
    rec = dict(file=facts["file"], kind="recording", caption=track.caption)
    rec.update({k: facts[k] for k in ("duration_s", "sample_rate", "channels", "format", "bytes")})
    if sha1 is not None:
        rec["sha1"] = sha1
    rec.update(source=source, tags=track.tags)
    return rec


def render_record(facts: dict, result: dict, license: str) -> dict:
    """The record of a score render from score_job.render_one's result."""
    rec = dict(file=facts["file"], kind="score_render", caption=result["caption"])
    rec.update({k: facts[k] for k in ("duration_s", "sample_rate", "channels", "format", "bytes")})
    rec.update(source=dict(music21_corpus=result["corpus_path"], number=result.get("number"), license=license),
               tags=result["meta"])
    return rec


def small_render_license(sf_name: str) -> str:
    return f"music21 corpus (BSD-3-Clause package; public-domain scores); SoundFont {sf_name}"


def large_render_license(sf_name: str) -> str:
    return f"music21 corpus scores; SoundFont {sf_name}"


def write_jsonl(path: str, records: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_local(Path(path), text.encode("utf-8"))


def source_key(record: dict) -> str:
    """'<debian package>' or 'music21:<corpus folder>'."""
    src = record["source"]
    return src.get("debian_package") or ("music21:" + src["music21_corpus"].split("/")[0])


def summarize(records: list[dict]) -> dict:
    """Totals: files, hours, minutes, mbytes, formats, sample_rates (counts in first-seen order), by_source."""
    by = collections.defaultdict(lambda: [0, 0.0, 0])
    for r in records:
        k = source_key(r)
        by[k][0] += 1
        by[k][1] += r["duration_s"]
        by[k][2] += r["bytes"]
    seconds = sum(r["duration_s"] for r in records)
    return dict(files=len(records), hours=round(seconds / 3600, 3), minutes=round(seconds / 60, 2),
                mbytes=round(sum(r["bytes"] for r in records) / 1e6, 2),
                formats=dict(collections.Counter(r["format"] for r in records)),
                sample_rates=dict(collections.Counter(r["sample_rate"] for r in records)),
                by_source={k: dict(files=v[0], hours=round(v[1] / 3600, 3), mbytes=round(v[2] / 1e6, 1))
                           for k, v in sorted(by.items())})


def write_summary(out: str, summary: dict) -> None:
    atomic_write_local(Path(out) / "summary.json", json.dumps(summary, indent=1).encode("utf-8"))
