"""`beam_runner.py memorization` end to end on hand-made datasets (schema writers, no tokenize).

Semantic vocabulary 512, a 3-stage × 4-entry MuLan RVQ on 4-d windows, 2 s semantic crops. Half
the records count up (semantic[f] = (b + f) mod 512, b 80 apart, so no two records share a window
and every negative pair has a cost above 0), half are random. Two checkpoints:

* a transition-table model (hand-set weights: code c is followed by c + 1, anything else by 0),
  whose greedy continuations are known by hand: an exact copy for every T >= 1 of a counting
  record, and at T = 0 only when the crop starts on code 0;
* a tiny stage trained for a few steps (the demo's kind of checkpoint), read over HTTP, whose
  matches must equal a direct unbatched greedy loop outside Beam.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import serve, transition_transformer, write_token_dataset

import beam_runner
from tokenmill.eval import memorization as mem
from tokenmill.schemas.records import TrackRecord, make_key
from tokenmill.tokenizers.kmeans import Codebook
from tokenmill.tokenizers.rvq import RVQCodebook
from tokenmill.training.checkpoint import load_model, save_checkpoint
from tokenmill.training.crops import CropConfig, StreamLayout, crop_at
from tokenmill.training.model import Transformer
from tokenmill.training.stages import StageLayout

pytestmark = pytest.mark.usefixtures("torch_one_thread")
V = 512
STREAMS = {
    "semantic": {"sample_rate_hz": 16000, "hop_samples": 640, "frame_rate_hz": 25.0, "vocab_size": V},
    "acoustic": {"sample_rate_hz": 24000, "hop_samples": 480, "frame_rate_hz": 50.0, "n_q": 4,
                 "codebook_size": 16, "vocab_size": 16, "coarse_levels": [1, 2], "fine_levels": [3, 4]},
    "mulan": {"model": "mulan", "sample_rate_hz": 16000, "window_s": 10, "stride_s": 1, "dim": 4,
              "n_stages": 3, "vocab_size": 4},
}
CROP = CropConfig(semantic_s=2.0, coarse_s=1.0, fine_s=0.4)
T_LIST, C = (0, 1, 10, 20), 25


def _records(n: int = 12) -> list[TrackRecord]:
    rng = np.random.default_rng(11)
    out = []
    for r in range(n):
        frames = 100 if r != n - 1 else 30  # the last one is too short for T = 20 + C = 25 (45 frames)
        b = 80 * (r // 2)
        sem = (b + np.arange(frames)) % V if r % 2 == 0 else rng.integers(0, V, frames)
        win = rng.normal(size=(1, 4))
        out.append(TrackRecord(
            key=make_key(f"{r:016x}", 0), uri=f"/in/{r}.wav", segment=0, start_s=0.0, duration_s=frames / 25,
            source_sample_rate=48000, source_channels=1, split="train", semantic=sem.astype(np.uint16),
            mulan_windows=(win / np.linalg.norm(win)).astype(np.float16), mulan=np.zeros(3, np.uint16)))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mem")
    rng = np.random.default_rng(7)
    rvq = RVQCodebook(rng.normal(size=(3, 4, 4)).astype(np.float32), card={}).save(tmp / "rvq")
    cb_path = Codebook(rng.normal(size=(V, 6)).astype(np.float32), card={}).save(tmp / "codebooks")
    cb = Codebook.load(cb_path)
    rvq_id = rvq.name.removesuffix(".safetensors")
    codebooks = {"semantic": cb.id, "mulan": rvq_id}
    tokenizers = {"semantic": {"codebook_id": cb.id}, "mulan": {"codebook_id": rvq_id},
                  "acoustic": {"name": "soundstream", "weights_sha256": "0" * 64}}
    root = write_token_dataset(tmp / "ds", _records(), streams=STREAMS, codebooks=codebooks, tokenizers=tokenizers,
                               job={"codebook": str(tmp / "codebooks")})
    manifest = json.loads((root / "manifest.json").read_text())
    return {"tmp": tmp, "root": root, "rvq": rvq, "codebook": cb, "manifest": manifest}


def _state(d, model, layout):
    m = d["manifest"]
    return {"stage": "semantic", "layout": layout.to_json(), "model": asdict(model.cfg),
            "train": {"semantic_s": 2.0, "coarse_s": 1.0, "fine_s": 0.4, "short_tracks": "pad",
                      "mulan_stages": ["semantic", "coarse"], "mulan_codebook": str(d["rvq"])},
            "dataset": {"codebooks": m["codebooks"], "tokenizers": m["tokenizers"], "streams": m["streams"],
                        "schema_version": m["schema_version"], "job": {}}}


def counting_model(layout: StageLayout) -> Transformer:
    """Blocks add nothing and embeddings are one-hot, so logits = sqrt(d)·head[:, last id]: semantic
    code c is followed by c + 1 (mod V); BOS and the M ids by code 0."""
    tgt, v = layout.target, layout.vocab_size  # v = 2 + 12 + 512 <= d_model: one-hot embeddings fit
    nxt = np.full(v, tgt.offset)
    nxt[tgt.offset: tgt.offset + V] = tgt.offset + (np.arange(V) + 1) % V
    return transition_transformer(nxt, 528)


def run_job(dataset: str, ckpt: Path, out: Path, *extra: str) -> dict:
    assert beam_runner.main(["memorization", "--dataset", dataset, "--checkpoints", str(ckpt), "--output", str(out),
                             "--examples", "20", "--prompt_tokens", ",".join(map(str, T_LIST)),
                             "--continuation", str(C), "--seed", "3", "--batch_size", "4",
                             "--negatives", "300", *extra]) == 0  # argparse: a later --negatives wins
    return json.loads((out / "memorization.json").read_text())


def test_counting_model_copies_exactly_what_the_hand_computation_says(data, tmp_path, capsys):
    layout = StageLayout.from_manifest("semantic", data["manifest"], CROP)
    assert layout.target.frames == 50
    model = counting_model(layout)
    save_checkpoint(tmp_path / "ckpt" / "semantic", 1, model, _state(data, model, layout))
    rep = run_job(str(data["root"]), tmp_path / "ckpt", tmp_path / "out")

    recs = {r.key: r for r in _records()}
    eligible = [k for k, r in recs.items() if r.semantic.shape[0] >= max(T_LIST) + C]
    assert rep["counts"]["eligible"] == 11 and rep["counts"]["too_short"] == 1  # 12 records read
    assert rep["counts"]["examples"] == 11 and rep["counts"]["prompts"] == 44 == rep["counts"]["scored"]
    assert rep["counts"]["failed"] == 0
    want_exact = set()
    for k in eligible:
        r = recs[k]
        q0 = mem.crop_start_q(100, 50, 3, k)
        counting = int(k[:16], 16) % 2 == 0
        for t in T_LIST:
            if counting and (t >= 1 or int(r.semantic[q0]) == 0):
                want_exact.add((k, t))
    got_exact = {(m["key"], m["prompt_tokens"]) for m in rep["matched"] if m["kind"] == "exact"}
    assert got_exact == want_exact and len(want_exact) >= 15
    for row in rep["by_prompt"]:
        t = row["prompt_tokens"]
        assert row["exact"]["count"] == sum(1 for (_, tt) in want_exact if tt == t) and row["exact"]["n"] == 11
        lo, hi = row["exact"]["ci95"]
        assert lo <= row["exact"]["share"] <= hi
    tau = rep["tau"]
    assert tau["source"] == "calibrated" and tau["negatives"] == 300 and tau["false_positives"] == 0
    assert all(m["cost"] < tau["value"] for m in rep["matched"]) and tau["value"] > 0
    assert {m["key"] for m in rep["matched"] if m["kind"] == "exact"} <= {k for k in eligible if int(k[:16], 16) % 2 == 0}
    assert all(m["entropy_bits"] == pytest.approx(np.log2(C)) for m in rep["matched"] if m["kind"] == "exact")
    for png in ("match_share.png", "cost_hist.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "memorization (protocol): tau" in printed and "11 examples (11 eligible records, 1 too short)" in printed


def test_trained_tiny_stage_over_http_equals_a_direct_greedy_loop(data, tmp_path):
    from tokenmill.training import train as tr

    with serve(data["root"]) as (url, requests):
        tr.run(tr.TrainConfig(stage="semantic", data=f"{url}/", out=str(tmp_path / "runs" / "semantic"), steps=40,
                              batch_size=4, lr=3e-3, warmup_steps=5, seed=0, shuffle_buffer=4, save_every=1000,
                              log_every=1000, device="cpu", mulan_codebook=str(data["rvq"]), prefetch=0,
                              semantic_s=2.0, coarse_s=1.0, fine_s=0.4))
        rep = run_job(f"{url}/", tmp_path / "runs", tmp_path / "out", "--negatives", "100")
    assert any(r.endswith(".parquet") for r in requests)
    # the reference: the same examples, decoded one prompt at a time with the model's own generate
    model, layout, _ = load_model(tmp_path / "runs" / "semantic")
    rvq = RVQCodebook.load(data["rvq"])
    streams = StreamLayout.from_manifest(data["manifest"])
    recs = sorted((r for r in _records() if r.semantic.shape[0] >= 45), key=lambda r: mem.key_hash(3, r.key))
    allowed = torch.from_numpy(layout.allowed())
    want = set()
    for i, r in enumerate(recs):
        q0 = mem.crop_start_q(100, 50, 3, r.key)
        crop = crop_at(r, "semantic", q0, streams, CROP, rvq)
        ex = mem.Example(i, r.key, r.uri, q0, crop.mulan, crop.semantic)
        for p in mem.prompts_of(ex, layout, T_LIST, C):
            ids = model.generate(torch.from_numpy(p.ids)[None], C, temperature=0.0, allowed=allowed)
            gen = layout.target_tokens(ids[0, len(p.ids):].numpy())
            if np.array_equal(gen, p.truth):
                want.add((r.key, p.prompt_tokens))
    got = {(m["key"], m["prompt_tokens"]) for m in rep["matched"] if m["kind"] == "exact"}
    assert got == want  # 5 exact copies when measured (the trained model copies some counting records)
    assert rep["ot"]["method"] == "exact" and rep["counts"]["prompts"] == 44
    assert rep["plan"]["checkpoint"]["step"] == 40


def test_bad_inputs_are_refused_with_the_fix(data, tmp_path):
    layout = StageLayout.from_manifest("semantic", data["manifest"], CROP)
    model = counting_model(layout)
    save_checkpoint(tmp_path / "ck" / "semantic", 1, model, _state(data, model, layout))
    args = ["memorization", "--dataset", str(data["root"]), "--checkpoints", str(tmp_path / "ck"),
            "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="exceed the 50-frame crops"):
        beam_runner.main(args + ["--prompt_tokens", "0,40"])
    other = Codebook(np.ones((V, 6), np.float32), card={}).save(tmp_path / "other")
    short = ["--prompt_tokens", "0,10", "--continuation", "25"]
    with pytest.raises(SystemExit, match="pass --codebook PATH of semantic-"):
        beam_runner.main(args + short + ["--codebook", str(other)])
    with pytest.raises(SystemExit, match="not a stage checkpoint"):
        beam_runner.main(args[:4] + [str(tmp_path), "--output", str(tmp_path / "o")] + short)
    with pytest.raises(SystemExit, match="--prompt_tokens"):
        beam_runner.main(args + ["--prompt_tokens", "x"])
