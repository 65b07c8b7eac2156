"""Residual VQ: hand-set codebooks give known codes; error falls with stages; artifacts verify."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tokenmill.tokenizers.kmeans import CodebookError
from tokenmill.tokenizers.rvq import RVQCodebook, fit_rvq, rvq_content_id


def _hand_set() -> RVQCodebook:
    cbs = np.array([[[0, 0], [10, 0], [0, 10], [10, 10]],      # stage 1: coarse grid
                    [[0, 0], [1, 0], [0, 1], [-1, 0]]],        # stage 2: unit steps
                   dtype=np.float32)
    return RVQCodebook(cbs, {"kind": "mulan"})


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit-norm embeddings around 8 fixed directions (the same centers for every seed)."""
    centers = np.random.default_rng(99).standard_normal((8, dim))
    r = np.random.default_rng(seed)
    x = centers[r.integers(8, size=n)] + 0.6 * r.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    return fit_rvq(_clustered(2000, 16, 1), n_stages=12, k=16, seed=3, x_heldout=_clustered(800, 16, 2))


def test_hand_set_codebooks_encode_known_vectors_to_known_codes():
    rvq = _hand_set()
    x = np.array([[11.0, 0.0], [9.2, 10.1], [0.2, 9.0], [0.0, 0.0]], dtype=np.float32)
    codes = rvq.encode(x)
    assert codes.dtype == np.uint16
    np.testing.assert_array_equal(codes, [[1, 1], [3, 3], [2, 0], [0, 0]])
    np.testing.assert_array_equal(rvq.encode(x, n_stages=1), [[1], [3], [2], [0]])
    np.testing.assert_array_equal(rvq.decode(codes), [[11, 0], [9, 10], [0, 10], [0, 0]])
    np.testing.assert_array_equal(rvq.decode(np.array([2, 2], np.uint16)), [0, 11])   # one vector [S]
    np.testing.assert_array_equal(rvq.decode(codes[:, :1]), [[10, 0], [10, 10], [0, 10], [0, 0]])


def test_bad_inputs_are_refused():
    rvq = _hand_set()
    with pytest.raises(CodebookError, match="dimension"):
        rvq.encode(np.zeros((1, 3), np.float32))
    with pytest.raises(CodebookError, match=r"\[0, 4\)"):
        rvq.decode(np.array([[4, 0]]))
    assert fit_rvq(_clustered(100, 4, 0), n_stages=2, k=12).k == 12   # greedy-rq: any k, not only 2^b
    with pytest.raises(CodebookError, match="cannot fit"):
        fit_rvq(_clustered(10, 4, 0), n_stages=2, k=16)


def test_heldout_error_falls_as_stages_are_added(fitted):
    xh = _clustered(800, 16, 2)
    mse = fitted.card["heldout_mse_per_stage"]
    assert len(mse) == 12
    assert mse[0] > mse[3] > mse[11]
    assert mse[11] < 0.5 * mse[0]
    # the card's figures are the direct |x - decode(encode(x, s))|^2
    for s in (1, 4, 12):
        rec = fitted.decode(fitted.encode(xh, n_stages=s))
        direct = float(((xh.astype(np.float64) - rec) ** 2).sum(1).mean())
        assert direct == pytest.approx(mse[s - 1], rel=1e-4)
    assert len(fitted.card["usage_entropy_bits_per_stage"]) == 12
    assert all(0 < e <= 4 for e in fitted.card["usage_entropy_bits_per_stage"])   # log2(16) = 4
    assert fitted.card["n_train_vectors"] == 2000 and fitted.card["n_heldout_vectors"] == 800
    assert fitted.id.startswith("mulan-") and fitted.id == rvq_content_id(fitted.codebooks)


def test_fit_and_encode_are_deterministic(fitted):
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1 if before > 1 else 2)   # exact kernel: the thread count cannot matter
    try:
        again = fit_rvq(_clustered(2000, 16, 1), n_stages=12, k=16, seed=3, x_heldout=_clustered(800, 16, 2))
    finally:
        faiss.omp_set_num_threads(before)
    assert again.id == fitted.id and again.card == fitted.card
    x = _clustered(50, 16, 5)
    np.testing.assert_array_equal(fitted.encode(x), fitted.encode(x.copy()))
    np.testing.assert_array_equal(fitted.encode(x)[:7], fitted.encode(x[:7]))   # batch-independent


def test_staged_kmeans_method_also_fits():
    rvq = fit_rvq(_clustered(600, 8, 1), n_stages=3, k=8, seed=0, n_iter=5, method="staged-kmeans",
                  x_heldout=_clustered(200, 8, 2))
    mse = rvq.card["heldout_mse_per_stage"]
    assert rvq.card["method"]["name"] == "staged-kmeans" and mse[0] > mse[2]


def test_save_load_round_trip_and_tamper_detection(fitted, tmp_path):
    path = fitted.save(tmp_path / "a")
    assert path.name == f"{fitted.id}.safetensors"
    again = RVQCodebook.load(path)
    np.testing.assert_array_equal(again.codebooks, fitted.codebooks)
    assert again.id == fitted.id and again.card["heldout_mse_per_stage"] == fitted.card["heldout_mse_per_stage"]
    assert RVQCodebook.load(tmp_path / "a", id=fitted.id).id == fitted.id
    # byte-identical re-save
    path_b = again.save(tmp_path / "b")
    assert path_b.read_bytes() == path.read_bytes()
    assert path_b.with_suffix(".json").read_bytes() == path.with_suffix(".json").read_bytes()
    # a flipped bit in the codebooks
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x40
    path_b.write_bytes(bytes(blob))
    with pytest.raises(CodebookError, match="modified or mismatched"):
        RVQCodebook.load(path_b)
    # a card that claims another id
    path_b.write_bytes(path.read_bytes())
    card = json.loads(path_b.with_suffix(".json").read_text())
    card["id"] = "mulan-000000000000"
    path_b.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(CodebookError, match="claims id mulan-000000000000"):
        RVQCodebook.load(path_b)
    with pytest.raises(CodebookError, match="requested id"):
        RVQCodebook.load(path, id="mulan-ffffffffffff")
