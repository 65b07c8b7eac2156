"""FAD with the packaged built-in MuLan grows monotonically as real music (tests/data/audio) is
degraded with white noise at 30, 20, 10 and 0 dB SNR (noise seeded by (7, clip index))."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokenmill.eval.clips import load_clip
from tokenmill.eval.embedders import build_embedder
from tokenmill.eval.fad import GaussStats, fad

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def add_noise(wave: np.ndarray, snr_db: float, seed: tuple[int, ...]) -> np.ndarray:
    """wave + white noise whose power is the wave's power / 10^(snr/10)."""
    n = np.random.default_rng(list(seed)).standard_normal(wave.size)
    n *= np.sqrt(np.mean(wave.astype(np.float64) ** 2) / 10 ** (snr_db / 10) / np.mean(n ** 2))
    return (wave + n).astype(np.float32)


def test_fad_grows_monotonically_with_noise(real_audio_dir: Path):
    emb = build_embedder("mulan")  # the packaged, trained built-in MuLan
    waves = [load_clip(p.read_bytes(), str(p), (emb.sample_rate_hz,))[0][emb.sample_rate_hz]
             for p in sorted(real_audio_dir.iterdir())]
    assert len(waves) == 8
    clean = [emb.embed(w) for w in waves]
    ref = GaussStats.of(np.concatenate(clean))
    assert ref.n == 83  # one frame per 10 s window at a 1 s stride
    fads = [fad(GaussStats.of(np.concatenate(clean)), ref)]
    for snr in (30, 20, 10, 0):
        noisy = [emb.embed(add_noise(w, snr, (7, i))) for i, w in enumerate(waves)]
        fads.append(fad(GaussStats.of(np.concatenate(noisy)), ref))
    assert abs(fads[0]) < 1e-6
    assert all(b > a for a, b in zip(fads, fads[1:])), fads
    assert fads[-1] > 5 * fads[1]  # 0 dB is far worse than 30 dB, not a rounding-level trend
