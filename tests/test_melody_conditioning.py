"""Melody conditioning plumbing, training nothing: hand-set melody tokens reach the semantic stage's
prefix at positions computed by hand, in training crops and in long-form generation from a hum;
a stage without melody keeps its layout; the window rule pads past a short track or hum."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenmill.schemas import rates
from tokenmill.schemas.records import TrackRecord
from tokenmill.tokenizers.melody_tokens import crop_tokens_padded, crop_window_count
from tokenmill.training.crops import CropConfig, StageCropper, StreamLayout, crop_at, melody_dropped
from tokenmill.training.generate import GenerateConfig, StageModel, run_stage
from tokenmill.training.melody_cond import Hum
from tokenmill.training.stages import BOS, PAD, StageLayout

S_MEL, K_MEL, S_MU, K_MU = 24, 512, 12, 1024
PAD_ID = 0xFFFF


def layout_with_melody(melody: bool = True) -> StreamLayout:
    base = StreamLayout.builtin()
    return StreamLayout(base.semantic, base.acoustic, base.n_q, base.coarse_levels, base.fine_levels,
                        base.semantic_vocab, base.acoustic_vocab, S_MEL if melody else 0, K_MEL if melody else 0)


def melody_tokens(n_windows: int) -> np.ndarray:
    """uint16 [W, 24]: token (w, s) = (7 w + 3 s) mod 512, different for every window and stage."""
    w, s = np.meshgrid(np.arange(n_windows), np.arange(S_MEL), indexing="ij")
    return ((7 * w + 3 * s) % K_MEL).astype(np.uint16)


def record(duration_s: int) -> TrackRecord:
    q = duration_s * rates.QUANTA_PER_S
    n_win = rates.melody_window_count(q)
    return TrackRecord(key="abc-0000", uri="x.wav", segment=0, start_s=0.0, duration_s=float(duration_s),
                       source_sample_rate=16_000, source_channels=1, split="train",
                       semantic=(np.arange(q) % 1024).astype(np.uint16),
                       mulan=np.arange(S_MU, dtype=np.uint16), mulan_windows=np.zeros((1, 4), np.float16),
                       melody_windows=np.zeros((n_win, 192), np.float16), melody=melody_tokens(n_win))


class FixedM:
    """An 'RVQ' whose code for any crop is 0..11, so M is known by hand."""

    def encode(self, x):
        return np.tile(np.arange(S_MU, dtype=np.uint16), (len(x), 1))


def expected_melody_ids(layout: StageLayout, tokens: np.ndarray, windows: list[int | None]) -> list[int]:
    """By hand: window-major, stage s of window i at offset + s * 512 + code; None = pad → PAD."""
    off = layout.part("melody").offset
    out = []
    for w in windows:
        for s in range(S_MEL):
            out.append(PAD if w is None else off + s * K_MEL + int(tokens[w, s]))
    return out


def test_melody_tokens_reach_the_semantic_prefix_at_hand_computed_positions():
    streams = layout_with_melody()
    cfg = CropConfig(semantic_s=10, melody_dropout=0)
    lay = StageLayout.build("semantic", streams, cfg, mulan_stages=S_MU, mulan_vocab=K_MU)
    assert [p.name for p in lay.parts] == ["mulan", "melody", "semantic"]
    assert (lay.part("melody").levels, lay.part("melody").frames) == (24, 3)
    assert lay.prefix_length == 1 + 12 + 72
    rec = record(20)  # 17 windows, starting at 0..16 s
    crop = crop_at(rec, "semantic", 2 * 25, streams, cfg, rvq=FixedM())  # [2, 12) s: windows at 2, 5, 8 s
    seq = lay.crop_sequence(crop)
    assert seq[0] == BOS
    mu = lay.part("mulan")
    assert seq[1:13].tolist() == [mu.offset + s * K_MU + s for s in range(S_MU)]
    assert seq[13:85].tolist() == expected_melody_ids(lay, rec.melody, [2, 5, 8])
    sem = lay.part("semantic")
    assert seq[85:].tolist() == [sem.offset + int(t) for t in rec.semantic[50:300]]
    inputs, targets = lay.inputs_targets(seq)
    assert (targets[:84] == -100).all() and (targets[84:] >= 0).all()  # melody is never a target


def test_crop_off_the_second_grid_and_a_padded_short_track():
    streams = layout_with_melody()
    cfg = CropConfig(semantic_s=10, melody_dropout=0)
    lay = StageLayout.build("semantic", streams, cfg, mulan_stages=S_MU, mulan_vocab=K_MU)
    rec = record(20)
    crop = crop_at(rec, "semantic", round(3.52 * 25), streams, cfg, rvq=FixedM())  # starts 3.52, 6.52, 9.52
    assert lay.crop_sequence(crop)[13:85].tolist() == expected_melody_ids(lay, rec.melody, [4, 7, 10])
    short = record(5)  # 2 windows (0, 1 s); a 10 s crop pads: positions at 0 s (real), 3 s (real), 6 s (past 5 s)
    crop = crop_at(short, "semantic", 0, streams, cfg, rvq=FixedM())
    assert crop.padded
    assert lay.crop_sequence(crop)[13:85].tolist() == expected_melody_ids(lay, short.melody, [0, 1, None])


def test_melody_dropout_pads_the_whole_condition_from_seed_epoch_index():
    streams = layout_with_melody()
    cfg = CropConfig(semantic_s=10, melody_dropout=0.5)
    cropper = StageCropper("semantic", streams, cfg, seed=3, rvq=FixedM())
    rec = record(20)
    dropped = [melody_dropped(3, 0, i, "semantic", 0.5) for i in range(40)]
    assert 5 < sum(dropped) < 35
    for i in range(40):
        crop = cropper(rec, epoch=0, index=i)
        assert (crop.melody == PAD_ID).all() == dropped[i]


def test_a_stage_without_melody_keeps_its_layout_and_old_layouts_load():
    for streams, cfg in ((layout_with_melody(False), CropConfig(semantic_s=10)),
                         (layout_with_melody(True), CropConfig(semantic_s=10, melody_stages=()))):
        lay = StageLayout.build("semantic", streams, cfg, mulan_stages=S_MU, mulan_vocab=K_MU)
        assert [p.name for p in lay.parts] == ["mulan", "semantic"]
        assert StageLayout.from_json(lay.to_json()) == lay
        crop = crop_at(record(20), "semantic", 0, streams, cfg, rvq=FixedM())
        assert len(lay.crop_sequence(crop)) == lay.sequence_length
    coarse = StageLayout.build("coarse", layout_with_melody(True), CropConfig(), mulan_stages=S_MU, mulan_vocab=K_MU)
    assert "melody" not in [p.name for p in coarse.parts]  # melody_stages default: semantic only


def test_crop_window_counts():
    assert [crop_window_count(s) for s in (3, 4, 9.96, 10, 30)] == [1, 1, 2, 3, 9]
    tok = melody_tokens(5)
    got = crop_tokens_padded(tok, 0, 10, 4, PAD_ID)  # 4 s real: positions at 0 and 3 s, then pad at 6 s
    np.testing.assert_array_equal(got, np.stack([tok[0], tok[3], np.full(S_MEL, PAD_ID)]))


class PromptRecorder:
    """A stand-in Transformer: records each prompt and generates the first allowed id."""

    def __init__(self):
        self.prompts = []

    def generate(self, prompt, n, *, temperature, top_k, generator, allowed):
        self.prompts.append(prompt.clone())
        first = int(torch.nonzero(allowed[0])[0])
        return torch.cat([prompt, torch.full((prompt.shape[0], n), first, dtype=prompt.dtype)], dim=1)


def test_long_form_generation_reads_the_hums_windows_per_window():
    streams = layout_with_melody()
    cfg = CropConfig(semantic_s=10, melody_dropout=0)
    lay = StageLayout.build("semantic", streams, cfg, mulan_stages=S_MU, mulan_vocab=K_MU)
    rec = PromptRecorder()
    sm = StageModel(rec, lay, {"stage": "semantic"}, "fake")
    hum = Hum(melody_tokens(13), 16 * 25, "hum.wav", {})  # a 16 s hum: windows at 0..12 s
    mulan = np.arange(S_MU, dtype=np.uint16)
    cond = {"mulan": mulan[None], "melody": hum.tokens[None], "melody_q": np.array([hum.quanta])}
    out, windows = run_stage(sm, streams, cond, GenerateConfig(seconds=20.0), 1)
    # 10 s windows at a 5 s stride over 20 s: starts 0, 5, 10 s; window positions at start + 0, 3, 6 s;
    # the third window's 6 s position (16 s) lies past the 16 s hum, so it is pad
    want = {0: [0, 3, 6], 5: [5, 8, 11], 10: [10, 12, None]}
    assert [w["start_s"] for w in windows] == [0.0, 5.0, 10.0]
    for p, w in zip(rec.prompts, windows):
        ids = p[0, 13:85].tolist()
        assert ids == expected_melody_ids(lay, hum.tokens, want[int(w["start_s"])])
        hand = [[PAD_ID] * S_MEL if i is None else hum.tokens[i].tolist() for i in want[int(w["start_s"])]]
        assert w["melody_tokens"] == hand  # what the sidecar records
    # without a hum the melody positions read PAD
    rec.prompts.clear()
    run_stage(sm, streams, {"mulan": mulan[None]}, GenerateConfig(seconds=10.0), 1)
    assert rec.prompts[0][0, 13:85].tolist() == [PAD] * 72


# ---- generate --melody end to end: hum file -> tokens -> prefix -> sidecar ---------------------------

MULAN_ID = "mulan-038c1bd9f9f5"


class FakeText:
    """A TextTokenizer stand-in: M_T = 0..11 with the dataset's MuLan codebook id."""

    def describe(self):
        return {"codebook_id": MULAN_ID, "model": {"name": "mulan", "weights_sha256": None}}

    def __call__(self, texts):
        return np.tile(np.arange(12, dtype=np.uint16), (len(texts), 1))


def test_generate_music_with_a_hum_records_its_melody_tokens(tmp_path):
    import json

    import soundfile

    from tokenmill.tokenizers import audio
    from tokenmill.tokenizers.codec import build_codec
    from tokenmill.tokenizers.melody import build_melody
    from tokenmill.tokenizers.melody_tokens import window_tokens
    from tokenmill.tokenizers.rvq import fit_rvq
    from tokenmill.training.generate import generate_music
    from tokenmill.training.model import Transformer, preset

    rng = np.random.default_rng(0)
    rvq = fit_rvq(rng.standard_normal((16, 192)).astype(np.float32), n_stages=2, k=4, seed=0, kind="melody")
    rvq.save(tmp_path / "cb")
    t = np.arange(int(5.2 * 16_000)) / 16_000
    soundfile.write(tmp_path / "hum.wav", 0.3 * np.sin(2 * np.pi * 440 * t) * (t % 1 < 0.6), 16_000)
    ds = {"codebooks": {"mulan": MULAN_ID, "semantic": "semantic-0123456789ab", "melody": rvq.id},
          "tokenizers": {"acoustic": {"name": "soundstream", "weights_sha256": "none", "sample_rate_hz": 24000,
                                      "hop_samples": 480},
                         "melody": {"codebook_id": rvq.id, "model": {"name": "basic-pitch"}}},
          "streams": {"semantic": {"sample_rate_hz": 16000, "hop_samples": 640, "vocab_size": 16},
                      "acoustic": {"sample_rate_hz": 24000, "hop_samples": 480, "n_q": 12, "vocab_size": 1024,
                                   "coarse_levels": [1, 2, 3, 4], "fine_levels": list(range(5, 13))},
                      "mulan": {"n_stages": 12, "vocab_size": 1024},
                      "melody": {"n_stages": 2, "vocab_size": 4}},
          "job": {"acoustic": {"codec": "soundstream", "codec_config": []},
                  "melody": {"model": "basic-pitch", "path": None, "codebook": str(tmp_path / "cb")}}}
    crop = CropConfig(semantic_s=4.0, coarse_s=0.2, fine_s=0.12)
    stages = {}
    for stage in ("semantic", "coarse", "fine"):
        lay = StageLayout.from_manifest(stage, ds, crop)
        torch.manual_seed(0)
        model = Transformer(preset("tiny", lay.vocab_size, n_layers=1, n_heads=2, d_model=32, d_ff=64)).eval()
        stages[stage] = StageModel(PromptRecorder() if stage == "semantic" else model, lay,
                                   {"stage": stage, "layout": lay.to_json(), "dataset": ds}, f"<{stage}>")
    assert stages["semantic"].layout.part("melody").frames == 1  # a 4 s window holds one melody window
    music = generate_music("a tune", stages, GenerateConfig(seconds=0.4), tmp_path / "out.wav", tokenizer=FakeText(),
                           codec=build_codec("soundstream"), melody=str(tmp_path / "hum.wav"))
    seg = audio.prepare((tmp_path / "hum.wav").read_bytes(), "h", audio.AudioConfig(target_rates_hz=(16_000,)))[0]
    want = window_tokens(build_melody("basic-pitch").embed_windows(seg.waves[16_000]).astype(np.float16), rvq)
    side = json.loads((tmp_path / "out.json").read_text())
    assert side == json.loads(json.dumps(music.sidecar))
    assert side["melody"]["hum_window_tokens"] == want.tolist() and side["melody"]["codebook_id"] == rvq.id
    assert [w["melody_tokens"] for w in side["melody"]["per_window"]] == [[want[0].tolist()]]
    lay = stages["semantic"].layout
    prompt = stages["semantic"].model.prompts[0][0]
    off = lay.part("melody").offset
    assert prompt[13:15].tolist() == [off + s * 4 + int(want[0, s]) for s in range(2)]


def test_memorization_prompts_carry_the_crops_melody_tokens():
    from tokenmill.eval.memorization import Example, prompts_of

    streams = layout_with_melody()
    cfg = CropConfig(semantic_s=10, melody_dropout=0)
    lay = StageLayout.build("semantic", streams, cfg, mulan_stages=S_MU, mulan_vocab=K_MU)
    rec = record(20)
    crop = crop_at(rec, "semantic", 2 * 25, streams, cfg, rvq=FixedM())
    ex = Example(0, rec.key, rec.uri, 50, crop.mulan, crop.semantic, crop.melody)
    (p,) = prompts_of(ex, lay, (25,), 25)
    assert p.ids[:85].tolist() == lay.crop_sequence(crop)[:85].tolist()
    assert p.ids[13:85].tolist() == expected_melody_ids(lay, rec.melody, [2, 5, 8])
