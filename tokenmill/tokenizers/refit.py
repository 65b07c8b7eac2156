"""Codebook refits that keep token ids stable, and the drift report (docs/design.md §4).

Pure code: numpy/faiss/scipy in, codebooks and dicts out (no Beam).

* ``refit_kmeans`` runs Lloyd iterations on a new sample, warm-started from the parent's
  centroids; ``refit_rvq`` does the same stage by stage on the residuals (greedy staged k-means,
  each stage warm-started from the parent's stage codebook). FAISS's ``ResidualQuantizer`` has no
  warm start, and ``faiss.Clustering`` splits empty clusters silently with its own RNG (moving a
  live centroid too), so the Lloyd loop is ours (``nearest.lloyd``, shared with ``fit_kmeans``):
  exact nearest centroid (ties to the lowest id), means accumulated in float64 in a fixed order,
  no randomness.
* Empty clusters are re-seeded deterministically by farthest-first traversal: the point farthest
  from its centroid, then the point farthest from all centroids and the points chosen so far,
  and so on (ties to the lowest row). Every re-seed is counted and its id listed in the card; an
  id that cannot be re-seeded (every point sits on a centroid) keeps its position and is listed
  as ``unfilled_ids``.
* ``align_ids`` then permutes the new centroids so that new id i is the one matched to parent
  id i by a linear assignment (scipy's ``linear_sum_assignment``) over L2 distances (not squared:
  see ``align_ids``).
  With a warm start this is almost always the identity; it repairs re-seeded ids and crossings,
  and it recovers the ids of a cold refit as far as the clusters are distinguishable.
* A standardized k-means parent (per-dimension ``mean``/``std``) passes its statistics on
  unchanged: the refit runs in the parent's standardized space (recomputed statistics would move
  every token), and the drift report compares in that space.
* ``drift_report(parent, child, probe)`` says what a refit did to the tokens of a fixed probe
  set: share of tokens changed (per stage for an RVQ), centroid movement between same ids,
  usage, dead codes, entropy and MSE before and after. ``render_drift`` prints it.
"""
from __future__ import annotations

import json
import time

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment

from tokenmill import __version__
from tokenmill.tokenizers.kmeans import (
    CARD_VERSION,
    SEED_SAMPLE_PER_CENTROID,
    Codebook,
    CodebookError,
    codebook_stats,
    kmeanspp_seed,
)
from tokenmill.tokenizers.artifacts import check_vectors as _check_vectors
from tokenmill.tokenizers.artifacts import row_sqnorms as _row_sqnorms
from tokenmill.tokenizers.nearest import lloyd
from tokenmill.tokenizers.nearest import nearest as _nearest
from tokenmill.tokenizers.rvq import RVQCodebook, _greedy_encode, rvq_stats

MAX_ALIGN_K = 8192   # cost matrix k*k float64 = 512 MiB; scipy's LSA takes ~40 s at this k
ALIGN_METRICS = ("euclidean", "sqeuclidean")


# ---------------------------------------------------------------- kernels

def align_ids(parent_centroids: np.ndarray, new_centroids: np.ndarray, *,
              metric: str = "euclidean") -> np.ndarray:
    """int64 perm [k]: ``new_centroids[perm]`` puts at id i the new centroid matched to parent id i.

    Minimum-total-cost perfect matching (scipy ``linear_sum_assignment``, float64 costs) with cost
    L2 distance (``metric="euclidean"``, default) or squared L2 (``"sqeuclidean"``). If
    ``new = parent[p]`` exactly, the result is the inverse permutation of ``p`` for either.

    Why L2 and not squared L2 by default: L2 is a metric, so by the triangle inequality a centroid
    that did not move never gains from a swap; squared L2 does gain when a cluster vanished and a
    new one appeared far away beyond an unchanged one (it prefers two medium moves to one long
    move) and then relabels the unchanged cluster (tests/test_refit.py shows such a case)."""
    if metric not in ALIGN_METRICS:
        raise CodebookError(f"metric must be one of {ALIGN_METRICS}, got {metric!r}")
    p = np.asarray(parent_centroids)
    q = np.asarray(new_centroids)
    if p.ndim != 2 or q.ndim != 2 or p.shape != q.shape or 0 in p.shape:
        raise CodebookError(f"align_ids needs two centroid arrays of the same shape [k, D], got {p.shape} "
                            f"and {q.shape}; a refit keeps k and D of its parent")
    if p.shape[0] > MAX_ALIGN_K:
        raise CodebookError(f"align_ids on k={p.shape[0]} > {MAX_ALIGN_K} centroids needs a k*k cost matrix "
                            f"too large to solve; refit with align=False (a warm start alone keeps most ids)")
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    if not (np.isfinite(p64).all() and np.isfinite(q64).all()):
        raise CodebookError("align_ids: centroids contain NaN or inf")
    cost = _pairwise_sqdist(p64, q64)
    if metric == "euclidean":
        np.sqrt(cost, out=cost)
    _, cols = linear_sum_assignment(cost)
    return cols.astype(np.int64)


def _pairwise_sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [len(a), len(b)] squared L2 distances (clipped at 0 against rounding)."""
    d = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0, out=d)


def _alignment(parent_c: np.ndarray, new_c: np.ndarray, align: bool) -> tuple[np.ndarray, dict]:
    """(centroids with ids aligned to the parent if `align`, card entry with matched distances)."""
    def l2(c):
        return np.sqrt(((parent_c.astype(np.float64) - c.astype(np.float64)) ** 2).sum(axis=1))

    before = l2(new_c)
    info = {"applied": bool(align), "method": "scipy.optimize.linear_sum_assignment, L2 cost",
            "mean_matched_l2_before": float(before.mean())}
    if align:
        perm = align_ids(parent_c, new_c)
        new_c = np.ascontiguousarray(new_c[perm])
        info["ids_permuted"] = int((perm != np.arange(len(perm))).sum())
    else:
        info["ids_permuted"] = 0
    after = l2(new_c)
    info.update(mean_matched_l2=float(after.mean()), max_matched_l2=float(after.max()))
    return new_c, info


# ---------------------------------------------------------------- argument checks

def _standardization(cb: Codebook) -> dict:
    """{"mean": float32 [D], "std": float32 [D]} of a standardized k-means codebook, else {}."""
    mean = getattr(cb, "mean", None)
    return {} if mean is None else {"mean": mean, "std": cb.std}


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise CodebookError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def _check_flag(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise CodebookError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def _check_sources(parent_card: dict, sources, key: str) -> None:
    """A refit must see features of the parent's feature source (extractor / MuLan model)."""
    try:
        json.dumps(sources, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CodebookError(f"sources must be JSON-serializable (it goes into the card): {e}") from e
    was = (parent_card.get("sources") or {}).get(key)
    now = (sources or {}).get(key)
    if was is not None and now != was:
        raise CodebookError(f"the parent codebook was fitted on {key} {json.dumps(was, sort_keys=True)[:200]}, "
                            f"but this refit's sources[{key!r}] is {json.dumps(now, sort_keys=True)[:200]}; "
                            f"refit on features of the same {key} and record it in sources[{key!r}], "
                            f"or fit a new codebook (not a refit) for another {key}")


def _check_x(x_new, x_heldout, dim: int, k: int):
    x_new = _check_vectors(x_new, "x_new", dim=dim)
    x_sq = _row_sqnorms(x_new, "x_new")
    if x_new.shape[0] < k:
        raise CodebookError(f"N={x_new.shape[0]} vectors cannot refit k={k} centroids; sample more frames")
    if x_heldout is not None:
        x_heldout = _check_vectors(x_heldout, "x_heldout", dim=dim)
        _row_sqnorms(x_heldout, "x_heldout")
    return x_new, x_sq, x_heldout


def _common_card(parent, seed, n_iter, x_new, x_heldout, sources) -> dict:
    return {"seed": int(seed), "n_iter": int(n_iter), "n_train_vectors": int(x_new.shape[0]),
            "n_heldout_vectors": 0 if x_heldout is None else int(x_heldout.shape[0]),
            "sources": sources, "parent": parent.id, "device": "cpu",
            "faiss_version": faiss.__version__, "created_by": f"tokenmill {__version__}"}


# ---------------------------------------------------------------- refits

def refit_kmeans(parent: Codebook, x_new: np.ndarray, *, seed: int, n_iter: int = 25, align: bool = True,
                 warm_start: bool = True, x_heldout: np.ndarray | None = None,
                 sources: dict | None = None) -> Codebook:
    """Refit `parent` on float32 [N, D] `x_new`; ids aligned to the parent's (module docstring).

    ``warm_start=False`` seeds by greedy k-means++ from `seed` instead (the control that shows
    what the warm start buys); `seed` is unused with a warm start. The card records ``parent``,
    the Lloyd run (re-seeded ids), the alignment, and the id before alignment."""
    t0 = time.perf_counter()
    if not isinstance(parent, Codebook):
        raise CodebookError(f"parent must be a kmeans.Codebook (Codebook.load(path)), got {type(parent).__name__}")
    seed, n_iter = _check_int("seed", seed, 0), _check_int("n_iter", n_iter, 0)
    align, warm_start = _check_flag("align", align), _check_flag("warm_start", warm_start)
    _check_sources(parent.card, sources, "extractor")
    x_new, x_sq, x_heldout = _check_x(x_new, x_heldout, parent.dim, parent.k)
    stats_kw = _standardization(parent)
    if stats_kw:   # keep the parent's statistics: recomputing them would move every token
        x_new = parent.standardize(x_new)
        _row_sqnorms(x_new, "standardized x_new")   # finiteness after standardizing
        x_heldout = None if x_heldout is None else parent.standardize(x_heldout)
    k = parent.k
    if warm_start:
        init, seeding = np.array(parent.centroids), {"method": "warm-start", "from": parent.id}
    else:
        init, seeding = kmeanspp_seed(x_new, k, np.random.default_rng(seed),
                                      sample=min(len(x_new), SEED_SAMPLE_PER_CENTROID * k))
    c, run = lloyd(x_new, init, n_iter)
    t_lloyd = time.perf_counter()
    unaligned_id = Codebook(c, {"kind": parent.kind}, **stats_kw).id
    c, alignment = _alignment(parent.centroids, c, align)
    cb = Codebook(c, {"kind": parent.kind}, **stats_kw)
    stats = codebook_stats(cb.centroids, x_new, x_heldout, index=cb._get_index())
    cb.card = {"card_version": CARD_VERSION, "id": cb.id, "kind": parent.kind, "k": k, "dim": parent.dim,
               "seeding": seeding, **stats,
               **({"standardization": dict(parent.card.get("standardization") or {}, inherited_from=parent.id)}
                  if stats_kw else {}),
               "refit": {"warm_start": warm_start, "lloyd": run, "alignment": alignment,
                         "id_before_alignment": unaligned_id},
               **_common_card(parent, seed, n_iter, x_new, x_heldout, sources)}
    t_end = time.perf_counter()
    cb.timing = {"lloyd_s": t_lloyd - t0, "align_stats_s": t_end - t_lloyd, "fit_seconds": t_end - t0}
    return cb


def refit_rvq(parent: RVQCodebook, x_new: np.ndarray, *, seed: int = 0, n_iter: int = 10, align: bool = True,
              warm_start: bool = True, x_heldout: np.ndarray | None = None,
              sources: dict | None = None) -> RVQCodebook:
    """Refit an RVQ stage by stage: Lloyd on the residuals of stages < s, warm-started from the
    parent's stage s (or, with ``warm_start=False``, k-means++ from ``seed + s``), then stage s's
    ids aligned to the parent's stage s. Residuals use the refitted (aligned) stages."""
    t0 = time.perf_counter()
    if not isinstance(parent, RVQCodebook):
        raise CodebookError(f"parent must be an rvq.RVQCodebook (RVQCodebook.load(path)), got "
                            f"{type(parent).__name__}")
    seed, n_iter = _check_int("seed", seed, 0), _check_int("n_iter", n_iter, 0)
    align, warm_start = _check_flag("align", align), _check_flag("warm_start", warm_start)
    _check_sources(parent.card, sources, parent.kind)  # "mulan" or "melody": the model the windows come from
    x_new, _, x_heldout = _check_x(x_new, x_heldout, parent.dim, parent.k)
    k = parent.k
    res = np.array(x_new, dtype=np.float32, copy=True)
    stages, info = [], []
    for s in range(parent.n_stages):
        if warm_start:
            init = np.array(parent.codebooks[s])
        else:
            init, _ = kmeanspp_seed(res, k, np.random.default_rng(seed + s),
                                    sample=min(len(res), SEED_SAMPLE_PER_CENTROID * k))
        c, run = lloyd(res, init, n_iter)
        c, alignment = _alignment(parent.codebooks[s], c, align)
        stages.append(c)
        info.append({"lloyd": run, "alignment": alignment})
        lab, _ = _nearest(res, c)
        res -= c[lab]
    t_fit = time.perf_counter()
    out = RVQCodebook(np.stack(stages).astype(np.float32), {"kind": parent.kind})
    stats = rvq_stats(out.codebooks, x_new, x_heldout)
    out.card = {"card_version": CARD_VERSION, "id": out.id, "kind": parent.kind, "n_stages": parent.n_stages,
                "k": k, "dim": parent.dim,
                "method": {"name": "refit-staged-kmeans", "n_iter": int(n_iter),
                           "init": "warm-start" if warm_start else "greedy-kmeans++"},
                "encode": "greedy", **stats,
                "refit": {"warm_start": warm_start, "stages": info,
                          "reseeds": int(sum(i["lloyd"]["reseeds"] for i in info)),
                          "ids_permuted": int(sum(i["alignment"]["ids_permuted"] for i in info))},
                **_common_card(parent, seed, n_iter, x_new, x_heldout, sources)}
    t_end = time.perf_counter()
    out.timing = {"fit_s": t_fit - t0, "stats_s": t_end - t_fit, "fit_seconds": t_end - t0}
    return out


# ---------------------------------------------------------------- drift report

def _usage(codes: np.ndarray, k: int) -> dict:
    counts = np.bincount(codes.astype(np.int64), minlength=k)
    p = counts[counts > 0] / counts.sum()
    return {"counts": [int(c) for c in counts], "dead": int((counts == 0).sum()),
            "entropy_bits": float(-(p * np.log2(p)).sum()) + 0.0}


def _movement(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.sqrt(((a.astype(np.float64) - b.astype(np.float64)) ** 2).sum(axis=1))
    return {"mean_l2": float(d.mean()), "median_l2": float(np.median(d)), "max_l2": float(d.max())}


def _given_prefix(changed: np.ndarray, s: int):
    """Share of stage-s codes changed among vectors whose codes of stages < s are all unchanged
    (the stage's own drift, without the cascade from earlier stages); None if there are none."""
    same_prefix = ~changed[:, :s].any(axis=1)
    return float(changed[same_prefix, s].mean()) if same_prefix.any() else None


def drift_report(parent, child, probe_vectors: np.ndarray) -> dict:
    """What a refit did to the tokens of a fixed probe set float32 [N, D] (JSON-serializable).

    Both codebooks must be k-means ``Codebook`` or both ``RVQCodebook`` with the same shape; ids
    are compared as they are (a refit has aligned them). For an RVQ every entry is per stage,
    plus ``changed_share_any_stage`` (vectors with any code changed), ``changed_share_all``
    (share of all N*S tokens) and ``changed_share_given_prefix`` (stage s among vectors whose
    earlier stages kept their codes: a stage's own drift without the cascade)."""
    if isinstance(parent, Codebook) and isinstance(child, Codebook):
        shape_p, shape_c, kind = parent.centroids.shape, child.centroids.shape, "kmeans"
    elif isinstance(parent, RVQCodebook) and isinstance(child, RVQCodebook):
        shape_p, shape_c, kind = parent.codebooks.shape, child.codebooks.shape, "rvq"
    else:
        raise CodebookError(f"drift_report compares two k-means Codebooks or two RVQCodebooks, got "
                            f"{type(parent).__name__} and {type(child).__name__}")
    if shape_p != shape_c:
        raise CodebookError(f"parent {parent.id} has shape {shape_p} but child {child.id} has {shape_c}; "
                            f"drift is only defined between a codebook and its refit (same k and D)")
    x = _check_vectors(probe_vectors, "probe_vectors", dim=parent.dim)
    _row_sqnorms(x, "probe_vectors")
    if kind == "kmeans":
        sp_, sc_ = _standardization(parent), _standardization(child)
        if sp_.keys() != sc_.keys() or any(not np.array_equal(sp_[n], sc_[n]) for n in sp_):
            raise CodebookError(f"parent {parent.id} and child {child.id} standardize features differently; "
                                f"their centroids live in different spaces, so drift is undefined (a "
                                f"refit keeps its parent's mean/std)")
        x = parent.standardize(x) if sp_ else x     # centroids, movement and MSE: standardized units
    out = {"kind": kind, "parent": parent.id, "child": child.id, "n_probe": len(x), "k": parent.k}
    if kind == "kmeans":
        lp, sp = _nearest(x, np.asarray(parent.centroids))
        lc, sc = _nearest(x, np.asarray(child.centroids))
        out.update(changed_share=float((lp != lc).mean()),
                   centroid_movement=_movement(parent.centroids, child.centroids),
                   mse_before=float(sp.mean()), mse_after=float(sc.mean()))
        ub, ua = _usage(lp, parent.k), _usage(lc, parent.k)
        out.update(usage_before=ub["counts"], usage_after=ua["counts"], dead_before=ub["dead"],
                   dead_after=ua["dead"], entropy_bits_before=ub["entropy_bits"],
                   entropy_bits_after=ua["entropy_bits"])
        return out
    cp, ep = _greedy_encode(x, np.asarray(parent.codebooks))
    cc, ec = _greedy_encode(x, np.asarray(child.codebooks))
    changed = cp != cc                                  # bool [N, S]
    stages = range(parent.n_stages)
    ub = [_usage(cp[:, s], parent.k) for s in stages]
    ua = [_usage(cc[:, s], parent.k) for s in stages]
    out.update(n_stages=parent.n_stages,
               changed_share_per_stage=[float(v) for v in changed.mean(axis=0)],
               changed_share_given_prefix=[_given_prefix(changed, s) for s in stages],
               n_unchanged_prefix_per_stage=[int((~changed[:, :s].any(axis=1)).sum()) for s in stages],
               changed_share_any_stage=float(changed.any(axis=1).mean()),
               changed_share_all=float(changed.mean()),
               centroid_movement_per_stage=[_movement(parent.codebooks[s], child.codebooks[s]) for s in stages],
               mse_per_stage_before=[float(v) for v in ep.mean(axis=1)],
               mse_per_stage_after=[float(v) for v in ec.mean(axis=1)],
               usage_before=[u["counts"] for u in ub], usage_after=[u["counts"] for u in ua],
               dead_before=[u["dead"] for u in ub], dead_after=[u["dead"] for u in ua],
               entropy_bits_before=[u["entropy_bits"] for u in ub],
               entropy_bits_after=[u["entropy_bits"] for u in ua])
    return out


def render_drift(report: dict) -> str:
    """A few human-readable lines of a ``drift_report`` (per stage for an RVQ)."""
    lines = [(f"drift {report['parent']} -> {report['child']} on {report['n_probe']} probe vectors "
              f"(k={report['k']})")]
    if report["kind"] == "kmeans":
        m = report["centroid_movement"]
        lines += [f"  tokens changed    {100 * report['changed_share']:.1f}%",
                  f"  centroid moved    mean {m['mean_l2']:.4g}  median {m['median_l2']:.4g}  max {m['max_l2']:.4g}",
                  f"  dead codes        {report['dead_before']} -> {report['dead_after']}",
                  f"  usage entropy     {report['entropy_bits_before']:.3f} -> {report['entropy_bits_after']:.3f} bits",
                  f"  probe MSE         {report['mse_before']:.4g} -> {report['mse_after']:.4g}"]
        return "\n".join(lines)
    lines += [(f"  tokens changed    {100 * report['changed_share_all']:.1f}% of all, "
               f"{100 * report['changed_share_any_stage']:.1f}% of vectors in some stage"),
              "  stage  changed   (own)  moved(mean/max)     dead      entropy bits     MSE after stage"]
    for s in range(report["n_stages"]):
        m = report["centroid_movement_per_stage"][s]
        own = report["changed_share_given_prefix"][s]
        own = "    n/a" if own is None else f"{100 * own:6.1f}%"
        lines.append(f"  {s + 1:5d}  {100 * report['changed_share_per_stage'][s]:6.1f}%  {own}  "
                     f"{m['mean_l2']:7.3g}/{m['max_l2']:<7.3g}  "
                     f"{report['dead_before'][s]:4d}->{report['dead_after'][s]:<4d}  "
                     f"{report['entropy_bits_before'][s]:6.3f}->{report['entropy_bits_after'][s]:<6.3f}  "
                     f"{report['mse_per_stage_before'][s]:.4g}->{report['mse_per_stage_after'][s]:.4g}")
    return "\n".join(lines)
