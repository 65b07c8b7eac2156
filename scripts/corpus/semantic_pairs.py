"""Training renders for the built-in melodic extractor: the same score segment on several General
MIDI programs and velocities, plus transposed renders (hard negatives), with per-frame ground truth.

    python scripts/corpus/semantic_pairs.py --out /work/cache/semantic-model/renders [--tunes 240]

Tunes come from music21's Essen folk collection, from opuses DISJOINT from the ones the
invariance bench measures on (bench/bench_semantic_invariance.py uses essenFolksong/altdeu10 by
default and essenFolksong/ballad10 as its fresh set): no tune the bench scores can be in training.
Each tune gets `--renders` renders of its first `--seconds` seconds with the same notes, programs
and velocities drawn from sha256(tune id, render index), and `--transposed` renders shifted by
±1..6 semitones on another drawn program. Everything is a pure function of the tune list and
these flags; rendering goes through score_render.render (FluidSynth, FluidR3 GM, reverb and
chorus off, cached WAVs).

Writes OUT/index.json: a list of {"wav", "tune", "tune_index", "program", "velocity",
"transpose", "midi" (MIDI pitch per 40 ms frame, -1 = no note), "pc" (pitch class per 40 ms frame, -1 = no note), "onset" (0/1 per frame)}.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402

from scripts.corpus.score_render import FRAME_S, ground_truth, load_tunes, render, tempo_bpm  # noqa: E402

# Opuses the invariance bench scores on: never used for training.
BENCH_OPUSES = ("essenFolksong/altdeu10", "essenFolksong/ballad10")
TRAIN_OPUSES = ("essenFolksong/altdeu20", "essenFolksong/ballad20", "essenFolksong/ballad30",
                "essenFolksong/ballad40", "essenFolksong/boehme10", "essenFolksong/erk5",
                "essenFolksong/han1", "essenFolksong/kinder0", "essenFolksong/zuccal0",
                "essenFolksong/erk10", "essenFolksong/ballad50", "essenFolksong/fink0")
# General MIDI programs: keys, plucked, organ, bowed, brass, reed, pipe, voice, synth leads.
PROGRAMS = (0, 4, 6, 11, 13, 19, 21, 24, 25, 26, 32, 40, 41, 42, 46, 48, 52, 53, 56, 57, 60, 64,
            65, 68, 70, 71, 73, 75, 79, 80, 81, 85)
VELOCITIES = (56, 72, 88, 104, 120)


def midi_per_frame(tune: dict, index: int, n_frames: int, transpose: int) -> np.ndarray:
    """MIDI pitch of the note sounding at each 40 ms frame's centre, -1 for none (as ground_truth)."""
    sec = 60.0 / tempo_bpm(index)
    out = np.full(n_frames, -1, np.int16)
    centre = (np.arange(n_frames) + 0.5) * FRAME_S
    for off, dur, midi in tune["notes"]:
        out[(centre >= off * sec) & (centre < (off + dur) * sec)] = midi + transpose
    return out


def draw(tune_id: str, r: int, what: str, n: int) -> int:
    """A pure-function choice in [0, n) from (tune id, render index, what)."""
    return int(hashlib.sha256(f"{tune_id}|{r}|{what}".encode()).hexdigest()[:8], 16) % n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="render folder (WAVs + index.json)")
    ap.add_argument("--tunes", type=int, default=240, help="tunes in all (default %(default)s)")
    ap.add_argument("--per_opus", type=int, default=40, help="at most this many tunes per opus")
    ap.add_argument("--renders", type=int, default=5, help="same-note renders per tune")
    ap.add_argument("--transposed", type=int, default=1, help="transposed renders per tune")
    ap.add_argument("--seconds", type=float, default=16.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tunes: list[dict] = []
    for opus in TRAIN_OPUSES:
        if len(tunes) >= args.tunes:
            break
        got = load_tunes(opus, args.per_opus, 24, out / "tunes")
        tunes += got[: args.tunes - len(tunes)]
    bench_ids = {f"{o}#" for o in BENCH_OPUSES}
    if any(t["id"].startswith(tuple(bench_ids)) for t in tunes):
        raise RuntimeError("a bench tune slipped into the training tunes")
    rows = []
    for i, tune in enumerate(tunes):
        specs = []
        for r in range(args.renders):
            specs.append((PROGRAMS[draw(tune["id"], r, "program", len(PROGRAMS))],
                          VELOCITIES[draw(tune["id"], r, "velocity", len(VELOCITIES))], 0))
        for r in range(args.transposed):
            shift = 1 + draw(tune["id"], r, "shift", 6)
            sign = 1 if draw(tune["id"], r, "sign", 2) else -1
            specs.append((PROGRAMS[draw(tune["id"], r, "tprogram", len(PROGRAMS))],
                          VELOCITIES[draw(tune["id"], r, "tvelocity", len(VELOCITIES))], sign * shift))
        for prog, vel, tr in dict.fromkeys(specs):
            wav = out / f"{i:04d}-{prog:03d}-{vel:03d}-{tr:+d}.wav"
            x = render(tune, i, prog, tr, args.seconds, wav, velocity=vel)
            pc, onset = ground_truth(tune, i, len(x) // 640, tr)
            rows.append({"wav": wav.name, "tune": tune["id"], "tune_index": i, "program": prog,
                         "velocity": vel, "transpose": tr, "pc": pc.tolist(),
                         "midi": midi_per_frame(tune, i, len(x) // 640, tr).tolist(),
                         "onset": onset.astype(int).tolist()})
        if i % 20 == 0:
            print(f"{i + 1}/{len(tunes)} tunes, {len(rows)} renders", file=sys.stderr, flush=True)
    tmp = out / "index.json.tmp"
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, out / "index.json")
    print(f"{len(tunes)} tunes, {len(rows)} renders -> {out / 'index.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
