r"""Train the built-in melody model (tokenizers/melody_builtin.py) on same-melody / different-sound pairs.

    train-melody --pairs PAIRS_DIR --output RUN_DIR [--steps N] [--threads 1]   # resumes from RUN_DIR
    train-melody --output RUN_DIR --export tokenmill/weights/melody-default.safetensors

Data: the folder `scripts/corpus/melody_pairs.py` writes: `index.jsonl` (one line per melody
class: one 4 s score segment at one transposition) and per class an int16 [V, 64000] array of
views (instruments, ensembles, hum stand-ins, rooms, noise). Classes of the `train` split are
trained on; `heldout` ones (other tunes) give the retrieval check. Each view's raw log-mel (the
model's own front end) is computed once and cached as float16 under RUN_DIR/cache.

Step k draws, from (seed, k) alone, `--groups` score segments and takes *both* transpositions of
each (so every melody meets its transposed twin, the hardest negative there is), and `--views`
views of each class; each view is shifted by up to ±`--max_shift` frames (filled with the window's
quietest value) and gets one time mask (≤ 12 frames) half the time. Dropout is seeded from
(seed, k) too, so a resumed run continues exactly.

Loss: semi-hard triplet loss (FaceNet; what MusicLM's melody model uses), on squared Euclidean
distances between unit vectors: for every anchor–positive pair (two views of one class), the
negative is the closest one farther than the positive; if none is, the farthest negative (so a
pair with every negative inside its margin still gets a gradient, but a small one: no collapse
from hardest-negative mining early on). loss = mean over pairs of max(d_ap − d_an + margin, 0).
AdamW, linear warm-up then cosine decay. A checkpoint (model, optimizer, step) is written every
`--ckpt_every` steps under RUN_DIR (temp name + rename), so a kill loses at most that many steps.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenmill.errors import TokenmillError
from tokenmill.eval.melody_retrieval import retrieval_metrics
from tokenmill.tokenizers.melody_builtin import MelodyNet, MelodyNetConfig, load_melody_net, save_melody_net

CKPT_FORMAT = "tokenmill.melody_train.v1"
MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optim.safetensors", "state.json"


class MelodyTrainError(TokenmillError, ValueError):
    """Training data or a run directory the melody trainer cannot use."""


@dataclass(frozen=True)
class MelodyTrainConfig:
    seed: int = 0
    steps: int = 2200
    groups: int = 8  # score segments per step; both transpositions of each → 2·groups classes
    views: int = 4  # views per class → batch = 2·groups·views windows
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.05
    margin: float = 0.3
    max_shift: int = 6  # frames (20 ms each)
    ckpt_every: int = 25
    eval_every: int = 100

    def __post_init__(self) -> None:
        if self.groups < 2 or self.views < 2:
            raise MelodyTrainError("need --groups >= 2 and --views >= 2 (a triplet needs a positive and a negative)")
        if self.steps < 1 or self.lr <= 0 or self.margin <= 0:
            raise MelodyTrainError("--steps, --lr and --margin must be positive")


# ---- loss ----------------------------------------------------------------------------------------

def semihard_triplet_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Semi-hard triplet loss (module doc) of embeddings [N, D] with int labels [N]."""
    d = torch.cdist(emb, emb).pow(2)  # [N, N] squared distances
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos = same & ~eye  # [a, p]
    neg = ~same  # [a, n]
    d_ap = d[:, :, None]  # [a, p, 1]
    d_an = d[:, None, :]  # [a, 1, n]
    outside = neg[:, None, :] & (d_an > d_ap)  # [a, p, n] negatives farther than the positive
    big = torch.finfo(d.dtype).max
    closest_outside = torch.where(outside, d_an, torch.full_like(outside, big, dtype=d.dtype)).amin(-1)  # [a, p]
    farthest = torch.where(neg, d, torch.full_like(d, -big)).amax(-1, keepdim=True).expand_as(d)  # [a, p]
    d_neg = torch.where(outside.any(-1), closest_outside, farthest)
    per_pair = torch.clamp(d - d_neg + margin, min=0)
    n_pairs = pos.sum()
    if n_pairs == 0 or not neg.any():
        raise MelodyTrainError("a batch needs two views of one melody and a view of another")
    return (per_pair * pos).sum() / n_pairs


# ---- data ----------------------------------------------------------------------------------------

class PairData:
    """Log-mel of every view of every class, float16 [N_views, n_mels, frames], with class tables."""

    def __init__(self, pairs_dir: Path, split: str, net: MelodyNet, cache_dir: Path, log=print):
        index = Path(pairs_dir) / "index.jsonl"
        if not index.is_file():
            raise MelodyTrainError(f"{index} not found: build the pairs with scripts/corpus/melody_pairs.py --out {pairs_dir}")
        lines = [json.loads(x) for x in index.read_text().splitlines() if x.strip()]
        self.classes = sorted((x for x in lines if x["split"] == split), key=lambda x: x["class"])
        if not self.classes:
            raise MelodyTrainError(f"{index} has no {split!r} classes")
        key = hashlib.sha1(json.dumps([self.classes, asdict(net.cfg)], sort_keys=True).encode()).hexdigest()[:12]
        cache = Path(cache_dir) / f"mel-{split}-{key}.npy"
        meta_path = cache.with_suffix(".json")
        if cache.is_file() and meta_path.is_file():
            self.mel = np.load(cache, mmap_mode="r")
            meta = json.loads(meta_path.read_text())
        else:
            log(f"computing log-mel of {len(self.classes)} {split} classes (once; cached in {cache})")
            mels, kinds, owner = [], [], []
            for ci, c in enumerate(self.classes):
                waves = np.load(Path(pairs_dir) / c["file"]).astype(np.float32) / 32767.0
                with torch.inference_mode():
                    mels.append(net.logmel(torch.from_numpy(waves)).numpy().astype(np.float16))
                views = json.loads((Path(pairs_dir) / c["file"]).with_suffix(".json").read_text())["views"]
                kinds += [v["kind"] for v in views]
                owner += [ci] * len(views)
            self.mel = np.concatenate(mels)
            meta = {"kinds": kinds, "owner": owner}
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.stem + ".tmp.npy")
            np.save(tmp, self.mel)
            os.replace(tmp, cache)
            meta_path.write_text(json.dumps(meta))
        self.kinds = np.asarray(meta["kinds"])
        self.owner = np.asarray(meta["owner"], np.int64)
        self.views_of = [np.flatnonzero(self.owner == ci) for ci in range(len(self.classes))]
        groups: dict[tuple, list[int]] = {}
        for ci, c in enumerate(self.classes):
            groups.setdefault((c["tune"], c["start_s"]), []).append(ci)
        self.groups = [v for _, v in sorted(groups.items())]


def batch_for_step(data: PairData, step: int, cfg: MelodyTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(raw log-mel float32 [B, M, T], class labels int64 [B]) of step `step`, from (seed, step) alone."""
    rng = np.random.default_rng([cfg.seed, step])
    picked = rng.choice(len(data.groups), size=min(cfg.groups, len(data.groups)), replace=False)
    xs, ys = [], []
    for g in picked:
        for ci in data.groups[g]:
            views = data.views_of[ci]
            for v in rng.choice(views, size=min(cfg.views, len(views)), replace=False):
                m = np.asarray(data.mel[v], np.float32)
                floor = m.min()
                s = int(rng.integers(-cfg.max_shift, cfg.max_shift + 1))
                m = np.roll(m, s, axis=1)
                if s > 0:
                    m[:, :s] = floor
                elif s < 0:
                    m[:, s:] = floor
                if rng.random() < 0.5:
                    w = int(rng.integers(1, 13))
                    a = int(rng.integers(0, m.shape[1] - w))
                    m[:, a:a + w] = floor
                xs.append(m)
                ys.append(ci)
    return np.stack(xs), np.asarray(ys, np.int64)


def lr_at(step: int, cfg: MelodyTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))))


# ---- evaluation ----------------------------------------------------------------------------------

def embed_views(net: MelodyNet, data: PairData, views: np.ndarray, batch: int = 64) -> np.ndarray:
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(views), batch):
            out.append(net.embed_mel(torch.from_numpy(np.asarray(data.mel[views[i:i + batch]], np.float32))).numpy())
    return np.concatenate(out) if out else np.zeros((0, net.cfg.dim), np.float32)


def heldout_retrieval(net: MelodyNet, data: PairData, query_kind: str = "hum-sine", candidate_kind: str = "solo") -> dict:
    """Each held-out class's `query_kind` view against the first `candidate_kind` view of every class."""
    rows = [(data.views_of[ci], ci) for ci in range(len(data.classes))]
    q = [next((v for v in vs if data.kinds[v] == query_kind), -1) for vs, _ in rows]
    c = [next((v for v in vs if data.kinds[v] == candidate_kind), -1) for vs, _ in rows]
    keep = [i for i in range(len(rows)) if q[i] >= 0 and c[i] >= 0]
    if len(keep) < 2:
        return {}
    qe = embed_views(net, data, np.asarray([q[i] for i in keep]))
    ce = embed_views(net, data, np.asarray([c[i] for i in keep]))
    return retrieval_metrics(qe, ce, np.arange(len(keep)))


# ---- checkpoints ---------------------------------------------------------------------------------

def save_run(out: Path, net: MelodyNet, opt: torch.optim.Optimizer, step: int, cfg: MelodyTrainConfig,
             history: list) -> None:
    from safetensors.torch import save_file

    from tokenmill.training.checkpoint import optim_tensors

    out.mkdir(parents=True, exist_ok=True)
    tensors, groups = optim_tensors(opt)
    for name, write in ((MODEL_FILE, lambda p: save_melody_net(net, p, {"steps": str(step)})),
                        (OPTIM_FILE, lambda p: save_file(tensors, str(p)))):
        tmp = out / (name + ".tmp")
        write(tmp)
        os.replace(tmp, out / name)
    state = {"format": CKPT_FORMAT, "step": step, "train": asdict(cfg), "model": asdict(net.cfg), "optim": groups,
             "history": history[-200:]}
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, out / STATE_FILE)


def load_run(out: Path) -> dict | None:
    p = out / STATE_FILE
    if not p.is_file():
        return None
    state = json.loads(p.read_text())
    if state.get("format") != CKPT_FORMAT:
        raise MelodyTrainError(f"{p} is not a melody training run (format {state.get('format')!r}); use another --output")
    return state


# ---- CLI -----------------------------------------------------------------------------------------

def add_args(ap: argparse.ArgumentParser) -> None:
    d, m = MelodyTrainConfig(), MelodyNetConfig()
    ap.add_argument("--pairs", type=Path, help="folder written by scripts/corpus/melody_pairs.py (index.jsonl)")
    ap.add_argument("--output", type=Path, required=True, help="run folder: checkpoint, log-mel cache, history")
    ap.add_argument("--export", type=Path, help="write the run's model as a weights file here and stop")
    what = {"seed": "batches and dropout come from (seed, step)", "steps": "total optimizer steps (cosine ends here)",
            "groups": "score segments per step (both keys of each)", "views": "views per melody class",
            "warmup": "linear lr warm-up steps", "ckpt_every": "steps between checkpoints",
            "eval_every": "steps between held-out retrieval checks (0: never)",
            "max_shift": "random time shift of a view, in 20 ms frames", "lr": "peak AdamW learning rate",
            "weight_decay": "AdamW weight decay", "margin": "triplet margin on squared distances"}
    for name in ("seed", "steps", "groups", "views", "warmup", "ckpt_every", "eval_every", "max_shift"):
        ap.add_argument(f"--{name}", type=int, default=getattr(d, name), help=what[name] + " (default %(default)s)")
    for name in ("lr", "weight_decay", "margin"):
        ap.add_argument(f"--{name}", type=float, default=getattr(d, name), help=what[name] + " (default %(default)s)")
    for name in ("d_model", "layers", "heads", "n_mels"):
        ap.add_argument(f"--{name}", type=int, default=getattr(m, name),
                        help="model size for a new run; a resumed run keeps its own (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Train (resuming from --output if it holds a run) or --export; returns the final state."""
    out = Path(args.output)
    if args.export:
        if not (out / MODEL_FILE).is_file():
            raise MelodyTrainError(f"{out} holds no {MODEL_FILE}; train first (train-melody --pairs ... --output {out})")
        net, meta = load_melody_net(out / MODEL_FILE)
        state = load_run(out) or {}
        save_melody_net(net, args.export, {"steps": str(state.get("step", meta.get("steps", "?"))),
                                           "trained_on": "score renders: scripts/corpus/melody_pairs.py"})
        log(f"wrote {args.export}")
        return state
    if args.pairs is None:
        raise MelodyTrainError("--pairs is required to train (or pass --export)")
    torch.set_num_threads(int(args.threads))
    cfg = MelodyTrainConfig(**{k: getattr(args, k) for k in asdict(MelodyTrainConfig()) if hasattr(args, k)})
    state = load_run(out)
    if state is not None:
        net_cfg = MelodyNetConfig(**state["model"])
    else:
        net_cfg = MelodyNetConfig(d_model=args.d_model, layers=args.layers, heads=args.heads, n_mels=args.n_mels)
    torch.manual_seed(cfg.seed)
    net = MelodyNet(net_cfg)
    train = PairData(args.pairs, "train", net, out / "cache", log)
    held = PairData(args.pairs, "heldout", net, out / "cache", log) if any(
        json.loads(x)["split"] == "heldout" for x in (Path(args.pairs) / "index.jsonl").read_text().splitlines() if x) else None
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history = 0, []
    if state is not None:
        from safetensors.torch import load_file

        from tokenmill.training.checkpoint import load_optim

        net.load_state_dict(load_file(str(out / MODEL_FILE)))
        load_optim(opt, load_file(str(out / OPTIM_FILE)), state["optim"])
        step, history = int(state["step"]), state.get("history", [])
        log(f"resuming {out} at step {step}")
    log(f"melody model: {sum(p.numel() for p in net.parameters())} parameters; {len(train.classes)} train classes "
        f"({len(train.mel)} views), {len(held.classes) if held else 0} held-out classes")
    t0 = time.time()
    while step < cfg.steps:
        x, y = batch_for_step(train, step, cfg)
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        net.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = semihard_triplet_loss(net.embed_mel(torch.from_numpy(x)), torch.from_numpy(y), cfg.margin)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        rec: dict[str, Any] = {"step": step, "loss": round(float(loss.detach()), 5)}
        if held is not None and cfg.eval_every and step % cfg.eval_every == 0:
            rec.update({k: v for k, v in heldout_retrieval(net, held).items() if k in ("R@1", "R@10", "median_rank", "candidates")})
        history.append(rec)
        if step % 10 == 0 or len(rec) > 2:
            log(f"step {step} loss={rec['loss']:.4f} lr={lr_at(step - 1, cfg):.2e} {time.time() - t0:.0f}s"
                + (f" | held-out hum→solo R@1={rec['R@1']:.3f} R@10={rec['R@10']:.3f} med={rec['median_rank']:.0f}"
                   f" of {rec['candidates']}" if "R@1" in rec else ""))
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_run(out, net, opt, step, cfg, history)
    return load_run(out) or {}
