"""One render job: music21 score -> MIDI with our instruments and tempo -> FluidSynth -> trimmed audio.

The worker runs in a process pool, so it takes and returns plain dicts (see score_catalog for a
job's keys). Audio: FluidSynth at 24 kHz, gain 0.5, 16-bit; downmixed to mono; leading silence
and all but 1.5 s of trailing silence (below -50 dBFS) cut; the clip window taken (a cut end
fades out over 1 s); peak-normalized to -1 dBFS.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import random
import re
import shutil
import subprocess
import tempfile
import time

import numpy as np

from scripts.corpus.debian import log
from scripts.corpus.errors import CorpusError
from scripts.corpus.score_catalog import (CATEGORIES, GM_NAMES, SOLO_PROGRAMS, choose_ensemble, programs_for,
                                          score_caption, work_title)

RENDER_SR = 24000
SILENCE_DB = -50.0
TAIL_S = 1.5
PEAK_DB = -1.0


def check_fluidsynth() -> None:
    if shutil.which("fluidsynth") is None:
        raise CorpusError("score renders need the FluidSynth CLI; install it with `apt-get install fluidsynth` "
                          "(scripts/corpus/build_corpus.sh does)")


def key_name(score) -> tuple[str | None, float | None]:
    """('E flat major', r) when music21's key analysis correlates >= 0.8, else (None, r)."""
    try:
        k = score.analyze("key")
        name = None
        if k.correlationCoefficient >= 0.8:
            name = f'{k.tonic.name.replace("-", " flat").replace("#", " sharp")} {k.mode}'
        return name, round(float(k.correlationCoefficient), 3)
    except Exception:
        return None, None


def patch_midi(path: str, programs: list[int]) -> float:
    """Give part track i program programs[i] (the last for extra tracks), drop the file's own program
    changes, and end every track with all-sound-off + reset-controllers. Returns the length in s.

    The explicit release matters: music21 can emit overlapping same-pitch notes whose note-offs
    pair up wrongly; a sustained patch then never ends and `fluidsynth -F` renders forever."""
    import mido

    m = mido.MidiFile(path)
    part = 0
    for track in m.tracks:
        channels = sorted({msg.channel for msg in track if hasattr(msg, "channel")
                           and msg.type in ("note_on", "note_off")})
        track[:] = [msg for msg in track if msg.type != "program_change"]
        if not channels:
            continue
        program = programs[min(part, len(programs) - 1)]
        part += 1
        for c in channels:
            if c != 9:
                track.insert(0, mido.Message("program_change", channel=c, program=program, time=0))
        eot = track[-1] if track and track[-1].type == "end_of_track" else None
        delay = eot.time if eot else 0
        if eot:
            track.pop()
        for j, c in enumerate(channels):
            track.append(mido.Message("control_change", channel=c, control=123, value=0, time=delay if j == 0 else 0))
            track.append(mido.Message("control_change", channel=c, control=120, value=0, time=0))
        track.append(mido.MetaMessage("end_of_track", time=0))
    m.save(path)
    return mido.MidiFile(path).length


def shape_audio(x: np.ndarray, sr: int, clip_start: float, clip_dur: float) -> tuple[np.ndarray, float] | None:
    """float32 [n] or [n, ch] -> (mono clip, full trimmed duration in s); None when silent."""
    x = x.mean(axis=1) if x.ndim > 1 else x
    loud = np.nonzero(np.abs(x) > 10 ** (SILENCE_DB / 20))[0]
    if len(loud) == 0:
        return None
    x = x[loud[0]: min(len(x), loud[-1] + int(TAIL_S * sr))]
    full_s = len(x) / sr
    x = x[int(clip_start * sr): int((clip_start + clip_dur) * sr)]
    if full_s > clip_start + clip_dur:
        n = min(len(x), sr)
        x[-n:] *= np.linspace(1, 0, n, dtype=np.float32)
    return x / max(1e-6, np.abs(x).max()) * 10 ** (PEAK_DB / 20), full_s


def clean_title(metadata_title: str | None, job: dict) -> str:
    title = metadata_title or job.get("title")
    if not title or re.fullmatch(r"bwv[\d.]+", title, re.I) or len(title) < 3:
        title = work_title(job["corpus_path"], job["cat"])
    title = title.strip().strip('"').strip().rstrip(",.")
    if (title.isupper() and job["cat"] != "bach") or job["cat"] == "joplin":
        title = title.title()
    return title


def render_one(job: dict) -> dict:
    """Render one job; returns the job with ok, and on success dur, full_dur, nparts, caption, meta, secs."""
    import soundfile as sf
    from music21 import corpus, tempo

    t0 = time.time()
    s = corpus.parse(job["corpus_path"], number=job.get("number"))
    if hasattr(s, "scores"):  # an opus: its first score
        s = s.scores[0]
    md = s.metadata
    n_parts = len(list(s.parts) or [s])
    rnd = random.Random(job["seed"])
    category = CATEGORIES[job["cat"]]
    ensemble = job.get("ensemble") or choose_ensemble(category, n_parts, rnd)
    if ensemble == "solo":
        programs = [job.get("program") or rnd.choice(SOLO_PROGRAMS)] * n_parts
    else:
        programs = programs_for(ensemble, n_parts)
    marks = s.flatten().getElementsByClass("MetronomeMark")
    tempo_text = None
    if len(marks) and marks[0].number:
        try:
            qpm = float(marks[0].getQuarterBPM())
        except Exception:
            qpm = float(marks[0].number)
        tempo_source = "score"
        if marks[0].text and not marks[0].textImplicit:
            tempo_text = str(marks[0].text).strip()
    else:
        qpm = float(job.get("qpm") or rnd.randint(*category.qpm_range))
        tempo_source = "chosen"
        s.insert(0, tempo.MetronomeMark(number=qpm))
    ts = s.recurse().getElementsByClass("TimeSignature").first()
    key, key_r = key_name(s)
    tmp = tempfile.mkdtemp(prefix="r21_")
    try:
        mid, wav = os.path.join(tmp, "a.mid"), os.path.join(tmp, "a.wav")
        s.write("midi", fp=mid)
        limit = 60 + patch_midi(mid, programs)  # >= 1x real time; renders run about 50x
        try:
            subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(RENDER_SR), "-O", "s16", "-T", "wav",
                            "-F", wav, job["sf2"], mid], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=limit)
        except subprocess.TimeoutExpired:
            return dict(job, ok=False, err=f"fluidsynth timeout ({limit:.0f}s)", secs=time.time() - t0)
        x, sr = sf.read(wav, dtype="float32")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shaped = shape_audio(x, sr, job.get("clip_start", 0.0), job.get("clip_dur") or job.get("max_s", 1e9))
    if shaped is None:
        return dict(job, ok=False, err="silent render", secs=time.time() - t0)
    x, full_s = shaped
    os.makedirs(os.path.dirname(job["out"]), exist_ok=True)
    sf.write(job["out"], x, sr, format=job["format"], subtype="PCM_16")
    composer = job.get("composer") or category.composer or (
        md.composer if md and md.composer and len(md.composer) > 3 else None)
    facts = dict(desc=job.get("desc") or category.desc, era=category.era, composer=composer,
                 title=clean_title(md.title if md and md.title else None, job), ensemble=ensemble,
                 programs=programs if ensemble != "solo" else programs[:1], qpm=qpm, tempo_text=tempo_text,
                 meter=ts.ratioString if ts else None, key=key, soundfont=job["sf_name"])
    return dict(job, ok=True, dur=len(x) / sr, full_dur=full_s, nparts=n_parts, caption=score_caption(facts),
                meta=dict(facts, tempo_source=tempo_source, key_correlation=key_r, gm_programs=programs,
                          gm_names=[GM_NAMES[p] for p in programs], corpus_path=job["corpus_path"],
                          number=job.get("number")), secs=time.time() - t0)


def run_renders(jobs: list[dict], workers: int) -> list[dict]:
    """Run jobs in a process pool; results sorted by output path (a crash becomes ok=False)."""
    check_fluidsynth()
    out = []
    with cf.ProcessPoolExecutor(max_workers=workers) as ex:
        futures = {ex.submit(render_one, j): j for j in jobs}
        for f in cf.as_completed(futures):
            try:
                r = f.result()
            except Exception as e:
                r = dict(futures[f], ok=False, err=repr(e)[:200], secs=0.0)
            out.append(r)
            if len(out) % 25 == 0:
                log(f"  renders {len(out)}/{len(jobs)}")
    return sorted(out, key=lambda r: r["out"])
