"""The built-in melodic semantic extractor (tokenizers/semantic_builtin.py) and its trainer
(training/semantic_train.py): packaged weights, frame contract, thread and batch invariance, the
loss against a slow loop, and deterministic training steps on synthetic tones."""
from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch

from tokenmill.tokenizers.semantic import build_extractor, known_extractors
from tokenmill.tokenizers.semantic_builtin import (
    DEFAULT_WEIGHTS,
    MelodicModelError,
    MelodicNet,
    MelodicNetConfig,
    load_weights,
    save_weights,
)
from tokenmill.training import semantic_train as st

SR = 16000
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def ex():
    return build_extractor("melodic")


def _notes(midis: list[int], frames_per_note: int, harmonics: int = 1, seed: int = 0) -> np.ndarray:
    """Consecutive notes (equal-tempered, A4 = 440 Hz) with `harmonics` partials, amplitude 0.3."""
    t = np.arange(frames_per_note * 640) / SR
    out = []
    for m in midis:
        f0 = 440.0 * 2.0 ** ((m - 69) / 12)
        x = sum(np.sin(2 * np.pi * f0 * h * t + h) / h for h in range(1, harmonics + 1) if f0 * h < SR / 2)
        out.append(0.3 * x * np.minimum(1.0, t / 0.01))
    return np.concatenate(out).astype(np.float32)


def music_like(seconds: float, seed: int) -> np.ndarray:
    """Seeded random notes (4 partials, 160 ms each) plus quiet noise, cut to whole 40 ms frames."""
    rng = np.random.default_rng(seed)
    frames = int(round(seconds * 25))
    x = _notes([int(m) for m in rng.integers(48, 84, size=-(-frames // 4))], 4, harmonics=4)[: frames * 640]
    return (x + 0.003 * rng.standard_normal(len(x))).astype(np.float32)


# ---- the extractor ---------------------------------------------------------------------------

def test_loads_the_packaged_weights_by_name_and_describes_them(ex):
    assert "melodic" in known_extractors()
    d = ex.describe()
    assert d["weights_sha256"] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert (d["name"], d["dim"], d["frame_rate_hz"], d["hop_samples"], d["standardize"]) == ("melodic", 32, 25, 640, False)
    assert list(d["config"]["net"]["harmonics"]) == list(MelodicNetConfig().harmonics)
    with pytest.raises(ValueError, match="unknown melodic config keys"):
        build_extractor("melodic", pth="x")


def test_a_file_that_is_not_melodic_weights_is_refused(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad), metadata={"format": "something-else"})
    with pytest.raises(MelodicModelError, match="not a melodic extractor weights file"):
        build_extractor("melodic", path=str(bad))
    with pytest.raises(MelodicModelError, match="no weights file"):
        build_extractor("melodic", path=str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize("frames", [1, 7, 13, 251])
def test_frame_count_equals_the_spectral_extractors(ex, frames):
    wave = np.random.default_rng(frames).standard_normal(frames * 640).astype(np.float32) * 0.1
    f = ex.extract(wave)
    assert f.shape == (build_extractor("spectral").extract(wave).shape[0], 32) == (frames, 32)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("pos", [3 * 640 + 320, 5 * 640 + 100, 6 * 640 + 600])
def test_frames_are_centred_like_the_spectral_extractors(ex, pos):
    """An impulse at sample `pos`: the 25 Hz frame with the most front-end energy is the spectral
    extractor's loudest frame."""
    wave = np.zeros(12 * 640, np.float32)
    wave[pos] = 1.0
    grid = ex.net.front(torch.from_numpy(wave)[None])[0].numpy()  # dB [F, 24]
    power = (10 ** (grid / 10)).sum(0)
    spectral = build_extractor("spectral").band_powers(wave)[:, :64].sum(1)
    assert power.argmax() == spectral.argmax() == round((pos - 320) / 640)


def test_features_do_not_depend_on_torch_threads(ex):
    wave = music_like(6.0, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ex.extract(wave)
        torch.set_num_threads(2)
        two = ex.extract(wave)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    np.testing.assert_array_equal(one, two)


def test_a_wave_alone_equals_it_in_a_batch_and_a_reference_forward(ex):
    """extract_batch on waves of equal and other lengths equals extract on each alone; both equal a
    plain forward of the model on the wave with its context padding (chunks of 30 s: a 34 s wave
    is cut in two, which changes only float rounding)."""
    waves = [music_like(4.0, seed=1), music_like(4.0, seed=2), music_like(2.48, seed=4),
             music_like(34.0, seed=5)]
    alone = [ex.extract(w) for w in waves]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0]):
        batch = ex.extract_batch([waves[i] for i in order])
        for i, f in zip(order, batch):
            np.testing.assert_array_equal(f, alone[i])
    ctx = ex.net.cfg.context_frames
    for w, f in zip(waves, alone):
        with torch.inference_mode():
            ref = ex.net(torch.from_numpy(np.pad(w, ctx * 640))[None])[0, ctx:-ctx].numpy()
        if len(w) // 640 <= ex.net.cfg.chunk_frames:
            np.testing.assert_array_equal(f, ref)
        else:
            np.testing.assert_allclose(f, ref, atol=2e-5)


def test_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    net = MelodicNet(MelodicNetConfig(channels=4, hidden=16, dim=8)).eval()
    path = save_weights(net, tmp_path / "w.safetensors")
    back, meta = load_weights(path)
    assert back.cfg == net.cfg and meta["format"] == "tokenmill.semantic-melodic.v1"
    wave = torch.from_numpy(_notes([60, 67], 10))[None]
    with torch.inference_mode():
        torch.testing.assert_close(back(wave), net(wave), rtol=0, atol=0)


# ---- the trainer -----------------------------------------------------------------------------

def test_info_nce_equals_a_slow_loop():
    """Hand-set features and labels; reference: per anchor m, -log(e^{s_mm} / Σ_k e^{s_mk}) over
    the candidates k that are the positive or carry another label, s = <a, c> / tau."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3))
    c = rng.standard_normal((8, 3))
    a_lab = np.array([60, 60, -1, 62, 64])
    c_lab = np.array([60, 60, -1, 62, 65, 60, -1, 64])
    tau = 0.3
    want = []
    for m in range(5):
        s = [float(a[m] @ c[k]) / tau for k in range(8) if k == m or c_lab[k] != a_lab[m]]
        pos = float(a[m] @ c[m]) / tau
        want.append(-(pos - math.log(sum(math.exp(x) for x in s))))
    got = st.info_nce(torch.tensor(a), torch.tensor(c), torch.tensor(a_lab), torch.tensor(c_lab), tau)
    assert float(got) == pytest.approx(float(np.mean(want)), rel=1e-12)


def _synthetic_set(net: MelodicNet) -> st.RenderSet:
    """3 tunes of 8 notes (12 frames each), rendered as a sine and as a 3-harmonic tone (two
    'instruments'), plus the sine transposed up 2 semitones."""
    items = []
    for k in range(3):
        midis = [int(m) for m in np.random.default_rng(k).integers(55, 80, size=8)]
        onset = np.zeros(96, bool)
        onset[::12] = True
        lab = np.repeat(midis, 12)
        items.append((f"t{k}", 0, _notes(midis, 12, 1), lab, onset))
        items.append((f"t{k}", 0, _notes(midis, 12, 3), lab, onset))
        items.append((f"t{k}", 2, _notes([m + 2 for m in midis], 12, 1), lab + 2, onset))
    data = st.RenderSet.from_waves(items, net)
    mean, std = data.stats()
    net.grid_mean.copy_(torch.from_numpy(mean)[:, None])
    net.grid_std.copy_(torch.from_numpy(std)[:, None])
    return data


def _fresh(seed: int = 0) -> tuple[MelodicNet, st.Heads]:
    torch.manual_seed(seed)
    net = MelodicNet(MelodicNetConfig(channels=4, hidden=16, dilations=(1, 2), dim=8))
    return net, st.Heads(net.cfg.dim)


def test_frame_losses_pick_positives_and_masks_from_the_batch():
    net, heads = _fresh()
    data = _synthetic_set(net)
    a = st.TrainArgs(batch=2, crop_s=1.0, steps=2)
    b = st.make_batch(data, data.train_tunes, 0, a, net.grid_mean[:, 0].numpy())
    assert b.n_pairs == 2 and b.grid.shape == (6, 192, 25)
    # views a and b of a pair share labels (2·MIDI + onset); the transposed row is 2 semitones up
    torch.testing.assert_close(b.labels[0], b.labels[2])
    torch.testing.assert_close(b.labels[4], b.labels[0] + 4)
    assert set((b.labels[0] % 2).tolist()) == {0, 1}
    assert not b.masked[2:4].any()  # view b is never masked
    with torch.no_grad():
        z = net.forward_grid(b.grid)
        terms = st.frame_losses(z, b, heads, a)
        d = z.shape[-1]
        za, zb, zt = z[:2].reshape(-1, d), z[2:4].reshape(-1, d), z[4:].reshape(-1, d)
        la, lb, lt = b.labels[:2].reshape(-1), b.labels[2:4].reshape(-1), b.labels[4:].reshape(-1)
        nce = 0.5 * (st.info_nce(za, torch.cat([zb, zt]), la, torch.cat([lb, lt]), a.tau)
                     + st.info_nce(zb, torch.cat([za, zt]), lb, torch.cat([la, lt]), a.tau))
    assert float(terms["nce"]) == pytest.approx(float(nce), rel=1e-6)
    want = float(terms["nce"]) + a.pc_weight * float(terms["pc"]) + a.onset_weight * float(terms["onset"])
    assert float(terms["loss"]) == pytest.approx(want, rel=1e-6)


def test_two_training_steps_are_deterministic_and_resume_exactly(tmp_path):
    a = st.TrainArgs(batch=2, crop_s=1.0, steps=2, warmup=1)
    runs = []
    for _ in range(2):
        net, heads = _fresh()
        data = _synthetic_set(net)
        runs.append(st.train(net, heads, data, a, log=lambda m: None))
    assert runs[0] == runs[1] and len(runs[0]) == 2 and all(np.isfinite(runs[0]))
    # one step, checkpoint, resume for the second: the same two losses
    net, heads = _fresh()
    data = _synthetic_set(net)
    first = st.train(net, heads, data, a, out=tmp_path, log=lambda m: None, until=1)
    ck = st.load_ckpt(tmp_path / "ckpt-latest.pt")
    assert ck["step"] == 1
    net2, heads2 = _fresh(seed=99)
    net2.load_state_dict(ck["net"])
    heads2.load_state_dict(ck["heads"])
    opt = torch.optim.AdamW(list(net2.parameters()) + list(heads2.parameters()), lr=a.lr, weight_decay=a.weight_decay)
    opt.load_state_dict(ck["opt"])
    second = st.train(net2, heads2, data, a, start=1, opt=opt, log=lambda m: None)
    assert first + second == runs[0]


def test_run_reports_bad_input_as_a_tokenmill_error(tmp_path):
    import argparse

    p = st.add_args(argparse.ArgumentParser())
    with pytest.raises(st.SemanticTrainError, match="needs --renders"):
        st.run(p.parse_args([]))
    with pytest.raises(st.SemanticTrainError, match="semantic_pairs.py"):
        st.run(p.parse_args(["--renders", str(tmp_path), "--out", str(tmp_path / "run")]))
    with pytest.raises(st.SemanticTrainError, match="no checkpoint"):
        st.run(p.parse_args(["--export", str(tmp_path / "none.pt"), "--to", str(tmp_path / "w.safetensors")]))


def test_fit_tokenize_and_rebuild_accept_it_by_name(tmp_path, real_audio_dir):
    import json
    import shutil

    import beam_runner
    from tokenmill.schemas.verify import verify_dataset
    from tokenmill.tokenizers import audio
    from tokenmill.tokenizers.kmeans import Codebook

    src = tmp_path / "audio"
    src.mkdir()
    name = "score_bach_bwv66_6.wav"
    shutil.copy(real_audio_dir / name, src / name)
    sem = ["--semantic_extractor", "melodic"]
    sha = hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    cbs = tmp_path / "cb"
    assert beam_runner.main(["fit-codebook", "--input", str(src / "*"), "--output", str(cbs),
                             "--num_clusters", "16", "--sample_frames", "600", "--heldout_frames", "60",
                             *sem]) == 0
    (path,) = sorted(cbs.glob("semantic-*.safetensors"))
    cb = Codebook.load(path)
    assert cb.mean is None and cb.card["sources"]["extractor"]["weights_sha256"] == sha
    out = tmp_path / "ds"
    assert beam_runner.main(["tokenize", "--input", str(src / "*"), "--codebook", str(cbs),
                             "--output", str(out), "--mulan_model", "none", "--melody_model", "none", "--acoustic_codec", "none",
                             "--num_shards", "1", "--formats", "parquet", *sem]) == 0
    m = json.loads((out / "manifest.json").read_text())
    s = m["streams"]["semantic"]
    assert (s["extractor"], s["weights_sha256"], s["vocab_size"]) == ("melodic", sha, 16)
    rep = verify_dataset(str(out), keep_records=True)
    assert rep.ok, rep.problems
    (rec,) = rep.records["parquet"]
    (seg,) = audio.prepare((src / name).read_bytes(), str(src / name), audio.AudioConfig(target_rates_hz=(SR,)))
    np.testing.assert_array_equal(rec.semantic, cb.assign(build_extractor("melodic").extract(seg.waves[SR])))
    assert beam_runner.main(["rebuild", "--dataset", str(out), "--stream", "semantic", "--codebook",
                             str(path), "--output", str(tmp_path / "v2")]) == 0
    m2 = json.loads((tmp_path / "v2" / "manifest.json").read_text())
    assert m2["tokenizers"]["semantic"]["extractor"]["name"] == "melodic"
    assert m2["tokenizers"]["semantic"]["extractor"]["weights_sha256"] == sha
    # a spectral codebook is refused for melodic features, as a fix-it exit
    spec = tmp_path / "cb_spectral"
    assert beam_runner.main(["fit-codebook", "--input", str(src / "*"), "--output", str(spec),
                             "--semantic_extractor", "spectral",
                             "--num_clusters", "16", "--sample_frames", "600", "--heldout_frames", "60"]) == 0
    with pytest.raises(SystemExit, match="extractor 'melodic' gives 32"):
        beam_runner.main(["tokenize", "--input", str(src / "*"), "--codebook", str(spec),
                          "--output", str(tmp_path / "ds2"), "--mulan_model", "none", "--melody_model", "none",
                          "--acoustic_codec", "none", *sem])


@pytest.mark.parametrize("midi", [57, 64, 71])
def test_the_packaged_model_follows_pitch_not_timbre(ex, midi):
    """Two timbres (a sine, 6 harmonics at 1/h) of the same held note give closer features than
    the same timbre 5 semitones up: mean cosine over the note's middle frames."""
    def feats(m, h):
        return ex.extract(_notes([m], 50, harmonics=h))[10:40]

    same_pitch = float((feats(midi, 1) * feats(midi, 6)).sum(1).mean())
    same_timbre = float((feats(midi, 6) * feats(midi + 5, 6)).sum(1).mean())
    assert same_pitch > same_timbre + 0.3, (same_pitch, same_timbre)
