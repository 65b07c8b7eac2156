r"""Train one MusicLM stage (semantic, coarse or fine) on tokenized shards.

    tokenmill train --stage semantic --data DATASET_OR_URL --output RUN_DIR [--steps N]
    torchrun --nproc_per_node 2 -m tokenmill.cli train --stage coarse --data URL --output RUN_DIR

Data: `--data` is a dataset root, its manifest.json URL (local, file://, http(s)://, gs://, s3://).
Each rank reads its share of the shards (ShardReader, resample=True so no rank runs dry), crops
every record for the stage (crops.py: 30/10/3 s by default, from (seed, epoch, index) only; the
index k·world_size + rank is unique across ranks, batches.py) and lays it out as one id sequence
(stages.py). Epochs follow each other until --steps. A background thread forms the next
--prefetch batches (default 2; 0: in the step loop) while the model trains on the current one
(prefetch.py); checkpoints still hold the position after the last batch trained on. The stage's
vocabulary and layout come from the manifest; M (MuLan tokens) needs the RVQ the dataset was
tokenized with (--mulan_codebook, default the packaged one; refused when its id is not the
manifest's codebooks.mulan).

Optimisation: AdamW (betas 0.9/0.95; --weight_decay on the linear matrices only, not on the
embedding or the norms), lr warmed up linearly from 0 over --warmup_steps, then held
(--schedule constant) or cosine-decayed to 10 % at --steps (--schedule cosine); gradient norm
clipped to --grad_clip. The lr is a function of the step alone, so a resumed run follows it.
Loss: summed cross-entropy of the target tokens (each scored by a softmax over its own level's
block of ids, model.block_loss: the distribution generation samples from) divided by the number of target tokens of the
GLOBAL batch (all ranks; conditioning and padded positions are ignored), times world_size because
DDP averages gradients over ranks: the gradient then equals that of one process on the whole
batch even when ranks hold different amounts of padding (a per-rank mean would weight a
padded token more on a rank with fewer real ones). --amp auto: bf16 autocast on CUDA, fp32 on CPU.
Progress (rank 0, every --log_every steps): step, global mean token loss, lr, tok/s (sequence
positions per second over all ranks, data loading included) and elapsed seconds.

Checkpoints (checkpoint.py: safetensors + state.json, OUTPUT/latest.json) every --save_every steps
and at the end, written by rank 0 with every rank's reader and RNG state. state.json records the
stage, layout, model config, this config, the dataset's codebooks/tokenizers/streams/schema and
the recent losses. Resume is explicit: --resume continues from OUTPUT/latest.json (model, optimizer,
RNG, reader position, step) to --steps, with the checkpoint's settings for every flag not given
again; without --resume an OUT that holds a checkpoint is refused (no silent overwrite, no silent
resume). A resumed run refuses a dataset tokenized with other codebooks (schemas/compat.py, before
any shard is read), another stage or layout, another world size, and changed settings that shape
the data stream or the model.

Python: ``run(TrainConfig(...))`` is the `train` command without argparse; ``Trainer(cfg)`` exposes one step
(``backward(batch)`` leaves the global-batch gradient in ``.grad``; ``step(batch)`` also updates).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tokenmill.errors import TokenmillError
from tokenmill.schemas.compat import ID_FIELDS, codebook_ids
from tokenmill.training import checkpoint as ckpt
from tokenmill.training import schedule
from tokenmill.training.batches import StageBatches
from tokenmill.training.crops import (
    STAGE_STREAMS,
    STAGES,
    CropConfig,
    StageCropper,
    StreamLayout,
)
from tokenmill.training.data import ShardReader
from tokenmill.training.model import PRESETS, Transformer, TransformerConfig, preset
from tokenmill.training.prefetch import PrefetchedBatches
from tokenmill.training.stages import IGNORE, StageLayout, stage_batch

DEFAULT_MULAN_RVQ = Path(__file__).resolve().parents[1] / "weights" / "mulan-default-rvq.safetensors"
HISTORY = 200  # recent step losses kept in state.json
# Settings a resumed run must share with its checkpoint (they shape the data stream or the model).
RESUME_FIXED = ("stage", "preset", "model", "batch_size", "seed", "semantic_s", "coarse_s", "fine_s",
                "short_tracks", "mulan_stages", "shuffle_buffer", "splits", "melody_stages", "melody_dropout")


class TrainError(TokenmillError, ValueError):
    """A configuration or checkpoint the trainer refuses; the message names the fix."""


@dataclass(frozen=True)
class TrainConfig:
    stage: str  # "semantic" | "coarse" | "fine"
    data: str  # dataset root or manifest.json URL
    out: str  # checkpoint directory
    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # TransformerConfig overrides (n_layers, d_model, ...)
    steps: int = 1000
    batch_size: int = 8  # sequences per rank
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    schedule: str = "constant"  # "constant" | "cosine"
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    seed: int = 0
    semantic_s: float = 30.0
    coarse_s: float = 10.0
    fine_s: float = 3.0
    short_tracks: str = "pad"
    mulan_stages: tuple[str, ...] = ("semantic", "coarse")
    shuffle_buffer: int = 256  # records
    save_every: int = 1000
    log_every: int = 10
    amp: str = "auto"  # "auto" | "bf16" | "off"
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    mulan_codebook: str | None = None  # None: the packaged RVQ
    splits: tuple[str, ...] = ("train",)
    resume: bool = False
    prefetch: int = 2  # batches formed ahead by a background thread (0: none)
    melody_stages: tuple[str, ...] = ("semantic",)  # stages given the crop's melody tokens, if the data has them
    melody_dropout: float = 0.1  # share of crops trained with the melody condition all pad (text-only)

    def __post_init__(self) -> None:
        checks = [(self.stage in STAGES, f"stage must be one of {STAGES}, got {self.stage!r}"),
                  (self.preset in PRESETS, f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}"),
                  (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
                  (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                  (self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
                  (self.schedule in ("constant", "cosine"),
                   f"schedule must be constant or cosine, got {self.schedule!r}"),
                  (self.prefetch >= 0, f"prefetch must be >= 0 batches (0: off), got {self.prefetch}"),
                  (self.grad_clip >= 0, f"grad_clip must be >= 0 (0: off), got {self.grad_clip}"),
                  (self.save_every >= 1 and self.log_every >= 1, "save_every and log_every must be >= 1 step"),
                  (self.amp in ("auto", "bf16", "off"), f"amp must be auto, bf16 or off, got {self.amp!r}"),
                  (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")]
        for ok, msg in checks:
            if not ok:
                raise TrainError(msg)
        object.__setattr__(self, "mulan_stages", tuple(self.mulan_stages))
        object.__setattr__(self, "melody_stages", tuple(self.melody_stages))
        object.__setattr__(self, "splits", tuple(self.splits))

    def crop_config(self) -> CropConfig:
        return CropConfig(self.semantic_s, self.coarse_s, self.fine_s, self.short_tracks,
                          mulan_stages=self.mulan_stages, melody_stages=self.melody_stages,
                          melody_dropout=self.melody_dropout)

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based): schedule.py, cosine to 10 % of --lr."""
    return schedule.lr_at(step, cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, kind=cfg.schedule,
                          floor=0.1)


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (1 process: 0, 1, 0)."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainError("--device cuda but torch sees no CUDA device; use --device cpu (or auto)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def stage_codebooks(dataset: dict, stage: str, mulan: bool, melody: bool = False) -> dict[str, str]:
    """stream -> codebook id of the streams the stage reads (compat.ID_FIELDS), from a manifest or
    a checkpoint's `dataset` entry."""
    ids = codebook_ids(dataset)
    want = {"acoustic" if s in ("coarse", "fine") else s for s in STAGE_STREAMS[stage]}
    want |= {"mulan"} if mulan else set()
    want |= {"melody"} if melody else set()
    return {s: ids[s] for s in sorted(want) if s in ids and s in ID_FIELDS}


def dataset_entry(manifest: dict) -> dict[str, Any]:
    job = manifest.get("job", {})
    return {"codebooks": manifest["codebooks"], "tokenizers": manifest["tokenizers"], "streams": manifest["streams"],
            "job": {"acoustic": job.get("acoustic"), "mulan": job.get("mulan"), "melody": job.get("melody")},
            "schema_version": manifest["schema_version"]}


def load_mulan_rvq(cfg: TrainConfig, manifest: dict):
    from tokenmill.tokenizers.rvq import RVQCodebook

    path = Path(cfg.mulan_codebook) if cfg.mulan_codebook else DEFAULT_MULAN_RVQ
    rvq = RVQCodebook.load(path)
    want = manifest.get("codebooks", {}).get("mulan")
    if rvq.id != want:
        raise TrainError(f"MuLan RVQ {path} is {rvq.id} but the dataset's M tokens were made with {want} "
                         f"(manifest codebooks.mulan); pass --mulan_codebook PATH of {want}.safetensors (the one "
                         "tokenize used), or train without M: --mulan_stages none")
    return rvq


class Trainer:
    """One stage's model, optimizer and data stream on this rank. `backward(batch)` leaves the
    gradients of the global-batch loss in `.grad`; `step(batch)` also clips and updates."""

    def __init__(self, cfg: TrainConfig, *, resume_from: str | Path | None = None) -> None:
        self.cfg = cfg
        self.rank, self.world_size, local_rank = dist_env()
        self.device = resolve_device(cfg.device, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.amp = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        prior = None
        if resume_from is not None:
            _, prior = ckpt.read_state(resume_from)
            check_resume(cfg, prior, self.world_size)
        crop_cfg = cfg.crop_config()
        if prior is not None and not any(p["name"] == "melody" for p in prior["layout"]["parts"]):
            # a checkpoint that takes no melody (trained before the stream, or on data without it) keeps so
            crop_cfg = dataclasses.replace(crop_cfg, melody_stages=tuple(
                s for s in crop_cfg.melody_stages if s != cfg.stage))
        mulan = cfg.stage in crop_cfg.mulan_stages
        melody = prior is not None and any(p["name"] == "melody" for p in prior["layout"]["parts"])
        expect = ((stage_codebooks(prior["dataset"], cfg.stage, mulan, melody), prior["dataset"]["schema_version"])
                  if prior else (None, None))
        self.reader = ShardReader(cfg.data, splits=cfg.splits, expect_codebooks=expect[0], expect_schema=expect[1],
                                  seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, rank=self.rank,
                                  world_size=self.world_size, resample=True)
        manifest = self.reader.manifest
        self.dataset = dataset_entry(manifest)
        self.layout = StageLayout.from_manifest(cfg.stage, manifest, crop_cfg)
        if prior is not None and self.layout.to_json() != prior["layout"]:
            raise TrainError(f"the checkpoint's {prior['stage']} layout {prior['layout']} differs from this dataset's "
                             f"{self.layout.to_json()}; resume on data with the same streams and crop lengths")
        rvq = load_mulan_rvq(cfg, manifest) if mulan else None
        self.cropper = StageCropper(cfg.stage, StreamLayout.from_manifest(manifest), crop_cfg, seed=cfg.seed, rvq=rvq)
        self.batches: StageBatches | PrefetchedBatches = StageBatches(self.reader, self.cropper, self.layout,
                                                                      cfg.batch_size)
        if cfg.prefetch > 0:  # the thread starts at the first batch, after a resume has loaded the position
            self.batches = PrefetchedBatches(self.batches, cfg.prefetch)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
        try:
            self.model_cfg = preset(cfg.preset, self.layout.vocab_size, **cfg.model)
        except (TypeError, ValueError) as e:
            names = [f.name for f in dataclasses.fields(TransformerConfig) if f.name != "vocab_size"]
            raise TrainError(f"bad model overrides {cfg.model}: {e}; fields are {names}") from None
        self.module = Transformer(self.model_cfg).to(self.device)
        self.model: torch.nn.Module = self.module
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        decay = [p for n, p in self.module.named_parameters() if p.ndim >= 2 and "embed" not in n]
        rest = [p for n, p in self.module.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
        torch.manual_seed(cfg.seed * 1_000_003 + 17 + self.rank)  # dropout differs across ranks
        self.step_count, self.history = 0, []
        if prior is not None:
            state = ckpt.load_training(resume_from, self.model, self.opt)
            self.step_count, self.history = int(state["step"]), list(state.get("history", []))
            self.batches.load_state_dict(state["reader"][self.rank])
            rng = state["rng"][self.rank]
            torch.set_rng_state(_unhex(rng["cpu"]))
            if self.device.type == "cuda" and rng.get("cuda") is not None:
                torch.cuda.set_rng_state(_unhex(rng["cuda"]), self.device)

    # ---- one step ------------------------------------------------------------------------------

    def _tensors(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, tuple):
            inputs, targets = batch
        else:
            inputs, targets = stage_batch(self.layout, list(np.asarray(batch)))
        return (torch.as_tensor(inputs, dtype=torch.int64, device=self.device),
                torch.as_tensor(targets, dtype=torch.int64, device=self.device))

    def backward(self, batch) -> float:
        """Zero the gradients, then backpropagate this rank's share of the global-batch loss.
        `batch`: sequences int64 [B, L] or (inputs, targets) [B, L-1]. Returns the global mean
        token loss (the same on every rank)."""
        inputs, targets = self._tensors(batch)
        self.opt.zero_grad(set_to_none=True)
        tgt = self.layout.target
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            # each target scored over its own level's id block (model.block_loss)
            loss_sum = self.model(inputs, targets=targets, target_block=(tgt.offset, tgt.levels, tgt.vocab),
                                  ignore_index=IGNORE)
        totals = torch.stack([(targets != IGNORE).sum().to(torch.float64), loss_sum.detach().to(torch.float64)])
        if self.world_size > 1:
            dist.all_reduce(totals)
        count = totals[0].item()
        if count == 0:
            raise TrainError("a global batch with no target tokens (every position conditioning or padding); "
                             "check the crop lengths and the dataset")
        (loss_sum * (self.world_size / count)).backward()
        return totals[1].item() / count

    def step(self, batch=None) -> float:
        """One optimizer step on `batch` (default: the next batch of the data stream); the loss."""
        batch = next(self.batches) if batch is None else batch
        loss = self.backward(batch)
        if not math.isfinite(loss):
            raise TrainError(f"step {self.step_count + 1}: the loss is {loss}; lower --lr, raise --warmup_steps, "
                             "or resume from the last checkpoint with --amp off")
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
        lr = lr_at(self.cfg, self.step_count)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.step_count += 1
        self.history = (self.history + [[self.step_count, loss]])[-HISTORY:]
        return loss

    # ---- checkpoints ---------------------------------------------------------------------------

    def save(self) -> Path | None:
        """Checkpoint (a collective: every rank must call it); rank 0 writes, returns the directory."""
        mine = {"reader": self.batches.state_dict(),
                "rng": {"cpu": _hex(torch.get_rng_state()),
                        "cuda": _hex(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else None}}
        ranks = [mine]
        if self.world_size > 1:
            ranks = [None] * self.world_size
            dist.all_gather_object(ranks, mine)
        if self.rank != 0:
            return None
        state = {"stage": self.cfg.stage, "layout": self.layout.to_json(),
                 "model": dataclasses.asdict(self.model_cfg),
                 "train": self.cfg.to_json(), "dataset": self.dataset,
                 "reader": [r["reader"] for r in ranks], "rng": [r["rng"] for r in ranks],
                 "world_size": self.world_size, "history": self.history, "counts": self.batches.counts}
        return ckpt.save_checkpoint(self.cfg.out, self.step_count, self.model, state, self.opt)

    def close(self, timeout: float | None = None) -> None:
        """Stop the prefetch thread (run() calls it; the next step() would start a new one)."""
        if isinstance(self.batches, PrefetchedBatches):
            self.batches.close(timeout)


def _hex(state: torch.Tensor) -> str:
    """A uint8 RNG state as hex (state.json stays readable: a list would be 5056 lines)."""
    return state.cpu().numpy().tobytes().hex()


def _unhex(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(bytes.fromhex(text), dtype=np.uint8).copy())


def check_resume(cfg: TrainConfig, prior: dict, world_size: int) -> None:
    """Refuse a resume whose stage, world size or data/model-shaping settings differ."""
    old, new = prior.get("train", {}), cfg.to_json()
    diffs = [f"{k}: checkpoint {old[k]!r}, now {new[k]!r}" for k in RESUME_FIXED if k in old and old[k] != new[k]]
    if prior.get("stage") != cfg.stage:
        diffs.insert(0, f"stage: checkpoint {prior.get('stage')!r}, now {cfg.stage!r}")
    if diffs:
        raise TrainError("cannot resume: the checkpoint was trained with other settings (" + "; ".join(diffs)
                         + "); pass the checkpoint's values, or start a new run in another --output")
    if int(prior.get("world_size", 1)) != world_size:
        raise TrainError(f"cannot resume: the checkpoint was written by {prior.get('world_size')} rank(s), this run "
                         f"has {world_size}; the data position is per rank, so launch with the same --nproc_per_node")


def prepare_out(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); refuses an ambiguous OUT."""
    latest = Path(cfg.out) / ckpt.LATEST
    if cfg.resume:
        if not latest.is_file():
            raise TrainError(f"--resume but {latest} does not exist; drop --resume to start a fresh run")
        return Path(cfg.out)
    if latest.is_file():
        raise TrainError(f"{cfg.out} already holds a checkpoint ({latest}); pass --resume to continue it, or "
                         "choose another --output")
    return None


def log0(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train to cfg.steps (resuming when cfg.resume); returns {"losses": this run's step losses,
    "step", "checkpoint", "seconds", "counts"}."""
    trainer = Trainer(cfg, resume_from=prepare_out(cfg))
    r, layout = trainer.rank, trainer.layout
    log0(r, f"{cfg.stage} stage: {trainer.module.num_parameters() / 1e6:.2f} M parameters, vocab {layout.vocab_size}, "
            f"sequence {layout.sequence_length} tokens ({layout.prefix_length} prefix), {trainer.world_size} rank(s) x "
            f"batch {cfg.batch_size}, device {trainer.device}, amp {'bf16' if trainer.amp else 'off'}"
            + (f", resumed at step {trainer.step_count}" if trainer.step_count else ""))
    losses, t0, last_t, last_step, last_ckpt = [], time.perf_counter(), time.perf_counter(), trainer.step_count, None
    skipped_logged = 0
    try:
        while trainer.step_count < cfg.steps:
            losses.append(trainer.step())
            s = trainer.step_count
            if s % cfg.log_every == 0 or s == cfg.steps:
                now = time.perf_counter()
                tok = (s - last_step) * cfg.batch_size * trainer.world_size * (layout.sequence_length - 1)
                log0(r, f"step {s}/{cfg.steps} loss {losses[-1]:.4f} lr {lr_at(cfg, s - 1):.2e} "
                        f"tok/s {tok / max(now - last_t, 1e-9):.0f} elapsed {now - t0:.1f}s")
                last_t, last_step = now, s
                counts = trainer.batches.counts  # as of the last batch trained on, not the prefetched ones
                if counts["skipped"] > skipped_logged:
                    skipped_logged = counts["skipped"]
                    print(f"rank {r}: {skipped_logged} records skipped as shorter than the crop so far "
                          f"(short_tracks=skip); counts {counts}", flush=True)
            if s % cfg.save_every == 0 or s == cfg.steps:
                last_ckpt = trainer.save()
    except BaseException:
        trainer.close(timeout=1.0)  # a daemon: one still inside a shard read does not hold the process
        raise
    trainer.close()
    if last_ckpt is None and trainer.step_count >= cfg.steps and not losses:
        log0(r, f"checkpoint already at step {trainer.step_count} >= --steps {cfg.steps}; nothing to do")
    elapsed = time.perf_counter() - t0
    tail = losses[-min(len(losses), cfg.log_every):]
    log0(r, f"done: step {trainer.step_count}, loss {np.mean(tail) if tail else float('nan'):.4f} (mean of last "
            f"{len(tail)}), {elapsed:.1f}s, checkpoint {last_ckpt or 'unchanged'}; crops {trainer.batches.counts}")
    return {"losses": losses, "step": trainer.step_count, "checkpoint": last_ckpt, "seconds": elapsed,
            "counts": trainer.batches.counts, "trainer": trainer}


def resumed_config(given: dict[str, Any]) -> TrainConfig:
    """TrainConfig of the settings `given` (TrainConfig fields). With resume=True and a checkpoint
    in `out`, the settings not given are the checkpoint's."""
    base: dict[str, Any] = {}
    if given.get("resume") and (Path(given["out"]) / ckpt.LATEST).is_file():
        _, prior = ckpt.read_state(given["out"])
        names = {f.name for f in dataclasses.fields(TrainConfig)} - {"data", "out", "resume", "stage"}
        base = {k: v for k, v in prior.get("train", {}).items() if k in names}
    return TrainConfig(**{**base, **given})
