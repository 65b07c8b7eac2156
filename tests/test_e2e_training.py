"""The training path end to end, as the README documents it: tokenize real audio with the built-in
tokenizers (all four streams: semantic, acoustic, MuLan, melody), serve the dataset over local HTTP, train the three tiny stages
from that URL with the trainer CLI, and generate a WAV from a text prompt with `generate`.

Short on purpose (few steps, short crops): it checks that the commands fit together (layouts from
the manifest, codebook ids carried from shards to checkpoints to generation, the codec decode),
not that the model learns; tests/test_train.py and tests/test_generate.py check values."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest import serve

import beam_runner
from tokenmill.training import checkpoint as ckpt
from tokenmill.training.stages import StageLayout

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TRAIN = ["--preset", "tiny", "--steps", "4", "--batch_size", "2", "--warmup_steps", "1", "--log_every", "2",
         "--semantic_s", "2", "--coarse_s", "0.4", "--fine_s", "0.2", "--shuffle_buffer", "2"]


def test_tokenize_serve_train_three_stages_and_generate(tmp_path, real_audio_dir):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("asc_frontiers.mp3", "singularity_through_space.opus"):
        shutil.copy(real_audio_dir / name, audio / name)
    assert beam_runner.main(["fit-codebook", "--input", str(audio / "*"), "--output", str(tmp_path / "cb"),
                             "--num_clusters", "16"]) == 0
    ds = tmp_path / "dataset"
    assert beam_runner.main(["tokenize", "--input", str(audio / "*"), "--codebook", str(tmp_path / "cb"),
                             "--output", str(ds), "--num_shards", "1", "--valid_fraction", "0"]) == 0
    manifest = json.loads((ds / "manifest.json").read_text())
    assert set(manifest["streams"]) == {"semantic", "acoustic", "mulan", "melody"}

    with serve(ds) as (url, requests):
        for stage in ("semantic", "coarse", "fine"):
            assert beam_runner.main(["train", "--stage", stage, "--data", f"{url}/", "--output",
                                     str(tmp_path / "runs" / stage), *TRAIN]) == 0
    assert "/manifest.json" in requests and any(r.endswith(".parquet") for r in requests)
    for stage in ("semantic", "coarse", "fine"):
        _, state = ckpt.read_state(tmp_path / "runs" / stage)
        assert state["step"] == 4 and state["stage"] == stage
        assert state["dataset"]["codebooks"] == manifest["codebooks"]
        parts = [p.name for p in StageLayout.from_json(state["layout"]).parts]
        assert ("melody" in parts) == (stage == "semantic")  # --melody_stages defaults to semantic

    out = tmp_path / "gen.wav"
    assert beam_runner.main(["generate", "--text", "a calm solo piano piece", "--checkpoints",
                             str(tmp_path / "runs"), "--out", str(out), "--seconds", "0.8"]) == 0
    wave, sr = sf.read(out, dtype="float32")
    assert sr == 24_000 and wave.shape == (int(0.8 * 24_000),)
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["text"] == "a calm solo piano piece" and side["samples"] == wave.shape[0]
    assert side["codebooks"] == manifest["codebooks"]
