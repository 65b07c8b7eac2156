r"""Train (and evaluate) the built-in MuLan (tokenizers/mulan_builtin.py) on captioned real music.

    tokenmill train-mulan --manifest CORPUS/manifest.jsonl --output RUN_DIR \
        [--steps N] [--batch B] [--threads T] [--resume]
    tokenmill train-mulan --export RUN_DIR/ckpt-latest.pt \
        --output tokenmill/weights/mulan-default.safetensors
    tokenmill train-mulan --manifest CORPUS/manifest.jsonl --output RUN_DIR \
        --eval tokenmill/weights/mulan-default.safetensors        # the model card's figures

Data: a corpus manifest as `python -m scripts.corpus.build --target large` writes it: JSON lines
with `file` (relative to the manifest's folder) and `caption` (built from metadata only). Held
out by the hash of the file name (`--heldout_percent`, default 15, the same rule as the codec trainer): the held-out
tracks are never seen in training and are the retrieval test set. Each file is decoded once
(tokenizers.audio: decode → mono → 16 kHz) and its raw log-mel (the model's own front end) is
cached as float16 [64, T] under RUN_DIR/cache; captions go through the frozen MiniLM once.

Step k draws B distinct training tracks and one random 10 s crop of each (any 20 ms offset; a
track shorter than 10 s is padded with the log-mel of silence, as zero-padding does at inference)
from (seed, k) alone, so `--resume` continues exactly. Light SpecAugment (2 time masks ≤ 1 s,
2 band masks ≤ 8 bands). Loss: symmetric InfoNCE with a learnt temperature; tracks whose captions
are identical count as positives of each other. AdamW, linear warm-up then cosine decay.

Evaluation (what the model card reports): each held-out track is embedded as tokenize does it:
the L2-normalized mean of its windows at a 1 s stride (`--eval_stride_s`; training-time checks use
5 s). Text→audio retrieval: for each held-out caption, the rank of its own track among all
held-out tracks by cosine similarity; R@1, R@10 and median rank beside the random baseline
(R@k = k / N), for all held-out tracks and for the score renders alone (exact captions).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tokenmill.errors import TokenmillError
from tokenmill.tokenizers import audio
from tokenmill.tokenizers.mulan_builtin import (
    MulanNet,
    MulanNetConfig,
    SentenceEncoder,
    load_net,
    save_mulan,
)
from tokenmill.training import schedule
from tokenmill.training.codec_train import is_heldout

CKPT_FORMAT = "tokenmill.mulan_train.v1"


class MulanTrainError(TokenmillError, ValueError):
    """A corpus manifest or setting the MuLan trainer refuses; the message names the fix."""


@dataclass(frozen=True)
class Pair:
    file: str  # absolute path
    caption: str
    kind: str  # corpus manifest's kind: "recording" | "score_render" | …


def read_pairs(manifest: Path) -> list[Pair]:
    root = manifest.parent
    out = []
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not row.get("file") or not row.get("caption"):
            raise MulanTrainError(f"{manifest}:{n} needs 'file' and 'caption' (one JSON object per line)")
        out.append(Pair(str(root / row["file"]), str(row["caption"]), str(row.get("kind", ""))))
    return sorted(out, key=lambda p: p.file)


def cached_logmel(path: str, net: MulanNet, cache_dir: Path) -> np.ndarray:
    """Raw log-mel float16 [n_mels, T] of one file at the model's rate (empty if undecodable)."""
    cfg = net.cfg
    tag = f"{os.path.abspath(path)}|{cfg.sample_rate_hz}|{cfg.n_fft}|{cfg.hop}|{cfg.n_mels}|{cfg.fmin_hz}|{cfg.fmax_hz}"
    f = cache_dir / (hashlib.sha1(tag.encode()).hexdigest()[:20] + ".npy")
    if f.exists():
        return np.load(f)
    try:
        dec = audio.decode(Path(path).read_bytes(), path)
        wave = audio.resample(audio.to_mono(dec.pcm), dec.sample_rate_hz, cfg.sample_rate_hz, "HQ")
        wave = np.pad(wave, (0, max(0, cfg.n_fft - len(wave))))
        with torch.inference_mode():
            mel = net.logmel(torch.from_numpy(np.ascontiguousarray(wave, np.float32))[None])[0].numpy()
        mel = mel.astype(np.float16)
    except audio.AudioError as e:
        print(f"skipping {path}: {e}", file=sys.stderr)
        mel = np.zeros((cfg.n_mels, 0), np.float16)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f.stem + ".tmp.npy")
    np.save(tmp, mel)
    os.replace(tmp, f)
    return mel


@dataclass(frozen=True)
class TrainArgs:
    seed: int = 0
    batch: int = 96
    steps: int = 2000
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 2.0
    heldout_percent: int = 15


class Data:
    """The cached log-mels and caption embeddings, split into train / held-out."""

    def __init__(self, pairs: list[Pair], net: MulanNet, cache_dir: Path, heldout_percent: int, log=print):
        t0 = time.time()
        mels = []
        for i, p in enumerate(pairs):
            mels.append(cached_logmel(p.file, net, cache_dir))
            if (i + 1) % 50 == 0 or i + 1 == len(pairs):
                log(f"  log-mel {i + 1}/{len(pairs)} files ({time.time() - t0:.0f} s)")
        keep = [i for i, m in enumerate(mels) if m.shape[1] > 0]
        self.pairs = [pairs[i] for i in keep]
        self.mels = [mels[i] for i in keep]
        self.held = np.array([is_heldout(p.file, heldout_percent) for p in self.pairs])
        captions = sorted({p.caption for p in self.pairs})
        self.caption_id = np.array([captions.index(p.caption) for p in self.pairs])
        self.captions = captions
        self.train_idx = np.flatnonzero(~self.held)
        self.held_idx = np.flatnonzero(self.held)
        self.silence = float(np.log(net.cfg.log_floor))

    def text_embeddings(self, cache_dir: Path) -> np.ndarray:
        """float32 [n_captions, 384] from the frozen MiniLM (cached by caption-set hash)."""
        h = hashlib.sha1("\n".join(self.captions).encode()).hexdigest()[:16]
        f = cache_dir / f"text-{h}.npy"
        if not f.exists():
            enc = SentenceEncoder()
            np.save(f, enc(self.captions))
        return np.load(f)

    def mel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band mean/std over every training frame (float64 accumulation)."""
        s = s2 = 0.0
        n = 0
        for i in self.train_idx:
            m = self.mels[i].astype(np.float64)
            s, s2, n = s + m.sum(1), s2 + (m * m).sum(1), n + m.shape[1]
        mean = s / n
        return mean.astype(np.float32), np.sqrt(np.maximum(s2 / n - mean * mean, 1e-6)).astype(np.float32)

    def crop(self, i: int, offset: int, frames: int) -> np.ndarray:
        m = self.mels[i][:, offset:offset + frames].astype(np.float32)
        if m.shape[1] < frames:
            m = np.pad(m, ((0, 0), (0, frames - m.shape[1])), constant_values=self.silence)
        return m

    def batch(self, step: int, a: TrainArgs, frames: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([a.seed, step])
        pick = rng.choice(self.train_idx, size=min(a.batch, len(self.train_idx)), replace=False)
        x = np.empty((len(pick), self.mels[0].shape[0], frames), np.float32)
        for j, i in enumerate(pick):
            t = self.mels[i].shape[1]
            x[j] = self.crop(i, int(rng.integers(0, max(1, t - frames + 1))), frames)
            for _ in range(2):  # SpecAugment-style masks, filled with the band mean (0 after standardizing)
                w = int(rng.integers(0, 51))
                o = int(rng.integers(0, frames - w + 1))
                x[j, :, o:o + w] = np.nan
                b = int(rng.integers(0, 9))
                ob = int(rng.integers(0, x.shape[1] - b + 1))
                x[j, ob:ob + b, :] = np.nan
        return x, pick


def lr_at(step: int, a: TrainArgs) -> float:
    """Linear warm-up, then cosine decay to 0 at a.steps (schedule.py)."""
    return schedule.lr_at(step, a.lr, warmup_steps=a.warmup, total_steps=a.steps, kind="cosine")


def contrastive_loss(net: MulanNet, x: torch.Tensor, sent: torch.Tensor, cap_ids: np.ndarray) -> torch.Tensor:
    """Symmetric InfoNCE; tracks with identical captions are positives of each other."""
    nan = torch.isnan(x)
    x = (torch.where(nan, net.mel_mean.expand_as(x), x) - net.mel_mean) / net.mel_std
    a = torch.nn.functional.normalize(net.audio(x), dim=-1)
    t = net.embed_sentence(sent)
    logits = net.logit_scale.clamp(max=math.log(100.0)).exp() * a @ t.T
    ids = torch.from_numpy(cap_ids)
    pos = (ids[:, None] == ids[None, :]).float()
    la = -(torch.logsumexp(logits.masked_fill(pos == 0, -1e9), 1) - torch.logsumexp(logits, 1)).mean()
    lt = -(torch.logsumexp(logits.T.masked_fill(pos.T == 0, -1e9), 1) - torch.logsumexp(logits.T, 1)).mean()
    return (la + lt) / 2


@torch.inference_mode()
def track_embeddings(net: MulanNet, data: Data, idx: np.ndarray, stride_s: int, batch: int = 64) -> np.ndarray:
    """float32 [len(idx), dim]: normalized mean of each track's window embeddings (tokenize's rule
    at stride_s = 1: windows at whole seconds, a short track is one padded window)."""
    net.eval()
    frames, fps = net.cfg.window_frames, net.cfg.frames_per_s
    out = []
    for i in idx:
        t = data.mels[i].shape[1]
        n_s = ((t - 1) * net.cfg.hop + net.cfg.n_fft) // net.cfg.sample_rate_hz  # whole seconds
        starts = list(range(0, max(1, n_s - 10 + 1), stride_s))
        embs = []
        for b in range(0, len(starts), batch):
            x = np.stack([data.crop(i, s * fps, frames) for s in starts[b:b + batch]])
            embs.append(net.embed_mel(torch.from_numpy(x)).numpy())
        m = np.concatenate(embs).mean(0)
        out.append(m / max(np.linalg.norm(m), 1e-12))
    return np.stack(out).astype(np.float32)


def retrieval(net: MulanNet, data: Data, text_emb: np.ndarray, stride_s: int) -> dict:
    """Text→audio R@1/R@10/median rank on the held-out tracks (module docstring)."""
    res = {}
    groups = {"all": data.held_idx,
              "score_renders": data.held_idx[[data.pairs[i].kind == "score_render" for i in data.held_idx]]}
    for name, idx in groups.items():
        if len(idx) < 2:
            continue
        a = track_embeddings(net, data, idx, stride_s)
        with torch.inference_mode():
            t = net.embed_sentence(torch.from_numpy(text_emb[data.caption_id[idx]])).numpy()
        sim = t @ a.T  # [captions, tracks]; row j's own track is column j
        ids = data.caption_id[idx]
        ranks = []
        for j in range(len(idx)):
            own = sim[j, ids == ids[j]].max()  # an identical caption elsewhere counts as a hit
            ranks.append(int((sim[j] > own).sum()) + 1)
        ranks = np.array(ranks)
        n = len(idx)
        res[name] = {"n_tracks": n, "R@1": float((ranks <= 1).mean()), "R@10": float((ranks <= 10).mean()),
                     "median_rank": float(np.median(ranks)), "random_R@1": 1 / n, "random_R@10": min(1.0, 10 / n),
                     "random_median_rank": (n + 1) / 2}
    net.train()
    return res


def save_ckpt(path: Path, net: MulanNet, opt, step: int, a: TrainArgs, text_sha: str) -> None:
    state = {"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "args": asdict(a),
             "cfg": asdict(net.cfg), "format": CKPT_FORMAT, "text_encoder_sha256": text_sha}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def export(checkpoint: Path, to: Path) -> str:
    """Write a trainer checkpoint's model as the built-in MuLan's .safetensors; returns the line
    the command prints."""
    ck = torch.load(checkpoint, weights_only=True)
    cfg_d = dict(ck["cfg"])
    cfg_d["channels"] = tuple(cfg_d["channels"])
    net = MulanNet(MulanNetConfig(**cfg_d))
    net.load_state_dict(ck["net"])
    return f"wrote {save_mulan(net, to, ck['text_encoder_sha256'])} (step {ck['step']})"


def evaluate(weights: Path, manifest: Path, out: Path, a: TrainArgs, stride_s: int = 1) -> dict:
    """Held-out text->audio retrieval of a weights file (the model card's figures); writes
    out/eval.json and returns it."""
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    cache.mkdir(exist_ok=True)
    net, _ = load_net(weights)
    data = Data(read_pairs(manifest), net, cache, a.heldout_percent)
    res = retrieval(net, data, data.text_embeddings(cache), stride_s)
    res.update(weights=str(weights), eval_stride_s=stride_s, heldout_percent=a.heldout_percent)
    (out / "eval.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def train(manifest: Path, out: Path, a: TrainArgs, *, resume: bool = False, eval_every: int = 250) -> int:
    """Train (or with `resume` continue from out/ckpt-latest.pt) to a.steps; returns the step."""
    if eval_every < 1:
        raise MulanTrainError(f"eval_every must be >= 1 step, got {eval_every}")
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    cache.mkdir(exist_ok=True)
    ckpt = out / "ckpt-latest.pt"
    torch.manual_seed(a.seed)
    net = MulanNet(MulanNetConfig())
    data = Data(read_pairs(manifest), net, cache, a.heldout_percent)
    text = data.text_embeddings(cache)
    text_sha = SentenceEncoder().sha256
    print(f"tracks: {len(data.train_idx)} train, {len(data.held_idx)} held out; {len(data.captions)} captions")
    mean, std = data.mel_stats()
    net.mel_mean.copy_(torch.from_numpy(mean)[:, None])
    net.mel_std.copy_(torch.from_numpy(std)[:, None])
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=a.lr, weight_decay=a.weight_decay)
    step = 0
    if resume and ckpt.exists():
        ck = torch.load(ckpt, weights_only=True)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        print(f"resumed at step {step}")
    net.train()
    log = (out / "train.jsonl").open("a")  # noqa: SIM115 (closed at the end)
    t0, frames = time.time(), net.cfg.window_frames
    while step < a.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        x, pick = data.batch(step, a, frames)
        torch.manual_seed(a.seed * 1_000_003 + step)  # dropout
        loss = contrastive_loss(net, torch.from_numpy(x), torch.from_numpy(text[data.caption_id[pick]]),
                                data.caption_id[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), a.grad_clip)
        opt.step()
        step += 1
        rec = {"step": step, "loss": round(float(loss.detach()), 4), "scale": round(float(net.logit_scale.detach().exp()), 2)}
        if step % 20 == 0:
            el = time.time() - t0
            print(f"step {step} loss={rec['loss']:.4f} T=1/{rec['scale']:.1f} lr={lr_at(step, a):.2e} | "
                  f"{20 * a.batch * 10 / max(el, 1e-9):.0f} audio-s/s | {el:.0f} s", flush=True)
            t0 = time.time()
        if step % eval_every == 0 or step == a.steps:
            rec["heldout"] = retrieval(net, data, text, 5)
            print(f"  held-out (5 s stride): {json.dumps(rec['heldout'])}", flush=True)
            save_ckpt(ckpt, net, opt, step, a, text_sha)
        log.write(json.dumps(rec) + "\n")
        log.flush()
    log.close()
    return step

