"""tokenmill.tokenizers.kmeans: values against references (NumPy argmin, known blob centers,
hand-computed card statistics), determinism, artifact integrity, and input validation."""
from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.optimize import linear_sum_assignment

from tokenmill.tokenizers.kmeans import (
    Codebook, CodebookError, assign, codebook_stats, content_id, fit_kmeans, kmeanspp_seed,
)


def numpy_argmin(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Reference: exact squared L2 in float64, first minimum wins."""
    best = np.zeros(len(x), dtype=np.int64)
    best_d = np.full(len(x), np.inf)
    for j in range(len(c)):
        d = ((x.astype(np.float64) - c[j].astype(np.float64)) ** 2).sum(axis=1)
        better = d < best_d
        best[better], best_d[better] = j, d[better]
    return best


def blobs(n_per: int, centers: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    x = np.repeat(centers, n_per, axis=0) + sigma * g.standard_normal((n_per * len(centers), centers.shape[1]))
    return x[g.permutation(len(x))].astype(np.float32)


def zipf_mixture(n: int, d: int, n_comp: int, seed: int) -> np.ndarray:
    """Unequal component sizes (w ~ 1/i) and scales: where random seeding does badly."""
    g = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n_comp + 1)
    means = 3.0 * g.standard_normal((n_comp, d))
    scales = np.exp(g.normal(0.0, 0.5, n_comp))
    comp = g.choice(n_comp, size=n, p=w / w.sum())
    return (means[comp] + scales[comp, None] * g.standard_normal((n, d))).astype(np.float32)


def faiss_random_init_fit(x: np.ndarray, k: int, seed: int, n_iter: int = 25) -> np.ndarray:
    cp = faiss.ClusteringParameters()
    cp.niter, cp.seed, cp.min_points_per_centroid, cp.max_points_per_centroid = n_iter, seed, 1, 10**6
    clus = faiss.Clustering(x.shape[1], k, cp)
    clus.train(x, faiss.IndexFlatL2(x.shape[1]))
    return faiss.vector_float_to_array(clus.centroids).reshape(k, -1)


def mse(x: np.ndarray, c: np.ndarray) -> float:
    lab = numpy_argmin(x, c)
    return float(((x.astype(np.float64) - c[lab]) ** 2).sum(axis=1).mean())


@pytest.fixture(scope="module")
def fitted() -> Codebook:
    x = zipf_mixture(3000, 8, 30, seed=5)
    return fit_kmeans(x[:2500], 16, seed=3, x_heldout=x[2500:], sources={"n_tracks": 2, "uris_sha256": "ab"})


# ---------------------------------------------------------------- assign

@pytest.mark.parametrize("n", [7, 3000])          # FAISS: direct kernel below 20 queries, BLAS above
def test_assign_equals_numpy_argmin_on_random_floats(n):
    g = np.random.default_rng(n)
    x = g.standard_normal((n, 16), dtype=np.float32)
    c = g.standard_normal((37, 16), dtype=np.float32)
    tok = assign(x, c)
    assert tok.dtype == np.uint16
    np.testing.assert_array_equal(tok, numpy_argmin(x, c))


def test_assign_exact_ties_go_to_lowest_index_across_faiss_blocks():
    g = np.random.default_rng(0)
    base = g.integers(-2, 3, size=(700, 6)).astype(np.float32)
    c = np.concatenate([base, base[::-1], base])          # 2100 centroids, every one tied 3 ways
    x = g.integers(-2, 3, size=(2500, 6)).astype(np.float32)
    ref = numpy_argmin(x, c)
    assert (ref < 700).all()                              # the reference picks the first copy
    np.testing.assert_array_equal(assign(x, c), ref)
    np.testing.assert_array_equal(Codebook(c, {}).assign(x), ref)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(2, 40), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_assign_near_ties_on_integer_grids(n, k, d, seed):
    g = np.random.default_rng(seed)
    x = g.integers(-3, 4, size=(n, d)).astype(np.float32)
    c = g.integers(-3, 4, size=(k, d)).astype(np.float32)
    np.testing.assert_array_equal(assign(x, c), numpy_argmin(x, c))


def test_codebook_assign_caches_index_and_checks_dim(fitted):
    x = np.random.default_rng(1).standard_normal((50, 8), dtype=np.float32)
    a = fitted.assign(x)
    index = fitted._index
    np.testing.assert_array_equal(fitted.assign(x), a)
    assert fitted._index is index
    np.testing.assert_array_equal(a, numpy_argmin(x, fitted.centroids))
    with pytest.raises(CodebookError, match="dimension D=9 but the codebook has D=8"):
        fitted.assign(np.zeros((3, 9), np.float32))


# ---------------------------------------------------------------- fit quality

def test_fit_recovers_blob_centers_and_noise_variance():
    g = np.random.default_rng(42)
    centers = 20.0 * g.standard_normal((8, 5))
    sigma = 0.1
    x = blobs(600, centers, sigma, seed=1)
    x_ho = blobs(150, centers, sigma, seed=2)
    cb = fit_kmeans(x, 8, seed=0, x_heldout=x_ho)
    dist = ((cb.centroids[:, None, :] - centers[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(dist)
    err = np.abs(cb.centroids[rows] - centers[cols]).max()
    assert err < 0.03                                    # sigma/sqrt(600) = 0.004 per coordinate
    assert cb.card["heldout_mse_per_dim"] == pytest.approx(sigma**2, rel=0.1)
    assert cb.card["heldout_mse"] == pytest.approx(5 * sigma**2, rel=0.1)
    assert cb.card["dead_codes"] == 0
    assert cb.card["usage_entropy_bits"] == pytest.approx(3.0, abs=0.01)   # 8 equal blobs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeanspp_seeding_beats_faiss_random_init(seed):
    x = zipf_mixture(5000, 16, 60, seed)
    x_tr, x_ho = x[:4000], x[4000:]
    ours = fit_kmeans(x_tr, 64, seed=seed, x_heldout=x_ho).card["heldout_mse"]
    assert ours == pytest.approx(mse(x_ho, fit_kmeans(x_tr, 64, seed=seed).centroids), rel=1e-6)
    rand = mse(x_ho, faiss_random_init_fit(x_tr, 64, seed))
    assert ours * 1.1 < rand                              # measured ratios 1.36, 1.31, 1.15


def test_greedy_seeding_beats_classic_kmeanspp_before_lloyd():
    x = zipf_mixture(4000, 16, 60, seed=7)
    g = [mse(x, kmeanspp_seed(x, 64, np.random.default_rng(s))[0]) for s in range(3)]
    c = [mse(x, kmeanspp_seed(x, 64, np.random.default_rng(s), local_trials=1)[0]) for s in range(3)]
    assert np.mean(g) < 0.95 * np.mean(c)


def test_seeding_picks_distinct_training_points_and_is_seeded():
    x = zipf_mixture(2000, 4, 10, seed=1)
    c, info = kmeanspp_seed(x, 50, np.random.default_rng(9), sample=500)
    assert info == {"method": "greedy-kmeans++", "local_trials": 2 + int(np.log(50)), "sample_size": 500}
    assert len(np.unique(c, axis=0)) == 50
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in c)
    np.testing.assert_array_equal(c, kmeanspp_seed(x, 50, np.random.default_rng(9), sample=500)[0])


# ---------------------------------------------------------------- card

def test_card_stats_by_hand_on_a_tiny_example():
    x = np.array([[0, 0], [0, 2], [10, 0], [10, 2]], np.float32)
    x_ho = np.array([[0, 1], [0, 1], [0, 1], [10, 3]], np.float32)
    cb = fit_kmeans(x, 2, seed=0, x_heldout=x_ho, parent="semantic-000000000000")
    order = np.argsort(cb.centroids[:, 0])
    np.testing.assert_allclose(cb.centroids[order], [[0, 1], [10, 1]], atol=1e-6)
    card = cb.card
    assert card["train_mse"] == pytest.approx(1.0) and card["train_mse_per_dim"] == pytest.approx(0.5)
    assert card["heldout_mse"] == pytest.approx(1.0)     # (0 + 0 + 0 + 4) / 4
    assert card["usage_on"] == "heldout"
    assert card["usage_entropy_bits"] == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))
    assert card["usage_perplexity"] == pytest.approx(2 ** card["usage_entropy_bits"])
    assert card["dead_codes"] == 0 and card["dead_code_ids"] == []
    assert (card["k"], card["dim"], card["n_train_vectors"], card["n_heldout_vectors"]) == (2, 2, 4, 4)
    assert card["parent"] == "semantic-000000000000" and card["device"] == "cpu"
    assert card["id"] == cb.id and card["faiss_version"] == faiss.__version__
    assert card["created_by"].startswith("tokenmill ")
    assert not any("time" in key or "second" in key for key in card)

    train_only = fit_kmeans(x, 2, seed=0).card
    assert train_only["usage_on"] == "train" and train_only["usage_entropy_bits"] == pytest.approx(1.0)
    assert train_only["usage_perplexity"] == pytest.approx(2.0)
    assert train_only["heldout_mse"] is None and train_only["n_heldout_vectors"] == 0


def test_codebook_stats_counts_dead_codes():
    x = np.array([[0, 0], [0, 2], [10, 0], [10, 2]], np.float32)
    c = np.array([[0, 1], [10, 1], [50, 50], [0, 1]], np.float32)   # 2: far away, 3: loses the tie
    s = codebook_stats(c, x, x[:1])
    assert s["dead_codes"] == 2 and s["dead_code_ids"] == [2, 3]
    assert s["train_mse"] == pytest.approx(1.0) and s["usage_entropy_bits"] == 0.0


# ---------------------------------------------------------------- determinism and artifacts

def test_fit_is_deterministic_and_artifacts_byte_identical(tmp_path, fitted):
    x = zipf_mixture(3000, 8, 30, seed=5)
    again = fit_kmeans(x[:2500], 16, seed=3, x_heldout=x[2500:], sources={"n_tracks": 2, "uris_sha256": "ab"})
    assert again.id == fitted.id
    np.testing.assert_array_equal(again.centroids, fitted.centroids)
    a, b = fitted.save(tmp_path / "a"), again.save(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert a.with_suffix(".json").read_bytes() == b.with_suffix(".json").read_bytes()
    assert fit_kmeans(x[:2500], 16, seed=4).id != fitted.id
    assert set(fitted.timing) == {"seed_s", "lloyd_s", "stats_s", "fit_seconds"}


def test_id_is_sha256_of_shape_and_little_endian_bytes(fitted):
    import hashlib
    c = fitted.centroids
    h = hashlib.sha256(np.array(c.shape, "<i8").tobytes() + c.astype("<f4").tobytes()).hexdigest()
    assert fitted.id == f"semantic-{h[:12]}"
    assert content_id(c, "mulan") == f"mulan-{h[:12]}"
    assert content_id(c.reshape(8, 16), "semantic") != fitted.id    # same bytes, other shape


def test_save_load_round_trip(tmp_path, fitted):
    path = fitted.save(tmp_path)
    assert path == tmp_path / f"{fitted.id}.safetensors"
    text = (tmp_path / f"{fitted.id}.json").read_text()
    assert json.loads(text) == fitted.card
    assert text == json.dumps(fitted.card, sort_keys=True, indent=1) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, f"{fitted.id}.json"])
    for args in [(path,), (path.with_suffix(".json"),), (tmp_path, fitted.id)]:
        cb = Codebook.load(*args)
        assert cb.id == fitted.id and cb.card == fitted.card
        np.testing.assert_array_equal(cb.centroids, fitted.centroids)
        assert cb.centroids.dtype == np.float32
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"id": fitted.id, "kind": "semantic"}


def test_tampered_centroids_fail_load_naming_the_file(tmp_path, fitted):
    path = fitted.save(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01                                        # one bit of the last centroid
    path.write_bytes(bytes(raw))
    with pytest.raises(CodebookError, match=fitted.id + ".safetensors"):
        Codebook.load(path)


def test_corrupt_or_mismatched_files_fail_load(tmp_path, fitted):
    path = fitted.save(tmp_path)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps(dict(card, id="semantic-ffffffffffff")))
    with pytest.raises(CodebookError, match="claims id semantic-ffffffffffff"):
        Codebook.load(path)
    card_path.write_text(json.dumps(card))
    renamed = tmp_path / "semantic-ffffffffffff"           # a valid pair copied under another name
    renamed.with_suffix(".safetensors").write_bytes(path.read_bytes())
    renamed.with_suffix(".json").write_bytes(card_path.read_bytes())
    with pytest.raises(CodebookError, match="requested id"):
        Codebook.load(tmp_path, "semantic-ffffffffffff")
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(CodebookError, match="cannot read codebook"):
        Codebook.load(path)
    with pytest.raises(CodebookError, match="is missing"):
        Codebook.load(tmp_path / "semantic-123456789abc.safetensors")
    with pytest.raises(CodebookError, match="pass the codebook id"):
        Codebook.load(tmp_path)


# ---------------------------------------------------------------- validation

def test_use_gpu_without_gpu_raises():
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    x = zipf_mixture(200, 4, 5, seed=0)
    with pytest.raises(CodebookError, match="faiss-gpu|drop --use_gpu"):
        fit_kmeans(x, 4, seed=0, use_gpu=True)


@pytest.mark.parametrize("x, k, match", [
    (np.zeros((5, 3), np.float32), 8, r"N=5 vectors cannot fit k=8 centroids; sample more frames"),
    (np.zeros((50, 3), np.float64), 8, "must be float32, got float64; convert with"),
    (np.zeros(50, np.float32), 8, r"must be 2-D \[N, D\], got shape \(50,\)"),
    (np.zeros((5, 10, 3), np.float32), 8, "must be 2-D"),
    ([[0.0, 1.0]] * 20, 2, "must be a numpy array"),
    (np.zeros((0, 3), np.float32), 2, "is empty"),
    (np.zeros((50, 3), np.float32), 1, r"k must be an int in \[2, 65536\]"),
    (np.zeros((50, 3), np.float32), 70000, "uint16"),
    (np.zeros((50, 3), np.float32), 8.0, "k must be an int"),
])
def test_bad_inputs_raise_with_fix_it_messages(x, k, match):
    with pytest.raises(CodebookError, match=match):
        fit_kmeans(x, k, seed=0)


def test_non_finite_inputs_raise_naming_the_row():
    x = zipf_mixture(100, 4, 5, seed=0)
    for bad, what in [(np.nan, "NaN or inf"), (np.inf, "NaN or inf"), (3e30, "overflows float32")]:
        y = x.copy()
        y[17, 2] = bad
        with pytest.raises(CodebookError, match=f"x_train has 1 rows with .*{what} \\(first: row 17\\)"):
            fit_kmeans(y, 4, seed=0)
        with pytest.raises(CodebookError, match="x_heldout has 1 rows"):
            fit_kmeans(x, 4, seed=0, x_heldout=y)


def test_other_argument_checks():
    x = zipf_mixture(100, 4, 5, seed=0)
    with pytest.raises(CodebookError, match="x_heldout has dimension D=5"):
        fit_kmeans(x, 4, seed=0, x_heldout=np.zeros((10, 5), np.float32))
    with pytest.raises(CodebookError, match="kind must match"):
        fit_kmeans(x, 4, seed=0, kind="Semantic-v2")
    with pytest.raises(CodebookError, match="seed must be"):
        fit_kmeans(x, 4, seed=-1)
    with pytest.raises(CodebookError, match="JSON-serializable"):
        fit_kmeans(x, 4, seed=0, sources={"when": object()})
    with pytest.raises(CodebookError, match="only 3 distinct points"):
        fit_kmeans(np.repeat(x[:3], 10, axis=0), 4, seed=0)
    with pytest.raises(CodebookError, match="do not fit uint16"):
        assign(x, np.zeros((65537, 4), np.float32))


def test_warns_below_39_points_per_centroid_but_fits(caplog):
    x = zipf_mixture(300, 4, 5, seed=0)
    with caplog.at_level(logging.WARNING, logger="tokenmill.tokenizers.kmeans"):
        cb = fit_kmeans(x, 16, seed=0)
    assert "only N=300 vectors" in caplog.text and cb.k == 16
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tokenmill.tokenizers.kmeans"):
        fit_kmeans(x, 4, seed=0)
    assert caplog.text == ""


def test_codebook_holds_a_read_only_copy():
    c = np.arange(12, dtype=np.float32).reshape(4, 3)
    cb = Codebook(c, {"kind": "mulan"})
    c[0, 0] = 99.0
    assert cb.centroids[0, 0] == 0.0 and not cb.centroids.flags.writeable
    assert cb.id.startswith("mulan-") and cb.id == content_id(np.arange(12, dtype=np.float32).reshape(4, 3), "mulan")
    with pytest.raises(ValueError):
        cb.centroids[0, 0] = 1.0
