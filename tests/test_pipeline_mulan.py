"""The MuLan stream in the Beam jobs and the CLI, against direct calls of the pure code:
tokenize (built-in and CLAP), fit-codebook --stream mulan, embed-text, and the fix-it errors.

Exactness: the jobs run with --mulan_batch_size 1 where a test compares floats bit for bit with
a direct `embed_audio_windows` call (also at batch size 1); a conv layer's float results can
change in the last bit with the batch size, which may move a float16 rounding.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import beam_runner
from tokenmill.pipelines.options import DEFAULT_SEMANTIC_EXTRACTOR
from tokenmill.pipelines.fit import split_sample
from tokenmill.pipelines.ingest import frames_priority
from tokenmill.schemas import rates
from tokenmill.schemas.verify import verify_dataset
from tokenmill.tokenizers import audio
from tokenmill.tokenizers.kmeans import fit_kmeans
from tokenmill.tokenizers.mulan import MulanError, build_mulan, load_text_tokenizer, segment_tokens, text_tokens
from tokenmill.tokenizers.rvq import RVQCodebook, fit_rvq
from tokenmill.tokenizers.semantic import build_extractor

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def semantic_codebook(tmp_path_factory, real_audio_dir) -> Path:
    """A k=16 semantic codebook fitted directly (no job) on one clip's spectral features."""
    cfg = audio.AudioConfig(target_rates_hz=(16_000,))
    seg = audio.prepare((real_audio_dir / "pushover_greek.flac").read_bytes(), "x", cfg)[0]
    feats = build_extractor(DEFAULT_SEMANTIC_EXTRACTOR).extract(seg.waves[16_000])
    out = tmp_path_factory.mktemp("semantic_cb")
    fit_kmeans(feats, 16, seed=0, kind="semantic").save(out)
    return out


def segments_of(src: Path, rates_hz: tuple[int, ...], max_segment_s: float = 300.0) -> dict:
    """key -> AudioSegment for every decodable file in `src` (what the job's ingest produces)."""
    cfg = audio.AudioConfig(target_rates_hz=rates_hz, max_segment_s=max_segment_s)
    out = {}
    for f in sorted(src.iterdir()):
        for s in audio.prepare(f.read_bytes(), str(f), cfg):
            out[s.key] = s
    return out


@pytest.fixture(scope="module")
def small_model(small_mulan_weights):
    return build_mulan("mulan", path=str(small_mulan_weights), batch_size=1)


@pytest.fixture(scope="module")
def small_rvq(tmp_path_factory, small_model, real_audio_dir) -> tuple[RVQCodebook, Path]:
    """A 4 x 8 RVQ fitted directly on the small model's windows of the bundled clips; its card
    names the model, as fit-codebook's does."""
    segs = segments_of(real_audio_dir, (16_000,))
    x = np.concatenate([small_model.embed_audio_windows(s.waves[16_000]) for s in segs.values()])
    rvq = fit_rvq(x, n_stages=4, k=8, seed=0, sources={"mulan": small_model.describe()})
    out = tmp_path_factory.mktemp("mulan_cb")
    rvq.save(out)
    return rvq, out


def tokenize(src: Path, codebook: Path, out: Path, *extra: str) -> Path:
    args = ["tokenize", "--input", str(src / "*"), "--codebook", str(codebook), "--output", str(out),
            "--num_shards", "2", "--acoustic_codec", "none", *extra]
    assert beam_runner.main(args) == 0
    return out


def test_tokenize_builtin_mulan_equals_direct_windows_and_tokens(
        real_audio_dir, semantic_codebook, small_mulan_weights, small_model, small_rvq, tmp_path):
    rvq, rvq_dir = small_rvq
    ds = tokenize(real_audio_dir, semantic_codebook, tmp_path / "ds", "--mulan_model", "mulan",
                  "--mulan_path", str(small_mulan_weights), "--mulan_codebook", str(rvq_dir),
                  "--mulan_batch_size", "1")
    rep = verify_dataset(str(ds), keep_records=True)
    assert rep.ok, rep.problems
    m = rep.manifest
    assert m["tokenizers"]["mulan"]["model"] == json.loads(json.dumps(small_model.describe()))
    assert m["tokenizers"]["mulan"]["codebook_id"] == m["codebooks"]["mulan"] == rvq.id
    assert (m["streams"]["mulan"]["n_stages"], m["streams"]["mulan"]["vocab_size"],
            m["streams"]["mulan"]["dim"]) == (4, 8, 128)
    segs = segments_of(real_audio_dir, (16_000,))
    recs = rep.records["parquet"]
    assert sorted(r.key for r in recs) == sorted(segs)
    assert {r.mulan_windows.shape[0] for r in recs} == {6, 11}          # 15 s and 20 s clips
    for r in recs + rep.records["webdataset"]:
        direct = small_model.embed_audio_windows(segs[r.key].waves[16_000]).astype(np.float16)
        assert r.mulan_windows.dtype == np.float16
        np.testing.assert_array_equal(r.mulan_windows, direct)
        np.testing.assert_array_equal(r.mulan, segment_tokens(direct, rvq))
    assert len({tuple(r.mulan) for r in recs}) > 1                     # tokens differ by track


def test_tokenize_clap_mulan_keeps_its_rate_and_dim(real_audio_dir, semantic_codebook, tmp_path):
    """A 64-d tiny CLAP at 48 kHz: ingest resamples to 48 kHz for it, short (< 10 s) segments get
    one zero-padded window, and verify checks D against the manifest."""
    from helpers import save_tiny_clap as _save_tiny_clap

    clap_dir = tmp_path / "clap"
    _save_tiny_clap(clap_dir, dim=64)
    model = build_mulan("clap", path=str(clap_dir), batch_size=1)
    x = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32)
    rvq = fit_rvq(x / np.linalg.norm(x, axis=1, keepdims=True), n_stages=3, k=8, seed=0)
    rvq_path = rvq.save(tmp_path / "rvq")
    src = tmp_path / "in"
    src.mkdir()
    for name in ("singularity_through_space.opus", "score_joplin_maple_leaf_rag.wav"):
        shutil.copy(real_audio_dir / name, src / name)
    ds = tokenize(src, semantic_codebook, tmp_path / "ds", "--max_segment_s", "8", "--mulan_model", "clap",
                  "--mulan_path", str(clap_dir), "--mulan_codebook", str(rvq_path), "--mulan_batch_size", "1")
    rep = verify_dataset(str(ds), keep_records=True)
    assert rep.ok, rep.problems
    info = rep.manifest["streams"]["mulan"]
    assert (info["model"], info["sample_rate_hz"], info["dim"]) == ("clap", 48_000, 64)
    assert rep.manifest["tokenizers"]["mulan"]["model"]["weights_sha256"] == model.weights_sha256
    assert 48_000 in rep.manifest["job"]["audio"]["target_rates_hz"]
    segs = segments_of(src, (16_000, 48_000), max_segment_s=8)
    assert len(rep.records["parquet"]) == len(segs) == 5
    for r in rep.records["parquet"]:
        assert r.duration_s < 10 and r.mulan_windows.shape == (1, 64)
        direct = model.embed_audio_windows(segs[r.key].waves[48_000]).astype(np.float16)
        np.testing.assert_array_equal(r.mulan_windows, direct)
        np.testing.assert_array_equal(r.mulan, segment_tokens(direct, rvq))


def test_fit_codebook_mulan_equals_fit_rvq_on_the_same_window_sample(
        real_audio_dir, small_mulan_weights, small_model, tmp_path, capsys):
    out = tmp_path / "cb"
    assert beam_runner.main(["fit-codebook", "--stream", "mulan", "--input", str(real_audio_dir / "*"),
                             "--output", str(out), "--mulan_path", str(small_mulan_weights),
                             "--num_stages", "4", "--num_clusters", "8", "--max_windows", "60",
                             "--heldout_windows", "6", "--mulan_batch_size", "1"]) == 0
    assert "mulan-" in capsys.readouterr().out
    (path,) = sorted(out.glob("mulan-*.safetensors"))
    got = RVQCodebook.load(path)
    # the reference: the same windows, the same bottom-k of hash priorities, the same split
    rows = []
    for key, s in segments_of(real_audio_dir, (16_000,)).items():
        win = small_model.embed_audio_windows(s.waves[16_000])
        rows += [(int(p), key, w) for p, w in zip(frames_priority(key, len(win), 0), win)]
    assert len(rows) == 83                                             # 7 x 11 + 6 windows
    sample = sorted(rows, key=lambda e: (e[0], e[1]))[:66]
    train, held, _ = split_sample(sample, 6)
    want = fit_rvq(train, n_stages=4, k=8, seed=0, n_iter=10, x_heldout=held)
    np.testing.assert_array_equal(got.codebooks, want.codebooks)
    assert got.id == want.id and got.id.startswith("mulan-")
    card = got.card
    assert card["sources"]["mulan"] == json.loads(json.dumps(small_model.describe()))
    assert (card["n_train_vectors"], card["n_heldout_vectors"], card["sources"]["n_windows_sampled"]) == (60, 6, 66)
    mse = card["heldout_mse_per_stage"]
    assert all(a > b for a, b in zip(mse, mse[1:]))                    # error falls as stages are added
    np.testing.assert_array_equal(got.encode(train), want.encode(train))


def test_fit_codebook_mulan_with_too_few_windows_names_a_smaller_k(real_audio_dir, small_mulan_weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(real_audio_dir / "singularity_through_space.opus", src)  # 15 s: 6 windows
    with pytest.raises(Exception, match=r"only 6 MuLan windows .*--num_clusters 4"):
        beam_runner.main(["fit-codebook", "--stream", "mulan", "--input", str(src / "*"),
                          "--output", str(tmp_path / "cb"), "--mulan_path", str(small_mulan_weights),
                          "--num_clusters", "16", "--heldout_windows", "0"])


def test_embed_text_prints_the_text_tokens(small_mulan_weights, small_model, small_rvq, capsys):
    rvq, rvq_dir = small_rvq
    texts = ["a calm piano piece", "fast drums, 120 bpm"]
    assert beam_runner.main(["embed-text", *texts, "--mulan_path", str(small_mulan_weights),
                             "--mulan_codebook", str(rvq_dir)]) == 0
    want = text_tokens(small_model, rvq, texts)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{t}\t{' '.join(map(str, row))}" for t, row in zip(texts, want)]
    assert beam_runner.main(["embed-text", texts[0], "--json", "--mulan_path", str(small_mulan_weights),
                             "--mulan_codebook", str(rvq_dir / f"{rvq.id}.json")]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == {"text": texts[0], "tokens": want[0].tolist(), "codebook_id": rvq.id, "model": "mulan"}
    tok = load_text_tokenizer("mulan", path=small_mulan_weights, codebook=rvq_dir)   # trainers' entry
    np.testing.assert_array_equal(tok(texts), want)


def test_packaged_default_model_uses_the_packaged_rvq(small_mulan_weights, small_rvq, tmp_path, monkeypatch):
    """No --mulan_path and no --mulan_codebook: the packaged weights and their packaged RVQ
    (stand-ins here, as the real files are not in the test's control)."""
    from tokenmill.tokenizers import mulan_builtin

    rvq, rvq_dir = small_rvq
    weights = tmp_path / "mulan-default.safetensors"
    shutil.copy(small_mulan_weights, weights)
    packaged = tmp_path / "mulan-default-rvq.safetensors"
    shutil.copy(rvq_dir / f"{rvq.id}.safetensors", packaged)
    shutil.copy(rvq_dir / f"{rvq.id}.json", packaged.with_suffix(".json"))
    monkeypatch.setattr(mulan_builtin, "DEFAULT_WEIGHTS", weights)
    monkeypatch.setattr(mulan_builtin, "DEFAULT_RVQ", packaged)
    from tokenmill.pipelines.mulan import describe_mulan
    from tokenmill.pipelines.options import MulanConfig

    desc = describe_mulan(MulanConfig())
    assert desc["codebook_id"] == rvq.id and desc["model"]["name"] == "mulan"
    with pytest.raises(SystemExit, match="fit-codebook --stream mulan --mulan_model mulan --mulan_path"):
        beam_runner.main(["embed-text", "x", "--mulan_path", str(small_mulan_weights)])  # not the packaged file
    monkeypatch.setattr(mulan_builtin, "DEFAULT_RVQ", tmp_path / "gone.safetensors")
    with pytest.raises(MulanError, match="packaged MuLan RVQ codebook .*gone.safetensors is missing"):
        describe_mulan(MulanConfig())


def test_mulan_fix_it_errors(real_audio_dir, semantic_codebook, small_mulan_weights, small_rvq, tmp_path):
    rvq, rvq_dir = small_rvq
    base = ["tokenize", "--input", str(real_audio_dir / "*.wav"), "--codebook", str(semantic_codebook),
            "--output", str(tmp_path / "o"), "--acoustic_codec", "none"]
    with pytest.raises(SystemExit, match="no packaged RVQ.*fit-codebook --stream mulan --mulan_model mulan --mulan_path"):
        beam_runner.main(base + ["--mulan_path", str(small_mulan_weights)])   # non-default weights
    with pytest.raises(SystemExit, match="needs --mulan_codebook.*fit-codebook --stream mulan --mulan_model clap"):
        beam_runner.main(base + ["--mulan_model", "clap", "--mulan_path", str(tmp_path)])
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    wrong_dim = fit_rvq(x, n_stages=2, k=4, seed=0).save(tmp_path / "rvq16")
    with pytest.raises(SystemExit, match="is 16-d but MuLan model 'mulan' embeds in 128-d.*fit-codebook --stream mulan"):
        beam_runner.main(base + ["--mulan_path", str(small_mulan_weights), "--mulan_codebook", str(wrong_dim)])
    x = np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32)
    other = fit_rvq(x, n_stages=2, k=4, seed=0, sources={"mulan": {"name": "mulan", "weights_sha256": "f" * 64}})
    with pytest.raises(SystemExit, match="was fitted on model 'mulan' with weights sha256 ffffffffffff"):
        beam_runner.main(base + ["--mulan_path", str(small_mulan_weights),
                                 "--mulan_codebook", str(other.save(tmp_path / "rvq_other"))])
    with pytest.raises(SystemExit, match="--mulan_codebook needs --mulan_model mulan or clap"):
        beam_runner.main(base + ["--mulan_model", "none", "--mulan_codebook", str(rvq_dir)])
    fit = ["fit-codebook", "--input", str(real_audio_dir / "*.wav"), "--output", str(tmp_path / "cb")]
    with pytest.raises(SystemExit, match="--max_windows applies to --stream mulan only"):
        beam_runner.main(fit + ["--max_windows", "10"])
    with pytest.raises(SystemExit, match="--sample_frames applies to --stream semantic only"):
        beam_runner.main(fit + ["--stream", "mulan", "--sample_frames", "10"])
    with pytest.raises(SystemExit, match=r"needs \[2, 65536\] entries per stage"):
        beam_runner.main(fit + ["--stream", "mulan", "--num_clusters", "70000"])


def test_batched_windows_equal_per_track_calls(small_mulan_weights, real_audio_dir):
    """Windows of several tracks share forward passes; each track's rows are its own windows."""
    segs = list(segments_of(real_audio_dir, (16_000,), max_segment_s=8).values())[:5]
    waves = [s.waves[16_000] for s in segs] + [segs[0].waves[16_000][:16_000 * 3]]
    batched = build_mulan("mulan", path=str(small_mulan_weights), batch_size=4).embed_audio_windows_batch(waves)
    one = build_mulan("mulan", path=str(small_mulan_weights), batch_size=1)
    assert [b.shape for b in batched] == [(rates.mulan_window_count(rates.n_quanta(len(w), 16_000)), 128)
                                          for w in waves]
    for w, b in zip(waves, batched):
        np.testing.assert_allclose(b, one.embed_audio_windows(w), atol=1e-5)
