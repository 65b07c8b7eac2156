"""The built-in "melodic" semantic extractor: a small frame-level torch model of ours, trained so
that its features follow the melody across instruments (training/semantic_train.py).

`build_extractor("melodic")` loads the packaged weights `tokenmill/weights/semantic-default.safetensors`
(card: the `.md` beside it); `build_extractor("melodic", path=FILE)` loads another weights file.

Front end (fixed, no trained weights). 50 Hz frames j (hop 320) centred on sample j·320 + 160:
the wave gets 864 zeros on each side and frame j is the padded samples [j·320, j·320 + 2048) under a
periodic Hann window, so the 25 Hz frame t (centre t·640 + 320, the frame contract of semantic.py)
is the pair of 50 Hz frames 2t, 2t+1. Power |rfft|² / Σhann² is averaged by unit-sum triangles on
a log-frequency grid of half semitones from MIDI 24 (32.7 Hz) upwards (`n_base_bins` bins, each at
least `min_width_bins` FFT bins wide so low bins are not empty), averaged over the frame pair
(25 Hz), in dB with a floor, standardized per bin with statistics of the training renders (stored
in the weights). Harmonic stack: for h in `harmonics` the grid is read at h·f for each output bin
f (MIDI 36 up, `n_bins` half semitones), giving a [len(harmonics), n_bins, T] image where a note's
harmonics line up in one column (zeros past the grid's top).

Network, all at 25 Hz. Conv2d over (frequency, time) (5×3, stride 2 in frequency: semitone
steps) → GELU → two residual Conv2d (5×3) blocks → 1×1 Conv2d to `squeeze` channels → flatten
frequency × channels → Linear to `hidden` → dilated residual Conv1d blocks over time (kernel 3,
dilations `dilations`, LayerNorm per frame) → LayerNorm → Linear to `dim` → L2 normalization.
Every layer is local in time (receptive field ±(3 + Σ dilations) frames), nothing normalizes over
the sequence, so a frame depends only on the audio around it.

A wave is cut into chunks of `chunk_frames` 25 Hz frames (one chunk up to 30 s), each run with
`context_frames` of its real audio, or of zero samples past the wave's ends, on either side; the
context covers the receptive field, so chunking changes nothing but float rounding and the
features are a fixed function of the wave.

Determinism: features are computed on ONE torch thread whatever the job's --torch_threads (the
thread count is set to 1 for the forward and restored), and one wave per forward pass, so a
segment's features do not depend on its batch or on the worker's thread count; kernels follow the
job's compute layout (--kernels).

Pure model code: numpy/torch in, arrays out. No Beam, no file system but the weights file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from tokenmill.errors import TokenmillError
from tokenmill.tokenizers.net_weights import read_net_file, save_net_file
from tokenmill.tokenizers.semantic import HOP_SAMPLES, SAMPLE_RATE_HZ, SemanticExtractor

FORMAT = "tokenmill.semantic-melodic.v1"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "semantic-default.safetensors"
SUB_HOP = HOP_SAMPLES // 2  # 320: the 50 Hz front end


class MelodicModelError(TokenmillError, RuntimeError):
    """The melodic extractor's weights file is missing or not one of ours; the message says the fix."""


@dataclass(frozen=True)
class MelodicNetConfig:
    """Architecture and front end; saved in the weights file's metadata and in the manifest."""

    n_fft: int = 2048  # 128 ms Hann window at 50 Hz
    base_midi: int = 24  # lowest grid bin (C1, 32.7 Hz); bins are half semitones
    n_base_bins: int = 192  # grid up to MIDI 119.5 (~8 kHz)
    first_midi: int = 36  # lowest output bin (C2)
    n_bins: int = 144  # output bins: 6 octaves of half semitones
    harmonics: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0)
    min_width_bins: float = 1.5  # a grid triangle is at least this many FFT bins wide (half width)
    amin: float = 1e-10  # power floor (-100 dB)
    channels: int = 12
    squeeze: int = 4
    hidden: int = 96
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    dim: int = 32
    chunk_frames: int = 750  # 30 s per forward pass
    context_frames: int = 20  # >= the receptive field, 3 + Σ dilations frames

    def __post_init__(self) -> None:
        if self.n_fft < 2 * SUB_HOP or self.n_fft % 2:
            raise ValueError(f"n_fft must be even and >= 640, got {self.n_fft}")
        if self.first_midi < self.base_midi or self.n_bins < 1 or self.n_base_bins < 1:
            raise ValueError("need first_midi >= base_midi and positive bin counts")
        if self.context_frames < 3 + sum(self.dilations):
            raise ValueError(f"context_frames={self.context_frames} is below the receptive field "
                             f"{3 + sum(self.dilations)} frames")
        if self.chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")

    @property
    def harmonic_offsets(self) -> list[int]:
        """Grid-bin offsets (half semitones) of each harmonic: round(24·log2 h)."""
        return [int(round(24 * np.log2(h))) for h in self.harmonics]


def grid_filterbank(cfg: MelodicNetConfig) -> np.ndarray:
    """[n_base_bins, n_fft/2+1] unit-sum triangles centred on half semitones from base_midi; a
    centre above Nyquist gives an all-zero row."""
    df = SAMPLE_RATE_HZ / cfg.n_fft
    freqs = np.arange(cfg.n_fft // 2 + 1) * df
    midi = cfg.base_midi + 0.5 * np.arange(cfg.n_base_bins)
    centre = 440.0 * 2.0 ** ((midi - 69) / 12)
    half = np.maximum(centre * (2 ** (1 / 24) - 1), cfg.min_width_bins * df)
    tri = np.maximum(0.0, 1.0 - np.abs(freqs[None, :] - centre[:, None]) / half[:, None])
    tri[centre >= SAMPLE_RATE_HZ / 2 - df] = 0.0
    s = tri.sum(1, keepdims=True)
    return np.divide(tri, s, out=np.zeros_like(tri), where=s > 0)


class FrontEnd(nn.Module):
    """float32 [B, n] (n a multiple of 640) → grid dB [B, n_base_bins, n // 640] (unstandardized):
    the power of 50 Hz frames 2t and 2t+1 averaged, then in dB."""

    def __init__(self, cfg: MelodicNetConfig):
        super().__init__()
        self.cfg = cfg
        win = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float64)
        fb = grid_filterbank(cfg) / float((win ** 2).sum())
        self.register_buffer("fb", torch.from_numpy(fb.astype(np.float32)), persistent=False)
        self.register_buffer("win", win.float(), persistent=False)
        self.pad = cfg.n_fft // 2 - SUB_HOP // 2  # 864: frame j centred on j·320 + 160

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(wave, (self.pad, self.pad))
        spec = torch.stft(x, self.cfg.n_fft, SUB_HOP, window=self.win, center=False, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # [B, F, n/320]
        grid = torch.matmul(self.fb, power)  # [B, n_base_bins, 2T]
        b, f, t2 = grid.shape
        grid = grid.reshape(b, f, t2 // 2, 2).mean(-1)  # 50 Hz pairs → 25 Hz
        return 10.0 * torch.log10(grid + self.cfg.amin)


class _Res2d(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, (5, 3), padding=(2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.gelu(self.conv(x))


class _Res1d(nn.Module):
    def __init__(self, c: int, dilation: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.conv = nn.Conv1d(c, c, 3, padding=dilation, dilation=dilation)
        self.proj = nn.Conv1d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        h = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return x + self.proj(nn.functional.gelu(self.conv(h)))


class MelodicNet(nn.Module):
    """Grid dB [B, n_base_bins, T] → L2-normalized features [B, T, dim] (see the module doc)."""

    def __init__(self, cfg: MelodicNetConfig):
        super().__init__()
        self.cfg = cfg
        self.front = FrontEnd(cfg)
        self.register_buffer("grid_mean", torch.zeros(cfg.n_base_bins, 1))
        self.register_buffer("grid_std", torch.ones(cfg.n_base_bins, 1))
        c = cfg.channels
        self.conv_in = nn.Conv2d(len(cfg.harmonics), c, (5, 3), stride=(2, 1), padding=(2, 1))
        self.res2d = nn.Sequential(_Res2d(c), _Res2d(c))
        self.squeeze = nn.Conv2d(c, cfg.squeeze, 1)
        self.proj = nn.Linear(cfg.squeeze * ((cfg.n_bins + 1) // 2), cfg.hidden)
        self.res1d = nn.Sequential(*[_Res1d(cfg.hidden, d) for d in cfg.dilations])
        self.out_norm = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.dim)
        idx = []
        start = 2 * (cfg.first_midi - cfg.base_midi)
        for off in cfg.harmonic_offsets:
            idx.append(start + off + np.arange(cfg.n_bins))
        idx = np.stack(idx)  # [H, n_bins] grid bins; out of range → the zero row appended below
        idx[(idx < 0) | (idx >= cfg.n_base_bins)] = cfg.n_base_bins
        self.register_buffer("stack_idx", torch.from_numpy(idx.astype(np.int64)), persistent=False)

    def standardize(self, grid_db: torch.Tensor) -> torch.Tensor:
        return (grid_db - self.grid_mean) / self.grid_std

    def harmonic_stack(self, grid: torch.Tensor) -> torch.Tensor:
        """Standardized grid [B, n_base_bins, T] → [B, H, n_bins, T] (zeros past the grid)."""
        padded = nn.functional.pad(grid, (0, 0, 0, 1))  # the zero row at index n_base_bins
        return padded[:, self.stack_idx]

    def forward_grid(self, grid_db: torch.Tensor) -> torch.Tensor:
        """Raw grid dB [B, n_base_bins, T] → features [B, T, dim]."""
        x = self.harmonic_stack(self.standardize(grid_db))  # [B, H, n_bins, T]
        x = nn.functional.gelu(self.conv_in(x))  # [B, C, n_bins / 2, T]: semitone steps
        x = self.squeeze(self.res2d(x))  # [B, S, n_bins / 2, T]
        b, _, _, t = x.shape
        x = x.permute(0, 3, 1, 2).reshape(b, t, -1)  # [B, T, S·n_bins/2]
        h = self.res1d(self.proj(x).transpose(1, 2)).transpose(1, 2)  # [B, T, hidden]
        return nn.functional.normalize(self.head(self.out_norm(h)), dim=-1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """float32 [B, n] → [B, n // 640, dim]."""
        return self.forward_grid(self.front(wave))


# ---- weights ---------------------------------------------------------------------------------

def save_weights(net: MelodicNet, path: Path | str, extra: dict[str, str] | None = None) -> Path:
    """Model-only safetensors (atomic): state dict + metadata {format, config (JSON), ...extra}."""
    return save_net_file(net, path, FORMAT, extra)


def config_from_json(text: str) -> MelodicNetConfig:
    d = json.loads(text)
    known = {f.name for f in fields(MelodicNetConfig)}
    for k in ("harmonics", "dilations"):
        if k in d:
            d[k] = tuple(d[k])
    return MelodicNetConfig(**{k: v for k, v in d.items() if k in known})


def load_weights(path: Path | str) -> tuple[MelodicNet, dict[str, str]]:
    path = Path(path)
    missing = (" (the packaged default is missing: reinstall tokenmill, or train one with "
               "`tokenmill train-semantic` and pass path=...)") if path == DEFAULT_WEIGHTS else ""
    state, meta = read_net_file(path, FORMAT, lambda m: MelodicModelError(f"melodic: {m}"),
                                what="melodic extractor", missing=missing,
                                wrong_format="; export one with `tokenmill train-semantic --export`")
    net = MelodicNet(config_from_json(meta["config"]))
    net.load_state_dict(state)
    return net.eval(), meta


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the body on one torch intra-op thread, restoring the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- extractor -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MelodicConfig:
    """The extractor's settings beside the weights (whose config and sha256 are recorded too)."""

    path: str | None = None  # None: the packaged default


class MelodicExtractor(SemanticExtractor):
    """Features float32 [n // 640, dim], unit L2 norm per frame (see the module doc)."""

    name = "melodic"

    def __init__(self, config: MelodicConfig | None = None) -> None:
        self.config = config or MelodicConfig()
        self.path = Path(self.config.path) if self.config.path else DEFAULT_WEIGHTS
        self.net, self.meta = load_weights(self.path)
        self.dim = self.net.cfg.dim
        self.weights_sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()

    def config_dict(self) -> dict[str, Any]:
        # the path is where the weights are, not what they are: the sha256 identifies them
        return {"net": asdict(self.net.cfg)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "standardize": False,
                "model": "tokenmill melodic (semantic-default card)" if self.path == DEFAULT_WEIGHTS
                else f"tokenmill melodic ({self.path.name})"}

    def _extract(self, wave: np.ndarray) -> np.ndarray:
        cfg = self.net.cfg
        n_frames = len(wave) // HOP_SAMPLES
        ctx = cfg.context_frames * HOP_SAMPLES
        out = np.empty((n_frames, cfg.dim), np.float32)
        with one_thread(), torch.inference_mode():
            padded = np.pad(wave, ctx)
            for t0 in range(0, n_frames, cfg.chunk_frames):
                t1 = min(n_frames, t0 + cfg.chunk_frames)
                piece = padded[t0 * HOP_SAMPLES: t1 * HOP_SAMPLES + 2 * ctx]
                f = self.net(torch.from_numpy(np.ascontiguousarray(piece))[None])[0]
                out[t0:t1] = f[cfg.context_frames: cfg.context_frames + t1 - t0].numpy()
        return out


def build_melodic(**config: Any) -> MelodicExtractor:
    known = {f.name for f in fields(MelodicConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown melodic config keys {unknown}; valid: {sorted(known)}")
    return MelodicExtractor(MelodicConfig(**config))
