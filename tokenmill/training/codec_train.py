"""Train the built-in SoundStream codec (tokenizers/soundstream.py) on real audio.

    tokenmill train-codec --data 'DIR/**/*.ogg' --data 'DIR/**/*.flac' \
        --output RUN_DIR [--steps N] [--resume] [--threads T] [--device cpu|cuda]
    tokenmill train-codec --export RUN_DIR/ckpt-latest.safetensors \
        --output tokenmill/weights/soundstream-24k-default.safetensors

Data: every file matching the globs, minus a held-out set chosen by the hash of the file name
(`is_heldout`, listed in RUN_DIR/heldout.txt for the quality benchmark). Each file is decoded
once (tokenizers.audio.decode → to_mono → resample to 24 kHz) into a float16 .npy cache under
RUN_DIR/cache and memory-mapped afterwards. Step k draws its crop length (uniform in
[crop_min_s, crop_max_s] on the 20 ms grid), its files and offsets, the number of active RVQ levels
(quantizer dropout) and the RVQ's random restarts from (seed, k) alone, so `--resume` continues
exactly: a checkpoint holds generator, discriminator, both optimizers' state and the step.

Losses (generator): multi-scale mel (L1 log-mel + L1 mel, FFT 512/1024/2048) + 1.0 * waveform L1
+ 0.25 * commitment; from `--disc_start` on, + hinge adversarial loss and 2 * relative feature matching
against a multi-scale complex-STFT discriminator (EnCodec). Before `--disc_start` (a warm-up) the
discriminator is neither run nor trained. Before `--vq_start` the RVQ is bypassed (an
autoencoder warm-up): with small CPU batches, a decoder that meets random codebooks from step 0
learnt to ignore its input; starting the RVQ (k-means init) on trained latents avoids that.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tokenmill.errors import TokenmillError
from tokenmill.tokenizers import audio
from tokenmill.tokenizers.soundstream import (
    SoundStream,
    SoundStreamConfig,
    save_soundstream,
)
from tokenmill.training import schedule
from tokenmill.training.discriminators import DiscConfig, MultiScaleSTFTDiscriminator
from tokenmill.training.losses import (
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    multiscale_mel_loss,
)

CKPT_FORMAT = "tokenmill.codec_train.v1"


class CodecTrainError(TokenmillError, ValueError):
    """Training data, settings or a checkpoint the codec trainer refuses; the message names the fix."""
SR = 24000
PRESETS = {
    "default": SoundStreamConfig(),
    "tiny": SoundStreamConfig(channels=2, latent_dim=8, codebook_size=16, dead_code_steps=2, kmeans_iters=2),
}


def is_heldout(path: str, percent: int) -> bool:
    """Held out from training by the hash of the file name (stable when the corpus moves)."""
    return int(hashlib.sha1(Path(path).name.encode()).hexdigest()[:8], 16) % 100 < percent


def list_files(globs: list[str], heldout_percent: int) -> tuple[list[str], list[str]]:
    files = sorted({f for g in globs for f in glob.glob(g, recursive=True) if os.path.isfile(f)})
    held = [f for f in files if is_heldout(f, heldout_percent)]
    return [f for f in files if not is_heldout(f, heldout_percent)], held


def load_24k(path: str, cache_dir: Path | None = None) -> np.ndarray:
    """Decoded mono 24 kHz audio of one file (float16 in the cache; empty if undecodable)."""
    cached = cache_dir / (hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:20] + ".npy") if cache_dir else None
    if cached is not None and cached.exists():
        return np.load(cached, mmap_mode="r")
    try:
        dec = audio.decode(Path(path).read_bytes(), path)
        wave = audio.resample(audio.to_mono(dec.pcm), dec.sample_rate_hz, SR, "HQ").astype(np.float16)
    except audio.AudioError as e:
        print(f"skipping {path}: {e}", file=sys.stderr)
        wave = np.zeros(0, np.float16)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.stem + ".tmp.npy")
        np.save(tmp, wave)
        os.replace(tmp, cached)
    return wave


class CropSource:
    """Deterministic random crops: batch(step) depends on (seed, step) and the files only."""

    def __init__(self, files: list[str], cache_dir: Path | None, seed: int):
        if not files:
            raise CodecTrainError("no training files matched --data; check the globs (quote them, ** recurses)")
        self.files, self.cache_dir, self.seed = files, cache_dir, seed
        self._waves: dict[int, np.ndarray] = {}

    def wave(self, i: int) -> np.ndarray:
        if i not in self._waves:
            self._waves[i] = load_24k(self.files[i], self.cache_dir)
        return self._waves[i]

    def batch(self, step: int, batch: int, crop_min_s: float, crop_max_s: float) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        n = round(rng.uniform(crop_min_s, crop_max_s) * 50) * 480
        out: list[np.ndarray] = []
        for _ in range(batch * 50):
            w = self.wave(int(rng.integers(len(self.files))))
            if len(w) < n:
                continue
            o = int(rng.integers(0, len(w) - n + 1))
            crop = np.asarray(w[o:o + n], dtype=np.float32)
            if np.sqrt(np.mean(crop ** 2)) < 1e-3:  # skip near-silence (-60 dBFS RMS)
                continue
            out.append(crop)
            if len(out) == batch:
                return np.stack(out)
        raise CodecTrainError(f"could not draw {batch} non-silent {n / SR:.2f} s crops from the training "
                          "files: give longer (or louder) audio, or lower --crop_min_s/--crop_max_s")


@dataclass
class TrainArgs:
    seed: int = 0
    batch: int = 8
    crop_min_s: float = 1.0
    crop_max_s: float = 2.0
    lr: float = 1e-3
    disc_lr: float = 2e-4
    vq_start: int = 300  # autoencoder warm-up: the RVQ is bypassed before this step
    disc_start: int = 4000
    qdrop_p: float = 0.5  # probability of training with a random 1..n_q levels (else all)
    w_mel: float = 1.0
    w_wave: float = 1.0  # EnCodec uses 0.1; at 0.1 our short CPU runs kept SI-SNR near -30 dB
    w_commit: float = 0.25
    w_adv: float = 1.0
    w_feat: float = 2.0
    grad_clip: float = 5.0


class Trainer:
    def __init__(self, cfg: SoundStreamConfig, dcfg: DiscConfig, args: TrainArgs, device: str = "cpu"):
        self.cfg, self.dcfg, self.args, self.device = cfg, dcfg, args, torch.device(device)
        torch.manual_seed(args.seed)
        self.gen = SoundStream(cfg).to(self.device)
        self.disc = MultiScaleSTFTDiscriminator(dcfg).to(self.device)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=args.lr, betas=(0.8, 0.99))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=args.disc_lr, betas=(0.5, 0.9))
        self.step = 0

    def train_step(self, wave_np: np.ndarray) -> dict[str, float]:
        a = self.args
        g = torch.Generator().manual_seed(int(hashlib.sha1(f"{a.seed}:{self.step}".encode()).hexdigest()[:12], 16))
        n_active = self.cfg.n_q
        if torch.rand((), generator=g).item() < a.qdrop_p:
            n_active = int(torch.randint(1, self.cfg.n_q + 1, (), generator=g))
        if self.step < a.vq_start:
            n_active = 0
        wave = torch.from_numpy(wave_np)[:, None].to(self.device)
        self.gen.train()
        recon, _, commit = self.gen(wave, n_active, g)
        mel = multiscale_mel_loss(wave, recon, SR)
        wav = (recon - wave).abs().mean()
        loss = a.w_mel * mel + a.w_wave * wav + a.w_commit * commit
        out = {"mel": mel.item(), "wave": wav.item(), "commit": commit.item(), "n_q": n_active}
        if self.step >= a.disc_start:
            real_logits, real_feats = self.disc(wave)
            fake_logits, _ = self.disc(recon.detach())
            d_loss = hinge_d_loss(real_logits, fake_logits)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), a.grad_clip)
            self.opt_d.step()
            fake_logits, fake_feats = self.disc(recon)
            adv, feat = hinge_g_loss(fake_logits), feature_matching_loss(real_feats, fake_feats)
            loss = loss + a.w_adv * adv + a.w_feat * feat
            out.update(d=d_loss.item(), adv=adv.item(), feat=feat.item())
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.gen.parameters(), a.grad_clip)
        self.opt_g.step()
        self.step += 1
        out["loss"] = loss.item()
        return out

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"gen.{k}": v.detach().cpu().contiguous() for k, v in self.gen.state_dict().items()}
        tensors.update({f"disc.{k}": v.detach().cpu().contiguous() for k, v in self.disc.state_dict().items()})
        meta = {"format": CKPT_FORMAT, "step": str(self.step), "gen_config": self.cfg.to_json(),
                "disc_config": self.dcfg.to_json(), "train_args": json.dumps(asdict(self.args))}
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            sd = opt.state_dict()
            meta[f"{name}_groups"] = json.dumps(sd["param_groups"])
            for idx, st in sd["state"].items():
                for key, val in st.items():
                    tensors[f"{name}.{idx}.{key}"] = torch.as_tensor(val).detach().cpu().contiguous()
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> Trainer:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        if meta.get("format") != CKPT_FORMAT:
            raise CodecTrainError(f"{path} is not a train-codec checkpoint (format {meta.get('format')!r}, expected "
                                  f"{CKPT_FORMAT}); give RUN_DIR/ckpt-latest.safetensors or a ckpt-STEP file")
        t = cls(SoundStreamConfig.from_json(meta["gen_config"]), DiscConfig.from_json(meta["disc_config"]),
                TrainArgs(**json.loads(meta["train_args"])), device)
        t.gen.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("gen.")})
        t.disc.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
        for name, opt in (("opt_g", t.opt_g), ("opt_d", t.opt_d)):
            state: dict[int, dict] = {}
            for k, v in tensors.items():
                if k.startswith(name + "."):
                    _, idx, key = k.split(".", 2)
                    state.setdefault(int(idx), {})[key] = v.to(device) if key != "step" else v
            opt.load_state_dict({"state": state, "param_groups": json.loads(meta[f"{name}_groups"])})
        t.step = int(meta["step"])
        return t


def export(checkpoint: Path, to: Path, float32: bool = False) -> str:
    """Write the generator of a trainer checkpoint as the codec's .safetensors (float16 unless
    `float32`); returns the line the command prints."""
    t = Trainer.load(checkpoint)
    save_soundstream(t.gen, to, torch.float32 if float32 else torch.float16,
                     {"step": str(t.step), "train_args": json.dumps(asdict(t.args))})
    return f"exported step {t.step} to {to} ({to.stat().st_size / 1e6:.2f} MB)"


@dataclass(frozen=True)
class RunOptions:
    """What `train-codec` does beyond TrainArgs: where, how long, which model, how often to save."""
    data: tuple[str, ...]  # globs of audio files (** recurses)
    out: Path  # run directory: checkpoints, cache, file lists
    steps: int = 100000
    resume: bool = False
    device: str = "cpu"
    preset: str = "default"
    channels: int | None = None  # overrides the preset's base channels C
    latent_dim: int | None = None  # overrides the preset's latent dim D
    disc_channels: int = DiscConfig().channels
    ckpt_every: int = 200
    keep_every: int = 2000  # also keep ckpt-STEP every this many steps (0: never)
    log_every_s: float = 10.0
    heldout_percent: int = 3
    cache: bool = True  # False: decode into memory only (tests)

    def __post_init__(self) -> None:
        if not self.data:
            raise CodecTrainError("give --data GLOB (repeatable) of the training audio")
        if self.preset not in PRESETS:
            raise CodecTrainError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.steps < 1 or self.ckpt_every < 1 or self.keep_every < 0:
            raise CodecTrainError("steps and ckpt_every must be >= 1, keep_every >= 0")


def train(opts: RunOptions, overrides: dict, command_line: str = "") -> Trainer:
    """Train (or with opts.resume continue) to opts.steps. `overrides`: TrainArgs fields given on
    the command line (with resume, they replace the checkpoint's values)."""
    opts.out.mkdir(parents=True, exist_ok=True)
    latest = opts.out / "ckpt-latest.safetensors"
    if opts.resume and latest.exists():
        t = Trainer.load(latest, opts.device)
        t.args = replace(t.args, **overrides)  # a given --lr/--disc_lr applies from the next step
        print(f"resumed from {latest} at step {t.step}; overrides {overrides}", flush=True)
    else:
        cfg = PRESETS[opts.preset]
        if opts.channels:
            cfg = replace(cfg, channels=opts.channels)
        if opts.latent_dim:
            cfg = replace(cfg, latent_dim=opts.latent_dim)
        t = Trainer(cfg, DiscConfig(channels=opts.disc_channels), TrainArgs(**overrides), opts.device)
    files, held = list_files(list(opts.data), opts.heldout_percent)
    (opts.out / "train_files.txt").write_text("".join(f + "\n" for f in files))
    (opts.out / "heldout.txt").write_text("".join(f + "\n" for f in held))
    src = CropSource(files, opts.out / "cache" if opts.cache else None, t.args.seed)
    n_g = sum(p.numel() for p in t.gen.parameters())
    if command_line:
        print("argv: " + command_line, flush=True)
    print(f"config {t.cfg.to_json()} | generator {n_g / 1e6:.2f} M params | {len(files)} train files, "
          f"{len(held)} held out | threads {torch.get_num_threads()}", flush=True)
    last_log, audio_s, t0 = time.time(), 0.0, time.time()
    while t.step < opts.steps:
        for opt, key in ((t.opt_g, "lr"), (t.opt_d, "disc_lr")):  # constant, no warm-up (schedule.py)
            for group in opt.param_groups:
                group["lr"] = schedule.lr_at(t.step, getattr(t.args, key))
        batch = src.batch(t.step, t.args.batch, t.args.crop_min_s, t.args.crop_max_s)
        losses = t.train_step(batch)
        audio_s += batch.size / SR
        now = time.time()
        if now - last_log >= opts.log_every_s or t.step == opts.steps:
            parts = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in losses.items())
            print(f"step {t.step} {parts} | {audio_s / max(now - last_log, 1e-9):.2f} audio-s/s | "
                  f"{(now - t0) / 60:.1f} min", flush=True)
            last_log, audio_s = now, 0.0
        if t.step % opts.ckpt_every == 0 or t.step == opts.steps:
            t.save(latest)
        if opts.keep_every and t.step % opts.keep_every == 0:
            t.save(opts.out / f"ckpt-{t.step:07d}.safetensors")
    return t
