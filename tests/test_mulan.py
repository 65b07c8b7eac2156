"""MuLan windows, crop rule, tokens, and the CLAP adapter on a tiny randomly initialised CLAP
(the real HTSAT + RoBERTa architecture) saved with save_pretrained and loaded back through
build_mulan("clap", path=...), with a ClapProcessor whose tokenizer is built offline."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenmill.schemas import rates
from tokenmill.tokenizers.mulan import (
    MulanError,
    build_mulan,
    crop_tokens,
    crop_window_indices,
    cut_windows,
    pooled_embedding,
    segment_tokens,
    text_tokens,
    window_spans,
)
from tokenmill.tokenizers.rvq import RVQCodebook, fit_rvq

from helpers import save_tiny_clap as _save_tiny_clap

SR = 48_000


# ---- windows ---------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(quanta=st.integers(1, 25 * 400), sr=st.sampled_from([16_000, 22_050, 24_000, 44_100, 48_000]))
def test_window_count_and_boundaries(quanta, sr):
    n = rates.source_samples_for_quanta(quanta, sr)
    spans = window_spans(n, sr)
    whole_s = quanta // 25
    assert len(spans) == rates.mulan_window_count(quanta) == max(1, whole_s - 9)
    for w, (a, b) in enumerate(spans):
        assert (a, b) == (w * sr, (w + 10) * sr)          # window w covers [w, w + 10) s
    if whole_s >= 10:
        assert spans[-1][1] == whole_s * sr <= n           # every window inside the audio
    else:
        assert spans == [(0, 10 * sr)]                     # one zero-padded window


def test_cut_windows_zero_pads_short_tracks():
    sr = 100
    wave = np.arange(1, 351, dtype=np.float32)             # 3.5 s
    win = cut_windows(wave, sr)
    assert win.shape == (1, 1000)
    np.testing.assert_array_equal(win[0, :350], wave)
    assert not win[0, 350:].any()
    wave = np.arange(1, 1251, dtype=np.float32)            # 12.5 s -> windows at 0, 1, 2 s
    win = cut_windows(wave, sr)
    assert win.shape == (3, 1000)
    for w in range(3):
        np.testing.assert_array_equal(win[w], wave[w * 100:w * 100 + 1000])


# ---- crop rule -------------------------------------------------------------------------------

@pytest.mark.parametrize("n_windows,t0,t1,expected", [
    (21, 0, 30, list(range(21))),        # whole 30 s track: every window
    (21, 5, 17, [5, 6, 7]),              # windows inside [5, 17): starts 5..7
    (21, 5, 15, [5]),                    # exactly one window
    (21, 12, 30.52, list(range(12, 21))),  # off-grid end, > 11 s: the windows inside
    (21, 3.2, 8.0, [0, 1, 2, 3]),        # 4.8 s crop: the windows containing all of it
    (21, 4, 7, [0, 1, 2, 3, 4]),         # 3 s crop
    (21, 12, 20.52, [11, 12]),           # 8.52 s crop: windows 11 and 12 contain it
    (21, 27, 30, [20]),                  # last 3 s: only the last window holds them
    (21, 0.04, 10.04, [0]),              # 10 s off the grid: overlap 9.96 s beats 9.04 s
    (21, 3.48, 13.48, [3]),              # 9.52 s beats 9.48 s
    (21, 3.52, 13.52, [4]),              # 9.52 s beats 9.48 s (no exact tie on the 40 ms grid)
    (21, 30.2, 30.6, [20]),              # after the last window's end
    (1, 0, 3, [0]),                      # short track: its one window
    (1, 2.4, 5.6, [0]),
])
def test_crop_window_indices(n_windows, t0, t1, expected):
    assert crop_window_indices(n_windows, t0, t1).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(n_windows=st.integers(1, 60), q0=st.integers(0, 25 * 70), length_q=st.integers(1, 25 * 40))
def test_crop_rule_is_max_overlap(n_windows, q0, length_q):
    """Direct computation in exact fractions of seconds: the windows of largest overlap."""
    from fractions import Fraction

    t0, t1 = Fraction(q0, 25), Fraction(q0 + length_q, 25)
    ov = [min(w + 10, t1) - max(w, t0) for w in range(n_windows)]
    best = max(ov)
    want = [w for w in range(n_windows) if ov[w] == best] if best > 0 else [n_windows - 1]
    got = crop_window_indices(n_windows, t0, t1).tolist()
    assert got == want
    inside = [w for w in range(n_windows) if t0 <= w and w + 10 <= t1]
    if inside:                                   # DESIGN §2: windows inside the crop, when any
        assert got == inside


def test_crop_rejects_bad_ranges():
    with pytest.raises(MulanError):
        crop_window_indices(5, 3, 3)
    with pytest.raises(ValueError, match="40 ms grid"):
        crop_window_indices(5, 0.01, 3)


@pytest.fixture(scope="module")
def rvq128() -> RVQCodebook:
    r = np.random.default_rng(0)
    x = r.standard_normal((600, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return fit_rvq(x, n_stages=4, k=16, seed=0)


def test_crop_tokens_equal_direct_mean_then_encode(rvq128):
    r = np.random.default_rng(1)
    win = r.standard_normal((21, 128)).astype(np.float32)
    win = (win / np.linalg.norm(win, axis=1, keepdims=True)).astype(np.float16)   # as stored
    for (t0, t1), idx in (((5, 17), [5, 6, 7]), ((3.2, 8.0), [0, 1, 2, 3]), ((27, 30), [20])):
        m = win[idx].astype(np.float64).mean(axis=0)
        direct = (m / np.linalg.norm(m)).astype(np.float32)
        np.testing.assert_allclose(pooled_embedding(win, t0, t1), direct, rtol=1e-6, atol=1e-7)
        tokens = crop_tokens(win, t0, t1, rvq128)
        assert tokens.dtype == np.uint16 and tokens.shape == (4,)
        np.testing.assert_array_equal(tokens, rvq128.encode(direct[None])[0])
    m = win.astype(np.float64).mean(axis=0)
    np.testing.assert_array_equal(segment_tokens(win, rvq128),
                                  rvq128.encode((m / np.linalg.norm(m)).astype(np.float32)[None])[0])
    np.testing.assert_array_equal(segment_tokens(win, rvq128), crop_tokens(win, 0, 30, rvq128))


# ---- CLAP adapter ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("tiny_clap")
    model, proc = _save_tiny_clap(d)
    yield d, model, proc
    torch.set_num_threads(before)


def _music(seconds: float, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    f = r.choice([220.0, 330.0, 440.0, 550.0], size=int(seconds) + 1)[(t // 1).astype(int)]
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.01 * r.standard_normal(t.size)).astype(np.float32)


def _direct_audio(model, proc, windows):
    import torch

    inp = proc.feature_extractor(list(windows), sampling_rate=SR, truncation="rand_trunc", return_tensors="pt")
    with torch.inference_mode():
        return model.get_audio_features(input_features=inp["input_features"]).pooler_output.numpy()


def test_clap_audio_windows_equal_direct_model_calls(tiny_clap):
    d, model, proc = tiny_clap
    mulan = build_mulan("clap", path=str(d), batch_size=2)
    assert (mulan.dim, mulan.sample_rate_hz, mulan.window_s, mulan.stride_s) == (128, SR, 10, 1)
    assert mulan.describe()["weights_sha256"] and mulan.describe()["dim"] == 128
    wave = _music(12.5, 0)                                  # 12 whole seconds -> W = 3
    emb = mulan.embed_audio_windows(wave)
    assert emb.shape == (3, 128) and emb.dtype == np.float32
    direct = _direct_audio(model, proc, [wave[w * SR:(w + 10) * SR] for w in range(3)])
    np.testing.assert_allclose(emb, direct, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert np.abs(emb[0] - emb[2]).max() > 1e-4            # the windows hear different audio
    short = _music(3.0, 1)                                  # < 10 s: one window, zero-padded
    padded = np.zeros(10 * SR, np.float32)
    padded[:short.size] = short
    np.testing.assert_allclose(mulan.embed_audio_windows(short), _direct_audio(model, proc, [padded]), atol=2e-6)


def test_clap_text_and_audio_share_one_rvq(tiny_clap, rvq128):
    import torch

    d, model, proc = tiny_clap
    mulan = build_mulan("clap", path=str(d))
    texts = ["a calm piano piece", "fast drums, 120 bpm", "a waltz in d minor for strings"]
    emb = mulan.embed_text(texts)
    inp = proc.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        direct = model.get_text_features(input_ids=inp["input_ids"],
                                        attention_mask=inp["attention_mask"]).pooler_output.numpy()
    np.testing.assert_allclose(emb, direct, atol=2e-6)
    mt = text_tokens(mulan, rvq128, texts)
    assert mt.dtype == np.uint16 and mt.shape == (3, 4)
    np.testing.assert_array_equal(mt, rvq128.encode(emb))
    win = mulan.embed_audio_windows(_music(11.0, 2)).astype(np.float16)
    np.testing.assert_array_equal(segment_tokens(win, rvq128),
                                  rvq128.encode(pooled_embedding(win, 0, 11)[None])[0])
    with pytest.raises(MulanError, match="16-d"):
        text_tokens(mulan, fit_rvq(np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32),
                                   n_stages=1, k=4), texts)


def test_clap_refuses_wrong_dim_and_wrong_directory(tiny_clap, tmp_path):
    d, _, _ = tiny_clap
    with pytest.raises(MulanError, match="projection_dim=512"):
        build_mulan("clap", path=str(d), expect_dim=512)
    with pytest.raises(MulanError, match="save_pretrained"):
        build_mulan("clap", path=str(tmp_path))
    with pytest.raises(MulanError, match="unknown MuLan model"):
        build_mulan("nope")


def test_fused_clap_windows_do_not_depend_on_their_batch(tiny_clap, tmp_path):
    """A fused CLAP gets four stacked mel copies and is_longer=False for every (exactly 10 s)
    window; the feature extractor alone would mark one random clip per batch as longer."""
    import torch

    model, proc = _save_tiny_clap(tmp_path, fused=True)
    wave = _music(12.0, 3)
    emb = build_mulan("clap", path=str(tmp_path), batch_size=3).embed_audio_windows(wave)
    np.testing.assert_allclose(emb, build_mulan("clap", path=str(tmp_path), batch_size=1).embed_audio_windows(wave),
                               atol=1e-6)
    wins = [wave[w * SR:(w + 10) * SR] for w in range(3)]
    inp = proc.feature_extractor(wins, sampling_rate=SR, truncation="fusion", return_tensors="pt")
    assert inp["input_features"].shape[1] == 4
    with torch.inference_mode():
        direct = model.get_audio_features(input_features=inp["input_features"],
                                          is_longer=torch.zeros((3, 1), dtype=torch.bool)).pooler_output.numpy()
    np.testing.assert_allclose(emb, direct, atol=2e-6)
