"""The basic-pitch semantic extractor (tokenizers/semantic_pitch.py): the real packaged ONNX model."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

import beam_runner
from tokenmill.schemas import rates
from tokenmill.tokenizers import audio
from tokenmill.tokenizers.kmeans import Codebook
from tokenmill.tokenizers.semantic import build_extractor, known_extractors
from tokenmill.tokenizers.semantic_pitch import (
    PitchConfig,
    frames_25hz_owner,
    model_frames_needed,
    model_path,
    pool_to_25hz,
)

SR = 16000
# sha256 of basic-pitch 0.4.0's saved_models/icassp_2022/nmp.onnx (`sha256sum` of the wheel's file)
NMP_ONNX_SHA256 = "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec"


@pytest.fixture(scope="module")
def ex():
    return build_extractor("basic-pitch")


def _tone(midi: int, frames: int) -> np.ndarray:
    """A sine at the equal-tempered frequency of `midi` (A4 = 69 = 440 Hz), amplitude 0.3."""
    t = np.arange(frames * 640) / SR
    return (0.3 * np.sin(2 * np.pi * 440.0 * 2.0 ** ((midi - 69) / 12) * t)).astype(np.float32)


def test_registered_and_described_with_the_weights_hash(ex):
    assert "basic-pitch" in known_extractors()
    d = ex.describe()
    assert d["weights_sha256"] == hashlib.sha256(model_path().read_bytes()).hexdigest() == NMP_ONNX_SHA256
    assert (d["name"], d["dim"], d["frame_rate_hz"], d["standardize"]) == ("basic-pitch", 14, 25, False)
    assert d["config"] == {"pc_weight": 2.0, "onset_weight": 1.5, "register_weight": 1.0,
                           "register_floor": 0.3, "pc_norm_floor": 0.3, "resample_quality": "HQ",
                           "batch_windows": 1, "runtime": "torch"}
    assert d["model"].endswith("run by torch")
    assert d["layout"] == {"note_pc": [0, 12], "onset": [12, 13], "register": [13, 14]}
    with pytest.raises(ValueError, match="unknown basic-pitch config keys"):
        build_extractor("basic-pitch", pc_wieght=1.0)


@pytest.mark.parametrize("midi", [57, 62, 66, 71, 76])  # A3, D4, F#4, B4, E5
def test_a_tone_peaks_in_its_pitch_class_and_register(ex, midi):
    """Reference by hand: MIDI m has pitch class m mod 12 (C = 0) and register (m - 60) / 12."""
    f = ex.extract(_tone(midi, 75))[10:65]  # 3 s; skip the attack and the end
    assert (f[:, :12].argmax(1) == midi % 12).all()
    np.testing.assert_allclose(f[:, midi % 12], 2.0, atol=0.05)  # the normalized top class · pc_weight
    np.testing.assert_allclose(f[:, 13].mean(), (midi - 60) / 12 * 1.0, atol=1 / 12)


def test_frame_count_equals_rates_for_random_durations(ex):
    rng = np.random.default_rng(11)
    for i in range(5):
        src_rate = int(rng.choice([8000, 22050, 44100, 48000]))
        q = rates.n_quanta(int(rng.integers(src_rate // 25, 9 * src_rate)), src_rate)
        t_s = rates.frames_for_quanta(q, rates.SEMANTIC)
        n = rates.samples_for_quanta(q, rates.SEMANTIC)
        wave = (0.1 * np.random.default_rng(i).standard_normal(n)).astype(np.float32)
        assert ex.extract(wave).shape == (t_s, 14)


def test_each_25hz_frame_owns_the_model_frames_in_its_40ms():
    for t_s in (1, 2, 7, 128, 441, 1000):
        j = model_frames_needed(t_s)
        owner = frames_25hz_owner(j)
        times = np.arange(j) * 256 / 22050  # model frame j at j·256/22050 s
        np.testing.assert_array_equal(owner, np.floor(times / 0.04 + 1e-9).astype(int))
        assert owner[-1] == t_s - 1 and np.isin(np.bincount(owner), [3, 4]).all()


def test_pool_to_25hz_against_a_loop():
    rng = np.random.default_rng(3)
    cfg = PitchConfig()
    t_s = 9
    j = model_frames_needed(t_s)
    note = rng.random((j + 5, 88)).astype(np.float32) ** 4
    note[:, 40] = rng.random(j + 5)  # make some keys pass register_floor
    onset = rng.random((j + 5, 88)).astype(np.float32) ** 8
    got = pool_to_25hz(note, onset, t_s, cfg)
    want = np.zeros((t_s, 14))
    for t in range(t_s):
        js = [k for k in range(j) if 0.04 * t <= k * 256 / 22050 < 0.04 * (t + 1) - 1e-12]
        pc = np.zeros(12)
        for c in range(12):
            pc[c] = np.mean([max(note[k, n] for n in range(88) if (n + 21) % 12 == c) for k in js])
        pc /= max(pc.max(), cfg.pc_norm_floor)
        on = max(onset[k].max() for k in js)
        num = den = 0.0
        for k in js:
            for n in range(88):
                if note[k, n] >= cfg.register_floor:
                    num += note[k, n] * (n + 21)
                    den += note[k, n]
        reg = ((num / den) - 60) / 12 if den else 0.0
        want[t] = [*(pc * cfg.pc_weight), on * cfg.onset_weight, reg * cfg.register_weight]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fit_and_tokenize_end_to_end(tmp_path, real_audio_dir):
    src = tmp_path / "audio"
    src.mkdir()
    name = "score_bach_bwv66_6.wav"
    shutil.copy(real_audio_dir / name, src / name)
    sem = ["--semantic_extractor", "basic-pitch"]
    cbs = tmp_path / "cb"
    assert beam_runner.main(["fit-codebook", "--input", str(src / "*"), "--output", str(cbs),
                             "--num_clusters", "16", "--sample_frames", "600", "--heldout_frames", "60",
                             *sem]) == 0
    (path,) = sorted(cbs.glob("semantic-*.safetensors"))
    cb = Codebook.load(path)
    assert cb.mean is None and cb.card["sources"]["extractor"]["weights_sha256"] == NMP_ONNX_SHA256
    out = tmp_path / "ds"
    assert beam_runner.main(["tokenize", "--input", str(src / "*"), "--codebook", str(cbs),
                             "--output", str(out), "--mulan_model", "none", "--melody_model", "none", "--acoustic_codec", "none",
                             "--num_shards", "1", "--formats", "parquet", *sem]) == 0
    m = json.loads((out / "manifest.json").read_text())
    s = m["streams"]["semantic"]
    assert (s["extractor"], s["weights_sha256"], s["vocab_size"]) == ("basic-pitch", NMP_ONNX_SHA256, 16)
    assert m["tokenizers"]["semantic"]["codebook_id"] == cb.id
    from tokenmill.schemas.verify import verify_dataset

    rep = verify_dataset(str(out), keep_records=True)
    assert rep.ok, rep.problems
    (rec,) = rep.records["parquet"]
    (seg,) = audio.prepare((src / name).read_bytes(), str(src / name), audio.AudioConfig(target_rates_hz=(SR,)))
    np.testing.assert_array_equal(rec.semantic, cb.assign(build_extractor("basic-pitch").extract(seg.waves[SR])))
    # rebuild re-extracts with the dataset's extractor (basic-pitch, named in the manifest)
    assert beam_runner.main(["rebuild", "--dataset", str(out), "--stream", "semantic", "--codebook",
                             str(path), "--output", str(tmp_path / "v2")]) == 0
    m2 = json.loads((tmp_path / "v2" / "manifest.json").read_text())
    assert m2["tokenizers"]["semantic"]["extractor"]["name"] == "basic-pitch"
    assert m2["tokenizers"]["semantic"]["extractor"]["weights_sha256"] == NMP_ONNX_SHA256
    # a spectral codebook is refused for basic-pitch features, as a fix-it exit
    spec = tmp_path / "cb_spectral"
    assert beam_runner.main(["fit-codebook", "--input", str(src / "*"), "--output", str(spec),
                             "--num_clusters", "16", "--sample_frames", "600", "--heldout_frames", "60"]) == 0
    with pytest.raises(SystemExit, match="extractor 'basic-pitch' gives 14"):
        beam_runner.main(["tokenize", "--input", str(src / "*"), "--codebook", str(spec),
                          "--output", str(tmp_path / "ds2"), "--mulan_model", "none", "--melody_model", "none",
                          "--acoustic_codec", "none", *sem])


def test_features_do_not_depend_on_torch_threads():
    """The torch runtime gives the same bytes for 1 and 2 intra-op threads (portable kernels)."""
    import torch

    wave = (0.2 * np.random.default_rng(7).standard_normal(640 * 200)).astype(np.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = build_extractor("basic-pitch").extract(wave)
        torch.set_num_threads(2)
        b = build_extractor("basic-pitch").extract(wave)
    finally:
        torch.set_num_threads(before)
    assert a.tobytes() == b.tobytes()


def test_a_missing_basic_pitch_wheel_says_how_to_install_it(monkeypatch):
    import importlib.util

    from tokenmill.tokenizers.semantic_pitch import PitchModelError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "basic_pitch" else real(n, *a))
    with pytest.raises(PitchModelError, match="pip install --no-deps basic-pitch==0.4.0"):
        build_extractor("basic-pitch")


def test_a_codebook_fitted_under_another_runtime_is_accepted_with_a_warning(ex, caplog):
    """Regression: the codebook check compared name, weights and layer only, so a codebook fitted
    on onnxruntime features was taken for torch features without a word. They agree to 1e-4, not
    bit for bit: the job now warns, naming the setting and both values; another layer still fails."""
    import logging

    from tokenmill.pipelines.handlers import check_codebook_matches
    from tokenmill.tokenizers.kmeans import CodebookError, fit_kmeans

    desc = ex.describe()
    fitted = {**desc, "config": {**desc["config"], "runtime": "onnxruntime"}}
    x = np.random.default_rng(0).standard_normal((200, ex.dim)).astype(np.float32)
    cb = fit_kmeans(x, 4, seed=0, kind="semantic", sources={"extractor": fitted})
    with caplog.at_level(logging.WARNING, logger="tokenmill"):
        check_codebook_matches(desc, cb)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "runtime='onnxruntime'" in msg and "runtime='torch'" in msg and cb.id in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tokenmill"):
        check_codebook_matches(desc, fit_kmeans(x, 4, seed=0, kind="semantic", sources={"extractor": desc}))
    assert not caplog.records                                   # the same config: nothing to say
    with pytest.raises(CodebookError, match="layer"):
        check_codebook_matches(desc, fit_kmeans(x, 4, seed=0, kind="semantic",
                                                sources={"extractor": {**desc, "layer": 3}}))


def test_a_codebook_card_read_back_from_json_raises_no_config_warning(caplog, tmp_path):
    """The card stores the extractor's config as JSON (melodic's tuples become lists): a codebook
    fitted, saved and loaded under the same settings must not warn."""
    import logging

    from tokenmill.pipelines.handlers import check_codebook_matches
    from tokenmill.tokenizers.kmeans import Codebook, fit_kmeans

    mel = build_extractor("melodic")
    x = np.random.default_rng(1).standard_normal((200, mel.dim)).astype(np.float32)
    fit_kmeans(x, 4, seed=0, kind="semantic", sources={"extractor": mel.describe()}).save(tmp_path)
    cb = Codebook.load(next(tmp_path.glob("semantic-*.safetensors")))
    with caplog.at_level(logging.WARNING, logger="tokenmill"):
        check_codebook_matches(mel.describe(), cb)
    assert not caplog.records
