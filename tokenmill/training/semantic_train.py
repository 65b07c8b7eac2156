r"""Train the built-in melodic semantic extractor (tokenizers/semantic_builtin.py) on score renders.

    tokenmill train-semantic --renders RENDERS --output RUN [--steps N] [--resume]
    tokenmill train-semantic --export RUN/ckpt-latest.pt \
        --output tokenmill/weights/semantic-default.safetensors

`add_args(parser)` and `run(args)` are the library entry points (a CLI wires them); errors are
`SemanticTrainError` (a TokenmillError); only the CLI ends the process.

Data: RENDERS/index.json as scripts/corpus/semantic_pairs.py writes it: WAVs of score segments,
each tune rendered with the same notes on several General MIDI programs and velocities, plus
transposed renders; per 40 ms frame the sounding MIDI pitch (-1 = none) and onsets. The model's
fixed front end (grid dB at 25 Hz) is computed once per WAV and cached as float16 under --cache.
Tunes whose sha256(id) falls in the first `--heldout_percent` are validation only.

Step k, from (seed, k) alone (so `--resume` continues exactly): B distinct training tunes; for
each, two different same-note renders (views a and b) and, where the tune has one, a transposed
render, all cropped at the same `--crop_s` window; half the tunes are moved by up to
`--max_shift` semitones (the grid is half semitones, so a shift is exact up to formants; all views
of the tune move together and the labels follow). Each sequence gets its own augmentation in the
power domain: gain (-20..+10 dB), a smooth random EQ (±6 dB, low-order cosines over log
frequency), and in half the cases a noise floor with a random tilt at 10-40 dB SNR. Views a and
the transposed render get HuBERT-style span masks (5-frame spans, ~`--mask_prob` of the frames
start one): masked input columns are set to the per-bin mean (0 after standardization).

Loss (`frame_losses`, on the L2-normalized features z):
  contrastive  InfoNCE at temperature tau, both directions: an anchor frame of view a has the
               aligned frame of view b (same tune, same time) as its positive; every frame of
               view b and of the transposed renders in the batch is a candidate negative, except
               frames with the anchor's own label (same MIDI pitch and both onset frames or both
               not, or both silent), which are left out (not negatives: the same note elsewhere is
               not a different melody). Onset frames of a pitch are negatives for its held frames,
               so a repeated note changes the token.
               The transposed render's aligned frame is thus a hard negative: same rhythm and
               instrument, another pitch. And symmetrically from view b.
  masked pred. a linear head on z predicts the frame's pitch class (13 classes: 12 + none) on
               every frame of views a and b, with masked frames weighted `mask_weight`× (they
               must be inferred from context), plus a linear onset head (binary, pos_weight 4):
               rhythm and note identity stay linearly readable in the token.
AdamW, linear warm-up then cosine decay, gradient clipping. Checkpoint every `--ckpt_every`
steps to RUN/ckpt-latest.pt (model, heads, optimizer, step, arguments).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from tokenmill.errors import TokenmillError
from tokenmill.tokenizers.semantic_builtin import (
    MelodicNet,
    MelodicNetConfig,
    config_from_json,
    save_weights,
)

CKPT_FORMAT = "tokenmill.semantic_train.v1"
N_PC = 13  # 12 pitch classes + none


class SemanticTrainError(TokenmillError, RuntimeError):
    """Bad training input or checkpoint; the message names the file and the fix."""


@dataclass(frozen=True)
class TrainArgs:
    seed: int = 0
    steps: int = 1500
    batch: int = 12  # tunes per step (2 views each, + a transposed render where there is one)
    crop_s: float = 3.0
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    tau: float = 0.1
    mask_prob: float = 0.04  # per 25 Hz frame: a 5-frame masked span starts here
    mask_span: int = 5
    pc_weight: float = 0.5
    onset_weight: float = 1.0
    mask_weight: float = 3.0
    heldout_percent: int = 5
    max_shift: int = 5  # semitones: half the tunes of a step are transposed by up to this
    onset_labels: bool = True  # onset frames get their own contrastive label


# ---- data ------------------------------------------------------------------------------------

@dataclass
class Render:
    tune: str
    transpose: int
    grid: np.ndarray  # float16 [n_base_bins, T] raw dB at 25 Hz
    midi: np.ndarray  # int16 [T], -1 = none
    onset: np.ndarray  # bool [T]


def is_heldout(tune_id: str, percent: int) -> bool:
    return int(hashlib.sha256(tune_id.encode()).hexdigest()[:8], 16) % 100 < percent


class RenderSet:
    """Renders grouped by tune: `same[tune]` (transpose 0) and `shifted[tune]` (transposed)."""

    def __init__(self, renders: list[Render], heldout_percent: int):
        self.renders = renders
        self.same: dict[str, list[int]] = {}
        self.shifted: dict[str, list[int]] = {}
        for i, r in enumerate(renders):
            (self.same if r.transpose == 0 else self.shifted).setdefault(r.tune, []).append(i)
        tunes = sorted(t for t, v in self.same.items() if len(v) >= 2)
        self.train_tunes = [t for t in tunes if not is_heldout(t, heldout_percent)]
        self.val_tunes = [t for t in tunes if is_heldout(t, heldout_percent)]
        if not self.train_tunes:
            raise SemanticTrainError("no training tune has two same-note renders; render more "
                                     "(scripts/corpus/semantic_pairs.py --renders 5)")

    @staticmethod
    def from_waves(items: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]], net: MelodicNet,
                   heldout_percent: int = 0) -> "RenderSet":
        """items: (tune id, transpose, wave float32 [n] 16 kHz, midi int [n // 640], onset bool)."""
        out = []
        for tune, tr, wave, midi, onset in items:
            out.append(Render(tune, tr, grid_db(net, wave), np.asarray(midi, np.int16), np.asarray(onset, bool)))
        return RenderSet(out, heldout_percent)

    def stats(self, max_frames: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
        """Per-bin mean and std of the grid dB over (a strided sample of) all frames."""
        cols = np.concatenate([r.grid.astype(np.float32) for r in self.renders], axis=1)
        cols = cols[:, :: max(1, cols.shape[1] // max_frames)]
        return cols.mean(1), np.maximum(cols.std(1), 1.0)


def grid_db(net: MelodicNet, wave: np.ndarray) -> np.ndarray:
    n = len(wave) // 640 * 640
    with torch.inference_mode():
        g = net.front(torch.from_numpy(np.ascontiguousarray(wave[:n], np.float32))[None])[0]
    return g.numpy().astype(np.float16)


def load_renders(index: Path, net: MelodicNet, cache: Path, heldout_percent: int, log: Callable) -> RenderSet:
    if not index.is_file():
        raise SemanticTrainError(f"{index} not found: render the training set first with "
                                 "scripts/corpus/semantic_pairs.py --out DIR")
    rows = json.loads(index.read_text())
    import soundfile as sf

    cfg = net.cfg
    tag = f"25Hz|{cfg.n_fft}|{cfg.base_midi}|{cfg.n_base_bins}|{cfg.min_width_bins}|{cfg.amin}"
    cache.mkdir(parents=True, exist_ok=True)
    renders, t0 = [], time.time()
    for n, row in enumerate(rows):
        if "midi" not in row:
            raise SemanticTrainError(f"{index}: row {n} has no 'midi'; re-run scripts/corpus/semantic_pairs.py")
        wav = index.parent / row["wav"]
        f = cache / (hashlib.sha1(f"{wav.resolve()}|{tag}".encode()).hexdigest()[:20] + ".npy")
        if f.exists():
            g = np.load(f)
        else:
            x, sr = sf.read(str(wav), dtype="float32", always_2d=True)
            if sr != 16000:
                raise SemanticTrainError(f"{wav}: {sr} Hz, want 16000; re-render it")
            x = x.mean(1)
            t = len(row["midi"])
            g = grid_db(net, np.pad(x, (0, max(0, t * 640 - len(x))))[: t * 640])
            tmp = f.with_name(f.stem + ".tmp.npy")
            np.save(tmp, g)
            os.replace(tmp, f)
        renders.append(Render(row["tune"], int(row["transpose"]), g, np.asarray(row["midi"], np.int16),
                              np.asarray(row["onset"], bool)))
        if n % 200 == 0:
            log(f"front end: {n + 1}/{len(rows)} renders ({time.time() - t0:.0f} s)")
    return RenderSet(renders, heldout_percent)


# ---- batches ---------------------------------------------------------------------------------

def augment(rng: np.random.Generator, grid_db: np.ndarray) -> np.ndarray:
    """Gain, smooth EQ and an optional tilted noise floor, in the power domain. [F, T] → [F, T]."""
    f = grid_db.shape[0]
    pos = np.linspace(0.0, 1.0, f)[:, None]
    eq = sum(rng.uniform(-6, 6) / 3 * np.cos(np.pi * k * pos + rng.uniform(0, 2 * np.pi)) for k in (1, 2, 3))
    db = grid_db.astype(np.float32) + np.float32(rng.uniform(-20, 10)) + eq.astype(np.float32)
    p = np.power(np.float32(10.0), db / 10)
    if rng.random() < 0.5:
        level = 10 * np.log10(p.mean() + 1e-12) - rng.uniform(10, 40)
        tilt = rng.uniform(-1.0, 0.0) * 30 * pos  # dB over the grid, darker at the top
        p = p + np.power(10.0, (level + tilt) / 10).astype(np.float32)
    return (10 * np.log10(p + np.float32(1e-10))).astype(np.float32)


def shift_grid(grid: np.ndarray, semitones: int) -> np.ndarray:
    """Move a grid [F, T] (half-semitone bins) up by `semitones`, filling with silence (-100 dB)."""
    k = 2 * semitones
    if k == 0:
        return grid
    out = np.full_like(grid, -100.0)
    if k > 0:
        out[k:] = grid[:-k]
    else:
        out[:k] = grid[-k:]
    return out


def span_mask(rng: np.random.Generator, t: int, prob: float, span: int) -> np.ndarray:
    """bool [t] at 25 Hz: spans of `span` frames starting where a draw < prob."""
    m = np.zeros(t, bool)
    for s in np.flatnonzero(rng.random(t) < prob):
        m[s:s + span] = True
    return m


@dataclass
class Batch:
    grid: torch.Tensor  # [N, F, T] raw dB (augmented, masked columns set to the bin mean)
    labels: torch.Tensor  # int64 [N, T] contrastive label: 2·MIDI + onset, -1 none
    pc: torch.Tensor  # int64 [N, T] 0..11, 12 none
    onset: torch.Tensor  # float [N, T]
    masked: torch.Tensor  # bool [N, T]
    n_pairs: int  # rows [0, B) view a, [B, 2B) view b, [2B, N) transposed


def make_batch(data: RenderSet, tunes: list[str], step: int, a: TrainArgs, mean_db: np.ndarray,
               seed: int | None = None) -> Batch:
    rng = np.random.default_rng([a.seed if seed is None else seed, step])
    pick = rng.choice(len(tunes), size=min(a.batch, len(tunes)), replace=False)
    t = int(round(a.crop_s * 25))
    views: list[list[tuple[int, int]]] = [[], [], []]  # (render, start frame)
    for i in pick:
        tune = tunes[int(i)]
        ra, rb = rng.choice(data.same[tune], size=2, replace=False)
        n = min(len(data.renders[ra].midi), len(data.renders[rb].midi))
        shifted = data.shifted.get(tune, [])
        rt = int(rng.choice(shifted)) if shifted else None
        if rt is not None:
            n = min(n, len(data.renders[rt].midi))
        s = int(rng.integers(0, max(1, n - t + 1)))
        views[0].append((int(ra), s))
        views[1].append((int(rb), s))
        if rt is not None:
            views[2].append((rt, s))
    # a transposition per tune, shared by its views: the grid moves by 2 bins per semitone
    shift = [int(rng.integers(-a.max_shift, a.max_shift + 1)) if rng.random() < 0.5 else 0 for _ in pick]
    shifts = shift + shift + [shift[j] for j, i in enumerate(pick) if data.shifted.get(tunes[int(i)])]
    rows = views[0] + views[1] + views[2]
    grids, labels, pcs, onsets, masks = [], [], [], [], []
    for v, (ri, s) in enumerate(rows):
        r = data.renders[ri]
        g = shift_grid(r.grid[:, s: s + t], shifts[v])
        lab = r.midi[s:s + t].astype(np.int64)
        lab = np.where(lab >= 0, lab + shifts[v], -1)
        on = r.onset[s:s + t]
        if g.shape[1] < t:  # a short render: pad with the silence level
            g = np.pad(g, ((0, 0), (0, t - g.shape[1])), constant_values=-100.0)
            lab = np.pad(lab, (0, t - len(lab)), constant_values=-1)
            on = np.pad(on, (0, t - len(on)))
        g = augment(rng, g)
        m = span_mask(rng, t, a.mask_prob, a.mask_span) if (v < len(views[0]) or v >= 2 * len(views[0])) \
            else np.zeros(t, bool)
        g[:, m] = mean_db[:, None]
        grids.append(g)
        # contrastive label: the pitch, and whether the frame starts its note (an onset frame is not
        # interchangeable with the held part of the same pitch: rhythm stays in the token)
        labels.append(np.where(lab >= 0, 2 * lab + (on if a.onset_labels else 0), -1))
        pcs.append(np.where(lab >= 0, lab % 12, 12))
        onsets.append(on.astype(np.float32))
        masks.append(m)
    return Batch(torch.from_numpy(np.stack(grids)), torch.from_numpy(np.stack(labels)),
                 torch.from_numpy(np.stack(pcs)), torch.from_numpy(np.stack(onsets)),
                 torch.from_numpy(np.stack(masks)), len(views[0]))


# ---- loss ------------------------------------------------------------------------------------

class Heads(nn.Module):
    """Training-only linear read-outs of the features: pitch class (13) and onset (1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.pc = nn.Linear(dim, N_PC)
        self.onset = nn.Linear(dim, 1)


def info_nce(anchor: torch.Tensor, cand: torch.Tensor, a_lab: torch.Tensor, c_lab: torch.Tensor,
             tau: float) -> torch.Tensor:
    """Mean InfoNCE. anchor [M, D] whose positive is cand[m] (m < M); cand [K, D], K >= M.
    Candidates other than the positive that share the anchor's label are left out."""
    logits = anchor @ cand.T / tau  # [M, K]
    m = anchor.shape[0]
    same = a_lab[:, None] == c_lab[None, :]
    same[torch.arange(m), torch.arange(m)] = False
    logits = logits.masked_fill(same, float("-inf"))
    return nn.functional.cross_entropy(logits, torch.arange(m))


def frame_losses(z: torch.Tensor, batch: Batch, heads: Heads, a: TrainArgs) -> dict[str, torch.Tensor]:
    """z [N, T, D] L2-normalized features of the batch's rows → the loss terms and their total."""
    b, d = batch.n_pairs, z.shape[-1]
    za, zb, zt = z[:b].reshape(-1, d), z[b:2 * b].reshape(-1, d), z[2 * b:].reshape(-1, d)
    la, lb, lt = batch.labels[:b].reshape(-1), batch.labels[b:2 * b].reshape(-1), batch.labels[2 * b:].reshape(-1)
    nce = 0.5 * (info_nce(za, torch.cat([zb, zt]), la, torch.cat([lb, lt]), a.tau)
                 + info_nce(zb, torch.cat([za, zt]), lb, torch.cat([la, lt]), a.tau))
    zp = z[:2 * b]
    w = 1.0 + (a.mask_weight - 1.0) * batch.masked[:2 * b].float()
    pc = (nn.functional.cross_entropy(heads.pc(zp).transpose(1, 2), batch.pc[:2 * b], reduction="none") * w).sum() / w.sum()
    onset = nn.functional.binary_cross_entropy_with_logits(
        heads.onset(zp)[..., 0], batch.onset[:2 * b], pos_weight=torch.tensor(4.0))
    total = nce + a.pc_weight * pc + a.onset_weight * onset
    return {"loss": total, "nce": nce, "pc": pc, "onset": onset}


# ---- training loop ---------------------------------------------------------------------------

def lr_at(step: int, a: TrainArgs) -> float:
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    p = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def save_ckpt(path: Path, net: MelodicNet, heads: Heads, opt, step: int, a: TrainArgs) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CKPT_FORMAT, "net": net.state_dict(), "heads": heads.state_dict(),
                "opt": opt.state_dict(), "step": step, "args": asdict(a),
                "config": json.dumps(asdict(net.cfg))}, tmp)
    os.replace(tmp, path)


def load_ckpt(path: Path) -> dict:
    if not path.is_file():
        raise SemanticTrainError(f"{path}: no checkpoint there (train first, or drop --resume)")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck.get("format") != CKPT_FORMAT:
        raise SemanticTrainError(f"{path} is not a semantic_train checkpoint (format {ck.get('format')!r})")
    return ck


def train(net: MelodicNet, heads: Heads, data: RenderSet, a: TrainArgs, out: Path | None = None,
          start: int = 0, opt: torch.optim.Optimizer | None = None, ckpt_every: int = 100,
          log_every: int = 10, log: Callable = print, until: int | None = None) -> list[float]:
    """Steps [start, until or a.steps) of an `a.steps`-step schedule; returns the losses.
    Checkpoints to out/ckpt-latest.pt if out (every `ckpt_every` steps and at the end)."""
    params = list(net.parameters()) + list(heads.parameters())
    opt = opt or torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
    mean_db = net.grid_mean[:, 0].numpy()
    losses, t0 = [], time.time()
    net.train()
    stop = a.steps if until is None else min(until, a.steps)
    for step in range(start, stop):
        batch = make_batch(data, data.train_tunes, step, a, mean_db)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        terms = frame_losses(net.forward_grid(batch.grid), batch, heads, a)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        nn.utils.clip_grad_norm_(params, a.grad_clip)
        opt.step()
        losses.append(float(terms["loss"].detach()))
        if out is not None and (step + 1) % log_every == 0:
            rec = {"step": step + 1, "lr": lr_at(step, a), "s": round(time.time() - t0, 1),
                   **{k: round(float(v), 4) for k, v in terms.items()}}
            if data.val_tunes and (step + 1) % (5 * log_every) == 0:
                rec["val"] = validate(net, heads, data, a, mean_db)
            log(json.dumps(rec))
        if out is not None and ((step + 1) % ckpt_every == 0 or step + 1 == stop):
            save_ckpt(out / "ckpt-latest.pt", net, heads, opt, step + 1, a)
    net.eval()
    return losses


def validate(net: MelodicNet, heads: Heads, data: RenderSet, a: TrainArgs, mean_db: np.ndarray) -> dict:
    """Loss terms on a fixed batch of held-out tunes, and the share of view-a frames whose nearest
    view-b frame (cosine) is the aligned one."""
    net.eval()
    with torch.no_grad():
        batch = make_batch(data, data.val_tunes, 0, a, mean_db, seed=12345)
        z = net.forward_grid(batch.grid)
        terms = frame_losses(z, batch, heads, a)
        b, d = batch.n_pairs, z.shape[-1]
        za, zb = z[:b].reshape(-1, d), z[b:2 * b].reshape(-1, d)
        top1 = float(((za @ zb.T).argmax(1) == torch.arange(len(za))).float().mean())
    net.train()
    return {**{k: round(float(v), 4) for k, v in terms.items()}, "aligned_top1": round(top1, 4)}


# ---- entry points ----------------------------------------------------------------------------

def _flag_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--renders", help="folder with index.json from scripts/corpus/semantic_pairs.py")
    p.add_argument("--output", "--out", dest="out", help="run folder: checkpoints, train.jsonl; with --export: the "
                   "weights file to write")
    p.add_argument("--cache", help="front-end cache folder (default OUT/cache)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt-latest.pt")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--ckpt_every", type=int, default=100)
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--export", help="a checkpoint to export as extractor weights (with --to)")
    p.add_argument("--to", help="weights file to write with --export (the older spelling of --output)")
    for f in fields(TrainArgs):
        kind = _flag_bool if isinstance(f.default, bool) else type(f.default)
        p.add_argument(f"--{f.name}", type=kind, default=f.default, help=f"(default {f.default})")
    return p


def export(ckpt: Path, to: Path) -> Path:
    ck = load_ckpt(ckpt)
    net = MelodicNet(config_from_json(ck["config"]))
    net.load_state_dict(ck["net"])
    return save_weights(net, to, {"trained_steps": str(ck["step"]), "train_args": json.dumps(ck["args"])})


def run(args: argparse.Namespace) -> dict:
    """Train (or export); returns a summary dict."""
    torch.set_num_threads(max(1, int(args.threads)))
    if args.export:
        to = args.to or args.out
        if not to:
            raise SemanticTrainError("--export needs --output FILE (e.g. tokenmill/weights/semantic-default.safetensors)")
        return {"exported": str(export(Path(args.export), Path(to)))}
    if not args.renders or not args.out:
        raise SemanticTrainError("training needs --renders DIR (with index.json) and --out RUN_DIR")
    a = TrainArgs(**{f.name: getattr(args, f.name) for f in fields(TrainArgs)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train.jsonl", "a")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    torch.manual_seed(a.seed)
    net, heads = MelodicNet(MelodicNetConfig()), None
    heads = Heads(net.cfg.dim)
    data = load_renders(Path(args.renders) / "index.json", net, Path(args.cache or out / "cache"),
                        a.heldout_percent, log)
    log(f"{len(data.renders)} renders; {len(data.train_tunes)} training tunes, {len(data.val_tunes)} held out")
    start, opt = 0, None
    if args.resume:
        ck = load_ckpt(out / "ckpt-latest.pt")
        net.load_state_dict(ck["net"])
        heads.load_state_dict(ck["heads"])
        opt = torch.optim.AdamW(list(net.parameters()) + list(heads.parameters()), lr=a.lr, weight_decay=a.weight_decay)
        opt.load_state_dict(ck["opt"])
        start = int(ck["step"])
        log(f"resumed at step {start}")
    else:
        mean, std = data.stats()
        net.grid_mean.copy_(torch.from_numpy(mean)[:, None])
        net.grid_std.copy_(torch.from_numpy(std)[:, None])
    losses = train(net, heads, data, a, out, start, opt, args.ckpt_every, args.log_every, log)
    logf.close()
    return {"steps": a.steps, "final_loss": losses[-1] if losses else None, "checkpoint": str(out / "ckpt-latest.pt")}
