"""Outputs do not depend on the machine: exact nearest-centroid decisions, and a pinned compute
layout (tokenizers/nearest.py, tokenizers/compute.py; docs/design.md §6).

The byte-identity test forces the settings itself, in the environment of fresh processes: one
run with one OpenMP/MKL thread and torch/oneDNN/MKL held to AVX2 by the environment, the other
with two threads and no ISA variables at all (the job must pin them). Both must write the same
bytes for fit-codebook (both streams) and tokenize (all streams), and record AVX2 kernels on x86.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from conftest import small_corpus

import beam_runner
import tokenmill
from tokenmill.tokenizers import compute
from tokenmill.tokenizers import nearest as nr
from tokenmill.tokenizers.kmeans import fit_kmeans
from tokenmill.tokenizers.rvq import fit_rvq

ROOT = Path(__file__).resolve().parents[1]
PACKAGED_MULAN = Path(tokenmill.__file__).parent / "weights" / "mulan-default.safetensors"
X86 = platform.machine().lower() in ("x86_64", "amd64")

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ---------------------------------------------------------------- the exact kernel

def reference_nearest(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A slow loop: float64 differences, squares, summed left to right; first minimum wins."""
    labels, dists = [], []
    for row in x.astype(np.float64):
        best, arg = None, -1
        for j, cj in enumerate(c.astype(np.float64)):
            d = 0.0
            for a, b in zip(row, cj):
                d += (a - b) * (a - b)
            if best is None or d < best:
                best, arg = d, j
        labels.append(arg)
        dists.append(best)
    return np.array(labels), np.array(dists)


def tied_data(seed: int = 0, n: int = 300, k: int = 24, d: int = 12):
    """Rows with exact ties (midpoints of two centroids placed symmetrically: equal float64
    distances) and near-ties (a centroid moved by one float32 ulp), plus random rows."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((k, d)).astype(np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    centre = (rng.integers(-16, 16, d) / 8).astype(np.float32)      # few mantissa bits: c ± o is exact
    offset = (rng.integers(-4, 5, d) / 256).astype(np.float32)
    c[3], c[17] = centre + offset, centre - offset           # x = centre is exactly equidistant
    x[:20] = centre
    c[5] = np.nextafter(c[4], np.float32(np.inf))             # a near-duplicate of centroid 4
    x[20:40] = c[4] + rng.standard_normal((20, d)).astype(np.float32) * 1e-3
    return x, c


def test_nearest_equals_a_slow_exact_loop_ties_to_the_lowest_index():
    x, c = tied_data()
    lab, dist = nr.nearest(x, c)
    ref_lab, ref_dist = reference_nearest(x, c)
    np.testing.assert_array_equal(lab, ref_lab)
    np.testing.assert_array_equal(dist, ref_dist)           # same bits: the same summation order
    assert (lab[:20] == 3).all()                            # the exact tie goes to the lower index


class _NoisyIndex:
    """A FAISS-like candidate search whose float32 distances carry up to half the tolerance of
    rounding noise, as another instruction set or a GPU would compute them."""

    def __init__(self, c: np.ndarray, seed: int):
        self.c, self.rng = c, np.random.default_rng(seed)

    def search(self, x: np.ndarray, top: int):
        d = ((x[:, None, :].astype(np.float64) - self.c[None]) ** 2).sum(-1)
        d += (self.rng.random(d.shape) - 0.5) * nr.tolerance(x, self.c)[:, None]
        order = np.argsort(d, axis=1, kind="stable")[:, :top]
        return np.take_along_axis(d, order, 1).astype(np.float32), order


def test_decision_does_not_depend_on_the_candidate_kernel():
    x, c = tied_data(1)
    want, _ = nr.nearest(x, c)
    for seed in range(4):
        got, _ = nr.nearest(x, c, _NoisyIndex(c, seed))
        np.testing.assert_array_equal(got, want)
    index = faiss.IndexFlatL2(c.shape[1])
    index.add(c)
    np.testing.assert_array_equal(nr.nearest(x, c, index)[0], want)


def test_fits_do_not_depend_on_blas_or_faiss_threads():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3000, 16)) + rng.integers(0, 6, (3000, 1))).astype(np.float32)
    ids = []
    before = faiss.omp_get_max_threads()
    try:
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            with threadpool_limits(threads):
                ids.append((fit_kmeans(x, 32, seed=1).id, fit_rvq(x, n_stages=3, k=16, seed=1).id))
    finally:
        faiss.omp_set_num_threads(before)
    assert ids[0] == ids[1]


# ---------------------------------------------------------------- the compute layout

def test_layout_is_validated():
    with pytest.raises(compute.ComputeError, match="threads"):
        compute.ComputeLayout(threads=-1)
    with pytest.raises(compute.ComputeError, match="kernels"):
        compute.ComputeLayout(kernels="avx512")
    assert compute.kernel_env("native") == {}


_JOBS = r"""
import sys, beam_runner
out, src, mulan = sys.argv[1], sys.argv[2], sys.argv[3:]
fit = ["fit-codebook", "--input", src + "/*", "--num_clusters", "8", "--sample_frames", "400",
       "--heldout_frames", "40", "--output", out + "/cb"]
fit_mulan = ["fit-codebook", "--stream", "mulan", "--input", src + "/*", "--num_clusters", "2", "--num_stages", "2",
             "--mulan_batch_size", "2", "--max_segment_s", "2.5", "--output", out + "/rvq", *mulan]
assert beam_runner.main(fit) == 0 and beam_runner.main(fit_mulan) == 0
tok = ["tokenize", "--input", src + "/*", "--codebook", out + "/cb", "--num_shards", "1", "--max_segment_s", "2.5",
       "--acoustic_codec", "soundstream", "--mulan_model", "mulan", *mulan, "--mulan_codebook", out + "/rvq",
       "--mulan_batch_size", "2", "--output", out + "/ds"]
assert beam_runner.main(tok) == 0
"""


def _run_jobs(out: Path, src: Path, mulan: list[str], env: dict) -> None:
    res = subprocess.run([sys.executable, "-c", _JOBS, str(out), str(src), *mulan], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory, real_audio_dir, small_mulan_weights):
    """The three jobs in two fresh processes: (a) 1 thread, AVX2 forced by the environment;
    (b) 2 threads, no kernel variables (the job's default layout must pin them)."""
    tmp = tmp_path_factory.mktemp("det")
    src = small_corpus(tmp / "in", real_audio_dir)
    mulan = [] if PACKAGED_MULAN.is_file() else ["--mulan_path", str(small_mulan_weights)]
    base = {k: v for k, v in os.environ.items() if k not in compute.PORTABLE_ENV}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    a = dict(base, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **compute.PORTABLE_ENV)
    b = dict(base, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    _run_jobs(tmp / "a", src, mulan, a)
    _run_jobs(tmp / "b", src, mulan, b)
    return tmp / "a", tmp / "b"


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_threads_and_kernel_environment_do_not_change_a_byte(two_machines):
    a, b = _files(two_machines[0]), _files(two_machines[1])
    for files, root in ((a, two_machines[0]), (b, two_machines[1])):   # the job names its own paths
        for rel in files:
            if rel.endswith(".json"):
                files[rel] = files[rel].replace(str(root).encode(), b"OUT")
    assert sorted(a) == sorted(b) and any(k.startswith("ds/") and k.endswith(".parquet") for k in a)
    assert any(k.startswith("rvq/mulan-") for k in a) and any(k.startswith("cb/semantic-") for k in a)
    for rel in a:
        assert a[rel] == b[rel], f"{rel} differs between 1 thread + AVX2 env and 2 threads + no env"


def test_manifest_and_cards_record_the_layout_and_kernels(two_machines):
    root = two_machines[1]
    m = json.loads((root / "ds" / "manifest.json").read_text())
    cards = [json.loads(p.read_text()) for p in sorted((root / "cb").glob("semantic-*.json"))
             + sorted((root / "rvq").glob("mulan-*.json"))]
    assert len(cards) == 2
    for entry in [m["compute"]] + [c["compute"] for c in cards]:
        assert entry["threads"] == 1 and entry["kernels"] == "portable"
        isa = entry["isa"]
        assert isa["machine"] == platform.machine().lower()
        if X86:
            assert isa["torch_cpu_capability"] == "AVX2"
            assert isa["onednn_max_cpu_isa"] == "AVX2" and isa["mkl_cbwr"] == "AVX2"


def test_native_kernels_are_recorded_as_what_torch_found(tmp_path, real_audio_dir):
    env = {k: v for k, v in os.environ.items() if k not in compute.PORTABLE_ENV}
    env["PYTHONPATH"] = str(ROOT)
    native = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                            env=env, capture_output=True, text=True, check=True).stdout.strip()
    res = subprocess.run([sys.executable, str(ROOT / "beam_runner.py"), "fit-codebook", "--input",
                          str(real_audio_dir / "score_bach_bwv66_6.wav"), "--num_clusters", "4", "--output",
                          str(tmp_path / "cb"), "--kernels", "native"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    card = json.loads(next((tmp_path / "cb").glob("semantic-*.json")).read_text())
    assert card["compute"]["kernels"] == "native"
    assert card["compute"]["isa"]["torch_cpu_capability"] == native
    assert card["compute"]["isa"]["onednn_max_cpu_isa"] == "native"


# ---------------------------------------------------------------- mixing layouts is said, not silent

def _tokenize(src: Path, cb: Path, *extra: str) -> None:
    assert beam_runner.main(["tokenize", "--input", str(src), "--codebook", str(cb), "--num_shards", "1",
                             "--acoustic_codec", "none", "--mulan_model", "none", "--melody_model", "none", *extra]) == 0


@pytest.fixture(scope="module")
def codebook(tmp_path_factory, real_audio_dir):
    out = tmp_path_factory.mktemp("cb")
    assert beam_runner.main(["fit-codebook", "--input", str(real_audio_dir / "score_bach_bwv66_6.wav"),
                             "--num_clusters", "4", "--output", str(out)]) == 0
    return out


def test_into_under_other_kernels_warns_and_counts_it(tmp_path, real_audio_dir, codebook, caplog):
    ds = tmp_path / "ds"
    _tokenize(real_audio_dir / "score_bach_bwv66_6.wav", codebook, "--output", str(ds))
    path = ds / "manifest.json"
    m = json.loads(path.read_text())
    assert m["compute"]["isa"] == compute.describe(compute.ComputeLayout())["isa"]
    m["compute"]["isa"]["torch_cpu_capability"] = "AVX512"     # as if written by an AVX-512 worker
    m["compute"]["kernels"] = "native"
    path.write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING, logger="tokenmill"):
        _tokenize(real_audio_dir / "pushover_greek.flac", codebook, "--into", str(ds))
    assert "another compute layout" in caplog.text and "torch_cpu_capability 'AVX512'" in caplog.text
    m2 = json.loads(path.read_text())
    last = m2["history"][-1]
    assert any("kernels 'native' -> 'portable'" == c for c in last["compute_changed"])
    assert m2["compute"]["runs_with_other_compute"] == 1
    assert m2["history"][0]["compute"]["kernels"] == "native"   # version 0 keeps what it was made with


def test_resume_under_another_layout_warns_and_is_recorded(tmp_path, real_audio_dir, codebook, caplog, monkeypatch):
    from tokenmill.pipelines import journal as jr

    src = tmp_path / "src"
    src.mkdir()
    for name in ("score_bach_bwv66_6.wav", "pushover_greek.flac"):
        (src / name).write_bytes((real_audio_dir / name).read_bytes())
    out = tmp_path / "ds"
    calls = {"n": 0}

    def die_after_one():
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("killed")

    monkeypatch.setattr(jr, "_after_entry", die_after_one)
    with pytest.raises(Exception, match="killed"):
        _tokenize(src / "*", codebook, "--output", str(out))
    monkeypatch.undo()
    old = json.loads((out / jr.WORK_DIR / jr.COMPUTE_NAME).read_text())
    assert old["threads"] == 1
    old["threads"] = 4                                         # as if started with --torch_threads 4
    (out / jr.WORK_DIR / jr.COMPUTE_NAME).write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="tokenmill"):
        _tokenize(src / "*", codebook, "--output", str(out))
    m = json.loads((out / "manifest.json").read_text())
    assert "threads 4 -> 1" in caplog.text
    assert m["compute"]["resumed_from"]["changes"] == ["threads 4 -> 1"]
    assert m["compute"]["resumed_from"]["sources_from_journal"] >= 1
