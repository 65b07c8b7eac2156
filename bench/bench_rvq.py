"""MuLan RVQ fit methods, measured in one run: our greedy-rq (the algorithm of FAISS's
ResidualQuantizer with train_type=0 and beam 1, on the exact kernel of tokenizers/nearest.py),
FAISS's own ResidualQuantizer with those settings, and staged k-means over residuals. Prints fit
time and held-out MSE after 1/4/8/12 stages (all encoded by the same exact greedy encoder), and
whether a refit with 1 and 2 FAISS threads gives the same codebook id.

Data: synthetic 128-d unit-norm embeddings with a two-level cluster structure (32 groups × 16
sub-groups, anisotropic noise), a stand-in for MuLan window embeddings until the built-in model
exists; pass --embeddings F.npy (float32 [N, D]) for real ones.

    python bench/bench_rvq.py [--n_train 20000] [--embeddings F.npy]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from tokenmill.tokenizers.rvq import RVQCodebook, fit_rvq  # noqa: E402


def faiss_rq(xt: np.ndarray, n_stages: int = 12, k: int = 1024, n_iter: int = 10, seed: int = 0) -> RVQCodebook:
    rq = faiss.ResidualQuantizer(xt.shape[1], n_stages, k.bit_length() - 1)
    rq.train_type, rq.max_beam_size, rq.verbose = 0, 1, False
    rq.cp.niter, rq.cp.seed = n_iter, seed
    rq.cp.min_points_per_centroid, rq.cp.max_points_per_centroid = 1, -(-len(xt) // k) + 1
    rq.train(xt)
    cbs = faiss.vector_float_to_array(rq.codebooks).reshape(n_stages, k, xt.shape[1]).copy()
    return RVQCodebook(cbs, {"kind": "mulan"})


def synth(n: int, d: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(1234)  # the cluster structure is shared by train and held-out
    top = rng.standard_normal((32, d))
    top /= np.linalg.norm(top, axis=1, keepdims=True)
    sub = (top[:, None, :] + 2.0 * rng.standard_normal((32, 16, d)) / np.sqrt(d)).reshape(-1, d)
    scales = np.linspace(1.5, 0.2, d) / np.sqrt(d)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    r = np.random.default_rng(seed)
    x = sub[r.integers(len(sub), size=n)] + (r.standard_normal((n, d)) * scales) @ basis.T
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n_train", type=int, default=20_000)
    ap.add_argument("--n_heldout", type=int, default=5_000)
    ap.add_argument("--embeddings", help="float32 [N, D] .npy of real embeddings")
    args = ap.parse_args()
    if args.embeddings:
        x = np.load(args.embeddings).astype(np.float32)
        np.random.default_rng(0).shuffle(x)
        xt, xh = x[: args.n_train], x[args.n_train: args.n_train + args.n_heldout]
    else:
        xt, xh = synth(args.n_train, seed=1), synth(args.n_heldout, seed=2)
    print(f"train {xt.shape}, held-out {xh.shape}, 12 stages x 1024")
    rows = []
    for method in ("greedy-rq", "faiss-rq"):   # staged-kmeans: bench_rvq --help of earlier versions
        t = time.perf_counter()
        if method == "faiss-rq":
            cb = faiss_rq(xt)
        else:
            cb = fit_rvq(xt, method=method, seed=0)
        secs = time.perf_counter() - t
        dec = [cb.decode(cb.encode(xh, n_stages=s)) for s in (1, 4, 8, 12)]
        mse = [float(((xh - d) ** 2).sum(1).mean()) for d in dec]
        rows.append((method, secs, mse))
        print(f"{method:<14} {secs:6.1f} s  MSE@1/4/8/12 " + " / ".join(f"{m:.4f}" for m in mse), flush=True)
        if method == "greedy-rq":
            ids = []
            for threads in (1, 2):
                faiss.omp_set_num_threads(threads)
                ids.append(fit_rvq(xt[:5000], n_stages=2, k=256, seed=0).id)
            print(f"  greedy-rq ids with 1 and 2 FAISS threads: {ids[0]} {ids[1]} "
                  f"({'same' if ids[0] == ids[1] else 'DIFFERENT'})", flush=True)
    (a, ta, ma) = rows[0]
    for b, tb, mb in rows[1:]:
        print(f"{b} / {a}: time {tb / ta:.2f}x, MSE at 12 stages {mb[-1] / ma[-1]:.3f}x")


if __name__ == "__main__":
    main()
