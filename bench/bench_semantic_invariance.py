"""Benchmark: do semantic tokens follow the melody across instruments, or the instrument?

Not a test: it prints figures measured in one run on this machine.

    .venv/bin/python bench/bench_semantic_invariance.py                 # ~3-4 min on one thread
    .venv/bin/python bench/bench_semantic_invariance.py --ssl hubert=DIR --ssl w2v-bert=DIR2

Data, rendered here and cached under --work: monophonic folk tunes from music21's bundled Essen
collection (`--opus`), each cut to its first `--seconds` seconds at a tempo drawn from the tune's
index, written as MIDI by music21 with one General MIDI program and rendered to 16 kHz WAV by
FluidSynth with the FluidR3 GM SoundFont (reverb and chorus off). Every tune is rendered with the
same notes on each of `PROGRAMS`, plus once on piano transposed up `--transpose` semitones (the
negative control). Ground truth per 40 ms frame t comes from the score: the pitch class of the
note sounding at the frame's centre (or none), and whether a note starts in [0.04 t, 0.04 t + 0.04).
Tunes are split by index: the codebooks are fitted on the "seen" tunes (all programs, no
transposition), every figure is measured on the unseen ones. The pretrained basic-pitch model was
trained on other data (MAESTRO, GuitarSet, ...), so these renders are unseen by all training.

Per extractor and k (k-means with tokenmill's fit_kmeans, exact assignments), on unseen tunes,
frames with a sounding note:
  xtimbre   same tune, two different programs, aligned frames: share with equal tokens
            (mean over tunes and program pairs)
  chance    two different tunes, same program, aligned frames: share with equal tokens
  transp    the piano render vs the transposed piano render of the same tune (should be low: a
            token that carries the melody must change when the melody does)
  pc_acc    pitch class predicted from the token (majority class of each token on the seen tunes)
  I/H pc    I(token; pitch class) / H(pitch class), plug-in estimate pooled over programs
  I/H inst  I(token; program) / H(program)
  onset F1  token changes (token[t] != token[t-1]) taken as onsets, against the score's onsets,
            ±1 frame tolerance (rhythm carried by the sequence)
  x RT      extraction speed: audio seconds per wall second, one thread, portable kernels
Plug-in mutual information is biased up by about (k-1)(classes-1) / (2 N ln 2) bits; N is printed.

Extractors: spectral (built-in), chroma (the spectral extractor's 12 chroma columns alone, a
chroma k-means baseline), basic-pitch (semantic_pitch.py, run by torch; once more under onnxruntime
when it is installed, for comparison), melodic (our trained model, semantic_builtin.py; --melodic
FILE for other weights), and SSL checkpoints given by --ssl.
The melodic model was trained on renders of other Essen opuses (scripts/corpus/semantic_pairs.py
never uses altdeu10 or ballad10), so no tune scored here was seen in its training.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from tokenmill.tokenizers import compute  # noqa: E402
from tokenmill.tokenizers.kmeans import fit_kmeans  # noqa: E402
from tokenmill.tokenizers.semantic import build_extractor  # noqa: E402
from scripts.corpus.score_render import ground_truth, load_tunes, render  # noqa: E402

SR = 16000
HOP = 640
PROGRAMS = {"piano": 0, "nylon guitar": 24, "violin": 40, "trumpet": 56, "flute": 73}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- metrics --------------------------------------------------------------------------------

def entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def info_ratio(tokens: np.ndarray, labels: np.ndarray) -> float:
    """I(token; label) / H(label), plug-in."""
    _, li = np.unique(labels, return_inverse=True)
    _, ti = np.unique(tokens, return_inverse=True)
    joint = np.zeros((ti.max() + 1, li.max() + 1))
    np.add.at(joint, (ti, li), 1)
    h_l = entropy_bits(joint.sum(0))
    h_cond = sum(row.sum() / joint.sum() * entropy_bits(row) for row in joint if row.sum())
    return (h_l - h_cond) / h_l


def onset_f1(tokens: np.ndarray, onset: np.ndarray) -> float:
    pred = np.zeros_like(onset)
    pred[1:] = tokens[1:] != tokens[:-1]
    near = lambda a: a | np.roll(a, 1) | np.roll(a, -1)  # noqa: E731
    tp_p = (pred & near(onset)).sum()
    tp_r = (onset & near(pred)).sum()
    prec = tp_p / max(pred.sum(), 1)
    rec = tp_r / max(onset.sum(), 1)
    return float(2 * prec * rec / max(prec + rec, 1e-12))


def agreement(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    return int((a[mask] == b[mask]).sum()), int(mask.sum())


def score(tok: dict, gt: dict, seen: list[int], unseen: list[int], programs: list[str]) -> dict:
    """tok[(tune, render)] uint16 [T]; gt[tune] = (pc, onset)."""
    eq = tot = 0
    for i in unseen:
        m = gt[i][0] >= 0
        for a, b in itertools.combinations(programs, 2):
            e, t = agreement(tok[i, a], tok[i, b], m)
            eq, tot = eq + e, tot + t
    xt = eq / tot
    eq = tot = 0
    for i, j in itertools.combinations(unseen, 2):
        n = min(len(gt[i][0]), len(gt[j][0]))
        m = (gt[i][0][:n] >= 0) & (gt[j][0][:n] >= 0)
        for p in programs:
            e, t = agreement(tok[i, p][:n], tok[j, p][:n], m)
            eq, tot = eq + e, tot + t
    chance = eq / tot
    eq = tot = 0
    for i in unseen:
        e, t = agreement(tok[i, "piano"], tok[i, "transposed"], gt[i][0] >= 0)
        eq, tot = eq + e, tot + t
    transp = eq / tot
    # token → majority pitch class on the seen tunes
    votes: dict[int, np.ndarray] = {}
    for i in seen:
        m = gt[i][0] >= 0
        for p in programs:
            for t, c in zip(tok[i, p][m], gt[i][0][m]):
                votes.setdefault(int(t), np.zeros(12))[c] += 1
    guess = {t: int(v.argmax()) for t, v in votes.items()}
    toks, pcs, insts, f1s = [], [], [], []
    for i in unseen:
        m = gt[i][0] >= 0
        for pi, p in enumerate(programs):
            toks.append(tok[i, p][m])
            pcs.append(gt[i][0][m])
            insts.append(np.full(m.sum(), pi))
            f1s.append(onset_f1(tok[i, p], gt[i][1]))
    toks, pcs, insts = np.concatenate(toks), np.concatenate(pcs), np.concatenate(insts)
    pred = np.array([guess.get(int(t), -1) for t in toks])
    return {"xtimbre": xt, "chance": chance, "ratio": xt / max(chance, 1e-9), "transp": transp,
            "pc_acc": float((pred == pcs).mean()), "ih_pc": info_ratio(toks, pcs),
            "ih_inst": info_ratio(toks, insts), "onset_f1": float(np.mean(f1s)), "n_frames": int(len(toks))}


# ---- main -----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opus", default="essenFolksong/altdeu10", help="music21 corpus opus of monophonic tunes")
    ap.add_argument("--tunes", type=int, default=24, help="tunes to render (default %(default)s)")
    ap.add_argument("--unseen", type=int, default=8, help="of which held out of every fit (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=12.0, help="seconds per tune (default %(default)s)")
    ap.add_argument("--transpose", type=int, default=5, help="negative control: semitones up (default %(default)s)")
    ap.add_argument("--k", type=int, nargs="+", default=[64, 256], help="codebook sizes (default 64 256)")
    ap.add_argument("--ssl", action="append", default=[], metavar="NAME=DIR",
                    help="also measure an SSL extractor (w2v-bert or hubert) loaded from DIR")
    ap.add_argument("--melodic", metavar="FILE", help="melodic extractor weights (default: the packaged ones)")
    ap.add_argument("--only", nargs="+", help="measure only these extractors (labels)")
    ap.add_argument("--work", default="/tmp/tokenmill-bench-semantic", help="render cache (default %(default)s)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    # the default compute layout of tokenize: one torch thread, portable (AVX2) kernels
    compute.apply(compute.ComputeLayout(threads=1, kernels="portable"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tunes = load_tunes(args.opus, args.tunes, 24, work)
    if len(tunes) < args.tunes:
        raise SystemExit(f"{args.opus}: only {len(tunes)} usable tunes; lower --tunes")
    # seen/unseen by a hash of the tune id, so the split does not depend on --tunes
    order = sorted(range(len(tunes)), key=lambda i: hashlib.sha256(tunes[i]["id"].encode()).hexdigest())
    unseen, seen = sorted(order[:args.unseen]), sorted(order[args.unseen:])
    programs = list(PROGRAMS)
    renders = [(p, PROGRAMS[p], 0) for p in programs] + [("transposed", 0, args.transpose)]
    t0 = time.perf_counter()
    audio, gt = {}, {}
    for i, tune in enumerate(tunes):
        for name, prog, tr in renders:
            audio[i, name] = render(tune, i, prog, tr, args.seconds, work / f"{i:03d}-{prog}-{tr}.wav")
        gt[i] = ground_truth(tune, i, len(audio[i, "piano"]) // HOP)
    seconds_audio = sum(len(x) for x in audio.values()) / SR
    log(f"{len(tunes)} tunes x {len(renders)} renders = {seconds_audio / 60:.1f} min of audio "
        f"({time.perf_counter() - t0:.0f} s incl. rendering); seen {len(seen)}, unseen {len(unseen)}")
    extractors = [("spectral", "spectral", {}, None), ("chroma", "spectral", {}, "chroma"),
                  ("basic-pitch", "basic-pitch", {}, None),
                  ("melodic", "melodic", {"path": args.melodic} if args.melodic else {}, None)]
    if importlib.util.find_spec("onnxruntime"):  # the same model under onnxruntime: features and speed
        extractors.append(("basic-pitch (onnxruntime)", "basic-pitch", {"runtime": "onnxruntime"}, None))
    for spec in args.ssl:
        name, _, path = spec.partition("=")
        extractors.append((name, name, {"path": path}, None))
    if args.only:
        extractors = [e for e in extractors if e[0] in args.only]
    results = []
    for label, name, kw, cols in extractors:
        ex = build_extractor(name, **kw)
        t = time.perf_counter()
        feats = {key: ex.extract(x) for key, x in audio.items()}
        speed = seconds_audio / (time.perf_counter() - t)
        if cols:
            a, b = ex.layout()[cols]
            feats = {key: f[:, a:b] for key, f in feats.items()}
        standardize = bool(ex.describe().get("standardize", False))
        train = np.concatenate([feats[i, p] for i in seen for p in programs])
        for k in args.k:
            if len(train) < 39 * k:
                log(f"{label} k={k}: {len(train)} training frames < 39 per centroid; skipped")
                continue
            cb = fit_kmeans(train, k, seed=0, standardize=standardize)
            tok = {key: cb.assign(f) for key, f in feats.items()}
            r = {"extractor": label, "k": k, "x_rt": speed, **score(tok, gt, seen, unseen, programs)}
            results.append(r)
            log(f"{label} k={k}: {json.dumps({a: round(b, 3) if isinstance(b, float) else b for a, b in r.items()})}")
    print(f"\n{len(unseen)} unseen tunes x {len(programs)} programs ({', '.join(programs)}), "
          f"{args.seconds:.0f} s each; codebooks fitted on {len(seen)} other tunes; transposition +{args.transpose}")
    print("| extractor | k | xtimbre | chance | ratio | transp | pc_acc | I/H pc | I/H inst | onset F1 | x RT/thread |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['extractor']} | {r['k']} | {r['xtimbre']:.3f} | {r['chance']:.3f} | {r['ratio']:.1f}x | "
              f"{r['transp']:.3f} | {r['pc_acc']:.2f} | {r['ih_pc']:.2f} | {r['ih_inst']:.2f} | "
              f"{r['onset_f1']:.2f} | {r['x_rt']:.0f} |")
    print(f"(frames scored per row: {results[0]['n_frames'] if results else 0}; "
          "goal at k=64: xtimbre >= 0.5 and >= 5x chance, I/H pc >= 0.9, I/H inst <= 0.2)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
