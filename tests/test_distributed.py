"""Every job runs unchanged on Beam's portable framework with its workers in separate processes,
and writes byte-identical output to the embedded runner's.

A `worker_pool_main` process (started and always stopped by the module fixture) is the
EXTERNAL environment: each job submitted with --runner=PortableRunner --job_endpoint=embed
--environment_type=EXTERNAL --environment_config=localhost:PORT gets SDK harness processes
started by the pool, which import tokenmill from this checkout (PYTHONPATH). The jobs are the
CLI's own (`beam_runner.py` in a subprocess, with a timeout: a pool that cannot start a
worker makes a portable job wait forever).

Inputs are short excerpts of the bundled clips, so every stage and both sinks run in seconds:
decode (with a dead letter and a byte duplicate), acoustic (built-in SoundStream), MuLan
(packaged weights if present, else a small random built-in model), melody (the default: packaged
built-in model and RVQ), semantic, dedupe, captions,
Parquet + WebDataset shards, failures file and manifest; both fit-codebook streams; and a
rebuild of each stream of that dataset (both Beam passes).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import small_corpus

import beam_runner
import tokenmill

ROOT = Path(__file__).resolve().parents[1]
PACKAGED_MULAN = Path(tokenmill.__file__).parent / "weights" / "mulan-default.safetensors"
JOB_TIMEOUT_S = 300

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def worker_pool(tmp_path_factory):
    """(port, log path) of a Beam worker pool in its own process group; stopped (the group:
    the pool and the SDK harness processes it started) however the module ends."""
    port = _free_port()
    log = tmp_path_factory.mktemp("pool") / "pool.log"
    env = {**os.environ,
           # the pool starts each worker as `python -c ...` from PATH: this interpreter (venv)
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"worker pool exited with {proc.returncode}: {log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("localhost", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker pool did not listen on {port} within 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield port, log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_local(args: list[str]) -> None:
    assert beam_runner.main(args) == 0


def run_portable(args: list[str], port: int) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, str(ROOT / "beam_runner.py"), *args, "--runner=PortableRunner",
           "--job_endpoint=embed", "--environment_type=EXTERNAL", f"--environment_config=localhost:{port}"]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-4000:]


def files_of(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def assert_same_bytes(local: Path, portable: Path) -> None:
    a, b = files_of(local), files_of(portable)
    assert sorted(a) == sorted(b)
    for rel in a:
        assert a[rel] == b[rel], f"{rel} differs between the embedded and the portable runner"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, real_audio_dir, worker_pool, small_mulan_weights):
    """Both fit-codebook streams and tokenize, each run on the embedded runner and on the portable
    runner; tokenize uses the embedded run's codebooks in both (so only the runner differs)."""
    port, _ = worker_pool
    tmp = tmp_path_factory.mktemp("dist")
    src = small_corpus(tmp / "in", real_audio_dir)
    out = {}
    fit = ["fit-codebook", "--input", str(src / "*"), "--num_clusters", "8", "--sample_frames", "400",
           "--heldout_frames", "40"]
    mulan = [] if PACKAGED_MULAN.is_file() else ["--mulan_path", str(small_mulan_weights)]
    fit_mulan = ["fit-codebook", "--stream", "mulan", "--input", str(src / "*"), "--num_clusters", "2",
                 "--num_stages", "2", "--mulan_batch_size", "2", "--max_segment_s", "2.5", *mulan]
    for name, args in (("fit", fit), ("fit_mulan", fit_mulan)):
        run_local([*args, "--output", str(tmp / f"{name}_local")])
        run_portable([*args, "--output", str(tmp / f"{name}_portable")], port)
        out[name] = (tmp / f"{name}_local", tmp / f"{name}_portable")
    tok = ["tokenize", "--input", str(src / "*"), "--codebook", str(out["fit"][0]),
           "--captions", str(Path(__file__).parent / "data" / "captions.jsonl"), "--num_shards", "2",
           "--valid_fraction", "0.5", "--max_segment_s", "2.5", "--acoustic_codec", "soundstream",
           "--mulan_model", "mulan", *mulan, "--mulan_codebook", str(out["fit_mulan"][0]),
           "--mulan_batch_size", "2"]
    run_local([*tok, "--output", str(tmp / "tok_local")])
    run_portable([*tok, "--output", str(tmp / "tok_portable")], port)
    out["tokenize"] = (tmp / "tok_local", tmp / "tok_portable")
    for name, stream, cb in (("rebuild", "semantic", out["fit"][0]), ("rebuild_mulan", "mulan", out["fit_mulan"][0])):
        reb = ["rebuild", "--dataset", str(tmp / "tok_local"), "--stream", stream, "--codebook", str(cb),
               "--n_iter", "3", "--sample_frames", "150", "--probe_frames", "60"]
        run_local([*reb, "--output", str(tmp / f"{name}_local")])
        run_portable([*reb, "--output", str(tmp / f"{name}_portable")], port)
        out[name] = (tmp / f"{name}_local", tmp / f"{name}_portable")
    return out


@pytest.mark.parametrize("job", ["fit", "fit_mulan", "tokenize"])
def test_portable_run_is_byte_identical_to_the_embedded_run(runs, job):
    local, portable = runs[job]
    assert files_of(local), f"{job} wrote nothing"
    assert_same_bytes(local, portable)


@pytest.mark.parametrize("job", ["rebuild", "rebuild_mulan"])
def test_portable_rebuild_is_byte_identical_to_the_embedded_rebuild(runs, job):
    """Both passes and every file of the version; rebuild_config.json names its own --output."""
    import json

    local, portable = runs[job]
    a, b = files_of(local), files_of(portable)
    assert sorted(a) == sorted(b) and any(p.startswith("streams/") for p in a)
    ca, cb = (json.loads(x.pop("rebuild_config.json")) for x in (a, b))
    assert ca.pop("output") != cb.pop("output") and ca == cb
    for rel in a:
        assert a[rel] == b[rel], f"{rel} differs between the embedded and the portable runner"
    assert not (local / "_work").exists() and not (portable / "_work").exists()


def test_tokenize_covered_every_stage_and_both_sinks(runs):
    import json

    local, _ = runs["tokenize"]
    m = json.loads((local / "manifest.json").read_text())
    assert set(m["streams"]) == {"acoustic", "melody", "mulan", "semantic"}
    assert {s["format"] for s in m["shards"]} == {"parquet", "webdataset"}
    assert m["counts"]["dead_by_reason"].get("duplicate") == 1 and m["counts"]["dead_letters"] == 2
    assert m["counts"]["records"] >= 4 and {s["split"] for s in m["shards"] if s["records"]} == {"train", "valid"}
    assert any(s["captioned"] for s in m["shards"])


def test_portable_jobs_ran_in_worker_processes(runs, worker_pool):
    _, log = worker_pool
    assert "Starting worker with command" in log.read_text()  # SDK harness subprocesses of the pool
