"""tokenmill.tokenizers.refit: id-stable refits. Values against references: brute-force
matching, a hand-traced Lloyd run, slow reference loops for the drift report; token stability
measured on clustered synthetic data and on real spectral features of tests/data/audio."""
from __future__ import annotations

import glob
import inspect
import itertools
import json
import math
import os

import numpy as np
import pytest

from tokenmill.tokenizers.kmeans import Codebook, CodebookError, fit_kmeans
from tokenmill.tokenizers.refit import (
    align_ids,
    drift_report,
    lloyd,
    refit_kmeans,
    refit_rvq,
    render_drift,
)
from tokenmill.tokenizers.rvq import RVQCodebook, fit_rvq

SR_HZ, HOP = 16_000, 640


def blobs(centers: np.ndarray, n_per: int, sigma: float, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    x = np.repeat(centers, n_per, axis=0) + sigma * g.standard_normal((n_per * len(centers), centers.shape[1]))
    return x[g.permutation(len(x))].astype(np.float32)


def zipf_mixture(n: int, seed: int, d: int = 8, n_comp: int = 30) -> np.ndarray:
    """Overlapping components of unequal size (w ~ 1/i) and scale; the same mixture for every seed."""
    g = np.random.default_rng(seed)
    means = 3.0 * np.random.default_rng(123).standard_normal((n_comp, d))
    scales = np.exp(np.random.default_rng(124).normal(0.0, 0.5, n_comp))
    w = 1.0 / np.arange(1, n_comp + 1)
    comp = g.choice(n_comp, size=n, p=w / w.sum())
    return (means[comp] + scales[comp, None] * g.standard_normal((n, d))).astype(np.float32)


def unit_clustered(n: int, seed: int, dim: int = 16) -> np.ndarray:
    """tests/test_rvq.py's MuLan-like data: unit-norm vectors around 8 fixed directions."""
    centers = np.random.default_rng(99).standard_normal((8, dim))
    r = np.random.default_rng(seed)
    x = centers[r.integers(8, size=n)] + 0.6 * r.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def kept(parent, child, probe) -> float:
    return 1.0 - drift_report(parent, child, probe)["changed_share"]


# ---------------------------------------------------------------- align_ids

def test_align_ids_returns_the_inverse_of_a_known_permutation():
    parent = (10.0 * np.random.default_rng(0).standard_normal((12, 6))).astype(np.float32)
    p = np.random.default_rng(1).permutation(12)
    new = parent[p] + np.float32(0.05) * np.random.default_rng(2).standard_normal((12, 6), dtype=np.float32)
    for metric in ("euclidean", "sqeuclidean"):
        perm = align_ids(parent, new, metric=metric)
        assert perm.dtype == np.int64
        np.testing.assert_array_equal(perm, np.argsort(p))      # inverse permutation
        np.testing.assert_allclose(new[perm], parent, atol=0.3)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@pytest.mark.parametrize("seed", range(6))
def test_align_ids_matches_brute_force_over_all_permutations(seed, metric):
    g = np.random.default_rng(seed)
    a = g.standard_normal((5, 3)).astype(np.float32)
    b = (a[g.permutation(5)] + g.normal(0, 0.8, (5, 3))).astype(np.float32)   # noisy: not trivial
    cost = ((a.astype(np.float64)[:, None] - b.astype(np.float64)[None]) ** 2).sum(-1)
    cost = np.sqrt(cost) if metric == "euclidean" else cost
    best = min(itertools.permutations(range(5)), key=lambda q: sum(cost[i, q[i]] for i in range(5)))
    np.testing.assert_array_equal(align_ids(a, b, metric=metric), best)


def test_align_ids_refuses_bad_input():
    with pytest.raises(CodebookError, match="same shape"):
        align_ids(np.zeros((4, 2), np.float32), np.zeros((5, 2), np.float32))
    with pytest.raises(CodebookError, match="metric must be one of"):
        align_ids(np.zeros((4, 2), np.float32), np.zeros((4, 2), np.float32), metric="cosine")


# ---------------------------------------------------------------- Lloyd with re-seeding

def test_lloyd_reseeds_empty_clusters_farthest_first_as_traced_by_hand():
    # it 1: labels [0,0,2,2], id 1 empty -> farthest point 10 (from centroid 1.5); means 0.5, 6
    # it 2: labels [0,0,0,1], id 2 empty -> farthest point 2 (from centroid 1);   means 1, 10
    # it 3: labels [0,0,2,1], means 0.5, 10, 2;  it 4: same labels -> converged
    x = np.array([[0], [1], [2], [10]], np.float32)
    c, info = lloyd(x, np.array([[0.5], [100], [1.5]], np.float32), n_iter=10)
    np.testing.assert_array_equal(c, [[0.5], [10], [2]])
    assert info == {"n_iter": 10, "iterations_run": 3, "converged": True, "reseeds": 2,
                    "reseeded_ids": [1, 2], "unfilled_ids": []}
    # every point already sits on a centroid: id 2 cannot be re-seeded and is reported, not hidden
    c, info = lloyd(np.array([[0], [0], [5], [5]], np.float32), np.array([[0], [5], [100]], np.float32), 5)
    np.testing.assert_array_equal(c, [[0], [5], [100]])
    assert info["unfilled_ids"] == [2] and info["reseeds"] == 0 and info["converged"]


# ---------------------------------------------------------------- k-means refits: stability

@pytest.fixture(scope="module")
def zipf():
    x = zipf_mixture(6000, seed=5)
    return {"a": x[:2500], "b": x[2500:5000], "probe": x[5000:],
            "parent": fit_kmeans(x[:2500], 16, seed=3)}


def test_warm_refit_keeps_tokens_and_a_cold_unaligned_refit_does_not(zipf):
    parent, a, b, probe = zipf["parent"], zipf["a"], zipf["b"], zipf["probe"]
    same = refit_kmeans(parent, a, seed=0)
    fresh = refit_kmeans(parent, b, seed=0)
    cold = refit_kmeans(parent, a, seed=7, warm_start=False, align=False)
    cold_aligned = refit_kmeans(parent, a, seed=7, warm_start=False)
    # measured: kept 100.0% (same sample), 98.6% (fresh sample), 0.3% cold, 86.6% cold + aligned
    assert kept(parent, same, probe) >= 0.95
    assert kept(parent, fresh, probe) >= 0.95
    assert kept(parent, cold, probe) < 0.5
    assert 0.5 < kept(parent, cold_aligned, probe) < kept(parent, fresh, probe)
    assert same.card["refit"]["alignment"]["ids_permuted"] == 0
    assert cold_aligned.card["refit"]["alignment"]["ids_permuted"] >= 8


def test_alignment_alone_recovers_the_ids_of_a_cold_refit_of_separated_clusters():
    centers = 20.0 * np.random.default_rng(10).standard_normal((16, 8))
    x = blobs(centers, 150, 1.0, seed=11)
    parent = fit_kmeans(x, 16, seed=1)
    cold = refit_kmeans(parent, x, seed=2, warm_start=False, align=False)
    cold_aligned = refit_kmeans(parent, x, seed=2, warm_start=False)
    assert kept(parent, cold, x) < 0.5                          # measured 0.0%: every id permuted
    assert kept(parent, cold_aligned, x) == 1.0
    np.testing.assert_allclose(cold_aligned.centroids, parent.centroids, atol=1e-4)


def test_refit_on_shifted_data_keeps_the_unchanged_clusters_ids():
    g = np.random.default_rng(20)
    centers = 20.0 * g.standard_normal((16, 8))
    parent = fit_kmeans(blobs(centers, 150, 1.0, seed=21), 16, seed=1)
    stay = blobs(centers[:12], 150, 1.0, seed=22)               # 12 clusters unchanged
    before = parent.assign(stay)
    stay_ids = set(parent.assign(centers[:12].astype(np.float32)).tolist())
    gone_ids = set(parent.assign(centers[12:].astype(np.float32)).tolist())
    assert len(stay_ids) == 12 and len(gone_ids) == 4          # one parent id per cluster
    for shift, far in ((3.0, False), (0.0, True)):
        # the last 4 clusters move a little (their ids follow), or vanish and 4 new ones appear far away
        new_centers = 60.0 * g.standard_normal((4, 8)) if far else centers[12:] + shift
        arrived = blobs(new_centers, 150, 1.0, seed=23)
        child = refit_kmeans(parent, np.concatenate([stay, arrived]), seed=0)
        np.testing.assert_array_equal(child.assign(stay), before)
        got = child.assign(arrived)
        ids = {int(np.bincount(got[np.linalg.norm(arrived - c, axis=1) < 6]).argmax()) for c in new_centers}
        assert ids == gone_ids                  # the new clusters take over the vanished ids
        moved = np.linalg.norm(child.centroids - parent.centroids, axis=1)
        assert moved[sorted(stay_ids)].max() < 0.5
        print(f"shifted data ({'far' if far else 'near'}): reseeds {child.card['refit']['lloyd']['reseeds']}, "
              f"ids permuted by alignment {child.card['refit']['alignment']['ids_permuted']}")
        report = drift_report(parent, child, np.concatenate([stay, arrived]))
        assert report["changed_share"] <= 0.25 + 1e-9 and report["dead_after"] == 0
        sq = align_ids(parent.centroids, child.centroids, metric="sqeuclidean")
        swapped = int((sq != np.arange(16)).sum())
        if far:   # squared-L2 matching would relabel unchanged clusters here (why align_ids uses L2)
            assert child.card["refit"]["lloyd"]["reseeds"] >= 4 and swapped > 0
            assert (np.argsort(sq)[child.assign(stay)] != before).any()
        else:
            assert swapped == 0


@pytest.fixture(scope="module")
def spectral_feats():
    sf = pytest.importorskip("soundfile")
    soxr = pytest.importorskip("soxr")
    from tokenmill.tokenizers.semantic import SpectralExtractor
    paths = sorted(p for ext in ("flac", "wav")
                   for p in glob.glob(os.path.join(os.path.dirname(__file__), "data", "audio", f"*.{ext}")))
    if not paths:
        pytest.skip("no tests/data/audio/*.flac|wav fixtures")
    ex, feats = SpectralExtractor(), []
    for path in paths:
        w, sr = sf.read(path, dtype="float32", always_2d=True)
        w = soxr.resample(w.mean(1), sr, SR_HZ).astype(np.float32)[: 30 * SR_HZ]
        feats.append(ex.extract(w[: len(w) // HOP * HOP]))
    return np.concatenate(feats)


def test_real_spectral_features_warm_refit_keeps_tokens(spectral_feats):
    f = spectral_feats                                           # [~2000, 92] from 4 tracks
    perm = np.random.default_rng(0).permutation(len(f))
    a, b = f[perm[::2]], f[perm[1::2]]
    parent = fit_kmeans(a, 32, seed=3)
    same = refit_kmeans(parent, a, seed=0)
    fresh = refit_kmeans(parent, b, seed=0)
    fresh_short = refit_kmeans(parent, b, seed=0, n_iter=2)
    cold = refit_kmeans(parent, a, seed=7, warm_start=False, align=False)
    cold_aligned = refit_kmeans(parent, a, seed=7, warm_start=False)
    k_same, k_fresh, k_short = kept(parent, same, f), kept(parent, fresh, f), kept(parent, fresh_short, f)
    k_cold, k_cold_aligned = kept(parent, cold, f), kept(parent, cold_aligned, f)
    print(f"spectral k=32 kept: warm same {k_same:.3f}, warm fresh half {k_fresh:.3f} "
          f"(n_iter=2: {k_short:.3f}), cold {k_cold:.3f}, cold+aligned {k_cold_aligned:.3f}")
    assert k_same >= 0.95
    assert k_cold < 0.5
    # a fresh ~1000-frame sample: real sampling drift, smaller with fewer Lloyd steps
    assert k_cold_aligned < k_fresh <= k_short
    assert k_fresh >= 0.7


# ---------------------------------------------------------------- cards, artifacts, determinism

def test_refit_card_records_parent_alignment_and_content_id(zipf, tmp_path):
    parent = zipf["parent"]
    child = refit_kmeans(parent, zipf["b"], seed=0, x_heldout=zipf["probe"], sources={"n_tracks": 3})
    again = refit_kmeans(parent, zipf["b"], seed=0, x_heldout=zipf["probe"], sources={"n_tracks": 3})
    assert child.id == again.id != parent.id
    card = child.card
    assert card["parent"] == parent.id and card["id"] == child.id and card["kind"] == parent.kind
    assert card["seeding"] == {"method": "warm-start", "from": parent.id}
    al = card["refit"]["alignment"]
    assert al["applied"] is True and al["mean_matched_l2"] <= al["mean_matched_l2_before"] + 1e-12
    l2 = np.linalg.norm(child.centroids.astype(np.float64) - parent.centroids, axis=1)
    assert al["mean_matched_l2"] == pytest.approx(l2.mean()) and al["max_matched_l2"] == pytest.approx(l2.max())
    assert card["refit"]["lloyd"]["reseeds"] == len(card["refit"]["lloyd"]["reseeded_ids"]) == 0
    assert card["heldout_mse"] is not None and card["n_train_vectors"] == 2500
    json.dumps(card, allow_nan=False)
    loaded = Codebook.load(child.save(tmp_path))
    assert loaded.id == child.id and loaded.card["parent"] == parent.id
    unaligned = refit_kmeans(parent, zipf["b"], seed=0, align=False)
    assert unaligned.card["refit"]["alignment"]["applied"] is False
    assert unaligned.card["refit"]["id_before_alignment"] == unaligned.id


def test_refit_of_a_standardized_codebook_keeps_the_parents_statistics(zipf, tmp_path):
    if "standardize" not in inspect.signature(fit_kmeans).parameters:
        pytest.skip("kmeans.fit_kmeans has no standardize option in this checkout")
    scale = np.geomspace(0.1, 100.0, 8).astype(np.float32)   # dims on very different scales
    a, b, probe = zipf["a"] * scale + 5, zipf["b"] * scale + 5, zipf["probe"] * scale + 5
    parent = fit_kmeans(a, 16, seed=3, standardize=True)
    child = refit_kmeans(parent, b, seed=0)
    np.testing.assert_array_equal(child.mean, parent.mean)
    np.testing.assert_array_equal(child.std, parent.std)
    assert child.card["standardization"]["inherited_from"] == parent.id
    report = drift_report(parent, child, probe)
    assert report["changed_share"] == pytest.approx(float((child.assign(probe) != parent.assign(probe)).mean()))
    assert report["changed_share"] <= 0.05                   # measured 1.4%, as unscaled
    assert Codebook.load(child.save(tmp_path)).id == child.id
    other = Codebook(child.centroids, dict(child.card), mean=child.mean + 1, std=child.std)
    with pytest.raises(CodebookError, match="standardize features differently"):
        drift_report(parent, other, probe)


def test_refit_refuses_bad_input(zipf):
    parent = zipf["parent"]
    with pytest.raises(CodebookError, match="dimension"):
        refit_kmeans(parent, np.zeros((100, 3), np.float32), seed=0)
    with pytest.raises(CodebookError, match="kmeans.Codebook"):
        refit_kmeans(parent.centroids, zipf["a"], seed=0)
    with pytest.raises(CodebookError, match="align must be"):
        refit_kmeans(parent, zipf["a"], seed=0, align="yes")
    with pytest.raises(CodebookError, match="cannot refit"):
        refit_kmeans(parent, zipf["a"][:10], seed=0)
    fitted_on = Codebook(parent.centroids, dict(parent.card, sources={"extractor": {"name": "spectral"}}))
    with pytest.raises(CodebookError, match="same extractor"):
        refit_kmeans(fitted_on, zipf["a"], seed=0, sources={"extractor": {"name": "w2v-bert"}})
    with pytest.raises(CodebookError, match="same mulan"):
        rvq = RVQCodebook(np.zeros((1, 2, 8), np.float32) + np.arange(2, dtype=np.float32)[:, None],
                          {"kind": "mulan", "sources": {"mulan": {"name": "builtin"}}})
        refit_rvq(rvq, zipf["a"])


# ---------------------------------------------------------------- RVQ refits

@pytest.fixture(scope="module")
def rvq_data():
    a, b, probe = unit_clustered(3000, 1), unit_clustered(3000, 2), unit_clustered(1000, 3)
    return {"a": a, "b": b, "probe": probe, "parent": fit_rvq(a, n_stages=12, k=16, seed=3)}


def test_rvq_warm_refit_keeps_first_stage_tokens_and_cold_unaligned_does_not(rvq_data):
    parent, a, probe = rvq_data["parent"], rvq_data["a"], rvq_data["probe"]
    warm = drift_report(parent, refit_rvq(parent, a), probe)
    warm_short = drift_report(parent, refit_rvq(parent, a, n_iter=1), probe)
    cold = drift_report(parent, refit_rvq(parent, a, seed=7, warm_start=False, align=False), probe)
    cold_al = drift_report(parent, refit_rvq(parent, a, seed=7, warm_start=False), probe)
    for name, r in (("warm", warm), ("warm n_iter=1", warm_short), ("cold", cold), ("cold+aligned", cold_al)):
        print(f"rvq 12x16 {name:14s} changed per stage %:",
              " ".join(f"{100 * v:.0f}" for v in r["changed_share_per_stage"]),
              f"| all {100 * r['changed_share_all']:.1f}%")
    # measured (parent fit by greedy-rq, 10 Lloyd steps per stage, so a warm refit on the same data
    # keeps iterating): stage 1 changed 7.4% warm / 2% n_iter=1 / 94% cold / 44% cold+aligned;
    # all 12 stages 65.1% / 30.7% / 94.0% / 84.8% (late-stage residuals have no cluster structure:
    # any movement of earlier stages cascades, see the report's changed_share_given_prefix)
    assert warm["changed_share_per_stage"][0] <= 0.10
    assert cold["changed_share_per_stage"][0] > 0.5 and cold["changed_share_all"] > 0.5
    assert warm["changed_share_all"] < cold_al["changed_share_all"] < cold["changed_share_all"]
    assert warm_short["changed_share_all"] < warm["changed_share_all"]
    own = warm["changed_share_given_prefix"]
    print("rvq 12x16 warm  own-stage drift % (earlier stages unchanged):",
          " ".join("-" if v is None else f"{100 * v:.0f}" for v in own))
    assert own[0] == warm["changed_share_per_stage"][0]
    assert warm["n_unchanged_prefix_per_stage"][0] == len(probe)


def test_rvq_refit_of_its_own_fixed_point_changes_nothing_and_aligns_every_stage(rvq_data):
    parent, a = rvq_data["parent"], rvq_data["a"]
    small = RVQCodebook(parent.codebooks[:3], dict(parent.card))
    converged = refit_rvq(small, a, n_iter=200)
    again = refit_rvq(converged, a, n_iter=200)
    assert again.id == converged.id and again.card["parent"] == converged.id
    # one Lloyd update per stage reproduces the centroids bit for bit, the next sees no change
    assert [(s["lloyd"]["iterations_run"], s["lloyd"]["converged"]) for s in again.card["refit"]["stages"]] \
        == [(1, True)] * 3
    cold = refit_rvq(small, a, seed=7, warm_start=False)
    for s in range(3):      # each stage's ids are the linear assignment to the parent's stage
        np.testing.assert_array_equal(align_ids(small.codebooks[s], cold.codebooks[s]), np.arange(16))
    assert cold.card["method"]["init"] == "greedy-kmeans++" and cold.card["refit"]["ids_permuted"] > 0


# ---------------------------------------------------------------- drift report vs slow references

def ref_nearest(x, c):
    out = []
    for v in x.astype(np.float64):
        d = [float(((v - cj.astype(np.float64)) ** 2).sum()) for cj in c]
        out.append(d.index(min(d)))
    return out


def ref_entropy(counts):
    n = sum(counts)
    return -sum(c / n * math.log2(c / n) for c in counts if c)


def test_drift_report_kmeans_matches_a_slow_reference_loop():
    parent = Codebook(np.array([[0, 0], [10, 0], [0, 10], [50, 50]], np.float32), {"kind": "semantic"})
    child = Codebook(np.array([[1, 0], [10, 0], [0, 14], [50, 50]], np.float32), {"kind": "semantic"})
    x = np.array([[0, 0], [0.6, 0], [9, 1], [0, 6], [0, 11], [1, 8], [6, 0], [0, 5.5]], np.float32)
    r = drift_report(parent, child, x)
    lp, lc = ref_nearest(x, parent.centroids), ref_nearest(x, child.centroids)
    assert lp == [0, 0, 1, 2, 2, 2, 1, 2] and lc == [0, 0, 1, 0, 2, 2, 1, 0]   # by hand
    assert r["changed_share"] == sum(p != c for p, c in zip(lp, lc)) / len(x) == 0.25
    up, uc = [lp.count(j) for j in range(4)], [lc.count(j) for j in range(4)]
    assert r["usage_before"] == up and r["usage_after"] == uc
    assert r["dead_before"] == up.count(0) == 1 and r["dead_after"] == 1
    assert r["entropy_bits_before"] == pytest.approx(ref_entropy(up))
    assert r["entropy_bits_after"] == pytest.approx(ref_entropy(uc))
    moves = sorted(math.dist(p, c) for p, c in zip(parent.centroids, child.centroids))   # 0, 0, 1, 4
    assert r["centroid_movement"] == pytest.approx({"mean_l2": sum(moves) / 4, "median_l2": 0.5, "max_l2": 4.0})
    sq = [sum((a - b) ** 2 for a, b in zip(v, child.centroids[j])) for v, j in zip(x.tolist(), lc)]
    assert r["mse_after"] == pytest.approx(sum(sq) / len(sq))
    json.dumps(r, allow_nan=False)
    text = render_drift(r)
    assert "25.0%" in text and "1 -> 1" in text


def test_drift_report_rvq_matches_a_slow_reference_loop():
    cb = np.array([[[0, 0], [10, 0], [0, 10], [10, 10]],
                   [[0, 0], [1, 0], [0, 1], [-1, 0]]], np.float32)
    moved = cb.copy()
    moved[0, 1] = [7, 0]          # stage 1, id 1 moves left: (6, 0) now picks it
    moved[1, 2] = [0, 3]          # stage 2, id 2 moves up
    parent, child = RVQCodebook(cb, {"kind": "mulan"}), RVQCodebook(moved, {"kind": "mulan"})
    x = np.array([[11, 0], [9.2, 10.1], [0.2, 9.0], [6, 0], [0, 2.1], [4, 0.2]], np.float32)
    r = drift_report(parent, child, x)

    def ref_encode(c):
        codes = []
        for v in x.astype(np.float64):
            row = []
            for stage in c:
                j = ref_nearest(v[None], stage)[0]
                row.append(j)
                v = v - stage[j]
            codes.append(row)
        return np.array(codes)

    cp, cc = ref_encode(cb), ref_encode(moved)
    changed = cp != cc
    assert r["changed_share_per_stage"] == pytest.approx(changed.mean(axis=0).tolist())
    assert r["changed_share_all"] == pytest.approx(changed.mean())
    assert r["changed_share_any_stage"] == pytest.approx(changed.any(axis=1).mean())
    keep = ~changed[:, 0]
    assert r["changed_share_given_prefix"] == pytest.approx([changed[:, 0].mean(), changed[keep, 1].mean()])
    assert r["n_unchanged_prefix_per_stage"] == [len(x), int(keep.sum())]
    for s in range(2):
        counts = np.bincount(cc[:, s], minlength=4).tolist()
        assert r["usage_after"][s] == counts and r["dead_after"][s] == counts.count(0)
        assert r["entropy_bits_after"][s] == pytest.approx(ref_entropy(counts))
        d = np.linalg.norm(cb[s] - moved[s], axis=1)
        assert r["centroid_movement_per_stage"][s] == pytest.approx(
            {"mean_l2": d.mean(), "median_l2": float(np.median(d)), "max_l2": d.max()})
    assert changed[:, 0].sum() >= 1 and changed[:, 1].sum() >= 1      # the example exercises both
    json.dumps(r, allow_nan=False)
    assert "stage" in render_drift(r)
    with pytest.raises(CodebookError, match="two k-means Codebooks or two RVQCodebooks"):
        drift_report(parent, Codebook(cb[0], {"kind": "semantic"}), x)
