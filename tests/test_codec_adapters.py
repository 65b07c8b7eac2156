"""EnCodec / DAC / Mimi adapters: tiny randomly initialised models of the real architectures,
saved with save_pretrained and loaded back through build_codec(name, path=...), the same
from_pretrained path a published checkpoint takes. Values are checked against the HF models'
own encode/decode, fed through the HF feature extractors as the model cards do."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tokenmill.tokenizers.codec import CodecError, build_codec, known_codecs

SR = 24_000


def _fill_codebooks(model, rng_seed: int) -> None:
    """HF initialises EnCodec/Mimi codebooks to zeros (every code 0); give them random entries at
    the scale of the latents, shrinking per level like a trained RVQ, so codes carry information."""
    g = torch.Generator().manual_seed(rng_seed)
    with torch.no_grad():
        x = torch.randn(1, 1, 4 * SR // 10, generator=g) * 0.1
        if isinstance(model, transformers.EncodecModel):
            scale = model.encoder(x).std().item()
            for i, layer in enumerate(model.quantizer.layers):
                cb = layer.codebook
                cb.embed.copy_(torch.randn(cb.embed.shape, generator=g) * scale * 0.7 ** i)
        else:  # Mimi: embed = embed_sum / cluster_usage
            q = model.quantizer
            lat = model.encoder(x).latents
            proj = q.semantic_residual_vector_quantizer.input_proj
            scale = (proj(lat) if proj is not None else lat).std().item()
            layers = [*q.semantic_residual_vector_quantizer.layers,
                      *q.acoustic_residual_vector_quantizer.layers]
            for i, layer in enumerate(layers):
                cb = layer.codebook
                cb.cluster_usage.fill_(1.0)
                cb.embed_sum.copy_(torch.randn(cb.embed_sum.shape, generator=g) * scale * 0.7 ** (i % 4))
                cb._embed = None


def _tiny(name: str):
    """(model, feature_extractor) with tiny widths but the published rates and strides."""
    torch.manual_seed({"encodec": 0, "dac": 1, "mimi": 2}[name])
    if name == "encodec":  # the 24 kHz model's rates: strides 8·5·4·2 = 320 → 75 Hz, 1024 entries
        model = transformers.EncodecModel(transformers.EncodecConfig(
            num_filters=4, hidden_size=8, num_lstm_layers=1, codebook_size=1024))
        fe = transformers.EncodecFeatureExtractor(feature_size=1, sampling_rate=SR)
    elif name == "dac":  # the 24 kHz DAC's strides 2·4·5·8 = 320 (one odd stride)
        model = transformers.DacModel(transformers.DacConfig(
            encoder_hidden_size=4, decoder_hidden_size=16, n_codebooks=6, codebook_dim=4,
            downsampling_ratios=[2, 4, 5, 8], sampling_rate=SR))
        fe = transformers.DacFeatureExtractor(feature_size=1, sampling_rate=SR, hop_length=320)
    else:  # Mimi's strides 8·6·5·4·2 = 1920 → 12.5 Hz, 2048 entries, 1 semantic level
        model = transformers.MimiModel(transformers.MimiConfig(
            hidden_size=16, num_filters=4, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, intermediate_size=32, codebook_dim=8,
            vector_quantization_hidden_dimension=8, num_quantizers=8, upsample_groups=16))
        fe = transformers.EncodecFeatureExtractor(feature_size=1, sampling_rate=SR)
    model.eval()
    if name != "dac":
        _fill_codebooks(model, 7)
    return model, fe


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convs: intra-op threads only add sync cost (10 ms per op on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name → (directory, reference HF model, feature extractor)."""
    out = {}
    for name in ("encodec", "dac", "mimi"):
        model, fe = _tiny(name)
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        fe.save_pretrained(d)
        out[name] = (d, model, fe)
    return out


@pytest.fixture(scope="module")
def codecs(saved):
    return {"encodec": build_codec("encodec", path=str(saved["encodec"][0]), bandwidth_kbps=6.0),
            "dac": build_codec("dac", path=saved["dac"][0]),
            "mimi": build_codec("mimi", path=saved["mimi"][0])}


def _wave(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def _ref_encode(name, model, fe, wave):
    """Codes [n_q, T] from the HF model itself, input prepared by its feature extractor."""
    inp = fe(raw_audio=wave, sampling_rate=SR, return_tensors="pt")
    with torch.inference_mode():
        if name == "encodec":
            return model.encode(inp["input_values"], inp["padding_mask"], bandwidth=6.0).audio_codes[0, 0].numpy()
        if name == "dac":
            return model.encode(inp["input_values"]).audio_codes[0].numpy()
        return model.encode(inp["input_values"], inp["padding_mask"]).audio_codes[0].numpy()


def _ref_decode(name, model, codes):
    c = torch.from_numpy(codes.astype(np.int64))
    with torch.inference_mode():
        if name == "encodec":
            return model.decode(c[None, None], [None]).audio_values.reshape(-1).numpy()
        if name == "dac":
            return model.decode(audio_codes=c[None]).audio_values.reshape(-1).numpy()
        return model.decode(c[None]).audio_values.reshape(-1).numpy()


NAMES = ["encodec", "dac", "mimi"]


def test_registered():
    assert {"encodec", "dac", "mimi"} <= set(known_codecs())


@pytest.mark.parametrize("name", NAMES)
def test_codes_equal_hf_encode(name, saved, codecs):
    _, model, fe = saved[name]
    codec = codecs[name]
    n = 3 * codec.hop_samples + 123  # not a multiple of the hop
    wave = _wave(n)
    codes = codec.encode(wave)
    ref = _ref_encode(name, model, fe, wave)
    assert codes.dtype == np.uint16
    np.testing.assert_array_equal(codes, ref)
    # the random codebooks are not degenerate: the comparison above compares information
    assert len(np.unique(codes)) >= 3
    assert len({tuple(r) for r in codes}) > 1


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_equals_hf_decode(name, saved, codecs):
    _, model, _ = saved[name]
    codec = codecs[name]
    n = 2 * codec.hop_samples + 77
    codes = codec.encode(_wave(n, seed=1))
    T = codes.shape[1]
    y = codec.decode(codes)
    ref = _ref_decode(name, model, codes)
    assert y.dtype == np.float32 and y.shape == (T * codec.hop_samples,)
    m = min(len(ref), len(y))
    np.testing.assert_allclose(y[:m], ref[:m], rtol=0, atol=1e-6)
    if name == "dac":  # odd stride 5: the HF decoder gives T·hop − 8; we zero-fill the tail
        assert len(ref) == T * codec.hop_samples - 8
        assert not y[m:].any()
    else:
        assert len(ref) == T * codec.hop_samples
    assert np.abs(y).max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_fewer_levels_decode(name, saved, codecs):
    _, model, _ = saved[name]
    codec = codecs[name]
    codes = codec.encode(_wave(2 * codec.hop_samples, seed=2))
    full = codec.decode(codes)
    for k in (1, 2):
        y = codec.decode(codes[:k])
        ref = _ref_decode(name, model, codes[:k])
        m = min(len(ref), len(y))
        np.testing.assert_allclose(y[:m], ref[:m], rtol=0, atol=1e-6)
        assert y.shape == full.shape
        assert not np.allclose(y, full)
    with pytest.raises(CodecError):
        codec.decode(np.zeros((codec.n_q + 1, 2), np.uint16))


@pytest.mark.parametrize("name", NAMES)
def test_frame_count_contract(name, codecs):
    codec = codecs[name]
    hop = codec.hop_samples
    for n in (1, hop - 1, hop, hop + 1, 2 * hop + hop // 2, 4 * hop):
        codes = codec.encode(_wave(n, seed=n))
        assert codes.shape == (codec.n_q, math.ceil(n / hop)), n


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_reload(name, saved, codecs):
    codec = codecs[name]
    wave = _wave(3 * codec.hop_samples + 5, seed=3)
    a = codec.encode(wave)
    np.testing.assert_array_equal(a, codec.encode(wave.copy()))
    again = build_codec(name, path=saved[name][0])
    np.testing.assert_array_equal(a, again.encode(wave))
    assert again.weights_sha256 == codec.weights_sha256 and len(codec.weights_sha256) == 64


def test_encodec_bandwidth_picks_depth(saved, codecs):
    d, model, _ = saved["encodec"]
    lo = build_codec("encodec", path=d, bandwidth_kbps=1.5)
    hi = codecs["encodec"]  # 6 kbps
    top = build_codec("encodec", path=d, bandwidth_kbps=24.0)
    assert (lo.n_q, hi.n_q, top.n_q) == (2, 8, 32)  # 1.5/6/24 kbps ÷ (75 Hz · 10 bits)
    wave = _wave(1000, seed=4)
    c_lo, c_hi = lo.encode(wave), hi.encode(wave)
    with torch.inference_mode():
        ref_lo = model.encode(torch.from_numpy(wave)[None, None], bandwidth=1.5).audio_codes[0, 0].numpy()
    np.testing.assert_array_equal(c_lo, ref_lo)
    np.testing.assert_array_equal(c_lo, c_hi[:2])  # residual VQ: the low rate is a prefix
    with pytest.raises(CodecError, match="target_bandwidths"):
        build_codec("encodec", path=d, bandwidth_kbps=5.0)


def test_depth_options(saved):
    assert build_codec("dac", path=saved["dac"][0], n_q=3).encode(_wave(700)).shape == (3, 3)
    assert build_codec("mimi", path=saved["mimi"][0], num_quantizers=4).encode(_wave(4000)).shape == (4, 3)
    with pytest.raises(CodecError, match="n_q=7"):
        build_codec("dac", path=saved["dac"][0], n_q=7)
    assert build_codec("mimi", path=saved["mimi"][0], n_q=2).encode(_wave(4000)).shape == (2, 3)
    with pytest.raises(CodecError, match="n_q=9"):
        build_codec("mimi", path=saved["mimi"][0], n_q=9)
    with pytest.raises(CodecError, match="disagree"):
        build_codec("mimi", path=saved["mimi"][0], n_q=2, num_quantizers=3)


def test_describe(saved, codecs):
    want = {"encodec": (SR, 320, 75.0, 8, 1024), "dac": (SR, 320, 75.0, 6, 1024),
            "mimi": (SR, 1920, 12.5, 8, 2048)}
    for name, codec in codecs.items():
        desc = json.loads(json.dumps(codec.describe()))
        assert (desc["sample_rate_hz"], desc["hop_samples"], desc["frame_rate_hz"], desc["n_q"],
                desc["codebook_size"]) == want[name]
        assert desc["coarse_levels"] == [1, 2, 3, 4]
        assert desc["fine_levels"] == list(range(5, want[name][3] + 1))
        assert desc["config"]["model_type"] == name and desc["config"]["n_q"] == want[name][3]
        assert desc["weights_sha256"] == codec.weights_sha256
        assert str(saved[name][0]) not in json.dumps(desc)  # no absolute paths in the manifest
    assert codecs["encodec"].describe()["config"]["bandwidth_kbps"] == 6.0


def test_load_errors(saved, tmp_path):
    with pytest.raises(CodecError, match="does not exist"):
        build_codec("encodec", path=tmp_path / "nope")
    with pytest.raises(CodecError, match="no config.json"):
        build_codec("dac", path=tmp_path)
    with pytest.raises(CodecError, match=r"model_type 'dac', expected 'encodec'; use --acoustic_codec dac"):
        build_codec("encodec", path=saved["dac"][0])
    with pytest.raises(CodecError, match=r"model_type 'encodec', expected 'mimi'; use --acoustic_codec encodec"):
        build_codec("mimi", path=saved["encodec"][0])
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CodecError, match="not an EnCodec, DAC or Mimi"):
        build_codec("dac", path=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dac"}))
    with pytest.raises(CodecError, match="no \\*.safetensors"):
        build_codec("dac", path=tmp_path)
    with pytest.raises(CodecError, match="unknown option.*bandwidth_kbps"):
        build_codec("dac", path=saved["dac"][0], bandwidth_kbps=6.0)
    with pytest.raises(CodecError, match="needs path"):
        build_codec("mimi")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_gpu_is_an_error(saved):
    with pytest.raises(CodecError, match="CUDA is not available"):
        build_codec("encodec", path=saved["encodec"][0], device="cuda")
