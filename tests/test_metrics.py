"""Beam counters (namespace "tokenmill") of a local tokenize reconcile exactly with its manifest
and shards, and every RunInference model loads once per worker process."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import small_corpus

import beam_runner
from tokenmill.pipelines import runner
from tokenmill.schemas.shards import read_dataset

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, real_audio_dir):
    tmp = tmp_path_factory.mktemp("metrics")
    src = small_corpus(tmp / "in", real_audio_dir)
    assert beam_runner.main(["fit-codebook", "--input", str(src / "*"), "--output", str(tmp / "cb"),
                             "--num_clusters", "8", "--sample_frames", "400", "--heldout_frames", "40"]) == 0
    return src, tmp / "cb"


def tokenize(src: Path, cb: Path, out: Path, *extra: str) -> dict:
    args = ["tokenize", "--input", str(src / "*"), "--codebook", str(cb), "--output", str(out),
            "--num_shards", "2", "--max_segment_s", "2.5", "--mulan_model", "none", "--melody_model", "none",
            *extra]
    assert beam_runner.main(args) == 0
    return runner.tokenmill_counters(runner.LAST_RESULT)


def test_counters_reconcile_with_the_manifest(setup, tmp_path):
    src, cb = setup
    c = tokenize(src, cb, tmp_path / "ds", "--acoustic_codec", "soundstream")
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    counts = m["counts"]
    records = list(read_dataset(str(tmp_path / "ds")))
    assert c["files_read"] == counts["inputs"] == 4
    assert c["files_decoded"] + c["files_dead_decode"] == counts["inputs"]
    assert c["files_dead_decode"] == counts["dead_by_stage"]["decode"] == 1
    assert c["dead_letters"] == counts["dead_letters"] == 2  # undecodable + duplicate
    assert c["duplicates"] == counts["dead_by_reason"]["duplicate"] == 1
    assert c["records"] == counts["records"] == len(records)
    assert c["segments"] == counts["records"] + sum(
        1 for r in records if r.uri.endswith("score_bach_bwv66_6.wav"))  # the duplicate's segments
    assert abs(c["record_audio_ms"] / 1000 - counts["seconds"]) <= 0.0005 * len(records) + 1e-6
    assert c["audio_ms_decoded"] >= c["record_audio_ms"]
    assert c["tokens_semantic"] == sum(r.semantic.size for r in records)
    assert c["tokens_acoustic"] == sum(r.acoustic.size for r in records) > 0
    assert "tokens_mulan" not in c  # stream off: no counter


def test_progress_and_counters_are_logged(setup, tmp_path, caplog):
    import logging

    src, cb = setup
    with caplog.at_level(logging.INFO, logger="tokenmill"):
        tokenize(src, cb, tmp_path / "ds", "--acoustic_codec", "none")
    text = caplog.text
    assert "[decode]" in text and "files" in text  # the per-worker progress line (at bundle end)
    assert "metrics: " in text and "files_decoded=3" in text


def test_each_model_loads_once_per_worker_process(setup, tmp_path, monkeypatch):
    """Several threads and many bundles/batches in one process: each handler's load_model runs
    once (RunInference shares the model through a per-process Shared handle)."""
    from tokenmill.pipelines import handlers

    loads: dict[str, int] = {}

    def counting(cls):
        original = cls.load_model

        def load_model(self):
            loads[cls.__name__] = loads.get(cls.__name__, 0) + 1
            return original(self)
        monkeypatch.setattr(cls, "load_model", load_model)

    counting(handlers.SemanticTokenHandler)
    counting(handlers.AcousticTokenHandler)
    c = tokenize(setup[0], setup[1], tmp_path / "ds", "--acoustic_codec", "soundstream", "--batch_size", "1",
                 "--acoustic_batch_size", "1", "--direct_running_mode=multi_threading", "--direct_num_workers=2")
    assert loads == {"SemanticTokenHandler": 1, "AcousticTokenHandler": 1}
    assert c["segments"] > 2  # several batches of one segment each went through each model
    from apache_beam.metrics.metric import MetricsFilter

    dists = runner.LAST_RESULT.metrics().query(MetricsFilter().with_name("load_model_latency_milli_secs"))
    per_ns: dict[str, int] = {}
    for d in dists["distributions"]:
        value = d.committed if d.committed is not None else d.attempted
        per_ns[d.key.metric.namespace] = per_ns.get(d.key.metric.namespace, 0) + value.count
    assert per_ns == {"tokenmill_semantic_tokens": 1, "tokenmill_acoustic_tokens": 1}
    assert np.all(np.array(list(loads.values())) == 1)
