"""Text → music generation (training/generate.py): seeded determinism down to the WAV bytes,
ids inside their level blocks, the long-form window arithmetic, a greedy reference chain, the CLI.

Checkpoints are tiny random Transformers saved with save_checkpoint; their "dataset" is a
hand-written manifest excerpt (the packaged MuLan RVQ id and the built-in SoundStream codec, as
in a real tokenize run). Stage windows are tiny (0.4 s / 0.2 s / 0.12 s) so that one second
already takes several windows per stage.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile
import torch

from conftest import transition_transformer
from tokenmill.training.generate import (
    GenerateConfig,
    GenerateError,
    StageModel,
    acoustic_codes,
    check_stages,
    generate_music,
    generate_tokens,
    window_plan,
)
from tokenmill.training.model import Transformer
from tokenmill.training.stages import PAD, StageLayout

pytestmark = pytest.mark.usefixtures("torch_one_thread")

from helpers import GEN_MULAN_ID as MULAN_ID
from helpers import GEN_MULAN_SHA as MULAN_SHA
from helpers import GEN_STAGES as STAGES
from helpers import generate_dataset as dataset
from helpers import make_stages, save_stages

@pytest.fixture(scope="module")
def codec():
    from tokenmill.tokenizers.codec import build_codec

    return build_codec("soundstream")


class FakeText:
    """A TextTokenizer stand-in (the real one loads MiniLM: the CLI test uses it)."""

    def __init__(self, codebook_id=MULAN_ID, n_stages=12, k=1024):
        self.codebook_id, self.n_stages, self.k = codebook_id, n_stages, k

    def describe(self):
        return {"codebook_id": self.codebook_id, "model": {"name": "mulan", "weights_sha256": MULAN_SHA}}

    def __call__(self, texts):
        return (np.arange(len(texts) * self.n_stages).reshape(len(texts), -1) * 37 % self.k).astype(np.uint16)


class Recorder:
    """Wraps a model's generate and records (prompt, returned ids) of every window."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def generate(self, prompt, n_new, **kw):
        ids = self.model.generate(prompt, n_new, **kw)
        self.calls.append((prompt.numpy().copy(), ids.numpy().copy()))
        return ids


class StubModel:
    """Draws allowed ids at random (its own rng) and records prompts: for the window arithmetic."""

    def __init__(self, seed):
        self.rng, self.calls = np.random.default_rng(seed), []

    def generate(self, prompt, n_new, *, allowed, **kw):
        rows = allowed.numpy()
        new = np.stack([self.rng.choice(np.flatnonzero(rows[j % len(rows)]), size=prompt.shape[0])
                        for j in range(n_new)], axis=1).reshape(prompt.shape[0], n_new)
        self.calls.append((prompt.numpy().copy(), new))
        return torch.cat([prompt, torch.from_numpy(new.astype(np.int64))], dim=1)


# ---- determinism ----------------------------------------------------------------------------

def test_same_seed_gives_same_tokens_and_wav_bytes_other_seed_differs(tmp_path, codec):
    ds = dataset(codec.describe())
    stages = make_stages(ds)
    cfg = GenerateConfig(seconds=0.48, batch=2, seed=3)
    runs, wavs = [], []
    for name in ("a", "b"):
        runs.append(generate_music("a calm piano piece", stages, cfg, tmp_path / f"{name}.wav", tokenizer=FakeText(),
                                   codec=codec))
        wavs.append([(tmp_path / f"{name}-{i}.wav").read_bytes() for i in range(2)])
        assert runs[-1].sidecar["wavs"] == [str(tmp_path / f"{name}-{i}.wav") for i in range(2)]
    assert wavs[0] == wavs[1]  # identical WAV bytes
    a, b = runs[0].tokens, runs[1].tokens
    c = generate_tokens(stages, a.mulan, GenerateConfig(seconds=0.48, batch=2, seed=4))
    for s in STAGES:
        assert np.array_equal(getattr(a, s), getattr(b, s))
        assert not np.array_equal(getattr(a, s), getattr(c, s))
    assert [w["seed"] for w in a.windows["coarse"]] != [w["seed"] for w in c.windows["coarse"]]
    assert not np.array_equal(a.coarse[0], a.coarse[1])  # the two batch items are different samples
    assert wavs[0][0] != wavs[0][1]
    wave, sr = soundfile.read(io.BytesIO(wavs[0][0]), dtype="float32")
    assert sr == 24000 and wave.shape == (int(0.48 * 24000),) and np.abs(wave).max() > 0
    # the WAV is the codec's decode of the generated levels (coarse 1-4 then fine 5-12), as PCM_16
    codes = np.concatenate([a.coarse[0], a.fine[0]])
    assert np.abs(wave - np.clip(codec.decode(codes), -1, 1)).max() <= 1 / 32768 + 1e-6
    side = json.loads((tmp_path / "a.json").read_text())
    assert side["text"] == "a calm piano piece" and side["seed"] == 3
    assert side["mulan_tokens"] == FakeText()(["x"])[0].tolist() == a.mulan.tolist()
    assert side["semantic_tokens"] == a.semantic.tolist() and np.array(side["semantic_tokens"]).shape == (2, 12)
    assert side["shapes"] == {"mulan": [12], "semantic": [2, 12], "coarse": [2, 4, 24], "fine": [2, 8, 24],
                              "codes": [2, 12, 24]}
    assert side["checkpoints"]["coarse"]["path"] == "<coarse>"
    assert side["effective"]["fine"] == {"temperature": 0.4, "top_k": None}
    assert [w["seed"] for w in side["windows"]["fine"]] == [w["seed"] for w in a.windows["fine"]]


# ---- ids in their blocks ---------------------------------------------------------------------

def test_every_generated_id_lies_in_its_level_block_and_decodes_to_the_stored_token():
    ds = dataset(sem_vocab=16, ac_vocab=64, n_q=6, n_coarse=2, mulan=(3, 8))
    stages = make_stages(ds, seed=5, wrap=Recorder)
    gen = generate_tokens(stages, np.array([1, 7, 3], np.uint16), GenerateConfig(seconds=0.4, seed=1))
    outs = {"semantic": gen.semantic[:, None], "coarse": gen.coarse, "fine": gen.fine}
    for stage, sm in stages.items():
        tgt = sm.layout.target
        assert tgt.levels == {"semantic": 1, "coarse": 2, "fine": 4}[stage]
        for (prompt, ids), win in zip(sm.model.calls, gen.windows[stage]):
            new = ids[0, prompt.shape[1]:]
            assert len(new) == win["new_frames"] * tgt.levels
            level = np.arange(len(new)) % tgt.levels
            lo = tgt.offset + level * tgt.vocab  # level l's block: [offset + l·vocab, offset + (l+1)·vocab)
            assert ((new >= lo) & (new < lo + tgt.vocab)).all()
            f0 = round(win["start_s"] * {"semantic": 25, "coarse": 50, "fine": 50}[stage]) + win["prompt_frames"]
            stored = outs[stage][0][:, f0:f0 + win["new_frames"]]
            assert np.array_equal(stored.T.reshape(-1), new - lo)  # frame-major: id j is frame j // L, level j % L
    codes = acoustic_codes(gen.coarse, gen.fine, check_stages(stages))
    assert np.array_equal(codes[:, :2], gen.coarse) and np.array_equal(codes[:, 2:], gen.fine)


# ---- long-form window arithmetic -------------------------------------------------------------

def test_window_plan_by_hand():
    as_tuples = lambda plan: [(w.start_q, w.prompt_end_q, w.end_q) for w in plan]
    # the paper: 60 s semantic, 30 s windows, 15 s stride
    assert as_tuples(window_plan(1500, 750, 375)) == [(0, 0, 750), (375, 750, 1125), (750, 1125, 1500)]
    # the last window moves back to end at N (a longer prompt, nothing padded)
    assert as_tuples(window_plan(27, 10, 5)) == [(0, 0, 10), (5, 10, 15), (10, 15, 20), (15, 20, 25), (17, 25, 27)]
    assert as_tuples(window_plan(7, 10, 5)) == [(0, 0, 7)]  # shorter than a window
    assert as_tuples(window_plan(9, 3, 3)) == [(0, 0, 3), (3, 3, 6), (6, 6, 9)]  # stride = window: no prompt


@pytest.mark.parametrize("hop", [480, 320])  # 50 Hz SoundStream; 75 Hz (EnCodec-like): 3 frames per quantum
def test_long_form_prompts_are_the_previous_windows_tail_and_lengths_are_exact(hop):
    ds = dataset(sem_vocab=50, ac_vocab=64, n_q=4, n_coarse=2, hop=hop, mulan=(3, 8))
    stages = make_stages(ds)
    stages = {s: StageModel(StubModel(i), sm.layout, sm.state, sm.path) for i, (s, sm) in enumerate(stages.items())}
    cfg = GenerateConfig(seconds=1.08, batch=2, seed=0)  # 27 quanta
    gen = generate_tokens(stages, np.array([5, 6, 7], np.uint16), cfg)
    afpq = 24000 // hop // 25  # acoustic frames per 40 ms quantum
    assert gen.semantic.shape == (2, 27) and gen.coarse.shape == (2, 2, 27 * afpq) and gen.fine.shape == (2, 2, 27 * afpq)
    n_windows = {"semantic": 5, "coarse": 1 + 11, "fine": 1 + 24}  # W = 10, 5, 3 quanta; S = 5, 2, 1
    for stage, sm in stages.items():
        calls, layout = sm.model.calls, sm.layout
        assert len(calls) == n_windows[stage] == len(gen.windows[stage])
        pre = layout.prefix_length
        full_prev = None
        for (prompt, new), win in zip(calls, gen.windows[stage]):
            targets = prompt[:, pre:]
            if win["index"] == 0:
                assert targets.shape[1] == 0
            else:
                assert targets.shape[1] > 0
                assert np.array_equal(targets, full_prev[:, -targets.shape[1]:])  # the previous window's tail
            full_prev = np.concatenate([targets, new], axis=1)
            assert full_prev.shape[1] == layout.target.length  # every window spans W quanta (N > W)
        # the coarse stage's conditioning of a window: S of the window's own span
        if stage == "coarse":
            sem = layout.part("semantic")
            for (prompt, _), win in zip(calls, gen.windows[stage]):
                s0 = round(win["start_s"] * 25)
                cond = prompt[:, 1 + 3: 1 + 3 + sem.frames]
                assert np.array_equal(cond - sem.offset, gen.semantic[:, s0:s0 + sem.frames])
        if stage == "fine":
            co = layout.part("coarse")
            for (prompt, _), win in zip(calls, gen.windows[stage]):
                a0 = round(win["start_s"] * 25) * afpq
                ids = prompt[:, 1:1 + co.length].reshape(2, co.frames, co.levels)
                codes = ids - co.offset - np.arange(co.levels) * co.vocab
                assert np.array_equal(codes.transpose(0, 2, 1), gen.coarse[:, :, a0:a0 + co.frames])


def test_short_output_pads_the_conditioning_past_its_end():
    ds = dataset(sem_vocab=50, ac_vocab=64, n_q=4, n_coarse=2, mulan=(3, 8))
    stages = {s: StageModel(StubModel(i), sm.layout, sm.state, sm.path)
              for i, (s, sm) in enumerate(make_stages(ds).items())}
    gen = generate_tokens(stages, np.array([5, 6, 7], np.uint16), GenerateConfig(seconds=0.12))  # 3 of 5 quanta
    (prompt, new), = stages["coarse"].model.calls
    sem = stages["coarse"].layout.part("semantic")  # 5 frames: 3 real, 2 padded
    cond = prompt[0, 4:4 + sem.frames]
    assert np.array_equal(cond[:3] - sem.offset, gen.semantic[0]) and (cond[3:] == PAD).all()
    assert new.shape == (1, 6 * 2) and gen.fine.shape == (1, 2, 6)


# ---- a greedy reference ------------------------------------------------------------------------

def chain_model(layout: StageLayout) -> Transformer:
    """Blocks add nothing, embeddings are one-hot, so logits = sqrt(d) · head[:, last id]: the head
    is a transition table. A target id (level l, code c) is followed by (level l+1 mod L, code
    c+1 mod vocab); anything else (BOS, PAD, conditioning) by level 0, code 0."""
    tgt = layout.target
    v = layout.vocab_size
    nxt = np.full(v, tgt.offset)
    for lv in range(tgt.levels):
        for c in range(tgt.vocab):
            nxt[tgt.offset + lv * tgt.vocab + c] = tgt.offset + (lv + 1) % tgt.levels * tgt.vocab + (c + 1) % tgt.vocab
    return transition_transformer(nxt, 32)


def test_greedy_on_a_transition_table_model_gives_the_hand_computed_sequence():
    ds = dataset(sem_vocab=4, ac_vocab=4, n_q=4, n_coarse=2, mulan=(2, 4))
    stages = {s: StageModel(chain_model(sm.layout), sm.layout, sm.state, sm.path) for s, sm in make_stages(ds).items()}
    assert max(sm.layout.vocab_size for sm in stages.values()) <= 32  # one-hot embeddings fit d_model
    cfg = GenerateConfig(seconds=1.0, temperature_semantic=0, temperature_coarse=0, temperature_fine=0)
    gen = generate_tokens(stages, np.array([1, 2], np.uint16), cfg)
    t = np.arange(25)
    assert np.array_equal(gen.semantic[0], t % 4)
    ta = np.arange(50)
    want = (ta[None] * 2 + np.arange(2)[:, None]) % 4  # frame t, level l: code (t·L + l) mod vocab
    assert np.array_equal(gen.coarse[0], want) and np.array_equal(gen.fine[0], want)
    assert len(gen.windows["fine"]) == 23  # many windows, and the chain runs on across them


# ---- consistency checks and the CLI ---------------------------------------------------------

def test_text_codebook_and_stage_mismatches_are_refused(tmp_path, codec):
    ds = dataset(codec.describe())
    stages = make_stages(ds)
    with pytest.raises(GenerateError, match="mulan-ffffffffffff.*trained on mulan-038c1bd9f9f5 tokens"):
        generate_music("x", stages, GenerateConfig(seconds=0.2), tmp_path / "x.wav",
                       tokenizer=FakeText("mulan-ffffffffffff"), codec=codec)
    swapped = dict(stages, coarse=stages["fine"])
    with pytest.raises(GenerateError, match="given as the coarse stage .* is a fine stage checkpoint"):
        check_stages(swapped)
    with pytest.raises(GenerateError, match="must name a .wav"):
        generate_music("x", stages, GenerateConfig(seconds=0.2), tmp_path / "x.mp3", tokenizer=FakeText(), codec=codec)
    with pytest.raises(GenerateError, match="40 ms grid"):
        GenerateConfig(seconds=0.05)


def test_cli_writes_a_wav_of_the_expected_length_and_refuses_mismatched_checkpoints(tmp_path, codec, capsys):
    import beam_runner

    root = save_stages(tmp_path / "ckpt", dataset(codec.describe()))
    out = tmp_path / "out" / "x.wav"
    assert beam_runner.main(["generate", "--text", "a calm piano piece", "--checkpoints", str(root),
                             "--out", str(out), "--seconds", "0.48", "--seed", "2", "--top_k", "50", "--top_k_fine", "5",
                             "--torch_threads", "1"]) == 0
    wave, sr = soundfile.read(out, dtype="float32")
    assert sr == 24000 and wave.shape == (int(0.48 * 24000),)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["checkpoints"]["fine"]["step"] == 9 and side["effective"]["coarse"] == {"temperature": 0.95,
                                                                                         "top_k": 50}
    assert side["effective"]["fine"] == {"temperature": 0.4, "top_k": 5}
    assert len(side["mulan_tokens"]) == 12 and side["codebooks"]["mulan"] == MULAN_ID
    assert "x.wav: 0.48 s at 24000 Hz" in capsys.readouterr().out

    other = dataset(codec.describe(), codebooks={"mulan": MULAN_ID, "semantic": "semantic-ba9876543210"})
    save_stages(tmp_path / "other", other)
    with pytest.raises(SystemExit, match="different codebooks .*semantic"):
        beam_runner.main(["generate", "--text", "x", "--checkpoints", str(root), "--fine",
                          str(tmp_path / "other" / "fine"), "--out", str(out)])
    with pytest.raises(SystemExit, match="is a fine stage checkpoint"):
        beam_runner.main(["generate", "--text", "x", "--checkpoints", str(root), "--coarse",
                          str(root / "fine"), "--out", str(out)])
    with pytest.raises(SystemExit, match="no semantic checkpoint"):
        beam_runner.main(["generate", "--text", "x", "--out", str(out)])


def test_decode_and_generate_rebuild_the_codec_through_one_weights_check(codec):
    """codec.rebuild_codec serves `decode` and `generate`: it builds the job's codec and refuses
    weights other than the ones the tokens were made with, naming both hashes and the flag."""
    from tokenmill.tokenizers.codec import CodecError, rebuild_codec

    job = {"codec": "soundstream", "codec_config": []}
    desc = codec.describe()
    assert rebuild_codec(job, desc).weights_sha256 == desc["weights_sha256"]
    with pytest.raises(CodecError, match=r"differ from those the dataset was tokenized with \(0000.*--acoustic_model"):
        rebuild_codec(job, {**desc, "weights_sha256": "0" * 64})
    with pytest.raises(CodecError, match="records no acoustic codec"):
        rebuild_codec(None, desc)
