"""The built-in melody model: a small ViT over log-mel frames of a 4 s window → 192-d unit vector.

MusicLM's melody embedder (§6, App. C) is a 12-layer ViT over mel frames trained with a
semi-hard triplet loss on same-melody / different-sound pairs. Ours is the same shape, scaled to
train in well under an hour on one CPU thread (`training/melody_train.py`, card:
tokenmill/weights/melody-default.md):

  16 kHz mono, 4 s (64 000 samples) → log-mel: 128 bands 40 Hz–5 kHz (FFT 2048, hop 320 = 50
  frames/s, no centring: 194 frames) → per-window range and level normalization (log10 power
  floored 8 decades under the window's peak, then the window's own mean and std removed, so
  gain does not matter and a window never depends on another) → patches of 4 frames × 128 bands
  (80 ms; 48 patches, the last 2 frames dropped) → Linear to d → [CLS] + patches + learnt
  positions → `layers` pre-norm Transformer blocks (multi-head self-attention, GELU MLP) →
  final LayerNorm → concat([CLS], mean of patches) → Linear → 192 → L2 normalization.

The mel bands are narrow enough to separate semitones above ~C4 (FFT bins 7.8 Hz apart), and the
model sees the harmonics too; keys are kept (a transposed tune is another melody), sound is not.

Weights: one safetensors file of the network's tensors, metadata {format, config (JSON), steps,
trained_on}. `path=None` loads the packaged `tokenmill/weights/melody-default.safetensors`.
`weights_sha256` is the sha256 of the file's bytes. The packaged weights come with a packaged RVQ
(24 × 512, `melody-default-rvq.safetensors`, fitted on their windows; card: the weights' `.md`),
which `melody_tokens.load_codebook_for` uses when no codebook is given; other weights have none.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tokenmill.schemas import rates
from tokenmill.tokenizers.logmel_tower import LogMelWindowTower
from tokenmill.tokenizers.melody import MelodyError, MelodyModel
from tokenmill.tokenizers.net_weights import read_net_file, save_net_file
from tokenmill.tokenizers.semantic import mel_filterbank

FORMAT = "tokenmill.melody.v1"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "melody-default.safetensors"
DEFAULT_RVQ = WEIGHTS_DIR / "melody-default-rvq.safetensors"


@dataclass(frozen=True)
class MelodyNetConfig:
    sample_rate_hz: int = rates.MELODY_SAMPLE_RATE_HZ
    window_s: int = rates.MELODY_WINDOW_S
    n_fft: int = 2048
    hop: int = 320  # 50 mel frames per second
    n_mels: int = 128
    fmin_hz: float = 40.0
    fmax_hz: float = 5000.0
    range_decades: float = 8.0  # log10 power floored this far under the window's peak
    patch_frames: int = 4  # 80 ms per token
    d_model: int = 128
    heads: int = 4
    layers: int = 4
    ff_mult: int = 3
    dropout: float = 0.1
    dim: int = rates.MELODY_DIM

    @property
    def window_frames(self) -> int:
        """Mel frames of one window (no centring): 1 + (n - n_fft) // hop."""
        return 1 + (self.window_s * self.sample_rate_hz - self.n_fft) // self.hop

    @property
    def n_patches(self) -> int:
        return self.window_frames // self.patch_frames

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise MelodyError(f"d_model {self.d_model} must be a multiple of heads {self.heads}")
        if self.n_patches < 1:
            raise MelodyError(f"a {self.window_s} s window gives no {self.patch_frames}-frame patch")
        if not 0 < self.fmin_hz < self.fmax_hz <= self.sample_rate_hz / 2:
            raise MelodyError(f"need 0 < fmin_hz < fmax_hz <= {self.sample_rate_hz / 2}")


class LogMel(nn.Module):
    """float32 [B, n] → log10 mel power float32 [B, n_mels, 1 + (n - n_fft) // hop], unnormalized."""

    def __init__(self, cfg: MelodyNetConfig):
        super().__init__()
        self.cfg = cfg
        freqs = np.fft.rfftfreq(cfg.n_fft, 1.0 / cfg.sample_rate_hz)
        fb = mel_filterbank(freqs, cfg.n_mels, cfg.fmin_hz, cfg.fmax_hz).astype(np.float32)
        self.register_buffer("fb", torch.from_numpy(fb), persistent=False)
        self.register_buffer("win", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, self.cfg.n_fft, self.cfg.hop, window=self.win, center=False, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # [B, F, T]
        return torch.log10(torch.matmul(self.fb, power) + 1e-12)


def normalize_window(logmel: torch.Tensor, range_decades: float) -> torch.Tensor:
    """[B, M, T] log10 power → floored range_decades under each window's peak, zero mean, unit std."""
    peak = logmel.amax(dim=(1, 2), keepdim=True)
    x = torch.maximum(logmel, peak - range_decades)
    mean = x.mean(dim=(1, 2), keepdim=True)
    std = x.std(dim=(1, 2), keepdim=True, unbiased=False)
    return (x - mean) / (std + 1e-3)


class Block(nn.Module):
    """Pre-norm Transformer block: x + MHSA(LN(x)); x + MLP(LN(x))."""

    def __init__(self, cfg: MelodyNetConfig):
        super().__init__()
        d = cfg.d_model
        self.heads = cfg.heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, cfg.ff_mult * d), nn.Linear(cfg.ff_mult * d, d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # 3 × [B, H, T, d/H]
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.fc2(nn.functional.gelu(self.fc1(self.ln2(x)))))


class MelodyNet(nn.Module):
    """Raw log-mel [B, n_mels, T >= window_frames] (or waves) → L2-normalized [B, dim]."""

    def __init__(self, cfg: MelodyNetConfig):
        super().__init__()
        self.cfg = cfg
        self.logmel = LogMel(cfg)
        self.patch = nn.Linear(cfg.n_mels * cfg.patch_frames, cfg.d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos = nn.Parameter(torch.randn(1, cfg.n_patches + 1, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(2 * cfg.d_model, cfg.dim)

    def embed_mel(self, raw_logmel: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        x = normalize_window(raw_logmel[:, :, :cfg.window_frames], cfg.range_decades)
        b = x.shape[0]
        used = cfg.n_patches * cfg.patch_frames
        # [B, M, P·pf] → [B, P, pf·M]: patch p holds frames p·pf .. p·pf + pf − 1, frame-major
        x = x[:, :, :used].transpose(1, 2).reshape(b, cfg.n_patches, cfg.patch_frames * cfg.n_mels)
        h = torch.cat([self.cls.expand(b, -1, -1), self.patch(x)], dim=1) + self.pos
        for blk in self.blocks:
            h = blk(h)
        h = self.ln(h)
        return nn.functional.normalize(self.head(torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1)), dim=-1)

    def embed_wave(self, wave: torch.Tensor) -> torch.Tensor:
        return self.embed_mel(self.logmel(wave))


def save_melody_net(net: MelodyNet, path: Path | str, extra_meta: dict[str, str] | None = None) -> Path:
    """Write the model-only weights file (temp name + rename)."""
    return save_net_file(net, path, FORMAT, extra_meta)


def load_melody_net(path: Path | str) -> tuple[MelodyNet, dict[str, str]]:
    path = Path(path)
    missing = (" (the packaged default is missing: reinstall tokenmill, or train one with `train-melody` "
               "and pass its weights)") if path == DEFAULT_WEIGHTS else ""
    state, meta = read_net_file(path, FORMAT, lambda m: MelodyError(f"melody: {m}"),
                                what="built-in melody", missing=missing,
                                wrong_format="; export one with train-melody --export")
    net = MelodyNet(MelodyNetConfig(**json.loads(meta["config"])))
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise MelodyError(f"melody: {path} does not match its own config: {e}") from e
    return net.eval(), meta


class BuiltinMelody(LogMelWindowTower, MelodyModel):
    """The built-in melody ViT behind the MelodyModel interface (16 kHz in, 192-d out)."""

    name = "builtin"

    def __init__(self, path: Any = None, device: str = "cpu", batch_size: int = 16) -> None:
        if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
            raise MelodyError(f"melody: device {device!r} is not available here; pass device='cpu'")
        self.path = Path(path) if path is not None else DEFAULT_WEIGHTS
        self.net, self.meta = load_melody_net(self.path)
        self.net.to(device)
        self.cfg = self.net.cfg
        if (self.cfg.sample_rate_hz, self.cfg.window_s, self.cfg.dim) != (
                rates.MELODY_SAMPLE_RATE_HZ, rates.MELODY_WINDOW_S, rates.MELODY_DIM):
            raise MelodyError(f"melody: {self.path} takes {self.cfg.window_s} s at {self.cfg.sample_rate_hz} Hz → "
                              f"{self.cfg.dim}-d; tokenmill's melody stream needs {rates.MELODY_WINDOW_S} s at "
                              f"{rates.MELODY_SAMPLE_RATE_HZ} Hz → {rates.MELODY_DIM}-d")
        self.device, self.batch_size = device, int(batch_size)
        self.weights_sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        # Only the packaged weights have a packaged RVQ (fitted on their windows); any other
        # weights need --melody_codebook (see melody_tokens.load_codebook_for).
        self.default_codebook = DEFAULT_RVQ if self.path.resolve() == DEFAULT_WEIGHTS.resolve() else None

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": "tokenmill built-in melody ViT (log-mel patches, triplet-trained)"}


def build_builtin_melody(path: Any = None, device: str = "cpu", batch_size: int = 16, **unknown: Any) -> BuiltinMelody:
    if unknown:
        raise MelodyError(f"melody builtin: unknown option(s) {', '.join(sorted(unknown))}; valid: path, device, batch_size")
    return BuiltinMelody(path=path, device=device, batch_size=batch_size)
