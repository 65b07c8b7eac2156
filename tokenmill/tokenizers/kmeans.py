"""k-means codebooks: fit, assign (exact decisions, nearest.py), and content-addressed artifacts.

Pure code: numpy/faiss/safetensors in, arrays out (docs/design.md §4).

* Seeding is greedy k-means++ (Arthur & Vassilvitskii 2007; the greedy variant of
  scikit-learn) on a uniform subsample of ``SEED_SAMPLE_PER_CENTROID * k`` vectors; each
  new center costs one float64 BLAS pass ``x @ candidates.T`` over the subsample. Exact Lloyd
  (nearest.lloyd) then runs from those centroids on *all* training vectors, until a fixed point
  or ``n_iter`` iterations.
* A codebook's id is ``f"{kind}-{sha12}"``: sha256 over the shape (two little-endian
  int64) followed by the centroid bytes (little-endian float32, C order). A codebook with
  standardization statistics appends the bytes of ``mean`` then ``std`` (little-endian float32
  [D]); one without them hashes exactly as before, so ids of older artifacts are unchanged.
* Standardization (``fit_kmeans(standardize=True)``): per-dimension mean and std over the
  training vectors (float64, population std), std floored at ``STD_FLOOR_REL`` times the median
  of the non-zero stds, so a constant dimension cannot divide by zero (the median, not the max:
  SSL models have a few outlier dimensions with huge activations). The centroids live in the standardized space;
  ``Codebook.assign`` applies ``(x - mean) / std`` to raw features first. Stored as the extra
  safetensors tensors ``mean`` and ``std`` and summarized in the card's ``standardization``.
* Artifacts are byte-identical for the same input, seed and software on any CPU: every
  nearest-centroid decision (seeding aside, which is float64) is exact (tokenizers/nearest.py),
  the card holds no timestamps, and wall-clock timings live in ``Codebook.timing``, which is
  returned to the caller and never written. Tested with 1 and 2 BLAS/FAISS threads and in fresh
  processes under other kernels (tests/test_determinism.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from tokenmill import __version__
from tokenmill.tokenizers.artifacts import CodebookError  # noqa: F401 (re-exported: callers catch it here)
from tokenmill.tokenizers.artifacts import atomic_write_local as _atomic_write
from tokenmill.tokenizers.artifacts import check_vectors as _check_vectors
from tokenmill.tokenizers.artifacts import read_artifact as _read_artifact
from tokenmill.tokenizers.artifacts import row_sqnorms as _row_sqnorms
from tokenmill.tokenizers.artifacts import safetensors_bytes as _safetensors_bytes
from tokenmill.tokenizers.nearest import flat_index, lloyd
from tokenmill.tokenizers.nearest import nearest as nearest_exact

log = logging.getLogger(__name__)

CARD_VERSION = 1
MAX_K = 1 << 16                 # tokens are uint16
MIN_POINTS_PER_CENTROID = 39    # FAISS's own warning threshold
SEED_SAMPLE_PER_CENTROID = 16   # k-means++ runs on min(N, 16*k) vectors (see bench/bench_kmeans.py)
_CHUNK = 65536                  # rows per chunk for exact distance statistics
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*$")
STD_FLOOR_REL = 1e-3            # std floor, relative to the median non-zero per-dimension std


def faiss_has_gpu() -> bool:
    """Whether this faiss build has GPU support (faiss-gpu), GPUs present or not."""
    return hasattr(faiss, "StandardGpuResources")


def _check_gpu() -> None:
    if not faiss_has_gpu():
        raise CodebookError("use_gpu=True but this faiss build has no GPU support; install faiss-gpu "
                            "(pip uninstall faiss-cpu && pip install 'tokenmill[gpu]') or drop --use_gpu")
    if faiss.get_num_gpus() < 1:
        raise CodebookError("use_gpu=True but faiss sees no GPU (faiss.get_num_gpus() == 0); "
                            "check CUDA_VISIBLE_DEVICES and the driver, or drop --use_gpu")


def kmeanspp_seed(x: np.ndarray, k: int, rng: np.random.Generator, *,
                  sample: int | None = None, local_trials: int | None = None) -> tuple[np.ndarray, dict]:
    """Greedy k-means++ seeding. Returns (centroids float32 [k, D], info for the card).

    ``sample``: run on a uniform subsample of this many rows (default all).
    ``local_trials``: candidates per step; the best (lowest potential) wins. Default
    2 + floor(ln k) as in scikit-learn; 1 gives classic k-means++.
    """
    n = x.shape[0]
    if sample is not None and sample < n:
        rows = np.sort(rng.choice(n, size=sample, replace=False))
        x = x[rows]
        n = sample
    rows_as_bytes = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1])))
    n_distinct = len(np.unique(rows_as_bytes.ravel()))
    if n_distinct < k:   # float32 rounding would otherwise let k-means++ pick duplicates
        raise CodebookError(f"the training vectors have only {n_distinct} distinct points (in a sample of "
                            f"{n}), fewer than k={k}; sample more (distinct) frames or lower --num_clusters")
    trials = local_trials if local_trials is not None else 2 + int(math.log(k))
    idx = np.empty(k, dtype=np.int64)

    x64 = x.astype(np.float64)
    x_sq = np.einsum("ij,ij->i", x64, x64)

    def sqdist(cand: np.ndarray) -> np.ndarray:   # [len(cand), n] float64, one BLAS pass over x
        d = (x64[cand] * -2.0) @ x64.T              # float64: a kernel's rounding (~1e-16) would have
        d += x_sq                                   # to meet a draw's boundary to change a seed
        d += x_sq[cand][:, None]
        return np.maximum(d, 0.0, out=d)

    idx[0] = rng.integers(n)
    mind = sqdist(idx[:1])[0]                       # squared distance to the nearest chosen center
    for i in range(1, k):
        cum = np.cumsum(mind, dtype=np.float64)
        if not cum[-1] > 0.0:  # pragma: no cover - excluded by the distinct-row check above
            raise CodebookError(f"k-means++ ran out of distinct points after {i} centers")
        r = rng.random(trials) * cum[-1]
        cand = np.minimum(np.searchsorted(cum, r, side="right"), n - 1)
        d = sqdist(cand)
        np.minimum(d, mind, out=d)
        best = int(np.argmin(d.sum(axis=1, dtype=np.float64)))   # greedy: lowest potential wins
        idx[i] = cand[best]
        mind = d[best]
    info = {"method": "kmeans++" if trials == 1 else "greedy-kmeans++",
            "local_trials": trials, "sample_size": n}
    return np.ascontiguousarray(x[idx]), info


def _nearest(x: np.ndarray, centroids: np.ndarray, index=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest centroid (nearest.py: the same on any CPU) and its squared distance (float64)."""
    return nearest_exact(x, centroids, index)


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """uint16 [N]: index of the nearest centroid in squared L2; ties go to the lowest index."""
    centroids = _check_vectors(centroids, "centroids")
    if centroids.shape[0] > MAX_K:
        raise CodebookError(f"k={centroids.shape[0]} centroids do not fit uint16 tokens (max {MAX_K})")
    x = _check_vectors(x, "x", dim=centroids.shape[1])
    return nearest_exact(x, centroids)[0].astype(np.uint16)


def content_id(centroids: np.ndarray, kind: str, mean: np.ndarray | None = None,
               std: np.ndarray | None = None) -> str:
    """Content hash id; ``mean``/``std`` (both or neither) are hashed after the centroids."""
    c = np.ascontiguousarray(centroids, dtype="<f4")
    h = hashlib.sha256(np.asarray(c.shape, dtype="<i8").tobytes())
    h.update(c.tobytes())
    if (mean is None) != (std is None):
        raise CodebookError("standardization needs both 'mean' and 'std' (or neither)")
    if mean is not None:
        h.update(np.ascontiguousarray(mean, dtype="<f4").tobytes())
        h.update(np.ascontiguousarray(std, dtype="<f4").tobytes())
    return f"{kind}-{h.hexdigest()[:12]}"


def standardization_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-dimension (mean float32 [D], std float32 [D], card info) of float32 [N, D] vectors.

    Accumulated in float64; std is the population std, floored at STD_FLOOR_REL times the median
    non-zero std."""
    x = _check_vectors(x, "x")
    mean = x.mean(axis=0, dtype=np.float64)
    var = np.zeros(x.shape[1])
    for s in range(0, len(x), _CHUNK):   # two-pass variance, float64 chunks: bounded memory
        var += np.square(x[s:s + _CHUNK] - mean).sum(axis=0)
    std = np.sqrt(var / len(x))
    if not std.max() > 0.0:
        raise CodebookError("every feature dimension is constant over the fit sample; the "
                            "features carry no information (silent input or a broken extractor?)")
    floor = STD_FLOOR_REL * float(np.median(std[std > 0]))
    info = {"over": "x_train", "n_vectors": int(x.shape[0]), "std_floor_rel": STD_FLOOR_REL,
            "n_floored_dims": int((std < floor).sum()),
            "formula": "(x - mean) / std before nearest-centroid assignment"}
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32), info


def codebook_stats(centroids: np.ndarray, x_train: np.ndarray, x_heldout: np.ndarray | None = None,
                   *, index=None) -> dict:
    """Card statistics: exact mean squared L2 to the nearest centroid (per vector and per
    dimension), code-usage entropy/perplexity (held-out if given, else train), dead codes
    (never nearest on train + held-out)."""
    k, dim = centroids.shape
    lab, sqd = _nearest(x_train, centroids, index)
    counts = np.bincount(lab, minlength=k)
    out = {"train_mse": math.fsum(sqd) / len(sqd), "heldout_mse": None}   # fsum: exactly rounded
    usage = counts
    if x_heldout is not None:
        lab, sqd = _nearest(x_heldout, centroids, index)
        usage = np.bincount(lab, minlength=k)
        out["heldout_mse"] = math.fsum(sqd) / len(sqd)
        counts = counts + usage
    out["train_mse_per_dim"] = out["train_mse"] / dim
    out["heldout_mse_per_dim"] = None if x_heldout is None else out["heldout_mse"] / dim
    p = usage[usage > 0] / usage.sum()
    entropy = float(-(p * np.log2(p)).sum()) + 0.0   # + 0.0: no "-0.0" in the card
    dead = np.flatnonzero(counts == 0)
    out.update(usage_on="train" if x_heldout is None else "heldout", usage_entropy_bits=entropy,
               usage_perplexity=float(2.0 ** entropy), dead_codes=int(dead.size),
               dead_code_ids=[int(i) for i in dead])
    return out


def _gpu_index(centroids: np.ndarray):  # pragma: no cover - needs faiss-gpu and a GPU
    """Candidates from every GPU; the decisions stay exact on the CPU (nearest.py)."""
    return faiss.index_cpu_to_all_gpus(flat_index(centroids))


def fit_kmeans(x_train: np.ndarray, k: int, *, seed: int, n_iter: int = 25,
               x_heldout: np.ndarray | None = None, use_gpu: bool = False,
               sources: dict | None = None, parent: str | None = None,
               kind: str = "semantic", standardize: bool = False) -> "Codebook":
    """Fit a k-means codebook: greedy k-means++ seeding, then ``n_iter`` FAISS Lloyd steps.

    ``standardize``: compute per-dimension mean/std over ``x_train`` (standardization_stats),
    fit on standardized vectors and store the statistics with the codebook; the card's MSEs are
    then in standardized units.

    Deterministic on CPU for fixed (input, k, seed, n_iter) and software on one machine.
    """
    t0 = time.perf_counter()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= MAX_K:
        raise CodebookError(f"k must be an int in [2, {MAX_K}] (uint16 tokens), got {k!r}; "
                            f"check --num_clusters")
    k = int(k)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise CodebookError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(n_iter, (int, np.integer)) or isinstance(n_iter, bool) or n_iter < 0:
        raise CodebookError(f"n_iter must be a non-negative int, got {n_iter!r}")
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise CodebookError(f"kind must match {_KIND_RE.pattern} (it prefixes the codebook id), got {kind!r}")
    if parent is not None and not isinstance(parent, str):
        raise CodebookError(f"parent must be a codebook id (str) or None, got {parent!r}")
    try:
        json.dumps(sources, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CodebookError(f"sources must be JSON-serializable (it goes into the card): {e}") from e
    x_train = _check_vectors(x_train, "x_train")
    n, dim = x_train.shape
    if n < k:
        raise CodebookError(f"N={n} vectors cannot fit k={k} centroids; sample more frames with "
                            f"--sample_frames or lower --num_clusters")
    if x_heldout is not None:
        x_heldout = _check_vectors(x_heldout, "x_heldout", dim=dim)
    mean = std = std_info = None
    if standardize:
        _row_sqnorms(x_train, "x_train")   # finiteness first: NaN would poison the statistics
        mean, std, std_info = standardization_stats(x_train)
        x_train = (x_train - mean) / std
        x_heldout = None if x_heldout is None else (x_heldout - mean) / std
    if use_gpu:
        _check_gpu()
    _row_sqnorms(x_train, "x_train")
    if x_heldout is not None:
        _row_sqnorms(x_heldout, "x_heldout")
    if n < MIN_POINTS_PER_CENTROID * k:
        log.warning("fitting k=%d centroids on only N=%d vectors (< %d per centroid, FAISS's threshold); "
                    "the codebook may overfit: sample more frames with --sample_frames", k, n,
                    MIN_POINTS_PER_CENTROID)

    rng = np.random.default_rng(seed)
    init, seeding = kmeanspp_seed(x_train, k, rng, sample=min(n, SEED_SAMPLE_PER_CENTROID * k))
    t_seed = time.perf_counter()

    make_index = _gpu_index if use_gpu else None
    # exact Lloyd (nearest.py): assignments and means do not depend on the CPU, its threads or a GPU
    centroids, run = lloyd(x_train, init, int(n_iter), make_index=make_index)
    t_lloyd = time.perf_counter()

    cb = Codebook(centroids, {"kind": kind}, mean=mean, std=std)
    stats = codebook_stats(centroids, x_train, x_heldout, index=cb._get_index())
    cb.card = {
        "card_version": CARD_VERSION,
        "id": cb.id,
        "kind": kind, "k": k, "dim": dim, "seed": int(seed), "n_iter": int(n_iter),
        "seeding": seeding,
        "n_train_vectors": n,
        "n_heldout_vectors": 0 if x_heldout is None else int(x_heldout.shape[0]),
        "sources": sources,
        **stats,
        "parent": parent,
        "device": "gpu" if use_gpu else "cpu",
        "lloyd": dict(run, method="exact nearest centroid, float64 sums (tokenizers/nearest.py)"),
        "faiss_version": faiss.__version__,
        "created_by": f"tokenmill {__version__}",
    }
    if std_info is not None:   # key absent without stats: older cards keep their exact shape
        cb.card["standardization"] = std_info
    t_end = time.perf_counter()
    cb.timing = {"seed_s": t_seed - t0, "lloyd_s": t_lloyd - t_seed, "stats_s": t_end - t_lloyd,
                 "fit_seconds": t_end - t0}
    return cb


@dataclass(eq=False)
class Codebook:
    """float32 centroids [k, D] plus the card (JSON-able dict), and optionally per-dimension
    standardization statistics ``mean``/``std`` float32 [D] applied by ``assign``.

    ``timing`` (wall-clock seconds of the fit) is returned to the caller but never saved,
    so that ``save`` writes byte-identical files for a repeated fit. The centroids are a
    read-only copy: the id and the cached FAISS index stay valid.
    """
    centroids: np.ndarray
    card: dict
    timing: dict = field(default_factory=dict)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    _index: object = field(default=None, init=False, repr=False)
    _gpu_resources: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.centroids = np.array(_check_vectors(self.centroids, "centroids"), copy=True)
        self.centroids.setflags(write=False)
        if self.centroids.shape[0] > MAX_K:
            raise CodebookError(f"k={self.centroids.shape[0]} centroids do not fit uint16 tokens")
        if (self.mean is None) != (self.std is None):
            raise CodebookError("standardization needs both 'mean' and 'std' (or neither)")
        if self.mean is not None:
            for name in ("mean", "std"):
                v = np.asarray(getattr(self, name))
                if v.dtype != np.float32 or v.shape != (self.dim,) or not np.isfinite(v).all():
                    raise CodebookError(f"'{name}' must be finite float32 [{self.dim}], got {v.dtype} {v.shape}")
                v = np.array(v, copy=True)
                v.setflags(write=False)
                setattr(self, name, v)
            if not (self.std > 0).all():
                raise CodebookError("'std' must be > 0 in every dimension")

    @property
    def standardized(self) -> bool:
        return self.mean is not None

    @property
    def kind(self) -> str:
        return self.card.get("kind", "semantic")

    @property
    def id(self) -> str:
        return content_id(self.centroids, self.kind, self.mean, self.std)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def _get_index(self):
        if self._index is None:
            self._index = faiss.IndexFlatL2(self.dim)
            self._index.add(self.centroids)
        return self._index

    def to_gpu(self, gpu: int = 0) -> "Codebook":
        """Move the candidate search to GPU `gpu` (faiss-gpu); the decision stays exact on the CPU
        (nearest.py), so tokens equal the CPU's, near-ties included.
        Raises CodebookError (fix-it) when this faiss has no GPU support or not that GPU."""
        _check_gpu()
        if gpu >= faiss.get_num_gpus():
            raise CodebookError(f"GPU {gpu} asked for but faiss sees {faiss.get_num_gpus()} GPU(s); "
                                "pick one of those (--device cuda:N) or run with --device cpu")
        self._gpu_resources = faiss.StandardGpuResources()  # must outlive the GPU index
        self._index = faiss.index_cpu_to_gpu(self._gpu_resources, gpu, self._get_index())
        return self

    def assign(self, x: np.ndarray) -> np.ndarray:
        """uint16 [N] nearest-centroid tokens of raw features ``x`` (standardized first when the
        codebook has statistics; the FAISS index is built once and cached, on the GPU after
        `to_gpu`)."""
        return nearest_exact(self.standardize(x), self.centroids, self._get_index())[0].astype(np.uint16)

    def standardize(self, x: np.ndarray) -> np.ndarray:
        """float32 [N, D] raw features → the space of the centroids: (x - mean) / std, or x itself."""
        x = _check_vectors(x, "x", dim=self.dim)
        return x if self.mean is None else np.ascontiguousarray((x - self.mean) / self.std)

    def save(self, directory) -> Path:
        """Write ``<id>.safetensors`` and ``<id>.json`` atomically; return the safetensors path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cid = self.id
        card = dict(self.card, id=cid, kind=self.kind)
        extra = {} if self.mean is None else {"mean": self.mean, "std": self.std}
        blob = _safetensors_bytes(self.centroids, {"id": cid, "kind": self.kind}, extra=extra)
        text = json.dumps(card, sort_keys=True, indent=1, allow_nan=False) + "\n"
        path = directory / f"{cid}.safetensors"
        _atomic_write(path, blob)
        _atomic_write(directory / f"{cid}.json", text.encode("utf-8"))
        return path

    @classmethod
    def load(cls, path, id: str | None = None) -> "Codebook":
        """Load from ``<id>.safetensors``, ``<id>.json``, or ``(directory, id)``; verify the hash."""
        def check(c: np.ndarray) -> np.ndarray:
            if c.dtype != np.float32 or c.ndim != 2:
                raise CodebookError(f"{path}: 'centroids' must be float32 [k, D], got {c.dtype} {c.shape}")
            return c

        stats: dict = {}
        centroids, card = _read_artifact(path, id, "centroids", "codebook", "semantic", check, content_id,
                                         extras=stats)   # content_id refuses other tensors
        return cls(centroids, card, mean=stats.get("mean"), std=stats.get("std"))


