"""w2v-BERT 2.0 / HuBERT semantic extractors: tiny randomly initialised models of the real
architectures, saved with save_pretrained (model AND feature extractor) and loaded back through
build_extractor(name, path=...), the from_pretrained path a published checkpoint takes. Values are
checked against the transformers model itself (full depth, fed by its own feature extractor),
pooled to 25 Hz by a direct NumPy loop."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import beam_runner
from tokenmill.schemas import rates
from tokenmill.tokenizers import audio
from tokenmill.tokenizers.codec import sha256_of_files
from tokenmill.tokenizers.kmeans import Codebook, CodebookError, assign, content_id, fit_kmeans
from tokenmill.tokenizers.semantic import build_extractor, known_extractors
from tokenmill.tokenizers.semantic_ssl import SemanticModelError, pool_to_25hz

SR = 16_000
DEPTH = 8  # >= 7, so the default layer exists


def _tiny(name: str):
    """(model, feature extractor): tiny widths, the published front ends (50 Hz at 16 kHz)."""
    torch.manual_seed({"hubert": 0, "w2v-bert": 1}[name])
    common = dict(hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=2, intermediate_size=64)
    if name == "hubert":  # conv strides 5·2·2·2·2·2·2 = 320 (HubertConfig's default)
        model = transformers.HubertModel(transformers.HubertConfig(
            conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, **common))
        fe = transformers.Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True)
    else:  # 80 mel bins at 100 Hz stacked by 2 → 160-d at 50 Hz
        model = transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig(
            output_hidden_size=32, conv_depthwise_kernel_size=5, **common))
        fe = transformers.SeamlessM4TFeatureExtractor()
    return model.eval(), fe


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # conftest: tiny models, 1 thread


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name → (directory, reference model, feature extractor)."""
    out = {}
    for name in ("hubert", "w2v-bert"):
        model, fe = _tiny(name)
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        fe.save_pretrained(d)
        out[name] = (d, model, fe)
    return out


def _wave(n_frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames * 640) / SR
    return (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def _reference(name, model, fe, wave, layer):
    """hidden_states[layer] of the full model, then frame t = mean of 50 Hz frames 2t, 2t+1
    (index clipped to the last frame), by a plain loop."""
    x = fe(wave, sampling_rate=SR, return_tensors="pt")
    inputs = ({"input_features": x["input_features"], "attention_mask": x["attention_mask"]}
              if name == "w2v-bert" else {"input_values": x["input_values"]})
    with torch.inference_mode():
        h = model(**inputs, output_hidden_states=True).hidden_states[layer][0].numpy().astype(np.float64)
    n = len(wave) // 640
    assert h.shape[0] == 2 * n - 1  # the measured 50 Hz count the module doc states
    out = np.empty((n, h.shape[1]))
    for t in range(n):
        out[t] = (h[min(2 * t, len(h) - 1)] + h[min(2 * t + 1, len(h) - 1)]) / 2
    return out


def test_both_are_registered():
    assert {"spectral", "hubert", "w2v-bert"} <= set(known_extractors())


@pytest.mark.parametrize("name", ["hubert", "w2v-bert"])
def test_default_layer_7_equals_the_model_pooled_to_25hz(saved, name):
    d, model, fe = saved[name]
    ex = build_extractor(name, path=str(d))
    wave = _wave(23, seed=1)
    got = ex.extract(wave)
    assert got.shape == (23, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(name, model, fe, wave, 7), rtol=1e-4, atol=1e-5)
    desc = ex.describe()
    assert desc["name"] == name and desc["layer"] == 7 and desc["config"]["layer"] == 7
    assert desc["weights_sha256"] == sha256_of_files(sorted(d.glob("*.safetensors")))
    assert desc["model"]["num_hidden_layers"] == DEPTH and desc["standardize"] is True
    json.dumps(desc)


@pytest.mark.parametrize("layer", [1, 3, DEPTH])
def test_other_layers_index_hidden_states(saved, layer):
    d, model, fe = saved["hubert"]
    wave = _wave(9, seed=layer)
    got = build_extractor("hubert", path=d, layer=layer).extract(wave)
    np.testing.assert_allclose(got, _reference("hubert", model, fe, wave, layer), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", [0, DEPTH + 1, 24])
def test_a_layer_beyond_the_model_is_refused_naming_the_file(saved, layer):
    d = saved["w2v-bert"][0]
    with pytest.raises(SemanticModelError, match=rf"config\.json.*num_hidden_layers={DEPTH}.*--semantic_layer"):
        build_extractor("w2v-bert", path=d, layer=layer)


def test_frame_count_equals_rates_for_random_durations(saved):
    """Random source durations and rates → rates' quanta → T_s frames, for both models."""
    rng = np.random.default_rng(5)
    exs = {n: build_extractor(n, path=saved[n][0]) for n in ("hubert", "w2v-bert")}
    for i in range(6):
        src_rate = int(rng.choice([8000, 22050, 44100, 48000]))
        q = rates.n_quanta(int(rng.integers(src_rate // 25, 3 * src_rate)), src_rate)
        t_s = rates.frames_for_quanta(q, rates.SEMANTIC)
        wave = _wave(t_s, seed=i)
        assert len(wave) == rates.samples_for_quanta(q, rates.SEMANTIC)
        for ex in exs.values():
            assert ex.extract(wave).shape == (t_s, 32)


def test_chunks_are_run_independently_on_the_rates_split(saved):
    d = saved["hubert"][0]
    wave = _wave(20, seed=3)
    got = build_extractor("hubert", path=d, chunk_frames=7).extract(wave)
    whole = build_extractor("hubert", path=d)
    bounds = rates.segment_bounds(20, 7 / 25)  # 7 + 7 + 6 frames
    assert bounds == [(0, 7), (7, 14), (14, 20)]
    want = np.concatenate([whole.extract(wave[a * 640:b * 640]) for a, b in bounds])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pool_to_25hz_against_numpy():
    rng = np.random.default_rng(0)
    for n, f in [(5, 9), (5, 10), (5, 13), (1, 1), (4, 6)]:
        h = rng.standard_normal((f, 3)).astype(np.float32)
        padded = np.concatenate([h, np.repeat(h[-1:], max(0, 2 * n - f), axis=0)])[: 2 * n]
        np.testing.assert_allclose(pool_to_25hz(h, n), (padded[0::2] + padded[1::2]) / 2, rtol=1e-6)
    with pytest.raises(SemanticModelError, match="50 Hz"):
        pool_to_25hz(np.zeros((7, 3), np.float32), 5)  # 3 short: not a 50 Hz model


def test_bad_checkpoints_have_fix_it_messages(saved, tmp_path):
    with pytest.raises(SemanticModelError, match="--semantic_path DIR"):
        build_extractor("hubert")
    with pytest.raises(SemanticModelError, match="use --semantic_extractor hubert"):
        build_extractor("w2v-bert", path=saved["hubert"][0])
    partial = tmp_path / "nofe"
    shutil.copytree(saved["hubert"][0], partial)
    (partial / "preprocessor_config.json").unlink()
    with pytest.raises(SemanticModelError, match="preprocessor_config.json.*save_pretrained"):
        build_extractor("hubert", path=partial)
    with pytest.raises(SemanticModelError, match="unknown option"):
        build_extractor("hubert", path=saved["hubert"][0], layers=3)


def test_cli_refuses_bad_semantic_flags(saved, tmp_path, real_audio_dir):
    base = ["tokenize", "--input", str(real_audio_dir / "*.wav"), "--codebook", str(tmp_path),
            "--output", str(tmp_path / "o"), "--mulan_model", "none", "--melody_model", "none", "--acoustic_codec", "none"]
    with pytest.raises(SystemExit, match="needs --semantic_extractor hubert --semantic_path DIR"):
        beam_runner.main([*base, "--semantic_extractor", "hubert"])
    with pytest.raises(SystemExit, match="--semantic_layer applies to --semantic_extractor"):
        beam_runner.main([*base, "--semantic_layer", "3"])
    with pytest.raises(SystemExit, match=r"config\.json.*--semantic_layer between 1 and 8"):
        beam_runner.main([*base, "--semantic_extractor", "hubert", "--semantic_path",
                          str(saved["hubert"][0]), "--semantic_layer", "9"])


def test_standardization_stats_round_trip_and_change_assignment(tmp_path):
    """Hand-set: dim 0 in units of 100 around 10, dim 1 in units of 1. Standardized, x = [10, 0.2]
    is [0, 0.2]: nearest to c1 = [0, 0] (0.04 < 0.25 + 0.64). Raw, it is nearest to c0."""
    c = np.array([[0.5, 1.0], [0.0, 0.0]], np.float32)
    mean, std = np.array([10, 0], np.float32), np.array([100, 1], np.float32)
    x = np.array([[10.0, 0.2]], np.float32)
    plain, stdz = Codebook(c, {"kind": "semantic"}), Codebook(c, {"kind": "semantic"}, mean=mean, std=std)
    assert plain.assign(x).tolist() == [0] and stdz.assign(x).tolist() == [1]
    assert plain.id == content_id(c, "semantic") and stdz.id != plain.id  # stats are part of the id
    loaded = Codebook.load(stdz.save(tmp_path))
    assert loaded.id == stdz.id and loaded.assign(x).tolist() == [1]
    np.testing.assert_array_equal(loaded.mean, mean)
    np.testing.assert_array_equal(loaded.std, std)
    old = Codebook.load(plain.save(tmp_path))  # an artifact without stats: same file format as before
    assert old.mean is None and old.id == plain.id and old.assign(x).tolist() == [0]
    with pytest.raises(CodebookError, match="both 'mean' and 'std'"):
        Codebook(c, {}, mean=mean)


def test_fit_computes_stats_from_the_training_sample():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((800, 5)) * [1, 10, 100, 1e-2, 0] + [0, 5, -50, 2, 7]).astype(np.float32)
    cb = fit_kmeans(x, 8, seed=0, n_iter=5, standardize=True, x_heldout=x[:50])
    np.testing.assert_allclose(cb.mean, x.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    want_std = x.astype(np.float64).std(0)
    want_std[4] = 1e-3 * np.median(want_std[:4])  # the constant dim gets the floor
    np.testing.assert_allclose(cb.std, want_std, rtol=1e-4)
    info = cb.card["standardization"]
    assert info["n_vectors"] == 800 and info["n_floored_dims"] == 1 and cb.card["id"] == cb.id
    np.testing.assert_array_equal(cb.assign(x), assign((x - cb.mean) / cb.std, cb.centroids))
    assert "standardization" not in fit_kmeans(x, 8, seed=0, n_iter=5).card


def test_fit_and_tokenize_with_hubert_record_model_and_layer(saved, tmp_path, real_audio_dir):
    d = saved["hubert"][0]
    src = tmp_path / "audio"
    src.mkdir()
    for f in ("score_bach_bwv66_6.wav", "pushover_greek.flac"):
        shutil.copy(real_audio_dir / f, src / f)
    sem = ["--semantic_extractor", "hubert", "--semantic_path", str(d)]
    cbs = tmp_path / "cb"
    assert beam_runner.main(["fit-codebook", "--input", str(src / "*"), "--output", str(cbs),
                             "--num_clusters", "16", "--sample_frames", "600", "--heldout_frames", "60",
                             *sem]) == 0
    (path,) = sorted(cbs.glob("semantic-*.safetensors"))
    cb = Codebook.load(path)
    assert cb.mean is not None and cb.card["standardization"]["n_vectors"] == cb.card["n_train_vectors"]
    assert cb.card["sources"]["extractor"]["layer"] == 7
    out = tmp_path / "ds"
    assert beam_runner.main(["tokenize", "--input", str(src / "*"), "--codebook", str(cbs),
                             "--output", str(out), "--mulan_model", "none", "--melody_model", "none", "--acoustic_codec", "none",
                             "--num_shards", "1", "--formats", "parquet", *sem]) == 0
    m = json.loads((out / "manifest.json").read_text())
    sha = sha256_of_files(sorted(d.glob("*.safetensors")))
    s = m["streams"]["semantic"]
    assert (s["extractor"], s["layer"], s["weights_sha256"], s["vocab_size"]) == ("hubert", 7, sha, 16)
    tok = m["tokenizers"]["semantic"]
    assert tok["extractor"]["model"]["weights_sha256"] == sha and tok["codebook_id"] == cb.id
    # tokens == decode → extractor → standardize → nearest centroid, called directly
    from tokenmill.schemas.verify import verify_dataset

    rep = verify_dataset(str(out), keep_records=True)
    assert rep.ok, rep.problems
    ex = build_extractor("hubert", path=d)
    recs = {r.uri: r for r in rep.records["parquet"]}
    uri = str(src / "score_bach_bwv66_6.wav")
    (seg,) = audio.prepare((src / "score_bach_bwv66_6.wav").read_bytes(), uri,
                           audio.AudioConfig(target_rates_hz=(SR,)))
    np.testing.assert_array_equal(recs[uri].semantic, cb.assign(ex.extract(seg.waves[SR])))
    # a codebook fitted on layer 7 is refused for layer 3, as a fix-it exit (no traceback)
    with pytest.raises(SystemExit, match="fitted on layer 7 but this job uses 3"):
        beam_runner.main(["tokenize", "--input", str(src / "*"), "--codebook", str(cbs),
                          "--output", str(tmp_path / "ds3"), "--mulan_model", "none", "--melody_model", "none",
                          "--acoustic_codec", "none", *sem, "--semantic_layer", "3"])
