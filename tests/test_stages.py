"""Stage sequence layout: ids per stream and level, frame-major order, targets masked on
conditioning and padding, and the inverse mapping, against hand-written references."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokenmill.schemas import rates
from tokenmill.training.crops import PAD_ID_DEFAULT, Crop, CropConfig, CropError, StreamLayout
from tokenmill.training.stages import BOS, IGNORE, N_SPECIAL, PAD, StageLayout, stage_batch

BUILTIN = StreamLayout.builtin()
SMALL = CropConfig(semantic_s=0.4, coarse_s=0.12, fine_s=0.08)


def layout(stage, crop=SMALL):
    return StageLayout.build(stage, BUILTIN, crop, mulan_stages=12, mulan_vocab=1024)


def test_vocabulary_and_lengths_follow_the_manifest_numbers():
    # paper numbers: 12 x 1024 MuLan + 1024 semantic (+ BOS, PAD) = the 13,312 ids of the paper + 2
    assert layout("semantic").vocab_size == N_SPECIAL + 12 * 1024 + 1024
    assert layout("coarse").vocab_size == N_SPECIAL + 12 * 1024 + 1024 + 4 * 1024
    assert layout("fine").vocab_size == N_SPECIAL + 12 * 1024
    full = CropConfig()  # 30 / 10 / 3 s
    assert layout("semantic", full).sequence_length == 1 + 12 + 750
    assert layout("coarse", full).sequence_length == 1 + 12 + 250 + 4 * 500
    assert layout("fine", full).sequence_length == 1 + 4 * 150 + 8 * 150
    unconditioned = CropConfig(mulan_stages=())
    assert StageLayout.build("semantic", BUILTIN, unconditioned).vocab_size == N_SPECIAL + 1024


def test_coarse_sequence_by_hand():
    """A 0.12 s coarse crop: 3 semantic frames, 6 acoustic frames x 4 levels."""
    lay = layout("coarse")
    m = np.arange(12, dtype=np.uint16) * 10
    s = np.array([5, 6, PAD_ID_DEFAULT], np.uint16)
    c = (np.arange(4)[:, None] * 100 + np.arange(6)[None]).astype(np.uint16)
    c[:, 5] = PAD_ID_DEFAULT
    crop = Crop("k", "coarse", 0, 3, 2, s, c, None, m)
    seq = lay.crop_sequence(crop)
    off_m, off_s, off_c = N_SPECIAL, N_SPECIAL + 12 * 1024, N_SPECIAL + 13 * 1024
    want = [BOS] + [off_m + lv * 1024 + int(m[lv]) for lv in range(12)] + [off_s + 5, off_s + 6, PAD]
    for t in range(6):
        for lv in range(4):
            want.append(PAD if t == 5 else off_c + lv * 1024 + lv * 100 + t)
    assert seq.tolist() == want
    inputs, targets = lay.inputs_targets(seq)
    assert inputs.tolist() == want[:-1]
    n_cond = 1 + 12 + 3
    assert (targets[: n_cond - 1] == IGNORE).all()
    assert targets[n_cond - 1:].tolist() == [IGNORE if w == PAD else w for w in want[n_cond:]]
    # inverse: the target block back to [levels, frames]
    back = lay.target_tokens(np.array(want[n_cond:n_cond + 20]))
    assert np.array_equal(back, c[:, :5])


@given(stage=st.sampled_from(["semantic", "coarse", "fine"]), seed=st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_round_trip_and_allowed_blocks(stage, seed):
    rng = np.random.default_rng(seed)
    lay = layout(stage)
    n_s = rates.frames_for_quanta(SMALL.length_q(stage), BUILTIN.semantic)
    n_a = rates.frames_for_quanta(SMALL.length_q(stage), BUILTIN.acoustic)
    crop = Crop("k", stage, 0, SMALL.length_q(stage), SMALL.length_q(stage),
                rng.integers(0, 1024, n_s).astype(np.uint16),
                rng.integers(0, 1024, (4, n_a)).astype(np.uint16),
                rng.integers(0, 1024, (8, n_a)).astype(np.uint16),
                rng.integers(0, 1024, 12).astype(np.uint16))
    seq = lay.crop_sequence(crop)
    assert len(seq) == lay.sequence_length and seq[0] == BOS
    assert np.array_equal(lay.prefix(mulan=crop.mulan, semantic=crop.semantic, coarse=crop.coarse),
                          seq[: lay.prefix_length])
    tgt = seq[lay.prefix_length:]
    allowed = lay.allowed()
    assert all(allowed[j % lay.target.levels, i] for j, i in enumerate(tgt))
    want = {"semantic": crop.semantic, "coarse": crop.coarse, "fine": crop.fine}[stage]
    assert np.array_equal(lay.target_tokens(tgt), want)
    # blocks of different parts and levels never overlap, and none holds BOS or PAD
    seen = np.zeros(lay.vocab_size, int)
    for p in lay.parts:
        seen += lay.allowed(p).sum(axis=0)
    assert seen[:N_SPECIAL].sum() == 0 and (seen[N_SPECIAL:] == 1).all()


def test_json_round_trip_and_batches():
    lay = layout("fine")
    assert StageLayout.from_json(lay.to_json()) == lay
    seqs = [np.full(lay.sequence_length, BOS, np.int64), np.full(lay.sequence_length, PAD, np.int64)]
    x, y = stage_batch(lay, seqs)
    assert x.shape == y.shape == (2, lay.sequence_length - 1) and (y[1] == IGNORE).all()
    with pytest.raises(CropError, match="must all be"):
        stage_batch(lay, [seqs[0][:-1]])


def test_refuses_tokens_outside_the_vocabulary_and_missing_conditioning():
    lay = layout("semantic")
    bad = Crop("k", "semantic", 0, 10, 10, np.full(10, 1024, np.uint16), None, None, np.zeros(12, np.uint16))
    with pytest.raises(CropError, match="outside its vocabulary of 1024"):
        lay.crop_sequence(bad)
    with pytest.raises(CropError, match="conditioned on"):
        lay.prefix()
    with pytest.raises(CropError, match="conditioned on M"):
        StageLayout.build("coarse", BUILTIN, SMALL)  # no mulan stream in the manifest
