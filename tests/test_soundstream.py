"""Built-in SoundStream codec: RVQ arithmetic, EMA updates, dead-code restarts, frame counts,
determinism, save/load, and the committed default checkpoint on real audio."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenmill.tokenizers import audio
from tokenmill.tokenizers.codec import CodecError, build_codec, known_codecs
from tokenmill.tokenizers.soundstream import (
    DEFAULT_WEIGHTS,
    EMAQuantizer,
    ResidualVQ,
    SoundStream,
    SoundStreamCodec,
    SoundStreamConfig,
    kmeans,
    load_soundstream,
    save_soundstream,
)
from tokenmill.training.losses import mel_distance


pytestmark = pytest.mark.usefixtures("torch_one_thread")


TINY = SoundStreamConfig(channels=2, latent_dim=4, codebook_size=8, weight_norm=True)


def tiny_codec(seed: int = 0) -> SoundStreamCodec:
    torch.manual_seed(seed)
    model = SoundStream(TINY)
    for vq in model.quantizer.layers:  # random, distinct codebooks (as if trained)
        vq.embed.copy_(torch.randn(TINY.codebook_size, TINY.latent_dim) * 0.05)
        vq.initialized.fill_(1)
    return SoundStreamCodec(model=model)


def music(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(24000 * seconds)) / 24000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


# ---- residual VQ ------------------------------------------------------------------------------

def test_rvq_hand_set_codebooks_encode_known_vectors_to_known_codes():
    rvq = ResidualVQ(SoundStreamConfig(latent_dim=2, codebook_size=4, n_q=2)).eval()
    rvq.layers[0].embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    rvq.layers[1].embed.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [-0.1, -0.1]]))
    x = torch.tensor([[1.1, 0.0], [-0.1, 0.9], [0.9, 1.1]])  # [T=3, D=2]
    q, codes, commit = rvq(x.t()[None])
    assert codes[:, 0].tolist() == [[1, 2, 3], [1, 3, 2]]
    expected = torch.tensor([[1.1, 0.0], [-0.1, 0.9], [1.0, 1.1]])  # entry 0 + entry 1 per vector
    assert torch.allclose(q[0].t(), expected, atol=1e-6)
    assert torch.allclose(rvq.decode(codes)[0].t(), expected, atol=1e-6)
    assert torch.allclose(rvq.decode(codes[:1])[0].t(), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert commit.item() == 0.0  # no commitment loss outside training


def test_ema_update_matches_hand_computation_and_restarts_dead_codes():
    vq = EMAQuantizer(dim=1, size=2, decay=0.5, dead_code_steps=2, eps=0.0)
    vq.embed.copy_(torch.tensor([[0.0], [10.0]]))
    vq.embed_sum.copy_(torch.tensor([[0.0], [10.0]]))
    vq.cluster_size.fill_(1.0)
    x = torch.tensor([[1.0], [3.0], [9.0]])
    vq.ema_update(x, torch.tensor([0, 0, 1]))
    # counts [2, 1], sums [4, 9]: cluster_size = .5*1 + .5*[2, 1]; embed_sum = .5*[0, 10] + .5*[4, 9]
    assert vq.cluster_size.tolist() == [1.5, 1.0]
    assert vq.embed_sum[:, 0].tolist() == [2.0, 9.5]
    assert torch.allclose(vq.embed[:, 0], torch.tensor([2.0 / 1.5, 9.5]))
    y = torch.tensor([[8.0], [12.0]])
    vq.ema_update(y, torch.tensor([1, 1]))  # code 0 unused once: kept
    assert vq.unused_steps.tolist() == [1.0, 0.0]
    assert vq.embed[0, 0].item() == pytest.approx(1.0 / 0.75)
    vq.ema_update(y, torch.tensor([1, 1]), torch.Generator().manual_seed(0))  # unused twice: restarted
    assert vq.embed[0, 0].item() in (8.0, 12.0)
    assert vq.cluster_size[0].item() == 1.0 and vq.unused_steps.tolist() == [0.0, 0.0]


def test_kmeans_init_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 2, generator=g) * 0.01 + torch.tensor([5.0, 0.0]),
                   torch.randn(50, 2, generator=g) * 0.01 - torch.tensor([5.0, 0.0])])
    cent = kmeans(x, 2, 10, torch.Generator().manual_seed(1))
    got = sorted(cent[:, 0].tolist())
    assert got == pytest.approx([x[50:, 0].mean().item(), x[:50, 0].mean().item()], abs=1e-5)


def test_training_forward_initialises_levels_and_applies_quantizer_dropout():
    torch.manual_seed(0)
    model = SoundStream(TINY).train()
    wave = torch.from_numpy(music(0.4))[None, None]
    recon, codes, commit = model(wave, n_active=3, gen=torch.Generator().manual_seed(0))
    assert codes.shape == (3, 1, 20) and recon.shape == wave.shape and commit.item() > 0
    init = [bool(vq.initialized) for vq in model.quantizer.layers]
    assert init == [True] * 3 + [False] * 9  # inactive levels untouched
    recon.pow(2).mean().backward()  # straight-through: the encoder gets a gradient
    assert model.encoder.net[0].conv.parametrizations.weight.original1.grad.abs().sum() > 0


# ---- the codec interface ----------------------------------------------------------------------

@pytest.mark.parametrize("n, frames", [(480 * 5, 5), (480 * 5 + 1, 6), (479, 1), (1, 1)])
def test_frame_count_is_n_over_hop_or_its_ceiling(n, frames):
    codec = tiny_codec()
    codes = codec.encode(music(1.0)[:n])
    assert codes.shape == (12, frames) and codes.dtype == np.uint16
    assert codec.decode(codes).shape == (frames * 480,)
    assert codec.decode(codes[:1]).shape == (frames * 480,)  # fewer levels still decode


def test_encode_batch_equals_single_encodes():
    codec = tiny_codec()
    waves = [music(0.3, 1), music(0.5, 2), music(0.3, 3), music(0.31, 4)]
    batch = codec.encode_batch(waves)
    for w, c in zip(waves, batch):
        assert np.array_equal(c, codec.encode(w))


def test_save_load_round_trip_reproduces_codes(tmp_path):
    codec = tiny_codec()
    wave = music(0.6)
    codes = codec.encode(wave)
    p32 = save_soundstream(codec.model, tmp_path / "a.safetensors", torch.float32)
    loaded = build_codec("soundstream", path=p32)
    assert loaded.config_dict()["weight_norm"] is False  # folded on export
    assert np.array_equal(loaded.encode(wave), codes)
    assert np.allclose(loaded.decode(codes), codec.decode(codes), atol=1e-5)
    assert loaded.weights_sha256 and loaded.describe()["frame_rate_hz"] == 50.0
    # float16 export: the stored weights define the codec; re-exporting them is exact
    m16, _ = load_soundstream(save_soundstream(codec.model, tmp_path / "b.safetensors"))
    m16b, _ = load_soundstream(save_soundstream(m16, tmp_path / "c.safetensors"))
    assert np.array_equal(SoundStreamCodec(model=m16).encode(wave), SoundStreamCodec(model=m16b).encode(wave))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    assert "soundstream" in known_codecs()
    with pytest.raises(CodecError, match="no checkpoint"):
        build_codec("soundstream", path=tmp_path / "nope.safetensors")


# ---- the committed default checkpoint on real audio -------------------------------------------

@pytest.fixture(scope="module")
def real_excerpt(real_audio_dir) -> np.ndarray:
    path = real_audio_dir / "wesnoth_breaking_the_chains.ogg"
    dec = audio.decode(path.read_bytes(), str(path))
    wave = audio.resample(audio.to_mono(dec.pcm), dec.sample_rate_hz, 24000)
    return np.ascontiguousarray(wave[24000 * 4:24000 * 7])  # 3 s


@pytest.fixture(scope="module")
def default_codec():
    if not DEFAULT_WEIGHTS.exists():
        pytest.fail(f"the default checkpoint {DEFAULT_WEIGHTS} is missing")
    return build_codec("soundstream")


def test_default_checkpoint_error_falls_as_levels_rise(default_codec, real_excerpt):
    codes = default_codec.encode(real_excerpt)
    assert codes.shape == (12, 150)
    dist = {n: mel_distance(real_excerpt, default_codec.decode(codes[:n])) for n in (1, 4, 12)}
    assert dist[1] > dist[4] > dist[12], dist
    # a trained codec, not a random one: far closer than silence is
    assert dist[12] < 0.5 * mel_distance(real_excerpt, np.zeros_like(real_excerpt)), dist


def test_default_checkpoint_encoding_is_deterministic(default_codec, real_excerpt):
    a = default_codec.encode(real_excerpt)
    b = default_codec.encode(real_excerpt.copy())
    assert a.tobytes() == b.tobytes()
    assert len(np.unique(a[0])) > 10  # uses many codes, not a collapsed codebook
