"""Frame arithmetic: every stream gets an integral, aligned number of frames for any duration."""
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from tokenmill.schemas import rates

SOURCE_RATES = st.one_of(
    st.sampled_from([8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 192000]),
    st.integers(min_value=4000, max_value=200_000),
)


@given(n_samples=st.integers(min_value=0, max_value=400 * 192_000), sr=SOURCE_RATES)
@settings(max_examples=300, deadline=None)
def test_streams_align_for_random_durations_and_source_rates(n_samples, sr):
    q = rates.n_quanta(n_samples, sr)
    # the cut never exceeds the source and loses less than one quantum
    assert Fraction(q, 25) <= Fraction(n_samples, sr) < Fraction(q + 1, 25)
    t_a = rates.frames_for_quanta(q, rates.ACOUSTIC)
    t_s = rates.frames_for_quanta(q, rates.SEMANTIC)
    assert t_a == 2 * t_s == 2 * q
    # samples at each model rate are exactly frames × hop
    assert rates.samples_for_quanta(q, rates.ACOUSTIC) == t_a * 480 == q * 960
    assert rates.samples_for_quanta(q, rates.SEMANTIC) == t_s * 640
    assert rates.source_samples_for_quanta(q, sr) <= n_samples


@given(total_q=st.integers(min_value=0, max_value=200_000),
       max_s=st.sampled_from([0.04, 1.0, 2.5, 30.0, 300.0, 301.32]))
@settings(max_examples=300, deadline=None)
def test_segments_cover_without_gaps_and_respect_the_limit(total_q, max_s):
    bounds = rates.segment_bounds(total_q, max_s)
    max_q = round(max_s * 25)
    if total_q == 0:
        assert bounds == []
        return
    assert bounds[0][0] == 0 and bounds[-1][1] == total_q
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [e - s for s, e in bounds]
    assert max(sizes) <= max_q and max(sizes) - min(sizes) <= 1
    assert len(bounds) == -(-total_q // max_q)  # the fewest segments possible


def test_segment_bounds_splits_evenly_not_with_a_tiny_tail():
    # 301 s at max 300 s: two halves, not 300 s + 1 s
    assert rates.segment_bounds(301 * 25, 300) == [(0, 3763), (3763, 7525)]


@given(q0=st.integers(0, 10_000), dq=st.integers(0, 10_000))
def test_crop_frames_are_exact_on_the_grid(q0, dq):
    t0, t1 = q0 * 0.04, (q0 + dq) * 0.04
    a0, a1 = rates.crop_frames(t0, t1, rates.ACOUSTIC)
    s0, s1 = rates.crop_frames(t0, t1, rates.SEMANTIC)
    assert (a0, a1) == (2 * q0, 2 * (q0 + dq)) and (s0, s1) == (q0, q0 + dq)


def test_off_grid_times_and_bad_inputs_raise():
    with pytest.raises(ValueError, match="40 ms grid"):
        rates.quanta_of_seconds(0.05)
    with pytest.raises(ValueError):
        rates.crop_frames(2.0, 1.0, rates.SEMANTIC)
    with pytest.raises(ValueError):
        rates.n_quanta(100, 0)
    with pytest.raises(ValueError, match="not a multiple of 25 Hz"):
        rates.StreamRate("dac", 44_100, 512).frames_per_quantum


def test_stream_constants_match_the_paper():
    assert rates.ACOUSTIC.frame_rate_hz == 50 and rates.SEMANTIC.frame_rate_hz == 25
    assert rates.mulan_window_count(30 * 25) == 21 and rates.mulan_window_count(3 * 25) == 1
