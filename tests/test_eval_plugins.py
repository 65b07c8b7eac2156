"""Embedder and classifier plug-ins on tiny randomly initialised models of the real architectures,
saved with save_pretrained and loaded back by spec, checked against the models run directly."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tokenmill.eval import EvalError  # noqa: E402
from tokenmill.eval.classifiers import build_classifier  # noqa: E402
from tokenmill.eval.embedders import EMBEDDERS, build_embedder, pool_seconds, register_embedder  # noqa: E402
from tokenmill.eval.plugins import parse_spec  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
SR16 = 16_000


def _wave(seconds: float, sr: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * 330 * t * (1 + 0.1 * np.sin(t))) + 0.05 * r.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    torch.manual_seed(0)
    cfg = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
               conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    fe = transformers.Wav2Vec2FeatureExtractor(sampling_rate=SR16, do_normalize=True)
    d = tmp_path_factory.mktemp("hubert")
    model = transformers.HubertModel(transformers.HubertConfig(**cfg)).eval()
    model.save_pretrained(d)
    fe.save_pretrained(d)
    dc = tmp_path_factory.mktemp("hubert_cls")
    clf = transformers.HubertForSequenceClassification(transformers.HubertConfig(
        **cfg, num_labels=3, id2label={0: "piano", 1: "drums", 2: "voice"},
        label2id={"piano": 0, "drums": 1, "voice": 2})).eval()
    clf.save_pretrained(dc)
    fe.save_pretrained(dc)
    return d, model, dc, clf, fe


def test_pool_seconds_is_the_mean_of_each_second():
    x = np.arange(10.0)[:, None] * np.array([[1.0, -1.0]])
    np.testing.assert_allclose(pool_seconds(x, 4.0), [[1.5, -1.5], [5.5, -5.5], [8.5, -8.5]])


def test_spec_parsing():
    s = parse_spec("hf=/models/mert,layer=7,trust_remote_code=true,chunk_s=2.5", "--embedder")
    assert (s.name, s.path) == ("hf", "/models/mert")
    assert s.kwargs == {"layer": 7, "trust_remote_code": True, "chunk_s": 2.5, "path": "/models/mert"}
    assert str(s) == "hf=/models/mert,layer=7,trust_remote_code=True,chunk_s=2.5"
    with pytest.raises(EvalError, match="KEY=VALUE"):
        parse_spec("hf=/x,layer", "--embedder")
    with pytest.raises(EvalError, match="unknown embedder 'nope'; known: clap, encodec, hf, mulan"):
        build_embedder("nope")


def test_hidden_states_embedder_equals_the_model_run_directly(tiny_hubert):
    d, model, _, _, fe = tiny_hubert
    wave = _wave(2.5, SR16, 1)
    emb = build_embedder(f"hf={d},layer=2")
    got = emb.embed(wave)
    with torch.no_grad():
        h = model(**fe(wave, sampling_rate=SR16, return_tensors="pt"), output_hidden_states=True).hidden_states[2][0]
    h = h.numpy().astype(np.float64)
    rate = h.shape[0] / 2.5
    want = [h[[t for t in range(h.shape[0]) if int(t // rate) == s]].mean(axis=0) for s in range(3)]
    np.testing.assert_allclose(got, np.array(want), rtol=1e-4, atol=1e-5)
    assert emb.describe()["config"]["layer"] == 2 and len(emb.describe()["weights_sha256"]) == 64
    assert build_embedder(f"hf={d}").layer == 3  # default: the last layer
    with pytest.raises(EvalError, match="layer 9 is not in 0..3"):
        build_embedder(f"hf={d},layer=9")


def test_encodec_embedder_is_the_pooled_encoder_output(tmp_path):
    torch.manual_seed(0)
    model = transformers.EncodecModel(transformers.EncodecConfig(num_filters=4, hidden_size=8, num_lstm_layers=1,
                                                                 codebook_size=1024)).eval()
    model.save_pretrained(tmp_path)
    wave = _wave(1.5, 24_000, 2)
    got = build_embedder(f"encodec={tmp_path}").embed(wave)
    with torch.no_grad():
        z = model.encoder(torch.from_numpy(wave).view(1, 1, -1))[0].T.numpy().astype(np.float64)  # [T, 8] @ 75 Hz
    assert z.shape[0] == 113
    np.testing.assert_allclose(got, np.stack([z[:75].mean(0), z[75:].mean(0)]), rtol=1e-4, atol=1e-6)


def test_builtin_mulan_embedder_and_user_target(small_mulan_weights):
    from tokenmill.tokenizers.mulan import build_mulan

    wave = _wave(12.0, SR16, 3)
    want = build_mulan("mulan", path=small_mulan_weights).embed_audio_windows(wave)
    emb = build_embedder(f"mulan={small_mulan_weights}")
    assert emb.embed(wave).shape == (3, 128)
    np.testing.assert_array_equal(emb.embed(wave), want)
    target = "tokenmill.eval.embedders.mulan_tower:build"  # a user's own factory, named directly
    np.testing.assert_array_equal(build_embedder(f"{target}={small_mulan_weights}").embed(wave), want)
    register_embedder("mine", target)
    try:
        np.testing.assert_array_equal(build_embedder(f"mine={small_mulan_weights}").embed(wave), want)
    finally:
        EMBEDDERS.pop("mine")


def test_zero_shot_mulan_classifier_by_hand(small_mulan_weights):
    from tokenmill.tokenizers.mulan import build_mulan

    labels = ["calm piano", "fast drums", "choir"]
    clf = build_classifier(f"mulan={small_mulan_weights}", labels=labels, temperature=0.05)
    wave = _wave(11.0, SR16, 4)
    m = build_mulan("mulan", path=small_mulan_weights)
    a = m.embed_audio_windows(wave).astype(np.float64).mean(0)
    t = m.embed_text(labels).astype(np.float64)
    cos = t @ a / np.linalg.norm(a) / np.linalg.norm(t, axis=1)
    e = np.exp((cos - cos.max()) / 0.05)
    np.testing.assert_allclose(clf.probs(wave), e / e.sum(), rtol=1e-5)
    assert clf.labels == tuple(labels)
    with pytest.raises(EvalError, match="needs a label vocabulary"):
        build_classifier(f"mulan={small_mulan_weights}", labels=None)


def test_clap_embedder_and_zero_shot_classifier(tmp_path):
    from helpers import save_tiny_clap

    save_tiny_clap(tmp_path)
    from tokenmill.tokenizers.mulan import build_mulan

    clap = build_mulan("clap", path=tmp_path)
    wave = _wave(10.0, 48_000, 5)
    emb = build_embedder(f"clap={tmp_path}")
    assert emb.sample_rate_hz == 48_000
    np.testing.assert_allclose(emb.embed(wave), clap.embed_audio_windows(wave), rtol=1e-5, atol=1e-6)
    clf = build_classifier(f"clap={tmp_path}", labels=["abc", "xyz"], temperature=0.5)
    a = clap.embed_audio_windows(wave)[0].astype(np.float64)
    t = clap.embed_text(["abc", "xyz"]).astype(np.float64)
    e = np.exp(t @ a / 0.5)
    np.testing.assert_allclose(clf.probs(wave), e / e.sum(), rtol=1e-5)


def test_audio_classification_model_by_path(tiny_hubert):
    _, _, dc, model, fe = tiny_hubert
    wave = _wave(1.0, SR16, 6)
    clf = build_classifier(f"hf={dc}", labels=None, temperature=2.0)
    assert clf.labels == ("piano", "drums", "voice")
    with torch.no_grad():
        logits = model(**fe(wave, sampling_rate=SR16, return_tensors="pt")).logits[0].numpy().astype(np.float64)
    e = np.exp((logits - logits.max()) / 2.0)
    np.testing.assert_allclose(clf.probs(wave), e / e.sum(), rtol=1e-5)
    with pytest.raises(EvalError, match="no preprocessor_config.json"):
        (dc / "preprocessor_config.json").rename(dc / "x.json")
        try:
            build_classifier(f"hf={dc}", labels=None)
        finally:
            (dc / "x.json").rename(dc / "preprocessor_config.json")
