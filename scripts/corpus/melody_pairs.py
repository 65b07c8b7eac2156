r"""Same-melody / different-sound training pairs for the built-in melody model, made offline.

    PYTHONPATH=. python scripts/corpus/melody_pairs.py --out PAIRS \
        [--opus essenFolksong/han1 --tunes 400 --chorales 40 --heldout_percent 25 --workers 2]

Tunes: monophonic tunes of music21's bundled Essen folk collection (`--opus`) and the soprano
lines of Bach chorales from music21's corpus (`--chorales`), both public domain. A tune is held out
by the hash of its id (`is_heldout`), so the split never changes when tunes are added.

A *melody class* is one 4 s segment of one tune at one transposition: segment k starts at 4k s
(at the tune's tempo, `score_render.tempo_bpm`) and must hold >= 4 note onsets. A transposed
segment is another class (the hard negative: same contour, other key). Each class gets several
*views*, all the same notes:
  - solo: 4 General MIDI programs (from SOLO), velocity 56..120, sometimes an octave up or down;
  - ensemble: the melody on one program plus an accompaniment (block tonic triads every half
    note, or a root/fifth bass line) on another;
  - hum stand-ins: one of Voice Oohs (53), Whistle (78), Ocarina (79), and a synthesized hum
    (`sine_hum`: a sine with a weak 2nd harmonic, a per-tune detune of up to ±30 cents, 5 Hz
    vibrato, soft attacks and releases; an octave down half of the time);
then each view gets its own room (exponentially decaying noise impulse response, RT60 0.2–1.2 s,
or dry), additive white or pink noise (SNR 8–35 dB, or none) and gain (−12..+4 dB). All choices
come from a generator seeded by sha1(tune id, transposition), so a re-run gives the same files.
Held-out tunes get the untransposed class only, up to 2 segments each, with views: one hum patch,
the synthesized hum, 2 solo programs and 1 ensemble.

All variants of a tune are rendered by ONE FluidSynth run (`score_render.render_slots`).
Output under OUT: `renders/<tune>/<class>.npy` int16 [V, 64000] (16 kHz, 4 s per view) and
`<class>.json` beside it (the ground-truth note list `[onset_s, dur_s, midi]` relative to the
segment start, transposition applied, and one descriptor per view), and `index.jsonl`, one line
per class: {class, tune, split, transpose, start_s, n_views, file}. The default 440 tunes took
18 min on a shared 2-core machine (2 workers).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from scripts.corpus.score_render import load_tunes, log, render_slots, tempo_bpm  # noqa: E402

SR = 16000
SEG_S = 4
SOLO = [0, 4, 6, 11, 12, 19, 21, 22, 24, 25, 26, 40, 41, 42, 56, 57, 60, 64, 65, 66, 68, 70, 71, 72,
        73, 74, 80, 81]
ACCOMP = [0, 19, 24, 32, 33, 46, 48, 49, 89]
HUM_PATCHES = [53, 78, 79]  # Voice Oohs, Whistle, Ocarina
TRAIN_SOLO, HELD_SOLO = 4, 2


def is_heldout(tune_id: str, percent: int) -> bool:
    return int(hashlib.sha1(tune_id.encode()).hexdigest()[:8], 16) % 100 < percent


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha1("|".join(map(str, key)).encode()).hexdigest()[:16], 16))


def load_chorale_lines(n: int, cache: Path) -> list[dict]:
    """Soprano lines of the first n Bach chorales in music21's corpus (cached JSON)."""
    path = Path(cache) / f"chorale-soprano-{n}.json"
    if path.exists():
        return json.loads(path.read_text())
    from music21 import chord, corpus

    log(f"parsing {n} Bach chorales (once; cached in {path})")
    lines = []
    for i, score in enumerate(corpus.chorales.Iterator()):
        if len(lines) == n or i > 3 * n:
            break
        try:
            flat = score.parts[0].stripTies().flatten()
        except Exception:  # a chorale music21 cannot split into parts: skip it
            continue
        if any(isinstance(x, chord.Chord) for x in flat.notes):
            continue
        notes = [(float(x.offset), float(x.quarterLength), int(x.pitch.midi)) for x in flat.notes if x.quarterLength > 0]
        if len(notes) >= 16:
            lines.append({"id": f"bach/{score.metadata.title or i}#{i}", "notes": notes})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(lines))
    return lines


def accompaniment(notes: list, length_ql: int, style: str) -> list:
    """A plain accompaniment in the tune's key: tonic = last note, minor if the minor third is more common."""
    tonic = notes[-1][2] % 12
    pcs = [m % 12 for _, _, m in notes]
    third = 3 if pcs.count((tonic + 3) % 12) > pcs.count((tonic + 4) % 12) else 4
    low = min(m for _, _, m in notes)
    root = low - ((low - tonic) % 12) - 12  # the tonic an octave or so under the melody
    if style == "chord":
        return [(float(t), 2.0, root + iv) for t in range(0, length_ql, 2) for iv in (0, third, 7)]
    root -= 12
    return [(float(t), 1.0, root + (0 if t % 2 == 0 else 7)) for t in range(length_ql)]


def sine_hum(notes_s: list, n: int, rng: np.random.Generator, octave: int) -> np.ndarray:
    """float32 [n]: a hum-like tone for each (onset_s, dur_s, midi): sine + weak 2nd harmonic,
    per-tune detune, 5 Hz vibrato, 30 ms attack and 60 ms release."""
    out = np.zeros(n, np.float64)
    detune = rng.uniform(-0.3, 0.3)
    vib_depth, vib_hz = rng.uniform(0.05, 0.25), rng.uniform(4.0, 6.0)
    for on, dur, midi in notes_s:
        a, b = int(on * SR), min(n, int((on + dur) * SR))
        if b <= a:
            continue
        t = np.arange(b - a) / SR
        semis = midi + octave + detune + vib_depth * np.sin(2 * np.pi * vib_hz * t)
        phase = 2 * np.pi * np.cumsum(440.0 * 2 ** ((semis - 69) / 12)) / SR
        env = np.minimum(1.0, np.minimum(t / 0.03, (t[-1] - t + 1e-9) / 0.06))
        out[a:b] += env * (np.sin(phase) + 0.2 * np.sin(2 * phase))
    return (0.15 * out).astype(np.float32)


def room(wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Reverb (half the time), noise (half the time) and gain; returns the wave and what was done."""
    from scipy.signal import fftconvolve

    desc: dict = {}
    if rng.random() < 0.5:
        rt60, wet = float(rng.uniform(0.2, 1.2)), float(rng.uniform(0.15, 0.5))
        t = np.arange(int(rt60 * SR)) / SR
        ir = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
        ir /= np.sqrt((ir ** 2).sum())
        wave = (1 - wet) * wave + wet * fftconvolve(wave, ir)[:wave.size].astype(np.float32)
        desc.update(reverb_rt60_s=round(rt60, 3), reverb_wet=round(wet, 3))
    if rng.random() < 0.5:
        snr, kind = float(rng.uniform(8, 35)), ("pink" if rng.random() < 0.5 else "white")
        noise = rng.standard_normal(wave.size)
        if kind == "pink":
            spec = np.fft.rfft(noise)
            spec /= np.sqrt(np.maximum(np.arange(spec.size), 1))
            noise = np.fft.irfft(spec, wave.size)
        rms = np.sqrt(np.mean(wave.astype(np.float64) ** 2)) + 1e-9
        noise *= rms / (np.sqrt(np.mean(noise ** 2)) + 1e-12) / 10 ** (snr / 20)
        wave = wave + noise.astype(np.float32)
        desc.update(noise=kind, snr_db=round(snr, 2))
    gain = float(rng.uniform(-12, 4))
    desc["gain_db"] = round(gain, 2)
    return np.clip(wave * 10 ** (gain / 20), -1, 1).astype(np.float32), desc


def segment_starts(tune: dict, sec_per_ql: float, max_segments: int) -> list[int]:
    end_s = max(o + d for o, d, _ in tune["notes"]) * sec_per_ql
    starts, seen = [], set()
    for s in range(0, int(end_s) - SEG_S + 1, SEG_S):
        inside = tuple((round(o * sec_per_ql - s, 3), m) for o, _, m in tune["notes"] if s <= o * sec_per_ql < s + SEG_S)
        if len(inside) >= 4 and inside not in seen:  # a repeated phrase is not a second melody
            starts.append(s)
            seen.add(inside)
        if len(starts) == max_segments:
            break
    return starts


def segment_notes(tune: dict, sec_per_ql: float, start_s: int, transpose: int) -> list:
    out = []
    for o, d, m in tune["notes"]:
        a, b = o * sec_per_ql - start_s, (o + d) * sec_per_ql - start_s
        if b > 0 and a < SEG_S:
            out.append([round(max(a, 0.0), 4), round(min(b, SEG_S) - max(a, 0.0), 4), m + transpose])
    return out


def fit_octave(notes: list, shift: int) -> int:
    lo, hi = min(m for _, _, m in notes), max(m for _, _, m in notes)
    return shift if 36 <= lo + shift and hi + shift <= 96 else 0


def build_tune(job: tuple) -> list[dict]:
    """Render every class and view of one tune; returns its index lines (skips finished tunes)."""
    index, tune, out, heldout = job
    safe = hashlib.sha1(tune["id"].encode()).hexdigest()[:12]
    tdir = Path(out) / "renders" / safe
    done = tdir / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    bpm = tempo_bpm(index)
    sec_per_ql = int(round(60e6 / bpm)) / 1e6
    starts = segment_starts(tune, sec_per_ql, 2 if heldout else 3)
    if not starts:
        return []
    slot_ql = math.ceil((starts[-1] + SEG_S + 0.25) / sec_per_ql)
    rng0 = rng_for(tune["id"], "transpose")
    transposes = [0] if heldout else [0, int(rng0.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6]))]
    slots, views = [], []  # views[i] = (transpose, descriptor, slot index or None for the sine hum)
    for tr in transposes:
        rng = rng_for(tune["id"], tr)
        notes = [(o, d, m + tr) for o, d, m in tune["notes"]]
        for prog in rng.choice(SOLO, HELD_SOLO if heldout else TRAIN_SOLO, replace=False):
            octv = fit_octave(notes, int(rng.choice([0, 0, 0, -12, 12])))
            vel = int(rng.integers(56, 121))
            views.append((tr, {"kind": "solo", "program": int(prog), "velocity": vel, "octave": octv}, len(slots)))
            slots.append([{"notes": [(o, d, m + octv) for o, d, m in notes], "program": int(prog), "velocity": vel}])
        prog, acc, style = int(rng.choice(SOLO)), int(rng.choice(ACCOMP)), str(rng.choice(["chord", "bass"]))
        vel, acc_vel = int(rng.integers(80, 121)), int(rng.integers(50, 81))
        views.append((tr, {"kind": "ensemble", "program": prog, "accompaniment_program": acc, "accompaniment": style,
                           "velocity": vel, "accompaniment_velocity": acc_vel, "octave": 0}, len(slots)))
        slots.append([{"notes": notes, "program": prog, "velocity": vel},
                      {"notes": accompaniment(notes, slot_ql, style), "program": acc, "velocity": acc_vel}])
        patch, octv = int(rng.choice(HUM_PATCHES)), fit_octave(notes, int(rng.choice([0, -12])))
        vel = int(rng.integers(60, 111))
        views.append((tr, {"kind": "hum-patch", "program": patch, "velocity": vel, "octave": octv}, len(slots)))
        slots.append([{"notes": [(o, d, m + octv) for o, d, m in notes], "program": patch, "velocity": vel}])
        octv = fit_octave(notes, int(rng.choice([0, -12])))
        views.append((tr, {"kind": "hum-sine", "octave": octv}, None))
    waves = render_slots(slots, bpm, slot_ql, tdir / "all.wav", sr=SR)
    n = waves[0].shape[0]
    lines = []
    for tr in transposes:
        rng = rng_for(tune["id"], tr, "rooms")
        notes_s = [(o * sec_per_ql, d * sec_per_ql, m + tr) for o, d, m in tune["notes"]]
        full = []
        for vtr, desc, slot in views:
            if vtr != tr:
                continue
            w = waves[slot] if slot is not None else sine_hum(notes_s, n, rng_for(tune["id"], tr, "hum"), desc["octave"])
            w, extra = room(w, rng)
            full.append((w, {**desc, **extra}))
        for s in starts:
            cls = f"{safe}-s{s}-t{tr:+d}"
            a = s * SR
            arr = np.stack([np.pad(w[a:a + SEG_S * SR], (0, max(0, a + SEG_S * SR - n))) for w, _ in full])
            np.save(tdir / f"{cls}.npy", np.round(arr * 32767).astype(np.int16))
            meta = {"class": cls, "tune": tune["id"], "tune_index": index, "tempo_bpm": bpm, "start_s": s,
                    "transpose": tr, "split": "heldout" if heldout else "train",
                    "notes": segment_notes(tune, sec_per_ql, s, tr), "views": [d for _, d in full]}
            (tdir / f"{cls}.json").write_text(json.dumps(meta))
            lines.append({"class": cls, "tune": tune["id"], "split": meta["split"], "transpose": tr, "start_s": s,
                          "n_views": len(full), "file": f"renders/{safe}/{cls}.npy"})
    (tdir / "all.wav").unlink()
    done.write_text(json.dumps(lines))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--opus", nargs="+", default=["essenFolksong/han1"])
    ap.add_argument("--tunes", type=int, default=400, help="tunes per opus")
    ap.add_argument("--chorales", type=int, default=40, help="Bach chorale soprano lines")
    ap.add_argument("--heldout_percent", type=int, default=25)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    cache = args.out / "tunes"
    tunes = [t for opus in args.opus for t in load_tunes(opus, args.tunes, 16, cache)]
    if args.chorales:
        tunes += load_chorale_lines(args.chorales, cache)
    jobs = [(i, t, str(args.out), is_heldout(t["id"], args.heldout_percent)) for i, t in enumerate(tunes)]
    log(f"{len(jobs)} tunes, {sum(j[3] for j in jobs)} held out; rendering with {args.workers} worker(s)")
    lines = []
    if args.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.workers) as pool:
            for k, got in enumerate(pool.imap(build_tune, jobs, chunksize=4)):
                lines += got
                if k % 50 == 0:
                    log(f"  {k}/{len(jobs)} tunes, {len(lines)} classes")
    else:
        for k, job in enumerate(jobs):
            lines += build_tune(job)
            if k % 50 == 0:
                log(f"  {k}/{len(jobs)} tunes, {len(lines)} classes")
    tmp = args.out / "index.jsonl.tmp"
    tmp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    tmp.replace(args.out / "index.jsonl")
    n_train = sum(x["split"] == "train" for x in lines)
    log(f"wrote {args.out / 'index.jsonl'}: {n_train} train classes, {len(lines) - n_train} held-out classes, "
        f"{sum(x['n_views'] for x in lines)} views")
    return 0


if __name__ == "__main__":
    sys.exit(main())
