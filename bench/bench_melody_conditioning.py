"""Does a melody-conditioned semantic stage follow the hum? A tiny end-to-end measurement on one CPU.

    score tunes (music21 Essen folk songs) ── FluidSynth, several GM programs and transpositions ──►
      training renders ──► semantic tokens (basic-pitch extractor, k-means k) + melody tokens
      (basic-pitch melody model, 4 s windows at 1 s stride, RVQ S x K) ──► records
      ──► crops (tokenmill.training.crops: 10 s, melody windows at a 3 s hop) ──► a tiny semantic stage
    held-out tunes rendered as hum stand-ins ("Voice Oohs", "Whistle", "Ocarina") ──► melody tokens
      ──► run_stage (tokenmill.training.generate, the generation code) ──► generated semantic tokens

What is measured, per held-out hum, on 10 s (250 frames at 25 Hz):
- The semantic tokens are not decoded to audio: the acoustic stages and the codec are far too slow
  to train on this CPU. PROXY: each semantic token stands for the mean basic-pitch pitch-class profile
  (the 12 note_pc features of the basic-pitch extractor) of the training frames it was assigned to.
  The generated tokens are mapped through that table, frame by frame, and compared with the hum's
  own basic-pitch pitch-class profile (the same pitch tracker, on the hum's audio).
- `frame pc agreement`: share of the hum's voiced frames (largest note_pc >= 0.5 of its scale)
  where the argmax pitch class of the generated token's profile equals the hum's.
- `pc histogram corr`: correlation of the two 12-bin pitch-class histograms over the 10 s (time-free).
- `conditioned`: generated from the hum's own melody tokens; `control`: the same model and seed,
  given the melody tokens of a *different* held-out hum (compared with the original hum); `oracle`:
  the hum's own semantic tokens (its tokenized audio) through the proxy, the ceiling of the metric;
  `other tune`: the control hum's own tokens against this hum, what reproducing the wrong melody
  perfectly scores (the chance level of the metric on these tunes).
No MuLan tokens: the stage is conditioned on melody only (M would need the MuLan tower on renders).
The RVQ is smaller than the stream's 24 x 512 (few windows to fit on): --rvq_stages x --rvq_k.

    PYTHONPATH=. python bench/bench_melody_conditioning.py [--tunes 24 --unseen 6 --steps 800]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.corpus.score_render import load_tunes, log, render  # noqa: E402

TRAIN_PROGRAMS = (0, 40, 73, 71)  # piano, violin, flute, clarinet
HUM_PROGRAMS = (53, 78, 79)  # Voice Oohs, Whistle, Ocarina: stand-ins for humming/whistling
TRANSPOSE = (0, 3, -4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opus", default="essenFolksong/altdeu10")
    ap.add_argument("--tunes", type=int, default=24, help="tunes (default %(default)s)")
    ap.add_argument("--unseen", type=int, default=6, help="held-out tunes, rendered as hums (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--k", type=int, default=64, help="semantic k-means size (default %(default)s)")
    ap.add_argument("--rvq_stages", type=int, default=8)
    ap.add_argument("--rvq_k", type=int, default=64)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/work/cache/melody-stream/bench", help="render cache (default %(default)s)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from tokenmill.schemas import rates
    from tokenmill.schemas.records import TrackRecord
    from tokenmill.tokenizers.kmeans import fit_kmeans
    from tokenmill.tokenizers.melody import build_melody
    from tokenmill.tokenizers.melody_tokens import window_tokens
    from tokenmill.tokenizers.rvq import fit_rvq
    from tokenmill.tokenizers.semantic import build_extractor
    from tokenmill.training.crops import CropConfig, StageCropper, StreamLayout
    from tokenmill.training.generate import GenerateConfig, StageModel, run_stage
    from tokenmill.training.model import Transformer, preset
    from tokenmill.training.stages import IGNORE, StageLayout, stage_batch

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    tunes = load_tunes(args.opus, args.tunes, 24, work)
    n_train = len(tunes) - args.unseen
    sem_x, mel_m = build_extractor("basic-pitch"), build_melody("basic-pitch")

    def features(i: int, prog: int, tr: int):
        wave = render(tunes[i], i, prog, tr, args.seconds, work / f"{i:03d}-{prog}-{tr}.wav")
        cache = work / f"{i:03d}-{prog}-{tr}.feat.npz"
        if cache.exists():
            z = np.load(cache)
            return z["sem"], z["mel"]
        sem, mel = sem_x.extract(wave), mel_m.embed_windows(wave)
        np.savez(cache, sem=sem, mel=mel)
        return sem, mel

    t0 = time.monotonic()
    train = [(i, p, tr, *features(i, p, tr)) for i in range(n_train) for p in TRAIN_PROGRAMS for tr in TRANSPOSE]
    hums = [(i, p, 0, *features(i, p, 0)) for i in range(n_train, len(tunes)) for p in HUM_PROGRAMS]
    # the control of hum (tune i, program p): the melody tokens of the hum of the next held-out tune, same program
    control_of = [next(k for k, g in enumerate(hums) if g[0] == n_train + (h[0] - n_train + 1) % args.unseen
                       and g[1] == h[1]) for h in hums]
    t_feat = time.monotonic() - t0
    log(f"{len(train)} training renders, {len(hums)} hums: features in {t_feat:.0f} s")

    sem_all = np.concatenate([t[3] for t in train])
    cb = fit_kmeans(sem_all, args.k, seed=args.seed, kind="semantic")
    mel_all = np.concatenate([t[4] for t in train]).astype(np.float16).astype(np.float32)
    rvq = fit_rvq(mel_all, n_stages=args.rvq_stages, k=args.rvq_k, seed=args.seed, kind="melody")
    pc = slice(0, 12)  # note_pc features of the basic-pitch extractor
    labels = cb.assign(sem_all)
    token_pc = np.zeros((args.k, 12))
    np.add.at(token_pc, labels, sem_all[:, pc])
    token_pc /= np.maximum(np.bincount(labels, minlength=args.k), 1)[:, None]

    base = StreamLayout.builtin()
    streams = StreamLayout(base.semantic, base.acoustic, base.n_q, base.coarse_levels, base.fine_levels,
                           args.k, base.acoustic_vocab, args.rvq_stages, args.rvq_k)
    crop_cfg = CropConfig(semantic_s=10, mulan_stages=(), melody_stages=("semantic",), melody_dropout=0.1)
    layout = StageLayout.build("semantic", streams, crop_cfg)

    def record(n: int, sem: np.ndarray, mel: np.ndarray) -> TrackRecord:
        m16 = mel.astype(np.float16)
        return TrackRecord(key=f"{n:08x}-0000", uri=str(n), segment=0, start_s=0.0,
                           duration_s=sem.shape[0] / 25, source_sample_rate=16_000, source_channels=1, split="train",
                           semantic=cb.assign(sem).astype(np.uint16), melody_windows=m16, melody=window_tokens(m16, rvq))

    records = [record(n, t[3], t[4]) for n, t in enumerate(train)]
    cropper = StageCropper("semantic", streams, crop_cfg, seed=args.seed)
    torch.manual_seed(args.seed)
    model = Transformer(preset("tiny", layout.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    tgt = layout.target
    rng = np.random.default_rng(args.seed)
    t0, losses = time.monotonic(), []
    log(f"semantic stage: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, sequence "
        f"{layout.sequence_length} ({layout.prefix_length} prefix: BOS + {args.rvq_stages} x "
        f"{layout.part('melody').frames} melody tokens)")
    for step in range(args.steps):
        idx = rng.integers(0, len(records), args.batch)
        seqs = [layout.crop_sequence(cropper(records[i], epoch=step, index=int(i))) for i in idx]
        inputs, targets = stage_batch(layout, seqs)
        inputs, targets = torch.as_tensor(inputs), torch.as_tensor(targets)
        loss_sum = model(inputs, targets=targets, target_block=(tgt.offset, tgt.levels, tgt.vocab),
                         ignore_index=IGNORE)
        loss = loss_sum / (targets != IGNORE).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 250 == 0 or step == args.steps - 1:
            log(f"step {step}: loss {np.mean(losses[-50:]):.3f} ({time.monotonic() - t0:.0f} s)")
    t_train = time.monotonic() - t0
    model.eval()

    sm = StageModel(model, layout, {"stage": "semantic"}, "bench")
    gcfg = GenerateConfig(seconds=10.0, seed=args.seed, temperature_semantic=args.temperature)
    n_frames = 250

    def generate(mel_tokens: np.ndarray) -> np.ndarray:
        cond = {"melody": mel_tokens[None], "melody_q": np.array([int(args.seconds * 25)])}
        with torch.no_grad():
            out, _ = run_stage(sm, streams, cond, gcfg, 1)
        return out[0, 0, :n_frames]

    def agreement(tokens: np.ndarray, hum_pc: np.ndarray) -> tuple[float, float]:
        prof = token_pc[tokens]
        voiced = hum_pc.max(1) >= 0.5 * hum_pc.max()
        frame = float((prof[voiced].argmax(1) == hum_pc[voiced].argmax(1)).mean())
        hist_a = np.bincount(prof[voiced].argmax(1), minlength=12)
        hist_b = np.bincount(hum_pc[voiced].argmax(1), minlength=12)
        return frame, float(np.corrcoef(hist_a, hist_b)[0, 1])

    rows = {"conditioned": [], "control": [], "oracle": [], "other tune": []}
    hum_tokens = [window_tokens(h[4].astype(np.float16), rvq) for h in hums]
    for j, h in enumerate(hums):
        hum_pc = h[3][:n_frames, pc]
        rows["conditioned"].append(agreement(generate(hum_tokens[j]), hum_pc))
        rows["control"].append(agreement(generate(hum_tokens[control_of[j]]), hum_pc))
        rows["oracle"].append(agreement(cb.assign(h[3])[:n_frames], hum_pc))
        rows["other tune"].append(agreement(cb.assign(hums[control_of[j]][3])[:n_frames], hum_pc))
    diff = np.asarray(rows["conditioned"])[:, 0] - np.asarray(rows["control"])[:, 0]

    print(f"\nmelody-conditioned semantic stage, {len(train)} training renders ({n_train} tunes x "
          f"{len(TRAIN_PROGRAMS)} programs x {len(TRANSPOSE)} transpositions, {args.seconds:g} s each), "
          f"{len(hums)} held-out hums ({args.unseen} tunes x GM programs {', '.join(str(p) for p in HUM_PROGRAMS)}), "
          f"{args.steps} steps x "
          f"{args.batch}, final loss {np.mean(losses[-50:]):.3f} (first {np.mean(losses[:50]):.3f})")
    print(f"semantic k={args.k} (basic-pitch extractor), melody RVQ {args.rvq_stages} x {args.rvq_k} over "
          f"basic-pitch melody windows; sampling T={args.temperature}, seed {args.seed}")
    print(f"{'':<14}{'frame pc agreement':>20}{'pc histogram corr':>20}")
    for name, r in rows.items():
        a = np.asarray(r)
        print(f"{name:<14}{a[:, 0].mean():>14.3f} ±{a[:, 0].std(ddof=1) / np.sqrt(len(a)):.3f}"
              f"{a[:, 1].mean():>14.3f} ±{a[:, 1].std(ddof=1) / np.sqrt(len(a)):.3f}")
    print(f"conditioned - control frame agreement (paired over hums): {diff.mean():+.3f} ±{diff.std(ddof=1) / np.sqrt(len(diff)):.3f}"
          f" ({(diff > 0).sum()} of {len(diff)} hums higher); ratio "
          f"{np.mean([r[0] for r in rows['conditioned']]) / max(1e-9, np.mean([r[0] for r in rows['control']])):.2f}x. "
          "'other tune': the control hum's own tokens against this hum (what copying the wrong melody scores)")
    print(f"time: features {t_feat:.0f} s, training {t_train:.0f} s, total {time.monotonic() - t_start:.0f} s "
          "(1 torch thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
