"""Codec losses and quality metrics: multi-scale mel, hinge GAN losses, feature matching, SI-SNR.

`mel_distance` and `si_snr` are the metrics of the SoundStream model card and
bench/bench_codec_quality.py; the trainer's reconstruction loss uses the same mel front end.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

MEL_FFTS = (512, 1024, 2048)  # scales of the training loss and of the metric
LOG_EPS = 1e-5


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate_hz: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """HTK-scale triangular filters [n_mels, n_fft // 2 + 1], 0 Hz .. Nyquist, peak 1."""
    freqs = np.linspace(0, sample_rate_hz / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(0, _hz_to_mel(sample_rate_hz / 2), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - freqs[None]) / np.maximum(hi - mid, 1e-9)
    return torch.from_numpy(np.clip(np.minimum(up, down), 0, None).astype(np.float32))


def mel_spectrogram(wave: torch.Tensor, sample_rate_hz: int, n_fft: int, n_mels: int | None = None) -> torch.Tensor:
    """[B, n] or [B, 1, n] → magnitude mel [B, n_mels, frames] (hop n_fft // 4, Hann window)."""
    wave = wave.reshape(-1, wave.shape[-1])
    n_mels = n_mels or min(128, n_fft // 8)
    window = torch.hann_window(n_fft, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, n_fft, n_fft // 4, window=window, return_complex=True, center=True,
                      pad_mode="constant").abs()
    return mel_filterbank(sample_rate_hz, n_fft, n_mels).to(wave.device, wave.dtype) @ spec


def multiscale_mel_loss(ref: torch.Tensor, hat: torch.Tensor, sample_rate_hz: int,
                        ffts: tuple[int, ...] = MEL_FFTS) -> torch.Tensor:
    """Mean over scales of L1(log mel) + L1(mel): the training reconstruction loss."""
    total = ref.new_zeros(())
    for n_fft in ffts:
        m_ref = mel_spectrogram(ref, sample_rate_hz, n_fft)
        m_hat = mel_spectrogram(hat, sample_rate_hz, n_fft)
        total = total + F.l1_loss(torch.log(m_hat + LOG_EPS), torch.log(m_ref + LOG_EPS))
        total = total + F.l1_loss(m_hat, m_ref)
    return total / len(ffts)


@torch.no_grad()
def mel_distance(ref: np.ndarray, hat: np.ndarray, sample_rate_hz: int = 24000) -> float:
    """Metric: mean over FFT sizes 512/1024/2048 of the mean |ln(mel_ref + 1e-5) - ln(mel_hat + 1e-5)|
    (lower is better; 0 = identical). Both waves are trimmed to the shorter length."""
    n = min(len(ref), len(hat))
    r = torch.from_numpy(np.asarray(ref[:n], np.float32))[None]
    h = torch.from_numpy(np.asarray(hat[:n], np.float32))[None]
    vals = [F.l1_loss(torch.log(mel_spectrogram(h, sample_rate_hz, k) + LOG_EPS),
                      torch.log(mel_spectrogram(r, sample_rate_hz, k) + LOG_EPS)).item() for k in MEL_FFTS]
    return float(np.mean(vals))


def si_snr(ref: np.ndarray, hat: np.ndarray) -> float:
    """Scale-invariant SNR in dB (zero-mean signals, hat projected on ref)."""
    n = min(len(ref), len(hat))
    r = np.asarray(ref[:n], np.float64) - np.mean(ref[:n])
    h = np.asarray(hat[:n], np.float64) - np.mean(hat[:n])
    target = (h @ r) / max(r @ r, 1e-12) * r
    noise = h - target
    return float(10 * np.log10(max(target @ target, 1e-12) / max(noise @ noise, 1e-12)))


def hinge_d_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean()
               for r, f in zip(real_logits, fake_logits)) / len(real_logits)


def hinge_g_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    return sum(F.relu(1 - f).mean() for f in fake_logits) / len(fake_logits)


def feature_matching_loss(real_feats: list[list[torch.Tensor]], fake_feats: list[list[torch.Tensor]]) -> torch.Tensor:
    """EnCodec's relative feature matching: L1 / mean |real feature|, averaged over layers and discs."""
    total, count = 0.0, 0
    for rs, fs in zip(real_feats, fake_feats):
        for r, f in zip(rs, fs):
            r = r.detach()
            total = total + F.l1_loss(f, r) / (r.abs().mean() + 1e-8)
            count += 1
    return total / max(count, 1)
