"""Per-stage crops: every stream covers the same [t0, t1), M matches a direct computation, and
crops are a function of (seed, epoch, index) only."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokenmill.schemas import rates
from tokenmill.schemas.records import TrackRecord
from tokenmill.tokenizers.rvq import RVQCodebook
from tokenmill.training.crops import (
    PAD_ID_DEFAULT, STAGES, CropConfig, CropError, StageCropper, StreamLayout, crop_at, start_quantum,
)

BUILTIN = StreamLayout.builtin()


def manifest_streams(hop_a=320, n_q=8, coarse=(1, 2, 3, 4), fine=(5, 6, 7, 8), sr_a=24_000):
    """The `streams` part of a manifest for a 24 kHz codec (hop 320 = EnCodec's 75 Hz)."""
    return {"streams": {
        "semantic": {"sample_rate_hz": 16_000, "hop_samples": 640, "vocab_size": 1024},
        "acoustic": {"sample_rate_hz": sr_a, "hop_samples": hop_a, "n_q": n_q, "codebook_size": 1024,
                     "vocab_size": 1024, "coarse_levels": list(coarse), "fine_levels": list(fine)}}}


ENCODEC = StreamLayout.from_manifest(manifest_streams())


def make_record(total_q, layout, level_coded=False, windows=None):
    """A record whose token at frame f is f (so a crop shows which frames it took); with
    `level_coded`, acoustic level k (0-based) holds 1000·k + f % 1000."""
    t_s = rates.frames_for_quanta(total_q, layout.semantic)
    t_a = rates.frames_for_quanta(total_q, layout.acoustic)
    frames = np.arange(t_a, dtype=np.int64)
    acoustic = np.tile(frames, (layout.n_q, 1))
    if level_coded:
        acoustic = 1000 * np.arange(layout.n_q)[:, None] + acoustic % 1000
    return TrackRecord(key="0123456789abcdef-0000", uri="mem://t.wav", segment=0, start_s=0.0,
                       duration_s=total_q * 0.04, source_sample_rate=48_000, source_channels=1, split="train",
                       semantic=np.arange(t_s, dtype=np.uint16), acoustic=acoustic.astype(np.uint16),
                       mulan_windows=windows)


def _real_span(tokens, rate_hz):
    """(t0, t1) in seconds of the frame-index-coded tokens before the padding, checking they are
    consecutive frames followed only by padding."""
    tokens = np.asarray(tokens, dtype=np.int64)
    real = tokens[tokens != PAD_ID_DEFAULT]
    assert (tokens[real.size:] == PAD_ID_DEFAULT).all()
    assert real.size and (np.diff(real) == 1).all()
    return Fraction(int(real[0])) / rate_hz, Fraction(int(real[-1]) + 1) / rate_hz


@given(total_q=st.integers(1, 400 * 25), length_q=st.integers(1, 60 * 25), stage=st.sampled_from(STAGES),
       layout=st.sampled_from([BUILTIN, ENCODEC]), seed=st.integers(0, 2**32), epoch=st.integers(0, 1000),
       index=st.integers(0, 10**6))
@settings(max_examples=200, deadline=None)
def test_every_stream_of_a_crop_covers_exactly_the_same_time_span(total_q, length_q, stage, layout, seed,
                                                                  epoch, index):
    cfg = CropConfig(**{f"{stage}_s": Fraction(length_q, 25)}, mulan_stages=())
    crop = StageCropper(stage, layout, cfg, seed=seed)(make_record(total_q, layout), epoch=epoch, index=index)
    valid_q = min(length_q, total_q)
    assert crop.valid_q == valid_q and 0 <= crop.q0 <= total_q - valid_q
    assert crop.padded == (total_q < length_q)
    t0, t1 = Fraction(crop.q0, 25), Fraction(crop.q0 + valid_q, 25)
    assert (crop.t0_s, crop.t1_s) == (t0, t1)
    sem_hz, ac_hz = layout.semantic.frame_rate_hz, layout.acoustic.frame_rate_hz
    spans = []
    if crop.semantic is not None:
        assert crop.semantic.dtype == np.uint16 and crop.semantic.shape == (length_q * sem_hz / 25,)
        spans.append(_real_span(crop.semantic, sem_hz))
    for part in (crop.coarse, crop.fine):
        if part is not None:
            assert part.dtype == np.uint16 and part.shape[1] == length_q * ac_hz / 25
            spans += [_real_span(row, ac_hz) for row in part]
    assert spans and all(s == (t0, t1) for s in spans)
    if crop.semantic is not None and crop.coarse is not None and layout is BUILTIN:
        assert crop.coarse.shape[1] == 2 * crop.semantic.shape[0]  # T_a = 2·T_s at 50/25 Hz
    if layout is ENCODEC and crop.coarse is not None:
        assert crop.coarse.shape[1] == 3 * length_q  # 75 Hz: 3 frames per 40 ms


def test_stages_take_their_streams_and_the_manifest_levels():
    layout = StreamLayout.from_manifest(manifest_streams(coarse=(1, 2), fine=(3, 4, 5, 6, 7, 8)))
    rec = make_record(20 * 25, layout, level_coded=True)
    cfg = CropConfig(mulan_stages=())
    fine = crop_at(rec, "fine", 5 * 25, layout, cfg)
    assert fine.semantic is None and fine.mulan is None
    assert fine.coarse.shape == (2, 3 * 75) and fine.fine.shape == (6, 3 * 75)
    assert (fine.coarse[:, 0] == [0 * 1000 + 375, 1000 + 375]).all()  # levels 1-2 at frame 5 s · 75 Hz
    assert (fine.fine[:, 0] // 1000 == [2, 3, 4, 5, 6, 7]).all()
    coarse = crop_at(rec, "coarse", 0, layout, cfg)
    assert coarse.fine is None and coarse.coarse.shape == (2, 750) and coarse.semantic.shape == (250,)
    sem = crop_at(rec, "semantic", 0, layout, cfg)
    assert sem.coarse is None and sem.fine is None
    # the built-in split: levels 1-4 coarse, 5-12 fine
    assert BUILTIN.coarse_levels == (1, 2, 3, 4) and BUILTIN.fine_levels == tuple(range(5, 13))
    over = StreamLayout.from_manifest(manifest_streams(), coarse_levels=(1, 2, 3), fine_levels=(4, 5))
    assert over.coarse_levels == (1, 2, 3) and over.fine_levels == (4, 5)


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _greedy_rvq(x, codebooks):
    """Brute-force greedy RVQ of one vector: per stage the nearest entry to the residual."""
    res, codes = np.asarray(x, dtype=np.float64), []
    for cb in codebooks.astype(np.float64):
        i = int(np.argmin(((res[None] - cb) ** 2).sum(axis=1)))
        codes.append(i)
        res = res - cb[i]
    return np.array(codes)


def test_crop_mulan_tokens_equal_a_direct_computation():
    rng = np.random.default_rng(7)
    d, total_s = 4, 45
    windows = _unit(rng.normal(size=(rates.mulan_window_count(total_s * 25), d))).astype(np.float16)  # [36, 4]
    codebooks = rng.normal(size=(3, 8, d)).astype(np.float32)
    codebooks[1:] *= 0.3
    rvq = RVQCodebook(codebooks, card={})
    rec = make_record(total_s * 25, BUILTIN, windows=windows)

    def direct(rows):
        return _greedy_rvq(_unit(windows[rows].astype(np.float64).mean(axis=0)).astype(np.float32), codebooks)

    # semantic stage, 30 s crop [7, 37) s: the 21 windows lying inside it, w = 7..27
    crop = crop_at(rec, "semantic", 7 * 25, BUILTIN, CropConfig(), rvq)
    assert crop.mulan.dtype == np.uint16 and (crop.mulan == direct(slice(7, 28))).all()
    # coarse stage, 10 s crop [12, 22) s: window 12 alone
    crop = crop_at(rec, "coarse", 12 * 25, BUILTIN, CropConfig(), rvq)
    assert (crop.mulan == direct(slice(12, 13))).all()
    # a 12 s track padded to a 30 s crop: M of [0, 12) s, its three windows
    short = make_record(12 * 25, BUILTIN, windows=windows[:3])
    crop = StageCropper("semantic", BUILTIN, CropConfig(), seed=0, rvq=rvq)(short, epoch=0, index=0)
    assert crop.padded and crop.t1_s == 12 and (crop.mulan == direct(slice(0, 3))).all()
    # the fine stage is not conditioned on M by default
    assert crop_at(rec, "fine", 0, BUILTIN, CropConfig(), rvq).mulan is None


def test_crops_are_a_function_of_seed_epoch_and_index():
    rec = make_record(200 * 25, BUILTIN)
    cfg = CropConfig(mulan_stages=())
    a = StageCropper("coarse", BUILTIN, cfg, seed=3)
    b = StageCropper("coarse", BUILTIN, cfg, seed=3)
    forward = [a(rec, epoch=1, index=i) for i in range(20)]
    backward = [b(rec, epoch=1, index=i) for i in reversed(range(20))][::-1]  # other call order
    for x, y in zip(forward, backward):
        assert x.q0 == y.q0 and (x.semantic == y.semantic).all() and (x.coarse == y.coarse).all()
    starts = [c.q0 for c in forward]
    assert len(set(starts)) > 15  # indices draw different crops
    assert [start_quantum(5000, 250, 3, 2, i, "coarse") for i in range(20)] != starts  # new epoch
    assert [start_quantum(5000, 250, 4, 1, i, "coarse") for i in range(20)] != starts  # new seed
    assert [start_quantum(5000, 250, 3, 1, i, "fine") for i in range(20)] != starts  # stages independent
    # uniform over all grid positions, both ends reachable
    draws = [start_quantum(10, 8, 0, 0, i, "fine") for i in range(200)]
    assert set(draws) == {0, 1, 2}


def test_short_track_policies_are_counted():
    short, exact, long = (make_record(q, BUILTIN) for q in (4 * 25, 10 * 25, 30 * 25))
    pad = StageCropper("coarse", BUILTIN, CropConfig(mulan_stages=()), seed=0)
    crops = [pad(r, epoch=0, index=i) for i, r in enumerate((short, exact, long))]
    assert pad.counts == {"records": 3, "cropped": 2, "padded": 1, "skipped": 0}
    assert crops[0].valid_q == 100 and crops[0].length_q == 250 and (crops[0].semantic[100:] == 0xFFFF).all()
    assert crops[1].q0 == 0 and not crops[1].padded
    skip = StageCropper("coarse", BUILTIN, CropConfig(short_tracks="skip", mulan_stages=()), seed=0)
    assert skip(short, epoch=0, index=0) is None and skip(exact, epoch=0, index=1) is not None
    assert skip.counts == {"records": 2, "cropped": 1, "padded": 0, "skipped": 1}


def test_bad_configs_and_records_get_fix_it_messages():
    with pytest.raises(ValueError, match="40 ms grid"):
        CropConfig(fine_s=3.01)
    with pytest.raises(CropError, match="short_tracks"):
        CropConfig(short_tracks="loop")
    with pytest.raises(CropError, match="pad_id >= 1024"):
        StageCropper("fine", BUILTIN, CropConfig(pad_id=0), seed=0)
    with pytest.raises(CropError, match="pass rvq="):
        StageCropper("semantic", BUILTIN, CropConfig(), seed=0)
    with pytest.raises(ValueError, match="not a multiple of 25 Hz"):  # Mimi-like 12.5 Hz
        StreamLayout.from_manifest(manifest_streams(hop_a=1920))
    with pytest.raises(CropError, match="overlap"):
        StreamLayout.from_manifest(manifest_streams(), coarse_levels=(1, 2), fine_levels=(2, 3))
    with pytest.raises(CropError, match="no acoustic stream"):
        StreamLayout.from_manifest({"streams": {"semantic": {}}})
    # a 50 Hz dataset read with a 75 Hz manifest layout: the shapes disagree
    with pytest.raises(CropError, match="do not match"):
        crop_at(make_record(20 * 25, BUILTIN), "fine", 0, ENCODEC, CropConfig())
