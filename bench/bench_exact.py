"""What exact nearest-centroid decisions cost, measured in one run (tokenizers/nearest.py).

Compares, on the same vectors:
* assignment (what `tokenize` does per frame): FAISS IndexFlatL2 top-1 (float32, the decision
  depends on the kernel) vs `nearest` (float32 candidates + exact float64 decision): frames/s, and
  how many frames FAISS put elsewhere;
* the k-means fit: FAISS Clustering (25 Lloyd iterations from the same k-means++ seeds, float32
  sums, the former implementation) vs `fit_kmeans` (exact Lloyd): seconds and held-out MSE;
* id stability: `fit_kmeans` under 1 and 2 BLAS/FAISS threads.

Vectors: real spectral features of the given audio (default tests/data/audio/*, tiled to
--n_train rows with a small deterministic jitter so k = 1024 has enough distinct points), or
--features F.npy (float32 [N, D]).

    python bench/bench_exact.py [--n_train 150000 --k 1024] [--features F.npy]
"""
from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from tokenmill.tokenizers import audio  # noqa: E402
from tokenmill.tokenizers import nearest as nr  # noqa: E402
from tokenmill.tokenizers.kmeans import SEED_SAMPLE_PER_CENTROID, codebook_stats, fit_kmeans, kmeanspp_seed  # noqa: E402
from tokenmill.tokenizers.semantic import build_extractor  # noqa: E402


def features(pattern: str) -> np.ndarray:
    ex, out = build_extractor("spectral"), []
    for f in sorted(glob.glob(pattern)):
        data = Path(f).read_bytes()
        try:
            for s in audio.prepare(data, f, audio.AudioConfig(target_rates_hz=(16_000,))):
                out.append(ex.extract(s.waves[16_000]))
        except audio.AudioError:
            continue
    return np.concatenate(out).astype(np.float32)


def faiss_fit(x: np.ndarray, k: int, seed: int, n_iter: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    init, _ = kmeanspp_seed(x, k, rng, sample=min(len(x), SEED_SAMPLE_PER_CENTROID * k))
    cp = faiss.ClusteringParameters()
    cp.niter, cp.seed = n_iter, int(rng.integers(2**31 - 1))
    cp.min_points_per_centroid, cp.max_points_per_centroid = 1, -(-len(x) // k) + 1
    clus = faiss.Clustering(x.shape[1], k, cp)
    faiss.copy_array_to_vector(init.ravel(), clus.centroids)
    clus.train(x, faiss.IndexFlatL2(x.shape[1]))
    return faiss.vector_float_to_array(clus.centroids).reshape(k, x.shape[1]).copy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(ROOT / "tests/data/audio/*"))
    ap.add_argument("--features")
    ap.add_argument("--n_train", type=int, default=150_000)
    ap.add_argument("--n_heldout", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--n_iter", type=int, default=25)
    a = ap.parse_args()
    base = np.load(a.features).astype(np.float32) if a.features else features(a.input)
    rng = np.random.default_rng(0)
    n = a.n_train + a.n_heldout
    x = base[rng.integers(len(base), size=n)]
    x = x + (rng.standard_normal(x.shape) * 0.01 * x.std(axis=0)).astype(np.float32)
    xt, xh = x[:a.n_train], x[a.n_train:]
    print(f"{len(base)} real frames of D={base.shape[1]} tiled to {xt.shape[0]} train + {xh.shape[0]} held out; "
          f"k={a.k}; {faiss.omp_get_max_threads()} FAISS threads", flush=True)

    cb = fit_kmeans(xt[:20_000], a.k, seed=0, n_iter=5)            # some centroids to assign against
    c = np.asarray(cb.centroids)
    index = faiss.IndexFlatL2(c.shape[1])
    index.add(c)
    t = time.perf_counter()
    lab_f = index.search(xt, 1)[1][:, 0]
    tf = time.perf_counter() - t
    t = time.perf_counter()
    lab_e, _ = nr.nearest(xt, c)
    te = time.perf_counter() - t
    print(f"assign {len(xt)} frames: FAISS {len(xt) / tf:,.0f} frames/s, exact {len(xt) / te:,.0f} frames/s "
          f"({te / tf:.2f}x the time); FAISS put {(lab_f != lab_e).sum()} frames elsewhere "
          f"(= {len(xt) / 25 / 3600:.2f} h of audio at 25 Hz)", flush=True)

    t = time.perf_counter()
    cf = faiss_fit(xt, a.k, 0, a.n_iter)
    t_faiss = time.perf_counter() - t
    t = time.perf_counter()
    ce = fit_kmeans(xt, a.k, seed=0, n_iter=a.n_iter)
    t_exact = time.perf_counter() - t
    mse_f = codebook_stats(cf, xt, xh)["heldout_mse"]
    mse_e = codebook_stats(np.asarray(ce.centroids), xt, xh)["heldout_mse"]
    print(f"fit k={a.k}, {a.n_iter} iterations: FAISS Clustering {t_faiss:.1f} s (held-out MSE {mse_f:.4f}), "
          f"exact {t_exact:.1f} s (MSE {mse_e:.4f}; stopped after {ce.card['lloyd']['iterations_run']} "
          f"iterations): time {t_exact / t_faiss:.2f}x, MSE {mse_e / mse_f:.3f}x", flush=True)

    ids = []
    before = faiss.omp_get_max_threads()
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        with threadpool_limits(threads):
            ids.append(fit_kmeans(xt[:30_000], 256, seed=0, n_iter=10).id)
    faiss.omp_set_num_threads(before)
    print(f"fit_kmeans ids with 1 and 2 threads: {ids[0]} {ids[1]} ({'same' if ids[0] == ids[1] else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
