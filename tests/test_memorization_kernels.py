"""tokenmill/eval kernels: the OT cost against an exact linear program (scipy linprog) and the
closed form on a line, Sinkhorn near it and never below it, the lower bound under it; rolling
hashes against the polynomial computed with Python ints; the exact-copy search against a plain
Python loop; tau calibration and negative pairs by hand."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from tokenmill.eval import EvalError
from tokenmill.eval.memorization import (
    binomial_ci, calibrate_tau, entropy_bits, negative_pairs, parse_prompt_tokens,
)
from tokenmill.eval.ot import OTConfig, TokenOT, projection
from tokenmill.eval.search import GeneratedIndex
from tokenmill.eval.windows import WindowHasher, sketches, window_starts


def lp_cost(a: np.ndarray, b: np.ndarray, centroids: np.ndarray) -> float:
    """The optimal transport cost as a plain linear program over the non-zero bins."""
    ia, ca = np.unique(a, return_counts=True)
    ib, cb = np.unique(b, return_counts=True)
    wa, wb = ca / ca.sum(), cb / cb.sum()
    m = np.array([[np.sqrt(sum((centroids[i][d] - centroids[j][d]) ** 2 for d in range(centroids.shape[1])))
                   for j in ib] for i in ia])
    na, nb = len(ia), len(ib)
    rows = np.zeros((na + nb, na * nb))
    for i in range(na):
        rows[i, i * nb:(i + 1) * nb] = 1  # sum_j P_ij = wa_i
    for j in range(nb):
        rows[na + j, j::nb] = 1  # sum_i P_ij = wb_j
    res = linprog(m.reshape(-1), A_eq=rows, b_eq=np.r_[wa, wb], bounds=(0, None), method="highs")
    assert res.status == 0
    return float(res.fun)


@pytest.mark.parametrize("seed", range(6))
def test_exact_ot_equals_the_linear_program_and_sinkhorn_lies_just_above_it(seed):
    rng = np.random.default_rng(seed)
    k, d = 16, 3
    cent = rng.normal(size=(k, d))
    a = rng.integers(0, k, size=int(rng.integers(5, 40)))
    b = rng.integers(0, k // 2, size=int(rng.integers(5, 40)))  # a different support
    want = lp_cost(a, b, cent)
    exact = TokenOT(cent).cost(a, b)
    assert exact == pytest.approx(want, abs=1e-7)  # HiGHS solves to ~1e-8
    sink = TokenOT(cent, OTConfig(method="sinkhorn")).cost(a, b)  # the default regularization
    assert want - 1e-6 <= sink <= want * 1.1
    sharp = TokenOT(cent, OTConfig(method="sinkhorn", sinkhorn_reg=0.01, sinkhorn_max_iter=20000)).cost(a, b)
    assert want - 1e-6 <= sharp <= want * 1.002
    assert TokenOT(cent).lower_bound(a, b) <= exact + 1e-12


def test_exact_ot_on_a_line_is_the_area_between_the_cdfs():
    cent = np.array([[0.0], [1.0], [3.0], [7.0]])  # ids on a line
    a = np.array([0, 0, 1, 3])  # masses 1/2 at 0, 1/4 at 1, 1/4 at 7
    b = np.array([2, 2, 3, 3])  # 1/2 at 3, 1/2 at 7
    # CDF difference on [0,1): 1/2, [1,3): 3/4, [3,7): 3/4 - 1/2 = 1/4 -> 0.5 + 1.5 + 1.0
    assert TokenOT(cent).cost(a, b) == pytest.approx(3.0, abs=1e-12)
    assert TokenOT(cent).cost(a, a) == 0.0
    assert TokenOT(cent, OTConfig(method="sinkhorn")).cost(a, a) > 0  # entropy blurs a copy's plan


def test_lower_bound_holds_projected_too():
    rng = np.random.default_rng(1)
    cent = rng.normal(size=(64, 10))
    ot = TokenOT(cent)
    p = projection(cent, 3)
    assert np.allclose(p @ p.T, np.eye(3))
    pc = cent @ p.T
    for _ in range(30):
        a, b = rng.integers(0, 64, 25), rng.integers(0, 64, 25)
        lb = ot.lower_bound(a, b)
        proj = np.linalg.norm(pc[a].mean(0) - pc[b].mean(0))
        assert proj <= lb + 1e-12 <= ot.cost(a, b) + 2e-12


def test_bad_ot_inputs_are_named():
    with pytest.raises(EvalError, match="outside the codebook's 4 ids"):
        TokenOT(np.eye(4)).cost(np.array([5]), np.array([1]))
    with pytest.raises(EvalError, match="one of"):
        OTConfig(method="greedy")


def test_rolling_hashes_equal_the_polynomial_with_python_ints():
    rng = np.random.default_rng(0)
    h = WindowHasher(7, 50, seed=3)
    t = rng.integers(0, 50, 3000).astype(np.uint16)
    got = h.hashes(t)
    assert got.shape == (3000 - 6,)
    for i in (0, 1, 517, 2100, 2993):
        acc = 0
        for x in t[i:i + 7]:
            acc = (acc * h.base + int(h.table[x])) % (1 << 64)
        assert int(got[i]) == acc
    assert h.hashes(t[:6]).size == 0


def exact_hits_loop(generated: list[np.ndarray], tokens: np.ndarray) -> dict[int, list[int]]:
    """Reference: every generated window against every training offset, token by token."""
    t = [int(x) for x in tokens]
    out: dict[int, list[int]] = {}
    for g, win in enumerate(generated):
        w = [int(x) for x in win]
        for off in range(len(t) - len(w) + 1):
            if t[off:off + len(w)] == w:
                out.setdefault(g, []).append(off)
    return out


def test_exact_search_equals_a_plain_python_loop():
    rng = np.random.default_rng(5)
    vocab, w = 3, 6  # a tiny vocabulary: many natural repeats and hash-table collisions of windows
    train = rng.integers(0, vocab, 800).astype(np.uint16)
    gen = {"a": rng.integers(0, vocab, 40).astype(np.uint16),
           "b": np.concatenate([train[100:120], rng.integers(0, vocab, 10)]).astype(np.uint16)}
    idx = GeneratedIndex(gen, np.eye(vocab), window=w, stride=2, sketch_dims=2)
    want = exact_hits_loop(list(idx.tokens), train)
    got = idx.exact_hits(train)
    assert got == want and len(want) > 5
    assert all(g in got for g, (sid, s) in enumerate(idx.windows) if sid == "b" and s + w <= 20)


def test_window_starts_and_sketches_by_hand():
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(11, 4, 3).tolist() == [0, 3, 6, 7]  # the last one ends at the end
    assert window_starts(3, 4, 1).size == 0
    pc = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    t = np.array([0, 1, 2, 2])
    assert np.allclose(sketches(t, 2, np.array([0, 2]), pc), [[1.0, 2.0], [4.0, 5.0]])


def test_tau_calibration_by_hand():
    costs = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.4, 0.8, 0.6, 1.0])
    rep = calibrate_tau(costs, 0.2)  # 2 of 10 may fall under tau: tau = the 3rd smallest
    assert rep["value"] == 0.3 and rep["false_positives"] == 2 and rep["fpr"] == 0.2
    rep = calibrate_tau(costs, 1e-4)  # none may: tau = the smallest, which is not below itself
    assert rep["value"] == 0.1 and rep["false_positives"] == 0 and not rep["resolvable"]
    assert "cannot resolve" in rep["note"]
    with pytest.raises(EvalError, match="no negative pairs"):
        calibrate_tau(np.zeros(0), 0.01)


def test_negative_pairs_cross_sources_are_distinct_and_seeded():
    groups = ["s1", "s1", "s2", "s3", "s3", "s3"]
    every = negative_pairs(groups, 100, seed=0)  # all 11 cross pairs
    assert len(every) == 15 - 1 - 3 and all(groups[i] != groups[j] and i < j for i, j in every)
    some = negative_pairs(groups, 5, seed=1)
    assert len({tuple(p) for p in some}) == 5 and np.array_equal(some, negative_pairs(groups, 5, seed=1))
    big = negative_pairs([f"s{i % 50}" for i in range(400)], 1000, seed=2)
    assert len({tuple(p) for p in big}) == 1000 and all(i % 50 != j % 50 for i, j in big)


def test_entropy_intervals_and_prompt_lists():
    assert entropy_bits(np.array([3, 3, 3])) == 0.0
    assert entropy_bits(np.array([0, 1, 2, 3])) == pytest.approx(2.0)
    lo, hi = binomial_ci(0, 100)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 100))  # closed form at k = 0
    lo, hi = binomial_ci(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.2, abs=0.01)
    assert parse_prompt_tokens("0:250:25") == tuple(range(0, 251, 25))
    assert parse_prompt_tokens("50,0,25,25") == (0, 25, 50)
    with pytest.raises(EvalError, match="--prompt_tokens"):
        parse_prompt_tokens("a,b")


def test_search_finds_every_record_best_under_the_radius_like_brute_force():
    """With the OT cap above any candidate count, the prefiltered scan loses nothing: per generated
    window and record, its best OT cost under the radius equals the brute-force minimum."""
    rng = np.random.default_rng(9)
    k, w = 12, 8
    cent = rng.normal(size=(k, 3))
    ot = TokenOT(cent)
    records = [rng.integers(0, k, 40).astype(np.uint16) for _ in range(4)]
    gen = {"g": np.concatenate([records[1][5:5 + w], rng.integers(0, k, 12)]).astype(np.uint16)}
    idx = GeneratedIndex(gen, cent, window=w, stride=3, sketch_dims=2, ot=ot)
    radius = 0.6
    for r, t in enumerate(records):
        hits, st = idx.scan(f"k{r}", "u", t, radius, max_ot_per_record=10_000)
        got = {h.window: h.cost for h in hits}
        for g, row in enumerate(idx.tokens):
            best = min(ot.cost(row, t[o:o + w]) for o in range(len(t) - w + 1))
            if best < radius:
                assert got.get(g) == pytest.approx(best, abs=1e-12)
            else:
                assert g not in got
        assert st.ot_solves <= st.candidates < st.windows_sketched * len(idx)  # the prefilter dropped some
