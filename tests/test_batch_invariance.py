"""A segment's tokens do not depend on what else is in its RunInference batch: for each built-in
model stage (SoundStream codec, MuLan and melody windows + RVQ tokens, spectral semantic features +
k-means; the other semantic extractors: test_batch_invariance_semantic.py),
the handler's run_inference on the segment alone equals its result inside batches of other
segments (equal lengths, which a GPU path would stack into one forward pass, and other lengths),
in either order, and equals a direct call of the pure model code. Which segments share a batch
depends on the runner's bundles, so this is what makes outputs equal across runners.

The window streams batch for throughput: the windows of all segments share forward passes of a
fixed shape (tokenizers/windowing.py). The tests below pin the parts of that: every pass has
exactly batch_size rows, a row's bits do not depend on its position or on the other rows, and the
log-mel rows sliced from a segment's front end equal each window's own front end."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import check_invariant, handler_results, invariance_segments, torch_devices
from tokenmill.pipelines.handlers import AcousticTokenHandler, Failed, SemanticTokenHandler
from tokenmill.pipelines.ingest import SegmentInput
from tokenmill.pipelines.melody import MelodyTokenHandler, MelodyWindowHandler
from tokenmill.pipelines.mulan import MulanTokenHandler, MulanWindowHandler
from tokenmill.pipelines.options import AcousticConfig, MelodyConfig, MulanConfig, SemanticConfig
from tokenmill.schemas import rates
from tokenmill.tokenizers import windowing
from tokenmill.tokenizers.kmeans import fit_kmeans
from tokenmill.tokenizers.melody_tokens import window_tokens
from tokenmill.tokenizers.mulan import segment_tokens
from tokenmill.tokenizers.semantic import build_extractor

pytestmark = pytest.mark.usefixtures("torch_one_thread")

@pytest.fixture(scope="module")
def segments(real_audio_dir) -> list:
    return invariance_segments(real_audio_dir)


@pytest.mark.parametrize("device", torch_devices())
def test_soundstream_codes_do_not_depend_on_the_batch(segments, device):
    handler = AcousticTokenHandler(AcousticConfig(codec="soundstream", batch_size=8, device=device))
    alone, codec = check_invariant(handler, segments, np.testing.assert_array_equal)
    np.testing.assert_array_equal(alone, codec.encode(segments[0].waves[24_000]))   # the pure code
    assert alone.dtype == np.uint16 and alone.shape == (12, rates.frames_for_quanta(segments[0].n_quanta, rates.ACOUSTIC))


@pytest.mark.parametrize("device", torch_devices())
def test_mulan_windows_and_tokens_do_not_depend_on_the_batch(segments, device):
    def equal(got, want):
        np.testing.assert_array_equal(got["mulan_windows"], want["mulan_windows"])
        np.testing.assert_array_equal(got["mulan"], want["mulan"])

    handler = MulanTokenHandler(MulanConfig(model="mulan", batch_size=16, device=device))
    alone, tok = check_invariant(handler, segments, equal)
    direct = tok.model.embed_audio_windows(segments[0].waves[16_000]).astype(np.float16)
    np.testing.assert_array_equal(alone["mulan_windows"], direct)
    np.testing.assert_array_equal(alone["mulan"], segment_tokens(direct, tok.rvq))
    # the fit's handler (float32 windows) too
    fit_handler = MulanWindowHandler(MulanConfig(model="mulan", batch_size=16, device=device))
    check_invariant(fit_handler, segments, np.testing.assert_array_equal)


def test_spectral_tokens_do_not_depend_on_the_batch(segments, tmp_path):
    ext = build_extractor("spectral")
    fit_kmeans(np.concatenate([ext.extract(s.waves[16_000]) for s in segments]), 32, seed=0,
               kind="semantic").save(tmp_path)
    handler = SemanticTokenHandler(SemanticConfig(extractor="spectral", batch_size=8), str(tmp_path))
    alone, tok = check_invariant(handler, segments, np.testing.assert_array_equal)
    np.testing.assert_array_equal(alone, tok.codebook.assign(ext.extract(segments[0].waves[16_000])))
    assert alone.shape == (rates.frames_for_quanta(segments[0].n_quanta, rates.SEMANTIC),)


@pytest.mark.parametrize("device", torch_devices())
def test_melody_windows_and_tokens_do_not_depend_on_the_batch(segments, device):
    def equal(got, want):
        np.testing.assert_array_equal(got["melody_windows"], want["melody_windows"])
        np.testing.assert_array_equal(got["melody"], want["melody"])

    handler = MelodyTokenHandler(MelodyConfig(model="builtin", batch_size=16, device=device))
    alone, tok = check_invariant(handler, segments, equal)
    direct = tok.model.embed_windows(segments[0].waves[16_000]).astype(np.float16)
    np.testing.assert_array_equal(alone["melody_windows"], direct)
    np.testing.assert_array_equal(alone["melody"], window_tokens(direct, tok.rvq))
    check_invariant(MelodyWindowHandler(MelodyConfig(model="builtin", batch_size=16, device=device)),
                    segments, np.testing.assert_array_equal)


# ---- the fixed-shape passes of the window streams ---------------------------------------------

def spy_passes(model) -> list:
    """Record every forward pass the model runs (its rows, copied) and still run it."""
    passes, run = [], model._embed_rows

    def spy(rows):
        passes.append(np.array(rows))
        return run(rows)
    model._embed_rows = spy
    return passes


@pytest.mark.parametrize("stream", ["mulan", "melody"])
def test_a_batch_of_segments_runs_full_passes_of_their_windows_in_order(segments, stream):
    """Five segments with 1+1+1+1+1 MuLan (7+7+7+4+1 melody) windows: their windows fill passes of
    exactly batch_size rows in segment order, zero rows after the last window, and each row is
    that window's slice of its segment's log-mel."""
    handler = (MulanWindowHandler(MulanConfig(model="mulan", batch_size=4)) if stream == "mulan"
               else MelodyWindowHandler(MelodyConfig(model="builtin", batch_size=4)))
    model = handler.load_model()
    want_rows = [r for s in segments for r in model._window_rows(s.waves[16_000])]
    passes = spy_passes(model)
    handler.run_inference(segments, model)
    assert [p.shape[0] for p in passes] == [4] * (-(-len(want_rows) // 4))  # ceil: one call per 4 windows
    rows = np.concatenate(passes)
    for got, want in zip(rows, want_rows):
        np.testing.assert_array_equal(got, want)
    assert not rows[len(want_rows):].any()                                   # the filler rows are zeros
    assert model.describe()["pass_rows"] == 4                                # the manifest records the shape


@pytest.mark.parametrize("stream", ["mulan", "melody"])
def test_a_row_does_not_depend_on_its_position_or_the_other_rows(stream):
    """At a fixed pass shape each row is computed on its own: a window's embedding is bit-equal at
    every position of the pass, among zeros or among other windows. (Across pass sizes it is not:
    that is why the passes have one size.)"""
    from tokenmill.tokenizers.melody_builtin import BuiltinMelody
    from tokenmill.tokenizers.mulan_builtin import BuiltinMulan

    model = BuiltinMulan(batch_size=8) if stream == "mulan" else BuiltinMelody(batch_size=8)
    rng = np.random.default_rng(3)
    n = model.window_s * 16_000 + 16_000 * 7
    rows = list(model._window_rows((0.1 * rng.standard_normal(n)).astype(np.float32)))  # 8 windows
    first = model._embed_rows(np.stack(rows))[0]
    for pos in range(8):
        among_zeros = np.zeros((8, *rows[0].shape), np.float32)
        among_zeros[pos] = rows[0]
        others = np.stack(rows[::-1])
        others[pos] = rows[0]
        np.testing.assert_array_equal(model._embed_rows(among_zeros)[pos], first)
        np.testing.assert_array_equal(model._embed_rows(others)[pos], first)


@pytest.mark.parametrize("stream", ["mulan", "melody"])
def test_sliced_log_mel_equals_each_windows_own_front_end(stream):
    """Window w's rows are frames [50 w, 50 w + F) of the segment's log-mel: equal (to float32
    rounding) to the log-mel of the window's own samples, which is what the model was trained on,
    for a short track (zero-padded), a whole-second track and one with a trailing fraction; and
    computing the segment's log-mel in small blocks gives the same rows."""
    from tokenmill.tokenizers.melody_builtin import BuiltinMelody
    from tokenmill.tokenizers.mulan_builtin import BuiltinMulan

    model = BuiltinMulan() if stream == "mulan" else BuiltinMelody()
    rng = np.random.default_rng(4)
    for seconds in (2.48, 13.0, 14.6):
        wave = (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
        rows = list(model._window_rows(wave))
        own = [model._logmel(w) for w in windowing.wave_window_rows(wave, 16_000, model.window_s, model.stride_s)]
        assert len(rows) == len(own) == rates.window_count(round(seconds / 0.04), model.window_s)
        for got, want in zip(rows, own):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        blocked = windowing.feature_window_rows(wave, model._logmel, sample_rate_hz=16_000, window_s=model.window_s,
                                                stride_s=model.stride_s, n_fft=model.cfg.n_fft, hop=model.cfg.hop,
                                                block_frames=37)
        for got, want in zip(blocked, rows):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_a_failing_segment_is_retried_alone_and_the_others_keep_their_bits(segments):
    """One bad segment (an empty wave) makes the batch call raise; the segments are then run one
    by one: the bad one becomes Failed, the others equal their results in a clean batch."""
    handler = MulanWindowHandler(MulanConfig(model="mulan", batch_size=16))
    model = handler.load_model()
    bad = SegmentInput(**{**vars(segments[3]), "waves": {16_000: np.zeros(0, np.float32)}})
    clean = handler_results(handler, model, segments[:3])
    got = handler_results(handler, model, [segments[0], bad, segments[1], segments[2]])
    assert isinstance(got[1], Failed) and "non-empty" in str(got[1].exc)
    for g, c in zip([got[0], got[2], got[3]], clean):
        np.testing.assert_array_equal(g, c)


def test_fixed_passes_pad_with_zero_rows_and_keep_order():
    """embed_fixed_batches against a hand-made model that records its inputs."""
    seen = []

    def embed(x):
        seen.append(x.copy())
        return np.stack([x.sum(axis=1), x[:, 0]], axis=1)
    rows = [np.full(3, float(i), np.float32) for i in range(1, 6)]
    out = windowing.embed_fixed_batches(iter(rows), embed, batch_size=2, dim=2)
    np.testing.assert_array_equal(out, [[3 * i, i] for i in range(1, 6)])
    assert [x.shape for x in seen] == [(2, 3)] * 3 and not seen[-1][1].any()
    assert windowing.embed_fixed_batches(iter([]), embed, batch_size=2, dim=2).shape == (0, 2)
    with pytest.raises(ValueError, match="expected"):
        windowing.embed_fixed_batches(iter(rows), lambda x: x, batch_size=2, dim=2)
