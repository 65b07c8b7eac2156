"""Melody interface: the window rule, the crop windows, and the basic-pitch baseline's profiles."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from tokenmill import plugins
from tokenmill.schemas import rates
from tokenmill.tokenizers import melody, melody_pitch


@pytest.mark.parametrize("seconds,want", [(0.5, 1), (3.99, 1), (4.0, 1), (4.96, 1), (5.0, 2), (30.0, 27)])
def test_window_count_follows_the_mulan_rule_with_4s_windows(seconds, want):
    n = int(round(seconds * 16000))
    spans = melody.window_spans(n)
    assert len(spans) == want == rates.melody_window_count(rates.n_quanta(n, 16000))
    assert spans[0] == (0, 64000) and spans[-1] == ((want - 1) * 16000, (want + 3) * 16000)


def _slow_crop_windows(n, t0, t1):
    out, i = [], 0
    while t0 + 3 * i + 4 <= t1 or i == 0:
        s = t0 + 3 * i
        best = min(range(-50, 200), key=lambda w: (abs(w - s), w))  # nearest whole second, ties earlier
        out.append(min(max(best, 0), n - 1))
        i += 1
    return out


@pytest.mark.parametrize("n,t0,t1", [(27, 0, 10), (27, Fraction(52, 100), Fraction(1052, 100)),
                                     (27, Fraction(1, 2), Fraction(21, 2)), (27, 5, 9), (3, 10, 20),
                                     (27, 0, 30), (1, 0, 3), (27, Fraction(88, 25), Fraction(338, 25))])
def test_crop_windows_match_a_slow_reference(n, t0, t1):
    assert melody.crop_window_indices(n, t0, t1).tolist() == _slow_crop_windows(n, t0, t1)


def test_table_row_and_unknown_name():
    assert "basic-pitch" in plugins.names("melody")
    with pytest.raises(melody.MelodyError, match="--melody_model none"):
        melody.build_melody("no-such-model")


def test_window_profiles_match_a_slow_loop():
    rng = np.random.default_rng(3)
    n_windows = 3
    j = -(-(((n_windows - 1) * 4 + 16) * 11025) // 512) + 5
    note = rng.random((j, 88)).astype(np.float32) ** 4
    got = melody_pitch.window_profiles(note, n_windows, 0.3)
    for w in range(n_windows):
        for b in range(16):
            q = 4 * w + b
            frames = [f for f in range(j) if int(f * 256 * 4 // 22050) == q]
            prof = np.zeros(12)
            for f in frames:
                per = [max(float(note[f, k]) for k in range(88) if (k + 21) % 12 == pc) for pc in range(12)]
                prof += np.array(per)
            prof /= len(frames)
            prof /= max(prof.max(), 0.3)
            prof -= prof.mean()
            np.testing.assert_allclose(got[w, b * 12:(b + 1) * 12], prof, rtol=1e-5, atol=1e-6)


def _render(midis, program):
    sr, out = 16000, []
    for m in midis:
        t = np.arange(sr // 2) / sr
        f = 440.0 * 2 ** ((m - 69) / 12)
        harmonics = [1] if program == "sine" else range(1, 8)
        out.append(sum(np.sin(2 * np.pi * f * k * t) / k for k in harmonics) * 0.25)
    return np.concatenate(out).astype(np.float32)


def test_baseline_follows_the_tune_not_the_sound():
    model = melody.build_melody("basic-pitch")
    tune = [60, 62, 64, 65, 67, 65, 64, 62, 60, 67, 64, 60]
    sine, saw = model.embed_windows(_render(tune, "sine")), model.embed_windows(_render(tune, "saw"))
    up3 = model.embed_windows(_render([m + 3 for m in tune], "saw"))
    assert sine.shape == (3, 192)
    np.testing.assert_allclose(np.linalg.norm(sine, axis=1), 1.0, rtol=1e-5)
    same, transposed = (sine * saw).sum(1), (sine * up3).sum(1)
    assert same.min() > 0.8 and transposed.max() < 0.2
    batch = model.embed_windows_batch([_render(tune, "saw"), _render(tune, "sine")])
    np.testing.assert_array_equal(batch[1], sine)  # a segment's windows do not depend on its batch
