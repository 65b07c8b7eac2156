"""Monophonic score tunes rendered on General MIDI programs, with per-frame ground truth.

Used wherever we need the same notes played by different instruments: the semantic-invariance
bench, and training pairs that share a melody but differ in sound. Tunes come from music21's
bundled Essen folk collection; MIDI is written by music21 and rendered by the FluidSynth CLI with
the FluidR3 GM SoundFont (Debian packages `fluidsynth` and `fluid-soundfont-gm`), reverb and
chorus off, so a render is a pure function of (notes, tempo, program, transpose, velocity).

A tune is `{'id': str, 'notes': [(onset_ql, duration_ql, midi), ...]}` in quarter notes; its
tempo comes from its index (`tempo_bpm`), so the same index always plays at the same speed.

`render_slots` plays many variants of one tune (programs, ensembles, velocities, transpositions)
one after the other in a single MIDI file written with mido and renders it with ONE FluidSynth run,
then cuts the slots apart: far cheaper than one music21 + FluidSynth call per variant.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
FRAME_S = 0.04  # one semantic frame (25 Hz)


class RenderError(RuntimeError):
    """A score could not be rendered; the message names the file and the fix."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_tunes(opus: str, n: int, min_notes: int, cache: Path) -> list[dict]:
    """The first n monophonic tunes of a music21 corpus opus with >= min_notes notes (cached JSON)."""
    path = Path(cache) / f"tunes-{opus.replace('/', '_')}-{n}-{min_notes}.json"
    if path.exists():
        return json.loads(path.read_text())
    from music21 import chord, corpus

    log(f"parsing music21 corpus {opus} (once; cached in {path})")
    tunes = []
    for score in corpus.parse(opus).scores:
        flat = score.stripTies().flatten()
        if any(isinstance(x, chord.Chord) for x in flat.notes):
            continue
        notes = [(float(x.offset), float(x.quarterLength), int(x.pitch.midi)) for x in flat.notes
                 if x.quarterLength > 0]
        if len(notes) >= min_notes:
            tunes.append({"id": f"{opus}#{score.metadata.number}", "notes": notes})
        if len(tunes) == n:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tunes))
    return tunes


def tempo_bpm(index: int) -> float:
    """The tempo of tune `index`: 84..132 quarter notes per minute, a pure function of the index."""
    return 84.0 + 8.0 * (index % 7)


def check_tools(soundfont: str = SOUNDFONT) -> None:
    if shutil.which("fluidsynth") is None or not Path(soundfont).exists():
        raise RenderError(f"score renders need the FluidSynth CLI and {soundfont}; install them with "
                          "`apt-get install fluidsynth fluid-soundfont-gm`")


def render(tune: dict, index: int, program: int, transpose: int, seconds: float, out: Path,
           sr: int = 16000, velocity: int = 96, soundfont: str = SOUNDFONT) -> np.ndarray:
    """float32 mono [round(seconds·sr) cut to whole 40 ms frames]: the tune rendered on `program`.

    The WAV is kept at `out` (a cache: an existing file is read, not re-rendered)."""
    hop = int(round(FRAME_S * sr))
    n = int(round(seconds * sr)) // hop * hop
    out = Path(out)
    if not out.exists():
        check_tools(soundfont)
        from music21 import instrument, note, stream, tempo

        s = stream.Stream()
        s.insert(0, tempo.MetronomeMark(number=tempo_bpm(index)))
        inst = instrument.instrumentFromMidiProgram(program)
        inst.midiProgram = program
        s.insert(0, inst)
        for off, dur, midi in tune["notes"]:
            x = note.Note(midi + transpose, quarterLength=dur)
            x.volume.velocity = velocity
            s.insert(off, x)
        mid = out.with_suffix(".mid")
        s.write("midi", fp=str(mid))
        subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.6", "-r", str(sr),
                        "-T", "wav", "-O", "s16", "-F", str(out), soundfont, str(mid)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import soundfile as sf

    x, got_sr = sf.read(str(out), dtype="float32", always_2d=True)
    if got_sr != sr:
        raise RenderError(f"{out}: FluidSynth wrote {got_sr} Hz, want {sr}; delete the file to re-render")
    x = x.mean(1)[:n]
    return np.pad(x, (0, n - len(x))).astype(np.float32)


MIDI_TPQ = 480  # ticks per quarter note in the files render_slots writes


def render_slots(slots: list[list[dict]], bpm: float, slot_ql: int, out: Path, sr: int = 16000,
                 soundfont: str = SOUNDFONT) -> list[np.ndarray]:
    """One float32 mono wave per slot, each `slot_ql` quarter notes long at `bpm`.

    A slot is a list of parts played together, each {'notes': [(onset_ql, dur_ql, midi)], 'program',
    'velocity'}; slot k starts at quarter note k·slot_ql of one MIDI file (its own MIDI channels,
    channel 10 skipped), rendered once by FluidSynth (reverb and chorus off) and cut at whole
    samples. The WAV is kept at `out` as a cache: an existing file is read, not re-rendered."""
    import soundfile as sf

    tempo_us = int(round(60e6 / bpm))
    sec_per_ql = tempo_us / 1e6
    out = Path(out)
    n_parts = sum(len(s) for s in slots)
    if n_parts > 15:
        raise RenderError(f"{out}: {n_parts} parts need more than the 15 melodic MIDI channels; split the slots")
    if not out.exists():
        check_tools(soundfont)
        import mido

        events = []  # (tick, order, message); note-offs sort before note-ons at the same tick
        chan = 0
        for k, slot in enumerate(slots):
            base = k * slot_ql * MIDI_TPQ
            for part in slot:
                ch = chan if chan < 9 else chan + 1
                chan += 1
                events.append((0, 0, mido.Message("program_change", channel=ch, program=int(part["program"]))))
                for on, dur, midi in part["notes"]:
                    if on >= slot_ql:
                        continue
                    t0 = base + int(round(on * MIDI_TPQ))
                    t1 = base + int(round(min(on + dur, slot_ql) * MIDI_TPQ))
                    m = int(np.clip(midi, 0, 127))
                    events.append((t0, 2, mido.Message("note_on", channel=ch, note=m, velocity=int(part["velocity"]))))
                    events.append((max(t1 - 1, t0 + 1), 1, mido.Message("note_off", channel=ch, note=m, velocity=0)))
        events.sort(key=lambda e: (e[0], e[1]))
        track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=tempo_us, time=0)])
        now = 0
        for tick, _, msg in events:
            track.append(msg.copy(time=tick - now))
            now = tick
        track.append(mido.MetaMessage("end_of_track", time=len(slots) * slot_ql * MIDI_TPQ - now))
        f = mido.MidiFile(ticks_per_beat=MIDI_TPQ)
        f.tracks.append(track)
        mid = out.with_suffix(".mid")
        out.parent.mkdir(parents=True, exist_ok=True)
        f.save(str(mid))
        tmp = out.with_name(out.stem + ".tmp.wav")
        subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.6", "-r", str(sr),
                        "-T", "wav", "-O", "s16", "-F", str(tmp), soundfont, str(mid)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tmp.replace(out)
    x, got_sr = sf.read(str(out), dtype="float32", always_2d=True)
    if got_sr != sr:
        raise RenderError(f"{out}: FluidSynth wrote {got_sr} Hz, want {sr}; delete the file to re-render")
    x = x.mean(1)
    n = int(round(slot_ql * sec_per_ql * sr))
    waves = []
    for k in range(len(slots)):
        a = int(round(k * slot_ql * sec_per_ql * sr))
        w = x[a:a + n]
        waves.append(np.pad(w, (0, n - len(w))).astype(np.float32))
    return waves


def ground_truth(tune: dict, index: int, n_frames: int, transpose: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pitch class int8 [T], -1 = no note; onset bool [T]) per 40 ms frame, from the score."""
    sec = 60.0 / tempo_bpm(index)
    pc = np.full(n_frames, -1, np.int8)
    onset = np.zeros(n_frames, bool)
    centre = (np.arange(n_frames) + 0.5) * FRAME_S
    for off, dur, midi in tune["notes"]:
        t0, t1 = off * sec, (off + dur) * sec
        pc[(centre >= t0) & (centre < t1)] = (midi + transpose) % 12
        f = int(t0 / FRAME_S)
        if f < n_frames:
            onset[f] = True
    return pc, onset
