"""Semantic extractor tests: values against first-principles references, not just shapes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokenmill.schemas import rates
from tokenmill.tokenizers import semantic
from tokenmill.tokenizers.semantic import (
    SemanticExtractor, SpectralConfig, SpectralExtractor, build_extractor, chroma_filterbank,
    hz_to_mel, mel_centers_hz, mel_filterbank, mel_to_hz,
)

SR, HOP = 16_000, 640
EX = SpectralExtractor()
M = EX.config.n_mels
LOG_MEL, CHROMA, DELTA = slice(0, M), slice(M, M + 12), slice(M + 12, EX.dim)


def sine(freq_hz: float, n_frames: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(n_frames * HOP) / SR
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


# ---- (a) fast path == slow per-frame NumPy reference ----------------------------------------

def reference_features(x: np.ndarray, cfg: SpectralConfig) -> np.ndarray:
    """Per frame, from first principles, in float64: window, rfft, power, mel, log, chroma, delta."""
    x = x.astype(np.float64)
    n, win, nfft = len(x), cfg.win_length, cfg.n_fft
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    freqs = np.arange(nfft // 2 + 1) * SR / nfft
    mel2hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    hz2mel = lambda f: 2595 * math.log10(1 + f / 700)  # noqa: E731
    step = (hz2mel(cfg.fmax_hz) - hz2mel(cfg.fmin_hz)) / (cfg.n_mels + 1)
    melbank = np.zeros((cfg.n_mels, len(freqs)))
    for b in range(cfg.n_mels):
        lo, c, hi = (mel2hz(hz2mel(cfg.fmin_hz) + (b + j) * step) for j in range(3))
        for k, f in enumerate(freqs):
            if lo < f <= c:
                melbank[b, k] = (f - lo) / (c - lo)
            elif c < f < hi:
                melbank[b, k] = (hi - f) / (hi - c)
        melbank[b] /= melbank[b].sum()
    chromabank = np.zeros((12, len(freqs)))
    for k, f in enumerate(freqs):
        if cfg.chroma_fmin_hz <= f <= cfg.chroma_fmax_hz:
            pc = (69 + 12 * math.log2(f / 440)) % 12  # 0 = C
            for c in range(12):
                dist = min(abs(pc - c), 12 - abs(pc - c))
                chromabank[c, k] = max(0.0, 1 - dist)
    rows = []
    for t in range(n // HOP):
        seg = np.zeros(win)
        for i in range(win):
            s = t * HOP + HOP // 2 - win // 2 + i  # window centred on t*640 + 320
            if 0 <= s < n:
                seg[i] = x[s]
        power = np.abs(np.fft.rfft(seg * hann, nfft)) ** 2 / np.sum(hann**2)
        mel_db = 10 * np.log10(melbank @ power + cfg.amin)
        chroma_db = 10 * np.log10(chromabank @ power + cfg.chroma_amin)
        rows.append(np.concatenate([
            (mel_db - cfg.mel_db_offset) / cfg.mel_db_scale,
            (chroma_db - chroma_db.mean()) / cfg.chroma_db_scale * cfg.chroma_weight,
        ]))
    a = np.array(rows)
    pooled = a[:, :cfg.n_mels].reshape(len(a), cfg.n_delta_bands, -1).mean(2)
    delta = np.array([(pooled[min(t + 1, len(a) - 1)] - pooled[max(t - 1, 0)]) / 2 for t in range(len(a))])
    return np.concatenate([a, delta / cfg.delta_scale * cfg.delta_weight], axis=1)


@pytest.mark.parametrize("n_frames", [1, 2, 37])
def test_matches_slow_reference(n_frames):
    rng = np.random.default_rng(n_frames)
    x = (0.3 * rng.standard_normal(n_frames * HOP)).astype(np.float32)
    x[: HOP // 2] *= 0.01  # a quiet start exercises the low-power range
    fast = EX.extract(x)
    ref = reference_features(x, EX.config)
    np.testing.assert_allclose(fast, ref, atol=2e-5, rtol=0)


def test_chunking_does_not_change_values():
    x = (0.2 * np.random.default_rng(1).standard_normal(50 * HOP)).astype(np.float32)
    small = SpectralExtractor(SpectralConfig(chunk_frames=7)).extract(x)
    np.testing.assert_allclose(small, EX.extract(x), atol=1e-5, rtol=0)


def test_white_noise_gives_flat_mean_band_power():
    """P = |X|²/Σw² and unit-sum triangles: white noise of variance σ² has mean band power σ²."""
    sigma2 = 0.01
    x = (math.sqrt(sigma2) * np.random.default_rng(2).standard_normal(500 * HOP)).astype(np.float32)
    mel_power = EX.band_powers(x)[1:-1, :M].mean(0)  # interior frames only (no zero padding)
    np.testing.assert_allclose(mel_power, sigma2, rtol=0.12)


# ---- (b) mel filterbank ---------------------------------------------------------------------

def test_mel_scale_hand_values():
    assert hz_to_mel(700.0) == pytest.approx(2595 * math.log10(2))  # 781.17
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.05)  # HTK: 1 kHz ≈ 1000 mel
    assert mel_to_hz(hz_to_mel(4321.0)) == pytest.approx(4321.0)
    # One band on [0, 1400 Hz]: its centre is at half of mel(1400) = 2595·log10(3)/2 mel,
    # i.e. 700·(√3 - 1) = 512.436 Hz; the triangle is linear in Hz on each side.
    centre = 700 * (math.sqrt(3) - 1)
    assert mel_centers_hz(1, 0.0, 1400.0) == pytest.approx([0.0, centre, 1400.0])
    vals = mel_filterbank(np.array([0.0, centre / 2, centre, (centre + 1400) / 2, 1400.0]), 1, 0.0, 1400.0)
    np.testing.assert_allclose(vals[0], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-12)


def test_each_mel_filter_peaks_at_its_centre_and_bank_covers_band():
    n_mels, fmin, fmax = 64, 30.0, 8000.0
    pts = mel_centers_hz(n_mels, fmin, fmax)
    centres = pts[1:-1]
    at_centres = mel_filterbank(centres, n_mels, fmin, fmax)
    np.testing.assert_allclose(at_centres, np.eye(n_mels), atol=1e-12)  # 1 at own, 0 at others
    grid = np.linspace(0.0, 8000.0, 80_001)  # 0.1 Hz steps
    bank = mel_filterbank(grid, n_mels, fmin, fmax)
    assert np.all(np.abs(grid[bank.argmax(1)] - centres) <= 0.1)
    total = bank.sum(0)
    inner = (grid >= centres[0]) & (grid <= centres[-1])
    np.testing.assert_allclose(total[inner], 1.0, atol=1e-9)  # partition of unity
    assert np.all(total[(grid > fmin) & (grid < fmax)] > 0)  # every frequency in the band is covered
    assert np.all(total[(grid <= fmin) | (grid >= fmax)] == 0)
    assert pts[0] == pytest.approx(fmin) and pts[-1] == pytest.approx(fmax)


def test_chroma_bank_hand_values():
    # A4, C4 (261.63), and halfway between A4 and A#4 (quarter tone): weights split 0.5/0.5.
    f = np.array([440.0, 261.6256, 440 * 2 ** (0.5 / 12), 100.0, 5000.0])
    w = chroma_filterbank(f, 130.0, 4200.0)
    np.testing.assert_allclose(w[:, 0], np.eye(12)[9], atol=1e-9)
    np.testing.assert_allclose(w[:, 1], np.eye(12)[0], atol=1e-4)
    np.testing.assert_allclose(w[[9, 10], 2], [0.5, 0.5], atol=1e-9)
    assert w[:, 3].sum() == 0 and w[:, 4].sum() == 0  # outside the chroma band
    assert w[:, 2].sum() == pytest.approx(1.0)


# ---- (c) chroma on sines --------------------------------------------------------------------

@pytest.mark.parametrize("freq_hz, pitch_class", [(440.0, 9), (261.63, 0), (392.0, 7), (146.83, 2), (1318.5, 4)])
def test_sine_chroma_maximum_on_its_pitch_class(freq_hz, pitch_class):
    feats = EX.extract(sine(freq_hz, 20))
    assert np.all(feats[1:-1, CHROMA].argmax(1) == pitch_class)


def test_near_silent_chroma_is_flat_not_amplified_noise():
    loud = EX.extract(sine(440.0, 10, amp=0.1))[1:-1, CHROMA]
    faint = EX.extract(sine(440.0, 10, amp=1e-6))[1:-1, CHROMA]  # -120 dBFS: below chroma_amin
    assert loud[:, 9].min() > 2.0 and np.abs(faint).max() < 0.01


# ---- (d) frame count and alignment ----------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(n_frames=st.integers(1, 400), seed=st.integers(0, 2**16))
def test_frame_count_is_exact(n_frames, seed):
    x = (0.1 * np.random.default_rng(seed).standard_normal(n_frames * HOP)).astype(np.float32)
    feats = EX.extract(x)
    assert feats.shape == (n_frames, EX.dim) == (len(x) // rates.SEMANTIC.hop_samples, EX.dim)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()


@settings(max_examples=30, deadline=None)
@given(s=st.integers(1, 20 * HOP - 1).filter(lambda s: s % HOP))
def test_click_lands_in_frame_s_div_640(s):
    """Frame t's window is centred on t·640 + 320, so a click at s is loudest in frame s // 640."""
    x = np.zeros(20 * HOP, np.float32)
    x[s] = 1.0
    energy = EX.extract(x)[:, LOG_MEL].mean(1)
    assert energy.argmax() == s // HOP
    assert energy[s // HOP] > energy.min() + 1.0  # well above the silent-frame floor


def test_click_on_hop_boundary_ties_between_neighbours():
    """At s = k·640 the click is 320 samples from two window centres: equal Hann weights (0.5)."""
    x = np.zeros(10 * HOP, np.float32)
    x[4 * HOP] = 1.0
    energy = EX.band_powers(x)[:, :M].sum(1)
    np.testing.assert_allclose(energy[3], energy[4], rtol=1e-5)
    assert energy[3] > 100 * np.delete(energy, [3, 4]).max()


def test_receptive_field_is_the_80ms_window():
    """Mel/chroma of frame t depend only on samples [t·640 - 320, t·640 + 960)."""
    rng = np.random.default_rng(3)
    x = (0.1 * rng.standard_normal(12 * HOP)).astype(np.float32)
    t = 5
    y = x.copy()
    lo, hi = t * HOP - 320, t * HOP + 960
    y[:lo] = rng.standard_normal(lo)
    y[hi:] = rng.standard_normal(len(y) - hi)
    a, b = EX.band_powers(x)[t], EX.band_powers(y)[t]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)
    y[lo] += 1.0  # the first sample of the window has weight 0 (periodic Hann) ...
    np.testing.assert_allclose(EX.band_powers(y)[t], a, rtol=1e-5, atol=1e-12)
    y[lo + 64] += 1.0  # ... the samples after it do not
    assert not np.allclose(EX.band_powers(y)[t], a, rtol=1e-3)


# ---- gain ------------------------------------------------------------------------------------

def test_gain_shifts_log_mel_only():
    x = (0.1 * np.random.default_rng(4).standard_normal(40 * HOP)).astype(np.float32)
    a, b = EX.extract(x), EX.extract(2 * x)
    shift = 20 * math.log10(2) / EX.config.mel_db_scale  # +6.02 dB -> +0.376
    np.testing.assert_allclose(b[:, LOG_MEL] - a[:, LOG_MEL], shift, atol=1e-4)
    np.testing.assert_allclose(b[:, CHROMA], a[:, CHROMA], atol=1e-4)
    np.testing.assert_allclose(b[:, DELTA], a[:, DELTA], atol=1e-4)


# ---- (e) determinism ------------------------------------------------------------------------

def test_deterministic_bytes_and_batch():
    rng = np.random.default_rng(5)
    waves = [(0.2 * rng.standard_normal(k * HOP)).astype(np.float32) for k in (1, 30, 7)]
    first = [EX.extract(w).tobytes() for w in waves]
    again = [SpectralExtractor().extract(w).tobytes() for w in waves]
    batch = [f.tobytes() for f in EX.extract_batch(waves)]
    assert first == again == batch


def test_float64_input_is_accepted_as_float32():
    x = np.random.default_rng(6).standard_normal(3 * HOP) * 0.1
    assert EX.extract(x).tobytes() == EX.extract(x.astype(np.float32)).tobytes()


# ---- (f) bad input --------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 639, 641, 16_000 + 1])
def test_bad_lengths_raise(n):
    with pytest.raises(ValueError, match="multiple of 640"):
        EX.extract(np.zeros(n, np.float32))


@pytest.mark.parametrize("wave, match", [
    (np.zeros((2, 640), np.float32), "mono"),
    (np.zeros(640, np.int16), "float"),
    (np.full(640, np.nan, np.float32), "NaN"),
])
def test_bad_waves_raise(wave, match):
    with pytest.raises(ValueError, match=match):
        EX.extract(wave)


def test_contract_violation_by_a_plugin_is_caught():
    class OffByOne(SemanticExtractor):
        name, dim, config = "off-by-one", 4, SpectralConfig()

        def _extract(self, wave):
            return np.zeros((len(wave) // HOP + 1, 4), np.float32)

    with pytest.raises(RuntimeError, match="frame contract"):
        OffByOne().extract(np.zeros(2 * HOP, np.float32))


@pytest.mark.parametrize("bad", [dict(win_length=600), dict(n_fft=1024, win_length=2048),
                                 dict(n_delta_bands=5), dict(fmax_hz=9000.0)])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        SpectralConfig(**bad)


# ---- (g) registry and describe --------------------------------------------------------------

def test_build_extractor_and_describe():
    ex = build_extractor("spectral")
    assert isinstance(ex, SpectralExtractor) and ex.config == SpectralConfig()
    assert (ex.sample_rate_hz, ex.frame_rate_hz, ex.hop_samples) == (16_000, 25, 640)
    wide = build_extractor("spectral", n_mels=80)
    assert wide.dim == 80 + 12 + 16 and wide.extract(np.zeros(HOP, np.float32)).shape == (1, 108)
    d = json.loads(json.dumps(ex.describe()))
    assert d["name"] == "spectral" and d["weights_sha256"] is None and d["dim"] == 92
    assert d["config"]["n_mels"] == 64 and d["frame_rate_hz"] == 25
    assert d["layout"] == {"log_mel": [0, 64], "chroma": [64, 76], "delta_log_mel": [76, 92]}


def test_unknown_names_and_keys_raise():
    with pytest.raises(ValueError, match="known: .*spectral"):
        build_extractor("w2v-bret")
    with pytest.raises(ValueError, match="n_mels"):
        build_extractor("spectral", n_mel=80)
    with pytest.raises(ValueError, match="already registered"):
        semantic.register_extractor("spectral")(lambda **kw: EX)
    assert "spectral" in semantic.known_extractors()


# ---- real audio fixtures (tests/data/audio) ------------------------------------------------------

def test_real_music_is_roughly_standardized(real_audio_dir):
    import soundfile as sf
    import soxr

    fixtures = sorted(p for ext in ("flac", "wav") for p in real_audio_dir.glob(f"*.{ext}"))
    assert len(fixtures) >= 4
    feats = []
    for path in fixtures[:4]:
        x, sr = sf.read(path, dtype="float32", always_2d=True)
        x = soxr.resample(x.mean(1), sr, SR).astype(np.float32)[: 30 * SR]
        x = x[: len(x) // HOP * HOP]
        assert len(x) >= HOP and np.abs(x).max() > 1e-3, path
        feats.append(EX.extract(x))
    f = np.concatenate(feats)
    assert np.isfinite(f).all()
    for block in (LOG_MEL, DELTA):  # fixed constants keep music near zero-mean unit-scale
        assert abs(f[:, block].mean()) < 1.5 and 0.2 < f[:, block].std() < 3.0
