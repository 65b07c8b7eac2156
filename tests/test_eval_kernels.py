"""Evaluation kernels against references: one-pass NumPy, closed forms, hand computations, loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokenmill.eval import EvalError
from tokenmill.eval import artifact
from tokenmill.eval.fad import GaussStats, bootstrap_fad, fad, fad_inf, frechet_distance, weighted_stats
from tokenmill.eval.intervals import bootstrap_mean
from tokenmill.eval.kld import kl_rows, kld_pairs, softmax, zero_shot_probs
from tokenmill.eval.mcc import cosines, per_aspect
from tokenmill.eval.musiccaps import aspect_vocabulary, parse_rows


def _data(seed: int, n: int, d: int, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + offset


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 60), d=st.integers(1, 6),
       cuts=st.lists(st.integers(0, 60), max_size=6), order=st.randoms(use_true_random=False))
def test_combiner_equals_one_pass_numpy_on_any_split(seed, n, d, cuts, order):
    x = _data(seed, n, d, offset=3.0)
    bounds = sorted({0, n, *(c % (n + 1) for c in cuts)})
    parts = [GaussStats.of(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    order.shuffle(parts)  # merge order must not matter either
    while len(parts) > 1:  # merge as a tree, as Beam's combiner lifting may
        i = order.randrange(len(parts) - 1)
        parts[i:i + 2] = [parts[i].merge(parts[i + 1])]
    s = parts[0]
    assert s.n == n
    np.testing.assert_allclose(s.mean, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False).reshape(d, d), rtol=1e-10, atol=1e-10)


def test_chan_merge_keeps_digits_a_naive_float32_accumulator_loses():
    rng = np.random.default_rng(0)
    x = 1000.0 + 0.01 * rng.normal(size=(20_000, 4))  # far from the origin, small spread
    ref = np.cov(x, rowvar=False)
    s = GaussStats.empty(4)
    for chunk in np.array_split(x.astype(np.float32), 37):
        s = s.merge(GaussStats.of(chunk))
    np.testing.assert_allclose(s.cov, np.cov(x.astype(np.float32).astype(np.float64), rowvar=False), rtol=1e-9)
    xs = x.astype(np.float32)
    naive = (xs.T @ xs) / len(xs) - np.outer(xs.mean(0), xs.mean(0))  # Σxxᵀ/n - μμᵀ in float32
    assert np.abs(np.diag(naive) - np.diag(ref)).max() > 10 * np.diag(ref).max()  # naive is garbage
    assert np.abs(np.diag(s.cov) - np.diag(ref)).max() < 0.01 * np.diag(ref).max()


def test_frechet_distance_of_two_gaussians_matches_closed_form():
    # Covariances sharing eigenvectors: tr(S1 + S2 - 2 (S1 S2)^½) = Σ (√a - √b)².
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.5, 3, 5), rng.uniform(0.1, 2, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    closed = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(closed, rel=1e-9)
    # 1-d: (m1 - m2)² + (s1 - s2)²
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0, rel=1e-12)


def test_fad_of_samples_converges_to_closed_form():
    rng = np.random.default_rng(2)
    n = 200_000
    x = rng.normal(size=(n, 3)) * np.array([1.0, 2.0, 0.5])
    y = rng.normal(size=(n, 3)) * np.array([1.5, 1.0, 0.5]) + np.array([1.0, 0.0, 0.0])
    closed = 1.0 + (1.0 - 1.5) ** 2 + (2.0 - 1.0) ** 2 + 0.0
    assert fad(GaussStats.of(x), GaussStats.of(y)) == pytest.approx(closed, abs=0.03)


def test_fad_of_a_set_with_itself_is_zero_even_when_singular():
    x = _data(3, 50, 8)
    assert abs(fad(GaussStats.of(x), GaussStats.of(x))) < 1e-8
    low_rank = _data(4, 5, 8)  # 5 points in 8-d: singular covariance
    assert abs(fad(GaussStats.of(low_rank), GaussStats.of(low_rank))) < 1e-5


def test_weighted_stats_equal_stats_of_the_repeated_rows():
    x = _data(5, 7, 3)
    w = np.array([0, 2, 1, 3, 0, 1, 1])
    s, r = weighted_stats(x, w), GaussStats.of(np.repeat(x, w, axis=0))
    assert s.n == r.n
    np.testing.assert_allclose(s.mean, r.mean, rtol=1e-12)
    np.testing.assert_allclose(s.m2, r.m2, rtol=1e-10, atol=1e-12)


def test_fad_inf_recovers_the_intercept_and_bootstrap_brackets_the_estimate():
    rng = np.random.default_rng(6)
    ref = GaussStats.of(rng.normal(size=(100_000, 4)))
    clips = [rng.normal(size=(3, 4)) for _ in range(400)]  # same distribution: FAD -> 0 as n grows
    inf = fad_inf(clips, ref, steps=6, resamples=3, seed=1)
    full = fad(GaussStats.of(np.concatenate(clips)), ref)
    assert abs(inf.value) < 0.5 * full  # the 1/n bias is mostly removed
    assert inf.slope > 0
    assert inf.points[-1][0] == 1200
    iv = bootstrap_fad(clips, ref, n_boot=40, seed=1)
    assert iv.value == pytest.approx(full, rel=1e-10)
    assert iv.lo <= iv.value <= iv.hi
    again = bootstrap_fad(clips, ref, n_boot=40, seed=1)
    assert (again.lo, again.hi) == (iv.lo, iv.hi)


def test_kld_matches_a_hand_computation():
    p = np.array([[0.5, 0.25, 0.25]])
    q = np.array([[0.25, 0.5, 0.25]])
    forward, backward = kld_pairs(p, q)
    hand = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(1.0)
    assert forward[0] == pytest.approx(hand, rel=1e-12)
    assert backward[0] == pytest.approx(0.25 * math.log(0.25 / 0.5) + 0.5 * math.log(0.5 / 0.25), rel=1e-12)
    assert kl_rows(p, p)[0] == 0.0
    with pytest.raises(EvalError, match="same labels"):
        kl_rows(p, np.ones((1, 4)) / 4)


def test_zero_shot_probs_are_a_softmax_of_cosines_over_temperature():
    audio = np.array([3.0, 4.0])  # cos with [1,0] = 0.6, with [0,1] = 0.8, with [-1,0] = -0.6
    labels = np.array([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]])
    t = 0.2
    e = np.exp(np.array([0.6, 0.8, -0.6]) / t)
    np.testing.assert_allclose(zero_shot_probs(audio, labels, t), e / e.sum(), rtol=1e-12)
    np.testing.assert_allclose(softmax([[1.0, 1.0]]), [[0.5, 0.5]])


def test_mcc_matches_a_loop_and_per_aspect_groups():
    rng = np.random.default_rng(7)
    t, a = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    loop = [sum(t[i, j] * a[i, j] for j in range(5)) / math.sqrt(sum(v * v for v in t[i])) /
            math.sqrt(sum(v * v for v in a[i])) for i in range(6)]
    np.testing.assert_allclose(cosines(t, a), loop, rtol=1e-12)
    asp = [("piano", "calm"), ("piano",), None, ("drums",), ("calm",), ("piano", "piano")]
    got = per_aspect(np.arange(6.0), asp)
    assert got == {"piano": ((0 + 1 + 5) / 3, 3), "calm": ((0 + 4) / 2, 2), "drums": (3.0, 1)}
    assert list(got) == ["piano", "calm", "drums"]


def test_bootstrap_mean_interval():
    v = np.arange(100.0)
    iv = bootstrap_mean(v, n_boot=500, seed=3)
    assert iv.value == 49.5 and iv.lo < 49.5 < iv.hi
    assert 40 < iv.lo and iv.hi < 60
    one = bootstrap_mean([2.0])
    assert (one.value, one.lo, one.hi) == (2.0, 2.0, 2.0)


def test_musiccaps_rows_and_vocabulary(tmp_path):
    text = ("ytid,start_s,end_s,caption,aspect_list\n"
            "a,30,40,calm piano,\"['piano', 'calm']\"\n"
            "b,0,10,drums,\"['drums', 'piano']\"\n"
            "c,0,10,,\"['calm', 'piano']\"\n")
    rows = parse_rows(text, "x.csv")
    assert [r.ytid for r in rows] == ["a", "b", "c"] and rows[2].caption is None
    assert rows[0].start_s == 30.0 and rows[0].aspects == ("piano", "calm")
    assert aspect_vocabulary(rows, 2) == ["piano", "calm"]
    with pytest.raises(EvalError, match=r"x.csv:3: ytid 'a' already on line 2"):
        parse_rows(text.replace("b,0", "a,0"), "x.csv")
    with pytest.raises(EvalError, match="missing column"):
        parse_rows("ytid,caption\n", "y.csv")


def test_reference_artifact_round_trip_and_content_address():
    s = GaussStats.of(_data(8, 20, 3))
    emb = {"name": "mulan", "config": {}, "weights_sha256": "ab"}
    art_id, blob, card_bytes = artifact.encode(s, emb, {"spec": "x"})
    import json

    card = json.loads(card_bytes)
    back = artifact.decode(blob, card, "f")
    assert back.n == s.n and np.array_equal(back.mean, s.mean) and np.array_equal(back.m2, s.m2)
    assert artifact.encode(s, emb, {"spec": "other data name"})[0] == art_id  # id: tensors + embedder
    assert artifact.encode(s, {**emb, "weights_sha256": "cd"}, {})[0] != art_id
    assert artifact.matches(card, emb) and not artifact.matches(card, {**emb, "weights_sha256": "cd"})


def test_fixed_reference_equals_sqrtm_distance():
    from tokenmill.eval.fad import FixedReference

    for seed, n in ((9, 400), (10, 30)):  # full rank, and singular (30 points in 40-d)
        a, b = GaussStats.of(_data(seed, n, 40)), GaussStats.of(_data(seed + 100, n, 40, offset=0.3))
        assert FixedReference(b).fad(a) == pytest.approx(fad(a, b), rel=1e-7, abs=1e-7)
